//! Simulator configuration: one serde struct tree with a named default for every knob.

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// Default address: loopback, a free port chosen by the OS.
pub const DEFAULT_BIND: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
/// Default seed of every generated stream.
pub const DEFAULT_SEED: u64 = 1;
/// Default events per second per stream.
pub const DEFAULT_RATE_PER_STREAM: f64 = 10.0;
/// Default period of a WebSocket connection's send timer.
pub const DEFAULT_TICK_MS: u64 = 20;
/// Default bound on the number of distinct streams.
pub const DEFAULT_MAX_STREAMS: usize = 100_000;
/// Default time between two EVM blocks.
pub const DEFAULT_BLOCK_INTERVAL_MS: u64 = 1_000;
/// Default EVM block number at simulator start.
pub const DEFAULT_EVM_START_BLOCK: u64 = 19_000_000;
/// Default time a Coinbase client has to subscribe (the venue's documented 5 s).
pub const DEFAULT_COINBASE_SUBSCRIBE_TIMEOUT_MS: u64 = 5_000;
/// Default period of server-side WebSocket pings (Binance pings every 20 s).
pub const DEFAULT_PING_INTERVAL_MS: u64 = 20_000;
/// Default `Retry-After` of a simulated 429, in seconds.
pub const DEFAULT_RETRY_AFTER_S: u64 = 1;
/// Default number of most recent trades the Binance REST endpoints still serve.
pub const DEFAULT_HISTORY_RETENTION: u64 = 100_000;

/// Everything the simulator can be told at start.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct SimConfig {
    /// Address of the single HTTP + WebSocket listener.
    pub bind: SocketAddr,
    /// Seed of every stream's content.
    pub seed: u64,
    /// Events per second in every stream (trades, tickers).
    pub rate_per_stream: f64,
    /// Step of a WebSocket connection's send timer, in ms: it wakes on the first step at or
    /// after an event falls due (or a heartbeat), not on every step.
    pub tick_ms: u64,
    /// Most distinct streams; further subscriptions are refused with an error message.
    pub max_streams: usize,
    /// Time between two EVM blocks, in ms.
    pub block_interval_ms: u64,
    /// EVM block number at simulator start.
    pub evm_start_block: u64,
    /// Time a Coinbase client has to send its subscribe message, in ms.
    pub coinbase_subscribe_timeout_ms: u64,
    /// Period of server-side WebSocket pings, in ms.
    pub ping_interval_ms: u64,
    /// How many of the most recent trades per symbol (or product) the Binance and Coinbase
    /// REST endpoints serve: with head `h`, ids `h - history_retention + 1 ..= h`. Older ids
    /// are gone, as on a venue that keeps a bounded history: `historicalTrades` with an older
    /// `fromId` starts at the oldest id kept, and `trades` and Coinbase
    /// `products/{product_id}/trades` return no id older than that.
    pub history_retention: u64,
    /// Fault injection (all off by default).
    pub faults: Faults,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            bind: DEFAULT_BIND,
            seed: DEFAULT_SEED,
            rate_per_stream: DEFAULT_RATE_PER_STREAM,
            tick_ms: DEFAULT_TICK_MS,
            max_streams: DEFAULT_MAX_STREAMS,
            block_interval_ms: DEFAULT_BLOCK_INTERVAL_MS,
            evm_start_block: DEFAULT_EVM_START_BLOCK,
            coinbase_subscribe_timeout_ms: DEFAULT_COINBASE_SUBSCRIBE_TIMEOUT_MS,
            ping_interval_ms: DEFAULT_PING_INTERVAL_MS,
            history_retention: DEFAULT_HISTORY_RETENTION,
            faults: Faults::default(),
        }
    }
}

impl SimConfig {
    /// Checks the values a simulator cannot run with.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if !(self.rate_per_stream.is_finite() && self.rate_per_stream > 0.0) {
            return Err(format!(
                "rate_per_stream must be > 0, got {}",
                self.rate_per_stream
            ));
        }
        if self.rate_per_stream > 1_000_000.0 {
            return Err("rate_per_stream must be at most 1000000 (timestamps are in µs)".into());
        }
        for (name, value) in [
            ("tick_ms", self.tick_ms),
            ("block_interval_ms", self.block_interval_ms),
            ("ping_interval_ms", self.ping_interval_ms),
        ] {
            if value == 0 {
                return Err(format!("{name} must be > 0"));
            }
        }
        if self.max_streams == 0 {
            return Err("max_streams must be > 0".into());
        }
        if self.history_retention == 0 {
            return Err("history_retention must be > 0 (the head trade is always served)".into());
        }
        Ok(())
    }
}

/// Deterministic fault injection: each `*_every` is "every Nth" (None or 0 = off).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Close a WebSocket connection (1001, "simulated drop") after it sent this many data messages.
    pub drop_every: Option<u64>,
    /// After every Nth data message on a connection, also send a frame that is not JSON.
    pub malformed_every: Option<u64>,
    /// After every Nth data message on a connection, also send that message cut in half.
    pub truncated_every: Option<u64>,
    /// Every Nth HTTP request to a REST or EVM endpoint gets 429.
    pub http_429_every: Option<u64>,
    /// `Retry-After` of a simulated 429, in seconds.
    pub retry_after_s: u64,
    /// Every Nth HTTP request to a REST or EVM endpoint is answered after `slow_ms`.
    pub slow_every: Option<u64>,
    /// Delay of a slow response, in ms.
    pub slow_ms: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            drop_every: None,
            malformed_every: None,
            truncated_every: None,
            http_429_every: None,
            retry_after_s: DEFAULT_RETRY_AFTER_S,
            slow_every: None,
            slow_ms: 0,
        }
    }
}
