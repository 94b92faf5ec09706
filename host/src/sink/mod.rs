//! Sinks: where records are stored.
//!
//! Every source hands its records to one [`StoreHandle`]. The handle keeps a bounded buffer
//! (counted in records): [`StoreHandle::submit`] waits while the buffer is full, which pauses
//! the source that called it — the WebSocket driver stops reading, the poller stops polling —
//! so a slow or absent database pushes back on the sources instead of growing memory or
//! dropping records.
//!
//! Sources submit [`Batch`]es: records with the cursor they reach. One writer task
//! ([`writer`]), on a thread of its own, commits queued batches together into a
//! [`Backend`] — [`postgres`] (production) or [`sqlite`] (the embedded default) — writing
//! the records and each source's cursor in one transaction, so that a stored cursor never
//! runs ahead of the stored records. PostgreSQL can take two batches in flight, on two
//! connections (`store.postgres_in_flight = 2`): the later one commits only after the
//! earlier, and not at all when the earlier fails ([`order`]).
//! Only then is each batch acknowledged through its [`Receipt`]. A batch leaves the buffer
//! only once it is committed, so a database that goes away loses nothing that is in the
//! buffer: the writer reconnects with backoff and writes the same batches again. Record ids
//! make that idempotent: a row already stored is skipped (`ON CONFLICT (id) DO NOTHING`) and
//! counted as a duplicate.
//!
//! A source that starts (after a restart, or on a new owner) reads its last committed cursor
//! and its most recent record ids with [`StoreHandle::resume`].
//!
//! Subscribers that resume read the stored records back in [`log`] order through
//! [`StoreHandle::tail`] (from JetStream when `[store.nats]` is set).

mod buffer;
pub mod log;
pub(crate) mod nats;
mod order;
pub(crate) mod postgres;
pub(crate) mod sqlite;
mod tls;
mod writer;

pub use buffer::{Batch, Committed, Receipt, StepState, StoreClosedError};
pub use log::{LogFilter, LogStart, Position, Tail, TailError};
pub use nats::NatsSettings;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::deadletter::{DeadLetter, DeadQuery, DeadStage, StoredDeadLetter};
use crate::record::{Record, RecordId};
pub(crate) use crate::sync::lock;
use buffer::{Pending, Taken};
use log::LogQuery;
use order::{Order, Step};

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
    /// PostgreSQL batches in flight at once, each on a connection of its own. 1 (the default)
    /// writes one batch at a time. With 2, the next full batch is staged and inserted while
    /// the one before commits; a batch commits only after the one before it, and not at all
    /// if that one fails. 2 is for a database with cores to spare: on 2 cores shared with the
    /// node it stored no more rows (0.96× one, medians of 11 runs each) at 9% more server CPU
    /// per row, and a raw write on two connections measured 1.00–1.16× one.
    pub postgres_in_flight: usize,
    /// `disable` (the default), or `verify-full`: TLS, with the server's certificate checked
    /// against `postgres_ca_file` (or the public web roots) and its name against the URL's host.
    pub postgres_tls: PostgresTls,
    /// PEM file of the certificate authority that signed the server's certificate.
    pub postgres_ca_file: Option<PathBuf>,
    /// The dead-letter store keeps at most this many (the oldest go first).
    pub deadletters_max: u64,
    /// The dead-letter store keeps each at most this long (seconds).
    pub deadletters_max_age_s: u64,
    /// NATS JetStream as a sink beside the database, with its own buffer and writer: required
    /// (a batch is acknowledged, its cursor committed, only when both have it) or optional
    /// (copies, best effort). See `sink::nats`.
    pub nats: Option<NatsSettings>,
}

/// TLS to PostgreSQL; see `StoreSettings::postgres_tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PostgresTls {
    #[default]
    Disable,
    VerifyFull,
}

/// The PostgreSQL write method; see `StoreSettings::postgres_method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PostgresMethod {
    Unnest,
    /// The default: measured faster than `unnest` (`cargo bench -p anode --bench ingest`).
    #[default]
    Copy,
    /// The batch as one JSON array (each record as `/ws` sends it), expanded by the server
    /// with `json_to_recordset`.
    Json,
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
            postgres_in_flight: 1,
            postgres_tls: PostgresTls::default(),
            postgres_ca_file: None,
            deadletters_max: 100_000,
            deadletters_max_age_s: 7 * 24 * 3600,
            nats: None,
        }
    }
}

