//! Removing a plugin version from the whole cluster (`DELETE /api/v1/plugins/{plugin}`,
//! `anode plugin remove --url`): refused while a source uses it; otherwise its catalog entry
//! becomes a tombstone, and every node deletes its copy (bytes, manifest, compiled form) once
//! none of its sources uses it.

use super::{NodeError, NodeState, lock, plugin_key};
use crate::plugin::{Digest, PluginManifest};
use crate::source::SourceSpec;

impl NodeState {
    /// The sources of the catalog that run `digest` (named by digest, or by a name that
    /// resolves to it here).
    fn users_of(&self, digest: &Digest) -> Vec<String> {
        let hex = digest.to_hex();
        let resolves = |query: &str| {
            query == hex
                || self
                    .plugin_store
                    .resolve(query)
                    .is_ok_and(|m| m.digest == *digest)
        };
        self.cluster
            .catalog
            .live("source/")
            .into_iter()
            .filter_map(|e| serde_json::from_value::<SourceSpec>(e.value?).ok())
            .filter(|spec| {
                std::iter::once(&spec.plugin)
                    .chain(spec.transforms.iter().map(|t| &t.plugin))
                    .any(|p| resolves(p))
            })
            .map(|spec| spec.id)
            .collect()
    }

    /// Remove the plugin `query` (a digest, 8+ hex digits of one, or a name with one build)
    /// from the cluster.
    pub async fn remove_plugin(&self, query: &str) -> Result<PluginManifest, NodeError> {
        let query = query.trim_start_matches("sha256:");
        let cataloged: Vec<PluginManifest> = self
            .cluster
            .catalog
            .live("plugin/")
            .into_iter()
            .filter_map(|e| serde_json::from_value(e.value?).ok())
            .collect();
        let matching: Vec<&PluginManifest> = cataloged
            .iter()
            .filter(|m| {
                m.name == query || (query.len() >= 8 && m.digest.to_hex().starts_with(query))
            })
            .collect();
        let manifest = match matching.as_slice() {
            [one] => (*one).clone(),
            [] => {
                let built_in = self
                    .plugin_store
                    .find(query)
                    .is_ok_and(|m| self.bundled.contains(&m.digest));
                return Err(if built_in {
                    NodeError::BadRequest(format!(
                        "plugin `{query}` is built into every node's binary; it cannot be removed"
                    ))
                } else {
                    NodeError::NotFound(format!(
                        "no plugin `{query}` installed in this cluster (`anode plugin list`)"
                    ))
                });
            }
            several => {
                let builds: Vec<String> = several
                    .iter()
                    .map(|m| format!("{} {} ({})", m.name, m.version, m.digest.short()))
                    .collect();
                return Err(NodeError::BadRequest(format!(
                    "`{query}` names {} builds: {}; give the digest",
                    several.len(),
                    builds.join(", ")
                )));
            }
        };
        let users = self.users_of(&manifest.digest);
        if !users.is_empty() {
            return Err(NodeError::Conflict(format!(
                "plugin {} {} ({}) is used by {} source(s) ({}{}): move them first \
                 (`anode source upgrade`) or remove them",
                manifest.name,
                manifest.version,
                manifest.digest.short(),
                users.len(),
                users[..users.len().min(5)].join(", "),
                if users.len() > 5 { ", …" } else { "" }
            )));
        }
        self.write_catalog(&plugin_key(&manifest.digest), None)
            .await;
        self.collect_removed_plugins();
        Ok(manifest)
    }

    /// Delete the local copy of every plugin the catalog has a tombstone for, once no source of
    /// the catalog uses it (called on every reconcile).
    pub(super) fn collect_removed_plugins(&self) {
        let Ok(installed) = self.plugin_store.list() else {
            return;
        };
        for manifest in installed {
            let key = plugin_key(&manifest.digest);
            let tombstoned = self
                .cluster
                .catalog
                .get(&key)
                .is_some_and(|e| e.value.is_none());
            if !tombstoned
                || self.bundled.contains(&manifest.digest)
                || !self.users_of(&manifest.digest).is_empty()
            {
                continue;
            }
            let removed = self
                .plugin_store
                .remove(Some(&self.runtime), &manifest.digest.to_hex());
            lock(&self.loaded).remove(&manifest.digest);
            let message = match removed {
                Ok(m) => format!(
                    "plugin {} {} ({}) removed: the cluster removed it and no source uses it",
                    m.name,
                    m.version,
                    m.digest.short()
                ),
                Err(e) => format!("plugin {} could not be removed: {e}", manifest.name),
            };
            self.events.push(&self.node_id, "plugin", message);
        }
    }
}
