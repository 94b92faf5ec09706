//! Plugins in Python and JavaScript, as their authors make them: `anode plugin new --lang
//! python|js`, built with componentize-py / componentize-js, installed through one node of a
//! 3-node cluster and run on another. Every trade the simulator sent on their streams is
//! stored once (ids compared), and a subscriber on the installing node receives every stored
//! record. The JavaScript plugin needs more memory than the node's default and asks for it in
//! its manifest.
//!
//! The builders come from what `scripts/test.sh` prepares (`ANODE_TEST_PYTHON`'s virtualenv
//! holds componentize-py, `ANODE_TEST_NODE_MODULES` componentize-js). A built component is
//! cached in `target/test-tools/components` by the hash of its sources: a Python build takes
//! half a minute.

mod support;

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::cluster::{NodeProc, converged};
use support::store::{Stored, Subscriber};
use support::{sha256_hex, simulator, until};

fn anode() -> Command {
    Command::new(env!("CARGO_BIN_EXE_anode"))
}

fn run(command: &mut Command, what: &str) {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The tools dir of `scripts/test.sh`.
fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-tools")
}

/// A sha256 of every file under `dir` (names and bytes), for the build cache.
fn tree_hash(dir: &Path) -> String {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut all = Vec::new();
    for f in files {
        all.extend_from_slice(f.strip_prefix(dir).unwrap().to_string_lossy().as_bytes());
        all.extend_from_slice(&std::fs::read(&f).unwrap());
    }
    sha256_hex(&all)
}

