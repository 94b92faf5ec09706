//! Component glue: generated bindings and the conversions between them and the SDK's types.
//! Only compiled for `wasm32`; plugin authors never name anything here.

use std::cell::RefCell;
use std::marker::PhantomData;

use crate::batch;
use crate::connector::{Connector, Output};
use crate::host::LogLevel;
use crate::transform::Transform;
use crate::types;

/// Bindings of the `connector` world.
pub mod connector {
    wit_bindgen::generate!({
        world: "connector",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__anode_export_connector_world",
        default_bindings_module: "anode_plugin_sdk::__wit::connector",
        generate_all,
    });
}

/// Bindings of the `stateful-transform` world: every transform exports `checkpoint` (a
/// stateless one's snapshot is none), and a host that does not know it ignores it.
pub mod transform {
    wit_bindgen::generate!({
        world: "stateful-transform",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__anode_export_transform_world",
        default_bindings_module: "anode_plugin_sdk::__wit::transform",
        generate_all,
    });
}

pub use connector::__anode_export_connector_world as export_connector_world;
pub use transform::__anode_export_transform_world as export_transform_world;

use connector::anode::plugin::host as wit_host;
use connector::anode::plugin::types as wit;
use connector::exports::anode::plugin::source as wit_source;
use transform::anode::plugin::types as wit_t;
use transform::exports::anode::plugin::checkpoint as wit_checkpoint;
use transform::exports::anode::plugin::transformer as wit_transformer;

pub(crate) fn log(level: LogLevel, message: &str) {
    let level = match level {
        LogLevel::Trace => wit_host::LogLevel::Trace,
        LogLevel::Debug => wit_host::LogLevel::Debug,
        LogLevel::Info => wit_host::LogLevel::Info,
        LogLevel::Warn => wit_host::LogLevel::Warn,
        LogLevel::Error => wit_host::LogLevel::Error,
    };
    wit_host::log(level, message);
}

pub(crate) fn now() -> i64 {
    wit_host::now()
}

// The two worlds' bindings each have their own copy of the shared types; one macro writes the
// conversions for both.
macro_rules! shared_conversions {
    ($wit:ident, $manifest_fn:ident, $error_fn:ident, $event_to:ident, $event_from:ident) => {
        fn $manifest_fn(m: types::Manifest, kind: $wit::PluginKind) -> $wit::Manifest {
            $wit::Manifest {
                name: m.name,
                version: m.version,
                kind,
                description: m.description,
                config_schema: m.config_schema,
                config_example: m.config_example,
            }
        }

        fn $error_fn(e: types::PluginError) -> $wit::PluginError {
            match e {
                types::PluginError::BadInput(m) => $wit::PluginError::BadInput(m),
                types::PluginError::Retryable(m) => $wit::PluginError::Retryable(m),
                types::PluginError::Fatal(m) => $wit::PluginError::Fatal(m),
            }
        }

        fn $event_to(e: types::Event) -> $wit::Event {
            $wit::Event {
                stream: e.stream,
                key: e.key,
                upstream_id: e.upstream_id,
                event_time: e.event_time,
                payload: e.payload,
            }
        }

        #[allow(dead_code)]
        fn $event_from(e: $wit::Event) -> types::Event {
            types::Event {
                stream: e.stream,
                key: e.key,
                upstream_id: e.upstream_id,
                event_time: e.event_time,
                payload: e.payload,
            }
        }
    };
}

shared_conversions!(wit, manifest_c, error_c, event_to_c, event_from_c);
shared_conversions!(wit_t, manifest_t, error_t, event_to_t, event_from_t);

fn request_to_wit(r: types::HttpRequest) -> wit_source::HttpRequest {
    wit_source::HttpRequest {
        method: r.method,
        url: r.url,
        headers: r.headers,
        body: r.body,
        tag: r.tag,
    }
}

fn plan_to_wit(plan: types::Plan) -> wit_source::Plan {
    match plan {
        types::Plan::WebSocket(ws) => wit_source::Plan::Websocket(wit_source::WebsocketPlan {
            url: ws.url,
            on_connect: ws.on_connect,
            heartbeat: ws.heartbeat.map(|h| wit_source::Heartbeat {
                interval_ms: h.interval_ms,
                message: h.message,
            }),
        }),
        types::Plan::Http(http) => wit_source::Plan::Http(wit_source::HttpPlan {
            requests: http.requests.into_iter().map(request_to_wit).collect(),
            interval_ms: http.interval_ms,
        }),
    }
}

