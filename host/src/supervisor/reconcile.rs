//! The reconcile loop: desired sources (the catalog × the live members) against what runs
//! here; start what this node owns, hand over (make-before-break) what it no longer owns,
//! fetch the plugins the catalog names.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::{HANDOVER_CHECK_EVERY, NodeError, NodeState, RECONCILE_EVERY, lock, source_key};
use crate::cluster::catalog::Changes;
use crate::cluster::http::PeerAnswer;
use crate::source::{SourceReport, SourceSpec, SourceState};

/// Sources started at once by one reconcile.
const STARTS_AT_ONCE: usize = 16;

/// What a reconcile looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Every source: after a change of members, a plugin's arrival, and every
    /// `FULL_EVERY` retries as a safety net.
    All,
    /// Only the sources whose catalog entries changed since the last reconcile: adding,
    /// changing or removing one source costs the same however many there are.
    Changed,
    /// The changed ones, and those that could not start or wait for their new owner.
    Retry,
}

/// Every this many retry rounds (`RECONCILE_EVERY` apart), a reconcile looks at every source.
const FULL_EVERY: u32 = 15;

impl NodeState {
    /// Start what this node owns and does not run; stop what it runs and does not own (or
    /// what was removed or paused); fetch plugins the catalog names and this node lacks.
    pub(crate) async fn reconcile(&self, scope: Scope) {
        let _one_at_a_time = self.reconciling.lock().await;
        if self.shutdown.is_cancelled() {
            return;
        }
        // A node that is leaving takes nothing over: the peers it sees go may be leaving too
        // (a whole cluster stopping), so their sources are not its to run, and every start
        // would lengthen its shutdown past its drain bound. It only keeps, hands over and
        // stops what already runs (`leave_and_stop` stops the rest).
        let leaving = self.is_leaving();
        let view = self.cluster.view();
        // Taken under the lock, so that changes are looked at by exactly one reconcile.
        let changes = self.cluster.catalog.take_changes();
        let only: Option<BTreeSet<String>> = match (scope, changes) {
            (Scope::All, _) | (_, Changes::All) => None,
            (scope, Changes::Keys(keys)) => {
                let mut ids: BTreeSet<String> = keys
                    .iter()
                    .filter_map(|k| k.strip_prefix("source/"))
                    .map(str::to_owned)
                    .collect();
                if scope == Scope::Retry {
                    ids.extend(lock(&self.failed).keys().cloned());
                    ids.extend(lock(&self.handing_over).keys().cloned());
                }
                Some(ids)
            }
        };
        let in_scope = |id: &str| only.as_ref().is_none_or(|ids| ids.contains(id));
        let entries = match &only {
            None => self.cluster.catalog.live("source/"),
            Some(ids) => ids
                .iter()
                .filter_map(|id| self.cluster.catalog.get(&source_key(id)))
                .filter(|e| e.value.is_some())
                .collect(),
        };
        let mut wanted: BTreeMap<String, SourceSpec> = BTreeMap::new();
        for entry in entries {
            match serde_json::from_value::<SourceSpec>(entry.value.expect("live")) {
                Ok(spec)
                    if !spec.paused && self.owners_of(&view, &spec).contains(&self.node_id) =>
                {
                    wanted.insert(spec.id.clone(), spec);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("catalog entry {} is not a source: {e}", entry.key),
            }
        }
        let running: Vec<(String, SourceSpec)> = {
            let sources = self.sources.lock().await;
            match &only {
                None => sources
                    .iter()
                    .map(|(id, r)| (id.clone(), r.spec.clone()))
                    .collect(),
                Some(ids) => ids
                    .iter()
                    .filter_map(|id| sources.get(id).map(|r| (id.clone(), r.spec.clone())))
                    .collect(),
            }
        };
        let mut handed_over = Vec::new();
        for (id, spec) in &running {
            match wanted.get(id) {
                Some(want) if want == spec => {
                    wanted.remove(id);
                }
                Some(_) => {} // changed: restarted below
                None => {
                    let entry = self.cluster.catalog.get(&source_key(id));
                    let removed = entry.as_ref().is_none_or(|e| e.value.is_none());
                    // The spec as the catalog has it now (its `replicas` may have changed).
                    let now: Option<SourceSpec> = entry
                        .and_then(|e| e.value)
                        .and_then(|v| serde_json::from_value(v).ok());
                    let moving = now.as_ref().is_some_and(|s| !s.paused);
                    if !moving {
                        // Removed or paused: it stops everywhere, now.
                        let _ = self.stop_source(id).await;
                        if removed {
                            // A source added again under this id starts afresh.
                            if let Err(e) = self.ingest.store.forget_cursor(id).await {
                                tracing::warn!(
                                    "cannot forget the cursor of removed source `{id}`: {e}"
                                );
                            }
                        }
                        continue;
                    }
                    let new_owners = self.owners_of(&view, now.as_ref().unwrap_or(spec));
                    if self.handover_done(id, &new_owners).await {
                        let _ = self.stop_source(id).await;
                        lock(&self.handing_over).remove(id);
                        handed_over.push(format!("{id} → {}", new_owners.join(", ")));
                    }
                }
            }
        }
        let mut not_taken = 0;
        if leaving {
            // Nothing new, nor a changed spec restarted: what runs keeps running as it is.
            not_taken = wanted.len();
            wanted.clear();
        }
        lock(&self.handing_over).retain(|id, _| !wanted.contains_key(id));
        lock(&self.failed).retain(|id, _| !in_scope(id) || wanted.contains_key(id));
        let mut ready = Vec::new();
        for (id, spec) in wanted {
            if !self.plugins_present(&spec) {
                let refused = lock(&self.untrusted)
                    .values()
                    .find(|(name, _)| *name == spec.plugin)
                    .map(|(_, why)| why.clone());
                let reason = match refused {
                    Some(why) => format!("plugin `{}` is refused on this node: {why}", spec.plugin),
                    None => format!("waiting for plugin `{}` to arrive from a peer", spec.plugin),
                };
                lock(&self.failed).insert(id.clone(), reason);
                continue;
            }
            ready.push((id, spec));
        }
        // Started several at a time: each waits on the store for its cursor and on its
        // plugin for its session, and a node taking over a dead peer's share should not
        // wait for them one after the other.
        // A start not begun when the node starts leaving is skipped (`None`).
        let outcomes: Vec<(String, Option<Result<(), NodeError>>)> =
            futures_util::stream::iter(ready)
                .map(|(id, spec)| async move {
                    if self.is_leaving() {
                        return (id, None);
                    }
                    (id, Some(self.start_source(spec).await))
                })
                .buffer_unordered(STARTS_AT_ONCE)
                .collect()
                .await;
        let mut started = Vec::new();
        for (id, outcome) in outcomes {
            let Some(outcome) = outcome else {
                not_taken += 1;
                continue;
            };
            match outcome {
                Ok(()) => {
                    lock(&self.failed).remove(&id);
                    started.push(id);
                }
                Err(e) => {
                    let message = e.to_string();
                    let before = lock(&self.failed).insert(id.clone(), message.clone());
                    if before.as_ref() != Some(&message) {
                        self.events.push(
                            &self.node_id,
                            "source",
                            format!("cannot start `{id}`: {message}"),
                        );
                    }
                }
            }
        }
        started.sort();
        if not_taken > 0 {
            tracing::info!("leaving: {not_taken} source(s) this node now owns are left to peers");
        }
        if !handed_over.is_empty() {
            self.events.push(
                &self.node_id,
                "handover",
                format!(
                    "handed over {} source(s): {}",
                    handed_over.len(),
                    summary(&handed_over)
                ),
            );
        }
        if !started.is_empty() {
            self.events.push(
                &self.node_id,
                "handover",
                format!(
                    "now running {} more source(s): {}",
                    started.len(),
                    summary(&started)
                ),
            );
        }
        self.fetch_missing_plugins();
        self.collect_removed_plugins();
    }

    /// Make-before-break: whether a source this node runs but no longer owns may stop. Yes
    /// once its new owner reports it live, or after `cluster.handover_timeout_ms` when the
    /// new owner says nothing of it; never while the new owner reports it cannot run it
    /// (say, its plugin has not arrived there).
    ///
    /// With `replicas`, every new owner must report it live: the source keeps running on as
    /// many nodes as it asks for through the move.
    async fn handover_done(&self, id: &str, new_owners: &[String]) -> bool {
        let started = *lock(&self.handing_over)
            .entry(id.to_owned())
            .or_insert_with(Instant::now);
        let reports = self.peer_reports().await;
        let states: Vec<Option<SourceState>> = new_owners
            .iter()
            .map(|owner| {
                reports
                    .iter()
                    .find(|r| r.id == id && r.node.as_deref() == Some(owner.as_str()))
                    .map(|r| r.state)
            })
            .collect();
        let timeout = Duration::from_millis(self.config.cluster.handover_timeout_ms);
        if states.contains(&Some(SourceState::Failed)) {
            return false;
        }
        states.iter().all(|s| *s == Some(SourceState::Live)) || started.elapsed() >= timeout
    }

    /// After leaving: wait (bounded by `cluster.handover_timeout_ms`) until the members that
    /// stay report this node's sources live, or cannot run them.
    pub(crate) async fn await_new_owners(&self) {
        let view = self.cluster.view();
        // Only peers that answer and stay take sources over: not those leaving too (a whole
        // cluster stopping) nor those already gone.
        let mut staying = Vec::new();
        for peer in view.live_peers() {
            if crate::cluster::http::sources_of(&self.cluster, &self.ingest.http, peer)
                .await
                .is_ok()
            {
                staying.push(peer.clone());
            }
        }
        if staying.is_empty() {
            return;
        }
        let mine: Vec<(String, String)> = {
            let peers: Vec<&str> = staying.iter().map(|p| p.id.as_str()).collect();
            self.sources
                .lock()
                .await
                .keys()
                .filter_map(|id| {
                    let owner = crate::cluster::owner_among(id, peers.iter().copied())?;
                    Some((id.clone(), owner.to_owned()))
                })
                .collect()
        };
        let deadline =
            Instant::now() + Duration::from_millis(self.config.cluster.handover_timeout_ms);
        while Instant::now() < deadline {
            let mut reports = Vec::new();
            for peer in &staying {
                match crate::cluster::http::sources_of(&self.cluster, &self.ingest.http, peer).await
                {
                    Ok(theirs) => reports.extend(theirs),
                    // It started leaving, or went, meanwhile: it will not take its share.
                    Err(PeerAnswer::Leaving | PeerAnswer::Silent) => {
                        reports.extend(mine.iter().filter(|(_, o)| *o == peer.id).map(
                            |(id, o)| SourceReport {
                                id: id.clone(),
                                node: Some(o.clone()),
                                state: SourceState::Failed,
                                ..SourceReport::default()
                            },
                        ));
                    }
                }
            }
            let waiting = mine.iter().any(|(id, owner)| {
                !reports.iter().any(|r| {
                    r.id == *id
                        && r.node.as_deref() == Some(owner.as_str())
                        && matches!(r.state, SourceState::Live | SourceState::Failed)
                })
            });
            if !waiting {
                return;
            }
            tokio::time::sleep(HANDOVER_CHECK_EVERY).await;
        }
        tracing::warn!(
            "leaving before every new owner reported its sources live (cluster.handover_timeout_ms)"
        );
    }

    /// Whether the node was asked to stop (it is leaving the cluster).
    fn is_leaving(&self) -> bool {
        self.leaving.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sources waiting for their new owner to take over.
    fn handing_over(&self) -> usize {
        lock(&self.handing_over).len()
    }
}

/// The first few of `items`, for a log line.
fn summary(items: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut text = items[..items.len().min(SHOWN)].join(", ");
    if items.len() > SHOWN {
        text.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    text
}

/// Reconcile whenever the catalog or the view changes, a plugin arrives, and every few
/// seconds (to retry). With seeds, wait first to hear from the cluster (bounded), so that a
/// restarting node does not start every source alone.
pub(crate) async fn reconcile_loop(state: Arc<NodeState>) {
    let settings = state.config.cluster.clone();
    let mut view = state.cluster.watch();
    let mut catalog = state.cluster.catalog.subscribe();
    if !settings.seeds.is_empty() {
        let grace = tokio::time::sleep(Duration::from_millis(settings.join_grace_ms));
        tokio::pin!(grace);
        loop {
            if !view.borrow_and_update().others.is_empty() {
                break;
            }
            tokio::select! {
                () = state.shutdown.cancelled() => return,
                () = &mut grace => break,
                changed = view.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
        }
    }
    let mut fetched = state.fetch_done.subscribe();
    let mut scope = Scope::All;
    let mut retries = 0u32;
    // The retry round keeps its own clock: catalog changes (cursors shared every second by
    // the peers) wake the loop far more often than the retry period and must not put it off.
    let mut retry_at = tokio::time::Instant::now();
    loop {
        state.reconcile(scope).await;
        // While sources wait for their new owners, look again soon.
        let period = if state.handing_over() > 0 {
            HANDOVER_CHECK_EVERY
        } else {
            RECONCILE_EVERY
        };
        let now = tokio::time::Instant::now();
        if retry_at <= now || retry_at > now + period {
            retry_at = now + period;
        }
        scope = tokio::select! {
            () = state.shutdown.cancelled() => return,
            changed = view.changed() => {
                if changed.is_err() {
                    // Gossip has stopped (the node is leaving): nothing will change any more.
                    state.shutdown.cancelled().await;
                    return;
                }
                Scope::All
            }
            _ = catalog.changed() => Scope::Changed,
            _ = fetched.recv() => Scope::All,
            () = tokio::time::sleep_until(retry_at) => {
                retries = retries.wrapping_add(1);
                if retries.is_multiple_of(FULL_EVERY) { Scope::All } else { Scope::Retry }
            }
        };
    }
}
