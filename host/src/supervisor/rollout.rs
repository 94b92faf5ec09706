//! Moving a plugin's sources to another of its versions on a live cluster
//! (`POST /api/v1/rollouts`, `anode source upgrade`).
//!
//! - An upgrade with `canary_percent` moves only the sources whose canary hash (rendezvous
//!   score of the source id under `canary/<plugin>`) falls in the first P% of the range, and
//!   notes on each the plugin it ran before (`previous_plugin`).
//! - An upgrade without it (a promotion) moves every other source of the plugin and clears
//!   those notes: the rollout is finished.
//! - A rollback moves every source that has a note back to the plugin it names.
//!
//! The specs change through the catalog as any replace does, all or none, so each moved
//! source restarts on its owner from its stored cursor.

use serde::{Deserialize, Serialize};

use super::{NodeError, NodeState};
use crate::source::SourceSpec;

/// What to move (the body of `POST /api/v1/rollouts`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    /// The plugin's name: its sources are those naming it or one of its digests.
    pub plugin: String,
    /// The version (`1.2.0`) or digest (or a prefix of one) to move to; not for a rollback.
    #[serde(default)]
    pub to: Option<String>,
    /// Move only the sources whose canary hash falls in the first P% (0 < P ≤ 100).
    #[serde(default)]
    pub canary_percent: Option<f64>,
    /// Only these sources (default: all of the plugin's).
    #[serde(default)]
    pub ids: Vec<String>,
    /// Move the sources a canary moved back to the plugin they ran before.
    #[serde(default)]
    pub rollback: bool,
}

/// What a rollout did.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutOutcome {
    pub plugin: String,
    /// The digest the moved sources now name.
    pub to: String,
    pub version: String,
    /// The sources this request moved.
    pub moved: Vec<String>,
    /// The plugin's sources still marked as a canary (they name `previous_plugin`).
    pub canary: Vec<String>,
    /// The plugin's other sources.
    pub rest: Vec<String>,
}

/// Where `id` falls in `[0, 100)` for a canary of `plugin`: stable, and spread evenly.
pub fn canary_position(plugin: &str, id: &str) -> f64 {
    let score = crate::cluster::assign::score(&format!("canary/{plugin}"), id);
    score as f64 / (u64::MAX as f64 + 1.0) * 100.0
}

/// One version of a plugin, as the catalog knows it.
struct Build {
    version: String,
    digest: String,
}

