//! Blocks of an EVM chain (Ethereum and compatible) over JSON-RPC, as `blocks` events, each
//! block exactly once and in order.
//!
//! Every `interval_ms` the host asks for the head (`eth_blockNumber`, tag `head`). The answer
//! tells the connector which blocks are new; it asks for each (`eth_getBlockByNumber`, tag
//! `block:<n>`), at most `max_blocks_per_poll` past the last block done.
//!
//! State, and why nothing is skipped or repeated:
//!
//! - `next`: the first block not yet emitted. Everything below it has been emitted, and the
//!   cursor (the last block emitted, `next - 1`) moves in the same output as those events, so a
//!   restart resumes right after them.
//! - `held`: blocks that arrived ahead of a missing one (answers out of order, an RPC error, a
//!   block the node does not have yet). They wait until the gap fills, so events leave in block
//!   order and never ahead of the cursor. Only blocks within `max_blocks_per_poll` of `next`
//!   are asked for, which bounds this buffer.
//! - `in_flight`: blocks asked for and not answered. The next head poll asks again for any of
//!   them still missing, so a lost request or an error costs one interval, not a block.
//!
//! A JSON-RPC `error` is retryable; a `null` block (the node is not there yet) is simply asked
//! for again. Without a cursor the connector starts at `start_block`, or else at the head it
//! first sees (only new blocks). Reorganisations are not detected: the upstream id is the block
//! number, so a block replaced by a reorg keeps the first version stored.

use std::collections::{BTreeMap, BTreeSet};

use anode_plugin_sdk::prelude::*;
use serde::de::IgnoredAny;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    url: String,
    #[serde(default = "default_chain")]
    chain: String,
    #[serde(default = "default_interval_ms")]
    interval_ms: u32,
    start_block: Option<u64>,
    #[serde(default = "default_max_blocks_per_poll")]
    max_blocks_per_poll: u32,
}

fn default_chain() -> String {
    "ethereum".to_owned()
}

fn default_interval_ms() -> u32 {
    2000
}

fn default_max_blocks_per_poll() -> u32 {
    20
}

const HEAD_TAG: &str = "head";
const BLOCK_TAG_PREFIX: &str = "block:";

/// A block as `eth_getBlockByNumber(n, false)` returns it; quantities are hex strings.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RpcBlock {
    number: String,
    hash: String,
    parent_hash: String,
    timestamp: String,
    miner: String,
    gas_used: String,
    gas_limit: String,
    /// Absent before London (EIP-1559) and on chains without it.
    base_fee_per_gas: Option<String>,
    transactions: Vec<IgnoredAny>,
}

/// The payload of a `blocks` event.
#[derive(Serialize)]
struct BlockRecord<'a> {
    chain: &'a str,
    number: u64,
    hash: &'a str,
    parent_hash: &'a str,
    /// Seconds since the epoch, as the chain keeps it.
    timestamp: u64,
    miner: &'a str,
    gas_used: u64,
    gas_limit: u64,
    /// Wei, as decimal text (it may outgrow 64 bits).
    base_fee_per_gas: Option<String>,
    transaction_count: usize,
}

/// The `result` of a JSON-RPC reply: an `error` object is retryable, a reply with neither is
/// bad input. `what` names the call in messages.
fn rpc_result<'v>(body: &'v Value, what: &str) -> Result<&'v Value, PluginError> {
    if let Some(error) = body.get("error").filter(|e| !e.is_null()) {
        let code = error.get("code").map(Value::to_string).unwrap_or_default();
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("no message");
        return Err(PluginError::retryable(format!(
            "{what}: JSON-RPC error {code}: {message}"
        )));
    }
    body.get("result").ok_or_else(|| {
        PluginError::bad_input(format!("{what}: reply has neither result nor error"))
    })
}

