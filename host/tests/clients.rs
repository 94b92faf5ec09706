//! The Python subscriber client (`clients/python`) against a live two-node cluster on
//! PostgreSQL under load. The client reads through a TCP proxy to the first node and knows the
//! second; it is disconnected three times: its socket is cut (the proxy closes it), the node it
//! then reads from is restarted, and the client itself is killed with `kill -9` and started
//! again with its position store. Afterwards, id by id, it has yielded every stored record
//! once, in log order per source, with no `gap` or `lag` notice. Every wait polls with a
//! deadline.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::cluster::{NodeOptions, NodeProc, post, running_on};
use support::proxy::Proxy;
use support::store::{Stored, every_generated_id_stored_once, until_streams_move_on};
use support::{TestDb, binance_sources, free_port, simulator, until};

const LIMIT: Duration = Duration::from_secs(90);

fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/python")
}

/// `follow.py OUT URL…`: the client appending what it yields to `out`.
fn follow(out: &Path, urls: &[String], log: &Path) -> Child {
    let python = std::env::var("ANODE_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let stderr = std::fs::File::options()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(&python)
        .arg(client_dir().join("tests/follow.py"))
        .arg(out)
        .args(urls)
        .env("PYTHONPATH", client_dir().join("src"))
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {python}: {e}; run the tests with ./scripts/test.sh, which makes a Python with the client's dependency (websockets), or set ANODE_TEST_PYTHON")
        })
}

/// The complete lines the client wrote.
fn lines(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn records(out: &Path) -> Vec<Value> {
    lines(out)
        .into_iter()
        .filter(|l| l.get("position").is_some())
        .collect()
}

/// Wait until the client has written `more` records beyond `after`.
async fn until_more(out: &Path, after: usize, more: usize, log: &Path, what: &str) -> usize {
    until(what, LIMIT, || async {
        let n = records(out).len();
        if n >= after + more {
            Ok(n)
        } else {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            Err(format!(
                "{n} records; client log: {}",
                tail.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
            ))
        }
    })
    .await
}

/// A PostgreSQL position `p<tx>.<seq>` as a pair, for order.
fn position(text: &str) -> (u64, u64) {
    let (tx, seq) = text.strip_prefix('p').unwrap().split_once('.').unwrap();
    (tx.parse().unwrap(), seq.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_yields_every_stored_record_once_through_three_disconnects() {
    let root = tempfile::tempdir().unwrap();
    let db = TestDb::create(&support::pg_server()).await;
    let sim = simulator(20.0).await;
    let ports = [free_port(), free_port()];
    let options = |port: u16, seeds: Vec<String>| NodeOptions {
        seeds,
        postgres: Some(db.url.clone()),
        // Fixed ports: a restarted node is where the client knows it.
        api_section: Some(format!("bind = \"127.0.0.1:{port}\"")),
        ..NodeOptions::default()
    };
    let first = NodeProc::start(root.path(), "py1", &options(ports[0], Vec::new()));
    let mut second = NodeProc::start(
        root.path(),
        "py2",
        &options(ports[1], vec![first.gossip.clone()]),
    );
    let proxy_port = free_port();
    let proxy = Proxy::start(proxy_port, ([127, 0, 0, 1], ports[0]).into()).await;
    let specs = binance_sources(&sim, 6, "py");
    for spec in &specs {
        post(&format!("{}/api/v1/sources", first.api), spec).await;
    }
    until("the sources live", LIMIT, || async {
        let n = running_on(&first).await.len() + running_on(&second).await.len();
        if n == specs.len() {
            Ok(())
        } else {
            Err(format!("{n} running"))
        }
    })
    .await;

    let out = root.path().join("follow.jsonl");
    let log = root.path().join("follow.log");
    let urls = vec![
        format!("ws://127.0.0.1:{proxy_port}"),
        second.api.replace("http://", "ws://"),
    ];
    let mut client = follow(&out, &urls, &log);
    let mut seen = until_more(&out, 0, 50, &log, "the client to yield records").await;

    // 1. Its socket is cut: it goes on from the second node.
    proxy.cut();
    seen = until_more(&out, seen, 50, &log, "records after the socket was cut").await;
    proxy.mend();

    // 2. The node it reads from restarts: it goes back to the first.
    second.terminate();
    second.restart();
    seen = until_more(
        &out,
        seen,
        50,
        &log,
        "records while the second node restarts",
    )
    .await;

    // 3. The client is killed, and started again with its position store.
    let _ = client.kill();
    let _ = client.wait();
    until_streams_move_on(&sim, &specs, 10).await;
    let mut client = follow(&out, &urls, &log);
    until_more(&out, seen, 50, &log, "records after the client restarted").await;

    until_streams_move_on(&sim, &specs, 10).await;
    sim.pause();
    let stored = Stored::Postgres(db);
    every_generated_id_stored_once(&sim, &stored, &specs, &[]).await;
    let stored_ids = stored.record_ids(None).await;
    until("the client to have every stored record", LIMIT, || async {
        let got: HashSet<String> = records(&out)
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect();
        let missing = stored_ids.difference(&got).count();
        let extra = got.difference(&stored_ids).count();
        if missing == 0 && extra == 0 {
            Ok(())
        } else {
            Err(format!("{missing} missing, {extra} not stored"))
        }
    })
    .await;
    let _ = client.kill();
    let _ = client.wait();

    let all = records(&out);
    assert_eq!(all.len(), stored_ids.len(), "a record yielded twice");
    let mut last: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for record in &all {
        let source = record["source"].as_str().unwrap().to_owned();
        let at = position(record["position"].as_str().unwrap());
        if let Some(before) = last.insert(source.clone(), at) {
            assert!(before < at, "{source}: {at:?} after {before:?}");
        }
    }
    let notices: Vec<Value> = lines(&out)
        .into_iter()
        .filter_map(|l| l.get("notice").cloned().map(|k| (k, l)))
        .filter(|(k, _)| k == "gap" || k == "lag")
        .map(|(_, l)| l)
        .collect();
    assert!(notices.is_empty(), "{notices:?}");
    let reconnects = lines(&out)
        .iter()
        .filter(|l| l["notice"] == "reconnecting")
        .count();
    assert!(
        reconnects >= 2,
        "the client reconnected {reconnects} time(s)"
    );
    sim.shutdown().await;
    drop((first, second, proxy));
    if let Stored::Postgres(db) = stored {
        db.drop_db().await;
    }
}
