//! Ingestion benchmark: records per second from the feed simulator into PostgreSQL through a
//! node (`anode up`, its own process) against a raw baseline measured in the same run — the
//! same kind of rows written straight into PostgreSQL by the best batched method, no aNode in
//! between, in rounds alternated with the node's runs — then latency from the simulator's emit
//! time to a WebSocket subscriber, and the resident memory of a node with 1,000 and 10,000
//! sources.
//!
//! `cargo bench -p anode --bench ingest` (PostgreSQL from `ANODE_TEST_PG`, default the local
//! server). `ANODE_BENCH_QUICK=1` shortens every phase.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anode_feedsim::SimConfig;
use futures_util::StreamExt;
use serde_json::Value;
use tokio_postgres::types::ToSql;

const BATCH: usize = 5_000;

fn quick() -> bool {
    std::env::var_os("ANODE_BENCH_QUICK").is_some()
}

fn pg_server() -> String {
    std::env::var("ANODE_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url}: {e}"));
    tokio::spawn(connection);
    client
}

async fn fresh_db(name: &str) -> String {
    let server = pg_server();
    let admin = connect(&format!("{server}/postgres")).await;
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        admin
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    format!("{server}/{name}")
}

/// Rows shaped like the node's: a 16-byte id, the symbol as key, trade payloads of ~250 bytes.
/// They go into the node's own schema (its log position, `tx` and `seq`, and their index
/// included), so both sides do the same work per row.
struct Row {
    id: Vec<u8>,
    source: String,
    key: String,
    upstream: String,
    time: i64,
    payload: String,
}

fn rows(n: usize) -> Vec<Row> {
    (0..n)
        .map(|i| {
            let source = format!("bn-raw-{}", i % 100);
            let upstream = format!("S{}.USDT:{}", i % 100, i);
            let payload = format!(
                r#"{{"exchange":"binance","symbol":"S{}.USDT","price":"{}.{:08}","size":"0.{:08}","taker_side":"buy","trade_id":{i},"event_timestamp":{},"atom_timestamp":{}}}"#,
                i % 100,
                20_000 + i % 977,
                i % 99_991,
                i % 77_777,
                1_700_000_000_000u64 + i as u64,
                1_700_000_000_000_000u64 + i as u64
            );
            let id = sha2_16(&upstream);
            let key = format!("S{}.USDT", i % 100);
            Row { id, source, key, upstream, time: 1_700_000_000_000_000 + i as i64, payload }
        })
        .collect()
}

fn sha2_16(text: &str) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())[..16].to_vec()
}

/// Both raw methods once, each into a fresh database: (`UNNEST`, `COPY`) rows/s; and `COPY`
/// on two connections with two batches in flight, for what `store.postgres_in_flight = 2`
/// can gain where the database has the cores.
async fn raw_round(rows: &[Row], round: &str) -> (f64, f64) {
    let unnest = raw_unnest(&fresh_db("anode_bench_unnest").await, rows).await;
    let copy = raw_copy(&fresh_db("anode_bench_copy").await, rows).await;
    let two = raw_copy_two(&fresh_db("anode_bench_copy_two").await, rows).await;
    println!(
        "== raw baseline, {round}: {} rows straight into PostgreSQL, batches of {BATCH}",
        rows.len()
    );
    println!("  INSERT … SELECT FROM UNNEST   {unnest:>10.0} rows/s");
    println!("  COPY BINARY → stage → INSERT  {copy:>10.0} rows/s");
    println!(
        "  the same, two in flight       {two:>10.0} rows/s ({:.2}× one; two connections, each batch committed after the one before)",
        two / copy
    );
    (unnest, copy)
}

