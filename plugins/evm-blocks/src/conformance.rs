//! Conformance to answers real Ethereum nodes gave (the corpus in `shared/realframes`, see its
//! `SOURCES.md`: Erigon, Parity and Geth; blocks from genesis through pre-London, London,
//! Shanghai and Cancun, with full transactions or hashes only, and `null` answers): each block
//! is the block the node described, field by field, and a `null` answer is "not there yet",
//! neither an event nor an error.

use anode_plugin_sdk::testing;
use serde_json::Value;

use super::*;

/// Answer `body` for block `number` to a connector that asked for it; the output.
fn answered(number: u64, body: &str) -> Output {
    let mut c: EvmBlocks = testing::open(&format!(
        r#"{{"url":"http://127.0.0.1:8545","chain":"ethereum","start_block":{number}}}"#
    ));
    let head = format!(r#"{{"jsonrpc":"2.0","id":1,"result":"{number:#x}"}}"#);
    let out = testing::responses(&mut c, &[HttpResponse::ok("head", &head)]);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let tag = format!("{BLOCK_TAG_PREFIX}{number}");
    assert!(
        out.requests.iter().any(|r| r.tag == tag),
        "{:?}",
        out.requests
    );
    testing::responses(&mut c, &[HttpResponse::ok(&tag, body)])
}

fn hex(v: &Value) -> u64 {
    json::hex_u64(v.as_str().unwrap()).unwrap()
}

#[test]
fn every_recorded_block_and_null_answer_means_what_the_node_meant() {
    let (Some(answers), Some(requests)) = (
        testing::real_frames("evm_eth_getBlockByNumber.jsonl"),
        testing::real_frames("evm_eth_getBlockByNumber.requests.jsonl"),
    ) else {
        return;
    };
    assert_eq!(answers.len(), 26, "the corpus as SOURCES.md lists it");
    assert_eq!(requests.len(), answers.len());
    let (mut blocks, mut nulls) = (0, 0);
    for (n, (answer, request)) in answers.iter().zip(&requests).enumerate() {
        let line = n + 1;
        let sent: Value = serde_json::from_str(answer).unwrap();
        let asked: Value = serde_json::from_str(request).unwrap();
        let result = &sent["result"];
        // The block asked for: by number, else (a hash, `safe`, `finalized`) the one answered.
        let number = asked["params"][0]
            .as_str()
            .filter(|p| asked["method"] == "eth_getBlockByNumber" && p.len() < 20)
            .and_then(|p| json::hex_u64(p).ok())
            .or_else(|| result.get("number").map(hex))
            .unwrap_or(1);
        let out = answered(number, answer);
        assert!(out.errors.is_empty(), "line {line}: {:?}", out.errors);
        if result.is_null() {
            assert!(
                out.events.is_empty(),
                "line {line}: a null answer is no block"
            );
            nulls += 1;
            continue;
        }
        assert_eq!(out.events.len(), 1, "line {line}");
        let event = &out.events[0];
        let p = &testing::payloads(&out.events)[0];
        assert_eq!(p["number"], number, "line {line}");
        assert_eq!(p["hash"], result["hash"], "line {line}");
        assert_eq!(p["parent_hash"], result["parentHash"], "line {line}");
        assert_eq!(p["miner"], result["miner"], "line {line}");
        assert_eq!(p["timestamp"], hex(&result["timestamp"]), "line {line}");
        assert_eq!(p["gas_used"], hex(&result["gasUsed"]), "line {line}");
        assert_eq!(p["gas_limit"], hex(&result["gasLimit"]), "line {line}");
        assert_eq!(
            p["transaction_count"],
            result["transactions"].as_array().unwrap().len(),
            "line {line}"
        );
        match result.get("baseFeePerGas") {
            Some(fee) => assert_eq!(
                p["base_fee_per_gas"],
                json::hex_decimal(fee.as_str().unwrap()).unwrap(),
                "line {line}"
            ),
            None => assert!(p["base_fee_per_gas"].is_null(), "line {line}: pre-London"),
        }
        assert_eq!(
            event.event_time,
            Some(hex(&result["timestamp"]) as i64 * 1_000_000)
        );
        blocks += 1;
    }
    assert_eq!((blocks, nulls), (20, 6));
}