impl NodeState {
    /// Move sources of a plugin between its versions; see the module's documentation.
    pub async fn rollout(&self, request: RolloutRequest) -> Result<RolloutOutcome, NodeError> {
        // The cluster's installed builds and this node's (built-in ones are in no catalog).
        let mut builds: Vec<Build> = self
            .cluster
            .catalog
            .live("plugin/")
            .into_iter()
            .filter_map(|e| e.value)
            .filter(|m| m["name"] == request.plugin.as_str())
            .map(|m| Build {
                version: m["version"].as_str().unwrap_or_default().to_owned(),
                digest: m["digest"].as_str().unwrap_or_default().to_owned(),
            })
            .collect();
        for m in self.plugin_store.list().unwrap_or_default() {
            let digest = m.digest.to_hex();
            if m.name == request.plugin && !builds.iter().any(|b| b.digest == digest) {
                builds.push(Build {
                    version: m.version,
                    digest,
                });
            }
        }
        if builds.is_empty() {
            return Err(NodeError::NotFound(format!(
                "no plugin `{}` in this cluster (`anode plugin list` shows the installed ones)",
                request.plugin
            )));
        }
        let of_plugin =
            |plugin: &str| plugin == request.plugin || builds.iter().any(|b| b.digest == plugin);
        let mut sources: Vec<SourceSpec> = self
            .cluster
            .catalog
            .live("source/")
            .into_iter()
            .filter_map(|e| serde_json::from_value::<SourceSpec>(e.value?).ok())
            .filter(|s| of_plugin(&s.plugin))
            .collect();
        sources.sort_by(|a, b| a.id.cmp(&b.id));
        for id in &request.ids {
            if !sources.iter().any(|s| &s.id == id) {
                return Err(NodeError::BadRequest(format!(
                    "source `{id}` does not run plugin `{}`",
                    request.plugin
                )));
            }
        }
        let chosen = |s: &SourceSpec| request.ids.is_empty() || request.ids.contains(&s.id);

        let (target, changed): (Option<&Build>, Vec<SourceSpec>) = if request.rollback {
            if request.to.is_some() || request.canary_percent.is_some() {
                return Err(NodeError::BadRequest(
                    "a rollback takes no `to` and no `canary_percent`: it moves the canary's \
                     sources back to what each ran before"
                        .into(),
                ));
            }
            let back = sources
                .iter()
                .filter(|s| chosen(s))
                .filter_map(|s| {
                    let previous = s.previous_plugin.clone()?;
                    Some(SourceSpec {
                        plugin: previous,
                        previous_plugin: None,
                        ..s.clone()
                    })
                })
                .collect::<Vec<_>>();
            if back.is_empty() {
                return Err(NodeError::Conflict(format!(
                    "no source of `{}` is in a canary: nothing to roll back",
                    request.plugin
                )));
            }
            (None, back)
        } else {
            let to = request.to.as_deref().ok_or_else(|| {
                NodeError::BadRequest("say which version to move to (`to`)".into())
            })?;
            let matching: Vec<&Build> = builds
                .iter()
                .filter(|b| b.version == to || (to.len() >= 8 && b.digest.starts_with(to)))
                .collect();
            let target = match matching.as_slice() {
                [one] => *one,
                [] => {
                    let known: Vec<String> = builds
                        .iter()
                        .map(|b| format!("{} ({})", b.version, &b.digest[..12.min(b.digest.len())]))
                        .collect();
                    return Err(NodeError::BadRequest(format!(
                        "plugin `{}` has no version or digest `{to}`; it has {}",
                        request.plugin,
                        known.join(", ")
                    )));
                }
                _ => {
                    return Err(NodeError::BadRequest(format!(
                        "`{to}` names {} builds of `{}`: give the digest",
                        matching.len(),
                        request.plugin
                    )));
                }
            };
            let canary = match request.canary_percent {
                Some(p) if !(p > 0.0 && p <= 100.0) => {
                    return Err(NodeError::BadRequest(format!(
                        "canary_percent is {p}; give a share in (0, 100]"
                    )));
                }
                other => other,
            };
            let changed = sources
                .iter()
                .filter(|s| chosen(s))
                .filter_map(|s| {
                    let on_target = s.plugin == target.digest;
                    match canary {
                        Some(p) => (!on_target && canary_position(&request.plugin, &s.id) < p)
                            .then(|| SourceSpec {
                                plugin: target.digest.clone(),
                                previous_plugin: Some(
                                    s.previous_plugin
                                        .clone()
                                        .unwrap_or_else(|| s.plugin.clone()),
                                ),
                                ..s.clone()
                            }),
                        // Promotion: everything to the target, and the canary notes go.
                        None => (!on_target || s.previous_plugin.is_some()).then(|| SourceSpec {
                            plugin: target.digest.clone(),
                            previous_plugin: None,
                            ..s.clone()
                        }),
                    }
                })
                .collect();
            (Some(target), changed)
        };

        let moved: Vec<String> = changed
            .iter()
            .filter(|new| {
                sources
                    .iter()
                    .any(|old| old.id == new.id && old.plugin != new.plugin)
            })
            .map(|s| s.id.clone())
            .collect();
        for spec in &changed {
            if let Some(old) = sources.iter_mut().find(|s| s.id == spec.id) {
                *old = spec.clone();
            }
        }
        if !changed.is_empty() {
            self.add_sources(changed, true).await?;
        }
        let (canary, rest): (Vec<&SourceSpec>, Vec<&SourceSpec>) =
            sources.iter().partition(|s| s.previous_plugin.is_some());
        let ids = |list: Vec<&SourceSpec>| list.into_iter().map(|s| s.id.clone()).collect();
        let (to, version) = match target {
            Some(b) => (b.digest.clone(), b.version.clone()),
            None => (String::new(), String::new()),
        };
        let what = if request.rollback {
            format!(
                "rolled back {} source(s) of `{}`",
                moved.len(),
                request.plugin
            )
        } else {
            format!(
                "moved {} source(s) of `{}` to {version} ({}){}",
                moved.len(),
                request.plugin,
                &to[..12.min(to.len())],
                match request.canary_percent {
                    Some(p) => format!(" as a {p}% canary"),
                    None => String::new(),
                }
            )
        };
        self.events.push(&self.node_id, "rollout", what);
        Ok(RolloutOutcome {
            plugin: request.plugin,
            to,
            version,
            moved,
            canary: ids(canary),
            rest: ids(rest),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::canary_position;

    #[test]
    fn canary_positions_are_stable_and_spread() {
        let ids: Vec<String> = (0..1000).map(|i| format!("src-{i}")).collect();
        let below = |p: f64| {
            ids.iter()
                .filter(|id| canary_position("binance-trades", id) < p)
                .count()
        };
        assert_eq!(canary_position("a", "x"), canary_position("a", "x"));
        // 30% of 1000 within a few standard deviations (sd ≈ 14.5).
        let thirty = below(30.0);
        assert!((240..=360).contains(&thirty), "{thirty}");
        assert_eq!(below(100.0), 1000);
        assert!(below(10.0) <= thirty);
    }
}
