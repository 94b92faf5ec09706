//! `anode source`: add (one, or many from a file), list, remove and upgrade sources of a running
//! node.

use anyhow::Context;
use clap::Subcommand;

use super::{Remote, call, print_rows, tokio_runtime};

#[derive(Debug, Subcommand)]
pub(super) enum SourceCommand {
    /// Add a source to the cluster, or many at once with --file.
    Add {
        /// Source id: letters, digits, `-`, `_`, `.`.
        #[arg(required_unless_present = "file")]
        id: Option<String>,
        /// Connector plugin (name or digest).
        #[arg(long, required_unless_present = "file")]
        plugin: Option<String>,
        /// Add every source of a file at once (all or none): TOML with `[[source]]` tables,
        /// as in the node's config, or a JSON array of specs.
        #[arg(long, conflicts_with_all = ["id", "plugin", "replace"])]
        file: Option<std::path::PathBuf>,
        /// Connector config: JSON, or @file.json (`anode plugin inspect <plugin>` shows an example).
        #[arg(long, default_value = "{}")]
        plugin_config: String,
        /// A transform step `plugin` or `plugin=JSON`, in order; repeatable.
        #[arg(long = "transform")]
        transforms: Vec<String>,
        /// Replace a source with the same id.
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// List the node's sources with their state.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Stop and remove a source.
    Remove {
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Move a plugin's sources to another of its versions: all at once (or `--promote` a
    /// canary), a `--canary P` share first, or `--rollback` a canary. Prints what moved and
    /// the error rates of the canary beside the rest.
    Upgrade {
        /// Only these sources (default: every source of the plugin).
        ids: Vec<String>,
        /// The plugin's name.
        #[arg(long)]
        plugin: String,
        /// The version or digest (8+ hex digits of it) to move to.
        #[arg(
            long,
            required_unless_present = "rollback",
            conflicts_with = "rollback"
        )]
        to: Option<String>,
        /// Move only the sources whose canary hash falls in the first P% (a number in (0, 100]).
        #[arg(long, value_name = "P", conflicts_with_all = ["promote", "rollback"])]
        canary: Option<f64>,
        /// Finish a canary: move every other source too (the same as no --canary).
        #[arg(long, conflicts_with = "rollback")]
        promote: bool,
        /// Move the canary's sources back to the version each ran before.
        #[arg(long)]
        rollback: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

pub(super) fn source_command(command: SourceCommand) -> anyhow::Result<()> {
    tokio_runtime()?.block_on(async move {
        let client = reqwest::Client::new();
        match command {
            SourceCommand::Add { file: Some(file), remote, .. } => {
                let specs = sources_file(&file)?;
                let request = client.post(format!("{}/api/v1/sources", remote.url));
                let answer = call(authorised(request, &remote).json(&specs), &remote.url).await?;
                println!("{} sources added", answer["added"]);
            }
            SourceCommand::Add { id, plugin, plugin_config, transforms, replace, remote, .. } => {
                let (Some(id), Some(plugin)) = (id, plugin) else {
                    anyhow::bail!("give a source id and --plugin, or --file");
                };
                let config = json_arg(&plugin_config).context("--plugin-config")?;
                let transforms = transforms
                    .iter()
                    .map(|t| {
                        let (plugin, config) = t.split_once('=').unwrap_or((t, "{}"));
                        Ok(serde_json::json!({ "plugin": plugin, "config": json_arg(config)? }))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()
                    .context("--transform")?;
                let spec = serde_json::json!({ "id": id, "plugin": plugin, "config": config, "transforms": transforms });
                let request = if replace {
                    client.put(format!("{}/api/v1/sources/{id}", remote.url))
                } else {
                    client.post(format!("{}/api/v1/sources", remote.url))
                };
                call(authorised(request, &remote).json(&spec), &remote.url).await?;
                println!("source `{id}` {}", if replace { "replaced" } else { "added" });
            }
            SourceCommand::List { json, remote } => {
                let request = client.get(format!("{}/api/v1/sources", remote.url));
                let sources = call(authorised(request, &remote), &remote.url).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&sources)?);
                } else {
                    print_sources(&sources);
                }
            }
            SourceCommand::Upgrade { ids, plugin, to, canary, rollback, remote, .. } => {
                let body = serde_json::json!({"plugin": plugin, "to": to, "ids": ids,
                    "canary_percent": canary, "rollback": rollback});
                let request = client.post(format!("{}/api/v1/rollouts", remote.url));
                let outcome = call(authorised(request, &remote).json(&body), &remote.url).await?;
                let moved = outcome["moved"].as_array().map_or(0, Vec::len);
                if rollback {
                    println!("{moved} source(s) of `{plugin}` rolled back");
                } else {
                    println!(
                        "{moved} source(s) of `{plugin}` moved to {} (sha256:{})",
                        outcome["version"].as_str().unwrap_or("?"),
                        outcome["to"].as_str().unwrap_or("?")
                    );
                }
                let request = client.get(format!("{}/api/v1/sources", remote.url));
                let sources = call(authorised(request, &remote), &remote.url).await?;
                print_rollout(&outcome, &sources);
            }
            SourceCommand::Remove { id, remote } => {
                let request = client.delete(format!("{}/api/v1/sources/{id}", remote.url));
                call(authorised(request, &remote), &remote.url).await?;
                println!("source `{id}` removed");
            }
        }
        Ok(())
    })
}

/// The specs in a sources file: TOML `[[source]]` tables (as in the config), or a JSON array.
fn sources_file(path: &std::path::Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        return serde_json::from_str(&text)
            .with_context(|| format!("{} is not a JSON array of source specs", path.display()));
    }
    #[derive(serde::Deserialize)]
    struct File {
        source: Vec<serde_json::Value>,
    }
    let file: File = toml::from_str(&text).with_context(|| {
        format!(
            "{} is not a sources file: expected [[source]] tables with id, plugin and config, \
             as in the node's config",
            path.display()
        )
    })?;
    Ok(file.source)
}

