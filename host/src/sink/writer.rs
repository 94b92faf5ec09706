//! The writer task: connects (and reconnects with backoff), waits for a full batch or the
//! flush interval, commits queued batches together, acknowledges them, and on shutdown keeps
//! writing until the buffer is empty or `store.drain_timeout_ms` has passed.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{Backend, Shared, StoreSettings, Taken, WriteError, Written, lock};
use crate::backoff::Backoff;
use crate::record::Record;

pub(super) async fn write_loop<B: Backend>(
    mut backend: B,
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
    let mut drain_deadline: Option<Instant> = None;
    loop {
        if drain_deadline.is_none() && cancel.is_cancelled() {
            drain_deadline =
                Some(Instant::now() + Duration::from_millis(settings.drain_timeout_ms));
        }
        if let Some(deadline) = drain_deadline {
            if shared.idle() {
                break;
            }
            if Instant::now() >= deadline {
                tracing::error!(
                    "stopping with {} records not stored: the {} store did not take them within \
                     store.drain_timeout_ms ({} ms)",
                    shared.queued(),
                    shared.kind,
                    settings.drain_timeout_ms
                );
                break;
            }
        }
        if !shared.connected.load(Relaxed) {
            match backend.connect().await {
                Ok(()) => {
                    if shared.batches.load(Relaxed) > 0 || shared.write_errors.load(Relaxed) > 0 {
                        shared.reconnects.fetch_add(1, Relaxed);
                        tracing::info!("reconnected to the {} store", shared.kind);
                    }
                    shared.connected.store(true, Relaxed);
                    backoff.reset();
                }
                Err(error) => {
                    shared.failed(&error);
                    let wait = backoff.fail();
                    tracing::warn!(
                        "the {} store is unavailable ({error}); {} records buffered, retrying in {} ms",
                        shared.kind,
                        shared.queued(),
                        wait.as_millis()
                    );
                    sleep_or_cancel(wait, &cancel, drain_deadline.is_some()).await;
                    continue;
                }
            }
        }
        // Wait for a full batch, or for the flush interval once something is waiting.
        if shared.idle() {
            if drain_deadline.is_some() {
                continue;
            }
            tokio::select! {
                () = shared.arrived.notified() => {}
                () = cancel.cancelled() => {}
            }
            continue;
        }
        if shared.queued() < batch_max && drain_deadline.is_none() {
            let _ = tokio::time::timeout(flush, async {
                while shared.queued() < batch_max {
                    tokio::select! {
                        () = shared.arrived.notified() => {}
                        () = cancel.cancelled() => break,
                    }
                }
            })
            .await;
        }
        let taken = shared.take(batch_max);
        let started = Instant::now();
        match write_batch(&mut backend, &shared, &taken).await {
            Ok(written) => {
                shared.rows_written.fetch_add(written.inserted, Relaxed);
                shared.duplicates.fetch_add(written.duplicates, Relaxed);
                shared.batches.fetch_add(1, Relaxed);
                shared
                    .last_batch_us
                    .store(started.elapsed().as_micros() as u64, Relaxed);
                shared.done(taken).await;
            }
            Err(error) => {
                shared.failed(&error);
                shared.connected.store(false, Relaxed);
                tracing::warn!(
                    "writing {} records to the {} store failed ({error}); they stay buffered",
                    taken.records.len(),
                    shared.kind
                );
                shared.put_back(taken);
            }
        }
    }
    shared.closed.cancel();
    shared.room.close();
    // Whatever is still queued was not stored: its submitters learn it from their receipts.
    lock(&shared.buffer).clear();
}

/// Write batches and their cursors; when the database rejects the data, split it in halves
/// until the bad rows stand alone, so that only they are lost (counted and logged), not the
/// batch, then write the cursors. One bad row in n costs about 2·log2(n) writes, not n.
async fn write_batch<B: Backend>(
    backend: &mut B,
    shared: &Shared,
    taken: &Taken,
) -> Result<Written, WriteError> {
    let records = &taken.records;
    match backend.write(records, &taken.cursors).await {
        Err(WriteError::Rejected(message)) => {
            tracing::warn!(
                "the {} store refused a batch of {} ({message}); writing it in halves to find \
                 the bad rows",
                shared.kind,
                records.len()
            );
            let total = write_halves(backend, shared, records).await?;
            backend.write(&[], &taken.cursors).await?;
            Ok(total)
        }
        other => other,
    }
}

/// Write `records`, which the store refused together: each refused part is split in two
/// (first half first, so the order is kept) until a refused part is a single row, dropped.
async fn write_halves<B: Backend>(
    backend: &mut B,
    shared: &Shared,
    records: &[Record],
) -> Result<Written, WriteError> {
    // The whole was refused already: start with its halves.
    let (first, rest) = records.split_at(records.len() / 2);
    let mut parts = vec![rest, first];
    let mut total = Written::default();
    while let Some(part) = parts.pop() {
        if part.is_empty() {
            continue;
        }
        match backend.write(part, &[]).await {
            Ok(w) => {
                total.inserted += w.inserted;
                total.duplicates += w.duplicates;
            }
            Err(WriteError::Rejected(message)) if part.len() == 1 => {
                reject(shared, &part[0], &message)
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
        "record {} of source `{}` was refused by the {} store and dropped: {message}",
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
