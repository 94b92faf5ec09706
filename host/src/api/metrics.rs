//! `/metrics`: the node's figures in the Prometheus text format, written by the `prometheus`
//! crate, which escapes label values and help text and keeps one series per label set.
//!
//! The figures are read from the node's own snapshots at each scrape into a registry made for
//! that scrape, so a removed source or plugin leaves no stale series behind. Counters end in
//! `_total`, durations are in seconds and say so in their names.

use prometheus::{CounterVec, Encoder as _, GaugeVec, Opts, Registry, TextEncoder};

use super::*;
use crate::cluster::MemberState;
use crate::plugin::PluginMetricsSnapshot;
use crate::source::{SourceReport, SourceState};

/// One scrape's registry.
struct Scrape(Registry);

/// A family's samples: label values (in the order of its label names) and the value.
type Samples = Vec<(Vec<String>, f64)>;

impl Scrape {
    /// A counter family: `name` must end in `_total`.
    fn counter(&self, name: &str, help: &str, labels: &[&str], samples: Samples) {
        debug_assert!(name.ends_with("_total"), "{name}: counters end in _total");
        let family = CounterVec::new(Opts::new(name, help), labels).expect("a valid family");
        for (values, value) in samples {
            family.with_label_values(&values).inc_by(value.max(0.0));
        }
        self.0
            .register(Box::new(family))
            .expect("each family is registered once per scrape");
    }

    fn gauge(&self, name: &str, help: &str, labels: &[&str], samples: Samples) {
        let family = GaugeVec::new(Opts::new(name, help), labels).expect("a valid family");
        for (values, value) in samples {
            family.with_label_values(&values).set(value);
        }
        self.0
            .register(Box::new(family))
            .expect("each family is registered once per scrape");
    }

    /// A family with no labels and one value.
    fn single(&self, counter: bool, name: &str, help: &str, value: f64) {
        let samples = vec![(Vec::new(), value)];
        if counter {
            self.counter(name, help, &[], samples);
        } else {
            self.gauge(name, help, &[], samples);
        }
    }

    fn render(&self) -> Response {
        let encoder = TextEncoder::new();
        let mut body = Vec::new();
        if let Err(e) = encoder.encode(&self.0.gather(), &mut body) {
            return ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the metrics could not be written: {e}"),
            )
            .into_response();
        }
        (
            [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
            body,
        )
            .into_response()
    }
}

fn per_source(sources: &[SourceReport], f: impl Fn(&SourceReport) -> f64) -> Samples {
    sources.iter().map(|s| (vec![s.id.clone()], f(s))).collect()
}

