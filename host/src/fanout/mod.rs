//! WebSocket fan-out: every record, to every subscriber whose filter matches, without letting
//! a slow subscriber slow ingestion or the others.
//!
//! Each subscriber has a bounded queue. Publishing never waits: when a queue is full the
//! record is dropped *for that subscriber*, counted, and the subscriber is told (a `lag`
//! notice before its next record). A subscriber that stays behind for longer than
//! `lag_disconnect_ms` is disconnected with the reason.
//!
//! A subscriber chooses when it sees a record ([`Stage`]): as soon as it is decoded (the
//! default, lowest latency), or only once the store has committed it (`after=stored`): such a
//! subscriber never sees a record the store does not have.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{Notify, mpsc, watch};

use crate::record::{RecentIds, Record, RecordId};
use crate::sync::lock;

mod filter;
mod outbox;
pub use filter::{FanoutSettings, Filter, Parts, Stage};
use outbox::Outbox;
pub use outbox::{LinkPosition, Missed};

/// Counters of the fan-out, for the API and metrics.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct FanoutStats {
    /// WebSocket clients of this node.
    pub subscribers: usize,
    /// Other nodes streaming this node's records to their own subscribers.
    pub peer_links: usize,
    /// Subscribers currently dropping records.
    pub lagging: usize,
    pub delivered: u64,
    pub dropped: u64,
    /// Records not delivered again because another node (or a replay) had already
    /// delivered the same id.
    pub repeats: u64,
    pub disconnected_for_lag: u64,
    /// Gap notices given to clients: a link to a peer failed or dropped records.
    pub gap_notices: u64,
}

/// The fan-out hub of one node. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    settings: FanoutSettings,
    subscribers: RwLock<HashMap<u64, Arc<Subscriber>>>,
    next_id: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    disconnected_for_lag: AtomicU64,
    /// Ids recently offered, per stage (decoded, stored).
    seen: Mutex<[RecentIds; 2]>,
    /// Records not offered again because their id was among the recent ones.
    repeats: AtomicU64,
    /// Gap notices given to clients (a link to a peer failed or dropped records).
    gaps: AtomicU64,
    /// Bumped each time a client's interest grows (a new client, a new filter), for the
    /// relay to pass on to the other nodes.
    interest: watch::Sender<u64>,
    /// The interest version every live peer has confirmed (kept by the relay, once one is
    /// attached): records of their sources that match it flow here.
    heard: watch::Sender<u64>,
    relay_attached: std::sync::atomic::AtomicBool,
    /// Records ingested here, numbered, for peer links to resume from.
    outbox: Mutex<Outbox>,
}

struct Subscriber {
    /// A record passes when any filter matches (a client has one; a peer link, the union of
    /// its node's clients).
    filters: RwLock<Vec<Filter>>,
    /// A link to another node: gets records ingested here only, never relayed ones.
    peer: bool,
    queue: mpsc::Sender<Queued>,
    dropped: AtomicU64,
    lagging_since: Mutex<Option<Instant>>,
    kicked: Notify,
    kick_reason: Mutex<Option<String>>,
}

/// A subscriber's end: records arrive on [`Subscription::next`]. Dropping it unsubscribes.
pub struct Subscription {
    id: u64,
    hub: Hub,
    shared: Arc<Subscriber>,
    records: mpsc::Receiver<Queued>,
    /// The interest version of this client's latest filter.
    version: u64,
}

/// Why a subscription could not be made.
#[derive(Debug, thiserror::Error)]
#[error("this node already serves {0} subscribers (fanout.max_subscribers); try another node")]
pub struct TooManySubscribersError(usize);

/// A record in a subscriber's queue: its JSON, the stage it reached and, for a peer link,
/// its number in the outbox (0 for a client).
#[derive(Debug, Clone)]
pub struct Queued {
    pub stage: Stage,
    pub json: Arc<str>,
    pub seq: u64,
}

/// What a subscriber should do next.
pub enum Delivery {
    /// A record (JSON) reaching `stage`, preceded by a lag notice when records were dropped
    /// since the last one; `seq` is its outbox number (peer links only).
    Record {
        json: Arc<str>,
        stage: Stage,
        seq: u64,
        dropped_total: u64,
    },
    /// The hub disconnected this subscriber; the reason is for the close frame.
    Disconnect(String),
}

