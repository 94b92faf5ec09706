//! The `anode` command line.

mod bench;
mod deadletters;
mod plugins;
mod sources;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::plugin;

/// aNode: a decentralised data-ingestion mesh with WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "anode", version, about, propagate_version = true)]
pub struct Cli {
    /// Configuration file (TOML); `ANODE_*` environment variables override it.
    #[arg(long, global = true, env = "ANODE_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (plugins, compiled cache, state); overrides the config's `data_dir`.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node: the configured sources, the store, the API, `/ws` and `/metrics`.
    Up {
        /// Listen address of the API (overrides `api.bind`).
        #[arg(long)]
        bind: Option<std::net::SocketAddr>,
        /// PostgreSQL URL (overrides `store.postgres_url`; without one the embedded store is used).
        #[arg(long)]
        postgres: Option<String>,
        /// Gossip address (`host:port`) of a node to join; repeat for more (adds to
        /// `cluster.seeds`).
        #[arg(long = "join", value_name = "HOST:PORT")]
        join: Vec<String>,
        /// UDP address gossip listens on (overrides `cluster.bind`).
        #[arg(long)]
        gossip: Option<std::net::SocketAddr>,
    },
    /// Run a local cluster (3 nodes by default) and the feed simulator, with 100+ sources
    /// over WebSocket and REST venues spread over the nodes.
    Demo {
        /// Nodes in the local cluster.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Sources to run, spread over every simulated venue.
        #[arg(long, default_value_t = 120)]
        sources: usize,
        /// Trades (or ticks, blocks) per second per simulated stream.
        #[arg(long, default_value_t = 5.0)]
        rate: f64,
        /// API address of the first node (overrides `api.bind`); the others take the next
        /// ports.
        #[arg(long)]
        bind: Option<std::net::SocketAddr>,
        /// PostgreSQL URL shared by every node; without one each node uses its embedded store.
        #[arg(long)]
        postgres: Option<String>,
    },
    /// Measure a node under load: the simulator, N sources at R trades/s for T seconds, K
    /// `/ws` subscribers; prints throughput, latency, CPU per record, memory and loss.
    Bench(bench::BenchArgs),
    /// Run the feed simulator alone (simulated venues on loopback).
    Feedsim(anode_feedsim::cli::Args),
    /// Write, install, list, inspect and remove plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Add, list and remove sources of a running node.
    #[command(subcommand)]
    Source(sources::SourceCommand),
    /// List, show, replay (through a fixed plugin build) and purge what a node could not
    /// process: bad frames, refused events, refused rows, bad cursors.
    #[command(subcommand)]
    Deadletter(deadletters::DeadLetterCommand),
    /// Show a running cluster: its members and every source with its owner, state and rate.
    Status {
        #[command(flatten)]
        remote: Remote,
    },
    /// Print records from a running node as they arrive, one line each, until Ctrl-C.
    Tail {
        #[command(flatten)]
        args: status::TailArgs,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, clap::Args)]
