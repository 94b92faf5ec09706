//! The receiving side: one link to each live peer while this node has clients, resumed from
//! the position it reached after a drop; `gap` notices when it cannot be.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite;
use tokio_util::sync::CancellationToken;

use super::wire::{Confirmed, LinkOpened, PeerGap, numbered, relayed};
use crate::cluster::{Peer, PeerContext};
use crate::fanout::{Filter, LinkPosition};

/// How often links are opened and closed to follow interest and membership.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// Wait before reopening a link that failed.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// may be missing, and why; `position` is where the link to it had got to.
fn gap_notice(
    peer: &str,
    sources: &[String],
    reason: &str,
    position: Option<LinkPosition>,
) -> String {
    json!({
        "type": "gap",
        "node": peer,
        "sources": sources,
        "reason": reason,
        "position": position.map(|p| json!({ "epoch": p.epoch, "after": p.seq })),
        "message": "records of these sources from that node may be missing here: the link to it \
                    failed or fell behind (it reopens on its own). A subscriber that must not miss \
                    any reads the stored log from its last position (since=)",
    })
    .to_string()
}

struct Link {
    peer: Peer,
    /// The interest version and filters to send.
    filters: watch::Sender<(u64, Vec<Filter>)>,
    /// The interest version the peer has confirmed.
    confirmed: Arc<AtomicU64>,
    task: JoinHandle<Result<(), String>>,
}

/// Where this node's link to one peer got to, kept across its reopenings.
#[derive(Default)]
struct Reached {
    /// The peer's outbox epoch (0 until a numbered link opened) and the last number received.
    epoch: AtomicU64,
    seq: AtomicU64,
    /// Since when the link is down, and why (`None` while it is open).
    broken: std::sync::Mutex<Option<(Instant, String)>>,
    /// The sources the peer collected when the link last opened or failed: what a `gap`
    /// notice names once the peer is gone from the view.
    sources: std::sync::Mutex<Vec<String>>,
}

impl Reached {
    fn position(&self) -> Option<LinkPosition> {
        let epoch = self.epoch.load(Relaxed);
        (epoch != 0).then(|| LinkPosition {
            epoch,
            seq: self.seq.load(Relaxed),
        })
    }

    /// Note which sources `peer` collects now.
    fn remember_sources(&self, state: &PeerContext, peer: &str) {
        let sources = state.reports.sources_of(&state.cluster.view(), peer);
        if !sources.is_empty() {
            *crate::sync::lock(&self.sources) = sources;
        }
    }

    fn sources(&self) -> Vec<String> {
        crate::sync::lock(&self.sources).clone()
    }

    /// Note the link failed (the first failure's time is kept until it opens again).
    fn broke(&self, why: &str) {
        crate::sync::lock(&self.broken).get_or_insert_with(|| (Instant::now(), why.to_owned()));
    }

    /// How long the link has been down, and why.
    fn down(&self) -> Option<(Duration, String)> {
        let broken = crate::sync::lock(&self.broken);
        broken.as_ref().map(|(at, why)| (at.elapsed(), why.clone()))
    }

    /// The link opened at `position`; returns why it had been down, if it had.
    fn opened(&self, position: LinkPosition) -> Option<String> {
        self.epoch.store(position.epoch, Relaxed);
        self.seq.store(position.seq, Relaxed);
        crate::sync::lock(&self.broken).take().map(|(_, why)| why)
    }
}

