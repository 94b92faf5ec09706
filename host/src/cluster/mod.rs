//! The gossip cluster: SWIM membership with `foca` over UDP, the replicated catalog spread by
//! foca's custom broadcasts, and the view of live members the assignment is computed from.
//!
//! One task owns foca, the UDP socket and one timer queue; everything else talks to it over a
//! channel or reads the published [`View`]. Every packet is wrapped in an envelope:
//! `"AN"`, protocol version, cluster id, body, and an HMAC-SHA256 tag when a cluster key is
//! set. Packets that fail any of those checks are dropped and counted, never handed to foca.

pub mod assign;
mod auth;
pub mod catalog;
mod checks;
mod envelope;
mod gossip;
pub mod http;
mod journal;
pub mod relay;
mod settings;

use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use foca::{Config as FocaConfig, Foca, Identity, PostcardCodec};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

pub use catalog::{Catalog, Entry};
use gossip::{CatalogBroadcasts, Gossip};

pub use settings::{ClusterSettings, DEFAULT_GOSSIP_PORT};

/// A member's identity in gossip. `generation` is the start time in ms: a restarted node comes
/// back with a greater one and replaces its former self.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Peer {
    /// The stable node id (kept in the data dir).
    pub id: String,
    pub generation: u64,
    pub gossip: SocketAddr,
    pub api: SocketAddr,
    pub version: String,
}

/// A generation that grew by less than this is the same process rejoining (each renewal adds
/// one), not a restart (a new start time in ms: a restart takes longer than a second).
pub const REJOIN_STEPS: u64 = 1000;

impl Identity for Peer {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Peer {
            generation: self.generation + 1,
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.gossip
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

impl Peer {
    /// A stand-in for a seed whose identity is not known yet: foca accepts an announce
    /// addressed to any identity at its address.
    fn seed(addr: SocketAddr) -> Peer {
        Peer {
            id: String::new(),
            generation: 0,
            gossip: addr,
            api: SocketAddr::from(([0, 0, 0, 0], 0)),
            version: String::new(),
        }
    }

    /// Base URL of its HTTP API.
    pub fn url(&self) -> String {
        format!("http://{}", self.api)
    }
}

/// A member's state as gossip sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive,
    Suspect,
    Down,
}

/// One member of the view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub peer: Peer,
    pub state: MemberState,
}

/// What the node-to-node routes and the data plane need of the node they run in: a narrow
/// handle, so the cluster never reaches into the node.
#[derive(Clone)]
pub struct PeerContext {
    pub cluster: Cluster,
    /// Where plugin bytes are served from.
    pub plugins: crate::plugin::PluginStore,
    /// This node's fan-out: records to peers, relayed records to clients.
    pub hub: crate::fanout::Hub,
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Whether the API listens on loopback only (node-to-node routes then need no key).
    pub loopback_only: bool,
    /// This node's own source reports.
    pub reports: std::sync::Arc<dyn SourceReports>,
}

/// Reports of the sources a node runs (and owns but could not start), for its peers.
pub trait SourceReports: Send + Sync {
    fn local_reports(
        &self,
    ) -> std::pin::Pin<Box<dyn Future<Output = Vec<crate::source::SourceReport>> + Send + '_>>;
    /// Whether this node is shutting down (it takes no source over).
    fn leaving(&self) -> bool;
    /// The sources `node` collects in `view` (as their owner or one of their replicas),
    /// sorted.
    fn sources_of(&self, view: &View, node: &str) -> Vec<String>;
}

/// The owner of `source` among `nodes` (stable ids), by rendezvous hashing.
pub fn owner_among<'a>(source: &str, nodes: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    assign::owner(source, nodes)
}

/// What this node knows of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub me: Peer,
    /// Other members, one per node id (its latest identity).
    pub others: Vec<Member>,
}

impl View {
    /// Stable ids of the members that own sources: this node and every alive or suspect one.
    pub fn live_ids(&self) -> Vec<&str> {
        std::iter::once(self.me.id.as_str())
            .chain(
                self.others
                    .iter()
                    .filter(|m| m.state != MemberState::Down)
                    .map(|m| m.peer.id.as_str()),
            )
            .collect()
    }

    /// Other alive or suspect members.
    pub fn live_peers(&self) -> impl Iterator<Item = &Peer> {
        self.others
            .iter()
            .filter(|m| m.state != MemberState::Down)
            .map(|m| &m.peer)
    }

