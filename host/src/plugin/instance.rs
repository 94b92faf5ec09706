//! Live plugin instances. One instance (one wasmtime `Store`) serves many sessions — one per
//! source for a connector, one per chain position for a transform — so thousands of sources
//! cost thousands of small guest objects, not thousands of instances.
//!
//! Every call runs under an epoch deadline and a memory cap. A crash (trap, timeout, memory)
//! poisons only this instance: it is dropped, and the next call re-creates it after a backoff
//! and re-opens each session with its last cursor.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceAny;
use wasmtime::{Store, Trap};

use super::error::CallError;
use super::metrics::PluginMetrics;
use super::runtime::{Plugin, Pre, RuntimeInner};
use super::sandbox::Sandbox;
use super::wit::{
    Decoded, Event, Frame, HttpRequest, HttpResponse, Plan, PluginError, WitManifest,
};
use super::worlds::{ConnectorWorld, TransformWorld, World};
use crate::backoff::Backoff;

/// Identifies a session on an instance; stable across instance restarts.
pub type SessionId = u64;

/// Call `describe()` on a throwaway instance (used when a plugin is loaded).
pub(crate) fn describe(
    runtime: &Arc<RuntimeInner>,
    pre: &Pre,
    metrics: &Arc<PluginMetrics>,
) -> Result<WitManifest, CallError> {
    let name: Arc<str> = "(loading)".into();
    let memory_mib = runtime.limits.memory_limit_mib;
    let mut store = new_store(runtime, &name, memory_mib);
    let ctx = CallCtx {
        runtime,
        name: &name,
        metrics,
        memory_mib,
    };
    match pre {
        Pre::Connector(_) | Pre::ConnectorV0_1(_) => {
            let w = ctx.guard(&mut store, 0, |s| {
                ConnectorWorld::start(pre, s).expect("matching world")
            })?;
            ctx.guard(&mut store, 0, |s| w.describe(s))
        }
        Pre::Transform(_) | Pre::TransformV0_1(_) | Pre::StatefulTransform(_) => {
            let w = ctx.guard(&mut store, 0, |s| {
                TransformWorld::start(pre, s).expect("matching world")
            })?;
            ctx.guard(&mut store, 0, |s| w.describe(s))
        }
    }
}

fn new_store(runtime: &RuntimeInner, name: &Arc<str>, memory_mib: usize) -> Store<Sandbox> {
    let mut store = Store::new(
        &runtime.engine,
        Sandbox::new(name.clone(), runtime.sandbox_limits(memory_mib)),
    );
    store.limiter(|s| &mut s.memory);
    store
}

/// What a guarded call needs to know to time, limit and classify itself.
struct CallCtx<'a> {
    runtime: &'a RuntimeInner,
    name: &'a Arc<str>,
    metrics: &'a PluginMetrics,
    memory_mib: usize,
}

impl CallCtx<'_> {
    /// Run `f` under the deadline; time it; turn a wasmtime error into a [`CallError`].
    fn guard<R>(
        &self,
        store: &mut Store<Sandbox>,
        items_in: usize,
        f: impl FnOnce(&mut Store<Sandbox>) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        store.set_epoch_deadline(self.runtime.deadline_ticks);
        if self.runtime.limits.fuel_per_call > 0 {
            // Cannot fail: fuel is on in the engine whenever the limit is set.
            let _ = store.set_fuel(self.runtime.limits.fuel_per_call);
        }
        store.data_mut().log_budget = self.runtime.limits.log_lines_per_call;
        store.data_mut().warnings.clear();
        let started = Instant::now();
        let result = f(store);
        self.metrics.call(items_in, started.elapsed());
        result.map_err(|e| self.classify(e, store))
    }

    fn classify(&self, error: wasmtime::Error, store: &mut Store<Sandbox>) -> CallError {
        let plugin = self.name.to_string();
        let trap = error.downcast_ref::<Trap>().copied();
        if trap == Some(Trap::Interrupt) {
            self.metrics.timeout();
            return CallError::Timeout {
                plugin,
                limit: self.runtime.limits.call_timeout(),
            };
        }
        if trap == Some(Trap::OutOfFuel) {
            self.metrics.timeout();
            return CallError::OutOfFuel {
                plugin,
                fuel: self.runtime.limits.fuel_per_call,
            };
        }
        if store.data().memory.hit {
            self.metrics.out_of_memory();
            return CallError::OutOfMemory {
                plugin,
                limit_mib: self.memory_mib,
            };
        }
        self.metrics.trap();
        CallError::Trap {
            plugin,
            trap: trap.map_or_else(|| error.root_cause().to_string(), |t| t.to_string()),
            stderr: store.data().stderr.take(),
        }
    }
}

