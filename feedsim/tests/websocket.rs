//! WebSocket venues against a real simulator on loopback: Binance, Coinbase, Kraken.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use anode_feedsim::SimConfig;
use common::*;
use serde_json::{Value, json};

fn trade_ids(messages: &[String]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| {
            serde_json::from_str::<Value>(m).expect("JSON")["t"]
                .as_u64()
                .expect("trade id")
        })
        .collect()
}

fn assert_consecutive(ids: &[u64]) {
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "ids not consecutive: {ids:?}"
    );
}

#[tokio::test]
async fn raw_binance_stream_report_equals_what_the_client_received() {
    let sim = start(fast_config()).await;
    let mut ws = connect(&format!("{}/binance/ws/btcusdt@trade", sim.ws_url())).await;
    let mut received = Vec::new();
    for _ in 0..30 {
        let v = next_json(&mut ws).await;
        assert_eq!(v["e"], "trade");
        assert_eq!(v["s"], "BTCUSDT");
        assert_eq!(v["M"], true);
        assert!(v["p"].as_str().unwrap().parse::<f64>().unwrap() > 0.0);
        assert!(v["q"].as_str().unwrap().parse::<f64>().unwrap() > 0.0);
        assert!(v["E"].as_u64().unwrap() > 1_600_000_000_000 && v["m"].is_boolean());
        received.push(v["t"].as_u64().unwrap());
    }
    sim.pause();
    received.extend(trade_ids(&drain_until_quiet(&mut ws).await));
    assert_consecutive(&received);
    let expected = ranges(&received);
    let report = eventually("report to match the client", || {
        let r = sim.report();
        let s = r.streams.get("binance/btcusdt@trade")?.clone();
        (s.ranges == expected).then_some(s)
    })
    .await;
    assert!(sim.report().paused);
    assert_eq!(report.emitted, received.len() as u64);
    assert_eq!(
        (report.venue.as_str(), report.kind.as_str()),
        ("binance", "trades")
    );
    assert!(received.iter().all(|&id| report.contains(id)));
    assert_eq!(report.ids().collect::<Vec<_>>(), received);
    // The send clock: µs times, in the order the trades went out, none after now.
    let clock = sim.emit_clock();
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let times: Vec<u64> = received
        .iter()
        .map(|&id| {
            clock
                .sent_us("binance/btcusdt@trade", id)
                .expect("a send time")
        })
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    assert!(*times.last().unwrap() <= now_us);
    assert!(times.iter().any(|t| t % 1000 != 0), "µs, not ms: {times:?}");
    assert_eq!(clock.sent_us("binance/btcusdt@trade", u64::MAX), None);
    assert_eq!(clock.sent_us("binance/nosuch@trade", received[0]), None);
    sim.shutdown().await;
}

#[tokio::test]
async fn combined_stream_wraps_each_trade_with_its_stream_name() {
    let sim = start(fast_config()).await;
    let url = format!(
        "{}/binance/stream?streams=btcusdt@trade/ethusdt@trade",
        sim.ws_url()
    );
    let mut ws = connect(&url).await;
    let mut per_stream: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for _ in 0..40 {
        let v = next_json(&mut ws).await;
        let stream = v["stream"].as_str().expect("stream").to_string();
        let symbol = stream.trim_end_matches("@trade").to_ascii_uppercase();
        assert_eq!(v["data"]["s"], symbol.as_str());
        per_stream
            .entry(stream)
            .or_default()
            .push(v["data"]["t"].as_u64().unwrap());
    }
    assert_eq!(
        per_stream.keys().collect::<Vec<_>>(),
        ["btcusdt@trade", "ethusdt@trade"]
    );
    per_stream.values().for_each(|ids| assert_consecutive(ids));
    sim.shutdown().await;
}

