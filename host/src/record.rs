//! Records: what connectors and transforms emit, stamped by the host with where and when it
//! was ingested and a deterministic id.
//!
//! The id is the idempotency key everywhere: a record ingested twice (a reconnect replaying,
//! two owners during a hand-over) gets the same id and is stored once.

use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// Bytes in a record id.
pub const RECORD_ID_LEN: usize = 16;

/// A deterministic record id: the first 16 bytes of a sha256.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId(pub [u8; RECORD_ID_LEN]);

impl RecordId {
    /// The id of an event of `source`: from its upstream id when it has one, else from its
    /// payload. The stream is part of it, since upstream ids are unique per stream.
    pub fn derive(source: &str, stream: &str, upstream_id: Option<&str>, payload: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(source.as_bytes());
        hasher.update([0]);
        hasher.update(stream.as_bytes());
        match upstream_id {
            Some(id) => {
                hasher.update([1]);
                hasher.update(id.as_bytes());
            }
            None => {
                hasher.update([2]);
                hasher.update(payload);
            }
        }
        let digest = hasher.finalize();
        let mut id = [0u8; RECORD_ID_LEN];
        id.copy_from_slice(&digest[..RECORD_ID_LEN]);
        RecordId(id)
    }

    /// An id as stored (16 bytes); `None` for any other length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(RecordId)
    }

    /// From lowercase or uppercase hex (32 digits).
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut id = [0u8; RECORD_ID_LEN];
        hex::decode_to_slice(text, &mut id).ok()?;
        Some(RecordId(id))
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl Serialize for RecordId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

/// A record's payload: JSON text, checked once where it enters the node (UTF-8 and JSON, in
/// [`Payload::parse`]), so that the store and the subscribers' encoding take it as it is,
/// without parsing it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload(String);

/// Bytes that are not one JSON value in UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the payload is not JSON in UTF-8")]
pub struct NotJson;

impl Payload {
    /// The payload if `bytes` is one JSON value in UTF-8.
    pub fn parse(bytes: Vec<u8>) -> Result<Self, NotJson> {
        Payload::parse_or_return(bytes).map_err(|_| NotJson)
    }

    /// [`Payload::parse`], handing the bytes back when they are not JSON in UTF-8 (for the
    /// dead-letter store).
    pub fn parse_or_return(bytes: Vec<u8>) -> Result<Self, Vec<u8>> {
        let text = String::from_utf8(bytes).map_err(|e| e.into_bytes())?;
        // From a `str`, serde_json does not check the UTF-8 of strings again.
        match serde_json::from_str::<serde::de::IgnoredAny>(&text) {
            Ok(_) => Ok(Payload(text)),
            Err(_) => Err(text.into_bytes()),
        }
    }

    /// A payload read back from a store: it was checked when it was written, yet a file can
    /// be changed by hand, so it is checked again; `null` stands for one that is not JSON.
    pub fn stored(text: String) -> Self {
        Payload::parse(text.into_bytes()).unwrap_or_else(|NotJson| {
            tracing::warn!("a stored payload is not JSON; it is delivered as null");
            Payload("null".to_owned())
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// One stored and streamed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: RecordId,
    /// The source that produced it.
    pub source: String,
    pub stream: String,
    pub key: Option<String>,
    pub upstream_id: Option<String>,
    /// When it happened upstream, µs since the epoch.
    pub event_time_us: Option<i64>,
    /// When this node ingested it, µs since the epoch.
    pub ingest_time_us: i64,
    /// The node that ingested it.
    pub node: String,
    pub payload: Payload,
}

/// What the host stamps on every record of one batch.
#[derive(Debug, Clone, Copy)]
pub struct Stamp<'a> {
    /// The source that produced the records.
    pub source: &'a str,
    /// The node that ingested them.
    pub node: &'a str,
    /// When, µs since the epoch.
    pub ingest_time_us: i64,
}

impl Stamp<'_> {
    /// The record of one event (the fields a connector or transform gives), with its id.
    pub fn record(
        &self,
        stream: String,
        key: Option<String>,
        upstream_id: Option<String>,
        event_time_us: Option<i64>,
        payload: Payload,
    ) -> Record {
        let id = RecordId::derive(
            self.source,
            &stream,
            upstream_id.as_deref(),
            payload.as_bytes(),
        );
        Record {
            id,
            source: self.source.to_owned(),
            stream,
            key,
            upstream_id,
            event_time_us,
            ingest_time_us: self.ingest_time_us,
            node: self.node.to_owned(),
            payload,
        }
    }
}

/// Where a record stands on a source that can take back what it said (a chain that
/// reorganises), read off its upstream id (see `upstream-id` in the WIT):
///
/// - `undo:<n>:<id>`: the record of the same stream with upstream id `<id>` is no longer true
///   (a block left the chain); `<n>` tells one undo of the same record from another.
/// - `final:<id>`: the record with upstream id `<id>`, now irreversible; it supersedes that
///   record, which need not exist (a block first seen already final).
/// - anything else, or none: an ordinary record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fork<'a> {
    New,
    /// Undoes the record with this upstream id.
    Undo(&'a str),
    /// The irreversible version of the record with this upstream id.
    Final(&'a str),
}

impl<'a> Fork<'a> {
    pub fn of(upstream_id: Option<&'a str>) -> Self {
        let Some(id) = upstream_id else {
            return Fork::New;
        };
        if let Some(rest) = id.strip_prefix("final:") {
            return Fork::Final(rest);
        }
        if let Some((_, undone)) = id
            .strip_prefix("undo:")
            .and_then(|rest| rest.split_once(':'))
            .filter(|(g, _)| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()))
        {
            return Fork::Undo(undone);
        }
        Fork::New
    }

    /// Whether a subscriber that wants only irreversible records (`after=final`) gets it.
    pub fn is_final(&self) -> bool {
        matches!(self, Fork::Final(_))
    }
}

impl Record {
    pub fn fork(&self) -> Fork<'_> {
        Fork::of(self.upstream_id.as_deref())
    }

