//! A plugin's manifest: what the catalog records and gossip carries, never the bytes.

use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::wit::{PluginKind, WitManifest};

/// The WIT package plugins are built against now (a host also loads `anode:plugin@0.1.0`).
pub const WIT_PACKAGE: &str = "anode:plugin@0.2.0";

/// Connector or transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Connector,
    Transform,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Connector => "connector",
            Kind::Transform => "transform",
        })
    }
}

/// Everything known about a plugin without its bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginManifest {
    pub name: String,
    pub version: String,
    pub kind: Kind,
    pub description: String,
    /// sha256 of the `.wasm` bytes: the plugin's identity.
    pub digest: Digest,
    /// Size of the `.wasm` in bytes.
    pub size: u64,
    /// JSON Schema of the configuration.
    pub config_schema: serde_json::Value,
    /// A working configuration.
    pub config_example: serde_json::Value,
    /// The WIT package the component was built against.
    pub wit: String,
    /// The publisher's signature of the digest, when the plugin was installed with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<super::signature::PluginSignature>,
}

/// `describe()` returned something the host cannot accept.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "plugin name `{0}` is invalid: use 1 to 64 lowercase letters, digits and dashes \
         (for example `binance-trades`)"
    )]
    BadName(String),
    #[error("plugin `{name}` has an empty version: set one such as `0.1.0`")]
    EmptyVersion { name: String },
    #[error("plugin `{name}` says it is a {claimed} but implements the {world} world")]
    KindMismatch {
        name: String,
        claimed: Kind,
        world: Kind,
    },
    #[error("plugin `{name}`: its {what} is not valid JSON: {error}")]
    BadJson {
        name: String,
        what: &'static str,
        error: serde_json::Error,
    },
}

impl PluginManifest {
    /// Build the manifest from what `describe()` said and what the host measured.
    pub(crate) fn from_wit(
        wit: WitManifest,
        world: Kind,
        package: &str,
        digest: Digest,
        size: u64,
    ) -> Result<Self, ManifestError> {
        let claimed = match wit.kind {
            PluginKind::Connector => Kind::Connector,
            PluginKind::Transform => Kind::Transform,
        };
        if claimed != world {
            return Err(ManifestError::KindMismatch {
                name: wit.name,
                claimed,
                world,
            });
        }
        let valid_name = !wit.name.is_empty()
            && wit.name.len() <= 64
            && wit
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid_name {
            return Err(ManifestError::BadName(wit.name));
        }
        if wit.version.trim().is_empty() {
            return Err(ManifestError::EmptyVersion { name: wit.name });
        }
        let parse = |what: &'static str, text: &str| {
            serde_json::from_str(text).map_err(|error| ManifestError::BadJson {
                name: wit.name.clone(),
                what,
                error,
            })
        };
        let config_schema = parse("config schema", &wit.config_schema)?;
        let config_example = parse("config example", &wit.config_example)?;
        Ok(PluginManifest {
            kind: world,
            name: wit.name,
            version: wit.version,
            description: wit.description,
            digest,
            size,
            config_schema,
            config_example,
            wit: package.to_owned(),
            signature: None,
        })
    }
}
