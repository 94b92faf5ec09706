//! `anode plugin …`: scaffold, install, list, inspect and remove plugins in the local store.

use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::{KindArg, LangArg, PluginCommand, print_rows};
use crate::config::Config;
use crate::plugin::{self, Installed, Kind, PluginManifest, PluginRuntime, PluginStore};

fn open_store(config: &Config) -> anyhow::Result<(PluginStore, PluginRuntime)> {
    let store = PluginStore::open(&config.data_dir)?
        .with_trust(plugin::Trust::new(&config.plugins.trusted_keys));
    let runtime = PluginRuntime::new(
        config.plugins.clone(),
        Some(PluginStore::cache_dir(&config.data_dir)),
    )
    .context("cannot start the WebAssembly runtime")?;
    Ok((store, runtime))
}

pub(super) fn plugin_command(config: &Config, command: PluginCommand) -> anyhow::Result<()> {
    match command {
        PluginCommand::New {
            name,
            kind,
            dir,
            sdk,
            lang,
        } => {
            let kind = match kind {
                KindArg::Connector => Kind::Connector,
                KindArg::Transform => Kind::Transform,
            };
            let lang = match lang {
                LangArg::Rust => plugin::scaffold::Lang::Rust,
                LangArg::Python => plugin::scaffold::Lang::Python,
                LangArg::Js => plugin::scaffold::Lang::JavaScript,
            };
            if lang != plugin::scaffold::Lang::Rust {
                let created = plugin::scaffold::create_polyglot(&dir, &name, kind, lang)?;
                println!("created {kind} plugin `{name}` in {}", created.display());
                println!("next:");
                println!("  cd {}", created.display());
                if lang == plugin::scaffold::Lang::Python {
                    println!("  python3 -m unittest                  # native tests");
                    println!(
                        "  python3 -m venv .venv && .venv/bin/pip install -r requirements-build.txt"
                    );
                    println!("  PATH=.venv/bin:$PATH sh build.sh     # {name}.wasm");
                } else {
                    println!("  node --test                          # native tests");
                    println!("  npm install && npm run build         # {name}.wasm");
                }
                println!("  anode plugin install {name}.wasm");
                return Ok(());
            }
            let sdk = sdk.unwrap_or_else(plugin::scaffold::default_sdk_path);
            let created = plugin::scaffold::create(&dir, &name, kind, &sdk)?;
            println!("created {kind} plugin `{name}` in {}", created.display());
            println!("next:");
            println!("  cd {}", created.display());
            println!("  cargo test");
            println!("  cargo build --release --target wasm32-wasip2");
            println!(
                "  anode plugin install target/wasm32-wasip2/release/{}.wasm",
                name.replace('-', "_")
            );
            Ok(())
        }
        PluginCommand::Install {
            files,
            digest,
            url: Some(url),
            token,
            ..
        } => {
            if digest.is_some() && files.len() != 1 {
                bail!("--digest checks one file; give exactly one");
            }
            super::tokio_runtime()?.block_on(upload(&url, token.as_deref(), &files, digest))
        }
        PluginCommand::Install {
            files,
            digest,
            builtin,
            url: None,
            ..
        } => {
            if digest.is_some() && files.len() != 1 {
                bail!("--digest checks one file; give exactly one");
            }
            let (store, runtime) = open_store(config)?;
            if builtin {
                let installed = with_progress("installing built-in plugins", || {
                    store.install_bundled(&runtime)
                })?;
                for item in &installed {
                    print_installed(item, Duration::ZERO);
                }
                println!(
                    "{} built-in plugin(s) installed ({} already present)",
                    installed.len(),
                    crate::bundled::BUNDLED.len() - installed.len()
                );
            }
            for file in files {
                let bytes = std::fs::read(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?;
                let origin = file.display().to_string();
                let signature = read_signature(&file)?;
                let started = Instant::now();
                let (installed, _) = with_progress(&format!("compiling {origin}"), || {
                    store.install(
                        &runtime,
                        &bytes,
                        digest.as_ref(),
                        signature.as_ref(),
                        &origin,
                    )
                })?;
                print_installed(&installed, started.elapsed());
            }
            Ok(())
        }
        PluginCommand::List { json } => {
            let store = PluginStore::open(&config.data_dir)?;
            let manifests = store.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&manifests)?);
            } else if manifests.is_empty() {
                println!(
                    "no plugins installed in {} (try `anode plugin install --builtin`)",
                    config.data_dir.display()
                );
            } else {
                print_table(&manifests);
            }
            Ok(())
        }
        PluginCommand::Inspect { plugin } => {
            let store = PluginStore::open(&config.data_dir)?;
            let manifest = store.find(&plugin)?;
            println!("{}", serde_json::to_string_pretty(&manifest)?);
            Ok(())
        }
        PluginCommand::Keygen { out } => {
            let (secret, public) = plugin::keygen();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600) // only the owner may read a secret key
                .open(&out)
                .with_context(|| format!("cannot create {} (it must not exist)", out.display()))?;
            writeln!(file, "{secret}")?;
            println!("secret key written to {} (keep it secret)", out.display());
            println!("public key: {public}");
            println!("trust it on every node: [plugins] trusted_keys = [\"{public}\"]");
            Ok(())
        }
        PluginCommand::Sign { file, key } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let secret = std::fs::read_to_string(&key)
                .with_context(|| format!("cannot read the key {}", key.display()))?;
            let digest = plugin::Digest::of(&bytes);
            let signature = plugin::sign(&secret, &digest)
                .map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
            let out = signature_path(&file);
            std::fs::write(&out, signature.to_text() + "\n")
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "signed sha256:{digest} with key {} → {}",
                signature.key,
                out.display()
            );
            Ok(())
        }
        PluginCommand::Remove {
            plugin,
            url: Some(url),
            token,
        } => super::tokio_runtime()?.block_on(async {
            let url = url.trim_end_matches('/');
            let mut request =
                reqwest::Client::new().delete(format!("{url}/api/v1/plugins/{plugin}"));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let answer = super::call(request, url).await?;
            let m = &answer["removed"];
            println!(
                "removed {} {} (sha256:{}) from the cluster; every node deletes its copy",
                m["name"].as_str().unwrap_or("?"),
                m["version"].as_str().unwrap_or("?"),
                m["digest"].as_str().unwrap_or("?")
            );
            Ok(())
        }),
        PluginCommand::Remove { plugin, .. } => {
            let (store, runtime) = open_store(config)?;
            let removed = store.remove(Some(&runtime), &plugin)?;
            println!(
                "removed {} {} (sha256:{})",
                removed.name, removed.version, removed.digest
            );
            Ok(())
        }
    }
}

