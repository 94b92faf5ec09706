//! The path of a batch: frames or responses → connector (one batched call) → repeats dropped
//! → the source's transform chain (one batched call per step) → records stamped with their
//! ids → published to subscribers who want records as decoded → submitted to the store with
//! the cursor the batch reached → acknowledged once the store committed records and cursor
//! together → published to subscribers who want stored records, and the cursor shown as the
//! source's committed position.
//!
//! What cannot be processed is not dropped: frames the connector calls bad input, events a
//! transform refuses or fails on, payloads that are not JSON and cursors a store cannot keep
//! travel with their batch as dead letters ([`crate::deadletter`]), and a failing transform
//! step is retried and its poison isolated ([`recover`]). The repeat filter learns a batch's
//! ids only once its chain has accepted it, so a batch that failed is not taken for a repeat
//! when it comes again.
//!
//! A source never waits for its own acknowledgements batch by batch: up to
//! `sources.acks_in_flight` batches are in the store's hands at once, and [`acknowledge`]
//! follows them in order. Plugin calls are synchronous and bounded by the sandbox deadline;
//! each instance runs on its own thread behind a bounded queue ([`Worker`]), so a slow plugin
//! never stalls the network tasks.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod recover;

pub(crate) use recover::Probe;

use crate::clock::now_us;
use crate::deadletter::{DeadLetter, DeadMeta, DeadStage, cursor_fault};
use crate::fanout::{Hub, Stage};
use crate::plugin::{
    CallError, ConnectorInstance, Event, HttpRequest, Plan, PluginError, SessionId,
    TransformInstance, Worker,
};
use crate::record::{Payload, RecentIds, Record, RecordId, Stamp};
use crate::sink::{Batch, Receipt, StepState, StoreHandle};
use crate::source::{Feed, Input, Outcome, Problem, SourceSettings, SourceSpec, SourceStatus};
use crate::sync::lock;

/// What every source on a node shares.
pub(crate) struct Ingest {
    pub(crate) node: String,
    pub(crate) store: StoreHandle,
    pub(crate) hub: Hub,
    /// Node-to-node requests.
    pub(crate) http: reqwest::Client,
    /// Sources' requests, resolved through the egress policy.
    pub(crate) source_http: reqwest::Client,
    pub(crate) settings: SourceSettings,
    /// What sources may reach.
    pub(crate) egress: crate::source::Egress,
    /// On shutdown, how long a stopping source may wait for the store.
    pub(crate) drain_timeout: Duration,
    /// With the embedded store, committed cursors also go to the cluster's catalog, so that
    /// a new owner on another node resumes from them.
    pub(crate) cursor_shelf: Option<CursorShelf>,
    /// Stopping WebSocket sessions whose venue did not end the connection within
    /// `sources.close_timeout_ms`.
    pub(crate) close_timeouts: std::sync::atomic::AtomicU64,
}

/// The latest committed cursor of each source, waiting to be written to the catalog (at most
/// once per `cluster.cursor_share_ms`).
#[derive(Clone, Default)]
pub(crate) struct CursorShelf(Arc<Mutex<HashMap<Arc<str>, Shelved>>>);

/// A cursor and when it was committed (µs since the epoch).
type Shelved = (String, i64);

impl CursorShelf {
    fn put(&self, source: &Arc<str>, cursor: String) {
        lock(&self.0).insert(source.clone(), (cursor, now_us()));
    }

    /// Every cursor put since the last call: (source, cursor, committed at µs).
    pub(crate) fn take(&self) -> Vec<(Arc<str>, String, i64)> {
        lock(&self.0)
            .drain()
            .map(|(source, (cursor, at))| (source, cursor, at))
            .collect()
    }
}

/// A plugin instance shared by several sources, with the session of one of them.
pub(crate) struct Bound<I> {
    pub(crate) worker: Worker<I>,
    pub(crate) session: SessionId,
    /// The plugin and the session's configuration, for probes (see [`recover`]).
    pub(crate) probe: Probe,
}

impl<I: Send + 'static> Bound<I> {
    /// Close the session on the instance's thread, without waiting.
    pub(crate) fn close(&self, close: fn(&mut I, SessionId)) {
        let session = self.session;
        self.worker.post(move |i| close(i, session));
    }
}

/// Everything one running source needs.
pub(crate) struct SourceCtx {
    pub(crate) spec: SourceSpec,
    /// The source id, shared with every batch.
    pub(crate) source: Arc<str>,
    pub(crate) status: Arc<SourceStatus>,
    pub(crate) connector: Bound<ConnectorInstance>,
    pub(crate) chain: Vec<Bound<TransformInstance>>,
    pub(crate) ingest: Arc<Ingest>,
    pub(crate) cancel: CancellationToken,
    /// Ids this source produced lately: repeats are dropped before the transforms.
    pub(crate) recent: Mutex<RecentIds>,
    /// Per chain step, whether the store holds a state of it: a step that keeps none (most
    /// transforms, most of the time) writes nothing, but an empty state once to clear a kept one.
    pub(crate) kept_states: Mutex<Vec<bool>>,
    /// Receipts of submitted batches, in order, for [`acknowledge`].
    pub(crate) acks: mpsc::Sender<Receipt>,
}

