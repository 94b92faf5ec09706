//! NATS JetStream as a sink beside the database (`[store.nats]`), with its own bounded buffer
//! and writer:
//! - `required = true` (the default): batches go to JetStream first, then to the database
//!   (PostgreSQL or the embedded store, which keeps the cursors); a batch is acknowledged —
//!   its cursor committed — only when JetStream has acknowledged every record *and* the
//!   database has committed them. So a cursor never runs ahead of what JetStream holds.
//! - `required = false`: JetStream gets a copy of what the database committed, as far as its
//!   buffer (`buffer_records`) allows; what does not fit is dropped and counted, and a NATS
//!   outage never holds sources back.
//!
//! - Subject `<subject_prefix>.<stream>.<source>` (a `.` in a name becomes `_`, so each part
//!   stays one subject token); header `Nats-Msg-Id` = the record id, so a batch published
//!   again after a failure is de-duplicated by the server within `duplicate_window_s`; body:
//!   the record's JSON, as `/ws` sends it.
//! - Publishes are sent without waiting, then their acknowledgements awaited together: at
//!   most one batch (`store.batch_max` records) is in flight. A batch the database then fails
//!   to write is retried by the database's writer alone: it is not published again.
//! - The stream is created at start, or checked when it exists (its subjects must cover the
//!   prefix); a server that refuses says why in the store's last error. A server that is away
//!   is a connection failure like a database that is away: the writer backs off, keeps the
//!   batches in its bounded buffer, and sources wait when it is full.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::{self, context::PublishAckFuture, stream};
use futures_util::{FutureExt as _, StreamExt as _};
use serde::{Deserialize, Serialize};

use super::log::{LogFilter, LogQuery, LogStart, Position, TailError, other_log, with_position};
use super::{Backend, Resume, StoreReadError, WriteError, Written};
use crate::deadletter::DeadLetter;
use crate::record::{RecentIds, Record, RecordId};

/// `[store.nats]`: JetStream as a required second sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsSettings {
    /// `nats://host:4222`.
    pub url: String,
    /// The JetStream stream records go to.
    pub stream: String,
    /// First token of every subject.
    pub subject_prefix: String,
    /// Copies of the stream in a NATS cluster.
    pub replicas: usize,
    /// How long the stream keeps records; 0: until its limits push them out.
    pub max_age_s: u64,
    /// How long the server remembers a `Nats-Msg-Id` to drop a second copy.
    pub duplicate_window_s: u64,
    /// How long to wait for the acknowledgements of one batch.
    pub ack_timeout_ms: u64,
    /// Whether a batch waits for JetStream (see the module's documentation).
    pub required: bool,
    /// Records JetStream's own buffer holds.
    pub buffer_records: usize,
}

impl Default for NatsSettings {
    fn default() -> Self {
        NatsSettings {
            url: "nats://127.0.0.1:4222".into(),
            stream: "ANODE".into(),
            subject_prefix: "anode".into(),
            replicas: 1,
            max_age_s: 0,
            duplicate_window_s: 120,
            ack_timeout_ms: 10_000,
            required: true,
            buffer_records: 100_000,
        }
    }
}

impl NatsSettings {
    /// What the settings cannot be, said before anything connects.
    pub fn check(&self) -> Result<(), String> {
        let token_ok = |t: &str| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        };
        if !token_ok(&self.stream) {
            return Err(format!(
                "store.nats.stream `{}` must be letters, digits, `-` and `_`",
                self.stream
            ));
        }
        if !self.subject_prefix.split('.').all(token_ok) {
            return Err(format!(
                "store.nats.subject_prefix `{}` must be dot-separated tokens of letters, digits, \
                 `-` and `_`",
                self.subject_prefix
            ));
        }
        if !(self.url.starts_with("nats://") || self.url.starts_with("tls://")) {
            return Err(format!(
                "store.nats.url `{}` must start with nats:// or tls://",
                self.url
            ));
        }
        Ok(())
    }

    /// The subject of a record of `stream` from `source`.
    pub fn subject(&self, stream: &str, source: &str) -> String {
        format!(
            "{}.{}.{}",
            self.subject_prefix,
            subject_token(stream),
            subject_token(source)
        )
    }

    /// The subject of `source`'s dead letters: `<prefix>._deadletters.<source>` (tails skip
    /// it).
    pub fn dead_subject(&self, source: &str) -> String {
        format!(
            "{}.{DEAD_TOKEN}.{}",
            self.subject_prefix,
            subject_token(source)
        )
    }

    /// The narrowest one subject that covers `filter` (a wildcard where it names several);
    /// the tail checks each record against the whole filter.
    fn filter_subject(&self, filter: &LogFilter) -> String {
        let one = |set: &HashSet<String>| match set.len() {
            1 => set.iter().next().map(|s| subject_token(s)),
            _ => None,
        };
        format!(
            "{}.{}.{}",
            self.subject_prefix,
            one(&filter.streams).unwrap_or_else(|| "*".into()),
            one(&filter.sources).unwrap_or_else(|| "*".into())
        )
    }
}