/// Where a plugin file's signature is kept: `<file>.sig`.
fn signature_path(file: &std::path::Path) -> std::path::PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".sig");
    name.into()
}

/// `anode plugin install --url`: upload each file, with the signature beside it, to a running
/// node's `POST /api/v1/plugins`.
async fn upload(
    url: &str,
    token: Option<&str>,
    files: &[std::path::PathBuf],
    digest: Option<plugin::Digest>,
) -> anyhow::Result<()> {
    let url = url.trim_end_matches('/');
    let client = reqwest::Client::new();
    for file in files {
        let bytes =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let local = plugin::Digest::of(&bytes);
        if let Some(want) = &digest
            && *want != local
        {
            bail!("{} has sha256 {local}, not {want}", file.display());
        }
        let mut request = client
            .post(format!("{url}/api/v1/plugins"))
            .header(reqwest::header::CONTENT_TYPE, "application/wasm")
            .body(bytes);
        if let Some(signature) = read_signature(file)? {
            request = request.header("x-anode-plugin-signature", signature.to_text());
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let started = Instant::now();
        let manifest = super::call(request, url).await?;
        let installed: PluginManifest = serde_json::from_value(manifest)
            .context("the node answered with something that is not a plugin manifest")?;
        if installed.digest != local {
            bail!(
                "the node stored sha256 {} for {}, whose sha256 is {local}",
                installed.digest,
                file.display()
            );
        }
        println!(
            "installed {} {} ({}) sha256:{} on {url} in {:.1}s; the cluster's catalog spreads it",
            installed.name,
            installed.version,
            installed.kind,
            installed.digest,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// The signature beside a plugin file, if there is one.
fn read_signature(file: &std::path::Path) -> anyhow::Result<Option<plugin::PluginSignature>> {
    let path = signature_path(file);
    match std::fs::read_to_string(&path) {
        Ok(text) => plugin::PluginSignature::from_text(&text)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn print_installed(installed: &Installed, took: Duration) {
    let m = &installed.manifest;
    let state = if installed.already_present {
        "already installed"
    } else {
        "installed"
    };
    println!(
        "{state} {} {} ({}) sha256:{} {} KiB{}",
        m.name,
        m.version,
        m.kind,
        m.digest,
        m.size.div_ceil(1024),
        if took.is_zero() {
            String::new()
        } else {
            format!(", ready in {:.2} s", took.as_secs_f64())
        }
    );
}

fn print_table(manifests: &[PluginManifest]) {
    let rows: Vec<[String; 6]> = manifests
        .iter()
        .map(|m| {
            [
                m.name.clone(),
                m.version.clone(),
                m.kind.to_string(),
                m.digest.short(),
                format!("{} KiB", m.size.div_ceil(1024)),
                m.description.clone(),
            ]
        })
        .collect();
    let header = ["NAME", "VERSION", "KIND", "DIGEST", "SIZE", "DESCRIPTION"].map(String::from);
    print_rows(&header, &rows);
}

/// Run `work` on a thread while a spinner shows on a terminal (a single line otherwise).
fn with_progress<T: Send>(label: &str, work: impl FnOnce() -> T + Send) -> T {
    let tty = std::io::stderr().is_terminal();
    if !tty {
        eprintln!("{label} …");
    }
    std::thread::scope(|scope| {
        let (done_tx, done) = mpsc::channel();
        let handle = scope.spawn(move || {
            let result = work();
            let _ = done_tx.send(());
            result
        });
        let started = Instant::now();
        const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
        let mut frame = 0usize;
        // The channel wait is the spinner's frame clock and the completion signal.
        while let Err(mpsc::RecvTimeoutError::Timeout) =
            done.recv_timeout(Duration::from_millis(100))
        {
            if tty {
                eprint!(
                    "\r{} {label} {:.1} s",
                    FRAMES[frame % FRAMES.len()],
                    started.elapsed().as_secs_f64()
                );
                let _ = std::io::stderr().flush();
                frame += 1;
            }
        }
        if tty {
            eprint!("\r{}\r", " ".repeat(label.chars().count() + 16));
        }
        handle.join().expect("the worker thread does not panic")
    })
}