struct Session {
    config: String,
    cursor: Option<String>,
    /// A transform step's state as it last handed it out (or was given it): given back when
    /// the session is re-opened after a crash.
    state: Option<Vec<u8>>,
    /// The guest object; `None` until (re-)opened on the current instance.
    handle: Option<ResourceAny>,
}

struct Live<W> {
    store: Store<Sandbox>,
    bindings: W,
}

/// One instance of one plugin and the sessions open on it.
pub(crate) struct Instance<W> {
    plugin: Plugin,
    live: Option<Live<W>>,
    sessions: BTreeMap<SessionId, Session>,
    next_session: SessionId,
    backoff: Backoff,
}

impl<W: World> Instance<W> {
    fn new(plugin: Plugin) -> Option<Self> {
        let runtime = &plugin.inner.runtime;
        let matches = plugin.inner.manifest.kind == W::KIND;
        let backoff = Backoff::new(
            runtime.limits.restart_backoff_min(),
            runtime.limits.restart_backoff_max(),
        );
        matches.then_some(Instance {
            plugin,
            live: None,
            sessions: BTreeMap::new(),
            next_session: 1,
            backoff,
        })
    }

    fn ctx(&self) -> CallCtx<'_> {
        CallCtx {
            runtime: &self.plugin.inner.runtime,
            name: &self.plugin.inner.name,
            metrics: &self.plugin.inner.metrics,
            memory_mib: self.plugin.inner.memory_mib,
        }
    }

    /// Make sure an instance exists, creating one unless a restart backoff is running.
    fn ensure_live(&mut self) -> Result<(), CallError> {
        if self.live.is_some() {
            return Ok(());
        }
        if let Some(wait) = self.backoff.remaining() {
            return Err(CallError::BackingOff {
                plugin: self.plugin.inner.name.to_string(),
                wait,
            });
        }
        let inner = &self.plugin.inner;
        let mut store = new_store(&inner.runtime, &inner.name, inner.memory_mib);
        let result = self.ctx().guard(&mut store, 0, |s| {
            W::start(&inner.pre, s).expect("instance world checked at creation")
        });
        inner.metrics.instantiated();
        match result {
            Ok(bindings) => {
                for session in self.sessions.values_mut() {
                    session.handle = None;
                }
                self.live = Some(Live { store, bindings });
                Ok(())
            }
            Err(error) => {
                self.backoff.fail();
                Err(CallError::Instantiate {
                    plugin: inner.name.to_string(),
                    message: error.to_string(),
                })
            }
        }
    }

    /// Drop a crashed instance; the next call re-creates it after the backoff.
    fn poison(&mut self) {
        self.live = None;
        self.backoff.fail();
        tracing::warn!(plugin = %self.plugin.inner.name, "plugin instance discarded after a crash");
    }

    /// Run a call on the live instance, poisoning it on a crash.
    fn run<R>(
        &mut self,
        items_in: usize,
        f: impl FnOnce(&W, &mut Store<Sandbox>) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        self.ensure_live()?;
        let live = self.live.as_mut().expect("ensured above");
        let ctx = CallCtx {
            runtime: &self.plugin.inner.runtime,
            name: &self.plugin.inner.name,
            metrics: &self.plugin.inner.metrics,
            memory_mib: self.plugin.inner.memory_mib,
        };
        let bindings = &live.bindings;
        match ctx.guard(&mut live.store, items_in, |s| f(bindings, s)) {
            Ok(value) => {
                self.backoff.reset();
                Ok(value)
            }
            Err(error) => {
                if error.is_crash() {
                    self.poison();
                }
                Err(error)
            }
        }
    }

    fn plugin_error(&self, error: PluginError) -> CallError {
        self.plugin.inner.metrics.output(0, 1);
        CallError::Plugin {
            plugin: self.plugin.inner.name.to_string(),
            error,
        }
    }

    /// Open a session now, so a bad config is reported at once.
    fn open(&mut self, config: &str, cursor: Option<&str>) -> Result<SessionId, CallError> {
        let handle = self
            .run(0, |w, s| w.open(s, config, cursor))?
            .map_err(|e| self.plugin_error(e))?;
        let id = self.next_session;
        self.next_session += 1;
        self.sessions.insert(
            id,
            Session {
                config: config.to_owned(),
                cursor: cursor.map(str::to_owned),
                state: None,
                handle: Some(handle),
            },
        );
        Ok(id)
    }

    /// The session's guest object on the live instance, re-opening it after a restart.
    fn handle(&mut self, id: SessionId) -> Result<ResourceAny, CallError> {
        self.ensure_live()?;
        let session = self.sessions.get(&id).ok_or(CallError::NoSession(id))?;
        if let Some(handle) = session.handle {
            return Ok(handle);
        }
        let (config, cursor) = (session.config.clone(), session.cursor.clone());
        let state = session.state.clone();
        let handle = self
            .run(0, |w, s| w.open(s, &config, cursor.as_deref()))?
            .map_err(|e| self.plugin_error(e))?;
        if let Some(state) = state {
            // The step goes on from its last state, as the batch being retried expects.
            if let Err(e) = self.run(0, |w, s| w.reopen_with(s, handle, &state))? {
                tracing::warn!(plugin = %self.plugin.inner.name, "a re-opened step refused its state: {e:?}");
            }
        }
        if let Some(session) = self.sessions.get_mut(&id) {
            session.handle = Some(handle);
        }
        Ok(handle)
    }

    /// Call a method of a session's guest object.
    fn call_session<R>(
        &mut self,
        id: SessionId,
        items_in: usize,
        f: impl FnOnce(&W, &mut Store<Sandbox>, ResourceAny) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        let handle = self.handle(id)?;
        self.run(items_in, |w, s| f(w, s, handle))
    }

    fn close(&mut self, id: SessionId) {
        let Some(session) = self.sessions.remove(&id) else {
            return;
        };
        if let (Some(handle), Some(live)) = (session.handle, self.live.as_mut()) {
            // Runs the guest's destructor; a failure here only leaks guest memory until the
            // next restart, so it is logged, not raised.
            live.store
                .set_epoch_deadline(self.plugin.inner.runtime.deadline_ticks);
            let fuel = self.plugin.inner.runtime.limits.fuel_per_call;
            if fuel > 0 {
                let _ = live.store.set_fuel(fuel);
            }
            if let Err(e) = handle.resource_drop(&mut live.store) {
                tracing::debug!(plugin = %self.plugin.inner.name, "closing a session failed: {e:#}");
            }
        }
    }
}

