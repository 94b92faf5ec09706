//! Contract logs of an EVM chain (Ethereum and compatible) over JSON-RPC, as `logs` events,
//! in chain order, following the chain by hash as `evm-blocks` does: a log whose block left
//! the chain is taken back with an `undo`, and a log `finality_depth` below the head is
//! confirmed with an `irreversible` version. ERC-20 `Transfer` and `Approval` and ERC-721
//! `Transfer` and `Approval` are decoded by their topics.
//!
//! **Which logs.** `address` (one or a list) and `topics` (up to four positions, each `null`,
//! a topic, or a list of topics) are passed to `eth_getLogs` as they are.
//!
//! **Backfill, in parallel ranges.** Blocks already `finality_depth` below the head cannot
//! change: their logs are fetched by block range (`fromBlock`/`toBlock`, at most `max_range`
//! blocks each, up to `parallel` ranges at once) and emitted as `irreversible`, range after
//! range in order whatever order the answers come in. A node that refuses a range as too
//! large (`-32005 query returned more than 10000 results` and the like) gets it again in two
//! halves, and later ranges are that much smaller. A rate limit (`429`, or an error that says
//! `rate`) is retryable: the range is asked for again at the next head.
//!
//! **Near the head, block by block.** Above the depth of finality, the connector asks for
//! each block's header (`eth_getBlockByNumber`), checks that its parent is the block before,
//! and then for that block's logs by its hash (`eth_getLogs` with `blockHash`), so a log
//! always belongs to the block whose hash it carries. A header whose parent is not the last
//! block kept means that block left the chain: each of its logs is undone (`undo`, newest
//! first), and the height asked for again, until the fork point; with nothing new, the tip is
//! asked for again to find a branch that replaced it without growing. As a block becomes
//! final its logs are asked for again by its hash and emitted as `irreversible`.
//!
//! **Fork steps and ids.** A log's upstream id is `<block>:<block hash>:<log index>` (with
//! `:<n>` after `n` undos, so a log that leaves and comes back is a new record);
//! `final:<id>` its irreversible version; `undo:<n>:<id>` its undo. The payload's
//! `fork_step` says `new`, `irreversible` or `undo`; the key is the contract's address.
//! `final_only` emits only irreversible logs (nothing is ever undone); a reorganisation deeper
//! than `finality_depth` stops the source with a fatal error saying so.
//!
//! **Cursor.** `{"next":N,"generation":G,"final_next":F,"kept":[["<hash>",g,[[index,"<address>"],…]],…]}`:
//! the first block whose logs are not emitted, the hashes of the blocks just below it with
//! the logs each had (to undo them), and the first block not yet irreversible. It moves in
//! the same output as the logs it passed.
//!
//! **Other events** are decoded by their ABI signature when the configuration names them
//! (`events`: `"Swap(address indexed sender, uint256 amount0In, …)"`): the `event` field is
//! then `{"name","signature","args":{…}}` (see `abi.rs`). Any other log keeps its raw topics
//! and data, with `event` null.
//!
//! **Several endpoints**: `url` may be a list; the one with the highest head serves, one that
//! fails or lags is set aside (see `jsonrpc::Endpoints` in the SDK).

use std::collections::{BTreeMap, VecDeque};

use anode_plugin_sdk::prelude::*;

mod abi;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    url: jsonrpc::Urls,
    #[serde(default = "default_max_lag_blocks")]
    max_lag_blocks: u64,
    #[serde(default = "default_aside_polls")]
    aside_polls: u32,
    #[serde(default = "default_chain")]
    chain: String,
    #[serde(default = "default_interval_ms")]
    interval_ms: u32,
    #[serde(default)]
    address: Option<OneOrMany>,
    #[serde(default)]
    topics: Vec<Value>,
    /// ABI event signatures to decode (`"Swap(address indexed sender, uint256 amount0In, …)"`).
    #[serde(default)]
    events: Vec<String>,
    start_block: Option<u64>,
    #[serde(default = "default_max_range")]
    max_range: u32,
    #[serde(default = "default_parallel")]
    parallel: u32,
    #[serde(default = "default_finality_depth")]
    finality_depth: u32,
    #[serde(default = "default_keep_blocks")]
    keep_blocks: u32,
    #[serde(default)]
    final_only: bool,
    #[serde(default)]
    finalized_tag: bool,
}

fn default_chain() -> String {
    "ethereum".to_owned()
}