impl SourceCtx {
    /// Ask the connector how to reach the source.
    pub(crate) async fn plan(&self) -> Result<Plan, Problem> {
        let session = self.connector.session;
        self.connector
            .worker
            .call(move |c| c.plan(session))
            .await
            .map_err(|e| self.call_problem(e))
    }

    /// Ask the connector for the requests it wants made as the source starts.
    pub(crate) async fn backfill(&self) -> Result<Vec<HttpRequest>, Problem> {
        let session = self.connector.session;
        self.connector
            .worker
            .call(move |c| c.backfill(session))
            .await
            .map_err(|e| self.call_problem(e))
    }

    /// Run one batch through the connector, the repeat filter and the chain; publish,
    /// submit to the store with its cursor and its dead letters, and hand the receipt to the
    /// acker.
    pub(crate) async fn ingest(&self, input: Input) -> Outcome {
        let input = Arc::new(input);
        let inputs = match &*input {
            Input::Frames(f) => f.len(),
            Input::Responses(r) => r.len(),
        };
        self.status.inputs.fetch_add(inputs as u64, Relaxed);
        let session = self.connector.session;
        let given = input.clone();
        let decoded = self
            .connector
            .worker
            .call(move |connector| {
                let decoded = match &*given {
                    Input::Frames(frames) => connector.on_frames(session, frames),
                    Input::Responses(responses) => connector.on_responses(session, responses),
                };
                decoded.map(|decoded| (decoded, connector.take_warnings()))
            })
            .await;
        let decoded = match decoded {
            Ok((decoded, warnings)) => {
                if let Some(warning) = warnings.into_iter().last() {
                    self.status.warn(warning);
                }
                decoded
            }
            Err(error) => {
                return Outcome {
                    problem: Some(self.call_problem(error)),
                    ..Outcome::default()
                };
            }
        };
        let mut outcome = Outcome {
            requests: decoded.requests,
            replies: decoded.replies,
            problem: None,
        };
        let mut bad = Vec::new();
        for error in decoded.errors {
            match error {
                PluginError::BadInput(m) => {
                    self.status.error(format!("bad input: {m}"));
                    bad.push(m);
                }
                PluginError::Retryable(m) => outcome.problem = Some(Problem::Retry(m)),
                PluginError::Fatal(m) => outcome.problem = Some(Problem::Fatal(m)),
            }
        }
        let mut dead = if bad.is_empty() {
            Vec::new()
        } else {
            self.refused_inputs(&input, bad).await
        };
        drop(input);
        let changed = !decoded.events.is_empty() && !self.chain.is_empty();
        let records = match self.transform(decoded.events, &mut dead).await {
            Ok(records) => records,
            Err(Problem::Fatal(message)) => {
                // A step stopped the source: what it was given is in `dead`, so the batch goes
                // to the store (its cursor may pass what is kept there), then the source stops.
                let cursor = decoded.cursor.filter(|c| cursor_fault(c).is_none());
                self.emit(Vec::new(), cursor, Vec::new(), dead).await;
                outcome.problem = Some(Problem::Fatal(message));
                return outcome;
            }
            Err(problem) => {
                // Stopping mid-retry: the cursor must not pass records that were not stored,
                // so nothing of the batch is submitted.
                outcome.problem = Some(problem);
                return outcome;
            }
        };
        let mut cursor = decoded.cursor;
        if let Some(fault) = cursor.as_deref().and_then(cursor_fault) {
            // The source stops at its last good cursor; this batch's records are stored.
            let bad_cursor = cursor.take().expect("checked");
            let message = format!(
                "the connector returned a cursor the store cannot keep ({fault}); it went to \
                 the dead-letter store and the source stopped at its last good cursor: fix \
                 the plugin, then restart the source"
            );
            dead.push(DeadLetter {
                source: self.source.to_string(),
                stage: DeadStage::Cursor,
                plugin: Some(self.connector.probe.digest()),
                step: None,
                reason: fault,
                raw: bad_cursor.into_bytes(),
                meta: DeadMeta::default(),
                at_us: now_us(),
            });
            outcome.problem = Some(Problem::Fatal(message));
        }
        let states = if changed {
            self.snapshot_states().await
        } else {
            Vec::new()
        };
        self.emit(records, cursor, states, dead).await;
        outcome
    }