/// How much the dead-letter store keeps (`store.deadletters_max`,
/// `store.deadletters_max_age_s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeadBounds {
    pub(crate) max: u64,
    pub(crate) max_age_us: i64,
}

impl Default for DeadBounds {
    fn default() -> Self {
        DeadBounds::from(&StoreSettings::default())
    }
}

impl From<&StoreSettings> for DeadBounds {
    fn from(settings: &StoreSettings) -> Self {
        DeadBounds {
            max: settings.deadletters_max.max(1),
            max_age_us: i64::try_from(settings.deadletters_max_age_s.saturating_mul(1_000_000))
                .unwrap_or(i64::MAX),
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
    #[error("store.postgres_tls: {0}")]
    Tls(String),
    #[error("{0}")]
    Config(String),
}

/// Why a write failed, which decides what the writer does next.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteError {
    /// The connection is gone or the server is unavailable: reconnect and write again.
    #[error("{0}")]
    Connection(String),
    /// The server refused the data itself: write it in halves to find the bad rows.
    #[error("{0}")]
    Rejected(String),
    /// The batch in flight before this one failed, so this one did not commit: both are
    /// written again, in order.
    #[error("the batch before it in flight failed")]
    Cancelled,
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
    /// Store records, set sources' cursors and their steps' states, and add dead letters, in
    /// one transaction, skipping ids already stored.
    fn write(
        &mut self,
        records: &[Record],
        cursors: &[(Arc<str>, String)],
        states: &[(Arc<str>, StepState)],
        dead: &[DeadLetter],
    ) -> impl Future<Output = Result<Written, WriteError>> + Send;
    /// [`Backend::write`], with another write of the same store possibly in flight before
    /// it (on a connection of its own): it may overlap that write but must not commit before
    /// it, nor commit at all when it fails (see [`order`]). By default it waits for that
    /// write to commit and then writes: correct, without overlap.
    fn write_ordered(
        &mut self,
        records: &[Record],
        cursors: &[(Arc<str>, String)],
        states: &[(Arc<str>, StepState)],
        dead: &[DeadLetter],
        mut order: Order,
    ) -> impl Future<Output = Result<Written, WriteError>> + Send {
        async move {
            order.earlier(Step::Committed).await?;
            let written = self.write(records, cursors, states, dead).await?;
            order.mark(Step::Committed);
            Ok(written)
        }
    }
    /// A source's last committed cursor (and when) and the ids of its `recent` latest
    /// records.
    fn resume(
        &mut self,
        source: &str,
        recent: usize,
    ) -> impl Future<Output = Result<Resume, WriteError>> + Send;
    /// Records of the durable log after `query.after`, in log order, at most `query.limit`.
    fn read_log(
        &mut self,
        query: &LogQuery,
    ) -> impl Future<Output = Result<Vec<(Position, Record)>, WriteError>> + Send;
    /// The position of the newest durable record: a tail starting `now` reads after it.
    fn log_head(&mut self) -> impl Future<Output = Result<Position, WriteError>> + Send;
    /// Dead letters matching `query`, oldest first, at most `query.page()`.
    fn dead_letters(
        &mut self,
        query: &DeadQuery,
    ) -> impl Future<Output = Result<Vec<StoredDeadLetter>, WriteError>> + Send {
        let _ = query;
        let message = format!("{} keeps no dead letters", self.describe());
        async move { Err(WriteError::Connection(message)) }
    }
    /// Mark dead letters replayed (at µs since the epoch), or delete them (`at` = `None`):
    /// those matching `query`, however many. Returns how many.
    fn settle_dead(
        &mut self,
        query: &DeadQuery,
        at: Option<i64>,
    ) -> impl Future<Output = Result<u64, WriteError>> + Send {
        let _ = (query, at);
        let message = format!("{} keeps no dead letters", self.describe());
        async move { Err(WriteError::Connection(message)) }
    }
    /// Forget a removed source's cursor, so that a source added again under its id starts
    /// afresh.
    fn forget_cursor(
        &mut self,
        source: &str,
    ) -> impl Future<Output = Result<(), WriteError>> + Send {
        let _ = source;
        let message = format!("{} keeps no cursors", self.describe());
        async move { Err(WriteError::Connection(message)) }
    }
    /// Where the data goes, for the API (no password).
    fn describe(&self) -> String;
}

/// Where a source stands in the store: what it opens with after a restart or a move.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resume {
    /// The cursor committed with the source's last stored batch.
    pub cursor: Option<String>,
    /// Its transform steps' state committed with its last batch that had any.
    pub states: Vec<StepState>,
    /// When that cursor was committed (µs since the epoch).
    pub updated_us: Option<i64>,
    /// Ids of the source's latest stored records, newest first: they seed its repeat window.
    pub recent: Vec<RecordId>,
}

