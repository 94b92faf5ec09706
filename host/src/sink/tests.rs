use super::*;
use crate::deadletter::DeadMeta;
use crate::record::Payload;
use std::time::{Duration, Instant};

/// A backend in memory that can be told to fail: exercises the buffer, not a database.
#[derive(Clone)]
struct Flaky {
    up: Arc<AtomicBool>,
    /// Write calls made.
    writes: Arc<std::sync::atomic::AtomicUsize>,
    stored: Arc<Mutex<Vec<RecordId>>>,
    cursors: Arc<Mutex<Vec<(String, String)>>>,
    dead: Arc<Mutex<Vec<DeadLetter>>>,
    /// The thread of every write call.
    threads: Arc<Mutex<Vec<Option<String>>>>,
}

impl Flaky {
    fn new(up: bool) -> Self {
        Flaky {
            up: Arc::new(AtomicBool::new(up)),
            writes: Arc::default(),
            stored: Arc::default(),
            cursors: Arc::default(),
            dead: Arc::default(),
            threads: Arc::default(),
        }
    }
}

impl Backend for Flaky {
    async fn connect(&mut self) -> Result<(), WriteError> {
        if self.up.load(Relaxed) {
            Ok(())
        } else {
            Err(WriteError::Connection("down".into()))
        }
    }
    async fn write(
        &mut self,
        batch: &[Record],
        cursors: &[(Arc<str>, String)],
        _states: &[(Arc<str>, StepState)],
        dead: &[DeadLetter],
    ) -> Result<Written, WriteError> {
        if !self.up.load(Relaxed) {
            return Err(WriteError::Connection("down".into()));
        }
        self.writes.fetch_add(1, Relaxed);
        lock(&self.threads).push(std::thread::current().name().map(str::to_owned));
        // All or nothing, like a transaction.
        if batch.iter().any(|r| r.source == "bad") {
            return Err(WriteError::Rejected("bad row".into()));
        }
        if cursors.iter().any(|(_, c)| c.contains('\0')) {
            return Err(WriteError::Rejected("bad cursor".into()));
        }
        lock(&self.dead).extend(dead.iter().cloned());
        let mut saved = lock(&self.cursors);
        for (source, cursor) in cursors {
            saved.retain(|(s, _)| **s != **source);
            saved.push((source.to_string(), cursor.clone()));
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
    async fn resume(&mut self, source: &str, _recent: usize) -> Result<Resume, WriteError> {
        let cursor = lock(&self.cursors)
            .iter()
            .find(|(s, _)| s == source)
            .map(|(_, c)| c.clone());
        Ok(Resume {
            updated_us: cursor.as_ref().map(|_| 0),
            cursor,
            ..Resume::default()
        })
    }
    async fn read_log(&mut self, _query: &LogQuery) -> Result<Vec<(Position, Record)>, WriteError> {
        Ok(Vec::new())
    }
    async fn log_head(&mut self) -> Result<Position, WriteError> {
        Ok(Position::Embedded { seq: 0 })
    }
    fn describe(&self) -> String {
        "memory".into()
    }
}

fn batch(records: Vec<Record>) -> Batch {
    Batch {
        source: records.first().map_or("a", |r| r.source.as_str()).into(),
        records,
        cursor: None,
        states: Vec::new(),
        dead: Vec::new(),
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
        payload: Payload::parse(b"{}".to_vec()).unwrap(),
    }
}

/// A store writing to `backend` (which also serves reads).
fn in_memory(
    backend: Flaky,
    settings: &StoreSettings,
    cancel: &CancellationToken,
) -> (StoreHandle, JoinHandle<()>) {
    spawn_writer(
        backend.clone(),
        move || backend.clone(),
        "memory",
        settings,
        cancel.clone(),
    )
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
    let settings = StoreSettings {
        buffer_records: 10,
        batch_max: 4,
        flush_ms: 1,
        reconnect_min_ms: 1,
        reconnect_max_ms: 5,
        ..StoreSettings::default()
    };
    let cancel = CancellationToken::new();
    let backend = Flaky::new(false);
    let (up, stored) = (backend.up.clone(), backend.stored.clone());
    let (store, task) = in_memory(backend, &settings, &cancel);
    let first = store
        .submit(batch((0..10).map(|n| record("a", n)).collect()))
        .await
        .unwrap();
    assert_eq!(store.stats().backlog, 10);
    // The buffer is full: the next submit waits until the database is back.
    let blocked = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .submit(batch(vec![record("a", 10), record("bad", 0)]))
                .await
        }
    });
    until("write errors while down", || store.stats().write_errors > 0).await;
    assert!(
        !blocked.is_finished(),
        "submit must wait while the buffer is full"
    );
    up.store(true, Relaxed);
    let committed = first.committed().await.unwrap();
    assert_eq!(
        committed.records.len(),
        10,
        "the receipt hands the records back"
    );
    blocked.await.unwrap().unwrap().committed().await.unwrap();
    // A replayed record is stored once.
    store.submit(batch(vec![record("a", 3)])).await.unwrap();
    until("everything written", || store.stats().backlog == 0).await;
    let stats = store.stats();
    assert_eq!(stats.rows_written, 11);
    assert_eq!(stats.duplicates_skipped, 1);
    assert_eq!(stats.rows_rejected, 1);
    assert!(stats.reconnects == 0 || stats.connected);
    assert_eq!(lock(&stored).len(), 11);
    cancel.cancel();
    task.await.unwrap();
    assert!(store.submit(batch(vec![record("a", 99)])).await.is_err());
}

