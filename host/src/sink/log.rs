//! The durable log: stored records read back in the order they became durable, for
//! subscribers that resume (`/ws?since=…`, `anode tail --since …`).
//!
//! Every record read back carries a *position*. A client that reconnects with
//! `since=<position>` receives every record that became durable after that one, once, and
//! then the new ones as they are stored, with no gap in between:
//! - PostgreSQL, `p<tx>.<seq>`: the id of the transaction that stored the row (`xid8`) and the
//!   row's number. Rows are read in `(tx, seq)` order and only from transactions older than
//!   every transaction still running (the snapshot's `xmin`), so no row can turn up later
//!   below a position already read, whichever node wrote it.
//! - The embedded store, `e<seq>`: its one writer numbers rows in commit order. It holds only
//!   what this node ingested: in a cluster, resume from PostgreSQL or JetStream.
//! - JetStream (when `[store.nats]` is set), `j<sequence>`: the stream's own sequence.
//!
//! Records of one source keep their order: a source's batches are stored one after another.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use super::{ResumeReader, Shared, StoreReadError, WriteError};
use crate::record::Record;

/// How long a tail waits for a commit of this node before it reads again anyway: other nodes
/// write to a shared PostgreSQL too.
const TAIL_POLL: Duration = Duration::from_millis(100);
/// Most records a tail reads at once.
const PAGE: usize = 512;

/// Where a record stands in the durable log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Position {
    Postgres { tx: i64, seq: i64 },
    Embedded { seq: i64 },
    JetStream { seq: u64 },
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Postgres { tx, seq } => write!(f, "p{tx}.{seq}"),
            Position::Embedded { seq } => write!(f, "e{seq}"),
            Position::JetStream { seq } => write!(f, "j{seq}"),
        }
    }
}

impl FromStr for Position {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        let number = |s: &str| s.parse::<i64>().ok().filter(|n| *n >= 0).ok_or(());
        match text.split_at_checked(1).ok_or(())? {
            ("p", rest) => {
                let (tx, seq) = rest.split_once('.').ok_or(())?;
                Ok(Position::Postgres {
                    tx: number(tx)?,
                    seq: number(seq)?,
                })
            }
            ("e", rest) => Ok(Position::Embedded { seq: number(rest)? }),
            ("j", rest) => Ok(Position::JetStream {
                seq: number(rest)? as u64,
            }),
            _ => Err(()),
        }
    }
}

/// Where a resuming subscriber starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStart {
    /// Everything the log still holds.
    Earliest,
    /// Only what becomes durable from now on (positions from the first record on).
    Now,
    /// Records ingested at or after this time (µs since the epoch).
    Time(i64),
    /// Records that became durable after this one.
    After(Position),
}

impl LogStart {
    /// `earliest`, `now`, a time (`2026-12-03T10:00:00Z`, or `-30s`, `-5m`, `-2h` ago) or a
    /// position a record carried.
    pub fn parse(text: &str, now_us: i64) -> Result<Self, String> {
        let text = text.trim();
        match text {
            "earliest" => return Ok(LogStart::Earliest),
            "now" => return Ok(LogStart::Now),
            _ => {}
        }
        if let Ok(position) = text.parse() {
            return Ok(LogStart::After(position));
        }
        if let Some(ago) = text.strip_prefix('-') {
            let (digits, unit) =
                ago.split_at(ago.find(|c: char| !c.is_ascii_digit()).unwrap_or(ago.len()));
            let scale: i64 = match unit {
                "s" => 1_000_000,
                "m" => 60_000_000,
                "h" => 3_600_000_000,
                _ => 0,
            };
            if let (Ok(n), true) = (digits.parse::<i64>(), scale > 0) {
                return Ok(LogStart::Time(now_us - n.saturating_mul(scale)));
            }
        }
        if let Ok(us) = anode_plugin_sdk::time::parse_rfc3339_us(text) {
            return Ok(LogStart::Time(us));
        }
        Err(format!(
            "since=`{text}` is not a start: use `earliest`, `now`, a UTC time such as \
             `2026-12-03T10:00:00Z`, a time ago such as `-5m`, or the `position` of the last \
             record you received"
        ))
    }
}

/// Which records a resuming subscriber wants; empty sets mean "any".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    pub sources: HashSet<String>,
    pub streams: HashSet<String>,
    pub keys: HashSet<String>,
}

impl LogFilter {
    pub fn matches(&self, source: &str, stream: &str, key: Option<&str>) -> bool {
        (self.sources.is_empty() || self.sources.contains(source))
            && (self.streams.is_empty() || self.streams.contains(stream))
            && (self.keys.is_empty() || key.is_some_and(|k| self.keys.contains(k)))
    }

    /// The sets as sorted lists, for a query's parameters.
    pub(crate) fn lists(&self) -> [Vec<String>; 3] {
        [&self.sources, &self.streams, &self.keys].map(|set| {
            let mut list: Vec<String> = set.iter().cloned().collect();
            list.sort();
            list
        })
    }
}

/// One read from a store's log: records after `after`, ingested at or after `since_us`.
#[derive(Debug, Clone)]
pub(crate) struct LogQuery {
    /// `None`: from the first row.
    pub(crate) after: Option<Position>,
    pub(crate) since_us: Option<i64>,
    pub(crate) filter: LogFilter,
    pub(crate) limit: usize,
}

/// A record's JSON, as `/ws` sends it, with its position as the first field.
pub fn with_position(json: &str, position: &Position) -> String {
    match json.strip_prefix('{') {
        Some(rest) if rest.trim_start().starts_with('}') => {
            format!("{{\"position\":\"{position}\"}}")
        }
        Some(rest) => format!("{{\"position\":\"{position}\",{rest}"),
        None => json.to_owned(),
    }
}