    /// The id of the record this one undoes, if it is an undo.
    pub fn undoes(&self) -> Option<RecordId> {
        match self.fork() {
            Fork::Undo(undone) => Some(self.sibling(undone)),
            _ => None,
        }
    }

    /// The records this one takes off the canonical view of its stream: an undo takes the
    /// record it undoes and itself; an irreversible record takes the version of it that was
    /// not final yet. Stores mark them in the transaction that stores this record.
    pub fn retires(&self) -> impl Iterator<Item = RecordId> {
        let ids = match self.fork() {
            Fork::New => [None, None],
            Fork::Undo(undone) => [Some(self.sibling(undone)), Some(self.id)],
            Fork::Final(earlier) => [Some(self.sibling(earlier)), None],
        };
        ids.into_iter().flatten()
    }

    /// The id of the record of this source and stream with upstream id `upstream_id`.
    fn sibling(&self, upstream_id: &str) -> RecordId {
        RecordId::derive(&self.source, &self.stream, Some(upstream_id), &[])
    }

    /// The record as one JSON object (what WebSocket subscribers receive); the payload is
    /// embedded as JSON, as it is, not as a string. An undo also says `"type":"undo"` and
    /// names the record it undoes (`undoes`).
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Head<'a> {
            #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
            kind: Option<&'static str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            undoes: Option<RecordId>,
            id: RecordId,
            source: &'a str,
            stream: &'a str,
            key: Option<&'a str>,
            upstream_id: Option<&'a str>,
            event_time_us: Option<i64>,
            ingest_time_us: i64,
            node: &'a str,
        }
        let payload = self.payload.as_str();
        let undoes = self.undoes();
        let mut json = serde_json::to_string(&Head {
            kind: undoes.map(|_| "undo"),
            undoes,
            id: self.id,
            source: &self.source,
            stream: &self.stream,
            key: self.key.as_deref(),
            upstream_id: self.upstream_id.as_deref(),
            event_time_us: self.event_time_us,
            ingest_time_us: self.ingest_time_us,
            node: &self.node,
        })
        .expect("plain data serialises");
        // The head ends with its `}`: the payload goes in as the last field. Both are UTF-8
        // already, so nothing is checked again.
        json.pop();
        json.reserve_exact(",\"payload\":}".len() + payload.len());
        json.push_str(",\"payload\":");
        json.push_str(payload);
        json.push('}');
        json
    }
}

/// The ids a source produced most recently, to drop repeats before they are published or
/// stored: a poller that sees the same items again, a venue that replays after a reconnect.
/// Bounded: it remembers at least the last `capacity` ids and at most the last twice as many
/// (the store's `ON CONFLICT` still stores a later repeat once). Two generations of ids, each
/// of up to `capacity`: when the newer fills, the older is forgotten whole, so no record pays
/// for removing another's id (a first-in first-out window spent 4% of a loaded node's CPU
/// removing ids from its table).
#[derive(Debug)]
pub struct RecentIds {
    capacity: usize,
    /// With a span, a generation also ends once it is this old: ids are remembered for at
    /// least the span (while fewer than `capacity` arrive within it), not only by count.
    span: Option<std::time::Duration>,
    born: std::time::Instant,
    newer: IdSet,
    older: IdSet,
}