/// The store cannot answer a read now.
#[derive(Debug, thiserror::Error)]
#[error("cannot read from the {kind} store: {message}")]
pub struct StoreReadError {
    kind: &'static str,
    message: String,
}

/// Counters and state of the store, for the API and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct StoreStats {
    /// `postgres` or `sqlite` (the database); `jetstream` for a sink beside it.
    pub kind: &'static str,
    /// A required sink's acknowledgement is part of a batch's; an optional one is fed copies
    /// of what was committed, and drops what does not fit its buffer.
    pub required: bool,
    /// The database (URL without password, or file path).
    pub target: String,
    pub connected: bool,
    pub rows_written: u64,
    pub duplicates_skipped: u64,
    /// Rows the database refused (invalid data); counted and logged, never retried.
    pub rows_rejected: u64,
    pub batches: u64,
    /// Source cursors committed with their records.
    pub cursors_committed: u64,
    /// Duration of the last successful write.
    pub last_batch_ms: f64,
    /// Records waiting to be written.
    pub backlog: usize,
    /// The buffer's bound (`store.buffer_records`).
    pub backlog_bound: usize,
    pub write_errors: u64,
    pub reconnects: u64,
    pub last_error: Option<String>,
    /// Records an optional sink dropped because its buffer was full.
    pub dropped: u64,
    /// Dead letters written, per stage (`decode`, `transform`, `store`, `cursor`).
    pub dead_letters: std::collections::BTreeMap<&'static str, u64>,
    /// The other sinks (with the database's stats only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sinks: Vec<StoreStats>,
}

/// What a sink's writer does with batches it has written.
enum Next {
    /// The database: acknowledge each batch (its records and cursor are committed) and copy
    /// its records to the optional sinks.
    Acknowledge { copies: Vec<Arc<Shared>> },
    /// A required sink before the database: hand the batches on to it, waiting for room.
    Forward(Arc<Shared>),
    /// An optional sink: nothing more.
    Done,
}

/// One sink: its bounded buffer, the state its writer shares, and its counters.
struct Shared {
    kind: &'static str,
    required: bool,
    next: Next,
    dropped: AtomicU64,
    target: String,
    buffer: Mutex<VecDeque<Pending>>,
    /// Records in `buffer`.
    queued: AtomicUsize,
    /// One permit per free record slot in the buffer.
    room: Semaphore,
    capacity: usize,
    /// Records taken out of the buffer by writes in progress.
    in_flight: AtomicUsize,
    arrived: Notify,
    /// Woken after each commit: tails waiting for new records read again.
    committed: Notify,
    connected: AtomicBool,
    rows_written: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
    /// Dead letters written, per stage in [`DeadStage::ALL`] order.
    dead: [AtomicU64; 4],
    batches: AtomicU64,
    cursors_committed: AtomicU64,
    last_batch_us: AtomicU64,
    write_errors: AtomicU64,
    reconnects: AtomicU64,
    last_error: Mutex<Option<String>>,
    closed: CancellationToken,
}

/// Reads go through a backend of their own, so they never wait behind the writer's batches.
type Reader = Arc<tokio::sync::Mutex<Box<dyn ResumeReader>>>;

type Boxed<'a, T> = std::pin::Pin<Box<dyn Future<Output = Result<T, WriteError>> + Send + 'a>>;

/// The object-safe part of [`Backend`] that reads (and the dead-letter store's upkeep) need.
trait ResumeReader: Send {
    fn resume_boxed<'a>(&'a mut self, source: &'a str, recent: usize) -> Boxed<'a, Resume>;
    fn read_log_boxed<'a>(&'a mut self, query: &'a LogQuery) -> Boxed<'a, Vec<(Position, Record)>>;
    fn log_head_boxed(&mut self) -> Boxed<'_, Position>;
    fn dead_letters_boxed<'a>(
        &'a mut self,
        query: &'a DeadQuery,
    ) -> Boxed<'a, Vec<StoredDeadLetter>>;
    fn settle_dead_boxed<'a>(&'a mut self, query: &'a DeadQuery, at: Option<i64>)
    -> Boxed<'a, u64>;
    fn forget_cursor_boxed<'a>(&'a mut self, source: &'a str) -> Boxed<'a, ()>;
}