/// `anode plugin new <name> --lang <lang>` in `parent`, then its build (or the cached
/// component of the same sources); the `.wasm` path.
fn made_and_built(parent: &Path, name: &str, lang: &str) -> PathBuf {
    run(
        anode()
            .args(["plugin", "new", name, "--lang", lang, "--dir"])
            .arg(parent),
        &format!("anode plugin new {name} --lang {lang}"),
    );
    let dir = parent.join(name);
    let cache = tools_dir().join("components");
    std::fs::create_dir_all(&cache).unwrap();
    let cached = cache.join(format!("{lang}-{}.wasm", tree_hash(&dir)));
    if cached.exists() {
        return cached;
    }
    // Native tests first, as the README has the author run them.
    match lang {
        "python" => {
            let python = std::env::var_os("ANODE_TEST_PYTHON")
                .map(PathBuf::from)
                .expect("ANODE_TEST_PYTHON: run through scripts/test.sh, which prepares it");
            run(
                Command::new(&python)
                    .args(["-m", "unittest", "-q"])
                    .current_dir(&dir),
                "python -m unittest",
            );
            let bin = python.parent().unwrap().to_owned();
            assert!(
                bin.join("componentize-py").exists(),
                "no componentize-py beside {}: run through scripts/test.sh, or pip install \
                 componentize-py==0.25.1 there",
                python.display()
            );
            let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
            run(
                Command::new("sh")
                    .arg("build.sh")
                    .env("PATH", path)
                    .current_dir(&dir),
                "build.sh (componentize-py)",
            );
        }
        _ => {
            let modules = std::env::var_os("ANODE_TEST_NODE_MODULES")
                .map(PathBuf::from)
                .expect("ANODE_TEST_NODE_MODULES: run through scripts/test.sh, which prepares it");
            run(
                Command::new("node").arg("--test").current_dir(&dir),
                "node --test",
            );
            std::os::unix::fs::symlink(&modules, dir.join("node_modules")).unwrap();
            run(
                Command::new("npm")
                    .args(["run", "-s", "build"])
                    .current_dir(&dir),
                "npm run build (componentize-js)",
            );
        }
    }
    let built = dir.join(format!("{name}.wasm"));
    std::fs::copy(&built, &cached).unwrap();
    cached
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_connectors_made_by_plugin_new_run_on_a_cluster() {
    let work = tempfile::tempdir().unwrap();
    // Both builds at once: each is mostly one process on one core.
    let (py, js) = {
        let (a, b) = (work.path().to_owned(), work.path().to_owned());
        let py = std::thread::spawn(move || made_and_built(&a, "py-echo", "python"));
        let js = std::thread::spawn(move || made_and_built(&b, "js-echo", "js"));
        (py.join().unwrap(), js.join().unwrap())
    };

    let root = tempfile::tempdir().unwrap();
    let db = support::TestDb::create(&support::pg_server()).await;
    let sim = simulator(10.0).await;
    let cluster = support::cluster::start_cluster(root.path(), "g", 3, Some(&db.url)).await;
    let (first, second) = (&cluster[0], &cluster[1]);
    let nodes: Vec<&NodeProc> = cluster.iter().collect();

    // Installed through g1's API only.
    for wasm in [&py, &js] {
        run(
            anode()
                .args(["plugin", "install", "--url", &first.api])
                .arg(wasm),
            "anode plugin install --url",
        );
    }

    // Two sources per plugin, with ids whose owner is not g1: they run on another node.
    let members = ["g1", "g2", "g3"];
    let mut specs: Vec<Value> = Vec::new();
    for plugin in ["py-echo", "js-echo"] {
        let mut n = 0;
        for i in 0.. {
            let id = format!("{plugin}-{i}");
            if anode::cluster::assign::owner(&id, members) == Some("g1") {
                continue;
            }
            let symbol = format!("{}{i}usdt", &plugin[..2]);
            specs.push(json!({"id": id, "plugin": plugin, "config": {
                "url": format!("{}/binance/ws/{symbol}@trade", sim.ws_url()), "id_field": "t"}}));
            n += 1;
            if n == 2 {
                break;
            }
        }
    }
    let ids: BTreeSet<String> = specs
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    let filter = ids.iter().cloned().collect::<Vec<_>>().join(",");
    let subscriber = Subscriber::connect(&format!(
        "{}/ws?source={filter}",
        first.api.replacen("http", "ws", 1)
    ))
    .await;
    support::add_sources(&first.api, &specs).await;
    until(
        "the polyglot sources to run on their owners",
        Duration::from_secs(90),
        || async { converged(&nodes, &ids).await },
    )
    .await;
    let stored = Stored::Postgres(db);
    until(
        "records from every source",
        Duration::from_secs(60),
        || async {
            let counts = stored.counts().await;
            let quiet: Vec<&String> = ids
                .iter()
                .filter(|id| counts.get(*id).copied().unwrap_or(0) < 20)
                .collect();
            if quiet.is_empty() {
                Ok(())
            } else {
                Err(format!("{quiet:?}: {counts:?}"))
            }
        },
    )
    .await;
    // Both plugins run away from g1 and were verified where they run.
    for spec in &specs {
        let owner = anode::cluster::assign::owner(spec["id"].as_str().unwrap(), members).unwrap();
        assert_ne!(owner, "g1");
    }

    // Every trade sent on their streams is stored once, and reached the subscriber on g1.
    sim.pause();
    until(
        "every sent trade stored",
        Duration::from_secs(60),
        || async {
            let report = sim.report();
            let mut wrong = Vec::new();
            for spec in &specs {
                let id = spec["id"].as_str().unwrap();
                let url = spec["config"]["url"].as_str().unwrap();
                let stream = format!("binance/{}", url.rsplit('/').next().unwrap());
                let sent: HashSet<u64> = report.streams[&stream].ids().collect();
                let have = stored.ids(id).await;
                let unique: HashSet<u64> = have.iter().copied().collect();
                assert_eq!(unique.len(), have.len(), "{id}: an id stored twice");
                if unique != sent || sent.is_empty() {
                    wrong.push(format!(
                        "{id}: {} stored, {} sent",
                        unique.len(),
                        sent.len()
                    ));
                }
            }
            if wrong.is_empty() {
                Ok(())
            } else {
                Err(format!("{wrong:?}"))
            }
        },
    )
    .await;
    let Stored::Postgres(db) = &stored else {
        unreachable!()
    };
    let record_ids: HashSet<String> = db
        .client()
        .await
        .query(
            "SELECT encode(id, 'hex') FROM anode_records WHERE source = ANY($1)",
            &[&ids.iter().cloned().collect::<Vec<_>>()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    until(
        "the subscriber on g1 to receive every record",
        Duration::from_secs(30),
        || async {
            let got = subscriber.ids.lock().unwrap().clone();
            let missing = record_ids.difference(&got).count();
            if missing == 0 {
                Ok(())
            } else {
                Err(format!("{missing} of {} not received", record_ids.len()))
            }
        },
    )
    .await;
    // The JavaScript plugin asked for 128 MiB in its manifest and ran under it without a stop.
    let plugins = second.get("/api/v1/plugins").await;
    let js_plugin = plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["manifest"]["name"] == "js-echo")
        .expect("js-echo fetched by g2");
    assert_eq!(
        js_plugin["manifest"]["config_schema"]["x-anode-limits"]["memory_mib"],
        128
    );
    let mut events = 0;
    for node in nodes {
        let plugins = node.get("/api/v1/plugins").await;
        for p in plugins.as_array().unwrap() {
            if p["manifest"]["name"] == "js-echo" && p["loaded"] == true {
                assert_eq!(
                    p["metrics"]["out_of_memory"], 0,
                    "{} stopped js-echo",
                    node.id
                );
                events += p["metrics"]["events_out"].as_u64().unwrap();
            }
        }
    }
    assert!(events > 0, "no node ran js-echo");
    sim.shutdown().await;
}
