//! Cross-node subscribers through a cut link. Two `anode up` processes; the second reaches the
//! first's API only through a TCP proxy the test cuts (every connection closed, new ones
//! refused), so the link carrying the first node's records to the second node's subscriber
//! breaks while both nodes stay members (gossip is UDP and passes).
//!
//! - A short cut: the link reopens from the position it reached and the peer sends what
//!   followed from its outbox: an `after=stored` subscriber on the second node receives every
//!   record both nodes stored, each once, and no `gap` notice.
//! - A cut longer than `fanout.relay_buffer_ms`: the subscriber gets a `gap` notice naming the
//!   first node, its sources and the position the link had reached, and records flow again
//!   once the proxy passes.
//!
//! Once on the embedded store (each node its own) and once on PostgreSQL; every wait polls
//! with a deadline.

mod support;

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use serde_json::Value;
use support::cluster::{NodeProc, metric, post, running_on};
use support::proxy::two_nodes_behind_proxy;
use support::store::{Stored, Subscriber, until_streams_move_on};
use support::{binance_sources, simulator, until, until_metric_above};

const SETTLE: Duration = Duration::from_secs(60);
/// The outbox span of both nodes: a link down longer than this cannot resume.
const RELAY_BUFFER_MS: u64 = 6_000;

async fn a_cut_link_resumes_or_says_what_is_missing(postgres: Option<&str>, prefix: &str) {
    let root = tempfile::tempdir().unwrap();
    let sim = simulator(20.0).await;
    let extra = format!("[fanout]\nrelay_buffer_ms = {RELAY_BUFFER_MS}\n");
    let (first, proxy, second) =
        two_nodes_behind_proxy(root.path(), prefix, postgres, &extra).await;
    // An after=stored subscriber on the second node, from before the sources start: the
    // first node's records reach it over the link through the proxy.
    let subscriber = Subscriber::connect(&format!(
        "{}/ws?after=stored",
        second.api.replace("http://", "ws://")
    ))
    .await;
    let specs = binance_sources(&sim, 8, prefix);
    for spec in &specs {
        post(&format!("{}/api/v1/sources", second.api), spec).await;
    }
    let on_first: BTreeSet<String> = until("the sources live on both nodes", SETTLE, || async {
        let (a, b) = (running_on(&first).await, running_on(&second).await);
        let live = |m: &std::collections::BTreeMap<String, Value>| -> BTreeSet<String> {
            m.iter()
                .filter(|(_, r)| r["state"] == "live")
                .map(|(id, _)| id.clone())
                .collect()
        };
        let (a, b) = (live(&a), live(&b));
        if a.len() + b.len() == specs.len() && !a.is_empty() {
            Ok(a)
        } else {
            Err(format!("live on the first {a:?}, on the second {b:?}"))
        }
    })
    .await;
    let relayed = "anode_records_relayed_in_total";
    until_metric_above(&second, relayed, 0.0).await;

    // A short cut: the link reopens from where it was, missing nothing.
    let resumed = "anode_relay_links_resumed_total";
    proxy.cut();
    until_streams_move_on(&sim, &specs, 10).await;
    proxy.mend();
    until_metric_above(&second, resumed, 0.0).await;
    assert!(
        metric(&first, "anode_relay_records_resent_total").await > 0.0,
        "the first node sent what the link missed from its outbox"
    );
    until_streams_move_on(&sim, &specs, 10).await;
    sim.pause();
    // What is still on its way gets stored and delivered: read both again until they agree.
    let stored = until(
        "the subscriber to have every stored record",
        SETTLE,
        || async {
            let stored = stored_ids(postgres, &[&first, &second]).await;
            let got = subscriber.ids.lock().unwrap().clone();
            let (missing, extra) = (
                stored.difference(&got).count(),
                got.difference(&stored).count(),
            );
            if missing == 0 && extra == 0 {
                Ok(stored)
            } else {
                Err(format!(
                    "{missing} stored not received, {extra} received not stored"
                ))
            }
        },
    )
    .await;
    let notices = subscriber.notices.lock().unwrap().clone();
    assert!(
        notices.iter().all(|n| n["type"] != "gap"),
        "no gap notice for a link that resumed: {notices:?}"
    );
    assert_eq!(
        *subscriber.messages.lock().unwrap() as usize,
        stored.len(),
        "each stored record delivered once"
    );

    // A cut longer than the outbox keeps records: a gap notice with the position reached.
    sim.resume();
    let before = metric(&second, relayed).await;
    proxy.cut();
    let gap = until("a gap notice naming the first node", SETTLE, || async {
        let notices = subscriber.notices.lock().unwrap().clone();
        notices
            .into_iter()
            .find(|n| n["type"] == "gap")
            .ok_or_else(|| "none yet".to_owned())
    })
    .await;
    proxy.mend();
    assert_eq!(gap["node"], first.id.as_str(), "{gap}");
    let named: BTreeSet<String> = gap["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    assert!(
        !named.is_empty() && named.is_subset(&on_first),
        "{gap} names sources of {on_first:?}"
    );
    assert!(
        gap["position"]["epoch"].as_u64().is_some_and(|e| e > 0)
            && gap["position"]["after"].as_u64().is_some_and(|a| a > 0),
        "{gap}"
    );
    assert!(
        gap["reason"]
            .as_str()
            .unwrap()
            .contains("fanout.relay_buffer_ms"),
        "{gap}"
    );
    // The link opens afresh and records flow again.
    until_metric_above(&second, relayed, before).await;
    subscriber.task.abort();
    sim.shutdown().await;
    drop((first, second, proxy));
}

/// Record ids stored: the nodes' embedded stores together, or the one database.
async fn stored_ids(postgres: Option<&str>, nodes: &[&NodeProc]) -> HashSet<String> {
    match postgres {
        Some(url) => {
            let client = support::connect(url).await.unwrap();
            client
                .query("SELECT encode(id, 'hex') FROM anode_records", &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect()
        }
        None => {
            let mut all = HashSet::new();
            for node in nodes {
                let store = Stored::Sqlite(node.dir.join("records.sqlite"));
                all.extend(store.record_ids(None).await);
            }
            all
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_resumes_on_the_embedded_store() {
    a_cut_link_resumes_or_says_what_is_missing(None, "le").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_resumes_on_postgres() {
    let db = support::TestDb::create(&support::pg_server()).await;
    a_cut_link_resumes_or_says_what_is_missing(Some(&db.url), "lp").await;
    db.drop_db().await;
}
