//! Plugins a node's sources need: found in the store (by name or digest), loaded once,
//! pooled per plugin, fetched from peers when the catalog names one this node lacks; and a
//! source's sessions opened on them.

use super::{Loaded, NodeError, NodeState, lock, stable_hash};
use std::sync::Arc;

use crate::pipeline::{Bound, Probe};
use crate::plugin::{
    CallError, ConnectorInstance, Digest, Kind, Plugin, PluginSignature, TransformInstance, Worker,
};
use crate::sink::StepState;
use crate::source::SourceSpec;

impl NodeState {
    /// Find, load (once) and return a plugin of `kind` by name or digest.
    pub(super) async fn plugin(&self, query: &str, kind: Kind) -> Result<Digest, NodeError> {
        let manifest = self
            .plugin_store
            .resolve(query)
            .map_err(|e| NodeError::BadRequest(e.to_string()))?;
        if manifest.kind != kind {
            return Err(NodeError::BadRequest(format!(
                "plugin `{query}` is a {}, not a {kind}",
                manifest.kind
            )));
        }
        let digest = manifest.digest;
        if lock(&self.loaded).contains_key(&digest) {
            return Ok(digest);
        }
        let (store, runtime) = (self.plugin_store.clone(), self.runtime.clone());
        let plugin = tokio::task::spawn_blocking(move || store.load(&runtime, &digest))
            .await
            .map_err(|e| NodeError::BadRequest(format!("loading plugin `{query}`: {e}")))?
            .map_err(|e| NodeError::BadRequest(e.to_string()))?;
        lock(&self.loaded).entry(digest).or_insert(Loaded {
            plugin,
            connectors: Vec::new(),
            transforms: Vec::new(),
        });
        Ok(digest)
    }

