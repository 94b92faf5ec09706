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
    /// Bearer token for changes (and reads); required when `bind` is not a loopback address.
    pub token: Option<String>,
    /// Bearer token for reads: every `GET` of `/api/v1`, `/ws`, `/api/v1/live`, `/metrics`
    /// (`api.token` reads too). Without it reads are open, which only a loopback API allows.
    pub read_token: Option<String>,
    /// `host:port` other nodes reach this API at; default `bind`.
    pub advertise: Option<String>,
    /// Connections held open at most (HTTP, `/ws`, dashboard, node-to-node); past it new
    /// ones wait to be accepted until one closes.
    pub max_connections: usize,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            bind: std::net::SocketAddr::from(([127, 0, 0, 1], DEFAULT_API_PORT)),
            token: None,
            read_token: None,
            advertise: None,
            max_connections: 16_384,
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
        // Values that read as TOML numbers or booleans but may be meant as text.
        let mut typed_guesses = Vec::new();
        for (var, value) in env {
            let Some(key) = var.strip_prefix("ANODE_") else {
                continue;
            };
            // Variables of the CLI (ANODE_CONFIG, ANODE_URL, ...) are not config keys.
            if !key.contains("__") && !TOP_LEVEL_KEYS.contains(&key.to_ascii_lowercase().as_str()) {
                continue;
            }
            let mut path: Vec<String> = key.split("__").map(|p| p.to_ascii_lowercase()).collect();
            let env_error = |key: &[String], message: String| ConfigError::Env {
                var: var.clone(),
                key: key.join("."),
                message,
            };
            // `…_FILE`: the value is in that file (container secrets), taken as text.
            let file_value = match path.last().and_then(|l| l.strip_suffix("_file")) {
                Some(field) if !field.is_empty() => {
                    let field = field.to_owned();
                    *path.last_mut().expect("not empty") = field;
                    let text = std::fs::read_to_string(&value).map_err(|e| {
                        env_error(&path, format!("cannot read the file `{value}`: {e}"))
                    })?;
                    Some(text.trim_end_matches(['\r', '\n']).to_owned())
                }
                _ => None,
            };
            let parsed = match file_value {
                Some(text) => toml::Value::String(text),
                None => parse_env_value(&value),
            };
            if !parsed.is_str() && !parsed.is_table() && !parsed.is_array() {
                typed_guesses.push((path.clone(), value.clone()));
            }
            set_path(&mut table, &path, parsed).map_err(|m| env_error(&path, m))?;
        }
        let invalid = |e: toml::de::Error| ConfigError::Invalid {
            origin: path.map(Path::to_owned),
            message: e.to_string(),
        };
        let mut result = Config::deserialize(toml::Value::Table(table.clone()));
        // `ANODE_API__TOKEN=123456` is a token, not a number: where a value read as a number
        // or boolean does not fit its field, it is taken as the text it was.
        // Errors come one at a time, in the deserializer's order: go round until none helps.
        let mut progressed = true;
        while progressed && !typed_guesses.is_empty() {
            progressed = false;
            let Err(error) = &result else { break };
            let error = error.to_string();
            let Some(at) = typed_guesses
                .iter()
                .position(|(key, _)| error.contains(&format!("`{}`", key.join("."))))
            else {
                break;
            };
            let (key, raw) = typed_guesses.swap_remove(at);
            let mut retry = table.clone();
            set_path(&mut retry, &key, toml::Value::String(raw)).expect("set before");
            let again = Config::deserialize(toml::Value::Table(retry.clone()));
            let fixed = match &again {
                Ok(_) => true,
                Err(e) => !e.to_string().contains(&format!("`{}`", key.join("."))),
            };
            if fixed {
                table = retry;
                result = again;
                progressed = true;
            }
        }
        result.map_err(invalid)
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
    fn environment_values_take_their_field_type_and_files_hold_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("key");
        std::fs::write(&secret, "a-cluster-key-from-a-file\n").unwrap();
        let config = Config::load(
            None,
            env(&[
                ("ANODE_API__TOKEN", "123456"),
                ("ANODE_API__READ_TOKEN", "true"),
                ("ANODE_PLUGINS__MEMORY_LIMIT_MIB", "32"),
                ("ANODE_CLUSTER__KEY_FILE", secret.to_str().unwrap()),
            ]),
        )
        .unwrap();
        assert_eq!(config.api.token.as_deref(), Some("123456"));
        assert_eq!(config.api.read_token.as_deref(), Some("true"));
        assert_eq!(config.plugins.memory_limit_mib, 32);
        assert_eq!(config.cluster.key, ["a-cluster-key-from-a-file"]);
        // A number where a number belongs but out of its range still names the key.
        let err = Config::load(None, env(&[("ANODE_PLUGINS__MEMORY_LIMIT_MIB", "-1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("memory_limit_mib"), "{err}");
        let err = Config::load(None, env(&[("ANODE_API__TOKEN_FILE", "/no/such/file")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("api.token") && err.contains("/no/such/file"),
            "{err}"
        );
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
