//! The supervisor of a node's sources: desired sources (the catalog × the live members) are
//! compared with what runs, and the difference is started (before) or stopped (after), with
//! the plugins they need loaded on demand and fetched from peers.
//!
//! Sources live in the replicated catalog, not on a node: adding one on any node writes it
//! there, and every node runs [`NodeState::reconcile`], which starts the sources it owns
//! (rendezvous hashing over the live members) and stops the ones it no longer owns once their
//! new owner runs them (make-before-break).
//!
//! - `facade`: what the API and the wiring may ask and tell the node;
//! - `reconcile`: the loop, hand-overs, plugin fetches;
//! - `plugins`: loading plugins and opening a source's sessions;
//! - `run`: a running source's life (drive, tick, acknowledge, stop);
//! - `reports`: what the sources report, here and cluster-wide;
//! - `rollout`: moving a plugin's sources between its versions (canary, promote, rollback);
//! - `removal`: removing a plugin version from the cluster once no source uses it;
//! - `replay`: running dead letters again through a (fixed) plugin build.

mod facade;
mod plugins;
mod reconcile;
mod removal;
mod replay;
mod reports;
mod rollout;
mod run;

pub use facade::log_filter;
pub(crate) use facade::{Parts, share_cursors};
use reconcile::Scope;
pub(crate) use reconcile::reconcile_loop;
pub use replay::{ReplayFailure, ReplayReport, ReplayRequest};
pub(crate) use reports::sample_rates;
pub use rollout::{RolloutOutcome, RolloutRequest, canary_position};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cluster::{Cluster, ClusterEvent};
use crate::config::Config;
use crate::events::EventLog;
use crate::pipeline::Ingest;
use crate::plugin::{
    ConnectorInstance, Digest, Plugin, PluginRuntime, PluginStore, TransformInstance, Worker,
};
use crate::source::{SourceSpec, SourceStatus};
pub(crate) use crate::sync::lock;

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
    /// The node cannot serve this now (a store that does not answer, a limit reached).
    #[error("{0}")]
    Unavailable(String),
}

/// A loaded plugin and its instance pool.
pub(crate) struct Loaded {
    pub(crate) plugin: Plugin,
    pub(crate) connectors: Vec<Worker<ConnectorInstance>>,
    pub(crate) transforms: Vec<Worker<TransformInstance>>,
}

pub(crate) struct Running {
    pub(crate) spec: SourceSpec,
    pub(crate) status: Arc<SourceStatus>,
    pub(crate) cancel: CancellationToken,
    pub(crate) task: JoinHandle<()>,
}

/// The state of a node's supervisor. Its fields are private to this module tree: the API and
/// the wiring use the queries and commands of `facade.rs` and the methods here.
pub struct NodeState {
    node_id: String,
    config: Config,
    started: Instant,
    runtime: PluginRuntime,
    plugin_store: PluginStore,
    loaded: Mutex<HashMap<Digest, Loaded>>,
    sources: tokio::sync::Mutex<BTreeMap<String, Running>>,
    ingest: Arc<Ingest>,
    shutdown: CancellationToken,
    cluster: Cluster,
    /// Joins, failures, hand-overs, plugin installs, sink outages.
    events: EventLog,
    /// Sources this node owns but could not start, with the reason.
    failed: Mutex<BTreeMap<String, String>>,
    /// Plugins built into the binary (never spread: every node has them).
    bundled: HashSet<Digest>,
    /// Plugins the cluster names that this node refuses (unsigned, or not by a trusted key):
    /// name and why.
    untrusted: Mutex<HashMap<Digest, (String, String)>>,
    /// Plugins being fetched from peers.
    fetching: Arc<Mutex<HashSet<Digest>>>,
    /// Tells the reconcile loop that a fetch ended.
    fetch_done: tokio::sync::broadcast::Sender<Digest>,
    reconciling: tokio::sync::Mutex<()>,
    /// Sources this node runs but no longer owns, since when: they stop once the new owner
    /// runs them (make-before-break).
    handing_over: Mutex<HashMap<String, Instant>>,
    /// Set when the node starts shutting down: peers then do not wait for it to take over.
    leaving: std::sync::atomic::AtomicBool,
    /// API requests refused for want of a token.
    refused_requests: std::sync::atomic::AtomicU64,
    /// One permit per resuming subscriber (`fanout.max_resuming`): each holds a reader of the
    /// store's log.
    resuming: Arc<tokio::sync::Semaphore>,
    /// Peers' source reports, briefly cached.
    peer_reports: tokio::sync::Mutex<Option<(Instant, Vec<crate::source::SourceReport>)>>,
}

impl crate::cluster::SourceReports for NodeState {
    fn local_reports(
        &self,
    ) -> std::pin::Pin<Box<dyn Future<Output = Vec<crate::source::SourceReport>> + Send + '_>> {
        Box::pin(self.local_sources())
    }

    fn leaving(&self) -> bool {
        self.leaving.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn sources_of(&self, view: &crate::cluster::View, node: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .cluster
            .catalog
            .live("source/")
            .into_iter()
            .filter_map(|e| serde_json::from_value::<SourceSpec>(e.value?).ok())
            .filter(|spec| self.owners_of(view, spec).iter().any(|o| o == node))
            .map(|spec| spec.id)
            .collect();
        ids.sort();
        ids
    }
}

/// Events kept for the API and the dashboard.
pub(crate) const EVENT_LOG_LEN: usize = 1000;
/// Retry period of the reconcile loop (sources that failed to start, plugins to fetch).
pub(crate) const RECONCILE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// How often a hand-over in progress checks whether the new owner runs the source.
pub(crate) const HANDOVER_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
/// How long peers' source reports are reused.
pub(crate) const PEER_REPORTS_TTL: std::time::Duration = std::time::Duration::from_millis(1000);

