//! The content-addressed plugin store in the node's data dir:
//!
//! ```text
//! <data_dir>/plugins/<sha256>.wasm   the component, exactly as installed
//! <data_dir>/plugins/<sha256>.json   its manifest
//! <data_dir>/cache/<sha256>-<engine>.cwasm   compiled form (see PluginRuntime)
//! ```
//!
//! A plugin is stored only after its bytes verified, compiled and described, so everything in
//! the store can run.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::digest::Digest;
use super::error::PluginLoadError;
use super::manifest::PluginManifest;
use super::runtime::{CompileSource, Plugin, PluginRuntime};
use super::signature::{PluginSignature, Trust};

/// A store operation failed; the store is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {source}")]
    Load {
        origin: String,
        source: PluginLoadError,
    },
    #[error("no plugin `{0}` is installed (see `anode plugin list`)")]
    NotFound(String),
    #[error("`{query}` matches several plugins: {matches}; give the full digest")]
    Ambiguous { query: String, matches: String },
    #[error("stored manifest {path} is unreadable: {message}")]
    BadManifest { path: PathBuf, message: String },
    #[error("{origin}: refused: {why}")]
    Untrusted { origin: String, why: String },
}

/// The result of an install.
#[derive(Debug, Clone)]
pub struct Installed {
    pub manifest: PluginManifest,
    /// The same bytes were already installed.
    pub already_present: bool,
    pub compiled_from: CompileSource,
}

/// Plugins on disk, by digest.
#[derive(Debug, Clone)]
pub struct PluginStore {
    dir: PathBuf,
    /// Whose signatures a plugin needs to be installed.
    trust: Trust,
    /// The manifests last read, with the directory's modification time then: `find` runs for
    /// every source a node starts, and reading every manifest each time made adding a source
    /// cost as much as the store is large.
    listing: Arc<Mutex<Option<Listing>>>,
}

#[derive(Debug)]
struct Listing {
    modified: SystemTime,
    manifests: Arc<Vec<PluginManifest>>,
}

/// A listing is reused only when the directory has not changed for this long: file times are
/// coarse (a clock tick), so two changes within one tick can leave the same time behind.
const SETTLED: Duration = Duration::from_secs(1);

