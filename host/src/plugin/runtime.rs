//! The wasmtime engine every plugin runs on: compilation (with an on-disk cache keyed by
//! digest and engine), the epoch ticker behind call deadlines, and loading a `.wasm` into a
//! [`Plugin`] ready to instantiate.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use wasmtime::component::{Component, Linker, types::ComponentItem};
use wasmtime::{Config, Engine};

use super::PluginLimits;
use super::digest::Digest;
use super::error::PluginLoadError;
use super::instance::{ConnectorInstance, TransformInstance, describe};
use super::manifest::{Kind, PluginManifest, WIT_PACKAGE};
use super::metrics::PluginMetrics;
use super::sandbox::{Sandbox, SandboxLimits};
use super::wit::{
    self, CONNECTOR_EXPORT, CONNECTOR_EXPORT_0_1, TRANSFORM_EXPORT, TRANSFORM_EXPORT_0_1,
};

/// Compiles and runs plugins. Cheap to clone; all clones share one engine.
#[derive(Clone)]
pub struct PluginRuntime {
    inner: Arc<RuntimeInner>,
}

pub(crate) struct RuntimeInner {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<Sandbox>,
    pub(crate) limits: PluginLimits,
    /// Epoch ticks a call may run for.
    pub(crate) deadline_ticks: u64,
    cache_dir: Option<PathBuf>,
    /// Distinguishes compiled artefacts of different engines or settings.
    engine_tag: String,
    _ticker: EpochTicker,
}

/// A compiled plugin, ready to instantiate. Cheap to clone.
#[derive(Clone)]
pub struct Plugin {
    pub(crate) inner: Arc<PluginInner>,
}

pub(crate) struct PluginInner {
    pub(crate) manifest: PluginManifest,
    pub(crate) pre: Pre,
    pub(crate) metrics: Arc<PluginMetrics>,
    pub(crate) runtime: Arc<RuntimeInner>,
    pub(crate) name: Arc<str>,
    /// This plugin's memory limit: the node's, or what its manifest asks for within the cap.
    pub(crate) memory_mib: usize,
}

pub(crate) enum Pre {
    Connector(wit::connector::ConnectorPre<Sandbox>),
    Transform(wit::transform::TransformPre<Sandbox>),
    ConnectorV0_1(wit::v0_1::connector::ConnectorPre<Sandbox>),
    TransformV0_1(wit::v0_1::transform::TransformPre<Sandbox>),
    /// A transform that exports `checkpoint` too.
    StatefulTransform(wit::stateful::StatefulTransformPre<Sandbox>),
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.inner.manifest.name)
            .field("digest", &self.inner.manifest.digest)
            .finish()
    }
}

impl Plugin {
    /// What the plugin said about itself, with its digest and size.
    pub fn manifest(&self) -> &PluginManifest {
        &self.inner.manifest
    }

    /// The plugin's counters (shared by all its instances).
    pub fn metrics(&self) -> &Arc<PluginMetrics> {
        &self.inner.metrics
    }

    /// Whether it is a transform whose steps hand out their state (`checkpoint`).
    pub fn stateful(&self) -> bool {
        matches!(self.inner.pre, Pre::StatefulTransform(_))
    }
}

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompileSource {
    /// Compiled from the `.wasm` now.
    Compiled,
    /// Loaded from the compiled-artefact cache.
    Cache,
}

