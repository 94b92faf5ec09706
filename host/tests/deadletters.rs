//! Nothing is lost on the paths beside the main one, counted id by id against what the feed
//! simulator generated:
//!
//! - a transform that traps on some events, runs past its deadline on others and refuses
//!   others (the `poison` fixture), and rows PostgreSQL refuses (a NUL in `jsonb`): every
//!   generated id is stored once or is in the dead-letter store, exactly the poisoned ones,
//!   and an `after=stored` subscriber never sees a dead letter; replayed through the fixed
//!   build of the plugin, every generated id is stored once — with the embedded store, with
//!   PostgreSQL, and with PostgreSQL and JetStream (required, and optional);
//! - a transform that says the source cannot go on stops it, and the events it was given are
//!   dead letters, so every id up to them is stored or kept;
//! - a connector's cursor the store cannot keep (a NUL) fails that source only, with a clear
//!   error: its records are stored, the cursor and a bad frame are dead letters, the committed
//!   cursor stays the last good one, another source on the node keeps storing; `anode
//!   deadletter` lists, shows, replays and purges them; removing the source forgets its
//!   cursor — with the embedded store and with PostgreSQL.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use support::cluster::{NodeOptions, NodeProc};
use support::store::{Stored, Subscriber, trade_stream};
use support::{
    TestDb, binance_sources, component, get_json, install_plugin, node_config, post_json,
    simulator, start_node, until,
};
use tokio_tungstenite::tungstenite::Message;

const LIMIT: Duration = Duration::from_secs(90);

/// `[m, r]` rules of the poison transform: an id n with n % m == r is chosen.
const TRAP: (u64, u64) = (29, 3);
const SPIN: (u64, u64) = (61, 7);
const REJECT: (u64, u64) = (23, 11);
const NUL: (u64, u64) = (31, 5);

fn hits((m, r): (u64, u64), n: u64) -> bool {
    n % m == r
}

/// The numbers of the dead letters' upstream ids, per source, and the letters.
async fn dead_letters(api: &str) -> (BTreeMap<String, BTreeSet<u64>>, Vec<Value>) {
    let answer = get_json(&format!("{api}/api/v1/deadletters")).await;
    let letters = answer["deadletters"].as_array().unwrap().clone();
    let mut by_source: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for letter in &letters {
        let n = letter["meta"]["upstream_id"]
            .as_str()
            .and_then(|u| u.rsplit(':').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a dead letter without its upstream id: {letter}"));
        by_source
            .entry(letter["source"].as_str().unwrap().to_owned())
            .or_default()
            .insert(n);
    }
    (by_source, letters)
}

/// Dead letters on JetStream's dead-letter subject (`<prefix>._deadletters.<source>`).
async fn jetstream_dead_letters(nats: &anode::sink::NatsSettings) -> usize {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull};
    let context = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    let stream = context.get_stream(&nats.stream).await.unwrap();
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: format!("{}._deadletters.>", nats.subject_prefix),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut n = 0;
    while let Ok(Some(Ok(message))) =
        tokio::time::timeout(Duration::from_millis(500), messages.next()).await
    {
        let letter: Value = serde_json::from_slice(&message.payload).unwrap();
        assert!(
            letter["reason"].is_string() && letter["stage"].is_string(),
            "{letter}"
        );
        n += 1;
    }
    n
}

