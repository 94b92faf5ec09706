//! `anode bench`: a load tool in the spirit of `pgbench` and `redis-benchmark`. It starts the
//! feed simulator and one node (`anode up`, a child process, so that its CPU and memory are its
//! own), drives N Binance trade sources at R trades/s each for T seconds with K `/ws`
//! subscribers, and prints throughput, latency percentiles, CPU per record, memory, and loss:
//! the ids the simulator sent against the ids the store holds, id by id.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::Value;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Sources, one simulated Binance trade stream each.
    #[arg(long, default_value_t = 100)]
    sources: usize,
    /// Trades per second per source.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Seconds of load measured (after the sources are live and a 2-second warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// `/ws` subscribers, each receiving every record.
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// PostgreSQL URL for the node's store; default the embedded store.
    #[arg(long)]
    postgres: Option<String>,
    /// Also publish every record to NATS JetStream at this URL (a stream `ANODE_BENCH_<pid>`,
    /// deleted afterwards), as the `[store.nats]` sink does.
    #[arg(long)]
    nats: Option<String>,
    /// `store.postgres_method` for the node: `copy` (the default), `unnest` or `json`.
    #[arg(long)]
    postgres_method: Option<String>,
}

/// What the subscribers saw.
#[derive(Default)]
struct Seen {
    records: AtomicU64,
    /// Per record, in µs, the path in parts. Histograms, so memory stays flat however long
    /// the run.
    latencies_us: std::sync::Mutex<Latencies>,
}

#[derive(Default)]
struct Latencies {
    /// Trade time → subscriber (trade times have ms resolution, and the simulator sends what
    /// is due on a timer, `tick_ms`).
    total: Histogram,
    /// Sent by the simulator (its µs send clock) → subscriber; the first subscriber only.
    sent: Histogram,
    /// Sent → the node received the frame (the frame's `atom_timestamp`, µs clock): the
    /// network and the node's socket read.
    to_node: Histogram,
    /// Frame received → decoded (`ingest_time_us`, stamped once the connector has decoded
    /// the frame): the guest's decode.
    decode: Histogram,
    /// Decoded → subscriber: repeat filter, stamping, publishing, the fan-out queue, the
    /// socket write, and this client's read.
    deliver: Histogram,
}

/// Counts of values in logarithmic buckets, 64 to each power of two (within 1.6%).
#[derive(Clone)]
struct Histogram {
    counts: Vec<u64>,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; Self::bucket(u64::MAX) + 1],
            max: 0,
        }
    }
}

impl Histogram {
    fn bucket(v: u64) -> usize {
        if v < 128 {
            return v as usize;
        }
        let e = 63 - v.leading_zeros() as usize; // 7..=63
        let m = (v >> (e - 6)) as usize; // 64..=127
        128 + (e - 7) * 64 + (m - 64)
    }

    /// The smallest value of bucket `i`.
    fn low(i: usize) -> u64 {
        if i < 128 {
            return i as u64;
        }
        let (e, m) = (7 + (i - 128) / 64, 64 + (i - 128) % 64);
        (m as u64) << (e - 6)
    }

    fn record(&mut self, v: u64) {
        self.counts[Self::bucket(v)] += 1;
        self.max = self.max.max(v);
    }

