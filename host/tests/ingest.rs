//! Single-node ingestion end to end: the feed simulator on loopback, a node with 100+ sources
//! over WebSocket and REST, a real PostgreSQL (or the embedded store), real WebSocket
//! subscribers. Every record the simulator says it emitted must be stored exactly once and
//! reach the subscribers, also across a database outage and a misbehaving venue.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anode::demo::MixedSource as Planned;
use anode_feedsim::{FeedSim, Report, SimConfig};
use futures_util::StreamExt;
use serde_json::{Value, json};
use support::store::{Stored, Subscriber};
use support::{PrivatePg, TestDb, get_json, node_config, simulator, start_node, until};
use tokio_tungstenite::tungstenite::Message;

fn mixed_sources(sim: &FeedSim, n: usize) -> Vec<Planned> {
    anode::demo::mixed_sources(&sim.ws_url(), &sim.http_url(), n)
}

/// What the simulator emitted for a source: the count, and the ids when comparable.
fn expected(report: &Report, planned: &Planned) -> (u64, Option<HashSet<u64>>) {
    let streams: Vec<_> = planned
        .streams
        .iter()
        .filter_map(|name| report.streams.get(name))
        .collect();
    let count = streams.iter().map(|s| s.emitted).sum();
    let ids = planned
        .ids_comparable
        .then(|| streams.iter().flat_map(|s| s.ids()).collect());
    (count, ids)
}

async fn add_source(api: &str, spec: &Value) {
    let response = reqwest::Client::new()
        .post(format!("{api}/api/v1/sources"))
        .json(spec)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 201, "adding {}: {body}", spec["id"]);
}

/// Pause the simulator, then wait until every source has stored exactly what the simulator
/// says it emitted.
///
/// The simulator counts what it served, so a poller that has not polled since the pause agrees
/// with it too early: first every polling source must have had two responses after the pause
/// (the second was surely asked for after it).
async fn pause_and_assert_exactly_once(
    sim: &FeedSim,
    api: &str,
    stored: &Stored,
    planned: &[Planned],
    limit: Duration,
) {
    sim.pause();
    let inputs = || async {
        get_json(&format!("{api}/api/v1/sources"))
            .await
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| matches!(s["plugin"].as_str(), Some("http-json" | "evm-blocks")))
            .map(|s| {
                (
                    s["id"].as_str().unwrap().to_owned(),
                    s["inputs"].as_u64().unwrap(),
                )
            })
            .collect::<HashMap<String, u64>>()
    };
    let at_pause = inputs().await;
    until("every poller to poll after the pause", limit, || async {
        let now = inputs().await;
        let behind: Vec<&String> = at_pause
            .iter()
            .filter(|(id, n)| now.get(*id).copied().unwrap_or(0) < *n + 2)
            .map(|(id, _)| id)
            .collect();
        if behind.is_empty() {
            Ok(())
        } else {
            Err(format!("{behind:?}"))
        }
    })
    .await;
    until("every emitted record stored", limit, || async {
        // Read afresh each time: a send in flight when the simulator paused lands later.
        let report = sim.report();
        let counts = stored.counts().await;
        let mut wrong = Vec::new();
        for p in planned {
            let id = p.spec.id.as_str();
            let (want, _) = expected(&report, p);
            let have = counts.get(id).copied().unwrap_or(0);
            if have != want {
                wrong.push(format!("{id}: stored {have}, emitted {want}"));
            }
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} sources differ, e.g. {:?}",
                wrong.len(),
                &wrong[..wrong.len().min(5)]
            ))
        }
    })
    .await;
    let report = sim.report();
    for p in planned.iter().filter(|p| p.ids_comparable) {
        let id = p.spec.id.as_str();
        let (_, want) = expected(&report, p);
        let have: Vec<u64> = stored.ids(id).await;
        let unique: HashSet<u64> = have.iter().copied().collect();
        assert_eq!(
            unique.len(),
            have.len(),
            "{id}: an upstream id is stored twice"
        );
        assert_eq!(
            Some(unique),
            want,
            "{id}: stored ids differ from emitted ids"
        );
    }
}

