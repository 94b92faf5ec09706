//! HTTP endpoints against a real simulator: Binance REST, EVM JSON-RPC, control and report.

mod common;

use std::collections::BTreeMap;

use anode_feedsim::{Report, SimConfig};
use common::*;
use serde_json::{Value, json};

async fn rpc(client: &reqwest::Client, url: &str, body: Value) -> Value {
    client
        .post(url)
        .json(&body)
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON")
}

/// Trades 1..=head of a symbol from the REST endpoint, waiting until at least `min` exist.
async fn rest_trades(base: &str, symbol: &str, min: usize) -> Vec<Value> {
    let url = format!("{base}/binance/api/v3/trades?symbol={symbol}&limit=1000");
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (status, body) = get_json(&url).await;
        assert_eq!(status, 200, "{body}");
        let trades = body.as_array().unwrap().clone();
        if trades.len() >= min {
            return trades;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "fewer than {min} trades"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn rest_trades_are_reported_and_match_the_websocket_stream() {
    let sim = start(fast_config()).await;
    let mut ws = connect(&format!("{}/binance/ws/btcusdt@trade", sim.ws_url())).await;
    let live = next_json(&mut ws).await;
    let id = live["t"].as_u64().unwrap();

    let trades = rest_trades(&sim.http_url(), "BTCUSDT", id.max(3) as usize).await;
    let ids: Vec<u64> = trades.iter().map(|t| t["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    let same = trades
        .iter()
        .find(|t| t["id"] == id)
        .expect("the live trade id");
    assert_eq!(same["price"], live["p"]);
    assert_eq!(same["qty"], live["q"]);
    assert_eq!(same["isBuyerMaker"], live["m"]);
    assert_eq!(same["isBestMatch"], true);
    assert!(same["quoteQty"].is_string() && same["time"].is_u64());

    let (_, limited) = get_json(&format!(
        "{}/binance/api/v3/trades?symbol=btcusdt&limit=3",
        sim.http_url()
    ))
    .await;
    let limited = limited.as_array().unwrap();
    assert_eq!(limited.len(), 3);

    let report = sim.report();
    let rest = &report.streams["binance-rest/BTCUSDT/trades"];
    assert_eq!(rest.venue, "binance-rest");
    assert!(ids.iter().all(|&id| rest.contains(id)));
    assert!(
        limited
            .iter()
            .all(|t| rest.contains(t["id"].as_u64().unwrap()))
    );

    let (status, err) = get_json(&format!(
        "{}/binance/api/v3/trades?symbol=BTC-USDT",
        sim.http_url()
    ))
    .await;
    assert_eq!((status, err["code"].clone()), (400, json!(-1121)));
    let (status, _) = get_json(&format!(
        "{}/binance/api/v3/trades?symbol=BTCUSDT&limit=5000",
        sim.http_url()
    ))
    .await;
    assert_eq!(status, 400);
    sim.shutdown().await;
}

#[tokio::test]
async fn ticker_price_for_one_symbol_and_for_all_seen() {
    let sim = start(fast_config()).await;
    let (status, one) = get_json(&format!(
        "{}/binance/api/v3/ticker/price?symbol=ETHUSDT",
        sim.http_url()
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(one["symbol"], "ETHUSDT");
    let price = one["price"].as_str().unwrap();
    assert_eq!(price.split('.').nth(1).map(str::len), Some(8), "{price}");
    assert!(price.parse::<f64>().unwrap() > 1_000.0);
    let (_, all) = get_json(&format!("{}/binance/api/v3/ticker/price", sim.http_url())).await;
    let symbols: Vec<_> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["symbol"].clone())
        .collect();
    assert_eq!(symbols, [json!("ETHUSDT")]);
    sim.shutdown().await;
}

#[tokio::test]
async fn evm_blocks_grow_chain_by_parent_hash_and_batch() {
    let sim = start(SimConfig {
        block_interval_ms: 50,
        ..fast_config()
    })
    .await;
    let url = format!("{}/evm/ethereum", sim.http_url());
    let client = reqwest::Client::new();
    let number = |v: &Value| {
        u64::from_str_radix(v["result"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
    };
    let call = |method: &str, params: Value| json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});

    let first = number(&rpc(&client, &url, call("eth_blockNumber", json!([]))).await);
    assert!(first >= 19_000_000);
    let until = tokio::time::Instant::now() + DEADLINE;
    let head = loop {
        let n = number(&rpc(&client, &url, call("eth_blockNumber", json!([]))).await);
        if n > first {
            break n;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "block number did not grow"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };

    let block = |n: u64| call("eth_getBlockByNumber", json!([format!("{n:#x}"), false]));
    let child = rpc(&client, &url, block(head)).await["result"].clone();
    let parent = rpc(&client, &url, block(head - 1)).await["result"].clone();
    assert_eq!(child["parentHash"], parent["hash"]);
    assert_eq!(child["number"], format!("{head:#x}"));
    for field in ["timestamp", "miner", "gasUsed", "gasLimit", "baseFeePerGas"] {
        assert!(child[field].as_str().unwrap().starts_with("0x"), "{field}");
    }
    assert!(child["transactions"].as_array().unwrap().len() <= 5);
    assert_eq!(
        rpc(&client, &url, block(head + 1_000_000)).await["result"],
        Value::Null
    );
    let latest = rpc(
        &client,
        &url,
        call("eth_getBlockByNumber", json!(["latest", false])),
    )
    .await;
    assert!(number(&json!({"result": latest["result"]["number"]})) >= head);

    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []},
        {"jsonrpc": "2.0", "id": 2, "method": "eth_blockNumber", "params": []},
        {"jsonrpc": "2.0", "id": 3, "method": "eth_sendRawTransaction", "params": ["0x00"]},
    ]);
    let answers = rpc(&client, &url, batch).await;
    let answers = answers.as_array().expect("batch answer");
    assert_eq!(answers[0]["result"], "0x1");
    assert_eq!(answers[1]["id"], 2);
    assert_eq!(answers[2]["error"]["code"], -32601);
    let bad = rpc(&client, &url, json!("nope")).await;
    assert_eq!(bad["error"]["code"], -32600);

    let report = sim.report();
    let blocks = &report.streams["evm/ethereum/blocks"];
    assert_eq!(blocks.kind, "blocks");
    assert!(blocks.contains(head) && blocks.contains(head - 1));
    assert!(!blocks.contains(head + 1_000_000));
    sim.shutdown().await;
}

#[tokio::test]
async fn healthz_control_and_report_over_http() {
    let sim = start(fast_config()).await;
    let base = sim.http_url();
    assert_eq!(
        reqwest::get(format!("{base}/healthz"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok"
    );
    let report = control(&base, "pause").await;
    assert!(report.paused);
    assert_eq!(report.seed, 1);
    // Paused: the head is frozen, so the trade list does not change.
    let trades = |base: String| async move {
        get_json(&format!(
            "{base}/binance/api/v3/trades?symbol=BTCUSDT&limit=1000"
        ))
        .await
        .1
    };
    let before = trades(base.clone()).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(trades(base.clone()).await, before);
    let report = control(&base, "resume").await;
    assert!(!report.paused);
    assert!(report.streams.contains_key("binance-rest/BTCUSDT/trades"));
    assert_eq!(report.faults.http_requests, 2);
    sim.shutdown().await;
}

#[tokio::test]
async fn same_seed_gives_the_same_trades_and_another_seed_does_not() {
    let contents = |trades: Vec<Value>| -> BTreeMap<u64, (Value, Value, Value)> {
        trades
            .into_iter()
            .map(|t| {
                (
                    t["id"].as_u64().unwrap(),
                    (
                        t["price"].clone(),
                        t["qty"].clone(),
                        t["isBuyerMaker"].clone(),
                    ),
                )
            })
            .collect()
    };
    let mut runs = Vec::new();
    for seed in [42, 42, 43] {
        let sim = start(SimConfig {
            seed,
            ..fast_config()
        })
        .await;
        runs.push(contents(rest_trades(&sim.http_url(), "BTCUSDT", 10).await));
        sim.shutdown().await;
    }
    let common: Vec<u64> = runs[0]
        .keys()
        .filter(|id| runs[1].contains_key(id))
        .take(10)
        .copied()
        .collect();
    assert_eq!(common.len(), 10);
    for id in &common {
        assert_eq!(runs[0][id], runs[1][id], "trade {id}");
    }
    assert!(
        common
            .iter()
            .any(|id| runs[2].get(id) != Some(&runs[0][id]))
    );
}

/// `POST /control/<action>`, then the report as a client reads it over HTTP.
async fn control(base: &str, action: &str) -> Report {
    reqwest::Client::new()
        .post(format!("{base}/control/{action}"))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    reqwest::get(format!("{base}/report"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
