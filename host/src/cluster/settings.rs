//! Gossip and catalog settings (`[cluster]` in the config); every timing has a named default.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The `[cluster]` section of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// UDP address gossip listens on.
    pub bind: SocketAddr,
    /// `host:port` other nodes reach this node's gossip at; default `bind`.
    pub advertise: Option<String>,
    /// Gossip addresses (`host:port`) of nodes to join; a list, or one comma-separated string.
    #[serde(deserialize_with = "list_or_csv")]
    pub seeds: Vec<String>,
    /// Shared secret: gossip packets and node-to-node HTTP requests are signed with it. One
    /// key, or a list to roll keys without downtime: the first signs, every one verifies.
    /// Required for a cluster (seeds set) and when `bind` is beyond loopback; without it,
    /// `/cluster/v1` refuses writes.
    #[serde(
        deserialize_with = "one_or_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub key: Vec<String>,
    /// A signed message made longer ago (or further ahead) than this is refused as stale;
    /// within it, a repeated one is refused as a replay. Node clocks must agree this well.
    pub auth_window_ms: u64,
    /// Name of the cluster; packets of other clusters are dropped.
    pub cluster_id: String,
    /// SWIM probe period.
    pub probe_period_ms: u64,
    /// How long a probe waits for an ack before asking others to probe.
    pub probe_rtt_ms: u64,
    /// How long a suspect member has to refute before it is declared down, in a cluster of up
    /// to 10 members; scaled by log10(members) past that.
    pub suspect_to_down_ms: u64,
    /// Largest gossip packet; bigger catalog entries travel by HTTP instead.
    pub max_packet_bytes: usize,
    /// Period of push-pull anti-entropy of the catalog with one random peer.
    pub sync_ms: u64,
    /// Period of re-announcing to the seeds while this node knows no other member.
    pub announce_ms: u64,
    /// Period of announcing to members this node holds down (two at random each time), so
    /// the two sides of a healed partition find each other within about this long.
    pub rejoin_probe_ms: u64,
    /// At start with seeds, how long to wait to hear from the cluster before running
    /// sources alone.
    pub join_grace_ms: u64,
    /// Make-before-break: a node that no longer owns a source (a node joined, or this one
    /// leaves) runs it until its new owner reports it live, at most this long when the new
    /// owner says nothing (never stopped while the new owner reports it cannot run it).
    pub handover_timeout_ms: u64,
    /// With the embedded store, how often committed cursors are written to the catalog (so a
    /// new owner on another node resumes from them); at most this much is replayed there.
    pub cursor_share_ms: u64,
}

/// Default gossip port (UDP).
pub const DEFAULT_GOSSIP_PORT: u16 = 7946;

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            bind: SocketAddr::from(([127, 0, 0, 1], DEFAULT_GOSSIP_PORT)),
            advertise: None,
            seeds: Vec::new(),
            key: Vec::new(),
            auth_window_ms: 30_000,
            cluster_id: "anode".into(),
            probe_period_ms: 500,
            probe_rtt_ms: 250,
            suspect_to_down_ms: 4000,
            max_packet_bytes: 1400,
            sync_ms: 2000,
            announce_ms: 1000,
            rejoin_probe_ms: 1000,
            join_grace_ms: 3000,
            handover_timeout_ms: 10_000,
            cursor_share_ms: 1000,
        }
    }
}

/// One key, or a list of keys (a key may hold commas, so a string is never split).
fn one_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        One(String),
    }
    let keys = match Either::deserialize(d)? {
        Either::List(list) => list,
        Either::One(key) => vec![key],
    };
    if keys.iter().any(|k| k.len() < 16) {
        return Err(serde::de::Error::custom(
            "a cluster key must be at least 16 characters: make one with `openssl rand -hex 32`",
        ));
    }
    Ok(keys)
}

fn list_or_csv<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::List(list) => list,
        Either::Text(text) => text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}
