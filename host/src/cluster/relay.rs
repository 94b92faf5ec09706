//! The data plane: a WebSocket subscriber on any node receives matching records of every
//! source in the cluster. A node with clients opens one authenticated stream to each live
//! peer (`/cluster/v1/stream`), sends the union of its clients' filters (and every change of
//! it), and republishes what arrives to its clients. A node without clients opens none, so
//! records only flow toward nodes with interested subscribers. Peers send only records they
//! ingested themselves, never relayed ones, so nothing loops.
//!
//! Each change of interest carries a version, which the peer confirms once its filters are in
//! place; a client is told it is subscribed once every live peer has confirmed its filter
//! (bounded by [`HEARD_WITHIN`]), so from then on it misses nothing of their sources.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite;
use tokio_util::sync::CancellationToken;

use super::{Peer, PeerContext};
use crate::fanout::{Delivery, Filter, Stage};
use crate::record::RecordId;

/// How often links are opened and closed to follow interest and membership.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// Wait before reopening a link that failed.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long a new or changed subscriber waits for the peers to confirm its filter (a peer of
/// an older version never does).
pub const HEARD_WITHIN: Duration = Duration::from_secs(2);

#[derive(Deserialize)]
struct Interest {
    filters: Vec<Filter>,
    /// The interest version, confirmed back once the filters are set.
    #[serde(default)]
    version: Option<u64>,
}

/// A peer's confirmation that it has set the filters of interest `confirmed`.
#[derive(Deserialize)]
struct Confirmed {
    confirmed: u64,
}

/// A peer's word that it dropped records for this link (it was behind).
#[derive(Deserialize)]
struct PeerGap {
    gap: Dropped,
}

#[derive(Deserialize)]
struct Dropped {
    dropped: u64,
}

/// The `gap` notice for this node's clients: records of the sources `peer` runs may be
/// missing, and why.
fn gap_notice(state: &PeerContext, peer: &str, reason: &str) -> String {
    let view = state.cluster.view();
    let mut sources: Vec<String> = state
        .cluster
        .catalog
        .live("source/")
        .into_iter()
        .filter_map(|e| e.key.strip_prefix("source/").map(str::to_owned))
        .filter(|id| view.owner(id) == peer)
        .collect();
    sources.sort();
    json!({
        "type": "gap",
        "node": peer,
        "sources": sources,
        "reason": reason,
        "message": "records of these sources from that node may be missing here: the link to it \
                    failed or fell behind (it reopens on its own). A subscriber that must not miss \
                    any reads the stored log from its last position (since=)",
    })
    .to_string()
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    source: Cow<'a, str>,
    #[serde(borrow)]
    stream: Cow<'a, str>,
    #[serde(borrow, default)]
    key: Option<Cow<'a, str>>,
}

/// A stored record, as a peer link sends it; a decoded one goes bare.
#[derive(Deserialize)]
struct StoredRecord<'a> {
    #[allow(dead_code)]
    after: Stage,
    #[serde(borrow)]
    record: &'a serde_json::value::RawValue,
}

/// A record from a peer link: what filters look at, its stage and its JSON.
fn relayed(text: &str) -> Option<(RecordId, Head<'_>, Stage, &str)> {
    let (head, stage, record) = match serde_json::from_str::<Head>(text) {
        Ok(head) => (head, Stage::Decoded, text),
        Err(_) => {
            let stored = serde_json::from_str::<StoredRecord>(text).ok()?;
            let record = stored.record.get();
            (
                serde_json::from_str::<Head>(record).ok()?,
                Stage::Stored,
                record,
            )
        }
    };
    Some((RecordId::from_hex(&head.id)?, head, stage, record))
}

/// `GET /cluster/v1/stream`: stream this node's records to a peer.
pub async fn serve(State(state): State<PeerContext>, upgrade: WebSocketUpgrade) -> Response {
    // A peer sends only filter updates.
    upgrade
        .read_buffer_size(8 * 1024)
        .max_message_size(1024 * 1024)
        .on_upgrade(move |socket| stream_to_peer(socket, state))
}

/// Records written to a peer link before one flush, at most.
const LINK_BATCH_MAX: usize = 256;

