//! The deployment files as an operator uses them: `deploy/install.sh` into temporary prefixes
//! with the real binary, the compose file and the Dockerfile checked against each other and
//! against the node's real configuration loader, the sources the compose cluster starts with
//! run against the feed simulator, and the one build script the image and the installer share.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anode::config::Config;
use serde_json::Value;
use support::{get_json, node_config, start_node, until};

/// The release build every deployment path uses (scripts/build-release.sh).
const RELEASE_BUILD: &str = "cargo build --release --locked -p anode";

/// Config keys (`section.key`) the deployment files may set through `ANODE_<SECTION>__<KEY>`:
/// the keys of host/src/config.rs they use, including the cluster's.
const KNOWN_KEYS: &[&str] = &[
    "data_dir",
    "node.id",
    "api.bind",
    "api.token",
    "api.read_token",
    "api.advertise",
    "store.postgres_url",
    "store.nats.url",
    "cluster.bind",
    "cluster.advertise",
    "cluster.seeds",
    "cluster.key",
    "cluster.cluster_id",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ is in the workspace")
        .to_owned()
}

fn read(path: &str) -> String {
    let file = repo().join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()))
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `deploy/install.sh` with `args`, without any `ANODE_*` variable of the test's environment.
fn install_sh(args: &[&str]) -> Output {
    let mut command = Command::new("bash");
    command.arg(repo().join("deploy/install.sh")).args(args);
    for (var, _) in std::env::vars() {
        if var.starts_with("ANODE_") {
            command.env_remove(var);
        }
    }
    command.output().expect("run bash deploy/install.sh")
}

fn install_ok(args: &[&str]) -> String {
    let output = install_sh(args);
    let (stdout, stderr) = text(&output);
    assert!(
        output.status.success(),
        "install.sh {args:?} failed:\n{stdout}\n{stderr}"
    );
    stdout
}

/// Runs an installed `anode`; panics with its output unless it succeeds.
fn run_ok(program: &Path, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .env_remove("ANODE_CONFIG")
        .env_remove("ANODE_DATA_DIR")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let (stdout, stderr) = text(&output);
    assert!(
        output.status.success(),
        "{} {args:?} failed:\n{stdout}\n{stderr}",
        program.display()
    );
    stdout
}

fn env_pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Whether this binary's configuration has a `[cluster]` section yet (it is being added while
/// the deployment files already use it). When it has one, every cluster key the files use must
/// load; until then those keys are checked against [`KNOWN_KEYS`] only.
fn config_has_cluster_section() -> bool {
    match Config::load(None, env_pairs(&[("ANODE_CLUSTER__BIND", "0.0.0.0:7946")])) {
        Ok(_) => true,
        Err(e) => !e.to_string().contains("unknown field `cluster`"),
    }
}

/// `ANODE_SECTION__KEY` → `section.key`.
fn config_key(var: &str) -> String {
    var.strip_prefix("ANODE_")
        .unwrap_or_else(|| panic!("{var} is not an ANODE_ variable"))
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect::<Vec<_>>()
        .join(".")
}

fn assert_known_key(var: &str, origin: &str) {
    let key = config_key(var);
    assert!(
        KNOWN_KEYS.contains(&key.as_str()),
        "{origin}: {var} sets `{key}`, which is not a config key the deployment knows ({KNOWN_KEYS:?})"
    );
}

fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

// ── install.sh ────────────────────────────────────────────────────────────────────────────

