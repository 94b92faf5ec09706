//! Fault injection against a real simulator: drops, malformed and truncated frames, 429s,
//! slow responses.

mod common;

use std::time::{Duration, Instant};

use anode_feedsim::{Faults, SimConfig};
use common::*;
use serde_json::Value;

fn with_faults(faults: Faults) -> SimConfig {
    SimConfig {
        faults,
        ..fast_config()
    }
}

#[tokio::test]
async fn drop_every_closes_with_1001_after_n_messages() {
    let sim = start(with_faults(Faults {
        drop_every: Some(5),
        ..Faults::default()
    }))
    .await;
    let mut ws = connect(&format!("{}/binance/ws/btcusdt@trade", sim.ws_url())).await;
    let mut ids = Vec::new();
    let close = loop {
        match next_frame(&mut ws, DEADLINE).await {
            Some(Frame::Text(t)) => ids.push(
                serde_json::from_str::<Value>(&t).unwrap()["t"]
                    .as_u64()
                    .unwrap(),
            ),
            Some(Frame::Close(code, reason)) => break (code, reason),
            other => panic!("expected a close frame, got {other:?}"),
        }
        assert!(ids.len() <= 5, "more than 5 messages before the drop");
    };
    assert_eq!(close, (Some(1001), "simulated drop".to_string()));
    assert_eq!(ids.len(), 5);
    let report = sim.report();
    assert_eq!(report.faults.dropped_connections, 1);
    assert_eq!(report.faults.connections, 1);
    assert_eq!(report.streams["binance/btcusdt@trade"].ranges, ranges(&ids));
    sim.shutdown().await;
}

#[tokio::test]
async fn malformed_and_truncated_frames_are_extra_and_counted() {
    let faults = Faults {
        malformed_every: Some(3),
        truncated_every: Some(4),
        ..Faults::default()
    };
    let sim = start(with_faults(faults)).await;
    let mut ws = connect(&format!("{}/binance/ws/ethusdt@trade", sim.ws_url())).await;
    let (mut ids, mut broken) = (Vec::new(), Vec::new());
    let mut take = |text: String| match serde_json::from_str::<Value>(&text) {
        Ok(v) => ids.push(v["t"].as_u64().unwrap()),
        Err(_) => broken.push(text),
    };
    for _ in 0..40 {
        match next_frame(&mut ws, DEADLINE).await {
            Some(Frame::Text(t)) => take(t),
            other => panic!("expected text, got {other:?}"),
        }
    }
    sim.pause();
    drain_until_quiet(&mut ws)
        .await
        .into_iter()
        .for_each(&mut take);
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "extra frames consumed ids: {ids:?}"
    );
    let n = ids.len() as u64;
    let report = sim.report();
    assert_eq!(report.faults.malformed_frames, n / 3);
    assert_eq!(report.faults.truncated_frames, n / 4);
    assert_eq!(broken.len() as u64, n / 3 + n / 4);
    assert!(
        broken.iter().any(|b| b.starts_with(r#"{"e":"trade","E":"#)),
        "no truncated trade in {broken:?}"
    );
    assert_eq!(report.streams["binance/ethusdt@trade"].ranges, ranges(&ids));
    sim.shutdown().await;
}

#[tokio::test]
async fn http_429_every_nth_request_with_retry_after() {
    let faults = Faults {
        http_429_every: Some(3),
        retry_after_s: 2,
        ..Faults::default()
    };
    let sim = start(with_faults(faults)).await;
    let url = format!(
        "{}/binance/api/v3/ticker/price?symbol=BTCUSDT",
        sim.http_url()
    );
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let response = reqwest::get(&url).await.unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            assert_eq!(response.headers()["retry-after"], "2");
            let body: Value = response.json().await.unwrap();
            assert!(
                body["msg"].as_str().unwrap().contains("retry after 2 s"),
                "{body}"
            );
        }
    }
    assert_eq!(statuses, [200, 200, 429, 200, 200, 429]);
    let counts = sim.report().faults;
    assert_eq!((counts.http_429, counts.http_requests), (2, 6));
    // Health and report are not rate-limited.
    assert_eq!(
        reqwest::get(format!("{}/healthz", sim.http_url()))
            .await
            .unwrap()
            .status(),
        200
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn slow_every_nth_request_is_delayed() {
    let faults = Faults {
        slow_every: Some(2),
        slow_ms: 300,
        ..Faults::default()
    };
    let sim = start(with_faults(faults)).await;
    let url = format!("{}/evm/base", sim.http_url());
    let client = reqwest::Client::new();
    let body =
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": []});
    let mut took = Vec::new();
    for _ in 0..2 {
        let started = Instant::now();
        client
            .post(&url)
            .json(&body)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
        took.push(started.elapsed());
    }
    assert!(took[1] >= Duration::from_millis(300), "{took:?}");
    assert_eq!(sim.report().faults.slow_responses, 1);
    sim.shutdown().await;
}
