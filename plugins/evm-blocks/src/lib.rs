//! Blocks of an EVM chain (Ethereum and compatible) over JSON-RPC, as `blocks` events, in
//! order, following the chain by hash: a block that leaves the chain in a reorganisation is
//! taken back with an `undo` event, and a block `finality_depth` below the head is confirmed
//! with an `irreversible` one.
//!
//! Every `interval_ms` the host asks for the head (`eth_blockNumber`, tag `head`). The answer
//! tells the connector which blocks are new; it asks for each (`eth_getBlockByNumber`, tag
//! `block:<n>`), at most `max_blocks_per_poll` past the last block done.
//!
//! **Following the chain.** The connector keeps the hashes of the last `keep_blocks` blocks it
//! emitted. A new block must name the last one as its parent. When it does not, the last
//! block left the chain: the connector emits an `undo` for it, steps back one block and asks
//! for that height again, until a block's parent is one it kept (the fork point); then the
//! new branch follows, block by block. When there is no new block, it asks for the block at
//! its own tip again, so a branch that replaced the tip without growing past it is found too.
//!
//! **Fork steps.** Every event's payload says `fork_step`:
//!
//! - `new`: a block on the chain as it stands; upstream id `<number>:<hash>` (with `:<n>`
//!   after a reorganisation, `n` counting the undos, so a block that leaves and comes back is
//!   a new record each time);
//! - `undo`: that block left the chain (upstream id `undo:<n>:<the block's upstream id>`;
//!   stores take the block off their canonical view, subscribers get `{"type":"undo",…}`);
//! - `irreversible`: the block is `finality_depth` blocks deep (upstream id
//!   `final:<the block's upstream id>`); a block already that deep when first seen (a
//!   backfill) comes only as `irreversible`. With `final_only`, only irreversible blocks are
//!   emitted: nothing is ever undone. A reorganisation deeper than `finality_depth` stops the
//!   source with a fatal error saying so, rather than take back what it called irreversible.
//!
//! **State, and why nothing is skipped or repeated.** The cursor is JSON:
//! `{"next":N,"generation":G,"final_next":F,"kept":[["<hash>",g],…]}`: `next`, the first
//! block not emitted; `kept`, the hashes of the blocks just below it (with the generation of
//! each one's upstream id); `final_next`, the first block not yet emitted as irreversible. It
//! moves in the same output as the events it passed, so a restart (or another node taking the
//! source over) resumes right after them with the hashes to check the chain against. A plain
//! number (the cursor of earlier versions) is read as the last block emitted, with no hashes.
//! `held`: blocks that arrived ahead of a missing one wait until the gap fills, so events
//! leave in order; only blocks within `max_blocks_per_poll` of `next` are asked for, which
//! bounds it. A JSON-RPC `error` is retryable; a `null` block (the node is not there yet) is
//! simply asked for again. Without a cursor the connector starts at `start_block`, or else at
//! the head it first sees (only new blocks).
//!
//! With `finalized_tag`, the node is also asked for its `finalized` block at every head, and
//! blocks up to it are irreversible even when less than `finality_depth` deep (a node that
//! does not know the tag leaves finality to depth; some test nodes answer it with the head,
//! hence off by default). `url` may be a list: see `jsonrpc::Endpoints` in the SDK.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use anode_plugin_sdk::prelude::*;
use serde::de::IgnoredAny;

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
    start_block: Option<u64>,
    #[serde(default = "default_max_blocks_per_poll")]
    max_blocks_per_poll: u32,
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

fn default_max_blocks_per_poll() -> u32 {
    20
}

/// An endpoint whose head is further behind the highest is set aside.
fn default_max_lag_blocks() -> u64 {
    5
}

/// Head polls a set-aside endpoint sits out.
fn default_aside_polls() -> u32 {
    10
}

/// Ethereum's proof-of-stake finality is two epochs (64 blocks) behind the head.
fn default_finality_depth() -> u32 {
    64
}

fn default_keep_blocks() -> u32 {
    128
}

const BLOCK_TAG_PREFIX: &str = "block:";
const FINAL_TAG_PREFIX: &str = "final:";
/// Windows of blocks asked for as follow-ups between two heads: well below the host's
/// default of 50 rounds per poll.
const FOLLOW_UP_ROUNDS: u64 = 20;

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
    fork_step: &'static str,
}

/// The payload of an `undo`: which block left the chain.
#[derive(Serialize)]
struct UndoRecord<'a> {
    chain: &'a str,
    number: u64,
    hash: &'a str,
    fork_step: &'static str,
}

/// A block as answered, checked and converted.
struct Block {
    number: u64,
    hash: String,
    parent_hash: String,
    timestamp: u64,
    miner: String,
    gas_used: u64,
    gas_limit: u64,
    base_fee_per_gas: Option<String>,
    transaction_count: usize,
}