#[test]
fn install_sh_installs_a_working_node_and_a_second_run_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("opt-anode");
    let prefix_s = prefix.to_str().unwrap();
    let binary = env!("CARGO_BIN_EXE_anode");
    let args = ["--prefix", prefix_s, "--binary", binary, "--no-systemd"];

    let out = install_ok(&args);
    assert!(out.contains("==> installing the binary"), "{out}");
    assert!(
        out.contains(&format!(
            "{} built-in plugin(s) installed",
            anode::bundled_plugin_names().count()
        )),
        "plugins were not installed:\n{out}"
    );

    // A prefix other than /usr/local is self-contained.
    let installed = prefix.join("bin/anode");
    let config = prefix.join("etc/anode/anode.toml");
    let data_dir = prefix.join("var/lib/anode");
    let unit = prefix.join("lib/systemd/system/anode.service");
    assert_eq!(file_bytes(&installed), file_bytes(Path::new(binary)));
    let version = run_ok(&installed, &["--version"]);
    assert!(
        version.starts_with(&format!("anode {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );

    // The config written points the binary at the data dir holding the plugins.
    let loaded = Config::load(Some(&config), Vec::new()).expect("the written config loads");
    assert_eq!(loaded.data_dir, data_dir);
    assert_eq!(loaded.api.bind.to_string(), "127.0.0.1:7400");
    let list = run_ok(
        &installed,
        &[
            "--config",
            config.to_str().unwrap(),
            "plugin",
            "list",
            "--json",
        ],
    );
    let list: Value = serde_json::from_str(&list).expect("plugin list --json is JSON");
    let names: BTreeSet<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(
        anode::bundled_plugin_names().count() >= 7,
        "the first-party plugins are bundled"
    );
    for plugin in anode::bundled_plugin_names() {
        assert!(names.contains(plugin), "{plugin} not installed: {names:?}");
    }

    // The unit runs the installed binary with the installed config, stops with SIGINT.
    let unit_text = std::fs::read_to_string(&unit).expect("the unit file is written");
    for placeholder in ["@BINDIR@", "@CONFIG@", "@DATA_DIR@", "@USER@", "@GROUP@"] {
        assert!(
            read("deploy/anode.service").contains(placeholder),
            "the unit template has no {placeholder}"
        );
        assert!(
            !unit_text.contains(placeholder),
            "{placeholder} left:\n{unit_text}"
        );
    }
    for line in [
        format!(
            "ExecStart={} up --config {}",
            installed.display(),
            config.display()
        ),
        format!("ReadWritePaths={}", data_dir.display()),
        "User=anode".to_owned(),
        "Type=simple".to_owned(),
        "KillSignal=SIGINT".to_owned(),
        "Restart=on-failure".to_owned(),
        "NoNewPrivileges=yes".to_owned(),
        "ProtectSystem=strict".to_owned(),
        "LimitNOFILE=65536".to_owned(),
    ] {
        assert!(
            unit_text.lines().any(|l| l == line),
            "unit lacks `{line}`:\n{unit_text}"
        );
    }
    verify_unit(&unit);

    // Again: nothing changes, the config is byte for byte the same.
    let config_before = file_bytes(&config);
    let out = install_ok(&args);
    assert!(out.contains("nothing changed"), "{out}");
    assert_eq!(file_bytes(&config), config_before);

    // An operator's edit survives a new run.
    let mut edited = config_before.clone();
    edited.extend_from_slice(b"\n[fanout]\nqueue_len = 128\n");
    std::fs::write(&config, &edited).unwrap();
    let out = install_ok(&args);
    assert!(out.contains("kept as it is"), "{out}");
    assert_eq!(file_bytes(&config), edited);
}

/// `systemd-analyze verify` accepts the unit, warnings included; skipped (saying so) where the
/// tool is not installed.
fn verify_unit(unit: &Path) {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze is not installed: `systemd-analyze verify` of the unit skipped");
        return;
    }
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(
        output.status.success(),
        "systemd-analyze verify failed:\n{stdout}\n{stderr}"
    );
    // Unknown keys and bad values are only warnings (exit 0): none may name the unit.
    let complaints: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|l| l.contains("anode.service"))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify complains:\n{}",
        complaints.join("\n")
    );
}

