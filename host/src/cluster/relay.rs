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
//!
//! A link resumes by position: the peer numbers every record it sends (its outbox, see
//! [`crate::fanout::LinkPosition`]); after a drop the link reopens with the epoch and number
//! it reached, and the peer sends what followed before going on live. When the peer sends
//! nothing a link missed while it was behind, it sends that from its outbox too. Only what the
//! outbox no longer holds (the peer restarted, died, or the link stayed down longer than
//! `fanout.relay_buffer_ms`) becomes a `gap` notice to this node's clients, naming the sources
//! and the position the link had reached.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite;
use tokio_util::sync::CancellationToken;

use super::{Peer, PeerContext};
use crate::fanout::{Delivery, Filter, LinkPosition, Stage};
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

/// A peer's word that it dropped records for this link (it was behind) and its outbox no
/// longer held them.
#[derive(Deserialize)]
struct PeerGap {
    gap: Dropped,
}

#[derive(Deserialize)]
struct Dropped {
    dropped: u64,
}

/// A peer's first word on a numbered link: its outbox epoch, the number after which it sends
/// records, and whether that is where the link asked to resume.
#[derive(Deserialize)]
struct LinkOpened {
    link: Opened,
}

#[derive(Deserialize)]
struct Opened {
    epoch: u64,
    from: u64,
    complete: bool,
}

/// What a link asks for when it opens (`/cluster/v1/stream?resume=1&epoch=…&after=…`):
/// numbered records, from a position when it has one.
#[derive(Debug, Default, Deserialize)]
pub struct LinkQuery {
    #[serde(default)]
    resume: Option<u8>,
    #[serde(default)]
    epoch: Option<u64>,
    #[serde(default)]
    after: Option<u64>,
}

/// The `gap` notice for this node's clients: records of `sources`, which `peer` collects,
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

/// A record on a numbered link: its number in the peer's outbox, its stage and the record.
#[derive(Deserialize)]
struct Numbered<'a> {
    seq: u64,
    after: Stage,
    #[serde(borrow)]
    record: &'a serde_json::value::RawValue,
}

/// A record from a numbered link: its number, id, the fields filters look at, its stage and
/// its JSON.
fn numbered(text: &str) -> Option<(u64, RecordId, Head<'_>, Stage, &str)> {
    let n = serde_json::from_str::<Numbered>(text).ok()?;
    let record = n.record.get();
    let head = serde_json::from_str::<Head>(record).ok()?;
    Some((n.seq, RecordId::from_hex(&head.id)?, head, n.after, record))
}

/// A record from a peer link (unnumbered, from a peer that numbers nothing): what filters
/// look at, its stage and its JSON.
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
pub async fn serve(
    State(state): State<PeerContext>,
    Query(query): Query<LinkQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    // A peer sends only filter updates.
    upgrade
        .read_buffer_size(8 * 1024)
        .max_message_size(1024 * 1024)
        .on_upgrade(move |socket| stream_to_peer(socket, state, query))
}

/// Records written to a peer link before one flush, at most.
const LINK_BATCH_MAX: usize = 256;

