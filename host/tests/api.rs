//! The HTTP API as clients use it: validation errors that say what to fix, bearer tokens on
//! mutating routes, health and readiness, Prometheus metrics, the OpenAPI document, and the
//! `anode source` CLI against a running node.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::{get_json, node_config, start_node, until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_reasons_and_the_token_guards_changes() {
    let data = tempfile::tempdir().unwrap();
    let mut config = node_config(data.path());
    config.api.token = Some("s3cret".into());
    let node = start_node(config).await;
    let api = node.url();
    let client = reqwest::Client::new();
    let spec = json!({"id": "x", "plugin": "binance-trades", "config": {"symbols": ["btcusdt"], "base_url": "ws://127.0.0.1:9"}});

    let denied = client
        .post(format!("{api}/api/v1/sources"))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    let body: Value = denied.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("Bearer"), "{body}");

    let auth = |r: reqwest::RequestBuilder| r.bearer_auth("s3cret");
    let cases = [
        (
            json!({"id": "bad id!", "plugin": "binance-trades"}),
            "source id",
        ),
        (
            json!({"id": "a", "plugin": "no-such-plugin"}),
            "no-such-plugin",
        ),
        (
            json!({"id": "a", "plugin": "filter"}),
            "transform, not a connector",
        ),
        (
            json!({"id": "a", "plugin": "binance-trades", "confg": {}}),
            "unknown field `confg`",
        ),
        (
            json!({"id": "a", "plugin": "binance-trades", "config": {"symbols": 5}}),
            "refused to start it",
        ),
    ];
    for (body, needle) in cases {
        let response = auth(client.post(format!("{api}/api/v1/sources")))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        assert!(
            error["error"].as_str().unwrap().contains(needle),
            "{body} → {error}"
        );
    }
    let added = auth(client.post(format!("{api}/api/v1/sources")))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201);
    let again = auth(client.post(format!("{api}/api/v1/sources")))
        .json(&spec)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    // Reads need no token.
    let one = get_json(&format!("{api}/api/v1/sources/x")).await;
    assert_eq!(one["spec"]["plugin"], "binance-trades");
    assert!(one["status"]["state"].is_string());
    let unknown = client
        .get(format!("{api}/api/v1/sources/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);

    assert_eq!(
        client
            .get(format!("{api}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The store connects in the background; readiness follows once it has.
    until("the node to be ready", Duration::from_secs(20), || async {
        let ready = client.get(format!("{api}/readyz")).send().await.unwrap();
        match ready.status().as_u16() {
            200 => Ok(()),
            503 => Err(ready.text().await.unwrap_or_default()),
            other => panic!("/readyz answered {other}, not 200 or 503"),
        }
    })
    .await;
    let openapi = get_json(&format!("{api}/api/v1/openapi.json")).await;
    assert!(openapi["paths"]["/api/v1/sources"]["post"].is_object());
    // A family appears once it has a series: the source's, once it runs here.
    let metrics = until("the source's series", Duration::from_secs(20), || async {
        let text = client
            .get(format!("{api}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains("anode_source_events_total{source=\"x\"}") {
            Ok(text)
        } else {
            Err("no series for source x yet".to_owned())
        }
    })
    .await;
    for family in [
        "anode_source_events_total",
        "anode_store_rows_written_total",
        "anode_fanout_subscribers",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {family}")),
            "{family} missing:\n{metrics}"
        );
    }
    let status = get_json(&format!("{api}/api/v1/status")).await;
    assert_eq!(status["store"]["kind"], "sqlite");
    assert_eq!(status["node"]["id"], node.state.node_id());

    let removed = auth(client.delete(format!("{api}/api/v1/sources/x")))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 200);
    node.shutdown().await;
}

#[test]
fn a_node_beyond_loopback_needs_a_token() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_anode"))
        .arg("--data-dir")
        .arg(data.path())
        .args(["up", "--bind", "0.0.0.0:0"])
        .env_remove("ANODE_API__TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("api.token"), "{stderr}");
}

#[test]
fn a_wrong_config_names_the_key() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("anode.toml");
    std::fs::write(&file, "[store]\nbuffer_record = 5\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_anode"))
        .arg("--config")
        .arg(&file)
        .arg("up")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("buffer_record"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_cli_drives_a_running_node() {
    let data = tempfile::tempdir().unwrap();
    let node = start_node(node_config(data.path())).await;
    let url = node.url();
    let cli = |args: &[&str]| {
        let url = url.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        async move {
            tokio::task::spawn_blocking(move || {
                Command::new(env!("CARGO_BIN_EXE_anode"))
                    .args(&args)
                    .env("ANODE_URL", url)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap()
        }
    };
    let out = cli(&[
        "source",
        "add",
        "cli-1",
        "--plugin",
        "binance-trades",
        "--plugin-config",
        r#"{"symbols":["btcusdt"],"base_url":"ws://127.0.0.1:9"}"#,
        "--transform",
        r#"filter={"keep":[{"field":"$stream","op":"eq","value":"trades"}]}"#,
    ])
    .await;
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert!(out.status.success(), "{}", text(&out));
    let spec = get_json(&format!("{url}/api/v1/sources/cli-1")).await["spec"].clone();
    assert_eq!(spec["transforms"][0]["plugin"], "filter", "{spec}");
    let list = cli(&["source", "list"]).await;
    assert!(list.status.success(), "{}", text(&list));
    let table = String::from_utf8_lossy(&list.stdout);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains("cli-1") && table.contains("binance-trades"),
        "{table}"
    );
    let out = cli(&["source", "remove", "cli-1"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let out = cli(&["source", "remove", "cli-1"]).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("no source `cli-1`"), "{}", text(&out));

    // Many at once from a file: all or none.
    let file = data.path().join("sources.toml");
    let mut toml = String::new();
    for n in 0..3 {
        toml.push_str(&format!(
            "[[source]]\nid = \"bulk-{n}\"\nplugin = \"binance-trades\"\n\
             config = {{ symbols = [\"btcusdt\"], base_url = \"ws://127.0.0.1:9\" }}\n\n"
        ));
    }
    std::fs::write(&file, &toml).unwrap();
    let path = file.to_str().unwrap();
    let out = cli(&["source", "add", "--file", path]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("3 sources added"), "{}", text(&out));
    let ids = |list: &Value| -> Vec<String> {
        let mut ids: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let listed = ids(&get_json(&format!("{url}/api/v1/sources")).await);
    assert_eq!(listed, ["bulk-0", "bulk-1", "bulk-2"]);
    // One bad spec (and one already there) in a file: nothing of it is added.
    toml.push_str(
        "[[source]]\nid = \"bulk-3\"\nplugin = \"binance-trades\"\n\
         [[source]]\nid = \"bulk-4\"\nplugin = \"no-such-plugin\"\n",
    );
    std::fs::write(&file, &toml).unwrap();
    let out = cli(&["source", "add", "--file", path]).await;
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("no source was added")
            && said.contains("`bulk-0` already exists")
            && said.contains("no-such-plugin"),
        "{said}"
    );
    let listed = ids(&get_json(&format!("{url}/api/v1/sources")).await);
    assert_eq!(listed, ["bulk-0", "bulk-1", "bulk-2"]);
    // A JSON array works the same.
    let json_file = data.path().join("more.json");
    let more = json!([{"id": "bulk-9", "plugin": "binance-trades",
        "config": {"symbols": ["btcusdt"], "base_url": "ws://127.0.0.1:9"}}]);
    std::fs::write(&json_file, more.to_string()).unwrap();
    let out = cli(&["source", "add", "--file", json_file.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", text(&out));
    let listed = ids(&get_json(&format!("{url}/api/v1/sources")).await);
    assert_eq!(listed, ["bulk-0", "bulk-1", "bulk-2", "bulk-9"]);
    let bad = data.path().join("bad.toml");
    std::fs::write(&bad, "[[sources]]\nid = 1\n").unwrap();
    let out = cli(&["source", "add", "--file", bad.to_str().unwrap()]).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("[[source]] tables"), "{}", text(&out));
    node.shutdown().await;
}

/// A fresh client (no pooled connection) asking `/healthz` within `wait`.
async fn healthz_within(api: &str, wait: Duration) -> bool {
    reqwest::Client::new()
        .get(format!("{api}/healthz"))
        .timeout(wait)
        .send()
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_until_one_closes() {
    let data = tempfile::tempdir().unwrap();
    let mut config = node_config(data.path());
    config.api.max_connections = 3;
    let node = start_node(config).await;
    let api = node.url();
    let ws = api.replace("http://", "ws://") + "/ws";
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio_tungstenite::connect_async(&ws).await.unwrap().0);
    }
    // A fourth connection is not served while three are open.
    assert!(!healthz_within(&api, Duration::from_millis(700)).await);
    drop(held.pop());
    until(
        "a connection to be served again",
        Duration::from_secs(10),
        || async {
            if healthz_within(&api, Duration::from_secs(2)).await {
                Ok(())
            } else {
                Err("still waiting".to_owned())
            }
        },
    )
    .await;
    drop(held);
    let waited =
        support::cluster::metric_at(&api, "anode_api_connections_waited_total", None).await;
    assert!(waited >= 1.0, "{waited} waits counted");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_the_demo_while_it_is_still_adding_sources() {
    let data = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_anode"))
        .arg("--data-dir")
        .arg(data.path())
        .args(["demo", "--nodes", "1", "--sources", "20000", "--bind"])
        .arg(format!("127.0.0.1:{port}"))
        .env("ANODE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let api = format!("http://127.0.0.1:{port}");
    until(
        "the demo to be adding sources",
        Duration::from_secs(60),
        || async {
            let count = reqwest::get(format!("{api}/api/v1/sources"))
                .await
                .map_err(|e| e.to_string())?
                .json::<Value>()
                .await
                .map_err(|e| e.to_string())?
                .as_array()
                .map_or(0, Vec::len);
            if count > 0 {
                Ok(())
            } else {
                Err("none yet".into())
            }
        },
    )
    .await;
    let sent = Command::new("kill")
        .args(["-INT", &demo.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = demo.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = demo.kill();
            panic!("the demo did not stop within 15 s of Ctrl-C while seeding");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}

/// `anode bench` runs the simulator and a node of its own, and reports what it measured:
/// figures, and no id the simulator sent missing from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anode_bench_reports_throughput_latency_and_no_loss() {
    let out = tokio::task::spawn_blocking(|| {
        Command::new(env!("CARGO_BIN_EXE_anode"))
            .args([
                "bench",
                "--sources",
                "5",
                "--rate",
                "40",
                "--duration",
                "2",
                "--subscribers",
                "2",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let out = support::BenchOutput(text);
    let text = &out.0;
    assert!(out.figure("stored") > 0.0, "{text}");
    assert!(out.figure("delivered") > 0.0, "{text}");
    assert!(out.line("latency").contains("p99"), "{text}");
    // The bench's own CPU (the simulator and the subscribers share the machine with the node).
    assert!(out.figure("bench ") > 0.0, "{text}");
    // From the simulator's µs send clock, and the path in parts: the network, the decode,
    // the node to the subscriber.
    let from_send = out.line("from send");
    assert!(
        from_send.contains("p99") && !from_send.contains(", 0 records"),
        "{text}"
    );
    let parts: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("part"))
        .collect();
    assert_eq!(parts.len(), 3, "{text}");
    for (part, says) in parts
        .iter()
        .zip(["frame received", "decoded, µs", "subscriber, µs"])
    {
        assert!(
            part.contains(says) && support::first_figure(part) >= 0.0,
            "{part} in {text}"
        );
    }
    out.sent_none_lost();
}