/// Keep one link open to every live peer while this node has clients; none otherwise. Tell
/// the hub which interest every live peer has confirmed. A link that stays down past the
/// peers' outbox span (`fanout.relay_buffer_ms`), or whose peer leaves the live members,
/// gives this node's clients a `gap` notice.
pub async fn run_links(state: PeerContext, shutdown: CancellationToken) {
    let mut links: HashMap<String, Link> = HashMap::new();
    let mut failed: HashMap<String, Instant> = HashMap::new();
    let mut reached: HashMap<String, Arc<Reached>> = HashMap::new();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut interest = state.hub.attach_relay();
    let confirmations = Arc::new(tokio::sync::Notify::new());
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
            _ = interest.changed() => {}
            () = confirmations.notified() => {}
        }
        let version = *interest.borrow_and_update();
        let filters = state.hub.client_filters();
        let view = state.cluster.view();
        links.retain(|id, link| {
            let current = view.live_peers().any(|p| *p == link.peer);
            let keep = !filters.is_empty() && current && !link.task.is_finished();
            if link.task.is_finished() {
                failed.insert(id.clone(), Instant::now());
            }
            if !keep {
                link.task.abort();
            }
            keep
        });
        if filters.is_empty() {
            // No clients: nothing to resume for.
            reached.clear();
            state.hub.peers_heard(version);
            continue;
        }
        give_up_links(&state, &view, &mut reached);
        for peer in view.live_peers() {
            if links.contains_key(&peer.id)
                || failed
                    .get(&peer.id)
                    .is_some_and(|at| at.elapsed() < RETRY_AFTER)
            {
                continue;
            }
            let (tx, rx) = watch::channel((version, filters.clone()));
            let confirmed = Arc::new(AtomicU64::new(0));
            let task = tokio::spawn(link(
                state.clone(),
                peer.clone(),
                rx,
                (confirmed.clone(), confirmations.clone()),
                reached.entry(peer.id.clone()).or_default().clone(),
            ));
            links.insert(
                peer.id.clone(),
                Link {
                    peer: peer.clone(),
                    filters: tx,
                    confirmed,
                    task,
                },
            );
        }
        for link in links.values() {
            link.filters.send_if_modified(|current| {
                if current.0 == version && current.1 == filters {
                    false
                } else {
                    *current = (version, filters.clone());
                    true
                }
            });
        }
        // Heard by all: every live peer with a link has confirmed it (one that cannot be
        // reached sends nothing anyway).
        // A live peer without a link here is one whose link failed and waits to be retried.
        let heard = view
            .live_peers()
            .filter_map(|p| links.get(&p.id).map(|l| l.confirmed.load(Relaxed)))
            .min()
            .unwrap_or(version);
        state.hub.peers_heard(heard.min(version));
    }
    for link in links.into_values() {
        link.task.abort();
    }
}

/// Links that can no longer resume: their peer left the live members, or they stayed down
/// longer than the peers' outbox keeps records. This node's clients get a `gap` notice with
/// the position the link had reached, and the next link starts afresh.
fn give_up_links(
    state: &PeerContext,
    view: &crate::cluster::View,
    reached: &mut HashMap<String, Arc<Reached>>,
) {
    let span = state.hub.relay_buffer();
    reached.retain(|id, r| {
        let live = view.live_peers().any(|p| p.id == *id);
        let reason = match (live, r.down()) {
            (false, Some((_, why))) => format!(
                "the link failed ({why}) and {id} left the live members before it could resume"
            ),
            (false, None) => format!(
                "the link failed: {id} left the live members, and what it collected and had \
                 not sent is not here"
            ),
            (true, Some((down, why))) if down >= span => format!(
                "the link failed ({why}) and stayed down for {} s, longer than the peer keeps \
                 records to resume from (fanout.relay_buffer_ms)",
                down.as_secs()
            ),
            _ => return true,
        };
        if let Some(position) = r.position() {
            let notice = gap_notice(id, &r.sources(), &reason, Some(position));
            state.hub.notify_gap(&notice);
        }
        false
    });
}

/// A link to `peer`, open until it fails; on failure the position it reached is kept for
/// the next one to resume from.
async fn link(
    state: PeerContext,
    peer: Peer,
    filters: watch::Receiver<(u64, Vec<Filter>)>,
    confirmations: (Arc<AtomicU64>, Arc<tokio::sync::Notify>),
    reached: Arc<Reached>,
) -> Result<(), String> {
    let ended = run_link(&state, &peer, filters, confirmations, &reached).await;
    if let Err(reason) = &ended
        && !state.shutdown.is_cancelled()
    {
        reached.remember_sources(&state, &peer.id);
        reached.broke(reason);
    }
    ended
}