/// A stored record read back, with its position.
pub(crate) fn logged_json(record: &Record, position: &Position) -> String {
    with_position(&record.to_json(), position)
}

/// Why a tail could not start.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// The start names a position of another kind of log.
    #[error("{0}")]
    BadStart(String),
    #[error(transparent)]
    Read(#[from] StoreReadError),
}

/// One resuming subscriber's reader of the durable log.
pub struct Tail {
    from: TailFrom,
}

enum TailFrom {
    Store(Box<StoreTail>),
    JetStream(Box<super::nats::JetStreamTail>),
}

struct StoreTail {
    shared: Arc<Shared>,
    reader: Box<dyn ResumeReader>,
    query: LogQuery,
}

impl Tail {
    /// A tail of the database's log.
    pub(super) async fn store(
        shared: Arc<Shared>,
        mut reader: Box<dyn ResumeReader>,
        start: LogStart,
        filter: LogFilter,
    ) -> Result<Tail, TailError> {
        let kind = shared.kind;
        let head = reader
            .log_head_boxed()
            .await
            .map_err(|e| read_error(kind, e))?;
        let (after, since_us) = match start {
            LogStart::Earliest => (None, None),
            LogStart::Now => (Some(head), None),
            LogStart::Time(us) => (None, Some(us)),
            LogStart::After(p) if std::mem::discriminant(&p) == std::mem::discriminant(&head) => {
                (Some(p), None)
            }
            LogStart::After(p) => return Err(other_log(&p, kind, &head)),
        };
        Ok(Tail {
            from: TailFrom::Store(Box::new(StoreTail {
                shared,
                reader,
                query: LogQuery {
                    after,
                    since_us,
                    filter,
                    limit: PAGE,
                },
            })),
        })
    }

    pub(super) fn jetstream(tail: super::nats::JetStreamTail) -> Tail {
        Tail {
            from: TailFrom::JetStream(Box::new(tail)),
        }
    }

    /// The next records (JSON, each with its position), waiting until there is one.
    pub async fn next(&mut self) -> Result<Vec<String>, StoreReadError> {
        match &mut self.from {
            TailFrom::JetStream(tail) => tail.next().await,
            TailFrom::Store(tail) => loop {
                let StoreTail {
                    shared,
                    reader,
                    query,
                } = &mut **tail;
                // Armed before the read: a commit during the read wakes the wait below.
                let committed = shared.committed.notified();
                tokio::pin!(committed);
                committed.as_mut().enable();
                let rows = reader
                    .read_log_boxed(query)
                    .await
                    .map_err(|e| read_error(shared.kind, e))?;
                if let Some((last, _)) = rows.last() {
                    query.after = Some(*last);
                    return Ok(rows.iter().map(|(p, r)| logged_json(r, p)).collect());
                }
                tokio::select! {
                    () = committed => {}
                    () = tokio::time::sleep(TAIL_POLL) => {}
                }
            },
        }
    }

    /// Change which records follow; the position stays.
    pub async fn set_filter(&mut self, filter: LogFilter) -> Result<(), StoreReadError> {
        match &mut self.from {
            TailFrom::Store(tail) => {
                tail.query.filter = filter;
                Ok(())
            }
            TailFrom::JetStream(tail) => tail.set_filter(filter).await,
        }
    }
}

fn read_error(kind: &'static str, e: WriteError) -> StoreReadError {
    StoreReadError {
        kind,
        message: e.to_string(),
    }
}

/// A position from another kind of log than this node's.
pub(super) fn other_log(given: &Position, kind: &str, example: &Position) -> TailError {
    TailError::BadStart(format!(
        "since=`{given}` is a position of another log: this node resumes from its {kind} log, \
         whose positions look like `{example}`; start again with `since=earliest`, `now` or a time"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_strangers_are_refused() {
        for p in [
            Position::Postgres { tx: 7, seq: 123 },
            Position::Embedded { seq: 9 },
            Position::JetStream { seq: 42 },
        ] {
            assert_eq!(p.to_string().parse::<Position>(), Ok(p));
        }
        for bad in ["", "p", "p1", "p1.", "e-1", "x5", "j1.2", "pa.b"] {
            assert!(bad.parse::<Position>().is_err(), "{bad}");
        }
    }

    #[test]
    fn starts_parse_times_positions_and_name_what_is_wrong() {
        let now = 1_700_000_000_000_000;
        assert_eq!(LogStart::parse("now", now), Ok(LogStart::Now));
        assert_eq!(LogStart::parse("earliest", now), Ok(LogStart::Earliest));
        assert_eq!(
            LogStart::parse("-5m", now),
            Ok(LogStart::Time(now - 300_000_000))
        );
        assert_eq!(
            LogStart::parse("e17", now),
            Ok(LogStart::After(Position::Embedded { seq: 17 }))
        );
        assert_eq!(
            LogStart::parse("1970-01-02T00:00:01.5Z", now),
            Ok(LogStart::Time(86_401_500_000))
        );
        assert_eq!(
            LogStart::parse("2026-12-03T10:00:00Z", now),
            Ok(LogStart::Time(1_796_292_000_000_000))
        );
        let err = LogStart::parse("yesterday", now).unwrap_err();
        assert!(
            err.contains("earliest") && err.contains("position"),
            "{err}"
        );
        assert!(LogStart::parse("2026-13-03T10:00:00Z", now).is_err());
    }

    #[test]
    fn the_position_goes_first_in_the_record() {
        let p = Position::JetStream { seq: 5 };
        assert_eq!(
            with_position(r#"{"id":"ab"}"#, &p),
            r#"{"position":"j5","id":"ab"}"#
        );
        assert_eq!(with_position("{}", &p), r#"{"position":"j5"}"#);
    }
}
