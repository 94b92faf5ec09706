//! NATS JetStream as a second, required sink beside PostgreSQL: every record the simulator
//! generated is in both, once, read back id by id; and a NATS server that goes away for 20 s
//! mid-run loses nothing — sources back off within the buffer's bound, and what was held is
//! published when the server returns. An optional JetStream that dropped records is not what
//! a resuming subscriber reads (the database is), and a JetStream tail hands out a record
//! published twice once.
//!
//! The first test uses the NATS server on 127.0.0.1:4222 (`scripts/test.sh` starts one when
//! none answers), with a stream of its own that it deletes; the second starts a private
//! `nats-server -js` it can stop.

mod support;

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use anode::sink::NatsSettings;
use async_nats::jetstream;
use futures_util::StreamExt as _;
use support::store::{Stored, trade_stream, until_streams_move_on};
use support::{
    binance_sources, free_port, get_json, jetstream_config, nats_server, simulator, start_node,
    until, until_nats_answers,
};

/// The record ids (hex) in JetStream stream `name`, and how many messages it holds.
async fn jetstream_ids(url: &str, name: &str) -> (HashSet<String>, u64) {
    let client = async_nats::connect(url).await.expect("connect to NATS");
    let context = jetstream::new(client);
    let mut stream = context.get_stream(name).await.expect("the stream exists");
    let state = stream.info().await.unwrap().state.clone();
    let mut ids = HashSet::new();
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(message) = stream.get_raw_message(seq).await {
            let id = message
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .unwrap_or_else(|| {
                    panic!(
                        "no Nats-Msg-Id: {:?} {}",
                        message.headers,
                        String::from_utf8_lossy(&message.payload)
                    )
                })
                .to_string();
            ids.insert(id);
        }
    }
    (ids, state.messages)
}

async fn delete_stream(url: &str, name: &str) {
    let client = async_nats::connect(url).await.unwrap();
    let _ = jetstream::new(client).delete_stream(name).await;
}