/// A block emitted and still on the chain, as the cursor keeps it: its hash and the
/// generation its upstream id carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Kept(String, u64);

/// The cursor, as stored.
type Cursor = jsonrpc::ChainCursor<Kept>;

/// The upstream id of block `number` with `hash`, emitted in `generation`.
fn block_id(number: u64, hash: &str, generation: u64) -> String {
    if generation == 0 {
        format!("{number}:{hash}")
    } else {
        format!("{number}:{hash}:{generation}")
    }
}

/// The connector.
pub struct EvmBlocks {
    config: Config,
    /// The first block not yet emitted; `None` until the first head when starting at the head.
    next: Option<u64>,
    /// The blocks just below `next`, oldest first: at least the last `keep_blocks`, and every
    /// one not yet irreversible.
    kept: VecDeque<Kept>,
    /// Undos made so far: the generation of the upstream ids of blocks emitted now.
    generation: u64,
    /// The first block not yet emitted as irreversible.
    final_next: u64,
    /// Blocks received ahead of a missing one.
    held: BTreeMap<u64, Block>,
    /// Blocks asked for and not answered yet.
    in_flight: BTreeSet<u64>,
    /// Blocks asked for again to be emitted as irreversible, received ahead of a missing one.
    finals: BTreeMap<u64, Block>,
    /// The head the node answered last (0 before any).
    last_head: u64,
    /// Blocks that may still be asked for as follow-ups before the next head: a long backfill
    /// goes on at the next head rather than exceed the host's rounds per poll
    /// (`sources.http_max_rounds`).
    ahead: u64,
    /// The highest block the node called `finalized` (with `finalized_tag`).
    finalized: u64,
    /// The endpoints, the one with the highest head serving.
    endpoints: jsonrpc::Endpoints,
}

impl EvmBlocks {
    fn block_request(&self, number: u64, tag_prefix: &str) -> HttpRequest {
        let params = json!([format!("{number:#x}"), false]);
        let body = jsonrpc::call(number, "eth_getBlockByNumber", params);
        let url = self.endpoints.best();
        HttpRequest::post_json(url, &body, format!("{tag_prefix}{number}"))
    }

    fn depth(&self) -> u64 {
        u64::from(self.config.finality_depth)
    }

    /// The highest block that is irreversible: `finality_depth` below the head, or the node's
    /// `finalized` block if it is higher (with `finalized_tag`).
    fn final_head(&self) -> u64 {
        self.last_head
            .saturating_sub(self.depth())
            .max(self.finalized.min(self.last_head))
    }

    fn window(&self) -> u64 {
        u64::from(self.config.max_blocks_per_poll)
    }

    /// The kept block at `number`, if it is kept.
    fn kept_at(&self, number: u64) -> Option<&Kept> {
        let next = self.next?;
        let first = next.checked_sub(self.kept.len() as u64)?;
        let index = number.checked_sub(first)?;
        self.kept.get(usize::try_from(index).ok()?)
    }

    fn cursor(&self, next: u64) -> String {
        let cursor = Cursor {
            next,
            generation: self.generation,
            final_next: self.final_next,
            kept: self.kept.iter().cloned().collect(),
        };
        cursor.render()
    }

