//! `anode deadletter`: list, show, replay and purge what a node could not process.

use clap::Subcommand;
use serde_json::{Value, json};

use super::sources::authorised;
use super::{Remote, call, print_rows, tokio_runtime};

#[derive(Debug, Subcommand)]
pub(super) enum DeadLetterCommand {
    /// List dead letters, oldest first.
    List {
        #[command(flatten)]
        filter: Filter,
        /// Only those numbered after this.
        #[arg(long)]
        after: Option<i64>,
        /// At most this many (up to 1000).
        #[arg(long)]
        limit: Option<usize>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show one dead letter with its raw bytes.
    Show {
        id: i64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Run pending dead letters again through the plugin that refused them, or a fixed build
    /// (`--plugin`), and store what it now accepts.
    Replay {
        /// Only these (by number); default every pending one the filters select.
        ids: Vec<i64>,
        #[command(flatten)]
        filter: Filter,
        /// The build to replay through: a plugin name or digest (install it first).
        #[arg(long)]
        plugin: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Delete dead letters: those the filters select, or every one with --all.
    Purge {
        #[command(flatten)]
        filter: Filter,
        /// Delete every dead letter.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, clap::Args)]
pub(super) struct Filter {
    /// Only this source's.
    #[arg(long)]
    source: Option<String>,
    /// Only this stage's: decode, transform, store or cursor.
    #[arg(long)]
    stage: Option<String>,
}

impl Filter {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut query = Vec::new();
        if let Some(source) = &self.source {
            query.push(("source", source.clone()));
        }
        if let Some(stage) = &self.stage {
            query.push(("stage", stage.clone()));
        }
        query
    }
}

pub(super) fn dead_letter_command(command: DeadLetterCommand) -> anyhow::Result<()> {
    tokio_runtime()?.block_on(async move {
        let client = reqwest::Client::new();
        match command {
            DeadLetterCommand::List {
                filter,
                after,
                limit,
                json,
                remote,
            } => {
                let mut query = filter.query();
                query.extend(after.map(|a| ("after", a.to_string())));
                query.extend(limit.map(|l| ("limit", l.to_string())));
                let request = client
                    .get(format!("{}/api/v1/deadletters", remote.url))
                    .query(&query);
                let answer = call(authorised(request, &remote), &remote.url).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&answer)?);
                } else {
                    print_letters(&answer);
                }
            }
            DeadLetterCommand::Show { id, remote } => {
                let request = client.get(format!("{}/api/v1/deadletters/{id}", remote.url));
                let letter = call(authorised(request, &remote), &remote.url).await?;
                println!("{}", serde_json::to_string_pretty(&letter)?);
            }
            DeadLetterCommand::Replay {
                ids,
                filter,
                plugin,
                remote,
            } => {
                let body = json!({
                    "ids": (!ids.is_empty()).then_some(ids),
                    "source": filter.source,
                    "stage": filter.stage,
                    "plugin": plugin,
                });
                let request = client.post(format!("{}/api/v1/deadletters/replay", remote.url));
                let report = call(authorised(request, &remote).json(&body), &remote.url).await?;
                let replayed = report["replayed"].as_array().map_or(0, Vec::len);
                println!(
                    "{replayed} dead letter(s) replayed, {} record(s) stored",
                    report["records"]
                );
                for failed in report["failed"].as_array().into_iter().flatten() {
                    println!(
                        "  {} failed again: {}",
                        failed["id"],
                        failed["reason"].as_str().unwrap_or("?")
                    );
                }
            }
            DeadLetterCommand::Purge {
                filter,
                all,
                remote,
            } => {
                let mut query = filter.query();
                if all {
                    query.push(("all", "true".into()));
                }
                let request = client
                    .delete(format!("{}/api/v1/deadletters", remote.url))
                    .query(&query);
                let answer = call(authorised(request, &remote), &remote.url).await?;
                println!("{} dead letter(s) purged", answer["purged"]);
            }
        }
        Ok(())
    })
}

/// One row per dead letter: number, source, stage, plugin (short), replayed, reason.
fn print_letters(answer: &Value) {
    let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let rows: Vec<[String; 6]> = answer["deadletters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let plugin = d["plugin"]
                .as_str()
                .map_or("-".to_owned(), |p| p.chars().take(12).collect());
            let step = d["step"]
                .as_u64()
                .map_or(String::new(), |s| format!(" (step {s})"));
            let replayed = if d["replayed_us"].is_null() {
                "no"
            } else {
                "yes"
            };
            [
                d["id"].to_string(),
                text(&d["source"]),
                format!("{}{step}", text(&d["stage"])),
                plugin,
                replayed.to_owned(),
                text(&d["reason"]),
            ]
        })
        .collect();
    let header = ["ID", "SOURCE", "STAGE", "PLUGIN", "REPLAYED", "REASON"].map(str::to_owned);
    print_rows(&header, &rows);
    let written = &answer["written"];
    println!(
        "written since the node started: decode {}, transform {}, store {}, cursor {}",
        written["decode"], written["transform"], written["store"], written["cursor"]
    );
}