    /// The pool member a source uses, created (on its own thread) on first use.
    pub(super) fn instance<I: Send + 'static>(
        &self,
        digest: &Digest,
        source: &str,
        pool: impl Fn(&mut Loaded) -> &mut Vec<Worker<I>>,
        make: impl Fn(&Plugin) -> Option<I>,
    ) -> Result<Worker<I>, NodeError> {
        let size = self.config.sources.instances_per_plugin.max(1);
        let slot = (stable_hash(source) % size as u64) as usize;
        let mut loaded = lock(&self.loaded);
        let entry = loaded.get_mut(digest).expect("loaded before use");
        let plugin = entry.plugin.clone();
        let pool = pool(entry);
        while pool.len() < size {
            let instance = make(&plugin).expect("kind checked");
            let worker = Worker::spawn(&plugin.manifest().name, instance).map_err(|e| {
                NodeError::Startup(format!(
                    "cannot start a thread for plugin `{}`: {e}",
                    plugin.manifest().name
                ))
            })?;
            pool.push(worker);
        }
        Ok(pool[slot].clone())
    }

    /// Whether the cluster can run `spec`: it is well formed, its plugins exist (here or in
    /// the catalog), and, when they are here, they accept its configuration.
    pub(crate) async fn check_source(&self, spec: &SourceSpec) -> Result<(), NodeError> {
        spec.validate().map_err(NodeError::BadRequest)?;
        let mut local = true;
        for (name, kind) in std::iter::once((&spec.plugin, Kind::Connector))
            .chain(spec.transforms.iter().map(|t| (&t.plugin, Kind::Transform)))
        {
            if self.plugin_store.resolve(name).is_err() {
                if !self.cataloged_plugin(name) {
                    return Err(NodeError::BadRequest(format!(
                        "no plugin `{name}` in this cluster: install it (`anode plugin install`) \
                         or pick one of `anode plugin list`"
                    )));
                }
                local = false;
            } else {
                self.plugin(name, kind).await?;
            }
        }
        if local {
            let prepared = self.prepare(spec, None, &[]).await?;
            prepared.close();
        }
        Ok(())
    }

    pub(super) fn cataloged_plugin(&self, query: &str) -> bool {
        self.cluster.catalog.live("plugin/").iter().any(|e| {
            let v = e.value.as_ref().expect("live entries have values");
            v["name"] == query || v["digest"] == query
        })
    }

    /// Load a source's plugins and open its sessions.
    /// Steps whose plugin made one of `states` get it back (a step whose plugin changed starts
    /// empty).
    pub(super) async fn prepare(
        &self,
        spec: &SourceSpec,
        cursor: Option<String>,
        states: &[StepState],
    ) -> Result<Prepared, NodeError> {
        let digest = self.plugin(&spec.plugin, Kind::Connector).await?;
        let connector = self.instance(
            &digest,
            &spec.id,
            |l| &mut l.connectors,
            |p| self.runtime.connector(p),
        )?;
        let config: Arc<str> = spec.config.to_string().into();
        let given = config.clone();
        let session = connector
            .call_first(move |c| c.open(&given, cursor.as_deref()))
            .await
            .map_err(|e| refused(spec, &e))?;
        let connector_probe = Probe {
            plugin: self.loaded_plugin(&digest),
            config,
        };
        let mut chain = Vec::new();
        for step in &spec.transforms {
            let digest = self.plugin(&step.plugin, Kind::Transform).await?;
            let worker = self.instance(
                &digest,
                &spec.id,
                |l| &mut l.transforms,
                |p| self.runtime.transform(p),
            )?;
            let config: Arc<str> = step.config.to_string().into();
            let given = config.clone();
            let session = worker
                .call_first(move |t| t.configure(&given))
                .await
                .map_err(|e| refused(spec, &e))?;
            let probe = Probe {
                plugin: self.loaded_plugin(&digest),
                config,
            };
            let at = chain.len() as u32;
            let kept = states
                .iter()
                .find(|s| s.step == at && s.plugin == probe.digest() && !s.state.is_empty());
            if let Some(kept) = kept {
                let state = kept.state.clone();
                let restored = worker.call_first(move |t| t.restore(session, state)).await;
                if let Err(e) = restored {
                    // The step starts empty; what it had is not lost to the store.
                    self.events.push(
                        &self.node_id,
                        "source",
                        format!(
                            "source `{}`: transform step {at} refused its stored state and starts empty: {e}",
                            spec.id
                        ),
                    );
                }
            }
            chain.push(Bound {
                worker,
                session,
                probe,
            });
        }
        Ok(Prepared {
            connector: Bound {
                worker: connector,
                session,
                probe: connector_probe,
            },
            chain,
        })
    }

    /// A plugin loaded by [`NodeState::plugin`].
    pub(super) fn loaded_plugin(&self, digest: &Digest) -> Plugin {
        lock(&self.loaded)
            .get(digest)
            .expect("loaded before use")
            .plugin
            .clone()
    }

    /// Start a fetch of every cataloged plugin this node lacks (one at a time per digest).
    pub(super) fn fetch_missing_plugins(&self) {
        for entry in self.cluster.catalog.live("plugin/") {
            let value = entry.value.expect("live");
            let Some(digest) = value["digest"]
                .as_str()
                .and_then(|d| d.parse::<Digest>().ok())
            else {
                continue;
            };
            if self.plugin_store.has(&digest) || lock(&self.untrusted).contains_key(&digest) {
                continue;
            }
            let name = value["name"].as_str().unwrap_or("?").to_owned();
            // The bytes may not run past the size the manifest gives (64 MiB at most).
            let size = value["size"]
                .as_u64()
                .map_or(MAX_PLUGIN_BYTES, |s| (s as usize).min(MAX_PLUGIN_BYTES));
            // Checked before fetching: the catalog carries the signature (if any).
            let signature: Option<PluginSignature> = value
                .get("signature")
                .and_then(|s| serde_json::from_value(s.clone()).ok());
            if let Err(why) = self.plugin_store.trust().check(&digest, signature.as_ref()) {
                self.events.push(
                    &self.node_id,
                    "plugin",
                    format!("plugin {name} (sha256:{digest}) refused: {why}"),
                );
                lock(&self.untrusted).insert(digest, (name, why));
                continue;
            }
            if !lock(&self.fetching).insert(digest) {
                continue;
            }
            let (cluster, http) = (self.cluster.clone(), self.ingest.http.clone());
            let (store, runtime) = (self.plugin_store.clone(), self.runtime.clone());
            let events = self.events.clone();
            let node = self.node_id.clone();
            let writer = entry.node.clone();
            let done = self.fetch_done.clone();
            let fetching = self.fetching.clone();
            tokio::spawn(async move {
                let result = match crate::cluster::http::fetch_plugin(
                    &cluster, &http, &digest, size, &writer,
                )
                .await
                {
                    Ok((bytes, from)) => tokio::task::spawn_blocking(move || {
                        let origin = format!("peer {from}");
                        store
                            .install(&runtime, &bytes, Some(&digest), signature.as_ref(), &origin)
                            .map(|_| from)
                            .map_err(|e| e.to_string())
                    })
                    .await
                    .unwrap_or_else(|e| Err(e.to_string())),
                    Err(e) => Err(e),
                };
                match result {
                    Ok(from) => events.push(
                        &node,
                        "plugin",
                        format!("plugin {name} fetched from {from} and verified"),
                    ),
                    Err(e) => events.push(
                        &node,
                        "plugin",
                        format!("cannot fetch plugin {name}: {e}; retrying"),
                    ),
                }
                lock(&fetching).remove(&digest);
                let _ = done.send(digest);
            });
        }
    }

    pub(super) fn plugins_present(&self, spec: &SourceSpec) -> bool {
        std::iter::once(&spec.plugin)
            .chain(spec.transforms.iter().map(|t| &t.plugin))
            .all(|p| self.plugin_store.resolve(p).is_ok())
    }
}

/// Largest plugin fetched from a peer.
const MAX_PLUGIN_BYTES: usize = 64 * 1024 * 1024;

fn refused(spec: &SourceSpec, error: &CallError) -> NodeError {
    NodeError::BadRequest(format!(
        "source `{}`: the plugin refused to start it: {error}",
        spec.id
    ))
}

/// A source's sessions, opened and ready to run.
pub(super) struct Prepared {
    pub(super) connector: Bound<ConnectorInstance>,
    pub(super) chain: Vec<Bound<TransformInstance>>,
}

impl Prepared {
    pub(super) fn close(self) {
        self.connector.close(ConnectorInstance::close);
        for step in &self.chain {
            step.close(TransformInstance::close);
        }
    }
}
