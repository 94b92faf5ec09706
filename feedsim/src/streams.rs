//! The stream registry: streams are map entries created on first use, each with the set of ids
//! it emitted. No task runs per stream; connections pull due events from the clock.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::ranges::RangeSet;
use crate::report::StreamReport;

/// What a stream carries.
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

/// One stream and the ids sent on it.
#[derive(Debug)]
pub(crate) struct Stream {
    name: String,
    venue: &'static str,
    kind: Kind,
    emitted: Mutex<RangeSet>,
}

impl Stream {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Records that `id` reached at least one client.
    pub(crate) fn record(&self, id: u64) {
        self.emitted.lock().expect("stream lock").insert(id);
    }

    /// Records a run of ids at once (one lock).
    pub(crate) fn record_all(&self, ids: impl IntoIterator<Item = u64>) {
        let mut set = self.emitted.lock().expect("stream lock");
        for id in ids {
            set.insert(id);
        }
    }

    fn report(&self) -> StreamReport {
        let set = self.emitted.lock().expect("stream lock");
        StreamReport {
            venue: self.venue.to_string(),
            kind: self.kind.as_str().to_string(),
            emitted: set.len(),
            ranges: set.ranges().to_vec(),
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
        });
        streams.insert(name.to_string(), stream.clone());
        Ok(stream)
    }

    /// Every stream's emission so far.
    pub(crate) fn report(&self) -> BTreeMap<String, StreamReport> {
        let streams: Vec<Arc<Stream>> = self
            .streams
            .lock()
            .expect("registry lock")
            .values()
            .cloned()
            .collect();
        streams
            .iter()
            .map(|s| (s.name.clone(), s.report()))
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
        let report = reg.report();
        assert_eq!(report["a"].ranges, [(1, 3), (5, 5)]);
        assert_eq!(report["a"].emitted, 4);
        assert_eq!(report["b"].kind, "ticker");
        assert!(report["b"].ranges.is_empty());
    }
}
