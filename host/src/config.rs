//! The node's configuration: one TOML file, overridden by `ANODE_*` environment variables.
//!
//! Every capacity and timeout has a named default here. An environment variable
//! `ANODE_<SECTION>__<KEY>` (double underscore between levels) overrides `[section] key`;
//! for example `ANODE_PLUGINS__CALL_TIMEOUT_MS=250` or `ANODE_DATA_DIR=/var/lib/anode`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the node keeps its plugins, compiled cache and state.
    pub data_dir: PathBuf,
    /// This node.
    pub node: NodeSettings,
    /// The HTTP API, `/ws` and `/metrics`.
    pub api: ApiSettings,
    /// Gossip membership and the replicated catalog.
    pub cluster: crate::cluster::ClusterSettings,
    /// Sandbox limits for every plugin.
    pub plugins: PluginLimits,
    /// Source drivers.
    pub sources: SourceSettings,
    /// Where records are stored.
    pub store: crate::sink::StoreSettings,
    /// WebSocket subscribers.
    pub fanout: crate::fanout::FanoutSettings,
    /// Sources to run at start (`[[source]]` tables).
    #[serde(rename = "source")]
    pub source_specs: Vec<crate::source::SourceSpec>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            node: NodeSettings::default(),
            api: ApiSettings::default(),
            cluster: crate::cluster::ClusterSettings::default(),
            plugins: PluginLimits::default(),
            sources: SourceSettings::default(),
            store: crate::sink::StoreSettings::default(),
            fanout: crate::fanout::FanoutSettings::default(),
            source_specs: Vec::new(),
        }
    }
}

/// Identity of this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSettings {
    /// Stable node id; generated once and kept in the data dir when not set.
    pub id: Option<String>,
}

/// The HTTP listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    /// Address of the API, dashboard, `/ws` and `/metrics`.
    pub bind: std::net::SocketAddr,
    /// Bearer token for mutating routes; required when `bind` is not a loopback address.
    pub token: Option<String>,
    /// `host:port` other nodes reach this API at; default `bind`.
    pub advertise: Option<String>,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            bind: std::net::SocketAddr::from(([127, 0, 0, 1], DEFAULT_API_PORT)),
            token: None,
            advertise: None,
        }
    }
}

/// Default port of the HTTP API.
pub const DEFAULT_API_PORT: u16 = 7400;

/// Bounds of the source drivers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceSettings {
    /// First wait before reconnecting a failed source; doubles (with jitter) per failure.
    pub reconnect_min_ms: u64,
    /// Longest wait before reconnecting.
    pub reconnect_max_ms: u64,
    /// A WebSocket connect (TCP, TLS, upgrade) that takes longer fails.
    pub connect_timeout_ms: u64,
    /// A WebSocket with no message for this long is reconnected.
    pub idle_timeout_ms: u64,
    /// Most WebSocket frames handed to the connector in one call.
    pub frame_batch_max: usize,
    /// An HTTP request that takes longer fails.
    pub http_timeout_ms: u64,
    /// Shortest polling interval, whatever a plugin asks for.
    pub http_min_interval_ms: u64,
    /// Tries per HTTP request (429 and 5xx are retried after `Retry-After` or a backoff).
    pub http_attempts: u32,
    /// HTTP requests of one source in flight at once.
    pub http_concurrency: usize,
    /// Follow-up rounds per poll (pages, blocks) before the poll is cut short.
    pub http_max_rounds: usize,
    /// Requests per round; more are dropped with an error.
    pub http_max_requests_per_round: usize,
    /// Largest HTTP response body accepted.
    pub http_max_body_bytes: usize,
    /// Connector instances per plugin (sources are spread over them).
    pub instances_per_plugin: usize,
    /// Record ids remembered per source to drop repeats (a poll returning the same items)
    /// before they are published; at least the largest number of items one poll returns.
    pub dedupe_window: usize,
}

impl Default for SourceSettings {
    fn default() -> Self {
        SourceSettings {
            reconnect_min_ms: 250,
            reconnect_max_ms: 30_000,
            connect_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            frame_batch_max: 512,
            http_timeout_ms: 10_000,
            http_min_interval_ms: 50,
            http_attempts: 5,
            http_concurrency: 8,
            http_max_rounds: 50,
            http_max_requests_per_round: 200,
            http_max_body_bytes: 16 * 1024 * 1024,
            instances_per_plugin: 2,
            dedupe_window: 2048,
        }
    }
}

/// Default data directory, relative to where the node starts.
pub const DEFAULT_DATA_DIR: &str = "anode-data";