    /// The head is known: ask for the blocks from `next` up to it (or up to the depth of
    /// finality, with `final_only`), within the window; ask for the tip again when nothing
    /// is new, and for the blocks that became irreversible.
    fn on_head(&mut self, head: u64, out: &mut Output) -> Result<(), PluginError> {
        self.last_head = head;
        self.ahead = FOLLOW_UP_ROUNDS * self.window();
        if self.config.finalized_tag {
            out.request(jsonrpc::finalized_request(self.endpoints.best()));
        }
        let final_head = self.final_head();
        let target = if self.config.final_only {
            final_head
        } else {
            head
        };
        let next = match self.next {
            Some(next) => next,
            None => {
                // Only new blocks: start here; the cursor says everything before is done, so
                // a restart before this block arrives does not skip it.
                self.final_next = target;
                out.set_cursor(self.cursor(target));
                *self.next.insert(target)
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
        if target >= next {
            self.ask_ahead(out);
        } else if !self.config.final_only && !self.kept.is_empty() {
            // Nothing new: is the block at our tip (or at the node's head, if it is behind
            // us) still the one we emitted?
            let check = target.min(next - 1);
            if self.kept_at(check).is_some() {
                out.request(self.block_request(check, BLOCK_TAG_PREFIX));
                self.in_flight.insert(check);
            }
        }
        if !self.config.final_only {
            let last = final_head
                .min(next.saturating_sub(1))
                .min(self.final_next.saturating_add(self.window() - 1));
            for number in self.final_next..=last {
                if !self.finals.contains_key(&number) && self.kept_at(number).is_some() {
                    out.request(self.block_request(number, FINAL_TAG_PREFIX));
                }
            }
        }
        Ok(())
    }

    /// The highest block to emit now: the head, or with `final_only` the deepest final block.
    fn target(&self) -> u64 {
        if self.config.final_only {
            self.final_head()
        } else {
            self.last_head
        }
    }

    /// Ask for the blocks from `next` up to the target, within the window, that are neither
    /// held nor asked for already.
    fn ask_ahead(&mut self, out: &mut Output) {
        let Some(next) = self.next else { return };
        let last = self.target().min(next.saturating_add(self.window() - 1));
        for number in next..=last {
            if !self.held.contains_key(&number) && self.in_flight.insert(number) {
                out.request(self.block_request(number, BLOCK_TAG_PREFIX));
            }
        }
    }

    /// Block `number` answered: a block to emit (held until it is next), or a check of one
    /// emitted already.
    fn on_block(&mut self, number: u64, body: &Value, out: &mut Output) -> Result<(), PluginError> {
        self.in_flight.remove(&number);
        let Some(next) = self.next else {
            return Err(PluginError::bad_input(format!(
                "block {number} answered before any head"
            )));
        };
        let result = jsonrpc::result(body, &format!("eth_getBlockByNumber({number})"))?;
        if result.is_null() {
            // The node does not have it yet; the next head poll asks again.
            return Ok(());
        }
        let block = self.parse_block(number, result)?;
        let before = (next, self.final_next, self.generation);
        if number < next {
            // A block emitted already: still the same, or did the chain change below us?
            match self.kept_at(number) {
                Some(kept) if kept.0 != block.hash => {
                    while self.next.is_some_and(|n| n > number) {
                        self.undo_tip(out)?;
                    }
                    self.held.clear();
                    self.in_flight.clear();
                    self.held.insert(number, block);
                }
                _ => return Ok(()),
            }
        } else if number - next >= self.window() {
            // Never asked for, or asked for before a reorganisation moved `next` back:
            // holding it would let the buffer grow without bound. Asked for again in time.
            host::log(
                LogLevel::Debug,
                &format!("block {number} is past the window (next block is {next}); dropped"),
            );
            return Ok(());
        } else {
            self.held.entry(number).or_insert(block);
        }
        self.emit_held(out)?;
        // Go on without waiting for the next head: a backfill, or the branch after a fork,
        // within the follow-up budget.
        if self.ahead > 0 {
            let asked = self.in_flight.len();
            self.ask_ahead(out);
            let more = (self.in_flight.len() - asked) as u64;
            self.ahead = self.ahead.saturating_sub(more);
        }
        let next = self.next.unwrap_or(next);
        if (next, self.final_next, self.generation) != before {
            out.set_cursor(self.cursor(next));
        }
        Ok(())
    }

    /// Emit every held block that is next in line and whose parent is our tip; at a block
    /// whose parent is not, undo the tip and ask for its height again.
    fn emit_held(&mut self, out: &mut Output) -> Result<(), PluginError> {
        while let Some(next) = self.next {
            let Some(block) = self.held.remove(&next) else {
                break;
            };
            if let Some(tip) = self.kept.back()
                && tip.0 != block.parent_hash
            {
                // Asked for again by `ask_ahead`, with the rest of the branch.
                self.undo_tip(out)?;
                self.held.clear();
                self.in_flight.clear();
                break;
            }
            self.emit_new(block, out);
            self.next = Some(next + 1);
        }
        self.trim();
        Ok(())
    }

    /// Emit `block`, on the chain: irreversible if it is deep enough and everything before it
    /// is, else new.
    fn emit_new(&mut self, block: Block, out: &mut Output) {
        let id = block_id(block.number, &block.hash, self.generation);
        let deep = self.config.final_only
            || (self.final_next == block.number && block.number <= self.final_head());
        let event = if deep {
            self.final_next = block.number + 1;
            self.event(&block, "irreversible").irreversible(&id)
        } else {
            self.event(&block, "new").upstream_id(id)
        };
        out.emit(event);
        self.kept.push_back(Kept(block.hash, self.generation));
    }

    /// The block at our tip left the chain: say so, and step back one block.
    fn undo_tip(&mut self, out: &mut Output) -> Result<(), PluginError> {
        let Some(next) = self.next else {
            return Ok(());
        };
        let number = next - 1;
        if number < self.final_next {
            return Err(PluginError::fatal(format!(
                "the chain reorganised at block {number}, which was emitted as irreversible \
                 (finality_depth {}): raise `finality_depth`",
                self.config.finality_depth
            )));
        }
        let Some(Kept(hash, generation)) = self.kept.pop_back() else {
            return Err(PluginError::fatal(format!(
                "the chain reorganised below the {} blocks kept (at block {number}): raise \
                 `keep_blocks`",
                self.config.keep_blocks
            )));
        };
        self.generation += 1;
        let undo = UndoRecord {
            chain: &self.config.chain,
            number,
            hash: &hash,
            fork_step: "undo",
        };
        out.emit(
            Event::new("blocks", &undo)
                .key(&self.config.chain)
                .undoes(self.generation, &block_id(number, &hash, generation)),
        );
        self.next = Some(number);
        Ok(())
    }

    /// Forget kept blocks beyond `keep_blocks` that are irreversible already.
    fn trim(&mut self) {
        let Some(next) = self.next else { return };
        while self.kept.len() > self.config.keep_blocks as usize
            && next - (self.kept.len() as u64) < self.final_next
        {
            self.kept.pop_front();
        }
    }

    /// Block `number`, asked for again as it became irreversible, answered.
    fn on_final(&mut self, number: u64, body: &Value, out: &mut Output) -> Result<(), PluginError> {
        let result = jsonrpc::result(body, &format!("eth_getBlockByNumber({number})"))?;
        if result.is_null() || number < self.final_next {
            return Ok(());
        }
        let block = self.parse_block(number, result)?;
        if number - self.final_next < self.window() {
            self.finals.insert(number, block);
        }
        let before = self.final_next;
        while let Some(block) = self.finals.remove(&self.final_next) {
            let Some(kept) = self.kept_at(block.number) else {
                break;
            };
            if kept.0 != block.hash {
                // Not the block we emitted: the chain changed under it. The tip checks find
                // the fork point; nothing is called irreversible meanwhile.
                self.finals.clear();
                break;
            }
            let id = block_id(block.number, &block.hash, kept.1);
            out.emit(self.event(&block, "irreversible").irreversible(&id));
            self.final_next += 1;
        }
        if self.final_next != before {
            self.trim();
            if let Some(next) = self.next {
                out.set_cursor(self.cursor(next));
            }
        }
        Ok(())
    }

    fn parse_block(&self, number: u64, result: &Value) -> Result<Block, PluginError> {
        let block = RpcBlock::deserialize(result).map_err(|e| {
            PluginError::bad_input(format!("block {number}: unexpected block: {e}"))
        })?;
        let found = json::hex_u64(&block.number)?;
        if found != number {
            return Err(PluginError::bad_input(format!(
                "asked for block {number}, got block {found}"
            )));
        }
        Ok(Block {
            number,
            timestamp: json::hex_u64(&block.timestamp)?,
            gas_used: json::hex_u64(&block.gas_used)?,
            gas_limit: json::hex_u64(&block.gas_limit)?,
            base_fee_per_gas: block
                .base_fee_per_gas
                .as_deref()
                .map(json::hex_decimal)
                .transpose()?,
            transaction_count: block.transactions.len(),
            hash: block.hash,
            parent_hash: block.parent_hash,
            miner: block.miner,
        })
    }

    fn event(&self, block: &Block, fork_step: &'static str) -> Event {
        let record = BlockRecord {
            chain: &self.config.chain,
            number: block.number,
            hash: &block.hash,
            parent_hash: &block.parent_hash,
            timestamp: block.timestamp,
            miner: &block.miner,
            gas_used: block.gas_used,
            gas_limit: block.gas_limit,
            base_fee_per_gas: block.base_fee_per_gas.clone(),
            transaction_count: block.transaction_count,
            fork_step,
        };
        let time_us = i64::try_from(block.timestamp)
            .unwrap_or(i64::MAX)
            .saturating_mul(1_000_000);
        Event::new("blocks", &record)
            .key(&self.config.chain)
            .at(time_us)
    }
}

impl Connector for EvmBlocks {
    fn manifest() -> Manifest {
        Manifest::new(
            "evm-blocks",
            env!("CARGO_PKG_VERSION"),
            "Blocks of an EVM chain over JSON-RPC (eth_blockNumber, eth_getBlockByNumber), in \
             order, following the chain by hash: a block that leaves the chain is undone, one \
             finality_depth deep is confirmed irreversible; resumes from the last block stored",
        )
        .schema(json!({
            "type": "object",
            "required": ["url"],
            "additionalProperties": false,
            "properties": {
                "url": jsonrpc::urls_schema(),
                "max_lag_blocks": {"type": "integer", "minimum": 0, "default": default_max_lag_blocks(),
                    "description": "with several urls: one whose head is further behind the highest is set aside"},
                "aside_polls": {"type": "integer", "minimum": 1, "default": default_aside_polls(),
                    "description": "head polls a set-aside endpoint sits out"},
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
                },
                "finality_depth": {
                    "type": "integer",
                    "minimum": 0,
                    "default": default_finality_depth(),
                    "description": "blocks this far below the head are irreversible"
                },
                "keep_blocks": {
                    "type": "integer",
                    "minimum": 1,
                    "default": default_keep_blocks(),
                    "description": "hashes of the last blocks kept to find a fork point; more than finality_depth"
                },
                "final_only": {
                    "type": "boolean",
                    "default": false,
                    "description": "emit only irreversible blocks: nothing is ever undone"
                },
                "finalized_tag": {
                    "type": "boolean",
                    "default": false,
                    "description": "also ask the node for its `finalized` block: blocks up to it are irreversible even when less deep than finality_depth"
                }
            }
        }))
        .example(json!({
            "url": "http://127.0.0.1:9100/evm",
            "chain": "ethereum",
            "interval_ms": 2000,
            "max_blocks_per_poll": 20,
            "finality_depth": 64
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
        if config.interval_ms == 0 || config.max_blocks_per_poll == 0 {
            return Err(PluginError::fatal(
                "invalid config: `interval_ms` and `max_blocks_per_poll` must be at least 1",
            ));
        }
        if config.keep_blocks <= config.finality_depth {
            return Err(PluginError::fatal(format!(
                "invalid config: `keep_blocks` ({}) must be more than `finality_depth` ({}), \
                 or a reorganisation that finality allows could not be followed",
                config.keep_blocks, config.finality_depth
            )));
        }
        let mut connector = EvmBlocks {
            next: None,
            kept: VecDeque::new(),
            generation: 0,
            final_next: config.start_block.unwrap_or(0),
            held: BTreeMap::new(),
            in_flight: BTreeSet::new(),
            finals: BTreeMap::new(),
            last_head: 0,
            ahead: 0,
            finalized: 0,
            endpoints,
            config,
        };
        match cursor {
            None => connector.next = connector.config.start_block,
            Some(text) => {
                if let Ok(done) = text.parse::<u64>() {
                    // An earlier version's cursor: the last block emitted, no hashes.
                    connector.next = Some(done.saturating_add(1));
                    connector.final_next = done.saturating_add(1);
                } else {
                    // (or the number of the last block stored, above)
                    let cursor = Cursor::parse(text)?;
                    connector.next = Some(cursor.next);
                    connector.generation = cursor.generation;
                    connector.final_next = cursor.final_next;
                    connector.kept = cursor.kept.into();
                }
            }
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
        let tag = response.tag.as_str();
        if let Some(index) = self.endpoints.head_index(tag) {
            return match self.endpoints.answer_head(index, response)? {
                Some(head) => self.on_head(head, out),
                None => Ok(()),
            };
        }
        if tag == jsonrpc::FINALIZED_TAG {
            if let Some(number) = jsonrpc::finalized_number(response)? {
                self.finalized = self.finalized.max(number);
            }
            return Ok(());
        }
        let unknown = || PluginError::bad_input(format!("response with unknown tag `{tag}`"));
        let (kind, number) = [BLOCK_TAG_PREFIX, FINAL_TAG_PREFIX]
            .into_iter()
            .find_map(|kind| Some((kind, tag.strip_prefix(kind)?)))
            .ok_or_else(unknown)?;
        let number: u64 = number.parse().map_err(|_| unknown())?;
        let body = match json::response(response) {
            Ok(body) => body,
            Err(error) => {
                if kind == BLOCK_TAG_PREFIX {
                    self.in_flight.remove(&number);
                }
                return Err(error);
            }
        };
        if kind == BLOCK_TAG_PREFIX {
            self.on_block(number, &body, out)
        } else {
            self.on_final(number, &body, out)
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
    const HEAD_TAG: &str = "head";

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

    /// The hash of block `number` on `branch` (`a`, the first, or another letter).
    fn hash(branch: char, number: u64) -> String {
        match branch {
            'a' => format!("0x{number:064x}"),
            other => format!("0x{:02x}{number:062x}", other as u8),
        }
    }

    /// A block as a node returns it, with made-up but well-formed hashes.
    fn block_body(number: u64) -> Value {
        branch_body(number, 'a', u64::MAX)
    }

    /// Block `number` of a branch that left branch `a` after block `fork`.
    fn branch_body(number: u64, branch: char, fork: u64) -> Value {
        let on = |n: u64| if n > fork { branch } else { 'a' };
        json!({"jsonrpc": "2.0", "id": number, "result": {
            "number": format!("{number:#x}"),
            "hash": hash(on(number), number),
            "parentHash": hash(on(number - 1), number - 1),
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

    fn branch(number: u64, branch: char, fork: u64) -> HttpResponse {
        let body = branch_body(number, branch, fork).to_string();
        HttpResponse::ok(&format!("block:{number}"), &body)
    }

    fn final_answer(number: u64, branch: char, fork: u64) -> HttpResponse {
        let body = branch_body(number, branch, fork).to_string();
        HttpResponse::ok(&format!("final:{number}"), &body)
    }

    /// The cursor's `next`.
    fn next_of(out: &Output) -> u64 {
        let cursor: Value = serde_json::from_str(out.cursor.as_deref().unwrap()).unwrap();
        cursor["next"].as_u64().unwrap()
    }

    /// Each event's fork step and block number, with the hash for undos.
    fn steps(out: &Output) -> Vec<String> {
        testing::payloads(&out.events)
            .iter()
            .map(|p| match p["fork_step"].as_str().unwrap() {
                "undo" => format!("undo {} {}", p["number"], &p["hash"].as_str().unwrap()[..4]),
                step => format!("{step} {}", p["number"]),
            })
            .collect()
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
                assert!(r.tag == format!("block:{n}") || r.tag == format!("final:{n}"));
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
        assert_eq!(next_of(&out), 103);
        let event = &out.events[0];
        assert_eq!(event.stream, "blocks");
        assert_eq!(event.key.as_deref(), Some("ethereum"));
        assert_eq!(
            event.upstream_id.as_deref(),
            Some(format!("100:{}", hash('a', 100)).as_str())
        );
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
                "transaction_count": 2,
                "fork_step": "new"
            })
        );

        // Nothing new: only the tip, to see that it is still on the chain.
        let out = testing::responses(&mut c, &[head(102)]);
        assert_eq!(asked(&out), [102]);
        assert!(out.events.is_empty());
        let out = testing::responses(&mut c, &[block(102)]);
        assert!(out.events.is_empty() && out.cursor.is_none());
        // A head below every block kept (another node lagging) asks for nothing.
        assert!(testing::responses(&mut c, &[head(90)]).requests.is_empty());
        assert_eq!(asked(&testing::responses(&mut c, &[head(103)])), [103]);
    }

    #[test]
    fn without_start_block_only_new_blocks() {
        let mut c = open(&config(r#","chain":"sepolia""#), None);
        let out = testing::responses(&mut c, &[head(0x12a05f2)]);
        assert_eq!(asked(&out), [0x12a05f2]);
        // A restart before the head block arrives resumes at it.
        assert_eq!(next_of(&out), 0x12a05f2);
        let out = testing::responses(&mut c, &[block(0x12a05f2)]);
        assert_eq!(next_of(&out), 0x12a05f2 + 1);
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
        assert_eq!(next_of(&out), 104);
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
        assert_eq!(next_of(&out), 101);
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
        assert_eq!(next_of(&out), 103);
        let out = testing::responses(&mut c, &[block(103)]);
        assert_eq!(numbers(&out), [103, 104]);
        assert_eq!(next_of(&out), 105);
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
        assert_eq!(next_of(&out), 503);
        // The new cursor carries the hashes: a reopened connector sees a fork below it.
        let mut again = open(&config(""), out.cursor.as_deref());
        testing::responses(&mut again, &[head(503)]);
        let out = testing::responses(&mut again, &[branch(503, 'b', 501)]);
        assert_eq!(steps(&out), ["undo 502 0x00"]);
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
        // An answer far past the window (never asked for) is not held.
        let out = testing::responses(&mut c, &[block(50)]);
        assert!(out.events.is_empty() && out.errors.is_empty());
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
            r#"{"url":"http://h","finality_depth":128}"#,
            r#"{"url":"http://h","finality_depth":10,"keep_blocks":5}"#,
        ] {
            match EvmBlocks::open(config, None) {
                Err(PluginError::Fatal(m)) => assert!(m.starts_with("invalid config"), "{m}"),
                Err(other) => panic!("{config}: {other}"),
                Ok(_) => panic!("{config} was accepted"),
            }
        }
        for cursor in [
            "0x10",
            r#"{"next":5}"#,
            r#"{"next":5,"generation":0,"final_next":9,"kept":[]}"#,
            r#"{"next":1,"generation":0,"final_next":0,"kept":[["0x1",0],["0x2",0]]}"#,
        ] {
            match EvmBlocks::open(&config(""), Some(cursor)) {
                Err(PluginError::Fatal(m)) => assert!(m.starts_with("invalid cursor"), "{m}"),
                other => panic!("{cursor}: {:?}", other.err()),
            }
        }
    }

    /// A connector that emitted blocks 1..=5 of branch `a` (not final: depth 3, head 5).
    fn on_branch_a() -> EvmBlocks {
        let mut c = open(&config(r#","start_block":1,"finality_depth":3"#), None);
        testing::responses(&mut c, &[head(5)]);
        let out = testing::responses(&mut c, &[block(1), block(2), block(3), block(4), block(5)]);
        // 1 and 2 were already 3 deep: irreversible from the start.
        assert_eq!(
            steps(&out),
            [
                "irreversible 1",
                "irreversible 2",
                "new 3",
                "new 4",
                "new 5"
            ]
        );
        c
    }

    #[test]
    fn a_longer_branch_is_followed_back_to_the_fork_point() {
        let mut c = on_branch_a();
        // Branch b left a after block 3 and reached 7.
        let out = testing::responses(&mut c, &[head(7)]);
        assert!(asked(&out).starts_with(&[6, 7]), "{:?}", asked(&out));
        // 6's parent is not our 5: 5 is undone and its height asked for again.
        let out = testing::responses(&mut c, &[branch(6, 'b', 3), branch(7, 'b', 3)]);
        assert_eq!(steps(&out), ["undo 5 0x00"]);
        assert_eq!(asked(&out), [5, 6, 7]);
        let undo = &out.events[0];
        assert_eq!(
            undo.upstream_id.as_deref(),
            Some(format!("undo:1:5:{}", hash('a', 5)).as_str())
        );
        let out = testing::responses(&mut c, &[branch(5, 'b', 3)]);
        assert_eq!(steps(&out), ["undo 4 0x00"]);
        assert_eq!(next_of(&out), 4);
        // 4' names our 3: the fork point; the branch follows in order.
        let out = testing::responses(
            &mut c,
            &[
                branch(4, 'b', 3),
                branch(5, 'b', 3),
                branch(6, 'b', 3),
                branch(7, 'b', 3),
            ],
        );
        assert_eq!(steps(&out), ["new 4", "new 5", "new 6", "new 7"]);
        // Upstream ids after two undos carry the generation: a block that comes back is a
        // new record.
        assert_eq!(
            out.events[1].upstream_id.as_deref(),
            Some(format!("5:{}:2", hash('b', 5)).as_str())
        );
        assert_eq!(next_of(&out), 8);
    }

    #[test]
    fn a_branch_that_replaces_the_tip_without_growing_is_found() {
        let mut c = on_branch_a();
        // Same height, another tip: the check of the tip finds it.
        let out = testing::responses(&mut c, &[head(5)]);
        assert_eq!(asked(&out), [5]);
        let out = testing::responses(&mut c, &[branch(5, 'b', 4)]);
        assert_eq!(steps(&out), ["undo 5 0x00", "new 5"]);
        assert_eq!(next_of(&out), 6);
    }

    #[test]
    fn blocks_deep_enough_are_confirmed_irreversible_once() {
        let mut c = on_branch_a();
        let out = testing::responses(&mut c, &[head(7)]);
        // 6 and 7 are new; 3 and 4 are now 3 deep and asked for again.
        let tags: Vec<&str> = out.requests.iter().map(|r| r.tag.as_str()).collect();
        assert_eq!(tags, ["block:6", "block:7", "final:3", "final:4"]);
        // Out of order: 4 waits for 3.
        let out = testing::responses(&mut c, &[final_answer(4, 'a', 99)]);
        assert!(out.events.is_empty());
        let out = testing::responses(
            &mut c,
            &[final_answer(3, 'a', 99), final_answer(3, 'a', 99)],
        );
        assert_eq!(steps(&out), ["irreversible 3", "irreversible 4"]);
        assert_eq!(
            out.events[0].upstream_id.as_deref(),
            Some(format!("final:3:{}", hash('a', 3)).as_str())
        );
        // Undoing an irreversible block is never done: a fork that deep stops the source.
        let out = testing::responses(&mut c, &[branch(4, 'b', 2)]);
        assert!(
            matches!(&out.errors[..], [PluginError::Fatal(m)] if m.contains("finality_depth")),
            "{:?}",
            out.errors
        );
    }

    #[test]
    fn final_only_emits_irreversible_blocks_and_nothing_else() {
        let mut c = open(
            &config(r#","start_block":1,"finality_depth":3,"final_only":true"#),
            None,
        );
        let out = testing::responses(&mut c, &[head(5)]);
        assert_eq!(asked(&out), [1, 2]);
        let out = testing::responses(&mut c, &[block(1), block(2)]);
        assert_eq!(steps(&out), ["irreversible 1", "irreversible 2"]);
        // No tip check: final blocks do not change.
        assert!(testing::responses(&mut c, &[head(5)]).requests.is_empty());
    }

    #[test]
    fn the_nodes_finalized_block_is_irreversible_with_finalized_tag() {
        let mut c = open(&config(r#","start_block":90,"finalized_tag":true"#), None);
        let out = testing::responses(&mut c, &[head(100)]);
        let tags: Vec<&str> = out.requests.iter().map(|r| r.tag.as_str()).collect();
        assert_eq!(tags[0], "finalized");
        let finalized = json!({"jsonrpc":"2.0","id":1,"result":block_body(95)["result"]});
        testing::responses(&mut c, &[reply("finalized", finalized)]);
        let blocks: Vec<HttpResponse> = (90..=100).map(block).collect();
        let out = testing::responses(&mut c, &blocks);
        let steps: Vec<&str> = testing::payloads(&out.events)
            .iter()
            .map(|p| {
                if p["fork_step"] == "irreversible" {
                    "final"
                } else {
                    "new"
                }
            })
            .collect();
        // 90..=95 are final by the node's word, though far less than 64 deep.
        assert_eq!(steps, [["final"; 6].as_slice(), &["new"; 5]].concat());
        // A node without the tag leaves finality to depth.
        let unknown =
            json!({"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"unknown block"}});
        let out = testing::responses(&mut c, &[reply("finalized", unknown)]);
        assert!(out.errors.is_empty());
    }

    #[test]
    fn a_long_backfill_asks_ahead_within_a_budget_and_goes_on_at_the_next_head() {
        let mut c = open(&config(r#","start_block":1,"max_blocks_per_poll":2"#), None);
        let out = testing::responses(&mut c, &[head(1000)]);
        let mut pending = asked(&out);
        let mut follow_ups = 0;
        while !pending.is_empty() {
            let answers: Vec<HttpResponse> = pending.iter().map(|&n| block(n)).collect();
            let out = testing::responses(&mut c, &answers);
            pending = asked(&out);
            follow_ups += pending.len();
        }
        // 20 windows of 2 blocks, then the next head.
        assert_eq!(follow_ups, 40);
        assert_eq!(asked(&testing::responses(&mut c, &[head(1000)])), [43, 44]);
    }

    #[test]
    fn with_several_endpoints_the_highest_head_serves_and_a_failing_one_sits_out() {
        let mut c = open(
            r#"{"url":["http://a","http://b"],"start_block":100,"max_lag_blocks":2,"aside_polls":2}"#,
            None,
        );
        let Plan::Http(plan) = c.plan() else {
            panic!("expected an HTTP plan")
        };
        let heads: Vec<(&str, &str)> = plan
            .requests
            .iter()
            .map(|r| (r.url.as_str(), r.tag.as_str()))
            .collect();
        assert_eq!(heads, [("http://a", "head:0"), ("http://b", "head:1")]);
        let head_of = |i: usize, n: u64| {
            let body = json!({"jsonrpc": "2.0", "id": 1, "result": format!("{n:#x}")});
            HttpResponse::ok(&format!("head:{i}"), &body.to_string())
        };
        let urls =
            |out: &Output| -> Vec<String> { out.requests.iter().map(|r| r.url.clone()).collect() };
        // a answers first and serves; b's higher head moves the calls to b.
        let out = testing::responses(&mut c, &[head_of(0, 100)]);
        assert_eq!(urls(&out), ["http://a"]);
        let out = testing::responses(&mut c, &[head_of(1, 101)]);
        assert_eq!(urls(&out), ["http://b", "http://b"]);
        // b fails: no error for the source (a serves), and the next blocks come from a.
        let down = HttpResponse {
            status: 503,
            ..HttpResponse::ok("head:1", "busy")
        };
        let out = testing::responses(&mut c, &[down, head_of(0, 101)]);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert!(
            urls(&out).iter().all(|u| u == "http://a"),
            "{:?}",
            urls(&out)
        );
        // A lagging endpoint does not serve either.
        let out = testing::responses(&mut c, &[head_of(1, 90), head_of(0, 102)]);
        assert!(
            urls(&out).iter().all(|u| u == "http://a"),
            "{:?}",
            urls(&out)
        );
        // An empty list or a bad url is refused.
        for config in [r#"{"url":[]}"#, r#"{"url":["http://a","ws://b"]}"#] {
            assert!(
                matches!(EvmBlocks::open(config, None), Err(PluginError::Fatal(_))),
                "{config}"
            );
        }
    }

    #[test]
    fn the_manifest_example_opens() {
        let manifest = EvmBlocks::manifest();
        assert_eq!(manifest.name, "evm-blocks");
        assert!(EvmBlocks::open(&manifest.config_example, None).is_ok());
    }
}
