//! Sources collected on two nodes at once (`"replicas": 2`): a feed with no history API
//! (Binance with `backfill: false`) survives `kill -9` of one of its owners with every id the
//! simulator generated stored once — the fault's own window included — because the other
//! owner was collecting all along. An `after=stored` subscriber on another node receives
//! every stored record, and is told of the `gap` the dead node's link left. Three `anode up` processes on one PostgreSQL; every wait polls with a
//! deadline.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};
use support::cluster::{NodeProc, post, running_on, three_on_postgres};
use support::store::{Stored, every_generated_id_stored_once, until_streams_move_on};
use support::{binance_sources, simulator, until};

const SETTLE: Duration = Duration::from_secs(60);

/// Wait until each source runs (live) on exactly the owners the cluster lists for it, and
/// each has two; returns the owners.
async fn until_replicated(
    nodes: &[&NodeProc],
    sources: &BTreeSet<String>,
) -> BTreeMap<String, BTreeSet<String>> {
    until("every source live on its two owners", SETTLE, || async {
        let listed = nodes[0].get("/api/v1/sources").await;
        let mut owners: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for s in listed.as_array().into_iter().flatten() {
            let id = s["id"].as_str().unwrap().to_owned();
            let of: BTreeSet<String> = s["owners"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|o| o.as_str().map(str::to_owned))
                .collect();
            if s["owners"][0] != s["owner"] {
                return Err(format!(
                    "{id}: owner {} is not the first of {}",
                    s["owner"], s["owners"]
                ));
            }
            owners.insert(id, of);
        }
        let mut running: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut states: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for node in nodes {
            for (id, report) in running_on(node).await {
                states.entry(id.clone()).or_default().push(format!(
                    "{}: {} {}",
                    node.id, report["state"], report["last_error"]
                ));
                if report["state"] == "live" {
                    running.entry(id).or_default().insert(node.id.clone());
                }
            }
        }
        for id in sources {
            let want = owners.get(id).cloned().unwrap_or_default();
            let have = running.get(id).cloned().unwrap_or_default();
            if want.len() != 2 || want != have {
                return Err(format!(
                    "{id}: owners {want:?}, live on {have:?} ({:?})",
                    states.get(id)
                ));
            }
        }
        Ok(owners)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_lose_nothing_of_a_feed_without_history_through_kill_nine() {
    let root = tempfile::tempdir().unwrap();
    let db = support::TestDb::create(&support::pg_server()).await;
    let sim = simulator(20.0).await;
    let [first, second, mut third] = three_on_postgres(root.path(), "r", &db.url);
    let mut specs = binance_sources(&sim, 12, "rp");
    for spec in &mut specs {
        // No history: what a dead owner missed can only come from the other replica.
        spec["config"]["backfill"] = json!(false);
        spec["replicas"] = json!(2);
    }
    // An after=stored subscriber on r1, from before the sources start: records of the
    // sources r2 and r3 collect reach it over their links.
    let subscriber = support::store::Subscriber::connect(&format!(
        "{}/ws?after=stored",
        first.api.replace("http://", "ws://")
    ))
    .await;
    let (socket, _) =
        tokio_tungstenite::connect_async(format!("{}/ws", first.api.replace("http://", "ws://")))
            .await
            .unwrap();
    let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let reader = tokio::spawn({
        let notices = notices.clone();
        let mut socket = socket;
        async move {
            use futures_util::StreamExt;
            while let Some(Ok(message)) = socket.next().await {
                let Ok(text) = message.to_text() else {
                    continue;
                };
                let value: Value = serde_json::from_str(text).unwrap_or_default();
                if value["type"] == "gap" {
                    notices.lock().unwrap().push(value);
                }
            }
        }
    });
    for spec in &specs {
        post(&format!("{}/api/v1/sources", first.api), spec).await;
    }
    let sources: BTreeSet<String> = specs
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    let owners = until_replicated(&[&first, &second, &third], &sources).await;
    let victims: Vec<&String> = owners
        .iter()
        .filter(|(_, of)| of.contains("r3"))
        .map(|(id, _)| id)
        .collect();
    assert!(!victims.is_empty(), "r3 collects no source");

    until(
        "records from r3 to reach r1's subscriber",
        SETTLE,
        || async {
            let relayed = support::metrics_text(&first.api).await;
            let line = relayed
                .lines()
                .find(|l| l.starts_with("anode_records_relayed_in_total"))
                .unwrap_or("")
                .to_owned();
            if line
                .split_whitespace()
                .last()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
                > 0.0
            {
                Ok(())
            } else {
                Err(line)
            }
        },
    )
    .await;

    third.kill();
    let gap = until("a gap notice naming r3", SETTLE, || async {
        let seen = notices.lock().unwrap().clone();
        seen.into_iter()
            .find(|n| n["node"] == "r3")
            .ok_or_else(|| "none yet".to_owned())
    })
    .await;
    let named: BTreeSet<String> = gap["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    assert!(!named.is_empty() && named.is_subset(&sources), "{gap}");
    assert!(
        gap["reason"].as_str().unwrap().contains("link failed"),
        "{gap}"
    );
    reader.abort();
    // The survivors take r3's place: every source is on two live nodes again.
    let after = until_replicated(&[&first, &second], &sources).await;
    assert!(after.values().all(|of| !of.contains("r3")));

    until_streams_move_on(&sim, &specs, 20).await;
    sim.pause();
    let stored = Stored::Postgres(db);
    // Every id generated while r3 died and after is stored once: no backfill did it.
    every_generated_id_stored_once(&sim, &stored, &specs, &[]).await;
    // The subscriber on r1 received every stored record, r3's window included: the other
    // replica of each of r3's sources stored and relayed the same ids.
    let stored_ids = stored.record_ids(None).await;
    subscriber.until_received_exactly(&stored_ids, SETTLE).await;
    subscriber.task.abort();
    let listed = first.get("/api/v1/sources").await;
    let shown: Vec<&Value> = listed.as_array().unwrap().iter().collect();
    assert!(
        shown
            .iter()
            .all(|s| s["owners"].as_array().is_some_and(|o| o.len() == 2)),
        "the API lists both owners: {listed}"
    );
    sim.shutdown().await;
    drop((first, second, third));
    if let Stored::Postgres(db) = stored {
        db.drop_db().await;
    }
}