#[tokio::test]
async fn subscribe_and_unsubscribe_on_an_open_connection() {
    let sim = start(fast_config()).await;
    let mut ws = connect(&format!("{}/binance/ws", sim.ws_url())).await;
    send_json(
        &mut ws,
        json!({"method": "SUBSCRIBE", "params": ["solusdt@trade"], "id": 1}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await, json!({"result": null, "id": 1}));
    let mut ids = Vec::new();
    for _ in 0..10 {
        let v = next_json(&mut ws).await;
        assert_eq!(v["s"], "SOLUSDT");
        ids.push(v["t"].as_u64().unwrap());
    }
    assert_consecutive(&ids);

    send_json(
        &mut ws,
        json!({"method": "UNSUBSCRIBE", "params": ["solusdt@trade"], "id": 2}),
    )
    .await;
    next_matching(&mut ws, |v| v["id"] == 2 && v["result"].is_null()).await;
    let after = drain_until_quiet(&mut ws).await;
    assert!(after.is_empty(), "trades after UNSUBSCRIBE: {after:?}");

    // Bad input gets an error frame and the connection stays usable.
    send_json(
        &mut ws,
        json!({"method": "SUBSCRIBE", "params": ["solusdt@depth"], "id": 3}),
    )
    .await;
    let err = next_json(&mut ws).await;
    assert_eq!(err["id"], 3);
    assert!(
        err["error"]["msg"]
            .as_str()
            .unwrap()
            .contains("unknown stream"),
        "{err}"
    );
    futures_util::SinkExt::send(&mut ws, "{nope".into())
        .await
        .unwrap();
    let err = next_json(&mut ws).await;
    assert_eq!(err["error"]["code"], 3, "{err}");
    send_json(
        &mut ws,
        json!({"method": "SUBSCRIBE", "params": ["bnbusdt@trade"], "id": 4}),
    )
    .await;
    next_matching(&mut ws, |v| v["s"] == "BNBUSDT").await;
    sim.shutdown().await;
}

#[tokio::test]
async fn unknown_raw_stream_gets_an_error_and_a_close() {
    let sim = start(fast_config()).await;
    let mut ws = connect(&format!("{}/binance/ws/btcusdt@kline_1m", sim.ws_url())).await;
    let err = next_json(&mut ws).await;
    assert!(
        err["error"]["msg"]
            .as_str()
            .unwrap()
            .contains("btcusdt@kline_1m"),
        "{err}"
    );
    match next_frame(&mut ws, DEADLINE).await {
        Some(Frame::Close(Some(1008), _)) => {}
        other => panic!("expected close 1008, got {other:?}"),
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn streams_beyond_max_streams_are_refused_with_a_message() {
    let sim = start(SimConfig {
        max_streams: 1,
        ..fast_config()
    })
    .await;
    let mut ws = connect(&format!("{}/binance/ws", sim.ws_url())).await;
    send_json(
        &mut ws,
        json!({"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 1}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["id"], 1);
    send_json(
        &mut ws,
        json!({"method": "SUBSCRIBE", "params": ["ethusdt@trade"], "id": 2}),
    )
    .await;
    let err = next_matching(&mut ws, |v| v["id"] == 2).await;
    assert!(
        err["error"]["msg"]
            .as_str()
            .unwrap()
            .contains("stream limit"),
        "{err}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn coinbase_subscribe_then_matches_tickers_and_heartbeats() {
    let sim = start(fast_config()).await;
    let mut ws = connect(&format!("{}/coinbase", sim.ws_url())).await;
    send_json(
        &mut ws,
        json!({"type": "subscribe", "product_ids": ["ETH-USD"],
               "channels": ["matches", "heartbeat", {"name": "ticker", "product_ids": ["ETH-USD"]}]}),
    )
    .await;
    let subs = next_json(&mut ws).await;
    assert_eq!(subs["type"], "subscriptions");
    let names: Vec<_> = subs["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].clone())
        .collect();
    assert_eq!(
        names,
        [json!("heartbeat"), json!("matches"), json!("ticker")]
    );

    let (mut matches, mut tickers, mut heartbeat) = (Vec::new(), Vec::new(), false);
    let until = tokio::time::Instant::now() + DEADLINE;
    while (matches.len() < 20 || !heartbeat) && tokio::time::Instant::now() < until {
        let v = next_json(&mut ws).await;
        match v["type"].as_str().unwrap() {
            "match" => {
                let n = v["trade_id"].as_u64().unwrap();
                assert_eq!(v["sequence"], 2 * n);
                assert_eq!(v["product_id"], "ETH-USD");
                assert_eq!(v["maker_order_id"].as_str().unwrap().len(), 36);
                assert!(v["time"].as_str().unwrap().ends_with('Z'));
                assert!(matches!(v["side"].as_str(), Some("buy" | "sell")));
                assert!(v["price"].as_str().unwrap().parse::<f64>().is_ok());
                matches.push(n);
            }
            "ticker" => {
                let n = v["trade_id"].as_u64().unwrap();
                assert_eq!(v["sequence"], 2 * n + 1);
                assert_eq!(matches.last(), Some(&n), "ticker {n} before its match");
                for field in [
                    "best_bid",
                    "best_ask",
                    "open_24h",
                    "volume_30d",
                    "last_size",
                ] {
                    assert!(v[field].is_string(), "{field} in {v}");
                }
                tickers.push(n);
            }
            "heartbeat" => {
                assert_eq!(v["product_id"], "ETH-USD");
                heartbeat = true;
            }
            other => panic!("unexpected message type {other}: {v}"),
        }
    }
    assert!(heartbeat && matches.len() >= 20);
    assert_consecutive(&matches);
    assert_consecutive(&tickers);
    sim.pause();
    drain_until_quiet(&mut ws).await;
    let report = sim.report();
    for stream in ["coinbase/ETH-USD/matches", "coinbase/ETH-USD/ticker"] {
        assert!(report.streams[stream].contains(matches[0]), "{stream}");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn coinbase_without_subscribe_gets_an_error_and_is_closed() {
    let sim = start(SimConfig {
        coinbase_subscribe_timeout_ms: 200,
        ..fast_config()
    })
    .await;
    let mut ws = connect(&format!("{}/coinbase", sim.ws_url())).await;
    let err = next_json(&mut ws).await;
    assert_eq!(err["type"], "error");
    assert_eq!(err["message"], "Failed to subscribe");
    assert!(
        err["reason"].as_str().unwrap().contains("subscribe within"),
        "{err}"
    );
    assert!(matches!(
        next_frame(&mut ws, DEADLINE).await,
        Some(Frame::Close(..) | Frame::Ended)
    ));
    sim.shutdown().await;
}

#[tokio::test]
async fn kraken_ack_snapshot_then_updates_with_unique_timestamps() {
    let sim = start(fast_config()).await;
    let http = format!(
        "{}/binance/api/v3/trades?symbol=BTCUSDT&limit=1",
        sim.http_url()
    );
    // Wait until events exist so that the subscription starts with a snapshot.
    let until = tokio::time::Instant::now() + DEADLINE;
    while reqwest::get(&http)
        .await
        .unwrap()
        .json::<Vec<Value>>()
        .await
        .unwrap()
        .is_empty()
    {
        assert!(tokio::time::Instant::now() < until, "no events");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut ws = connect(&format!("{}/kraken/v2", sim.ws_url())).await;
    assert_eq!(next_json(&mut ws).await["channel"], "status");
    send_json(
        &mut ws,
        json!({"method": "subscribe", "params": {"channel": "ticker", "symbol": ["BTC/USD"]}, "req_id": 7}),
    )
    .await;
    let ack = next_json(&mut ws).await;
    assert_eq!(ack["method"], "subscribe");
    assert_eq!(ack["success"], true);
    assert_eq!(ack["req_id"], 7);
    assert_eq!(
        ack["result"],
        json!({"channel": "ticker", "symbol": "BTC/USD", "snapshot": true, "event_trigger": "trades"})
    );
    assert!(ack["time_in"].is_string() && ack["time_out"].is_string());

    let mut timestamps = Vec::new();
    let mut heartbeat = false;
    let until = tokio::time::Instant::now() + DEADLINE;
    while (timestamps.len() < 20 || !heartbeat) && tokio::time::Instant::now() < until {
        let v = next_json(&mut ws).await;
        if v["channel"] == "heartbeat" {
            heartbeat = true;
            continue;
        }
        assert_eq!(v["channel"], "ticker");
        let expected = if timestamps.is_empty() {
            "snapshot"
        } else {
            "update"
        };
        assert_eq!(v["type"], expected, "{v}");
        let data = &v["data"][0];
        for field in [
            "bid",
            "bid_qty",
            "ask",
            "ask_qty",
            "last",
            "volume",
            "vwap",
            "low",
            "high",
            "change",
            "change_pct",
        ] {
            assert!(data[field].is_number(), "{field} in {v}");
        }
        assert!(data["bid"].as_f64() < data["ask"].as_f64());
        assert_eq!(data["symbol"], "BTC/USD");
        timestamps.push(data["timestamp"].as_str().unwrap().to_string());
    }
    assert!(heartbeat && timestamps.len() >= 20);
    assert!(
        timestamps.windows(2).all(|w| w[0] < w[1]),
        "timestamps not strictly increasing: {timestamps:?}"
    );
    assert_eq!(timestamps[0].len(), "2023-09-25T09:04:31.742648Z".len());
    sim.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_open_connections_and_returns() {
    let sim = start(fast_config()).await;
    let mut ws = connect(&format!("{}/binance/ws/btcusdt@trade", sim.ws_url())).await;
    next_json(&mut ws).await;
    tokio::time::timeout(DEADLINE, sim.shutdown())
        .await
        .expect("shutdown in time");
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        match next_frame(&mut ws, DEADLINE).await {
            Some(Frame::Text(_)) => assert!(tokio::time::Instant::now() < until),
            Some(Frame::Close(..) | Frame::Ended) => break,
            None => panic!("connection still open after shutdown"),
        }
    }
}

#[tokio::test]
async fn a_thousand_streams_on_one_connection_are_all_reported_exactly() {
    const STREAMS: usize = 1_000;
    let sim = start(SimConfig {
        rate_per_stream: 5.0,
        ..fast_config()
    })
    .await;
    let mut ws = connect(&format!("{}/binance/stream", sim.ws_url())).await;
    let params: Vec<String> = (0..STREAMS).map(|i| format!("sym{i}usdt@trade")).collect();
    send_json(
        &mut ws,
        json!({"method": "SUBSCRIBE", "params": params, "id": 1}),
    )
    .await;
    next_matching(&mut ws, |v| v["id"] == 1).await;
    let mut per_stream: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut add = |v: Value| {
        let name = format!("binance/{}", v["stream"].as_str().unwrap());
        per_stream
            .entry(name)
            .or_default()
            .push(v["data"]["t"].as_u64().unwrap());
    };
    for _ in 0..2 * STREAMS {
        add(next_json(&mut ws).await);
    }
    sim.pause();
    for text in drain_until_quiet(&mut ws).await {
        add(serde_json::from_str(&text).unwrap());
    }
    assert_eq!(per_stream.len(), STREAMS);
    let report = eventually("report to match every stream", || {
        let r = sim.report();
        per_stream
            .iter()
            .all(|(name, ids)| r.streams.get(name).is_some_and(|s| s.ranges == ranges(ids)))
            .then_some(r)
    })
    .await;
    assert_eq!(report.streams.len(), STREAMS);
    per_stream.values().for_each(|ids| assert_consecutive(ids));
    sim.shutdown().await;
}

#[tokio::test]
async fn every_connection_on_a_stream_gets_every_event_and_pings_arrive() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;

    let sim = start(SimConfig {
        ping_interval_ms: 50,
        ..fast_config()
    })
    .await;
    let url = format!("{}/binance/ws/xrpusdt@trade", sim.ws_url());
    let (mut a, mut b) = (connect(&url).await, connect(&url).await);
    let (mut ids_a, mut ids_b, mut pinged) = (Vec::new(), Vec::new(), false);
    let until = tokio::time::Instant::now() + DEADLINE;
    while (ids_a.len() < 20 || !pinged) && tokio::time::Instant::now() < until {
        match tokio::time::timeout(DEADLINE, a.next()).await.unwrap() {
            Some(Ok(Message::Ping(_))) => pinged = true,
            Some(Ok(Message::Text(t))) => ids_a.push(
                serde_json::from_str::<Value>(&t).unwrap()["t"]
                    .as_u64()
                    .unwrap(),
            ),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pinged, "no server ping");
    // b started with a at (about) the same head, so it needs at most as many messages plus slack.
    for _ in 0..ids_a.len() + 100 {
        if ids_b.last() >= ids_a.last() {
            break;
        }
        ids_b.push(next_json(&mut b).await["t"].as_u64().unwrap());
    }
    assert!(ids_b.last() >= ids_a.last());
    assert_consecutive(&ids_a);
    assert_consecutive(&ids_b);
    let stream = &sim.report().streams["binance/xrpusdt@trade"];
    assert!(ids_a.iter().chain(&ids_b).all(|&id| stream.contains(id)));
    sim.shutdown().await;
}

/// Segments this socket has received so far (Linux `TCP_INFO`).
fn segments_in(fd: std::os::fd::RawFd) -> u32 {
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a writable tcp_info of `len` bytes and `fd` is an open socket.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info.tcpi_segs_in
}

/// The trades due on a connection at one wake leave in one write, as a venue sends what it
/// has: with `TCP_NODELAY` on (as the simulator sets it) a write per frame would be a TCP
/// segment per frame, so the client counts segments against frames.
#[tokio::test]
async fn what_is_due_at_one_wake_leaves_in_one_write() {
    use std::os::fd::AsRawFd;
    // About 80 trades due at each 20 ms wake.
    let sim = start(SimConfig {
        rate_per_stream: 4_000.0,
        tick_ms: 20,
        ..SimConfig::default()
    })
    .await;
    let tcp = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    let fd = tcp.as_raw_fd();
    let url = format!("{}/binance/ws/btcusdt@trade", sim.ws_url());
    let (mut ws, _) = tokio::time::timeout(
        DEADLINE,
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(tcp)),
    )
    .await
    .expect("handshake in time")
    .expect("handshake");
    // Count from the first trade on, past the handshake's segments.
    next_json(&mut ws).await;
    let before = segments_in(fd);
    let mut frames = 0u32;
    while frames < 2_000 {
        assert_eq!(next_json(&mut ws).await["e"], "trade");
        frames += 1;
    }
    let segments = segments_in(fd) - before;
    assert!(
        frames >= 8 * segments,
        "{frames} frames came in {segments} segments: the simulator writes frame by frame"
    );
}
