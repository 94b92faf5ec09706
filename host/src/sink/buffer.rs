//! The bounded queue in front of a database: batches wait here, in order, until the writer
//! commits them, and each batch's submitter learns of its commit through a [`Receipt`].
//!
//! A batch keeps its identity through the queue (its source, its records, the cursor they
//! reach and its acknowledgement), so the writer can commit several batches in one
//! transaction and still acknowledge each one, and put them back unchanged when a write fails.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::deadletter::DeadLetter;
use crate::record::{Record, RecordId};

/// What a source hands the store: its records, the cursor they reach, its transforms' state
/// after them, and the inputs of the batch that could not be processed.
#[derive(Debug)]
pub struct Batch {
    /// The source the records came from (the cursor is this source's).
    pub source: Arc<str>,
    pub records: Vec<Record>,
    /// Where the source has got to once these records are stored; committed with them.
    pub cursor: Option<String>,
    /// The state of its stateful transform steps after this batch; committed with it.
    pub states: Vec<StepState>,
    /// Written to the dead-letter store in the same transaction as the records and cursor.
    pub dead: Vec<DeadLetter>,
}

/// A transform step's state, kept with its source's cursor and given back to the step wherever
/// the source opens next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepState {
    /// The step's place in the chain (0 is the first transform).
    pub step: u32,
    /// The digest of the plugin that made it: a state is given back to that plugin only.
    pub plugin: String,
    pub state: Vec<u8>,
}

/// A batch the store has committed: its records and its cursor are in the database, in the
/// same transaction.
#[derive(Debug)]
pub struct Committed {
    /// The records stored (a row the database refused is not among them).
    pub records: Vec<Record>,
    pub cursor: Option<String>,
    /// Rows of the batch the database refused: in the dead-letter store, not stored.
    pub refused: usize,
}

/// The store has stopped (the node is shutting down) before committing a batch.
#[derive(Debug, thiserror::Error)]
#[error("the store is shutting down; the batch was not stored")]
pub struct StoreClosedError;

/// Resolves once the store has committed the batch it was given for.
#[derive(Debug)]
pub struct Receipt(oneshot::Receiver<Committed>);

impl Receipt {
    /// Wait for the commit.
    pub async fn committed(self) -> Result<Committed, StoreClosedError> {
        self.0.await.map_err(|_| StoreClosedError)
    }
}

/// One queued batch.
pub(crate) struct Pending {
    source: Arc<str>,
    records: Vec<Record>,
    cursor: Option<String>,
    states: Vec<StepState>,
    dead: Vec<DeadLetter>,
    ack: Option<oneshot::Sender<Committed>>,
}

impl Pending {
    /// A batch and the receipt its submitter waits on.
    pub(crate) fn new(batch: Batch) -> (Pending, Receipt) {
        let (ack, receipt) = oneshot::channel();
        (
            Pending {
                source: batch.source,
                records: batch.records,
                cursor: batch.cursor,
                states: batch.states,
                dead: batch.dead,
                ack: Some(ack),
            },
            Receipt(receipt),
        )
    }

    /// Records (and dead letters) with no source cursor and no acknowledgement: a copy for
    /// an optional sink.
    pub(crate) fn copy(records: Vec<Record>, dead: Vec<DeadLetter>) -> Pending {
        Pending {
            source: Arc::from(""),
            records,
            cursor: None,
            states: Vec::new(),
            dead,
            ack: None,
        }
    }

