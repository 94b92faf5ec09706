//! EVM JSON-RPC 2.0 over HTTP: `eth_chainId`, `eth_blockNumber`, `eth_getBlockByNumber`,
//! single or batched, for any chain name.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::content::{EventRng, hash_hex};
use crate::sim::Sim;
use crate::streams::{Kind, Stream};

/// Venue name in stream names and reports.
const VENUE: &str = "evm";
/// Most requests in one batch.
const MAX_BATCH: usize = 1_000;
/// Longest chain name.
const MAX_CHAIN_NAME: usize = 32;
/// Most transactions in a block (0 to this, inclusive).
const MAX_TXS_PER_BLOCK: u64 = 5;
const GAS_LIMIT: u64 = 30_000_000;
const GAS_PER_TX: u64 = 21_000;
const GWEI: u64 = 1_000_000_000;

/// JSON-RPC error codes.
const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const SERVER_ERROR: i64 = -32000;

/// Chain ids of well-known chains; other names get a stable id from their hash.
fn chain_id(seed: u64, chain: &str) -> u64 {
    match chain {
        "ethereum" | "mainnet" | "eth" => 1,
        "optimism" => 10,
        "bsc" => 56,
        "polygon" => 137,
        "base" => 8453,
        "arbitrum" => 42161,
        "sepolia" => 11_155_111,
        other => {
            100_000 + EventRng::new(seed, &format!("evm-chain:{other}"), 0).next_u64() % 900_000
        }
    }
}

fn hex_quantity(n: u64) -> String {
    format!("{n:#x}")
}

/// One JSON-RPC chain's view for a request.
struct Chain<'a> {
    sim: &'a Sim,
    name: &'a str,
    key: String,
    head: u64,
    blocks: Arc<Stream>,
}

impl Chain<'_> {
    fn block_hash(&self, n: u64) -> String {
        hash_hex(self.sim.seed(), &self.key, n)
    }

    fn block(&self, n: u64) -> Value {
        let seed = self.sim.seed();
        let mut rng = EventRng::new(seed, &format!("{}:header", self.key), n);
        let tx_count = rng.next_u64() % (MAX_TXS_PER_BLOCK + 1);
        let tx_key = format!("{}:tx:{n}", self.key);
        let transactions: Vec<String> = (0..tx_count).map(|i| hash_hex(seed, &tx_key, i)).collect();
        let parent = if n == 0 {
            format!("0x{}", "0".repeat(64))
        } else {
            self.block_hash(n - 1)
        };
        let root = |what: &str| hash_hex(seed, &format!("{}:{what}", self.key), n);
        let miner = &hash_hex(seed, &format!("{}:miner", self.key), n % 16)[..42];
        json!({
            "number": hex_quantity(n),
            "hash": self.block_hash(n),
            "parentHash": parent,
            "nonce": "0x0000000000000000",
            "mixHash": root("mix"),
            "sha3Uncles": "0x1dcc4de8dec75d7aab85b567b6ccd41ad312451b948a7413f0a142fd40d49347",
            "logsBloom": format!("0x{}", "0".repeat(512)),
            "transactionsRoot": root("txroot"),
            "stateRoot": root("state"),
            "receiptsRoot": root("receipts"),
            "miner": miner,
            "difficulty": "0x0",
            "totalDifficulty": "0x0",
            "extraData": "0x",
            "size": hex_quantity(600 + tx_count * 110),
            "gasLimit": hex_quantity(GAS_LIMIT),
            "gasUsed": hex_quantity(tx_count * GAS_PER_TX * (1 + rng.next_u64() % 10)),
            "timestamp": hex_quantity(self.sim.block_wall_s(n)),
            "baseFeePerGas": hex_quantity(GWEI * (5 + rng.next_u64() % 25)),
            "transactions": transactions,
            "uncles": [],
        })
    }

    fn block_number(&self, tag: &Value) -> Result<u64, String> {
        match tag.as_str() {
            Some("latest" | "safe" | "finalized" | "pending") => Ok(self.head),
            Some("earliest") => Ok(0),
            Some(hex) => hex
                .strip_prefix("0x")
                .and_then(|h| u64::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    format!("invalid block number '{hex}': expected a hex quantity or tag")
                }),
            None => Err("block number must be a hex string or a tag such as \"latest\"".into()),
        }
    }

    /// Result or (code, message) of one call.
    fn call(&self, method: &str, params: &Value) -> Result<Value, (i64, String)> {
        match method {
            "eth_chainId" => Ok(json!(hex_quantity(chain_id(self.sim.seed(), self.name)))),
            "net_version" => Ok(json!(chain_id(self.sim.seed(), self.name).to_string())),
            "eth_blockNumber" => Ok(json!(hex_quantity(self.head))),
            "eth_getBlockByNumber" => {
                let tag = params
                    .get(0)
                    .ok_or((INVALID_PARAMS, "missing block number".to_string()))?;
                let n = self.block_number(tag).map_err(|e| (INVALID_PARAMS, e))?;
                if n > self.head {
                    return Ok(Value::Null);
                }
                self.blocks.record(n);
                Ok(self.block(n))
            }
            other => Err((
                METHOD_NOT_FOUND,
                format!("the method {other} does not exist/is not available"),
            )),
        }
    }

    fn answer(&self, request: &Value) -> Value {
        let id = request.get("id").cloned().unwrap_or(Value::Null);
        let Some(method) = request.get("method").and_then(Value::as_str) else {
            return error(id, INVALID_REQUEST, "invalid request: missing \"method\"");
        };
        let params = request.get("params").cloned().unwrap_or(json!([]));
        match self.call(method, &params) {
            Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
            Err((code, message)) => error(id, code, &message),
        }
    }
}

