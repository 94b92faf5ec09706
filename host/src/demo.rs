//! `anode demo`: the feed simulator and a local cluster reading 100+ of its streams over every kind of
//! source aNode has — Binance raw, combined and SUBSCRIBE WebSocket streams, Coinbase,
//! Kraken, REST trades polled through `http-json`, EVM chains over JSON-RPC — into the
//! embedded store (or PostgreSQL), with the API, `/ws` and `/metrics` up.
//!
//! [`mixed_sources`] is also what the ingestion tests and benchmarks run, so the demo shows
//! exactly what is tested.

use serde_json::json;

use crate::source::SourceSpec;

/// A source of the mix and the simulator streams it reads (as the simulator's report names
/// them).
#[derive(Debug, Clone)]
pub struct MixedSource {
    pub spec: SourceSpec,
    pub streams: Vec<String>,
    /// Whether the stored upstream ids end in the simulator's event ids (`…:<id>` or `<id>`),
    /// so that id sets, not only counts, can be compared.
    pub ids_comparable: bool,
}

/// `n` sources spread over every venue of the simulator at `ws_url` / `http_url` (the
/// simulator's base URLs): 40 % Binance raw, 12 % Binance combined (two symbols each), 6 %
/// Binance SUBSCRIBE, 12 % Coinbase, 10 % Kraken, 14 % REST trades, 6 % EVM chains.
pub fn mixed_sources(ws_url: &str, http_url: &str, n: usize) -> Vec<MixedSource> {
    let (ws, http) = (ws_url, http_url);
    (0..n)
        .map(|i| {
            let (spec, streams, ids_comparable) = match i * 100 / n.max(1) {
                0..40 => (
                    json!({"id": format!("bn-raw-{i}"), "plugin": "binance-trades",
                        "config": {"base_url": format!("{ws}/binance"), "symbols": [format!("r{i}usdt")], "mode": "raw"}}),
                    vec![format!("binance/r{i}usdt@trade")],
                    true,
                ),
                40..52 => (
                    json!({"id": format!("bn-comb-{i}"), "plugin": "binance-trades",
                        "config": {"base_url": format!("{ws}/binance"), "symbols": [format!("a{i}usdt"), format!("b{i}usdt")]}}),
                    vec![format!("binance/a{i}usdt@trade"), format!("binance/b{i}usdt@trade")],
                    false,
                ),
                52..58 => (
                    json!({"id": format!("bn-sub-{i}"), "plugin": "binance-trades",
                        "config": {"base_url": format!("{ws}/binance"), "symbols": [format!("s{i}usdt")], "mode": "subscribe"}}),
                    vec![format!("binance/s{i}usdt@trade")],
                    true,
                ),
                58..70 => (
                    json!({"id": format!("cb-{i}"), "plugin": "coinbase",
                        "config": {"base_url": format!("{ws}/coinbase"), "product_ids": [format!("C{i}-USD")]}}),
                    vec![format!("coinbase/C{i}-USD/matches"), format!("coinbase/C{i}-USD/ticker")],
                    false,
                ),
                70..80 => (
                    json!({"id": format!("kr-{i}"), "plugin": "kraken-ticker",
                        "config": {"base_url": format!("{ws}/kraken/v2"), "symbols": [format!("K{i}/USD")]}}),
                    vec![format!("kraken/K{i}/USD/ticker")],
                    false,
                ),
                80..94 => (
                    json!({"id": format!("rest-{i}"), "plugin": "http-json",
                        "config": {"url": format!("{http}/binance/api/v3/trades?symbol=T{i}USDT&limit=1000"),
                            "interval_ms": 200, "stream": "trades", "id_field": "id", "time_field": "time"}}),
                    vec![format!("binance-rest/T{i}USDT/trades")],
                    true,
                ),
                _ => (
                    json!({"id": format!("evm-{i}"), "plugin": "evm-blocks",
                        "config": {"url": format!("{http}/evm/chain{i}"), "chain": format!("chain{i}"), "interval_ms": 200}}),
                    vec![format!("evm/chain{i}/blocks")],
                    true,
                ),
            };
            MixedSource {
                spec: serde_json::from_value(spec).expect("the mix is valid"),
                streams,
                ids_comparable,
            }
        })
        .collect()
}

/// The configurations of a local demo cluster of `nodes` nodes derived from `base`: node `i`
/// (from 1) is `demo-i`, keeps its data in `<data_dir>/demo/node-i`, serves its API on the
/// base API port + i − 1 and gossips on 127.0.0.1:(7946 + i − 1); every node joins the first.
/// They share the PostgreSQL URL when one is set, else each has its embedded store, and the
/// cluster key when one is set, else a random one made for this run.
pub fn cluster_configs(base: &crate::config::Config, nodes: usize) -> Vec<crate::config::Config> {
    let gossip_base = crate::cluster::DEFAULT_GOSSIP_PORT;
    let key = if base.cluster.key.is_empty() {
        vec![hex::encode(rand::random::<[u8; 32]>())]
    } else {
        base.cluster.key.clone()
    };
    let first_gossip = std::net::SocketAddr::from(([127, 0, 0, 1], gossip_base));
    (0..nodes)
        .map(|i| {
            let mut c = base.clone();
            c.node.id = Some(format!("demo-{}", i + 1));
            c.data_dir = base.data_dir.join("demo").join(format!("node-{}", i + 1));
            c.api.bind.set_port(base.api.bind.port() + i as u16);
            c.api.advertise = None;
            c.cluster.bind = std::net::SocketAddr::from(([127, 0, 0, 1], gossip_base + i as u16));
            c.cluster.advertise = None;
            c.cluster.key = key.clone();
            c.cluster.seeds = if i == 0 {
                Vec::new()
            } else {
                vec![first_gossip.to_string()]
            };
            c.store.sqlite_path = None;
            c.source_specs.clear();
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_covers_every_venue_with_unique_ids() {
        let mix = mixed_sources("ws://h", "http://h", 100);
        let ids: std::collections::HashSet<_> = mix.iter().map(|m| m.spec.id.clone()).collect();
        assert_eq!(ids.len(), 100);
        for plugin in [
            "binance-trades",
            "coinbase",
            "kraken-ticker",
            "http-json",
            "evm-blocks",
        ] {
            assert!(
                mix.iter().any(|m| m.spec.plugin == plugin),
                "{plugin} missing"
            );
        }
        assert!(mix.iter().all(|m| m.spec.validate().is_ok()));
    }
}
