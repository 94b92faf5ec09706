//! EVM chains against a real node: ganache 7 (from npm, started here) mines blocks with
//! transactions, and `evm_snapshot` / `evm_revert` make real reorganisations, at different
//! depths, while aNode follows (and once while aNode is stopped). After each:
//!
//! - the stored canonical chain (`WHERE canonical`) equals the node's chain by hash at every
//!   height, one row per height;
//! - every block that left the chain was announced to a live `/ws` subscriber as an undo
//!   before the block that replaced it, so a subscriber that applies what it is sent holds
//!   the node's chain; a `since=earliest` replay says the same;
//! - a `final_only` source never stored a block that was undone;
//! - ERC-20 transfers (a minimal token deployed here, transfers on both branches) stored by
//!   `evm-logs`, backfilled in ranges and then followed near the head, equal in the
//!   canonical view what `eth_getLogs` says over the final chain, amounts and addresses
//!   decoded right;
//! - a fork while the source moves between two nodes (its owner stopped) is found by the new
//!   owner through the cursor the store holds: the canonical chain is the node's again, and the
//!   new owner undid every block that left.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::cluster::{NodeOptions, NodeProc, post, running_on, start_cluster};
use support::ganache::Ganache;
use support::{TestDb, pg_server, until};
use tokio_tungstenite::tungstenite::Message;

const LIMIT: Duration = Duration::from_secs(60);
/// Blocks this deep are irreversible for the sources here; every fork below is shallower.
const FINALITY_DEPTH: u64 = 6;

/// Every stored record of `source`: (number, hash, fork step, canonical, record id hex).
async fn stored(
    db: &tokio_postgres::Client,
    source: &str,
) -> Vec<(u64, String, String, bool, String)> {
    db.query(
        "SELECT (payload->>'number')::bigint, payload->>'hash', payload->>'fork_step', canonical, \
         encode(id, 'hex') FROM anode_records WHERE source = $1 ORDER BY seq",
        &[&source],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.get::<_, i64>(0) as u64,
            r.get(1),
            r.get(2),
            r.get(3),
            r.get(4),
        )
    })
    .collect()
}

/// The canonical view (`WHERE canonical`) by height; an error when a height is there twice.
fn canonical(
    rows: &[(u64, String, String, bool, String)],
) -> Result<BTreeMap<u64, String>, String> {
    let mut chain = BTreeMap::new();
    for (number, hash, _, _, _) in rows.iter().filter(|r| r.3) {
        if let Some(other) = chain.insert(*number, hash.clone()) {
            return Err(format!(
                "height {number} twice in the canonical view: {other} and {hash}"
            ));
        }
    }
    Ok(chain)
}

/// Until the canonical view of `source` equals the node's chain up to `up_to_depth` below
/// its head, by hash at every height.
async fn until_stored_chain_agrees(
    ganache: &Ganache,
    db: &tokio_postgres::Client,
    source: &str,
    below_head: u64,
) {
    until(
        &format!("{source}: the stored chain to equal the node's"),
        LIMIT,
        || async {
            let mut chain = ganache.chain().await;
            let head = chain.keys().last().copied().unwrap_or(0);
            chain.retain(|&n, _| n + below_head <= head);
            let have = canonical(&stored(db, source).await)?;
            if have == chain {
                Ok(())
            } else {
                let differ: Vec<u64> = chain
                    .iter()
                    .filter(|(n, h)| have.get(n) != Some(h))
                    .map(|(n, _)| *n)
                    .chain(have.keys().filter(|n| !chain.contains_key(n)).copied())
                    .collect();
                Err(format!("heights that differ: {differ:?}"))
            }
        },
    )
    .await;
}

