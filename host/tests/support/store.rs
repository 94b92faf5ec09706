//! Reading back what a node stored (PostgreSQL or the embedded store) and what a WebSocket
//! subscriber received.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use anode_feedsim::FeedSim;
use serde_json::json;
use std::collections::BTreeSet;

use super::{TestDb, until};

/// Where a scenario's records end up, read back with the database's own client.
pub enum Stored {
    Postgres(TestDb),
    Sqlite(PathBuf),
}

impl Stored {
    /// Rows per source in the canonical view (`WHERE canonical`): a block and its
    /// irreversible version count once, an undone block not at all.
    pub async fn counts(&self) -> HashMap<String, u64> {
        match self {
            Stored::Postgres(db) => db
                .client()
                .await
                .query(
                    "SELECT source, count(*) FROM anode_records WHERE canonical GROUP BY source",
                    &[],
                )
                .await
                .map(|rows| {
                    rows.iter()
                        .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
                        .collect()
                })
                .unwrap_or_default(),
            Stored::Sqlite(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    let Ok(db) = rusqlite::Connection::open(&path) else {
                        return HashMap::new();
                    };
                    let Ok(mut q) = db.prepare(
                        "SELECT source, count(*) FROM anode_records WHERE canonical \
                             GROUP BY source",
                    ) else {
                        return HashMap::new();
                    };
                    q.query_map([], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                    })
                    .map(|rows| rows.flatten().collect())
                    .unwrap_or_default()
                })
                .await
                .unwrap()
            }
        }
    }

    /// Rows stored for one source.
    pub async fn count(&self, source: &str) -> u64 {
        self.counts().await.get(source).copied().unwrap_or(0)
    }

    /// Wait until `source` has at least `rows` stored.
    pub async fn until_at_least(&self, source: &str, rows: u64) {
        until(
            &format!("{rows} rows of {source}"),
            Duration::from_secs(30),
            || async {
                let n = self.count(source).await;
                if n >= rows {
                    Ok(())
                } else {
                    Err(format!("{n} stored"))
                }
            },
        )
        .await;
    }

    /// Every source's committed cursor.
    pub async fn cursors(&self) -> HashMap<String, String> {
        let sql = "SELECT source, cursor FROM anode_cursors";
        match self {
            Stored::Postgres(db) => db
                .client()
                .await
                .query(sql, &[])
                .await
                .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
                .unwrap_or_default(),
            Stored::Sqlite(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    let Ok(db) = rusqlite::Connection::open(&path) else {
                        return HashMap::new();
                    };
                    let Ok(mut q) = db.prepare(sql) else {
                        return HashMap::new();
                    };
                    q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                        .map(|rows| rows.flatten().collect())
                        .unwrap_or_default()
                })
                .await
                .unwrap()
            }
        }
    }

    /// The number in every upstream id of `source` in the canonical view (`WHERE canonical`,
    /// which is every row but for chains): a trade's numeric tail (`BTC.USDT:42` → 42), a
    /// block's or log's block number (`19000045:0x9cfd…`, `final:19000045:0x9cfd…` → 19000045).
    /// One per row: a number twice is a record stored twice.
    pub async fn ids(&self, source: &str) -> Vec<u64> {
        self.upstream_ids_where(source, true)
            .await
            .iter()
            .map(|u| {
                let id = u.strip_prefix("final:").unwrap_or(u);
                let mut parts = id.split(':');
                let number = match (parts.next(), parts.next()) {
                    (Some(block), Some(hash)) if hash.starts_with("0x") => block,
                    _ => id.rsplit(':').next().unwrap(),
                };
                number.parse().unwrap_or_else(|_| panic!("upstream id {u}"))
            })
            .collect()
    }

    /// Every stored upstream id of `source`.
    pub async fn upstream_ids(&self, source: &str) -> Vec<String> {
        self.upstream_ids_where(source, false).await
    }

    /// Every stored upstream id of `source`, or only the canonical ones.
    async fn upstream_ids_where(&self, source: &str, canonical: bool) -> Vec<String> {
        let upstream: Vec<String> = match self {
            Stored::Postgres(db) => db
                .client()
                .await
                .query(
                    "SELECT upstream_id FROM anode_records \
                     WHERE source = $1 AND (canonical OR NOT $2)",
                    &[&source, &canonical],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect(),
            Stored::Sqlite(path) => {
                let (path, source) = (path.clone(), source.to_owned());
                tokio::task::spawn_blocking(move || {
                    let db = rusqlite::Connection::open(&path).unwrap();
                    let mut q = db
                        .prepare(
                            "SELECT upstream_id FROM anode_records \
                             WHERE source = ?1 AND (canonical OR NOT ?2)",
                        )
                        .unwrap();
                    q.query_map(rusqlite::params![source, canonical], |r| {
                        r.get::<_, String>(0)
                    })
                    .unwrap()
                    .flatten()
                    .collect()
                })
                .await
                .unwrap()
            }
        };
        upstream
    }
}

