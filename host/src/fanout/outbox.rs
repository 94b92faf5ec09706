//! The outbox: the records ingested here lately, numbered, for links to other nodes to resume
//! from. Each record offered to peer links gets the next number of this process (`seq`, with
//! the process's `epoch`); a link that drops, or falls behind and loses records from its
//! queue, asks for what followed the last number it got and misses nothing, as long as the
//! outbox still holds it (bounded by bytes and age, `fanout.relay_buffer_bytes` and
//! `fanout.relay_buffer_ms`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::filter::{Filter, Parts, Stage};

/// A position in one node's outbox: the process (`epoch`) and the last record number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkPosition {
    pub epoch: u64,
    pub seq: u64,
}

struct Entry {
    seq: u64,
    at: Instant,
    stage: Stage,
    json: Arc<str>,
}

/// What a link missed, from the outbox.
pub struct Missed {
    /// The records after the asked position that match the link's filters, in order.
    pub records: Vec<(u64, Stage, Arc<str>)>,
    /// Whether the outbox held every record after the position (else some are gone).
    pub complete: bool,
    /// The number of the last record made so far: later ones reach the link live.
    pub last: u64,
}

pub(super) struct Outbox {
    epoch: u64,
    /// The number of the next record.
    next: u64,
    entries: VecDeque<Entry>,
    bytes: usize,
    max_bytes: usize,
    max_age: Duration,
    /// When a peer link was last attached: the outbox keeps filling for `max_age` after,
    /// so a link that dropped can resume.
    linked_at: Option<Instant>,
}

impl Outbox {
    pub(super) fn new(max_bytes: usize, max_age: Duration) -> Self {
        // A process's records are told apart from a restarted one's by the epoch: the
        // start time in µs, unique enough for one node id.
        let epoch = crate::clock::now_us().max(1) as u64;
        Outbox {
            epoch,
            next: 1,
            entries: VecDeque::new(),
            bytes: 0,
            max_bytes,
            max_age,
            linked_at: None,
        }
    }

    pub(super) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Note that peer links are attached now.
    pub(super) fn linked(&mut self, now: Instant) {
        self.linked_at = Some(now);
    }

    /// Whether records go in: a link is attached, or was lately.
    pub(super) fn filling(&self, now: Instant) -> bool {
        self.max_bytes > 0
            && self
                .linked_at
                .is_some_and(|at| now.duration_since(at) < self.max_age)
    }

    /// The next record's number.
    pub(super) fn number(&mut self) -> u64 {
        let seq = self.next;
        self.next += 1;
        seq
    }

    /// Keep record `seq` (when filling), dropping the oldest past the bounds.
    pub(super) fn keep(&mut self, seq: u64, stage: Stage, json: Arc<str>, now: Instant) {
        if !self.filling(now) {
            self.clear();
            return;
        }
        self.bytes += json.len();
        self.entries.push_back(Entry {
            seq,
            at: now,
            stage,
            json,
        });
        while let Some(front) = self.entries.front() {
            let old = now.duration_since(front.at) > self.max_age;
            if !(old || self.bytes > self.max_bytes) {
                break;
            }
            self.bytes -= front.json.len();
            self.entries.pop_front();
        }
    }

    fn clear(&mut self) {
        if !self.entries.is_empty() {
            self.entries.clear();
            self.bytes = 0;
        }
    }

    /// The number of the last record made.
    pub(super) fn last(&self) -> u64 {
        self.next - 1
    }

    /// The records after `after` that match `filters`.
    pub(super) fn missed(&self, after: u64, filters: &[Filter]) -> Missed {
        // Complete when the first number wanted is still here (or none was made yet).
        let first_kept = self.entries.front().map_or(self.next, |e| e.seq);
        let complete = after.saturating_add(1) >= first_kept && after < self.next;
        let start = self.entries.partition_point(|e| e.seq <= after);
        let records = self
            .entries
            .range(start..)
            .filter(|e| {
                serde_json::from_str::<Parts>(&e.json)
                    .is_ok_and(|p| filters.iter().any(|f| f.matches_parts(&p, e.stage)))
            })
            .map(|e| (e.seq, e.stage, e.json.clone()))
            .collect();
        Missed {
            records,
            complete,
            last: self.next - 1,
        }
    }
}