async fn run_link(
    state: &PeerContext,
    peer: &Peer,
    mut filters: watch::Receiver<(u64, Vec<Filter>)>,
    (confirmed, confirmations): (Arc<AtomicU64>, Arc<tokio::sync::Notify>),
    reached: &Reached,
) -> Result<(), String> {
    use tungstenite::client::IntoClientRequest;
    let asked = reached.position();
    let path = match asked {
        Some(p) => format!(
            "/cluster/v1/stream?resume=1&epoch={}&after={}",
            p.epoch, p.seq
        ),
        None => "/cluster/v1/stream?resume=1".to_owned(),
    };
    let url = format!("ws://{}{path}", peer.api);
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let now_ms = crate::clock::now_us() / 1000;
    if let Some(signature) = state
        .cluster
        .envelope
        .keys()
        .sign_request("GET", &path, b"", now_ms)
    {
        request.headers_mut().insert(
            crate::cluster::AUTH_HEADER,
            signature.parse().map_err(|_| "bad signature header")?,
        );
    }
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(5),
        // A 16 KiB read buffer: tungstenite zero-fills it before every read.
        tokio_tungstenite::connect_async_with_config(
            request,
            Some(
                tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                    .read_buffer_size(16 * 1024),
            ),
            false,
        ),
    )
    .await
    .map_err(|_| format!("connecting to {url} timed out"))?
    .map_err(|e| format!("connecting to {url}: {e}"))?;
    let (mut tx, mut rx) = ws.split();
    let hello =
        |(version, f): &(u64, Vec<Filter>)| json!({ "filters": f, "version": version }).to_string();
    let first = hello(&filters.borrow_and_update());
    tx.send(tungstenite::Message::text(first))
        .await
        .map_err(|e| e.to_string())?;
    let hub = &state.hub;
    let stats = &state.cluster.stats;
    loop {
        tokio::select! {
            changed = filters.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let text = hello(&filters.borrow_and_update());
                tx.send(tungstenite::Message::text(text)).await.map_err(|e| e.to_string())?;
            }
            incoming = rx.next() => match incoming {
                Some(Ok(tungstenite::Message::Text(text))) => {
                    let text = text.as_str();
                    if let Some((seq, id, head, stage, record)) = numbered(text) {
                        reached.seq.store(seq, Relaxed);
                        stats.records_relayed_in.fetch_add(1, Relaxed);
                        hub.publish_relayed(&id, &head.parts(), stage, Arc::from(record));
                    } else if let Some((id, head, stage, record)) = relayed(text) {
                        // A peer of an older version: its link is up, but cannot resume.
                        reached.opened(LinkPosition { epoch: 0, seq: 0 });
                        stats.records_relayed_in.fetch_add(1, Relaxed);
                        hub.publish_relayed(&id, &head.parts(), stage, Arc::from(record));
                    } else {
                        peer_word(state, peer, reached, asked, text, (&confirmed, &confirmations));
                    }
                }
                Some(Ok(tungstenite::Message::Close(frame))) => {
                    return Err(format!("{} closed the stream: {frame:?}", peer.id));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err(format!("{} ended the stream", peer.id)),
            },
        }
    }
}

/// A message from a peer that is not a record: a confirmation, the link's opening, or a gap
/// the peer could not make up for.
fn peer_word(
    state: &PeerContext,
    peer: &Peer,
    reached: &Reached,
    asked: Option<LinkPosition>,
    text: &str,
    (confirmed, confirmations): (&AtomicU64, &tokio::sync::Notify),
) {
    if let Ok(c) = serde_json::from_str::<Confirmed>(text) {
        confirmed.fetch_max(c.confirmed, Relaxed);
        confirmations.notify_one();
    } else if let Ok(LinkOpened { link }) = serde_json::from_str::<LinkOpened>(text) {
        let at = LinkPosition {
            epoch: link.epoch,
            seq: link.from,
        };
        let why = reached.opened(at);
        reached.remember_sources(state, &peer.id);
        match asked {
            Some(position) if !link.complete => {
                let cause = if position.epoch == link.epoch {
                    "its outbox no longer holds what followed (fanout.relay_buffer_ms, \
                     fanout.relay_buffer_bytes)"
                } else {
                    "it restarted since"
                };
                let reason = format!(
                    "the link failed ({}) and {} cannot resume it: {cause}",
                    why.as_deref().unwrap_or("closed"),
                    peer.id
                );
                let notice = gap_notice(&peer.id, &reached.sources(), &reason, Some(position));
                state.hub.notify_gap(&notice);
            }
            Some(_) => {
                state.cluster.stats.links_resumed.fetch_add(1, Relaxed);
            }
            None => {}
        }
    } else if let Ok(gap) = serde_json::from_str::<PeerGap>(text) {
        let reason = format!(
            "{} dropped {} record(s) for this node's link: it was behind",
            peer.id, gap.gap.dropped
        );
        reached.remember_sources(state, &peer.id);
        let notice = gap_notice(&peer.id, &reached.sources(), &reason, reached.position());
        state.hub.notify_gap(&notice);
    } else {
        state.cluster.stats.rejected_invalid.fetch_add(1, Relaxed);
    }
}