/// Every id the venue generated for each of `specs` is stored once, or is a dead letter —
/// exactly those `poisoned` says.
async fn every_id_stored_once_or_dead(
    api: &str,
    stored: &Stored,
    specs: &[Value],
    report: &anode_feedsim::Report,
    poisoned: &dyn Fn(u64) -> bool,
) {
    until(
        "every generated id stored once or dead-lettered",
        LIMIT,
        || async {
            let (dead, _) = dead_letters(api).await;
            let counts = stored.counts().await;
            let mut wrong = Vec::new();
            for spec in specs {
                let id = spec["id"].as_str().unwrap();
                let (first, last) = report.streams[&trade_stream(spec)].generated.unwrap();
                let have: Vec<u64> = stored.ids(id).await;
                let have_set: BTreeSet<u64> = have.iter().copied().collect();
                let dead = dead.get(id).cloned().unwrap_or_default();
                let want_stored: BTreeSet<u64> = (first..=last).filter(|&n| !poisoned(n)).collect();
                let want_dead: BTreeSet<u64> = (first..=last).filter(|&n| poisoned(n)).collect();
                if have_set != want_stored || dead != want_dead || have.len() != have_set.len() {
                    let missing = want_stored.difference(&have_set).count();
                    let extra = have_set.difference(&want_stored).count();
                    wrong.push(format!(
                        "{id} {first}..={last}: {missing} missing, {extra} stored that are \
                         poisoned, {} rows for {} ids; dead {dead:?} want {want_dead:?}",
                        counts.get(id).copied().unwrap_or(0),
                        have_set.len()
                    ));
                }
            }
            if wrong.is_empty() {
                Ok(())
            } else {
                Err(wrong.join("; "))
            }
        },
    )
    .await;
}

/// The poison transform's chain, with every rule.
fn poisoned_chain() -> Value {
    json!([{"plugin": "poison", "config": {
        "trap_on": [TRAP], "spin_on": [SPIN], "reject_on": [REJECT], "nul_on": [NUL]}}])
}

/// Wait until each of `specs`' streams has generated `ids` ids.
async fn until_streams_pass(sim: &anode_feedsim::FeedSim, specs: &[Value], ids: u64) {
    let head = |s: &Value| {
        sim.report()
            .streams
            .get(&trade_stream(s))
            .and_then(|s| s.generated)
            .map_or(0, |g| g.1 - g.0)
    };
    until(&format!("each stream to pass {ids} ids"), LIMIT, || async {
        let low = specs.iter().map(head).min().unwrap_or(0);
        if low >= ids {
            Ok(())
        } else {
            Err(format!("{low}"))
        }
    })
    .await;
}

