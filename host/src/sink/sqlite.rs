//! The embedded store (SQLite, bundled into the binary): the default when no PostgreSQL URL
//! is set, so a node runs with no set-up. Same columns and the same idempotency as PostgreSQL;
//! the payload is JSON text. SQLite calls are blocking and run on tokio's blocking pool; the
//! writer's log is copied into the database file by a checkpointer thread of its own.

use std::ffi::c_int;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};

use super::log::{LogQuery, Position};
use super::{
    Backend, CURSORS, DEAD, DeadBounds, Resume, STATES, StepState, TABLE, WriteError, Written,
};
use crate::deadletter::{DeadLetter, DeadQuery, StoredDeadLetter};
use crate::record::{Payload, Record, RecordId};

pub(crate) struct Sqlite {
    path: PathBuf,
    connection: Option<Arc<Mutex<Connection>>>,
    /// The writer's: its log is checkpointed by a thread of its own (see [`Checkpoints`]).
    checkpoints: Option<Arc<Checkpoints>>,
    dead_bounds: DeadBounds,
}

impl Sqlite {
    /// A connection for reading (the log, a resuming subscriber's catch-up).
    pub(crate) fn new(path: PathBuf) -> Self {
        Sqlite {
            path,
            connection: None,
            checkpoints: None,
            dead_bounds: DeadBounds::default(),
        }
    }

    /// The store's one writer, keeping the dead-letter store within `dead_bounds`.
    pub(crate) fn writer(path: PathBuf, dead_bounds: DeadBounds) -> Self {
        Sqlite {
            checkpoints: Some(Arc::default()),
            dead_bounds,
            ..Sqlite::new(path)
        }
    }

    /// Checkpoints made so far by the checkpointer thread and by the writer itself.
    #[cfg(test)]
    pub(crate) fn checkpoints(&self) -> (u64, u64) {
        self.checkpoints.as_ref().map_or((0, 0), |c| {
            (c.background.load(Relaxed), c.by_writer.load(Relaxed))
        })
    }
}

/// Pages in the writer's log (47 MiB) after which the checkpointer copies it into the database
/// file. A page written again before the copy is copied once: with 12,000 instead of SQLite's
/// own 1,000, the node stored 33,552–34,388 instead of 28,234–30,353 records/s at 50,000
/// offered (60 s, runs alternated) and spent 10% less CPU per record at 20,000.
const CHECKPOINT_PAGES: c_int = 12_000;

/// Pages in the log (125 MiB) after which the writer checkpoints at its commit, as SQLite does
/// by itself: the checkpointer has fallen behind (or failed), and the log must not grow
/// without bound.
const BACKSTOP_PAGES: c_int = 32_000;

/// The writer's page cache, 32 MiB (SQLite's default is 2 MiB): most of the id index's pages
/// stay in memory instead of being read back from the file for each insert.
const WRITER_CACHE_KIB: u32 = 32 * 1024;

/// Checkpoints of the writer's log (WAL). SQLite's automatic checkpoint runs inside the commit
/// that crosses its threshold: the writer stops taking batches while it copies the log into
/// the database file, and since each record's id lands on a random page of the unique index,
/// that copy is a page per record. Measured here at 50,000 records/s offered for 60 s: the
/// store took 31,800–34,600 rows/s with the copy in the writer, 42,400–44,700 with it on a
/// thread and connection of its own (and payloads checked once), where it overlaps the next
/// batches on the second core.
#[derive(Debug, Default)]
struct Checkpoints {
    background: AtomicU64,
    by_writer: AtomicU64,
}