impl Stored {
    /// Record ids (hex), of every node or of one.
    pub async fn record_ids(&self, node: Option<&str>) -> HashSet<String> {
        let db = match self {
            Stored::Postgres(db) => db,
            Stored::Sqlite(path) => {
                let (path, node) = (path.clone(), node.map(str::to_owned));
                return tokio::task::spawn_blocking(move || {
                    let db = rusqlite::Connection::open(&path).unwrap();
                    let mut q = db
                        .prepare(
                            "SELECT lower(hex(id)) FROM anode_records \
                             WHERE ?1 IS NULL OR node = ?1",
                        )
                        .unwrap();
                    q.query_map([node], |r| r.get::<_, String>(0))
                        .unwrap()
                        .map(Result::unwrap)
                        .collect()
                })
                .await
                .unwrap();
            }
        };
        db.client()
            .await
            .query(
                "SELECT encode(id, 'hex') FROM anode_records WHERE $1::text IS NULL OR node = $1",
                &[&node],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }
}

/// A WebSocket subscriber that reads everything and remembers the record ids.
pub struct Subscriber {
    pub ids: Arc<Mutex<HashSet<String>>>,
    pub messages: Arc<Mutex<u64>>,
    /// Notices received (`gap`, `lag`, …): every message without a record id.
    pub notices: Arc<Mutex<Vec<Value>>>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    pub async fn connect(url: &str) -> Subscriber {
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("subscribe to /ws");
        let (_tx, mut rx) = socket.split();
        // The hello comes first: after it, every record published reaches us.
        let hello = rx.next().await.expect("hello").expect("hello");
        let hello: Value = serde_json::from_str(hello.to_text().unwrap()).unwrap();
        assert_eq!(hello["type"], "subscribed", "{hello}");
        let ids = Arc::new(Mutex::new(HashSet::new()));
        let messages = Arc::new(Mutex::new(0));
        let notices = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (ids, messages, notices) = (ids.clone(), messages.clone(), notices.clone());
            async move {
                let _tx = _tx;
                while let Some(Ok(Message::Text(text))) = rx.next().await {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    if let Some(id) = value["id"].as_str() {
                        ids.lock().unwrap().insert(id.to_owned());
                        *messages.lock().unwrap() += 1;
                    } else {
                        notices.lock().unwrap().push(value);
                    }
                }
            }
        });
        Subscriber {
            ids,
            messages,
            notices,
            task,
        }
    }

    pub fn received(&self) -> usize {
        self.ids.lock().unwrap().len()
    }

    /// Wait until the subscriber has received exactly `ids` (record ids, hex): none missing,
    /// none that is not among them.
    pub async fn until_received_exactly(&self, ids: &HashSet<String>, limit: Duration) {
        until(
            "the subscriber to have every stored record",
            limit,
            || async {
                let got = self.ids.lock().unwrap().clone();
                let missing = ids.difference(&got).count();
                let extra = got.difference(ids).count();
                if missing == 0 && extra == 0 {
                    Ok(())
                } else {
                    Err(format!(
                        "{missing} stored not received, {extra} received not stored"
                    ))
                }
            },
        )
        .await;
    }
}

/// An EVM source on `chain`, polled often.
pub fn evm_source(sim: &FeedSim, id: &str, chain: &str) -> Value {
    json!({"id": id, "plugin": "evm-blocks", "config": {
        "url": format!("{}/evm/{chain}", sim.http_url()), "chain": chain, "interval_ms": 100}})
}