/// A hex quantity string, or bad input naming it.
fn quantity(value: &Value, what: &str) -> Result<u64, PluginError> {
    let text = value
        .as_str()
        .ok_or_else(|| PluginError::bad_input(format!("{what} is not a hex string")))?;
    json::hex_u64(text)
}

/// The body of a JSON-RPC 2.0 call.
fn rpc_call(id: u64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

/// The connector.
pub struct EvmBlocks {
    config: Config,
    /// The first block not yet emitted; `None` until the first head when starting at the head.
    next: Option<u64>,
    /// Blocks received ahead of a missing one, with their events.
    held: BTreeMap<u64, Event>,
    /// Blocks asked for and not answered yet.
    in_flight: BTreeSet<u64>,
}

impl EvmBlocks {
    fn head_request(&self) -> HttpRequest {
        let body = rpc_call(1, "eth_blockNumber", json!([]));
        HttpRequest::post_json(&self.config.url, &body, HEAD_TAG)
    }

    fn block_request(&self, number: u64) -> HttpRequest {
        let params = json!([format!("{number:#x}"), false]);
        let body = rpc_call(number, "eth_getBlockByNumber", params);
        HttpRequest::post_json(
            &self.config.url,
            &body,
            format!("{BLOCK_TAG_PREFIX}{number}"),
        )
    }

    /// The head is known: ask for the blocks from `next` up to it, within the window.
    fn on_head(&mut self, body: &Value, out: &mut Output) -> Result<(), PluginError> {
        let head = quantity(
            rpc_result(body, "eth_blockNumber")?,
            "the head block number",
        )?;
        let next = match self.next {
            Some(next) => next,
            None => {
                // Only new blocks: start at this head; the cursor says everything before it
                // is done, so a restart before the head block arrives does not skip it.
                if let Some(before) = head.checked_sub(1) {
                    out.set_cursor(before.to_string());
                }
                *self.next.insert(head)
            }
        };
        if !self.in_flight.is_empty() {
            host::log(
                LogLevel::Debug,
                &format!(
                    "{} block(s) asked for got no answer; asking again",
                    self.in_flight.len()
                ),
            );
            self.in_flight.clear();
        }
        let last = head.min(next.saturating_add(u64::from(self.config.max_blocks_per_poll) - 1));
        for number in next..=last {
            if !self.held.contains_key(&number) {
                out.request(self.block_request(number));
                self.in_flight.insert(number);
            }
        }
        Ok(())
    }

    /// Block `number` answered: hold it, then emit every block that is now contiguous.
    fn on_block(&mut self, number: u64, body: &Value, out: &mut Output) -> Result<(), PluginError> {
        self.in_flight.remove(&number);
        let Some(next) = self.next else {
            return Err(PluginError::bad_input(format!(
                "block {number} answered before any head"
            )));
        };
        if number < next || self.held.contains_key(&number) {
            // A second answer for a block already handled (the request was repeated).
            return Ok(());
        }
        if number - next >= u64::from(self.config.max_blocks_per_poll) {
            // Never asked for (requests stay within the window): holding it would let the
            // buffer grow without bound.
            return Err(PluginError::bad_input(format!(
                "block {number} was not asked for (next block is {next})"
            )));
        }
        let result = rpc_result(body, &format!("eth_getBlockByNumber({number})"))?;
        if result.is_null() {
            // The node does not have it yet; the next head poll asks again.
            return Ok(());
        }
        let event = self.block_event(number, result)?;
        self.held.insert(number, event);
        let mut next = next;
        while let Some(event) = self.held.remove(&next) {
            out.emit(event);
            next += 1;
        }
        if Some(next) != self.next {
            self.next = Some(next);
            out.set_cursor((next - 1).to_string());
        }
        Ok(())
    }

    fn block_event(&self, number: u64, result: &Value) -> Result<Event, PluginError> {
        let block = RpcBlock::deserialize(result).map_err(|e| {
            PluginError::bad_input(format!("block {number}: unexpected block: {e}"))
        })?;
        let found = json::hex_u64(&block.number)?;
        if found != number {
            return Err(PluginError::bad_input(format!(
                "asked for block {number}, got block {found}"
            )));
        }
        let timestamp = json::hex_u64(&block.timestamp)?;
        let record = BlockRecord {
            chain: &self.config.chain,
            number,
            hash: &block.hash,
            parent_hash: &block.parent_hash,
            timestamp,
            miner: &block.miner,
            gas_used: json::hex_u64(&block.gas_used)?,
            gas_limit: json::hex_u64(&block.gas_limit)?,
            base_fee_per_gas: block
                .base_fee_per_gas
                .as_deref()
                .map(json::hex_decimal)
                .transpose()?,
            transaction_count: block.transactions.len(),
        };
        let time_us = i64::try_from(timestamp)
            .map_err(|_| PluginError::bad_input(format!("block {number}: timestamp out of range")))?
            .saturating_mul(1_000_000);
        Ok(Event::new("blocks", &record)
            .key(&self.config.chain)
            .upstream_id(number.to_string())
            .at(time_us))
    }
}

impl Connector for EvmBlocks {
    fn manifest() -> Manifest {
        Manifest::new(
            "evm-blocks",
            env!("CARGO_PKG_VERSION"),
            "Blocks of an EVM chain over JSON-RPC (eth_blockNumber, eth_getBlockByNumber), \
             each once and in order, resuming from the last block stored",
        )
        .schema(json!({
            "type": "object",
            "required": ["url"],
            "additionalProperties": false,
            "properties": {
                "url": {"type": "string", "pattern": "^https?://"},
                "chain": {"type": "string", "minLength": 1, "default": default_chain()},
                "interval_ms": {"type": "integer", "minimum": 1, "default": default_interval_ms()},
                "start_block": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "first block when there is no cursor; default: the current head"
                },
                "max_blocks_per_poll": {
                    "type": "integer",
                    "minimum": 1,
                    "default": default_max_blocks_per_poll()
                }
            }
        }))
        .example(json!({
            "url": "http://127.0.0.1:9100/evm",
            "chain": "ethereum",
            "interval_ms": 2000,
            "max_blocks_per_poll": 20
        }))
    }

    fn open(config: &str, cursor: Option<&str>) -> Result<Self, PluginError> {
        let config: Config = json::config(config)?;
        if !(config.url.starts_with("http://") || config.url.starts_with("https://")) {
            return Err(PluginError::fatal(format!(
                "invalid config: `url` is `{}`; it must start with http:// or https://",
                config.url
            )));
        }
        if config.chain.is_empty() {
            return Err(PluginError::fatal("invalid config: `chain` is empty"));
        }
        if config.interval_ms == 0 || config.max_blocks_per_poll == 0 {
            return Err(PluginError::fatal(
                "invalid config: `interval_ms` and `max_blocks_per_poll` must be at least 1",
            ));
        }
        let next = match cursor {
            Some(cursor) => {
                let done: u64 = cursor.parse().map_err(|_| {
                    PluginError::fatal(format!(
                        "invalid cursor `{cursor}`: expected the number of the last block stored"
                    ))
                })?;
                Some(done.saturating_add(1))
            }
            None => config.start_block,
        };
        Ok(EvmBlocks {
            config,
            next,
            held: BTreeMap::new(),
            in_flight: BTreeSet::new(),
        })
    }

    fn plan(&self) -> Plan {
        Plan::http(self.config.interval_ms)
            .request(self.head_request())
            .into()
    }

    fn on_response(
        &mut self,
        response: &HttpResponse,
        out: &mut Output,
    ) -> Result<(), PluginError> {
        let block = match response.tag.strip_prefix(BLOCK_TAG_PREFIX) {
            Some(n) => Some(n.parse::<u64>().map_err(|_| {
                PluginError::bad_input(format!("response with unknown tag `{}`", response.tag))
            })?),
            None if response.tag == HEAD_TAG => None,
            None => {
                return Err(PluginError::bad_input(format!(
                    "response with unknown tag `{}`",
                    response.tag
                )));
            }
        };
        let body = match json::response(response) {
            Ok(body) => body,
            Err(error) => {
                if let Some(number) = block {
                    self.in_flight.remove(&number);
                }
                return Err(error);
            }
        };
        match block {
            Some(number) => self.on_block(number, &body, out),
            None => self.on_head(&body, out),
        }
    }
}