/// Pause the venues, then wait until PostgreSQL holds every trade they sent, once; return
/// the stored record ids.
async fn every_sent_trade_in_postgres(
    sim: &anode_feedsim::FeedSim,
    stored: &Stored,
    specs: &[serde_json::Value],
) -> HashSet<String> {
    sim.pause();
    until(
        "every sent trade stored",
        Duration::from_secs(90),
        || async {
            let report = sim.report();
            let mut wrong = 0;
            for spec in specs {
                let sent: HashSet<u64> = report.streams[&trade_stream(spec)].ids().collect();
                let have = stored.ids(spec["id"].as_str().unwrap()).await;
                let unique: HashSet<u64> = have.iter().copied().collect();
                assert_eq!(
                    unique.len(),
                    have.len(),
                    "{}: an id stored twice",
                    spec["id"]
                );
                if unique != sent {
                    wrong += 1;
                }
            }
            if wrong == 0 {
                Ok(())
            } else {
                Err(format!("{wrong} sources incomplete"))
            }
        },
    )
    .await;
    stored.record_ids(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_sources_into_jetstream_and_postgres_each_id_once_in_both() {
    let url = support::nats_url();
    let nats = support::nats_settings(&url, &std::process::id().to_string());
    let db = support::TestDb::create(&support::pg_server()).await;
    let sim = simulator(5.0).await;
    let data = tempfile::tempdir().unwrap();
    let node = start_node(jetstream_config(data.path(), &db.url, nats.clone())).await;
    let api = node.url();
    let specs = binance_sources(&sim, 100, "js");
    support::add_sources(&api, &specs).await;
    let stored = Stored::Postgres(db);
    until(
        "every source to store records",
        Duration::from_secs(60),
        || async {
            let counts = stored.counts().await;
            let quiet = specs
                .iter()
                .filter(|s| counts.get(s["id"].as_str().unwrap()).copied().unwrap_or(0) < 5)
                .count();
            if quiet == 0 {
                Ok(())
            } else {
                Err(format!("{quiet} sources have fewer than 5 records"))
            }
        },
    )
    .await;
    let status = get_json(&format!("{api}/api/v1/status")).await;
    let store = &status["store"];
    assert_eq!(store["kind"], "postgres", "{store}");
    assert_eq!(store["sinks"][0]["kind"], "jetstream", "{store}");
    assert_eq!(store["sinks"][0]["required"], true, "{store}");

    let in_postgres = every_sent_trade_in_postgres(&sim, &stored, &specs).await;
    // What PostgreSQL has, JetStream has: the same ids, each in one message.
    let (in_jetstream, messages) = jetstream_ids(&url, &nats.stream).await;
    assert_eq!(
        in_jetstream, in_postgres,
        "JetStream and PostgreSQL hold different ids"
    );
    assert_eq!(
        messages,
        in_jetstream.len() as u64,
        "a record is in JetStream twice"
    );
    delete_stream(&url, &nats.stream).await;
    node.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_away_for_twenty_seconds_loses_nothing() {
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let nats_dir = tempfile::tempdir().unwrap();
    let mut server = nats_server(port, nats_dir.path());
    until_nats_answers(&url).await;
    let nats = support::nats_settings(&url, "OUTAGE");
    let db = support::TestDb::create(&support::pg_server()).await;
    let sim = simulator(20.0).await;
    let data = tempfile::tempdir().unwrap();
    let bounded = NatsSettings {
        buffer_records: 2_000,
        ..nats.clone()
    };
    let mut config = jetstream_config(data.path(), &db.url, bounded);
    config.store.buffer_records = 2_000;
    let node = start_node(config).await;
    let api = node.url();
    let specs = binance_sources(&sim, 20, "no");
    support::add_sources(&api, &specs).await;
    let stored = Stored::Postgres(db);
    until("records flowing", Duration::from_secs(60), || async {
        let n: u64 = stored.counts().await.values().sum();
        if n >= 200 {
            Ok(())
        } else {
            Err(format!("{n} stored"))
        }
    })
    .await;

    // NATS goes away for 20 s: the JetStream sink falls behind within its bound, the database
    // waits for it (JetStream is required), nothing is dropped.
    server.stop();
    let outage = std::time::Instant::now();
    let mut max_backlog = 0;
    let jetstream_sink =
        || async { get_json(&format!("{api}/api/v1/status")).await["store"]["sinks"][0].clone() };
    until("the sink to notice", Duration::from_secs(30), || async {
        let store = jetstream_sink().await;
        if store["write_errors"].as_u64().unwrap_or(0) > 0 {
            Ok(())
        } else {
            Err(store.to_string())
        }
    })
    .await;
    while outage.elapsed() < Duration::from_secs(20) {
        let store = jetstream_sink().await;
        max_backlog = max_backlog.max(store["backlog"].as_u64().unwrap());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(max_backlog > 0, "nothing waited for NATS");
    assert!(
        max_backlog <= 2_000,
        "backlog {max_backlog} past the buffer's bound"
    );
    let last_error = jetstream_sink().await["last_error"].to_string();
    assert_eq!(jetstream_sink().await["dropped"], 0);
    assert!(
        last_error.contains("NATS") || last_error.contains("JetStream"),
        "{last_error}"
    );

    // It returns, with its stream on disk: everything held is published, once.
    let _restarted = nats_server(port, nats_dir.path());
    until_nats_answers(&url).await;
    // The sources read again: every stream sends more.
    until_streams_move_on(&sim, &specs, 10).await;
    let in_postgres = every_sent_trade_in_postgres(&sim, &stored, &specs).await;
    let (in_jetstream, messages) = jetstream_ids(&url, &nats.stream).await;
    let missing: BTreeSet<&String> = in_postgres.difference(&in_jetstream).collect();
    assert!(
        missing.is_empty(),
        "{} stored ids not in JetStream",
        missing.len()
    );
    assert_eq!(in_jetstream, in_postgres);
    assert_eq!(
        messages,
        in_jetstream.len() as u64,
        "a record is in JetStream twice"
    );
    node.shutdown().await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optional_jetstream_away_never_holds_the_database_back() {
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let nats_dir = tempfile::tempdir().unwrap();
    let mut server = nats_server(port, nats_dir.path());
    until_nats_answers(&url).await;
    let nats = NatsSettings {
        required: false,
        buffer_records: 500,
        ..support::nats_settings(&url, "OPTIONAL")
    };
    let db = support::TestDb::create(&support::pg_server()).await;
    let sim = simulator(20.0).await;
    let data = tempfile::tempdir().unwrap();
    let node = start_node(jetstream_config(data.path(), &db.url, nats)).await;
    let api = node.url();
    let specs = binance_sources(&sim, 20, "op");
    support::add_sources(&api, &specs).await;
    let stored = Stored::Postgres(db);
    let status = || async { get_json(&format!("{api}/api/v1/status")).await["store"].clone() };
    until("records in both", Duration::from_secs(60), || async {
        let store = status().await;
        let (db, js) = (&store["rows_written"], &store["sinks"][0]["rows_written"]);
        match (db.as_u64(), js.as_u64()) {
            (Some(a), Some(b)) if a >= 200 && b >= 200 => Ok(()),
            _ => Err(store.to_string()),
        }
    })
    .await;
    assert_eq!(status().await["sinks"][0]["required"], false);

    // NATS goes away: the sink fills its 500 records and drops the rest, counted; the
    // database goes on storing, and its backlog stays small.
    server.stop();
    let before: u64 = stored.counts().await.values().sum();
    until("the sink to drop", Duration::from_secs(60), || async {
        let sink = status().await["sinks"][0].clone();
        if sink["dropped"].as_u64().unwrap_or(0) > 0 && sink["backlog"].as_u64() == Some(500) {
            Ok(())
        } else {
            Err(sink.to_string())
        }
    })
    .await;
    until("the database to go on", Duration::from_secs(60), || async {
        let n: u64 = stored.counts().await.values().sum();
        if n >= before + 2_000 {
            Ok(())
        } else {
            Err(format!("{} stored since NATS went away", n - before))
        }
    })
    .await;
    let store = status().await;
    assert!(store["backlog"].as_u64().unwrap() < 2_000, "{store}");
    let metrics = support::metrics_text(&api).await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("anode_store_dropped_total{store=\"jetstream\"}")
                && !l.ends_with(" 0")
        ),
        "{metrics}"
    );

    // It returns: what was held is published, and new records follow.
    let _restarted = nats_server(port, nats_dir.path());
    until_nats_answers(&url).await;
    let published = status().await["sinks"][0]["rows_written"].as_u64().unwrap();
    until(
        "JetStream to get records again",
        Duration::from_secs(60),
        || async {
            let sink = status().await["sinks"][0].clone();
            match sink["rows_written"].as_u64() {
                Some(n) if n >= published + 1_000 => Ok(()),
                _ => Err(sink.to_string()),
            }
        },
    )
    .await;
    // The database has everything, once.
    every_sent_trade_in_postgres(&sim, &stored, &specs).await;
    // A resuming subscriber reads the database, which is complete, not the optional
    // JetStream, which dropped what did not fit its buffer: every stored record once.
    let in_db: u64 = stored.counts().await.values().sum();
    let ws = api.replace("http://", "ws://");
    let (socket, _) = tokio_tungstenite::connect_async(format!("{ws}/ws?since=earliest"))
        .await
        .unwrap();
    // (ids, records with a position): the second counts repeats too.
    let seen = std::sync::Arc::new(std::sync::Mutex::new((HashSet::new(), 0u64)));
    let reader = tokio::spawn({
        let (seen, mut socket) = (seen.clone(), socket);
        async move {
            while let Some(Ok(message)) = socket.next().await {
                let Ok(text) = message.to_text() else {
                    continue;
                };
                let value: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
                if let Some(position) = value["position"].as_str() {
                    assert!(position.starts_with('p'), "a database position: {position}");
                    let mut seen = seen.lock().unwrap();
                    seen.0.insert(value["id"].as_str().unwrap().to_owned());
                    seen.1 += 1;
                }
            }
        }
    });
    until(
        "the tail to read every stored record",
        Duration::from_secs(60),
        || async {
            let n = seen.lock().unwrap().0.len() as u64;
            if n == in_db {
                Ok(())
            } else {
                Err(format!("{n} of {in_db}"))
            }
        },
    )
    .await;
    reader.abort();
    let positions = seen.lock().unwrap().1;
    assert_eq!(positions, in_db, "each record once");
    node.shutdown().await;
    sim.shutdown().await;
}

/// A record published twice, outside the server's duplicate window (a crash, then a late
/// restart that re-ingested it), is in the stream twice: a resuming subscriber reading the
/// stream gets it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jetstream_tail_hands_out_a_record_published_twice_once() {
    let url = support::nats_url();
    let nats = support::nats_settings(&url, "TWICE");
    delete_stream(&url, &nats.stream).await;
    let db = support::TestDb::create(&support::pg_server()).await;
    let data = tempfile::tempdir().unwrap();
    let node = start_node(jetstream_config(data.path(), &db.url, nats.clone())).await;
    let api = node.url();
    until(
        "the node to make its stream",
        Duration::from_secs(30),
        || async {
            let store = get_json(&format!("{api}/api/v1/status")).await["store"].clone();
            if store["sinks"][0]["connected"] == true {
                Ok(())
            } else {
                Err(store.to_string())
            }
        },
    )
    .await;
    let subject = format!("{}.trades.twice", nats.subject_prefix);
    let context = jetstream::new(async_nats::connect(&url).await.unwrap());
    let record = |n: u32| {
        let id = anode::record::RecordId::derive("twice", "trades", Some(&n.to_string()), b"");
        serde_json::json!({"id": id.to_hex(), "source": "twice", "stream": "trades",
            "key": null, "upstream_id": n.to_string(), "event_time_us": null,
            "ingest_time_us": 1, "node": "n", "payload": {"n": n}})
        .to_string()
    };
    // 1, 2, then 1 again under another message id (as after the duplicate window), a dead
    // letter on its own subject (not a record), then 3.
    let dead = serde_json::json!({"source": "twice", "stage": "transform", "reason": "r"});
    let messages = [
        (subject.clone(), record(1), "a"),
        (subject.clone(), record(2), "b"),
        (subject.clone(), record(1), "c"),
        (
            format!("{}._deadletters.twice", nats.subject_prefix),
            dead.to_string(),
            "e",
        ),
        (subject.clone(), record(3), "d"),
    ];
    for (subject, body, msg_id) in messages {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
        context
            .publish_with_headers(subject, headers, body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let ws = node.url().replace("http://", "ws://");
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("{ws}/ws?since=earliest"))
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        let message = tokio::time::timeout(Duration::from_secs(30), socket.next())
            .await
            .expect("records within 30 s")
            .unwrap()
            .unwrap();
        let value: serde_json::Value = serde_json::from_str(message.to_text().unwrap()).unwrap();
        if value["position"].is_string() {
            got.push(value["upstream_id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(
        got,
        ["1", "2", "3"],
        "the repeat of 1 is skipped, in stream order"
    );
    node.shutdown().await;
    delete_stream(&url, &nats.stream).await;
    db.drop_db().await;
}
