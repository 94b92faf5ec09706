//! The node's configuration: one TOML file, overridden by `ANODE_*` environment variables.
//!
//! Every capacity and timeout has a named default here. An environment variable
//! `ANODE_<SECTION>__<KEY>` (double underscore between levels) overrides `[section] key`;
//! for example `ANODE_PLUGINS__CALL_TIMEOUT_MS=250` or `ANODE_DATA_DIR=/var/lib/anode`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::plugin::PluginLimits;
pub use crate::source::SourceSettings;

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

/// Default data directory, relative to where the node starts.
pub const DEFAULT_DATA_DIR: &str = "anode-data";

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
