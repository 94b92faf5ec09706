//! The stream registry: streams are map entries created on first use, each with the set of ids
//! it emitted and the first id it offered. No task runs per stream; connections pull due events
//! from the clock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::ranges::RangeSet;
use crate::report::StreamReport;

/// What a stream carries; blocks follow the EVM head, the other kinds the event head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Trades,
    Ticker,
    Blocks,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Trades => "trades",
            Kind::Ticker => "ticker",
            Kind::Blocks => "blocks",
        }
    }
}

/// `offered_from` before anything was offered.
const NOT_OFFERED: u64 = u64::MAX;

/// Send times remembered per stream: the latest this many ids.
const SENT_AT_WINDOW: usize = 4096;

/// One stream, the ids sent on it, and where its generated range starts.
#[derive(Debug)]
pub(crate) struct Stream {
    name: String,
    venue: &'static str,
    kind: Kind,
    emitted: Mutex<RangeSet>,
    /// Lowest `next` of any subscription to this stream ([`NOT_OFFERED`] if none): ids from
    /// there on were generated for clients even if none was sent (a client that went away).
    offered_from: AtomicU64,
    /// When the latest ids were sent (id, µs since the epoch), oldest first.
    sent_at: Mutex<VecDeque<(u64, u64)>>,
}

impl Stream {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Notes that a client subscribed from event `n` on: every id from `n` to the head counts as
    /// generated from now on. The lowest `n` ever offered wins.
    pub(crate) fn offer_from(&self, n: u64) {
        self.offered_from.fetch_min(n, Ordering::Relaxed);
    }

    /// Records that `id` reached at least one client, now (its first send is kept).
    pub(crate) fn record(&self, id: u64) {
        let now = crate::clock::wall_now_us();
        if self.emitted.lock().expect("stream lock").insert(id) {
            let mut sent = self.sent_at.lock().expect("stream lock");
            if sent.len() == SENT_AT_WINDOW {
                sent.pop_front();
            }
            sent.push_back((id, now));
        }
    }

    /// When `id` was first sent (µs since the epoch), while it is among the latest ones.
    pub(crate) fn sent_us(&self, id: u64) -> Option<u64> {
        let sent = self.sent_at.lock().expect("stream lock");
        // Ids are sent in order, mostly: search from the newest.
        sent.iter().rev().find(|(i, _)| *i == id).map(|(_, at)| *at)
    }

    /// Records a run of ids at once (one lock).
    pub(crate) fn record_all(&self, ids: impl IntoIterator<Item = u64>) {
        let mut set = self.emitted.lock().expect("stream lock");
        for id in ids {
            set.insert(id);
        }
    }

    /// The report of this stream; `head` is read after the sent ids were copied, so every id
    /// sent so far is at most `head` (heads only grow) and `generated` covers `ranges`.
    fn report(&self, head: impl Fn(Kind) -> u64) -> StreamReport {
        let (emitted, ranges) = {
            let set = self.emitted.lock().expect("stream lock");
            (set.len(), set.ranges().to_vec())
        };
        let offered = self.offered_from.load(Ordering::Relaxed);
        let first = ranges
            .first()
            .map_or(offered, |&(first, _)| first.min(offered));
        let last = ranges
            .last()
            .map_or(0, |&(_, last)| last)
            .max(head(self.kind));
        StreamReport {
            venue: self.venue.to_string(),
            kind: self.kind.as_str().to_string(),
            emitted,
            ranges,
            generated: (first <= last).then_some((first, last)),
        }
    }
}

/// Refusal to create a stream beyond `max_streams`.
#[derive(Debug, thiserror::Error)]
#[error("stream limit reached: the simulator serves at most {max} streams (raise max_streams)")]
pub(crate) struct StreamLimitError {
    max: usize,
}

/// All streams by name, bounded by `max_streams`.
#[derive(Debug)]
pub(crate) struct StreamRegistry {
    max: usize,
    streams: Mutex<HashMap<String, Arc<Stream>>>,
}

impl StreamRegistry {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            streams: Mutex::new(HashMap::new()),
        }
    }

    /// The stream called `name`, created on first use.
    pub(crate) fn get(
        &self,
        name: &str,
        venue: &'static str,
        kind: Kind,
    ) -> Result<Arc<Stream>, StreamLimitError> {
        let mut streams = self.streams.lock().expect("registry lock");
        if let Some(s) = streams.get(name) {
            return Ok(s.clone());
        }
        if streams.len() >= self.max {
            return Err(StreamLimitError { max: self.max });
        }
        let stream = Arc::new(Stream {
            name: name.to_string(),
            venue,
            kind,
            emitted: Mutex::new(RangeSet::default()),
            offered_from: AtomicU64::new(NOT_OFFERED),
            sent_at: Mutex::new(VecDeque::new()),
        });
        streams.insert(name.to_string(), stream.clone());
        Ok(stream)
    }

    /// The stream called `name`, if it exists.
    pub(crate) fn find(&self, name: &str) -> Option<Arc<Stream>> {
        self.streams
            .lock()
            .expect("registry lock")
            .get(name)
            .cloned()
    }

    /// Every stream's emission so far; `head` gives the current head of a kind of stream.
    pub(crate) fn report(&self, head: impl Fn(Kind) -> u64) -> BTreeMap<String, StreamReport> {
        let streams: Vec<Arc<Stream>> = self
            .streams
            .lock()
            .expect("registry lock")
            .values()
            .cloned()
            .collect();
        streams
            .iter()
            .map(|s| (s.name.clone(), s.report(&head)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_created_once_and_bounded() {
        let reg = StreamRegistry::new(2);
        let a = reg.get("a", "binance", Kind::Trades).unwrap();
        let a2 = reg.get("a", "binance", Kind::Trades).unwrap();
        assert!(Arc::ptr_eq(&a, &a2));
        reg.get("b", "kraken", Kind::Ticker).unwrap();
        let err = reg.get("c", "evm", Kind::Blocks).unwrap_err();
        assert!(err.to_string().contains("at most 2 streams"));
        a.record_all([1, 2, 3]);
        a.record(5);
        let report = reg.report(|_| 6);
        assert_eq!(report["a"].ranges, [(1, 3), (5, 5)]);
        assert_eq!(report["a"].emitted, 4);
        assert_eq!(report["a"].generated, Some((1, 6)));
        assert_eq!(report["b"].kind, "ticker");
        assert!(report["b"].ranges.is_empty());
        assert_eq!(report["b"].generated, None);
    }

    #[test]
    fn generated_starts_at_the_first_offer_or_the_first_sent_id() {
        let reg = StreamRegistry::new(10);
        let s = reg.get("s", "binance", Kind::Trades).unwrap();
        // Subscribed when the head was 9: nothing generated until the head reaches 10.
        s.offer_from(10);
        assert_eq!(reg.report(|_| 9)["s"].generated, None);
        assert_eq!(reg.report(|_| 12)["s"].generated, Some((10, 12)));
        // A later subscription does not move the start; a backfill of older ids does.
        s.offer_from(20);
        s.record_all([4, 5]);
        let r = &reg.report(|_| 12)["s"];
        assert_eq!(r.generated, Some((4, 12)));
        assert_eq!(r.missing(), [(6, 12)]);
        // Heads of other kinds are asked for separately.
        let b = reg.get("b", "evm", Kind::Blocks).unwrap();
        b.record(100);
        let r = reg.report(|kind| if kind == Kind::Blocks { 101 } else { 12 });
        assert_eq!(r["b"].generated, Some((100, 101)));
    }
}
