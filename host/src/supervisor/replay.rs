//! Replaying dead letters: each one's raw input runs again, on instances of its own, through
//! the plugin that refused it — or a fixed build of it (`plugin`) — and the steps after it in
//! its source's chain; what they now accept is stored (with the same record ids as before, so
//! a replay twice stores once) and published to subscribers, and the dead letter is marked
//! replayed. A refused row is written again as it was (its database may take it now), or
//! first through a fixing transform when `plugin` names one; a cursor is never replayed (the
//! source resumes from its last good one).
//!
//! Replays run on fresh sessions: a stateful transform (a time window) sees only the replayed
//! events, not the state its source's session had.

use serde::{Deserialize, Serialize};

use super::{NodeError, NodeState};
use crate::clock::now_us;
use crate::deadletter::{DeadQuery, DeadStage, StoredDeadLetter};
use crate::fanout::Stage;
use crate::plugin::{
    ConnectorInstance, Digest, Event, Frame, HttpResponse, Kind, Plugin, PluginError,
    TransformInstance,
};
use crate::record::{Payload, Record, RecordId, Stamp};
use crate::sink::Batch;
use crate::source::SourceSpec;

/// What to replay, and through which build.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplayRequest {
    pub source: Option<String>,
    pub stage: Option<DeadStage>,
    pub ids: Option<Vec<i64>>,
    /// A plugin (name or digest) to run instead of the one that refused each dead letter:
    /// the fixed build. It must be of the refusing plugin's kind.
    pub plugin: Option<String>,
}

/// What a replay did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayReport {
    /// Dead letters whose input went through and was stored (now marked replayed).
    pub replayed: Vec<i64>,
    /// Records stored by the replay (already stored ones count as duplicates in the store).
    pub records: usize,
    /// Dead letters that failed again or cannot be replayed, with why; they stay.
    pub failed: Vec<ReplayFailure>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplayFailure {
    pub id: i64,
    pub reason: String,
}

/// A plugin ready to run on instances of its own, and the configuration its step uses.
struct Step {
    plugin: Plugin,
    config: String,
}

impl NodeState {
    /// Replay the pending dead letters `request` selects (at most one page: run it again for
    /// more).
    pub async fn replay_dead_letters(
        &self,
        request: ReplayRequest,
    ) -> Result<ReplayReport, NodeError> {
        let query = DeadQuery {
            source: request.source.clone(),
            stage: request.stage,
            ids: request.ids.clone(),
            pending: true,
            ..DeadQuery::default()
        };
        let letters = self
            .ingest
            .store
            .dead_letters(&query)
            .await
            .map_err(|e| NodeError::Unavailable(e.to_string()))?;
        let fixed = match &request.plugin {
            Some(name) => {
                let manifest = self
                    .plugin_store
                    .resolve(name)
                    .map_err(|e| NodeError::BadRequest(e.to_string()))?;
                let digest = self.plugin(name, manifest.kind).await?;
                Some((manifest.kind, self.loaded_plugin(&digest)))
            }
            None => None,
        };
        let mut report = ReplayReport::default();
        for letter in letters {
            match self.replay_one(&letter, fixed.as_ref()).await {
                Ok(stored) => {
                    report.records += stored;
                    report.replayed.push(letter.id);
                }
                Err(reason) => report.failed.push(ReplayFailure {
                    id: letter.id,
                    reason,
                }),
            }
        }
        if !report.replayed.is_empty() {
            let done = DeadQuery {
                ids: Some(report.replayed.clone()),
                ..DeadQuery::default()
            };
            self.ingest
                .store
                .mark_replayed(&done)
                .await
                .map_err(|e| NodeError::Unavailable(e.to_string()))?;
            self.events.push(
                &self.node_id,
                "deadletter",
                format!(
                    "{} dead letter(s) replayed, {} record(s) stored",
                    report.replayed.len(),
                    report.records
                ),
            );
        }
        Ok(report)
    }