async fn run_mixed(stored: Stored, store_url: Option<String>) {
    let sim = anode_feedsim::start(SimConfig {
        rate_per_stream: 20.0,
        block_interval_ms: 100,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut config = node_config(data.path());
    // This subscriber must see everything: on two shared cores, give it room to fall behind
    // for a while (a subscriber that never reads has a test of its own).
    config.fanout.queue_len = 65_536;
    config.store.postgres_url = store_url;
    if let Stored::Sqlite(path) = &stored {
        config.store.sqlite_path = Some(path.clone());
    }
    let node = start_node(config).await;
    let api = node.url();
    let subscriber = Subscriber::connect(&format!("ws://{}/ws", node.addr)).await;
    let planned = mixed_sources(&sim, 100);
    for p in &planned {
        add_source(&api, &serde_json::to_value(&p.spec).unwrap()).await;
    }
    // Every source live and producing, then a few seconds' worth of data in all.
    until(
        "every source to produce records",
        Duration::from_secs(60),
        || async {
            let sources = get_json(&format!("{api}/api/v1/sources")).await;
            let idle: Vec<String> = sources
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["events"].as_u64().unwrap_or(0) == 0)
                .map(|s| format!("{} ({}, {})", s["id"], s["state"], s["last_error"]))
                .collect();
            if idle.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} idle: {:?}",
                    idle.len(),
                    &idle[..idle.len().min(5)]
                ))
            }
        },
    )
    .await;
    until("10,000 records", Duration::from_secs(60), || async {
        let total: u64 = stored.counts().await.values().sum();
        if total >= 10_000 {
            Ok(())
        } else {
            Err(format!("{total} stored"))
        }
    })
    .await;
    pause_and_assert_exactly_once(&sim, &api, &stored, &planned, Duration::from_secs(60)).await;
    let total: u64 = stored.counts().await.values().sum();
    until(
        "the subscriber to receive every stored record",
        Duration::from_secs(30),
        || async {
            let received = subscriber.received() as u64;
            if received == total {
                Ok(())
            } else {
                let fanout = get_json(&format!("{api}/api/v1/status")).await["fanout"].clone();
                Err(format!("received {received} of {total}; fan-out {fanout}"))
            }
        },
    )
    .await;
    assert_eq!(
        *subscriber.messages.lock().unwrap(),
        total,
        "the subscriber got a record twice"
    );
    let status = get_json(&format!("{api}/api/v1/status")).await;
    assert_eq!(
        status["store"]["rows_written"].as_u64(),
        Some(total),
        "{}",
        status["store"]
    );
    assert_eq!(status["fanout"]["dropped"], 0);
    subscriber.task.abort();
    node.shutdown().await;
    sim.shutdown().await;
    if let Stored::Postgres(db) = stored {
        db.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_mixed_sources_into_postgres_exactly_once() {
    let db = TestDb::create(&support::pg_server()).await;
    let url = db.url.clone();
    run_mixed(Stored::Postgres(db), Some(url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_mixed_sources_into_the_embedded_store_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    run_mixed(Stored::Sqlite(dir.path().join("records.sqlite")), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_outage_loses_nothing_and_stores_nothing_twice() {
    let pg = tokio::task::spawn_blocking(PrivatePg::start).await.unwrap();
    let db = TestDb::create(&pg.server()).await;
    let sim = simulator(50.0).await;
    let data = tempfile::tempdir().unwrap();
    let mut config = node_config(data.path());
    config.store.postgres_url = Some(db.url.clone());
    let node = start_node(config).await;
    let api = node.url();
    let planned = mixed_sources(&sim, 20);
    for p in &planned {
        add_source(&api, &serde_json::to_value(&p.spec).unwrap()).await;
    }
    let stored = Stored::Postgres(db);
    until("records flowing", Duration::from_secs(60), || async {
        let total: u64 = stored.counts().await.values().sum();
        if total >= 1000 {
            Ok(())
        } else {
            Err(format!("{total} stored"))
        }
    })
    .await;
    let pg = Arc::new(pg);
    tokio::task::spawn_blocking({
        let pg = pg.clone();
        move || pg.stop()
    })
    .await
    .unwrap();
    // While the database is away, records pile up in the node's buffer.
    until(
        "the node to buffer during the outage",
        Duration::from_secs(30),
        || async {
            let store = get_json(&format!("{api}/api/v1/status")).await["store"].clone();
            let backlog = store["backlog"].as_u64().unwrap_or(0);
            if !store["connected"].as_bool().unwrap_or(true) && backlog >= 2000 {
                Ok(())
            } else {
                Err(store.to_string())
            }
        },
    )
    .await;
    tokio::task::spawn_blocking({
        let pg = pg.clone();
        move || pg.restart()
    })
    .await
    .unwrap();
    pause_and_assert_exactly_once(&sim, &api, &stored, &planned, Duration::from_secs(60)).await;
    let status = get_json(&format!("{api}/api/v1/status")).await;
    assert!(
        status["store"]["reconnects"].as_u64().unwrap() >= 1,
        "{}",
        status["store"]
    );
    assert!(
        status["store"]["write_errors"].as_u64().unwrap() >= 1,
        "{}",
        status["store"]
    );
    node.shutdown().await;
    sim.shutdown().await;
    if let Stored::Postgres(db) = stored {
        db.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn misbehaving_venues_recover_and_every_valid_record_arrives() {
    let sim = anode_feedsim::start(SimConfig {
        rate_per_stream: 40.0,
        block_interval_ms: 100,
        faults: anode_feedsim::Faults {
            drop_every: Some(150),
            malformed_every: Some(40),
            truncated_every: Some(55),
            http_429_every: Some(7),
            retry_after_s: 1,
            slow_every: Some(11),
            slow_ms: 300,
        },
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = node_config(data.path());
    config.store.sqlite_path = Some(dir.path().join("records.sqlite"));
    let node = start_node(config).await;
    let api = node.url();
    let planned = mixed_sources(&sim, 30);
    for p in &planned {
        add_source(&api, &serde_json::to_value(&p.spec).unwrap()).await;
    }
    until(
        "drops, bad frames and 429s to be met and survived",
        Duration::from_secs(60),
        || async {
            let faults = sim.report().faults;
            let sources = get_json(&format!("{api}/api/v1/sources")).await;
            let sum = |k: &str| {
                sources
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s[k].as_u64().unwrap_or(0))
                    .sum::<u64>()
            };
            let (reconnects, errors) = (sum("reconnects"), sum("errors"));
            if faults.dropped_connections >= 5
                && faults.malformed_frames >= 5
                && faults.http_429 >= 3
                && reconnects >= 5
                && errors >= 10
            {
                Ok(())
            } else {
                Err(format!(
                    "{faults:?}, reconnects {reconnects}, errors {errors}"
                ))
            }
        },
    )
    .await;
    let stored = Stored::Sqlite(dir.path().join("records.sqlite"));
    pause_and_assert_exactly_once(&sim, &api, &stored, &planned, Duration::from_secs(60)).await;
    let metrics = support::metrics_text(&api).await;
    assert!(
        metrics.contains("anode_source_errors_total{source=\"bn-raw-0\"}"),
        "{metrics}"
    );
    node.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_that_never_reads_is_cut_off_and_slows_no_one() {
    let sim = simulator(200.0).await;
    let data = tempfile::tempdir().unwrap();
    let mut config = node_config(data.path());
    config.fanout.queue_len = 1024;
    config.fanout.lag_disconnect_ms = 500;
    let node = start_node(config).await;
    let api = node.url();
    let ws = format!("ws://{}/ws", node.addr);
    let fast = Subscriber::connect(&ws).await;
    // The slow one asks for a tiny receive window and then never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(node.addr).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(ws.as_str(), stream)
        .await
        .unwrap();
    let other = Subscriber::connect(&ws).await;
    let binance_raw = mixed_sources(&sim, 100).into_iter().take(10);
    for p in binance_raw {
        add_source(&api, &serde_json::to_value(&p.spec).unwrap()).await;
    }
    until(
        "the slow subscriber to be disconnected",
        Duration::from_secs(60),
        || async {
            let fanout = get_json(&format!("{api}/api/v1/status")).await["fanout"].clone();
            if fanout["disconnected_for_lag"] == 1 && fanout["subscribers"] == 2 {
                Ok(())
            } else {
                Err(fanout.to_string())
            }
        },
    )
    .await;
    sim.pause();
    let status = get_json(&format!("{api}/api/v1/status")).await;
    // Its queue was bounded: what did not fit was dropped for it alone, not held.
    let dropped = status["fanout"]["dropped"].as_u64().unwrap();
    assert!(dropped > 0, "{}", status["fanout"]);
    let total_events = || async {
        get_json(&format!("{api}/api/v1/sources"))
            .await
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["events"].as_u64().unwrap())
            .sum::<u64>()
    };
    until(
        "the readers to get every record",
        Duration::from_secs(30),
        || async {
            let total = total_events().await;
            let (a, b) = (fast.received() as u64, other.received() as u64);
            if a == total && b == total && total > 0 {
                Ok(())
            } else {
                Err(format!("fast {a}, other {b}, produced {total}"))
            }
        },
    )
    .await;
    // What the slow one finds when it finally reads: what fitted, then the end.
    let mut seen = 0;
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match slow.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.reason.to_string()),
                Some(Ok(_)) => seen += 1,
                None | Some(Err(_)) => return None,
            }
        }
    })
    .await
    .expect("the slow subscriber's connection must end");
    if let Some(reason) = ended {
        assert!(reason.contains("too slow"), "{reason}");
    }
    assert!(
        (seen as u64) < total_events().await,
        "the slow subscriber cannot have everything"
    );
    fast.task.abort();
    other.task.abort();
    node.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sources_added_and_removed_at_runtime_take_effect() {
    let sim = simulator(50.0).await;
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = node_config(data.path());
    config.store.sqlite_path = Some(dir.path().join("records.sqlite"));
    // One source comes from the config file's [[source]] tables.
    config.source_specs = vec![serde_json::from_value(json!({"id": "from-config", "plugin": "binance-trades",
        "config": {"base_url": format!("{}/binance", sim.ws_url()), "symbols": ["cfgusdt"], "mode": "raw"}}))
    .unwrap()];
    let node = start_node(config).await;
    let api = node.url();
    let stored = Stored::Sqlite(dir.path().join("records.sqlite"));
    stored.until_at_least("from-config", 1).await;
    add_source(&api, &json!({"id": "added", "plugin": "binance-trades",
        "config": {"base_url": format!("{}/binance", sim.ws_url()), "symbols": ["addusdt"], "mode": "raw"}}))
    .await;
    stored.until_at_least("added", 1).await;
    let removed = reqwest::Client::new()
        .delete(format!("{api}/api/v1/sources/from-config"))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 200);
    let list = get_json(&format!("{api}/api/v1/sources")).await;
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["added"]);
    // Once the buffer is empty, the removed source's rows are final while the other grows.
    until("the store to drain", Duration::from_secs(30), || async {
        let store = get_json(&format!("{api}/api/v1/status")).await["store"].clone();
        if store["backlog"] == 0 {
            Ok(())
        } else {
            Err(store.to_string())
        }
    })
    .await;
    let frozen = stored.count("from-config").await;
    let added_before = stored.count("added").await;
    stored.until_at_least("added", added_before + 100).await;
    assert_eq!(
        stored.count("from-config").await,
        frozen,
        "a removed source kept storing"
    );
    let missing = reqwest::Client::new()
        .delete(format!("{api}/api/v1/sources/from-config"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    node.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_stores_and_a_wrong_authority_is_refused() {
    let (pg, ca) = tokio::task::spawn_blocking(PrivatePg::start_with_tls)
        .await
        .unwrap();
    let db = TestDb::create(&pg.server()).await;
    let sim = simulator(50.0).await;
    let start = |ca: std::path::PathBuf| {
        let data = tempfile::tempdir().unwrap();
        let mut config = node_config(data.path());
        config.store.postgres_url = Some(db.url.clone());
        config.store.postgres_tls = anode::sink::PostgresTls::VerifyFull;
        config.store.postgres_ca_file = Some(ca);
        async move { (start_node(config).await, data) }
    };
    let (node, _data) = start(ca).await;
    let api = node.url();
    for spec in support::binance_sources(&sim, 2, "tls") {
        add_source(&api, &spec).await;
    }
    until(
        "records stored over TLS",
        Duration::from_secs(60),
        || async {
            let status = get_json(&format!("{api}/api/v1/status")).await;
            let written = status["store"]["rows_written"].as_u64().unwrap_or(0);
            if written >= 50 {
                Ok(())
            } else {
                Err(format!("{written} rows; store {}", status["store"]))
            }
        },
    )
    .await;
    let tls_connections: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
             WHERE ssl AND application_name = 'anode'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(tls_connections >= 1, "no TLS connection from the node");
    node.shutdown().await;

    // A server certificate from another authority: refused, and the store says why.
    let other = tempfile::tempdir().unwrap();
    let stranger = PrivatePg::make_ca(other.path(), "another-ca");
    let (node, _data) = start(stranger).await;
    let api = node.url();
    until(
        "the store to report the refused certificate",
        Duration::from_secs(60),
        || async {
            let ready = reqwest::get(format!("{api}/readyz")).await.unwrap();
            let status = ready.status().as_u16();
            let body: Value = ready.json().await.unwrap();
            let error = body["store_error"].as_str().unwrap_or_default().to_owned();
            if status == 503
                && error.contains("TLS")
                && error.to_lowercase().contains("certificate")
            {
                Ok(())
            } else {
                Err(format!("{status} {body}"))
            }
        },
    )
    .await;
    node.shutdown().await;
    sim.shutdown().await;
    db.drop_db().await;
    drop(pg);
}

/// Each PostgreSQL write method stores a batch once, drops only the row the server refuses
/// (a payload `jsonb` cannot hold), and numbers rows so that the durable log reads them back
/// in the order they were submitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_postgres_write_method_stores_once_and_drops_only_a_refused_row() {
    use anode::record::{Payload, Stamp};
    use anode::sink::{Batch, LogFilter, LogStart, PostgresMethod, StoreSettings, spawn_store};
    for method in [
        PostgresMethod::Copy,
        PostgresMethod::Unnest,
        PostgresMethod::Json,
    ] {
        let db = TestDb::create(&support::pg_server()).await;
        let settings = StoreSettings {
            postgres_url: Some(db.url.clone()),
            postgres_method: method,
            flush_ms: 1,
            ..StoreSettings::default()
        };
        let cancel = tokio_util::sync::CancellationToken::new();
        let data = tempfile::tempdir().unwrap();
        let (store, task) = spawn_store(&settings, data.path(), cancel.clone()).unwrap();
        let stamp = Stamp {
            source: "m",
            node: "n",
            ingest_time_us: 1,
        };
        let record = |i: u64, payload: &str| {
            stamp.record(
                "trades".into(),
                None,
                Some(format!("T:{i}")),
                None,
                Payload::parse(payload.as_bytes().to_vec()).unwrap(),
            )
        };
        // 100 good rows, one the server refuses (NUL in text), and a repeat of the first.
        let mut records: Vec<_> = (0..100)
            .map(|i| record(i, &format!(r#"{{"i":{i}}}"#)))
            .collect();
        records.insert(50, record(1000, r#"{"bad":"\u0000"}"#));
        records.push(records[0].clone());
        let receipt = store
            .submit(Batch {
                source: Arc::from("m"),
                records,
                cursor: Some("c1".into()),
                states: Vec::new(),
                dead: Vec::new(),
            })
            .await
            .unwrap();
        receipt.committed().await.unwrap();
        let stats = store.stats();
        assert_eq!(rows(&stats), (100, 1, 1), "{method:?}: {stats:?}");
        // Read back in submission order, each once.
        let mut tail = store
            .tail(LogStart::Earliest, LogFilter::default())
            .await
            .unwrap();
        let mut order = Vec::new();
        while order.len() < 100 {
            let page = tokio::time::timeout(Duration::from_secs(10), tail.next())
                .await
                .expect("the log answers")
                .unwrap();
            for json in page {
                let v: Value = serde_json::from_str(&json).unwrap();
                order.push(v["payload"]["i"].as_u64().unwrap());
            }
        }
        assert_eq!(order, (0..100).collect::<Vec<_>>(), "{method:?}");
        cancel.cancel();
        task.await.unwrap();
        db.drop_db().await;
    }
}

/// A PostgreSQL store with two batches in flight (`store.postgres_in_flight = 2`, batches of
/// 100) whose writes of source `first` wait, at `table`, for a lock the test holds.
struct HeldStore {
    db: TestDb,
    test: tokio_postgres::Client,
    store: anode::sink::StoreHandle,
    task: tokio::task::JoinHandle<()>,
    cancel: tokio_util::sync::CancellationToken,
    _data: tempfile::TempDir,
}

impl HeldStore {
    const HOLD: i64 = 0x686f6c64;
    /// The write held at the lock.
    /// (Advisory locks belong to a database; tests run side by side, each in its own.)
    const WAITING: &str = "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
                           AND database = (SELECT oid FROM pg_database
                                           WHERE datname = current_database())";

    async fn start(table: &str) -> HeldStore {
        use anode::sink::{StoreSettings, spawn_store};
        let hold = Self::HOLD;
        let db = TestDb::create(&support::pg_server()).await;
        let test = db.client().await;
        test.batch_execute(&anode::sink::postgres_schema())
            .await
            .unwrap();
        test.batch_execute(&format!(
            "CREATE FUNCTION hold_first() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
                 IF NEW.source = 'first' THEN PERFORM pg_advisory_xact_lock_shared({hold}); END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER hold_first BEFORE INSERT OR UPDATE ON {table}
                 FOR EACH ROW EXECUTE FUNCTION hold_first();
             SELECT pg_advisory_lock({hold});"
        ))
        .await
        .unwrap();
        let settings = StoreSettings {
            postgres_url: Some(db.url.clone()),
            batch_max: 100,
            flush_ms: 1,
            reconnect_min_ms: 50,
            postgres_in_flight: 2,
            ..StoreSettings::default()
        };
        let cancel = tokio_util::sync::CancellationToken::new();
        let data = tempfile::tempdir().unwrap();
        let (store, task) = spawn_store(&settings, data.path(), cancel.clone()).unwrap();
        HeldStore {
            db,
            test,
            store,
            task,
            cancel,
            _data: data,
        }
    }

    /// 100 records of `source` with its cursor; the one at `bad` (if any) is a payload the
    /// server refuses (NUL in text).
    async fn submit(&self, source: &'static str, bad: Option<usize>) -> anode::sink::Receipt {
        let stamp = anode::record::Stamp {
            source,
            node: "n",
            ingest_time_us: 1,
        };
        let records = (0..100)
            .map(|i| {
                let payload = if Some(i) == bad {
                    r#"{"bad":"\u0000"}"#.to_owned()
                } else {
                    format!(r#"{{"i":{i}}}"#)
                };
                stamp.record(
                    "trades".into(),
                    None,
                    Some(format!("{source}:{i}")),
                    None,
                    anode::record::Payload::parse(payload.into_bytes()).unwrap(),
                )
            })
            .collect();
        let batch = anode::sink::Batch {
            source: Arc::from(source),
            records,
            cursor: Some(format!("{source}-cursor")),
            states: Vec::new(),
            dead: Vec::new(),
        };
        self.store.submit(batch).await.unwrap()
    }

    async fn until_held(&self, what: &str) {
        until(what, Duration::from_secs(10), || async {
            let held = self.test.query(Self::WAITING, &[]).await.unwrap().len();
            if held == 1 {
                Ok(())
            } else {
                Err(format!("{held} held"))
            }
        })
        .await;
    }

    /// Both batches' transactions are open (each takes its id first thing).
    async fn until_two_in_flight(&self) {
        let open = "SELECT count(*) FROM pg_stat_activity
                    WHERE application_name = 'anode' AND backend_xid IS NOT NULL
                      AND datname = current_database()";
        until("two batches in flight", Duration::from_secs(10), || async {
            let n: i64 = self.test.query_one(open, &[]).await.unwrap().get(0);
            if n == 2 {
                Ok(())
            } else {
                Err(format!("{n} transactions"))
            }
        })
        .await;
    }

    /// Rows and cursors of `second` that others can see: committed.
    async fn second_committed(&self) -> (i64, i64) {
        let row = self
            .test
            .query_one(
                "SELECT (SELECT count(*) FROM anode_records WHERE source = 'second'),
                        (SELECT count(*) FROM anode_cursors WHERE source = 'second')",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    }

    async fn release(&self) {
        self.test
            .batch_execute(&format!("SELECT pg_advisory_unlock({})", Self::HOLD))
            .await
            .unwrap();
    }

    /// Both receipts come; `first`'s rows come before `second`'s in the log, and both
    /// cursors are stored.
    async fn both_committed_in_order(self, receipts: [anode::sink::Receipt; 2]) {
        for receipt in receipts {
            tokio::time::timeout(Duration::from_secs(20), receipt.committed())
                .await
                .expect("both batches commit once the first may")
                .unwrap();
        }
        let row = self
            .test
            .query_one(
                "SELECT (SELECT max(tx) FROM anode_records WHERE source = 'first'),
                        (SELECT min(tx) FROM anode_records WHERE source = 'second'),
                        (SELECT count(*) FROM anode_cursors)",
                &[],
            )
            .await
            .unwrap();
        let (first_tx, second_tx, cursors): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        assert!(
            first_tx < second_tx,
            "log order: {first_tx} then {second_tx}"
        );
        assert_eq!(cursors, 2);
        self.cancel.cancel();
        self.task.await.unwrap();
        drop(self.test);
        self.db.drop_db().await;
    }
}

/// Two batches in flight: the second is written while the first is held at its cursor, yet it
/// commits neither while the first is held nor when the first fails (its connection killed);
/// once the first commits, both are stored once, the first's rows earlier in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_batch_in_flight_never_commits_before_the_first() {
    let held = HeldStore::start("anode_cursors").await;
    let first = held.submit("first", None).await;
    held.until_held("the first batch held at its cursor").await;
    let second = held.submit("second", None).await;
    held.until_two_in_flight().await;
    assert_eq!(
        held.second_committed().await,
        (0, 0),
        "the second batch committed while the first was held"
    );
    // The first fails: its connection is killed while it is held.
    let pid: i32 = held
        .test
        .query_one(HeldStore::WAITING, &[])
        .await
        .unwrap()
        .get(0);
    held.test
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    until("the failed write seen", Duration::from_secs(10), || async {
        let errors = held.store.stats().write_errors;
        if errors >= 1 {
            Ok(())
        } else {
            Err(format!("{errors} errors"))
        }
    })
    .await;
    held.until_held("the first batch written again and held")
        .await;
    assert_eq!(
        held.second_committed().await,
        (0, 0),
        "the second batch committed although the first failed"
    );
    held.release().await;
    let store = held.store.clone();
    held.both_committed_in_order([first, second]).await;
    let stats = store.stats();
    assert_eq!(rows(&stats), (200, 0, 0), "{stats:?}");
}

/// Two batches in flight, the first refused for one row (found once the first's insert, held,
/// goes on): the second, which waits for the first's insert, does not commit before the
/// first is written in halves; only the bad row is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_first_batch_in_flight_loses_one_row_and_the_second_follows() {
    let held = HeldStore::start("anode_records").await;
    let first = held.submit("first", Some(37)).await;
    held.until_held("the first batch held at its insert").await;
    let second = held.submit("second", None).await;
    held.until_two_in_flight().await;
    held.release().await;
    let store = held.store.clone();
    held.both_committed_in_order([first, second]).await;
    let stats = store.stats();
    assert_eq!(rows(&stats), (199, 1, 0), "{stats:?}");
}

/// A store's rows: written, rejected, skipped as duplicates.
fn rows(stats: &anode::sink::StoreStats) -> (u64, u64, u64) {
    (
        stats.rows_written,
        stats.rows_rejected,
        stats.duplicates_skipped,
    )
}