export_connector!(EvmBlocks);

#[cfg(test)]
mod conformance;

#[cfg(test)]
mod tests {
    use super::*;
    use anode_plugin_sdk::testing;

    const URL: &str = "http://127.0.0.1:8545";

    fn open(config: &str, cursor: Option<&str>) -> EvmBlocks {
        match EvmBlocks::open(config, cursor) {
            Ok(c) => c,
            Err(e) => panic!("{config}: {e}"),
        }
    }

    fn config(extra: &str) -> String {
        format!(r#"{{"url":"{URL}"{extra}}}"#)
    }

    fn head(number: u64) -> HttpResponse {
        let body = json!({"jsonrpc": "2.0", "id": 1, "result": format!("{number:#x}")});
        HttpResponse::ok(HEAD_TAG, &body.to_string())
    }

    /// A block as a node returns it, with made-up but well-formed hashes.
    fn block_body(number: u64) -> Value {
        let hash = |n: u64| format!("0x{n:064x}");
        json!({"jsonrpc": "2.0", "id": number, "result": {
            "number": format!("{number:#x}"),
            "hash": hash(number),
            "parentHash": hash(number - 1),
            "timestamp": format!("{:#x}", 1_700_000_000 + 12 * number),
            "miner": "0x95222290dd7278aa3ddd389cc1e1d165cc4bafe5",
            "gasUsed": "0x1c9c380",
            "gasLimit": "0x1c9c380",
            "baseFeePerGas": "0x3b9aca00",
            "difficulty": "0x0",
            "transactions": [
                "0x8f1e0f0bde34e1f9f3b3e2c1a1d5f3e2b4c6a7d8e9f0a1b2c3d4e5f6a7b8c9d0",
                "0x1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809"
            ]
        }})
    }

    fn block(number: u64) -> HttpResponse {
        HttpResponse::ok(&format!("block:{number}"), &block_body(number).to_string())
    }

    fn reply(tag: &str, body: Value) -> HttpResponse {
        HttpResponse::ok(tag, &body.to_string())
    }

    /// The block numbers asked for, checking each request's shape.
    fn asked(out: &Output) -> Vec<u64> {
        out.requests
            .iter()
            .map(|r| {
                assert_eq!((r.method.as_str(), r.url.as_str()), ("POST", URL));
                let body: Value = serde_json::from_slice(r.body.as_ref().unwrap()).unwrap();
                assert_eq!(body["method"], "eth_getBlockByNumber");
                assert_eq!(body["params"][1], false);
                let n = json::hex_u64(body["params"][0].as_str().unwrap()).unwrap();
                assert_eq!(r.tag, format!("block:{n}"));
                n
            })
            .collect()
    }

    fn numbers(out: &Output) -> Vec<u64> {
        testing::payloads(&out.events)
            .iter()
            .map(|p| p["number"].as_u64().unwrap())
            .collect()
    }

    #[test]
    fn head_then_blocks_then_the_cursor() {
        let mut c = open(&config(r#","start_block":100"#), None);
        let Plan::Http(plan) = c.plan() else {
            panic!("expected an HTTP plan")
        };
        assert_eq!(plan.interval_ms, 2000);
        let poll = &plan.requests[0];
        assert_eq!((poll.method.as_str(), poll.tag.as_str()), ("POST", "head"));
        let body: Value = serde_json::from_slice(poll.body.as_ref().unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]})
        );

        let out = testing::responses(&mut c, &[head(102)]);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(asked(&out), [100, 101, 102]);
        assert!(out.events.is_empty() && out.cursor.is_none());

        let out = testing::responses(&mut c, &[block(100), block(101), block(102)]);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(numbers(&out), [100, 101, 102]);
        assert_eq!(out.cursor.as_deref(), Some("102"));
        let event = &out.events[0];
        assert_eq!(event.stream, "blocks");
        assert_eq!(event.key.as_deref(), Some("ethereum"));
        assert_eq!(event.upstream_id.as_deref(), Some("100"));
        assert_eq!(event.event_time, Some(1_700_001_200_000_000));
        assert_eq!(
            testing::payloads(&out.events)[0],
            json!({
                "chain": "ethereum",
                "number": 100,
                "hash": format!("0x{:064x}", 100),
                "parent_hash": format!("0x{:064x}", 99),
                "timestamp": 1_700_001_200u64,
                "miner": "0x95222290dd7278aa3ddd389cc1e1d165cc4bafe5",
                "gas_used": 30_000_000u64,
                "gas_limit": 30_000_000u64,
                "base_fee_per_gas": "1000000000",
                "transaction_count": 2
            })
        );

        // Nothing new: nothing asked for.
        let out = testing::responses(&mut c, &[head(102)]);
        assert!(out.requests.is_empty() && out.events.is_empty());
        // A head behind the cursor (another node lagging) asks for nothing either.
        assert!(testing::responses(&mut c, &[head(90)]).requests.is_empty());
        assert_eq!(asked(&testing::responses(&mut c, &[head(103)])), [103]);
    }