    /// Replay one dead letter: the records it now gives are stored; returns how many.
    async fn replay_one(
        &self,
        letter: &StoredDeadLetter,
        fixed: Option<&(Kind, Plugin)>,
    ) -> Result<usize, String> {
        let spec = self
            .catalog_spec(&letter.source)
            .map_err(|_| format!("source `{}` no longer exists", letter.source))?;
        let records = match letter.stage {
            DeadStage::Cursor => {
                return Err(
                    "a cursor is not replayed: the source resumes from its last good \
                            cursor"
                        .into(),
                );
            }
            DeadStage::Store => match fixed {
                // A fixing transform: the row, as an event, goes through it first.
                Some((Kind::Transform, plugin)) => {
                    let name = &plugin.manifest().name;
                    let config = spec
                        .transforms
                        .iter()
                        .find(|t| {
                            &t.plugin == name || t.plugin == plugin.manifest().digest.to_string()
                        })
                        .map_or_else(|| "{}".to_owned(), |t| t.config.to_string());
                    let step = Step {
                        plugin: plugin.clone(),
                        config,
                    };
                    self.stamp(
                        &spec,
                        run_chain(vec![step], vec![letter_event(letter)]).await?,
                    )
                }
                Some((kind, _)) => return Err(wrong_kind(*kind, Kind::Transform)),
                None => vec![stored_record(letter, &spec.id, &self.node_id)?],
            },
            DeadStage::Decode => {
                let connector = match fixed {
                    Some((Kind::Connector, plugin)) => plugin.clone(),
                    Some((kind, _)) => return Err(wrong_kind(*kind, Kind::Connector)),
                    None => self.step_plugin(&spec.plugin, Kind::Connector).await?,
                };
                let step = Step {
                    plugin: connector,
                    config: spec.config.to_string(),
                };
                let events = decode(step, letter).await?;
                let chain = self.chain_from(&spec, 0, None).await?;
                self.stamp(&spec, run_chain(chain, events).await?)
            }
            DeadStage::Transform => {
                let at = letter.step.unwrap_or(0) as usize;
                let replacement = match fixed {
                    Some((Kind::Transform, plugin)) => Some(plugin.clone()),
                    Some((kind, _)) => return Err(wrong_kind(*kind, Kind::Transform)),
                    None => None,
                };
                let chain = self.chain_from(&spec, at, replacement).await?;
                self.stamp(&spec, run_chain(chain, vec![letter_event(letter)]).await?)
            }
        };
        let count = records.len();
        self.ingest.hub.publish(&records, Stage::Decoded);
        let receipt = self
            .ingest
            .store
            .submit(Batch {
                source: spec.id.as_str().into(),
                records,
                cursor: None,
                states: Vec::new(),
                dead: Vec::new(),
            })
            .await
            .map_err(|e| e.to_string())?;
        let committed = receipt.committed().await.map_err(|e| e.to_string())?;
        self.ingest.hub.publish(&committed.records, Stage::Stored);
        if committed.refused > 0 {
            return Err(format!(
                "the store refused {} record(s) again (a new dead letter holds each)",
                committed.refused
            ));
        }
        Ok(count)
    }

    async fn step_plugin(&self, query: &str, kind: Kind) -> Result<Plugin, String> {
        let digest: Digest = self.plugin(query, kind).await.map_err(|e| e.to_string())?;
        Ok(self.loaded_plugin(&digest))
    }

    /// The source's chain from step `at` on, step `at` replaced when `replacement` is given.
    async fn chain_from(
        &self,
        spec: &SourceSpec,
        at: usize,
        replacement: Option<Plugin>,
    ) -> Result<Vec<Step>, String> {
        if at > spec.transforms.len() {
            return Err(format!(
                "the source's chain has {} steps now, not step {at}",
                spec.transforms.len()
            ));
        }
        let mut chain = Vec::new();
        let mut replacement = replacement;
        for (i, step) in spec.transforms.iter().enumerate().skip(at) {
            let plugin = match replacement.take().filter(|_| i == at) {
                Some(plugin) => plugin,
                None => self.step_plugin(&step.plugin, Kind::Transform).await?,
            };
            chain.push(Step {
                plugin,
                config: step.config.to_string(),
            });
        }
        Ok(chain)
    }