struct Remote {
    /// The node's API.
    #[arg(long, env = "ANODE_URL", default_value = "http://127.0.0.1:7400")]
    url: String,
    /// Bearer token: `api.token` for changes, `api.read_token` (or `api.token`) for reads when
    /// the node has them.
    #[arg(long, env = "ANODE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Create a new plugin crate that builds as is.
    New {
        /// Plugin name: lowercase letters, digits and dashes.
        name: String,
        /// Connector (a data source) or transform (events in, events out).
        #[arg(long, value_enum, default_value = "connector")]
        kind: KindArg,
        /// Directory to create the crate in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Path to aNode's plugin-sdk crate (Rust plugins).
        #[arg(long)]
        sdk: Option<PathBuf>,
        /// The plugin's language.
        #[arg(long, value_enum, default_value = "rust")]
        lang: LangArg,
    },
    /// Validate, compile and store a plugin (`.wasm` component).
    Install {
        /// The component file(s).
        #[arg(required_unless_present = "builtin")]
        files: Vec<PathBuf>,
        /// Refuse the file unless its sha256 is this.
        #[arg(long)]
        digest: Option<plugin::Digest>,
        /// Install the plugins built into this binary.
        #[arg(long, conflicts_with = "url")]
        builtin: bool,
        /// Install through the API of a running node instead of into the local store: the
        /// node checks and compiles the file, and the cluster's catalog spreads it to every
        /// node, which fetches and verifies it by its sha256.
        #[arg(long)]
        url: Option<String>,
        /// Bearer token for --url (`api.token`).
        #[arg(long, env = "ANODE_TOKEN", hide_env_values = true, requires = "url")]
        token: Option<String>,
    },
    /// List installed plugins.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a plugin's manifest, config schema and example.
    Inspect {
        /// Name, digest or digest prefix.
        plugin: String,
    },
    /// Remove an installed plugin: from the local store, or with --url from the whole
    /// cluster (refused while a source uses it).
    Remove {
        /// Name, digest or digest prefix.
        plugin: String,
        /// Remove through a running node's API: the cluster's catalog forgets the plugin and
        /// every node deletes its copy once none of its sources uses it.
        #[arg(long)]
        url: Option<String>,
        /// Bearer token for --url (`api.token`).
        #[arg(long, env = "ANODE_TOKEN", hide_env_values = true, requires = "url")]
        token: Option<String>,
    },
    /// Make a publisher key pair for signing plugins: the secret key goes to `--out` (keep it
    /// secret), the public key is printed (put it in `plugins.trusted_keys`).
    Keygen {
        /// Where to write the secret key; refused if the file exists.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a plugin's digest with a publisher's secret key: writes `<file>.sig`, which
    /// `anode plugin install` and uploads take along.
    Sign {
        /// The component file.
        file: PathBuf,
        /// The secret key file from `anode plugin keygen`.
        #[arg(long)]
        key: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LangArg {
    Rust,
    Python,
    #[value(alias = "javascript")]
    Js,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum KindArg {
    Connector,
    Transform,
}

/// Run the command line; errors are printed with their causes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let message = error.to_string();
            eprintln!("error: {message}");
            // Our errors usually embed their cause; print only causes that add something.
            for cause in error.chain().skip(1) {
                let cause = cause.to_string();
                if !message.contains(&cause) {
                    eprintln!("  caused by: {cause}");
                }
            }
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ANODE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,anode=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = Config::load(cli.config.as_deref(), std::env::vars())?;
    if let Some(dir) = cli.data_dir {
        config.data_dir = dir;
    }
    match cli.command {
        Command::Up {
            bind,
            postgres,
            join,
            gossip,
        } => {
            if let Some(bind) = bind {
                config.api.bind = bind;
            }
            if let Some(url) = postgres {
                config.store.postgres_url = Some(url);
            }
            if let Some(gossip) = gossip {
                config.cluster.bind = gossip;
            }
            config.cluster.seeds.extend(join);
            up(config, cli.config)
        }
        Command::Demo {
            nodes,
            sources,
            rate,
            bind,
            postgres,
        } => {
            if let Some(bind) = bind {
                config.api.bind = bind;
            }
            if let Some(url) = postgres {
                config.store.postgres_url = Some(url);
            }
            demo(config, nodes, sources, rate)
        }
        Command::Bench(args) => bench::run(args),
        Command::Feedsim(args) => tokio_runtime()?.block_on(anode_feedsim::cli::run(args)),
        Command::Plugin(command) => plugins::plugin_command(&config, command),
        Command::Source(command) => sources::source_command(command),
        Command::Deadletter(command) => deadletters::dead_letter_command(command),
        Command::Status { remote } => {
            tokio_runtime()?.block_on(status::status(&remote.url, remote.token.as_deref()))
        }
        Command::Tail { args, remote } => {
            tokio_runtime()?.block_on(status::tail(&remote.url, remote.token.as_deref(), args))
        }
    }
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn up(config: Config, config_path: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    tokio_runtime()?.block_on(async move {
        let node = crate::node::start(config).await?;
        let url = node.url();
        println!(
            "aNode {} is up as {}",
            env!("CARGO_PKG_VERSION"),
            node.state.node_id()
        );
        println!("  dashboard  {url}/");
        println!("  API        {url}/api/v1/status");
        println!(
            "  gossip     {} (udp; others join with --join {})",
            node.state.cluster().gossip_addr,
            node.state.cluster().view().me.gossip
        );
        println!("  records    ws://{}/ws", node.addr);
        println!("  metrics    {url}/metrics");
        println!("Ctrl-C stops it.");
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("listening for SIGHUP")?;
        let stop = stop_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                stopped = &mut stop => { stopped?; break; }
                _ = hangup.recv() => reload_keys(&node, config_path.as_deref()),
            }
        }
        eprintln!("stopping: draining sources and the store …");
        node.shutdown().await;
        Ok(())
    })
}

/// SIGHUP: read the configuration again and take its `cluster.key` list (a key roll, node by
/// node, without a restart). Nothing else is reloaded.
fn reload_keys(node: &crate::node::NodeHandle, config_path: Option<&std::path::Path>) {
    let keys = Config::load(config_path, std::env::vars()).map(|c| c.cluster.key);
    let result = keys
        .map_err(|e| e.to_string())
        .and_then(|keys| node.state.reload_cluster_keys(&keys).map(|()| keys.len()));
    match result {
        Ok(n) => eprintln!("SIGHUP: cluster keys reloaded ({n}; the first signs)"),
        Err(e) => eprintln!("SIGHUP: cluster keys not reloaded: {e}"),
    }
}

/// Wait for Ctrl-C (SIGINT) or SIGTERM (what service managers and container engines send).
async fn stop_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

fn demo(config: Config, nodes: usize, sources: usize, rate: f64) -> anyhow::Result<()> {
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    tokio_runtime()?.block_on(async move {
        let sim = anode_feedsim::start(anode_feedsim::SimConfig {
            rate_per_stream: rate,
            ..anode_feedsim::SimConfig::default()
        })
        .await
        .context("cannot start the feed simulator")?;
        let mut configs = crate::demo::cluster_configs(&config, nodes);
        // The demo's sources read the simulator, on loopback, which sources may not reach
        // unless allowed.
        for c in &mut configs {
            c.sources.allow.push(sim.addr().to_string());
        }
        let mut handles = Vec::new();
        for node_config in configs {
            let what = format!(
                "cannot start demo node {} (API {}, gossip {})",
                node_config.node.id.as_deref().unwrap_or("?"),
                node_config.api.bind,
                node_config.cluster.bind
            );
            handles.push(crate::node::start(node_config).await.context(what)?);
        }
        let first = handles[0].state.clone();
        // Ctrl-C is heard from here on, seeding included.
        let stop = stop_signal();
        tokio::pin!(stop);
        let seed = async {
            // Let the nodes find each other before adding sources, so that few move afterwards.
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            while first.cluster().view().live_ids().len() < nodes
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            let specs = crate::demo::mixed_sources(&sim.ws_url(), &sim.http_url(), sources);
            let specs: Vec<_> = specs.into_iter().map(|mixed| mixed.spec).collect();
            // In bulk, a few hundred at a time (Ctrl-C is heard between them).
            for chunk in specs.chunks(500) {
                if let Err(e) = first.add_sources(chunk.to_vec(), true).await {
                    eprintln!("demo sources refused: {e}");
                }
            }
        };
        let interrupted = tokio::select! {
            stopped = &mut stop => { stopped?; true }
            () = seed => false,
        };
        if interrupted {
            eprintln!("stopping while the sources were being added: the nodes leave and drain …");
            futures_util::future::join_all(handles.into_iter().map(|h| h.shutdown())).await;
            sim.shutdown().await;
            return Ok(());
        }
        println!(
            "aNode demo: {nodes} node(s), {sources} sources on the feed simulator at {} ({rate} events/s per stream), store: {}",
            sim.http_url(),
            first.store_kind()
        );
        for node in &handles {
            println!(
                "  {:<8} dashboard {}/   records ws://{}/ws   gossip {}",
                node.state.node_id(),
                node.url(),
                node.addr,
                node.state.cluster().gossip_addr
            );
        }
        println!("  simulator  {}/report", sim.http_url());
        println!("Ctrl-C stops everything.");
        stop.await?;
        eprintln!("stopping: the nodes leave the cluster and drain their stores …");
        futures_util::future::join_all(handles.into_iter().map(|h| h.shutdown())).await;
        sim.shutdown().await;
        Ok(())
    })
}

/// Send a request to the node; an error response becomes an error with the node's message.
pub(crate) async fn call(
    request: reqwest::RequestBuilder,
    url: &str,
) -> anyhow::Result<serde_json::Value> {
    let response = request.send().await.with_context(|| {
        format!("cannot reach the node at {url} (is `anode up` running? set --url or ANODE_URL)")
    })?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        let message = body
            .get("error")
            .and_then(|e| e.as_str())
            .unwrap_or("no details");
        bail!("the node answered {status}: {message}");
    }
    Ok(body)
}

/// Print aligned columns (the last column is not padded).
pub(crate) fn print_rows<const N: usize>(header: &[String; N], rows: &[[String; N]]) {
    print!("{}", format_rows(header, rows));
}

/// Aligned columns as text, one line per row (the last column is not padded).
pub(crate) fn format_rows<const N: usize>(header: &[String; N], rows: &[[String; N]]) -> String {
    let mut widths = header.each_ref().map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |row: &[String; N]| {
        let mut out = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut text = line(header);
    for row in rows {
        text.push_str(&line(row));
    }
    text
}
