//! The writer task: connects (and reconnects with backoff), waits for a full batch or the
//! flush interval, commits queued batches together, acknowledges them, and on shutdown keeps
//! writing until the buffer is empty or `store.drain_timeout_ms` has passed. With two
//! connections (`store.postgres_in_flight = 2`), a second full batch is written while the
//! first is still in flight; [`Order`] keeps their commits in order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::order::{Order, Step};
use super::{Backend, Shared, StoreSettings, Taken, WriteError, Written, lock};
use crate::backoff::Backoff;
use crate::deadletter::{DeadLetter, DeadStage};
use crate::record::{Record, RecordId};

/// One connection of the store, and whether it is up.
struct Lane<B> {
    backend: B,
    connected: bool,
}

/// What a write task hands back: the lane, the batches and the outcome.
type Ended<B> = (Lane<B>, Taken, Result<Written, WriteError>);

/// A write in flight.
struct InFlight<B> {
    task: JoinHandle<Ended<B>>,
    progress: watch::Receiver<Step>,
    started: Instant,
}

/// Writes batches through `lanes` (one connection each): with two, a second batch is written
/// while the first commits, in the order [`Order`] keeps.
pub(super) async fn write_loop<B: Backend>(
    lanes: Vec<B>,
    shared: Arc<Shared>,
    settings: StoreSettings,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(
        Duration::from_millis(settings.reconnect_min_ms),
        Duration::from_millis(settings.reconnect_max_ms),
    );
    let flush = Duration::from_millis(settings.flush_ms);
    let batch_max = settings.batch_max.max(1);
    let mut free: Vec<Lane<B>> = lanes
        .into_iter()
        .map(|backend| Lane {
            backend,
            connected: false,
        })
        .collect();
    // Oldest first.
    let mut flight: VecDeque<InFlight<B>> = VecDeque::new();
    let mut drain_deadline: Option<Instant> = None;
    let mut lane_retry_at = Instant::now();
    loop {
        if drain_deadline.is_none() && cancel.is_cancelled() {
            drain_deadline =
                Some(Instant::now() + Duration::from_millis(settings.drain_timeout_ms));
        }
        if let Some(deadline) = drain_deadline {
            if shared.idle() && flight.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                tracing::error!(
                    "stopping with {} records not stored: the {} store did not take them within \
                     store.drain_timeout_ms ({} ms)",
                    shared.backlog(),
                    shared.kind,
                    settings.drain_timeout_ms
                );
                for write in flight {
                    write.task.abort();
                }
                break;
            }
        }
        // A lane that lost its connection reconnects once nothing is in flight. While another
        // lane is up, a lane that cannot connect (a server out of connections) is tried again
        // after a backoff, and the writer goes on with the lanes it has.
        let lanes_up = free.iter().filter(|lane| lane.connected).count();
        if flight.is_empty()
            && (lanes_up == 0 || Instant::now() >= lane_retry_at)
            && let Some(lane) = free.iter_mut().find(|lane| !lane.connected)
        {
            match lane.backend.connect().await {
                Ok(()) => {
                    if shared.batches.load(Relaxed) > 0 || shared.write_errors.load(Relaxed) > 0 {
                        shared.reconnects.fetch_add(1, Relaxed);
                        tracing::info!("reconnected to the {} store", shared.kind);
                    }
                    lane.connected = true;
                    shared.connected.store(true, Relaxed);
                    backoff.reset();
                    continue;
                }
                Err(error) => {
                    shared.failed(&error);
                    let wait = backoff.fail();
                    if lanes_up == 0 {
                        shared.connected.store(false, Relaxed);
                        tracing::warn!(
                            "the {} store is unavailable ({error}); {} records buffered, retrying in {} ms",
                            shared.kind,
                            shared.queued(),
                            wait.as_millis()
                        );
                        sleep_or_cancel(wait, &cancel, drain_deadline.is_some()).await;
                        continue;
                    }
                    tracing::warn!(
                        "another connection to the {} store failed ({error}); writing on {lanes_up}, \
                         retrying in {} ms",
                        shared.kind,
                        wait.as_millis()
                    );
                    lane_retry_at = Instant::now() + wait;
                }
            }
        }
        let draining = drain_deadline.is_some();
        if let Some(oldest) = flight.front_mut() {
            // A second write starts only for a full batch (or while draining); otherwise the
            // one in flight finishes first.
            let lane_free = free.iter().any(|lane| lane.connected);
            let ready = lane_free && !shared.idle() && (draining || shared.queued() >= batch_max);
            if !ready {
                let more = async {
                    if lane_free && !draining {
                        full_batch(&shared, batch_max, &cancel).await;
                    } else {
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    ended = &mut oldest.task => {
                        let started = flight.pop_front().map_or_else(Instant::now, |w| w.started);
                        settle(ended, started, &mut flight, &mut free, &shared).await;
                        continue;
                    }
                    () = more => {}
                }
                if shared.queued() < batch_max {
                    continue;
                }
            }
        } else {
            // Wait for a full batch, or for the flush interval once something is waiting.
            if shared.idle() {
                if draining {
                    continue;
                }
                tokio::select! {
                    () = shared.arrived.notified() => {}
                    () = cancel.cancelled() => {}
                }
                continue;
            }
            if shared.queued() < batch_max && !draining {
                let _ = tokio::time::timeout(flush, full_batch(&shared, batch_max, &cancel)).await;
            }
        }
        let Some(at) = free.iter().position(|lane| lane.connected) else {
            continue;
        };
        let mut lane = free.swap_remove(at);
        let taken = shared.take(batch_max);
        let order = Order::after(flight.back().map(|write| write.progress.clone()));
        let progress = order.progress();
        let task = tokio::spawn(async move {
            let result = lane
                .backend
                .write_ordered(
                    &taken.records,
                    &taken.cursors,
                    &taken.states,
                    &taken.dead,
                    order,
                )
                .await;
            (lane, taken, result)
        });
        flight.push_back(InFlight {
            task,
            progress,
            started: Instant::now(),
        });
    }
    shared.closed.cancel();
    shared.room.close();
    // Whatever is still queued was not stored: its submitters learn it from their receipts.
    lock(&shared.buffer).clear();
}

