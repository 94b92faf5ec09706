//! A running node: plugins loaded on demand, the gossip cluster and its catalog, the sources
//! this node owns started and stopped as the catalog and the membership change, the store,
//! the fan-out hub and the HTTP API, all under one shutdown signal.
//!
//! Sources live in the replicated catalog, not on a node: adding one on any node writes it
//! there, and every node runs the [`NodeState::reconcile`] loop, which starts the sources it
//! owns (rendezvous hashing over the live members) and stops the ones it no longer owns.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::clock::now_us;
use crate::cluster::{Cluster, ClusterEvent};
use crate::config::Config;
use crate::events::EventLog;
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
    cluster: Cluster,
    /// Joins, failures, hand-overs, plugin installs, sink outages.
    pub events: EventLog,
    /// Sources this node owns but could not start, with the reason.
    failed: Mutex<BTreeMap<String, String>>,
    /// Plugins built into the binary (never spread: every node has them).
    bundled: HashSet<Digest>,
    /// Plugins being fetched from peers.
    fetching: Arc<Mutex<HashSet<Digest>>>,
    /// Tells the reconcile loop that a fetch ended.
    fetch_done: tokio::sync::broadcast::Sender<Digest>,
    reconciling: tokio::sync::Mutex<()>,
    /// Peers' source reports, briefly cached.
    peer_reports: tokio::sync::Mutex<Option<(Instant, Vec<serde_json::Value>)>>,
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
        cluster,
        events: EventLog::new(EVENT_LOG_LEN),
        failed: Mutex::new(BTreeMap::new()),
        bundled,
        fetching: Arc::new(Mutex::new(HashSet::new())),
        fetch_done: tokio::sync::broadcast::channel(16).0,
        reconciling: tokio::sync::Mutex::new(()),
        peer_reports: tokio::sync::Mutex::new(None),
    });
    state.events.push(
        &state.node_id,
        "join",
        format!(
            "node started (gossip {}, API {})",
            state.cluster.gossip_addr, addr
        ),
    );
    // Sources in the config join the catalog (unless it holds them already, as written).
    for spec in specs {
        let id = spec.id.clone();
        state
            .check_source(&spec)
            .await
            .map_err(|e| NodeError::Startup(format!("source `{id}` in the config: {e}")))?;
        let value = serde_json::to_value(&spec).expect("specs serialise");
        let current = state.cluster.catalog.get(&source_key(&id));
        if current.and_then(|e| e.value) != Some(value.clone()) {
            state.cluster.catalog.put(&source_key(&id), Some(value));
        }
    }
    // Plugins installed here (not built in) join the catalog, so that peers fetch them.
    for manifest in state.plugin_store.list().unwrap_or_default() {
        let key = plugin_key(&manifest.digest);
        if !state.bundled.contains(&manifest.digest) && state.cluster.catalog.get(&key).is_none() {
            state.cluster.catalog.put(
                &key,
                Some(serde_json::to_value(&manifest).expect("manifests serialise")),
            );
        }
    }
    let api = crate::api::serve(listener, state.clone());
    let sampler = tokio::spawn(sample_rates(state.clone()));
    let sync = tokio::spawn(crate::cluster::http::anti_entropy(
        state.cluster.clone(),
        state.ingest.http.clone(),
        shutdown.child_token(),
    ));
    let links = tokio::spawn(crate::cluster::relay::run_links(
        state.clone(),
        shutdown.child_token(),
    ));
    let reconciler = tokio::spawn(reconcile_loop(state.clone()));
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
            gossip_task,
            log,
        ],
    })
}

/// Events kept for the API and the dashboard.
const EVENT_LOG_LEN: usize = 1000;
/// Retry period of the reconcile loop (sources that failed to start, plugins to fetch).
const RECONCILE_EVERY: Duration = Duration::from_secs(2);
/// How long peers' source reports are reused.
const PEER_REPORTS_TTL: Duration = Duration::from_millis(1000);

fn source_key(id: &str) -> String {
    format!("source/{id}")
}

fn plugin_key(digest: &Digest) -> String {
    format!("plugin/{}", digest.to_hex())
}

