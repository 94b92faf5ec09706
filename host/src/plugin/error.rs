//! What can go wrong loading or calling a plugin, and what state each failure leaves.

use std::time::Duration;

use super::manifest::ManifestError;
use super::wit::PluginError;

/// A `.wasm` could not become a runnable plugin. Nothing was stored or run.
#[derive(Debug, thiserror::Error)]
pub enum PluginLoadError {
    #[error("not a WebAssembly file (it does not start with the `\\0asm` header)")]
    NotWasm,
    #[error(
        "this is a core WebAssembly module, not a component: build the plugin with \
         `cargo build --release --target wasm32-wasip2` (rustc links a component for that target)"
    )]
    CoreModule,
    #[error(
        "digest mismatch: expected sha256 {expected} but the bytes hash to {actual}; \
         the file was not compiled"
    )]
    DigestMismatch { expected: String, actual: String },
    #[error("the component is invalid or could not be compiled: {0}")]
    Compile(String),
    #[error(
        "the component does not implement an aNode plugin world: it exports [{exports}], but \
         a connector exports `{}` and a transform exports `{}` (see wit/plugin.wit; \
         `@0.1.0` plugins are loaded too)",
        super::wit::CONNECTOR_EXPORT,
        super::wit::TRANSFORM_EXPORT
    )]
    WrongWorld { exports: String },
    #[error("the component cannot be linked against this host: {0}")]
    Link(String),
    #[error("calling the plugin's describe() failed: {0}")]
    Describe(#[source] CallError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// A call into a plugin failed. Unless the variant says otherwise the instance was discarded
/// and will be re-created (after a backoff) on the next call; sessions are re-opened with
/// their last cursor.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(
        "plugin `{plugin}` ran past its {limit:?} call deadline and was interrupted; \
         it will be restarted"
    )]
    Timeout { plugin: String, limit: Duration },
    #[error(
        "plugin `{plugin}` ran past its {fuel} units of fuel in one call and was stopped; it \
         will be restarted (raise `plugins.fuel_per_call` if it needs more)"
    )]
    OutOfFuel { plugin: String, fuel: u64 },
    #[error(
        "plugin `{plugin}` tried to use more than its memory limit of {limit_mib} MiB and was \
         stopped; it will be restarted (raise `plugins.memory_limit_mib`, or the plugin's \
         `x-anode-limits.memory_mib` within `plugins.max_memory_limit_mib`, if it needs more)"
    )]
    OutOfMemory { plugin: String, limit_mib: usize },
    #[error("plugin `{plugin}` crashed (trap: {trap}){}; it will be restarted",
        if stderr.is_empty() { String::new() } else { format!(", it printed: {stderr}") })]
    Trap {
        plugin: String,
        trap: String,
        stderr: String,
    },
    #[error("plugin `{plugin}` could not be instantiated: {message}")]
    Instantiate { plugin: String, message: String },
    /// The instance is kept; nothing was called.
    #[error("plugin `{plugin}` is restarting after a failure; next attempt in {wait:?}")]
    BackingOff { plugin: String, wait: Duration },
    /// The plugin returned an error value; the instance is kept.
    #[error("plugin `{plugin}` returned an error: {}", error_text(error))]
    Plugin { plugin: String, error: PluginError },
    /// The session id is not open on this instance; nothing was called.
    #[error("no open session {0}")]
    NoSession(u64),
}

impl CallError {
    /// Whether the instance was lost (trap, timeout, out of memory).
    pub fn is_crash(&self) -> bool {
        matches!(
            self,
            CallError::Timeout { .. }
                | CallError::OutOfFuel { .. }
                | CallError::OutOfMemory { .. }
                | CallError::Trap { .. }
        )
    }
}

/// A plugin's error value as a sentence.
pub(crate) fn error_text(error: &PluginError) -> String {
    match error {
        PluginError::BadInput(m) => format!("bad input: {m}"),
        PluginError::Retryable(m) => format!("retryable: {m}"),
        PluginError::Fatal(m) => format!("fatal: {m}"),
    }
}
