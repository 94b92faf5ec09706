//! The delivery contract, every node its own `anode up` process on loopback and every wait a
//! poll with a deadline:
//!
//! - a node stopped with SIGTERM under load has stored everything it acknowledged, and each
//!   source's stored cursor is its last stored id; restarted, it resumes every source from
//!   its cursor (Binance through backfill, EVM blocks through the cursor) with no hole and
//!   nothing twice — with the embedded store and with PostgreSQL;
//! - a subscriber with `after=stored` sees only stored records, each once;
//! - a candles transform closes its window on time when no further trade comes;
//! - Coinbase sources resume the same way, their gap fetched from the REST trades;
//! - a Binance venue that went quiet while the node was away is caught up as the sources start;
//! - with embedded stores (one per node), a source's new owner after `kill -9` resumes from the
//!   cursor the catalog carries, and the two stores together hold every generated id.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::cluster::{NodeOptions, NodeProc, post};
use support::store::{
    Stored, every_generated_id_stored_once, evm_source, trade_stream, until_generated_moves_on,
    until_streams_move_on,
};
use support::{TestDb, binance_sources, get_json, simulator, until};
use tokio_tungstenite::tungstenite::Message;

const LIMIT: Duration = Duration::from_secs(60);

async fn add_all(node: &NodeProc, specs: &[Value]) {
    for spec in specs {
        post(&format!("{}/api/v1/sources", node.api), spec).await;
    }
}

/// Add `specs`, wait until each has stored 20 records, then stop the node with SIGTERM.
async fn store_some_then_terminate(node: &mut NodeProc, stored: &Stored, specs: &[Value]) {
    add_all(node, specs).await;
    for spec in specs {
        stored
            .until_at_least(spec["id"].as_str().unwrap(), 20)
            .await;
    }
    let status = node.terminate();
    assert!(
        status.success(),
        "the node exits cleanly on SIGTERM: {status}"
    );
}

/// The cursor a binance-trades source committed: `{"SYMBOL": last id}`.
fn binance_cursor(cursor: &str, spec: &Value) -> u64 {
    let symbol = spec["config"]["symbols"][0]
        .as_str()
        .unwrap()
        .to_ascii_uppercase();
    let value: Value = serde_json::from_str(cursor).unwrap_or_else(|e| panic!("{cursor}: {e}"));
    value[&symbol]
        .as_u64()
        .unwrap_or_else(|| panic!("no {symbol} in {cursor}"))
}

