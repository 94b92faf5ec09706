//! Moving a plugin's sources to a new version on a live node, as an operator does with
//! `anode source upgrade`: a 30% canary moves exactly the sources whose canary hash falls in
//! the first 30%, a rollback moves them back, a promotion moves everyone, and across the
//! switches every trade the simulator sent is stored once. Then old versions: a used one and a
//! built-in one cannot be removed, an unused one is removed from the cluster and from disk.
//!
//! Also: a source stopped (paused, as a switch or a hand-over stops a session) before it stored
//! anything, with trades still on their way from the venue, stores them as it closes, and its
//! next session resumes from them: nothing the simulator sent is lost. A venue that does not
//! end the connection bounds the close (`sources.close_timeout_ms`), is counted, and what it
//! sent meanwhile comes from the venue's history in the next session.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::time::Duration;

use support::store::{Stored, trade_stream};
use support::{
    HoldingProxy, binance_sources, get_json, install_plugin, node_config, simulator, start_node,
    until, variant_of,
};

/// `anode source upgrade …` against the node at `api`; its output.
fn upgrade(api: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_anode"))
        .args([
            "source",
            "upgrade",
            "--url",
            api,
            "--plugin",
            "binance-trades",
        ])
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "upgrade {args:?}: {text}");
    text
}

/// Each source's plugin, as the catalog has it.
async fn plugins_of(api: &str) -> BTreeMap<String, String> {
    get_json(&format!("{api}/api/v1/sources"))
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let id = s["id"].as_str().unwrap().to_owned();
            (id, s["plugin"].as_str().unwrap().to_owned())
        })
        .collect()
}