fn default_interval_ms() -> u32 {
    2000
}

fn default_max_lag_blocks() -> u64 {
    5
}

fn default_aside_polls() -> u32 {
    10
}

fn default_max_range() -> u32 {
    2000
}

fn default_parallel() -> u32 {
    4
}

fn default_finality_depth() -> u32 {
    64
}

fn default_keep_blocks() -> u32 {
    128
}

/// Follow-up requests between two heads, per range asked for at once: well below the host's
/// default of 50 rounds per poll.
const FOLLOW_UPS_PER_HEAD: u64 = 20;

/// `keccak256("Transfer(address,address,uint256)")`: ERC-20 and ERC-721.
const TRANSFER: &str = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef";
/// `keccak256("Approval(address,address,uint256)")`: ERC-20 and ERC-721.
const APPROVAL: &str = "0x8c5be1e5ebec7d5bd14f71427d1e84f3dd0314c0f7b2291e5b200ac8c7c3b925";

/// What an answer is for, read off its tag.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tag {
    /// The header of a block (`block:<n>`).
    Header(u64),
    /// The logs of block `n` with this hash, to emit as new (`logs:<n>:<hash>`).
    Logs(u64, String),
    /// The logs of block `n` with this hash, to emit as irreversible (`final:<n>:<hash>`).
    Final(u64, String),
    /// The logs of a range of final blocks (`range:<from>:<to>`).
    Range(u64, u64),
}

impl Tag {
    fn parse(tag: &str) -> Option<Tag> {
        let (kind, rest) = tag.split_once(':')?;
        let (a, b) = rest
            .split_once(':')
            .map_or((rest, None), |(a, b)| (a, Some(b)));
        let a: u64 = a.parse().ok()?;
        match (kind, b) {
            ("block", None) => Some(Tag::Header(a)),
            ("logs", Some(hash)) => Some(Tag::Logs(a, hash.to_owned())),
            ("final", Some(hash)) => Some(Tag::Final(a, hash.to_owned())),
            ("range", Some(to)) => Some(Tag::Range(a, to.parse().ok()?)),
            _ => None,
        }
    }

    fn text(&self) -> String {
        match self {
            Tag::Header(n) => format!("block:{n}"),
            Tag::Logs(n, hash) => format!("logs:{n}:{hash}"),
            Tag::Final(n, hash) => format!("final:{n}:{hash}"),
            Tag::Range(from, to) => format!("range:{from}:{to}"),
        }
    }
}

/// A block header: what following the chain needs.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RpcHeader {
    number: String,
    hash: String,
    parent_hash: String,
}

/// A log as `eth_getLogs` returns it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RpcLog {
    address: String,
    topics: Vec<String>,
    data: String,
    block_number: String,
    block_hash: String,
    transaction_hash: String,
    transaction_index: String,
    log_index: String,
    #[serde(default)]
    removed: bool,
}

/// A log, checked.
#[derive(Debug, Clone)]
struct Log {
    block: u64,
    block_hash: String,
    index: u64,
    address: String,
    transaction_hash: String,
    transaction_index: u64,
    topics: Vec<String>,
    data: String,
}

/// The payload of a `logs` event.
#[derive(Serialize)]
struct LogRecord<'a> {
    chain: &'a str,
    block_number: u64,
    block_hash: &'a str,
    transaction_hash: &'a str,
    transaction_index: u64,
    log_index: u64,
    address: &'a str,
    topics: &'a [String],
    data: &'a str,
    /// The decoded event, for the standards known by topic; `null` otherwise.
    event: Option<Value>,
    fork_step: &'static str,
}

/// The payload of an `undo`: which log left the chain with its block.
#[derive(Serialize)]
struct UndoRecord<'a> {
    chain: &'a str,
    block_number: u64,
    block_hash: &'a str,
    log_index: u64,
    address: &'a str,
    fork_step: &'static str,
}

/// A block emitted near the head and still on the chain: its hash, the generation of its
/// logs' ids, and its logs (index and contract), to undo them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Kept(String, u64, Vec<(u64, String)>);

/// The cursor, as stored.
type Cursor = jsonrpc::ChainCursor<Kept>;

/// A backfill range.
#[derive(Debug)]
enum Range {
    /// Asked for, up to this block.
    Asked(u64),
    /// Failed (retryable): asked for again at the next head.
    Failed(u64),
    /// Answered: its logs, waiting for the ranges before it.
    Done(u64, Vec<Log>),
}

