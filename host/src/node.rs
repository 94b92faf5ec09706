//! A running node: plugins loaded on demand, sources started and stopped at runtime, the
//! store, the fan-out hub and the HTTP API, all under one shutdown signal.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::clock::now_us;
use crate::config::Config;
use crate::fanout::Hub;
use crate::pipeline::{Bound, Ingest, Problem, SourceCtx};
use crate::plugin::{
    CallError, ConnectorInstance, Digest, Kind, Plan, Plugin, PluginRuntime, PluginStore,
    TransformInstance,
};
use crate::source::{self, SourceReport, SourceSpec, SourceState, SourceStatus};

/// Something the node was asked to do cannot be done; the message says why.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Startup(String),
}

/// A loaded plugin and its instance pool.
struct Loaded {
    plugin: Plugin,
    connectors: Vec<Arc<Mutex<ConnectorInstance>>>,
    transforms: Vec<Arc<Mutex<TransformInstance>>>,
}

struct Running {
    spec: SourceSpec,
    status: Arc<SourceStatus>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// Shared state of a node, used by the API.
pub struct NodeState {
    pub(crate) node_id: String,
    pub(crate) config: Config,
    pub(crate) started: Instant,
    pub(crate) runtime: PluginRuntime,
    pub(crate) plugin_store: PluginStore,
    loaded: Mutex<HashMap<Digest, Loaded>>,
    sources: tokio::sync::Mutex<BTreeMap<String, Running>>,
    pub(crate) ingest: Arc<Ingest>,
    pub(crate) shutdown: CancellationToken,
}

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
    if !config.api.bind.ip().is_loopback() && config.api.token.is_none() {
        return Err(NodeError::Startup(format!(
            "api.bind is {} (beyond loopback) but no api.token is set: set one (or ANODE_API__TOKEN) \
             so that only holders of the token can change the node",
            config.api.bind
        )));
    }
    let node_id = node_id(&config).map_err(|e| startup("cannot read or write the node id", &e))?;
    let plugin_store =
        PluginStore::open(&config.data_dir).map_err(|e| startup("plugin store", &e))?;
    let runtime = PluginRuntime::new(
        config.plugins.clone(),
        Some(PluginStore::cache_dir(&config.data_dir)),
    )
    .map_err(|e| startup("WebAssembly runtime", &e))?;
    {
        let (store, runtime) = (plugin_store.clone(), runtime.clone());
        tokio::task::spawn_blocking(move || store.install_bundled(&runtime))
            .await
            .map_err(|e| startup("installing built-in plugins", &e))?
            .map_err(|e| startup("installing built-in plugins", &e))?;
    }
    let shutdown = CancellationToken::new();
    let (store, store_task) =
        crate::sink::spawn_store(&config.store, &config.data_dir, shutdown.child_token())
            .map_err(|e| startup("store", &e))?;
    let http = reqwest::Client::builder()
        .user_agent(concat!("anode/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| startup("HTTP client", &e))?;
    let ingest = Arc::new(Ingest {
        node: node_id.clone(),
        store,
        hub: Hub::new(config.fanout.clone()),
        http,
        settings: config.sources.clone(),
    });
    let listener = tokio::net::TcpListener::bind(config.api.bind)
        .await
        .map_err(|e| {
            startup(
                &format!("cannot listen on {} (api.bind)", config.api.bind),
                &e,
            )
        })?;
    let addr = listener.local_addr().map_err(|e| startup("listener", &e))?;
    let specs = config.source_specs.clone();
    let state = Arc::new(NodeState {
        node_id,
        config,
        started: Instant::now(),
        runtime,
        plugin_store,
        loaded: Mutex::new(HashMap::new()),
        sources: tokio::sync::Mutex::new(BTreeMap::new()),
        ingest,
        shutdown: shutdown.clone(),
    });
    for spec in specs {
        let id = spec.id.clone();
        state
            .add_source(spec, false)
            .await
            .map_err(|e| NodeError::Startup(format!("source `{id}` in the config: {e}")))?;
    }
    let api = crate::api::serve(listener, state.clone());
    let sampler = tokio::spawn(sample_rates(state.clone()));
    Ok(NodeHandle {
        addr,
        state,
        tasks: vec![api, store_task, sampler],
    })
}

impl NodeHandle {
    /// Stop every source, drain the store, stop the API; waits for all tasks.
    pub async fn shutdown(self) {
        let ids: Vec<String> = self.state.sources.lock().await.keys().cloned().collect();
        for id in ids {
            let _ = self.state.remove_source(&id).await;
        }
        self.state.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Base URL of the HTTP API.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// FNV-1a: a fixed hash, the same in every process and version (unlike `DefaultHasher`),
/// for spreading sources over instance pools and decorrelating their retry jitter.
fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl NodeState {
    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Find, load (once) and return a plugin of `kind` by name or digest.
    async fn plugin(&self, query: &str, kind: Kind) -> Result<Digest, NodeError> {
        let manifest = self
            .plugin_store
            .find(query)
            .map_err(|e| NodeError::BadRequest(e.to_string()))?;
        if manifest.kind != kind {
            return Err(NodeError::BadRequest(format!(
                "plugin `{query}` is a {}, not a {kind}",
                manifest.kind
            )));
        }
        let digest = manifest.digest;
        if lock(&self.loaded).contains_key(&digest) {
            return Ok(digest);
        }
        let (store, runtime) = (self.plugin_store.clone(), self.runtime.clone());
        let plugin = tokio::task::spawn_blocking(move || store.load(&runtime, &digest))
            .await
            .map_err(|e| NodeError::BadRequest(format!("loading plugin `{query}`: {e}")))?
            .map_err(|e| NodeError::BadRequest(e.to_string()))?;
        lock(&self.loaded).entry(digest).or_insert(Loaded {
            plugin,
            connectors: Vec::new(),
            transforms: Vec::new(),
        });
        Ok(digest)
    }

    /// The pool member a source uses, created on first use.
    fn instance<I>(
        &self,
        digest: &Digest,
        source: &str,
        pool: impl Fn(&mut Loaded) -> &mut Vec<Arc<Mutex<I>>>,
        make: impl Fn(&Plugin) -> Option<I>,
    ) -> Arc<Mutex<I>> {
        let size = self.config.sources.instances_per_plugin.max(1);
        let slot = (stable_hash(source) % size as u64) as usize;
        let mut loaded = lock(&self.loaded);
        let entry = loaded.get_mut(digest).expect("loaded before use");
        let plugin = entry.plugin.clone();
        let pool = pool(entry);
        while pool.len() < size {
            pool.push(Arc::new(Mutex::new(make(&plugin).expect("kind checked"))));
        }
        pool[slot].clone()
    }

    /// Start a source. With `replace`, a running source of the same id is stopped first.
    pub async fn add_source(&self, spec: SourceSpec, replace: bool) -> Result<(), NodeError> {
        spec.validate().map_err(NodeError::BadRequest)?;
        if !replace && self.sources.lock().await.contains_key(&spec.id) {
            return Err(NodeError::Conflict(format!(
                "source `{}` already exists; remove it first or replace it (PUT)",
                spec.id
            )));
        }
        let digest = self.plugin(&spec.plugin, Kind::Connector).await?;
        let connector = self.instance(
            &digest,
            &spec.id,
            |l| &mut l.connectors,
            |p| self.runtime.connector(p),
        );
        let config = spec.config.to_string();
        let session = open_blocking(connector.clone(), move |c| c.open(&config, None))
            .await
            .map_err(|e| refused(&spec, &e))?;
        let mut chain = Vec::new();
        for step in &spec.transforms {
            let digest = self.plugin(&step.plugin, Kind::Transform).await?;
            let instance = self.instance(
                &digest,
                &spec.id,
                |l| &mut l.transforms,
                |p| self.runtime.transform(p),
            );
            let config = step.config.to_string();
            let session = open_blocking(instance.clone(), move |t| t.configure(&config))
                .await
                .map_err(|e| refused(&spec, &e))?;
            chain.push(Bound { instance, session });
        }
        if replace {
            let _ = self.remove_source(&spec.id).await;
        }
        let status = Arc::new(SourceStatus::default());
        let cancel = self.shutdown.child_token();
        let ctx = SourceCtx {
            spec: spec.clone(),
            status: status.clone(),
            connector: Bound {
                instance: connector,
                session,
            },
            chain,
            ingest: self.ingest.clone(),
            cancel: cancel.clone(),
            recent: Mutex::new(crate::record::RecentIds::new(
                self.config.sources.dedupe_window,
            )),
        };
        let task = tokio::spawn(run_source(ctx));
        let mut sources = self.sources.lock().await;
        if let Some(previous) = sources.insert(
            spec.id.clone(),
            Running {
                spec,
                status,
                cancel,
                task,
            },
        ) {
            // Two concurrent adds of one id: the later one wins.
            previous.cancel.cancel();
        }
        Ok(())
    }

    /// Stop and forget a source; waits for its task to end.
    pub async fn remove_source(&self, id: &str) -> Result<SourceSpec, NodeError> {
        let running = self
            .sources
            .lock()
            .await
            .remove(id)
            .ok_or_else(|| NodeError::NotFound(format!("no source `{id}`")))?;
        running.cancel.cancel();
        let _ = running.task.await;
        Ok(running.spec)
    }

    /// Every source's report, by id.
    pub async fn sources(&self) -> Vec<SourceReport> {
        let now = now_us();
        self.sources
            .lock()
            .await
            .values()
            .map(|r| r.status.report(&r.spec, &self.node_id, now))
            .collect()
    }

    /// One source's spec and report.
    pub async fn source(&self, id: &str) -> Option<(SourceSpec, SourceReport)> {
        let sources = self.sources.lock().await;
        let running = sources.get(id)?;
        let report = running
            .status
            .report(&running.spec, &self.node_id, now_us());
        Some((running.spec.clone(), report))
    }

    /// `postgres` or `sqlite`.
    pub fn store_kind(&self) -> &'static str {
        self.ingest.store.stats().kind
    }

    /// Loaded plugins with their counters.
    pub fn loaded_plugins(&self) -> Vec<Plugin> {
        lock(&self.loaded)
            .values()
            .map(|l| l.plugin.clone())
            .collect()
    }
}

fn refused(spec: &SourceSpec, error: &CallError) -> NodeError {
    NodeError::BadRequest(format!(
        "source `{}`: the plugin refused to start it: {error}",
        spec.id
    ))
}

async fn open_blocking<I: Send + 'static>(
    instance: Arc<Mutex<I>>,
    f: impl FnOnce(&mut I) -> Result<u64, CallError> + Send + 'static,
) -> Result<u64, CallError> {
    tokio::task::spawn_blocking(move || f(&mut lock(&instance)))
        .await
        .unwrap_or_else(|e| {
            Err(CallError::Instantiate {
                plugin: "?".into(),
                message: e.to_string(),
            })
        })
}

/// A source's life: plan, drive, back off, again — until cancelled or fatally failed.
async fn run_source(ctx: SourceCtx) {
    let settings = &ctx.ingest.settings;
    let mut backoff = Backoff::with_jitter(
        Duration::from_millis(settings.reconnect_min_ms),
        Duration::from_millis(settings.reconnect_max_ms),
        stable_hash(&ctx.spec.id),
    );
    let mut attempts = 0u64;
    loop {
        if ctx.cancel.is_cancelled() {
            break;
        }
        if attempts > 0 {
            ctx.status
                .reconnects
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        attempts += 1;
        ctx.status.set_state(SourceState::Connecting);
        let ended = match ctx.plan().await {
            Ok(Plan::Websocket(plan)) => source::ws::run(&ctx, &plan, &mut backoff).await,
            Ok(Plan::Http(plan)) => source::http::run(&ctx, &plan, &mut backoff).await,
            Err(problem) => Some(problem),
        };
        match ended {
            None => break,
            Some(Problem::Fatal(message)) => {
                tracing::error!(source = %ctx.spec.id, "source failed: {message}");
                ctx.status.fail(SourceState::Failed, message);
                ctx.cancel.cancelled().await;
                break;
            }
            Some(Problem::Retry(message)) => {
                let wait = backoff.fail();
                tracing::info!(source = %ctx.spec.id, "{message}; retrying in {} ms", wait.as_millis());
                ctx.status.fail(SourceState::BackingOff, message);
                tokio::select! {
                    () = ctx.cancel.cancelled() => break,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    ctx.close();
    ctx.status.set_state(SourceState::Stopped);
}

/// Refresh every source's events-per-second once a second.
async fn sample_rates(state: Arc<NodeState>) {
    let period = Duration::from_secs(1);
    let mut interval = tokio::time::interval(period);
    let mut last = Instant::now();
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => break,
            _ = interval.tick() => {}
        }
        let elapsed = last.elapsed().as_secs_f64();
        last = Instant::now();
        for running in state.sources.lock().await.values() {
            running.status.sample_rate(elapsed);
        }
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