/// A stream or source name as one subject token.
/// The subject token of dead letters, where a record's stream would be.
const DEAD_TOKEN: &str = "_deadletters";

fn subject_token(name: &str) -> String {
    name.replace(['.', ' ', '*', '>'], "_")
}

/// A client of the server at `settings.url`, once it is connected.
async fn connect_client(settings: &NatsSettings) -> Result<async_nats::Client, String> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .retry_on_initial_connect()
        .connect(&settings.url)
        .await
        .map_err(|e| format!("NATS at {}: {e}", settings.url))?;
    // The first connect is retried by the client in the background; wait for it here so a
    // server that is away is reported as such.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while client.connection_state() != async_nats::connection::State::Connected {
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "NATS at {} does not answer; retrying",
                settings.url
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(client)
}

/// The JetStream sink's backend: publishes records; keeps no cursors and serves no reads
/// (the database does both).
pub(crate) struct JetStream {
    settings: Arc<NatsSettings>,
    context: Option<jetstream::Context>,
}

impl JetStream {
    pub(crate) fn new(settings: NatsSettings) -> Self {
        JetStream {
            settings: Arc::new(settings),
            context: None,
        }
    }

    async fn connect_nats(&mut self) -> Result<(), WriteError> {
        let s = &self.settings;
        let client = connect_client(s).await.map_err(WriteError::Connection)?;
        let context = jetstream::new(client);
        let subjects = format!("{}.>", s.subject_prefix);
        let config = stream::Config {
            name: s.stream.clone(),
            subjects: vec![subjects.clone()],
            num_replicas: s.replicas.max(1),
            max_age: Duration::from_secs(s.max_age_s),
            duplicate_window: Duration::from_secs(s.duplicate_window_s.max(1)),
            ..Default::default()
        };
        let mut existing = context.get_or_create_stream(config).await.map_err(|e| {
            WriteError::Connection(format!(
                "JetStream at {} refused stream `{}`: {e} (is JetStream enabled: `nats-server -js`?)",
                s.url, s.stream
            ))
        })?;
        let info = existing
            .info()
            .await
            .map_err(|e| WriteError::Connection(format!("JetStream stream `{}`: {e}", s.stream)))?;
        let covers = info
            .config
            .subjects
            .iter()
            .any(|subject| *subject == subjects || subject == ">");
        if !covers {
            return Err(WriteError::Connection(format!(
                "JetStream stream `{}` exists with subjects {:?}, which do not cover `{subjects}`: \
                 change store.nats.subject_prefix or the stream",
                s.stream, info.config.subjects
            )));
        }
        self.context = Some(context);
        Ok(())
    }

