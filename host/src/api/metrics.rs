//! `/metrics`: the node's counters in Prometheus text format.

use super::*;

pub(super) async fn metrics(
    State(state): State<AppState>,
    connections: Option<axum::Extension<std::sync::Arc<super::limited::ConnectionStats>>>,
) -> Response {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let sources = state.sources().await;
    let per_source = |f: &dyn Fn(&crate::source::SourceReport) -> f64| {
        sources
            .iter()
            .map(|s| (format!("{{source=\"{}\"}}", s.id), f(s)))
            .collect::<Vec<_>>()
    };
    family(
        "anode_source_events_total",
        "counter",
        "Records produced by a source.",
        per_source(&|s| s.events as f64),
    );
    family(
        "anode_source_inputs_total",
        "counter",
        "Frames or responses received by a source.",
        per_source(&|s| s.inputs as f64),
    );
    family(
        "anode_source_errors_total",
        "counter",
        "Errors of a source (bad input, failed requests).",
        per_source(&|s| s.errors as f64),
    );
    family(
        "anode_source_reconnects_total",
        "counter",
        "Reconnections of a source.",
        per_source(&|s| s.reconnects as f64),
    );
    family(
        "anode_source_live",
        "gauge",
        "1 when the source is live.",
        per_source(&|s| f64::from(u8::from(s.state == crate::source::SourceState::Live))),
    );
    let plugins = state.loaded_plugins();
    let per_plugin = |f: &dyn Fn(&crate::plugin::PluginMetricsSnapshot) -> f64| {
        plugins
            .iter()
            .map(|p| {
                (
                    format!("{{plugin=\"{}\"}}", p.manifest().name),
                    f(&p.metrics().snapshot()),
                )
            })
            .collect::<Vec<_>>()
    };
    family(
        "anode_plugin_calls_total",
        "counter",
        "Calls into a plugin.",
        per_plugin(&|m| m.calls as f64),
    );
    family(
        "anode_plugin_events_total",
        "counter",
        "Events a plugin produced.",
        per_plugin(&|m| m.events_out as f64),
    );
    family(
        "anode_plugin_errors_total",
        "counter",
        "Error values a plugin returned.",
        per_plugin(&|m| m.errors as f64),
    );
    family(
        "anode_plugin_traps_total",
        "counter",
        "Plugin crashes (traps).",
        per_plugin(&|m| m.traps as f64),
    );
    family(
        "anode_plugin_timeouts_total",
        "counter",
        "Plugin calls stopped at the deadline.",
        per_plugin(&|m| m.timeouts as f64),
    );
    family(
        "anode_plugin_busy_seconds_total",
        "counter",
        "Time spent inside a plugin.",
        per_plugin(&|m| m.busy_ns as f64 / 1e9),
    );
    let store = state.store_stats();
    let kind = format!("{{store=\"{}\"}}", store.kind);
    family(
        "anode_store_rows_written_total",
        "counter",
        "Records newly stored.",
        vec![(kind.clone(), store.rows_written as f64)],
    );
    family(
        "anode_store_duplicates_total",
        "counter",
        "Records skipped as already stored.",
        vec![(kind.clone(), store.duplicates_skipped as f64)],
    );
    family(
        "anode_store_backlog",
        "gauge",
        "Records waiting for the store.",
        vec![(kind.clone(), store.backlog as f64)],
    );
    family(
        "anode_store_write_errors_total",
        "counter",
        "Failed store writes (retried).",
        vec![(kind.clone(), store.write_errors as f64)],
    );
    family(
        "anode_store_connected",
        "gauge",
        "1 when the store is reachable.",
        vec![(kind, f64::from(u8::from(store.connected)))],
    );
    let fanout = state.fanout_stats();
    family(
        "anode_fanout_subscribers",
        "gauge",
        "WebSocket subscribers.",
        vec![(String::new(), fanout.subscribers as f64)],
    );
    family(
        "anode_fanout_delivered_total",
        "counter",
        "Records queued to subscribers.",
        vec![(String::new(), fanout.delivered as f64)],
    );
    family(
        "anode_fanout_dropped_total",
        "counter",
        "Records dropped for slow subscribers.",
        vec![(String::new(), fanout.dropped as f64)],
    );
    family(
        "anode_fanout_lag_disconnects_total",
        "counter",
        "Subscribers disconnected for lag.",
        vec![(String::new(), fanout.disconnected_for_lag as f64)],
    );
    let view = state.cluster().view();
    let count =
        |s: crate::cluster::MemberState| view.others.iter().filter(|m| m.state == s).count() as f64;
    family(
        "anode_cluster_members",
        "gauge",
        "Members of the cluster as this node sees them (itself included in alive).",
        vec![
            (
                "{state=\"alive\"}".into(),
                1.0 + count(crate::cluster::MemberState::Alive),
            ),
            (
                "{state=\"suspect\"}".into(),
                count(crate::cluster::MemberState::Suspect),
            ),
            (
                "{state=\"down\"}".into(),
                count(crate::cluster::MemberState::Down),
            ),
        ],
    );
    let gossip = state.cluster().stats.snapshot();
    family(
        "anode_gossip_packets_rejected_total",
        "counter",
        "Gossip packets dropped: not ours (garbage), another cluster (foreign), bad or missing HMAC (auth), sealed outside the time window (stale), seen before (replay), undecodable (invalid).",
        ["garbage", "foreign", "auth", "stale", "replay", "invalid"]
            .iter()
            .map(|r| {
                (
                    format!("{{reason=\"{r}\"}}"),
                    gossip[format!("rejected_{r}")].as_f64().unwrap_or(0.0),
                )
            })
            .collect(),
    );
    family(
        "anode_cluster_requests_refused_total",
        "counter",
        "Node-to-node HTTP requests refused: unsigned or wrongly signed (auth), made outside the time window (stale), seen before (replay), a write to a node without cluster.key (no_key).",
        ["auth", "stale", "replay", "no_key"]
            .iter()
            .map(|r| {
                (
                    format!("{{reason=\"{r}\"}}"),
                    gossip[format!("requests_refused_{r}")]
                        .as_f64()
                        .unwrap_or(0.0),
                )
            })
            .collect(),
    );
    for (name, key, help) in [
        (
            "anode_gossip_packets_in_total",
            "packets_in",
            "Gossip packets received.",
        ),
        (
            "anode_gossip_packets_out_total",
            "packets_out",
            "Gossip packets sent.",
        ),
        (
            "anode_catalog_sync_rounds_total",
            "sync_rounds",
            "Anti-entropy rounds started.",
        ),
        (
            "anode_catalog_sync_failures_total",
            "sync_failures",
            "Anti-entropy rounds that failed.",
        ),
        (
            "anode_plugin_fetch_failures_total",
            "plugin_fetch_failures",
            "Plugin fetches from peers that failed or were refused (sha256 mismatch).",
        ),
        (
            "anode_gossip_confirmed_down_total",
            "confirmed_down",
            "Suspects declared down early: their host refused connections on their API port.",
        ),
        (
            "anode_records_relayed_in_total",
            "records_relayed_in",
            "Records received from peers for this node's subscribers.",
        ),
    ] {
        family(
            name,
            "counter",
            help,
            vec![(String::new(), gossip[key].as_f64().unwrap_or(0.0))],
        );
    }
    if let Some(axum::Extension(connections)) = connections {
        use std::sync::atomic::Ordering::Relaxed;
        family(
            "anode_api_connections_open",
            "gauge",
            "API connections open (HTTP, /ws, dashboard, node-to-node).",
            vec![(String::new(), connections.open.load(Relaxed) as f64)],
        );
        family(
            "anode_api_connections_waited_total",
            "counter",
            "Times a new connection waited because api.max_connections were open.",
            vec![(String::new(), connections.waited.load(Relaxed) as f64)],
        );
    }
    family(
        "anode_egress_refused_total",
        "counter",
        "URLs sources were refused by the egress policy (sources.allow, sources.deny, loopback, link-local, this node's API).",
        vec![(String::new(), state.egress_refused() as f64)],
    );
    family(
        "anode_api_requests_refused_total",
        "counter",
        "API requests refused for want of the right token (api.token, api.read_token).",
        vec![(String::new(), state.refused_requests() as f64)],
    );
    family(
        "anode_catalog_entries_refused_total",
        "counter",
        "Catalog entries from peers refused by the checks (key shape, value, size, clock too far ahead).",
        vec![(String::new(), state.cluster().catalog.refused() as f64)],
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        "text/plain; version=0.0.4".parse().expect("static"),
    );
    (headers, out).into_response()
}
