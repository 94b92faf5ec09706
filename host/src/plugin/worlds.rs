//! The plugin worlds a host runs, whichever WIT version a component was built against: the
//! current bindings, or the frozen `0.1.0` ones behind an adapter. Callers see one
//! [`ConnectorWorld`] and one [`TransformWorld`] with the current types.
//!
//! A `0.1.0` connector has no `backfill` (it asks for nothing as it starts), and its frames,
//! responses, plans and requests are converted field by field (one copy of each frame's bytes
//! on the way in); events and errors are the same types in both versions.

use wasmtime::Store;
use wasmtime::component::ResourceAny;

use super::manifest::Kind;
use super::runtime::Pre;
use super::sandbox::Sandbox;
use super::wit::v0_1::connector::exports::anode::plugin::source as old;
use super::wit::{
    self, Decoded, Event, Frame, Heartbeat, HttpPlan, HttpRequest, HttpResponse, Plan, PluginError,
    WebsocketPlan, WitManifest,
};

type Call<T> = wasmtime::Result<T>;

/// The calls common to both plugin worlds.
pub(crate) trait World: Sized {
    const KIND: Kind;
    fn start(pre: &Pre, store: &mut Store<Sandbox>) -> Option<Call<Self>>;
    fn describe(&self, store: &mut Store<Sandbox>) -> Call<WitManifest>;
    fn open(
        &self,
        store: &mut Store<Sandbox>,
        config: &str,
        cursor: Option<&str>,
    ) -> Call<Result<ResourceAny, PluginError>>;
    /// Give a session re-opened after a crash the state it had handed out last (a
    /// transform's `checkpoint`); nothing by default.
    fn reopen_with(
        &self,
        store: &mut Store<Sandbox>,
        session: ResourceAny,
        state: &[u8],
    ) -> Call<Result<(), PluginError>> {
        let _ = (store, session, state);
        Ok(Ok(()))
    }
}

/// A connector instance's exports.
pub(crate) enum ConnectorWorld {
    Now(wit::connector::Connector),
    V0_1(wit::v0_1::connector::Connector),
}

/// A transform instance's exports.
pub(crate) enum TransformWorld {
    Now(wit::transform::Transform),
    V0_1(wit::v0_1::transform::Transform),
    /// A transform that also exports `checkpoint`.
    Stateful(wit::stateful::StatefulTransform),
}

impl World for ConnectorWorld {
    const KIND: Kind = Kind::Connector;
    fn start(pre: &Pre, store: &mut Store<Sandbox>) -> Option<Call<Self>> {
        match pre {
            Pre::Connector(pre) => Some(pre.instantiate(store).map(ConnectorWorld::Now)),
            Pre::ConnectorV0_1(pre) => Some(pre.instantiate(store).map(ConnectorWorld::V0_1)),
            Pre::Transform(_) | Pre::TransformV0_1(_) | Pre::StatefulTransform(_) => None,
        }
    }

    fn describe(&self, store: &mut Store<Sandbox>) -> Call<WitManifest> {
        match self {
            ConnectorWorld::Now(w) => w.anode_plugin_source().call_describe(store),
            ConnectorWorld::V0_1(w) => w.anode_plugin_source().call_describe(store),
        }
    }

    fn open(
        &self,
        store: &mut Store<Sandbox>,
        config: &str,
        cursor: Option<&str>,
    ) -> Call<Result<ResourceAny, PluginError>> {
        match self {
            ConnectorWorld::Now(w) => w.anode_plugin_source().call_open(store, config, cursor),
            ConnectorWorld::V0_1(w) => w.anode_plugin_source().call_open(store, config, cursor),
        }
    }
}

impl ConnectorWorld {
    pub(crate) fn backfill(
        &self,
        store: &mut Store<Sandbox>,
        session: ResourceAny,
    ) -> Call<Vec<HttpRequest>> {
        match self {
            ConnectorWorld::Now(w) => w
                .anode_plugin_source()
                .session()
                .call_backfill(store, session),
            ConnectorWorld::V0_1(_) => Ok(Vec::new()),
        }
    }

    pub(crate) fn plan(&self, store: &mut Store<Sandbox>, session: ResourceAny) -> Call<Plan> {
        match self {
            ConnectorWorld::Now(w) => w.anode_plugin_source().session().call_plan(store, session),
            ConnectorWorld::V0_1(w) => w
                .anode_plugin_source()
                .session()
                .call_plan(store, session)
                .map(plan),
        }
    }

    pub(crate) fn on_frames(
        &self,
        store: &mut Store<Sandbox>,
        session: ResourceAny,
        frames: &[Frame],
    ) -> Call<Result<Decoded, PluginError>> {
        match self {
            ConnectorWorld::Now(w) => w
                .anode_plugin_source()
                .session()
                .call_on_frames(store, session, frames),
            ConnectorWorld::V0_1(w) => {
                let frames: Vec<old::Frame> = frames
                    .iter()
                    .map(|f| old::Frame {
                        data: f.data.clone(),
                        received_at: f.received_at,
                    })
                    .collect();
                let result = w
                    .anode_plugin_source()
                    .session()
                    .call_on_frames(store, session, &frames)?;
                Ok(result.map(decoded))
            }
        }
    }

