//! The plugin platform: WIT bindings, the sandboxed runtime, live instances and the
//! content-addressed plugin store.
//!
//! Bytes come in through [`PluginStore::install`] (or a peer, later), are verified against
//! their [`Digest`], compiled once by the [`PluginRuntime`] (cached on disk), described, and
//! stored. A source then gets a session on a [`ConnectorInstance`]; transforms get sessions
//! on a [`TransformInstance`].

mod digest;
mod error;
mod instance;
mod limits;
mod manifest;
mod metrics;
mod runtime;
mod sandbox;
pub mod scaffold;
mod signature;
mod store;
mod wit;
mod worker;
mod worlds;

pub use digest::{BadDigestError, Digest};
pub use error::{CallError, PluginLoadError};
pub use instance::{ConnectorInstance, SessionId, TransformInstance};
pub use limits::PluginLimits;
pub use manifest::{Kind, ManifestError, PluginManifest, WIT_PACKAGE};
pub use metrics::{PluginMetrics, PluginMetricsSnapshot};
pub use runtime::{CompileSource, Plugin, PluginRuntime};
pub use signature::{PluginSignature, Trust, keygen, sign};
pub use store::{Installed, PluginStore, StoreError};
pub use wit::{
    CONNECTOR_EXPORT, CONNECTOR_EXPORT_0_1, Decoded, Event, Frame, Heartbeat, HttpPlan,
    HttpRequest, HttpResponse, Plan, PluginError, TRANSFORM_EXPORT, TRANSFORM_EXPORT_0_1,
    WebsocketPlan,
};
pub use worker::Worker;