    /// Split off the first `n` records as a part of their own, with no cursor, no dead
    /// letters and no acknowledgement: those stay with the rest, which completes the batch.
    pub(crate) fn split_front(&mut self, n: usize) -> Pending {
        let rest = self.records.split_off(n);
        Pending {
            source: self.source.clone(),
            records: std::mem::replace(&mut self.records, rest),
            cursor: None,
            states: Vec::new(),
            dead: Vec::new(),
            ack: None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }
}

/// Batches taken together for one transaction.
#[derive(Default)]
pub(crate) struct Taken {
    /// Every record, batch after batch.
    pub(crate) records: Vec<Record>,
    /// The last cursor of each source among the batches, in the order first seen.
    pub(crate) cursors: Vec<(Arc<str>, String)>,
    /// The last state of each source's steps among the batches.
    pub(crate) states: Vec<(Arc<str>, StepState)>,
    /// Every dead letter, batch after batch.
    pub(crate) dead: Vec<DeadLetter>,
    /// Records taken out of `records` because the database refused them.
    refused: usize,
    parts: Vec<Part>,
}

struct Part {
    source: Arc<str>,
    len: usize,
    cursor: Option<String>,
    states: Vec<StepState>,
    dead: usize,
    /// Rows the database refused (they are no longer in `records`).
    refused: usize,
    ack: Option<oneshot::Sender<Committed>>,
}

impl Taken {
    /// Take whole batches from the front of `queue` until `max` records are reached (at
    /// least one batch, however large).
    pub(crate) fn from_queue(queue: &mut VecDeque<Pending>, max: usize) -> Taken {
        let mut taken = Taken::default();
        while let Some(front) = queue.front() {
            if !taken.parts.is_empty() && taken.records.len() + front.len() > max {
                break;
            }
            let pending = queue.pop_front().expect("front exists");
            if let Some(cursor) = &pending.cursor {
                match taken.cursors.iter_mut().find(|(s, _)| *s == pending.source) {
                    Some((_, c)) => c.clone_from(cursor),
                    None => taken.cursors.push((pending.source.clone(), cursor.clone())),
                }
            }
            for state in &pending.states {
                let same = |(s, st): &&mut (Arc<str>, StepState)| {
                    *s == pending.source && st.step == state.step
                };
                match taken.states.iter_mut().find(same) {
                    Some((_, st)) => st.clone_from(state),
                    None => taken.states.push((pending.source.clone(), state.clone())),
                }
            }
            taken.parts.push(Part {
                source: pending.source,
                len: pending.records.len(),
                cursor: pending.cursor,
                states: pending.states,
                dead: pending.dead.len(),
                refused: 0,
                ack: pending.ack,
            });
            taken.records.extend(pending.records);
            taken.dead.extend(pending.dead);
        }
        taken
    }

    /// The write failed: the batches as they were, to go back to the front of the queue.
    pub(crate) fn into_pending(self) -> Vec<Pending> {
        let mut records = self.records.into_iter();
        let mut dead = self.dead.into_iter();
        self.parts
            .into_iter()
            .map(|part| Pending {
                source: part.source,
                records: records.by_ref().take(part.len).collect(),
                cursor: part.cursor,
                states: part.states,
                dead: dead.by_ref().take(part.dead).collect(),
                ack: part.ack,
            })
            .collect()
    }

    /// Take the rows the database refused out of the batches (they went to the dead-letter
    /// store): they are neither acknowledged as stored nor copied to other sinks.
    pub(crate) fn remove_refused(&mut self, refused: &[RecordId]) {
        if refused.is_empty() {
            return;
        }
        let refused: std::collections::HashSet<&RecordId> = refused.iter().collect();
        let mut records = std::mem::take(&mut self.records).into_iter();
        for part in &mut self.parts {
            let kept_before = self.records.len();
            self.records.extend(
                records
                    .by_ref()
                    .take(part.len)
                    .filter(|r| !refused.contains(&r.id)),
            );
            let kept = self.records.len() - kept_before;
            part.refused += part.len - kept;
            self.refused += part.len - kept;
            part.len = kept;
        }
    }

    /// Records taken from the buffer (refused ones included): the room they held.
    pub(crate) fn taken_len(&self) -> usize {
        self.records.len() + self.refused
    }