/// Makes a reader of its own for each resuming subscriber (a tail polls; it should not
/// queue behind the reads sources start with).
type ReaderFactory = Arc<dyn Fn() -> Box<dyn ResumeReader> + Send + Sync>;

/// A backend used for reads: connects on first use and again after a failure.
struct ReadOnly<B> {
    backend: B,
    connected: bool,
}

impl<B: Backend> ReadOnly<B> {
    /// Run one read, connecting first when needed; a failed read reconnects next time.
    async fn read<'a, T, F>(
        &'a mut self,
        read: impl FnOnce(&'a mut B) -> F,
    ) -> Result<T, WriteError>
    where
        F: Future<Output = Result<T, WriteError>> + 'a,
    {
        if !self.connected {
            self.backend.connect().await?;
            self.connected = true;
        }
        // Marked lost first: a read that fails (or is dropped midway) reconnects next time.
        self.connected = false;
        let result = read(&mut self.backend).await;
        self.connected = result.is_ok();
        result
    }
}

impl<B: Backend> ResumeReader for ReadOnly<B> {
    fn resume_boxed<'a>(&'a mut self, source: &'a str, recent: usize) -> Boxed<'a, Resume> {
        Box::pin(self.read(move |b| b.resume(source, recent)))
    }

    fn read_log_boxed<'a>(&'a mut self, query: &'a LogQuery) -> Boxed<'a, Vec<(Position, Record)>> {
        Box::pin(self.read(move |b| b.read_log(query)))
    }

    fn log_head_boxed(&mut self) -> Boxed<'_, Position> {
        Box::pin(self.read(|b| b.log_head()))
    }

    fn dead_letters_boxed<'a>(
        &'a mut self,
        query: &'a DeadQuery,
    ) -> Boxed<'a, Vec<StoredDeadLetter>> {
        Box::pin(self.read(move |b| b.dead_letters(query)))
    }

    fn settle_dead_boxed<'a>(
        &'a mut self,
        query: &'a DeadQuery,
        at: Option<i64>,
    ) -> Boxed<'a, u64> {
        Box::pin(self.read(move |b| b.settle_dead(query, at)))
    }

    fn forget_cursor_boxed<'a>(&'a mut self, source: &'a str) -> Boxed<'a, ()> {
        Box::pin(self.read(move |b| b.forget_cursor(source)))
    }
}

/// Where sources submit records. Cheap to clone.
#[derive(Clone)]
pub struct StoreHandle {
    /// The database: it keeps the cursors and acknowledges batches.
    shared: Arc<Shared>,
    /// Where batches are submitted: a required sink before the database, or the database.
    first: Arc<Shared>,
    /// The sinks beside the database.
    others: Vec<Arc<Shared>>,
    reader: Reader,
    log_reader: ReaderFactory,
    /// Where tails read from instead of the database, when set.
    nats: Option<Arc<NatsSettings>>,
}

impl StoreHandle {
    /// Queue a batch for storing, waiting while the buffer is full; the receipt resolves
    /// once the batch (records and cursor) is committed.
    pub async fn submit(&self, batch: Batch) -> Result<Receipt, StoreClosedError> {
        let (pending, receipt) = Pending::new(batch);
        self.first.enqueue(pending).await?;
        Ok(receipt)
    }

    /// Follow the durable log from `start`: the stored records that match `filter`, each
    /// with its position, then every new one as it is committed. From JetStream when
    /// `[store.nats]` is set and required (it then has every acknowledged record), else from
    /// the database: an optional JetStream drops what does not fit its buffer, so it is not a
    /// log to resume from.
    pub async fn tail(
        &self,
        start: LogStart,
        filter: LogFilter,
    ) -> Result<log::Tail, log::TailError> {
        match &self.nats {
            Some(settings) if settings.required => {
                nats::JetStreamTail::start(settings.clone(), start, filter)
                    .await
                    .map(log::Tail::jetstream)
            }
            _ => log::Tail::store(self.shared.clone(), (self.log_reader)(), start, filter).await,
        }
    }

