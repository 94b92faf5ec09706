//! Write aNode plugins in Rust.
//!
//! An aNode plugin is a WebAssembly component built for `wasm32-wasip2`. This crate hides the
//! component plumbing behind two traits and two macros:
//!
//! - [`Connector`] + [`export_connector!`]: turn a source's WebSocket frames or HTTP responses
//!   into [`Event`]s. The host does all I/O; the connector only says what to connect to
//!   ([`Plan`]) and decodes what arrives.
//! - [`Transform`] + [`export_transform!`]: turn a batch of events into another batch.
//!
//! Plugin logic is plain Rust: the same code runs inside the component and in native
//! `cargo test`, where [`testing`] drives it the way the host does (batched calls).
//!
//! ```no_run
//! use anode_plugin_sdk::prelude::*;
//!
//! struct Echo;
//! impl Connector for Echo {
//!     fn manifest() -> Manifest { Manifest::new("echo", "0.1.0", "Every frame as an event") }
//!     fn open(_config: &str, _cursor: Option<&str>) -> Result<Self, PluginError> { Ok(Echo) }
//!     fn plan(&self) -> Plan { Plan::websocket("ws://127.0.0.1:9000/feed").into() }
//!     fn on_frame(&mut self, frame: &Frame, out: &mut Output) -> Result<(), PluginError> {
//!         let value = json::parse(&frame.data)?;
//!         out.emit(Event::new("echo", &value));
//!         Ok(())
//!     }
//! }
//! export_connector!(Echo);
//! ```

mod batch;
mod connector;
pub mod host;
pub mod json;
pub mod jsonrpc;
pub mod symbol;
pub mod testing;
pub mod time;
mod transform;
mod types;
pub mod watermark;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod __wit;

pub use connector::{Connector, Output};
pub use transform::Transform;
pub use types::{
    Event, Frame, Heartbeat, HttpPlan, HttpRequest, HttpResponse, Manifest, Plan, PluginError,
    PluginKind, WebSocketPlan,
};

/// Everything a plugin usually needs, in one `use`.
pub mod prelude {
    pub use crate::host::{self, LogLevel};
    pub use crate::{
        Connector, Event, Frame, Heartbeat, HttpPlan, HttpRequest, HttpResponse, Manifest, Output,
        Plan, PluginError, Transform, WebSocketPlan, export_connector, export_transform, json,
        jsonrpc, symbol, time,
    };
    pub use serde::{Deserialize, Serialize};
    pub use serde_json::{Value, json};
}

#[doc(hidden)]
pub use serde_json as __serde_json;

/// Make a type implementing [`Connector`] the component's `source` export.
///
/// Expands to nothing outside `wasm32`, so the crate also builds and tests natively.
#[macro_export]
macro_rules! export_connector {
    ($connector:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __AnodeConnector = $crate::__wit::ConnectorGlue<$connector>;
            $crate::__wit::export_connector_world!(
                __AnodeConnector with_types_in $crate::__wit::connector
            );
        };
    };
}

/// Make a type implementing [`Transform`] the component's `transformer` export.
///
/// Expands to nothing outside `wasm32`, so the crate also builds and tests natively.
#[macro_export]
macro_rules! export_transform {
    ($transform:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __AnodeTransform = $crate::__wit::TransformGlue<$transform>;
            $crate::__wit::export_transform_world!(
                __AnodeTransform with_types_in $crate::__wit::transform
            );
        };
    };
}
