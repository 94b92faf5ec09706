//! Binance `historicalTrades` and the report's generated ids against a real simulator: trades
//! by id equal the WebSocket's, bounds and errors, the retention window, and backfilled ids
//! counting as sent for the WebSocket stream.

mod common;

use anode_feedsim::{Faults, SimConfig, StreamReport};
use common::*;
use serde_json::{Value, json};

/// `historicalTrades` with the given query; the status and the body.
async fn history(base: &str, query: &str) -> (u16, Value) {
    get_json(&format!("{base}/binance/api/v3/historicalTrades?{query}")).await
}

/// A successful `historicalTrades` answer as its trade ids.
async fn history_ids(base: &str, query: &str) -> Vec<u64> {
    let (status, body) = history(base, query).await;
    assert_eq!(status, 200, "{query}: {body}");
    body.as_array()
        .expect("an array")
        .iter()
        .map(|t| t["id"].as_u64().expect("id"))
        .collect()
}

/// Waits until the head of `symbol` reaches `min` (asking for the latest trade), then pauses
/// the simulator so the head stays put, and returns it.
async fn paused_head(sim: &anode_feedsim::FeedSim, symbol: &str, min: u64) -> u64 {
    let base = sim.http_url();
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let latest = history_ids(&base, &format!("symbol={symbol}&limit=1")).await;
        if latest.last().is_some_and(|&id| id >= min) {
            break;
        }
        assert!(tokio::time::Instant::now() < until, "head below {min}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    sim.pause();
    let head = history_ids(&base, &format!("symbol={symbol}&limit=1")).await;
    head[0]
}

fn inclusive(first: u64, last: u64) -> Vec<u64> {
    (first..=last).collect()
}

#[tokio::test]
async fn historical_trades_equal_the_websocket_trades_with_the_same_id() {
    let sim = start(fast_config()).await;
    let mut ws = connect(&format!("{}/binance/ws/btcusdt@trade", sim.ws_url())).await;
    let mut live = Vec::new();
    for _ in 0..10 {
        live.push(next_json(&mut ws).await);
    }
    let first = live[0]["t"].as_u64().unwrap();
    // Every trade the WebSocket sent is at or below the head, so all ten exist.
    let (status, body) = history(
        &sim.http_url(),
        &format!("symbol=BTCUSDT&fromId={first}&limit=10"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let trades = body.as_array().unwrap();
    let ids: Vec<u64> = trades.iter().map(|t| t["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, inclusive(first, first + 9));
    for (rest, ws) in trades.iter().zip(&live) {
        assert_eq!(rest["id"], ws["t"]);
        assert_eq!(rest["price"], ws["p"], "price of {}", ws["t"]);
        assert_eq!(rest["qty"], ws["q"], "qty of {}", ws["t"]);
        assert_eq!(rest["time"], ws["T"], "time of {}", ws["t"]);
        assert_eq!(rest["isBuyerMaker"], ws["m"], "side of {}", ws["t"]);
        assert_eq!(rest["isBestMatch"], true);
        let quote: f64 = rest["quoteQty"].as_str().unwrap().parse().unwrap();
        let price: f64 = rest["price"].as_str().unwrap().parse().unwrap();
        let qty: f64 = rest["qty"].as_str().unwrap().parse().unwrap();
        assert!((quote - price * qty).abs() < 1e-6, "{rest}");
        let mut keys: Vec<&str> = rest
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "id",
                "isBestMatch",
                "isBuyerMaker",
                "price",
                "qty",
                "quoteQty",
                "time"
            ]
        );
    }
    // The same trades also come from `trades`, element for element.
    let (_, recent) = get_json(&format!(
        "{}/binance/api/v3/trades?symbol=BTCUSDT&limit=1000",
        sim.http_url()
    ))
    .await;
    let same = recent
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == first)
        .expect("the first live id in the recent trades");
    assert_eq!(same, &trades[0]);
    sim.shutdown().await;
}

#[tokio::test]
async fn limits_head_and_parameter_errors() {
    let sim = start(SimConfig {
        rate_per_stream: 5_000.0,
        ..fast_config()
    })
    .await;
    let base = sim.http_url();
    let head = paused_head(&sim, "ETHUSDT", 1_100).await;

    let ids = history_ids(&base, "symbol=ETHUSDT&fromId=1").await;
    assert_eq!(ids, inclusive(1, 500), "default limit");
    let ids = history_ids(&base, "symbol=ethusdt&fromId=7&limit=1000").await;
    assert_eq!(ids, inclusive(7, 1_006), "max limit, lowercase symbol");
    let ids = history_ids(&base, "symbol=ETHUSDT&fromId=7&limit=1").await;
    assert_eq!(ids, [7]);
    let ids = history_ids(
        &base,
        &format!("symbol=ETHUSDT&fromId={}&limit=10", head - 2),
    )
    .await;
    assert_eq!(ids, inclusive(head - 2, head), "stops at the head");
    let ids = history_ids(&base, "symbol=ETHUSDT&limit=5").await;
    assert_eq!(ids, inclusive(head - 4, head), "no fromId: the most recent");
    let ids = history_ids(&base, "symbol=ETHUSDT").await;
    assert_eq!(ids, inclusive(head - 499, head));
    for from in [head + 1, head + 1_000, u64::MAX] {
        let ids = history_ids(&base, &format!("symbol=ETHUSDT&fromId={from}&limit=1000")).await;
        assert!(
            ids.is_empty(),
            "fromId {from} past the head {head}: {ids:?}"
        );
    }

    let cases = [
        ("fromId=1", -1102),
        ("symbol=&fromId=1", -1121),
        ("symbol=ETH-USDT&fromId=1", -1121),
        ("symbol=ETHUSDT&limit=0", -1100),
        ("symbol=ETHUSDT&limit=1001", -1100),
        ("symbol=ETHUSDT&limit=ten", -1100),
        ("symbol=ETHUSDT&fromId=-1", -1100),
        ("symbol=ETHUSDT&fromId=abc", -1100),
    ];
    for (query, code) in cases {
        let (status, body) = history(&base, query).await;
        assert_eq!(
            (status, body["code"].clone()),
            (400, json!(code)),
            "{query}"
        );
        assert!(
            body["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{query}"
        );
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn ids_older_than_the_retention_window_are_not_served() {
    const RETENTION: u64 = 50;
    let sim = start(SimConfig {
        rate_per_stream: 1_000.0,
        history_retention: RETENTION,
        ..fast_config()
    })
    .await;
    let base = sim.http_url();
    let head = paused_head(&sim, "SOLUSDT", 3 * RETENTION).await;
    let oldest = head - RETENTION + 1;

    for from in [1, oldest - 1, oldest] {
        let ids = history_ids(&base, &format!("symbol=SOLUSDT&fromId={from}&limit=10")).await;
        assert_eq!(ids, inclusive(oldest, oldest + 9), "fromId {from}");
    }
    let ids = history_ids(
        &base,
        &format!("symbol=SOLUSDT&fromId={}&limit=5", oldest + 1),
    )
    .await;
    assert_eq!(ids, inclusive(oldest + 1, oldest + 5));
    let ids = history_ids(&base, "symbol=SOLUSDT&limit=1000").await;
    assert_eq!(ids, inclusive(oldest, head), "the whole window");
    let ids = history_ids(&base, "symbol=SOLUSDT&fromId=1&limit=1000").await;
    assert_eq!(ids, inclusive(oldest, head));
    let (_, recent) = get_json(&format!(
        "{base}/binance/api/v3/trades?symbol=SOLUSDT&limit=1000"
    ))
    .await;
    assert_eq!(
        recent.as_array().unwrap().len() as u64,
        RETENTION,
        "trades keeps the window too"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn historical_trades_count_as_http_requests_and_get_429s() {
    let sim = start(SimConfig {
        faults: Faults {
            http_429_every: Some(2),
            ..Faults::default()
        },
        ..fast_config()
    })
    .await;
    let url = format!(
        "{}/binance/api/v3/historicalTrades?symbol=BTCUSDT&fromId=1&limit=1",
        sim.http_url()
    );
    let statuses = [
        reqwest::get(&url).await.unwrap(),
        reqwest::get(&url).await.unwrap(),
    ];
    assert_eq!(statuses[0].status().as_u16(), 200);
    assert_eq!(statuses[1].status().as_u16(), 429);
    assert!(statuses[1].headers().contains_key("retry-after"));
    let faults = sim.report().faults;
    assert_eq!((faults.http_requests, faults.http_429), (2, 1));
    sim.shutdown().await;
}

/// The WebSocket trade stream's report entry, once `check` holds for it.
async fn ws_stream(
    sim: &anode_feedsim::FeedSim,
    what: &str,
    check: impl Fn(&StreamReport) -> bool,
) -> StreamReport {
    eventually(what, || {
        let report = sim.report();
        let stream = report.streams.get("binance/adausdt@trade")?;
        check(stream).then(|| stream.clone())
    })
    .await
}

#[tokio::test]
async fn generated_covers_sent_and_backfilled_ids_count_as_sent() {
    let sim = start(fast_config()).await;
    let url = format!("{}/binance/ws/adausdt@trade", sim.ws_url());

    // A first connection receives a few trades and goes away.
    let mut first = connect(&url).await;
    let mut before = Vec::new();
    for _ in 0..5 {
        before.push(next_json(&mut first).await["t"].as_u64().unwrap());
    }
    drop(first);
    // Ids keep being generated with nobody subscribed: wait until the head is well past the
    // last id sent (which only happens once the server noticed the client left), then
    // reconnect.
    ws_stream(&sim, "a gap after the first connection", |s| {
        let sent = s.ranges.last().map_or(0, |&(_, last)| last);
        s.generated.is_some_and(|(_, last)| last >= sent + 20)
    })
    .await;
    let mut second = connect(&url).await;
    let after = next_json(&mut second).await["t"].as_u64().unwrap();
    sim.pause();
    let mut received: Vec<u64> = before.clone();
    received.push(after);
    for text in drain_until_quiet(&mut second).await {
        received.push(
            serde_json::from_str::<Value>(&text).unwrap()["t"]
                .as_u64()
                .unwrap(),
        );
    }
    let head = *received.last().unwrap();

    let report = ws_stream(&sim, "the second connection's ids", |s| s.contains(head)).await;
    let (first_id, last_id) = report.generated.expect("generated ids");
    assert_eq!(
        first_id, before[0],
        "generated starts where the first subscription did"
    );
    assert_eq!(last_id, head, "generated ends at the head");
    assert!(report.ranges.first().unwrap().0 >= first_id);
    assert!(report.ranges.last().unwrap().1 <= last_id);
    assert!(received.iter().all(|&id| report.contains(id)));
    assert_eq!(
        report.generated_ids().count() as u64,
        last_id - first_id + 1
    );
    let missing = report.missing();
    assert!(
        !missing.is_empty(),
        "no gap between the connections: {report:?}"
    );
    assert!(
        missing.iter().all(|&(a, b)| a > before[4] && b < after),
        "{missing:?} outside the gap {}..{after}",
        before[4]
    );
    let missing_count: u64 = missing.iter().map(|&(a, b)| b - a + 1).sum();
    assert_eq!(report.emitted + missing_count, last_id - first_id + 1);

    // Backfill exactly the missing ids over REST: afterwards nothing generated is missing.
    let base = sim.http_url();
    let mut backfilled = Vec::new();
    for &(a, b) in &missing {
        let mut from = a;
        while from <= b {
            let limit = (b - from + 1).min(1_000);
            let ids = history_ids(
                &base,
                &format!("symbol=ADAUSDT&fromId={from}&limit={limit}"),
            )
            .await;
            assert_eq!(ids, inclusive(from, from + limit - 1));
            backfilled.extend(ids);
            from += limit;
        }
    }
    let report = sim.report();
    let stream = &report.streams["binance/adausdt@trade"];
    assert_eq!(stream.generated, Some((first_id, last_id)));
    assert_eq!(stream.missing(), []);
    assert_eq!(stream.ranges, [(first_id, last_id)]);
    assert_eq!(stream.emitted, last_id - first_id + 1);
    let rest = &report.streams["binance-rest/ADAUSDT/trades"];
    assert!(backfilled.iter().all(|&id| rest.contains(id)));
    sim.shutdown().await;
}