/// A `/ws` subscriber keeping every message in order.
struct Listener {
    messages: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    async fn connect(url: &str) -> Listener {
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("subscribe");
        let (tx, mut rx) = socket.split();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let messages = messages.clone();
            async move {
                let _tx = tx;
                while let Some(Ok(message)) = rx.next().await {
                    if let Message::Text(text) = message {
                        messages
                            .lock()
                            .unwrap()
                            .push(serde_json::from_str(&text).unwrap());
                    }
                }
            }
        });
        Listener { messages, task }
    }

    fn records(&self) -> Vec<Value> {
        let messages = self.messages.lock().unwrap();
        messages
            .iter()
            .filter(|m| m["id"].is_string())
            .cloned()
            .collect()
    }
}

/// Apply what a subscriber was sent, as a dApp would: a block sets its height, an undo
/// clears it. A block arriving at a height that holds another block (one not undone first)
/// is an error, as is an undo of a block that is not the one held.
fn apply(records: &[Value]) -> Result<BTreeMap<u64, String>, String> {
    let mut chain: BTreeMap<u64, String> = BTreeMap::new();
    for record in records {
        let payload = &record["payload"];
        let number = payload["number"].as_u64().unwrap();
        let hash = payload["hash"].as_str().unwrap().to_owned();
        match payload["fork_step"].as_str().unwrap() {
            "undo" => {
                if record["type"] != "undo" || !record["undoes"].is_string() {
                    return Err(format!("an undo not marked as one: {record}"));
                }
                if chain.remove(&number).as_ref() != Some(&hash) {
                    return Err(format!("undo of {number} {hash}, which was not held"));
                }
            }
            "new" | "irreversible" => {
                if let Some(held) = chain.get(&number).filter(|held| **held != hash) {
                    return Err(format!(
                        "block {number} {hash} came while {held} was not undone"
                    ));
                }
                chain.insert(number, hash);
            }
            other => return Err(format!("fork step {other}")),
        }
    }
    Ok(chain)
}