    /// Where `source` stands in the store: its committed cursor and its latest `recent`
    /// record ids. Fails while the database cannot be reached: a source must not open
    /// without its cursor.
    pub async fn resume(&self, source: &str, recent: usize) -> Result<Resume, StoreReadError> {
        let kind = self.shared.kind;
        self.reader
            .lock()
            .await
            .resume_boxed(source, recent)
            .await
            .map_err(|e| StoreReadError {
                kind,
                message: e.to_string(),
            })
    }

    /// Dead letters matching `query`, oldest first (at most [`DeadQuery::page`]).
    pub async fn dead_letters(
        &self,
        query: &DeadQuery,
    ) -> Result<Vec<StoredDeadLetter>, StoreReadError> {
        let mut reader = self.reader.lock().await;
        let read = reader.dead_letters_boxed(query).await;
        read.map_err(|e| self.read_error(e))
    }

    /// Mark the dead letters matching `query` replayed now; returns how many.
    pub async fn mark_replayed(&self, query: &DeadQuery) -> Result<u64, StoreReadError> {
        let now = crate::clock::now_us();
        let mut reader = self.reader.lock().await;
        let done = reader.settle_dead_boxed(query, Some(now)).await;
        done.map_err(|e| self.read_error(e))
    }

    /// Delete the dead letters matching `query`; returns how many.
    pub async fn purge_dead_letters(&self, query: &DeadQuery) -> Result<u64, StoreReadError> {
        let mut reader = self.reader.lock().await;
        let done = reader.settle_dead_boxed(query, None).await;
        done.map_err(|e| self.read_error(e))
    }

    /// Forget a removed source's cursor.
    pub async fn forget_cursor(&self, source: &str) -> Result<(), StoreReadError> {
        let mut reader = self.reader.lock().await;
        let done = reader.forget_cursor_boxed(source).await;
        done.map_err(|e| self.read_error(e))
    }

    fn read_error(&self, e: WriteError) -> StoreReadError {
        StoreReadError {
            kind: self.shared.kind,
            message: e.to_string(),
        }
    }

    /// Counters and state: the database's, with the other sinks'.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            sinks: self.others.iter().map(|s| s.stats()).collect(),
            ..self.shared.stats()
        }
    }
}

impl Shared {
    fn stats(&self) -> StoreStats {
        let s = self;
        StoreStats {
            kind: s.kind,
            required: s.required,
            target: s.target.clone(),
            connected: s.connected.load(Relaxed),
            rows_written: s.rows_written.load(Relaxed),
            duplicates_skipped: s.duplicates.load(Relaxed),
            rows_rejected: s.rejected.load(Relaxed),
            batches: s.batches.load(Relaxed),
            cursors_committed: s.cursors_committed.load(Relaxed),
            last_batch_ms: s.last_batch_us.load(Relaxed) as f64 / 1000.0,
            backlog: s.backlog(),
            backlog_bound: s.capacity,
            write_errors: s.write_errors.load(Relaxed),
            reconnects: s.reconnects.load(Relaxed),
            last_error: lock(&s.last_error).clone(),
            dropped: s.dropped.load(Relaxed),
            dead_letters: DeadStage::ALL
                .iter()
                .zip(&s.dead)
                .map(|(stage, n)| (stage.as_str(), n.load(Relaxed)))
                .collect(),
            sinks: Vec::new(),
        }
    }

    /// Queue a batch, waiting while the buffer is full.
    async fn enqueue(&self, pending: Pending) -> Result<(), StoreClosedError> {
        let mut rest = Some(pending);
        while let Some(mut pending) = rest.take() {
            // A batch larger than the whole buffer goes in as several parts; the last one
            // carries the cursor and the acknowledgement.
            let part = if pending.len() > self.capacity {
                let front = pending.split_front(self.capacity);
                rest = Some(pending);
                front
            } else {
                pending
            };
            let permits = tokio::select! {
                permits = self.room.acquire_many(part.len() as u32) => {
                    permits.map_err(|_| StoreClosedError)?
                }
                () = self.closed.cancelled() => return Err(StoreClosedError),
            };
            // The writer gives the permits back when the rows are written.
            permits.forget();
            self.push(part);
        }
        Ok(())
    }

    fn push(&self, pending: Pending) {
        self.queued.fetch_add(pending.len(), Relaxed);
        lock(&self.buffer).push_back(pending);
        self.arrived.notify_one();
    }

