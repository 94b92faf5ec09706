//! Sinks: where records are stored.
//!
//! Every source hands its records to one [`StoreHandle`]. The handle keeps a bounded buffer
//! (counted in records): [`StoreHandle::submit`] waits while the buffer is full, which pauses
//! the source that called it — the WebSocket driver stops reading, the poller stops polling —
//! so a slow or absent database pushes back on the sources instead of growing memory or
//! dropping records.
//!
//! One writer task drains the buffer in batches into a [`Backend`]: [`postgres`] (production)
//! or [`sqlite`] (the embedded default). A batch leaves the buffer only once it is written, so
//! a database that goes away loses nothing that is in the buffer: the writer reconnects with
//! backoff and writes the same batch again. Record ids make that idempotent: a row already
//! stored is skipped (`ON CONFLICT (id) DO NOTHING`) and counted as a duplicate.

pub(crate) mod postgres;
pub(crate) mod sqlite;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::record::Record;

/// Where records go and the bounds of the buffer in front of the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// PostgreSQL URL (`postgres://user@host:5432/db`); without one the embedded store is used.
    pub postgres_url: Option<String>,
    /// The embedded store's file; default `<data_dir>/records.sqlite`.
    pub sqlite_path: Option<PathBuf>,
    /// Records held while the database is slow or away; when full, sources wait.
    pub buffer_records: usize,
    /// Most records per write.
    pub batch_max: usize,
    /// How long a partial batch may wait for more records before it is written.
    pub flush_ms: u64,
    /// First wait before reconnecting to the database; doubles per failure.
    pub reconnect_min_ms: u64,
    /// Longest wait before reconnecting.
    pub reconnect_max_ms: u64,
    /// On shutdown, how long the writer may keep trying to store what is buffered.
    pub drain_timeout_ms: u64,
    /// How PostgreSQL batches are written: `unnest` (one `INSERT … SELECT FROM UNNEST`) or
    /// `copy` (binary `COPY` into a staging table, then one `INSERT … SELECT`).
    pub postgres_method: PostgresMethod,
}

/// The PostgreSQL write method; see `StoreSettings::postgres_method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PostgresMethod {
    Unnest,
    /// The default: measured faster than `unnest` (`cargo bench -p anode --bench ingest`).
    #[default]
    Copy,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            postgres_url: None,
            sqlite_path: None,
            buffer_records: 200_000,
            batch_max: 5_000,
            flush_ms: 20,
            reconnect_min_ms: 200,
            reconnect_max_ms: 5_000,
            drain_timeout_ms: 10_000,
            postgres_method: PostgresMethod::default(),
        }
    }
}

/// The store could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("store.postgres_url `{url}` is not a valid PostgreSQL URL: {message}")]
    BadUrl { url: String, message: String },
    #[error("cannot open the embedded store {path}: {message}")]
    Sqlite { path: PathBuf, message: String },
}

/// The store has stopped (the node is shutting down); the records were not taken.
#[derive(Debug, thiserror::Error)]
#[error("the store is shutting down")]
pub struct StoreClosedError;

/// Why a write failed, which decides what the writer does next.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteError {
    /// The connection is gone or the server is unavailable: reconnect and write again.
    #[error("{0}")]
    Connection(String),
    /// The server refused the data itself: write the rows one by one to find the bad ones.
    #[error("{0}")]
    Rejected(String),
}

/// What a write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Written {
    /// Rows newly stored.
    pub(crate) inserted: u64,
    /// Rows whose id was already stored.
    pub(crate) duplicates: u64,
}

/// A database the writer can store batches in.
pub(crate) trait Backend: Send + 'static {
    /// Connect (or reconnect) and make sure the schema exists.
    fn connect(&mut self) -> impl Future<Output = Result<(), WriteError>> + Send;
    /// Store a batch in one transaction, skipping ids already stored.
    fn write(
        &mut self,
        batch: &[Record],
    ) -> impl Future<Output = Result<Written, WriteError>> + Send;
    /// Where the data goes, for the API (no password).
    fn describe(&self) -> String;
}