fn peer_message(stage: Stage, json: &str) -> Message {
    Message::text(match stage {
        Stage::Decoded => json.to_owned(),
        // The receiver must know which of its clients may see it.
        Stage::Stored => format!(r#"{{"after":"stored","record":{json}}}"#),
    })
}

async fn stream_to_peer(socket: WebSocket, state: PeerContext) {
    let (mut tx, mut rx) = socket.split();
    let Ok(mut subscription) = state.hub.subscribe_peer(Vec::new()) else {
        return;
    };
    // Records dropped for the link that the peer has been told of.
    let mut told = 0u64;
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => {
                let _ = tx.send(Message::Close(Some(CloseFrame { code: 1001, reason: "node shutting down".into() }))).await;
                return;
            }
            delivery = subscription.next() => match delivery {
                Delivery::Record { json, stage, dropped_total } => {
                    // Whatever else is queued goes out with it, with one flush: one write per
                    // batch on the link, not one per record. Records dropped for the link (it
                    // was behind) are announced first: the peer tells its clients.
                    let mut batch = Vec::new();
                    if dropped_total > told {
                        let dropped = json!({ "gap": { "dropped": dropped_total - told } });
                        batch.push(Message::text(dropped.to_string()));
                        told = dropped_total;
                    }
                    batch.push(peer_message(stage, &json));
                    while batch.len() < LINK_BATCH_MAX {
                        let Some((stage, json, _)) = subscription.try_next_staged() else {
                            break;
                        };
                        batch.push(peer_message(stage, &json));
                    }
                    let send = async {
                        for message in batch {
                            tx.feed(message).await?;
                        }
                        tx.flush().await
                    };
                    let sent = tokio::time::timeout(Duration::from_secs(5), send).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        return;
                    }
                }
                Delivery::Disconnect(reason) => {
                    let _ = tx.send(Message::Close(Some(CloseFrame { code: 4008, reason: reason.into() }))).await;
                    return;
                }
            },
            incoming = rx.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    if let Ok(interest) = serde_json::from_str::<Interest>(&text) {
                        subscription.set_filters(interest.filters);
                        if let Some(version) = interest.version {
                            let confirmed = json!({ "confirmed": version }).to_string();
                            if tx.send(Message::text(confirmed)).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

struct Link {
    peer: Peer,
    /// The interest version and filters to send.
    filters: watch::Sender<(u64, Vec<Filter>)>,
    /// The interest version the peer has confirmed.
    confirmed: Arc<AtomicU64>,
    task: JoinHandle<Result<(), String>>,
}

/// Keep one link open to every live peer while this node has clients; none otherwise. Tell
/// the hub which interest every live peer has confirmed.
pub async fn run_links(state: PeerContext, shutdown: CancellationToken) {
    let mut links: HashMap<String, Link> = HashMap::new();
    let mut failed: HashMap<String, Instant> = HashMap::new();
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
            state.hub.peers_heard(version);
            continue;
        }
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

/// A link to `peer`, open until it fails; this node's clients get a `gap` notice when an
/// open link fails or the peer dropped records for it.
async fn link(
    state: PeerContext,
    peer: Peer,
    filters: watch::Receiver<(u64, Vec<Filter>)>,
    confirmations: (Arc<AtomicU64>, Arc<tokio::sync::Notify>),
) -> Result<(), String> {
    let mut opened = false;
    let ended = run_link(&state, &peer, filters, confirmations, &mut opened).await;
    if let Err(reason) = &ended
        && opened
        && !state.shutdown.is_cancelled()
    {
        state.hub.notify_gap(&gap_notice(
            &state,
            &peer.id,
            &format!("the link failed: {reason}"),
        ));
    }
    ended
}

async fn run_link(
    state: &PeerContext,
    peer: &Peer,
    mut filters: watch::Receiver<(u64, Vec<Filter>)>,
    (confirmed, confirmations): (Arc<AtomicU64>, Arc<tokio::sync::Notify>),
    opened: &mut bool,
) -> Result<(), String> {
    use tungstenite::client::IntoClientRequest;
    let url = format!("ws://{}/cluster/v1/stream", peer.api);
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    let now_ms = crate::clock::now_us() / 1000;
    if let Some(signature) =
        state
            .cluster
            .envelope
            .keys()
            .sign_request("GET", "/cluster/v1/stream", b"", now_ms)
    {
        request.headers_mut().insert(
            super::AUTH_HEADER,
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
    *opened = true;
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
                    match relayed(text.as_str()) {
                        Some((id, head, stage, record)) => {
                            stats.records_relayed_in.fetch_add(1, Relaxed);
                            hub.publish_relayed(&id, &head.source, &head.stream, head.key.as_deref(), stage, Arc::from(record));
                        }
                        None => match serde_json::from_str::<Confirmed>(text.as_str()) {
                            Ok(c) => {
                                confirmed.fetch_max(c.confirmed, Relaxed);
                                confirmations.notify_one();
                            }
                            Err(_) => match serde_json::from_str::<PeerGap>(text.as_str()) {
                                Ok(gap) => {
                                    let reason = format!(
                                        "{} dropped {} record(s) for this node's link: it was behind",
                                        peer.id, gap.gap.dropped
                                    );
                                    hub.notify_gap(&gap_notice(state, &peer.id, &reason));
                                }
                                Err(_) => {
                                    stats.rejected_invalid.fetch_add(1, Relaxed);
                                }
                            },
                        },
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
