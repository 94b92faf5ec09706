//! The HTTP interfaces hold their contracts as outside tools read them: schemathesis (a
//! property-based contract tester, from PyPI) runs every check it has against a live node
//! with the node's own `/api/v1/openapi.json`, and `/metrics` parses with the Prometheus
//! text-format parser of the reference Python client, and the Grafana dashboard in `deploy/`
//! queries only what `/metrics` has.
//!
//! Both tools come from the Python environment `scripts/test.sh` prepares
//! (`ANODE_TEST_PYTHON`); without it the tests say how to get one.

mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::json;
use support::{node_config, start_node, until};

const TOKEN: &str = "contract-token";

/// The Python with schemathesis and prometheus_client installed.
fn python() -> PathBuf {
    let python = std::env::var_os("ANODE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| "python3".into());
    let found = Command::new(&python)
        .args(["-c", "import schemathesis, prometheus_client"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{} has no schemathesis or prometheus_client: run the tests with scripts/test.sh (it \
         prepares target/test-tools/py), or `pip install schemathesis prometheus-client` and \
         set ANODE_TEST_PYTHON to that Python",
        python.display()
    );
    python
}

/// A node with tokens set (so every guarded route is exercised with its token), one source
/// (whose venue does not answer, so it keeps reconnecting), and plugins installed: what a contract tester meets in a real deployment.
async fn node(dir: &std::path::Path) -> anode::node::NodeHandle {
    let mut config = node_config(dir);
    config.api.token = Some(TOKEN.into());
    config.api.read_token = Some("contract-read-token".into());
    let node = start_node(config).await;
    let api = node.url();
    let added = reqwest::Client::new()
        .post(format!("{api}/api/v1/sources"))
        .bearer_auth(TOKEN)
        .json(&json!({"id": "known", "plugin": "binance-trades",
            "config": {"symbols": ["btcusdt"], "base_url": "ws://127.0.0.1:9"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201, "{}", added.text().await.unwrap());
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_failure_in_the_openapi_document() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let api = node.url();
    // What the checks may not know from the document alone: a schema-valid source whose
    // plugin is not installed, or whose configuration its plugin refuses, is a 400, not a
    // 2xx, and a valid id that names no source is a 404. Everything else is as documented.
    std::fs::write(
        dir.path().join("schemathesis.toml"),
        "[checks.positive_data_acceptance]\nexpected-statuses = [\"2xx\", \"400\", \"404\", \"409\"]\n",
    )
    .unwrap();
    let api_for_run = api.clone();
    let dir_for_run = dir.path().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .current_dir(&dir_for_run)
            .env("SCHEMATHESIS_HOOKS", "")
            .args(["-m", "schemathesis.cli"])
            .args(["run", &format!("{api_for_run}/api/v1/openapi.json")])
            .args(["--checks", "all"])
            .args(["--phases", "examples,coverage,fuzzing"])
            .args(["--max-examples", "25"])
            .args(["--seed", "1"])
            .args(["--workers", "1"])
            .args(["--request-timeout", "10"])
            // An endless event stream: a request to it never ends by design.
            .args(["--exclude-path", "/api/v1/live"])
            .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
            .output()
            .expect("run schemathesis")
    })
    .await
    .unwrap();
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "schemathesis reported failures:\n{report}"
    );
    assert!(
        report.contains("passed") && !report.contains("No operations"),
        "schemathesis ran nothing:\n{report}"
    );
    // The node is still up and answers after the fuzzing.
    let health = reqwest::get(format!("{api}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_with_the_prometheus_text_parser() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let api = node.url();
    let client = reqwest::Client::new();
    let metrics = until("a scrape", std::time::Duration::from_secs(10), || async {
        let response = client
            .get(format!("{api}/metrics"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let content_type = response.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let text = response.text().await.map_err(|e| e.to_string())?;
        if text.contains("anode_source_events_total{source=\"known\"}") {
            Ok(text)
        } else {
            Err("the source is not running yet".into())
        }
    })
    .await;
    // The reference parser reads every family; each (name, labels) appears once, and the
    // families this node must have are there with the labels they promise.
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
seen, families = set(), {}
for family in text_string_to_metric_families(sys.stdin.read()):
    families[family.name] = family.type
    for sample in family.samples:
        key = (sample.name, tuple(sorted(sample.labels.items())))
        if key in seen:
            raise SystemExit(f"duplicate series {key}")
        seen.add(key)
        if sample.name == "anode_source_events_total":
            assert sample.labels == {"source": "known"}, sample
        if sample.name == "anode_plugin_calls_total":
            assert set(sample.labels) == {"plugin", "version", "digest"}, sample
print(json.dumps(families))
"#;
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the parser refused /metrics: {}\n{metrics}",
        String::from_utf8_lossy(&output.stderr)
    );
    let families: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for (name, kind) in [
        ("anode_source_events", "counter"),
        ("anode_source_live", "gauge"),
        ("anode_plugin_busy_seconds", "counter"),
        ("anode_store_rows_written", "counter"),
        ("anode_cluster_members", "gauge"),
        ("anode_gossip_packets_rejected", "counter"),
    ] {
        assert_eq!(families[name], kind, "{name} in {families}");
    }
    // The Grafana dashboard in deploy/ charts only series this node exposes.
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana-dashboard.json"),
    )
    .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let exposed: std::collections::HashSet<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let names = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("anode_"));
            for name in names {
                queried += 1;
                assert!(
                    exposed.contains(name),
                    "the dashboard's panel `{}` queries {name}, which /metrics does not have",
                    panel["title"]
                );
            }
        }
    }
    assert!(queried >= 20, "{queried}");
    node.shutdown().await;
}