    /// Publish every record, then wait for all the acknowledgements.
    /// Publish records, and dead letters on their own subject, each with its id as
    /// `Nats-Msg-Id`; wait for every acknowledgement.
    async fn publish(&mut self, records: &[Record], dead: &[DeadLetter]) -> Result<(), WriteError> {
        let context = self
            .context
            .as_ref()
            .ok_or_else(|| WriteError::Connection("NATS is not connected".into()))?;
        let lost = |e: &dyn std::fmt::Display| WriteError::Connection(format!("JetStream: {e}"));
        let records = records.iter().map(|r| {
            let subject = self.settings.subject(&r.stream, &r.source);
            (r.id.to_hex(), subject, r.to_json())
        });
        let letters = dead.iter().map(|d| {
            let body = d.to_json();
            let id = RecordId::derive(&d.source, DEAD_TOKEN, None, body.as_bytes());
            (id.to_hex(), self.settings.dead_subject(&d.source), body)
        });
        let mut acks: Vec<PublishAckFuture> = Vec::with_capacity(records.len() + dead.len());
        for (id, subject, body) in records.chain(letters) {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
            let ack = context
                .publish_with_headers(subject, headers, body.into())
                .await
                .map_err(|e| lost(&e))?;
            acks.push(ack);
        }
        let timeout = Duration::from_millis(self.settings.ack_timeout_ms.max(1));
        let acks_len = acks.len();
        let all = futures_util::future::try_join_all(acks.into_iter().map(|a| a.into_future()));
        match tokio::time::timeout(timeout, all).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(lost(&e)),
            Err(_) => Err(WriteError::Connection(format!(
                "JetStream did not acknowledge {} messages within {timeout:?}",
                acks_len
            ))),
        }
    }
}

impl Backend for JetStream {
    async fn connect(&mut self) -> Result<(), WriteError> {
        self.context = None;
        self.connect_nats().await
    }

    async fn write(
        &mut self,
        records: &[Record],
        _cursors: &[(Arc<str>, String)],
        _states: &[(Arc<str>, super::StepState)],
        dead: &[DeadLetter],
    ) -> Result<Written, WriteError> {
        self.publish(records, dead).await?;
        // The server drops a second copy of an id within the duplicate window; the count of
        // those is not in its acknowledgements' totals, so every record counts as written.
        Ok(Written {
            inserted: records.len() as u64,
            duplicates: 0,
        })
    }

    async fn resume(&mut self, _source: &str, _recent: usize) -> Result<Resume, WriteError> {
        Err(WriteError::Connection("JetStream keeps no cursors".into()))
    }

    async fn read_log(&mut self, _query: &LogQuery) -> Result<Vec<(Position, Record)>, WriteError> {
        Err(WriteError::Connection("JetStream is read by a tail".into()))
    }

    async fn log_head(&mut self) -> Result<Position, WriteError> {
        Err(WriteError::Connection("JetStream is read by a tail".into()))
    }

    fn describe(&self) -> String {
        format!("{} stream {}", self.settings.url, self.settings.stream)
    }
}

/// A resuming subscriber's ordered consumer of the stream: the stream's sequence is the
/// position, and the same consumer carries on with new records.
pub(crate) struct JetStreamTail {
    settings: Arc<NatsSettings>,
    context: jetstream::Context,
    messages: pull::Ordered,
    filter: LogFilter,
    start: LogStart,
    /// The sequence of the last record handed out.
    last: Option<u64>,
    /// Tokens in the subject prefix: the stream's token comes next.
    prefix_tokens: usize,
    /// Ids handed out lately: a record published again after `duplicate_window_s` (a crash
    /// and a late restart re-ingest what JetStream had but the database had not
    /// acknowledged) is in the stream twice, and is handed out once.
    seen: RecentIds,
}

/// Records a tail hands out at once.
const TAIL_BATCH: usize = 512;

/// Record ids a JetStream tail remembers to skip repeats (at least this many, at most twice:
/// about 16 MiB at most).
pub(crate) const TAIL_REPEAT_WINDOW: usize = 1 << 19;

fn js_error(message: impl std::fmt::Display) -> StoreReadError {
    StoreReadError {
        kind: "JetStream",
        message: message.to_string(),
    }
}

impl JetStreamTail {
    pub(crate) async fn start(
        settings: Arc<NatsSettings>,
        start: LogStart,
        filter: LogFilter,
    ) -> Result<Self, TailError> {
        if let LogStart::After(p) = start
            && !matches!(p, Position::JetStream { .. })
        {
            return Err(other_log(&p, "JetStream", &Position::JetStream { seq: 1 }));
        }
        let client = connect_client(&settings).await.map_err(js_error)?;
        let context = jetstream::new(client);
        let messages = Self::consume(&context, &settings, &filter, start).await?;
        let prefix_tokens = settings.subject_prefix.split('.').count();
        Ok(JetStreamTail {
            settings,
            context,
            messages,
            filter,
            start,
            last: None,
            prefix_tokens,
            seen: RecentIds::new(TAIL_REPEAT_WINDOW),
        })
    }