/// Limits applied to every plugin call and instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginLimits {
    /// A call into a plugin is interrupted after this long.
    pub call_timeout_ms: u64,
    /// Linear memory one instance may grow to.
    pub memory_limit_mib: usize,
    /// Resolution of call deadlines.
    pub epoch_tick_ms: u64,
    /// First wait before re-creating a crashed instance; doubles on each crash.
    pub restart_backoff_min_ms: u64,
    /// Longest wait before re-creating a crashed instance.
    pub restart_backoff_max_ms: u64,
    /// How much of a plugin's stderr is kept to explain a crash.
    pub stderr_tail_bytes: usize,
    /// Log lines a plugin may write per call; the rest are dropped.
    pub log_lines_per_call: u32,
    /// Longer log lines are cut.
    pub log_line_max_bytes: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            call_timeout_ms: 500,
            memory_limit_mib: 64,
            epoch_tick_ms: 5,
            restart_backoff_min_ms: 100,
            restart_backoff_max_ms: 30_000,
            stderr_tail_bytes: 4096,
            log_lines_per_call: 16,
            log_line_max_bytes: 1024,
        }
    }
}

impl PluginLimits {
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms.max(1))
    }

    pub fn epoch_tick(&self) -> Duration {
        Duration::from_millis(self.epoch_tick_ms.clamp(1, self.call_timeout_ms.max(1)))
    }

    pub fn restart_backoff_min(&self) -> Duration {
        Duration::from_millis(self.restart_backoff_min_ms)
    }

    pub fn restart_backoff_max(&self) -> Duration {
        Duration::from_millis(self.restart_backoff_max_ms.max(self.restart_backoff_min_ms))
    }
}

/// The configuration could not be read or is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Toml { path: PathBuf, message: String },
    #[error(
        "environment variable {var}: `{key}` does not fit the config ({message}); \
         use ANODE_<SECTION>__<KEY>, for example ANODE_PLUGINS__CALL_TIMEOUT_MS=250"
    )]
    Env {
        var: String,
        key: String,
        message: String,
    },
    #[error("invalid configuration{}: {message}", origin.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    Invalid {
        origin: Option<PathBuf>,
        message: String,
    },
}

impl Config {
    /// Read `path` (if given), then apply `ANODE_*` variables from `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>().map_err(|e| ConfigError::Toml {
                    path: path.to_owned(),
                    message: e.to_string(),
                })?
            }
            None => toml::Table::new(),
        };
        for (var, value) in env {
            let Some(key) = var.strip_prefix("ANODE_") else {
                continue;
            };
            // Variables of the CLI (ANODE_CONFIG, ANODE_URL, ...) are not config keys.
            if !key.contains("__") && !TOP_LEVEL_KEYS.contains(&key.to_ascii_lowercase().as_str()) {
                continue;
            }
            let path: Vec<String> = key.split("__").map(|p| p.to_ascii_lowercase()).collect();
            set_path(&mut table, &path, parse_env_value(&value)).map_err(|message| {
                ConfigError::Env {
                    var: var.clone(),
                    key: path.join("."),
                    message,
                }
            })?;
        }
        Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Invalid {
            origin: path.map(Path::to_owned),
            message: e.to_string(),
        })
    }
}

/// Top-level scalar keys that a single-level `ANODE_<KEY>` variable may set.
const TOP_LEVEL_KEYS: &[&str] = &["data_dir"];

/// An environment value as TOML when it parses as a TOML value, else as a string.
fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut current = table;
    for part in parents {
        current = current
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("`{part}` is not a section"))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("anode.toml");
        std::fs::write(
            &file,
            "data_dir = \"/x\"\n[plugins]\ncall_timeout_ms = 100\n",
        )
        .unwrap();
        let config = Config::load(
            Some(&file),
            env(&[
                ("ANODE_PLUGINS__MEMORY_LIMIT_MIB", "32"),
                ("ANODE_URL", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/x"));
        assert_eq!(config.plugins.call_timeout_ms, 100);
        assert_eq!(config.plugins.memory_limit_mib, 32);
        assert_eq!(
            config.plugins.epoch_tick_ms,
            PluginLimits::default().epoch_tick_ms
        );
    }

    #[test]
    fn errors_name_the_key() {
        let err = Config::load(None, env(&[("ANODE_PLUGINS__CALL_TIMEOUT", "5")])).unwrap_err();
        assert!(err.to_string().contains("call_timeout"), "{err}");
        let err =
            Config::load(None, env(&[("ANODE_PLUGINS__CALL_TIMEOUT_MS", "soon")])).unwrap_err();
        assert!(err.to_string().contains("call_timeout_ms"), "{err}");
    }
}