/// A refused row goes to the dead-letter store in the transaction of its batch's cursor, and
/// is not acknowledged as stored; a refused cursor becomes a dead letter too, and neither
/// holds back another source's batch taken in the same write.
#[tokio::test]
async fn refused_rows_and_cursors_become_dead_letters_and_are_not_acknowledged() {
    let settings = StoreSettings {
        flush_ms: 50,
        ..StoreSettings::default()
    };
    let cancel = CancellationToken::new();
    let backend = Flaky::new(true);
    let (dead, stored) = (backend.dead.clone(), backend.stored.clone());
    let (store, task) = in_memory(backend, &settings, &cancel);
    let mut records: Vec<Record> = (0..6).map(|n| record("a", n)).collect();
    records.insert(3, record("bad", 0));
    let with_bad_row = store
        .submit(Batch {
            source: "a".into(),
            records,
            cursor: Some("a-6".into()),
            states: Vec::new(),
            dead: Vec::new(),
        })
        .await
        .unwrap();
    let with_bad_cursor = store
        .submit(Batch {
            source: "c".into(),
            records: vec![record("c", 0)],
            cursor: Some("c\0".into()),
            states: Vec::new(),
            dead: Vec::new(),
        })
        .await
        .unwrap();
    let committed = with_bad_row.committed().await.unwrap();
    assert_eq!(
        committed.records.len(),
        6,
        "the refused row is not acknowledged"
    );
    assert!(committed.records.iter().all(|r| r.source == "a"));
    assert_eq!(
        (committed.refused, committed.cursor.as_deref()),
        (1, Some("a-6"))
    );
    let other = with_bad_cursor.committed().await.unwrap();
    assert_eq!(other.records.len(), 1, "the other source's row is stored");
    assert_eq!(lock(&stored).len(), 7);
    let letters = lock(&dead).clone();
    let stages: Vec<(DeadStage, &str)> = letters
        .iter()
        .map(|d| (d.stage, d.source.as_str()))
        .collect();
    assert_eq!(
        stages,
        [(DeadStage::Store, "bad"), (DeadStage::Cursor, "c")]
    );
    assert_eq!(
        letters[0].meta.record_id,
        Some(record("bad", 0).id.to_hex())
    );
    assert_eq!(letters[1].raw, b"c\0");
    assert_eq!(store.resume("c", 1).await.unwrap().cursor, None);
    let stats = store.stats();
    assert_eq!(
        (stats.dead_letters["store"], stats.dead_letters["cursor"]),
        (1, 1)
    );
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn a_cursor_is_committed_with_its_records_and_never_before() {
    let settings = StoreSettings {
        flush_ms: 1,
        reconnect_min_ms: 1,
        reconnect_max_ms: 5,
        ..StoreSettings::default()
    };
    let cancel = CancellationToken::new();
    let backend = Flaky::new(false);
    let up = backend.up.clone();
    let (store, task) = in_memory(backend, &settings, &cancel);
    let receipt = store
        .submit(Batch {
            source: "a".into(),
            records: (0..5).map(|n| record("a", n)).collect(),
            cursor: Some("4".into()),
            states: Vec::new(),
            dead: Vec::new(),
        })
        .await
        .unwrap();
    until("write errors while down", || store.stats().write_errors > 0).await;
    // Reads use their own connection: they fail while the database is down, rather
    // than answer "no cursor".
    up.store(true, Relaxed);
    let committed = receipt.committed().await.unwrap();
    assert_eq!(committed.cursor.as_deref(), Some("4"));
    assert_eq!(
        store.resume("a", 10).await.unwrap().cursor.as_deref(),
        Some("4")
    );
    assert_eq!(store.resume("b", 10).await.unwrap(), Resume::default());
    assert_eq!(store.stats().cursors_committed, 1);
    // A batch of no records moves the cursor alone.
    store
        .submit(Batch {
            source: "a".into(),
            records: Vec::new(),
            cursor: Some("5".into()),
            states: Vec::new(),
            dead: Vec::new(),
        })
        .await
        .unwrap()
        .committed()
        .await
        .unwrap();
    assert_eq!(
        store.resume("a", 10).await.unwrap().cursor.as_deref(),
        Some("5")
    );
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_runs_on_a_thread_of_its_own() {
    let cancel = CancellationToken::new();
    let backend = Flaky::new(true);
    let threads = backend.threads.clone();
    let (store, task) = in_memory(backend, &StoreSettings::default(), &cancel);
    for round in 0..3 {
        let receipt = store
            .submit(batch(
                (0..10).map(|n| record("a", round * 10 + n)).collect(),
            ))
            .await
            .unwrap();
        assert!(receipt.committed().await.is_ok());
    }
    cancel.cancel();
    task.await.unwrap();
    let threads = lock(&threads).clone();
    assert!(!threads.is_empty());
    // Not one of the runtime's workers, which run the sources.
    assert!(
        threads.iter().all(|t| t.as_deref() == Some("anode-store")),
        "{threads:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_whose_store_task_is_dropped_stops_on_its_thread() {
    let cancel = CancellationToken::new();
    let backend = Flaky::new(true);
    let threads = backend.threads.clone();
    let (store, task) = in_memory(backend, &StoreSettings::default(), &cancel);
    // Once a batch is committed the writer runs on its thread.
    let receipt = store.submit(batch(vec![record("a", 1)])).await.unwrap();
    assert!(receipt.committed().await.is_ok());
    // This test, the writer, the reader and the reader factory hold the backend.
    let held = Arc::strong_count(&threads);
    task.abort();
    // The writer's thread lets go of its backend once its future is dropped there.
    until("the writer to stop", || Arc::strong_count(&threads) < held).await;
}

#[tokio::test]
async fn shutdown_drains_the_buffer() {
    let cancel = CancellationToken::new();
    let backend = Flaky::new(true);
    let stored = backend.stored.clone();
    let settings = StoreSettings {
        flush_ms: 60_000,
        batch_max: 1000,
        ..StoreSettings::default()
    };
    let (store, task) = in_memory(backend, &settings, &cancel);
    let receipt = store
        .submit(batch((0..7).map(|n| record("a", n)).collect()))
        .await
        .unwrap();
    cancel.cancel();
    task.await.unwrap();
    assert_eq!(lock(&stored).len(), 7);
    assert!(receipt.committed().await.is_ok());
}

#[tokio::test]
async fn a_store_that_stays_down_tells_waiting_receipts_at_shutdown() {
    let cancel = CancellationToken::new();
    let backend = Flaky::new(false);
    let settings = StoreSettings {
        reconnect_min_ms: 1,
        reconnect_max_ms: 5,
        drain_timeout_ms: 50,
        ..StoreSettings::default()
    };
    let (store, task) = in_memory(backend, &settings, &cancel);
    let receipt = store.submit(batch(vec![record("a", 1)])).await.unwrap();
    cancel.cancel();
    task.await.unwrap();
    assert!(receipt.committed().await.is_err());
}

#[tokio::test]
async fn a_refused_batch_is_split_in_halves_and_only_the_bad_rows_are_lost() {
    let settings = StoreSettings {
        batch_max: 1024,
        flush_ms: 1,
        ..StoreSettings::default()
    };
    let cancel = CancellationToken::new();
    let backend = Flaky::new(true);
    let (writes, stored) = (backend.writes.clone(), backend.stored.clone());
    let (store, task) = in_memory(backend, &settings, &cancel);
    let mut records: Vec<Record> = (0..1023).map(|n| record("a", n)).collect();
    records.insert(700, record("bad", 0));
    let receipt = store.submit(batch(records)).await.unwrap();
    receipt.committed().await.unwrap();
    let stats = store.stats();
    assert_eq!((stats.rows_written, stats.rows_rejected), (1023, 1));
    assert_eq!(lock(&stored).len(), 1023);
    // The whole, then two halves per level down to the bad row (10 levels), then the cursor:
    // about 2·log2(1024), where row by row took 1025.
    let made = writes.load(Relaxed);
    assert!(made <= 2 + 2 * 10, "{made} writes");
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn postgres_in_flight_out_of_range_is_refused_with_its_name() {
    for n in [0, MAX_IN_FLIGHT + 1] {
        let settings = StoreSettings {
            postgres_url: Some("postgres://anode@127.0.0.1:1/x".into()),
            postgres_in_flight: n,
            ..StoreSettings::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let error = spawn_store(&settings, dir.path(), CancellationToken::new())
            .err()
            .expect("refused")
            .to_string();
        assert!(
            error.contains("store.postgres_in_flight") && error.contains(&n.to_string()),
            "{error}"
        );
    }
}

/// The embedded store's layouts before this one: keyed by `id` (`WITHOUT ROWID`), with the
/// log position (`seq`) and, earlier still, without it.
fn earlier_layout(with_seq: bool) -> String {
    let seq = if with_seq { ", seq INTEGER" } else { "" };
    format!(
        "CREATE TABLE anode_records (
            id BLOB PRIMARY KEY, source TEXT NOT NULL, stream TEXT NOT NULL, key TEXT,
            upstream_id TEXT, event_time_us INTEGER, ingest_time_us INTEGER NOT NULL,
            node TEXT NOT NULL, payload TEXT NOT NULL{seq}
        ) WITHOUT ROWID;
        CREATE INDEX anode_records_source_time ON anode_records (source, ingest_time_us);
        CREATE TABLE anode_cursors (
            source TEXT PRIMARY KEY, cursor TEXT NOT NULL, updated_us INTEGER NOT NULL
        ) WITHOUT ROWID;
        INSERT INTO anode_cursors VALUES ('a', 'c-3', 1);"
    )
}

#[tokio::test]
async fn an_embedded_store_of_an_earlier_layout_is_upgraded_keeping_its_log() {
    use super::sqlite::Sqlite;
    for with_seq in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records.sqlite");
        // Three records whose log order (by seq, or by ingest time) is not their id order.
        let mut old: Vec<Record> = (1..=3).map(|n| record("a", n)).collect();
        old.sort_by_key(|r| r.id.0);
        old.swap(0, 2);
        {
            let db = rusqlite::Connection::open(&path).unwrap();
            db.execute_batch(&earlier_layout(with_seq)).unwrap();
            for (n, r) in old.iter().enumerate() {
                let n = n as i64 + 1;
                db.execute(
                    "INSERT INTO anode_records (id, source, stream, key, upstream_id, event_time_us,
                     ingest_time_us, node, payload) VALUES (?1, ?2, ?3, NULL, ?4, NULL, ?5, ?6, ?7)",
                    rusqlite::params![&r.id.0[..], r.source, r.stream, r.upstream_id, n, r.node, "{}"],
                )
                .unwrap();
                if with_seq {
                    db.execute(
                        "UPDATE anode_records SET seq = ?1 WHERE id = ?2",
                        rusqlite::params![n * 10, &r.id.0[..]],
                    )
                    .unwrap();
                }
            }
        }
        let all = LogQuery {
            after: None,
            since_us: None,
            filter: LogFilter::default(),
            limit: 100,
        };
        let position = |n: i64| Position::Embedded {
            seq: if with_seq { n * 10 } else { n },
        };
        for opening in 0..2 {
            // The writer's and the reader's connections open the file at once.
            let mut store = Sqlite::new(path.clone());
            let mut reader = Sqlite::new(path.clone());
            let (writer_opened, reader_opened) = tokio::join!(store.connect(), reader.connect());
            writer_opened.unwrap();
            reader_opened.unwrap();
            let log = store.read_log(&all).await.unwrap();
            let ids: Vec<_> = log.iter().map(|(_, r)| r.id).collect();
            assert_eq!(
                ids,
                old.iter().map(|r| r.id).collect::<Vec<_>>(),
                "with_seq {with_seq}, opening {opening}: log order kept"
            );
            assert_eq!(log[2].0, position(3));
            let resume = store.resume("a", 10).await.unwrap();
            assert_eq!(resume.cursor.as_deref(), Some("c-3"));
            let layout: String = rusqlite::Connection::open(&path)
                .unwrap()
                .query_row(
                    "SELECT sql FROM sqlite_master WHERE name = 'anode_records'",
                    [],
                    |row| row.get(0),
                )
                .unwrap();
            assert!(!layout.contains("WITHOUT ROWID"), "{layout}");
        }
        // A repeat is still a duplicate, and a new record follows the old ones in the log.
        let mut store = Sqlite::new(path.clone());
        store.connect().await.unwrap();
        let new = record("a", 4);
        let written = store
            .write(&[old[1].clone(), new.clone()], &[], &[], &[])
            .await
            .unwrap();
        assert_eq!((written.inserted, written.duplicates), (1, 1));
        let after = LogQuery {
            after: Some(position(3)),
            ..all
        };
        let log = store.read_log(&after).await.unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].1.id, new.id);
    }
}

