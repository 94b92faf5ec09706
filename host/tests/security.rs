//! Node-to-node security, every node its own `anode up` process on loopback and every wait a
//! poll with a deadline:
//!
//! - a signed node-to-node request is taken once: replayed, unsigned, wrongly signed or old,
//!   it is refused and counted; forged catalog entries over a valid signature (a clock far
//!   ahead, a wrong shape, an unknown kind) change nothing; a node without a key refuses writes;
//! - a replayed or stale gossip packet is dropped and counted, and membership is unchanged;
//! - gossip is sealed: every packet one node sent another, captured on the way, hides the
//!   catalog entry it carried (a source's header value and id), and the entry still arrived;
//! - the cluster key rolls across three live nodes (SIGHUP) with no member ever down, after
//!   which a node holding only the old key is refused;
//! - beyond loopback, reads need the read token (changes the write token) and secrets a
//!   plugin's schema marks are redacted;
//! - sources pointed at loopback outside the allow list, a link-local metadata address or the
//!   node's own API fail with a clear error and fetch nothing;
//! - with `plugins.trusted_keys`, unsigned and tampered plugins are refused at upload and at
//!   fetch from a peer, while a signed one is taken and spread with its signature;
//! - proxy variables in the environment change nothing; `sources.proxy` is used.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anode::cluster::{Envelope, Keys};
use serde_json::{Value, json};
use support::cluster::{NodeOptions, NodeProc, TEST_KEY, live_members, metric, metric_as};
use support::until;

const SETTLE: Duration = Duration::from_secs(60);
const NEXT_KEY: &str = "the-next-cluster-key-9876543210";

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn keys(key: &str) -> Keys {
    Keys::new("anode", &[key.to_owned()], 30_000)
}

fn joined(seed: &NodeProc) -> NodeOptions {
    NodeOptions {
        seeds: vec![seed.gossip.clone()],
        ..NodeOptions::default()
    }
}

async fn until_all_see_each_other(nodes: &[&NodeProc]) {
    let want: BTreeSet<String> = nodes.iter().map(|n| n.id.clone()).collect();
    until("every node to see every other alive", SETTLE, || async {
        for node in nodes {
            let seen = live_members(node).await;
            if seen != want {
                return Err(format!("{} sees {seen:?}", node.id));
            }
        }
        Ok(())
    })
    .await;
}