/// Wait until every source runs live on the plugin the catalog names.
async fn until_live(api: &str, what: &str) {
    until(what, Duration::from_secs(60), || async {
        let sources = get_json(&format!("{api}/api/v1/sources")).await;
        let waiting: Vec<String> = sources
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["state"] != "live")
            .map(|s| format!("{} {} {}", s["id"], s["state"], s["last_error"]))
            .collect();
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(format!("{waiting:?}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_moves_its_share_rollback_and_promotion_finish_it_and_nothing_is_lost() {
    let sim = simulator(10.0).await;
    let data = tempfile::tempdir().unwrap();
    let sqlite = data.path().join("records.sqlite");
    let mut config = node_config(data.path());
    config.store.sqlite_path = Some(sqlite.clone());
    let node = start_node(config).await;
    let api = node.url();

    // Version "2": the built-in binance-trades with another digest, installed through the API.
    let plugins = get_json(&format!("{api}/api/v1/plugins")).await;
    let builtin = plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["manifest"]["name"] == "binance-trades")
        .unwrap()["manifest"]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let wasm = std::fs::read(data.path().join("plugins").join(format!("{builtin}.wasm"))).unwrap();
    let v2 = install_plugin(&api, variant_of(&wasm, "v2")).await;

    let specs = binance_sources(&sim, 20, "cy");
    support::add_sources(&api, &specs).await;
    until_live(&api, "every source live").await;

    // A 30% canary: exactly the sources whose canary position is below 30 move.
    let said = upgrade(&api, &["--to", &v2[..16], "--canary", "30"]);
    let want: HashSet<String> = specs
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .filter(|id| anode::supervisor::canary_position("binance-trades", id) < 30.0)
        .collect();
    assert!(
        !want.is_empty() && want.len() < 20,
        "the test needs a canary that is neither empty nor everything: {want:?}"
    );
    assert!(
        said.contains(&format!("{} source(s)", want.len())),
        "{said}"
    );
    assert!(
        said.contains("canary") && said.contains("ERROR RATE"),
        "{said}"
    );
    let on_v2 = |plugins: &BTreeMap<String, String>| -> HashSet<String> {
        plugins
            .iter()
            .filter(|(_, p)| **p == v2)
            .map(|(id, _)| id.clone())
            .collect()
    };
    let after_canary = plugins_of(&api).await;
    assert_eq!(on_v2(&after_canary), want);
    assert!(
        after_canary
            .iter()
            .all(|(id, p)| want.contains(id) || p == "binance-trades"),
        "{after_canary:?}"
    );
    until_live(&api, "the canary live on the new version").await;

    // Rollback: the canary goes back to what it ran before.
    upgrade(&api, &["--rollback"]);
    let rolled_back = plugins_of(&api).await;
    assert!(
        rolled_back.values().all(|p| p == "binance-trades"),
        "{rolled_back:?}"
    );
    until_live(&api, "the rolled-back sources live again").await;

    // A canary again, then promotion: everyone on the new version, no canary left.
    upgrade(&api, &["--to", &v2, "--canary", "30"]);
    until_live(&api, "the second canary live").await;
    let said = upgrade(&api, &["--to", &v2, "--promote"]);
    assert!(
        said.contains(&format!("{} source(s)", 20 - want.len())),
        "{said}"
    );
    let promoted = plugins_of(&api).await;
    assert!(promoted.values().all(|p| *p == v2), "{promoted:?}");
    let spec = get_json(&format!("{api}/api/v1/sources/cy-0")).await;
    assert!(spec["spec"].get("previous_plugin").is_none(), "{spec}");
    // Nothing left to roll back once promoted.
    let refused = Command::new(env!("CARGO_BIN_EXE_anode"))
        .args([
            "source",
            "upgrade",
            "--url",
            &api,
            "--plugin",
            "binance-trades",
            "--rollback",
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("nothing to roll back"));
    until_live(&api, "every source live on the new version").await;

    // Every trade the simulator sent, across the three switches, stored once.
    sim.pause();
    let stored = Stored::Sqlite(sqlite);
    until(
        "every sent trade stored",
        Duration::from_secs(60),
        || async {
            let report = sim.report();
            let mut wrong = Vec::new();
            for spec in &specs {
                let id = spec["id"].as_str().unwrap();
                let sent: HashSet<u64> = report.streams[&trade_stream(spec)].ids().collect();
                let have = stored.ids(id).await;
                let unique: HashSet<u64> = have.iter().copied().collect();
                assert_eq!(unique.len(), have.len(), "{id}: an id stored twice");
                if unique != sent {
                    let missing = sent.difference(&unique).count();
                    wrong.push(format!("{id}: {missing} of {} missing", sent.len()));
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

    // Removing versions: refused while used, refused for a built-in, done for an unused one.
    let remove = |plugin: &str| {
        Command::new(env!("CARGO_BIN_EXE_anode"))
            .args(["plugin", "remove", plugin, "--url", &api])
            .output()
            .unwrap()
    };
    let used = remove(&v2);
    assert!(!used.status.success());
    let said = String::from_utf8_lossy(&used.stderr);
    assert!(
        said.contains("409") && said.contains("used by 20 source(s)"),
        "{said}"
    );
    let built_in = remove(&builtin);
    assert!(!built_in.status.success());
    assert!(String::from_utf8_lossy(&built_in.stderr).contains("built into"));
    let v3 = install_plugin(&api, variant_of(&wasm, "v3")).await;
    let file = data.path().join("plugins").join(format!("{v3}.wasm"));
    assert!(file.exists());
    let removed = remove(&v3);
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    assert!(!file.exists(), "the node deleted its copy");
    let listed = get_json(&format!("{api}/api/v1/plugins")).await;
    assert!(
        !listed.to_string().contains(&v3),
        "a removed plugin is listed: {listed}"
    );
    assert!(listed.to_string().contains(&v2));

    node.shutdown().await;
    sim.shutdown().await;
}

/// The ids of `source` stored are exactly those the simulator sent on `stream`, at some poll
/// within the deadline.
async fn until_stored_as_sent(
    sim: &anode_feedsim::FeedSim,
    stored: &Stored,
    source: &str,
    stream: &str,
) {
    until(
        "every sent trade stored",
        Duration::from_secs(30),
        || async {
            let sent: HashSet<u64> = sim
                .report()
                .streams
                .get(stream)
                .map(|s| s.ids().collect())
                .unwrap_or_default();
            let have: HashSet<u64> = stored.ids(source).await.into_iter().collect();
            if have == sent {
                Ok(sent.len())
            } else {
                let mut missing: Vec<u64> = sent.difference(&have).copied().collect();
                missing.sort_unstable();
                Err(format!(
                    "sent {} stored {}; missing {missing:?}",
                    sent.len(),
                    have.len()
                ))
            }
        },
    )
    .await;
}

/// A node with one source whose venue is behind a [`HoldingProxy`].
struct Proxied {
    node: anode::node::NodeHandle,
    api: String,
    proxy: HoldingProxy,
    stored: Stored,
    stream: String,
    _data: tempfile::TempDir,
}

/// One node with one Binance source `id` whose WebSocket goes through a [`HoldingProxy`] (its
/// REST backfill straight to the simulator), storing into SQLite, with the given
/// `sources.close_timeout_ms`; live when this returns.
async fn proxied_source(sim: &anode_feedsim::FeedSim, id: &str, close_timeout_ms: u64) -> Proxied {
    let proxy = HoldingProxy::start(sim.addr()).await;
    let data = tempfile::tempdir().unwrap();
    let sqlite = data.path().join("records.sqlite");
    let mut config = node_config(data.path());
    config.store.sqlite_path = Some(sqlite.clone());
    config.sources.close_timeout_ms = close_timeout_ms;
    let node = start_node(config).await;
    let api = node.url();
    let spec = serde_json::json!({"id": id, "plugin": "binance-trades",
        "config": {"base_url": format!("ws://{}/binance", proxy.addr),
            "rest_url": format!("{}/binance", sim.http_url()),
            "symbols": [format!("{id}usdt")], "mode": "raw"}});
    support::add_sources(&api, std::slice::from_ref(&spec)).await;
    until_live(&api, "the source live").await;
    Proxied {
        node,
        api,
        proxy,
        stored: Stored::Sqlite(sqlite),
        stream: trade_stream(&spec),
        _data: data,
    }
}

/// `POST /api/v1/sources/<id>/<action>` (pause, resume) on the node at `api`.
fn source_action(api: &str, id: &str, action: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new().post(format!("{api}/api/v1/sources/{id}/{action}"))
}

/// Trades of `stream` the simulator has sent.
fn sent(sim: &anode_feedsim::FeedSim, stream: &str) -> usize {
    sim.report()
        .streams
        .get(stream)
        .map_or(0, |s| s.ids().count())
}

/// Resume the paused source `id` and check that its next session stores what the old one did
/// not (from the venue's history) and the live trades after it, id by id; then shut down.
async fn resume_and_check_every_trade_stored(sim: anode_feedsim::FeedSim, p: Proxied, id: &str) {
    let resumed = source_action(&p.api, id, "resume").send().await.unwrap();
    assert!(resumed.status().is_success());
    until_live(&p.api, "the source live again").await;
    let before = p.stored.ids(id).await.len();
    until("more trades stored", Duration::from_secs(30), || async {
        let now = p.stored.ids(id).await.len();
        if now >= before + 5 {
            Ok(())
        } else {
            Err(format!("{now} stored"))
        }
    })
    .await;
    sim.pause();
    until_stored_as_sent(&sim, &p.stored, id, &p.stream).await;
    p.node.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trades_in_flight_when_a_source_stops_before_its_first_stored_batch_are_stored() {
    let sim = simulator(20.0).await;
    sim.pause();
    // Room enough that the proxy is released well within the close.
    let p = proxied_source(&sim, "far", 10_000).await;

    // Trades sent (the venue's writes succeeded) and still on their way; nothing stored yet,
    // so the source has no cursor a next session could backfill from.
    p.proxy.hold();
    sim.resume();
    until("three trades sent", Duration::from_secs(30), || async {
        match sent(&sim, &p.stream) {
            n if n >= 3 => Ok(()),
            n => Err(format!("{n} sent")),
        }
    })
    .await;
    assert!(
        p.stored.ids("far").await.is_empty(),
        "nothing can be stored while the proxy holds the trades"
    );
    // Paused: the node stops the session, which sends its Close through the proxy (the only
    // thing the source sends on this raw stream). Only then do the trades in flight arrive.
    let said = p.proxy.client_bytes();
    let pause = tokio::spawn(source_action(&p.api, "far", "pause").send());
    until("the session's Close", Duration::from_secs(30), || async {
        match p.proxy.client_bytes() {
            now if now > said => Ok(()),
            now => Err(format!("{now} bytes from the source")),
        }
    })
    .await;
    p.proxy.release();
    assert!(pause.await.unwrap().unwrap().status().is_success());
    until_stored_as_sent(&sim, &p.stored, "far", &p.stream).await;
    assert!(!p.stored.ids("far").await.is_empty());

    // Resumed, the next session starts from what the closing one stored: the trades of the
    // pause come from the venue's history, and the live ones follow.
    resume_and_check_every_trade_stored(sim, p, "far").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_venue_that_does_not_end_the_connection_bounds_the_close_counts_it_and_loses_nothing() {
    let sim = simulator(20.0).await;
    let p = proxied_source(&sim, "mute", 300).await;
    // Stored trades first: the source has a cursor.
    until("trades stored", Duration::from_secs(30), || async {
        match p.stored.ids("mute").await.len() {
            n if n >= 3 => Ok(()),
            n => Err(format!("{n} stored")),
        }
    })
    .await;

    // The venue's side held from here on, its answer to the Close included: the close runs
    // out, is counted, and what the venue sent meanwhile stays in the proxy.
    p.proxy.hold();
    let at_hold = sent(&sim, &p.stream);
    until(
        "trades sent into the held proxy",
        Duration::from_secs(30),
        || async {
            match sent(&sim, &p.stream) {
                n if n >= at_hold + 3 => Ok(()),
                n => Err(format!("{n} sent")),
            }
        },
    )
    .await;
    let paused = source_action(&p.api, "mute", "pause").send().await.unwrap();
    assert!(paused.status().is_success());
    until("the close counted", Duration::from_secs(30), || async {
        let metrics = support::metrics_text(&p.api).await;
        let line = metrics
            .lines()
            .find(|l| l.starts_with("anode_source_close_timeouts_total "))
            .unwrap_or_default()
            .to_owned();
        if line == "anode_source_close_timeouts_total 1" {
            Ok(())
        } else {
            Err(format!("{line:?}"))
        }
    })
    .await;

    // Resumed, the next session backfills what the old one never read from the cursor.
    p.proxy.release();
    resume_and_check_every_trade_stored(sim, p, "mute").await;
}