    /// The owner of `source` in this view.
    pub fn owner(&self, source: &str) -> String {
        assign::owner(source, self.live_ids())
            .unwrap_or(&self.me.id)
            .to_owned()
    }

    /// The `k` nodes that run `source` (`replicas`), the owner first.
    pub fn owners(&self, source: &str, k: usize) -> Vec<String> {
        assign::owners(source, self.live_ids(), k)
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    pub fn peer(&self, id: &str) -> Option<&Peer> {
        if id == self.me.id {
            return Some(&self.me);
        }
        self.others
            .iter()
            .find(|m| m.peer.id == id)
            .map(|m| &m.peer)
    }
}

/// Counters of the gossip layer.
#[derive(Debug, Default)]
pub struct GossipStats {
    pub packets_in: AtomicU64,
    pub packets_out: AtomicU64,
    /// Packets without our magic or protocol version.
    pub rejected_garbage: AtomicU64,
    /// Packets of another cluster id.
    pub rejected_foreign: AtomicU64,
    /// Packets whose HMAC is missing or wrong (another key, or forged).
    pub rejected_auth: AtomicU64,
    /// Authenticated packets sealed outside the time window (`cluster.auth_window_ms`).
    pub rejected_stale: AtomicU64,
    /// Authenticated packets seen before: replays.
    pub rejected_replay: AtomicU64,
    /// Authenticated packets foca could not decode or refused.
    pub rejected_invalid: AtomicU64,
    /// Node-to-node HTTP requests refused: unsigned or wrongly signed, stale, replayed, or a
    /// write without a cluster key.
    pub requests_refused_auth: AtomicU64,
    pub requests_refused_stale: AtomicU64,
    pub requests_refused_replay: AtomicU64,
    pub requests_refused_no_key: AtomicU64,

    /// Suspects declared down early because their host refused connections on their API
    /// port (the process is gone).
    pub confirmed_down: AtomicU64,
    /// Suspicion timeouts held back because this node held most of its peers suspect at once
    /// (its own network is the likelier fault; see `gossip::LOCAL_HEALTH_HOLDS`).
    pub suspicions_held: AtomicU64,
    /// Suspicions taken back because no timer was left to end them (after this node rejoined
    /// under a new generation).
    pub stale_suspicions_cleared: AtomicU64,
    pub broadcasts_received: AtomicU64,
    /// Records received from peers for this node's subscribers.
    pub records_relayed_in: AtomicU64,
    /// Links to peers reopened from the position they had reached: nothing was missed.
    pub links_resumed: AtomicU64,
    /// Records sent to peers from this node's outbox: what their link had missed while it
    /// was down or behind.
    pub records_resent: AtomicU64,
    /// Catalog entries sent by HTTP because they are too big for a gossip packet.
    pub pushed_over_http: AtomicU64,
    pub sync_rounds: AtomicU64,
    pub sync_failures: AtomicU64,
    pub plugin_fetches: AtomicU64,
    pub plugin_fetch_failures: AtomicU64,
}

impl GossipStats {
    pub fn snapshot(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Relaxed);
        serde_json::json!({
            "packets_in": g(&self.packets_in),
            "packets_out": g(&self.packets_out),
            "rejected_garbage": g(&self.rejected_garbage),
            "rejected_foreign": g(&self.rejected_foreign),
            "rejected_auth": g(&self.rejected_auth),
            "rejected_stale": g(&self.rejected_stale),
            "rejected_replay": g(&self.rejected_replay),
            "rejected_invalid": g(&self.rejected_invalid),
            "requests_refused_auth": g(&self.requests_refused_auth),
            "requests_refused_stale": g(&self.requests_refused_stale),
            "requests_refused_replay": g(&self.requests_refused_replay),
            "requests_refused_no_key": g(&self.requests_refused_no_key),

            "confirmed_down": g(&self.confirmed_down),
            "suspicions_held": g(&self.suspicions_held),
            "stale_suspicions_cleared": g(&self.stale_suspicions_cleared),
            "broadcasts_received": g(&self.broadcasts_received),
            "records_relayed_in": g(&self.records_relayed_in),
            "links_resumed": g(&self.links_resumed),
            "records_resent": g(&self.records_resent),
            "pushed_over_http": g(&self.pushed_over_http),
            "sync_rounds": g(&self.sync_rounds),
            "sync_failures": g(&self.sync_failures),
            "plugin_fetches": g(&self.plugin_fetches),
            "plugin_fetch_failures": g(&self.plugin_fetch_failures),
        })
    }
}

