//! aNode: a decentralised data-ingestion mesh whose connectors and transforms are sandboxed
//! WebAssembly components.
//!
//! The parts, in the order data meets them:
//!
//! - [`plugin`]: the WIT contract's host side. [`plugin::PluginStore`] keeps `.wasm`
//!   components by sha256; [`plugin::PluginRuntime`] verifies, compiles (with an on-disk
//!   cache), and runs them in a sandbox (epoch deadline, memory cap, no I/O);
//!   [`plugin::ConnectorInstance`] decodes a source's frames or HTTP responses into events and
//!   [`plugin::TransformInstance`] runs a chain step over batches of events.
//! - [`record`]: events stamped with source, node, ingest time and a deterministic id, the
//!   idempotency key of every sink.
//! - [`deadletter`]: what could not be processed (a bad frame, an event a transform refuses,
//!   a row the database refuses, a cursor it cannot keep), kept with its raw bytes, stage and
//!   reason beside the records, for replay.
//! - [`config`]: one TOML file plus `ANODE_*` overrides; every bound has a named default.
//! - [`cli`]: the `anode` command.

mod bundled {
    include!(concat!(env!("OUT_DIR"), "/bundled.rs"));
}

/// Names of the first-party plugins built into this binary.
pub fn bundled_plugin_names() -> impl Iterator<Item = &'static str> {
    bundled::BUNDLED.iter().map(|(name, _)| *name)
}

pub mod api;
pub mod backoff;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod deadletter;
pub mod demo;
pub mod events;
pub mod fanout;
pub mod node;
pub(crate) mod pipeline;
pub mod plugin;
pub mod procstat;
pub mod record;
pub mod sink;
pub mod source;
pub mod supervisor;
pub(crate) mod sync;
