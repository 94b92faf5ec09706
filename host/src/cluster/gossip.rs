//! The task that owns foca, the UDP socket and the timers: packets in and out through the
//! envelope, membership changes published as a [`View`], catalog entries spread as foca's
//! custom broadcasts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use foca::{Foca, PostcardCodec, Timer};
use futures_util::StreamExt;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use super::{
    Catalog, ClusterEvent, Command, Entry, Envelope, GossipStats, Member, MemberState, Peer,
    Rejected, View, resolve,
};

/// The catalog as foca's custom-broadcast handler: an entry is spread on while it is news.
pub(super) struct CatalogBroadcasts {
    pub(super) catalog: Arc<Catalog>,
    pub(super) stats: Arc<GossipStats>,
}

/// Identifies a broadcast entry: a newer version of the same key replaces an older one in
/// foca's backlog.
#[derive(Debug)]
pub struct BroadcastKey {
    key: String,
    clock: u64,
    node: String,
}

impl foca::Invalidates for BroadcastKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.key == other.key && (self.clock, &self.node) >= (other.clock, &other.node)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("a catalog broadcast could not be decoded: {0}")]
pub struct BadBroadcast(String);

impl foca::BroadcastHandler<Peer> for CatalogBroadcasts {
    type Key = BroadcastKey;
    type Error = BadBroadcast;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&Peer>,
    ) -> Result<Option<BroadcastKey>, BadBroadcast> {
        let entry: Entry = serde_json::from_slice(data).map_err(|e| BadBroadcast(e.to_string()))?;
        let key = BroadcastKey {
            key: entry.key.clone(),
            clock: entry.clock,
            node: entry.node.clone(),
        };
        if sender.is_none() {
            // Our own write, applied already: spread it.
            return Ok(Some(key));
        }
        self.stats.broadcasts_received.fetch_add(1, Relaxed);
        Ok(self.catalog.merge(entry).then_some(key))
    }
}

pub(super) struct Gossip {
    pub(super) foca: Foca<Peer, PostcardCodec, rand::rngs::StdRng, CatalogBroadcasts>,
    pub(super) socket: Arc<UdpSocket>,
    pub(super) envelope: Envelope,
    pub(super) stats: Arc<GossipStats>,
    pub(super) seeds: Vec<SocketAddr>,
    pub(super) seed_names: Vec<String>,
    pub(super) timers: DelayQueue<Timer<Peer>>,
    pub(super) view: watch::Sender<View>,
    pub(super) events: mpsc::UnboundedSender<ClusterEvent>,
    pub(super) runtime: foca::AccumulatingRuntime<Peer>,
    pub(super) announce_every: Duration,
    /// foca's config as last set.
    pub(super) config: foca::Config,
    /// `cluster.suspect_to_down_ms`: the suspicion timeout of a cluster of up to 10 members.
    pub(super) suspect_base: Duration,
    /// The cluster size the suspicion timeout was last scaled for.
    pub(super) scaled_for: usize,
    /// Suspects whose API port is being tried (see `confirm`), and where the answers come.
    pub(super) confirming: std::collections::HashSet<Peer>,
    /// Since when each member has been suspect (at that incarnation), to find suspicions no
    /// timer will end (see [`Gossip::clear_stale_suspicions`]).
    pub(super) suspect_since: std::collections::HashMap<(Peer, foca::Incarnation), Instant>,
    /// When a peer's packet last arrived (authenticated and taken by foca): this node's own
    /// hearing, for local health (see [`Gossip::hold_back`]).
    pub(super) last_heard: Instant,
    pub(super) gone: (mpsc::Sender<Gone>, mpsc::Receiver<Gone>),
}

/// The suspicion timeout for a cluster of `members` (this node included): as SWIM's Lifeguard
/// and memberlist scale it, `base × max(1, log10(members))`. A suspect has longer to refute
/// in a larger cluster, where the news of its suspicion takes more rounds to reach it.
pub fn suspicion_timeout(base: Duration, members: usize) -> Duration {
    base.mul_f64((members.max(1) as f64).log10().max(1.0))
}