    /// An optional sink takes a copy of committed records when they fit its buffer, and
    /// counts them dropped when they do not: it never holds the database back.
    fn offer(&self, records: &[Record], dead: &[DeadLetter]) {
        if (records.is_empty() && dead.is_empty()) || self.closed.is_cancelled() {
            return;
        }
        match u32::try_from(records.len())
            .ok()
            .and_then(|n| self.room.try_acquire_many(n).ok())
        {
            Some(permits) => {
                permits.forget();
                self.push(Pending::copy(records.to_vec(), dead.to_vec()));
            }
            None => {
                let dropped = self.dropped.fetch_add(records.len() as u64, Relaxed);
                // Said once per 10,000 dropped, not per batch.
                if dropped / 10_000 != (dropped + records.len() as u64) / 10_000 || dropped == 0 {
                    tracing::warn!(
                        "the optional {} sink is behind: its buffer ({} records) is full; {} \
                         records dropped for it so far",
                        self.kind,
                        self.capacity,
                        dropped + records.len() as u64
                    );
                }
            }
        }
    }
}

/// Start the store the settings name: PostgreSQL when a URL is set, else the embedded one,
/// and JetStream beside it when `[store.nats]` is set: before the database when it is
/// required (a batch is acknowledged once both have it), after it when optional (it gets
/// copies of what the database committed). Each sink has its own buffer and writer. The task
/// ends after `cancel`, once the buffers are written (or `drain_timeout_ms` passed), each
/// sink draining after the one that feeds it.
pub fn spawn_store(
    settings: &StoreSettings,
    data_dir: &Path,
    cancel: CancellationToken,
) -> Result<(StoreHandle, JoinHandle<()>), SinkError> {
    if let Some(nats) = &settings.nats {
        nats.check().map_err(SinkError::Config)?;
    }
    let nats = settings.nats.clone().map(Arc::new);
    let nats_stage = |next: Next| {
        let n = nats.as_deref().expect("set");
        let stage = StoreSettings {
            buffer_records: n.buffer_records,
            ..settings.clone()
        };
        spawn_stage(
            vec![nats::JetStream::new(n.clone())],
            "jetstream",
            n.required,
            next,
            &stage,
        )
    };
    // An optional JetStream is fed by the database; a required one feeds it.
    let (copies, optional) = match nats.as_deref() {
        Some(n) if !n.required => {
            let (stage, start) = nats_stage(Next::Done);
            (vec![stage.clone()], Some((stage, start)))
        }
        _ => (Vec::new(), None),
    };
    let db_next = Next::Acknowledge { copies };
    let (db, db_start, log_reader) = match &settings.postgres_url {
        Some(url) => {
            if !(1..=MAX_IN_FLIGHT).contains(&settings.postgres_in_flight) {
                return Err(SinkError::Config(format!(
                    "store.postgres_in_flight is {}: set 1 (one batch at a time) to \
                     {MAX_IN_FLIGHT}",
                    settings.postgres_in_flight
                )));
            }
            let lanes = (0..settings.postgres_in_flight)
                .map(|_| postgres::Postgres::new(url, settings))
                .collect::<Result<Vec<_>, _>>()?;
            let (url, copy) = (url.clone(), settings.clone());
            // Checked above: the same URL and settings made the writer's backends.
            let reader = move || postgres::Postgres::new(&url, &copy).expect("checked settings");
            let (shared, start) = spawn_stage(lanes, "postgres", true, db_next, settings);
            (shared, start, reader_factory(reader))
        }
        None => {
            let path = settings
                .sqlite_path
                .clone()
                .unwrap_or_else(|| data_dir.join("records.sqlite"));
            let backend = sqlite::Sqlite::writer(path.clone(), DeadBounds::from(settings));
            let reader = move || sqlite::Sqlite::new(path.clone());
            let (shared, start) = spawn_stage(vec![backend], "sqlite", true, db_next, settings);
            (shared, start, reader_factory(reader))
        }
    };
    let required = match nats.as_deref() {
        Some(n) if n.required => Some(nats_stage(Next::Forward(db.clone()))),
        _ => None,
    };
    // Drain order: the sink that feeds another stops first.
    let mut order: Vec<StageStart> = Vec::new();
    let mut others = Vec::new();
    let first = match required {
        Some((stage, start)) => {
            others.push(stage.clone());
            order.push(start);
            stage
        }
        None => db.clone(),
    };
    order.push(db_start);
    if let Some((stage, start)) = optional {
        others.push(stage);
        order.push(start);
    }
    let task = tokio::spawn(run_stages(order, cancel));
    let handle = StoreHandle {
        reader: Arc::new(tokio::sync::Mutex::new(log_reader())),
        shared: db,
        first,
        others,
        log_reader,
        nats: settings.nats.clone().map(Arc::new),
    };
    Ok((handle, task))
}