#[test]
fn install_sh_dry_run_creates_nothing_and_bad_flags_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("p");
    let prefix_s = prefix.to_str().unwrap();

    // Without --binary it would build with the shared script.
    let out = install_ok(&[
        "--prefix",
        prefix_s,
        "--dry-run",
        "--join",
        "10.0.0.5:7946",
        "--cluster-key",
        "a-cluster-key-0123456789",
        "--bind",
        "0.0.0.0:7400",
    ]);
    assert!(
        out.contains(&format!("would run: {RELEASE_BUILD}")),
        "dry run does not show the build:\n{out}"
    );
    for step in [
        "would write config file",
        "would write unit file",
        "plugin install --builtin",
        "nothing was changed",
    ] {
        assert!(
            out.contains(step),
            "dry run does not mention `{step}`:\n{out}"
        );
    }
    assert!(!prefix.exists(), "the dry run created {}", prefix.display());
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "the dry run created files"
    );

    for (args, says) in [
        (
            vec!["--prefix", prefix_s, "--join", "no-port"],
            "--join no-port",
        ),
        (
            vec!["--prefix", prefix_s, "--bind", "localhost"],
            "--bind localhost",
        ),
        (
            vec!["--prefix", prefix_s, "--frobnicate"],
            "unknown option `--frobnicate`",
        ),
        (vec!["--dry-run", "--prefix"], "--prefix needs a value"),
        (
            vec!["--prefix", prefix_s, "--join", "10.0.0.5:7946"],
            "--join needs --cluster-key",
        ),
    ] {
        let output = install_sh(&args);
        let (stdout, stderr) = text(&output);
        assert!(!output.status.success(), "{args:?} was accepted:\n{stdout}");
        assert!(
            stderr.contains(says),
            "{args:?}: stderr does not say `{says}`:\n{stderr}"
        );
    }
    assert!(!prefix.exists());
}

#[test]
fn install_sh_writes_the_cluster_and_api_settings_it_is_given() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("node");
    let output = install_sh(&[
        "--prefix",
        prefix.to_str().unwrap(),
        "--binary",
        env!("CARGO_BIN_EXE_anode"),
        "--no-systemd",
        "--bind",
        "0.0.0.0:7400",
        "--postgres",
        "postgres://anode:pw@db.internal:5432/anode",
        "--join",
        "10.0.0.5:7946",
        "--join",
        "node-b.internal:7946",
        "--cluster-key",
        "s3cr\"et-0123456789abcdef",
        "--advertise",
        "10.0.0.9",
    ]);
    let (stdout, stderr) = text(&output);
    let config = prefix.join("etc/anode/anode.toml");
    let table: toml::Table = std::fs::read_to_string(&config)
        .unwrap_or_else(|e| panic!("config not written ({e}):\n{stdout}\n{stderr}"))
        .parse()
        .expect("the written config is TOML");
    assert_eq!(table["api"]["bind"].as_str(), Some("0.0.0.0:7400"));
    // Beyond loopback a node needs a write and a read token: both were generated.
    let token = table["api"]["token"].as_str().expect("a token is written");
    let read_token = table["api"]["read_token"]
        .as_str()
        .expect("a read token is written");
    for t in [token, read_token] {
        assert!(
            t.len() >= 32 && t.bytes().all(|b| b.is_ascii_hexdigit()),
            "{t}"
        );
    }
    assert_ne!(token, read_token);
    assert_eq!(
        table["store"]["postgres_url"].as_str(),
        Some("postgres://anode:pw@db.internal:5432/anode")
    );
    let seeds: Vec<&str> = table["cluster"]["seeds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(seeds, ["10.0.0.5:7946", "node-b.internal:7946"]);
    assert_eq!(
        table["cluster"]["key"].as_str(),
        Some("s3cr\"et-0123456789abcdef")
    );
    // Peers reach this node's gossip and API at the advertised address.
    assert_eq!(table["cluster"]["bind"].as_str(), Some("0.0.0.0:7946"));
    assert_eq!(
        table["cluster"]["advertise"].as_str(),
        Some("10.0.0.9:7946")
    );
    assert_eq!(table["api"]["advertise"].as_str(), Some("10.0.0.9:7400"));

    if config_has_cluster_section() {
        assert!(
            output.status.success(),
            "install.sh failed:\n{stdout}\n{stderr}"
        );
        let loaded = Config::load(Some(&config), Vec::new()).expect("the config loads");
        assert_eq!(loaded.api.token.as_deref(), Some(token));
    } else {
        // The binary refuses what it does not know yet, saying which section and what to do.
        assert!(!output.status.success());
        assert!(
            stderr.contains("cluster") && stderr.contains("run install.sh again"),
            "{stderr}"
        );
        eprintln!(
            "this binary has no [cluster] section yet: the cluster keys were checked as TOML only"
        );
    }
}