pub use auth::{AUTH_HEADER, Keys, Refused};
pub use envelope::{Envelope, PROTOCOL, Rejected};

/// Something that happened in the cluster, for the event log.
#[derive(Debug, Clone)]
pub enum ClusterEvent {
    Joined(Peer),
    Down(Peer),
    Replaced { old: Peer, new: Peer },
    Isolated,
    Rejoined(Peer),
}

enum Command {
    Broadcast(Vec<u8>),
    Leave(oneshot::Sender<()>),
}

/// A running membership. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    pub settings: ClusterSettings,
    pub catalog: Arc<Catalog>,
    pub stats: Arc<GossipStats>,
    pub envelope: Envelope,
    view: watch::Receiver<View>,
    commands: mpsc::Sender<Command>,
    /// Where gossip listens.
    pub gossip_addr: SocketAddr,
}

/// Why the cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot listen for gossip on {addr} (cluster.bind): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot resolve {what} `{addr}`: {message}")]
    Resolve {
        what: &'static str,
        addr: String,
        message: String,
    },
    #[error(
        "cluster.bind is {0} (beyond loopback) but no cluster.key is set: set one (or \
         ANODE_CLUSTER__KEY) so that only nodes holding it can join"
    )]
    NoKey(SocketAddr),
    #[error(
        "cluster.seeds are set but no cluster.key: nodes sign their gossip and node-to-node \
         requests with it, so a cluster needs one. Set the same secret on every node \
         (`[cluster] key`, ANODE_CLUSTER__KEY, or ANODE_CLUSTER__KEY_FILE; make one with \
         `openssl rand -hex 32`)"
    )]
    NoKeyToJoin,
}

/// Resolve `host:port` to one socket address.
pub async fn resolve(what: &'static str, addr: &str) -> Result<SocketAddr, ClusterError> {
    let err = |message: String| ClusterError::Resolve {
        what,
        addr: addr.to_owned(),
        message,
    };
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("no address".into()))
}

