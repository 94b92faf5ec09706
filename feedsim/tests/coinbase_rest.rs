//! Coinbase REST `products/{product_id}/trades` against a real simulator: pages newest first
//! below `after`, trades equal to the WebSocket `match` messages with the same trade id, limit
//! bounds and errors, the retention window, the fault layer, and served ids counting as sent
//! for the `matches` stream.

mod common;

use anode_feedsim::{Faults, FeedSim, SimConfig, StreamReport};
use common::*;
use serde_json::{Value, json};

/// One answer of the route: status, `(cb-before, cb-after)` if present, and the JSON body.
struct Page {
    status: u16,
    cursors: Option<(u64, u64)>,
    body: Value,
}

async fn page(base: &str, product: &str, query: &str) -> Page {
    let url = format!("{base}/coinbase/products/{product}/trades?{query}");
    let response = reqwest::get(&url).await.expect("GET");
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().parse::<u64>().unwrap())
    };
    let cursors = match (header("cb-before"), header("cb-after")) {
        (Some(before), Some(after)) => Some((before, after)),
        (None, None) => None,
        other => panic!("only one cursor header: {other:?}"),
    };
    let body = response.json().await.expect("JSON body");
    Page {
        status,
        cursors,
        body,
    }
}

/// A successful page as its trade ids, checking the cursor headers against them.
async fn page_ids(base: &str, product: &str, query: &str) -> Vec<u64> {
    let p = page(base, product, query).await;
    assert_eq!(p.status, 200, "{query}: {}", p.body);
    let ids: Vec<u64> = p
        .body
        .as_array()
        .expect("an array")
        .iter()
        .map(|t| t["trade_id"].as_u64().expect("trade_id"))
        .collect();
    let expected = (!ids.is_empty()).then(|| (ids[0], *ids.last().unwrap()));
    assert_eq!(
        p.cursors, expected,
        "{query}: cb-before/cb-after of {ids:?}"
    );
    ids
}

/// `first` down to `last`, newest first.
fn down(first: u64, last: u64) -> Vec<u64> {
    (last..=first).rev().collect()
}

