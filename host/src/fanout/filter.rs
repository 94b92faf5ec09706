//! What the fan-out is told: its bounds (`[fanout]`), and what each subscriber wants.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::record::{Fork, Record};

/// Fan-out bounds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FanoutSettings {
    /// Records queued per subscriber before drops start.
    pub queue_len: usize,
    /// A subscriber dropping records for this long is disconnected.
    pub lag_disconnect_ms: u64,
    /// Most subscribers per node.
    pub max_subscribers: usize,
    /// Most resuming subscribers (`/ws?since=`) per node; each holds a reader of the store.
    pub max_resuming: usize,
    /// Record ids remembered per stage to deliver each record once while two nodes run the
    /// same source (a hand-over's overlap, a replay after a restart): at least the ids of
    /// the last `dedupe_window_ms`, as long as they are fewer than this (a bound on memory:
    /// about 16 bytes an id, twice over).
    pub dedupe_window: usize,
    /// How long ids are remembered at least (the longest hand-over overlap:
    /// `cluster.handover_timeout_ms`).
    pub dedupe_window_ms: u64,
    /// Records ingested here kept for links to other nodes to resume from after a drop (the
    /// outbox), at most this many bytes of JSON...
    pub relay_buffer_bytes: usize,
    /// ...and at most this long. A node whose link to a peer stays broken longer gives its
    /// clients a `gap` notice.
    pub relay_buffer_ms: u64,
}

impl Default for FanoutSettings {
    fn default() -> Self {
        FanoutSettings {
            queue_len: 4096,
            lag_disconnect_ms: 5000,
            max_subscribers: 10_000,
            max_resuming: 64,
            dedupe_window: 1 << 20,
            dedupe_window_ms: 10_000,
            relay_buffer_bytes: 32 << 20,
            relay_buffer_ms: 30_000,
        }
    }
}

/// When a record reaches a subscriber.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// As soon as it is decoded and transformed: lowest latency, but a record may be seen
    /// that a failing store never gets.
    #[default]
    Decoded,
    /// Once the store has committed it.
    Stored,
}

impl Stage {
    fn is_decoded(&self) -> bool {
        *self == Stage::Decoded
    }
}

/// Which records a subscriber wants; an empty set means "any".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Filter {
    pub sources: HashSet<String>,
    pub streams: HashSet<String>,
    pub keys: HashSet<String>,
    /// When records are delivered: `decoded` (default) or `stored`.
    #[serde(skip_serializing_if = "Stage::is_decoded")]
    pub after: Stage,
    /// Only irreversible records (`after=final`: stored, and final on their chain; see
    /// [`Fork`]); records of sources that never take anything back are not marked final.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub final_only: bool,
}

/// The fields of a record a filter looks at, as read off its JSON (a relayed record, the
/// outbox) or taken from a [`Record`].
#[derive(Debug, Deserialize)]
pub struct Parts<'a> {
    #[serde(borrow)]
    pub source: Cow<'a, str>,
    #[serde(borrow)]
    pub stream: Cow<'a, str>,
    #[serde(borrow, default)]
    pub key: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub upstream_id: Option<Cow<'a, str>>,
}

impl Filter {
    /// Whether `record`, reaching `stage`, passes.
    pub fn matches(&self, record: &Record, stage: Stage) -> bool {
        self.admits(
            &record.source,
            &record.stream,
            record.key.as_deref(),
            record.upstream_id.as_deref(),
            stage,
        )
    }

    /// Whether a record with these `parts`, reaching `stage`, passes.
    pub fn matches_parts(&self, parts: &Parts<'_>, stage: Stage) -> bool {
        self.admits(
            &parts.source,
            &parts.stream,
            parts.key.as_deref(),
            parts.upstream_id.as_deref(),
            stage,
        )
    }

    fn admits(
        &self,
        source: &str,
        stream: &str,
        key: Option<&str>,
        upstream_id: Option<&str>,
        stage: Stage,
    ) -> bool {
        self.after == stage
            && (self.sources.is_empty() || self.sources.contains(source))
            && (self.streams.is_empty() || self.streams.contains(stream))
            && (self.keys.is_empty() || key.is_some_and(|k| self.keys.contains(k)))
            && (!self.final_only || Fork::of(upstream_id).is_final())
    }

    /// From comma-separated query values (`source=a,b&stream=trades&key=BTC.USDT`) and
    /// `after=decoded|stored|final`.
    pub fn from_query(query: &HashMap<String, String>) -> Result<Self, String> {
        let set = |name: &str| -> HashSet<String> {
            query
                .get(name)
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let (after, final_only) = match query.get("after").map(|a| a.trim()) {
            None | Some("" | "decoded") => (Stage::Decoded, false),
            Some("stored") => (Stage::Stored, false),
            Some("final") => (Stage::Stored, true),
            Some(other) => {
                return Err(format!(
                    "after=`{other}` is not a stage: use `after=decoded` (the default, as soon \
                     as records are decoded), `after=stored` (once the store has them) or \
                     `after=final` (stored and irreversible on their chain)"
                ));
            }
        };
        Ok(Filter {
            sources: set("source"),
            streams: set("stream"),
            keys: set("key"),
            after,
            final_only,
        })
    }
}