/// Every stored block of `source` not on the node's chain now has an undo among `records`
/// naming its record id.
fn every_replaced_block_undone(
    rows: &[(u64, String, String, bool, String)],
    chain: &BTreeMap<u64, String>,
    records: &[Value],
) -> usize {
    let replaced: Vec<&(u64, String, String, bool, String)> = rows
        .iter()
        .filter(|r| r.2 != "undo" && chain.get(&r.0) != Some(&r.1))
        .collect();
    for (number, hash, _, canonical, id) in &replaced {
        assert!(
            !canonical,
            "block {number} {hash} left the chain but is still canonical"
        );
        assert!(
            records
                .iter()
                .any(|r| r["undoes"].as_str() == Some(id.as_str())),
            "block {number} {hash} (record {id}) left the chain and no undo names it"
        );
    }
    replaced.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stored_chain_and_every_subscriber_follow_real_reorganisations() {
    let ganache = Ganache::start().await;
    let db = TestDb::create(&pg_server()).await;
    let client = db.client().await;
    let root = tempfile::tempdir().unwrap();
    let mut node = NodeProc::start(
        root.path(),
        "chain-1",
        &NodeOptions {
            postgres: Some(db.url.clone()),
            ..NodeOptions::default()
        },
    );
    let source = |id: &str, final_only: bool| {
        json!({"id": id, "plugin": "evm-blocks", "config": {
            "url": ganache.url, "chain": "dev", "interval_ms": 100, "start_block": 0,
            "finality_depth": FINALITY_DEPTH, "keep_blocks": 32, "final_only": final_only}})
    };
    let ws = node.api.replace("http://", "ws://");
    let live = Listener::connect(&format!("{ws}/ws?source=chain")).await;
    for spec in [source("chain", false), source("chain-final", true)] {
        post(&format!("{}/api/v1/sources", node.api), &spec).await;
    }

    let mut values = 0;
    ganache.mine(10, &mut values).await;
    until_stored_chain_agrees(&ganache, &client, "chain", 0).await;

    // Forks while aNode follows: (blocks replaced, how many more the new branch has).
    let live_forks = [(3, 2), (1, 0), (5, 3), (4, 1)];
    for (replaced, longer) in live_forks {
        let snapshot = ganache.snapshot().await;
        ganache.mine(replaced, &mut values).await;
        // The branch about to be replaced is stored (and seen) before it is replaced.
        until_stored_chain_agrees(&ganache, &client, "chain", 0).await;
        ganache.revert(snapshot).await;
        ganache.mine(replaced + longer, &mut values).await;
        until_stored_chain_agrees(&ganache, &client, "chain", 0).await;
        until_stored_chain_agrees(&ganache, &client, "chain-final", FINALITY_DEPTH).await;
    }
    let live_replaced: u64 = live_forks.iter().map(|f| f.0).sum();

    // The live subscriber, told each undo before the block that replaced it, holds the chain.
    let chain = ganache.chain().await;
    let heard = until(
        "the live subscriber to hold the node's chain",
        LIMIT,
        || async {
            let records = live.records();
            let held = apply(&records)?;
            if held == chain {
                Ok(records)
            } else {
                let differ = chain.iter().filter(|(n, h)| held.get(n) != Some(h)).count();
                Err(format!("{differ} of {} heights differ", chain.len()))
            }
        },
    )
    .await;
    let live_undos = heard.iter().filter(|r| r["type"] == "undo").count() as u64;
    assert_eq!(
        live_undos, live_replaced,
        "one undo per replaced block reached the subscriber"
    );
    live.task.abort();

    // A fork while aNode is stopped: the cursor's hashes find it on restart.
    let snapshot = ganache.snapshot().await;
    ganache.mine(2, &mut values).await;
    until_stored_chain_agrees(&ganache, &client, "chain", 0).await;
    assert!(node.terminate().success(), "the node stops cleanly");
    ganache.revert(snapshot).await;
    ganache.mine(3, &mut values).await;
    node.restart();
    let ws = node.api.replace("http://", "ws://");
    until_stored_chain_agrees(&ganache, &client, "chain", 0).await;

    // Deep enough that every fork's blocks are irreversible or gone.
    ganache.mine(FINALITY_DEPTH + 1, &mut values).await;
    until_stored_chain_agrees(&ganache, &client, "chain", 0).await;
    until_stored_chain_agrees(&ganache, &client, "chain-final", FINALITY_DEPTH).await;
    let chain = ganache.chain().await;
    let head = *chain.keys().last().unwrap();
    let rows = until(
        "every block up to head - depth stored as irreversible",
        LIMIT,
        || async {
            let rows = stored(&client, "chain").await;
            let finals = rows.iter().filter(|r| r.2 == "irreversible" && r.3).count() as u64;
            if finals == head + 1 - FINALITY_DEPTH {
                Ok(rows)
            } else {
                Err(format!("{finals} irreversible blocks"))
            }
        },
    )
    .await;
    let undos = rows.iter().filter(|r| r.2 == "undo").count();
    let replaced = every_replaced_block_undone(&rows, &chain, &stored_undos(&client).await);
    assert_eq!(
        replaced as u64,
        live_replaced + 2,
        "every block of every replaced branch"
    );
    assert_eq!(undos, replaced, "one undo for each replaced block");

    // The final-only source never stored a block that left the chain, nor any undo.
    for (number, hash, step, canonical, _) in &stored(&client, "chain-final").await {
        assert_eq!(step, "irreversible", "{number} {hash}");
        assert!(
            *canonical && chain.get(number) == Some(hash),
            "{number} {hash} is not on the chain"
        );
    }

    // A replay from the store says what a live subscriber saw: applied, it is the chain.
    let replay = Listener::connect(&format!("{ws}/ws?source=chain&since=earliest")).await;
    until("the replay to hold the node's chain", LIMIT, || async {
        let held = apply(&replay.records())?;
        if held == chain {
            Ok(())
        } else {
            Err(format!("{} of {} heights", held.len(), chain.len()))
        }
    })
    .await;
    replay.task.abort();

    // after=final (connected again after the restart): only irreversible records of the
    // chain, up to head - depth.
    let finals = Listener::connect(&format!("{ws}/ws?source=chain&after=final")).await;
    ganache.mine(1, &mut values).await;
    let finals_heard = until(
        "an irreversible block to reach the after=final subscriber",
        LIMIT,
        || async {
            let records = finals.records();
            if records.is_empty() {
                Err("none yet".to_owned())
            } else {
                Ok(records)
            }
        },
    )
    .await;
    for record in &finals_heard {
        let p = &record["payload"];
        assert_eq!(p["fork_step"], "irreversible", "{record}");
        let number = p["number"].as_u64().unwrap();
        assert_eq!(number, head + 1 - FINALITY_DEPTH, "{record}");
    }
    finals.task.abort();

    assert!(node.terminate().success());
    db.drop_db().await;
}

/// Every stored undo, as a subscriber receives it.
async fn stored_undos(db: &tokio_postgres::Client) -> Vec<Value> {
    db.query(
        "SELECT encode(id, 'hex'), upstream_id, source, stream FROM anode_records \
         WHERE payload->>'fork_step' = 'undo'",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        let (id, upstream, source, stream): (String, String, String, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        // The record it undoes, derived as the host derives ids.
        let undone = upstream.splitn(3, ':').nth(2).unwrap().to_owned();
        json!({"id": id, "undoes": anode::record::RecordId::derive(&source, &stream, Some(&undone), b"").to_hex()})
    })
    .collect()
}

/// One log as compared: (block hash, amount, from, to), by (block, log index).
type Logs = BTreeMap<(u64, u64), (String, String, String, String)>;

/// The canonical stored transfers of `source`; an error when a log is there twice.
async fn stored_logs(db: &tokio_postgres::Client, source: &str) -> Result<Logs, String> {
    let rows = db
        .query(
            "SELECT payload::text FROM anode_records WHERE source = $1 AND canonical",
            &[&source],
        )
        .await
        .unwrap();
    let mut logs = Logs::new();
    for row in rows {
        let p: Value = serde_json::from_str(row.get(0)).unwrap();
        let key = (
            p["block_number"].as_u64().unwrap(),
            p["log_index"].as_u64().unwrap(),
        );
        let e = &p["event"];
        let value = (
            p["block_hash"].as_str().unwrap().to_owned(),
            e["value"].as_str().unwrap_or("?").to_owned(),
            e["from"].as_str().unwrap_or("?").to_owned(),
            e["to"].as_str().unwrap_or("?").to_owned(),
        );
        if logs.insert(key, value).is_some() {
            return Err(format!("log {key:?} twice in the canonical view"));
        }
    }
    Ok(logs)
}

/// What `eth_getLogs` says of `token` over the whole chain, decoded here by hand.
async fn node_logs(ganache: &Ganache, token: &str) -> Logs {
    let logs = ganache
        .rpc(
            "eth_getLogs",
            json!([{"address": token, "fromBlock": "0x0", "toBlock": "latest"}]),
        )
        .await;
    let hex =
        |v: &Value| u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
    let address = |topic: &Value| format!("0x{}", &topic.as_str().unwrap()[26..]);
    logs.as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let amount =
                u128::from_str_radix(l["data"].as_str().unwrap().trim_start_matches("0x"), 16)
                    .unwrap();
            (
                (hex(&l["blockNumber"]), hex(&l["logIndex"])),
                (
                    l["blockHash"].as_str().unwrap().to_owned(),
                    amount.to_string(),
                    address(&l["topics"][1]),
                    address(&l["topics"][2]),
                ),
            )
        })
        .collect()
}

