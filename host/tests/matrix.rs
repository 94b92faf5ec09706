//! The delivery contract's fault matrix, crossed with every store: for the embedded store,
//! PostgreSQL, PostgreSQL with a required JetStream and PostgreSQL with an optional one, two
//! `anode up` nodes collect Binance trades while, in turn,
//!
//! 1. the link between them is cut (the second node reaches the first only through a TCP
//!    proxy the test cuts),
//! 2. the NATS server goes away for 20 s (the JetStream rows),
//! 3. the first node is killed with `kill -9`,
//!
//! and an `after=stored` subscriber on the second node reads throughout. Afterwards, id by id:
//! every id the simulator generated is stored once (the faults' windows included); the
//! subscriber received each stored record at most once and nothing that is not stored, and
//! every stored record but those of the dead node's sources named in a `gap` notice; the
//! cut link resumed without a notice.
//!
//! On PostgreSQL the sources are spread over both nodes and the second takes the dead one's
//! over from their stored cursors (backfill); the embedded store keeps each node's cursors
//! to itself, so there every source is collected on both nodes (`"replicas": 2`), each node
//! stores what it collected, and every generated id is in one of the two stores (each store
//! holding it once). The
//! transform faults (a trap, a deadline, a refused event, a refused row, a bad cursor) are
//! crossed with the same stores in `deadletters.rs`.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use serde_json::json;
use support::cluster::{NodeProc, post, running_on};
use support::proxy::two_nodes_behind_proxy;
use support::store::{Stored, Subscriber, every_generated_id_stored_once, until_streams_move_on};
use support::{
    TestDb, binance_sources, free_port, get_json, nats_server, simulator, until,
    until_metric_above, until_nats_answers,
};

const SETTLE: Duration = Duration::from_secs(90);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Store {
    Embedded,
    Postgres,
    JetStreamRequired,
    JetStreamOptional,
}

impl Store {
    fn jetstream(self) -> Option<bool> {
        match self {
            Store::JetStreamRequired => Some(true),
            Store::JetStreamOptional => Some(false),
            _ => None,
        }
    }
}

/// Wait until each source runs live on `want` of the nodes; returns where each runs.
async fn until_live(
    nodes: &[&NodeProc],
    sources: &BTreeSet<String>,
    want: usize,
) -> BTreeMap<String, BTreeSet<String>> {
    until("every source live where it belongs", SETTLE, || async {
        let mut on: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for node in nodes {
            for (id, report) in running_on(node).await {
                if report["state"] == "live" {
                    on.entry(id).or_default().insert(node.id.clone());
                }
            }
        }
        let wrong: Vec<String> = sources
            .iter()
            .filter(|id| on.get(*id).map_or(0, BTreeSet::len) != want)
            .map(|id| format!("{id} on {:?}", on.get(id)))
            .collect();
        if wrong.is_empty() {
            Ok(on)
        } else {
            Err(wrong.join(", "))
        }
    })
    .await
}