impl PluginStore {
    /// The store under `<data_dir>/plugins`, created if missing.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let dir = data_dir.join("plugins");
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(PluginStore {
            dir,
            trust: Trust::default(),
            listing: Arc::default(),
        })
    }

    /// Whose signatures a plugin needs.
    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// The same store, installing only plugins signed by a key `trust` holds.
    pub fn with_trust(mut self, trust: Trust) -> Self {
        self.trust = trust;
        self
    }

    /// Where compiled artefacts go for a store in `data_dir`.
    pub fn cache_dir(data_dir: &Path) -> PathBuf {
        data_dir.join("cache")
    }

    /// Verify, compile, describe and store `bytes`. `origin` names the bytes in errors (a
    /// file path, a peer). With `expected`, bytes hashing to anything else are refused before
    /// compiling; so are bytes without a `signature` the store's trust accepts.
    pub fn install(
        &self,
        runtime: &PluginRuntime,
        bytes: &[u8],
        expected: Option<&Digest>,
        signature: Option<&PluginSignature>,
        origin: &str,
    ) -> Result<(Installed, Plugin), StoreError> {
        self.trust
            .check(&Digest::of(bytes), signature)
            .map_err(|why| StoreError::Untrusted {
                origin: origin.to_owned(),
                why,
            })?;
        self.install_trusted(runtime, bytes, expected, signature, origin)
    }

    fn install_trusted(
        &self,
        runtime: &PluginRuntime,
        bytes: &[u8],
        expected: Option<&Digest>,
        signature: Option<&PluginSignature>,
        origin: &str,
    ) -> Result<(Installed, Plugin), StoreError> {
        let (plugin, compiled_from) =
            runtime
                .load(bytes, expected)
                .map_err(|source| StoreError::Load {
                    origin: origin.to_owned(),
                    source,
                })?;
        let mut manifest = plugin.manifest().clone();
        manifest.signature = signature.cloned();
        let wasm = self.wasm_path(&manifest.digest);
        let already_present = wasm.exists() && self.manifest_path(&manifest.digest).exists();
        if !already_present {
            write_atomically(&wasm, bytes)?;
            let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
            write_atomically(&self.manifest_path(&manifest.digest), &json)?;
        }
        Ok((
            Installed {
                manifest,
                already_present,
                compiled_from,
            },
            plugin,
        ))
    }

    /// Every installed plugin's manifest, by name then version.
    pub fn list(&self) -> Result<Vec<PluginManifest>, StoreError> {
        Ok(self.listing()?.as_ref().clone())
    }

    /// The manifests, read again only when the directory changed (an install by this node or
    /// by `anode plugin install` beside it).
    fn listing(&self) -> Result<Arc<Vec<PluginManifest>>, StoreError> {
        let io = |source| StoreError::Io {
            path: self.dir.clone(),
            source,
        };
        let modified = std::fs::metadata(&self.dir)
            .and_then(|m| m.modified())
            .map_err(io)?;
        let settled = modified.elapsed().is_ok_and(|age| age >= SETTLED);
        let mut cached = self.listing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(listing) = cached.as_ref()
            && settled
            && listing.modified == modified
        {
            return Ok(listing.manifests.clone());
        }
        let manifests = Arc::new(self.read_manifests()?);
        *cached = Some(Listing {
            modified,
            manifests: manifests.clone(),
        });
        Ok(manifests)
    }

    fn read_manifests(&self) -> Result<Vec<PluginManifest>, StoreError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| StoreError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let mut manifests = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                manifests.push(read_manifest(&path)?);
            }
        }
        manifests.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        Ok(manifests)
    }

    /// Find a plugin by name, full digest or a digest prefix of at least 6 characters.
    pub fn find(&self, query: &str) -> Result<PluginManifest, StoreError> {
        let all = self.listing()?;
        let query_lower = query.trim_start_matches("sha256:").to_ascii_lowercase();
        let mut matches: Vec<PluginManifest> =
            all.iter().filter(|m| m.name == query).cloned().collect();
        if matches.is_empty() && query_lower.len() >= 6 {
            matches = all
                .iter()
                .filter(|m| m.digest.to_hex().starts_with(&query_lower))
                .cloned()
                .collect();
        }
        match matches.len() {
            0 => Err(StoreError::NotFound(query.to_owned())),
            1 => Ok(matches.remove(0)),
            _ => Err(StoreError::Ambiguous {
                query: query.to_owned(),
                matches: matches
                    .iter()
                    .map(|m| format!("{} {} ({})", m.name, m.version, m.digest.short()))
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// The plugin a source that names `query` runs: a name resolves to its highest version
    /// (numeric parts compared as numbers), and builds of one version to the lowest digest, so
    /// every node picks the same build; a digest or a prefix of one (6+ hex digits) to that
    /// build. Installing a new version moves sources that name the plugin at their next start;
    /// a source that names a digest (what `anode source upgrade` writes) stays on it.
    pub fn resolve(&self, query: &str) -> Result<PluginManifest, StoreError> {
        let all = self.listing()?;
        let newest = all.iter().filter(|m| m.name == query).max_by(|a, b| {
            version_key(&a.version)
                .cmp(&version_key(&b.version))
                .then_with(|| b.digest.to_hex().cmp(&a.digest.to_hex()))
        });
        match newest {
            Some(m) => Ok(m.clone()),
            None => self.find(query),
        }
    }

    /// The stored bytes of `digest`, verified.
    /// Whether `digest` is installed (its manifest is listed and its bytes are there); reads no
    /// plugin's bytes.
    pub fn has(&self, digest: &Digest) -> bool {
        self.listing()
            .is_ok_and(|all| all.iter().any(|m| m.digest == *digest))
            && self.wasm_path(digest).exists()
    }

    pub fn bytes(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.wasm_path(digest);
        let bytes = std::fs::read(&path).map_err(|source| StoreError::Io {
            path: path.clone(),
            source,
        })?;
        if Digest::of(&bytes) != *digest {
            return Err(StoreError::Load {
                origin: path.display().to_string(),
                source: PluginLoadError::DigestMismatch {
                    expected: digest.to_hex(),
                    actual: Digest::of(&bytes).to_hex(),
                },
            });
        }
        Ok(bytes)
    }

    /// Load a stored plugin into the runtime (from the compiled cache when it is there).
    pub fn load(&self, runtime: &PluginRuntime, digest: &Digest) -> Result<Plugin, StoreError> {
        let bytes = self.bytes(digest)?;
        runtime
            .load(&bytes, Some(digest))
            .map(|(plugin, _)| plugin)
            .map_err(|source| StoreError::Load {
                origin: self.wasm_path(digest).display().to_string(),
                source,
            })
    }

    /// Remove a plugin (by name or digest); returns what was removed.
    pub fn remove(
        &self,
        runtime: Option<&PluginRuntime>,
        query: &str,
    ) -> Result<PluginManifest, StoreError> {
        let manifest = self.find(query)?;
        for path in [
            self.manifest_path(&manifest.digest),
            self.wasm_path(&manifest.digest),
        ] {
            std::fs::remove_file(&path).map_err(|source| StoreError::Io { path, source })?;
        }
        if let Some(cached) = runtime.and_then(|r| r.cache_path(&manifest.digest)) {
            let _ = std::fs::remove_file(cached);
        }
        Ok(manifest)
    }

    /// Install the plugins built into this binary that are not in the store yet.
    pub fn install_bundled(&self, runtime: &PluginRuntime) -> Result<Vec<Installed>, StoreError> {
        let missing: Vec<(&str, &[u8], Digest)> = crate::bundled::BUNDLED
            .iter()
            .map(|(name, bytes)| (*name, *bytes, Digest::of(bytes)))
            .filter(|(_, _, digest)| !self.manifest_path(digest).exists())
            .collect();
        // Compiled on every core: a fresh node spends most of its start here.
        let threads = std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .min(missing.len().max(1));
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results: Vec<Result<Installed, StoreError>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some((name, bytes, digest)) = missing.get(i) else {
                                return done;
                            };
                            let origin = format!("built-in plugin {name}");
                            // Built into the binary: trusted as such.
                            done.push(
                                self.install_trusted(runtime, bytes, Some(digest), None, &origin)
                                    .map(|(installed, _)| installed),
                            );
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("a compile thread panicked"))
                .collect()
        });
        results.into_iter().collect()
    }

    fn wasm_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{digest}.wasm"))
    }

    fn manifest_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{digest}.json"))
    }
}

fn read_manifest(path: &Path) -> Result<PluginManifest, StoreError> {
    let text = std::fs::read(path).map_err(|source| StoreError::Io {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|e| StoreError::BadManifest {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| StoreError::Io {
            path: path.to_owned(),
            source,
        })
}

/// A version as comparable parts, numbers compared as numbers (`1.10.0` > `1.9.2`). Pre-release
/// tags get no special order: `1.0.0-rc1` sorts after `1.0.0`.
fn version_key(version: &str) -> Vec<(u8, u64, String)> {
    version
        .split(['.', '-', '+'])
        .map(|part| match part.parse::<u64>() {
            Ok(n) => (1, n, String::new()),
            Err(_) => (0, 0, part.to_owned()),
        })
        .collect()
}

#[cfg(test)]
mod version_tests {
    use super::version_key;

    #[test]
    fn versions_compare_by_their_numbers() {
        assert!(version_key("1.10.0") > version_key("1.9.2"));
        assert!(version_key("2.0.0") > version_key("1.99.99"));
        assert!(version_key("0.2.0") > version_key("0.1.7"));
        assert_eq!(version_key("1.2.3"), version_key("1.2.3"));
    }
}
