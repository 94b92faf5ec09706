//! The one place the WIT contract becomes Rust: host bindings of both plugin worlds.
//!
//! The transform world reuses the connector world's `types` and `host` bindings, so an
//! [`Event`] is the same type whichever kind of plugin made it.

/// Bindings of the `connector` world (and the shared `types` and `host` interfaces).
pub(crate) mod connector {
    wasmtime::component::bindgen!({
        world: "connector",
        path: "../wit",
    });
}

/// Bindings of the `transform` world.
pub(crate) mod transform {
    wasmtime::component::bindgen!({
        world: "transform",
        path: "../wit",
        with: {
            "anode:plugin/types": super::connector::anode::plugin::types,
            "anode:plugin/host": super::connector::anode::plugin::host,
        },
    });
}

pub(crate) use connector::anode::plugin::host::{Host, LogLevel};
pub(crate) use connector::anode::plugin::types::Host as TypesHost;
pub(crate) use connector::anode::plugin::types::Manifest as WitManifest;
pub use connector::anode::plugin::types::{Event, PluginError, PluginKind};
pub use connector::exports::anode::plugin::source::{
    Decoded, Frame, Heartbeat, HttpPlan, HttpRequest, HttpResponse, Plan, WebsocketPlan,
};

/// The export a connector component must have.
pub const CONNECTOR_EXPORT: &str = "anode:plugin/source@0.1.0";
/// The export a transform component must have.
pub const TRANSFORM_EXPORT: &str = "anode:plugin/transformer@0.1.0";