// ── scripts/build-release.sh and the Dockerfile ───────────────────────────────────────────

#[test]
fn build_release_dry_run_prints_the_one_release_build() {
    let output = Command::new("bash")
        .arg(repo().join("scripts/build-release.sh"))
        .arg("--dry-run")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&RELEASE_BUILD),
        "dry run printed:\n{stdout}"
    );
    // Besides the build, at most the wasm target's installation.
    for line in &lines[..lines.len() - 1] {
        assert_eq!(*line, "rustup target add wasm32-wasip2", "{stdout}");
    }
    // The installer builds through the same script.
    assert!(read("deploy/install.sh").contains("scripts/build-release.sh\""));
}

/// A Dockerfile's instructions, continuation lines joined, grouped by stage name.
/// A stage: base image, name, and its instructions (keyword, arguments).
type Stage = (String, String, Vec<(String, String)>);

fn dockerfile_stages(text: &str) -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    for line in logical {
        let (instruction, rest) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let instruction = instruction.to_ascii_uppercase();
        let rest = rest.trim().to_owned();
        if instruction == "FROM" {
            let words: Vec<&str> = rest.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => name.to_string(),
                _ => String::new(),
            };
            stages.push((name, words[0].to_owned(), Vec::new()));
        } else {
            stages
                .last_mut()
                .expect("an instruction before FROM")
                .2
                .push((instruction, rest));
        }
    }
    stages
}

fn instructions<'a>(stage: &'a [(String, String)], which: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter(|(i, _)| i == which)
        .map(|(_, rest)| rest.as_str())
        .collect()
}