/// A suspect found gone, at the incarnation it was suspected in.
pub(super) type Gone = (Peer, foca::Incarnation);

/// The first re-announce to the seeds of a node alone; doubled up to `cluster.announce_ms`.
const FIRST_ANNOUNCE_RETRY: Duration = Duration::from_millis(100);

/// How many suspicion timeouts more a suspicion may last while this node holds most of its
/// peers suspect: a member is then declared down after at most `1 + LOCAL_HEALTH_HOLDS`
/// timeouts, however bad this node's own network (Lifeguard's largest suspicion timeout is
/// six times its smallest).
pub const LOCAL_HEALTH_HOLDS: u32 = 5;

/// How long the API port of a suspect is tried.
const CONFIRM_TIMEOUT: Duration = Duration::from_millis(500);

impl Gossip {
    pub(super) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) {
        let mut buf = vec![0u8; 65_536];
        // While alone, announce to the seeds at once, then again after 100 ms, doubling up to
        // `cluster.announce_ms`: nodes started together find each other as soon as the first
        // seed listens, not a whole period later.
        let first_retry = FIRST_ANNOUNCE_RETRY.min(self.announce_every);
        let mut retry = first_retry;
        let announce = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(announce);
        let socket = self.socket.clone();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    self.leave().await;
                    break;
                }
                received = socket.recv_from(&mut buf) => {
                    let Ok((len, _from)) = received else { continue };
                    self.stats.packets_in.fetch_add(1, Relaxed);
                    match self.envelope.open(&buf[..len], crate::clock::now_us() / 1000) {
                        Ok(body) => {
                            let backlog = self.foca.custom_broadcast_backlog();
                            if let Err(e) = self.foca.handle_data(&body, &mut self.runtime) {
                                self.stats.rejected_invalid.fetch_add(1, Relaxed);
                                tracing::debug!("gossip packet refused: {e}");
                            } else {
                                self.last_heard = Instant::now();
                                if self.foca.custom_broadcast_backlog() > backlog {
                                    // News: pass it on now rather than at the next gossip
                                    // round.
                                    self.spread_now();
                                }
                            }
                        }
                        Err(why) => {
                            let counter = match why {
                                Rejected::Garbage => &self.stats.rejected_garbage,
                                Rejected::Foreign => &self.stats.rejected_foreign,
                                Rejected::Auth => &self.stats.rejected_auth,
                                Rejected::Stale => &self.stats.rejected_stale,
                                Rejected::Replayed => &self.stats.rejected_replay,
                            };
                            counter.fetch_add(1, Relaxed);
                        }
                    }
                }
                Some(expired) = self.timers.next(), if !self.timers.is_empty() => {
                    let timer = expired.into_inner();
                    match self.hold_back(&timer) {
                        Some(again) => {
                            self.timers.insert(timer, again);
                        }
                        None => {
                            if let Err(e) = self.foca.handle_timer(timer, &mut self.runtime) {
                                tracing::debug!("gossip timer: {e}");
                            }
                        }
                    }
                }
                Some((peer, incarnation)) = self.gone.1.recv() => {
                    self.declare_down(peer, incarnation);
                }
                command = commands.recv() => match command {
                    Some(Command::Broadcast(bytes)) => {
                        match self.foca.add_broadcast(&bytes) {
                            Ok(true) => self.spread_now(),
                            Ok(false) => {}
                            Err(e) => tracing::warn!("catalog broadcast not queued: {e}"),
                        }
                    }
                    Some(Command::Leave(done)) => {
                        self.leave().await;
                        let _ = done.send(());
                        break;
                    }
                    None => break,
                },
                () = &mut announce => {
                    if self.foca.num_members() == 0 {
                        self.announce().await;
                        announce.as_mut().reset(tokio::time::Instant::now() + retry);
                        retry = (retry * 2).min(self.announce_every);
                    } else {
                        retry = first_retry;
                        announce.as_mut().reset(tokio::time::Instant::now() + self.announce_every);
                    }
                }
            }
            self.drain().await;
        }
    }

    async fn announce(&mut self) {
        if self.seeds.len() < self.seed_names.len() {
            // Some seeds did not resolve at start (a host still starting): try again.
            let me = self.foca.identity().gossip;
            for name in &self.seed_names {
                if let Ok(addr) = resolve("cluster.seeds entry", name).await
                    && addr != me
                    && !self.seeds.contains(&addr)
                {
                    self.seeds.push(addr);
                }
            }
        }
        for seed in self.seeds.clone() {
            if let Err(e) = self.foca.announce(Peer::seed(seed), &mut self.runtime) {
                tracing::debug!("announce to {seed}: {e}");
            }
        }
    }

    /// A suspect whose host refuses connections on its API port has no process left there
    /// (`kill -9`, a crash): it is declared down now instead of after the suspicion timeout,
    /// and the news spreads as any other update. A host that does not answer at all (a cut
    /// network, a machine gone) still gets the whole timeout, and so does a member that is
    /// only slow: a loaded process still accepts connections.
    fn confirm(&mut self, peer: &Peer, incarnation: foca::Incarnation) {
        if peer.api.ip().is_unspecified() || !self.confirming.insert(peer.clone()) {
            return;
        }
        let gone = self.gone.0.clone();
        let peer = peer.clone();
        tokio::spawn(async move {
            let tried =
                tokio::time::timeout(CONFIRM_TIMEOUT, tokio::net::TcpStream::connect(peer.api))
                    .await;
            if let Ok(Err(e)) = tried
                && e.kind() == std::io::ErrorKind::ConnectionRefused
            {
                let _ = gone.send((peer, incarnation)).await;
            }
        });
    }

    /// The members this node holds suspect, at the incarnation suspected.
    fn suspects(&self) -> Vec<(Peer, foca::Incarnation)> {
        self.foca
            .iter_membership_state()
            .filter(|m| m.state() == foca::State::Suspect)
            .map(|m| (m.id().clone(), m.incarnation()))
            .collect()
    }

    /// Local health, after SWIM's Lifeguard: a node that holds more than half of its peers
    /// suspect at once is more likely cut off itself (its link flapping, its host stalled) than
    /// to see that many peers fail together. Declaring them down would spread a false
    /// accusation once its network returns, and make every healthy peer rejoin under a new
    /// generation. So while that holds, a suspicion timeout is held back by another timeout,
    /// at most [`LOCAL_HEALTH_HOLDS`] times: a real failure of most of the cluster is still
    /// declared, only later. Returns when to look again, or `None` to let the timer act.
    fn hold_back(&mut self, timer: &Timer<Peer>) -> Option<Duration> {
        let Timer::ChangeSuspectToDown {
            member_id,
            incarnation,
            ..
        } = timer
        else {
            return None;
        };
        let others = self.foca.num_members();
        let suspects = self.suspects().len();
        // Deaf: no peer's packet for two probe periods although several peers probe and gossip
        // to this node; it is the one cut off. Needed besides the count of suspects: probing
        // the peers one at a time takes about a suspicion timeout with a few of them (4 × 300
        // ms against 1.2 s in the tests), so the first suspect's timer could fire before most
        // of the others are suspect, and its false "down" be spread when the link returns.
        let deaf = self.last_heard.elapsed() > self.config.probe_period * 2;
        if others < 2 || (suspects * 2 <= others && !deaf) {
            return None;
        }
        // foca may set several timers for one suspicion (each failed probe of a suspect):
        // the bound is on the suspicion's age, not on the timers.
        let timeout = self.config.suspect_to_down_after;
        let since = *self
            .suspect_since
            .entry((member_id.clone(), *incarnation))
            .or_insert_with(Instant::now);
        let left = (timeout * (1 + LOCAL_HEALTH_HOLDS)).checked_sub(since.elapsed())?;
        self.stats.suspicions_held.fetch_add(1, Relaxed);
        tracing::info!(
            "{suspects} of {others} peers suspect at once, nothing heard for {:?}: holding \
             back declaring {} down (suspect for {:?} of at most {:?})",
            self.last_heard.elapsed(),
            member_id.id,
            since.elapsed(),
            timeout * (1 + LOCAL_HEALTH_HOLDS)
        );
        Some(left.min(timeout))
    }

    /// A suspicion outlives its timer when this node changes identity (it was declared down
    /// while cut off, and rejoins): foca then drops every timer it had set, and a suspicion
    /// raised while the network was away can no longer end, since the news of it was spent
    /// on the cut link and the suspect never hears it to refute it. Such a member would stay
    /// suspect for good. A suspicion older than any timer could be (`1 + LOCAL_HEALTH_HOLDS`
    /// timeouts, and one more) is taken back here, on this node only: the member counts as
    /// alive at the next incarnation, and the probe cycle suspects it again, with a live
    /// timer, if it really does not answer. Returns the suspicions that stand.
    fn clear_stale_suspicions(
        &mut self,
        suspects: Vec<(Peer, foca::Incarnation)>,
    ) -> Vec<(Peer, foca::Incarnation)> {
        let now = Instant::now();
        self.suspect_since.retain(|key, _| suspects.contains(key));
        let stale_after = self
            .config
            .suspect_to_down_after
            .saturating_mul(LOCAL_HEALTH_HOLDS + 2);
        let (stale, standing): (Vec<_>, Vec<_>) = suspects.into_iter().partition(|key| {
            let since = *self.suspect_since.entry(key.clone()).or_insert(now);
            now.duration_since(since) > stale_after
        });
        for (peer, incarnation) in stale {
            tracing::info!(
                "{} has been suspect for over {stale_after:?} with no timer left to end it: \
                 taken back here (it is probed again)",
                peer.id
            );
            self.take_back(peer, incarnation);
        }
        standing
    }

    /// This node rejoined under a new generation (it was declared down while cut off): the
    /// suspicions its previous identity raised were judged from a cut link, their timers are
    /// gone, and the peers never heard of them. They are taken back at once.
    fn take_back_all_suspicions(&mut self) {
        let suspects = self.suspects();
        if !suspects.is_empty() {
            tracing::info!(
                "rejoined: taking back {} suspicion(s) raised before, while cut off",
                suspects.len()
            );
        }
        for (peer, incarnation) in suspects {
            self.take_back(peer, incarnation);
        }
    }

    /// Count `peer` alive again, on this node only, at the next incarnation: the probe cycle
    /// suspects it anew, with a live timer, if it does not answer.
    fn take_back(&mut self, peer: Peer, incarnation: foca::Incarnation) {
        self.suspect_since.remove(&(peer.clone(), incarnation));
        self.stats.stale_suspicions_cleared.fetch_add(1, Relaxed);
        let alive = foca::Member::new(peer, incarnation.wrapping_add(1), foca::State::Alive);
        if let Err(e) = self
            .foca
            .apply_many(std::iter::once(alive), false, &mut self.runtime)
        {
            tracing::debug!("taking back a suspicion: {e}");
        }
    }

    fn declare_down(&mut self, peer: Peer, incarnation: foca::Incarnation) {
        let still_suspect = self.foca.iter_membership_state().any(|m| {
            *m.id() == peer && m.incarnation() == incarnation && m.state() == foca::State::Suspect
        });
        if !still_suspect {
            return;
        }
        self.stats.confirmed_down.fetch_add(1, Relaxed);
        tracing::info!(
            "{} refuses connections on {}: down without waiting out the suspicion",
            peer.id,
            peer.api
        );
        let down = foca::Member::new(peer, incarnation, foca::State::Down);
        if let Err(e) = self
            .foca
            .apply_many(std::iter::once(down), true, &mut self.runtime)
        {
            tracing::debug!("declaring a member down: {e}");
        }
    }

    /// Scale the suspicion timeout to the cluster's size when it changed.
    fn scale_suspicion(&mut self, members: usize) {
        if members == self.scaled_for {
            return;
        }
        self.scaled_for = members;
        self.config.suspect_to_down_after = suspicion_timeout(self.suspect_base, members);
        if let Err(e) = self.foca.set_config(self.config.clone()) {
            tracing::warn!("cannot scale the suspicion timeout: {e}");
        }
    }

    fn spread_now(&mut self) {
        if let Err(e) = self.foca.broadcast(&mut self.runtime) {
            tracing::debug!("broadcast: {e}");
        }
    }

    async fn leave(&mut self) {
        if let Err(e) = self.foca.leave_cluster(&mut self.runtime) {
            tracing::debug!("leaving: {e}");
        }
        self.drain().await;
    }

    /// Send what foca wants sent, schedule its timers, act on its notifications, and publish
    /// the view when it changed.
    async fn drain(&mut self) {
        while let Some((to, data)) = self.runtime.to_send() {
            let packet = self.envelope.seal(&data, crate::clock::now_us() / 1000);
            self.stats.packets_out.fetch_add(1, Relaxed);
            let _ = self.socket.send_to(&packet, to.gossip).await;
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.timers.insert(timer, after);
        }
        let mut rejoined = false;
        while let Some(notification) = self.runtime.to_notify() {
            rejoined |= matches!(notification, foca::OwnedNotification::Rejoin(_));
            let event = match notification {
                foca::OwnedNotification::MemberUp(p) => Some(ClusterEvent::Joined(p)),
                foca::OwnedNotification::MemberDown(p) => Some(ClusterEvent::Down(p)),
                foca::OwnedNotification::Rename(old, new) => {
                    Some(ClusterEvent::Replaced { old, new })
                }
                foca::OwnedNotification::Idle => Some(ClusterEvent::Isolated),
                foca::OwnedNotification::Rejoin(p) => Some(ClusterEvent::Rejoined(p)),
                _ => None,
            };
            if let Some(event) = event {
                let _ = self.events.send(event);
            }
        }
        if rejoined {
            self.take_back_all_suspicions();
        }
        let me = self.foca.identity().clone();
        // One look at the suspects per drain, for the stale ones and for `confirm`.
        let suspects = self.suspects();
        let suspects = self.clear_stale_suspicions(suspects);
        self.confirming
            .retain(|p| suspects.iter().any(|(s, _)| s == p));
        for (peer, incarnation) in &suspects {
            self.confirm(peer, *incarnation);
        }
        self.scale_suspicion(self.foca.num_members() + 1);
        let mut latest: std::collections::BTreeMap<&str, Member> = Default::default();
        for m in self.foca.iter_membership_state() {
            let peer = m.id();
            if peer.id == me.id {
                continue;
            }
            let state = match m.state() {
                foca::State::Alive => MemberState::Alive,
                foca::State::Suspect => MemberState::Suspect,
                foca::State::Down => MemberState::Down,
            };
            let newer = latest.get(peer.id.as_str()).is_none_or(|have| {
                (peer.generation, state != MemberState::Down)
                    > (have.peer.generation, have.state != MemberState::Down)
            });
            if newer {
                latest.insert(
                    &peer.id,
                    Member {
                        peer: peer.clone(),
                        state,
                    },
                );
            }
        }
        let view = View {
            me,
            others: latest.into_values().collect(),
        };
        self.view.send_if_modified(|current| {
            if *current == view {
                false
            } else {
                *current = view;
                true
            }
        });
    }
}