async fn until_stored_logs_agree(ganache: &Ganache, db: &tokio_postgres::Client, token: &str) {
    until(
        "the stored transfers to equal eth_getLogs",
        LIMIT,
        || async {
            let want = node_logs(ganache, token).await;
            let have = stored_logs(db, "transfers").await?;
            if have == want {
                Ok(())
            } else {
                Err(format!(
                    "stored {} transfers, the node has {}",
                    have.len(),
                    want.len()
                ))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erc20_transfers_stored_equal_get_logs_over_the_final_chain_across_reorganisations() {
    let ganache = Ganache::start().await;
    let db = TestDb::create(&pg_server()).await;
    let client = db.client().await;
    let root = tempfile::tempdir().unwrap();
    let node = NodeProc::start(
        root.path(),
        "logs-1",
        &NodeOptions {
            postgres: Some(db.url.clone()),
            ..NodeOptions::default()
        },
    );
    let token = ganache.deploy_token().await;
    let (bob, carol) = (ganache.accounts[1].clone(), ganache.accounts[2].clone());
    // History to backfill in ranges: transfers, and blocks without any.
    let mut values = 0;
    for amount in 1..=8 {
        ganache
            .transfer(&token, if amount % 2 == 0 { &bob } else { &carol }, amount)
            .await;
        ganache.mine(1, &mut values).await;
    }
    let spec = json!({"id": "transfers", "plugin": "evm-logs", "config": {
        "url": ganache.url, "chain": "dev", "interval_ms": 100, "start_block": 0,
        "address": token, "topics": ["0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"],
        "max_range": 3, "parallel": 2, "finality_depth": FINALITY_DEPTH, "keep_blocks": 32}});
    post(&format!("{}/api/v1/sources", node.api), &spec).await;
    until_stored_logs_agree(&ganache, &client, &token).await;

    // Forks near the head, transfers on both branches: (blocks replaced, blocks added).
    let mut amount = 1000;
    for (replaced, longer) in [(2, 1), (1, 0), (3, 2)] {
        let snapshot = ganache.snapshot().await;
        for _ in 0..replaced {
            amount += 1;
            ganache.transfer(&token, &bob, amount).await;
        }
        until_stored_logs_agree(&ganache, &client, &token).await;
        ganache.revert(snapshot).await;
        for _ in 0..replaced + longer {
            amount += 1;
            ganache.transfer(&token, &carol, amount).await;
        }
        until_stored_logs_agree(&ganache, &client, &token).await;
    }
    // Everything final: the canonical logs are the final chain's, each once, irreversible.
    ganache.mine(FINALITY_DEPTH + 1, &mut values).await;
    until("every transfer irreversible", LIMIT, || async {
        let rows = client
            .query(
                "SELECT count(*) FILTER (WHERE payload->>'fork_step' <> 'irreversible') \
                 FROM anode_records WHERE source = 'transfers' AND canonical",
                &[],
            )
            .await
            .unwrap();
        match rows[0].get::<_, i64>(0) {
            0 => Ok(()),
            n => Err(format!("{n} canonical logs not irreversible yet")),
        }
    })
    .await;
    until_stored_logs_agree(&ganache, &client, &token).await;
    let want = node_logs(&ganache, &token).await;
    assert_eq!(want.len(), 8 + 3 + 1 + 5, "transfers on the final chain");
    // Every log that left the chain was undone by name.
    let gone = client
        .query(
            "SELECT encode(r.id, 'hex') FROM anode_records r WHERE r.source = 'transfers' \
             AND NOT r.canonical AND r.payload->>'fork_step' = 'new' AND NOT EXISTS \
             (SELECT 1 FROM anode_records f WHERE f.upstream_id = 'final:' || r.upstream_id)",
            &[],
        )
        .await
        .unwrap();
    let undos = stored_undos(&client).await;
    assert_eq!(
        gone.len(),
        2 + 1 + 3,
        "the transfers of every replaced branch"
    );
    for row in &gone {
        let id: String = row.get(0);
        assert!(
            undos.iter().any(|u| u["undoes"] == id.as_str()),
            "log {id} left with no undo"
        );
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_during_a_hand_over_is_found_by_the_new_owner() {
    let ganache = Ganache::start().await;
    let db = TestDb::create(&pg_server()).await;
    let client = db.client().await;
    let root = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(root.path(), "chain-ho", 2, Some(&db.url)).await;
    let spec = json!({"id": "chain", "plugin": "evm-blocks", "config": {
        "url": ganache.url, "chain": "dev", "interval_ms": 100, "start_block": 0,
        "finality_depth": FINALITY_DEPTH, "keep_blocks": 32}});
    post(&format!("{}/api/v1/sources", nodes[0].api), &spec).await;
    let mut values = 0;
    ganache.mine(6, &mut values).await;
    until_stored_chain_agrees(&ganache, &client, "chain", 0).await;

    // The branch to be replaced is stored; then its owner stops, and the fork happens while
    // the source moves.
    let snapshot = ganache.snapshot().await;
    ganache.mine(3, &mut values).await;
    until_stored_chain_agrees(&ganache, &client, "chain", 0).await;
    let owner = until("the source to run on one node", LIMIT, || async {
        for (i, node) in nodes.iter().enumerate() {
            if running_on(node).await.contains_key("chain") {
                return Ok(i);
            }
        }
        Err("on none".to_owned())
    })
    .await;
    assert!(
        nodes[owner].terminate().success(),
        "the owner stops cleanly"
    );
    ganache.revert(snapshot).await;
    ganache.mine(4, &mut values).await;
    let heir = 1 - owner;
    until("the source to run on the other node", LIMIT, || async {
        if running_on(&nodes[heir]).await.contains_key("chain") {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    })
    .await;
    until_stored_chain_agrees(&ganache, &client, "chain", 0).await;

    let chain = ganache.chain().await;
    let rows = stored(&client, "chain").await;
    let replaced = every_replaced_block_undone(&rows, &chain, &stored_undos(&client).await);
    assert_eq!(replaced, 3, "the three blocks of the replaced branch");
    let undone_by: Vec<String> = client
        .query(
            "SELECT node FROM anode_records WHERE source = 'chain' \
             AND payload->>'fork_step' = 'undo'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        undone_by,
        vec![nodes[heir].id.clone(); 3],
        "the new owner undid them"
    );
    assert!(nodes[heir].terminate().success());
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_cannot_be_reached_is_set_aside_and_said_in_the_source_status() {
    let ganache = Ganache::start().await;
    let db = TestDb::create(&pg_server()).await;
    let client = db.client().await;
    let root = tempfile::tempdir().unwrap();
    let node = NodeProc::start(
        root.path(),
        "chain-ends",
        &NodeOptions {
            postgres: Some(db.url.clone()),
            ..NodeOptions::default()
        },
    );
    // Nothing listens on the first endpoint.
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    let spec = json!({"id": "chain", "plugin": "evm-blocks", "config": {
        "url": [dead, ganache.url], "chain": "dev", "interval_ms": 100, "start_block": 0,
        "finality_depth": FINALITY_DEPTH, "keep_blocks": 32}});
    post(&format!("{}/api/v1/sources", node.api), &spec).await;
    let mut values = 0;
    ganache.mine(5, &mut values).await;
    until_stored_chain_agrees(&ganache, &client, "chain", 0).await;
    let source = until(
        "the source status to name the endpoint set aside",
        LIMIT,
        || async {
            let sources = node.get("/api/v1/sources").await;
            let source = sources
                .as_array()
                .and_then(|all| all.iter().find(|s| s["id"] == "chain"))
                .cloned()
                .ok_or("no source")?;
            match source["last_warning"].as_str() {
                Some(w) if w.contains(&dead) && w.contains("set aside") => Ok(source),
                other => Err(format!("last_warning {other:?}")),
            }
        },
    )
    .await;
    assert_eq!(
        source["state"], "live",
        "one endpoint down does not stop the source: {source}"
    );
    db.drop_db().await;
}