async fn fingerprint(node: &NodeProc) -> String {
    node.get("/api/v1/cluster").await["catalog"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// POST a catalog push to `node` with `signature` (if any); the status and the body.
async fn push(node: &NodeProc, body: &str, signature: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/cluster/v1/catalog/push", node.api))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(signature) = signature {
        request = request.header("x-anode-auth", signature);
    }
    let reply = request.send().await.unwrap();
    let status = reply.status().as_u16();
    (status, reply.json().await.unwrap_or(Value::Null))
}

fn signed(key: &str, body: &str, at_ms: i64) -> String {
    keys(key)
        .sign_request("POST", "/cluster/v1/catalog/push", body.as_bytes(), at_ms)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_to_node_requests_are_signed_fresh_and_used_once() {
    let root = tempfile::tempdir().unwrap();
    let a = NodeProc::start(root.path(), "s1", &NodeOptions::default());
    let b = NodeProc::start(root.path(), "s2", &joined(&a));
    until_all_see_each_other(&[&a, &b]).await;

    // A well-formed entry, signed with the cluster key: taken, and spread to the other node.
    let entry = json!({"key": "cursor/sec-test", "clock": 1, "node": "s9",
        "value": {"cursor": "7", "at_us": 0}});
    let body = json!({ "entries": [entry] }).to_string();
    let captured = signed(TEST_KEY, &body, now_ms());
    let (status, reply) = push(&a, &body, Some(&captured)).await;
    assert_eq!((status, &reply["applied"]), (200, &json!(1)), "{reply}");
    let taken = fingerprint(&a).await;
    until("the entry to reach s2", SETTLE, || async {
        let fp = fingerprint(&b).await;
        if fp == taken { Ok(()) } else { Err(fp) }
    })
    .await;

    // The same request again, as captured: refused.
    let (status, reply) = push(&a, &body, Some(&captured)).await;
    assert_eq!(status, 401, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("seen before"),
        "{reply}"
    );
    // Unsigned, signed with another key, signed for another body, or made long ago: refused.
    let (status, reply) = push(&a, &body, None).await;
    assert_eq!(status, 401, "{reply}");
    let forged = signed("some-other-cluster-key-0000", &body, now_ms());
    assert_eq!(push(&a, &body, Some(&forged)).await.0, 401);
    let other_body = body.replace("\"7\"", "\"8\"");
    let for_other = signed(TEST_KEY, &body, now_ms());
    assert_eq!(push(&a, &other_body, Some(&for_other)).await.0, 401);
    let old = signed(TEST_KEY, &body, now_ms() - 120_000);
    let (status, reply) = push(&a, &body, Some(&old)).await;
    assert_eq!(status, 401, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("time window"),
        "{reply}"
    );
    let refused = |reason: &'static str| {
        let a = &a;
        async move {
            metric(
                a,
                &format!("anode_cluster_requests_refused_total{{reason=\"{reason}\"}}"),
            )
            .await
        }
    };
    assert_eq!(refused("replay").await, 1.0);
    assert_eq!(refused("auth").await, 3.0);
    assert_eq!(refused("stale").await, 1.0);

    // Forged entries under a valid signature: a clock that would pin the key for ever, a
    // source whose value is not a source, an unknown kind. Nothing changes anywhere.
    let forged_entries = json!({"entries": [
        {"key": "cursor/sec-test", "clock": u64::MAX, "node": "s9",
            "value": {"cursor": "666", "at_us": 0}},
        {"key": "source/evil", "clock": 5, "node": "s9", "value": {"id": "other", "plugin": "x"}},
        {"key": "secrets/x", "clock": 5, "node": "s9", "value": null},
    ]})
    .to_string();
    let signature = signed(TEST_KEY, &forged_entries, now_ms());
    let (status, reply) = push(&a, &forged_entries, Some(&signature)).await;
    assert_eq!((status, &reply["applied"]), (200, &json!(0)), "{reply}");
    assert_eq!(metric(&a, "anode_catalog_entries_refused_total").await, 3.0);
    assert_eq!(fingerprint(&a).await, taken);
    assert_eq!(fingerprint(&b).await, taken);

    // A node without a cluster key takes no writes from anyone.
    let keyless = NodeProc::start(
        root.path(),
        "s3",
        &NodeOptions {
            key: Some(String::new()),
            ..NodeOptions::default()
        },
    );
    let (status, reply) = push(&keyless, &body, None).await;
    assert_eq!(status, 403, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("cluster.key"),
        "{reply}"
    );
    assert_eq!(
        metric(
            &keyless,
            "anode_cluster_requests_refused_total{reason=\"no_key\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_gossip_packet_is_dropped_and_counted() {
    let root = tempfile::tempdir().unwrap();
    let a = NodeProc::start(root.path(), "g1", &NodeOptions::default());
    let b = NodeProc::start(root.path(), "g2", &joined(&a));
    until_all_see_each_other(&[&a, &b]).await;
    let rejected = |reason: &'static str| {
        let a = &a;
        async move {
            metric(
                a,
                &format!("anode_gossip_packets_rejected_total{{reason=\"{reason}\"}}"),
            )
            .await
        }
    };
    let (replays, stale) = (rejected("replay").await, rejected("stale").await);
    // A packet sealed with the cluster key (what a capture off the wire holds), sent twice:
    // the first passes the envelope (and foca refuses its body), the second is a replay.
    let envelope = Envelope::new(keys(TEST_KEY));
    let packet = envelope.seal(b"captured gossip", now_ms());
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.send_to(&packet, &a.gossip).unwrap();
    socket.send_to(&packet, &a.gossip).unwrap();
    socket
        .send_to(&envelope.seal(b"old gossip", now_ms() - 120_000), &a.gossip)
        .unwrap();
    until(
        "g1 to drop the replay and the stale packet",
        SETTLE,
        || async {
            let now = (rejected("replay").await, rejected("stale").await);
            if now.0 >= replays + 1.0 && now.1 >= stale + 1.0 {
                Ok(())
            } else {
                Err(format!("replay, stale: {now:?}"))
            }
        },
    )
    .await;
    until_all_see_each_other(&[&a, &b]).await;
}

/// The second node reaches the first's gossip only through a UDP relay in the test, which
/// keeps a copy of every packet: none holds the source it announces in the clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_on_the_wire_hides_the_catalog_it_carries() {
    let root = tempfile::tempdir().unwrap();
    let (gossip_port, relay_port) = (support::free_udp_port(), support::free_udp_port());
    let a = NodeProc::start(
        root.path(),
        "w1",
        &NodeOptions {
            gossip_bind: Some(format!("127.0.0.1:{gossip_port}")),
            // Under `[cluster]`: peers send to the relay.
            extra: format!("advertise = \"127.0.0.1:{relay_port}\"\n"),
            ..NodeOptions::default()
        },
    );
    let relay = tokio::net::UdpSocket::bind(("127.0.0.1", relay_port))
        .await
        .unwrap();
    let captured = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let relaying = tokio::spawn({
        let captured = captured.clone();
        async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((len, _)) = relay.recv_from(&mut buf).await {
                captured.lock().unwrap().push(buf[..len].to_vec());
                let _ = relay.send_to(&buf[..len], ("127.0.0.1", gossip_port)).await;
            }
        }
    });
    let b = NodeProc::start(
        root.path(),
        "w2",
        &NodeOptions {
            seeds: vec![format!("127.0.0.1:{relay_port}")],
            ..NodeOptions::default()
        },
    );
    until_all_see_each_other(&[&a, &b]).await;
    let secret = "wire-secret-7f3a9c";
    let spec = json!({"id": "on-the-wire", "plugin": "http-json", "config": {
        "url": "http://127.0.0.1:9/prices", "headers": {"X-Api-Key": secret}}});
    let (status, body) = b.post("/api/v1/sources", &spec).await;
    assert_eq!(status, 201, "{body}");
    until("w1 to hold the source w2 announced", SETTLE, || async {
        let listed = a.get("/api/v1/sources").await;
        let ids: Vec<&str> = listed
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["id"].as_str())
            .collect();
        if ids.contains(&"on-the-wire") {
            Ok(())
        } else {
            Err(format!("{ids:?}"))
        }
    })
    .await;
    // A few rounds of probes and gossip after the announcement.
    until("gossip rounds through the relay", SETTLE, || async {
        let n = captured.lock().unwrap().len();
        if n >= 20 {
            Ok(())
        } else {
            Err(format!("{n} packets"))
        }
    })
    .await;
    relaying.abort();
    // The entry did travel by gossip (w2 reaches w1's gossip only through the relay).
    let heard = a.get("/api/v1/cluster").await["gossip"]["broadcasts_received"].clone();
    assert!(
        heard.as_u64().is_some_and(|n| n >= 1),
        "w1 heard {heard} broadcasts"
    );
    let packets = captured.lock().unwrap().clone();
    // Needles long enough that sealed (random-looking) bytes never hold one by chance.
    for needle in [secret.as_bytes(), b"on-the-wire", b"http-json", b"/prices"] {
        let seen = packets
            .iter()
            .filter(|p| p.windows(needle.len()).any(|w| w == needle))
            .count();
        assert_eq!(
            seen,
            0,
            "`{}` in the clear in {seen} of {} gossip packets",
            String::from_utf8_lossy(needle),
            packets.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_key_rolls_across_three_live_nodes_with_no_member_down() {
    let root = tempfile::tempdir().unwrap();
    let a = NodeProc::start(root.path(), "k1", &NodeOptions::default());
    let b = NodeProc::start(root.path(), "k2", &joined(&a));
    let c = NodeProc::start(root.path(), "k3", &joined(&a));
    let nodes = [&a, &b, &c];
    until_all_see_each_other(&nodes).await;
    let steps: [&[&str]; 3] = [
        &[TEST_KEY, NEXT_KEY], // every node also verifies the new key,
        &[NEXT_KEY, TEST_KEY], // then signs with it,
        &[NEXT_KEY],           // then forgets the old one.
    ];
    for (step, keys) in steps.iter().enumerate() {
        for node in nodes {
            node.roll_keys(keys);
            until("the node to reload its keys", SETTLE, || async {
                let events = node.get("/api/v1/events").await;
                let reloads = events["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|e| {
                        e["message"]
                            .as_str()
                            .is_some_and(|m| m.starts_with("cluster keys reloaded"))
                    })
                    .count();
                if reloads == step + 1 {
                    Ok(())
                } else {
                    Err(format!("{} reloads", reloads))
                }
            })
            .await;
        }
        until_all_see_each_other(&nodes).await;
    }
    // Gossip flowed under the new key the whole time: no node ever saw another down.
    for node in nodes {
        let events = node.get("/api/v1/events").await;
        let downs: Vec<&Value> = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "down")
            .collect();
        assert!(downs.is_empty(), "{}: {downs:?}", node.id);
    }
    // A node with only the old key is now a stranger.
    let refused_before = metric(&a, "anode_gossip_packets_rejected_total{reason=\"auth\"}").await;
    let stranger = NodeProc::start(
        root.path(),
        "k4",
        &NodeOptions {
            seeds: vec![a.gossip.clone()],
            key: Some(TEST_KEY.into()),
            ..NodeOptions::default()
        },
    );
    until("k1 to refuse the old key", SETTLE, || async {
        let refused = metric(&a, "anode_gossip_packets_rejected_total{reason=\"auth\"}").await;
        if refused > refused_before {
            Ok(())
        } else {
            Err(format!("{refused}"))
        }
    })
    .await;
    assert_eq!(live_members(&stranger).await, ["k4".to_owned()].into());
}