impl PluginRuntime {
    /// A runtime with `limits`; compiled artefacts are cached under `cache_dir` when given.
    pub fn new(limits: PluginLimits, cache_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.consume_fuel(limits.fuel_per_call > 0);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        // `ANODE_PLUGIN_PROFILER=perfmap` writes /tmp/perf-<pid>.map, so that `perf report`
        // names the plugins' own functions instead of bare addresses.
        match std::env::var("ANODE_PLUGIN_PROFILER").as_deref() {
            Ok("perfmap") => {
                config.profiler(wasmtime::ProfilingStrategy::PerfMap);
            }
            Ok(other) => tracing::warn!(
                "ANODE_PLUGIN_PROFILER={other:?} is not known; the one supported is `perfmap`"
            ),
            Err(_) => {}
        }
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        refuse_blocking(&mut linker)?;
        wit::connector::Connector::add_to_linker::<_, wasmtime::component::HasSelf<Sandbox>>(
            &mut linker,
            |s| s,
        )?;
        // Plugins built against 0.1.0 import its `host` (the same functions) and `types`.
        wit::v0_1::connector::Connector::add_to_linker::<_, wasmtime::component::HasSelf<Sandbox>>(
            &mut linker,
            |s| s,
        )?;
        let tick = limits.epoch_tick();
        let deadline_ticks = (limits.call_timeout().as_nanos() / tick.as_nanos()).max(1) as u64;
        let engine_tag = {
            let mut hasher = Sha256Hasher::default();
            engine.precompile_compatibility_hash().hash(&mut hasher);
            hex::encode(&hasher.0.finalize()[..8])
        };
        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir)?;
        }
        let ticker = EpochTicker::start(engine.clone(), tick);
        Ok(PluginRuntime {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                limits,
                deadline_ticks,
                cache_dir,
                engine_tag,
                _ticker: ticker,
            }),
        })
    }

    /// Check, compile (or load from cache) and describe a plugin. With `expected`, the bytes
    /// must hash to it or nothing is compiled.
    pub fn load(
        &self,
        bytes: &[u8],
        expected: Option<&Digest>,
    ) -> Result<(Plugin, CompileSource), PluginLoadError> {
        check_header(bytes)?;
        let digest = Digest::of(bytes);
        if let Some(expected) = expected
            && *expected != digest
        {
            return Err(PluginLoadError::DigestMismatch {
                expected: expected.to_hex(),
                actual: digest.to_hex(),
            });
        }
        let (component, source) = self.component(&digest, bytes)?;
        let (kind, version) = world_of(&self.inner.engine, &component)?;
        let instance_pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| PluginLoadError::Link(format!("{e:#}")))?;
        let link = |e: wasmtime::Error| PluginLoadError::Link(format!("{e:#}"));
        let pre = match (kind, version) {
            (Kind::Connector, WitVersion::Now) => {
                Pre::Connector(wit::connector::ConnectorPre::new(instance_pre).map_err(link)?)
            }
            (Kind::Transform, WitVersion::Now)
                if exports(&self.inner.engine, &component).any(|e| e == wit::CHECKPOINT_EXPORT) =>
            {
                Pre::StatefulTransform(
                    wit::stateful::StatefulTransformPre::new(instance_pre).map_err(link)?,
                )
            }
            (Kind::Transform, WitVersion::Now) => {
                Pre::Transform(wit::transform::TransformPre::new(instance_pre).map_err(link)?)
            }
            (Kind::Connector, WitVersion::V0_1) => Pre::ConnectorV0_1(
                wit::v0_1::connector::ConnectorPre::new(instance_pre).map_err(link)?,
            ),
            (Kind::Transform, WitVersion::V0_1) => Pre::TransformV0_1(
                wit::v0_1::transform::TransformPre::new(instance_pre).map_err(link)?,
            ),
        };
        let metrics = Arc::new(PluginMetrics::default());
        let described = describe(&self.inner, &pre, &metrics).map_err(PluginLoadError::Describe)?;
        let manifest = PluginManifest::from_wit(
            described,
            kind,
            version.package(),
            digest,
            bytes.len() as u64,
        )?;
        let name: Arc<str> = manifest.name.as_str().into();
        let memory_mib = self.inner.limits.memory_mib_for(&manifest.config_schema);
        Ok((
            Plugin {
                inner: Arc::new(PluginInner {
                    memory_mib,
                    manifest,
                    pre,
                    metrics,
                    runtime: self.inner.clone(),
                    name,
                }),
            },
            source,
        ))
    }

    /// A new instance of a connector plugin.
    pub fn connector(&self, plugin: &Plugin) -> Option<ConnectorInstance> {
        ConnectorInstance::new(plugin.clone())
    }

    /// A new instance of a transform plugin.
    pub fn transform(&self, plugin: &Plugin) -> Option<TransformInstance> {
        TransformInstance::new(plugin.clone())
    }

    /// Where the compiled form of `digest` is cached, if caching is on.
    pub fn cache_path(&self, digest: &Digest) -> Option<PathBuf> {
        let dir = self.inner.cache_dir.as_ref()?;
        Some(dir.join(format!(
            "{}-{}.cwasm",
            digest.to_hex(),
            self.inner.engine_tag
        )))
    }

    fn component(
        &self,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<(Component, CompileSource), PluginLoadError> {
        let engine = &self.inner.engine;
        let cached = self.cache_path(digest);
        if let Some(path) = &cached
            && path.exists()
        {
            // Read into memory rather than `deserialize_file`: a mapped file truncated by
            // someone else while in use would bring the node down with SIGBUS.
            let loaded = std::fs::read(path)
                .map_err(wasmtime::Error::from)
                .and_then(|bytes| {
                    // SAFETY: the file was written by `precompile_component` of an engine with
                    // the same compatibility hash (part of its name), in the node's own data dir,
                    // under the digest of bytes that were verified before compiling; wasmtime
                    // still checks its header and engine settings.
                    unsafe { Component::deserialize(engine, &bytes) }
                });
            match loaded {
                Ok(component) => return Ok((component, CompileSource::Cache)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "ignoring unusable compiled cache: {e:#}");
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        let compiled = engine
            .precompile_component(bytes)
            .map_err(|e| PluginLoadError::Compile(format!("{e:#}")))?;
        if let Some(path) = &cached {
            write_atomically(path, &compiled);
        }
        // SAFETY: `compiled` was produced just now by this engine.
        let component = unsafe { Component::deserialize(engine, &compiled) }
            .map_err(|e| PluginLoadError::Compile(format!("{e:#}")))?;
        Ok((component, CompileSource::Compiled))
    }
}

/// Reject what is not a component before handing it to the compiler, with a useful message.
fn check_header(bytes: &[u8]) -> Result<(), PluginLoadError> {
    const MAGIC: &[u8] = b"\0asm";
    const CORE_VERSION: &[u8] = &[1, 0, 0, 0];
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(PluginLoadError::NotWasm);
    }
    if &bytes[4..8] == CORE_VERSION {
        return Err(PluginLoadError::CoreModule);
    }
    Ok(())
}

/// Which WIT version a component was built against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WitVersion {
    Now,
    V0_1,
}

