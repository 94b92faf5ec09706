//! A running node, wired: the data dir, the plugin store and runtime, the store, the fan-out
//! hub, the gossip cluster and its catalog, the supervisor of sources, the HTTP API, all under
//! one shutdown signal. Only wiring lives here; each part owns its state.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::now_us;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::fanout::Hub;
use crate::pipeline::Ingest;
use crate::plugin::{Digest, PluginRuntime, PluginStore};
pub use crate::supervisor::{NodeError, NodeState};
use crate::supervisor::{Parts, reconcile_loop, sample_rates, share_cursors};

/// A started node. Dropping it does not stop it: call [`NodeHandle::shutdown`].
pub struct NodeHandle {
    /// Where the HTTP API listens.
    pub addr: SocketAddr,
    pub state: Arc<NodeState>,
    tasks: Vec<JoinHandle<()>>,
}

/// Start a node: open the data dir, install built-in plugins, start the store, the API and
/// the configured sources.
pub async fn start(config: Config) -> Result<NodeHandle, NodeError> {
    let startup =
        |what: &str, e: &dyn std::fmt::Display| NodeError::Startup(format!("{what}: {e}"));
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        startup(
            &format!("cannot create data dir {}", config.data_dir.display()),
            &e,
        )
    })?;
    if !config.api.bind.ip().is_loopback()
        && (config.api.token.is_none() || config.api.read_token.is_none())
    {
        return Err(NodeError::Startup(format!(
            "api.bind is {} (beyond loopback) but api.token and api.read_token are not both set: \
             set them (or ANODE_API__TOKEN and ANODE_API__READ_TOKEN) so that only holders of \
             the tokens can change or read the node",
            config.api.bind
        )));
    }
    let node_id = node_id(&config).map_err(|e| startup("cannot read or write the node id", &e))?;
    let plugin_store = PluginStore::open(&config.data_dir)
        .map_err(|e| startup("plugin store", &e))?
        .with_trust(crate::plugin::Trust::new(&config.plugins.trusted_keys));
    let runtime = PluginRuntime::new(
        config.plugins.clone(),
        Some(PluginStore::cache_dir(&config.data_dir)),
    )
    .map_err(|e| startup("WebAssembly runtime", &e))?;
    let bundled: HashSet<Digest> = {
        let (store, runtime) = (plugin_store.clone(), runtime.clone());
        tokio::task::spawn_blocking(move || store.install_bundled(&runtime))
            .await
            .map_err(|e| startup("installing built-in plugins", &e))?
            .map_err(|e| startup("installing built-in plugins", &e))?
            .into_iter()
            .map(|i| i.manifest.digest)
            .collect()
    };
    let shutdown = CancellationToken::new();
    let (store, store_task) =
        crate::sink::spawn_store(&config.store, &config.data_dir, shutdown.child_token())
            .map_err(|e| startup("store", &e))?;
    let listener = tokio::net::TcpListener::bind(config.api.bind)
        .await
        .map_err(|e| {
            startup(
                &format!("cannot listen on {} (api.bind)", config.api.bind),
                &e,
            )
        })?;
    let addr = listener.local_addr().map_err(|e| startup("listener", &e))?;
    let egress =
        crate::source::Egress::new(&config.sources.allow, &config.sources.deny, Some(addr))
            .map_err(NodeError::Startup)?;
    // Node-to-node requests; no proxy from the environment (nor for sources, below).
    let http = reqwest::Client::builder()
        .user_agent(concat!("anode/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(|e| startup("HTTP client", &e))?;
    // Sources' requests: names resolve only to addresses the egress policy allows (checked
    // and connected to are the same), and redirects are not followed (a plugin sees the 3xx
    // and may ask for the new location, which is checked).
    let source_http = reqwest::Client::builder()
        .user_agent(concat!("anode/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(egress.resolver())
        .no_proxy();
    // A proxy only from the configuration (`sources.proxy`), never from the environment.
    let source_http = match &config.sources.proxy {
        None => source_http,
        Some(url) => source_http.proxy(reqwest::Proxy::all(url).map_err(|e| {
            NodeError::Startup(format!(
                "sources.proxy `{url}` is not a proxy URL ({e}): give http://host:port"
            ))
        })?),
    }
    .build()
    .map_err(|e| startup("HTTP client", &e))?;
    let ingest = Arc::new(Ingest {
        node: node_id.clone(),
        store,
        hub: Hub::new(config.fanout.clone()),
        http,
        source_http,
        settings: config.sources.clone(),
        egress,
        drain_timeout: Duration::from_millis(config.store.drain_timeout_ms),
        cursor_shelf: config
            .store
            .postgres_url
            .is_none()
            .then(crate::pipeline::CursorShelf::default),
        close_timeouts: Default::default(),
    });
    let api_advertised = match &config.api.advertise {
        Some(a) => crate::cluster::resolve("api.advertise", a)
            .await
            .map_err(|e| NodeError::Startup(e.to_string()))?,
        None => addr,
    };
    let catalog = Arc::new(
        crate::cluster::Catalog::open(&node_id, Some(config.data_dir.join("catalog.json")))
            .map_err(|e| startup("catalog", &e))?,
    );
    let (cluster_events, mut cluster_events_rx) = tokio::sync::mpsc::unbounded_channel();
    let (cluster, gossip_task) = Cluster::start(
        config.cluster.clone(),
        &node_id,
        api_advertised,
        catalog,
        cluster_events,
        shutdown.child_token(),
    )
    .await
    .map_err(|e| NodeError::Startup(e.to_string()))?;
    let specs = config.source_specs.clone();
    let state = Arc::new(NodeState::new(Parts {
        node_id,
        config,
        runtime,
        plugin_store,
        ingest,
        shutdown: shutdown.clone(),
        cluster,
        bundled,
    }));
    state.log_event(
        "join",
        format!(
            "node started (gossip {}, API {})",
            state.cluster().gossip_addr,
            addr
        ),
    );
    state.seed_catalog(specs).await?;
    let api = crate::api::serve(listener, state.clone());
    let sampler = tokio::spawn(sample_rates(state.clone()));
    let sync = tokio::spawn(crate::cluster::http::anti_entropy(
        state.cluster().clone(),
        state.ingest().http.clone(),
        shutdown.child_token(),
    ));
    let links = tokio::spawn(crate::cluster::relay::run_links(
        state.peer_context(),
        shutdown.child_token(),
    ));
    let reconciler = tokio::spawn(reconcile_loop(state.clone()));
    let cursors = match state.ingest().cursor_shelf.clone() {
        Some(shelf) => tokio::spawn(share_cursors(state.clone(), shelf)),
        None => tokio::spawn(async {}),
    };
    let log = {
        let state = state.clone();
        tokio::spawn(async move {
            while let Some(event) = cluster_events_rx.recv().await {
                state.log_cluster_event(event);
            }
        })
    };
    Ok(NodeHandle {
        addr,
        state,
        tasks: vec![
            api,
            store_task,
            sampler,
            sync,
            links,
            reconciler,
            cursors,
            gossip_task,
            log,
        ],
    })
}

impl NodeHandle {
    /// Stop every source, drain the store, stop the API; waits for all tasks.
    pub async fn shutdown(self) {
        self.state.leave_and_stop().await;
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Base URL of the HTTP API.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop at once without leaving the cluster or draining: what a crash looks like to
    /// peers (for tests and benchmarks of fail-over).
    pub fn abort(self) {
        // Tasks first: the gossip task must not get to say goodbye.
        for task in &self.tasks {
            task.abort();
        }
        self.state.cancel();
    }
}

/// The configured id, else the one kept in the data dir, else a new one (kept).
fn node_id(config: &Config) -> std::io::Result<String> {
    if let Some(id) = &config.node.id {
        return Ok(id.clone());
    }
    let path = config.data_dir.join("node-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_owned());
        }
    }
    let seed = format!(
        "{}-{}-{:?}",
        std::process::id(),
        now_us(),
        config.data_dir.canonicalize().unwrap_or_default()
    );
    let id = format!("node-{}", &Digest::of(seed.as_bytes()).to_hex()[..8]);
    std::fs::write(&path, &id)?;
    Ok(id)
}