/// Start the checkpointer for `writer` (a connection to `path`): a thread with its own
/// connection, woken by the writer's commits once the log holds [`CHECKPOINT_PAGES`]. The
/// thread ends when the writer's connection is dropped (a reconnect starts a new one).
fn checkpoint_in_background(
    writer: &mut Connection,
    path: &Path,
    counts: Arc<Checkpoints>,
) -> Result<(), WriteError> {
    let checkpointer = Connection::open(path)
        .map_err(|e| failed("cannot open the checkpointer's connection", e))?;
    checkpointer
        .busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| failed("cannot configure SQLite", e))?;
    // A connection learns that the file is in WAL mode when it first reads it; until then a
    // checkpoint on it does nothing (and says so only by returning -1).
    let mode: String = checkpointer
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .map_err(|e| failed("cannot read the journal mode", e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(failed(
            "the checkpointer's connection",
            format!("{} is in journal mode {mode}, not WAL", path.display()),
        ));
    }
    // One wake-up pending at most: commits during a checkpoint are taken by the next one.
    let (due, wake) = std::sync::mpsc::sync_channel::<()>(1);
    let background = counts.clone();
    let file = path.display().to_string();
    std::thread::Builder::new()
        .name("anode-checkpoint".into())
        .spawn(move || {
            while wake.recv().is_ok() {
                // Passive: copies what no reader still needs, never waits on the writer.
                match checkpointer.wal_checkpoint_v2(
                    Some(rusqlite::MAIN_DB),
                    rusqlite::wal::CheckpointMode::PASSIVE,
                ) {
                    Ok((log, _)) if log >= 0 => {
                        background.background.fetch_add(1, Relaxed);
                    }
                    Ok(_) => tracing::warn!(
                        "{file}: the background checkpoint found no log (not in WAL mode); the \
                         writer checkpoints by itself past {BACKSTOP_PAGES} pages of log"
                    ),
                    Err(e) => tracing::warn!(
                        "{file}: the background checkpoint failed ({e}); the writer checkpoints \
                         by itself past {BACKSTOP_PAGES} pages of log"
                    ),
                }
            }
        })
        .map_err(|e| failed("cannot start the checkpointer thread", e))?;
    // The hook replaces SQLite's automatic checkpoint on this connection.
    writer
        .wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages: c_int| {
            if pages >= BACKSTOP_PAGES {
                wal.checkpoint()?;
                counts.by_writer.fetch_add(1, Relaxed);
            } else if pages >= CHECKPOINT_PAGES {
                // Full: a wake-up is already pending.
                let _ = due.try_send(());
            }
            Ok(())
        }))
        .map_err(|e| failed("cannot set the log hook", e))
}

/// A table made before `canonical` existed gains it (every row canonical, as nothing was
/// ever taken back then).
fn add_canonical(connection: &Connection) -> rusqlite::Result<()> {
    let present: i64 = connection.query_row(
        &format!("SELECT count(*) FROM pragma_table_info('{TABLE}') WHERE name = 'canonical'"),
        [],
        |row| row.get(0),
    )?;
    if present == 0 {
        connection.execute_batch(&format!(
            "ALTER TABLE {TABLE} ADD COLUMN canonical INTEGER NOT NULL DEFAULT 1"
        ))?;
    }
    Ok(())
}

/// The layout: rows in log order (`seq` is the row id, so a batch is appended at the end of
/// the table), a unique index on `id` for idempotency, and one on `(source, ingest_time_us)`.
/// `canonical` is 0 for a record an undo or a final version took back (see
/// [`crate::record::Fork`]): `WHERE canonical` is the chain as it stands.
/// Keyed by `id` itself (the layout before), every insert landed on a random page of the
/// whole table: each record rewrote a page of its own in the WAL and read one back, and the
/// store took half the rows per second it takes now.
fn schema_sql() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {TABLE} (
            seq INTEGER PRIMARY KEY,
            id BLOB NOT NULL,
            source TEXT NOT NULL,
            stream TEXT NOT NULL,
            key TEXT,
            upstream_id TEXT,
            event_time_us INTEGER,
            ingest_time_us INTEGER NOT NULL,
            node TEXT NOT NULL,
            payload TEXT NOT NULL,
            canonical INTEGER NOT NULL DEFAULT 1
        );
        CREATE UNIQUE INDEX IF NOT EXISTS {TABLE}_id ON {TABLE} (id);
        CREATE INDEX IF NOT EXISTS {TABLE}_source_time ON {TABLE} (source, ingest_time_us);
        CREATE TABLE IF NOT EXISTS {CURSORS} (
            source TEXT PRIMARY KEY,
            cursor TEXT NOT NULL,
            updated_us INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS {STATES} (
            source TEXT NOT NULL,
            step INTEGER NOT NULL,
            plugin TEXT NOT NULL,
            state BLOB NOT NULL,
            updated_us INTEGER NOT NULL,
            PRIMARY KEY (source, step)
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS {DEAD} (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            source TEXT NOT NULL,
            stage TEXT NOT NULL,
            plugin TEXT,
            step INTEGER,
            reason TEXT NOT NULL,
            meta TEXT NOT NULL,
            raw BLOB NOT NULL,
            at_us INTEGER NOT NULL,
            replayed_us INTEGER
        );"
    )
}

