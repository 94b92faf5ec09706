//! The node as the API and the wiring see it: a narrow set of queries and commands over the
//! supervisor's state, whose fields stay private to this module tree.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use super::{
    EVENT_LOG_LEN, NodeError, NodeState, SharedCursor, cursor_key, plugin_key, source_key,
};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::events::{Event, EventLog};
use crate::fanout::{FanoutStats, Filter, Subscription, TooManySubscribersError};
use crate::pipeline::{CursorShelf, Ingest};
use crate::plugin::{Digest, PluginManifest, PluginRuntime, PluginSignature, PluginStore};
use crate::sink::{LogFilter, LogStart, StoreStats, Tail, TailError};
use crate::source::SourceSpec;

/// What a node's supervisor is made of; the rest of its state starts empty.
pub(crate) struct Parts {
    pub(crate) node_id: String,
    pub(crate) config: Config,
    pub(crate) runtime: PluginRuntime,
    pub(crate) plugin_store: PluginStore,
    pub(crate) ingest: Arc<Ingest>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) cluster: Cluster,
    /// Digests of the plugins built into the binary (not spread through the catalog).
    pub(crate) bundled: HashSet<Digest>,
}

impl NodeState {
    pub(crate) fn new(parts: Parts) -> Self {
        let max_resuming = parts.config.fanout.max_resuming.max(1);
        NodeState {
            node_id: parts.node_id,
            config: parts.config,
            started: Instant::now(),
            runtime: parts.runtime,
            plugin_store: parts.plugin_store,
            loaded: Mutex::new(HashMap::new()),
            sources: tokio::sync::Mutex::new(BTreeMap::new()),
            ingest: parts.ingest,
            shutdown: parts.shutdown,
            cluster: parts.cluster,
            events: EventLog::new(EVENT_LOG_LEN),
            failed: Mutex::new(BTreeMap::new()),
            bundled: parts.bundled,
            untrusted: Mutex::new(HashMap::new()),
            fetching: Arc::new(Mutex::new(HashSet::new())),
            fetch_done: tokio::sync::broadcast::channel(16).0,
            reconciling: tokio::sync::Mutex::new(()),
            handing_over: Mutex::new(HashMap::new()),
            leaving: std::sync::atomic::AtomicBool::new(false),
            resuming: Arc::new(tokio::sync::Semaphore::new(max_resuming)),
            peer_reports: tokio::sync::Mutex::new(None),
            refused_requests: Default::default(),
        }
    }

    /// At start: the config's sources and the plugins installed here (not built in) join the
    /// catalog, unless it holds them already as written.
    pub(crate) async fn seed_catalog(&self, specs: Vec<SourceSpec>) -> Result<(), NodeError> {
        for spec in specs {
            let id = spec.id.clone();
            self.check_source(&spec)
                .await
                .map_err(|e| NodeError::Startup(format!("source `{id}` in the config: {e}")))?;
            let value = serde_json::to_value(&spec).expect("specs serialise");
            let current = self.cluster.catalog.get(&source_key(&id));
            if current.and_then(|e| e.value) != Some(value.clone()) {
                self.cluster.catalog.put(&source_key(&id), Some(value));
            }
        }
        for manifest in self.plugin_store.list().unwrap_or_default() {
            let key = plugin_key(&manifest.digest);
            if !self.bundled.contains(&manifest.digest) && self.cluster.catalog.get(&key).is_none()
            {
                self.cluster.catalog.put(
                    &key,
                    Some(serde_json::to_value(&manifest).expect("manifests serialise")),
                );
            }
        }
        Ok(())
    }

    /// How long a node that starts leaving waits for a reconcile under way to end.
    const RECONCILE_END_WAIT: Duration = Duration::from_secs(5);