    #[test]
    fn without_start_block_only_new_blocks() {
        let mut c = open(&config(r#","chain":"sepolia""#), None);
        let out = testing::responses(&mut c, &[head(0x12a05f2)]);
        assert_eq!(asked(&out), [0x12a05f2]);
        // A restart before the head block arrives resumes at it.
        assert_eq!(out.cursor, Some((0x12a05f2 - 1).to_string()));
        let out = testing::responses(&mut c, &[block(0x12a05f2)]);
        assert_eq!(out.cursor, Some(0x12a05f2.to_string()));
        assert_eq!(out.events[0].key.as_deref(), Some("sepolia"));
        assert_eq!(testing::payloads(&out.events)[0]["chain"], "sepolia");
    }

    #[test]
    fn an_out_of_order_batch_is_emitted_in_order() {
        let mut c = open(&config(r#","start_block":100"#), None);
        testing::responses(&mut c, &[head(103)]);
        let out = testing::responses(&mut c, &[block(103), block(101), block(100), block(102)]);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(numbers(&out), [100, 101, 102, 103]);
        assert_eq!(out.cursor.as_deref(), Some("103"));
    }

    #[test]
    fn a_gap_holds_later_blocks_until_it_is_filled() {
        let mut c = open(&config(r#","start_block":100"#), None);
        testing::responses(&mut c, &[head(103)]);
        let rpc_error =
            json!({"jsonrpc":"2.0","id":101,"error":{"code":-32000,"message":"header not found"}});
        let out = testing::responses(
            &mut c,
            &[block(100), reply("block:101", rpc_error), block(102)],
        );
        // 103 never answered at all.
        assert_eq!(numbers(&out), [100]);
        assert_eq!(out.cursor.as_deref(), Some("100"));
        assert_eq!(
            out.errors,
            vec![PluginError::retryable(
                "eth_getBlockByNumber(101): JSON-RPC error -32000: header not found"
            )]
        );
        // The next head poll asks again for the failed and the unanswered block, not for 102.
        let out = testing::responses(&mut c, &[head(104)]);
        assert_eq!(asked(&out), [101, 103, 104]);
        let out = testing::responses(&mut c, &[block(104), block(101)]);
        assert_eq!(numbers(&out), [101, 102]);
        assert_eq!(out.cursor.as_deref(), Some("102"));
        let out = testing::responses(&mut c, &[block(103)]);
        assert_eq!(numbers(&out), [103, 104]);
        assert_eq!(out.cursor.as_deref(), Some("104"));
    }

    #[test]
    fn a_block_not_there_yet_is_asked_for_again() {
        let mut c = open(&config(r#","start_block":7"#), None);
        testing::responses(&mut c, &[head(7)]);
        let not_yet = json!({"jsonrpc":"2.0","id":7,"result":null});
        let out = testing::responses(&mut c, &[reply("block:7", not_yet)]);
        assert!(out.errors.is_empty() && out.events.is_empty() && out.cursor.is_none());
        let out = testing::responses(&mut c, &[head(7)]);
        assert_eq!(asked(&out), [7]);
        let out = testing::responses(&mut c, &[block(7)]);
        assert_eq!(numbers(&out), [7]);
    }

    #[test]
    fn a_cursor_resumes_right_after_it() {
        let mut c = open(&config(r#","start_block":1"#), Some("500"));
        let out = testing::responses(&mut c, &[head(502)]);
        assert_eq!(asked(&out), [501, 502]);
        assert!(out.cursor.is_none());
        let out = testing::responses(&mut c, &[block(501), block(502)]);
        assert_eq!(out.cursor.as_deref(), Some("502"));
    }

    #[test]
    fn at_most_max_blocks_per_poll_past_the_cursor() {
        let mut c = open(&config(r#","start_block":1,"max_blocks_per_poll":3"#), None);
        let out = testing::responses(&mut c, &[head(100)]);
        assert_eq!(asked(&out), [1, 2, 3]);
        // 1 is missing, so the window stays put and holds 2 and 3.
        testing::responses(&mut c, &[block(2), block(3)]);
        assert_eq!(asked(&testing::responses(&mut c, &[head(100)])), [1]);
        let out = testing::responses(&mut c, &[block(1)]);
        assert_eq!(numbers(&out), [1, 2, 3]);
        assert_eq!(asked(&testing::responses(&mut c, &[head(100)])), [4, 5, 6]);
        // An answer far past the window was never asked for and is not held.
        let out = testing::responses(&mut c, &[block(50)]);
        assert!(matches!(out.errors[..], [PluginError::BadInput(_)]));
        assert!(c.held.is_empty());
    }

    #[test]
    fn repeated_answers_are_not_repeated_events() {
        let mut c = open(&config(r#","start_block":10"#), None);
        testing::responses(&mut c, &[head(11)]);
        let out = testing::responses(&mut c, &[block(11), block(11), block(10), block(10)]);
        assert_eq!(numbers(&out), [10, 11]);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert!(testing::responses(&mut c, &[block(11)]).events.is_empty());
    }

    #[test]
    fn bad_responses_are_errors_not_panics() {
        let mut c = open(&config(r#","start_block":10"#), None);
        let unavailable = HttpResponse {
            status: 503,
            ..HttpResponse::ok(HEAD_TAG, "busy")
        };
        let rate_limited = reply(
            HEAD_TAG,
            json!({"jsonrpc":"2.0","id":1,"error":{"code":-32005,"message":"rate limited"}}),
        );
        let cases = [
            (unavailable, true),
            (rate_limited, true),
            (HttpResponse::ok(HEAD_TAG, "not json"), false),
            (
                reply(HEAD_TAG, json!({"jsonrpc":"2.0","id":1,"result":"12"})),
                false,
            ),
            (
                reply(HEAD_TAG, json!({"jsonrpc":"2.0","id":1,"result":12})),
                false,
            ),
            (reply(HEAD_TAG, json!({"jsonrpc":"2.0","id":1})), false),
            (HttpResponse::ok("other", "{}"), false),
            (HttpResponse::ok("block:x", "{}"), false),
        ];
        // (response, whether it is retryable rather than bad input)
        for (response, retryable) in cases {
            let out = testing::responses(&mut c, std::slice::from_ref(&response));
            assert!(
                match &out.errors[..] {
                    [PluginError::Retryable(_)] => retryable,
                    [PluginError::BadInput(_)] => !retryable,
                    _ => false,
                },
                "{}: {:?}",
                String::from_utf8_lossy(&response.body),
                out.errors
            );
            assert!(out.requests.is_empty() && out.events.is_empty());
        }

        testing::responses(&mut c, &[head(12)]);
        let mut wrong_number = block_body(11);
        wrong_number["result"]["number"] = json!("0xb");
        let mut no_hash = block_body(11);
        no_hash["result"].as_object_mut().unwrap().remove("hash");
        let mut bad_gas = block_body(11);
        bad_gas["result"]["gasUsed"] = json!("lots");
        let out = testing::responses(
            &mut c,
            &[
                reply("block:12", wrong_number),
                reply("block:11", no_hash),
                reply("block:11", bad_gas),
                reply("block:11", json!({"jsonrpc":"2.0","id":11,"result":[]})),
            ],
        );
        assert_eq!(out.errors.len(), 4, "{:?}", out.errors);
        assert!(
            out.errors
                .iter()
                .all(|e| matches!(e, PluginError::BadInput(_))),
            "{:?}",
            out.errors
        );
        assert!(out.events.is_empty());
        // None of that cost a block: all three come once they answer properly.
        assert_eq!(
            asked(&testing::responses(&mut c, &[head(12)])),
            [10, 11, 12]
        );
        let out = testing::responses(&mut c, &[block(10), block(11), block(12)]);
        assert_eq!(numbers(&out), [10, 11, 12]);
    }

    #[test]
    fn a_block_without_base_fee_has_null() {
        let mut c = open(&config(r#","start_block":5"#), None);
        testing::responses(&mut c, &[head(5)]);
        let mut legacy = block_body(5);
        legacy["result"]
            .as_object_mut()
            .unwrap()
            .remove("baseFeePerGas");
        legacy["result"]["transactions"] = json!([]);
        let out = testing::responses(&mut c, &[reply("block:5", legacy)]);
        let p = &testing::payloads(&out.events)[0];
        assert_eq!(p["base_fee_per_gas"], Value::Null);
        assert_eq!(p["transaction_count"], 0);
    }

    #[test]
    fn bad_config_or_cursor_is_fatal_and_says_why() {
        for config in [
            r#"{}"#,
            r#"{"url":"ws://h"}"#,
            r#"{"url":"http://h","chain":""}"#,
            r#"{"url":"http://h","interval_ms":0}"#,
            r#"{"url":"http://h","max_blocks_per_poll":0}"#,
            r#"{"url":"http://h","start_block":-1}"#,
            r#"{"url":"http://h","start_block":"0x10"}"#,
            r#"{"url":"http://h","confirmations":3}"#,
        ] {
            match EvmBlocks::open(config, None) {
                Err(PluginError::Fatal(m)) => assert!(m.starts_with("invalid config"), "{m}"),
                Err(other) => panic!("{config}: {other}"),
                Ok(_) => panic!("{config} was accepted"),
            }
        }
        match EvmBlocks::open(&config(""), Some("0x10")) {
            Err(PluginError::Fatal(m)) => assert!(m.starts_with("invalid cursor"), "{m}"),
            other => panic!("{:?}", other.err()),
        }
    }

    #[test]
    fn the_manifest_example_opens() {
        let manifest = EvmBlocks::manifest();
        assert_eq!(manifest.name, "evm-blocks");
        assert!(EvmBlocks::open(&manifest.config_example, None).is_ok());
    }
}