/// The dead letters a query selects: `?1` source, `?2` stage, `?3` ids (a JSON array), `?4`
/// pending only, `?5` after.
const DEAD_WHERE: &str = "(?1 IS NULL OR source = ?1) AND (?2 IS NULL OR stage = ?2)
    AND (?3 IS NULL OR id IN (SELECT value FROM json_each(?3)))
    AND (?4 = 0 OR replayed_us IS NULL) AND id > ?5";

/// A query's parameters for [`DEAD_WHERE`].
fn dead_params(
    query: &DeadQuery,
) -> (
    Option<String>,
    Option<&'static str>,
    Option<String>,
    bool,
    i64,
) {
    (
        query.source.clone(),
        query.stage.map(|s| s.as_str()),
        query
            .ids
            .as_ref()
            .map(|ids| serde_json::json!(ids).to_string()),
        query.pending,
        query.after.unwrap_or(0),
    )
}

/// Add dead letters, then drop the oldest past the bounds (by age, then by count).
fn add_dead(
    tx: &rusqlite::Transaction<'_>,
    dead: &[DeadLetter],
    bounds: DeadBounds,
) -> Result<(), WriteError> {
    let mut insert = tx
        .prepare_cached(&format!(
            "INSERT INTO {DEAD} (source, stage, plugin, step, reason, meta, raw, at_us) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
        ))
        .map_err(|e| failed("prepare", e))?;
    for d in dead {
        insert
            .execute(params![
                d.source,
                d.stage.as_str(),
                d.plugin,
                d.step,
                DeadLetter::text(&d.reason),
                d.meta_json(),
                d.raw,
                d.at_us
            ])
            .map_err(classify)?;
    }
    let oldest = crate::clock::now_us().saturating_sub(bounds.max_age_us);
    tx.execute(
        &format!("DELETE FROM {DEAD} WHERE at_us < ?1"),
        params![oldest],
    )
    .map_err(|e| failed("pruning dead letters", e))?;
    tx.execute(
        &format!("DELETE FROM {DEAD} WHERE id <= (SELECT max(id) FROM {DEAD}) - ?1"),
        params![bounds.max as i64],
    )
    .map_err(|e| failed("pruning dead letters", e))?;
    Ok(())
}

/// A file of an earlier layout (keyed by `id`, `WITHOUT ROWID`) is rewritten into the current
/// one, in one transaction, its rows keeping their log positions; a file older still, with no
/// log position, first gets one, its rows numbered in ingest order. Returns the rows moved.
fn upgrade(connection: &mut Connection) -> rusqlite::Result<Option<u64>> {
    // Immediate: the writer's and the reader's connections open the file together, and only
    // one may look at the layout and move it.
    let tx = connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let layout: Option<String> = tx
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [TABLE],
            |row| row.get(0),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    if !layout.is_some_and(|sql| sql.contains("WITHOUT ROWID")) {
        return Ok(None);
    }
    tracing::info!(
        "{}: moving the stored records to the current layout (rows in log order); a large \
         file takes a while, and the node starts storing once it is done",
        tx.path().unwrap_or("the embedded store")
    );
    let has_seq = tx
        .prepare(&format!(
            "SELECT 1 FROM pragma_table_info('{TABLE}') WHERE name = 'seq'"
        ))?
        .exists([])?;
    let seq = if has_seq {
        "seq"
    } else {
        "row_number() OVER (ORDER BY ingest_time_us, id)"
    };
    tx.execute_batch(&format!(
        "ALTER TABLE {TABLE} RENAME TO {TABLE}_before;
         DROP INDEX IF EXISTS {TABLE}_source_time;
         DROP INDEX IF EXISTS {TABLE}_log;"
    ))?;
    tx.execute_batch(&schema_sql())?;
    let moved = tx.execute(
        &format!(
            "INSERT INTO {TABLE} (seq, {COLUMNS})
             SELECT {seq}, {COLUMNS} FROM {TABLE}_before ORDER BY 1"
        ),
        [],
    )?;
    tx.execute_batch(&format!("DROP TABLE {TABLE}_before;"))?;
    tx.commit()?;
    Ok(Some(moved as u64))
}

/// The stored columns, in [`schema_sql`]'s order after `seq`.
const COLUMNS: &str =
    "id, source, stream, key, upstream_id, event_time_us, ingest_time_us, node, payload";

fn failed(what: &str, e: impl std::fmt::Display) -> WriteError {
    WriteError::Connection(format!("{what}: {e}"))
}