/// A record for a link: numbered (`seq` > 0, for a link that resumes), or as an older peer
/// reads it.
fn peer_message(stage: Stage, json: &str, seq: Option<u64>) -> Message {
    Message::text(match (seq, stage) {
        (Some(seq), Stage::Decoded) => {
            format!(r#"{{"seq":{seq},"after":"decoded","record":{json}}}"#)
        }
        (Some(seq), Stage::Stored) => {
            format!(r#"{{"seq":{seq},"after":"stored","record":{json}}}"#)
        }
        (None, Stage::Decoded) => json.to_owned(),
        // The receiver must know which of its clients may see it.
        (None, Stage::Stored) => format!(r#"{{"after":"stored","record":{json}}}"#),
    })
}

/// Where a link stands on the sending side: the last outbox number sent, and the records
/// dropped for it so far that were made up for (or announced).
struct Sending {
    numbered: bool,
    sent: u64,
    told: u64,
}

impl Sending {
    /// Queue a record unless it went out already (from the outbox).
    fn push(&mut self, batch: &mut Vec<Message>, stage: Stage, json: &str, seq: u64) {
        if !self.numbered {
            batch.push(peer_message(stage, json, None));
        } else if seq > self.sent {
            self.sent = seq;
            batch.push(peer_message(stage, json, Some(seq)));
        }
    }

    /// Queue what the outbox holds after the last record sent that matches `filters`, if it
    /// holds all of it; whether it did.
    fn resend(
        &mut self,
        state: &PeerContext,
        batch: &mut Vec<Message>,
        filters: &[Filter],
    ) -> bool {
        let missed = state.hub.missed(self.sent, filters);
        if !missed.complete {
            return false;
        }
        let stats = &state.cluster.stats;
        stats
            .records_resent
            .fetch_add(missed.records.len() as u64, Relaxed);
        for (seq, stage, json) in &missed.records {
            self.push(batch, *stage, json, *seq);
        }
        // Nothing else up to the last one made matches.
        self.sent = self.sent.max(missed.last);
        true
    }
}

async fn stream_to_peer(socket: WebSocket, state: PeerContext, query: LinkQuery) {
    let (mut tx, mut rx) = socket.split();
    let Ok(mut subscription) = state.hub.subscribe_peer(Vec::new()) else {
        return;
    };
    let mut sending = Sending {
        numbered: query.resume.is_some(),
        sent: 0,
        told: 0,
    };
    let mut opened = false;
    let mut filters: Vec<Filter> = Vec::new();
    loop {
        let batch: Vec<Message> = tokio::select! {
            () = state.shutdown.cancelled() => {
                let _ = tx.send(Message::Close(Some(CloseFrame { code: 1001, reason: "node shutting down".into() }))).await;
                return;
            }
            delivery = subscription.next() => match delivery {
                Delivery::Record { json, stage, seq, dropped_total } => {
                    // Whatever else is queued goes out with it, with one flush: one write per
                    // batch on the link, not one per record.
                    let mut queued = vec![(stage, json, seq)];
                    while let Some(q) = subscription.try_next_queued() {
                        queued.push((q.stage, q.json, q.seq));
                        if queued.len() >= LINK_BATCH_MAX {
                            break;
                        }
                    }
                    let mut batch = Vec::new();
                    if dropped_total > sending.told {
                        // Records were dropped for the link (it was behind): a numbered link
                        // gets them from the outbox, in order (everything still queued is
                        // taken first, so nothing made meanwhile is missed); otherwise, or
                        // when the outbox no longer has them, the peer tells its clients.
                        let told = subscription.dropped_total();
                        while let Some(q) = subscription.try_next_queued() {
                            queued.push((q.stage, q.json, q.seq));
                        }
                        if !(sending.numbered && sending.resend(&state, &mut batch, &filters)) {
                            let dropped = json!({ "gap": { "dropped": told - sending.told } });
                            batch.push(Message::text(dropped.to_string()));
                        }
                        sending.told = told;
                    }
                    for (stage, json, seq) in queued {
                        sending.push(&mut batch, stage, &json, seq);
                    }
                    batch
                }
                Delivery::Disconnect(reason) => {
                    let _ = tx.send(Message::Close(Some(CloseFrame { code: 4008, reason: reason.into() }))).await;
                    return;
                }
            },
            incoming = rx.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let Ok(interest) = serde_json::from_str::<Interest>(&text) else {
                        continue;
                    };
                    filters = interest.filters;
                    subscription.set_filters(filters.clone());
                    let mut batch = Vec::new();
                    if sending.numbered && !opened {
                        // The filters are in place: what is made from now on comes live.
                        // A resuming link first gets what followed its position, from the
                        // outbox, if it still holds all of it.
                        opened = true;
                        let epoch = state.hub.outbox_epoch();
                        let mut resent = Vec::new();
                        let resumed = match query.epoch.zip(query.after) {
                            Some((e, after)) if e == epoch => {
                                sending.sent = after;
                                sending.resend(&state, &mut resent, &filters).then_some(after)
                            }
                            _ => None,
                        };
                        // A new link, or one that cannot resume: from the last record made.
                        let from = resumed.unwrap_or_else(|| {
                            sending.sent = state.hub.outbox_last();
                            sending.sent
                        });
                        let complete = resumed.is_some() || query.after.is_none();
                        let link = json!({ "link": { "epoch": epoch, "from": from, "complete": complete } });
                        batch.push(Message::text(link.to_string()));
                        batch.extend(resent);
                    }
                    if let Some(version) = interest.version {
                        batch.push(Message::text(json!({ "confirmed": version }).to_string()));
                    }
                    batch
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
        };
        if batch.is_empty() {
            continue;
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
    view: &super::View,
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
                        hub.publish_relayed(&id, &head.source, &head.stream, head.key.as_deref(), stage, Arc::from(record));
                    } else if let Some((id, head, stage, record)) = relayed(text) {
                        // A peer of an older version: its link is up, but cannot resume.
                        reached.opened(LinkPosition { epoch: 0, seq: 0 });
                        stats.records_relayed_in.fetch_add(1, Relaxed);
                        hub.publish_relayed(&id, &head.source, &head.stream, head.key.as_deref(), stage, Arc::from(record));
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
