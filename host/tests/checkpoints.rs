//! Stateful transforms keep their state through a restart, a `kill -9` and a hand-over:
//! candles made by the `candles` transform of one source, across a SIGTERM restart and a
//! `kill -9` of its node, and across its move to a node that joins, equal the candles
//! computed here from the trades a second source of the same stream stored, window by
//! window. Without the state handed to the store with each batch's cursor,
//! the window open at each fault would come out with only the trades after it.
//!
//! One `anode up` process on PostgreSQL; every wait polls with a deadline.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use support::cluster::{NodeOptions, NodeProc, post, running_on};
use support::store::{Stored, every_generated_id_stored_once, until_streams_move_on};
use support::{binance_sources, simulator, until};

const LIMIT: Duration = Duration::from_secs(60);
/// Candle length: several windows between faults, each with dozens of trades.
const WINDOW_MS: i64 = 1000;

/// A candle as this test compares it.
#[derive(Debug, Clone, PartialEq)]
struct Candle {
    trades: u64,
    o: String,
    h: String,
    l: String,
    c: String,
    v: f64,
}

/// Candles computed from trades (payloads), by window start.
fn offline(trades: &[Value]) -> BTreeMap<i64, Candle> {
    let mut sorted: Vec<&Value> = trades.iter().collect();
    sorted.sort_by_key(|t| (t["event_timestamp"].as_i64(), t["trade_id"].as_u64()));
    let mut out: BTreeMap<i64, Candle> = BTreeMap::new();
    for t in sorted {
        let at = t["event_timestamp"].as_i64().unwrap();
        let start = at - at.rem_euclid(WINDOW_MS);
        let price = t["price"].as_str().unwrap().to_owned();
        let size: f64 = t["size"].as_str().unwrap().parse().unwrap();
        let p: f64 = price.parse().unwrap();
        out.entry(start)
            .and_modify(|c| {
                c.trades += 1;
                if p > c.h.parse::<f64>().unwrap() {
                    c.h.clone_from(&price);
                }
                if p < c.l.parse::<f64>().unwrap() {
                    c.l.clone_from(&price);
                }
                c.c.clone_from(&price);
                c.v += size;
            })
            .or_insert(Candle {
                trades: 1,
                o: price.clone(),
                h: price.clone(),
                l: price.clone(),
                c: price,
                v: size,
            });
    }
    out
}