fn error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// `POST /evm/<chain>`
pub(crate) async fn handler(
    State(sim): State<Arc<Sim>>,
    Path(chain): Path<String>,
    body: Bytes,
) -> Response {
    let valid = !chain.is_empty()
        && chain.len() <= MAX_CHAIN_NAME
        && chain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        let msg =
            format!("unknown chain '{chain}': use 1 to {MAX_CHAIN_NAME} letters, digits, - or _");
        return (StatusCode::NOT_FOUND, msg).into_response();
    }
    let blocks = match sim
        .streams
        .get(&format!("{VENUE}/{chain}/blocks"), VENUE, Kind::Blocks)
    {
        Ok(stream) => stream,
        Err(e) => return Json(error(Value::Null, SERVER_ERROR, &e.to_string())).into_response(),
    };
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return Json(error(
                Value::Null,
                PARSE_ERROR,
                &format!("parse error: {e}"),
            ))
            .into_response();
        }
    };
    let key = format!("{VENUE}:{chain}");
    let chain = Chain {
        sim: &sim,
        name: &chain,
        key,
        head: sim.evm_head(),
        blocks,
    };
    let answer = match &request {
        Value::Array(batch) if batch.is_empty() => {
            error(Value::Null, INVALID_REQUEST, "empty batch")
        }
        Value::Array(batch) if batch.len() > MAX_BATCH => error(
            Value::Null,
            INVALID_REQUEST,
            &format!("batch too large: at most {MAX_BATCH} requests"),
        ),
        Value::Array(batch) => Value::Array(batch.iter().map(|r| chain.answer(r)).collect()),
        single => chain.answer(single),
    };
    Json(answer).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streams::StreamRegistry;

    #[test]
    fn blocks_chain_by_parent_hash_and_are_deterministic() {
        let sim = Sim::new(crate::SimConfig::default());
        let reg = StreamRegistry::new(1);
        let blocks = reg.get("evm/eth/blocks", VENUE, Kind::Blocks).unwrap();
        let chain = Chain {
            sim: &sim,
            name: "eth",
            key: "evm:eth".into(),
            head: 100,
            blocks,
        };
        let (b5, b6) = (chain.block(5), chain.block(6));
        assert_eq!(b6["parentHash"], b5["hash"]);
        assert_eq!(chain.block(5), b5);
        assert_eq!(b5["number"], "0x5");
        assert!(b5["transactions"].as_array().unwrap().len() <= 5);
        assert_eq!(
            chain.call("eth_getBlockByNumber", &json!(["0x65", false])),
            Ok(Value::Null)
        );
        assert_eq!(chain.call("eth_blockNumber", &json!([])), Ok(json!("0x64")));
        assert_eq!(
            chain.call("eth_foo", &json!([])).unwrap_err().0,
            METHOD_NOT_FOUND
        );
        assert_eq!(
            chain
                .call("eth_getBlockByNumber", &json!(["12"]))
                .unwrap_err()
                .0,
            INVALID_PARAMS
        );
        assert_eq!(chain.call("eth_chainId", &json!([])), Ok(json!("0x1")));
    }
}
