//! When a plugin fails on a batch, nothing of the batch is lost:
//!
//! - a transform step that fails is retried on the same events (after the instance's restart
//!   backoff, or `sources.transform_retry_ms`), up to `sources.transform_retries` times, while
//!   the source waits; the steps before it are not run again;
//! - events that fail a step every time are found by trying halves of the batch on a
//!   **probe**: a fresh instance of the step's plugin of its own (configured as the step is),
//!   so a crash on a poisoned event never restarts the instance other sources share, and
//!   poison costs them at most one retry. Each event that fails alone becomes a dead letter;
//!   the rest goes on through the shared step;
//! - frames or responses a connector calls bad input are told apart the same way: each is
//!   decoded alone on a probe; those that fail become dead letters.
//!
//! A probe starts from a fresh session, so it can only tell events apart whose failure does
//! not depend on the step's state; when the probe finds no culprit, the whole batch that
//! still fails becomes dead letters (nothing is dropped, and a replay stores it).

use std::sync::Arc;
use std::time::Duration;

use super::{Bound, SourceCtx};
use crate::clock::now_us;
use crate::deadletter::{DeadLetter, DeadMeta, DeadStage};
use crate::plugin::{CallError, ConnectorInstance, Event, Plugin, PluginError, TransformInstance};
use crate::source::{Input, Problem};

/// A step's plugin and its configuration: what a probe instance needs.
#[derive(Clone)]
pub(crate) struct Probe {
    pub(crate) plugin: Plugin,
    pub(crate) config: Arc<str>,
}

impl Probe {
    /// The plugin's digest, as dead letters name it.
    pub(crate) fn digest(&self) -> String {
        self.plugin.manifest().digest.to_string()
    }

    /// Run `events` through the step on an instance of its own: why they fail, if they do.
    async fn transform_fails(&self, events: Vec<Event>) -> Option<String> {
        let (plugin, config) = (self.plugin.clone(), self.config.clone());
        let run = move || {
            let mut instance = TransformInstance::new(plugin)?;
            let session = instance.configure(&config).ok()?;
            instance
                .process(session, &events)
                .err()
                .map(|e| e.to_string())
        };
        tokio::task::spawn_blocking(run)
            .await
            .unwrap_or_else(|e| Some(format!("the probe panicked: {e}")))
    }

    /// Decode each input alone on an instance of its own (a fresh session each, with no
    /// cursor): the bad-input message of each, if it has one.
    async fn bad_inputs(&self, input: Arc<Input>) -> Vec<Option<String>> {
        let (plugin, config) = (self.plugin.clone(), self.config.clone());
        let run = move || {
            let Some(mut instance) = ConnectorInstance::new(plugin) else {
                return Vec::new();
            };
            let mut one = |decode: &mut dyn FnMut(
                &mut ConnectorInstance,
                u64,
            )
                -> Result<crate::plugin::Decoded, CallError>| {
                let session = instance.open(&config, None).ok()?;
                let verdict = match decode(&mut instance, session) {
                    Ok(decoded) => decoded.errors.into_iter().find_map(|e| match e {
                        PluginError::BadInput(m) => Some(m),
                        _ => None,
                    }),
                    Err(e) => Some(e.to_string()),
                };
                instance.close(session);
                verdict
            };
            match &*input {
                Input::Frames(frames) => frames
                    .iter()
                    .map(|f| one(&mut |i, s| i.on_frames(s, std::slice::from_ref(f))))
                    .collect(),
                Input::Responses(responses) => responses
                    .iter()
                    .map(|r| one(&mut |i, s| i.on_responses(s, std::slice::from_ref(r))))
                    .collect(),
            }
        };
        tokio::task::spawn_blocking(run).await.unwrap_or_default()
    }
}

/// The dead letter of one input (frame or response) the connector refused.
fn input_letter(ctx: &SourceCtx, input: &Input, at: usize, reason: String) -> DeadLetter {
    let (raw, meta) = match input {
        Input::Frames(frames) => (
            frames[at].data.clone(),
            DeadMeta {
                input: Some("frame".into()),
                received_us: Some(frames[at].received_at),
                ..DeadMeta::default()
            },
        ),
        Input::Responses(responses) => (
            responses[at].body.clone(),
            DeadMeta {
                input: Some("response".into()),
                tag: Some(responses[at].tag.clone()),
                status: Some(responses[at].status),
                received_us: Some(responses[at].received_at),
                ..DeadMeta::default()
            },
        ),
    };
    DeadLetter {
        source: ctx.source.to_string(),
        stage: DeadStage::Decode,
        plugin: Some(ctx.connector.probe.digest()),
        step: None,
        reason,
        raw,
        meta,
        at_us: now_us(),
    }
}

