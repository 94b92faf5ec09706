//! Sources: what to ingest (a [`SourceSpec`]), how each one is doing ([`SourceStatus`]), and
//! the drivers that carry out a connector's plan — [`ws`] keeps a WebSocket open, [`http`]
//! polls — while the connector decodes.

pub mod egress;
mod feed;
pub(crate) mod http;
mod settings;
pub(crate) mod ws;

pub use egress::Egress;
pub(crate) use feed::{Feed, Input, Outcome, Problem};
pub use settings::SourceSettings;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

/// One source: a connector plugin with its config, and the transforms its events go through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// Unique within the cluster: letters, digits, `-`, `_`, `.`, up to 128 characters.
    pub id: String,
    /// The connector: plugin name or digest.
    pub plugin: String,
    /// The connector's configuration (see `anode plugin inspect <plugin>`).
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    /// Transforms applied in order.
    #[serde(default)]
    pub transforms: Vec<TransformSpec>,
    /// A paused source is kept in the catalog but runs nowhere.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// While the source is in a canary (`anode source upgrade --canary`): the plugin it ran
    /// before, which a rollback returns it to. A promotion clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_plugin: Option<String>,
    /// Nodes that collect the source at once (its first rendezvous owners); the record id
    /// absorbs the doubles, so a feed with no history survives the loss of one. Default
    /// `sources.replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
}

/// The most nodes one source may run on at once.
pub const MAX_REPLICAS: u32 = 5;

/// One step of a source's transform chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformSpec {
    /// The transform: plugin name or digest.
    pub plugin: String,
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

impl SourceSpec {
    /// Check what can be checked without plugins; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let id_ok = !self.id.is_empty()
            && self.id.len() <= 128
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !id_ok {
            return Err(format!(
                "source id `{}` is invalid: use 1 to 128 letters, digits, `-`, `_` or `.`",
                self.id
            ));
        }
        if self.plugin.trim().is_empty() {
            return Err(format!("source `{}`: `plugin` is empty", self.id));
        }
        if self
            .previous_plugin
            .as_deref()
            .is_some_and(|p| p.trim().is_empty())
        {
            return Err(format!("source `{}`: `previous_plugin` is empty", self.id));
        }
        if self
            .replicas
            .is_some_and(|r| !(1..=MAX_REPLICAS).contains(&r))
        {
            return Err(format!(
                "source `{}`: `replicas` must be 1 to {MAX_REPLICAS}",
                self.id
            ));
        }
        if !self.config.is_object() {
            return Err(format!(
                "source `{}`: `config` must be a JSON object",
                self.id
            ));
        }
        Ok(())
    }
}

/// What replaces a secret value in reads.
pub const REDACTED: &str = "<redacted>";

/// `config` with the values its plugin's JSON Schema marks secret (`"writeOnly": true` or
/// `"x-secret": true`, at any depth of `properties`) replaced by [`REDACTED`].
pub fn redacted(config: &serde_json::Value, schema: &serde_json::Value) -> serde_json::Value {
    let (Some(object), Some(properties)) = (config.as_object(), schema["properties"].as_object())
    else {
        return config.clone();
    };
    let mut out = object.clone();
    for (name, value) in out.iter_mut() {
        let Some(property) = properties.get(name) else {
            continue;
        };
        if property["writeOnly"] == true || property["x-secret"] == true {
            *value = serde_json::Value::from(REDACTED);
        } else if value.is_object() {
            *value = redacted(value, property);
        }
    }
    serde_json::Value::Object(out)
}

/// Where a source is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceState {
    /// In the catalog, not reported by any node yet (its owner is starting it).
    Pending,
    /// Paused: in the catalog, run nowhere.
    Paused,
    #[default]
    Starting,
    Connecting,
    Live,
    BackingOff,
    Failed,
    Stopped,
}

/// Live counters and state of one source; updated by its driver, read by the API.
#[derive(Debug)]
pub struct SourceStatus {
    inner: Mutex<StatusInner>,
    /// Frames or responses received.
    pub inputs: AtomicU64,
    /// Records produced (after transforms).
    pub events: AtomicU64,
    /// Records the store has committed (acknowledged batches).
    pub stored: AtomicU64,
    /// Inputs the connector could not use, and other errors.
    pub errors: AtomicU64,
    /// Connections (re)established after the first.
    pub reconnects: AtomicU64,
    /// Records dropped as repeats of recent ones (a poll returning the same items).
    pub duplicates: AtomicU64,
    /// Events per second over the last sampling interval (f64 bits).
    rate_bits: AtomicU64,
    last_sampled_events: AtomicU64,
}

#[derive(Debug)]
struct StatusInner {
    state: SourceState,
    last_error: Option<String>,
    last_warning: Option<String>,
    last_event_us: Option<i64>,
    target: String,
    cursor: Option<String>,
}

/// A snapshot of a source for the API (and for peers, which read it back).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SourceReport {
    pub id: String,
    pub plugin: String,
    /// The URL being read.
    pub target: String,
    pub state: SourceState,
    pub last_error: Option<String>,
    /// The last warning its connector logged (an endpoint set aside, say).
    pub last_warning: Option<String>,
    pub inputs: u64,
    pub events: u64,
    /// Records the store has committed.
    pub stored: u64,
    pub errors: u64,
    pub reconnects: u64,
    pub duplicates: u64,
    pub events_per_sec: f64,
    /// Microseconds since the last event, if any came.
    pub last_event_age_ms: Option<i64>,
    /// The cursor committed with the last stored batch: where the source resumes.
    pub cursor: Option<String>,
    /// The node that runs it; `None` while no node reports it.
    pub node: Option<String>,
}

