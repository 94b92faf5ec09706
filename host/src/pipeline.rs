//! The path of a batch: frames or responses → connector (one batched call) → the source's
//! transform chain (one batched call per step) → records stamped with their ids → the store
//! (waiting while its buffer is full, which pauses the source) → the fan-out hub.
//!
//! Plugin calls are synchronous and bounded by the sandbox deadline; they run on tokio's
//! blocking pool so a slow plugin never stalls the network tasks.

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::clock::now_us;
use crate::fanout::Hub;
use crate::plugin::{
    CallError, ConnectorInstance, Event, Frame, HttpRequest, HttpResponse, Plan, PluginError,
    SessionId, TransformInstance,
};
use crate::record::{RecentIds, Record};
use crate::sink::StoreHandle;
use crate::source::{SourceSpec, SourceStatus};

/// What every source on a node shares.
pub(crate) struct Ingest {
    pub(crate) node: String,
    pub(crate) store: StoreHandle,
    pub(crate) hub: Hub,
    pub(crate) http: reqwest::Client,
    pub(crate) settings: crate::config::SourceSettings,
}

/// A plugin instance shared by several sources, with the session of one of them.
pub(crate) struct Bound<I> {
    pub(crate) instance: Arc<Mutex<I>>,
    pub(crate) session: SessionId,
}

/// Everything one running source needs.
pub(crate) struct SourceCtx {
    pub(crate) spec: SourceSpec,
    pub(crate) status: Arc<SourceStatus>,
    pub(crate) connector: Bound<ConnectorInstance>,
    pub(crate) chain: Vec<Bound<TransformInstance>>,
    pub(crate) ingest: Arc<Ingest>,
    pub(crate) cancel: CancellationToken,
    /// Ids this source produced lately: repeats are dropped before publishing and storing.
    pub(crate) recent: Mutex<RecentIds>,
}

/// Input for one batched connector call.
pub(crate) enum Input {
    Frames(Vec<Frame>),
    Responses(Vec<HttpResponse>),
}

/// Why a driver must stop reading for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Problem {
    /// Back off, then reconnect / poll again.
    Retry(String),
    /// Stop the source; an operator must act.
    Fatal(String),
}

/// What a batch asks of the driver.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) requests: Vec<HttpRequest>,
    pub(crate) replies: Vec<String>,
    pub(crate) problem: Option<Problem>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SourceCtx {
    /// Ask the connector how to reach the source.
    pub(crate) async fn plan(&self) -> Result<Plan, Problem> {
        let instance = self.connector.instance.clone();
        let session = self.connector.session;
        let result = tokio::task::spawn_blocking(move || lock(&instance).plan(session))
            .await
            .map_err(|e| Problem::Retry(format!("plugin call aborted: {e}")))?;
        result.map_err(|e| self.call_problem(e))
    }

    /// Run one batch through the connector and the chain, store and publish the records.
    pub(crate) async fn ingest(&self, input: Input) -> Outcome {
        let inputs = match &input {
            Input::Frames(f) => f.len(),
            Input::Responses(r) => r.len(),
        };
        self.status
            .inputs
            .fetch_add(inputs as u64, std::sync::atomic::Ordering::Relaxed);
        let connector = self.connector.instance.clone();
        let session = self.connector.session;
        let chain: Vec<(Arc<Mutex<TransformInstance>>, SessionId)> = self
            .chain
            .iter()
            .map(|b| (b.instance.clone(), b.session))
            .collect();
        let joined = tokio::task::spawn_blocking(move || {
            let decoded = {
                let mut connector = lock(&connector);
                match &input {
                    Input::Frames(frames) => connector.on_frames(session, frames),
                    Input::Responses(responses) => connector.on_responses(session, responses),
                }
            }?;
            let mut events = decoded.events;
            for (instance, step) in &chain {
                if events.is_empty() {
                    break;
                }
                events = lock(instance).process(*step, &events)?;
            }
            // Sinks store payloads as JSON: a plugin that emits anything else loses that
            // event (counted), not the batch.
            let before = events.len();
            events.retain(|e| serde_json::from_slice::<serde::de::IgnoredAny>(&e.payload).is_ok());
            let invalid = before - events.len();
            Ok::<_, CallError>((
                invalid,
                events,
                decoded.errors,
                decoded.requests,
                decoded.replies,
                decoded.cursor,
            ))
        })
        .await;
        let (invalid, events, errors, requests, replies, cursor) = match joined {
            Ok(Ok(parts)) => parts,
            Ok(Err(error)) => {
                return Outcome {
                    problem: Some(self.call_problem(error)),
                    ..Outcome::default()
                };
            }
            Err(join) => {
                return Outcome {
                    problem: Some(Problem::Retry(format!("plugin call aborted: {join}"))),
                    ..Outcome::default()
                };
            }
        };
        let mut outcome = Outcome {
            requests,
            replies,
            problem: None,
        };
        if invalid > 0 {
            self.status.error_n(
                invalid as u64,
                format!("the plugin emitted {invalid} event(s) whose payload is not JSON; they were dropped"),
            );
        }
        for error in errors {
            match error {
                PluginError::BadInput(m) => self.status.error(format!("bad input: {m}")),
                PluginError::Retryable(m) => outcome.problem = Some(Problem::Retry(m)),
                PluginError::Fatal(m) => {
                    outcome.problem = Some(Problem::Fatal(m));
                }
            }
        }
        let stored = self.emit(events).await;
        self.status
            .record_events(stored, now_us(), cursor.as_deref());
        outcome
    }

    /// Stamp, store (waiting for room) and publish events; returns how many.
    async fn emit(&self, events: Vec<Event>) -> usize {
        if events.is_empty() {
            return 0;
        }
        let now = now_us();
        let total = events.len();
        let records: Vec<Record> = {
            let mut recent = lock(&self.recent);
            events
                .into_iter()
                .map(|e| Record::from_event(e, &self.spec.id, &self.ingest.node, now))
                .filter(|r| recent.insert(&r.id))
                .collect()
        };
        let count = records.len();
        self.status
            .duplicates
            .fetch_add((total - count) as u64, std::sync::atomic::Ordering::Relaxed);
        if records.is_empty() {
            return 0;
        }
        if self.ingest.hub.has_subscribers() {
            self.ingest.hub.publish(&records);
        }
        tokio::select! {
            result = self.ingest.store.submit(records) => {
                if let Err(e) = result {
                    self.status.error(format!("store unavailable: {e}"));
                }
            }
            () = self.cancel.cancelled() => {
                self.status.error("stopped while waiting for the store; the last batch was not stored");
            }
        }
        count
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
        lock(&self.connector.instance).close(self.connector.session);
        for step in &self.chain {
            lock(&step.instance).close(step.session);
        }
    }
}