fn output_to_wit(out: Output) -> wit_source::Decoded {
    wit_source::Decoded {
        events: out.events.into_iter().map(event_to_c).collect(),
        errors: out.errors.into_iter().map(error_c).collect(),
        requests: out.requests.into_iter().map(request_to_wit).collect(),
        replies: out.replies,
        cursor: out.cursor,
    }
}

/// The `source` export for a [`Connector`].
pub struct ConnectorGlue<C>(PhantomData<C>);

/// One source's session: the connector value behind the WIT resource.
pub struct SessionGlue<C>(RefCell<C>);

impl<C: Connector> wit_source::Guest for ConnectorGlue<C> {
    type Session = SessionGlue<C>;

    fn describe() -> wit::Manifest {
        manifest_c(C::manifest(), wit::PluginKind::Connector)
    }

    fn open(
        config: String,
        cursor: Option<String>,
    ) -> Result<wit_source::Session, wit::PluginError> {
        C::open(&config, cursor.as_deref())
            .map(|c| wit_source::Session::new(SessionGlue(RefCell::new(c))))
            .map_err(error_c)
    }
}

impl<C: Connector> wit_source::GuestSession for SessionGlue<C> {
    fn backfill(&self) -> Vec<wit_source::HttpRequest> {
        self.0
            .borrow_mut()
            .backfill()
            .into_iter()
            .map(request_to_wit)
            .collect()
    }

    fn plan(&self) -> wit_source::Plan {
        plan_to_wit(self.0.borrow().plan())
    }

    fn on_frames(
        &self,
        frames: Vec<wit_source::Frame>,
    ) -> Result<wit_source::Decoded, wit::PluginError> {
        let frames: Vec<types::Frame> = frames
            .into_iter()
            .map(|f| types::Frame {
                data: f.data,
                received_at: f.received_at,
            })
            .collect();
        Ok(output_to_wit(batch::frames(
            &mut *self.0.borrow_mut(),
            &frames,
        )))
    }

    fn on_responses(
        &self,
        responses: Vec<wit_source::HttpResponse>,
    ) -> Result<wit_source::Decoded, wit::PluginError> {
        let responses: Vec<types::HttpResponse> = responses
            .into_iter()
            .map(|r| types::HttpResponse {
                tag: r.tag,
                status: r.status,
                body: r.body,
                received_at: r.received_at,
            })
            .collect();
        Ok(output_to_wit(batch::responses(
            &mut *self.0.borrow_mut(),
            &responses,
        )))
    }
}

/// The `transformer` export for a [`Transform`].
pub struct TransformGlue<T>(PhantomData<T>);

/// One configured transform behind the WIT resource.
pub struct StepGlue<T>(RefCell<T>);

impl<T: Transform> wit_transformer::Guest for TransformGlue<T> {
    type ChainStep = StepGlue<T>;

    fn describe() -> wit_t::Manifest {
        manifest_t(T::manifest(), wit_t::PluginKind::Transform)
    }

    fn configure(config: String) -> Result<wit_transformer::ChainStep, wit_t::PluginError> {
        T::configure(&config)
            .map(|t| wit_transformer::ChainStep::new(StepGlue(RefCell::new(t))))
            .map_err(error_t)
    }
}

impl<T: Transform> wit_checkpoint::Guest for TransformGlue<T> {
    fn snapshot(step: wit_transformer::ChainStepBorrow<'_>) -> Option<Vec<u8>> {
        step.get::<StepGlue<T>>().0.borrow().snapshot()
    }

    fn restore(
        step: wit_transformer::ChainStepBorrow<'_>,
        state: Vec<u8>,
    ) -> Result<(), wit_t::PluginError> {
        step.get::<StepGlue<T>>()
            .0
            .borrow_mut()
            .restore(&state)
            .map_err(error_t)
    }
}

impl<T: Transform> wit_transformer::GuestChainStep for StepGlue<T> {
    fn process(&self, events: Vec<wit_t::Event>) -> Result<Vec<wit_t::Event>, wit_t::PluginError> {
        let events = events.into_iter().map(event_from_t).collect();
        batch::process(&mut *self.0.borrow_mut(), events)
            .map(|out| out.into_iter().map(event_to_t).collect())
            .map_err(error_t)
    }

    fn tick(&self, now: i64) -> Result<Vec<wit_t::Event>, wit_t::PluginError> {
        batch::tick(&mut *self.0.borrow_mut(), now)
            .map(|out| out.into_iter().map(event_to_t).collect())
            .map_err(error_t)
    }
}
