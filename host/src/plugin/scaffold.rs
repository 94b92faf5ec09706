//! `anode plugin new`: a plugin that builds as is, in Rust (a crate on `anode-plugin-sdk`),
//! Python (componentize-py) or JavaScript (componentize-js).

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

/// The language a new plugin is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// A crate on `anode-plugin-sdk`, built by cargo for `wasm32-wasip2`.
    Rust,
    /// A module on `anode_plugin.py`, built by componentize-py.
    Python,
    /// An ES module on `anode-plugin.js`, built by componentize-js.
    JavaScript,
}

/// A template file: its path in the new plugin and its text (`{name}` and `{kind}` replaced).
type Template = (&'static str, &'static str);

/// The Python and JavaScript templates: the connector's files, then what a transform
/// replaces them with.
const PYTHON: &[Template] = &[
    ("app.py", include_str!("templates/python/app.py")),
    (
        "anode_plugin.py",
        include_str!("templates/python/anode_plugin.py"),
    ),
    ("test_app.py", include_str!("templates/python/test_app.py")),
    ("build.sh", include_str!("templates/python/build.sh")),
    (
        "requirements-build.txt",
        include_str!("templates/python/requirements-build.txt"),
    ),
    ("README.md", include_str!("templates/python/README.md")),
    (".gitignore", include_str!("templates/python/.gitignore")),
];
const PYTHON_TRANSFORM: &[Template] = &[
    ("app.py", include_str!("templates/python/transform/app.py")),
    (
        "test_app.py",
        include_str!("templates/python/transform/test_app.py"),
    ),
];
const JAVASCRIPT: &[Template] = &[
    ("app.js", include_str!("templates/js/app.js")),
    (
        "anode-plugin.js",
        include_str!("templates/js/anode-plugin.js"),
    ),
    ("component.js", include_str!("templates/js/component.js")),
    ("app.test.js", include_str!("templates/js/app.test.js")),
    ("package.json", include_str!("templates/js/package.json")),
    ("README.md", include_str!("templates/js/README.md")),
    (".gitignore", include_str!("templates/js/.gitignore")),
];
const JAVASCRIPT_TRANSFORM: &[Template] = &[
    ("app.js", include_str!("templates/js/transform/app.js")),
    (
        "app.test.js",
        include_str!("templates/js/transform/app.test.js"),
    ),
];
/// The contract every plugin is built against, copied into Python and JavaScript plugins.
const WIT: &str = include_str!("../../../wit/plugin.wit");

fn check_name(name: &str) -> Result<(), ScaffoldError> {
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(ScaffoldError::BadName(name.to_owned()))
    }
}

fn write_files(files: impl IntoIterator<Item = (PathBuf, String)>) -> Result<(), ScaffoldError> {
    for (path, text) in files {
        let parent = path.parent().expect("files are inside dir");
        std::fs::create_dir_all(parent)
            .and_then(|()| std::fs::write(&path, text))
            .map_err(|source| ScaffoldError::Io { path, source })?;
    }
    Ok(())
}

/// Write a new Python or JavaScript plugin `<parent>/<name>`: the app, the helper module, a
/// native test, the build file and `wit/plugin.wit`. Rust plugins come from [`create`].
pub fn create_polyglot(
    parent: &Path,
    name: &str,
    kind: Kind,
    lang: Lang,
) -> Result<PathBuf, ScaffoldError> {
    check_name(name)?;
    let dir = parent.join(name);
    if dir.exists() {
        return Err(ScaffoldError::Exists(dir));
    }
    let (base, overlay) = match lang {
        Lang::Python => (PYTHON, PYTHON_TRANSFORM),
        Lang::JavaScript => (JAVASCRIPT, JAVASCRIPT_TRANSFORM),
        Lang::Rust => unreachable!("Rust plugins are made by `create`"),
    };
    let overlay: &[Template] = if kind == Kind::Transform {
        overlay
    } else {
        &[]
    };
    let kind = kind.to_string();
    let mut files: Vec<(PathBuf, String)> = base
        .iter()
        .filter(|(path, _)| !overlay.iter().any(|(o, _)| o == path))
        .chain(overlay)
        .map(|(path, text)| {
            let text = text.replace("{name}", name).replace("{kind}", &kind);
            (dir.join(path), text)
        })
        .collect();
    files.push((dir.join("wit/plugin.wit"), WIT.to_owned()));
    write_files(files)?;
    Ok(dir)
}

/// Write a new plugin crate `<parent>/<name>` depending on the SDK at `sdk`.
pub fn create(parent: &Path, name: &str, kind: Kind, sdk: &Path) -> Result<PathBuf, ScaffoldError> {
    check_name(name)?;
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
    write_files([
        (dir.join("Cargo.toml"), cargo_toml),
        (dir.join("src/lib.rs"), lib),
        (dir.join("README.md"), readme),
        (dir.join(".gitignore"), "/target\n".to_owned()),
    ])?;
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