/// Until `batch_max` records wait, or the store is told to stop.
async fn full_batch(shared: &Shared, batch_max: usize, cancel: &CancellationToken) {
    while shared.queued() < batch_max {
        tokio::select! {
            () = shared.arrived.notified() => {}
            () = cancel.cancelled() => break,
        }
    }
}

/// The oldest write in flight has ended. Committed: acknowledge it. Failed: nothing after it
/// committed (see [`Order`]); the later write is taken back first, so that both return to the
/// buffer in order, then the failed batch is dealt with as one written alone would be.
async fn settle<B: Backend>(
    ended: Result<Ended<B>, tokio::task::JoinError>,
    started: Instant,
    flight: &mut VecDeque<InFlight<B>>,
    free: &mut Vec<Lane<B>>,
    shared: &Shared,
) {
    let (mut lane, mut taken, result) = joined(ended);
    let result = match result {
        Err(WriteError::Rejected(message)) => {
            let later = take_back(flight, free, shared).await;
            let result = write_refused(&mut lane.backend, shared, &taken, &message).await;
            return_later(shared, later);
            result.map(|(written, refused)| {
                taken.remove_refused(&refused.ids);
                taken.add_dead(refused.dead);
                written
            })
        }
        other => other,
    };
    match result {
        Ok(written) => {
            shared.count_dead(&taken.dead);
            shared.rows_written.fetch_add(written.inserted, Relaxed);
            shared.duplicates.fetch_add(written.duplicates, Relaxed);
            shared.batches.fetch_add(1, Relaxed);
            shared
                .last_batch_us
                .store(started.elapsed().as_micros() as u64, Relaxed);
            shared.done(taken).await;
        }
        Err(error) => {
            let later = take_back(flight, free, shared).await;
            if !matches!(error, WriteError::Cancelled) {
                shared.failed(&error);
                shared.connected.store(false, Relaxed);
                lane.connected = false;
                tracing::warn!(
                    "writing {} records to the {} store failed ({error}); they stay buffered",
                    taken.records.len(),
                    shared.kind
                );
            }
            return_later(shared, later);
            shared.put_back(taken);
        }
    }
    free.push(lane);
}

/// The writes in flight after a failed one, which cannot commit: their batches, newest last.
async fn take_back<B: Backend>(
    flight: &mut VecDeque<InFlight<B>>,
    free: &mut Vec<Lane<B>>,
    shared: &Shared,
) -> Vec<Taken> {
    let mut later = Vec::new();
    while let Some(write) = flight.pop_front() {
        let (mut lane, taken, result) = joined(write.task.await);
        match result {
            // Not expected (a write waits for the commit of the one before it), but what
            // committed is acknowledged.
            Ok(_) => {
                free.push(lane);
                shared.done(taken).await;
                continue;
            }
            Err(WriteError::Cancelled) => {}
            Err(error) => {
                shared.failed(&error);
                lane.connected = !matches!(error, WriteError::Connection(_));
            }
        }
        free.push(lane);
        later.push(taken);
    }
    later
}

/// Batches taken back go to the front of the buffer, in their order: put back newest first.
fn return_later(shared: &Shared, later: Vec<Taken>) {
    for taken in later.into_iter().rev() {
        shared.put_back(taken);
    }
}