/// The upstream id of a log.
fn log_id(block: u64, hash: &str, index: u64, generation: u64) -> String {
    if generation == 0 {
        format!("{block}:{hash}:{index}")
    } else {
        format!("{block}:{hash}:{index}:{generation}")
    }
}

/// `0x` followed by `digits` hex digits.
fn is_hex(text: &str, digits: usize) -> bool {
    text.strip_prefix("0x")
        .is_some_and(|h| h.len() == digits && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// An address held in a topic (`0x` and 24 zero digits, then the address).
fn topic_address(topic: &str) -> Option<String> {
    let digits = topic.strip_prefix("0x").filter(|d| d.len() == 64)?;
    let (zeros, address) = digits.split_at(24);
    (zeros.bytes().all(|b| b == b'0') && address.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("0x{}", address.to_ascii_lowercase()))
}

/// A 256-bit word (a topic, or the data of one word) as decimal text.
fn word_decimal(word: &str) -> Option<String> {
    json::hex_decimal(word).ok()
}

/// ERC-20 and ERC-721 `Transfer` and `Approval`, told apart by their topic count (ERC-721
/// indexes the token id; ERC-20 puts the amount in the data).
fn decode(topics: &[String], data: &str) -> Option<Value> {
    let first = topics.first()?.to_ascii_lowercase();
    let one_word = is_hex(data, 64);
    let empty = data == "0x";
    let (a, b) = (
        topic_address(topics.get(1)?)?,
        topic_address(topics.get(2)?)?,
    );
    match (first.as_str(), topics.len()) {
        (TRANSFER, 3) if one_word => Some(json!({"standard": "erc20", "name": "Transfer",
            "from": a, "to": b, "value": word_decimal(data)?})),
        (TRANSFER, 4) if empty => Some(json!({"standard": "erc721", "name": "Transfer",
            "from": a, "to": b, "token_id": word_decimal(&topics[3])?})),
        (APPROVAL, 3) if one_word => Some(json!({"standard": "erc20", "name": "Approval",
            "owner": a, "spender": b, "value": word_decimal(data)?})),
        (APPROVAL, 4) if empty => Some(json!({"standard": "erc721", "name": "Approval",
            "owner": a, "approved": b, "token_id": word_decimal(&topics[3])?})),
        _ => None,
    }
}

/// `eth_getLogs` refused a range for its size (rather than for a rate limit): ask for it in
/// halves. Nodes word it differently (`query returned more than 10000 results`, `block range
/// is too large`, `Log response size exceeded`, `limited to a 10,000 range`).
fn too_large(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    !m.contains("rate")
        && [
            "more than",
            "too large",
            "too many",
            "exceed",
            "limited to",
            "range",
        ]
        .iter()
        .any(|w| m.contains(w))
}

/// The connector.
pub struct EvmLogs {
    config: Config,
    /// `address` and `topics` as `eth_getLogs` takes them.
    filter: serde_json::Map<String, Value>,
    /// The first block whose logs are not emitted; `None` until the first head when starting
    /// at the head.
    next: Option<u64>,
    /// The blocks just below `next` emitted near the head, oldest first.
    kept: VecDeque<Kept>,
    generation: u64,
    /// The first block whose logs are not emitted as irreversible.
    final_next: u64,
    last_head: u64,
    /// The highest block the node called `finalized` (with `finalized_tag`).
    finalized: u64,
    /// Backfill ranges by first block.
    ranges: BTreeMap<u64, Range>,
    /// Blocks per range now: `max_range`, halved at each refusal.
    range_size: u64,
    /// Requests that may still be made as follow-ups before the next head: a long backfill
    /// goes on at the next head rather than exceed the host's rounds per poll
    /// (`sources.http_max_rounds`).
    ahead: u64,
    /// The header accepted whose logs are asked for: (number, hash, parent hash).
    awaiting: Option<(u64, String, String)>,
    /// The endpoints, the one with the highest head serving.
    endpoints: jsonrpc::Endpoints,
    /// The events the configuration names, decoded before the standard ones.
    abis: Vec<abi::EventAbi>,
}

impl EvmLogs {
    fn depth(&self) -> u64 {
        u64::from(self.config.finality_depth)
    }

    /// `finality_depth` below the head, or the node's `finalized` block if higher.
    fn final_head(&self) -> u64 {
        self.last_head
            .saturating_sub(self.depth())
            .max(self.finalized.min(self.last_head))
    }

    fn post(&self, method: &str, params: Value, tag: &Tag) -> HttpRequest {
        let body = jsonrpc::call(1, method, params);
        HttpRequest::post_json(self.endpoints.best(), &body, tag.text())
    }

    fn header_request(&self, number: u64) -> HttpRequest {
        let params = json!([format!("{number:#x}"), false]);
        self.post("eth_getBlockByNumber", params, &Tag::Header(number))
    }

    fn logs_request(&self, tag: Tag) -> HttpRequest {
        let mut filter = self.filter.clone();
        match &tag {
            Tag::Logs(_, hash) | Tag::Final(_, hash) => {
                filter.insert("blockHash".into(), json!(hash));
            }
            Tag::Range(from, to) => {
                filter.insert("fromBlock".into(), json!(format!("{from:#x}")));
                filter.insert("toBlock".into(), json!(format!("{to:#x}")));
            }
            Tag::Header(_) => {}
        }
        self.post("eth_getLogs", json!([filter]), &tag)
    }

    fn kept_at(&self, number: u64) -> Option<&Kept> {
        let next = self.next?;
        let first = next.checked_sub(self.kept.len() as u64)?;
        self.kept
            .get(usize::try_from(number.checked_sub(first)?).ok()?)
    }

    fn cursor(&self) -> Option<String> {
        let cursor = Cursor {
            next: self.next?,
            generation: self.generation,
            final_next: self.final_next,
            kept: self.kept.iter().cloned().collect(),
        };
        Some(cursor.render())
    }

    fn state(&self) -> (Option<u64>, u64, u64) {
        (self.next, self.final_next, self.generation)
    }

    fn on_head(&mut self, head: u64, out: &mut Output) {
        self.last_head = head;
        if self.config.finalized_tag {
            out.request(jsonrpc::finalized_request(self.endpoints.best()));
        }
        if self.next.is_none() {
            let start = if self.config.final_only {
                self.final_head()
            } else {
                head
            };
            self.next = Some(start);
            self.final_next = start;
        }
        self.ahead = FOLLOW_UPS_PER_HEAD * u64::from(self.config.parallel);
        // Ranges that failed or got no answer (a round the host cut short) are asked for
        // again; the logs of an accepted header too. A repeated answer is dropped.
        let failed: Vec<(u64, u64)> = self
            .ranges
            .iter()
            .filter_map(|(&from, r)| match r {
                Range::Failed(to) | Range::Asked(to) => Some((from, *to)),
                Range::Done(..) => None,
            })
            .collect();
        for (from, to) in failed {
            self.ranges.insert(from, Range::Asked(to));
            out.request(self.logs_request(Tag::Range(from, to)));
        }
        if let Some((number, hash, _)) = &self.awaiting {
            out.request(self.logs_request(Tag::Logs(*number, hash.clone())));
        }
        self.confirm(out);
        self.go_on(out, true);
    }

    /// Ask for what comes next: backfill ranges while the blocks are final, else the next
    /// header (or, at a head with nothing new, the tip's). Away from a head (a follow-up)
    /// within the follow-up budget.
    fn go_on(&mut self, out: &mut Output, at_head: bool) {
        let Some(next) = self.next else { return };
        let final_head = self.final_head();
        // Backfill while everything emitted is final and the next block is too.
        if self.final_next == next && (next <= final_head || !self.ranges.is_empty()) {
            let mut frontier = self.ranges.last_key_value().map_or(next, |(_, r)| match r {
                Range::Asked(to) | Range::Failed(to) | Range::Done(to, _) => to + 1,
            });
            // At most `parallel` ranges asked for or waiting for an earlier one: memory
            // stays bounded when the first range is slow.
            while self.ranges.len() < self.config.parallel as usize
                && frontier <= final_head
                && (at_head || self.ahead > 0)
            {
                if !at_head {
                    self.ahead -= 1;
                }
                let to = final_head.min(frontier + self.range_size - 1);
                self.ranges.insert(frontier, Range::Asked(to));
                out.request(self.logs_request(Tag::Range(frontier, to)));
                frontier = to + 1;
            }
            return;
        }
        if self.config.final_only || self.awaiting.is_some() || !self.ranges.is_empty() {
            return;
        }
        if next <= self.last_head {
            if !at_head {
                if self.ahead == 0 {
                    return;
                }
                self.ahead -= 1;
            }
            out.request(self.header_request(next));
        } else if at_head && !self.kept.is_empty() {
            let check = self.last_head.min(next - 1);
            if self.kept_at(check).is_some() {
                out.request(self.header_request(check));
            }
        }
    }

    /// Near the head: ask again for the logs of the oldest kept block that became final (a
    /// block without logs is final at once).
    fn confirm(&mut self, out: &mut Output) {
        let Some(next) = self.next else { return };
        let final_head = self.final_head();
        while self.final_next < next && self.final_next <= final_head {
            let Some(kept) = self.kept_at(self.final_next) else {
                // Not kept (a cursor of a block emitted final): nothing to confirm.
                self.final_next += 1;
                continue;
            };
            if kept.2.is_empty() {
                self.final_next += 1;
                continue;
            }
            out.request(self.logs_request(Tag::Final(self.final_next, kept.0.clone())));
            break;
        }
        self.trim();
    }

    fn trim(&mut self) {
        let Some(next) = self.next else { return };
        while self.kept.len() > self.config.keep_blocks as usize
            && next - (self.kept.len() as u64) < self.final_next
        {
            self.kept.pop_front();
        }
    }

    fn on_header(
        &mut self,
        number: u64,
        body: &Value,
        out: &mut Output,
    ) -> Result<(), PluginError> {
        let what = format!("eth_getBlockByNumber({number})");
        let result = jsonrpc::result(body, &what)?;
        let Some(next) = self.next else {
            return Ok(());
        };
        if result.is_null() {
            return Ok(());
        }
        let header = RpcHeader::deserialize(result)
            .map_err(|e| PluginError::bad_input(format!("{what}: unexpected block: {e}")))?;
        if json::hex_u64(&header.number)? != number {
            return Err(PluginError::bad_input(format!(
                "{what}: another block answered"
            )));
        }
        if number < next {
            match self.kept_at(number) {
                Some(kept) if kept.0 != header.hash => {
                    while self.next.is_some_and(|n| n > number) {
                        self.undo_tip(out)?;
                    }
                }
                _ => return Ok(()),
            }
        } else if number > next {
            return Ok(());
        }
        if let Some(tip) = self.kept.back()
            && tip.0 != header.parent_hash
        {
            self.undo_tip(out)?;
            self.go_on(out, false);
            return Ok(());
        }
        out.request(self.logs_request(Tag::Logs(number, header.hash.clone())));
        self.awaiting = Some((number, header.hash, header.parent_hash));
        Ok(())
    }

    /// The block at the tip left the chain: undo its logs, newest first, and step back.
    fn undo_tip(&mut self, out: &mut Output) -> Result<(), PluginError> {
        let Some(next) = self.next else { return Ok(()) };
        let number = next - 1;
        if number < self.final_next {
            return Err(PluginError::fatal(format!(
                "the chain reorganised at block {number}, whose logs were emitted as \
                 irreversible (finality_depth {}): raise `finality_depth`",
                self.config.finality_depth
            )));
        }
        let Some(Kept(hash, generation, logs)) = self.kept.pop_back() else {
            return Err(PluginError::fatal(format!(
                "the chain reorganised below the blocks kept (at block {number}): raise \
                 `keep_blocks`"
            )));
        };
        self.generation += 1;
        for (index, address) in logs.iter().rev() {
            let undo = UndoRecord {
                chain: &self.config.chain,
                block_number: number,
                block_hash: &hash,
                log_index: *index,
                address,
                fork_step: "undo",
            };
            out.emit(
                Event::new("logs", &undo)
                    .key(address)
                    .undoes(self.generation, &log_id(number, &hash, *index, generation)),
            );
        }
        self.next = Some(number);
        self.awaiting = None;
        Ok(())
    }

    /// The logs of a block or a range, checked: each inside what was asked for.
    fn parse_logs(
        &self,
        body: &Value,
        what: &str,
        blocks: (u64, u64),
        hash: Option<&str>,
    ) -> Result<Vec<Log>, PluginError> {
        let result = jsonrpc::result(body, what)?;
        let logs = Vec::<RpcLog>::deserialize(result)
            .map_err(|e| PluginError::bad_input(format!("{what}: unexpected logs: {e}")))?;
        let mut checked = Vec::with_capacity(logs.len());
        for log in logs.into_iter().filter(|l| !l.removed) {
            let block = json::hex_u64(&log.block_number)?;
            if block < blocks.0 || block > blocks.1 || hash.is_some_and(|h| h != log.block_hash) {
                return Err(PluginError::bad_input(format!(
                    "{what}: a log of block {block} {} was not asked for",
                    log.block_hash
                )));
            }
            checked.push(Log {
                block,
                index: json::hex_u64(&log.log_index)?,
                transaction_index: json::hex_u64(&log.transaction_index)?,
                address: log.address.to_ascii_lowercase(),
                block_hash: log.block_hash,
                transaction_hash: log.transaction_hash,
                topics: log.topics,
                data: log.data,
            });
        }
        checked.sort_by_key(|l| (l.block, l.index));
        Ok(checked)
    }

    fn event(&self, log: &Log, fork_step: &'static str) -> Event {
        let record = LogRecord {
            chain: &self.config.chain,
            block_number: log.block,
            block_hash: &log.block_hash,
            transaction_hash: &log.transaction_hash,
            transaction_index: log.transaction_index,
            log_index: log.index,
            address: &log.address,
            topics: &log.topics,
            data: &log.data,
            event: self
                .abis
                .iter()
                .find_map(|a| a.decode(&log.topics, &log.data))
                .or_else(|| decode(&log.topics, &log.data)),
            fork_step,
        };
        Event::new("logs", &record).key(&log.address)
    }

    fn emit_final(&self, log: &Log, generation: u64, out: &mut Output) {
        let id = log_id(log.block, &log.block_hash, log.index, generation);
        out.emit(self.event(log, "irreversible").irreversible(&id));
    }

    fn on_logs(
        &mut self,
        number: u64,
        hash: &str,
        body: &Value,
        out: &mut Output,
    ) -> Result<(), PluginError> {
        let what = format!("eth_getLogs(block {number} {hash})");
        let logs = self.parse_logs(body, &what, (number, number), Some(hash))?;
        let Some((awaited, awaited_hash, parent)) = self.awaiting.clone() else {
            return Ok(());
        };
        let on_tip = self.kept.back().is_none_or(|tip| tip.0 == parent);
        if awaited != number || awaited_hash != hash || self.next != Some(number) || !on_tip {
            return Ok(());
        }
        let deep = self.final_next == number && number <= self.final_head();
        for log in &logs {
            if deep {
                self.emit_final(log, self.generation, out);
            } else {
                let id = log_id(number, hash, log.index, self.generation);
                out.emit(self.event(log, "new").upstream_id(id));
            }
        }
        if deep {
            self.final_next = number + 1;
        }
        let indices = logs.iter().map(|l| (l.index, l.address.clone())).collect();
        self.kept
            .push_back(Kept(hash.to_owned(), self.generation, indices));
        self.next = Some(number + 1);
        self.awaiting = None;
        self.trim();
        self.go_on(out, false);
        Ok(())
    }

    fn on_final(
        &mut self,
        number: u64,
        hash: &str,
        body: &Value,
        out: &mut Output,
    ) -> Result<(), PluginError> {
        let what = format!("eth_getLogs(block {number} {hash})");
        let logs = self.parse_logs(body, &what, (number, number), Some(hash))?;
        let Some(kept) = self.kept_at(number).filter(|_| number == self.final_next) else {
            return Ok(());
        };
        if kept.0 != hash {
            return Ok(());
        }
        let generation = kept.1;
        for log in &logs {
            self.emit_final(log, generation, out);
        }
        self.final_next += 1;
        self.confirm(out);
        Ok(())
    }

    fn on_range(
        &mut self,
        from: u64,
        to: u64,
        body: &Value,
        out: &mut Output,
    ) -> Result<(), PluginError> {
        if !matches!(self.ranges.get(&from), Some(Range::Asked(t)) if *t == to) {
            return Ok(());
        }
        let what = format!("eth_getLogs(blocks {from}..={to})");
        if let Some((code, message)) = jsonrpc::error(body)
            && to > from
            && too_large(message)
        {
            let mid = from + (to - from) / 2;
            self.range_size = (mid - from + 1).max(1);
            host::log(
                LogLevel::Info,
                &format!(
                    "{what} refused ({code}: {message}): asking in halves of {} blocks",
                    self.range_size
                ),
            );
            self.ranges.insert(from, Range::Asked(mid));
            self.ranges.insert(mid + 1, Range::Asked(to));
            out.request(self.logs_request(Tag::Range(from, mid)));
            out.request(self.logs_request(Tag::Range(mid + 1, to)));
            return Ok(());
        }
        let logs = match self.parse_logs(body, &what, (from, to), None) {
            Ok(logs) => logs,
            Err(error) => {
                self.ranges.insert(from, Range::Failed(to));
                return Err(error);
            }
        };
        self.ranges.insert(from, Range::Done(to, logs));
        // Emit the ranges that are next in line, in order.
        while let Some(next) = self.next {
            let Some(Range::Done(..)) = self.ranges.get(&next) else {
                break;
            };
            let Some(Range::Done(to, logs)) = self.ranges.remove(&next) else {
                break;
            };
            for log in &logs {
                self.emit_final(log, self.generation, out);
            }
            self.next = Some(to + 1);
            self.final_next = to + 1;
            self.kept.clear();
        }
        self.go_on(out, false);
        Ok(())
    }

    fn on_answer(&mut self, tag: &Tag, body: &Value, out: &mut Output) -> Result<(), PluginError> {
        match tag {
            Tag::Header(n) => self.on_header(*n, body, out),
            Tag::Logs(n, hash) => self.on_logs(*n, hash, body, out),
            Tag::Final(n, hash) => self.on_final(*n, hash, body, out),
            Tag::Range(from, to) => self.on_range(*from, *to, body, out),
        }
    }
}

/// An address, a topic, or `null` / a list of topics in one position, checked.
fn check_topic(value: &Value) -> Result<(), String> {
    match value {
        Value::Null => Ok(()),
        Value::String(t) if is_hex(t, 64) => Ok(()),
        Value::Array(list)
            if list
                .iter()
                .all(|t| t.as_str().is_some_and(|t| is_hex(t, 64))) =>
        {
            Ok(())
        }
        other => Err(format!(
            "invalid config: topic `{other}` is not null, a 32-byte 0x topic, or a list of them"
        )),
    }
}

impl Connector for EvmLogs {
    fn manifest() -> Manifest {
        Manifest::new(
            "evm-logs",
            env!("CARGO_PKG_VERSION"),
            "Contract logs of an EVM chain over JSON-RPC (eth_getLogs) by address and topics: \
             final blocks backfilled in parallel ranges, blocks near the head followed by hash \
             with undo on a reorganisation; ERC-20 and ERC-721 Transfer and Approval decoded",
        )
        .schema(json!({
            "type": "object",
            "required": ["url"],
            "additionalProperties": false,
            "properties": {
                "url": jsonrpc::urls_schema(),
                "max_lag_blocks": {"type": "integer", "minimum": 0, "default": default_max_lag_blocks()},
                "aside_polls": {"type": "integer", "minimum": 1, "default": default_aside_polls()},
                "chain": {"type": "string", "minLength": 1, "default": default_chain()},
                "interval_ms": {"type": "integer", "minimum": 1, "default": default_interval_ms()},
                "address": {
                    "description": "the contract(s) whose logs to read; default: every contract",
                    "oneOf": [
                        {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"},
                        {"type": "array", "items": {"type": "string", "pattern": "^0x[0-9a-fA-F]{40}$"}}
                    ]
                },
                "topics": {
                    "type": "array", "maxItems": 4,
                    "description": "eth_getLogs topic filter: per position null, a topic, or a list"
                },
                "start_block": {"type": "integer", "minimum": 0,
                    "description": "first block when there is no cursor; default: the current head"},
                "events": {"type": "array", "items": {"type": "string"},
                    "description": "ABI event signatures to decode, as `Name(type [indexed] [name], ...)`; static types, bytes and string"},
                "max_range": {"type": "integer", "minimum": 1, "default": default_max_range(),
                    "description": "blocks per eth_getLogs range in a backfill"},
                "parallel": {"type": "integer", "minimum": 1, "default": default_parallel(),
                    "description": "backfill ranges asked for at once"},
                "finality_depth": {"type": "integer", "minimum": 0, "default": default_finality_depth()},
                "keep_blocks": {"type": "integer", "minimum": 1, "default": default_keep_blocks()},
                "final_only": {"type": "boolean", "default": false},
                "finalized_tag": {"type": "boolean", "default": false,
                    "description": "also ask the node for its `finalized` block: blocks up to it are irreversible"}
            }
        }))
        .example(json!({
            "url": "http://127.0.0.1:8545",
            "chain": "ethereum",
            "address": "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48",
            "topics": [TRANSFER],
            "start_block": 19000000,
            "max_range": 2000,
            "parallel": 4
        }))
    }

    fn open(config: &str, cursor: Option<&str>) -> Result<Self, PluginError> {
        let config: Config = json::config(config)?;
        let endpoints = jsonrpc::Endpoints::from_config(
            config.url.clone(),
            config.max_lag_blocks,
            config.aside_polls.max(1),
        )?;
        if config.chain.is_empty() {
            return Err(PluginError::fatal("invalid config: `chain` is empty"));
        }
        if config.interval_ms == 0 || config.max_range == 0 || config.parallel == 0 {
            return Err(PluginError::fatal(
                "invalid config: `interval_ms`, `max_range` and `parallel` must be at least 1",
            ));
        }
        if config.keep_blocks <= config.finality_depth {
            return Err(PluginError::fatal(format!(
                "invalid config: `keep_blocks` ({}) must be more than `finality_depth` ({})",
                config.keep_blocks, config.finality_depth
            )));
        }
        let addresses: Vec<String> = match &config.address {
            None => Vec::new(),
            Some(OneOrMany::One(a)) => vec![a.clone()],
            Some(OneOrMany::Many(list)) => list.clone(),
        };
        if let Some(bad) = addresses.iter().find(|a| !is_hex(a, 40)) {
            return Err(PluginError::fatal(format!(
                "invalid config: address `{bad}` is not 0x and 40 hex digits"
            )));
        }
        if config.topics.len() > 4 {
            return Err(PluginError::fatal(
                "invalid config: at most 4 topic positions",
            ));
        }
        for topic in &config.topics {
            check_topic(topic).map_err(PluginError::fatal)?;
        }
        let abis = config
            .events
            .iter()
            .map(|e| abi::EventAbi::parse(e))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PluginError::fatal(format!("invalid config: {e}")))?;
        let mut filter = serde_json::Map::new();
        if !addresses.is_empty() {
            let lower: Vec<String> = addresses.iter().map(|a| a.to_ascii_lowercase()).collect();
            filter.insert("address".into(), json!(lower));
        }
        if !config.topics.is_empty() {
            filter.insert("topics".into(), json!(config.topics));
        }
        let mut connector = EvmLogs {
            filter,
            next: config.start_block,
            kept: VecDeque::new(),
            generation: 0,
            final_next: config.start_block.unwrap_or(0),
            last_head: 0,
            finalized: 0,
            ranges: BTreeMap::new(),
            range_size: u64::from(config.max_range),
            ahead: 0,
            awaiting: None,
            endpoints,
            abis,
            config,
        };
        if let Some(text) = cursor {
            let cursor = Cursor::parse(text)?;
            connector.next = Some(cursor.next);
            connector.generation = cursor.generation;
            connector.final_next = cursor.final_next;
            connector.kept = cursor.kept.into();
        }
        Ok(connector)
    }

    fn plan(&self) -> Plan {
        let mut plan = Plan::http(self.config.interval_ms);
        for request in self.endpoints.head_requests() {
            plan = plan.request(request);
        }
        plan.into()
    }

    fn on_response(
        &mut self,
        response: &HttpResponse,
        out: &mut Output,
    ) -> Result<(), PluginError> {
        if let Some(index) = self.endpoints.head_index(&response.tag) {
            let before = self.state();
            if let Some(head) = self.endpoints.answer_head(index, response)? {
                self.on_head(head, out);
            }
            if self.state() != before
                && let Some(cursor) = self.cursor()
            {
                out.set_cursor(cursor);
            }
            return Ok(());
        }
        if response.tag == jsonrpc::FINALIZED_TAG {
            if let Some(number) = jsonrpc::finalized_number(response)? {
                self.finalized = self.finalized.max(number);
            }
            return Ok(());
        }
        let tag = Tag::parse(&response.tag).ok_or_else(|| {
            PluginError::bad_input(format!("response with unknown tag `{}`", response.tag))
        })?;
        let before = self.state();
        let body = match json::response(response) {
            Ok(body) => body,
            Err(error) => {
                if let Tag::Range(from, to) = tag {
                    self.ranges.insert(from, Range::Failed(to));
                }
                return Err(error);
            }
        };
        let answered = self.on_answer(&tag, &body, out);
        if self.state() != before
            && let Some(cursor) = self.cursor()
        {
            out.set_cursor(cursor);
        }
        answered
    }
}

export_connector!(EvmLogs);

#[cfg(test)]
mod tests;