type IdSet = std::collections::HashSet<u64, std::hash::BuildHasherDefault<Prehashed>>;

/// The ids are bytes of a SHA-256 already: their first eight serve as the hash as they are.
#[derive(Debug, Default)]
struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here; anything else still gets a deterministic mix.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

impl RecentIds {
    pub fn new(capacity: usize) -> Self {
        RecentIds {
            capacity,
            span: None,
            born: std::time::Instant::now(),
            newer: IdSet::default(),
            older: IdSet::default(),
        }
    }

    /// A window that remembers ids for at least `span` (and at least the last `capacity`;
    /// at most twice as many): sized by time, for overlaps that last a while whatever the
    /// rate, and bounded by count.
    pub fn with_span(capacity: usize, span: std::time::Duration) -> Self {
        RecentIds {
            span: Some(span),
            ..RecentIds::new(capacity)
        }
    }

    /// Whether `id` is among the recent ones (without remembering it).
    pub fn contains(&self, id: &RecordId) -> bool {
        let short = u64::from_le_bytes(id.0[..8].try_into().expect("16-byte id"));
        self.capacity > 0 && (self.older.contains(&short) || self.newer.contains(&short))
    }

    /// Remember `id`; false when it was already among the recent ones.
    pub fn insert(&mut self, id: &RecordId) -> bool {
        if self.capacity == 0 {
            return true;
        }
        // Eight bytes of a sha256 are plenty to tell a source's recent records apart.
        let short = u64::from_le_bytes(id.0[..8].try_into().expect("16-byte id"));
        if self.older.contains(&short) || !self.newer.insert(short) {
            return false;
        }
        // The clock is read once per 1,024 ids, not per id.
        let aged = self.span.is_some_and(|span| {
            self.newer.len().is_multiple_of(1024) && self.born.elapsed() >= span
        });
        if self.newer.len() >= self.capacity || aged {
            // The older generation goes; its table is kept for the next one.
            std::mem::swap(&mut self.newer, &mut self.older);
            self.newer.clear();
            self.born = std::time::Instant::now();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(upstream_id: &str) -> Record {
        let stamp = Stamp {
            source: "eth",
            node: "n",
            ingest_time_us: 1,
        };
        let payload = Payload::parse(br#"{"number":7}"#.to_vec()).unwrap();
        stamp.record(
            "blocks".into(),
            None,
            Some(upstream_id.into()),
            None,
            payload,
        )
    }

    #[test]
    fn fork_steps_are_read_off_the_upstream_id() {
        let new = block("7:0xaa");
        assert_eq!(new.fork(), Fork::New);
        assert_eq!(new.retires().count(), 0);
        assert!(!new.to_json().contains("\"type\""));

        let undo = block("undo:3:7:0xaa");
        assert_eq!(undo.fork(), Fork::Undo("7:0xaa"));
        assert_eq!(undo.undoes(), Some(new.id));
        // The undo takes the block and itself off the canonical view.
        assert_eq!(undo.retires().collect::<Vec<_>>(), vec![new.id, undo.id]);
        let json: serde_json::Value = serde_json::from_str(&undo.to_json()).unwrap();
        assert_eq!(json["type"], "undo");
        assert_eq!(json["undoes"], new.id.to_hex());
        assert_eq!(json["payload"]["number"], 7);

        let last = block("final:7:0xaa");
        assert_eq!(last.fork(), Fork::Final("7:0xaa"));
        assert!(last.fork().is_final());
        assert_eq!(last.retires().collect::<Vec<_>>(), vec![new.id]);

        // Not the grammar: ordinary records.
        for id in ["undo:x:7", "undo:7", "undo::7", "finality", "7:final:0xaa"] {
            assert_eq!(block(id).fork(), Fork::New, "{id}");
        }
        assert_eq!(Fork::of(None), Fork::New);
    }

    #[test]
    fn recent_ids_drop_repeats_within_the_window() {
        let id = |n: u32| RecordId::derive("s", "t", Some(&n.to_string()), b"");
        let mut recent = RecentIds::new(3);
        assert!(recent.insert(&id(1)) && recent.insert(&id(2)) && recent.insert(&id(3)));
        assert!(!recent.insert(&id(2)));
        for n in 4..=6 {
            assert!(recent.insert(&id(n)));
            // Every one of the last three is still known.
            for recent_one in n - 2..=n {
                assert!(!recent.insert(&id(recent_one)), "{recent_one} after {n}");
            }
        }
        // Six further ids later, the first ones are forgotten: at most twice the window.
        for n in 7..=12 {
            assert!(recent.insert(&id(n)));
        }
        assert!(recent.insert(&id(1)));
        assert!(!recent.insert(&id(12)));
    }

    #[test]
    fn a_window_with_a_span_is_sized_by_time_not_by_count() {
        let id = |n: u32| RecordId::derive("s", "t", Some(&n.to_string()), b"");
        // A span of an hour: thousands of ids later the first is still remembered.
        let mut long = RecentIds::with_span(1 << 20, std::time::Duration::from_secs(3600));
        for n in 0..5000 {
            assert!(long.insert(&id(n)));
        }
        assert!(!long.insert(&id(0)));
        // A span already past: a generation ends every 1,024 ids, so two later the first id
        // is forgotten although the count bound is far away.
        let mut short = RecentIds::with_span(1 << 20, std::time::Duration::ZERO);
        for n in 0..2048 {
            assert!(short.insert(&id(n)));
        }
        assert!(short.insert(&id(0)));
        assert!(
            !short.insert(&id(2047)),
            "the newer generation is remembered"
        );
    }

    #[test]
    fn a_full_window_of_real_ids_keeps_every_one_and_refuses_each_repeat() {
        let ids: Vec<RecordId> = (0..10_000)
            .map(|i| RecordId::derive("s", "trades", Some(&i.to_string()), b"{}"))
            .collect();
        let mut recent = RecentIds::new(ids.len());
        assert!(ids.iter().all(|id| recent.insert(id)));
        assert!(ids.iter().all(|id| !recent.insert(id)));
    }

    #[test]
    fn ids_are_deterministic_and_scoped() {
        let a = RecordId::derive("s1", "trades", Some("42"), b"{}");
        assert_eq!(
            a,
            RecordId::derive("s1", "trades", Some("42"), b"{\"other\":1}")
        );
        assert_ne!(a, RecordId::derive("s2", "trades", Some("42"), b"{}"));
        assert_ne!(a, RecordId::derive("s1", "ticker", Some("42"), b"{}"));
        let by_payload = RecordId::derive("s1", "trades", None, b"{\"p\":1}");
        assert_eq!(
            by_payload,
            RecordId::derive("s1", "trades", None, b"{\"p\":1}")
        );
        assert_ne!(
            by_payload,
            RecordId::derive("s1", "trades", None, b"{\"p\":2}")
        );
    }

    #[test]
    fn json_embeds_the_payload() {
        let stamp = Stamp {
            source: "src",
            node: "node-a",
            ingest_time_us: 9,
        };
        let record = stamp.record(
            "trades".into(),
            Some("BTC.USDT".into()),
            Some("7".into()),
            Some(5),
            Payload::parse(br#"{"price":"1.5"}"#.to_vec()).unwrap(),
        );
        let json: serde_json::Value = serde_json::from_str(&record.to_json()).unwrap();
        assert_eq!(json["payload"]["price"], "1.5");
        assert_eq!(json["id"].as_str().unwrap().len(), 32);
        assert_eq!(json["node"], "node-a");
        // Every field, the absent ones as null, the payload as it was given (spaces and all).
        let record = stamp.record(
            "t\"x".into(),
            None,
            None,
            None,
            Payload::parse(br#" [1, {"a": "\u00e9"}] "#.to_vec()).unwrap(),
        );
        let text = record.to_json();
        assert!(
            text.ends_with(r#","payload": [1, {"a": "\u00e9"}] }"#),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": record.id.to_hex(),
                "source": "src",
                "stream": "t\"x",
                "key": null,
                "upstream_id": null,
                "event_time_us": null,
                "ingest_time_us": 9,
                "node": "node-a",
                "payload": [1, {"a": "é"}],
            })
        );
    }

    #[test]
    fn a_payload_is_one_json_value_in_utf8() {
        for good in [&b"{}"[..], b" [1, \"\xc3\xa9\"] ", b"null", b"\"x\""] {
            assert!(Payload::parse(good.to_vec()).is_ok(), "{good:?}");
        }
        for bad in [
            &b""[..],
            b"{",
            b"{} {}",
            b"\"\xff\"",
            b"{\"a\":\"\xc3\"}",
            b"not json",
        ] {
            assert_eq!(Payload::parse(bad.to_vec()), Err(NotJson), "{bad:?}");
        }
        assert_eq!(Payload::stored("{\"a\"".into()).as_str(), "null");
    }
}
