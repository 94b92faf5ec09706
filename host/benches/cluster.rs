//! Cluster benchmark, three parts:
//!
//! 1. **Balance and movement** of rendezvous assignment: 10,000 sources over 3, 10 and 100
//!    nodes — the most-loaded node's share against the mean, and how many sources move when
//!    a node joins or leaves, against the ideal (1/N of them).
//! 2. **Catalog propagation**: in-process memberships over real UDP on loopback, 3 to 100
//!    nodes; the time from a catalog write on one node until every node holds it.
//! 3. **Fail-over**: three `anode up` processes with the default gossip timings and one
//!    PostgreSQL; the time from `kill -9` of one of them until all of its sources run (live) on
//!    the others, and for the streams that moved, the ids the simulator generated against the
//!    ids stored — with the connector's backfill on, then off — and the false downs: nodes not
//!    killed that were taken for down under that load.
//!
//! 4. **The relay outbox**: what numbering and keeping records for peer links to resume from
//!    costs the fan-out per record, one link attached, against the same hub with no outbox
//!    (`fanout.relay_buffer_bytes = 0`), measured in one run, alternating.
//!
//! `cargo bench -p anode --bench cluster`; `ANODE_BENCH_QUICK=1` runs fewer rounds;
//! `ANODE_BENCH_ONLY=failover` (or `balance`, `catalog`, `outbox`, comma-separated) runs only
//! those parts.

#[path = "../tests/support/cluster.rs"]
#[allow(dead_code)]
mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anode::cluster::{Catalog, Cluster, ClusterSettings, assign};
use serde_json::json;
use support::{NodeOptions, NodeProc, converged, own_generation, post, running_on};
use tokio_util::sync::CancellationToken;

fn quick() -> bool {
    std::env::var_os("ANODE_BENCH_QUICK").is_some()
}

fn nodes(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("node-{i:03}")).collect()
}

fn owners(sources: &[String], nodes: &[String]) -> Vec<String> {
    sources
        .iter()
        .map(|s| {
            assign::owner(s, nodes.iter().map(String::as_str))
                .unwrap()
                .to_owned()
        })
        .collect()
}

fn balance_and_movement() {
    println!("== rendezvous assignment: 10,000 sources");
    println!(
        "{:>6} {:>10} {:>10} {:>12} {:>12} {:>12}",
        "nodes", "max/mean", "min/mean", "moved join", "moved leave", "ideal"
    );
    let sources: Vec<String> = (0..10_000).map(|i| format!("source-{i}")).collect();
    for n in [3usize, 10, 100] {
        let members = nodes(n);
        let base = owners(&sources, &members);
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for o in &base {
            *counts.entry(o).or_default() += 1;
        }
        let mean = sources.len() as f64 / n as f64;
        let max = *counts.values().max().unwrap() as f64;
        let min = members
            .iter()
            .map(|m| counts.get(m.as_str()).copied().unwrap_or(0))
            .min()
            .unwrap() as f64;
        let mut joined = members.clone();
        joined.push("node-new".into());
        let after_join = owners(&sources, &joined);
        let moved_join = base.iter().zip(&after_join).filter(|(a, b)| a != b).count();
        let left: Vec<String> = members[1..].to_vec();
        let after_leave = owners(&sources, &left);
        let moved_leave = base
            .iter()
            .zip(&after_leave)
            .filter(|(a, b)| a != b)
            .count();
        println!(
            "{n:>6} {:>10.3} {:>10.3} {:>11.2}% {:>11.2}% {:>11.2}%",
            max / mean,
            min / mean,
            100.0 * moved_join as f64 / sources.len() as f64,
            100.0 * moved_leave as f64 / sources.len() as f64,
            100.0 / (n as f64 + 1.0),
        );
    }
}

