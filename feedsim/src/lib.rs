//! `anode-feedsim`: a deterministic feed simulator serving many simulated venues at once on
//! one loopback port, in the venues' own message formats, and reporting exactly what it sent.
//!
//! Every test, demo and benchmark of aNode runs against it. The parts:
//!
//! - [`config`]: [`SimConfig`] and [`Faults`], every knob with a named default.
//! - `clock`: simulated time that excludes paused periods; a stream's head (the highest event
//!   number that has happened) is `floor(sim_elapsed_s * rate_per_stream)`.
//! - `content`: event content as a pure function of (seed, stream, n), generated lazily.
//! - `streams` and `ranges`: streams are map entries created on first use (no task per
//!   stream), each with a merged range set of the ids sent successfully to a client and the
//!   first id ever offered to a client.
//! - `ws`: one task per WebSocket connection with one send timer; venues plug in as
//!   protocols: `binance` (raw, combined, SUBSCRIBE), `coinbase` (matches, ticker,
//!   heartbeat) and `kraken` (v2 ticker).
//! - `rest` (Binance REST `ticker/price`, `trades`), `history` (Binance `historicalTrades`,
//!   trades by id within [`SimConfig::history_retention`]), `coinbase_rest` (Coinbase
//!   `GET /coinbase/products/{product_id}/trades?limit=N&after=X`: newest first, ids below
//!   `after`, `cb-before`/`cb-after` headers, same retention window) and `evm` (JSON-RPC 2.0)
//!   over plain HTTP. REST routes share the HTTP fault layer (request counts, 429s, slow
//!   responses).
//! - `faults`: deterministic "every Nth" drops, malformed and truncated frames, 429s and
//!   slow responses.
//! - [`report`]: [`Report`], the same data as `GET /report`.
//! - `server`: the router; [`cli`]: the `anode-feedsim` command line.
//!
//! Data flow: a client subscribes → the connection remembers (stream, next n) → on the first
//! tick (`tick_ms` steps) at or after the next event falls due, it renders events `next..=head`, sends each, and records the id once the send succeeded.
//!
//! Sent versus generated: per stream the report keeps the ids sent (`emitted`, `ranges`) and
//! the ids generated (`generated` = `[first, last]`: from the first id offered to any client,
//! i.e. the lowest subscription start or lowest id sent, to the head when the report is made).
//! [`StreamReport::missing`] is the difference: ids the venue produced that no client got.
//! Binance trade ids served by `historicalTrades` count as sent for the WebSocket stream
//! `binance/<symbol>@trade` (and for `binance-rest/<SYMBOL>/trades`), and Coinbase trade ids
//! served by `products/{product_id}/trades` count as sent for the `matches` stream
//! `coinbase/<PRODUCT>/matches`, so a consumer that backfills its gaps can be checked against
//! `generated`. Both venues' REST trades equal the WebSocket's for the same id, time included
//! (the time trade `n` became due).

mod binance;
pub mod cli;
mod clock;
mod coinbase;
mod coinbase_rest;
pub mod config;
mod content;
mod evm;
mod faults;
mod history;
mod kraken;
mod ranges;
pub mod report;
mod rest;
mod server;
mod sim;
mod streams;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;

pub use config::{Faults, SimConfig};
pub use report::{FaultCounts, Report, StreamReport};

use sim::Sim;

/// A running simulator; [`FeedSim::shutdown`] stops it.
#[derive(Debug)]
pub struct FeedSim {
    addr: SocketAddr,
    sim: Arc<Sim>,
    server: JoinHandle<std::io::Result<()>>,
}

/// Binds `config.bind` and starts serving every venue.
pub async fn start(config: SimConfig) -> std::io::Result<FeedSim> {
    config
        .validate()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let listener = tokio::net::TcpListener::bind(config.bind).await?;
    let addr = listener.local_addr()?;
    let sim = Arc::new(Sim::new(config));
    let app = server::router(sim.clone());
    let shutdown = sim.shutdown.clone();
    let server = tokio::spawn(async move {
        // Events go out as they fall due, in small frames: no waiting on Nagle's algorithm.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    });
    tracing::debug!(%addr, "feed simulator listening");
    Ok(FeedSim { addr, sim, server })
}

/// When the simulator sent recent events, with a µs clock (the venues' own formats carry ms):
/// what a benchmark measures latency from. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EmitClock(Arc<Sim>);

impl EmitClock {
    /// When event `id` of `stream` (`binance/<symbol>@trade`, as in the report) was first sent,
    /// µs since the epoch, while it is among the stream's latest 4,096.
    pub fn sent_us(&self, stream: &str, id: u64) -> Option<u64> {
        self.0.streams.find(stream)?.sent_us(id)
    }
}

impl FeedSim {
    /// The send clock of this simulator's streams.
    pub fn emit_clock(&self) -> EmitClock {
        EmitClock(self.sim.clone())
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, the base of REST, EVM, control and report URLs.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://<addr>`, the base of WebSocket URLs.
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// What was emitted so far (the same data as `GET /report`).
    pub fn report(&self) -> Report {
        self.sim.report()
    }

    /// Freezes every stream head; connections stay open.
    pub fn pause(&self) {
        self.sim.pause();
    }

    /// Unfreezes the heads; paused time does not count.
    pub fn resume(&self) {
        self.sim.resume();
    }

    /// Stops the listener and every connection task, and waits for them.
    pub async fn shutdown(self) {
        self.sim.shutdown.cancel();
        if let Ok(Err(e)) = self.server.await {
            tracing::warn!(error = %e, "feed simulator server ended with an error");
        }
        self.sim.tasks.close();
        self.sim.tasks.wait().await;
    }
}