/// `ENV A=1 B=2` instructions of a stage as a map.
fn dockerfile_env(stage: &[(String, String)]) -> BTreeMap<String, String> {
    instructions(stage, "ENV")
        .iter()
        .flat_map(|rest| rest.split_whitespace())
        .map(|pair| {
            let (k, v) = pair.split_once('=').expect("ENV KEY=VALUE");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// The runtime stage's exposed ports, as `7400/tcp`.
fn exposed(stage: &[(String, String)]) -> BTreeSet<String> {
    instructions(stage, "EXPOSE")
        .iter()
        .flat_map(|rest| rest.split_whitespace())
        .map(|p| {
            if p.contains('/') {
                p.to_owned()
            } else {
                format!("{p}/tcp")
            }
        })
        .collect()
}

fn runtime_stage() -> Vec<(String, String)> {
    dockerfile_stages(&read("deploy/Dockerfile"))
        .pop()
        .expect("stages")
        .2
}

#[test]
fn dockerfile_builds_with_the_shared_script_and_runs_unprivileged() {
    let stages = dockerfile_stages(&read("deploy/Dockerfile"));
    assert_eq!(stages.len(), 2, "a builder and a runtime stage");
    let (builder_name, builder_image, builder) = &stages[0];
    assert_eq!(builder_name, "builder");
    assert!(builder_image.starts_with("rust:"), "{builder_image}");
    let runs = instructions(builder, "RUN");
    assert!(
        runs.iter()
            .any(|r| r.contains("rustup target add wasm32-wasip2")),
        "{runs:?}"
    );
    assert!(
        runs.iter().any(|r| r.contains("scripts/build-release.sh")),
        "the builder must build with scripts/build-release.sh: {runs:?}"
    );
    assert!(
        !runs.iter().any(|r| r.contains("cargo build")),
        "the builder must not have a build command of its own: {runs:?}"
    );

    let (_, runtime_image, runtime) = &stages[1];
    assert!(
        runtime_image.starts_with("debian:bookworm"),
        "{runtime_image}"
    );
    let copies = instructions(runtime, "COPY");
    assert!(
        copies
            .iter()
            .any(|c| c.contains(&format!("--from={builder_name}")) && c.contains("/bin/anode")),
        "{copies:?}"
    );
    let user = instructions(runtime, "USER");
    assert_eq!(
        user,
        ["anode"],
        "the runtime runs as the non-root user anode"
    );
    let installs = instructions(runtime, "RUN").join(" ");
    assert!(
        installs.contains("useradd") && installs.contains("anode"),
        "{installs}"
    );
    assert!(installs.contains("ca-certificates"), "{installs}");

    let env = dockerfile_env(runtime);
    let volumes = instructions(runtime, "VOLUME").join(" ");
    let data_dir = env.get("ANODE_DATA_DIR").expect("ENV ANODE_DATA_DIR");
    assert!(
        volumes.contains(&format!("\"{data_dir}\""))
            || volumes.split_whitespace().any(|v| v == data_dir),
        "the data dir {data_dir} is not a VOLUME: {volumes}"
    );
    for var in env
        .keys()
        .filter(|k| k.starts_with("ANODE_") && *k != "ANODE_LOG")
    {
        assert_known_key(var, "Dockerfile ENV");
    }

    let ports = exposed(runtime);
    assert!(
        ports.contains("7400/tcp") && ports.contains("7946/udp"),
        "{ports:?}"
    );
    assert_eq!(
        env.get("ANODE_API__BIND").map(String::as_str),
        Some("0.0.0.0:7400")
    );

    let health = instructions(runtime, "HEALTHCHECK").join(" ");
    assert!(health.contains("http://127.0.0.1:7400/healthz"), "{health}");
    if health.contains("curl") {
        assert!(
            installs.contains("curl"),
            "HEALTHCHECK uses curl, which is not installed"
        );
    }
    assert_eq!(instructions(runtime, "ENTRYPOINT"), ["[\"anode\"]"]);
    assert_eq!(instructions(runtime, "CMD"), ["[\"up\"]"]);
    assert_eq!(instructions(runtime, "STOPSIGNAL"), ["SIGINT"]);

    // The build context (the repository root) leaves build outputs out.
    let ignore = read(".dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "target"), "{ignore}");
}

// ── compose.nats.yaml ──────────────────────────────────────────────────────────────────────

#[test]
fn the_nats_override_adds_a_jetstream_server_and_points_every_node_at_it() {
    let compose: Value = serde_norway::from_str(&read("deploy/compose.nats.yaml"))
        .expect("compose.nats.yaml parses");
    let services = compose["services"].as_object().expect("services");
    let nats = &services["nats"];
    assert!(nats["image"].as_str().unwrap().starts_with("nats:"));
    assert!(
        strings(&nats["command"]).contains(&"-js".to_owned()),
        "JetStream on"
    );
    for n in 1..=3 {
        let name = format!("node{n}");
        let env = services[&name]["environment"]
            .as_object()
            .unwrap_or_else(|| panic!("{name}: environment"));
        for var in env.keys() {
            assert_known_key(var, &format!("compose.nats {name}"));
        }
        let url = env["ANODE_STORE__NATS__URL"].as_str().unwrap();
        assert_eq!(url, "nats://nats:4222");
        // The node's own loader reads it as a JetStream sink with the documented defaults.
        let config = Config::load(None, env_pairs(&[("ANODE_STORE__NATS__URL", url)]))
            .expect("the override's settings load");
        let sink = config.store.nats.expect("a JetStream sink");
        assert_eq!(sink.url, url);
        assert_eq!(sink.stream, "ANODE");
        assert_eq!(sink.subject_prefix, "anode");
        assert!(sink.check().is_ok());
    }
}

// ── compose.yaml ──────────────────────────────────────────────────────────────────────────

/// `${VAR:-default}` → default, as compose does with VAR unset.
fn interpolate(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closed ${") + start;
        let inner = &rest[start + 2..end];
        // A default (`:-`), or a required secret (`:?message`): a value the operator gives.
        let value = match (inner.split_once(":-"), inner.split_once(":?")) {
            (Some((_, default)), _) => default,
            (None, Some((_, message))) => {
                assert!(!message.is_empty(), "`${{{inner}}}`: say what to set");
                "an-operator-given-secret-0123456789"
            }
            (None, None) => {
                panic!("`${{{inner}}}` has no default: give it one, or require it with `:?`")
            }
        };
        out.push_str(value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().expect("a string").to_owned())
            .collect(),
        other => panic!("expected a string or a list: {other}"),
    }
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("`{addr}` has no port"))
}

#[test]
fn compose_file_matches_the_image_and_the_configuration() {
    let compose: Value =
        serde_norway::from_str(&read("deploy/compose.yaml")).expect("compose.yaml parses");
    let services = compose["services"].as_object().expect("services");
    let runtime = runtime_stage();
    let image_env = dockerfile_env(&runtime);
    let ports = exposed(&runtime);
    let cluster = config_has_cluster_section();

    let pg = &services["postgres"];
    assert!(pg["image"].as_str().unwrap().starts_with("postgres:16"));
    assert!(
        strings(&pg["healthcheck"]["test"])
            .join(" ")
            .contains("pg_isready")
    );

    let feedsim = &services["feedsim"];
    let image = feedsim["image"].as_str().expect("feedsim image");
    assert_eq!(
        feedsim["build"]["dockerfile"].as_str(),
        Some("deploy/Dockerfile")
    );
    assert_eq!(
        strings(&feedsim["command"]),
        ["feedsim", "--bind", "0.0.0.0:7500"]
    );
    assert!(
        strings(&feedsim["healthcheck"]["test"])
            .join(" ")
            .contains("http://127.0.0.1:7500/healthz")
    );

    let volumes = compose["volumes"].as_object().expect("named volumes");
    let mut published = BTreeSet::new();
    for n in 1..=3 {
        let name = format!("node{n}");
        let node = services
            .get(&name)
            .unwrap_or_else(|| panic!("service {name} missing"));
        assert_eq!(node["image"].as_str(), Some(image), "{name}: same image");
        assert_eq!(node["build"], feedsim["build"], "{name}: same build");
        let command = strings(&node["command"]);
        assert_eq!(command[0], "up", "{name}: {command:?}");

        // Environment: only config keys, with the per-node values.
        let env: BTreeMap<String, String> = node["environment"]
            .as_object()
            .expect("environment as a map")
            .iter()
            .map(|(k, v)| {
                let v = v
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string());
                (k.clone(), interpolate(&v))
            })
            .collect();
        for var in env.keys() {
            assert_known_key(var, &format!("compose {name}"));
        }
        let get = |k: &str| {
            env.get(k)
                .unwrap_or_else(|| panic!("{name}: {k} missing"))
                .as_str()
        };
        assert_eq!(get("ANODE_NODE__ID"), name);
        assert_eq!(get("ANODE_API__ADVERTISE"), format!("{name}:7400"));
        assert_eq!(get("ANODE_CLUSTER__ADVERTISE"), format!("{name}:7946"));
        assert!(!get("ANODE_API__TOKEN").is_empty());
        assert!(!get("ANODE_API__READ_TOKEN").is_empty());
        assert!(!get("ANODE_CLUSTER__KEY").is_empty());
        let api_port = port_of(get("ANODE_API__BIND"));
        assert!(
            ports.contains(&format!("{api_port}/tcp")),
            "{name}: API port {api_port} not exposed"
        );
        let gossip_port = port_of(get("ANODE_CLUSTER__BIND"));
        assert!(
            ports.contains(&format!("{gossip_port}/udp")),
            "{name}: gossip port {gossip_port}/udp not exposed"
        );
        let seeds: toml::Value = format!("v = {}", get("ANODE_CLUSTER__SEEDS"))
            .parse::<toml::Table>()
            .expect("seeds are a TOML list")["v"]
            .clone();
        let seeds: Vec<&str> = seeds
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        for peer in 1..=3 {
            let seed = format!("node{peer}:{gossip_port}");
            assert!(
                seeds.contains(&seed.as_str()),
                "{name}: seed {seed} missing: {seeds:?}"
            );
            assert!(services.contains_key(&format!("node{peer}")));
        }
        let pg_url = get("ANODE_STORE__POSTGRES_URL");
        assert!(
            pg_url.starts_with("postgres://anode:anode@postgres:5432/"),
            "{pg_url}"
        );

        // Published on the host as 7400, 7401, 7402, each to the API port.
        let node_ports = strings(&node["ports"]);
        assert_eq!(node_ports, [format!("{}:{api_port}", 7399 + n)], "{name}");
        published.insert(node_ports[0].clone());

        let health = strings(&node["healthcheck"]["test"]).join(" ");
        assert!(
            health.contains(&format!("http://127.0.0.1:{api_port}/healthz")),
            "{name}: {health}"
        );

        let depends = node["depends_on"].as_object().expect("depends_on as a map");
        for (service, how) in depends {
            assert!(
                services.contains_key(service),
                "{name} depends on unknown {service}"
            );
            assert_eq!(how["condition"], "service_healthy", "{name} → {service}");
        }
        assert!(depends.contains_key("postgres") && depends.contains_key("feedsim"));

        // The data dir of the image is a named volume of its own.
        let data_dir = image_env["ANODE_DATA_DIR"].as_str();
        let mounts = strings(&node["volumes"]);
        let data_mount = mounts
            .iter()
            .find(|m| m.split(':').nth(1) == Some(data_dir))
            .unwrap_or_else(|| panic!("{name}: no volume at {data_dir}: {mounts:?}"));
        let volume = data_mount.split(':').next().unwrap();
        assert_eq!(volume, format!("{name}-data"));
        assert!(volumes.contains_key(volume), "volume {volume} not declared");

        // node1 starts with the sources file as its config.
        if n == 1 {
            assert_eq!(command, ["up", "--config", "/etc/anode/anode.toml"]);
            assert!(
                mounts.contains(&"./sources.toml:/etc/anode/anode.toml:ro".to_owned()),
                "{mounts:?}"
            );
            assert!(repo().join("deploy/sources.toml").exists());
        }

        // The node's real configuration loader takes this environment (the image's, then
        // the service's), with node1's file.
        let mut all: BTreeMap<String, String> = image_env
            .iter()
            .filter(|(k, _)| k.starts_with("ANODE_") && *k != "ANODE_LOG")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.extend(env.clone());
        if !cluster {
            all.retain(|k, _| !k.starts_with("ANODE_CLUSTER__") && k != "ANODE_API__ADVERTISE");
        }
        let file = (n == 1).then(|| repo().join("deploy/sources.toml"));
        let config = Config::load(file.as_deref(), all)
            .unwrap_or_else(|e| panic!("{name}: the configuration does not load: {e}"));
        assert_eq!(config.api.bind.port(), api_port);
        assert_eq!(config.node.id.as_deref(), Some(name.as_str()));
        assert_eq!(config.store.postgres_url.as_deref(), Some(pg_url));
        assert_eq!(config.data_dir, Path::new(data_dir));
        assert_eq!(config.source_specs.is_empty(), n != 1, "{name}");
    }
    assert_eq!(published.len(), 3);
    if !cluster {
        eprintln!(
            "this binary has no [cluster] section yet: cluster keys and api.advertise were checked against the known keys only"
        );
    }
}

/// `config` with gossip on a free loopback port, where the configuration has gossip (a fixed
/// port could be taken by another node on this machine).
fn loopback_gossip(config: Config) -> Config {
    if !config_has_cluster_section() {
        return config;
    }
    let mut table = toml::Table::try_from(&config).expect("the config serialises");
    table
        .entry("cluster")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .expect("[cluster] is a table")
        .insert("bind".into(), "127.0.0.1:0".into());
    serde::Deserialize::deserialize(toml::Value::Table(table)).expect("the config deserialises")
}

// ── sources.toml ──────────────────────────────────────────────────────────────────────────

fn spec_urls(config: &Value) -> Vec<String> {
    ["base_url", "url"]
        .iter()
        .filter_map(|k| config.get(*k).and_then(Value::as_str))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_sources_are_valid_and_run_against_the_feed_simulator() {
    let file = repo().join("deploy/sources.toml");
    let loaded = Config::load(Some(&file), Vec::new()).expect("sources.toml loads as a config");
    let specs = loaded.source_specs;
    assert!(specs.len() >= 12, "only {} sources", specs.len());
    let ids: BTreeSet<&str> = specs.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids.len(), specs.len(), "source ids repeat");
    let mut venues = BTreeSet::new();
    for spec in &specs {
        spec.validate().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            anode::bundled_plugin_names().any(|p| p == spec.plugin),
            "{}: {}",
            spec.id,
            spec.plugin
        );
        for t in &spec.transforms {
            assert!(
                anode::bundled_plugin_names().any(|p| p == t.plugin),
                "{}: {}",
                spec.id,
                t.plugin
            );
        }
        let urls = spec_urls(&spec.config);
        assert_eq!(urls.len(), 1, "{}: one URL", spec.id);
        let url = &urls[0];
        assert!(
            url.starts_with("ws://feedsim:7500/") || url.starts_with("http://feedsim:7500/"),
            "{}: {url} is not the compose simulator",
            spec.id
        );
        let path = url.split_once(":7500/").unwrap().1;
        venues.insert(match spec.plugin.as_str() {
            "http-json" if path.starts_with("binance/api/") => "binance-rest",
            "binance-trades" => "binance-ws",
            other => other,
        });
    }
    for venue in [
        "binance-ws",
        "binance-rest",
        "coinbase",
        "kraken-ticker",
        "evm-blocks",
    ] {
        assert!(venues.contains(venue), "no {venue} source: {venues:?}");
    }

    // The same sources, pointed at a simulator on loopback, all go live and produce records
    // through the real plugins and transforms.
    let sim = anode_feedsim::start(anode_feedsim::SimConfig {
        block_interval_ms: 200,
        ..anode_feedsim::SimConfig::default()
    })
    .await
    .expect("start the feed simulator");
    let data = tempfile::tempdir().unwrap();
    let mut config = loopback_gossip(node_config(data.path()));
    config.source_specs = specs
        .iter()
        .map(|spec| {
            let mut spec = spec.clone();
            let text = spec
                .config
                .to_string()
                .replace("ws://feedsim:7500", &sim.ws_url())
                .replace("http://feedsim:7500", &sim.http_url());
            spec.config = serde_json::from_str(&text).unwrap();
            spec
        })
        .collect();
    let node = start_node(config).await;
    let api = node.url();
    until(
        "every compose source to be live with records",
        Duration::from_secs(90),
        || async {
            let sources = get_json(&format!("{api}/api/v1/sources")).await;
            let list = sources.as_array().cloned().unwrap_or_default();
            let waiting: Vec<String> = list
                .iter()
                .filter(|s| s["state"] != "live" || s["events"].as_u64().unwrap_or(0) == 0)
                .map(|s| {
                    format!(
                        "{} {} events={} {}",
                        s["id"], s["state"], s["events"], s["last_error"]
                    )
                })
                .collect();
            if list.len() == specs.len() && waiting.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "{} of {} listed; waiting: {waiting:?}",
                    list.len(),
                    specs.len()
                ))
            }
        },
    )
    .await;
    node.shutdown().await;
    sim.shutdown().await;
}