/// Counters and state of the store, for the API and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct StoreStats {
    /// `postgres` or `sqlite`.
    pub kind: &'static str,
    /// The database (URL without password, or file path).
    pub target: String,
    pub connected: bool,
    pub rows_written: u64,
    pub duplicates_skipped: u64,
    /// Rows the database refused (invalid data); counted and logged, never retried.
    pub rows_rejected: u64,
    pub batches: u64,
    /// Duration of the last successful write.
    pub last_batch_ms: f64,
    /// Records waiting to be written.
    pub backlog: usize,
    /// The buffer's bound (`store.buffer_records`).
    pub backlog_bound: usize,
    pub write_errors: u64,
    pub reconnects: u64,
    pub last_error: Option<String>,
}

struct Shared {
    kind: &'static str,
    target: String,
    buffer: Mutex<VecDeque<Record>>,
    /// One permit per free record slot in the buffer.
    room: Semaphore,
    capacity: usize,
    /// Records taken out of the buffer by a write in progress.
    in_flight: AtomicUsize,
    arrived: Notify,
    connected: AtomicBool,
    rows_written: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
    batches: AtomicU64,
    last_batch_us: AtomicU64,
    write_errors: AtomicU64,
    reconnects: AtomicU64,
    last_error: Mutex<Option<String>>,
    closed: CancellationToken,
}

/// Where sources submit records. Cheap to clone.
#[derive(Clone)]
pub struct StoreHandle {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StoreHandle {
    /// Queue records for storing, waiting while the buffer is full.
    pub async fn submit(&self, records: Vec<Record>) -> Result<(), StoreClosedError> {
        let shared = &self.shared;
        let mut records = records.into_iter().peekable();
        while records.peek().is_some() {
            // A batch larger than the whole buffer goes in as several parts.
            let part: Vec<Record> = records.by_ref().take(shared.capacity).collect();
            let permits = tokio::select! {
                permits = shared.room.acquire_many(part.len() as u32) => {
                    permits.map_err(|_| StoreClosedError)?
                }
                () = shared.closed.cancelled() => return Err(StoreClosedError),
            };
            // The writer gives the permits back when the rows are written.
            permits.forget();
            lock(&shared.buffer).extend(part);
            shared.arrived.notify_one();
        }
        Ok(())
    }

    /// Counters and state.
    pub fn stats(&self) -> StoreStats {
        let s = &self.shared;
        StoreStats {
            kind: s.kind,
            target: s.target.clone(),
            connected: s.connected.load(Relaxed),
            rows_written: s.rows_written.load(Relaxed),
            duplicates_skipped: s.duplicates.load(Relaxed),
            rows_rejected: s.rejected.load(Relaxed),
            batches: s.batches.load(Relaxed),
            last_batch_ms: s.last_batch_us.load(Relaxed) as f64 / 1000.0,
            backlog: s.backlog(),
            backlog_bound: s.capacity,
            write_errors: s.write_errors.load(Relaxed),
            reconnects: s.reconnects.load(Relaxed),
            last_error: lock(&s.last_error).clone(),
        }
    }
}

/// Start the store the settings name: PostgreSQL when a URL is set, else the embedded one.
/// The task ends after `cancel`, once the buffer is written (or `drain_timeout_ms` passed).
pub fn spawn_store(
    settings: &StoreSettings,
    data_dir: &Path,
    cancel: CancellationToken,
) -> Result<(StoreHandle, JoinHandle<()>), SinkError> {
    match &settings.postgres_url {
        Some(url) => {
            let backend = postgres::Postgres::new(url, settings.postgres_method)?;
            Ok(spawn_writer(backend, "postgres", settings, cancel))
        }
        None => {
            let path = settings
                .sqlite_path
                .clone()
                .unwrap_or_else(|| data_dir.join("records.sqlite"));
            let backend = sqlite::Sqlite::new(path);
            Ok(spawn_writer(backend, "sqlite", settings, cancel))
        }
    }
}

fn spawn_writer<B: Backend>(
    backend: B,
    kind: &'static str,
    settings: &StoreSettings,
    cancel: CancellationToken,
) -> (StoreHandle, JoinHandle<()>) {
    let capacity = settings
        .buffer_records
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let shared = Arc::new(Shared {
        kind,
        target: backend.describe(),
        buffer: Mutex::new(VecDeque::new()),
        room: Semaphore::new(capacity),
        capacity,
        in_flight: AtomicUsize::new(0),
        arrived: Notify::new(),
        connected: AtomicBool::new(false),
        rows_written: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        batches: AtomicU64::new(0),
        last_batch_us: AtomicU64::new(0),
        write_errors: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        last_error: Mutex::new(None),
        closed: CancellationToken::new(),
    });
    let task = tokio::spawn(write_loop(
        backend,
        shared.clone(),
        settings.clone(),
        cancel,
    ));
    (StoreHandle { shared }, task)
}

impl Shared {
    fn failed(&self, error: &WriteError) {
        self.write_errors.fetch_add(1, Relaxed);
        *lock(&self.last_error) = Some(error.to_string());
    }