    /// Leave the cluster, wait (bounded) for the new owners to run this node's sources, stop
    /// every source (draining what they submitted), then signal every task to stop.
    pub(crate) async fn leave_and_stop(&self) {
        self.leaving
            .store(true, std::sync::atomic::Ordering::Relaxed);
        // A reconcile under way ends first (it starts nothing more now that the node is
        // leaving), and none runs from here on: what `stop_all` takes is all that runs, no
        // source started meanwhile is left behind. Bounded, in case a start hangs.
        let _no_reconcile =
            tokio::time::timeout(Self::RECONCILE_END_WAIT, self.reconciling.lock()).await;
        let running = self.sources.lock().await.len();
        self.events.push(
            &self.node_id,
            "handover",
            format!(
                "leaving the cluster: handing over and stopping the {running} source(s) running \
                 here, taking none over"
            ),
        );
        // Leave first, so that peers take the sources over while this node drains.
        self.cluster.leave().await;
        // Make-before-break: the peers take the sources over while this node still runs them.
        self.await_new_owners().await;
        self.stop_all().await;
        self.shutdown.cancel();
    }

    /// Signal every task to stop, without leaving or draining.
    pub(crate) fn cancel(&self) {
        self.shutdown.cancel();
    }

    /// A token cancelled when the node stops, for tasks the wiring starts.
    pub(crate) fn stop_token(&self) -> CancellationToken {
        self.shutdown.child_token()
    }

