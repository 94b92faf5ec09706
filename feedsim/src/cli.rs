//! The `anode-feedsim` command line; the host flattens the same [`Args`] as `anode feedsim`.

use std::net::SocketAddr;

use clap::Parser;

use crate::config::{self, Faults, SimConfig};

/// Run the feed simulator until Ctrl-C.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "anode-feedsim",
    about = "Serve simulated venues (Binance, Coinbase, Kraken, EVM) on one port"
)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7500")]
    pub bind: SocketAddr,
    /// Seed of every stream's content.
    #[arg(long, default_value_t = config::DEFAULT_SEED)]
    pub seed: u64,
    /// Events per second per stream.
    #[arg(long, default_value_t = config::DEFAULT_RATE_PER_STREAM)]
    pub rate: f64,
    /// Step of each WebSocket connection's send timer, in ms (it wakes on the first step at or
    /// after an event falls due).
    #[arg(long, default_value_t = config::DEFAULT_TICK_MS)]
    pub tick_ms: u64,
    /// Most distinct streams.
    #[arg(long, default_value_t = config::DEFAULT_MAX_STREAMS)]
    pub max_streams: usize,
    /// Time between two EVM blocks, in ms.
    #[arg(long, default_value_t = config::DEFAULT_BLOCK_INTERVAL_MS)]
    pub block_interval_ms: u64,
    /// Most recent trades per symbol still served by the Binance REST endpoints.
    #[arg(long, default_value_t = config::DEFAULT_HISTORY_RETENTION)]
    pub history_retention: u64,
    /// Close each WebSocket connection (1001) after this many data messages.
    #[arg(long)]
    pub drop_every: Option<u64>,
    /// Send a non-JSON frame after every Nth data message.
    #[arg(long)]
    pub malformed_every: Option<u64>,
    /// Send a truncated copy after every Nth data message.
    #[arg(long)]
    pub truncated_every: Option<u64>,
    /// Answer every Nth REST/EVM request with 429.
    #[arg(long)]
    pub http_429_every: Option<u64>,
    /// `Retry-After` of a simulated 429, in seconds.
    #[arg(long, default_value_t = config::DEFAULT_RETRY_AFTER_S)]
    pub retry_after_s: u64,
    /// Delay every Nth REST/EVM response by `--slow-ms`.
    #[arg(long, requires = "slow_ms")]
    pub slow_every: Option<u64>,
    /// Delay of a slow response, in ms.
    #[arg(long, default_value_t = 0)]
    pub slow_ms: u64,
}

impl Args {
    /// The simulator configuration these arguments describe.
    pub fn config(&self) -> SimConfig {
        SimConfig {
            bind: self.bind,
            seed: self.seed,
            rate_per_stream: self.rate,
            tick_ms: self.tick_ms,
            max_streams: self.max_streams,
            block_interval_ms: self.block_interval_ms,
            history_retention: self.history_retention,
            faults: Faults {
                drop_every: self.drop_every,
                malformed_every: self.malformed_every,
                truncated_every: self.truncated_every,
                http_429_every: self.http_429_every,
                retry_after_s: self.retry_after_s,
                slow_every: self.slow_every,
                slow_ms: self.slow_ms,
            },
            ..SimConfig::default()
        }
    }
}

/// The base URL of every venue, one per line, as printed at start.
pub fn endpoints(http: &str, ws: &str) -> String {
    [
        format!("binance ws        {ws}/binance/ws/<symbol>@trade"),
        format!("binance combined  {ws}/binance/stream?streams=<a>@trade/<b>@trade"),
        format!("binance subscribe {ws}/binance/ws"),
        format!("binance rest      {http}/binance/api/v3/trades?symbol=<SYMBOL>"),
        format!(
            "binance history   {http}/binance/api/v3/historicalTrades?symbol=<SYMBOL>&fromId=<ID>"
        ),
        format!("coinbase ws       {ws}/coinbase"),
        format!("kraken ws         {ws}/kraken/v2"),
        format!("evm json-rpc      {http}/evm/<chain>"),
        format!("report            {http}/report"),
        format!("control           POST {http}/control/pause | /control/resume"),
    ]
    .join("\n")
}

/// Starts the simulator, prints its endpoints, and serves until Ctrl-C.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = args.config();
    let bind = config.bind;
    let sim = crate::start(config)
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the feed simulator on {bind}: {e}"))?;
    println!("{}", endpoints(&sim.http_url(), &sim.ws_url()));
    tokio::signal::ctrl_c().await?;
    sim.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_map_to_the_config() {
        let args = Args::parse_from([
            "anode-feedsim",
            "--bind",
            "127.0.0.1:0",
            "--seed",
            "9",
            "--rate",
            "2.5",
            "--drop-every",
            "7",
            "--slow-every",
            "3",
            "--slow-ms",
            "50",
            "--history-retention",
            "500",
        ]);
        let config = args.config();
        assert_eq!(config.seed, 9);
        assert_eq!(config.rate_per_stream, 2.5);
        assert_eq!(config.faults.drop_every, Some(7));
        assert_eq!(config.faults.slow_every, Some(3));
        assert_eq!(config.faults.slow_ms, 50);
        assert_eq!(config.faults.retry_after_s, 1);
        assert_eq!(config.history_retention, 500);
        assert!(config.validate().is_ok());
    }
}