    /// Take the oldest records, up to `max`; they count as backlog until released or put back.
    fn take_batch(&self, max: usize) -> Vec<Record> {
        let mut buffer = lock(&self.buffer);
        let n = buffer.len().min(max);
        self.in_flight.store(n, Relaxed);
        buffer.drain(..n).collect()
    }

    /// The batch is stored: give its room back.
    fn release(&self, batch: Vec<Record>) {
        self.in_flight.store(0, Relaxed);
        self.room.add_permits(batch.len());
    }

    /// The batch was not stored: it goes back to the front, to be written first.
    fn put_back(&self, batch: Vec<Record>) {
        let mut buffer = lock(&self.buffer);
        for record in batch.into_iter().rev() {
            buffer.push_front(record);
        }
        self.in_flight.store(0, Relaxed);
    }

    /// Records not yet stored.
    fn backlog(&self) -> usize {
        lock(&self.buffer).len() + self.in_flight.load(Relaxed)
    }
}

async fn write_loop<B: Backend>(
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
            let left = lock(&shared.buffer).len();
            if left == 0 {
                break;
            }
            if Instant::now() >= deadline {
                tracing::error!(
                    "stopping with {left} records not stored: the {} store did not take them within \
                     store.drain_timeout_ms ({} ms)",
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
                        lock(&shared.buffer).len(),
                        wait.as_millis()
                    );
                    sleep_or_cancel(wait, &cancel, drain_deadline.is_some()).await;
                    continue;
                }
            }
        }
        // Wait for a full batch, or for the flush interval once something is waiting.
        let waiting = lock(&shared.buffer).len();
        if waiting == 0 {
            if drain_deadline.is_some() {
                continue;
            }
            tokio::select! {
                () = shared.arrived.notified() => {}
                () = cancel.cancelled() => {}
            }
            continue;
        }
        if waiting < batch_max && drain_deadline.is_none() {
            let _ = tokio::time::timeout(flush, async {
                while lock(&shared.buffer).len() < batch_max {
                    tokio::select! {
                        () = shared.arrived.notified() => {}
                        () = cancel.cancelled() => break,
                    }
                }
            })
            .await;
        }
        let batch = shared.take_batch(batch_max);
        let started = Instant::now();
        match write_batch(&mut backend, &shared, &batch).await {
            Ok(written) => {
                shared.rows_written.fetch_add(written.inserted, Relaxed);
                shared.duplicates.fetch_add(written.duplicates, Relaxed);
                shared.batches.fetch_add(1, Relaxed);
                shared
                    .last_batch_us
                    .store(started.elapsed().as_micros() as u64, Relaxed);
                shared.release(batch);
            }
            Err(error) => {
                shared.failed(&error);
                shared.connected.store(false, Relaxed);
                tracing::warn!(
                    "writing {} records to the {} store failed ({error}); they stay buffered",
                    batch.len(),
                    shared.kind
                );
                shared.put_back(batch);
            }
        }
    }
    shared.closed.cancel();
    shared.room.close();
}