/// The stored payloads of `source`.
async fn payloads(stored: &Stored, source: &str) -> Vec<Value> {
    let Stored::Postgres(db) = stored else {
        unreachable!("on PostgreSQL")
    };
    db.client()
        .await
        .query(
            "SELECT payload::text FROM anode_records WHERE source = $1",
            &[&source],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
        .collect()
}

/// Ticks once an hour: windows close on the next window's first trade, never on a tick of
/// the wall clock (which could close one before its last trades arrive and make these tests
/// depend on timing).
fn no_ticks() {
    // SAFETY: the tests here set the same value before starting any node process; nothing
    // else in this binary reads the environment.
    unsafe { std::env::set_var("ANODE_SOURCES__TICK_MS", "3600000") };
}

/// Two sources of one stream on `node`: `<prefix>-0`, the trades as they are, and
/// `candles_id`, candles made of them; returns the trades source's spec once both run.
async fn trades_and_candles(
    node: &NodeProc,
    sim: &anode_feedsim::FeedSim,
    stored: &Stored,
    prefix: &str,
    candles_id: &str,
) -> Value {
    let trades = binance_sources(sim, 1, prefix).remove(0);
    let mut candles = trades.clone();
    candles["id"] = json!(candles_id);
    candles["transforms"] = json!([{"plugin": "candles", "config": {"interval_ms": WINDOW_MS}}]);
    // The trades first: the stream's generated ids start with them, so every one of them
    // is the plain source's to store.
    post(&format!("{}/api/v1/sources", node.api), &trades).await;
    stored
        .until_at_least(trades["id"].as_str().unwrap(), 1)
        .await;
    post(&format!("{}/api/v1/sources", node.api), &candles).await;
    more_candles(stored, candles_id, 3, "three candles").await;
    trades
}

/// Wait until `candles_id` has stored `more` candles than now.
async fn more_candles(stored: &Stored, candles_id: &str, more: u64, what: &str) {
    let before = stored.count(candles_id).await;
    until(what, LIMIT, || async {
        let n = stored.count(candles_id).await;
        if n >= before + more {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    })
    .await;
}

/// Pause the venue, wait until every trade it generated is stored, then until every closed
/// window's stored candle equals the candle computed from the stored trades.
async fn candles_equal_the_trades(
    sim: &anode_feedsim::FeedSim,
    stored: &Stored,
    trades: &Value,
    candles_id: &str,
) {
    until_streams_move_on(sim, std::slice::from_ref(trades), 40).await;
    sim.pause();
    // Every trade the venue generated is stored (the plain source backfills its gaps too).
    every_generated_id_stored_once(sim, stored, std::slice::from_ref(trades), &[]).await;
    let want = offline(&payloads(stored, trades["id"].as_str().unwrap()).await);
    let last = *want.keys().next_back().unwrap();
    until("every closed window's candle", LIMIT, || async {
        let got: BTreeMap<i64, Value> = payloads(stored, candles_id)
            .await
            .into_iter()
            .map(|c| (c["start"].as_i64().unwrap(), c))
            .collect();
        // The candles source's first window began before it subscribed, and the last window
        // is still open: every window between them is compared.
        let first = got.keys().next().copied().unwrap_or(last);
        let compared: Vec<i64> = want
            .keys()
            .copied()
            .filter(|&s| s > first && s < last)
            .collect();
        let mut wrong = Vec::new();
        for start in &compared {
            let want = &want[start];
            let Some(c) = got.get(start) else {
                wrong.push(format!("{start}: no candle"));
                continue;
            };
            let have = Candle {
                trades: c["trades"].as_u64().unwrap(),
                o: c["o"].as_str().unwrap().to_owned(),
                h: c["h"].as_str().unwrap().to_owned(),
                l: c["l"].as_str().unwrap().to_owned(),
                c: c["c"].as_str().unwrap().to_owned(),
                v: c["v"].as_str().unwrap().parse().unwrap(),
            };
            let same_volume = (have.v - want.v).abs() <= 1e-9 * want.v.abs().max(1.0);
            if have.trades != want.trades
                || (&have.o, &have.h, &have.l, &have.c) != (&want.o, &want.h, &want.l, &want.c)
                || !same_volume
            {
                wrong.push(format!(
                    "{start}: stored {have:?}, from the trades {want:?}"
                ));
            }
        }
        if wrong.is_empty() && compared.len() >= 6 {
            Ok(())
        } else {
            Err(format!(
                "{} windows compared; {}",
                compared.len(),
                wrong.join("; ")
            ))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candles_survive_a_restart_and_a_kill_nine_window_by_window() {
    no_ticks();
    let root = tempfile::tempdir().unwrap();
    let db = support::TestDb::create(&support::pg_server()).await;
    let sim = simulator(40.0).await;
    let mut node = NodeProc::start(
        root.path(),
        "c1",
        &NodeOptions {
            postgres: Some(db.url.clone()),
            ..NodeOptions::default()
        },
    );
    let stored = Stored::Postgres(db);
    let trades = trades_and_candles(&node, &sim, &stored, "ck", "ck-candles").await;
    // A clean restart mid-window, then a crash mid-window: after each the source goes on
    // making candles.
    for fault in ["SIGTERM", "kill -9"] {
        if fault == "SIGTERM" {
            let status = node.terminate();
            assert!(status.success(), "{status}");
        } else {
            node.kill();
        }
        node.restart();
        more_candles(
            &stored,
            "ck-candles",
            3,
            &format!("candles again after {fault}"),
        )
        .await;
    }
    candles_equal_the_trades(&sim, &stored, &trades, "ck-candles").await;
    sim.shutdown().await;
    drop(node);
    if let Stored::Postgres(db) = stored {
        db.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candles_survive_a_hand_over_to_a_joining_node_window_by_window() {
    no_ticks();
    let root = tempfile::tempdir().unwrap();
    let db = support::TestDb::create(&support::pg_server()).await;
    let sim = simulator(40.0).await;
    let first = NodeProc::start(
        root.path(),
        "h1",
        &NodeOptions {
            postgres: Some(db.url.clone()),
            ..NodeOptions::default()
        },
    );
    // A candles source that the node about to join will own.
    let candles_id = (0..)
        .map(|i| format!("hv-candles-{i}"))
        .find(|id| anode::cluster::owner_among(id, ["h1", "h2"]) == Some("h2"))
        .unwrap();
    let stored = Stored::Postgres(db);
    let trades = trades_and_candles(&first, &sim, &stored, "hv", &candles_id).await;
    let second = NodeProc::start(
        root.path(),
        "h2",
        &NodeOptions {
            seeds: vec![first.gossip.clone()],
            postgres: Some(stored_url(&stored)),
            ..NodeOptions::default()
        },
    );
    // Make-before-break: h2 runs it live (from the cursor and the state h1 stored), then h1
    // stops it.
    until("the candles source to move to h2", LIMIT, || async {
        let on_second = running_on(&second).await;
        let on_first = running_on(&first).await;
        let live = on_second
            .get(&candles_id)
            .is_some_and(|r| r["state"] == "live");
        if live && !on_first.contains_key(&candles_id) {
            Ok(())
        } else {
            Err(format!(
                "h2: {:?}, h1 runs it: {}",
                on_second.get(&candles_id).map(|r| r["state"].clone()),
                on_first.contains_key(&candles_id)
            ))
        }
    })
    .await;
    more_candles(&stored, &candles_id, 3, "candles from h2").await;
    candles_equal_the_trades(&sim, &stored, &trades, &candles_id).await;
    sim.shutdown().await;
    drop((first, second));
    if let Stored::Postgres(db) = stored {
        db.drop_db().await;
    }
}

/// The URL of a PostgreSQL store.
fn stored_url(stored: &Stored) -> String {
    match stored {
        Stored::Postgres(db) => db.url.clone(),
        Stored::Sqlite(_) => unreachable!("on PostgreSQL"),
    }
}