    async fn consume(
        context: &jetstream::Context,
        settings: &NatsSettings,
        filter: &LogFilter,
        start: LogStart,
    ) -> Result<pull::Ordered, StoreReadError> {
        let deliver_policy = match start {
            LogStart::Earliest => DeliverPolicy::All,
            LogStart::Now => DeliverPolicy::New,
            LogStart::Time(us) => DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
                    .map_err(js_error)?,
            },
            LogStart::After(Position::JetStream { seq }) => DeliverPolicy::ByStartSequence {
                start_sequence: seq + 1,
            },
            LogStart::After(other) => {
                return Err(js_error(format!("not a JetStream position: {other}")));
            }
        };
        let stream = context
            .get_stream(&settings.stream)
            .await
            .map_err(|e| js_error(format!("stream `{}`: {e}", settings.stream)))?;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: settings.filter_subject(filter),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| js_error(format!("a consumer of `{}`: {e}", settings.stream)))?;
        consumer.messages().await.map_err(js_error)
    }

    /// The next records (JSON with positions), waiting until one matches.
    pub(crate) async fn next(&mut self) -> Result<Vec<String>, StoreReadError> {
        let mut out = Vec::new();
        while out.is_empty() {
            let first = self.messages.next().await;
            self.take(first, &mut out)?;
            while out.len() < TAIL_BATCH {
                match self.messages.next().now_or_never() {
                    Some(ready) => self.take(ready, &mut out)?,
                    None => break,
                }
            }
        }
        Ok(out)
    }

    fn take(
        &mut self,
        message: Option<Result<jetstream::Message, pull::OrderedError>>,
        out: &mut Vec<String>,
    ) -> Result<(), StoreReadError> {
        let message = message
            .ok_or_else(|| js_error("the consumer ended"))?
            .map_err(js_error)?;
        let seq = message.info().map_err(js_error)?.stream_sequence;
        self.last = Some(seq);
        if message.subject.split('.').nth(self.prefix_tokens) == Some(DEAD_TOKEN) {
            // A dead letter: not a record.
            return Ok(());
        }
        #[derive(Deserialize)]
        struct Head {
            id: String,
            source: String,
            stream: String,
            key: Option<String>,
        }
        let body = std::str::from_utf8(&message.payload).map_err(js_error)?;
        let head: Head = serde_json::from_str(body).map_err(js_error)?;
        let fresh = RecordId::from_hex(&head.id).is_none_or(|id| self.seen.insert(&id));
        if fresh
            && self
                .filter
                .matches(&head.source, &head.stream, head.key.as_deref())
        {
            out.push(with_position(body, &Position::JetStream { seq }));
        }
        Ok(())
    }

    /// Another filter, from the record after the last one handed out.
    pub(crate) async fn set_filter(&mut self, filter: LogFilter) -> Result<(), StoreReadError> {
        let start = match self.last {
            Some(seq) => LogStart::After(Position::JetStream { seq }),
            None => self.start,
        };
        self.messages = Self::consume(&self.context, &self.settings, &filter, start).await?;
        self.filter = filter;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::NatsSettings;

    #[test]
    fn subjects_keep_one_token_per_part_and_bad_settings_are_named() {
        let s = NatsSettings::default();
        assert_eq!(s.subject("trades", "bn.btc"), "anode.trades.bn_btc");
        assert!(s.check().is_ok());
        let bad = NatsSettings {
            stream: "has space".into(),
            ..NatsSettings::default()
        };
        assert!(bad.check().unwrap_err().contains("store.nats.stream"));
        let bad = NatsSettings {
            url: "http://x".into(),
            ..NatsSettings::default()
        };
        assert!(bad.check().unwrap_err().contains("nats://"));
    }
}
