//! The gossip cluster, with every node a separate `anode up` process on loopback: membership
//! and assignment converge on 3 and 5 nodes; `kill -9` under load hands sources over and every
//! id the venues generated (the fault's window included) is stored exactly once; a restarted node takes its share back; a plugin installed on
//! one node runs on the others; a graceful join and leave under load (make-before-break) lose
//! nothing and an `after=stored` subscriber sees each record once; a wrong cluster key is refused and garbage is counted; a
//! subscriber on one node receives the records of sources owned by the others; nodes stopped
//! together (SIGTERM a moment apart) take over nothing while they leave and each exits within
//! its drain bound.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::cluster::{
    NodeOptions, NodeProc, converged, get, live_members, metric, post, running_on,
    three_on_postgres,
};
use support::store::{
    Stored, Subscriber, every_generated_id_stored_once, evm_source, until_streams_move_on,
};
use support::{binance_sources, sha256_hex, simulator, until, variant_of};

const SETTLE: Duration = Duration::from_secs(60);

fn ids(specs: &[Value]) -> BTreeSet<String> {
    specs
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn add_all(node: &NodeProc, specs: &[Value]) {
    for spec in specs {
        post(&format!("{}/api/v1/sources", node.api), spec).await;
    }
}

async fn until_converged(what: &str, nodes: &[&NodeProc], sources: &BTreeSet<String>) {
    until(what, SETTLE, || converged(nodes, sources)).await;
}

/// Wait until each of `observers` sees `member` in `state`.
async fn until_seen_as(observers: &[&NodeProc], state: &str, member: &str) {
    let what = format!("{member} to be {state} for every observer");
    until(&what, SETTLE, || async {
        for node in observers {
            let seen = support::cluster::members_in(node, &[state]).await;
            if !seen.contains(member) {
                return Err(format!("{} sees {state}: {seen:?}", node.id));
            }
        }
        Ok(())
    })
    .await;
}

/// Wait until every source reports a committed cursor.
async fn until_committed(node: &NodeProc, sources: &BTreeSet<String>) {
    until("every source to commit a cursor", SETTLE, || async {
        let reports = get(&format!("{}/api/v1/sources", node.api)).await;
        let without: Vec<&str> = reports
            .as_array()
            .map(|all| {
                all.iter()
                    .filter(|r| sources.contains(r["id"].as_str().unwrap_or("")))
                    .filter(|r| r["cursor"].is_null())
                    .filter_map(|r| r["id"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        if without.is_empty() && reports.as_array().is_some_and(|a| a.len() >= sources.len()) {
            Ok(())
        } else {
            Err(format!("no cursor yet: {without:?}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_then_five_nodes_converge_on_members_catalog_and_owners() {
    let root = tempfile::tempdir().unwrap();
    let sim = simulator(2.0).await;
    let first = NodeProc::start(root.path(), "n1", &NodeOptions::default());
    let seeds = NodeOptions {
        seeds: vec![first.gossip.clone()],
        ..NodeOptions::default()
    };
    let second = NodeProc::start(root.path(), "n2", &seeds);
    let third = NodeProc::start(root.path(), "n3", &seeds);
    let specs = binance_sources(&sim, 30, "cv");
    // Sources are added on different nodes: the catalog brings them together.
    add_all(&first, &specs[..10]).await;
    add_all(&second, &specs[10..20]).await;
    add_all(&third, &specs[20..]).await;
    let sources = ids(&specs);
    until_converged("3 nodes to converge", &[&first, &second, &third], &sources).await;
    let owned: HashMap<String, u64> = third.get("/api/v1/cluster").await["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_owned(),
                m["sources_owned"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(owned.values().sum::<u64>(), 30, "{owned:?}");
    assert!(
        owned.values().all(|&n| n > 0),
        "every node owns some: {owned:?}"
    );

    let fourth = NodeProc::start(root.path(), "n4", &seeds);
    let fifth = NodeProc::start(
        root.path(),
        "n5",
        &NodeOptions {
            seeds: vec![third.gossip.clone()],
            ..NodeOptions::default()
        },
    );
    let all = [&first, &second, &third, &fourth, &fifth];
    until_converged("5 nodes to converge", &all, &sources).await;
    // Joiners took sources, and only from the others' shares (no source moved between the
    // first three).
    assert!(!running_on(&fourth).await.is_empty() || !running_on(&fifth).await.is_empty());
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_hands_sources_over_and_a_restarted_node_takes_its_share_back() {
    let root = tempfile::tempdir().unwrap();
    let db = support::TestDb::create(&support::pg_server()).await;
    let sim = simulator(20.0).await;
    let [first, second, mut third] = three_on_postgres(root.path(), "k", &db.url);
    let binance = binance_sources(&sim, 30, "kl");
    let evm = vec![
        evm_source(&sim, "chain-k1", "kill-a"),
        evm_source(&sim, "chain-k2", "kill-b"),
    ];
    let specs: Vec<Value> = binance.iter().chain(&evm).cloned().collect();
    add_all(&first, &specs).await;
    let sources = ids(&specs);
    until_converged("3 nodes to converge", &[&first, &second, &third], &sources).await;
    // Under load: every source has committed a batch (what a source collected before its
    // first commit has no cursor to be resumed from).
    until_committed(&first, &sources).await;
    let victims: Vec<String> = running_on(&third).await.into_keys().collect();
    assert!(!victims.is_empty(), "k3 owns no source to hand over");

    third.kill();
    until_seen_as(&[&first, &second], "down", "k3").await;
    // Its API port refused connections: a survivor declared it down without waiting out the
    // suspicion, and the other heard it from there.
    let confirmed = metric(&first, "anode_gossip_confirmed_down_total").await
        + metric(&second, "anode_gossip_confirmed_down_total").await;
    assert!(confirmed >= 1.0, "no survivor confirmed k3 gone");
    until_converged(
        "survivors to run every source",
        &[&first, &second],
        &sources,
    )
    .await;

    // Every id the venues generated during the whole run — the fault's own window included —
    // is stored exactly once: the Binance gaps through backfill from the stored cursors, the
    // EVM blocks through the cursor.
    until_streams_move_on(&sim, &binance, 20).await;
    sim.pause();
    let stored = Stored::Postgres(db);
    every_generated_id_stored_once(&sim, &stored, &binance, &evm).await;
    sim.resume();

    third.restart();
    until_converged(
        "k3 to rejoin and take its share back",
        &[&first, &second, &third],
        &sources,
    )
    .await;
    let back: BTreeSet<String> = running_on(&third).await.into_keys().collect();
    assert_eq!(
        back,
        victims.into_iter().collect::<BTreeSet<_>>(),
        "k3 runs the same sources again"
    );
    sim.shutdown().await;
    drop((first, second, third));
    if let Stored::Postgres(db) = stored {
        db.drop_db().await;
    }
}

/// A frozen process (SIGSTOP: a stand-in for one too loaded to answer) still accepts
/// connections, so it is not declared down early: it gets the whole suspicion timeout, and
/// once thawed it is a member again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_node_gets_the_whole_suspicion_timeout_and_comes_back() {
    let root = tempfile::tempdir().unwrap();
    let first = NodeProc::start(root.path(), "f1", &NodeOptions::default());
    let options = NodeOptions {
        seeds: vec![first.gossip.clone()],
        ..NodeOptions::default()
    };
    let second = NodeProc::start(root.path(), "f2", &options);
    let third = NodeProc::start(root.path(), "f3", &options);
    until_seen_as(&[&second], "alive", "f1").await;
    until_seen_as(&[&first], "alive", "f2").await;
    until_seen_as(&[&first, &second], "alive", "f3").await;
    third.signal("STOP");
    until_seen_as(&[&first, &second], "down", "f3").await;
    for node in [&first, &second] {
        assert_eq!(
            metric(node, "anode_gossip_confirmed_down_total").await,
            0.0,
            "{} declared a frozen (not dead) node down early",
            node.id
        );
    }
    third.signal("CONT");
    until_seen_as(&[&first, &second], "alive", "f3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_installed_through_one_node_runs_everywhere_and_removed_leaves_everywhere() {
    let root = tempfile::tempdir().unwrap();
    let sim = simulator(5.0).await;
    let first = NodeProc::start(root.path(), "p1", &NodeOptions::default());
    let seeds = NodeOptions {
        seeds: vec![first.gossip.clone()],
        ..NodeOptions::default()
    };
    let second = NodeProc::start(root.path(), "p2", &seeds);
    let third = NodeProc::start(root.path(), "p3", &seeds);
    until("3 members", SETTLE, || async {
        let m = live_members(&first).await;
        if m.len() == 3 {
            Ok(())
        } else {
            Err(format!("{m:?}"))
        }
    })
    .await;

    // The built-in binance-trades, as p2 stored it, made into a new plugin.
    let plugins = second.get("/api/v1/plugins").await;
    let builtin = plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["manifest"]["name"] == "binance-trades")
        .unwrap()["manifest"]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let wasm = std::fs::read(second.dir.join("plugins").join(format!("{builtin}.wasm")))
        .expect("the store keeps <digest>.wasm");
    let variant = variant_of(&wasm, "spread");
    let file = root.path().join("variant.wasm");
    std::fs::write(&file, &variant).unwrap();
    // Installed as an operator would on a live cluster: through one node's API.
    let install = std::process::Command::new(env!("CARGO_BIN_EXE_anode"))
        .args(["plugin", "install", "--url", &second.api])
        .arg(&file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&install.stdout).into_owned();
    assert!(
        install.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&install.stderr)
    );
    let digest = said
        .split_whitespace()
        .find_map(|w| w.strip_prefix("sha256:"))
        .unwrap_or_else(|| panic!("no digest in {said}"))
        .to_owned();
    assert_eq!(digest, sha256_hex(&variant), "{said}");
    assert_ne!(digest, builtin);

    // Sources naming the new plugin by digest, added on another node.
    let specs: Vec<Value> = binance_sources(&sim, 9, "pl")
        .into_iter()
        .map(|mut s| {
            s["plugin"] = json!(digest);
            s
        })
        .collect();
    add_all(&first, &specs).await;
    let sources = ids(&specs);
    until_converged(
        "the plugin's sources to run everywhere",
        &[&first, &second, &third],
        &sources,
    )
    .await;
    for node in [&first, &third] {
        assert!(
            !running_on(node).await.is_empty() || node.id == "p1",
            "{} runs none of them",
            node.id
        );
        let has = node.get("/api/v1/plugins").await;
        assert!(
            has.as_array()
                .unwrap()
                .iter()
                .any(|p| p["manifest"]["digest"] == digest.as_str()),
            "{} did not fetch the plugin",
            node.id
        );
    }
    let owners: BTreeSet<String> = first
        .get("/api/v1/sources")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["owner"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        owners.iter().any(|o| o != "p2"),
        "some source runs away from the installing node"
    );

    // A node started after the install converges too.
    let late = NodeProc::start(root.path(), "p4", &seeds);
    until_converged(
        "a late joiner to fetch the plugin",
        &[&first, &second, &third, &late],
        &sources,
    )
    .await;
    let events = late.get("/api/v1/events").await;
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "plugin" && e["message"].as_str().unwrap().contains("verified")),
        "{events}"
    );

    // Removed from the cluster once no source uses it: every node deletes its copy.
    for id in &sources {
        let removed = reqwest::Client::new()
            .delete(format!("{}/api/v1/sources/{id}", first.api))
            .send()
            .await
            .unwrap();
        assert_eq!(removed.status(), 200);
    }
    until("the removals to reach p3", SETTLE, || async {
        let listed = third.get("/api/v1/sources").await;
        match listed.as_array().unwrap().len() {
            0 => Ok(()),
            n => Err(format!("{n} sources left")),
        }
    })
    .await;
    let remove = std::process::Command::new(env!("CARGO_BIN_EXE_anode"))
        .args(["plugin", "remove", &digest, "--url", &third.api])
        .output()
        .unwrap();
    assert!(
        remove.status.success(),
        "{}",
        String::from_utf8_lossy(&remove.stderr)
    );
    until("every node to delete the plugin", SETTLE, || async {
        let left: Vec<&str> = [&first, &second, &third, &late]
            .iter()
            .filter(|n| {
                n.dir
                    .join("plugins")
                    .join(format!("{digest}.wasm"))
                    .exists()
            })
            .map(|n| n.id.as_str())
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?} still have it"))
        }
    })
    .await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_cluster_key_is_refused_and_garbage_is_counted() {
    let root = tempfile::tempdir().unwrap();
    let keyed = |seeds: Vec<String>, key: &str| NodeOptions {
        seeds,
        key: Some(key.into()),
        ..NodeOptions::default()
    };
    let first = NodeProc::start(root.path(), "w1", &keyed(vec![], "the-right-cluster-key"));
    let second = NodeProc::start(
        root.path(),
        "w2",
        &keyed(vec![first.gossip.clone()], "the-right-cluster-key"),
    );
    until("w1 and w2 to meet", SETTLE, || async {
        let m = live_members(&first).await;
        if m.len() == 2 {
            Ok(())
        } else {
            Err(format!("{m:?}"))
        }
    })
    .await;
    let intruder = NodeProc::start(
        root.path(),
        "w3",
        &keyed(vec![first.gossip.clone()], "the-wrong-cluster-key"),
    );
    until("w1 to refuse w3's packets", SETTLE, || async {
        let refused = metric(
            &first,
            "anode_gossip_packets_rejected_total{reason=\"auth\"}",
        )
        .await;
        if refused >= 3.0 {
            Ok(())
        } else {
            Err(format!("{refused} refused"))
        }
    })
    .await;
    let expected: BTreeSet<String> = ["w1", "w2"].map(String::from).into();
    for node in [&first, &second] {
        let all = support::cluster::members_in(node, &["alive", "suspect", "down"]).await;
        assert_eq!(all, expected, "{} knows of the intruder", node.id);
    }
    assert_eq!(live_members(&intruder).await, ["w3".to_owned()].into());

    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let before = metric(
        &first,
        "anode_gossip_packets_rejected_total{reason=\"garbage\"}",
    )
    .await;
    for i in 0..100u32 {
        let junk: Vec<u8> = (0..(i % 60 + 1)).map(|b| (b * 31 + i) as u8).collect();
        socket.send_to(&junk, &first.gossip).unwrap();
    }
    until("100 garbage packets counted", SETTLE, || async {
        let now = metric(
            &first,
            "anode_gossip_packets_rejected_total{reason=\"garbage\"}",
        )
        .await;
        if now - before >= 100.0 {
            Ok(())
        } else {
            Err(format!("{} counted", now - before))
        }
    })
    .await;
    assert_eq!(
        live_members(&first).await,
        expected,
        "garbage changed the membership"
    );
    assert_eq!(live_members(&second).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_one_node_receives_records_of_sources_owned_by_the_others() {
    let root = tempfile::tempdir().unwrap();
    let sim = simulator(10.0).await;
    let first = NodeProc::start(root.path(), "s1", &NodeOptions::default());
    let seeds = NodeOptions {
        seeds: vec![first.gossip.clone()],
        ..NodeOptions::default()
    };
    let second = NodeProc::start(root.path(), "s2", &seeds);
    let third = NodeProc::start(root.path(), "s3", &seeds);
    let specs = binance_sources(&sim, 12, "fo");
    add_all(&second, &specs).await;
    let sources = ids(&specs);
    until_converged("3 nodes to converge", &[&first, &second, &third], &sources).await;
    // Nothing flows to s1 while it has no subscriber.
    let relayed = |node: &NodeProc| {
        let url = format!("{}/api/v1/status", node.api);
        async move {
            get(&url).await["gossip"]["records_relayed_in"]
                .as_u64()
                .unwrap_or(0)
        }
    };
    assert_eq!(relayed(&first).await, 0);

    let url = format!("{}/ws", first.api.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let mut by_node: HashMap<String, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + SETTLE;
    while by_node.len() < 3 || by_node.values().any(|&n| n < 20) {
        let message = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("records from every node within {SETTLE:?}: {by_node:?}"))
            .unwrap()
            .unwrap();
        let Ok(record) = serde_json::from_str::<Value>(message.to_text().unwrap_or("")) else {
            continue;
        };
        if let Some(node) = record["node"].as_str() {
            *by_node.entry(node.to_owned()).or_default() += 1;
        }
    }
    assert!(relayed(&first).await > 0);

    // A filtered subscriber gets only its source, from whichever node owns it.
    let owned_by_third: Vec<String> = running_on(&third).await.into_keys().collect();
    let pick = owned_by_third.first().expect("s3 owns a source").clone();
    let (mut only, _) = tokio_tungstenite::connect_async(format!("{url}?source={pick}"))
        .await
        .unwrap();
    let mut seen = 0;
    while seen < 10 {
        let message = tokio::time::timeout_at(deadline, only.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Ok(record) = serde_json::from_str::<Value>(message.to_text().unwrap_or("")) else {
            continue;
        };
        if record.get("type").is_some() {
            continue;
        }
        assert_eq!(record["source"], pick.as_str());
        assert_eq!(record["node"], "s3");
        seen += 1;
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_join_and_leave_under_load_lose_nothing_and_deliver_each_record_once() {
    let root = tempfile::tempdir().unwrap();
    let db = support::TestDb::create(&support::pg_server()).await;
    let sim = simulator(20.0).await;
    let with_pg = |seeds: Vec<String>| NodeOptions {
        seeds,
        postgres: Some(db.url.clone()),
        ..NodeOptions::default()
    };
    let first = NodeProc::start(root.path(), "g1", &with_pg(Vec::new()));
    let mut second = NodeProc::start(root.path(), "g2", &with_pg(vec![first.gossip.clone()]));
    // Subscribed before any source runs: it must see every stored record, once.
    let subscriber = Subscriber::connect(&format!(
        "{}/ws?after=stored",
        first.api.replace("http://", "ws://")
    ))
    .await;
    let binance = binance_sources(&sim, 20, "gj");
    add_all(&first, &binance).await;
    let sources = ids(&binance);
    until_converged("2 nodes to converge", &[&first, &second], &sources).await;
    until_committed(&first, &sources).await;

    // A join: sources move to g3 while their old owners still run them.
    let third = NodeProc::start(root.path(), "g3", &with_pg(vec![first.gossip.clone()]));
    until_converged(
        "g3 to join and take its share",
        &[&first, &second, &third],
        &sources,
    )
    .await;
    assert!(!running_on(&third).await.is_empty(), "g3 took no source");
    // A leave: g2 hands its sources over, then exits.
    let moving: Vec<String> = running_on(&second).await.into_keys().collect();
    assert!(!moving.is_empty(), "g2 owns no source to hand over");
    let status = second.terminate();
    assert!(status.success(), "g2 exits cleanly: {status}");
    until_converged("g1 and g3 to run every source", &[&first, &third], &sources).await;
    let events = get(&format!("{}/api/v1/events", first.api)).await;
    assert!(
        events.to_string().contains("handed over"),
        "the join shows as a hand-over: {events}"
    );

    until_streams_move_on(&sim, &binance, 20).await;
    sim.pause();
    let stored = Stored::Postgres(db);
    every_generated_id_stored_once(&sim, &stored, &binance, &[]).await;
    // Each record once, and only records the store has; every record its own node stored
    // (through both hand-overs) reached it. Records another node stored before this node's link
    // to it was open are not replayed (resuming from a position is not built yet).
    let local = stored.record_ids(Some("g1")).await;
    until(
        "the subscriber to see every record g1 stored",
        SETTLE,
        || async {
            let seen = subscriber.ids.lock().unwrap().clone();
            let missing = local.iter().filter(|id| !seen.contains(*id)).count();
            if missing == 0 {
                Ok(())
            } else {
                Err(format!("{missing} of {} missing", local.len()))
            }
        },
    )
    .await;
    let seen = subscriber.ids.lock().unwrap().clone();
    assert_eq!(
        *subscriber.messages.lock().unwrap(),
        seen.len() as u64,
        "a stored subscriber sees each record once across the hand-overs"
    );
    let in_store = stored.record_ids(None).await;
    let strangers: Vec<&String> = seen.iter().filter(|id| !in_store.contains(*id)).collect();
    assert!(strangers.is_empty(), "not in the store: {strangers:?}");
    subscriber.task.abort();
    sim.shutdown().await;
    drop((first, second, third));
    if let Stored::Postgres(db) = stored {
        db.drop_db().await;
    }
}

/// After each node's SIGTERM, before the next one's, when the whole cluster is stopped: three
/// at once, the last a second later. Each sees the others leave (and, before the fix, took
/// their sources over while leaving itself; the last one may take them over before it is asked).
const STOP_GAPS: [Duration; 4] = [
    Duration::ZERO,
    Duration::ZERO,
    Duration::from_secs(1),
    Duration::ZERO,
];
/// How long a node may take to leave and exit: gossip's goodbye (2 s), the hand-over wait
/// (`cluster.handover_timeout_ms`, 5 s here), the sources' drain (`store.drain_timeout_ms`,
/// 10 s by default), and room for a loaded machine.
const EXIT_BOUND: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_stopped_together_take_nothing_over_while_leaving_and_exit_in_time() {
    let root = tempfile::tempdir().unwrap();
    let db = support::TestDb::create(&support::pg_server()).await;
    let sim = simulator(20.0).await;
    let options = |seeds: Vec<String>| NodeOptions {
        seeds,
        postgres: Some(db.url.clone()),
        extra: "handover_timeout_ms = 5000\n".into(),
        ..NodeOptions::default()
    };
    let first = NodeProc::start(root.path(), "l1", &options(Vec::new()));
    let seeds = vec![first.gossip.clone()];
    let mut nodes = vec![first];
    for i in 2..=4 {
        nodes.push(NodeProc::start(
            root.path(),
            &format!("l{i}"),
            &options(seeds.clone()),
        ));
    }
    let binance = binance_sources(&sim, 40, "lv");
    support::add_sources(&nodes[0].api, &binance).await;
    let sources = ids(&binance);
    let all: Vec<&NodeProc> = nodes.iter().collect();
    until_converged("4 nodes to converge", &all, &sources).await;

    // The whole cluster is asked to stop, at about the same time.
    let mut asked = Vec::new();
    for (node, wait) in nodes.iter().zip(STOP_GAPS) {
        node.signal("TERM");
        asked.push(Instant::now());
        tokio::time::sleep(wait).await; // pacing: nothing is awaited
    }
    let mut exits: Vec<Option<(std::process::ExitStatus, Duration)>> = vec![None; nodes.len()];
    let deadline = Instant::now() + EXIT_BOUND * 3;
    while exits.iter().any(Option::is_none) && Instant::now() < deadline {
        for (i, node) in nodes.iter_mut().enumerate() {
            if exits[i].is_none()
                && let Some(status) = node.try_exit()
            {
                exits[i] = Some((status, asked[i].elapsed()));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let figures: Vec<String> = nodes
        .iter()
        .zip(&exits)
        .map(|(node, exit)| match exit {
            Some((_, took)) => format!("{} {:.1} s", node.id, took.as_secs_f64()),
            None => format!("{} still running", node.id),
        })
        .collect();
    println!(
        "stopped together: exited after SIGTERM in {}",
        figures.join(", ")
    );
    for (node, exit) in nodes.iter().zip(&exits) {
        let log = node.dir.join("node.log");
        let Some((status, took)) = exit else {
            panic!("{} did not exit; see {}", node.id, log.display());
        };
        assert!(status.success(), "{} exited with {status}", node.id);
        assert!(
            *took <= EXIT_BOUND,
            "{} took {took:?} to exit, more than {EXIT_BOUND:?}; see {}",
            node.id,
            log.display()
        );
        // Once leaving, a node starts no source: it only hands over and stops what it runs
        // (a start already under way when the signal came ends before it says so).
        let text = std::fs::read_to_string(&log).unwrap();
        let leaving = text
            .find("leaving the cluster:")
            .unwrap_or_else(|| panic!("{} never said it was leaving", node.id));
        let started: Vec<&str> = text[leaving..]
            .lines()
            .filter(|l| l.contains("now running"))
            .collect();
        assert!(
            started.is_empty(),
            "{} started sources while leaving: {started:?}",
            node.id
        );
    }
    sim.shutdown().await;
    drop(nodes);
    db.drop_db().await;
}

/// The ids of `anode bench`'s sources in the cluster of `node`.
async fn bench_sources(node: &NodeProc) -> Vec<String> {
    node.get("/api/v1/sources")
        .await
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["id"].as_str().map(str::to_owned))
        .filter(|id| id.starts_with("bench-"))
        .collect()
}

/// `anode bench --url` drives a running cluster through one node, with the cluster's token:
/// every id its simulator sent is seen stored (the stored-record subscriber on one node hears
/// the other node's too), CPU and memory are the members' together, and its sources are gone
/// afterwards. A cluster whose egress policy refuses the simulator gets a clear error at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anode_bench_drives_a_running_cluster_and_leaves_no_source_behind() {
    const TOKEN: &str = "bench-token";
    let root = tempfile::tempdir().unwrap();
    let with_token = |options: NodeOptions| NodeOptions {
        api_section: Some(format!("bind = \"127.0.0.1:0\"\ntoken = {TOKEN:?}")),
        read_token: Some(TOKEN.into()),
        write_token: Some(TOKEN.into()),
        ..options
    };
    let first = NodeProc::start(root.path(), "bu1", &with_token(NodeOptions::default()));
    let second = NodeProc::start(
        root.path(),
        "bu2",
        &with_token(NodeOptions {
            seeds: vec![first.gossip.clone()],
            ..NodeOptions::default()
        }),
    );
    until("2 members", SETTLE, || async {
        match live_members(&first).await.len() {
            2 => Ok(()),
            n => Err(format!("{n} members")),
        }
    })
    .await;
    let bench = |api: &str, token: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_anode"));
        command.args([
            "bench",
            "--url",
            api,
            "--sources",
            "8",
            "--rate",
            "30",
            "--duration",
            "2",
            "--subscribers",
            "1",
        ]);
        if let Some(token) = token {
            command.args(["--token", token]);
        }
        command.env_remove("ANODE_TOKEN");
        async move {
            let out = tokio::task::spawn_blocking(move || command.output().unwrap())
                .await
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            (out.status.success(), text)
        }
    };
    let (ok, text) = bench(&second.api, Some(TOKEN)).await;
    assert!(ok, "{text}");
    let out = support::BenchOutput(text);
    assert!(out.line("anode bench").contains("(2 nodes"), "{}", out.0);
    assert!(out.figure("stored") > 0.0, "{}", out.0);
    assert!(out.figure("delivered") > 0.0, "{}", out.0);
    assert!(out.line("CPU").contains("(2 nodes)"), "{}", out.0);
    assert!(out.figure("memory") > 0.0, "{}", out.0);
    out.sent_none_lost();
    assert_eq!(bench_sources(&first).await, Vec::<String>::new());

    // No token: refused, and it says so.
    let (ok, text) = bench(&first.api, None).await;
    assert!(!ok && text.contains("401"), "{text}");

    // A node whose sources may not reach loopback.
    let walled = NodeProc::start(
        root.path(),
        "bu3",
        &NodeOptions {
            allow: Some(vec!["10.0.0.0/8".into()]),
            ..NodeOptions::default()
        },
    );
    let (ok, text) = bench(&walled.api, None).await;
    assert!(!ok, "{text}");
    assert!(
        text.contains("egress policy") && text.contains("[sources] allow"),
        "{text}"
    );
    assert_eq!(bench_sources(&walled).await, Vec::<String>::new());
}

/// The next message of a `/ws` client, as JSON, within [`SETTLE`].
async fn next_json<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let message = tokio::time::timeout(SETTLE, ws.next())
        .await
        .expect("a message within the deadline")
        .unwrap()
        .unwrap();
    serde_json::from_str(message.to_text().unwrap()).unwrap()
}

/// A subscriber is told it is subscribed only once every other live node has its filter: from
/// its `subscribed` on, nothing of their sources is missed. Here the second node's API (which
/// the first node's link to it uses) is behind a proxy that holds its answers: no
/// `subscribed` while they are held, and once they go on, the acknowledgement and then the
/// second node's stored records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_is_acknowledged_once_the_other_nodes_have_its_filter() {
    let root = tempfile::tempdir().unwrap();
    let sim = simulator(20.0).await;
    let first = NodeProc::start(root.path(), "h1", &NodeOptions::default());
    // The proxy listens first (h2 advertises it); it forwards to h2's API once h2 has bound
    // a port of its own choosing (a port picked beforehand could be taken meanwhile).
    let proxy = support::HoldingProxy::listen().await;
    let second = NodeProc::start(
        root.path(),
        "h2",
        &NodeOptions {
            seeds: vec![first.gossip.clone()],
            api_section: Some(format!(
                "bind = \"127.0.0.1:0\"\nadvertise = \"{}\"",
                proxy.addr
            )),
            ..NodeOptions::default()
        },
    );
    proxy.forward_to(second.api.trim_start_matches("http://").parse().unwrap());
    let specs = binance_sources(&sim, 6, "ack");
    add_all(&first, &specs).await;
    until_converged("2 nodes to converge", &[&first, &second], &ids(&specs)).await;
    let on_second: Vec<String> = running_on(&second).await.into_keys().collect();
    let pick = on_second.first().expect("h2 runs a source").clone();

    proxy.hold();
    let url = format!(
        "{}/ws?source={pick}&after=stored",
        first.api.replace("http://", "ws://")
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), ws.next())
            .await
            .is_err(),
        "no acknowledgement while h2 cannot answer h1's link"
    );
    proxy.release();
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "subscribed", "{hello}");
    let record = next_json(&mut ws).await;
    assert_eq!(record["source"], pick.as_str(), "{record}");
    assert_eq!(record["node"], "h2", "{record}");
    sim.shutdown().await;
}