async fn poisoned_transforms_lose_nothing(
    root: tempfile::TempDir,
    stored: Stored,
    postgres: Option<String>,
    nats: Option<anode::sink::NatsSettings>,
) {
    let sim = simulator(40.0).await;
    let mut config = node_config(root.path());
    config.store.postgres_url = postgres.clone();
    config.store.nats = nats.clone();
    // A deadline passed costs its call this long (and each probe that holds the event).
    config.plugins.call_timeout_ms = 150;
    let node = start_node(config).await;
    let api = node.url();
    let poison = install_plugin(&api, component("poison-plugin")).await;
    let ws = format!("ws://{}/ws?after=stored", node.addr);
    let subscriber = Subscriber::connect(&ws).await;
    let mut specs = binance_sources(&sim, 3, "dl");
    for spec in &mut specs {
        spec["transforms"] = poisoned_chain();
    }
    support::add_sources(&api, &specs).await;
    // Long enough for every fault to strike every source more than once.
    until_streams_pass(&sim, &specs, 130).await;
    sim.pause();

    // Poisoned for this store: the NUL row is refused by PostgreSQL's jsonb only.
    let refused_by_store = postgres.is_some();
    let poisoned = |n: u64| {
        hits(TRAP, n) || hits(SPIN, n) || hits(REJECT, n) || (refused_by_store && hits(NUL, n))
    };
    let report = sim.report();
    every_id_stored_once_or_dead(&api, &stored, &specs, &report, &poisoned).await;

    // Each dead letter says where and why, and names the plugin that refused it.
    let (_, letters) = dead_letters(&api).await;
    for letter in &letters {
        let n: u64 = letter["meta"]["upstream_id"]
            .as_str()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let reason = letter["reason"].as_str().unwrap();
        if hits(NUL, n) && !hits(TRAP, n) && !hits(SPIN, n) && !hits(REJECT, n) {
            assert_eq!(letter["stage"], "store", "{letter}");
            assert!(
                reason.contains("22P05") || reason.contains("\\u0000"),
                "{reason}"
            );
        } else {
            assert_eq!(
                (&letter["stage"], &letter["step"]),
                (&json!("transform"), &json!(0)),
                "{letter}"
            );
            assert_eq!(letter["plugin"], json!(poison), "{letter}");
            let why = if hits(TRAP, n) {
                "trap"
            } else if hits(SPIN, n) {
                "deadline"
            } else {
                "refusing"
            };
            assert!(reason.contains(why), "{n}: {reason}");
        }
        let raw = letter["raw"].as_str().unwrap();
        assert!(raw.contains(&format!("\"trade_id\":{n}")), "{letter}");
    }
    // What an after=stored subscriber saw is what is stored: no dead letter among it.
    let stored_total: u64 = stored.counts().await.values().sum();
    until(
        "the subscriber to have every stored record",
        LIMIT,
        || async {
            let got = subscriber.received() as u64;
            if got == stored_total {
                Ok(())
            } else {
                Err(format!("{got} of {stored_total}"))
            }
        },
    )
    .await;
    if let Some(nats) = &nats {
        // JetStream has them too, on their own subject: a required JetStream those the batch
        // carried (the rows PostgreSQL refused come later, from the database), an optional
        // one every one (it gets copies of what the database committed).
        let want = if nats.required {
            letters.iter().filter(|l| l["stage"] != "store").count()
        } else {
            letters.len()
        };
        until("the dead letters on JetStream", LIMIT, || async {
            let n = jetstream_dead_letters(nats).await;
            if n == want {
                Ok(())
            } else {
                Err(format!("{n} of {want}"))
            }
        })
        .await;
    }
    let metrics = support::metrics_text(&api).await;
    assert!(
        metrics.contains(&format!(
            "anode_dead_letters_total{{stage=\"transform\"}} {}",
            letters.iter().filter(|l| l["stage"] == "transform").count()
        )),
        "{metrics}"
    );

    // The fixed build stores every one of them, once; a second replay has nothing left.
    let fixed = install_plugin(&api, component("poison-fixed-plugin")).await;
    let replay: Value = post_json(
        &format!("{api}/api/v1/deadletters/replay"),
        &json!({"plugin": fixed}),
    )
    .await;
    assert_eq!(replay["failed"], json!([]), "{replay}");
    assert_eq!(
        replay["replayed"].as_array().unwrap().len(),
        letters.len(),
        "{replay}"
    );
    for spec in &specs {
        let id = spec["id"].as_str().unwrap();
        let (first, last) = report.streams[&trade_stream(spec)].generated.unwrap();
        let have = stored.ids(id).await;
        let set: BTreeSet<u64> = have.iter().copied().collect();
        assert_eq!(have.len(), set.len(), "{id}: stored twice");
        assert_eq!(set, (first..=last).collect(), "{id}: after the replay");
    }
    let again: Value = post_json(
        &format!("{api}/api/v1/deadletters/replay"),
        &json!({"plugin": fixed}),
    )
    .await;
    assert_eq!(again["replayed"], json!([]), "{again}");
    let pending = get_json(&format!("{api}/api/v1/deadletters?pending=true")).await;
    assert_eq!(pending["deadletters"], json!([]));
    // A purge deletes them.
    let purged: Value = reqwest::Client::new()
        .delete(format!("{api}/api/v1/deadletters?all=true"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(purged["purged"], json!(letters.len()));
    subscriber.task.abort();
    sim.shutdown().await;
    node.shutdown().await;
    if let Some(nats) = nats {
        let client = async_nats::connect(&nats.url).await.unwrap();
        let _ = async_nats::jetstream::new(client)
            .delete_stream(&nats.stream)
            .await;
    }
    if let Stored::Postgres(db) = stored {
        db.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_transforms_lose_nothing_with_the_embedded_store() {
    let root = tempfile::tempdir().unwrap();
    let stored = Stored::Sqlite(root.path().join("records.sqlite"));
    poisoned_transforms_lose_nothing(root, stored, None, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_transforms_and_refused_rows_lose_nothing_with_postgres() {
    let db = TestDb::create(&support::pg_server()).await;
    let url = db.url.clone();
    let root = tempfile::tempdir().unwrap();
    poisoned_transforms_lose_nothing(root, Stored::Postgres(db), Some(url), None).await;
}

/// With JetStream required before PostgreSQL: a row PostgreSQL refuses was already published
/// (it is in the dead-letter store, and not stored); nothing else changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_transforms_and_refused_rows_lose_nothing_with_jetstream_required() {
    let db = TestDb::create(&support::pg_server()).await;
    let url = db.url.clone();
    let root = tempfile::tempdir().unwrap();
    let nats = support::nats_settings(&support::nats_url(), "DLREQ");
    poisoned_transforms_lose_nothing(root, Stored::Postgres(db), Some(url), Some(nats)).await;
}

/// With an optional JetStream after PostgreSQL: a refused row is not copied to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_transforms_and_refused_rows_lose_nothing_with_jetstream_optional() {
    let db = TestDb::create(&support::pg_server()).await;
    let url = db.url.clone();
    let root = tempfile::tempdir().unwrap();
    let nats = anode::sink::NatsSettings {
        required: false,
        ..support::nats_settings(&support::nats_url(), "DLOPT")
    };
    poisoned_transforms_lose_nothing(root, Stored::Postgres(db), Some(url), Some(nats)).await;
}

/// A venue the test drives frame by frame: one WebSocket connection at a time, fed what the
/// test sends on the channel.
async fn venue() -> (String, tokio::sync::mpsc::Sender<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/feed", listener.local_addr().unwrap());
    let (send, mut frames) = tokio::sync::mpsc::channel::<String>(16);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(mut socket) = tokio_tungstenite::accept_async(tcp).await else {
                continue;
            };
            while let Some(frame) = frames.recv().await {
                if socket.send(Message::text(frame)).await.is_err() {
                    break;
                }
            }
            let _ = socket.next().await;
        }
    });
    (url, send)
}

/// Wait until source `id` is `failed`; its last error.
async fn until_failed(api: &str, id: &str) -> String {
    let report = until(&format!("{id} to fail"), LIMIT, || async {
        let report = get_json(&format!("{api}/api/v1/sources/{id}")).await;
        if report["status"]["state"] == "failed" {
            Ok(report)
        } else {
            Err(report.to_string())
        }
    })
    .await;
    report["status"]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_cursor_fails_its_source_only_and_a_bad_frame_is_kept() {
    let root = tempfile::tempdir().unwrap();
    let stored = Stored::Sqlite(root.path().join("records.sqlite"));
    a_bad_cursor_fails_its_source_only(root, stored, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_cursor_fails_its_source_only_with_postgres() {
    let root = tempfile::tempdir().unwrap();
    let db = TestDb::create(&support::pg_server()).await;
    let url = db.url.clone();
    a_bad_cursor_fails_its_source_only(root, Stored::Postgres(db), Some(url)).await;
}

async fn a_bad_cursor_fails_its_source_only(
    root: tempfile::TempDir,
    stored: Stored,
    postgres: Option<String>,
) {
    let sim = simulator(20.0).await;
    let mut config = node_config(root.path());
    config.store.postgres_url = postgres;
    let node = start_node(config).await;
    let api = node.url();
    install_plugin(&api, component("hostile-plugin")).await;
    let (url, frames) = venue().await;
    let other = binance_sources(&sim, 1, "bystander");
    let cursor_source = json!({"id": "cursors", "plugin": "hostile",
        "config": {"mode": "cursor", "url": url}});
    support::add_sources(&api, &[cursor_source, other[0].clone()]).await;
    for frame in ["1", "2", "not a number", "3"] {
        frames.send(frame.into()).await.unwrap();
    }
    stored.until_at_least("cursors", 3).await;
    until("the cursor 3 committed", LIMIT, || async {
        let cursor = stored.cursors().await.get("cursors").cloned();
        if cursor.as_deref() == Some("3") {
            Ok(())
        } else {
            Err(format!("{cursor:?}"))
        }
    })
    .await;
    frames.send("4\u{0}".into()).await.unwrap();
    let error = until_failed(&api, "cursors").await;
    assert!(error.contains("cursor") && error.contains("NUL"), "{error}");
    // The batch's record is stored; the cursor stays the last good one.
    stored.until_at_least("cursors", 4).await;
    assert_eq!(
        stored.cursors().await.get("cursors").map(String::as_str),
        Some("3")
    );
    let mut ids = stored.ids("cursors").await;
    ids.sort();
    assert_eq!(ids, [1, 2, 3, 4]);
    // The bad frame and the bad cursor are dead letters, each with its raw bytes.
    let letters = get_json(&format!("{api}/api/v1/deadletters?source=cursors")).await;
    let letters = letters["deadletters"].as_array().unwrap().clone();
    let kinds: Vec<(&str, &str)> = letters
        .iter()
        .map(|l| (l["stage"].as_str().unwrap(), l["raw"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [("decode", "not a number"), ("cursor", "4\u{0}")],
        "{letters:?}"
    );
    assert_eq!(letters[0]["meta"]["input"], "frame");
    // The other source on the node goes on storing.
    let before = stored.count("bystander-0").await;
    stored.until_at_least("bystander-0", before + 10).await;
    // A replay of the bad frame through the same plugin fails again, and says why.
    let replay: Value = post_json(
        &format!("{api}/api/v1/deadletters/replay"),
        &json!({"source": "cursors"}),
    )
    .await;
    let failed: Vec<&str> = replay["failed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["reason"].as_str().unwrap())
        .collect();
    assert_eq!(failed.len(), 2, "{replay}");
    assert!(failed[0].contains("holds no number"), "{replay}");
    assert!(failed[1].contains("cursor is not replayed"), "{replay}");
    // The CLI shows the same: a table, one in full, a replay that says why, and a purge
    // that names what it deletes.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_anode"))
            .args(args)
            .args(["--url", &api])
            .env_remove("ANODE_TOKEN")
            .output()
            .expect("run anode");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, table) = cli(&["deadletter", "list", "--source", "cursors"]);
    assert!(
        ok && table.contains("decode") && table.contains("cursor"),
        "{table}"
    );
    assert!(table.contains("holds no number"), "{table}");
    let (ok, one) = cli(&["deadletter", "show", &letters[0]["id"].to_string()]);
    assert!(ok && one.contains("\"raw\": \"not a number\""), "{one}");
    let (ok, replayed) = cli(&["deadletter", "replay", "--source", "cursors"]);
    assert!(
        ok && replayed.contains("0 dead letter(s) replayed"),
        "{replayed}"
    );
    assert!(replayed.contains("failed again"), "{replayed}");
    let (ok, refused) = cli(&["deadletter", "purge"]);
    assert!(
        !ok && refused.contains("a purge names what it deletes"),
        "{refused}"
    );
    let (ok, purged) = cli(&["deadletter", "purge", "--source", "cursors"]);
    assert!(ok && purged.contains("2 dead letter(s) purged"), "{purged}");
    // Removed, the source's cursor goes with it: one added again under its id starts afresh.
    let removed = reqwest::Client::new()
        .delete(format!("{api}/api/v1/sources/cursors"))
        .send()
        .await
        .unwrap();
    assert!(removed.status().is_success());
    until("the removed source's cursor to go", LIMIT, || async {
        let cursors = stored.cursors().await;
        if cursors.contains_key("cursors") {
            Err(format!("{cursors:?}"))
        } else {
            Ok(())
        }
    })
    .await;
    sim.shutdown().await;
    node.shutdown().await;
    if let Stored::Postgres(db) = stored {
        db.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_transform_stops_its_source_and_keeps_what_it_was_given() {
    let sim = simulator(40.0).await;
    let root = tempfile::tempdir().unwrap();
    let stored = Stored::Sqlite(root.path().join("records.sqlite"));
    let node = start_node(node_config(root.path())).await;
    let api = node.url();
    install_plugin(&api, component("poison-plugin")).await;
    let mut spec = binance_sources(&sim, 1, "ft").remove(0);
    spec["transforms"] = json!([{"plugin": "poison", "config": {"fatal_on": [[40, 7]]}}]);
    support::add_sources(&api, &[spec.clone()]).await;
    let error = until_failed(&api, "ft-0").await;
    assert!(error.contains("giving up"), "{error}");
    // Every id from the first generated up to the last one the step was given is stored or a
    // dead letter; the one it gave up on is a dead letter saying so.
    let (first, _) = sim.report().streams[&trade_stream(&spec)]
        .generated
        .unwrap();
    let (dead, letters) = until("the dead letters", LIMIT, || async {
        let (dead, letters) = dead_letters(&api).await;
        if dead.contains_key("ft-0") {
            Ok((dead, letters))
        } else {
            Err("none".into())
        }
    })
    .await;
    let dead = &dead["ft-0"];
    let last = *dead.iter().next_back().unwrap();
    let have: BTreeSet<u64> = stored.ids("ft-0").await.into_iter().collect();
    let missing: Vec<u64> = (first..=last)
        .filter(|n| !have.contains(n) && !dead.contains(n))
        .collect();
    assert!(missing.is_empty(), "ids lost: {missing:?}");
    assert!(dead.iter().any(|n| n % 40 == 7), "{dead:?}");
    assert!(
        letters
            .iter()
            .all(|l| l["reason"].as_str().unwrap().contains("stopped the source")),
        "{letters:?}"
    );
    sim.shutdown().await;
}

/// The same faults with two nodes on one PostgreSQL, the `after=stored` subscriber on the
/// other node than half the sources: it receives exactly what is stored, relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_transforms_lose_nothing_for_a_subscriber_on_another_node() {
    let root = tempfile::tempdir().unwrap();
    let db = TestDb::create(&support::pg_server()).await;
    let sim = simulator(40.0).await;
    let options = |seeds: Vec<String>| NodeOptions {
        seeds,
        postgres: Some(db.url.clone()),
        extra: "[plugins]\ncall_timeout_ms = 150\n".into(),
        ..NodeOptions::default()
    };
    let first = NodeProc::start(root.path(), "x1", &options(Vec::new()));
    let second = NodeProc::start(root.path(), "x2", &options(vec![first.gossip.clone()]));
    install_plugin(&first.api, component("poison-plugin")).await;
    let ws = second.api.replace("http://", "ws://");
    let subscriber = Subscriber::connect(&format!("{ws}/ws?after=stored")).await;
    let mut specs = binance_sources(&sim, 4, "xn");
    for spec in &mut specs {
        spec["transforms"] = poisoned_chain();
    }
    support::add_sources(&first.api, &specs).await;
    until_streams_pass(&sim, &specs, 130).await;
    // Both nodes collect some of them.
    let owners: BTreeSet<String> = get_json(&format!("{}/api/v1/sources", first.api))
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["owner"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        owners.len(),
        2,
        "the sources are spread over both nodes: {owners:?}"
    );
    sim.pause();
    let poisoned = |n: u64| hits(TRAP, n) || hits(SPIN, n) || hits(REJECT, n) || hits(NUL, n);
    let stored = Stored::Postgres(db);
    let report = sim.report();
    every_id_stored_once_or_dead(&first.api, &stored, &specs, &report, &poisoned).await;
    let stored_ids = stored.record_ids(None).await;
    subscriber.until_received_exactly(&stored_ids, LIMIT).await;
    subscriber.task.abort();
    sim.shutdown().await;
    drop((first, second));
    if let Stored::Postgres(db) = stored {
        db.drop_db().await;
    }
}