async fn raw_unnest(url: &str, rows: &[Row]) -> f64 {
    let client = connect(url).await;
    client
        .batch_execute(&anode::sink::postgres_schema())
        .await
        .unwrap();
    let insert = client
        .prepare(
            "INSERT INTO anode_records (id, source, stream, key, upstream_id, event_time_us, ingest_time_us, node, payload)
             SELECT id, source, 'trades', key, upstream, t, t, 'raw', payload::jsonb
             FROM UNNEST($1::bytea[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[]) AS r(id, source, key, upstream, t, payload)
             ON CONFLICT (id) DO NOTHING",
        )
        .await
        .unwrap();
    let started = Instant::now();
    for chunk in rows.chunks(BATCH) {
        let ids: Vec<&[u8]> = chunk.iter().map(|r| &r.id[..]).collect();
        let sources: Vec<&str> = chunk.iter().map(|r| r.source.as_str()).collect();
        let keys: Vec<&str> = chunk.iter().map(|r| r.key.as_str()).collect();
        let upstream: Vec<&str> = chunk.iter().map(|r| r.upstream.as_str()).collect();
        let times: Vec<i64> = chunk.iter().map(|r| r.time).collect();
        let payloads: Vec<&str> = chunk.iter().map(|r| r.payload.as_str()).collect();
        let params: [&(dyn ToSql + Sync); 6] =
            [&ids, &sources, &keys, &upstream, &times, &payloads];
        client.execute(&insert, &params).await.unwrap();
    }
    rows.len() as f64 / started.elapsed().as_secs_f64()
}

/// A connection with the staging table `COPY` writes into.
async fn copy_lane(url: &str) -> tokio_postgres::Client {
    let client = connect(url).await;
    client
        .batch_execute(
            "CREATE TEMP TABLE stage (id bytea, source text, key text, upstream text, t bigint, payload text) ON COMMIT DELETE ROWS",
        )
        .await
        .unwrap();
    client
}

async fn stage(client: &tokio_postgres::Client, chunk: &[Row]) {
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::Type;
    let sink = client
        .copy_in("COPY stage FROM STDIN BINARY")
        .await
        .unwrap();
    let types = [
        Type::BYTEA,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::TEXT,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    futures_util::pin_mut!(writer);
    for r in chunk {
        let id = &r.id[..];
        writer
            .as_mut()
            .write(&[&id, &r.source, &r.key, &r.upstream, &r.time, &r.payload])
            .await
            .unwrap();
    }
    writer.finish().await.unwrap();
}

const FROM_STAGE: &str = "INSERT INTO anode_records (id, source, stream, key, upstream_id, event_time_us, ingest_time_us, node, payload)
     SELECT id, source, 'trades', key, upstream, t, t, 'raw', payload::jsonb
     FROM stage ON CONFLICT (id) DO NOTHING";

async fn raw_copy(url: &str, rows: &[Row]) -> f64 {
    connect(url)
        .await
        .batch_execute(&anode::sink::postgres_schema())
        .await
        .unwrap();
    let client = copy_lane(url).await;
    let started = Instant::now();
    for chunk in rows.chunks(BATCH) {
        client.batch_execute("BEGIN").await.unwrap();
        stage(&client, chunk).await;
        client.execute(FROM_STAGE, &[]).await.unwrap();
        client.batch_execute("COMMIT").await.unwrap();
    }
    rows.len() as f64 / started.elapsed().as_secs_f64()
}

/// [`raw_copy`] on two connections, batch k on connection k % 2: a batch takes its
/// transaction id, inserts and commits each only after the batch before it has (as the node
/// orders them), and stages its rows meanwhile.
async fn raw_copy_two(url: &str, rows: &[Row]) -> f64 {
    use tokio::sync::watch;
    connect(url)
        .await
        .batch_execute(&anode::sink::postgres_schema())
        .await
        .unwrap();
    let lanes = [copy_lane(url).await, copy_lane(url).await];
    // Batches that have begun, inserted and committed, in order.
    let (begun, inserted, committed) = (
        watch::Sender::new(0),
        watch::Sender::new(0),
        watch::Sender::new(0),
    );
    let reached = |step: &watch::Sender<usize>, k: usize| {
        let mut step = step.subscribe();
        async move { step.wait_for(|done| *done >= k).await.map(|_| ()).unwrap() }
    };
    let started = Instant::now();
    let chunks: Vec<&[Row]> = rows.chunks(BATCH).collect();
    let lane = |l: usize| {
        let (client, chunks) = (&lanes[l], &chunks);
        let (begun, inserted, committed) = (&begun, &inserted, &committed);
        async move {
            for k in (l..chunks.len()).step_by(2) {
                reached(begun, k).await;
                client
                    .batch_execute("BEGIN; SELECT pg_current_xact_id()")
                    .await
                    .unwrap();
                begun.send_replace(k + 1);
                stage(client, chunks[k]).await;
                reached(inserted, k).await;
                client.execute(FROM_STAGE, &[]).await.unwrap();
                inserted.send_replace(k + 1);
                reached(committed, k).await;
                client.batch_execute("COMMIT").await.unwrap();
                committed.send_replace(k + 1);
            }
        }
    };
    tokio::join!(lane(0), lane(1));
    rows.len() as f64 / started.elapsed().as_secs_f64()
}

/// A node in a process of its own, configured by a TOML file.
struct Node {
    child: Child,
    api: String,
    _data: tempfile::TempDir,
}

impl Node {
    async fn start(extra: &str, sources: &str) -> Node {
        let data = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = data.path().join("anode.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\n[api]\nbind = \"127.0.0.1:{port}\"\n\
                 [sources]\nallow = [\"127.0.0.0/8\"]\n{extra}\n{sources}",
                data.path().join("data")
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_anode"))
            .arg("--config")
            .arg(&config)
            .arg("up")
            .env("ANODE_LOG", "error")
            .stdout(Stdio::null())
            .spawn()
            .expect("start anode up");
        let api = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(300);
        while reqwest::get(format!("{api}/healthz")).await.is_err() {
            assert!(Instant::now() < deadline, "the node did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Node {
            child,
            api,
            _data: data,
        }
    }

    async fn status(&self) -> Value {
        reqwest::get(format!("{}/api/v1/status", self.api))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binance_sources(ws: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "[[source]]\nid = \"bn-{i}\"\nplugin = \"binance-trades\"\nconfig = {{ base_url = \"{ws}/binance\", symbols = [\"b{i}usdt\"], mode = \"raw\" }}\n"
            )
        })
        .collect()
}

async fn wait_live(node: &Node, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let status = node.status().await;
        let live = status["sources"]
            .as_array()
            .map(|s| s.iter().filter(|s| s["state"] == "live").count())
            .unwrap_or(0);
        if live >= n {
            return;
        }
        assert!(Instant::now() < deadline, "only {live} of {n} sources live");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The faster of a raw round's two methods, named.
fn best_raw((unnest, copy): (f64, f64)) -> (&'static str, f64) {
    if unnest >= copy {
        ("unnest", unnest)
    } else {
        ("copy", copy)
    }
}

/// Rows per second stored through a node writing to a fresh database with `method` and
/// `in_flight` batches at once, 100 sources offering 2,000 trades/s each; and the node's
/// backlog and its bound at the end.
async fn through_node(method: &str, in_flight: usize, measure: Duration) -> (f64, Value, Value) {
    let sim = anode_feedsim::start(SimConfig {
        rate_per_stream: 2_000.0,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let url = fresh_db(&format!("anode_bench_node_{method}_{in_flight}")).await;
    let node = Node::start(
        &format!("[store]\npostgres_url = \"{url}\"\npostgres_method = \"{method}\"\npostgres_in_flight = {in_flight}\n"),
        &binance_sources(&sim.ws_url(), 100),
    )
    .await;
    wait_live(&node, 100).await;
    // Warm up, then count rows stored over the window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = node.status().await["store"]["rows_written"]
        .as_u64()
        .unwrap();
    let started = Instant::now();
    tokio::time::sleep(measure).await;
    let after = node.status().await;
    let rate = (after["store"]["rows_written"].as_u64().unwrap() - before) as f64
        / started.elapsed().as_secs_f64();
    drop(node);
    sim.shutdown().await;
    (
        rate,
        after["store"]["backlog"].clone(),
        after["store"]["backlog_bound"].clone(),
    )
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let measure = if quick() { Duration::from_secs(3) } else { Duration::from_secs(10) };
        let n_rows = if quick() { 50_000 } else { 300_000 };

        // The raw baseline varies from run to run far more than the node does (a fresh
        // database's checkpoints and autovacuum land in some rounds and not others), so raw
        // rounds and the node's runs alternate, each node run is compared with the mean of the
        // best raw method's rate in the two rounds either side of it, and the default is run
        // three times for a median.
        let rows = rows(n_rows);
        let runs: &[(&str, usize)] = if quick() {
            &[("copy", 1)]
        } else {
            &[("copy", 1), ("unnest", 1), ("copy", 1), ("copy", 2), ("copy", 1)]
        };
        let mut raw_before = best_raw(raw_round(&rows, "round 1").await);
        let mut default_ratios = Vec::new();
        for (k, &(method, in_flight)) in runs.iter().enumerate() {
            let (rate, backlog, bound) = through_node(method, in_flight, measure).await;
            let raw_after = best_raw(raw_round(&rows, &format!("round {}", k + 2)).await);
            let ratio = rate / ((raw_before.1 + raw_after.1) / 2.0);
            println!(
                "== aNode ({method}, {in_flight} in flight): 100 Binance WebSocket sources (offered 200k trades/s) → WASM connector → PostgreSQL"
            );
            println!(
                "  {rate:>10.0} rows/s   ratio to the best raw method of the rounds either side: {ratio:.2} ({} {:.0}, {} {:.0})   backlog {backlog} / {bound}",
                raw_before.0, raw_before.1, raw_after.0, raw_after.1,
            );
            if (method, in_flight) == ("copy", 1) {
                default_ratios.push(ratio);
            }
            raw_before = raw_after;
        }
        drop(rows);
        default_ratios.sort_by(f64::total_cmp);
        println!(
            "== the default (copy, 1 in flight) against the raw rounds either side: median ratio {:.2} of {} runs ({:.2}–{:.2})",
            percentile(&default_ratios, 0.5),
            default_ratios.len(),
            default_ratios[0],
            default_ratios[default_ratios.len() - 1],
        );

        let load_sources = 100;
        let rate = 20.0;
        let sim = anode_feedsim::start(SimConfig { rate_per_stream: rate, ..SimConfig::default() }).await.unwrap();
        let url = fresh_db("anode_bench_latency").await;
        let node = Node::start(&format!("[store]\npostgres_url = \"{url}\"\n"), &binance_sources(&sim.ws_url(), load_sources)).await;
        wait_live(&node, load_sources).await;
        let (socket, _) = tokio_tungstenite::connect_async(format!("{}/ws", node.api.replace("http", "ws"))).await.unwrap();
        let (_tx, mut rx) = socket.split();
        let mut latencies = Vec::new();
        let until = Instant::now() + measure;
        while Instant::now() < until {
            let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(5), rx.next()).await else { break };
            let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64() * 1000.0;
            let Ok(value) = serde_json::from_str::<Value>(message.to_text().unwrap_or("")) else { continue };
            if let Some(emitted) = value["payload"]["event_timestamp"].as_f64() {
                latencies.push(now_ms - emitted);
            }
        }
        latencies.sort_by(f64::total_cmp);
        println!(
            "== latency, simulator emit → WebSocket subscriber, {load_sources} sources × {rate}/s = {:.0} records/s, PostgreSQL store",
            load_sources as f64 * rate
        );
        println!(
            "  p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms   ({} records; emit times have ms resolution)",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or(f64::NAN),
            latencies.len()
        );
        drop(node);
        sim.shutdown().await;

        println!("== resident memory of one node (embedded store), sources at 1 trade/s each");
        let sim = anode_feedsim::start(SimConfig { rate_per_stream: 1.0, ..SimConfig::default() }).await.unwrap();
        let idle = Node::start("", "").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!("  {:>6} sources  {:>8.1} MiB", 0, idle.rss_mib());
        drop(idle);
        let counts: &[usize] = if quick() { &[1_000] } else { &[1_000, 10_000] };
        for &n in counts {
            let node = Node::start("", &binance_sources(&sim.ws_url(), n)).await;
            wait_live(&node, n).await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            println!("  {n:>6} sources  {:>8.1} MiB", node.rss_mib());
        }
        sim.shutdown().await;
    });
}