/// The dead letter of an event a step (or, with `step` = `None`, the connector) refused.
pub(super) fn event_letter(
    ctx: &SourceCtx,
    step: Option<usize>,
    event: Event,
    reason: String,
) -> DeadLetter {
    let (stage, plugin) = match step {
        Some(i) => (DeadStage::Transform, ctx.chain[i].probe.digest()),
        None => (DeadStage::Decode, ctx.connector.probe.digest()),
    };
    DeadLetter {
        source: ctx.source.to_string(),
        stage,
        plugin: Some(plugin),
        step: step.map(|i| i as u32),
        reason,
        raw: event.payload,
        meta: DeadMeta {
            input: Some("event".into()),
            stream: Some(event.stream),
            key: event.key,
            upstream_id: event.upstream_id,
            event_time_us: event.event_time,
            ..DeadMeta::default()
        },
        at_us: now_us(),
    }
}

impl SourceCtx {
    /// The inputs of a batch the connector called bad input (`errors`, in input order, as
    /// the SDK reports them), as dead letters: told apart by decoding each alone on a probe
    /// when only some were bad.
    pub(super) async fn refused_inputs(
        &self,
        input: &Arc<Input>,
        errors: Vec<String>,
    ) -> Vec<DeadLetter> {
        let count = match &**input {
            Input::Frames(f) => f.len(),
            Input::Responses(r) => r.len(),
        };
        if errors.len() >= count {
            return (0..count)
                .zip(errors)
                .map(|(at, why)| input_letter(self, input, at, why))
                .collect();
        }
        let verdicts = self.connector.probe.bad_inputs(input.clone()).await;
        let bad: Vec<(usize, String)> = verdicts
            .into_iter()
            .enumerate()
            .filter_map(|(at, v)| v.map(|why| (at, why)))
            .collect();
        if bad.len() == errors.len() {
            return bad
                .into_iter()
                .map(|(at, why)| input_letter(self, input, at, why))
                .collect();
        }
        // The connector's verdict depends on its session's state: keep the whole batch.
        let why = format!(
            "{} of these {count} inputs were bad input ({}); which could not be told apart, \
             so the batch is kept whole (a replay stores the good ones once)",
            errors.len(),
            errors.join("; ")
        );
        (0..count)
            .map(|at| input_letter(self, input, at, why.clone()))
            .collect()
    }

    /// Run `events` through the chain from step `from` on, recovering from failures (see the
    /// module doc). Events that cannot be processed are added to `dead`. Fails only when a
    /// step says the source cannot go on (a fatal error), or the source is stopping.
    pub(super) async fn run_chain(
        &self,
        from: usize,
        mut events: Vec<Event>,
        dead: &mut Vec<DeadLetter>,
    ) -> Result<Vec<Event>, Problem> {
        for at in from..self.chain.len() {
            if events.is_empty() {
                break;
            }
            events = self.run_step(at, events, dead).await?;
        }
        Ok(events)
    }