    /// Dead letters found while writing (refused rows, a refused cursor): they go with the
    /// last batch, so that a sink handing the batches on hands them on too.
    pub(crate) fn add_dead(&mut self, dead: Vec<DeadLetter>) {
        if let Some(last) = self.parts.last_mut() {
            last.dead += dead.len();
            self.dead.extend(dead);
        }
    }

    /// The write committed: tell every submitter.
    pub(crate) fn acknowledge(self) {
        let mut records = self.records.into_iter();
        for part in self.parts {
            let mine: Vec<Record> = records.by_ref().take(part.len).collect();
            if let Some(ack) = part.ack {
                // A submitter that stopped listening has nothing left to do with it.
                let _ = ack.send(Committed {
                    records: mine,
                    cursor: part.cursor,
                    refused: part.refused,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Payload, RecordId};

    fn batch(source: &str, ids: std::ops::Range<u64>, cursor: Option<&str>) -> Batch {
        Batch {
            source: source.into(),
            records: ids
                .map(|n| Record {
                    id: RecordId::derive(source, "s", Some(&n.to_string()), b"{}"),
                    source: source.into(),
                    stream: "s".into(),
                    key: None,
                    upstream_id: Some(n.to_string()),
                    event_time_us: None,
                    ingest_time_us: 0,
                    node: "n".into(),
                    payload: Payload::parse(b"{}".to_vec()).unwrap(),
                })
                .collect(),
            cursor: cursor.map(str::to_owned),
            states: Vec::new(),
            dead: Vec::new(),
        }
    }

    #[tokio::test]
    async fn batches_keep_their_cursor_and_acknowledgement_through_a_failed_write() {
        let mut queue = VecDeque::new();
        let mut receipts = Vec::new();
        for (source, ids, cursor) in [
            ("a", 0..3, Some("a1")),
            ("b", 0..2, None),
            ("a", 3..5, Some("a2")),
            ("c", 0..9, Some("c1")),
        ] {
            let (pending, receipt) = Pending::new(batch(source, ids, cursor));
            queue.push_back(pending);
            receipts.push(receipt);
        }
        let taken = Taken::from_queue(&mut queue, 8);
        assert_eq!(
            taken.records.len(),
            7,
            "the fourth batch would pass the bound"
        );
        let cursors: Vec<(&str, &str)> = taken
            .cursors
            .iter()
            .map(|(s, c)| (&**s, c.as_str()))
            .collect();
        assert_eq!(cursors, [("a", "a2")], "the last cursor of a source wins");
        // A failed write puts the same batches back, in order.
        for pending in taken.into_pending().into_iter().rev() {
            queue.push_front(pending);
        }
        assert_eq!(
            queue.iter().map(Pending::len).collect::<Vec<_>>(),
            [3, 2, 2, 9]
        );
        let taken = Taken::from_queue(&mut queue, 8);
        taken.acknowledge();
        let mut receipts = receipts.into_iter();
        let first = receipts.next().unwrap().committed().await.unwrap();
        assert_eq!(first.records.len(), 3);
        assert_eq!(first.cursor.as_deref(), Some("a1"));
        assert_eq!(
            receipts.next().unwrap().committed().await.unwrap().records[1].upstream_id,
            Some("1".to_owned())
        );
        receipts.next().unwrap().committed().await.unwrap();
        // The fourth batch was never written: dropping the queue tells its submitter so.
        drop(queue);
        assert!(receipts.next().unwrap().committed().await.is_err());
    }

    #[test]
    fn a_large_batch_splits_with_the_cursor_on_its_last_part() {
        let (mut pending, _receipt) = Pending::new(batch("a", 0..10, Some("end")));
        let front = pending.split_front(4);
        assert_eq!((front.len(), pending.len()), (4, 6));
        assert!(front.cursor.is_none() && front.ack.is_none());
        assert_eq!(pending.cursor.as_deref(), Some("end"));
        assert_eq!(pending.records[0].upstream_id.as_deref(), Some("4"));
    }
}