    /// Resolves when the node stops.
    pub fn stopping(&self) -> WaitForCancellationFuture<'_> {
        self.shutdown.cancelled()
    }

    /// The parts of the record path every source shares.
    pub(crate) fn ingest(&self) -> &Arc<Ingest> {
        &self.ingest
    }

    /// How long the node has run.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Where the API was asked to listen.
    pub fn api_bind(&self) -> SocketAddr {
        self.config.api.bind
    }

    /// The token changes need, if one is set.
    pub fn api_token(&self) -> Option<&str> {
        self.config.api.token.as_deref()
    }

    /// Connections the API holds open at most.
    pub fn max_connections(&self) -> usize {
        self.config.api.max_connections
    }

    /// The token reads need, if one is set.
    pub fn read_token(&self) -> Option<&str> {
        self.config.api.read_token.as_deref()
    }

    /// Count an API request refused for want of a token.
    pub fn count_refused_request(&self) {
        self.refused_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// API requests refused for want of a token.
    pub fn refused_requests(&self) -> u64 {
        self.refused_requests
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// URLs the egress policy refused to sources.
    pub fn egress_refused(&self) -> u64 {
        self.ingest.egress.refused()
    }

    /// Stopping WebSocket sessions whose venue did not end the connection in time
    /// (`sources.close_timeout_ms`).
    pub fn close_timeouts(&self) -> u64 {
        self.ingest
            .close_timeouts
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn store_stats(&self) -> StoreStats {
        self.ingest.store.stats()
    }

    /// Dead letters matching `query`, oldest first.
    pub async fn dead_letters(
        &self,
        query: &crate::deadletter::DeadQuery,
    ) -> Result<Vec<crate::deadletter::StoredDeadLetter>, NodeError> {
        self.ingest
            .store
            .dead_letters(query)
            .await
            .map_err(|e| NodeError::Unavailable(e.to_string()))
    }

    /// Delete the dead letters matching `query`; returns how many.
    pub async fn purge_dead_letters(
        &self,
        query: &crate::deadletter::DeadQuery,
    ) -> Result<u64, NodeError> {
        let purged = self
            .ingest
            .store
            .purge_dead_letters(query)
            .await
            .map_err(|e| NodeError::Unavailable(e.to_string()))?;
        if purged > 0 {
            self.events.push(
                &self.node_id,
                "deadletter",
                format!("{purged} dead letter(s) purged"),
            );
        }
        Ok(purged)
    }

    pub fn fanout_stats(&self) -> FanoutStats {
        self.ingest.hub.stats()
    }

    /// A new subscriber to this node's records.
    pub fn subscribe(&self, filter: Filter) -> Result<Subscription, TooManySubscribersError> {
        self.ingest.hub.subscribe(filter)
    }

    /// A resuming subscriber: the records of the durable log from `start` that pass
    /// `filter`, each with its position, then the new ones as they are stored. The permit
    /// counts it against `fanout.max_resuming`.
    pub async fn tail(
        &self,
        start: LogStart,
        filter: &Filter,
    ) -> Result<(Tail, tokio::sync::OwnedSemaphorePermit), NodeError> {
        let permit = self.resuming.clone().try_acquire_owned().map_err(|_| {
            NodeError::Unavailable(format!(
                "this node already serves {} resuming subscribers (fanout.max_resuming); try \
                 another node or later",
                self.config.fanout.max_resuming
            ))
        })?;
        let tail = self
            .ingest
            .store
            .tail(start, log_filter(filter))
            .await
            .map_err(|e| match e {
                TailError::BadStart(m) => NodeError::BadRequest(m),
                TailError::Read(e) => NodeError::Unavailable(e.to_string()),
            })?;
        Ok((tail, permit))
    }

    /// The event log after sequence number `after`.
    pub fn events_after(&self, after: u64) -> Vec<Event> {
        self.events.after(after)
    }

    /// Log an event of this node.
    pub fn log_event(&self, kind: &'static str, message: String) {
        self.events.push(&self.node_id, kind, message);
    }

    /// Take a new list of cluster keys (a key roll); logged as an event.
    pub fn reload_cluster_keys(&self, keys: &[String]) -> Result<(), String> {
        self.cluster.envelope.keys().replace(keys)?;
        self.log_event(
            "cluster",
            format!(
                "cluster keys reloaded: {} key(s), the first signs",
                keys.len()
            ),
        );
        Ok(())
    }

    /// The plugins installed here.
    pub fn installed_plugins(&self) -> Vec<PluginManifest> {
        self.plugin_store.list().unwrap_or_default()
    }

    /// Verify (digest, signature when trusted keys are set), compile and store an uploaded
    /// plugin, then announce it to the cluster. A refusal is logged as an event.
    pub async fn install_plugin(
        &self,
        bytes: bytes::Bytes,
        signature: Option<PluginSignature>,
    ) -> Result<PluginManifest, NodeError> {
        let (store, runtime) = (self.plugin_store.clone(), self.runtime.clone());
        let installed = tokio::task::spawn_blocking(move || {
            store.install(&runtime, &bytes, None, signature.as_ref(), "upload")
        })
        .await
        .map_err(|e| NodeError::BadRequest(format!("installing the plugin: {e}")))?;
        let installed = match installed {
            Ok(installed) => installed,
            Err(e) => {
                if let crate::plugin::StoreError::Untrusted { why, .. } = &e {
                    self.log_event("plugin", format!("plugin upload refused: {why}"));
                }
                return Err(NodeError::BadRequest(e.to_string()));
            }
        };
        let manifest = installed.0.manifest;
        self.announce_plugin(&manifest).await;
        Ok(manifest)
    }
}

/// With the embedded store: every `cluster.cursor_share_ms`, write the cursors committed
/// since the last time into the catalog, so that whichever node runs a source next resumes
/// where this one got to.
pub(crate) async fn share_cursors(state: Arc<NodeState>, shelf: CursorShelf) {
    let period = Duration::from_millis(state.config.cluster.cursor_share_ms.max(100));
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            () = state.shutdown.cancelled() => true,
            _ = interval.tick() => false,
        };
        // Written together and pushed to the peers in a few requests: one gossip broadcast
        // per cursor made every second cost as much as the node had sources, squared (each
        // broadcast is checked against the backlog of the others).
        let entries: Vec<_> = shelf
            .take()
            .into_iter()
            .map(|(source, cursor, at_us)| {
                let value =
                    serde_json::to_value(SharedCursor { cursor, at_us }).expect("plain data");
                state.cluster.catalog.put(&cursor_key(&source), Some(value))
            })
            .collect();
        state.cluster.spread_many(entries, &state.ingest.http).await;
        if stopping {
            return;
        }
    }
}

/// A subscriber's filter as the durable log applies it (always to stored records).
pub fn log_filter(filter: &Filter) -> LogFilter {
    LogFilter {
        sources: filter.sources.clone(),
        streams: filter.streams.clone(),
        keys: filter.keys.clone(),
    }
}