    async fn run_step(
        &self,
        at: usize,
        events: Vec<Event>,
        dead: &mut Vec<DeadLetter>,
    ) -> Result<Vec<Event>, Problem> {
        let step = &self.chain[at];
        let settings = &self.ingest.settings;
        let mut events = events;
        let mut retries = 0u32;
        // Isolations that found no culprit: the failure came from the shared step (its
        // state, the machine), not from an event; after the second, the batch is kept whole.
        let mut unexplained = 0u32;
        loop {
            let (result, back) = call_step(step, events).await;
            events = back;
            let error = match result {
                Ok(out) => return Ok(out),
                Err(error) => error,
            };
            let message = error.to_string();
            self.status.error(format!("transform step {at}: {message}"));
            let wait = match &error {
                CallError::Plugin {
                    error: PluginError::Fatal(m),
                    ..
                } => return Err(self.fatal(at, events, m.clone(), dead)),
                CallError::NoSession(_) => return Err(self.fatal(at, events, message, dead)),
                // The instance is restarting (another source's batch crashed it): wait for
                // it, however often; its backoff is bounded, and it instantiates again.
                CallError::BackingOff { wait, .. } => {
                    tokio::select! {
                        () = tokio::time::sleep((*wait).max(Duration::from_millis(1))) => continue,
                        () = self.cancel.cancelled() => return Err(stopped(at, &message)),
                    }
                }
                CallError::Plugin {
                    error: PluginError::Retryable(_),
                    ..
                }
                | CallError::Instantiate { .. } => {
                    Some(Duration::from_millis(settings.transform_retry_ms))
                }
                // A crash, a deadline, the memory cap, a refused event: find the culprits on
                // a probe instead of crashing the shared instance again.
                _ => None,
            };
            if let Some(wait) = wait
                && retries < settings.transform_retries
            {
                retries += 1;
                tokio::select! {
                    () = tokio::time::sleep(wait.max(Duration::from_millis(1))) => continue,
                    () = self.cancel.cancelled() => return Err(stopped(at, &message)),
                }
            }
            // The rest of the batch goes on; what fails alone is a dead letter.
            let (good, bad) = isolate(&step.probe, events).await;
            let culprits = bad.len();
            if culprits == 0 {
                unexplained += 1;
                if unexplained < 2 {
                    // No event fails alone: try the shared step again, with fresh retries.
                    events = good;
                    retries = 0;
                    continue;
                }
                for event in good {
                    dead.push(event_letter(
                        self,
                        Some(at),
                        event,
                        format!(
                            "step {at} failed on this batch again and again, and no event of \
                             it fails alone on a fresh instance: {message}"
                        ),
                    ));
                }
                return Ok(Vec::new());
            }
            for (event, why) in bad {
                dead.push(event_letter(self, Some(at), event, why));
            }
            self.status.error(format!(
                "transform step {at}: {culprits} event(s) failed alone and went to the \
                 dead-letter store; the rest of the batch goes on"
            ));
            events = good;
            if events.is_empty() {
                return Ok(Vec::new());
            }
            // The good events go through the shared step again, with fresh retries.
            retries = 0;
        }
    }

    /// A step said the source cannot go on: the events it was given are kept as dead letters
    /// (the source's cursor may pass them: nothing is lost), and the source stops.
    fn fatal(
        &self,
        at: usize,
        events: Vec<Event>,
        message: String,
        dead: &mut Vec<DeadLetter>,
    ) -> Problem {
        for event in events {
            let why = format!("step {at} stopped the source: {message}");
            dead.push(event_letter(self, Some(at), event, why));
        }
        Problem::Fatal(message)
    }
}

/// The source is stopping while a step waits to be retried: the batch is not stored, and its
/// cursor not committed (the next session takes it up from the last one).
fn stopped(at: usize, message: &str) -> Problem {
    Problem::Retry(format!(
        "stopped while retrying transform step {at}: {message}"
    ))
}

/// Run one step on its shared instance; the events come back with the result, so a retry
/// needs no copy of them.
async fn call_step(
    step: &Bound<TransformInstance>,
    events: Vec<Event>,
) -> (Result<Vec<Event>, CallError>, Vec<Event>) {
    let shared = Arc::new(events);
    let input = shared.clone();
    let session = step.session;
    let result = step.worker.call(move |t| t.process(session, &input)).await;
    // The call's closure (and its reference) is gone once it has answered.
    let events = Arc::try_unwrap(shared).unwrap_or_else(|still| (*still).clone());
    (result, events)
}

/// Split `events` into those that go through the probe and those that fail alone (with
/// why), keeping the order of the good ones: halves are tried, first half first, until a
/// failing part is a single event.
async fn isolate(probe: &Probe, events: Vec<Event>) -> (Vec<Event>, Vec<(Event, String)>) {
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    let mut parts = vec![events];
    while let Some(mut part) = parts.pop() {
        if part.is_empty() {
            continue;
        }
        match probe.transform_fails(part.clone()).await {
            None => good.append(&mut part),
            Some(why) if part.len() == 1 => bad.push((part.pop().expect("one"), why)),
            Some(_) => {
                let rest = part.split_off(part.len() / 2);
                parts.push(rest);
                parts.push(part);
            }
        }
    }
    (good, bad)
}