/// An instance of a connector plugin; one session per source.
pub struct ConnectorInstance(Instance<ConnectorWorld>);

impl ConnectorInstance {
    pub(crate) fn new(plugin: Plugin) -> Option<Self> {
        Instance::new(plugin).map(ConnectorInstance)
    }

    /// Open a session for a source with its config and last cursor.
    pub fn open(&mut self, config: &str, cursor: Option<&str>) -> Result<SessionId, CallError> {
        self.0.open(config, cursor)
    }

    /// How the host should reach the source.
    pub fn plan(&mut self, id: SessionId) -> Result<Plan, CallError> {
        self.0.call_session(id, 0, |w, s, h| w.plan(s, h))
    }

    /// The requests the connector wants made as the source starts (its backfill from the
    /// cursor); empty for a `0.1.0` plugin.
    pub fn backfill(&mut self, id: SessionId) -> Result<Vec<HttpRequest>, CallError> {
        self.0.call_session(id, 0, |w, s, h| w.backfill(s, h))
    }

    /// Decode a batch of WebSocket frames.
    pub fn on_frames(&mut self, id: SessionId, frames: &[Frame]) -> Result<Decoded, CallError> {
        let result = self
            .0
            .call_session(id, frames.len(), |w, s, h| w.on_frames(s, h, frames))?;
        self.decoded(id, result)
    }