async fn faults_lose_nothing(store: Store, prefix: &str) {
    let root = tempfile::tempdir().unwrap();
    let sim = simulator(20.0).await;
    let db = match store {
        Store::Embedded => None,
        _ => Some(TestDb::create(&support::pg_server()).await),
    };
    let nats_dir = tempfile::tempdir().unwrap();
    let nats_port = free_port();
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    let mut nats = store
        .jetstream()
        .map(|_| nats_server(nats_port, nats_dir.path()));
    let mut extra = String::new();
    if let Some(required) = store.jetstream() {
        until_nats_answers(&nats_url).await;
        extra.push_str(&format!(
            "[store.nats]\nurl = {nats_url:?}\nstream = \"ANODE_MATRIX_{}\"\n\
             subject_prefix = \"matrix{prefix}\"\nrequired = {required}\n",
            prefix.to_ascii_uppercase()
        ));
    }
    let (first, proxy, second) = two_nodes_behind_proxy(
        root.path(),
        prefix,
        db.as_ref().map(|db| db.url.as_str()),
        &extra,
    )
    .await;
    let subscriber = Subscriber::connect(&format!(
        "{}/ws?after=stored",
        second.api.replace("http://", "ws://")
    ))
    .await;
    // The embedded store keeps cursors on its node: there a source must run on both nodes
    // to survive one of them.
    let replicas = if store == Store::Embedded { 2 } else { 1 };
    let mut specs = binance_sources(&sim, 6, prefix);
    for spec in &mut specs {
        spec["replicas"] = json!(replicas);
    }
    for spec in &specs {
        post(&format!("{}/api/v1/sources", second.api), spec).await;
    }
    let sources: BTreeSet<String> = specs
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    let on = until_live(&[&first, &second], &sources, replicas).await;
    let of_first: BTreeSet<String> = on
        .iter()
        .filter(|(_, nodes)| nodes.contains(&first.id))
        .map(|(id, _)| id.clone())
        .collect();
    assert!(!of_first.is_empty(), "the first node collects none: {on:?}");
    until_metric_above(&second, "anode_records_relayed_in_total", 0.0).await;

    // 1. The link is cut, and mended: it resumes where it was.
    proxy.cut();
    until_streams_move_on(&sim, &specs, 10).await;
    proxy.mend();
    until_metric_above(&second, "anode_relay_links_resumed_total", 0.0).await;
    until_streams_move_on(&sim, &specs, 10).await;

    // 2. NATS goes away for 20 s, and comes back with its stream on disk.
    if let Some(server) = nats.as_mut() {
        server.stop();
        let outage = Instant::now();
        while outage.elapsed() < Duration::from_secs(20) {
            let status = get_json(&format!("{}/api/v1/status", second.api)).await;
            assert_eq!(status["store"]["connected"], true, "the database stays up");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        nats = Some(nats_server(nats_port, nats_dir.path()));
        until_nats_answers(&nats_url).await;
        until_streams_move_on(&sim, &specs, 10).await;
    }
    let notices_before_kill = subscriber.notices.lock().unwrap().clone();
    assert!(
        notices_before_kill.iter().all(|n| n["type"] != "gap"),
        "a gap notice before any node died: {notices_before_kill:?}"
    );

    // 3. kill -9 of the first node: its sources go on on the second.
    let mut first = first;
    first.kill();
    until_live(&[&second], &sources, 1).await;
    until_streams_move_on(&sim, &specs, 20).await;
    sim.pause();

    let stored = match db {
        Some(db) => Stored::Postgres(db),
        None => Stored::Sqlite(second.dir.join("records.sqlite")),
    };
    let stored_ids = match &stored {
        Stored::Postgres(_) => {
            every_generated_id_stored_once(&sim, &stored, &specs, &[]).await;
            stored.record_ids(None).await
        }
        // Each node stored what it collected: the second from when its own copy of each
        // source connected, the first until it died. Together they hold every id, each
        // store each id once.
        Stored::Sqlite(_) => {
            let first_store = Stored::Sqlite(first.dir.join("records.sqlite"));
            every_generated_id_in_one_of(&sim, [&first_store, &stored], &specs).await;
            let mut ids = first_store.record_ids(None).await;
            ids.extend(stored.record_ids(None).await);
            ids
        }
    };
    // The subscriber: nothing twice, nothing not stored, and nothing missing but records of
    // the dead node's sources that a gap notice named.
    let named: BTreeSet<String> = subscriber
        .notices
        .lock()
        .unwrap()
        .iter()
        .filter(|n| n["type"] == "gap" && n["node"] == first.id.as_str())
        .flat_map(|n| n["sources"].as_array().cloned().unwrap_or_default())
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect();
    let excused: HashSet<String> = match &stored {
        Stored::Postgres(_) => {
            let mut ids = HashSet::new();
            for source in &named {
                ids.extend(source_ids(&stored, source, &first.id).await);
            }
            ids
        }
        Stored::Sqlite(_) => HashSet::new(),
    };
    until("the subscriber to have every stored record", SETTLE, || async {
        let got = subscriber.ids.lock().unwrap().clone();
        let extra = got.difference(&stored_ids).count();
        let missing: Vec<&String> = stored_ids
            .difference(&got)
            .filter(|id| !excused.contains(*id))
            .collect();
        if extra == 0 && missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} stored not received (gap notices named {named:?}), {extra} received not stored",
                missing.len()
            ))
        }
    })
    .await;
    assert_eq!(
        *subscriber.messages.lock().unwrap() as usize,
        subscriber.received(),
        "a record delivered twice"
    );
    println!(
        "{store:?}: {} stored, {} received by the subscriber on the other node, {} of the \
         dead node's not received and named in gap notices ({} notice(s))",
        stored_ids.len(),
        subscriber.received(),
        stored_ids
            .difference(&subscriber.ids.lock().unwrap())
            .count(),
        subscriber
            .notices
            .lock()
            .unwrap()
            .iter()
            .filter(|n| n["type"] == "gap")
            .count()
    );
    subscriber.task.abort();
    sim.shutdown().await;
    drop((second, proxy, first));
    // The private NATS server goes, with its stream.
    drop(nats);
    if let Stored::Postgres(db) = stored {
        db.drop_db().await;
    }
}

/// Every id the simulator generated for each source is in one of `stores` at least, and no
/// store holds one twice.
async fn every_generated_id_in_one_of(
    sim: &anode_feedsim::FeedSim,
    stores: [&Stored; 2],
    specs: &[serde_json::Value],
) {
    until("every generated id stored", SETTLE, || async {
        let report = sim.report();
        let mut wrong = Vec::new();
        for spec in specs {
            let id = spec["id"].as_str().unwrap();
            let (first, last) = report.streams[&support::store::trade_stream(spec)]
                .generated
                .expect("a subscribed stream has generated ids");
            let mut union = BTreeSet::new();
            for store in stores {
                let ids = store.ids(id).await;
                let distinct: BTreeSet<u64> = ids.iter().copied().collect();
                if distinct.len() != ids.len() {
                    wrong.push(format!("{id}: stored twice in one store"));
                }
                union.extend(distinct);
            }
            let missing = (first..=last).filter(|n| !union.contains(n)).count();
            if missing > 0 {
                wrong.push(format!(
                    "{id}: generated {first}..={last}, {missing} missing"
                ));
            }
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join("; "))
        }
    })
    .await;
}

/// Ids (hex) of `source`'s records that `node` stored.
async fn source_ids(stored: &Stored, source: &str, node: &str) -> HashSet<String> {
    let Stored::Postgres(db) = stored else {
        return HashSet::new();
    };
    db.client()
        .await
        .query(
            "SELECT encode(id, 'hex') FROM anode_records WHERE source = $1 AND node = $2",
            &[&source, &node],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lose_nothing_with_the_embedded_store() {
    faults_lose_nothing(Store::Embedded, "me").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lose_nothing_with_postgres() {
    faults_lose_nothing(Store::Postgres, "mp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lose_nothing_with_jetstream_required() {
    faults_lose_nothing(Store::JetStreamRequired, "mr").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lose_nothing_with_jetstream_optional() {
    faults_lose_nothing(Store::JetStreamOptional, "mo").await;
}
