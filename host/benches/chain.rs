//! Chain benchmark against a real EVM node (ganache 7: `ANODE_GANACHE`, or the one
//! `scripts/test.sh` installs into `target/test-tools`), one `anode up` node with the embedded
//! store, three parts:
//!
//! 1. **Backfill**: a chain of N blocks, each with one ERC-20 transfer of a minimal token;
//!    `evm-blocks` from block 0 (blocks/s), and `evm-logs` from block 0 with one range at a
//!    time and then four in parallel, in the same run (logs/s, and the ratio: the baseline is
//!    the serial run). Every block and log is final (`finality_depth = 0`), so the count
//!    stored is exact.
//! 2. **Node CPU per block**: `process_cpu_seconds_total` of the node across the `evm-blocks`
//!    backfill, over the blocks stored.
//! 3. **Reorganisation to undo**: K forks of depth 2 while an `evm-blocks` source follows the
//!    head (`interval_ms = 100`): the time from the last block of the longer branch being mined
//!    to the first `undo` at a `/ws` subscriber (it includes up to one poll interval).
//!
//! `cargo bench -p anode --bench chain`; `ANODE_BENCH_QUICK=1` makes the chain and K smaller.

#[path = "../tests/support/cluster.rs"]
#[allow(dead_code)]
mod support;

#[path = "../tests/support/ganache.rs"]
#[allow(dead_code)]
mod ganache;

#[path = "../tests/support/poll.rs"]
#[allow(dead_code)]
mod poll;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use ganache::Ganache;
use serde_json::{Value, json};
use support::{NodeOptions, NodeProc, metric, post};

fn quick() -> bool {
    std::env::var_os("ANODE_BENCH_QUICK").is_some()
}

/// Records `source` stored, from the node's API.
async fn stored(node: &NodeProc, source: &str) -> u64 {
    let sources = node.get("/api/v1/sources").await;
    sources
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["id"] == source)
        .and_then(|s| s["stored"].as_u64())
        .unwrap_or(0)
}

/// Add `spec` and time it until `want` records are stored; the seconds it took.
async fn backfill(node: &NodeProc, spec: Value, want: u64) -> f64 {
    let id = spec["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    post(&format!("{}/api/v1/sources", node.api), &spec).await;
    poll::until(
        &format!("{id} to store {want} records"),
        Duration::from_secs(600),
        || async {
            match stored(node, &id).await {
                n if n >= want => Ok(()),
                n => Err(format!("{n} stored")),
            }
        },
    )
    .await;
    started.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let blocks: u64 = if quick() { 200 } else { 5000 };
    let forks: usize = if quick() { 5 } else { 20 };
    let ganache = Ganache::start().await;
    let token = ganache.deploy_token().await;
    let to = ganache.accounts[1].clone();
    let setup = Instant::now();
    for amount in 1..blocks {
        ganache.transfer(&token, &to, amount).await;
    }
    let head = ganache.head().await;
    println!(
        "== chain: {} blocks, {} transfers, mined in {:.1} s",
        head + 1,
        blocks - 1,
        setup.elapsed().as_secs_f64()
    );

    let root = tempfile::tempdir().unwrap();
    let node = NodeProc::start(root.path(), "bench-chain", &NodeOptions::default());

    // 1 and 2: backfill, and the node's CPU over it.
    let cpu = || metric(&node, "process_cpu_seconds_total");
    let cpu_before = cpu().await;
    let secs = backfill(
        &node,
        json!({"id": "blocks", "plugin": "evm-blocks", "config": {"url": ganache.url,
            "chain": "dev", "interval_ms": 100, "start_block": 0, "finality_depth": 0,
            "keep_blocks": 8, "max_blocks_per_poll": 50}}),
        head + 1,
    )
    .await;
    let cpu_used = cpu().await - cpu_before;
    println!(
        "evm-blocks backfill: {} blocks in {secs:.2} s = {:.0} blocks/s; node CPU {:.0} µs per block",
        head + 1,
        (head + 1) as f64 / secs,
        cpu_used * 1e6 / (head + 1) as f64
    );
    let logs = blocks - 1;
    let mut rates = Vec::new();
    for parallel in [1, 4] {
        let secs = backfill(
            &node,
            json!({"id": format!("logs-{parallel}"), "plugin": "evm-logs", "config": {
                "url": ganache.url, "chain": "dev", "interval_ms": 100, "start_block": 0,
                "address": token, "finality_depth": 0, "keep_blocks": 8, "max_range": 50,
                "parallel": parallel}}),
            logs,
        )
        .await;
        let rate = logs as f64 / secs;
        println!(
            "evm-logs backfill, ranges of 50 blocks, {parallel} at a time: {logs} logs in {secs:.2} s = {rate:.0} logs/s"
        );
        rates.push(rate);
    }
    println!(
        "evm-logs: 4 ranges at a time / 1 at a time = {:.2}",
        rates[1] / rates[0]
    );

    // 3: from a fork on the node to the undo at a subscriber.
    post(
        &format!("{}/api/v1/sources", node.api),
        &json!({"id": "follow", "plugin": "evm-blocks", "config": {"url": ganache.url,
            "chain": "dev", "interval_ms": 100, "finality_depth": 6, "keep_blocks": 16}}),
    )
    .await;
    let ws = node.api.replace("http://", "ws://");
    let (socket, _) = tokio_tungstenite::connect_async(format!("{ws}/ws?source=follow"))
        .await
        .expect("subscribe");
    let (_tx, mut rx) = socket.split();
    let heard: Arc<Mutex<Vec<(Instant, Value)>>> = Arc::default();
    tokio::spawn({
        let heard = heard.clone();
        async move {
            while let Some(Ok(message)) = rx.next().await {
                if let Ok(text) = message.to_text()
                    && let Ok(value) = serde_json::from_str::<Value>(text)
                {
                    heard.lock().unwrap().push((Instant::now(), value));
                }
            }
        }
    });
    let mut values = 1_000_000;
    let mut latencies = Vec::new();
    for _ in 0..forks {
        let snapshot = ganache.snapshot().await;
        ganache.mine(2, &mut values).await;
        let tip = ganache.head().await;
        poll::until(
            "the subscriber to hear the branch to be replaced",
            Duration::from_secs(30),
            || async {
                let heard = heard.lock().unwrap();
                if heard
                    .iter()
                    .any(|(_, r)| r["payload"]["number"].as_u64() == Some(tip))
                {
                    Ok(())
                } else {
                    Err(format!("{} messages", heard.len()))
                }
            },
        )
        .await;
        let before = heard.lock().unwrap().len();
        ganache.revert(snapshot).await;
        ganache.mine(3, &mut values).await;
        let mined = Instant::now();
        let undone = poll::until(
            "the undo to reach the subscriber",
            Duration::from_secs(30),
            || async {
                let heard = heard.lock().unwrap();
                heard[before..]
                    .iter()
                    .find(|(_, r)| r["type"] == "undo")
                    .map(|(at, _)| *at)
                    .ok_or_else(|| "no undo yet".to_owned())
            },
        )
        .await;
        latencies.push(undone.saturating_duration_since(mined).as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    println!(
        "reorganisation to undo at a subscriber ({forks} forks of depth 2, head polled every 100 ms): median {:.0} ms, p90 {:.0} ms, max {:.0} ms",
        at(0.5),
        at(0.9),
        at(1.0)
    );
}
