//! The messages of a link between nodes, both ways, and reading records off it.

use std::borrow::Cow;

use serde::Deserialize;

use crate::fanout::{Filter, Parts, Stage};
use crate::record::RecordId;

#[derive(Deserialize)]
pub(super) struct Interest {
    pub(super) filters: Vec<Filter>,
    /// The interest version, confirmed back once the filters are set.
    #[serde(default)]
    pub(super) version: Option<u64>,
}

/// A peer's confirmation that it has set the filters of interest `confirmed`.
#[derive(Deserialize)]
pub(super) struct Confirmed {
    pub(super) confirmed: u64,
}

/// A peer's word that it dropped records for this link (it was behind) and its outbox no
/// longer held them.
#[derive(Deserialize)]
pub(super) struct PeerGap {
    pub(super) gap: Dropped,
}

#[derive(Deserialize)]
pub(super) struct Dropped {
    pub(super) dropped: u64,
}

/// A peer's first word on a numbered link: its outbox epoch, the number after which it sends
/// records, and whether that is where the link asked to resume.
#[derive(Deserialize)]
pub(super) struct LinkOpened {
    pub(super) link: Opened,
}

#[derive(Deserialize)]
pub(super) struct Opened {
    pub(super) epoch: u64,
    pub(super) from: u64,
    pub(super) complete: bool,
}

/// What a link asks for when it opens (`/cluster/v1/stream?resume=1&epoch=…&after=…`):
/// numbered records, from a position when it has one.
#[derive(Debug, Default, Deserialize)]
pub struct LinkQuery {
    #[serde(default)]
    pub(super) resume: Option<u8>,
    #[serde(default)]
    pub(super) epoch: Option<u64>,
    #[serde(default)]
    pub(super) after: Option<u64>,
}

/// The `gap` notice for this node's clients: records of `sources`, which `peer` collects,

#[derive(Deserialize)]
pub(super) struct Head<'a> {
    #[serde(borrow)]
    pub(super) id: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) source: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) stream: Cow<'a, str>,
    #[serde(borrow, default)]
    pub(super) key: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(super) upstream_id: Option<Cow<'a, str>>,
}

impl<'a> Head<'a> {
    /// What filters look at.
    pub(super) fn parts(self) -> Parts<'a> {
        Parts {
            source: self.source,
            stream: self.stream,
            key: self.key,
            upstream_id: self.upstream_id,
        }
    }
}

/// A stored record, as a peer link sends it; a decoded one goes bare.
#[derive(Deserialize)]
struct StoredRecord<'a> {
    #[allow(dead_code)]
    pub(super) after: Stage,
    #[serde(borrow)]
    pub(super) record: &'a serde_json::value::RawValue,
}

/// A record on a numbered link: its number in the peer's outbox, its stage and the record.
#[derive(Deserialize)]
struct Numbered<'a> {
    pub(super) seq: u64,
    pub(super) after: Stage,
    #[serde(borrow)]
    pub(super) record: &'a serde_json::value::RawValue,
}

/// A record from a numbered link: its number, id, the fields filters look at, its stage and
/// its JSON.
pub(super) fn numbered(text: &str) -> Option<(u64, RecordId, Head<'_>, Stage, &str)> {
    let n = serde_json::from_str::<Numbered>(text).ok()?;
    let record = n.record.get();
    let head = serde_json::from_str::<Head>(record).ok()?;
    Some((n.seq, RecordId::from_hex(&head.id)?, head, n.after, record))
}

/// A record from a peer link (unnumbered, from a peer that numbers nothing): what filters
/// look at, its stage and its JSON.
pub(super) fn relayed(text: &str) -> Option<(RecordId, Head<'_>, Stage, &str)> {
    let (head, stage, record) = match serde_json::from_str::<Head>(text) {
        Ok(head) => (head, Stage::Decoded, text),
        Err(_) => {
            let stored = serde_json::from_str::<StoredRecord>(text).ok()?;
            let record = stored.record.get();
            (
                serde_json::from_str::<Head>(record).ok()?,
                Stage::Stored,
                record,
            )
        }
    };
    Some((RecordId::from_hex(&head.id)?, head, stage, record))
}