/// A source of the cluster as any node shows it: its owner's report, its owner in this node's
/// view, and whether it is paused.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterSource {
    #[serde(flatten)]
    pub report: SourceReport,
    /// The node that should run it (none while paused).
    pub owner: Option<String>,
    /// Every node that should run it, the owner first (more than one with `replicas`).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub owners: Vec<String>,
    pub paused: bool,
}

impl Default for SourceStatus {
    fn default() -> Self {
        SourceStatus {
            inner: Mutex::new(StatusInner {
                state: SourceState::Starting,
                last_error: None,
                last_warning: None,
                last_event_us: None,
                target: String::new(),
                cursor: None,
            }),
            inputs: AtomicU64::new(0),
            events: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            rate_bits: AtomicU64::new(0f64.to_bits()),
            last_sampled_events: AtomicU64::new(0),
        }
    }
}

impl SourceStatus {
    fn inner(&self) -> std::sync::MutexGuard<'_, StatusInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_state(&self, state: SourceState) {
        self.inner().state = state;
    }

    /// Enter a failing state with its reason.
    pub(crate) fn fail(&self, state: SourceState, error: impl Into<String>) {
        let mut inner = self.inner();
        inner.state = state;
        inner.last_error = Some(error.into());
    }

    /// What the connector last warned about (it logged a warning or an error).
    pub(crate) fn warn(&self, warning: String) {
        self.inner().last_warning = Some(warning);
    }

    /// Count an error that does not change the state.
    pub(crate) fn error(&self, error: impl Into<String>) {
        self.error_n(1, error);
    }

    /// Count `n` errors of one kind.
    pub(crate) fn error_n(&self, n: u64, error: impl Into<String>) {
        self.errors.fetch_add(n, Relaxed);
        self.inner().last_error = Some(error.into());
    }

    pub(crate) fn set_target(&self, target: &str) {
        self.inner().target = target.to_owned();
    }

    /// Count records produced (not yet stored).
    pub(crate) fn record_events(&self, count: usize, now_us: i64) {
        self.events.fetch_add(count as u64, Relaxed);
        if count > 0 {
            self.inner().last_event_us = Some(now_us);
        }
    }

    /// A batch was committed: its records are stored and its cursor is where the source
    /// resumes.
    pub(crate) fn committed(&self, count: usize, cursor: Option<String>) {
        self.stored.fetch_add(count as u64, Relaxed);
        if cursor.is_some() {
            self.inner().cursor = cursor;
        }
    }

    /// The cursor the source was opened with (read from the store).
    pub(crate) fn resumed_at(&self, cursor: Option<String>) {
        self.inner().cursor = cursor;
    }

    /// Update the rate from the events counted since the last sample `elapsed_s` ago.
    pub(crate) fn sample_rate(&self, elapsed_s: f64) {
        let events = self.events.load(Relaxed);
        let before = self.last_sampled_events.swap(events, Relaxed);
        let rate = if elapsed_s > 0.0 {
            events.saturating_sub(before) as f64 / elapsed_s
        } else {
            0.0
        };
        self.rate_bits.store(rate.to_bits(), Relaxed);
    }

    pub(crate) fn report(&self, spec: &SourceSpec, node: &str, now_us: i64) -> SourceReport {
        let inner = self.inner();
        SourceReport {
            id: spec.id.clone(),
            plugin: spec.plugin.clone(),
            target: inner.target.clone(),
            state: inner.state,
            last_error: inner.last_error.clone(),
            last_warning: inner.last_warning.clone(),
            inputs: self.inputs.load(Relaxed),
            events: self.events.load(Relaxed),
            stored: self.stored.load(Relaxed),
            errors: self.errors.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            events_per_sec: f64::from_bits(self.rate_bits.load(Relaxed)),
            last_event_age_ms: inner.last_event_us.map(|t| (now_us - t).max(0) / 1000),
            cursor: inner.cursor.clone(),
            node: Some(node.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_the_schema_marks_are_redacted_at_any_depth() {
        let schema = serde_json::json!({"properties": {
            "url": {"type": "string"},
            "headers": {"type": "object", "writeOnly": true},
            "auth": {"type": "object", "properties": {"key": {"x-secret": true}, "user": {}}},
        }});
        let config = serde_json::json!({"url": "http://h", "headers": {"X-Key": "k"},
            "auth": {"key": "s", "user": "u"}, "other": 1});
        assert_eq!(
            redacted(&config, &schema),
            serde_json::json!({"url": "http://h", "headers": REDACTED,
                "auth": {"key": REDACTED, "user": "u"}, "other": 1})
        );
        assert_eq!(redacted(&config, &serde_json::json!({})), config);
    }

    #[test]
    fn spec_validation_names_the_problem() {
        let spec: SourceSpec =
            serde_json::from_str(r#"{"id":"binance-1","plugin":"binance-trades"}"#).unwrap();
        assert!(spec.validate().is_ok());
        assert!(spec.config.is_object());
        let bad = SourceSpec {
            id: "no spaces".into(),
            ..spec.clone()
        };
        assert!(bad.validate().unwrap_err().contains("source id"));
        let bad = SourceSpec {
            replicas: Some(0),
            ..spec.clone()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .contains("`replicas` must be 1 to 5")
        );
        let bad = SourceSpec {
            config: serde_json::json!([1]),
            ..spec
        };
        assert!(bad.validate().unwrap_err().contains("config"));
        let unknown = serde_json::from_str::<SourceSpec>(r#"{"id":"a","plugin":"p","cfg":{}}"#);
        assert!(
            unknown
                .unwrap_err()
                .to_string()
                .contains("unknown field `cfg`")
        );
    }
}