/// A constraint the row breaks is the row's fault; anything else (disk full, I/O) is not.
fn classify(error: rusqlite::Error) -> WriteError {
    match error.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ConstraintViolation) => WriteError::Rejected(error.to_string()),
        _ => failed("insert", error),
    }
}

impl Sqlite {
    fn open(&self) -> Result<Arc<Mutex<Connection>>, WriteError> {
        self.connection
            .clone()
            .ok_or_else(|| WriteError::Connection("not open".into()))
    }
}

impl Backend for Sqlite {
    async fn connect(&mut self) -> Result<(), WriteError> {
        let path = self.path.clone();
        let checkpoints = self.checkpoints.clone();
        let opened = tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| failed(&format!("cannot create {}", dir.display()), e))?;
            }
            let mut connection = Connection::open(&path).map_err(|e| failed(&format!("cannot open {}", path.display()), e))?;
            // WAL: readers (a user's queries) do not block the writer; NORMAL sync is durable
            // across a process crash, which is what a buffer in front of it needs.
            connection
                .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000;")
                .map_err(|e| failed("cannot configure SQLite", e))?;
            if let Some(moved) = upgrade(&mut connection)
                .map_err(|e| failed(&format!("cannot upgrade {} to the current layout", path.display()), e))?
            {
                tracing::info!("{}: {moved} stored records moved to the current layout", path.display());
            }
            connection
                .execute_batch(&schema_sql())
                .map_err(|e| failed("cannot create the schema", e))?;
            add_canonical(&connection).map_err(|e| failed("cannot add the canonical column", e))?;
            if let Some(counts) = checkpoints {
                connection
                    .execute_batch(&format!("PRAGMA cache_size = -{WRITER_CACHE_KIB};"))
                    .map_err(|e| failed("cannot configure SQLite", e))?;
                checkpoint_in_background(&mut connection, &path, counts)?;
            }
            Ok::<_, WriteError>(connection)
        })
        .await
        .map_err(|e| failed("SQLite task", e))??;
        self.connection = Some(Arc::new(Mutex::new(opened)));
        Ok(())
    }

    async fn write(
        &mut self,
        batch: &[Record],
        cursors: &[(Arc<str>, String)],
        states: &[(Arc<str>, StepState)],
        dead: &[DeadLetter],
    ) -> Result<Written, WriteError> {
        let connection = self.open()?;
        // The blocking task needs owned rows; the copy is small next to the disk write.
        let rows = batch.to_vec();
        let cursors = cursors.to_vec();
        let states = states.to_vec();
        let dead = dead.to_vec();
        let bounds = self.dead_bounds;
        tokio::task::spawn_blocking(move || {
            let mut connection = connection.lock().unwrap_or_else(|p| p.into_inner());
            let tx = connection.transaction().map_err(|e| failed("begin", e))?;
            let mut inserted = 0u64;
            {
                // One writer: numbering after the highest stored number is commit order.
                let mut seq: i64 = tx
                    .query_row(
                        &format!("SELECT coalesce(max(seq), 0) FROM {TABLE}"),
                        [],
                        |row| row.get(0),
                    )
                    .map_err(|e| failed("reading the log position", e))?;
                let mut insert = tx
                    .prepare_cached(&format!(
                        "INSERT INTO {TABLE} (id, source, stream, key, upstream_id, event_time_us, \
                         ingest_time_us, node, payload, seq) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
                         ON CONFLICT (id) DO NOTHING"
                    ))
                    .map_err(|e| failed("prepare", e))?;
                for r in &rows {
                    seq += 1;
                    inserted += insert
                        .execute(params![
                            &r.id.0[..],
                            r.source,
                            r.stream,
                            r.key,
                            r.upstream_id,
                            r.event_time_us,
                            r.ingest_time_us,
                            r.node,
                            r.payload.as_str(),
                            seq
                        ])
                        .map_err(classify)? as u64;
                }
                let mut upsert = tx
                    .prepare_cached(&format!(
                        "INSERT INTO {CURSORS} (source, cursor, updated_us) VALUES (?1, ?2, ?3) \
                         ON CONFLICT (source) DO UPDATE SET cursor = excluded.cursor, \
                         updated_us = excluded.updated_us"
                    ))
                    .map_err(|e| failed("prepare", e))?;
                let now = crate::clock::now_us();
                for (source, cursor) in &cursors {
                    upsert
                        .execute(params![&**source, cursor, now])
                        .map_err(classify)?;
                }
                let mut retire = tx
                    .prepare_cached(&format!(
                        "UPDATE {TABLE} SET canonical = 0 WHERE id = ?1 AND canonical"
                    ))
                    .map_err(|e| failed("prepare", e))?;
                for id in rows.iter().flat_map(Record::retires) {
                    retire.execute(params![&id.0[..]]).map_err(classify)?;
                }
                if !states.is_empty() {
                    let mut keep = tx
                        .prepare_cached(&format!(
                            "INSERT INTO {STATES} (source, step, plugin, state, updated_us) \
                             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (source, step) DO UPDATE SET \
                             plugin = excluded.plugin, state = excluded.state, \
                             updated_us = excluded.updated_us"
                        ))
                        .map_err(|e| failed("prepare", e))?;
                    for (source, s) in &states {
                        keep.execute(params![&**source, s.step, s.plugin, s.state, now])
                            .map_err(classify)?;
                    }
                }
            }
            if !dead.is_empty() {
                add_dead(&tx, &dead, bounds)?;
            }
            tx.commit().map_err(|e| failed("commit", e))?;
            Ok(Written {
                inserted,
                duplicates: rows.len() as u64 - inserted,
            })
        })
        .await
        .map_err(|e| failed("SQLite task", e))?
    }

    async fn resume(&mut self, source: &str, recent: usize) -> Result<Resume, WriteError> {
        let connection = self.open()?;
        let source = source.to_owned();
        tokio::task::spawn_blocking(move || {
            let connection = connection.lock().unwrap_or_else(|p| p.into_inner());
            let found = connection
                .query_row(
                    &format!("SELECT cursor, updated_us FROM {CURSORS} WHERE source = ?1"),
                    params![source],
                    |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)),
                )
                .map(Some)
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    e => Err(failed("reading the cursor", e)),
                })?;
            let mut query = connection
                .prepare_cached(&format!(
                    "SELECT id FROM {TABLE} WHERE source = ?1 ORDER BY ingest_time_us DESC LIMIT ?2"
                ))
                .map_err(|e| failed("prepare", e))?;
            let recent = query
                .query_map(params![source, recent as i64], |row| {
                    row.get::<_, Vec<u8>>(0)
                })
                .map_err(|e| failed("reading recent ids", e))?
                .filter_map(|id| id.ok().and_then(|id| RecordId::from_slice(&id)))
                .collect();
            let (cursor, updated_us) = found.unzip();
            let mut read = connection
                .prepare_cached(&format!(
                    "SELECT step, plugin, state FROM {STATES} WHERE source = ?1 ORDER BY step"
                ))
                .map_err(|e| failed("prepare", e))?;
            let states = read
                .query_map(params![source], |row| {
                    Ok(StepState {
                        step: row.get(0)?,
                        plugin: row.get(1)?,
                        state: row.get(2)?,
                    })
                })
                .map_err(|e| failed("reading transform states", e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| failed("reading transform states", e))?;
            Ok(Resume {
                cursor,
                updated_us,
                states,
                recent,
            })
        })
        .await
        .map_err(|e| failed("SQLite task", e))?
    }

    async fn read_log(&mut self, query: &LogQuery) -> Result<Vec<(Position, Record)>, WriteError> {
        let after = match query.after {
            None => 0,
            Some(Position::Embedded { seq }) => seq,
            Some(other) => {
                return Err(WriteError::Rejected(format!(
                    "`{other}` is not a position of the embedded store"
                )));
            }
        };
        let [sources, streams, keys] = query
            .filter
            .lists()
            .map(|l| serde_json::json!(l).to_string());
        let since = query.since_us.unwrap_or(i64::MIN);
        let limit = query.limit as i64;
        let connection = self.open()?;
        tokio::task::spawn_blocking(move || {
            let connection = connection.lock().unwrap_or_else(|p| p.into_inner());
            let mut read = connection
                .prepare_cached(&format!(
                    "SELECT seq, id, source, stream, key, upstream_id, event_time_us, ingest_time_us, \
                     node, payload FROM {TABLE}
                     WHERE seq > ?1 AND ingest_time_us >= ?2
                       AND (?3 = '[]' OR source IN (SELECT value FROM json_each(?3)))
                       AND (?4 = '[]' OR stream IN (SELECT value FROM json_each(?4)))
                       AND (?5 = '[]' OR key IN (SELECT value FROM json_each(?5)))
                     ORDER BY seq LIMIT ?6"
                ))
                .map_err(|e| failed("prepare", e))?;
            let rows = read
                .query_map(params![after, since, sources, streams, keys, limit], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, Vec<u8>>(1)?,
                        Record {
                            id: RecordId([0; 16]),
                            source: row.get(2)?,
                            stream: row.get(3)?,
                            key: row.get(4)?,
                            upstream_id: row.get(5)?,
                            event_time_us: row.get(6)?,
                            ingest_time_us: row.get(7)?,
                            node: row.get(8)?,
                            payload: Payload::stored(row.get(9)?),
                        },
                    ))
                })
                .map_err(|e| failed("reading the log", e))?;
            rows.map(|row| {
                let (seq, id, mut record) = row.map_err(|e| failed("reading the log", e))?;
                record.id = RecordId::from_slice(&id)
                    .ok_or_else(|| WriteError::Rejected("a stored id is not 16 bytes".into()))?;
                Ok((Position::Embedded { seq }, record))
            })
            .collect()
        })
        .await
        .map_err(|e| failed("SQLite task", e))?
    }

    async fn log_head(&mut self) -> Result<Position, WriteError> {
        let connection = self.open()?;
        tokio::task::spawn_blocking(move || {
            let connection = connection.lock().unwrap_or_else(|p| p.into_inner());
            connection
                .query_row(
                    &format!("SELECT coalesce(max(seq), 0) FROM {TABLE}"),
                    [],
                    |row| row.get(0),
                )
                .map(|seq| Position::Embedded { seq })
                .map_err(|e| failed("reading the log's head", e))
        })
        .await
        .map_err(|e| failed("SQLite task", e))?
    }

    async fn dead_letters(
        &mut self,
        query: &DeadQuery,
    ) -> Result<Vec<StoredDeadLetter>, WriteError> {
        let connection = self.open()?;
        let (source, stage, ids, pending, after) = dead_params(query);
        let limit = query.page() as i64;
        tokio::task::spawn_blocking(move || {
            let connection = connection.lock().unwrap_or_else(|p| p.into_inner());
            let mut read = connection
                .prepare_cached(&format!(
                    "SELECT id, source, stage, plugin, step, reason, meta, raw, at_us, replayed_us \
                     FROM {DEAD} WHERE {DEAD_WHERE} ORDER BY id LIMIT ?6"
                ))
                .map_err(|e| failed("prepare", e))?;
            let rows = read
                .query_map(params![source, stage, ids, pending, after, limit], |row| {
                    Ok(StoredDeadLetter::from_row(
                        row.get(0)?,
                        row.get(1)?,
                        &row.get::<_, String>(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                        &row.get::<_, String>(6)?,
                        row.get(7)?,
                        row.get(8)?,
                        row.get(9)?,
                    ))
                })
                .map_err(|e| failed("reading dead letters", e))?;
            rows.map(|row| row.map_err(|e| failed("reading dead letters", e)))
                .collect()
        })
        .await
        .map_err(|e| failed("SQLite task", e))?
    }

    async fn settle_dead(&mut self, query: &DeadQuery, at: Option<i64>) -> Result<u64, WriteError> {
        let connection = self.open()?;
        let (source, stage, ids, pending, after) = dead_params(query);
        tokio::task::spawn_blocking(move || {
            let connection = connection.lock().unwrap_or_else(|p| p.into_inner());
            let changed = match at {
                Some(at) => connection.execute(
                    &format!("UPDATE {DEAD} SET replayed_us = ?6 WHERE {DEAD_WHERE}"),
                    params![source, stage, ids, pending, after, at],
                ),
                None => connection.execute(
                    &format!("DELETE FROM {DEAD} WHERE {DEAD_WHERE}"),
                    params![source, stage, ids, pending, after],
                ),
            };
            changed
                .map(|n| n as u64)
                .map_err(|e| failed("updating dead letters", e))
        })
        .await
        .map_err(|e| failed("SQLite task", e))?
    }

    async fn forget_cursor(&mut self, source: &str) -> Result<(), WriteError> {
        let connection = self.open()?;
        let source = source.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut connection = connection.lock().unwrap_or_else(|p| p.into_inner());
            // The cursor and the states go together.
            let tx = connection
                .transaction()
                .map_err(|e| failed("forgetting a cursor", e))?;
            for table in [CURSORS, STATES] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE source = ?1"),
                    params![source],
                )
                .map_err(|e| failed("forgetting a cursor", e))?;
            }
            tx.commit().map_err(|e| failed("forgetting a cursor", e))
        })
        .await
        .map_err(|e| failed("SQLite task", e))?
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}