impl WitVersion {
    fn package(self) -> &'static str {
        match self {
            WitVersion::Now => WIT_PACKAGE,
            WitVersion::V0_1 => "anode:plugin@0.1.0",
        }
    }
}

/// The names of the interfaces a component exports.
fn exports(engine: &Engine, component: &Component) -> impl Iterator<Item = String> {
    let ty = component.component_type();
    ty.exports(engine)
        .filter(|(_, item)| matches!(item.ty, ComponentItem::ComponentInstance(_)))
        .map(|(name, _)| name.to_owned())
        .collect::<Vec<_>>()
        .into_iter()
}

/// Which of our worlds (and versions) the component implements, by its exports.
fn world_of(engine: &Engine, component: &Component) -> Result<(Kind, WitVersion), PluginLoadError> {
    let ty = component.component_type();
    let exports: Vec<String> = exports(engine, component).collect();
    let found: Vec<(Kind, WitVersion)> = [
        (CONNECTOR_EXPORT, Kind::Connector, WitVersion::Now),
        (TRANSFORM_EXPORT, Kind::Transform, WitVersion::Now),
        (CONNECTOR_EXPORT_0_1, Kind::Connector, WitVersion::V0_1),
        (TRANSFORM_EXPORT_0_1, Kind::Transform, WitVersion::V0_1),
    ]
    .into_iter()
    .filter(|(name, _, _)| exports.iter().any(|e| e == name))
    .map(|(_, kind, version)| (kind, version))
    .collect();
    match found.as_slice() {
        [one] => Ok(*one),
        _ => Err(PluginLoadError::WrongWorld {
            exports: ty
                .exports(engine)
                .map(|(name, _)| name.to_owned())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// What a guest that tries to block is told (its call traps, its instance restarts).
pub(crate) const BLOCKING_REFUSED: &str = "plugins may not block: waiting on a WASI pollable \
    (a sleep, a timer) is refused, since no call deadline reaches into the host; the host \
    makes all I/O for a plugin";

/// The call deadline interrupts guest code, not a host call the guest waits in: the WASI
/// functions that wait (`poll`, `pollable.block`) are replaced with ones that trap at once.
fn refuse_blocking(linker: &mut Linker<Sandbox>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut poll = linker.instance("wasi:io/poll@0.2.12")?;
    for name in ["poll", "[method]pollable.block"] {
        poll.func_new(name, |_, _, _, _| {
            Err(wasmtime::Error::msg(BLOCKING_REFUSED))
        })?;
    }
    linker.allow_shadowing(false);
    Ok(())
}

fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        // The cache only saves time; a node without it still works.
        tracing::warn!(path = %path.display(), "could not cache compiled plugin: {e}");
    }
}

impl RuntimeInner {
    pub(crate) fn sandbox_limits(&self, memory_mib: usize) -> SandboxLimits {
        SandboxLimits {
            memory_bytes: memory_mib * 1024 * 1024,
            stderr_tail_bytes: self.limits.stderr_tail_bytes,
            log_lines_per_call: self.limits.log_lines_per_call,
            log_line_max: self.limits.log_line_max_bytes,
        }
    }
}

/// Advances the engine's epoch on a fixed tick; call deadlines are counted in ticks.
struct EpochTicker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine, tick: Duration) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("anode-epoch".into())
            .spawn(move || {
                // `recv_timeout` doubles as the tick and the shutdown signal.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    engine.increment_epoch();
                }
            })
            .expect("spawn the epoch thread");
        EpochTicker {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Feeds `Hash` output into sha256, so the engine tag is stable across processes (unlike
/// `DefaultHasher`).
#[derive(Default)]
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
