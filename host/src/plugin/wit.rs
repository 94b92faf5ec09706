//! The one place the WIT contract becomes Rust: host bindings of both plugin worlds, of the
//! current version (`wit/plugin.wit`) and of the frozen `0.1.0` (`wit/versions/0.1.0`).
//!
//! The transform world reuses the connector world's `types` and `host` bindings, and both
//! `0.1.0` worlds reuse the current `types`, so an [`Event`] is the same type whichever kind
//! and version of plugin made it (the component model types records by shape, not by name).

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

/// Bindings of the `stateful-transform` world: a transform that also exports `checkpoint`
/// (its steps' state, for the host to keep with the source's cursor).
pub(crate) mod stateful {
    wasmtime::component::bindgen!({
        world: "stateful-transform",
        path: "../wit",
        with: {
            "anode:plugin/types": super::connector::anode::plugin::types,
            "anode:plugin/host": super::connector::anode::plugin::host,
        },
    });
}

/// Bindings of the `0.1.0` worlds. Their `types` are the current ones; their `host` interface
/// and the records of their `source` interface are their own (see `legacy.rs`).
pub(crate) mod v0_1 {
    pub(crate) mod connector {
        wasmtime::component::bindgen!({
            world: "connector",
            path: "../wit/versions/0.1.0",
            with: {
                "anode:plugin/types": crate::plugin::wit::connector::anode::plugin::types,
            },
        });
    }

    pub(crate) mod transform {
        wasmtime::component::bindgen!({
            world: "transform",
            path: "../wit/versions/0.1.0",
            with: {
                "anode:plugin/types": crate::plugin::wit::connector::anode::plugin::types,
                "anode:plugin/host": super::connector::anode::plugin::host,
            },
        });
    }
}

pub(crate) use connector::anode::plugin::host::{Host, LogLevel};
pub(crate) use connector::anode::plugin::types::Host as TypesHost;
pub(crate) use connector::anode::plugin::types::Manifest as WitManifest;
pub use connector::anode::plugin::types::{Event, PluginError, PluginKind};
pub use connector::exports::anode::plugin::source::{
    Decoded, Frame, Heartbeat, HttpPlan, HttpRequest, HttpResponse, Plan, WebsocketPlan,
};

/// The export a connector component has.
pub const CONNECTOR_EXPORT: &str = "anode:plugin/source@0.2.0";
/// The export a transform component has.
pub const TRANSFORM_EXPORT: &str = "anode:plugin/transformer@0.2.0";
/// The export of a transform whose steps hand out their state (optional).
pub const CHECKPOINT_EXPORT: &str = "anode:plugin/checkpoint@0.2.0";
/// The same exports in `0.1.0`, still loaded.
pub const CONNECTOR_EXPORT_0_1: &str = "anode:plugin/source@0.1.0";
pub const TRANSFORM_EXPORT_0_1: &str = "anode:plugin/transformer@0.1.0";
