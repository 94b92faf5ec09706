//! Dead letters: what a source produced that could not be processed, kept instead of lost.
//!
//! A frame or response the connector calls bad input, an event a transform rejects or crashes
//! on (after its retries), a record whose payload is not JSON, a row the database refuses and
//! a cursor the store cannot keep each become a [`DeadLetter`]: the raw bytes, the stage, the
//! plugin that refused it and why. Dead letters travel with their batch and are written in
//! the same transaction as its records and cursor, so a cursor never passes an input that is
//! neither stored nor dead-lettered. They can be listed, shown, replayed through a (fixed)
//! plugin build and purged (`/api/v1/deadletters`, `anode deadletter`).

use serde::{Deserialize, Serialize};

use crate::record::Record;

/// Where on the record path an input was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadStage {
    /// The connector called a frame or response bad input.
    Decode,
    /// A transform rejected an event, or crashed or ran out of time on it every time.
    Transform,
    /// The database refused the row.
    Store,
    /// The connector returned a cursor the store cannot keep.
    Cursor,
}

impl DeadStage {
    /// Every stage, in path order.
    pub const ALL: [DeadStage; 4] = [
        DeadStage::Decode,
        DeadStage::Transform,
        DeadStage::Store,
        DeadStage::Cursor,
    ];

    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadStage::Decode => "decode",
            DeadStage::Transform => "transform",
            DeadStage::Store => "store",
            DeadStage::Cursor => "cursor",
        }
    }

    /// The stage named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        DeadStage::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// What else a dead letter needs to be replayed: the input's kind and, for an event or a
/// record, the fields beside its payload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadMeta {
    /// For `decode`: `frame` or `response`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// A response's request tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// A response's HTTP status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// When the frame or response was received (µs since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_us: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time_us: Option<i64>,
    /// A refused row's record id (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_id: Option<String>,
}

/// One input that could not be processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub source: String,
    pub stage: DeadStage,
    /// Digest of the plugin that refused it (the connector for `decode`, the step's transform
    /// for `transform`); none for `store` and `cursor`.
    pub plugin: Option<String>,
    /// For `transform`: the step's place in the chain (0 is the first transform).
    pub step: Option<u32>,
    /// Why, as the plugin or the database said it.
    pub reason: String,
    /// The input as it came: a frame's or response's bytes, an event's or record's payload,
    /// the cursor.
    pub raw: Vec<u8>,
    pub meta: DeadMeta,
    /// When it was refused (µs since the epoch).
    pub at_us: i64,
}

impl DeadLetter {
    /// A row the database refused, with what replaying it needs.
    pub fn refused_row(record: &Record, reason: &str) -> DeadLetter {
        DeadLetter {
            source: record.source.to_string(),
            stage: DeadStage::Store,
            plugin: None,
            step: None,
            reason: reason.to_owned(),
            raw: record.payload.as_str().as_bytes().to_vec(),
            meta: DeadMeta {
                stream: Some(record.stream.to_string()),
                key: record.key.as_deref().map(str::to_owned),
                upstream_id: record.upstream_id.clone(),
                event_time_us: record.event_time_us,
                record_id: Some(record.id.to_hex()),
                ..DeadMeta::default()
            },
            at_us: crate::clock::now_us(),
        }
    }

    /// Text safe for any store: NUL, which PostgreSQL's `text` refuses, is written `\0`.
    pub fn text(s: &str) -> std::borrow::Cow<'_, str> {
        if s.contains('\0') {
            s.replace('\0', "\\0").into()
        } else {
            s.into()
        }
    }

    /// The meta as stored (JSON).
    pub fn meta_json(&self) -> String {
        serde_json::to_string(&self.meta).expect("plain fields serialise")
    }

    /// As a message (JetStream): the fields the API shows, the raw bytes as text when they
    /// are UTF-8, else as `raw_hex`.
    pub fn to_json(&self) -> String {
        let (raw, raw_hex) = match std::str::from_utf8(&self.raw) {
            Ok(text) => (Some(text), None),
            Err(_) => (None, Some(hex::encode(&self.raw))),
        };
        serde_json::json!({
            "source": self.source,
            "stage": self.stage,
            "plugin": self.plugin,
            "step": self.step,
            "reason": self.reason,
            "raw": raw,
            "raw_hex": raw_hex,
            "meta": self.meta,
            "at_us": self.at_us,
        })
        .to_string()
    }
}