    fn len(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The value at quantile `q` (0..=1), in ms; the exact maximum for 1.
    fn ms(&self, q: f64) -> f64 {
        let n = self.len();
        if n == 0 {
            return f64::NAN;
        }
        if q >= 1.0 {
            return self.max as f64 / 1000.0;
        }
        let rank = ((n - 1) as f64 * q).round() as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen > rank {
                return Self::low(i).min(self.max) as f64 / 1000.0;
            }
        }
        self.max as f64 / 1000.0
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.sources == 0 || args.rate <= 0.0 || args.duration == 0 {
        bail!("--sources, --rate and --duration must be above 0");
    }
    super::tokio_runtime()?.block_on(bench(args))
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let sim = anode_feedsim::start(anode_feedsim::SimConfig {
        bind: "127.0.0.1:0".parse().expect("an address"),
        rate_per_stream: args.rate,
        ..anode_feedsim::SimConfig::default()
    })
    .await
    .context("cannot start the feed simulator")?;
    let dir = std::env::temp_dir().join(format!("anode-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let result = measure(&args, &sim, &dir).await;
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(url) = &args.nats {
        // The bench's stream goes with it.
        if let Ok(client) = async_nats::connect(url.as_str()).await {
            let stream = format!("ANODE_BENCH_{}", std::process::id());
            let _ = async_nats::jetstream::new(client)
                .delete_stream(stream)
                .await;
        }
    }
    result
}

async fn measure(args: &BenchArgs, sim: &anode_feedsim::FeedSim, dir: &Path) -> anyhow::Result<()> {
    let api = free_port()?;
    let gossip = free_port()?;
    let mut store = match &args.postgres {
        Some(url) => format!("[store]\npostgres_url = {url:?}\n"),
        None => "[store]\n".to_owned(),
    };
    if let Some(method) = &args.postgres_method {
        store.push_str(&format!("postgres_method = {method:?}\n"));
    }
    if let Some(url) = &args.nats {
        let id = std::process::id();
        store.push_str(&format!(
            "[store.nats]\nurl = {url:?}\nstream = \"ANODE_BENCH_{id}\"\nsubject_prefix = \"anodebench{id}\"\n"
        ));
    }
    let mut config = format!(
        "data_dir = {:?}\n{store}[api]\nbind = \"127.0.0.1:{api}\"\n[cluster]\nbind = \
         \"127.0.0.1:{gossip}\"\n[sources]\nallow = [\"{}\"]\n",
        dir.join("data"),
        sim.addr()
    );
    let ids: Vec<String> = (0..args.sources).map(|i| format!("bench-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        config.push_str(&format!(
            "[[source]]\nid = \"{id}\"\nplugin = \"binance-trades\"\nconfig = {{ base_url = \
             \"{}/binance\", symbols = [\"bench{i}usdt\"], mode = \"raw\" }}\n",
            sim.ws_url()
        ));
    }
    let config_path = dir.join("anode.toml");
    std::fs::write(&config_path, config)?;
    let log = std::fs::File::create(dir.join("node.log"))?;
    let mut node = Node {
        child: std::process::Command::new(std::env::current_exe()?)
            .arg("--config")
            .arg(&config_path)
            .arg("up")
            .env("ANODE_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start `anode up`")?,
        api: format!("http://127.0.0.1:{api}"),
        log: dir.join("node.log"),
    };
    let outcome = drive(args, sim, &node, &ids, dir).await;
    node.stop();
    outcome
}

async fn drive(
    args: &BenchArgs,
    sim: &anode_feedsim::FeedSim,
    node: &Node,
    ids: &[String],
    dir: &Path,
) -> anyhow::Result<()> {
    println!(
        "anode bench: {} sources × {} trades/s = {:.0} records/s offered, {} subscribers, {} s, \
         {} store",
        args.sources,
        args.rate,
        args.sources as f64 * args.rate,
        args.subscribers,
        args.duration,
        match (args.postgres.is_some(), args.nats.is_some()) {
            (true, false) => "PostgreSQL",
            (true, true) => "PostgreSQL + JetStream",
            (false, false) => "embedded",
            (false, true) => "embedded + JetStream",
        }
    );
    let http = reqwest::Client::new();
    let started = Instant::now();
    node.until("to answer", Duration::from_secs(60), |s| s.is_some())
        .await?;
    node.until("every source to be live", Duration::from_secs(300), |s| {
        s.is_some_and(|s| live(s) >= ids.len())
    })
    .await?;
    println!(
        "  {} sources live {:.1} s after start",
        ids.len(),
        started.elapsed().as_secs_f64()
    );
    let seen = Arc::new(Seen::default());
    let mut subscribers = Vec::new();
    for k in 0..args.subscribers {
        let url = format!("{}/ws", node.api.replacen("http", "ws", 1));
        // One subscriber looks up send times: enough samples, little load on the simulator.
        let clock = (k == 0).then(|| sim.emit_clock());
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .context("cannot subscribe to /ws")?;
        let seen = seen.clone();
        subscribers.push(tokio::spawn(async move {
            let (_tx, mut rx) = socket.split();
            while let Some(Ok(message)) = rx.next().await {
                let Ok(text) = message.to_text() else {
                    continue;
                };
                let Ok(value) = serde_json::from_str::<Value>(text) else {
                    continue;
                };
                let (Some(emitted_ms), Some(received_us), Some(decoded_us)) = (
                    value["payload"]["event_timestamp"].as_i64(),
                    value["payload"]["atom_timestamp"].as_i64(),
                    value["ingest_time_us"].as_i64(),
                ) else {
                    continue;
                };
                let now = crate::clock::now_us();
                let since = |from: i64| (now - from).max(0) as u64;
                let span = |from: i64, to: i64| (to - from).max(0) as u64;
                // `bench-<i>` reads `binance/bench<i>usdt@trade`.
                let sent_us = clock.as_ref().and_then(|clock| {
                    let i = value["source"].as_str()?.strip_prefix("bench-")?;
                    let trade = value["payload"]["trade_id"].as_u64()?;
                    clock.sent_us(&format!("binance/bench{i}usdt@trade"), trade)
                });
                seen.records.fetch_add(1, Relaxed);
                let mut latencies = seen.latencies_us.lock().unwrap_or_else(|p| p.into_inner());
                latencies.total.record(since(emitted_ms * 1000));
                if let Some(sent) = sent_us.map(|s| s as i64) {
                    latencies.sent.record(since(sent));
                    latencies.to_node.record(span(sent, received_us));
                }
                latencies.decode.record(span(received_us, decoded_us));
                latencies.deliver.record(since(decoded_us));
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = Sample::take(node, &http, &seen).await?;
    *seen.latencies_us.lock().unwrap_or_else(|p| p.into_inner()) = Default::default();
    let mut peak_rss = 0.0f64;
    let until = Instant::now() + Duration::from_secs(args.duration);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak_rss = peak_rss.max(node.rss_mib());
    }
    let after = Sample::take(node, &http, &seen).await?;
    let latencies =
        std::mem::take(&mut *seen.latencies_us.lock().unwrap_or_else(|p| p.into_inner()));
    let seconds = after.at.duration_since(before.at).as_secs_f64();
    let stored = (after.stored - before.stored) as f64;
    let delivered = (after.received - before.received) as f64;
    let cpu = after.cpu_s - before.cpu_s;
    let server_cpu = after
        .server_cpu_s
        .zip(before.server_cpu_s)
        .map(|(a, b)| a - b);

    // Loss: stop the venues, let the node write what it holds, compare id by id.
    sim.pause();
    let drained = node
        .until("its store to drain", Duration::from_secs(120), |s| {
            s.is_some_and(|s| {
                let store = &s["store"];
                store["backlog"] == 0
                    && store["sinks"]
                        .as_array()
                        .is_none_or(|sinks| sinks.iter().all(|k| k["backlog"] == 0))
            })
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = sim.report();
    let stored_ids = stored_ids(dir, args.postgres.as_deref()).await?;
    let (mut sent, mut missing) = (0u64, 0u64);
    for (i, source) in ids.iter().enumerate() {
        let Some(stream) = report.streams.get(&format!("binance/bench{i}usdt@trade")) else {
            continue;
        };
        let have = stored_ids.get(source);
        for id in stream.ids() {
            sent += 1;
            if !have.is_some_and(|h| h.contains(&id)) {
                missing += 1;
            }
        }
    }
    sim.resume();
    for s in subscribers {
        s.abort();
    }

    let pct = |h: &Histogram, q: f64| h.ms(q);
    println!("  stored      {:>10.0} records/s", stored / seconds);
    if args.subscribers > 0 {
        println!(
            "  delivered   {:>10.0} records/s to {} subscribers ({:.0} per subscriber)",
            delivered / seconds,
            args.subscribers,
            delivered / seconds / args.subscribers as f64
        );
        let total = &latencies.total;
        println!(
            "  latency     p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms  (trade time \
             → subscriber, {} records; ms resolution, and the simulator sends what is due \
             every {} ms)",
            pct(total, 0.5),
            pct(total, 0.9),
            pct(total, 0.99),
            pct(total, 1.0),
            total.len(),
            anode_feedsim::SimConfig::default().tick_ms
        );
        let sent = &latencies.sent;
        println!(
            "  from send   p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.1} ms  (the \
             simulator's µs send clock → subscriber, {} records of the first subscriber)",
            pct(sent, 0.5),
            pct(sent, 0.9),
            pct(sent, 0.99),
            pct(sent, 1.0),
            sent.len(),
        );
        for (h, what) in [
            (
                &latencies.to_node,
                "sent → frame received: network, the node's read, µs",
            ),
            (&latencies.decode, "frame received → decoded, µs clock"),
            (&latencies.deliver, "decoded → subscriber, µs clock"),
        ] {
            println!(
                "    part      p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.1} ms  ({what})",
                pct(h, 0.5),
                pct(h, 0.9),
                pct(h, 0.99),
                pct(h, 1.0),
            );
        }
    }
    let per_delivered = if delivered > 0.0 {
        format!(", {:.2} µs per delivered record", cpu * 1e6 / delivered)
    } else {
        String::new()
    };
    println!(
        "  node CPU    {:.0}% of a core; {:.1} µs per stored record{per_delivered}",
        cpu / seconds * 100.0,
        cpu * 1e6 / stored.max(1.0),
    );
    if let Some(server) = server_cpu {
        println!(
            "  PostgreSQL  {:.0}% of a core; {:.1} µs of server CPU per stored record (every \
             local `postgres` process, other clients' work included)",
            server / seconds * 100.0,
            server * 1e6 / stored.max(1.0),
        );
    }
    println!(
        "  node memory {:.1} MiB resident at the end, {:.1} MiB at most",
        after.rss_mib, peak_rss
    );
    println!(
        "  fan-out     {} dropped, {} subscribers disconnected for lag",
        after.status["fanout"]["dropped"], after.status["fanout"]["disconnected_for_lag"]
    );
    match drained {
        Ok(()) => println!(
            "  loss        {missing} of {sent} ids the simulator sent are not stored{}",
            if missing == 0 { " (none)" } else { "" }
        ),
        Err(e) => println!("  loss        not measured: {e}"),
    }
    Ok(())
}

/// Counters at one moment.
struct Sample {
    at: Instant,
    stored: u64,
    received: u64,
    cpu_s: f64,
    /// CPU of the local PostgreSQL server's processes, when the store is PostgreSQL.
    server_cpu_s: Option<f64>,
    rss_mib: f64,
    status: Value,
}

impl Sample {
    async fn take(node: &Node, http: &reqwest::Client, seen: &Seen) -> anyhow::Result<Sample> {
        let status: Value = http
            .get(format!("{}/api/v1/status", node.api))
            .send()
            .await?
            .json()
            .await?;
        Ok(Sample {
            at: Instant::now(),
            stored: status["store"]["rows_written"].as_u64().unwrap_or(0),
            received: seen.records.load(Relaxed),
            cpu_s: node.cpu_seconds(),
            server_cpu_s: (status["store"]["kind"] == "postgres").then(postgres_cpu_seconds),
            rss_mib: node.rss_mib(),
            status,
        })
    }
}

/// User and system CPU time of a process, from `/proc/<pid>/stat` (0 when unreadable).
fn process_cpu_seconds(stat: &str) -> f64 {
    // Fields after the command (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |n: usize| {
        fields
            .get(n)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after the command.
    (ticks(11) + ticks(12)) / clock_ticks_per_second()
}

/// CPU time of every process named `postgres` on this machine (a local server's backends,
/// writer, WAL writer, checkpointer; backends that exited in between are not counted).
fn postgres_cpu_seconds() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| stat.contains("(postgres)"))
        .map(|stat| process_cpu_seconds(&stat))
        .sum()
}

struct Node {
    child: std::process::Child,
    api: String,
    log: PathBuf,
}

impl Node {
    /// Poll `/api/v1/status` until `done` holds (`None`: the node does not answer yet).
    async fn until(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(Option<&Value>) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let status = match reqwest::get(format!("{}/api/v1/status", self.api)).await {
                Ok(r) => r.json::<Value>().await.ok(),
                Err(_) => None,
            };
            if done(status.as_ref()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the node did not get {what} within {within:?}; its log: {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn proc_file(&self, name: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{name}", self.child.id())).unwrap_or_default()
    }

    fn rss_mib(&self) -> f64 {
        self.proc_file("status")
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    }

    /// User and system CPU time of the node so far.
    fn cpu_seconds(&self) -> f64 {
        process_cpu_seconds(&self.proc_file("stat"))
    }

    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn live(status: &Value) -> usize {
    status["sources"]
        .as_array()
        .map_or(0, |s| s.iter().filter(|s| s["state"] == "live").count())
}

fn clock_ticks_per_second() -> f64 {
    // Linux reports /proc times in USER_HZ, which is 100 on every architecture it runs on.
    100.0
}

fn free_port() -> anyhow::Result<u16> {
    // Bound for TCP and UDP both, so that the API and gossip may take it.
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
}

/// The upstream ids stored per source (`BENCHnUSDT:<trade id>` → the trade id).
async fn stored_ids(
    dir: &Path,
    postgres: Option<&str>,
) -> anyhow::Result<HashMap<String, BTreeSet<u64>>> {
    let rows: Vec<(String, String)> = match postgres {
        Some(url) => {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .context("cannot read the store back")?;
            tokio::spawn(connection);
            client
                .query(
                    "SELECT source, upstream_id FROM anode_records WHERE source LIKE 'bench-%'",
                    &[],
                )
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect()
        }
        None => {
            let path = dir.join("data").join("records.sqlite");
            tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(String, String)>> {
                let db = rusqlite::Connection::open_with_flags(
                    &path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )
                .with_context(|| format!("cannot read the store back ({})", path.display()))?;
                let mut query = db.prepare("SELECT source, upstream_id FROM anode_records")?;
                let rows = query
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await??
        }
    };
    let mut ids: HashMap<String, BTreeSet<u64>> = HashMap::new();
    for (source, upstream) in rows {
        if let Some(n) = upstream.rsplit(':').next().and_then(|n| n.parse().ok()) {
            ids.entry(source).or_default().insert(n);
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::Histogram;

    #[test]
    fn histogram_quantiles_are_within_two_percent_and_the_max_is_exact() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        assert_eq!(h.len(), 100_000);
        for (q, want) in [(0.5, 50_000.0), (0.9, 90_000.0), (0.99, 99_000.0)] {
            let got = h.ms(q) * 1000.0;
            assert!((got - want).abs() / want < 0.02, "q {q}: {got} for {want}");
        }
        assert_eq!(h.ms(1.0), 100.0);
        assert!(Histogram::default().ms(0.5).is_nan());
        for v in [0, 1, 127, 128, 129, 1 << 20, u64::MAX] {
            let i = Histogram::bucket(v);
            assert!(
                Histogram::low(i) <= v && (i + 1 == h.counts.len() || Histogram::low(i + 1) > v),
                "{v}"
            );
        }
    }
}