async fn catalog_propagation() {
    println!("== catalog propagation (in-process nodes, real UDP on loopback, default timings)");
    println!(
        "{:>6} {:>12} {:>12} {:>12} {:>14}",
        "nodes", "join (s)", "median (ms)", "worst (ms)", "not converged"
    );
    let sizes: &[usize] = if quick() {
        &[3, 10, 30]
    } else {
        &[3, 10, 30, 100]
    };
    let rounds = if quick() { 3 } else { 7 };
    for &n in sizes {
        let shutdown = CancellationToken::new();
        let mut clusters = Vec::new();
        let started = Instant::now();
        let mut seed = None;
        // Each member's API address is a port that listens, as a live node's does: a suspect
        // whose port refuses connections is declared down at once (see `cluster/gossip.rs`).
        let mut apis = Vec::new();
        for i in 0..n {
            let api = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let api_addr = api.local_addr().unwrap();
            apis.push(api);
            let settings = ClusterSettings {
                bind: "127.0.0.1:0".parse().unwrap(),
                seeds: seed.iter().cloned().collect(),
                key: vec!["bench-cluster-key-0123456789".into()],
                ..ClusterSettings::default()
            };
            let catalog = Arc::new(Catalog::open(&format!("n{i}"), None).unwrap());
            let (events, _) = tokio::sync::mpsc::unbounded_channel();
            let (cluster, _task) = Cluster::start(
                settings,
                &format!("n{i}"),
                api_addr,
                catalog,
                events,
                shutdown.child_token(),
            )
            .await
            .unwrap();
            seed.get_or_insert_with(|| cluster.gossip_addr.to_string());
            clusters.push(cluster);
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while clusters.iter().any(|c| c.view().live_ids().len() < n) {
            assert!(Instant::now() < deadline, "{n} nodes did not meet in 120 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let joined = started.elapsed();
        let http = reqwest::Client::new();
        let mut times = Vec::new();
        let mut failed = 0;
        for round in 0..rounds {
            let writer = &clusters[round % n];
            let id = format!("bench-{round}");
            let key = format!("source/{id}");
            let begun = Instant::now();
            // A value peers take: a source spec naming the key's id (see `cluster/checks.rs`).
            let entry = writer
                .catalog
                .put(&key, Some(json!({"id": id, "plugin": "p"})));
            writer.spread(entry, &http).await;
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut missing = n;
            while Instant::now() < deadline {
                missing = clusters
                    .iter()
                    .filter(|c| c.catalog.get(&key).is_none())
                    .count();
                if missing == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            if missing > 0 {
                // Gossip alone (this harness runs no HTTP anti-entropy) left some behind.
                println!(
                    "{n:>6}   round {round}: {missing} of {n} nodes lacked the change after 20 s"
                );
                failed += 1;
                continue;
            }
            times.push(begun.elapsed());
        }
        // A round that did not converge is a failure in the figures, not left out of them.
        times.sort();
        let ms = |t: Option<&Duration>| t.map_or(f64::NAN, |t| t.as_secs_f64() * 1e3);
        println!(
            "{n:>6} {:>12.1} {:>12.1} {:>12.1} {:>8} of {rounds}",
            joined.as_secs_f64(),
            ms(times.get(times.len() / 2)),
            ms(times.last()),
            failed
        );
        shutdown.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn fail_over() {
    for backfill in [true, false] {
        fail_over_with(backfill).await;
    }
}

/// `kill -9` rounds on 3 processes sharing one PostgreSQL; then, per stream, the ids the
/// simulator generated during the run against the ids stored.
async fn fail_over_with(backfill: bool) {
    println!(
        "== fail-over: kill -9 of one of 3 `anode up` processes, default gossip timings, 30 Binance \
         sources at 20 trades/s, one PostgreSQL, backfill {}",
        if backfill { "on" } else { "off" }
    );
    let rounds = if quick() { 3 } else { 7 };
    let root = tempfile::tempdir().unwrap();
    let sim = anode_feedsim::start(anode_feedsim::SimConfig {
        rate_per_stream: 20.0,
        ..anode_feedsim::SimConfig::default()
    })
    .await
    .unwrap();
    let server = std::env::var("ANODE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let db = format!("anode_bench_failover_{}", std::process::id());
    let admin = pg(&format!("{server}/postgres")).await;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db}"))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    let url = format!("{server}/{db}");
    let defaults = NodeOptions {
        default_timing: true,
        postgres: Some(url.clone()),
        ..NodeOptions::default()
    };
    let first = NodeProc::start(root.path(), "f1", &defaults);
    let options = NodeOptions {
        seeds: vec![first.gossip.clone()],
        ..defaults.clone()
    };
    let mut others = [
        NodeProc::start(root.path(), "f2", &options),
        NodeProc::start(root.path(), "f3", &options),
    ];
    let mut ids = BTreeSet::new();
    for i in 0..30 {
        let id = format!("fo-{i}");
        post(
            &format!("{}/api/v1/sources", first.api),
            &json!({"id": id, "plugin": "binance-trades",
                "config": {"base_url": format!("{}/binance", sim.ws_url()), "symbols": [format!("fo{i}usdt")],
                    "mode": "raw", "backfill": backfill}}),
        )
        .await;
        ids.insert(id);
    }
    let mut times = Vec::new();
    let mut false_downs = 0;
    let mut moved_sources = BTreeSet::new();
    for round in 0..rounds {
        let victim_index = round % 2;
        let settle = Instant::now() + Duration::from_secs(120);
        loop {
            let all = [&first, &others[0], &others[1]];
            match converged(&all, &ids).await {
                Ok(()) => break,
                Err(e) => {
                    assert!(Instant::now() < settle, "cluster did not settle: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        // Every source has committed a batch where it runs now: what a source collects before
        // its first commit has no cursor to be resumed from (a known limit of the contract).
        let committed = Instant::now() + Duration::from_secs(120);
        loop {
            let reports = support::get(&format!("{}/api/v1/sources", first.api)).await;
            let uncommitted = reports.as_array().map_or(ids.len(), |all| {
                all.iter().filter(|r| r["cursor"].is_null()).count()
            });
            if uncommitted == 0 {
                break;
            }
            assert!(
                Instant::now() < committed,
                "{uncommitted} sources never committed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let victims: BTreeSet<String> = running_on(&others[victim_index])
            .await
            .into_keys()
            .collect();
        let generations_before = [
            own_generation(&first).await,
            own_generation(&others[1 - victim_index]).await,
        ];
        let killed_at = Instant::now();
        others[victim_index].kill();
        let survivor = &others[1 - victim_index];
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let mut running = running_on(&first).await;
            running.extend(running_on(survivor).await);
            let moved = victims
                .iter()
                .filter(|v| running.get(*v).is_some_and(|r| r["state"] == "live"))
                .count();
            if moved == victims.len() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sources were not taken over in 120 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = killed_at.elapsed();
        println!(
            "  round {round}: {} sources of the killed node live elsewhere after {:.2} s",
            victims.len(),
            took.as_secs_f64()
        );
        times.push(took);
        // A node that was not killed but taken for down rejoins under a new generation.
        let generations_after = [own_generation(&first).await, own_generation(survivor).await];
        false_downs += generations_before
            .iter()
            .zip(&generations_after)
            .filter(|(before, after)| before != after)
            .count();
        moved_sources.extend(victims);
        others[victim_index].restart();
    }
    times.sort();
    println!(
        "  kill -9 → all its sources live elsewhere: median {:.2} s, worst {:.2} s over {} runs",
        times[times.len() / 2].as_secs_f64(),
        times[times.len() - 1].as_secs_f64(),
        times.len()
    );
    println!(
        "  false downs under this load: {false_downs} (the two nodes not killed in a round, \
         taken for down and rejoining under a new generation), over {} rounds",
        times.len()
    );
    // Let the restarted node take its share back, freeze the venues, and wait until the
    // store stops moving.
    let settle = Instant::now() + Duration::from_secs(120);
    while let Err(e) = converged(&[&first, &others[0], &others[1]], &ids).await {
        assert!(Instant::now() < settle, "cluster did not settle: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every stream moves on past the last hand-over, so that gaps are seen and fetched (a
    // connector learns of a gap from the next live trade), then the venues freeze.
    let heads: Vec<(String, u64)> = (0..30)
        .map(|i| {
            let name = format!("binance/fo{i}usdt@trade");
            let head = sim.report().streams[&name].generated.map_or(0, |g| g.1);
            (name, head)
        })
        .collect();
    let settle = Instant::now() + Duration::from_secs(120);
    while heads.iter().any(|(name, head)| {
        sim.report().streams[name]
            .ranges
            .last()
            .is_none_or(|r| r.1 < head + 40)
    }) {
        assert!(Instant::now() < settle, "the streams did not move on");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sim.pause();
    let client = pg(&url).await;
    let count = || async {
        client
            .query_one("SELECT count(*) FROM anode_records", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let mut last = -1;
    for _ in 0..30 {
        let now = count().await;
        if now == last {
            break;
        }
        last = now;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let report = sim.report();
    let (mut generated, mut stored, mut missing) = (0u64, 0u64, 0u64);
    for id in &moved_sources {
        let i: usize = id.trim_start_matches("fo-").parse().unwrap();
        let stream = &report.streams[&format!("binance/fo{i}usdt@trade")];
        let (first_id, last_id) = stream.generated.unwrap();
        let have: BTreeSet<u64> = client
            .query(
                "SELECT upstream_id FROM anode_records WHERE source = $1",
                &[id],
            )
            .await
            .unwrap()
            .iter()
            .filter_map(|r| r.get::<_, Option<String>>(0))
            .filter_map(|u| u.rsplit(':').next().and_then(|n| n.parse().ok()))
            .collect();
        generated += last_id - first_id + 1;
        stored += have.len() as u64;
        missing += (first_id..=last_id).filter(|n| !have.contains(n)).count() as u64;
    }
    println!(
        "  moved streams: {} — ids generated {generated}, stored {stored}, missing {missing} ({:.3}%)",
        moved_sources.len(),
        100.0 * missing as f64 / generated.max(1) as f64
    );
    drop((first, others));
    sim.shutdown().await;
    let _ = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .await;
}

async fn pg(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url}: {e} (set ANODE_TEST_PG)"));
    tokio::spawn(connection);
    client
}

/// The fan-out's cost per record with one peer link attached that reads everything, with the
/// outbox on (default bounds) and off, alternating rounds; the medians and their ratio.
fn outbox_cost() {
    use anode::fanout::{Delivery, FanoutSettings, Filter, Hub, Stage};
    use anode::record::{Payload, Record, RecordId};
    println!("== relay outbox: fan-out cost per record, one peer link reading everything");
    let batches = if quick() { 200 } else { 2_000 };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let payload = br#"{"exchange":"binance","symbol":"BTC.USDT","price":"43000.10","size":"0.01","taker_side":"buy","trade_id":42}"#;
    let mut next = 0u64;
    let mut batch = |n: usize| -> Vec<Record> {
        (0..n)
            .map(|_| {
                next += 1;
                let upstream = next.to_string();
                Record {
                    id: RecordId::derive("bench", "trades", Some(&upstream), payload),
                    source: "bench".into(),
                    stream: "trades".into(),
                    key: Some("BTC.USDT".into()),
                    upstream_id: Some(upstream),
                    event_time_us: Some(1_700_000_000_000_000),
                    ingest_time_us: 1_700_000_000_000_100,
                    node: "bench-node".into(),
                    payload: Payload::parse(payload.to_vec()).unwrap(),
                }
            })
            .collect()
    };
    let mut samples: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let rounds = if quick() { 3 } else { 7 };
    for _ in 0..rounds {
        for (i, bytes) in [0usize, FanoutSettings::default().relay_buffer_bytes]
            .into_iter()
            .enumerate()
        {
            let hub = Hub::new(FanoutSettings {
                relay_buffer_bytes: bytes,
                ..FanoutSettings::default()
            });
            let every = |after| Filter {
                after,
                ..Filter::default()
            };
            let mut link = hub
                .subscribe_peer(vec![every(Stage::Decoded), every(Stage::Stored)])
                .unwrap();
            let inputs: Vec<Vec<Record>> = (0..batches).map(|_| batch(100)).collect();
            let started = Instant::now();
            runtime.block_on(async {
                for records in &inputs {
                    hub.publish(records, Stage::Decoded);
                    hub.publish(records, Stage::Stored);
                    for _ in 0..records.len() * 2 {
                        match link.next().await {
                            Delivery::Record { .. } => {}
                            Delivery::Disconnect(why) => panic!("{why}"),
                        }
                    }
                }
            });
            let per_record = started.elapsed().as_nanos() as f64 / (batches * 200) as f64;
            samples[i].push(per_record);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (off, on) = (median(&mut samples[0]), median(&mut samples[1]));
    println!(
        "{:>22} {:>10.0} ns/record (median of {rounds})\n{:>22} {:>10.0} ns/record\n{:>22} {:>10.2}",
        "outbox off",
        off,
        "outbox on",
        on,
        "on/off",
        on / off
    );
}

/// Whether part `name` runs: all of them, or those named in `ANODE_BENCH_ONLY`
/// (comma-separated: `balance`, `catalog`, `failover`, `outbox`).
fn part(name: &str) -> bool {
    std::env::var("ANODE_BENCH_ONLY").map_or(true, |only| only.split(',').any(|p| p.trim() == name))
}

fn main() {
    if part("balance") {
        balance_and_movement();
    }
    if part("outbox") {
        outbox_cost();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if part("catalog") {
        runtime.block_on(catalog_propagation());
    }
    if part("failover") {
        runtime.block_on(fail_over());
    }
}