/// The tables the node creates in PostgreSQL (records with their log position, cursors, the
/// schema version): the ingest benchmark's raw baseline writes into the same shape.
pub fn postgres_schema() -> String {
    postgres::schema_sql()
}

/// Run the sinks' writers together; each drains once `cancel` (the first) or the writer
/// before it has stopped.
async fn run_stages(order: Vec<StageStart>, cancel: CancellationToken) {
    let mut upstream = cancel;
    let mut writers = Vec::new();
    for start in order {
        let stopped = CancellationToken::new();
        let (writer, done) = (start(upstream), stopped.clone());
        writers.push(on_own_thread(async move {
            writer.await;
            done.cancel();
        }));
        upstream = stopped;
    }
    for writer in writers {
        let _ = writer.await;
    }
}

/// Runs a writer on a thread of its own, with a one-thread runtime (its database
/// connection's task runs there too): when the database answers, the next batch goes out at
/// once instead of waiting its turn behind the sources' tasks on the node's busy workers,
/// which left the database idle between batches. The thread starts at once; the returned
/// future resolves when the writer has ended, and dropping it (the node's runtime going
/// away) stops the writer, as dropping a task would.
fn on_own_thread(
    writer: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    let (ended, when_ended) = tokio::sync::oneshot::channel();
    let abandoned = CancellationToken::new();
    let stop_if_dropped = abandoned.clone().drop_guard();
    // Like tokio's own worker threads, these are not expected to fail but on a machine out
    // of threads or memory.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for a store writer");
    std::thread::Builder::new()
        .name("anode-store".into())
        .spawn(move || {
            runtime.block_on(async {
                tokio::select! {
                    () = writer => {}
                    () = abandoned.cancelled() => {}
                }
            });
            let _ = ended.send(());
        })
        .expect("a thread for a store writer");
    async move {
        let _ = when_ended.await;
        drop(stop_if_dropped);
    }
}

/// One sink of its own (the database alone), for tests of the buffer and writer.
#[cfg(test)]
fn spawn_writer<B: Backend, R: Backend>(
    backend: B,
    make_reader: impl Fn() -> R + Send + Sync + 'static,
    kind: &'static str,
    settings: &StoreSettings,
    cancel: CancellationToken,
) -> (StoreHandle, JoinHandle<()>) {
    let next = Next::Acknowledge { copies: Vec::new() };
    let (shared, start) = spawn_stage(vec![backend], kind, true, next, settings);
    let log_reader = reader_factory(make_reader);
    let handle = StoreHandle {
        reader: Arc::new(tokio::sync::Mutex::new(log_reader())),
        first: shared.clone(),
        shared,
        others: Vec::new(),
        log_reader,
        nats: None,
    };
    (handle, tokio::spawn(run_stages(vec![start], cancel)))
}

/// A sink's writer, waiting for the token that tells it to drain and stop.
type StageStart =
    Box<dyn FnOnce(CancellationToken) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

fn reader_factory<R: Backend>(make: impl Fn() -> R + Send + Sync + 'static) -> ReaderFactory {
    Arc::new(move || {
        Box::new(ReadOnly {
            backend: make(),
            connected: false,
        })
    })
}

/// A sink with its buffer; its writer starts when the returned start is called, and writes
/// through `lanes` (one connection each, at least one).
fn spawn_stage<B: Backend>(
    lanes: Vec<B>,
    kind: &'static str,
    required: bool,
    next: Next,
    settings: &StoreSettings,
) -> (Arc<Shared>, StageStart) {
    let shared = new_shared(kind, required, next, lanes[0].describe(), settings);
    let (stage, settings) = (shared.clone(), settings.clone());
    let start: StageStart =
        Box::new(move |cancel| Box::pin(writer::write_loop(lanes, stage, settings, cancel)));
    (shared, start)
}

