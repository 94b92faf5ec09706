//! `anode plugin new`: a plugin crate that builds as is.

use std::path::{Path, PathBuf};

use super::manifest::Kind;

/// The scaffold could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ScaffoldError {
    #[error(
        "`{0}` is not a valid plugin name: use 1 to 64 lowercase letters, digits and dashes, \
         starting with a letter"
    )]
    BadName(String),
    #[error("{0} already exists; pick another name or directory")]
    Exists(PathBuf),
    #[error("cannot find aNode's plugin-sdk (looked for {0}); pass --sdk <path to plugin-sdk>")]
    NoSdk(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The plugin-sdk next to the sources this binary was built from, if it is still there.
pub fn default_sdk_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-sdk")
}

/// Write a new plugin crate `<parent>/<name>` depending on the SDK at `sdk`.
pub fn create(parent: &Path, name: &str, kind: Kind, sdk: &Path) -> Result<PathBuf, ScaffoldError> {
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid {
        return Err(ScaffoldError::BadName(name.to_owned()));
    }
    let sdk = sdk
        .canonicalize()
        .map_err(|_| ScaffoldError::NoSdk(sdk.to_owned()))?;
    if !sdk.join("Cargo.toml").exists() {
        return Err(ScaffoldError::NoSdk(sdk));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir));
    }
    let ident = name
        .split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect::<String>();
    let cargo_toml = CARGO_TOML
        .replace("{name}", name)
        .replace("{sdk}", &sdk.display().to_string().replace('\\', "/"));
    let lib = match kind {
        Kind::Connector => CONNECTOR_LIB,
        Kind::Transform => TRANSFORM_LIB,
    }
    .replace("{name}", name)
    .replace("{Type}", &ident);
    let readme = README
        .replace("{name}", name)
        .replace("{wasm}", &name.replace('-', "_"));
    for (path, text) in [
        (dir.join("Cargo.toml"), cargo_toml),
        (dir.join("src/lib.rs"), lib),
        (dir.join("README.md"), readme),
        (dir.join(".gitignore"), "/target\n".to_owned()),
    ] {
        let parent = path.parent().expect("files are inside dir");
        std::fs::create_dir_all(parent)
            .and_then(|()| std::fs::write(&path, text))
            .map_err(|source| ScaffoldError::Io { path, source })?;
    }
    Ok(dir)
}

const CARGO_TOML: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

# An aNode plugin: build with `cargo build --release --target wasm32-wasip2`.
[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
anode-plugin-sdk = { path = "{sdk}" }
serde = { version = "1", features = ["derive"] }
serde_json = "1"

[profile.release]
opt-level = 3
lto = true
codegen-units = 1
strip = true

# Not part of any surrounding workspace.
[workspace]
"#;

const CONNECTOR_LIB: &str = r##"//! {name}: an aNode connector. Reads a JSON WebSocket feed and emits one event per message.

use anode_plugin_sdk::prelude::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The feed to connect to.
    url: String,
    /// Messages to send after connecting (subscriptions).
    #[serde(default)]
    subscribe: Vec<Value>,
    /// Field of each message that identifies it upstream (the idempotency key).
    #[serde(default)]
    id_field: Option<String>,
}

pub struct {Type} {
    config: Config,
}

impl Connector for {Type} {
    fn manifest() -> Manifest {
        Manifest::new("{name}", env!("CARGO_PKG_VERSION"), "Every JSON message of a WebSocket feed")
            .schema(json!({
                "type": "object",
                "required": ["url"],
                "properties": {
                    "url": {"type": "string"},
                    "subscribe": {"type": "array"},
                    "id_field": {"type": "string"}
                }
            }))
            .example(json!({"url": "ws://127.0.0.1:9100/binance/ws/btcusdt@trade", "id_field": "t"}))
    }

    fn open(config: &str, _cursor: Option<&str>) -> Result<Self, PluginError> {
        Ok({Type} { config: json::config(config)? })
    }

    fn plan(&self) -> Plan {
        let plan = Plan::websocket(&self.config.url);
        self.config.subscribe.iter().fold(plan, |plan, message| plan.subscribe_json(message)).into()
    }

    fn on_frame(&mut self, frame: &Frame, out: &mut Output) -> Result<(), PluginError> {
        let message = json::parse(&frame.data)?;
        let mut event = Event::new("messages", &message);
        if let Some(id) = self.config.id_field.as_deref().and_then(|f| message.get(f)) {
            event = event.upstream_id(id.to_string());
        }
        out.emit(event);
        Ok(())
    }
}

export_connector!({Type});

#[cfg(test)]
mod tests {
    use super::*;
    use anode_plugin_sdk::testing;

    #[test]
    fn one_event_per_message_and_bad_json_is_skipped() {
        let mut c: {Type} = testing::open(r#"{"url":"ws://x","id_field":"t"}"#);
        let out = testing::frames(&mut c, &[r#"{"t":1,"p":"2"}"#, "{oops"]);
        assert_eq!(out.events.len(), 1);
        assert_eq!(out.events[0].upstream_id.as_deref(), Some("1"));
        assert!(matches!(out.errors[..], [PluginError::BadInput(_)]));
    }
}
"##;

const TRANSFORM_LIB: &str = r##"//! {name}: an aNode transform. Keeps the events of one stream and tags them.

use anode_plugin_sdk::prelude::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Only events of this stream pass.
    stream: String,
}

pub struct {Type} {
    config: Config,
}

impl Transform for {Type} {
    fn manifest() -> Manifest {
        Manifest::new("{name}", env!("CARGO_PKG_VERSION"), "Keeps one stream's events")
            .schema(json!({"type": "object", "required": ["stream"], "properties": {"stream": {"type": "string"}}}))
            .example(json!({"stream": "trades"}))
    }

    fn configure(config: &str) -> Result<Self, PluginError> {
        Ok({Type} { config: json::config(config)? })
    }

    fn process(&mut self, events: Vec<Event>, out: &mut Vec<Event>) -> Result<(), PluginError> {
        out.extend(events.into_iter().filter(|e| e.stream == self.config.stream));
        Ok(())
    }
}

export_transform!({Type});

#[cfg(test)]
mod tests {
    use super::*;
    use anode_plugin_sdk::testing;

    #[test]
    fn keeps_only_the_configured_stream() {
        let mut t = {Type}::configure(r#"{"stream":"trades"}"#).unwrap();
        let events = vec![Event::new("trades", &json!({})), Event::new("ticker", &json!({}))];
        let out = testing::process(&mut t, events).unwrap();
        assert_eq!(out.len(), 1);
    }
}
"##;

const README: &str = r#"# {name}

An aNode plugin.

    cargo test                                         # native unit tests
    cargo build --release --target wasm32-wasip2       # the component
    anode plugin install target/wasm32-wasip2/release/{wasm}.wasm
"#;
