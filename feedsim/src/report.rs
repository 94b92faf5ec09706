//! The emission report: exactly which event ids were sent, per stream, plus fault counters.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What the simulator emitted so far (also served as JSON by `GET /report`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// Seed of every stream's content.
    pub seed: u64,
    /// Events per second per stream.
    pub rate_per_stream: f64,
    /// Whether emission is paused.
    pub paused: bool,
    /// Per stream name (e.g. `binance/btcusdt@trade`), the ids sent to at least one client.
    pub streams: BTreeMap<String, StreamReport>,
    /// Fault and traffic counters.
    pub faults: FaultCounts,
}

/// The ids one stream emitted, as merged inclusive ranges.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamReport {
    /// Venue of the stream (`binance`, `binance-rest`, `coinbase`, `kraken`, `evm`).
    pub venue: String,
    /// `trades`, `ticker` or `blocks`.
    pub kind: String,
    /// Number of distinct ids sent.
    pub emitted: u64,
    /// Sorted, disjoint, non-adjacent inclusive ranges `[first, last]` of the ids sent.
    pub ranges: Vec<(u64, u64)>,
}

impl StreamReport {
    /// Whether `id` was emitted.
    pub fn contains(&self, id: u64) -> bool {
        let i = self.ranges.partition_point(|&(_, last)| last < id);
        self.ranges.get(i).is_some_and(|&(first, _)| first <= id)
    }

    /// Every emitted id, ascending.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges.iter().flat_map(|&(first, last)| first..=last)
    }
}

/// Counters of injected faults and of traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultCounts {
    /// WebSocket connections accepted.
    pub connections: u64,
    /// Connections closed by `drop_every`.
    pub dropped_connections: u64,
    /// Extra frames that were not JSON.
    pub malformed_frames: u64,
    /// Extra frames that were a message cut in half.
    pub truncated_frames: u64,
    /// HTTP requests answered with 429.
    pub http_429: u64,
    /// HTTP responses delayed by `slow_every`.
    pub slow_responses: u64,
    /// HTTP requests to REST and EVM endpoints.
    pub http_requests: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_and_ids_follow_the_ranges() {
        let r = StreamReport {
            venue: "binance".into(),
            kind: "trades".into(),
            emitted: 5,
            ranges: vec![(1, 3), (7, 8)],
        };
        assert_eq!(r.ids().collect::<Vec<_>>(), [1, 2, 3, 7, 8]);
        for id in [1, 2, 3, 7, 8] {
            assert!(r.contains(id));
        }
        for id in [0, 4, 6, 9] {
            assert!(!r.contains(id));
        }
    }

    #[test]
    fn ranges_serialize_as_pairs() {
        let r = StreamReport {
            venue: "evm".into(),
            kind: "blocks".into(),
            emitted: 2,
            ranges: vec![(5, 6)],
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"venue":"evm","kind":"blocks","emitted":2,"ranges":[[5,6]]}"#
        );
        assert_eq!(serde_json::from_str::<StreamReport>(&json).unwrap(), r);
    }
}