pub(super) async fn metrics(
    State(state): State<AppState>,
    connections: Option<axum::Extension<std::sync::Arc<super::limited::ConnectionStats>>>,
) -> Response {
    let scrape = Scrape(Registry::new());

    let sources = state.sources().await;
    for (name, help, f) in [
        (
            "anode_source_events_total",
            "Records produced by a source.",
            (|s: &SourceReport| s.events as f64) as fn(&SourceReport) -> f64,
        ),
        (
            "anode_source_inputs_total",
            "Frames or responses received by a source.",
            |s| s.inputs as f64,
        ),
        (
            "anode_source_errors_total",
            "Errors of a source (bad input, failed requests).",
            |s| s.errors as f64,
        ),
        (
            "anode_source_reconnects_total",
            "Reconnections of a source.",
            |s| s.reconnects as f64,
        ),
    ] {
        scrape.counter(name, help, &["source"], per_source(&sources, f));
    }
    scrape.gauge(
        "anode_source_live",
        "1 when the source is live.",
        &["source"],
        per_source(&sources, |s| {
            f64::from(u8::from(s.state == SourceState::Live))
        }),
    );

    // A plugin is named by name, version and digest: two builds of one version are two series.
    let plugins: Vec<(Vec<String>, PluginMetricsSnapshot)> = state
        .loaded_plugins()
        .iter()
        .map(|p| {
            let m = p.manifest();
            let labels = vec![m.name.clone(), m.version.clone(), m.digest.to_hex()];
            (labels, p.metrics().snapshot())
        })
        .collect();
    for (name, help, f) in [
        (
            "anode_plugin_calls_total",
            "Calls into a plugin.",
            (|m: &PluginMetricsSnapshot| m.calls as f64) as fn(&PluginMetricsSnapshot) -> f64,
        ),
        (
            "anode_plugin_events_total",
            "Events a plugin produced.",
            |m| m.events_out as f64,
        ),
        (
            "anode_plugin_errors_total",
            "Error values a plugin returned.",
            |m| m.errors as f64,
        ),
        ("anode_plugin_traps_total", "Plugin crashes (traps).", |m| {
            m.traps as f64
        }),
        (
            "anode_plugin_timeouts_total",
            "Plugin calls stopped at the deadline.",
            |m| m.timeouts as f64,
        ),
        (
            "anode_plugin_out_of_memory_total",
            "Plugin calls stopped at the memory cap.",
            |m| m.out_of_memory as f64,
        ),
        (
            "anode_plugin_busy_seconds_total",
            "Time spent inside a plugin.",
            |m| m.busy_ns as f64 / 1e9,
        ),
    ] {
        let samples = plugins.iter().map(|(l, m)| (l.clone(), f(m))).collect();
        scrape.counter(name, help, &["plugin", "version", "digest"], samples);
    }

    // The database and the sinks beside it (JetStream), one series each.
    let store = state.store_stats();
    let sinks: Vec<&crate::sink::StoreStats> =
        std::iter::once(&store).chain(store.sinks.iter()).collect();
    type Read = fn(&crate::sink::StoreStats) -> f64;
    let families: [(bool, &str, &str, Read); 6] = [
        (
            true,
            "anode_store_rows_written_total",
            "Records newly stored (for JetStream: published).",
            |s| s.rows_written as f64,
        ),
        (
            true,
            "anode_store_duplicates_total",
            "Records skipped as already stored.",
            |s| s.duplicates_skipped as f64,
        ),
        (
            false,
            "anode_store_backlog",
            "Records waiting for the store.",
            |s| s.backlog as f64,
        ),
        (
            true,
            "anode_store_write_errors_total",
            "Failed store writes (retried).",
            |s| s.write_errors as f64,
        ),
        (
            false,
            "anode_store_connected",
            "1 when the store is reachable.",
            |s| f64::from(u8::from(s.connected)),
        ),
        (
            true,
            "anode_store_dropped_total",
            "Records an optional sink dropped because its buffer was full.",
            |s| s.dropped as f64,
        ),
    ];
    for (counter, name, help, read) in families {
        let samples = sinks
            .iter()
            .map(|s| (vec![s.kind.to_string()], read(s)))
            .collect();
        if counter {
            scrape.counter(name, help, &["store"], samples);
        } else {
            scrape.gauge(name, help, &["store"], samples);
        }
    }

    // What could not be processed, per stage of the record path.
    let dead = store
        .dead_letters
        .iter()
        .map(|(stage, n)| (vec![(*stage).to_owned()], *n as f64))
        .collect();
    scrape.counter(
        "anode_dead_letters_total",
        "Inputs written to the dead-letter store, by stage (decode, transform, store, cursor).",
        &["stage"],
        dead,
    );

    let fanout = state.fanout_stats();
    scrape.single(
        false,
        "anode_fanout_subscribers",
        "WebSocket subscribers.",
        fanout.subscribers as f64,
    );
    scrape.single(
        true,
        "anode_fanout_delivered_total",
        "Records queued to subscribers.",
        fanout.delivered as f64,
    );
    scrape.single(
        true,
        "anode_fanout_dropped_total",
        "Records dropped for slow subscribers.",
        fanout.dropped as f64,
    );
    scrape.single(
        true,
        "anode_fanout_lag_disconnects_total",
        "Subscribers disconnected for lag.",
        fanout.disconnected_for_lag as f64,
    );
    scrape.single(
        true,
        "anode_fanout_gap_notices_total",
        "Gap notices given to subscribers: a link to a peer failed or dropped records for them.",
        fanout.gap_notices as f64,
    );

    let view = state.cluster().view();
    let count = |s: MemberState| view.others.iter().filter(|m| m.state == s).count() as f64;
    scrape.gauge(
        "anode_cluster_members",
        "Members of the cluster as this node sees them (itself included in alive).",
        &["state"],
        vec![
            (vec!["alive".into()], 1.0 + count(MemberState::Alive)),
            (vec!["suspect".into()], count(MemberState::Suspect)),
            (vec!["down".into()], count(MemberState::Down)),
        ],
    );
    let gossip = state.cluster().stats.snapshot();
    let reasons = |prefix: &str, reasons: &[&str]| -> Samples {
        reasons
            .iter()
            .map(|r| {
                let value = gossip[format!("{prefix}{r}")].as_f64().unwrap_or(0.0);
                (vec![(*r).to_owned()], value)
            })
            .collect()
    };
    scrape.counter(
        "anode_gossip_packets_rejected_total",
        "Gossip packets dropped: not ours (garbage), another cluster (foreign), bad or missing \
         HMAC (auth), sealed outside the time window (stale), seen before (replay), undecodable \
         (invalid).",
        &["reason"],
        reasons(
            "rejected_",
            &["garbage", "foreign", "auth", "stale", "replay", "invalid"],
        ),
    );
    scrape.counter(
        "anode_cluster_requests_refused_total",
        "Node-to-node HTTP requests refused: unsigned or wrongly signed (auth), made outside the \
         time window (stale), seen before (replay), a write to a node without cluster.key (no_key).",
        &["reason"],
        reasons("requests_refused_", &["auth", "stale", "replay", "no_key"]),
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
            "anode_gossip_suspicions_held_total",
            "suspicions_held",
            "Suspicion timeouts held back while this node held most of its peers suspect.",
        ),
        (
            "anode_records_relayed_in_total",
            "records_relayed_in",
            "Records received from peers for this node's subscribers.",
        ),
        (
            "anode_relay_links_resumed_total",
            "links_resumed",
            "Links to peers reopened from the position they had reached, missing nothing.",
        ),
        (
            "anode_relay_records_resent_total",
            "records_resent",
            "Records sent to peers from this node's outbox: what their link missed while down or behind.",
        ),
    ] {
        scrape.single(true, name, help, gossip[key].as_f64().unwrap_or(0.0));
    }
    if let Some(axum::Extension(connections)) = connections {
        use std::sync::atomic::Ordering::Relaxed;
        scrape.single(
            false,
            "anode_api_connections_open",
            "API connections open (HTTP, /ws, dashboard, node-to-node).",
            connections.open.load(Relaxed) as f64,
        );
        scrape.single(
            true,
            "anode_api_connections_waited_total",
            "Times a new connection waited because api.max_connections were open.",
            connections.waited.load(Relaxed) as f64,
        );
    }
    scrape.single(
        true,
        "anode_egress_refused_total",
        "URLs sources were refused by the egress policy (sources.allow, sources.deny, loopback, \
         link-local, this node's API).",
        state.egress_refused() as f64,
    );
    scrape.single(
        true,
        "anode_source_close_timeouts_total",
        "Stopping WebSocket sources whose venue did not end the connection within \
         sources.close_timeout_ms (what it sent later was not read).",
        state.close_timeouts() as f64,
    );
    scrape.single(
        true,
        "anode_api_requests_refused_total",
        "API requests refused for want of the right token (api.token, api.read_token).",
        state.refused_requests() as f64,
    );
    scrape.single(
        true,
        "anode_catalog_entries_refused_total",
        "Catalog entries from peers refused by the checks (key shape, value, size, clock too far \
         ahead).",
        state.cluster().catalog.refused() as f64,
    );
    if let Some(cpu) = crate::procstat::cpu_seconds("self") {
        scrape.single(
            true,
            "process_cpu_seconds_total",
            "User and system CPU time of the node's process.",
            cpu,
        );
    }
    if let Some(bytes) = crate::procstat::resident_bytes("self") {
        scrape.single(
            false,
            "process_resident_memory_bytes",
            "Resident memory of the node's process.",
            bytes as f64,
        );
    }
    scrape.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_series_are_unique() {
        let scrape = Scrape(Registry::new());
        let odd = "a \"quoted\" \\ value\nsecond line".to_owned();
        scrape.counter(
            "t_things_total",
            "Things, with a \\ and a\nnewline.",
            &["name"],
            vec![(vec![odd.clone()], 1.0), (vec![odd], 2.0)],
        );
        let response = scrape.render();
        let body = futures_util::FutureExt::now_or_never(axum::body::to_bytes(
            response.into_body(),
            usize::MAX,
        ))
        .expect("the body is in memory")
        .unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            text.contains(r#"t_things_total{name="a \"quoted\" \\ value\nsecond line"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r"# HELP t_things_total Things, with a \\ and a\nnewline."),
            "{text}"
        );
        assert_eq!(text.matches("t_things_total{").count(), 1, "{text}");
    }
}