/// The simulator stream a trade source reads: a Binance raw source's `<symbol>@trade`, or a
/// Coinbase source's `matches` of its first product.
pub fn trade_stream(spec: &Value) -> String {
    match spec["plugin"].as_str() {
        Some("coinbase") => format!(
            "coinbase/{}/matches",
            spec["config"]["product_ids"][0].as_str().unwrap()
        ),
        _ => format!(
            "binance/{}@trade",
            spec["config"]["symbols"][0].as_str().unwrap()
        ),
    }
}

/// Every id the simulator generated for each trade source's stream is stored exactly
/// once, and each EVM source's blocks are one run with no hole up to the chain's head.
/// Polls until true: the simulator must be paused.
pub async fn every_generated_id_stored_once(
    sim: &FeedSim,
    stored: &Stored,
    binance: &[Value],
    evm: &[Value],
) {
    until(
        "every generated id stored once",
        Duration::from_secs(60),
        || async {
            let report = sim.report();
            let counts = stored.counts().await;
            let mut wrong = Vec::new();
            for spec in binance {
                let id = spec["id"].as_str().unwrap();
                let stream = &report.streams[&trade_stream(spec)];
                let (first, last) = stream
                    .generated
                    .expect("a subscribed stream has generated ids");
                let have: BTreeSet<u64> = stored.ids(id).await.into_iter().collect();
                let missing = (first..=last).filter(|n| !have.contains(n)).count();
                let rows = counts.get(id).copied().unwrap_or(0);
                if missing > 0 || rows != last - first + 1 {
                    wrong.push(format!(
                        "{id}: generated {first}..={last}, {missing} missing, {rows} rows"
                    ));
                }
            }
            for spec in evm {
                let id = spec["id"].as_str().unwrap();
                let chain = spec["config"]["chain"].as_str().unwrap();
                let head = report.streams[&format!("evm/{chain}/blocks")]
                    .generated
                    .map_or(0, |(_, last)| last);
                let canonical = stored.ids(id).await;
                let rows = canonical.len() as u64;
                let blocks: BTreeSet<u64> = canonical.into_iter().collect();
                let (Some(&low), Some(&high)) = (blocks.first(), blocks.last()) else {
                    wrong.push(format!("{id}: no blocks"));
                    continue;
                };
                if high != head || blocks.len() as u64 != high - low + 1 || rows != high - low + 1 {
                    wrong.push(format!(
                        "{id}: blocks {low}..={high} ({} of them, {rows} rows), head {head}",
                        blocks.len()
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

/// Wait until every source's trade stream has generated `by` more ids than now, whether or not
/// anyone is connected to receive them (the venue moves on while a node is away).
pub async fn until_generated_moves_on(sim: &FeedSim, sources: &[Value], by: u64) {
    let head = |r: &anode_feedsim::Report, s: &Value| {
        r.streams
            .get(&trade_stream(s))
            .and_then(|s| s.generated)
            .map_or(0, |g| g.1)
    };
    let before = sim.report();
    until(
        "the streams to generate more while no one listens",
        Duration::from_secs(60),
        || async {
            let now = sim.report();
            let behind: Vec<String> = sources
                .iter()
                .filter(|s| head(&now, s) < head(&before, s) + by)
                .map(trade_stream)
                .collect();
            if behind.is_empty() {
                Ok(())
            } else {
                Err(format!("{behind:?}"))
            }
        },
    )
    .await;
}

/// Wait until every Binance source's stream has sent `by` more ids than its head now: a fault's
/// gaps are then seen (a connector learns of a gap from the next live trade) and fetched.
pub async fn until_streams_move_on(sim: &FeedSim, binance: &[Value], by: u64) {
    let heads: Vec<(String, u64)> = binance
        .iter()
        .map(|s| {
            let name = trade_stream(s);
            let head = sim.report().streams[&name].generated.map_or(0, |g| g.1);
            (name, head)
        })
        .collect();
    until(
        "the streams to move on",
        Duration::from_secs(60),
        || async {
            let now = sim.report();
            let behind = heads
                .iter()
                .filter(|(name, head)| {
                    now.streams[name]
                        .ranges
                        .last()
                        .is_none_or(|r| r.1 < head + by)
                })
                .count();
            if behind == 0 {
                Ok(())
            } else {
                Err(format!("{behind} streams behind"))
            }
        },
    )
    .await;
}
