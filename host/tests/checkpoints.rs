//! Stateful transforms keep their state through a restart and a `kill -9`: candles made by
//! the `candles` transform of one source, across a SIGTERM restart and a `kill -9` of its
//! node, equal the candles computed here from the trades a second source of the same stream
//! stored, window by window. Without the state handed to the store with each batch's cursor,
//! the window open at each fault would come out with only the trades after it.
//!
//! One `anode up` process on PostgreSQL; every wait polls with a deadline.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use support::cluster::{NodeOptions, NodeProc, post};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candles_survive_a_restart_and_a_kill_nine_window_by_window() {
    // Windows close on the next window's first trade, never on a tick of the wall clock
    // (which could close one before its last trades arrive and make this test depend on
    // timing): ticks come once an hour.
    // SAFETY: this test binary has this one test; nothing reads the environment meanwhile.
    unsafe { std::env::set_var("ANODE_SOURCES__TICK_MS", "3600000") };
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
    // Two sources of one stream: the trades as they are, and candles made of them.
    let trades = binance_sources(&sim, 1, "ck").remove(0);
    let mut candles = trades.clone();
    candles["id"] = json!("ck-candles");
    candles["transforms"] = json!([{"plugin": "candles", "config": {"interval_ms": WINDOW_MS}}]);
    // The trades first: the stream's generated ids start with them, so every one of them
    // is the plain source's to store.
    post(&format!("{}/api/v1/sources", node.api), &trades).await;
    let stored = Stored::Postgres(db);
    stored.until_at_least("ck-0", 1).await;
    post(&format!("{}/api/v1/sources", node.api), &candles).await;
    until("three candles", LIMIT, || async {
        let n = stored.count("ck-candles").await;
        if n >= 3 { Ok(()) } else { Err(format!("{n}")) }
    })
    .await;

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
        let before = stored.count("ck-candles").await;
        until(&format!("candles again after {fault}"), LIMIT, || async {
            let n = stored.count("ck-candles").await;
            if n >= before + 3 {
                Ok(())
            } else {
                Err(format!("{n}"))
            }
        })
        .await;
    }
    until_streams_move_on(&sim, std::slice::from_ref(&trades), 40).await;
    sim.pause();
    // Every trade the venue generated is stored (the plain source backfills its gaps too).
    every_generated_id_stored_once(&sim, &stored, std::slice::from_ref(&trades), &[]).await;

    let want = offline(&payloads(&stored, "ck-0").await);
    let last = *want.keys().next_back().unwrap();
    until("every closed window's candle", LIMIT, || async {
        let got: BTreeMap<i64, Value> = payloads(&stored, "ck-candles")
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
    sim.shutdown().await;
    drop(node);
    if let Stored::Postgres(db) = stored {
        db.drop_db().await;
    }
}