    pub(crate) fn on_responses(
        &self,
        store: &mut Store<Sandbox>,
        session: ResourceAny,
        responses: &[HttpResponse],
    ) -> Call<Result<Decoded, PluginError>> {
        match self {
            ConnectorWorld::Now(w) => w
                .anode_plugin_source()
                .session()
                .call_on_responses(store, session, responses),
            ConnectorWorld::V0_1(w) => {
                let responses: Vec<old::HttpResponse> = responses
                    .iter()
                    .map(|r| old::HttpResponse {
                        tag: r.tag.clone(),
                        status: r.status,
                        body: r.body.clone(),
                        received_at: r.received_at,
                    })
                    .collect();
                let result = w
                    .anode_plugin_source()
                    .session()
                    .call_on_responses(store, session, &responses)?;
                Ok(result.map(decoded))
            }
        }
    }
}

impl World for TransformWorld {
    const KIND: Kind = Kind::Transform;
    fn start(pre: &Pre, store: &mut Store<Sandbox>) -> Option<Call<Self>> {
        match pre {
            Pre::Transform(pre) => Some(pre.instantiate(store).map(TransformWorld::Now)),
            Pre::TransformV0_1(pre) => Some(pre.instantiate(store).map(TransformWorld::V0_1)),
            Pre::StatefulTransform(pre) => {
                Some(pre.instantiate(store).map(TransformWorld::Stateful))
            }
            Pre::Connector(_) | Pre::ConnectorV0_1(_) => None,
        }
    }

    fn describe(&self, store: &mut Store<Sandbox>) -> Call<WitManifest> {
        match self {
            TransformWorld::Now(w) => w.anode_plugin_transformer().call_describe(store),
            TransformWorld::V0_1(w) => w.anode_plugin_transformer().call_describe(store),
            TransformWorld::Stateful(w) => w.anode_plugin_transformer().call_describe(store),
        }
    }

    fn open(
        &self,
        store: &mut Store<Sandbox>,
        config: &str,
        _cursor: Option<&str>,
    ) -> Call<Result<ResourceAny, PluginError>> {
        match self {
            TransformWorld::Now(w) => w.anode_plugin_transformer().call_configure(store, config),
            TransformWorld::V0_1(w) => w.anode_plugin_transformer().call_configure(store, config),
            TransformWorld::Stateful(w) => {
                w.anode_plugin_transformer().call_configure(store, config)
            }
        }
    }

    fn reopen_with(
        &self,
        store: &mut Store<Sandbox>,
        session: ResourceAny,
        state: &[u8],
    ) -> Call<Result<(), PluginError>> {
        self.restore(store, session, state)
    }
}

impl TransformWorld {
    pub(crate) fn process(
        &self,
        store: &mut Store<Sandbox>,
        step: ResourceAny,
        events: &[Event],
    ) -> Call<Result<Vec<Event>, PluginError>> {
        match self {
            TransformWorld::Now(w) => w
                .anode_plugin_transformer()
                .chain_step()
                .call_process(store, step, events),
            TransformWorld::V0_1(w) => w
                .anode_plugin_transformer()
                .chain_step()
                .call_process(store, step, events),
            TransformWorld::Stateful(w) => w
                .anode_plugin_transformer()
                .chain_step()
                .call_process(store, step, events),
        }
    }

    pub(crate) fn tick(
        &self,
        store: &mut Store<Sandbox>,
        step: ResourceAny,
        now_us: i64,
    ) -> Call<Result<Vec<Event>, PluginError>> {
        match self {
            TransformWorld::Now(w) => w
                .anode_plugin_transformer()
                .chain_step()
                .call_tick(store, step, now_us),
            TransformWorld::V0_1(w) => w
                .anode_plugin_transformer()
                .chain_step()
                .call_tick(store, step, now_us),
            TransformWorld::Stateful(w) => w
                .anode_plugin_transformer()
                .chain_step()
                .call_tick(store, step, now_us),
        }
    }

    /// The step's state (`checkpoint.snapshot`); none for a transform without `checkpoint`.
    pub(crate) fn snapshot(
        &self,
        store: &mut Store<Sandbox>,
        step: ResourceAny,
    ) -> Call<Option<Vec<u8>>> {
        match self {
            TransformWorld::Stateful(w) => w.anode_plugin_checkpoint().call_snapshot(store, step),
            TransformWorld::Now(_) | TransformWorld::V0_1(_) => Ok(None),
        }
    }

    /// Give a step back its state (`checkpoint.restore`); nothing for a transform without it.
    pub(crate) fn restore(
        &self,
        store: &mut Store<Sandbox>,
        step: ResourceAny,
        state: &[u8],
    ) -> Call<Result<(), PluginError>> {
        match self {
            TransformWorld::Stateful(w) => {
                w.anode_plugin_checkpoint().call_restore(store, step, state)
            }
            TransformWorld::Now(_) | TransformWorld::V0_1(_) => Ok(Ok(())),
        }
    }
}

fn request(r: old::HttpRequest) -> HttpRequest {
    HttpRequest {
        method: r.method,
        url: r.url,
        headers: r.headers,
        body: r.body,
        tag: r.tag,
    }
}

fn plan(p: old::Plan) -> Plan {
    match p {
        old::Plan::Websocket(ws) => Plan::Websocket(WebsocketPlan {
            url: ws.url,
            on_connect: ws.on_connect,
            heartbeat: ws.heartbeat.map(|h| Heartbeat {
                interval_ms: h.interval_ms,
                message: h.message,
            }),
        }),
        old::Plan::Http(http) => Plan::Http(HttpPlan {
            requests: http.requests.into_iter().map(request).collect(),
            interval_ms: http.interval_ms,
        }),
    }
}

fn decoded(d: old::Decoded) -> Decoded {
    Decoded {
        events: d.events,
        errors: d.errors,
        requests: d.requests.into_iter().map(request).collect(),
        replies: d.replies,
        cursor: d.cursor,
    }
}