/// JSON given inline or as `@file`.
fn json_arg(text: &str) -> anyhow::Result<serde_json::Value> {
    let text = match text.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?
        }
        None => text.to_owned(),
    };
    serde_json::from_str(&text).with_context(|| format!("not valid JSON: {text}"))
}

pub(super) fn authorised(
    request: reqwest::RequestBuilder,
    remote: &Remote,
) -> reqwest::RequestBuilder {
    match &remote.token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

/// The canary's sources beside the rest: how many, records, inputs and the share of inputs
/// that were errors, from each source's owner.
fn print_rollout(outcome: &serde_json::Value, sources: &serde_json::Value) {
    let by_id: std::collections::HashMap<&str, &serde_json::Value> = sources
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s["id"].as_str()?, s)))
        .collect();
    let rows: Vec<[String; 5]> = ["canary", "rest"]
        .into_iter()
        .map(|group| {
            let ids: Vec<&str> = outcome[group]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
                .collect();
            let sum = |key: &str| -> u64 {
                ids.iter()
                    .filter_map(|id| by_id.get(id)?[key].as_u64())
                    .sum()
            };
            let (inputs, errors) = (sum("inputs"), sum("errors"));
            let rate = if inputs == 0 {
                "-".to_owned()
            } else {
                format!("{:.2}%", errors as f64 * 100.0 / inputs as f64)
            };
            [
                group.to_owned(),
                ids.len().to_string(),
                sum("events").to_string(),
                format!("{errors}/{inputs}"),
                rate,
            ]
        })
        .collect();
    let header = ["GROUP", "SOURCES", "EVENTS", "ERRORS/INPUTS", "ERROR RATE"].map(String::from);
    print_rows(&header, &rows);
}

fn print_sources(sources: &serde_json::Value) {
    let rows: Vec<[String; 8]> = sources
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let text = |k: &str| {
                s.get(k)
                    .map(|v| {
                        v.as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| v.to_string())
                    })
                    .unwrap_or_default()
            };
            [
                text("id"),
                text("plugin"),
                text("state"),
                text("events"),
                format!(
                    "{:.1}",
                    s.get("events_per_sec")
                        .and_then(|v| v.as_f64())
                        .unwrap_or(0.0)
                ),
                text("errors"),
                text("reconnects"),
                s.get("last_error")
                    .and_then(|e| e.as_str())
                    .map(str::to_owned)
                    .unwrap_or_else(|| text("target")),
            ]
        })
        .collect();
    let header = [
        "ID",
        "PLUGIN",
        "STATE",
        "EVENTS",
        "EV/S",
        "ERRORS",
        "RECONNECTS",
        "TARGET / LAST ERROR",
    ]
    .map(String::from);
    print_rows(&header, &rows);
}