/// Write a batch; when the database rejects the data, write row by row so that only the bad
/// rows are lost (counted and logged), not the batch.
async fn write_batch<B: Backend>(
    backend: &mut B,
    shared: &Shared,
    batch: &[Record],
) -> Result<Written, WriteError> {
    match backend.write(batch).await {
        Err(WriteError::Rejected(message)) if batch.len() > 1 => {
            tracing::warn!(
                "the {} store refused a batch ({message}); writing it row by row",
                shared.kind
            );
            let mut total = Written::default();
            for record in batch {
                match backend.write(std::slice::from_ref(record)).await {
                    Ok(w) => {
                        total.inserted += w.inserted;
                        total.duplicates += w.duplicates;
                    }
                    Err(WriteError::Rejected(message)) => reject(shared, record, &message),
                    Err(error) => return Err(error),
                }
            }
            Ok(total)
        }
        Err(WriteError::Rejected(message)) => {
            if let Some(record) = batch.first() {
                reject(shared, record, &message);
            }
            Ok(Written::default())
        }
        other => other,
    }
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

/// The columns every backend stores, in order; one schema for both databases.
pub(crate) const TABLE: &str = "anode_records";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordId;

    /// A backend in memory that can be told to fail: exercises the buffer, not a database.
    struct Flaky {
        up: Arc<AtomicBool>,
        stored: Arc<Mutex<Vec<RecordId>>>,
    }

    impl Backend for Flaky {
        async fn connect(&mut self) -> Result<(), WriteError> {
            if self.up.load(Relaxed) {
                Ok(())
            } else {
                Err(WriteError::Connection("down".into()))
            }
        }
        async fn write(&mut self, batch: &[Record]) -> Result<Written, WriteError> {
            if !self.up.load(Relaxed) {
                return Err(WriteError::Connection("down".into()));
            }
            // All or nothing, like a transaction.
            if batch.iter().any(|r| r.source == "bad") {
                return Err(WriteError::Rejected("bad row".into()));
            }
            let mut stored = lock(&self.stored);
            let mut written = Written::default();
            for record in batch {
                if stored.contains(&record.id) {
                    written.duplicates += 1;
                } else {
                    stored.push(record.id);
                    written.inserted += 1;
                }
            }
            Ok(written)
        }
        fn describe(&self) -> String {
            "memory".into()
        }
    }

    fn record(source: &str, n: u64) -> Record {
        Record {
            id: RecordId::derive(source, "s", Some(&n.to_string()), b"{}"),
            source: source.into(),
            stream: "s".into(),
            key: None,
            upstream_id: Some(n.to_string()),
            event_time_us: None,
            ingest_time_us: 0,
            node: "n".into(),
            payload: b"{}".to_vec(),
        }
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn outage_buffers_then_pushes_back_and_loses_nothing() {
        let up = Arc::new(AtomicBool::new(false));
        let stored = Arc::new(Mutex::new(Vec::new()));
        let settings = StoreSettings {
            buffer_records: 10,
            batch_max: 4,
            flush_ms: 1,
            reconnect_min_ms: 1,
            reconnect_max_ms: 5,
            ..StoreSettings::default()
        };
        let cancel = CancellationToken::new();
        let backend = Flaky {
            up: up.clone(),
            stored: stored.clone(),
        };
        let (store, task) = spawn_writer(backend, "memory", &settings, cancel.clone());
        store
            .submit((0..10).map(|n| record("a", n)).collect())
            .await
            .unwrap();
        assert_eq!(store.stats().backlog, 10);
        // The buffer is full: the next submit waits until the database is back.
        let blocked = tokio::spawn({
            let store = store.clone();
            async move { store.submit(vec![record("a", 10), record("bad", 0)]).await }
        });
        until("write errors while down", || store.stats().write_errors > 0).await;
        assert!(
            !blocked.is_finished(),
            "submit must wait while the buffer is full"
        );
        up.store(true, Relaxed);
        blocked.await.unwrap().unwrap();
        // A replayed record is stored once.
        store.submit(vec![record("a", 3)]).await.unwrap();
        until("everything written", || store.stats().backlog == 0).await;
        let stats = store.stats();
        assert_eq!(stats.rows_written, 11);
        assert_eq!(stats.duplicates_skipped, 1);
        assert_eq!(stats.rows_rejected, 1);
        assert!(stats.reconnects == 0 || stats.connected);
        assert_eq!(lock(&stored).len(), 11);
        cancel.cancel();
        task.await.unwrap();
        assert!(store.submit(vec![record("a", 99)]).await.is_err());
    }

    #[tokio::test]
    async fn shutdown_drains_the_buffer() {
        let stored = Arc::new(Mutex::new(Vec::new()));
        let cancel = CancellationToken::new();
        let backend = Flaky {
            up: Arc::new(AtomicBool::new(true)),
            stored: stored.clone(),
        };
        let settings = StoreSettings {
            flush_ms: 60_000,
            batch_max: 1000,
            ..StoreSettings::default()
        };
        let (store, task) = spawn_writer(backend, "memory", &settings, cancel.clone());
        store
            .submit((0..7).map(|n| record("a", n)).collect())
            .await
            .unwrap();
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(lock(&stored).len(), 7);
    }
}
