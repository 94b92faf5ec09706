//! Subscribers that resume: a `/ws?since=earliest` subscriber reads records under load, goes
//! away for 10 s of trades, and comes back with `since=<the last position it received>`.
//! Between its two sessions it receives every record the store holds, once, in order per
//! source (trade ids only rise), and the store holds every trade the simulator generated.
//! Three durable logs: PostgreSQL shared by two nodes (the subscriber's node runs only some of
//! the sources), the embedded store of one node, and JetStream beside PostgreSQL.
//!
//! Also: a start that is not one (`since=yesterday`) or a position of another kind of log is
//! refused with 400 and a message that says what to send instead.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use support::store::{Stored, every_generated_id_stored_once, until_streams_move_on};
use support::{binance_sources, node_config, simulator, start_node, until};
use tokio_tungstenite::tungstenite::Message;

/// A record as a resuming subscriber saw it.
struct Seen {
    position: String,
    id: String,
    source: String,
    trade: u64,
}

/// A `/ws?since=…` session that keeps what it reads.
struct Session {
    seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Session {
    async fn open(api: &str, since: &str) -> Session {
        let url = format!("{}/ws?since={since}", api.replacen("http", "ws", 1));
        let (socket, _) = tokio_tungstenite::connect_async(&url)
            .await
            .unwrap_or_else(|e| panic!("subscribe at {url}: {e}"));
        let (tx, mut rx) = socket.split();
        let hello = rx.next().await.expect("hello").expect("hello");
        let hello: Value = serde_json::from_str(hello.to_text().unwrap()).unwrap();
        assert_eq!(hello["type"], "subscribed", "{hello}");
        assert_eq!(hello["since"], since, "{hello}");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                let _tx = tx;
                while let Some(Ok(message)) = rx.next().await {
                    let Message::Text(text) = message else {
                        continue;
                    };
                    let v: Value = serde_json::from_str(&text).unwrap();
                    assert!(v.get("type").is_none(), "not a record: {v}");
                    let upstream = v["upstream_id"].as_str().unwrap();
                    seen.lock().unwrap().push(Seen {
                        position: v["position"].as_str().expect("a position").to_owned(),
                        id: v["id"].as_str().unwrap().to_owned(),
                        source: v["source"].as_str().unwrap().to_owned(),
                        trade: upstream.rsplit(':').next().unwrap().parse().unwrap(),
                    });
                }
            }
        });
        Session { seen, task }
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Hang up: the socket closes and what was read is returned.
    fn close(self) -> Vec<Seen> {
        self.task.abort();
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// What `anode tail --json --since … --limit …` printed.
#[derive(Debug)]
struct Tailed {
    records: Vec<Value>,
    stderr: String,
}

/// Run off the runtime's workers: the node under test runs on them.
async fn tail(api: &str, since: &str, limit: u32) -> Tailed {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_anode"));
    command
        .args(["tail", "--json", "--since", since])
        .args(["--limit", &limit.to_string()])
        .env("ANODE_URL", api);
    let out = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run anode tail");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let records = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    Tailed { records, stderr }
}

/// The scenario on a node (at `api`) whose log reads back what `stored` holds, for sources
/// `specs` added through `add_api`.
async fn resume_after_ten_seconds_away(
    sim: &anode_feedsim::FeedSim,
    api: &str,
    add_api: &str,
    specs: &[Value],
    stored: &Stored,
) {
    until("the store to connect", Duration::from_secs(30), || async {
        let status = support::get_json(&format!("{api}/api/v1/status")).await;
        match status["store"]["connected"].as_bool() {
            Some(true) => Ok(()),
            _ => Err(status["store"].to_string()),
        }
    })
    .await;
    let first = Session::open(api, "earliest").await;
    support::add_sources(add_api, specs).await;
    until(
        "the subscriber to receive records",
        Duration::from_secs(60),
        || async {
            match first.count() {
                n if n >= 300 => Ok(()),
                n => Err(format!("{n} received")),
            }
        },
    )
    .await;
    let mut seen = first.close();
    let last = seen.last().unwrap().position.clone();
    // Away while the venues trade for 10 s (at 20 trades/s per stream).
    until_streams_move_on(sim, specs, 200).await;
    let second = Session::open(api, &last).await;
    sim.pause();
    every_generated_id_stored_once(sim, stored, specs, &[]).await;
    let mut want = 0;
    for spec in specs {
        want += stored.ids(spec["id"].as_str().unwrap()).await.len();
    }
    until(
        "the resumed subscriber to catch up",
        Duration::from_secs(60),
        || async {
            match seen.len() + second.count() {
                n if n >= want => Ok(()),
                n => Err(format!("{n} of {want} received")),
            }
        },
    )
    .await;
    let resumed = second.close();
    println!(
        "resume: {} records before the gap, {} after it (from {last}), {want} stored",
        seen.len(),
        resumed.len()
    );
    seen.extend(resumed);

    // Once each: no record in both sessions, none twice in one.
    let ids: HashSet<&str> = seen.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids.len(), seen.len(), "a record was received twice");
    // Every stored record, in order per source.
    let mut by_source: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for s in &seen {
        by_source.entry(&s.source).or_default().push(s.trade);
    }
    for spec in specs {
        let id = spec["id"].as_str().unwrap();
        let got = by_source.remove(id).unwrap_or_default();
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "{id}: out of order: {got:?}"
        );
        let mut have = stored.ids(id).await;
        have.sort_unstable();
        assert_eq!(got, have, "{id}: received differs from stored");
    }
    assert!(by_source.is_empty(), "records of strangers: {by_source:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_from_postgresql_across_two_nodes_misses_nothing_and_repeats_nothing() {
    let root = tempfile::tempdir().unwrap();
    let db = support::TestDb::create(&support::pg_server()).await;
    let sim = simulator(20.0).await;
    let cluster = support::cluster::start_cluster(root.path(), "rs", 2, Some(&db.url)).await;
    let specs = binance_sources(&sim, 12, "rs");
    let stored = Stored::Postgres(db);
    resume_after_ten_seconds_away(&sim, &cluster[0].api, &cluster[1].api, &specs, &stored).await;
    // The subscriber's node did not run every source: the other node's records came through
    // the shared log.
    let mine = support::cluster::running_on(&cluster[0]).await.len();
    assert!(
        mine < specs.len(),
        "{} ran all {mine} sources",
        cluster[0].id
    );
    drop(cluster);
    sim.shutdown().await;
    if let Stored::Postgres(db) = stored {
        db.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_from_the_embedded_store_misses_nothing_and_repeats_nothing() {
    let data = tempfile::tempdir().unwrap();
    let sim = simulator(20.0).await;
    let node = start_node(node_config(data.path())).await;
    let api = node.url();
    let specs = binance_sources(&sim, 8, "re");
    let stored = Stored::Sqlite(data.path().join("records.sqlite"));
    resume_after_ten_seconds_away(&sim, &api, &api, &specs, &stored).await;

    // `anode tail --since`: records with positions, and on exit the position to go on from,
    // which a second tail takes up with the next records and none of the first's.
    let first = tail(&api, "earliest", 5).await;
    assert_eq!(first.records.len(), 5, "{first:?}");
    let last = first.records[4]["position"].as_str().unwrap().to_owned();
    assert!(
        first.stderr.contains(&format!("anode tail --since {last}")),
        "{first:?}"
    );
    let second = tail(&api, &last, 3).await;
    assert_eq!(second.records.len(), 3, "{second:?}");
    let seq = |v: &Value| -> u64 { v["position"].as_str().unwrap()[1..].parse().unwrap() };
    assert!(
        seq(&second.records[0]) > seq(&first.records[4]),
        "{second:?}"
    );
    let ids: HashSet<&str> = first
        .records
        .iter()
        .chain(&second.records)
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 8, "a record in both tails");

    // Starts that are not starts, or positions of another log, are refused with a reason.
    for (since, says) in [("yesterday", "earliest"), ("p12.3", "e")] {
        let url = format!("{}/ws?since={since}", api.replacen("http", "ws", 1));
        match tokio_tungstenite::connect_async(&url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 400, "since={since}");
                let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default())
                    .to_string();
                assert!(body.contains(says), "since={since}: {body}");
            }
            other => panic!("since={since} was not refused: {:?}", other.map(|_| ())),
        }
    }
    node.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_from_jetstream_misses_nothing_and_repeats_nothing() {
    let url = support::nats_url();
    let nats = support::nats_settings(&url, &format!("R{}", std::process::id()));
    let db = support::TestDb::create(&support::pg_server()).await;
    let sim = simulator(20.0).await;
    let data = tempfile::tempdir().unwrap();
    let config = support::jetstream_config(data.path(), &db.url, nats.clone());
    let node = start_node(config).await;
    let api = node.url();
    let specs = binance_sources(&sim, 8, "rj");
    let stored = Stored::Postgres(db);
    resume_after_ten_seconds_away(&sim, &api, &api, &specs, &stored).await;
    let client = async_nats::connect(&url).await.unwrap();
    let _ = async_nats::jetstream::new(client)
        .delete_stream(&nats.stream)
        .await;
    node.shutdown().await;
    sim.shutdown().await;
    if let Stored::Postgres(db) = stored {
        db.drop_db().await;
    }
}

/// Resuming subscribers are bounded (`fanout.max_resuming`): one over the bound is refused
/// with 503 and a reason, and a place is free again once a subscriber leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_subscribers_beyond_the_bound_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let mut config = node_config(data.path());
    config.fanout.max_resuming = 1;
    let node = start_node(config).await;
    let api = node.url();
    let url = format!("{}/ws?since=now", api.replacen("http", "ws", 1));
    let held = Session::open(&api, "now").await;
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            let body =
                String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).to_string();
            assert!(body.contains("fanout.max_resuming"), "{body}");
        }
        other => panic!(
            "a second resuming subscriber was let in: {:?}",
            other.map(|_| ())
        ),
    }
    held.close();
    until(
        "the place to be free again",
        Duration::from_secs(10),
        || async {
            match tokio_tungstenite::connect_async(&url).await {
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    node.shutdown().await;
}