/// Waits until the head reaches `min`, pauses the simulator and returns the frozen head.
async fn paused_head(sim: &FeedSim, product: &str, min: u64) -> u64 {
    let base = sim.http_url();
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let latest = page_ids(&base, product, "limit=1").await;
        if latest.first().is_some_and(|&id| id >= min) {
            break;
        }
        assert!(tokio::time::Instant::now() < until, "head below {min}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    sim.pause();
    page_ids(&base, product, "limit=1").await[0]
}

async fn subscribe_matches(sim: &FeedSim, product: &str) -> Ws {
    let mut ws = connect(&format!("{}/coinbase", sim.ws_url())).await;
    send_json(
        &mut ws,
        json!({"type": "subscribe", "product_ids": [product], "channels": ["matches"]}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "subscriptions");
    ws
}

#[tokio::test]
async fn trades_equal_the_match_messages_with_the_same_trade_id() {
    let sim = start(fast_config()).await;
    let mut ws = subscribe_matches(&sim, "BTC-USD").await;
    let mut live = Vec::new();
    while live.len() < 10 {
        live.push(next_matching(&mut ws, |v| v["type"] == "match").await);
    }
    let first = live[0]["trade_id"].as_u64().unwrap();
    let last = live[9]["trade_id"].as_u64().unwrap();
    assert_eq!(last, first + 9, "consecutive matches");
    // Every match sent is at or below the head, so the page below `last + 1` holds all ten.
    let p = page(
        &sim.http_url(),
        "BTC-USD",
        &format!("after={}&limit=10", last + 1),
    )
    .await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert_eq!(p.cursors, Some((last, first)));
    let trades = p.body.as_array().unwrap();
    assert_eq!(trades.len(), 10);
    for (rest, ws) in trades.iter().zip(live.iter().rev()) {
        let id = &ws["trade_id"];
        assert_eq!(rest["trade_id"], *id);
        assert_eq!(rest["price"], ws["price"], "price of {id}");
        assert_eq!(rest["size"], ws["size"], "size of {id}");
        assert_eq!(rest["side"], ws["side"], "side of {id}");
        assert_eq!(rest["time"], ws["time"], "time of {id}");
        let time = rest["time"].as_str().unwrap();
        assert_eq!(time.len(), "2023-09-25T09:04:31.742648Z".len(), "{time}");
        let mut keys: Vec<&str> = rest
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["price", "side", "size", "time", "trade_id"]);
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn pages_below_after_limits_and_errors() {
    let sim = start(SimConfig {
        rate_per_stream: 5_000.0,
        ..fast_config()
    })
    .await;
    let base = sim.http_url();
    let head = paused_head(&sim, "ETH-USD", 1_500).await;
    let ids = |query: &'static str| page_ids(&base, "ETH-USD", query);

    assert_eq!(ids("").await, down(head, head - 99), "default limit 100");
    assert_eq!(ids("limit=1000").await, down(head, head - 999), "max limit");
    assert_eq!(ids("limit=1").await, [head]);
    assert_eq!(ids("after=500&limit=10").await, down(499, 490));
    assert_eq!(ids("after=500").await, down(499, 400), "default limit");
    assert_eq!(ids("after=1200&limit=1000").await, down(1_199, 200));
    assert_eq!(ids("after=5&limit=10").await, down(4, 1), "ids start at 1");
    assert_eq!(ids("after=1").await, Vec::<u64>::new(), "nothing below 1");
    assert_eq!(ids("after=0").await, Vec::<u64>::new());
    let lower = page_ids(&base, "eth-usd", "after=500&limit=3").await;
    assert_eq!(lower, down(499, 497), "lowercase product id");
    for after in [head + 1, head + 1_000, u64::MAX] {
        let got = page_ids(&base, "ETH-USD", &format!("after={after}&limit=3")).await;
        assert_eq!(
            got,
            down(head, head - 2),
            "after {after} past the head {head}"
        );
    }
    // Following `cb-after` walks back without gaps or overlaps.
    let mut walked = Vec::new();
    let mut cursor = head + 1;
    for _ in 0..4 {
        let p = page(&base, "ETH-USD", &format!("after={cursor}&limit=7")).await;
        let (before, after) = p.cursors.expect("cursors");
        assert_eq!(before, cursor - 1);
        walked.extend(down(before, after));
        cursor = after;
    }
    assert_eq!(walked, down(head, head - 27));

    let cases = [
        ("ETH-USD", "limit=0"),
        ("ETH-USD", "limit=1001"),
        ("ETH-USD", "limit=ten"),
        ("ETH-USD", "limit=-1"),
        ("ETH-USD", "after=-1"),
        ("ETH-USD", "after=abc"),
        ("ETH-USD", "after="),
        ("ETHUSD", ""),
        ("ETH-", "limit=5"),
        ("ETH-US$D", ""),
    ];
    for (product, query) in cases {
        let p = page(&base, product, query).await;
        assert_eq!(p.status, 400, "{product}?{query}: {}", p.body);
        assert!(p.cursors.is_none());
        let message = p.body["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{product}?{query}: {}", p.body);
        assert_eq!(p.body.as_object().unwrap().len(), 1, "{}", p.body);
    }
    for path in ["ETH-USD/tradez", "ETH-USD", "ETHUSD/book"] {
        let (status, body) = get_json(&format!("{base}/coinbase/products/{path}")).await;
        assert_eq!(
            (status, body),
            (404, json!({"message": "NotFound"})),
            "{path}"
        );
    }
    let deeper = reqwest::get(format!("{base}/coinbase/products/ETH-USD/trades/1"))
        .await
        .unwrap();
    assert_eq!(deeper.status().as_u16(), 404);
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
    let head = paused_head(&sim, "SOL-USD", 3 * RETENTION).await;
    let oldest = head - RETENTION + 1;
    let ids = |query: String| {
        let base = base.clone();
        async move { page_ids(&base, "SOL-USD", &query).await }
    };

    assert_eq!(
        ids("limit=1000".into()).await,
        down(head, oldest),
        "the window"
    );
    assert_eq!(
        ids(format!("after={}&limit=10", oldest + 5)).await,
        down(oldest + 4, oldest),
        "the page stops at the window"
    );
    assert_eq!(
        ids(format!("after={}&limit=10", oldest + 20)).await,
        down(oldest + 19, oldest + 10)
    );
    for after in [oldest, oldest - 1, 10, 1] {
        assert_eq!(
            ids(format!("after={after}")).await,
            Vec::<u64>::new(),
            "after {after}"
        );
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn trades_count_as_http_requests_and_get_coinbase_shaped_429s() {
    let sim = start(SimConfig {
        faults: Faults {
            http_429_every: Some(2),
            ..Faults::default()
        },
        ..fast_config()
    })
    .await;
    let base = sim.http_url();
    let first = page(&base, "BTC-USD", "limit=1").await;
    let second = page(&base, "BTC-USD", "limit=1").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(second.status, 429);
    assert!(
        second.body["message"]
            .as_str()
            .is_some_and(|m| m.contains("Too many requests")),
        "{}",
        second.body
    );
    let response = reqwest::get(format!("{base}/coinbase/products/BTC-USD/trades"))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let response = reqwest::get(format!("{base}/coinbase/products/BTC-USD/trades"))
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    assert!(response.headers().contains_key("retry-after"));
    let faults = sim.report().faults;
    assert_eq!((faults.http_requests, faults.http_429), (4, 2));
    sim.shutdown().await;
}

/// The `matches` stream's report entry, once `check` holds for it.
async fn matches_stream(
    sim: &FeedSim,
    what: &str,
    check: impl Fn(&StreamReport) -> bool,
) -> StreamReport {
    eventually(what, || {
        let report = sim.report();
        let stream = report.streams.get("coinbase/ADA-USD/matches")?;
        check(stream).then(|| stream.clone())
    })
    .await
}

#[tokio::test]
async fn served_ids_count_as_sent_for_the_matches_stream() {
    let sim = start(fast_config()).await;
    let base = sim.http_url();

    // REST alone creates the stream and records exactly the page served (the head is the
    // same for every product, so waiting for it on another one records nothing here).
    paused_head(&sim, "DOGE-USD", 120).await;
    assert!(
        !sim.report()
            .streams
            .contains_key("coinbase/XRP-USD/matches")
    );
    let ids = page_ids(&base, "XRP-USD", "after=101&limit=50").await;
    assert_eq!(ids, down(100, 51));
    let report = sim.report();
    let stream = &report.streams["coinbase/XRP-USD/matches"];
    assert_eq!(stream.ranges, [(51, 100)]);
    assert_eq!(stream.emitted, 50);
    sim.resume();

    // A WebSocket client receives a few matches and goes away; REST fills the rest.
    let mut ws = subscribe_matches(&sim, "ADA-USD").await;
    let mut received = Vec::new();
    while received.len() < 5 {
        let m = next_matching(&mut ws, |v| v["type"] == "match").await;
        received.push(m["trade_id"].as_u64().unwrap());
    }
    drop(ws);
    // Wait until the head is well past the last id sent (once the server noticed the client
    // left), then freeze it.
    matches_stream(&sim, "a gap after the connection", |s| {
        let sent = s.ranges.last().map_or(0, |&(_, last)| last);
        s.generated.is_some_and(|(_, last)| last >= sent + 20)
    })
    .await;
    sim.pause();
    let report = matches_stream(&sim, "the paused report", |_| true).await;
    let (first_id, last_id) = report.generated.expect("generated ids");
    assert_eq!(
        first_id, received[0],
        "generated starts at the subscription"
    );
    assert!(received.iter().all(|&id| report.contains(id)));
    let missing = report.missing();
    assert!(!missing.is_empty(), "no gap: {report:?}");
    for &(a, b) in &missing {
        let mut after = b + 1;
        while after > a {
            let limit = (after - a).min(1_000);
            let got = page_ids(&base, "ADA-USD", &format!("after={after}&limit={limit}")).await;
            assert_eq!(got, down(after - 1, after - limit));
            after -= limit;
        }
    }
    let report = sim.report();
    let stream = &report.streams["coinbase/ADA-USD/matches"];
    assert_eq!(stream.generated, Some((first_id, last_id)));
    assert_eq!(stream.missing(), []);
    assert_eq!(stream.ranges, [(first_id, last_id)]);
    assert_eq!(stream.emitted, last_id - first_id + 1);
    sim.shutdown().await;
}
