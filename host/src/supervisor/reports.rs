//! What the sources report: those running here, those owned here that could not start, and
//! every source of the cluster with its owner's report; rates sampled once a second.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{NodeState, PEER_REPORTS_TTL, lock};
use crate::clock::now_us;
use crate::source::{ClusterSource, SourceReport, SourceSpec, SourceState};

impl NodeState {
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

    /// This node's sources: the running ones, and the owned ones that could not start
    /// (state `failed`, with the reason).
    pub async fn local_sources(&self) -> Vec<SourceReport> {
        let mut out = self.sources().await;
        for (id, error) in lock(&self.failed).iter() {
            out.push(SourceReport {
                id: id.clone(),
                state: SourceState::Failed,
                last_error: Some(error.clone()),
                node: Some(self.node_id.clone()),
                ..SourceReport::default()
            });
        }
        out
    }

    /// Every source of the cluster: its spec's plugin, its owner in this node's view, and
    /// the owner's report of it (fetched from peers, cached for a second).
    pub async fn cluster_sources(&self) -> Vec<ClusterSource> {
        let view = self.cluster.view();
        let mut reports: HashMap<String, SourceReport> = HashMap::new();
        for report in self.peer_reports().await {
            reports.insert(report.id.clone(), report);
        }
        for report in self.local_sources().await {
            reports.insert(report.id.clone(), report);
        }
        let mut out = Vec::new();
        for entry in self.cluster.catalog.live("source/") {
            let Some(spec) = entry
                .value
                .and_then(|v| serde_json::from_value::<SourceSpec>(v).ok())
            else {
                continue;
            };
            let mut report = reports.remove(&spec.id).unwrap_or_else(|| SourceReport {
                id: spec.id.clone(),
                state: if spec.paused {
                    SourceState::Paused
                } else {
                    SourceState::Pending
                },
                ..SourceReport::default()
            });
            report.plugin.clone_from(&spec.plugin);
            if report.target.is_empty() {
                report.target = spec.config["url"].as_str().unwrap_or_default().to_owned();
            }
            let owners = if spec.paused {
                Vec::new()
            } else {
                self.owners_of(&view, &spec)
            };
            out.push(ClusterSource {
                report,
                owner: owners.first().cloned(),
                owners: if owners.len() > 1 { owners } else { Vec::new() },
                paused: spec.paused,
            });
        }
        out
    }

    pub(super) async fn peer_reports(&self) -> Vec<SourceReport> {
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

    /// One source's spec (secrets its plugins' schemas mark redacted) and report.
    pub async fn source(&self, id: &str) -> Option<(SourceSpec, ClusterSource)> {
        let mut spec = self.catalog_spec(id).ok()?;
        let schema = |plugin: &str| {
            self.plugin_store
                .find(plugin)
                .map(|m| m.config_schema)
                .unwrap_or_default()
        };
        spec.config = crate::source::redacted(&spec.config, &schema(&spec.plugin));
        for step in &mut spec.transforms {
            step.config = crate::source::redacted(&step.config, &schema(&step.plugin));
        }
        let report = self
            .cluster_sources()
            .await
            .into_iter()
            .find(|r| r.report.id == id)?;
        Some((spec, report))
    }
}

/// Refresh every source's events-per-second once a second.
pub(crate) async fn sample_rates(state: Arc<NodeState>) {
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