/// `n` records of source `a` with 3 KB payloads: about three quarters of a 4 KiB page each.
fn padded(n: u64) -> Vec<Record> {
    let pad = format!(r#"{{"pad":"{}"}}"#, "x".repeat(3000));
    let pad = Payload::parse(pad.into_bytes()).unwrap();
    (0..n)
        .map(|n| Record {
            payload: pad.clone(),
            ..record("a", n)
        })
        .collect()
}

/// Rows in a copy of the database file at `path` by itself, its log left behind.
fn rows_in_file_alone(path: &std::path::Path) -> rusqlite::Result<i64> {
    let copy = path.with_extension("copy");
    std::fs::copy(path, &copy).unwrap();
    rusqlite::Connection::open(&copy)
        .and_then(|db| db.query_row("SELECT count(*) FROM anode_records", [], |r| r.get(0)))
}

#[tokio::test]
async fn the_embedded_stores_log_is_checkpointed_by_a_thread_of_its_own() {
    use super::sqlite::Sqlite;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.sqlite");
    let mut store = Sqlite::writer(path.clone(), DeadBounds::default());
    store.connect().await.unwrap();
    // About 12,750 pages of log, past the checkpointer's threshold (12,000).
    let written = store.write(&padded(17_000), &[], &[], &[]).await.unwrap();
    assert_eq!(written.inserted, 17_000);
    // The database file by itself comes to hold every row, and the thread counts its
    // checkpoint (just after it returns: the two are looked at together).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // A copy taken in the middle of a checkpoint may not open: try again.
        let rows = rows_in_file_alone(&path);
        if matches!(rows, Ok(17_000)) && store.checkpoints().0 >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the database file holds {rows:?} of 17,000 rows after 20 s: the log was not \
             checkpointed (checkpoints by the thread and by the writer: {:?})",
            store.checkpoints()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (background, by_writer) = store.checkpoints();
    assert!(background >= 1, "checkpointed by the checkpointer thread");
    assert_eq!(by_writer, 0, "the writer did not have to checkpoint");
}

#[tokio::test]
async fn a_log_past_the_backstop_is_checkpointed_by_the_writer_at_its_commit() {
    use super::sqlite::Sqlite;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.sqlite");
    let mut store = Sqlite::writer(path.clone(), DeadBounds::default());
    store.connect().await.unwrap();
    // One commit of about 34,500 pages of log: past the backstop (32,000) before the thread
    // can act.
    let written = store.write(&padded(46_000), &[], &[], &[]).await.unwrap();
    assert_eq!(written.inserted, 46_000);
    let (_, by_writer) = store.checkpoints();
    assert_eq!(by_writer, 1, "the writer checkpointed at its commit");
    // Done within the commit: the file by itself holds every row already.
    assert_eq!(rows_in_file_alone(&path).unwrap(), 46_000);
}

/// The embedded store keeps dead letters beside the records, within its bounds, and reads,
/// marks and deletes them by filter.
#[tokio::test]
async fn the_embedded_dead_letter_store_is_bounded_and_read_by_filter() {
    let dir = tempfile::tempdir().unwrap();
    let bounds = DeadBounds {
        max: 3,
        max_age_us: 3_600_000_000,
    };
    let mut store = sqlite::Sqlite::writer(dir.path().join("records.sqlite"), bounds);
    store.connect().await.unwrap();
    let letter = |source: &str, stage: DeadStage, n: u8, at_us: i64| DeadLetter {
        source: source.into(),
        stage,
        plugin: Some("ab".repeat(32)),
        step: (stage == DeadStage::Transform).then_some(0),
        reason: format!("no {n}\0"),
        raw: vec![n, 0xff],
        meta: DeadMeta {
            upstream_id: Some(n.to_string()),
            ..DeadMeta::default()
        },
        at_us,
    };
    let now = crate::clock::now_us();
    let first = [
        letter("a", DeadStage::Decode, 1, now - 7_200_000_000),
        letter("a", DeadStage::Transform, 2, now),
    ];
    store.write(&[], &[], &[], &first).await.unwrap();
    let all = DeadQuery::default();
    let read = store.dead_letters(&all).await.unwrap();
    // The one older than the age bound went with the write.
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].meta.upstream_id.as_deref(), Some("2"));
    assert_eq!(read[0].reason, "no 2\\0", "a NUL is written as \\0");
    assert_eq!(
        (read[0].raw.as_deref(), read[0].raw_hex.as_deref()),
        (None, Some("02ff"))
    );
    assert_eq!(
        (read[0].stage, read[0].step),
        (DeadStage::Transform, Some(0))
    );
    let more: Vec<DeadLetter> = (3..7)
        .map(|n| letter(if n % 2 == 0 { "b" } else { "a" }, DeadStage::Store, n, now))
        .collect();
    store
        .write(&[record("a", 1)], &[("a".into(), "c".into())], &[], &more)
        .await
        .unwrap();
    let read = store.dead_letters(&all).await.unwrap();
    let kept: Vec<&str> = read
        .iter()
        .map(|d| d.meta.upstream_id.as_deref().unwrap())
        .collect();
    assert_eq!(kept, ["4", "5", "6"], "the count bound keeps the newest");
    let of_b = DeadQuery {
        source: Some("b".into()),
        ..DeadQuery::default()
    };
    assert_eq!(store.dead_letters(&of_b).await.unwrap().len(), 2);
    let marked = store.settle_dead(&of_b, Some(now)).await.unwrap();
    assert_eq!(marked, 2);
    let pending = DeadQuery {
        pending: true,
        ..DeadQuery::default()
    };
    let left = store.dead_letters(&pending).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].source, "a");
    let page = DeadQuery {
        after: Some(left[0].id - 1),
        limit: Some(1),
        ..DeadQuery::default()
    };
    assert_eq!(store.dead_letters(&page).await.unwrap()[0].id, left[0].id);
    assert_eq!(store.settle_dead(&of_b, None).await.unwrap(), 2);
    assert_eq!(store.dead_letters(&all).await.unwrap().len(), 1);
    store.forget_cursor("a").await.unwrap();
    assert_eq!(store.resume("a", 1).await.unwrap().cursor, None);
}