/// A write task's outcome; a panic in it goes on up, as it would have in the writer itself.
fn joined<T>(ended: Result<T, tokio::task::JoinError>) -> T {
    match ended {
        Ok(value) => value,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

/// What the store refused of a batch: the rows' ids, and the dead letters written for them
/// (and for any cursor it refused).
#[derive(Default)]
struct Refused {
    ids: Vec<RecordId>,
    dead: Vec<DeadLetter>,
}

/// The store refused `taken` together: write it in halves until the bad rows stand alone,
/// so that only they are refused, then write the cursors with the batch's dead letters and
/// the refused rows as dead letters of their own. One bad row in n costs about 2·log2(n)
/// writes, not n. A cursor the store refuses becomes a dead letter too, so one source's bad
/// cursor never holds the other sources' batches back.
async fn write_refused<B: Backend>(
    backend: &mut B,
    shared: &Shared,
    taken: &Taken,
    message: &str,
) -> Result<(Written, Refused), WriteError> {
    let records = &taken.records;
    tracing::warn!(
        "the {} store refused a batch of {} ({message}); writing it in halves to find the bad \
         rows",
        shared.kind,
        records.len()
    );
    let mut refused = Refused::default();
    let total = write_halves(backend, shared, records, &mut refused).await?;
    let mut dead: Vec<DeadLetter> = taken.dead.iter().chain(&refused.dead).cloned().collect();
    match backend
        .write(&[], &taken.cursors, &taken.states, &dead)
        .await
    {
        Err(WriteError::Rejected(_)) => {}
        other => return other.map(|_| (total, refused)),
    }
    // A cursor, or a dead letter, was refused: each cursor alone, then the dead letters.
    for (source, cursor) in &taken.cursors {
        let one = [(source.clone(), cursor.clone())];
        match backend.write(&[], &one, &[], &[]).await {
            Ok(_) => {}
            Err(WriteError::Rejected(why)) => {
                tracing::error!(
                    "the {} store refused the cursor of source `{source}`: {why}",
                    shared.kind
                );
                let letter = DeadLetter {
                    source: source.to_string(),
                    stage: DeadStage::Cursor,
                    plugin: None,
                    step: None,
                    reason: format!("the {} store refused the cursor: {why}", shared.kind),
                    raw: cursor.as_bytes().to_vec(),
                    meta: Default::default(),
                    at_us: crate::clock::now_us(),
                };
                refused.dead.push(letter.clone());
                dead.push(letter);
            }
            Err(error) => return Err(error),
        }
    }
    match backend.write(&[], &[], &taken.states, &dead).await {
        Ok(_) => {}
        Err(WriteError::Rejected(why)) => {
            // Not expected: dead letters are stored as bytes and escaped text.
            tracing::error!(
                "the {} store refused {} dead letters ({why}); they are lost",
                shared.kind,
                dead.len()
            );
        }
        Err(error) => return Err(error),
    }
    Ok((total, refused))
}

/// Write `records`, which the store refused together: each refused part is split in two
/// (first half first, so the order is kept) until a refused part is a single row, which goes
/// to `refused`.
async fn write_halves<B: Backend>(
    backend: &mut B,
    shared: &Shared,
    records: &[Record],
    refused: &mut Refused,
) -> Result<Written, WriteError> {
    // The whole was refused already: start with its halves.
    let (first, rest) = records.split_at(records.len() / 2);
    let mut parts = vec![rest, first];
    let mut total = Written::default();
    while let Some(part) = parts.pop() {
        if part.is_empty() {
            continue;
        }
        match backend.write(part, &[], &[], &[]).await {
            Ok(w) => {
                total.inserted += w.inserted;
                total.duplicates += w.duplicates;
            }
            Err(WriteError::Rejected(message)) if part.len() == 1 => {
                reject(shared, &part[0], &message);
                refused.ids.push(part[0].id);
                refused.dead.push(DeadLetter::refused_row(
                    &part[0],
                    &format!("the {} store refused the row: {message}", shared.kind),
                ));
            }
            Err(WriteError::Rejected(_)) => {
                let (first, rest) = part.split_at(part.len() / 2);
                parts.push(rest);
                parts.push(first);
            }
            Err(error) => return Err(error),
        }
    }
    Ok(total)
}

fn reject(shared: &Shared, record: &Record, message: &str) {
    shared.rejected.fetch_add(1, Relaxed);
    let text = format!(
        "record {} of source `{}` was refused by the {} store and went to the dead-letter \
         store: {message}",
        record.id.to_hex(),
        record.source,
        shared.kind
    );
    tracing::error!("{text}");
    *lock(&shared.last_error) = Some(text);
}

async fn sleep_or_cancel(wait: Duration, cancel: &CancellationToken, draining: bool) {
    if draining {
        tokio::time::sleep(wait).await;
    } else {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = cancel.cancelled() => {}
        }
    }
}