impl Hub {
    pub fn new(settings: FanoutSettings) -> Self {
        Hub {
            inner: Arc::new(HubInner {
                subscribers: RwLock::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                delivered: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                disconnected_for_lag: AtomicU64::new(0),
                seen: Mutex::new([(); 2].map(|()| {
                    RecentIds::with_span(
                        settings.dedupe_window,
                        std::time::Duration::from_millis(settings.dedupe_window_ms),
                    )
                })),
                repeats: AtomicU64::new(0),
                gaps: AtomicU64::new(0),
                interest: watch::Sender::new(0),
                heard: watch::Sender::new(0),
                relay_attached: Default::default(),
                outbox: Mutex::new(Outbox::new(
                    settings.relay_buffer_bytes,
                    Duration::from_millis(settings.relay_buffer_ms),
                )),
                settings,
            }),
        }
    }

    /// Whether `id` is offered for the first time at `stage` (lately).
    fn first_time(&self, stage: Stage, id: &RecordId) -> bool {
        let fresh = lock(&self.inner.seen)[stage as usize].insert(id);
        if !fresh {
            self.inner.repeats.fetch_add(1, Relaxed);
        }
        fresh
    }

    /// Register a subscriber.
    pub fn subscribe(&self, filter: Filter) -> Result<Subscription, TooManySubscribersError> {
        self.register(vec![filter], false)
    }

    /// Register another node's link: it receives the records ingested here that match any
    /// of `filters`.
    pub fn subscribe_peer(
        &self,
        filters: Vec<Filter>,
    ) -> Result<Subscription, TooManySubscribersError> {
        self.register(filters, true)
    }

    fn register(
        &self,
        filters: Vec<Filter>,
        peer: bool,
    ) -> Result<Subscription, TooManySubscribersError> {
        let (queue, records) = mpsc::channel(self.inner.settings.queue_len.max(1));
        let shared = Arc::new(Subscriber {
            filters: RwLock::new(filters),
            peer,
            queue,
            dropped: AtomicU64::new(0),
            lagging_since: Mutex::new(None),
            kicked: Notify::new(),
            kick_reason: Mutex::new(None),
        });
        let id = self.inner.next_id.fetch_add(1, Relaxed);
        let mut subscribers = self
            .inner
            .subscribers
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if subscribers.len() >= self.inner.settings.max_subscribers {
            return Err(TooManySubscribersError(subscribers.len()));
        }
        subscribers.insert(id, shared.clone());
        drop(subscribers);
        Ok(Subscription {
            id,
            hub: self.clone(),
            shared,
            records,
            version: if peer { 0 } else { self.grow_interest() },
        })
    }

    fn grow_interest(&self) -> u64 {
        let mut version = 0;
        self.inner.interest.send_modify(|v| {
            *v += 1;
            version = *v;
        });
        version
    }

    /// Attach the relay: from now on a client waits for the peers to hear its filter
    /// ([`Subscription::until_peers_heard`]). The relay follows client interest through the
    /// receiver, a version bumped at each change.
    pub fn attach_relay(&self) -> watch::Receiver<u64> {
        self.inner.relay_attached.store(true, Relaxed);
        self.inner.interest.subscribe()
    }

    /// The relay's word that every live peer has heard the interest up to `version`.
    pub fn peers_heard(&self, version: u64) {
        self.inner.heard.send_if_modified(|heard| {
            let grew = version > *heard;
            if grew {
                *heard = version;
            }
            grew
        });
    }