    /// The state of each stateful step after the batch it just took, to be committed with
    /// the batch: a step's state when it has one, and an empty one when it no longer has, so
    /// that an old one is not given back; nothing for a step that had none and has none.
    async fn snapshot_states(&self) -> Vec<StepState> {
        let mut out = Vec::new();
        for (i, step) in self.chain.iter().enumerate() {
            if !step.probe.plugin.stateful() {
                continue;
            }
            let session = step.session;
            match step.worker.call(move |t| t.snapshot(session)).await {
                Ok(state) => {
                    let state = state.unwrap_or_default();
                    let had = std::mem::replace(&mut lock(&self.kept_states)[i], !state.is_empty());
                    if had || !state.is_empty() {
                        out.push(StepState {
                            step: i as u32,
                            plugin: step.probe.digest(),
                            state,
                        });
                    }
                }
                Err(e) => self.status.error(format!(
                    "transform step {i}: its state could not be taken: {e}"
                )),
            }
        }
        out
    }

    /// Drop repeats, run the chain, stamp the records. The batch's ids join the repeat
    /// window once the chain has taken the batch (what it refused is in `dead`).
    async fn transform(
        &self,
        events: Vec<Event>,
        dead: &mut Vec<DeadLetter>,
    ) -> Result<Vec<Record>, Problem> {
        let total = events.len();
        let now = now_us();
        let source = &*self.source;
        if self.chain.is_empty() {
            // Without transforms the records' ids are the repeat filter's ids: one hash each.
            let stamped = self.stamp(events, now, None, dead);
            let valid = stamped.len();
            let records: Vec<Record> = {
                let mut recent = lock(&self.recent);
                stamped
                    .into_iter()
                    .filter(|r| recent.insert(&r.id))
                    .collect()
            };
            self.status
                .duplicates
                .fetch_add((valid - records.len()) as u64, Relaxed);
            return Ok(records);
        }
        let ids: Vec<RecordId> = events
            .iter()
            .map(|e| RecordId::derive(source, &e.stream, e.upstream_id.as_deref(), &e.payload))
            .collect();
        let (fresh, fresh_ids): (Vec<Event>, Vec<RecordId>) = {
            let recent = lock(&self.recent);
            let mut batch = std::collections::HashSet::new();
            events
                .into_iter()
                .zip(ids)
                .filter(|(_, id)| !recent.contains(id) && batch.insert(*id))
                .unzip()
        };
        self.status
            .duplicates
            .fetch_add((total - fresh.len()) as u64, Relaxed);
        if fresh.is_empty() {
            return Ok(Vec::new());
        }
        let out = self.run_chain(0, fresh, dead).await?;
        {
            let mut recent = lock(&self.recent);
            for id in &fresh_ids {
                recent.insert(id);
            }
        }
        let last = self.chain.len() - 1;
        Ok(self.stamp(out, now, Some(last), dead))
    }