impl NodeHandle {
    /// Stop every source, drain the store, stop the API; waits for all tasks.
    pub async fn shutdown(self) {
        // Leave first, so that peers take the sources over while this node drains.
        self.state.cluster.leave().await;
        let ids: Vec<String> = self.state.sources.lock().await.keys().cloned().collect();
        for id in ids {
            let _ = self.state.stop_source(&id).await;
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

    /// Stop at once without leaving the cluster or draining: what a crash looks like to
    /// peers (for tests and benchmarks of fail-over).
    pub fn abort(self) {
        // Tasks first: the gossip task must not get to say goodbye.
        for task in &self.tasks {
            task.abort();
        }
        self.state.shutdown.cancel();
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

    /// The cluster this node belongs to.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Add a source to the cluster (any node may run it). With `replace`, an existing source
    /// of the same id is replaced.
    pub async fn add_source(&self, spec: SourceSpec, replace: bool) -> Result<(), NodeError> {
        let key = source_key(&spec.id);
        let exists = self
            .cluster
            .catalog
            .get(&key)
            .is_some_and(|e| e.value.is_some());
        if !replace && exists {
            return Err(NodeError::Conflict(format!(
                "source `{}` already exists; remove it first or replace it (PUT)",
                spec.id
            )));
        }
        self.check_source(&spec).await?;
        let value = serde_json::to_value(&spec).expect("specs serialise");
        self.write_catalog(&key, Some(value)).await;
        self.events.push(
            &self.node_id,
            "source",
            format!(
                "source `{}` {}",
                spec.id,
                if exists { "replaced" } else { "added" }
            ),
        );
        Ok(())
    }

    /// Remove a source from the cluster; returns its spec.
    pub async fn remove_source(&self, id: &str) -> Result<SourceSpec, NodeError> {
        let spec = self.catalog_spec(id)?;
        self.write_catalog(&source_key(id), None).await;
        self.events
            .push(&self.node_id, "source", format!("source `{id}` removed"));
        Ok(spec)
    }

    /// Pause (stop everywhere, keep in the catalog) or resume a source.
    pub async fn set_paused(&self, id: &str, paused: bool) -> Result<(), NodeError> {
        let mut spec = self.catalog_spec(id)?;
        if spec.paused != paused {
            spec.paused = paused;
            let value = serde_json::to_value(&spec).expect("specs serialise");
            self.write_catalog(&source_key(id), Some(value)).await;
            let what = if paused { "paused" } else { "resumed" };
            self.events
                .push(&self.node_id, "source", format!("source `{id}` {what}"));
        }
        Ok(())
    }

    /// A plugin was installed here: record it in the catalog so that every node fetches it.
    pub async fn announce_plugin(&self, manifest: &crate::plugin::PluginManifest) {
        if self.bundled.contains(&manifest.digest) {
            return;
        }
        let key = plugin_key(&manifest.digest);
        let value = serde_json::to_value(manifest).expect("manifests serialise");
        if self.cluster.catalog.get(&key).and_then(|e| e.value) != Some(value.clone()) {
            self.write_catalog(&key, Some(value)).await;
        }
        self.events.push(
            &self.node_id,
            "plugin",
            format!(
                "plugin {} {} installed ({})",
                manifest.name,
                manifest.version,
                &manifest.digest.to_hex()[..12]
            ),
        );
    }

    fn catalog_spec(&self, id: &str) -> Result<SourceSpec, NodeError> {
        self.cluster
            .catalog
            .get(&source_key(id))
            .and_then(|e| e.value)
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or_else(|| NodeError::NotFound(format!("no source `{id}`")))
    }

    async fn write_catalog(&self, key: &str, value: Option<serde_json::Value>) {
        let entry = self.cluster.catalog.put(key, value);
        self.cluster.spread(entry, &self.ingest.http).await;
        self.reconcile().await;
    }

    /// Whether the cluster can run `spec`: it is well formed, its plugins exist (here or in
    /// the catalog), and, when they are here, they accept its configuration.
    async fn check_source(&self, spec: &SourceSpec) -> Result<(), NodeError> {
        spec.validate().map_err(NodeError::BadRequest)?;
        let mut local = true;
        for (name, kind) in std::iter::once((&spec.plugin, Kind::Connector))
            .chain(spec.transforms.iter().map(|t| (&t.plugin, Kind::Transform)))
        {
            if self.plugin_store.find(name).is_err() {
                if !self.cataloged_plugin(name) {
                    return Err(NodeError::BadRequest(format!(
                        "no plugin `{name}` in this cluster: install it (`anode plugin install`) \
                         or pick one of `anode plugin list`"
                    )));
                }
                local = false;
            } else {
                self.plugin(name, kind).await?;
            }
        }
        if local {
            let prepared = self.prepare(spec).await?;
            prepared.close();
        }
        Ok(())
    }

    fn cataloged_plugin(&self, query: &str) -> bool {
        self.cluster.catalog.live("plugin/").iter().any(|e| {
            let v = e.value.as_ref().expect("live entries have values");
            v["name"] == query || v["digest"] == query
        })
    }

    /// Load a source's plugins and open its sessions.
    async fn prepare(&self, spec: &SourceSpec) -> Result<Prepared, NodeError> {
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
            .map_err(|e| refused(spec, &e))?;
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
                .map_err(|e| refused(spec, &e))?;
            chain.push(Bound { instance, session });
        }
        Ok(Prepared {
            connector: Bound {
                instance: connector,
                session,
            },
            chain,
        })
    }

    /// Run a source here (replacing a running one of the same id).
    async fn start_source(&self, spec: SourceSpec) -> Result<(), NodeError> {
        let Prepared { connector, chain } = self.prepare(&spec).await?;
        if self.sources.lock().await.contains_key(&spec.id) {
            let _ = self.stop_source(&spec.id).await;
        }
        let status = Arc::new(SourceStatus::default());
        let cancel = self.shutdown.child_token();
        let ctx = SourceCtx {
            spec: spec.clone(),
            status: status.clone(),
            connector,
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

    /// Stop and forget a source running here; waits for its task to end.
    async fn stop_source(&self, id: &str) -> Result<SourceSpec, NodeError> {
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

    /// The reports of the sources running on this node, by id.
    pub async fn sources(&self) -> Vec<SourceReport> {
        let now = now_us();
        self.sources
            .lock()
            .await
            .values()
            .map(|r| r.status.report(&r.spec, &self.node_id, now))
            .collect()
    }

    /// This node's sources as JSON: the running ones, and the owned ones that could not
    /// start (state `failed`, with the reason).
    pub async fn local_sources(&self) -> Vec<serde_json::Value> {
        let mut out: Vec<serde_json::Value> = self
            .sources()
            .await
            .into_iter()
            .map(|r| serde_json::to_value(r).expect("reports serialise"))
            .collect();
        for (id, error) in lock(&self.failed).iter() {
            out.push(serde_json::json!({
                "id": id, "state": "failed", "last_error": error, "node": self.node_id,
            }));
        }
        out
    }

    /// Every source of the cluster: its spec's plugin, its owner in this node's view, and
    /// the owner's report of it (fetched from peers, cached for a second).
    pub async fn cluster_sources(&self) -> Vec<serde_json::Value> {
        let view = self.cluster.view();
        let mut reports: HashMap<String, serde_json::Value> = HashMap::new();
        for report in self.peer_reports().await {
            if let Some(id) = report["id"].as_str() {
                reports.insert(id.to_owned(), report);
            }
        }
        for report in self.local_sources().await {
            if let Some(id) = report["id"].as_str() {
                reports.insert(id.to_owned(), report);
            }
        }
        let mut out = Vec::new();
        for entry in self.cluster.catalog.live("source/") {
            let Some(spec) = entry
                .value
                .and_then(|v| serde_json::from_value::<SourceSpec>(v).ok())
            else {
                continue;
            };
            let owner = (!spec.paused).then(|| view.owner(&spec.id));
            let mut report = reports.remove(&spec.id).unwrap_or_else(|| {
                let state = if spec.paused { "paused" } else { "pending" };
                serde_json::json!({ "id": spec.id, "state": state, "node": null })
            });
            report["plugin"] = spec.plugin.clone().into();
            report["owner"] = owner.into();
            report["paused"] = spec.paused.into();
            if report.get("target").is_none_or(|t| t.is_null()) {
                report["target"] = spec.config["url"].clone();
            }
            out.push(report);
        }
        out
    }

    async fn peer_reports(&self) -> Vec<serde_json::Value> {
        let mut cache = self.peer_reports.lock().await;
        if let Some((at, reports)) = cache.as_ref()
            && at.elapsed() < PEER_REPORTS_TTL
        {
            return reports.clone();
        }
        let reports = crate::cluster::http::peer_sources(&self.cluster, &self.ingest.http).await;
        *cache = Some((Instant::now(), reports.clone()));
        reports
    }

    /// One source's spec and report.
    pub async fn source(&self, id: &str) -> Option<(SourceSpec, serde_json::Value)> {
        let spec = self.catalog_spec(id).ok()?;
        let report = self
            .cluster_sources()
            .await
            .into_iter()
            .find(|r| r["id"] == id)?;
        Some((spec, report))
    }

    /// Start what this node owns and does not run; stop what it runs and does not own (or
    /// what was removed or paused); fetch plugins the catalog names and this node lacks.
    pub async fn reconcile(&self) {
        let _one_at_a_time = self.reconciling.lock().await;
        if self.shutdown.is_cancelled() {
            return;
        }
        let view = self.cluster.view();
        let mut wanted: BTreeMap<String, SourceSpec> = BTreeMap::new();
        for entry in self.cluster.catalog.live("source/") {
            match serde_json::from_value::<SourceSpec>(entry.value.expect("live")) {
                Ok(spec) if !spec.paused && view.owner(&spec.id) == self.node_id => {
                    wanted.insert(spec.id.clone(), spec);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("catalog entry {} is not a source: {e}", entry.key),
            }
        }
        let running: Vec<(String, SourceSpec)> = self
            .sources
            .lock()
            .await
            .iter()
            .map(|(id, r)| (id.clone(), r.spec.clone()))
            .collect();
        let mut handed_over = Vec::new();
        for (id, spec) in &running {
            match wanted.get(id) {
                Some(want) if want == spec => {
                    wanted.remove(id);
                }
                Some(_) => {} // changed: restarted below
                None => {
                    let _ = self.stop_source(id).await;
                    if self
                        .cluster
                        .catalog
                        .get(&source_key(id))
                        .is_some_and(|e| e.value.is_some_and(|v| v["paused"] != true))
                    {
                        handed_over.push(format!("{id} → {}", view.owner(id)));
                    }
                }
            }
        }
        lock(&self.failed).retain(|id, _| wanted.contains_key(id));
        let mut started = Vec::new();
        for (id, spec) in wanted {
            if !self.plugins_present(&spec) {
                lock(&self.failed).insert(
                    id.clone(),
                    format!("waiting for plugin `{}` to arrive from a peer", spec.plugin),
                );
                continue;
            }
            match self.start_source(spec).await {
                Ok(()) => {
                    lock(&self.failed).remove(&id);
                    started.push(id);
                }
                Err(e) => {
                    let message = e.to_string();
                    let before = lock(&self.failed).insert(id.clone(), message.clone());
                    if before.as_ref() != Some(&message) {
                        self.events.push(
                            &self.node_id,
                            "source",
                            format!("cannot start `{id}`: {message}"),
                        );
                    }
                }
            }
        }
        if !handed_over.is_empty() {
            self.events.push(
                &self.node_id,
                "handover",
                format!(
                    "handed over {} source(s): {}",
                    handed_over.len(),
                    summary(&handed_over)
                ),
            );
        }
        if !started.is_empty() {
            self.events.push(
                &self.node_id,
                "handover",
                format!(
                    "now running {} more source(s): {}",
                    started.len(),
                    summary(&started)
                ),
            );
        }
        self.fetch_missing_plugins();
    }

    fn plugins_present(&self, spec: &SourceSpec) -> bool {
        std::iter::once(&spec.plugin)
            .chain(spec.transforms.iter().map(|t| &t.plugin))
            .all(|p| self.plugin_store.find(p).is_ok())
    }

    /// Start a fetch of every cataloged plugin this node lacks (one at a time per digest).
    fn fetch_missing_plugins(&self) {
        for entry in self.cluster.catalog.live("plugin/") {
            let value = entry.value.expect("live");
            let Some(digest) = value["digest"]
                .as_str()
                .and_then(|d| d.parse::<Digest>().ok())
            else {
                continue;
            };
            if self.plugin_store.bytes(&digest).is_ok() || !lock(&self.fetching).insert(digest) {
                continue;
            }
            let (cluster, http) = (self.cluster.clone(), self.ingest.http.clone());
            let (store, runtime) = (self.plugin_store.clone(), self.runtime.clone());
            let events = self.events.clone();
            let node = self.node_id.clone();
            let name = value["name"].as_str().unwrap_or("?").to_owned();
            let writer = entry.node.clone();
            let done = self.fetch_done.clone();
            let fetching = self.fetching.clone();
            tokio::spawn(async move {
                let result =
                    match crate::cluster::http::fetch_plugin(&cluster, &http, &digest, &writer)
                        .await
                    {
                        Ok((bytes, from)) => tokio::task::spawn_blocking(move || {
                            store
                                .install(&runtime, &bytes, Some(&digest), &format!("peer {from}"))
                                .map(|_| from)
                                .map_err(|e| e.to_string())
                        })
                        .await
                        .unwrap_or_else(|e| Err(e.to_string())),
                        Err(e) => Err(e),
                    };
                match result {
                    Ok(from) => events.push(
                        &node,
                        "plugin",
                        format!("plugin {name} fetched from {from} and verified"),
                    ),
                    Err(e) => events.push(
                        &node,
                        "plugin",
                        format!("cannot fetch plugin {name}: {e}; retrying"),
                    ),
                }
                lock(&fetching).remove(&digest);
                let _ = done.send(digest);
            });
        }
    }

    fn log_cluster_event(&self, event: ClusterEvent) {
        let (kind, message) = match event {
            ClusterEvent::Joined(p) => ("join", format!("{} joined ({})", p.id, p.gossip)),
            ClusterEvent::Down(p) => ("down", format!("{} is down", p.id)),
            ClusterEvent::Replaced { old, new } => (
                "join",
                format!(
                    "{} restarted (generation {} → {})",
                    new.id, old.generation, new.generation
                ),
            ),
            ClusterEvent::Isolated => ("down", "this node sees no other member".to_owned()),
            ClusterEvent::Rejoined(p) => {
                ("join", format!("rejoined as generation {}", p.generation))
            }
        };
        self.events.push(&self.node_id, kind, message);
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

/// A source's sessions, opened and ready to run.
struct Prepared {
    connector: Bound<ConnectorInstance>,
    chain: Vec<Bound<TransformInstance>>,
}

impl Prepared {
    fn close(self) {
        lock(&self.connector.instance).close(self.connector.session);
        for step in self.chain {
            lock(&step.instance).close(step.session);
        }
    }
}

/// The first few of `items`, for a log line.
fn summary(items: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = items[..items.len().min(SHOWN)].join(", ");
    if items.len() > SHOWN {
        text.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    text
}

/// Reconcile whenever the catalog or the view changes, a plugin arrives, and every few
/// seconds (to retry). With seeds, wait first to hear from the cluster (bounded), so that a
/// restarting node does not start every source alone.
async fn reconcile_loop(state: Arc<NodeState>) {
    let settings = state.config.cluster.clone();
    let mut view = state.cluster.watch();
    let mut catalog = state.cluster.catalog.subscribe();
    if !settings.seeds.is_empty() {
        let grace = tokio::time::sleep(Duration::from_millis(settings.join_grace_ms));
        tokio::pin!(grace);
        loop {
            if !view.borrow_and_update().others.is_empty() {
                break;
            }
            tokio::select! {
                () = state.shutdown.cancelled() => return,
                () = &mut grace => break,
                changed = view.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }
    let mut tick = tokio::time::interval(RECONCILE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fetched = state.fetch_done.subscribe();
    loop {
        state.reconcile().await;
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            changed = view.changed() => {
                if changed.is_err() {
                    // Gossip has stopped (the node is leaving): nothing will change any more.
                    state.shutdown.cancelled().await;
                    return;
                }
            }
            _ = catalog.changed() => {}
            _ = fetched.recv() => {}
            _ = tick.tick() => {}
        }
    }
}

/// Refresh every source's events-per-second once a second.
async fn sample_rates(state: Arc<NodeState>) {
    let period = Duration::from_secs(1);
    let mut interval = tokio::time::interval(period);
    let mut last = Instant::now();
    let mut store_up: Option<bool> = None;
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => break,
            _ = interval.tick() => {}
        }
        let elapsed = last.elapsed().as_secs_f64();
        last = Instant::now();
        let store = state.ingest.store.stats();
        if store_up != Some(store.connected) {
            if store_up.is_some() || store.connected {
                let message = if store.connected {
                    format!("{} store connected", store.kind)
                } else {
                    format!(
                        "{} store unreachable: {}; records wait in the buffer",
                        store.kind,
                        store.last_error.as_deref().unwrap_or("not connected yet")
                    )
                };
                state.events.push(&state.node_id, "sink", message);
            }
            store_up = Some(store.connected);
        }
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