    /// Decode a batch of HTTP responses.
    pub fn on_responses(
        &mut self,
        id: SessionId,
        responses: &[HttpResponse],
    ) -> Result<Decoded, CallError> {
        let result = self.0.call_session(id, responses.len(), |w, s, h| {
            w.on_responses(s, h, responses)
        })?;
        self.decoded(id, result)
    }

    fn decoded(
        &mut self,
        id: SessionId,
        result: Result<Decoded, PluginError>,
    ) -> Result<Decoded, CallError> {
        let decoded = result.map_err(|e| self.0.plugin_error(e))?;
        self.0
            .plugin
            .inner
            .metrics
            .output(decoded.events.len(), decoded.errors.len());
        if let (Some(cursor), Some(session)) = (&decoded.cursor, self.0.sessions.get_mut(&id)) {
            session.cursor = Some(cursor.clone());
        }
        Ok(decoded)
    }

    /// What the plugin logged as warnings or errors during the last call (a connector with
    /// several endpoints setting one aside, say), for the source's status.
    pub fn take_warnings(&mut self) -> Vec<String> {
        self.0
            .live
            .as_mut()
            .map(|live| std::mem::take(&mut live.store.data_mut().warnings))
            .unwrap_or_default()
    }

    /// The last cursor the session reported.
    pub fn cursor(&self, id: SessionId) -> Option<&str> {
        self.0.sessions.get(&id)?.cursor.as_deref()
    }

    /// Close a session and free its guest object.
    pub fn close(&mut self, id: SessionId) {
        self.0.close(id)
    }

    /// The plugin this is an instance of.
    pub fn plugin(&self) -> &Plugin {
        &self.0.plugin
    }
}

/// An instance of a transform plugin; one session per place in a chain.
pub struct TransformInstance(Instance<TransformWorld>);

impl TransformInstance {
    pub(crate) fn new(plugin: Plugin) -> Option<Self> {
        Instance::new(plugin).map(TransformInstance)
    }

    /// Configure one step of a chain.
    pub fn configure(&mut self, config: &str) -> Result<SessionId, CallError> {
        self.0.open(config, None)
    }

    /// Run a batch through a configured step.
    pub fn process(&mut self, id: SessionId, events: &[Event]) -> Result<Vec<Event>, CallError> {
        let result = self
            .0
            .call_session(id, events.len(), |w, s, h| w.process(s, h, events))?;
        self.output(result)
    }

    /// The step's state now, for the host to keep with the source's cursor: `None` when it
    /// keeps none, or its plugin has no `checkpoint`. Remembered, and given back to the step
    /// if its instance is re-created after a crash.
    pub fn snapshot(&mut self, id: SessionId) -> Result<Option<Vec<u8>>, CallError> {
        let state = self.0.call_session(id, 0, |w, s, h| w.snapshot(s, h))?;
        if let Some(session) = self.0.sessions.get_mut(&id) {
            session.state.clone_from(&state);
        }
        Ok(state)
    }

    /// Give a step the state a snapshot of it gave (right after `configure`).
    pub fn restore(&mut self, id: SessionId, state: Vec<u8>) -> Result<(), CallError> {
        let result = self
            .0
            .call_session(id, 0, |w, s, h| w.restore(s, h, &state))?;
        result.map_err(|e| self.0.plugin_error(e))?;
        if let Some(session) = self.0.sessions.get_mut(&id) {
            session.state = Some(state);
        }
        Ok(())
    }

    /// Let a step close windows when no event came for a while.
    pub fn tick(&mut self, id: SessionId, now_us: i64) -> Result<Vec<Event>, CallError> {
        let result = self.0.call_session(id, 0, |w, s, h| w.tick(s, h, now_us))?;
        self.output(result)
    }

    fn output(&mut self, result: Result<Vec<Event>, PluginError>) -> Result<Vec<Event>, CallError> {
        let events = result.map_err(|e| self.0.plugin_error(e))?;
        self.0.plugin.inner.metrics.output(events.len(), 0);
        Ok(events)
    }

    /// Remove a step and free its guest object.
    pub fn close(&mut self, id: SessionId) {
        self.0.close(id)
    }

    /// The plugin this is an instance of.
    pub fn plugin(&self) -> &Plugin {
        &self.0.plugin
    }
}