/// A dead letter as stored: its number in the store, and whether it was replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredDeadLetter {
    /// Its number in the store (grows with time).
    pub id: i64,
    pub source: String,
    pub stage: DeadStage,
    pub plugin: Option<String>,
    pub step: Option<u32>,
    pub reason: String,
    /// The raw bytes: as text when they are UTF-8, else `raw_hex`.
    pub raw: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_hex: Option<String>,
    pub meta: DeadMeta,
    pub at_us: i64,
    /// When a replay stored what it now accepts (µs since the epoch).
    pub replayed_us: Option<i64>,
    #[serde(skip)]
    pub bytes: Vec<u8>,
}

impl StoredDeadLetter {
    /// A row read back: `raw` shown as text when it is UTF-8.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_row(
        id: i64,
        source: String,
        stage: &str,
        plugin: Option<String>,
        step: Option<i64>,
        reason: String,
        meta: &str,
        bytes: Vec<u8>,
        at_us: i64,
        replayed_us: Option<i64>,
    ) -> StoredDeadLetter {
        let (raw, raw_hex) = match std::str::from_utf8(&bytes) {
            Ok(text) => (Some(text.to_owned()), None),
            Err(_) => (None, Some(hex::encode(&bytes))),
        };
        StoredDeadLetter {
            id,
            source,
            // Written by this module only; an unknown name reads as the store's own stage.
            stage: DeadStage::parse(stage).unwrap_or(DeadStage::Store),
            plugin,
            step: step.and_then(|s| u32::try_from(s).ok()),
            reason,
            raw,
            raw_hex,
            meta: serde_json::from_str(meta).unwrap_or_default(),
            at_us,
            replayed_us,
            bytes,
        }
    }
}

/// Which dead letters a read, a replay or a purge is about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeadQuery {
    /// Only this source's.
    pub source: Option<String>,
    /// Only this stage's.
    pub stage: Option<DeadStage>,
    /// Only these (by number).
    pub ids: Option<Vec<i64>>,
    /// Only those not replayed yet.
    pub pending: bool,
    /// Only those numbered after this (paging).
    pub after: Option<i64>,
    /// At most this many (reads only; default and bound [`DEAD_PAGE_MAX`]).
    pub limit: Option<usize>,
}

/// The most dead letters one read returns.
pub const DEAD_PAGE_MAX: usize = 1000;

impl DeadQuery {
    /// The read's limit within its bound.
    pub fn page(&self) -> usize {
        self.limit.unwrap_or(DEAD_PAGE_MAX).clamp(1, DEAD_PAGE_MAX)
    }
}

/// The longest cursor the store keeps.
pub const CURSOR_MAX_BYTES: usize = 64 * 1024;

/// Why the store cannot keep `cursor`, if it cannot: a NUL (PostgreSQL's `text` refuses it)
/// or more than [`CURSOR_MAX_BYTES`].
pub fn cursor_fault(cursor: &str) -> Option<String> {
    if cursor.len() > CURSOR_MAX_BYTES {
        Some(format!(
            "the cursor is {} bytes, over the {CURSOR_MAX_BYTES} bytes a store keeps",
            cursor.len()
        ))
    } else if cursor.contains('\0') {
        Some("the cursor contains a NUL character, which a store cannot keep".to_owned())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_round_trip_by_name() {
        for stage in DeadStage::ALL {
            assert_eq!(DeadStage::parse(stage.as_str()), Some(stage));
            let json = serde_json::to_string(&stage).unwrap();
            assert_eq!(json, format!("\"{}\"", stage.as_str()));
        }
        assert_eq!(DeadStage::parse("nope"), None);
    }

    #[test]
    fn cursors_a_store_cannot_keep_are_named() {
        assert_eq!(cursor_fault("{\"BTCUSDT\":12}"), None);
        assert!(cursor_fault("a\0b").unwrap().contains("NUL"));
        let long = "x".repeat(CURSOR_MAX_BYTES + 1);
        assert!(cursor_fault(&long).unwrap().contains("65537 bytes"));
        assert_eq!(cursor_fault(&"x".repeat(CURSOR_MAX_BYTES)), None);
    }

    #[test]
    fn raw_bytes_read_back_as_text_or_hex() {
        let text = StoredDeadLetter::from_row(
            1,
            "s".into(),
            "decode",
            None,
            None,
            "r".into(),
            "{\"input\":\"frame\"}",
            b"{\"a\":1}".to_vec(),
            5,
            None,
        );
        assert_eq!(text.raw.as_deref(), Some("{\"a\":1}"));
        assert_eq!(text.meta.input.as_deref(), Some("frame"));
        let binary = StoredDeadLetter::from_row(
            2,
            "s".into(),
            "cursor",
            None,
            None,
            "r".into(),
            "{}",
            vec![0xff, 0],
            5,
            None,
        );
        assert_eq!(
            (binary.raw, binary.raw_hex.as_deref()),
            (None, Some("ff00"))
        );
        assert_eq!(DeadLetter::text("a\0b"), "a\\0b");
    }
}
