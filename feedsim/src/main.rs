//! `anode-feedsim`: serve simulated venues until Ctrl-C.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    anode_feedsim::cli::run(anode_feedsim::cli::Args::parse()).await
}