fn new_shared(
    kind: &'static str,
    required: bool,
    next: Next,
    target: String,
    settings: &StoreSettings,
) -> Arc<Shared> {
    let capacity = settings
        .buffer_records
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    Arc::new(Shared {
        kind,
        required,
        next,
        dropped: AtomicU64::new(0),
        target,
        buffer: Mutex::new(VecDeque::new()),
        queued: AtomicUsize::new(0),
        room: Semaphore::new(capacity),
        capacity,
        in_flight: AtomicUsize::new(0),
        arrived: Notify::new(),
        committed: Notify::new(),
        connected: AtomicBool::new(false),
        rows_written: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        dead: Default::default(),
        batches: AtomicU64::new(0),
        cursors_committed: AtomicU64::new(0),
        last_batch_us: AtomicU64::new(0),
        write_errors: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        last_error: Mutex::new(None),
        closed: CancellationToken::new(),
    })
}

impl Shared {
    /// Count dead letters written, per stage.
    fn count_dead(&self, dead: &[DeadLetter]) {
        // The database writes them; a sink before it only hands them on.
        if !matches!(self.next, Next::Acknowledge { .. }) {
            return;
        }
        for letter in dead {
            let at = DeadStage::ALL
                .iter()
                .position(|s| *s == letter.stage)
                .expect("every stage is in ALL");
            self.dead[at].fetch_add(1, Relaxed);
        }
    }

    fn failed(&self, error: &WriteError) {
        self.write_errors.fetch_add(1, Relaxed);
        *lock(&self.last_error) = Some(error.to_string());
    }

    /// Take the oldest batches, up to `max` records; they count as backlog until
    /// acknowledged or put back.
    fn take(&self, max: usize) -> Taken {
        let taken = Taken::from_queue(&mut lock(&self.buffer), max);
        self.queued.fetch_sub(taken.records.len(), Relaxed);
        self.in_flight.fetch_add(taken.records.len(), Relaxed);
        taken
    }

    /// The batches are written: hand them on (waiting for room there), or acknowledge them
    /// and copy them to the optional sinks; then give their room back.
    async fn done(&self, taken: Taken) {
        let count = taken.taken_len();
        match &self.next {
            Next::Forward(next) => {
                for pending in taken.into_pending() {
                    // A database that has stopped drops the rest: their submitters learn it.
                    if next.enqueue(pending).await.is_err() {
                        break;
                    }
                }
            }
            Next::Acknowledge { copies } => {
                self.cursors_committed
                    .fetch_add(taken.cursors.len() as u64, Relaxed);
                for copy in copies {
                    copy.offer(&taken.records, &taken.dead);
                }
                taken.acknowledge();
                self.committed.notify_waiters();
            }
            Next::Done => {}
        }
        self.in_flight.fetch_sub(count, Relaxed);
        self.room.add_permits(count);
    }

    /// The batches were not stored: they go back to the front, to be written first.
    fn put_back(&self, taken: Taken) {
        let count = taken.records.len();
        let mut buffer = lock(&self.buffer);
        for pending in taken.into_pending().into_iter().rev() {
            buffer.push_front(pending);
        }
        self.queued.fetch_add(count, Relaxed);
        self.in_flight.fetch_sub(count, Relaxed);
    }

    /// Records waiting in the buffer.
    fn queued(&self) -> usize {
        self.queued.load(Relaxed)
    }

    /// Records not yet stored.
    fn backlog(&self) -> usize {
        self.queued() + self.in_flight.load(Relaxed)
    }

    /// Whether no batch waits (batches with a cursor and no records count).
    fn idle(&self) -> bool {
        lock(&self.buffer).is_empty()
    }
}

/// The most PostgreSQL batches in flight at once (`store.postgres_in_flight`).
const MAX_IN_FLIGHT: usize = 4;

/// The columns every backend stores, in order; one schema for both databases.
pub(crate) const TABLE: &str = "anode_records";
/// Each source's last committed cursor: `source` (primary key), `cursor`, `updated_us`.
pub(crate) const CURSORS: &str = "anode_cursors";
/// Transform steps' state: `source`, `step` (primary key), `plugin` (digest), `state`,
/// `updated_us`.
pub(crate) const STATES: &str = "anode_states";
/// The dead-letter store: `id` (grows with time), `source`, `stage`, `plugin`, `step`,
/// `reason`, `meta` (JSON text), `raw` (bytes), `at_us`, `replayed_us`.
pub(crate) const DEAD: &str = "anode_deadletters";

#[cfg(test)]
mod tests;