async fn sigterm_then_restart_resumes_every_source(
    root: tempfile::TempDir,
    stored: Stored,
    postgres: Option<String>,
) {
    let sim = simulator(40.0).await;
    let mut node = NodeProc::start(
        root.path(),
        "d1",
        &NodeOptions {
            postgres,
            ..NodeOptions::default()
        },
    );
    let binance = binance_sources(&sim, 6, "rs");
    let evm = vec![evm_source(&sim, "chain-a", "resume-a")];
    let all: Vec<Value> = binance.iter().chain(&evm).cloned().collect();
    store_some_then_terminate(&mut node, &stored, &all).await;
    // Everything acknowledged is stored, and each cursor is the last id stored.
    let cursors = stored.cursors().await;
    for spec in &binance {
        let id = spec["id"].as_str().unwrap();
        let cursor = cursors
            .get(id)
            .unwrap_or_else(|| panic!("{id} has no cursor"));
        let last = stored.ids(id).await.into_iter().max().unwrap();
        assert_eq!(binance_cursor(cursor, spec), last, "{id}: cursor {cursor}");
    }
    for spec in &evm {
        let id = spec["id"].as_str().unwrap();
        let last = stored.ids(id).await.into_iter().max().unwrap();
        let cursor: Value = serde_json::from_str(&cursors[id]).unwrap();
        assert_eq!(cursor["next"], last + 1, "{id}: cursor {cursor}");
    }

    // The venues go on while the node is away: a gap to fill on restart.
    until_generated_moves_on(&sim, &binance, 40).await;
    node.restart();
    // Every source is live again and has stored past the gap before the venue pauses.
    let heads: HashMap<String, u64> = binance
        .iter()
        .map(|s| {
            let head = sim.report().streams[&trade_stream(s)].generated.unwrap().1;
            (s["id"].as_str().unwrap().to_owned(), head)
        })
        .collect();
    until("the restarted node to pass the gap", LIMIT, || async {
        let mut behind = Vec::new();
        for (id, head) in &heads {
            let last = stored.ids(id).await.into_iter().max().unwrap_or(0);
            if last <= *head {
                behind.push(format!("{id}: {last} ≤ {head}"));
            }
        }
        if behind.is_empty() {
            Ok(())
        } else {
            Err(behind.join("; "))
        }
    })
    .await;
    sim.pause();
    every_generated_id_stored_once(&sim, &stored, &binance, &evm).await;
    sim.shutdown().await;
    drop(node);
    if let Stored::Postgres(db) = stored {
        db.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_restart_lose_nothing_with_the_embedded_store() {
    let root = tempfile::tempdir().unwrap();
    // A node's data dir is <root>/<id>; the embedded store is records.sqlite in it.
    let stored = Stored::Sqlite(root.path().join("d1").join("records.sqlite"));
    sigterm_then_restart_resumes_every_source(root, stored, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_restart_lose_nothing_with_postgres() {
    let db = TestDb::create(&support::pg_server()).await;
    let url = db.url.clone();
    let root = tempfile::tempdir().unwrap();
    sigterm_then_restart_resumes_every_source(root, Stored::Postgres(db), Some(url)).await;
}

/// A subscriber's records (frames without a `type`), read by a task of its own for as long
/// as the receiver lives, so nothing it is sent is missed between two checks.
async fn subscribe(url: &str) -> tokio::sync::mpsc::Receiver<Value> {
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("subscribe");
    // Bounded: a feed the test no longer reads holds its socket, and the node counts the lag.
    let (tx, rx) = tokio::sync::mpsc::channel(10_000);
    let url = url.to_owned();
    tokio::spawn(async move {
        let (_sink, mut frames) = socket.split();
        while let Some(frame) = frames.next().await {
            let Ok(Message::Text(text)) = frame else {
                panic!("{url} ended: {frame:?}");
            };
            let value: Value = serde_json::from_str(&text).unwrap();
            if value.get("type").is_none() && tx.send(value).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// Take a subscriber's records into `records` until `done` says enough.
async fn read_until(
    what: &str,
    rx: &mut tokio::sync::mpsc::Receiver<Value>,
    records: &mut Vec<Value>,
    mut done: impl FnMut(&[Value]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !done(records) {
        let next = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out reading {what}; got {records:?}"));
        records.push(next.unwrap_or_else(|| panic!("{what} ended")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_subscribers_see_stored_records_once_and_candles_close_on_time() {
    let root = tempfile::tempdir().unwrap();
    let sim = simulator(50.0).await;
    let node = NodeProc::start(root.path(), "c1", &NodeOptions::default());
    let stored = Stored::Sqlite(root.path().join("c1").join("records.sqlite"));
    let mut spec = binance_sources(&sim, 1, "cd").remove(0);
    spec["transforms"] = json!([{"plugin": "candles", "config": {"interval_ms": 1000}}]);
    let ws = node.api.replace("http://", "ws://");
    // Subscribed before the source starts, for the whole test: it sees every candle.
    let candles_url = format!("{ws}/ws?stream=candles&after=stored");
    let mut candle_feed = subscribe(&candles_url).await;
    // The candles transform consumes trades: stored trades come from a plain source.
    let plain = binance_sources(&sim, 1, "st").remove(0);
    let trades_url = format!("{ws}/ws?source=st-0&after=stored");
    let mut trade_feed = subscribe(&trades_url).await;
    add_all(&node, &[spec, plain]).await;
    let mut trades = Vec::new();
    read_until(&trades_url, &mut trade_feed, &mut trades, |records| {
        records.len() >= 100
    })
    .await;
    // Only stored records, each once.
    let ids: BTreeSet<&str> = trades.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids.len(),
        trades.len(),
        "a stored subscriber sees each record once"
    );
    // Read after the subscriber had them: a stored subscriber's records are in the store.
    let in_store: BTreeSet<String> = stored.upstream_ids("st-0").await.into_iter().collect();
    for record in &trades {
        let upstream = record["upstream_id"].as_str().unwrap();
        assert!(
            in_store.contains(upstream),
            "{upstream} reached a stored subscriber but is not in the store"
        );
    }
    let mut candles = Vec::new();
    read_until(&candles_url, &mut candle_feed, &mut candles, |records| {
        records.len() >= 4
    })
    .await;
    assert!(
        candles.iter().all(|c| c["payload"]["closed"] == true),
        "{candles:?}"
    );

    // The venue goes quiet: the window holding its last trade must still close, by a tick,
    // since no later trade can close it now.
    sim.pause();
    let last_trade = get_json(&format!(
        "{}/binance/api/v3/trades?symbol=CD0USDT&limit=1",
        sim.http_url()
    ))
    .await;
    let last_ms = last_trade[0]["time"]
        .as_i64()
        .expect("the venue's last trade");
    let holds_last = |c: &Value| {
        c["payload"]["start"].as_i64().unwrap() <= last_ms
            && last_ms < c["payload"]["end"].as_i64().unwrap()
    };
    read_until(&candles_url, &mut candle_feed, &mut candles, |records| {
        records.iter().any(holds_last)
    })
    .await;
    let closing = candles.iter().find(|c| holds_last(c)).unwrap();
    assert_eq!(closing["payload"]["closed"], true);
    assert!(
        closing["payload"]["trades"].as_u64().unwrap() > 0,
        "{closing}"
    );
    sim.shutdown().await;
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_embedded_stores_a_new_owner_resumes_from_the_cursor_the_catalog_carries() {
    let root = tempfile::tempdir().unwrap();
    let sim = simulator(20.0).await;
    let first = NodeProc::start(root.path(), "e1", &NodeOptions::default());
    let mut second = NodeProc::start(
        root.path(),
        "e2",
        &NodeOptions {
            seeds: vec![first.gossip.clone()],
            ..NodeOptions::default()
        },
    );
    let binance = binance_sources(&sim, 8, "ec");
    add_all(&first, &binance).await;
    let sources: BTreeSet<String> = binance
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    let both = [&first, &second];
    until("2 nodes to converge", LIMIT, || {
        support::cluster::converged(&both, &sources)
    })
    .await;
    // Each node's store is its own: the cursors reach the other node through the catalog
    // (a `cursor/<id>` entry per source next to the `source/<id>` ones).
    until("every cursor in the catalog", LIMIT, || async {
        let entries = support::cluster::get(&format!("{}/api/v1/cluster", first.api)).await
            ["catalog"]["entries"]
            .as_u64()
            .unwrap_or(0);
        if entries >= 2 * sources.len() as u64 {
            Ok(())
        } else {
            Err(format!("{entries} entries"))
        }
    })
    .await;
    let moved: Vec<String> = support::cluster::running_on(&second)
        .await
        .into_keys()
        .collect();
    assert!(!moved.is_empty(), "e2 runs no source");
    second.kill();
    until("e1 to run every source", LIMIT, || async {
        let running = support::cluster::running_on(&first).await;
        let live = sources
            .iter()
            .filter(|id| running.get(*id).is_some_and(|r| r["state"] == "live"))
            .count();
        if live == sources.len() {
            Ok(())
        } else {
            Err(format!("{live} live"))
        }
    })
    .await;
    until_streams_move_on(&sim, &binance, 20).await;
    sim.pause();
    // Together the two stores hold every id generated for the moved streams, each store each
    // id at most once (the key makes a second row impossible; counts compare rows to ids).
    let stores = [
        Stored::Sqlite(root.path().join("e1").join("records.sqlite")),
        Stored::Sqlite(root.path().join("e2").join("records.sqlite")),
    ];
    until(
        "every generated id of the moved streams stored",
        LIMIT,
        || async {
            let report = sim.report();
            let mut wrong = Vec::new();
            for spec in binance
                .iter()
                .filter(|s| moved.contains(&s["id"].as_str().unwrap().to_owned()))
            {
                let id = spec["id"].as_str().unwrap();
                let (first_id, last_id) = report.streams[&trade_stream(spec)].generated.unwrap();
                let mut have = BTreeSet::new();
                for store in &stores {
                    let ids = store.ids(id).await;
                    let distinct: BTreeSet<u64> = ids.iter().copied().collect();
                    assert_eq!(distinct.len(), ids.len(), "{id}: an id twice in one store");
                    have.extend(distinct);
                }
                let missing = (first_id..=last_id).filter(|n| !have.contains(n)).count();
                if missing > 0 {
                    wrong.push(format!("{id}: {missing} of {first_id}..={last_id} missing"));
                }
            }
            if wrong.is_empty() {
                Ok(())
            } else {
                Err(wrong.join("; "))
            }
        },
    )
    .await;
    sim.shutdown().await;
    drop((first, second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coinbase_sources_resume_after_a_restart_through_backfill() {
    let root = tempfile::tempdir().unwrap();
    let sim = simulator(30.0).await;
    let mut node = NodeProc::start(root.path(), "cr", &NodeOptions::default());
    let stored = Stored::Sqlite(root.path().join("cr").join("records.sqlite"));
    let coinbase: Vec<Value> = (0..3)
        .map(|i| {
            json!({"id": format!("cbr-{i}"), "plugin": "coinbase", "config": {
                "base_url": format!("{}/coinbase", sim.ws_url()),
                "product_ids": [format!("R{i}-USD")], "channels": ["matches"]}})
        })
        .collect();
    store_some_then_terminate(&mut node, &stored, &coinbase).await;
    // The committed cursor of each product is its last stored trade id.
    let cursors = stored.cursors().await;
    for (i, spec) in coinbase.iter().enumerate() {
        let id = spec["id"].as_str().unwrap();
        let cursor: Value = serde_json::from_str(&cursors[id]).unwrap();
        let last = stored.ids(id).await.into_iter().max().unwrap();
        assert_eq!(
            cursor[format!("R{i}-USD")].as_u64(),
            Some(last),
            "{id}: {cursor}"
        );
    }
    // A gap while the node is away, filled through the REST trades on restart.
    until_generated_moves_on(&sim, &coinbase, 40).await;
    node.restart();
    until_streams_move_on(&sim, &coinbase, 20).await;
    sim.pause();
    every_generated_id_stored_once(&sim, &stored, &coinbase, &[]).await;
    sim.shutdown().await;
    drop(node);
}

/// A venue that goes quiet while the node is away sends no live trade to reveal the gap: the
/// connector asks for it as it starts (`session.backfill`, WIT 0.2.0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_venue_is_caught_up_from_the_cursor_at_start() {
    let root = tempfile::tempdir().unwrap();
    let sim = simulator(40.0).await;
    let mut node = NodeProc::start(root.path(), "qv", &NodeOptions::default());
    let stored = Stored::Sqlite(root.path().join("qv").join("records.sqlite"));
    let binance = binance_sources(&sim, 3, "qv");
    store_some_then_terminate(&mut node, &stored, &binance).await;
    until_generated_moves_on(&sim, &binance, 40).await;
    // From here on the venue sends nothing live.
    sim.pause();
    node.restart();
    every_generated_id_stored_once(&sim, &stored, &binance, &[]).await;
    sim.shutdown().await;
    drop(node);
}
