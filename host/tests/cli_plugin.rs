//! `anode plugin …` as a user runs it: the real binary, real files, a real plugin build.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn anode(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_anode"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env_remove("ANODE_CONFIG")
        .output()
        .expect("run anode")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn ok(data_dir: &Path, args: &[&str]) -> String {
    let output = anode(data_dir, args);
    let (stdout, stderr) = text(&output);
    assert!(
        output.status.success(),
        "anode {args:?} failed:\n{stdout}\n{stderr}"
    );
    stdout
}

fn wasm(name: &str) -> PathBuf {
    Path::new(env!("ANODE_WASM_DIR")).join(format!("{}.wasm", name.replace('-', "_")))
}

#[test]
fn install_list_inspect_remove() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path();
    assert!(ok(dir, &["plugin", "list"]).contains("no plugins installed"));

    let out = ok(dir, &["plugin", "install", "--builtin"]);
    assert!(out.contains("installed binance-trades"), "{out}");
    let out = ok(
        dir,
        &[
            "plugin",
            "install",
            wasm("hostile-plugin").to_str().unwrap(),
        ],
    );
    assert!(out.contains("installed hostile 0.1.0 (connector)"), "{out}");

    let list = ok(dir, &["plugin", "list"]);
    assert!(list.starts_with("NAME"), "{list}");
    assert!(
        list.contains("binance-trades") && list.contains("hostile"),
        "{list}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(dir, &["plugin", "list", "--json"])).unwrap();
    // The eight first-party plugins and the fixture.
    assert_eq!(json.as_array().unwrap().len(), 9);

    let inspected: serde_json::Value =
        serde_json::from_str(&ok(dir, &["plugin", "inspect", "binance-trades"])).unwrap();
    assert_eq!(inspected["kind"], "connector");
    assert_eq!(inspected["wit"], "anode:plugin@0.2.0");
    assert_eq!(inspected["digest"].as_str().unwrap().len(), 64);

    let out = ok(dir, &["plugin", "remove", "hostile"]);
    assert!(out.contains("removed hostile"), "{out}");
    assert!(!ok(dir, &["plugin", "list"]).contains("hostile"));
}

#[test]
fn install_errors_name_the_file_and_the_cause() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path();
    let junk = dir.join("junk.wasm");
    std::fs::write(&junk, b"definitely not wasm").unwrap();
    let cases: Vec<(PathBuf, Vec<&str>, &str)> = vec![
        (junk.clone(), vec![], "not a WebAssembly file"),
        (
            wasm("other-world-plugin"),
            vec![],
            "does not implement an aNode plugin world",
        ),
        (dir.join("missing.wasm"), vec![], "cannot read"),
        (
            wasm("binance-trades"),
            vec![
                "--digest",
                "0000000000000000000000000000000000000000000000000000000000000000",
            ],
            "digest mismatch",
        ),
    ];
    for (file, extra, expected) in cases {
        let mut args = vec!["plugin", "install", file.to_str().unwrap()];
        args.extend(extra);
        let output = anode(dir, &args);
        let (_, stderr) = text(&output);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(
            stderr.contains(file.file_name().unwrap().to_str().unwrap()),
            "{stderr}"
        );
    }
    assert!(ok(dir, &["plugin", "list"]).contains("no plugins installed"));
}

/// `plugin new` writes a crate that builds for wasm32-wasip2 as is and installs.
#[test]
fn scaffolded_plugins_build_and_install() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    // Shared across runs so the guest's dependencies build once.
    let target_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/scaffold-test");
    for (name, kind) in [("my-feed", "connector"), ("my-filter", "transform")] {
        let out = ok(
            data.path(),
            &[
                "plugin",
                "new",
                name,
                "--kind",
                kind,
                "--dir",
                work.path().to_str().unwrap(),
            ],
        );
        assert!(
            out.contains(&format!("created {kind} plugin `{name}`")),
            "{out}"
        );
        let crate_dir = work.path().join(name);
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&crate_dir)
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .env("CARGO_TARGET_DIR", &target_dir)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .expect("run cargo");
        assert!(status.success(), "the scaffolded {name} does not build");
        let built = target_dir
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", name.replace('-', "_")));
        let out = ok(data.path(), &["plugin", "install", built.to_str().unwrap()]);
        assert!(
            out.contains(&format!("installed {name} 0.1.0 ({kind})")),
            "{out}"
        );
    }
    let again = anode(
        data.path(),
        &[
            "plugin",
            "new",
            "my-feed",
            "--dir",
            work.path().to_str().unwrap(),
        ],
    );
    assert!(!again.status.success());
    assert!(text(&again).1.contains("already exists"));
    let bad = anode(
        data.path(),
        &[
            "plugin",
            "new",
            "My Feed",
            "--dir",
            work.path().to_str().unwrap(),
        ],
    );
    assert!(text(&bad).1.contains("not a valid plugin name"));
}

/// `ANODE_PLUGIN_PROFILER=perfmap` writes the perf map of the compiled plugin code, so that
/// `perf report` names the plugin's functions.
#[test]
fn the_perfmap_profiler_writes_a_map_of_the_plugin_code() {
    let data = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_anode"))
        .arg("--data-dir")
        .arg(data.path())
        .args(["plugin", "install"])
        .arg(wasm("binance-trades"))
        .env_remove("ANODE_CONFIG")
        .env("ANODE_PLUGIN_PROFILER", "perfmap")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run anode");
    // wasmtime writes it where `perf` looks: /tmp, whatever TMPDIR says.
    let map = Path::new("/tmp").join(format!("perf-{}.map", child.id()));
    let output = child.wait_with_output().expect("anode ends");
    let (stdout, stderr) = text(&output);
    assert!(
        output.status.success(),
        "install failed:\n{stdout}\n{stderr}"
    );
    let text = std::fs::read_to_string(&map).unwrap_or_default();
    let _ = std::fs::remove_file(&map);
    assert!(
        text.lines().any(|l| l.contains("wasm[")),
        "{} names no plugin function:\n{}",
        map.display(),
        text.lines().take(5).collect::<Vec<_>>().join("\n")
    );
}