pub(crate) fn source_key(id: &str) -> String {
    format!("source/{id}")
}

/// A source's committed cursor as the catalog carries it (embedded stores only).
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct SharedCursor {
    pub(crate) cursor: String,
    /// When it was committed, µs since the epoch.
    pub(crate) at_us: i64,
}

pub(crate) fn cursor_key(id: &str) -> String {
    format!("cursor/{id}")
}

pub(crate) fn plugin_key(digest: &Digest) -> String {
    format!("plugin/{}", digest.to_hex())
}

/// FNV-1a: a fixed hash, the same in every process and version (unlike `DefaultHasher`),
/// for spreading sources over instance pools and decorrelating their retry jitter.
pub(crate) fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl NodeState {
    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// What the node-to-node routes and the data plane may use of this node.
    pub(crate) fn peer_context(self: &Arc<Self>) -> crate::cluster::PeerContext {
        crate::cluster::PeerContext {
            cluster: self.cluster.clone(),
            plugins: self.plugin_store.clone(),
            hub: self.ingest.hub.clone(),
            shutdown: self.shutdown.clone(),
            loopback_only: self.config.api.bind.ip().is_loopback(),
            reports: self.clone(),
        }
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

    /// Add many sources at once (`POST /api/v1/sources` with an array): every spec is checked
    /// first and nothing is added unless all pass; then they join the catalog together, are
    /// pushed to the peers in a few requests, and only they are reconciled. With `replace`,
    /// sources of the same ids are replaced.
    pub async fn add_sources(
        &self,
        specs: Vec<SourceSpec>,
        replace: bool,
    ) -> Result<usize, NodeError> {
        let mut seen = HashSet::with_capacity(specs.len());
        let mut problems = Vec::new();
        for spec in &specs {
            if !seen.insert(spec.id.as_str()) {
                problems.push(format!("`{}` is given twice", spec.id));
                continue;
            }
            if !replace
                && self
                    .cluster
                    .catalog
                    .get(&source_key(&spec.id))
                    .is_some_and(|e| e.value.is_some())
            {
                problems.push(format!("source `{}` already exists", spec.id));
                continue;
            }
            if let Err(e) = self.check_source(spec).await {
                problems.push(e.to_string());
            }
        }
        if let Some(first) = problems.first() {
            const SHOWN: usize = 10;
            let more = match problems.len() {
                1 => String::new(),
                n => format!(
                    " (and {} more: {}{})",
                    n - 1,
                    problems[1..n.min(SHOWN)].join("; "),
                    if n > SHOWN { "; …" } else { "" }
                ),
            };
            return Err(NodeError::BadRequest(format!(
                "no source was added: {first}{more}"
            )));
        }
        let count = specs.len();
        let entries = specs
            .into_iter()
            .map(|spec| {
                let value = serde_json::to_value(&spec).expect("specs serialise");
                self.cluster.catalog.put(&source_key(&spec.id), Some(value))
            })
            .collect();
        self.cluster.spread_many(entries, &self.ingest.http).await;
        self.reconcile(Scope::Changed).await;
        self.events
            .push(&self.node_id, "source", format!("{count} sources added"));
        Ok(count)
    }

    /// Remove a source from the cluster; returns its spec.
    pub async fn remove_source(&self, id: &str) -> Result<SourceSpec, NodeError> {
        let spec = self.catalog_spec(id)?;
        if self.cluster.catalog.get(&cursor_key(id)).is_some() {
            let entry = self.cluster.catalog.put(&cursor_key(id), None);
            self.cluster.spread(entry, &self.ingest.http).await;
        }
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

    /// The nodes that run `spec` in `view`: its first `replicas` rendezvous owners.
    pub(crate) fn owners_of(&self, view: &crate::cluster::View, spec: &SourceSpec) -> Vec<String> {
        let k = spec.replicas.unwrap_or(self.config.sources.replicas).max(1);
        view.owners(&spec.id, k as usize)
    }

    pub(crate) fn catalog_spec(&self, id: &str) -> Result<SourceSpec, NodeError> {
        self.cluster
            .catalog
            .get(&source_key(id))
            .and_then(|e| e.value)
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or_else(|| NodeError::NotFound(format!("no source `{id}`")))
    }

    pub(crate) async fn write_catalog(&self, key: &str, value: Option<serde_json::Value>) {
        let entry = self.cluster.catalog.put(key, value);
        self.cluster.spread(entry, &self.ingest.http).await;
        self.reconcile(Scope::Changed).await;
    }

    pub(crate) fn log_cluster_event(&self, event: ClusterEvent) {
        let (kind, message) = match event {
            ClusterEvent::Joined(p) => ("join", format!("{} joined ({})", p.id, p.gossip)),
            ClusterEvent::Down(p) => ("down", format!("{} is down", p.id)),
            // A restart brings a new start time (ms); a rejoin (the member learnt it was held
            // down and renewed its identity) adds one to the generation it had.
            ClusterEvent::Replaced { old, new }
                if new.generation > old.generation
                    && new.generation - old.generation < crate::cluster::REJOIN_STEPS =>
            {
                (
                    "join",
                    format!(
                        "{} rejoined after being held down (generation {} → {}; not a restart)",
                        new.id, old.generation, new.generation
                    ),
                )
            }
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

    /// Stop every source at once; each hands its last batches to the store and waits for
    /// their acknowledgements (bounded by `store.drain_timeout_ms`).
    pub(crate) async fn stop_all(&self) {
        let running: Vec<Running> = std::mem::take(&mut *self.sources.lock().await)
            .into_values()
            .collect();
        for source in &running {
            source.cancel.cancel();
        }
        for source in running {
            let _ = source.task.await;
        }
    }
}
