//! What the sources report: those running here, those owned here that could not start, and
//! every source of the cluster with its owner's report; rates sampled once a second.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{NodeState, PEER_REPORTS_TTL, lock};
use crate::clock::now_us;
use crate::source::{SourceReport, SourceSpec};

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

    pub(super) async fn peer_reports(&self) -> Vec<serde_json::Value> {
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