    fn at(&self, now: i64) -> Stamp<'_> {
        Stamp {
            source: &self.source,
            node: &self.ingest.node,
            ingest_time_us: now,
        }
    }

    /// Stamp each event whose payload is JSON (checked here, once: sinks store payloads as
    /// JSON); one that is not goes to the dead-letter store, named after the plugin that
    /// emitted it (the last transform `step`, or the connector).
    fn stamp(
        &self,
        events: Vec<Event>,
        now: i64,
        step: Option<usize>,
        dead: &mut Vec<DeadLetter>,
    ) -> Vec<Record> {
        let at = self.at(now);
        let mut records = Vec::with_capacity(events.len());
        let mut invalid = 0usize;
        for e in events {
            let Event {
                stream,
                key,
                upstream_id,
                event_time,
                payload,
            } = e;
            match Payload::parse_or_return(payload) {
                Ok(payload) => {
                    records.push(at.record(stream, key, upstream_id, event_time, payload))
                }
                Err(rejected) => {
                    invalid += 1;
                    let event = Event {
                        stream,
                        key,
                        upstream_id,
                        event_time,
                        payload: rejected,
                    };
                    dead.push(recover::event_letter(
                        self,
                        step,
                        event,
                        "the plugin emitted an event whose payload is not JSON".into(),
                    ));
                }
            }
        }
        if invalid > 0 {
            self.status.error_n(
                invalid as u64,
                format!(
                    "the plugin emitted {invalid} event(s) whose payload is not JSON; they went \
                     to the dead-letter store"
                ),
            );
        }
        records
    }

    /// Let the transforms close what is due (time windows): every step's tick output goes
    /// through the steps after it, then to the store like any batch.
    pub(crate) async fn tick(&self) {
        if self.chain.is_empty() {
            return;
        }
        let now = now_us();
        let mut out = Vec::new();
        let mut dead = Vec::new();
        for (i, step) in self.chain.iter().enumerate() {
            let session = step.session;
            let due = match step.worker.call(move |t| t.tick(session, now)).await {
                Ok(due) => due,
                Err(error) => {
                    self.call_problem(error);
                    continue;
                }
            };
            match self.run_chain(i + 1, due, &mut dead).await {
                Ok(events) => out.extend(events),
                Err(Problem::Fatal(m) | Problem::Retry(m)) => self.status.error(m),
            }
        }
        let last = self.chain.len() - 1;
        let records = self.stamp(out, now, Some(last), &mut dead);
        let states = if records.is_empty() {
            Vec::new()
        } else {
            self.snapshot_states().await
        };
        self.emit(records, None, states, dead).await;
    }

    /// Publish to subscribers of decoded records, then submit to the store with the cursor
    /// (waiting while its buffer is full, which pauses the source); the acker takes it from
    /// there.
    async fn emit(
        &self,
        records: Vec<Record>,
        cursor: Option<String>,
        states: Vec<StepState>,
        dead: Vec<DeadLetter>,
    ) {
        if records.is_empty() && cursor.is_none() && dead.is_empty() {
            return;
        }
        let count = records.len();
        if count > 0 {
            self.status.record_events(count, now_us());
            self.ingest.hub.publish(&records, Stage::Decoded);
        }
        let batch = Batch {
            source: self.source.clone(),
            records,
            cursor,
            states,
            dead,
        };
        // A stopping source still hands its last batch over, within the drain bound.
        let stopping = async {
            self.cancel.cancelled().await;
            tokio::time::sleep(self.ingest.drain_timeout).await;
        };
        let receipt = tokio::select! {
            submitted = self.ingest.store.submit(batch) => submitted,
            () = stopping => {
                self.status.error(format!(
                    "stopped while waiting {} ms for room in the store; {count} records of the last batch were not stored",
                    self.ingest.drain_timeout.as_millis()
                ));
                return;
            }
        };
        match receipt {
            Ok(receipt) => {
                // Bounded: waits while `acks_in_flight` batches are unacknowledged.
                let _ = self.acks.send(receipt).await;
            }
            Err(e) => self.status.error(format!("{e}: {count} records")),
        }
    }

    fn call_problem(&self, error: CallError) -> Problem {
        let message = error.to_string();
        match error {
            CallError::Plugin {
                error: PluginError::Fatal(m),
                ..
            } => Problem::Fatal(m),
            CallError::Plugin {
                error: PluginError::BadInput(_),
                ..
            } => {
                self.status.error(message.clone());
                Problem::Retry(message)
            }
            CallError::NoSession(_) => Problem::Fatal(message),
            _ => {
                self.status.error(message.clone());
                Problem::Retry(message)
            }
        }
    }

    /// Close the source's sessions (on removal).
    pub(crate) fn close(&self) {
        self.connector.close(ConnectorInstance::close);
        for step in &self.chain {
            step.close(TransformInstance::close);
        }
    }
}

impl Feed for SourceCtx {
    fn ingest(&self, input: Input) -> impl Future<Output = Outcome> + Send {
        SourceCtx::ingest(self, input)
    }
    fn status(&self) -> &SourceStatus {
        &self.status
    }
    fn cancel(&self) -> &CancellationToken {
        &self.cancel
    }
    fn settings(&self) -> &SourceSettings {
        &self.ingest.settings
    }
    fn source_http(&self) -> &reqwest::Client {
        &self.ingest.source_http
    }
    fn egress(&self) -> &crate::source::Egress {
        &self.ingest.egress
    }
    fn close_timed_out(&self) {
        self.ingest
            .close_timeouts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Follows one source's submitted batches in order: when the store has committed one, its
/// records go to subscribers of stored records and its cursor becomes the source's committed
/// position. Ends once the source is gone and every receipt is settled.
pub(crate) async fn acknowledge(
    mut receipts: mpsc::Receiver<Receipt>,
    hub: Hub,
    status: Arc<SourceStatus>,
    shelf: Option<(Arc<str>, CursorShelf)>,
) {
    while let Some(receipt) = receipts.recv().await {
        match receipt.committed().await {
            Ok(committed) => {
                if committed.refused > 0 {
                    status.error(format!(
                        "the store refused {} record(s); they went to the dead-letter store \
                         and are not stored",
                        committed.refused
                    ));
                }
                hub.publish(&committed.records, Stage::Stored);
                if let (Some((source, shelf)), Some(cursor)) = (&shelf, &committed.cursor) {
                    shelf.put(source, cursor.clone());
                }
                status.committed(committed.records.len(), committed.cursor);
            }
            Err(e) => status.error(e.to_string()),
        }
    }
}
