//! `anode source`: add (one, or many from a file), list and remove sources of a running node.

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

fn authorised(request: reqwest::RequestBuilder, remote: &Remote) -> reqwest::RequestBuilder {
    match &remote.token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
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