    /// Whether anyone is listening (lets publishers skip work).
    pub fn has_subscribers(&self) -> bool {
        // Asked once per batch: read the count, copy nothing.
        !self
            .inner
            .subscribers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    fn snapshot(&self) -> Vec<Arc<Subscriber>> {
        let subscribers = self
            .inner
            .subscribers
            .read()
            .unwrap_or_else(|p| p.into_inner());
        subscribers.values().cloned().collect()
    }

    /// The filters of this node's own clients (not peer links), without repeats: what
    /// other nodes should send here.
    pub fn client_filters(&self) -> Vec<Filter> {
        let mut out: Vec<Filter> = Vec::new();
        for sub in self.snapshot().iter().filter(|s| !s.peer) {
            for f in sub.filters.read().unwrap_or_else(|p| p.into_inner()).iter() {
                if !out.contains(f) {
                    out.push(f.clone());
                }
            }
        }
        out
    }

    /// Tell this node's clients (not peer links) that records may be missing: `notice` is a
    /// `{"type":"gap",…}` message, delivered in order with their records. A client whose
    /// queue is full misses it as it would a record, and gets a lag notice instead. Never
    /// waits.
    pub fn notify_gap(&self, notice: &str) {
        let notice: Arc<str> = notice.into();
        let clients: Vec<Arc<Subscriber>> =
            self.snapshot().into_iter().filter(|s| !s.peer).collect();
        self.inner.gaps.fetch_add(1, Relaxed);
        self.offer(&clients, Stage::Decoded, |_| true, 0, || notice.clone());
    }

    /// Offer records ingested here, reaching `stage`, to every matching subscriber. Never
    /// waits. While peer links are attached (and for `relay_buffer_ms` after), each record
    /// is numbered and kept in the outbox for a link to resume from.
    pub fn publish(&self, records: &[Record], stage: Stage) {
        let subscribers = self.snapshot();
        let now = Instant::now();
        let (peers, clients): (Vec<_>, Vec<_>) = subscribers.into_iter().partition(|s| s.peer);
        let mut outbox = lock(&self.inner.outbox);
        if !peers.is_empty() {
            outbox.linked(now);
        }
        // Records are numbered while links are attached, and kept a while after, so that a
        // link that dropped can resume.
        let mut outbox = (!peers.is_empty() || outbox.filling(now)).then_some(outbox);
        if outbox.is_none() && clients.is_empty() {
            return;
        }
        let fresh: Vec<&Record> = {
            let mut seen = lock(&self.inner.seen);
            let window = &mut seen[stage as usize];
            records.iter().filter(|r| window.insert(&r.id)).collect()
        };
        let repeats = records.len() - fresh.len();
        if repeats > 0 {
            self.inner.repeats.fetch_add(repeats as u64, Relaxed);
        }
        let mut jsons: Vec<Option<Arc<str>>> = vec![None; fresh.len()];
        if let Some(outbox) = outbox.as_mut() {
            // Numbered and offered to the links under one lock: a link sees numbers in order.
            // Kept: what a link wanted (sent or dropped for it), or everything while no link
            // is attached (one is reconnecting).
            for (record, slot) in fresh.iter().zip(&mut jsons) {
                let seq = outbox.number();
                let json = |slot: &mut Option<Arc<str>>| {
                    slot.get_or_insert_with(|| record.to_json().into()).clone()
                };
                let wanted = self.offer(
                    &peers,
                    stage,
                    |f| f.matches(record, stage),
                    seq,
                    || json(slot),
                );
                if wanted || peers.is_empty() {
                    outbox.keep(seq, stage, json(slot), now);
                }
            }
        }
        drop(outbox);
        if clients.is_empty() {
            return;
        }
        for (record, json) in fresh.into_iter().zip(&mut jsons) {
            self.offer(
                &clients,
                stage,
                |f| f.matches(record, stage),
                0,
                || json.get_or_insert_with(|| record.to_json().into()).clone(),
            );
        }
    }

    /// How long the outbox keeps records for a link to resume from.
    pub fn relay_buffer(&self) -> Duration {
        Duration::from_millis(self.inner.settings.relay_buffer_ms)
    }

    /// This process's outbox epoch: a link position from another epoch cannot resume.
    pub fn outbox_epoch(&self) -> u64 {
        lock(&self.inner.outbox).epoch()
    }

    /// What a peer link with `filters` missed after outbox number `after`, and whether the
    /// outbox still held all of it.
    pub fn missed(&self, after: u64, filters: &[Filter]) -> Missed {
        lock(&self.inner.outbox).missed(after, filters)
    }

    /// The number of the last record put in the outbox.
    pub fn outbox_last(&self) -> u64 {
        lock(&self.inner.outbox).last()
    }

    /// Offer a record another node ingested (as JSON, with the fields filters look at) to
    /// this node's clients. Never waits.
    pub fn publish_relayed(&self, id: &RecordId, parts: &Parts<'_>, stage: Stage, json: Arc<str>) {
        if !self.first_time(stage, id) {
            return;
        }
        let clients: Vec<Arc<Subscriber>> =
            self.snapshot().into_iter().filter(|s| !s.peer).collect();
        self.offer(
            &clients,
            stage,
            |f| f.matches_parts(parts, stage),
            0,
            || json.clone(),
        );
    }

    fn offer(
        &self,
        subscribers: &[Arc<Subscriber>],
        stage: Stage,
        wanted: impl Fn(&Filter) -> bool,
        seq: u64,
        mut json: impl FnMut() -> Arc<str>,
    ) -> bool {
        let lag_limit = Duration::from_millis(self.inner.settings.lag_disconnect_ms);
        let now = Instant::now();
        let mut any = false;
        for sub in subscribers {
            let wanted = sub
                .filters
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(&wanted);
            if !wanted {
                continue;
            }
            any = true;
            let queued = Queued {
                stage,
                json: json(),
                seq,
            };
            match sub.queue.try_send(queued) {
                Ok(()) => {
                    self.inner.delivered.fetch_add(1, Relaxed);
                    let mut since = sub.lagging_since.lock().unwrap_or_else(|p| p.into_inner());
                    *since = None;
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    sub.dropped.fetch_add(1, Relaxed);
                    self.inner.dropped.fetch_add(1, Relaxed);
                    let mut since = sub.lagging_since.lock().unwrap_or_else(|p| p.into_inner());
                    let started = *since.get_or_insert(now);
                    if now.duration_since(started) >= lag_limit {
                        self.kick(
                            sub,
                            format!(
                                "too slow: {} records dropped while behind for more than {} ms",
                                sub.dropped.load(Relaxed),
                                lag_limit.as_millis()
                            ),
                        );
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        any
    }

    fn kick(&self, sub: &Subscriber, reason: String) {
        let mut slot = sub.kick_reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
            self.inner.disconnected_for_lag.fetch_add(1, Relaxed);
            sub.kicked.notify_one();
        }
    }

    /// Counters.
    pub fn stats(&self) -> FanoutStats {
        let (peers, subscribers): (Vec<_>, Vec<_>) =
            self.snapshot().into_iter().partition(|s| s.peer);
        FanoutStats {
            subscribers: subscribers.len(),
            peer_links: peers.len(),
            lagging: subscribers
                .iter()
                .filter(|s| s.lagging_since.lock().is_ok_and(|l| l.is_some()))
                .count(),
            delivered: self.inner.delivered.load(Relaxed),
            dropped: self.inner.dropped.load(Relaxed),
            repeats: self.inner.repeats.load(Relaxed),
            disconnected_for_lag: self.inner.disconnected_for_lag.load(Relaxed),
            gap_notices: self.inner.gaps.load(Relaxed),
        }
    }
}

impl Subscription {
    /// The next record, or the order to disconnect.
    pub async fn next(&mut self) -> Delivery {
        if let Some(reason) = self.kick_reason() {
            return Delivery::Disconnect(reason);
        }
        tokio::select! {
            biased;
            () = self.shared.kicked.notified() => {
                Delivery::Disconnect(self.kick_reason().unwrap_or_else(|| "disconnected".into()))
            }
            next = self.records.recv() => match next {
                Some(Queued { stage, json, seq }) => Delivery::Record {
                    json,
                    stage,
                    seq,
                    dropped_total: self.shared.dropped.load(Relaxed),
                },
                None => Delivery::Disconnect("the node is shutting down".into()),
            },
        }
    }

    /// A record already queued, without waiting: (JSON, records dropped so far).
    pub fn try_next(&mut self) -> Option<(Arc<str>, u64)> {
        let queued = self.try_next_queued()?;
        Some((queued.json, self.shared.dropped.load(Relaxed)))
    }

    /// A record already queued, with its stage and outbox number (for peer links).
    pub fn try_next_queued(&mut self) -> Option<Queued> {
        if self.kick_reason().is_some() {
            return None;
        }
        self.records.try_recv().ok()
    }

    /// Records dropped for this subscriber so far.
    pub fn dropped_total(&self) -> u64 {
        self.shared.dropped.load(Relaxed)
    }

    /// Resolves when the hub disconnects this subscriber (for use while a send is pending).
    pub async fn kicked(&self) -> String {
        loop {
            if let Some(reason) = self.kick_reason() {
                return reason;
            }
            self.shared.kicked.notified().await;
        }
    }

    fn kick_reason(&self) -> Option<String> {
        self.shared
            .kick_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replace a client's filter.
    pub fn set_filter(&mut self, filter: Filter) {
        self.set_filters(vec![filter]);
        self.version = self.hub.grow_interest();
    }

    /// Wait (at most `within`) until every live peer has heard this client's latest filter,
    /// so that the records of the sources they run flow here from now on; at once without a
    /// relay (a node alone). Whether they all did.
    pub async fn until_peers_heard(&self, within: Duration) -> bool {
        if !self.hub.inner.relay_attached.load(Relaxed) {
            return true;
        }
        let mut heard = self.hub.inner.heard.subscribe();
        let version = self.version;
        matches!(
            tokio::time::timeout(within, heard.wait_for(|v| *v >= version)).await,
            Ok(Ok(_))
        )
    }

    /// Replace a peer link's filters.
    pub fn set_filters(&self, filters: Vec<Filter>) {
        *self
            .shared
            .filters
            .write()
            .unwrap_or_else(|p| p.into_inner()) = filters;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut subscribers = self
            .hub
            .inner
            .subscribers
            .write()
            .unwrap_or_else(|p| p.into_inner());
        subscribers.remove(&self.id);
    }
}

#[cfg(test)]
mod tests;