impl Cluster {
    /// Bind gossip and start the membership task. `api` is this node's advertised HTTP API.
    pub async fn start(
        settings: ClusterSettings,
        node_id: &str,
        api: SocketAddr,
        catalog: Arc<Catalog>,
        events: mpsc::UnboundedSender<ClusterEvent>,
        shutdown: CancellationToken,
    ) -> Result<(Cluster, tokio::task::JoinHandle<()>), ClusterError> {
        if !settings.bind.ip().is_loopback() && settings.key.is_empty() {
            return Err(ClusterError::NoKey(settings.bind));
        }
        if !settings.seeds.is_empty() && settings.key.is_empty() {
            return Err(ClusterError::NoKeyToJoin);
        }
        let socket = UdpSocket::bind(settings.bind)
            .await
            .map_err(|source| ClusterError::Bind {
                addr: settings.bind,
                source,
            })?;
        let bound = socket.local_addr().map_err(|source| ClusterError::Bind {
            addr: settings.bind,
            source,
        })?;
        let gossip = match &settings.advertise {
            Some(a) => resolve("cluster.advertise", a).await?,
            None => bound,
        };
        let me = Peer {
            id: node_id.to_owned(),
            generation: crate::clock::now_us() as u64 / 1000,
            gossip,
            api,
            version: env!("CARGO_PKG_VERSION").into(),
        };
        let stats = Arc::new(GossipStats::default());
        let envelope = Envelope::new(Keys::new(
            &settings.cluster_id,
            &settings.key,
            settings.auth_window_ms,
        ));
        let mut config = FocaConfig::new_lan(std::num::NonZeroU32::new(3).expect("3 > 0"));
        config.probe_period = Duration::from_millis(settings.probe_period_ms.max(10));
        config.probe_rtt = Duration::from_millis(
            settings
                .probe_rtt_ms
                .clamp(1, settings.probe_period_ms.max(10) - 1),
        );
        config.suspect_to_down_after = Duration::from_millis(settings.suspect_to_down_ms.max(1));
        config.max_packet_size =
            NonZeroUsize::new(settings.max_packet_bytes.max(512)).expect("at least 512");
        config.max_transmissions = NonZeroU8::new(10).expect("10 > 0");
        // Down members are announced to often (foca's LAN default is every 65 s): after a
        // partition heals, the sides find each other within about one period.
        config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: Duration::from_millis(settings.rejoin_probe_ms.max(100)),
            num_members: NonZeroUsize::new(2).expect("2 > 0"),
        });
        config.periodic_gossip = Some(foca::PeriodicParams {
            frequency: Duration::from_millis(200),
            num_members: NonZeroUsize::new(3).expect("3 > 0"),
        });
        let foca = Foca::with_custom_broadcast(
            me.clone(),
            config.clone(),
            rand::make_rng::<rand::rngs::StdRng>(),
            PostcardCodec,
            CatalogBroadcasts {
                catalog: catalog.clone(),
                stats: stats.clone(),
            },
        );
        let (view_tx, view) = watch::channel(View {
            me: me.clone(),
            others: Vec::new(),
        });
        let (commands, rx) = mpsc::channel(1024);
        let mut seeds = Vec::new();
        for seed in &settings.seeds {
            match resolve("cluster.seeds entry", seed).await {
                Ok(addr) if addr != gossip && addr != bound => seeds.push(addr),
                Ok(_) => {}
                // A seed that does not resolve yet (its host is starting) is retried later.
                Err(e) => tracing::warn!("{e}; retrying while isolated"),
            }
        }
        let task = tokio::spawn(
            Gossip {
                foca,
                socket: Arc::new(socket),
                envelope: envelope.clone(),
                stats: stats.clone(),
                seeds,
                seed_names: settings.seeds.clone(),
                timers: DelayQueue::new(),
                view: view_tx,
                events,
                runtime: foca::AccumulatingRuntime::new(),
                announce_every: Duration::from_millis(settings.announce_ms.max(50)),
                config,
                suspect_base: Duration::from_millis(settings.suspect_to_down_ms.max(1)),
                scaled_for: 1,
                confirming: Default::default(),
                suspect_since: Default::default(),
                last_heard: std::time::Instant::now(),
                gone: mpsc::channel(64),
            }
            .run(rx, shutdown),
        );
        Ok((
            Cluster {
                settings,
                catalog,
                stats,
                envelope,
                view,
                commands,
                gossip_addr: bound,
            },
            task,
        ))
    }

    /// The current view.
    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// Ticks when the view changes.
    pub fn watch(&self) -> watch::Receiver<View> {
        self.view.clone()
    }

    /// Spread a local catalog write: by gossip when it fits a packet, else by HTTP to every
    /// live member (anti-entropy would get it there too, later).
    pub async fn spread(&self, entry: Entry, http: &reqwest::Client) {
        if self.view().live_peers().next().is_none() {
            // Alone: there is no one to tell; anti-entropy brings it to whoever joins.
            return;
        }
        let bytes = serde_json::to_vec(&entry).expect("entries serialise");
        // Room for the envelope, foca's header and a few membership updates.
        if bytes.len() + 400 <= self.settings.max_packet_bytes {
            let _ = self.commands.send(Command::Broadcast(bytes)).await;
            return;
        }
        let peers: Vec<Peer> = self.view().live_peers().cloned().collect();
        for peer in peers {
            self.stats.pushed_over_http.fetch_add(1, Relaxed);
            let _ = http::push(self, http, &peer, std::slice::from_ref(&entry)).await;
        }
    }

    /// Spread many local writes at once (a bulk add): pushed over HTTP to every live member in
    /// a few requests, instead of one gossip broadcast each.
    pub async fn spread_many(&self, entries: Vec<Entry>, http: &reqwest::Client) {
        /// Entries per push: well under a peer's request-size cap.
        const PER_PUSH: usize = 256;
        if entries.len() <= 1 {
            for entry in entries {
                self.spread(entry, http).await;
            }
            return;
        }
        let peers: Vec<Peer> = self.view().live_peers().cloned().collect();
        for peer in peers {
            for chunk in entries.chunks(PER_PUSH) {
                self.stats.pushed_over_http.fetch_add(1, Relaxed);
                if let Err(e) = http::push(self, http, &peer, chunk).await {
                    // Anti-entropy carries the rest there later.
                    tracing::debug!("{e}");
                    break;
                }
            }
        }
    }

    /// Tell the others we leave, then stop gossiping.
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Leave(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
        }
    }
}

#[cfg(test)]
mod tests;