    fn stamp(&self, spec: &SourceSpec, events: Vec<Event>) -> Vec<Record> {
        let at = Stamp {
            source: &spec.id,
            node: &self.node_id,
            ingest_time_us: now_us(),
        };
        events
            .into_iter()
            .filter_map(|e| {
                let payload = Payload::parse(e.payload).ok()?;
                Some(at.record(e.stream, e.key, e.upstream_id, e.event_time, payload))
            })
            .collect()
    }
}

fn wrong_kind(given: Kind, wanted: Kind) -> String {
    format!("the replacement plugin is a {given}, but this dead letter was refused by a {wanted}")
}

/// The event a dead letter holds (a refused event, or a refused row as an event).
fn letter_event(letter: &StoredDeadLetter) -> Event {
    Event {
        stream: letter.meta.stream.clone().unwrap_or_default(),
        key: letter.meta.key.clone(),
        upstream_id: letter.meta.upstream_id.clone(),
        event_time: letter.meta.event_time_us,
        payload: letter.bytes.clone(),
    }
}

/// A refused row, as it was.
fn stored_record(letter: &StoredDeadLetter, source: &str, node: &str) -> Result<Record, String> {
    let id = letter
        .meta
        .record_id
        .as_deref()
        .and_then(RecordId::from_hex)
        .ok_or("the dead letter has no record id")?;
    let payload = Payload::parse(letter.bytes.clone()).map_err(|e| e.to_string())?;
    Ok(Record {
        id,
        source: source.to_owned(),
        stream: letter.meta.stream.clone().unwrap_or_default(),
        key: letter.meta.key.clone(),
        upstream_id: letter.meta.upstream_id.clone(),
        event_time_us: letter.meta.event_time_us,
        ingest_time_us: now_us(),
        node: node.to_owned(),
        payload,
    })
}

/// Decode a dead frame or response on a connector instance of its own.
async fn decode(step: Step, letter: &StoredDeadLetter) -> Result<Vec<Event>, String> {
    let (raw, meta) = (letter.bytes.clone(), letter.meta.clone());
    tokio::task::spawn_blocking(move || {
        let mut instance = ConnectorInstance::new(step.plugin).ok_or("not a connector")?;
        let session = instance
            .open(&step.config, None)
            .map_err(|e| e.to_string())?;
        let received_at = meta.received_us.unwrap_or_else(now_us);
        let decoded = if meta.input.as_deref() == Some("response") {
            let response = HttpResponse {
                tag: meta.tag.unwrap_or_default(),
                status: meta.status.unwrap_or(200),
                body: raw,
                received_at,
            };
            instance.on_responses(session, &[response])
        } else {
            let frame = Frame {
                data: raw,
                received_at,
            };
            instance.on_frames(session, &[frame])
        }
        .map_err(|e| e.to_string())?;
        let bad: Vec<String> = decoded
            .errors
            .into_iter()
            .map(|e| match e {
                PluginError::BadInput(m) | PluginError::Retryable(m) | PluginError::Fatal(m) => m,
            })
            .collect();
        if bad.is_empty() {
            Ok(decoded.events)
        } else {
            Err(format!(
                "the connector refused it again: {}",
                bad.join("; ")
            ))
        }
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Run events through a chain of steps, each on an instance of its own.
async fn run_chain(chain: Vec<Step>, events: Vec<Event>) -> Result<Vec<Event>, String> {
    tokio::task::spawn_blocking(move || {
        let mut events = events;
        for (i, step) in chain.into_iter().enumerate() {
            let mut instance = TransformInstance::new(step.plugin).ok_or("not a transform")?;
            let session = instance
                .configure(&step.config)
                .map_err(|e| e.to_string())?;
            events = instance
                .process(session, &events)
                .map_err(|e| format!("step {i} of the replay refused it again: {e}"))?;
        }
        Ok(events)
    })
    .await
    .map_err(|e| e.to_string())?
}