const WRITE_TOKEN: &str = "write-token-0123456789abcdef";
const READ_TOKEN: &str = "read-token-0123456789abcdef";

/// GET `path` of `node` with `token` as a bearer (if any); the status and the body.
async fn read(node: &NodeProc, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(format!("{}{path}", node.api));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let reply = request.send().await.unwrap();
    let status = reply.status().as_u16();
    (status, reply.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_loopback_reads_need_the_read_token_and_secrets_are_redacted() {
    let root = tempfile::tempdir().unwrap();
    let node = NodeProc::start(
        root.path(),
        "r1",
        &NodeOptions {
            api_section: Some(format!(
                "bind = \"0.0.0.0:0\"\ntoken = {WRITE_TOKEN:?}\nread_token = {READ_TOKEN:?}"
            )),
            ..NodeOptions::default()
        },
    );
    // Probes and the dashboard's page stay open; data does not.
    assert_eq!(read(&node, "/healthz", None).await.0, 200);
    for path in [
        "/api/v1/status",
        "/api/v1/sources",
        "/api/v1/events",
        "/metrics",
        "/api/v1/live",
    ] {
        let (status, reply) = read(&node, path, None).await;
        assert_eq!(status, 401, "{path}: {reply}");
        assert!(
            reply["error"].as_str().unwrap().contains("read_token"),
            "{reply}"
        );
        assert_eq!(
            read(&node, path, Some("not-the-token")).await.0,
            401,
            "{path}"
        );
    }
    let ws =
        tokio_tungstenite::connect_async(format!("{}/ws", node.api.replace("http://", "ws://")))
            .await;
    assert!(ws.is_err(), "/ws without a token must be refused");
    let ws = tokio_tungstenite::connect_async(format!(
        "{}/ws?token={READ_TOKEN}",
        node.api.replace("http://", "ws://")
    ))
    .await;
    assert!(ws.is_ok(), "/ws with the read token in the query");
    assert_eq!(read(&node, "/api/v1/status", Some(READ_TOKEN)).await.0, 200);
    assert_eq!(
        read(&node, "/api/v1/status", Some(WRITE_TOKEN)).await.0,
        200
    );
    let status = reqwest::get(format!("{}/api/v1/status?token={READ_TOKEN}", node.api))
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 200);

    // Changes need the write token; the read token is not enough.
    let spec = json!({"id": "keyed", "plugin": "http-json", "config": {
        "url": "http://10.255.255.1:9/prices", "headers": {"X-Api-Key": "very-secret-value"}}});
    let add = |token: &'static str| {
        let (url, spec) = (format!("{}/api/v1/sources", node.api), spec.clone());
        async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .json(&spec)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(add(READ_TOKEN).await, 401);
    assert_eq!(add(WRITE_TOKEN).await, 201);
    // The secret the plugin's schema marks is never read back.
    let (status, source) = read(&node, "/api/v1/sources/keyed", Some(READ_TOKEN)).await;
    assert_eq!(status, 200, "{source}");
    assert_eq!(
        source["spec"]["config"]["headers"], "<redacted>",
        "{source}"
    );
    assert_eq!(
        source["spec"]["config"]["url"],
        "http://10.255.255.1:9/prices"
    );
    assert!(!source.to_string().contains("very-secret-value"));
    let refused = metric_as(&node, "anode_api_requests_refused_total", Some(READ_TOKEN)).await;
    assert!(refused >= 12.0, "{refused} refusals counted");
}

/// A source's state and last error as its node reports them.
async fn source_state(api: &str, id: &str) -> (String, String, u64) {
    let source = support::get_json(&format!("{api}/api/v1/sources/{id}")).await;
    let status = &source["status"];
    (
        status["state"].as_str().unwrap_or_default().to_owned(),
        status["last_error"].as_str().unwrap_or_default().to_owned(),
        status["inputs"].as_u64().unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_reach_only_what_the_egress_policy_allows() {
    let allowed = support::simulator(20.0).await;
    let elsewhere = support::simulator(20.0).await;
    let data = tempfile::tempdir().unwrap();
    let mut config = support::node_config(data.path());
    // Only the one simulator: loopback otherwise stays refused.
    config.sources.allow = vec![allowed.addr().to_string()];
    let node = support::start_node(config).await;
    let api = node.url();
    let sources = [
        (
            "ok",
            json!({"plugin": "binance-trades", "config": {
            "base_url": format!("{}/binance", allowed.ws_url()), "symbols": ["eg1usdt"], "mode": "raw"}}),
        ),
        (
            "other-port",
            json!({"plugin": "binance-trades", "config": {
            "base_url": format!("{}/binance", elsewhere.ws_url()), "symbols": ["eg2usdt"], "mode": "raw"}}),
        ),
        (
            "other-port-http",
            json!({"plugin": "http-json", "config": {
            "url": format!("{}/binance/api/v3/ticker/price", elsewhere.http_url())}}),
        ),
        (
            "metadata",
            json!({"plugin": "http-json", "config": {
            "url": "http://169.254.169.254/latest/meta-data/"}}),
        ),
        (
            "itself",
            json!({"plugin": "http-json", "config": {
            "url": format!("{api}/api/v1/sources")}}),
        ),
    ];
    for (id, spec) in &sources {
        let mut spec = spec.clone();
        spec["id"] = json!(id);
        support::cluster::post(&format!("{api}/api/v1/sources"), &spec).await;
    }
    until(
        "the refused sources to fail and the allowed one to run",
        SETTLE,
        || async {
            let mut off = Vec::new();
            for (id, _) in &sources {
                let (state, error, inputs) = source_state(&api, id).await;
                let fine = match *id {
                    "ok" => state == "live" && inputs > 0,
                    _ => state == "failed" && error.contains("egress policy"),
                };
                if !fine {
                    off.push(format!("{id}: {state} {error}"));
                }
            }
            if off.is_empty() {
                Ok(())
            } else {
                Err(off.join("; "))
            }
        },
    )
    .await;
    for (id, why) in [
        ("other-port", "loopback"),
        ("metadata", "169.254.169.254"),
        ("itself", "own API"),
    ] {
        let (_, error, inputs) = source_state(&api, id).await;
        assert!(error.contains(why), "{id}: {error}");
        assert_eq!(inputs, 0, "{id} fetched something");
    }
    // Nothing reached the simulator outside the allow list.
    let report = elsewhere.report();
    assert_eq!(
        (report.faults.connections, report.faults.http_requests),
        (0, 0),
        "{:?}",
        report.faults
    );
    let count = support::cluster::metric_at(&api, "anode_egress_refused_total", None).await;
    assert!(count >= 4.0, "{count} refusals counted");
    node.shutdown().await;
    allowed.shutdown().await;
    elsewhere.shutdown().await;
}

fn anode(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_anode"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "anode {args:?}: {text}");
    text
}

/// Upload `bytes` to `node` with a `key:signature` header (if any); the status and the body.
async fn upload(node: &NodeProc, bytes: Vec<u8>, signature: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/api/v1/plugins", node.api))
        .body(bytes);
    if let Some(signature) = signature {
        request = request.header("x-anode-plugin-signature", signature.trim());
    }
    let reply = request.send().await.unwrap();
    let status = reply.status().as_u16();
    (status, reply.json().await.unwrap_or(Value::Null))
}

async fn events_text(node: &NodeProc) -> String {
    node.get("/api/v1/events").await.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_and_tampered_plugins_are_refused_where_keys_are_trusted() {
    let root = tempfile::tempdir().unwrap();
    let wasm_dir = std::path::Path::new(env!("ANODE_WASM_DIR"));
    let dir = root.path().join("publisher");
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("publisher.key");
    let printed = anode(&["plugin", "keygen", "--out", key.to_str().unwrap()]);
    let public = printed
        .lines()
        .find_map(|l| l.strip_prefix("public key: "))
        .unwrap()
        .to_owned();
    let signed = dir.join("hostile.wasm");
    std::fs::copy(wasm_dir.join("hostile_plugin.wasm"), &signed).unwrap();
    anode(&[
        "plugin",
        "sign",
        signed.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    let signature = std::fs::read_to_string(dir.join("hostile.wasm.sig")).unwrap();
    let unsigned = std::fs::read(wasm_dir.join("legacy_connector_plugin.wasm")).unwrap();

    let trusting = NodeProc::start(
        root.path(),
        "t1",
        &NodeOptions {
            extra: format!("[plugins]\ntrusted_keys = [{public:?}]\n"),
            ..NodeOptions::default()
        },
    );
    let open = NodeProc::start(root.path(), "t2", &joined(&trusting));
    until_all_see_each_other(&[&trusting, &open]).await;

    // On the trusting node: unsigned, and signed for other bytes (tampered), are refused.
    let (status, reply) = upload(&trusting, unsigned.clone(), None).await;
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("not signed"),
        "{reply}"
    );
    let (status, reply) = upload(&trusting, unsigned.clone(), Some(&signature)).await;
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("does not match"),
        "{reply}"
    );
    assert!(
        events_text(&trusting)
            .await
            .contains("plugin upload refused: it is not signed")
    );
    // Signed by the trusted key: taken, and spread with its signature.
    let (status, reply) =
        upload(&trusting, std::fs::read(&signed).unwrap(), Some(&signature)).await;
    assert_eq!(status, 201, "{reply}");
    assert_eq!(reply["signature"]["key"], json!(public));

    // A node that trusts no key takes the unsigned plugin; the trusting one refuses to fetch it.
    let (status, reply) = upload(&open, unsigned, None).await;
    assert_eq!(status, 201, "{reply}");
    until(
        "t1 to refuse the unsigned plugin t2 spread",
        SETTLE,
        || async {
            let events = events_text(&trusting).await;
            if events.contains("plugin legacy-ticks")
                && events.contains("refused: it is not signed")
            {
                Ok(())
            } else {
                Err(events)
            }
        },
    )
    .await;
    until("t2 to fetch the signed plugin", SETTLE, || async {
        let plugins = open.get("/api/v1/plugins").await.to_string();
        if plugins.contains("\"hostile\"") {
            Ok(())
        } else {
            Err(plugins)
        }
    })
    .await;
    let on_trusting = trusting.get("/api/v1/plugins").await;
    let names: Vec<&str> = on_trusting
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["loaded_on"].as_array().is_some())
        .filter_map(|p| p["manifest"]["name"].as_str())
        .collect();
    assert!(
        names.contains(&"hostile") && !names.contains(&"legacy-ticks"),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_come_from_the_configuration_never_from_the_environment() {
    // A "proxy" that only counts the connections made to it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(std::sync::atomic::AtomicU64::new(0));
    tokio::spawn({
        let connections = connections.clone();
        async move {
            while let Ok((socket, _)) = listener.accept().await {
                connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                drop(socket);
            }
        }
    });
    let count = || connections.load(std::sync::atomic::Ordering::Relaxed);
    let sim = support::simulator(20.0).await;
    let url = format!("{}/binance/api/v3/ticker/price", sim.http_url());
    let root = tempfile::tempdir().unwrap();

    // Every proxy variable set: the source reaches the venue directly, the proxy sees nothing.
    let env = [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ]
    .map(|name| (name.to_owned(), proxy.clone()))
    .to_vec();
    let node = NodeProc::start(
        root.path(),
        "proxy-env",
        &NodeOptions {
            env,
            ..NodeOptions::default()
        },
    );
    let spec = json!({"id": "direct", "plugin": "http-json", "config": {"url": url}});
    support::cluster::post(&format!("{}/api/v1/sources", node.api), &spec).await;
    until(
        "the source to fetch past the proxy variables",
        SETTLE,
        || async {
            match source_state(&node.api, "direct").await {
                (state, _, inputs) if state == "live" && inputs > 0 => Ok(()),
                (state, error, inputs) => Err(format!("{state}, {inputs} inputs, {error}")),
            }
        },
    )
    .await;
    assert_eq!(count(), 0, "a proxy from the environment was used");

    // `sources.proxy` is used (here through its environment override of the configuration).
    let configured = NodeProc::start(
        root.path(),
        "proxy-conf",
        &NodeOptions {
            env: vec![("ANODE_SOURCES__PROXY".to_owned(), proxy.clone())],
            ..NodeOptions::default()
        },
    );
    let spec = json!({"id": "proxied", "plugin": "http-json", "config": {"url": url}});
    support::cluster::post(&format!("{}/api/v1/sources", configured.api), &spec).await;
    until("the configured proxy to be asked", SETTLE, || async {
        if count() > 0 {
            Ok(())
        } else {
            Err("no connection yet".to_owned())
        }
    })
    .await;
    sim.shutdown().await;
}
