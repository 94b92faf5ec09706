//! `anode bench`: a load tool in the spirit of `pgbench` and `redis-benchmark`. It starts the
//! feed simulator and one node (`anode up`, a child process, so that its CPU and memory are its
//! own), or with `--url` drives a running node or cluster; drives N Binance trade sources at R
//! trades/s each for T seconds with K `/ws` subscribers, and prints throughput, latency
//! percentiles, CPU per record, memory, and loss: the ids the simulator sent against the ids
//! stored, id by id.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};

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
    /// `store.postgres_in_flight` for the node: PostgreSQL batches in flight at once (1 by
    /// default, up to 4).
    #[arg(long)]
    postgres_in_flight: Option<usize>,
    /// Drive the running node (and its cluster) at this API URL instead of starting one: the
    /// bench's sources (`bench-<pid>-<n>`) are added there and removed at the end (their
    /// records stay in the store). The nodes must reach and allow the simulator
    /// (`--sim-addr`, `sources.allow`).
    #[arg(long, conflicts_with_all = ["postgres", "nats", "postgres_method", "postgres_in_flight"])]
    url: Option<String>,
    /// Bearer token for --url (`api.token`: the bench adds and removes sources).
    #[arg(long, env = "ANODE_TOKEN", hide_env_values = true, requires = "url")]
    token: Option<String>,
    /// Where the bench's feed simulator listens; with --url, an address of this machine that
    /// the cluster's nodes reach.
    #[arg(long, default_value = "127.0.0.1:0")]
    sim_addr: std::net::SocketAddr,
}

/// What the subscribers saw.
#[derive(Default)]
struct Seen {
    records: AtomicU64,
    /// Per record, in µs, the path in parts. Histograms, so memory stays flat however long
    /// the run.
    latencies_us: std::sync::Mutex<Latencies>,
    /// On a cluster, the ids a subscriber of stored records saw, per source (for the loss),
    /// and the records it was told it missed.
    stored: std::sync::Mutex<HashMap<String, BTreeSet<u64>>>,
    stored_lagged: AtomicU64,
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
        bind: args.sim_addr,
        rate_per_stream: args.rate,
        ..anode_feedsim::SimConfig::default()
    })
    .await
    .with_context(|| format!("cannot start the feed simulator on {}", args.sim_addr))?;
    let result = match &args.url {
        Some(url) => remote(&args, &sim, url.trim_end_matches('/')).await,
        None => {
            let dir = std::env::temp_dir().join(format!("anode-bench-{}", std::process::id()));
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let result = measure(&args, &sim, &dir).await;
            let _ = std::fs::remove_dir_all(&dir);
            result
        }
    };
    sim.shutdown().await;
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

/// The bench's sources: source id → the simulator's stream it reads.
struct Sources {
    ids: Vec<String>,
    streams: HashMap<String, String>,
}

impl Sources {
    fn new(prefix: &str, n: usize) -> Sources {
        let ids: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
        let streams = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), format!("binance/bench{i}usdt@trade")))
            .collect();
        Sources { ids, streams }
    }

    /// Source `i`'s spec for the simulator at `ws_url`.
    fn spec(&self, i: usize, ws_url: &str) -> Value {
        json!({"id": self.ids[i], "plugin": "binance-trades", "config": {
            "base_url": format!("{ws_url}/binance"), "symbols": [format!("bench{i}usdt")],
            "mode": "raw"}})
    }
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
    if let Some(n) = args.postgres_in_flight {
        store.push_str(&format!("postgres_in_flight = {n}\n"));
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
    let sources = Sources::new("bench-", args.sources);
    for i in 0..args.sources {
        let spec = sources.spec(i, &sim.ws_url());
        config.push_str(&format!(
            "[[source]]\nid = {}\nplugin = \"binance-trades\"\nconfig = {{ base_url = {}, \
             symbols = {}, mode = \"raw\" }}\n",
            spec["id"], spec["config"]["base_url"], spec["config"]["symbols"]
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
        log: dir.join("node.log"),
    };
    let api = format!("http://127.0.0.1:{api}");
    let target = Target {
        http: reqwest::Client::new(),
        token: None,
        members: vec![api.clone()],
        api,
        own: Some((&node, dir, args.postgres.as_deref())),
        added: Default::default(),
    };
    let outcome = drive(args, sim, &target, &sources, None).await;
    node.stop();
    outcome
}

/// `anode bench --url`: the bench's sources are added to a running cluster through the node
/// at `api`, and removed at the end.
async fn remote(args: &BenchArgs, sim: &anode_feedsim::FeedSim, api: &str) -> anyhow::Result<()> {
    let mut target = Target {
        api: api.to_owned(),
        http: reqwest::Client::new(),
        token: args.token.clone(),
        members: Vec::new(),
        own: None,
        added: Default::default(),
    };
    let cluster = super::call(target.get("/api/v1/cluster"), api).await?;
    target.members = cluster["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["state"] == "alive")
        .filter_map(|m| {
            m["api"]
                .as_str()
                .map(|u| u.trim_end_matches('/').to_owned())
        })
        .collect();
    let sources = Sources::new(&format!("bench-{}-", std::process::id()), args.sources);
    let specs: Vec<Value> = (0..args.sources)
        .map(|i| sources.spec(i, &sim.ws_url()))
        .collect();
    let outcome = drive(args, sim, &target, &sources, Some(specs)).await;
    if !target.added.load(Relaxed) {
        return outcome;
    }
    let removed = futures_util::stream::iter(&sources.ids)
        .map(|id| {
            let request = target.request(
                reqwest::Method::DELETE,
                api,
                &format!("/api/v1/sources/{id}"),
            );
            async move { request.send().await.is_ok_and(|r| r.status().is_success()) }
        })
        .buffer_unordered(16)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    if removed < sources.ids.len() {
        eprintln!(
            "warning: {} of the bench's {} sources could not be removed: remove them with \
             `anode source remove` (ids bench-{}-*)",
            sources.ids.len() - removed,
            sources.ids.len(),
            std::process::id()
        );
    }
    outcome
}

/// What the bench drives and how it reaches it.
struct Target<'a> {
    /// The API the bench's requests and subscribers go to.
    api: String,
    http: reqwest::Client,
    token: Option<String>,
    /// Every member's API (the node alone when the bench started it).
    members: Vec<String>,
    /// The node the bench started, its directory and PostgreSQL URL: its process and its store
    /// are read directly.
    own: Option<(&'a Node, &'a Path, Option<&'a str>)>,
    /// The bench added its sources through the API (and must remove them).
    added: std::sync::atomic::AtomicBool,
}

impl Target<'_> {
    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.get_at(&self.api, path)
    }

    fn get_at(&self, api: &str, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::GET, api, path)
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::POST, &self.api, path)
    }

    fn request(&self, method: reqwest::Method, api: &str, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{api}{path}"));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// `/ws` of the target, with the token when there is one.
    fn ws_url(&self) -> String {
        let url = format!("{}/ws", self.api.replacen("http", "ws", 1));
        match &self.token {
            Some(token) => format!("{url}?token={token}"),
            None => url,
        }
    }

    /// Poll `path` on `api` until `done` says so (`Ok(true)`) or fails; `None`: no answer yet.
    async fn until(
        &self,
        api: &str,
        path: &str,
        what: &str,
        within: Duration,
        mut done: impl FnMut(Option<&Value>) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let body = match self.get_at(api, path).send().await {
                Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
                _ => None,
            };
            if done(body.as_ref())? {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = self
                    .own
                    .map(|(node, ..)| format!("; its log: {}", node.log.display()))
                    .unwrap_or_default();
                bail!("{api} did not get {what} within {within:?}{log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until every bench source is live; a source the egress policy refuses ends the
    /// wait with what to change.
    async fn until_live(
        &self,
        sources: &Sources,
        sim: &anode_feedsim::FeedSim,
    ) -> anyhow::Result<()> {
        let mut last = String::new();
        let mut refused = None;
        let waited = self
            .until(
                &self.api,
                "/api/v1/sources",
                "every source live",
                Duration::from_secs(300),
                |list| {
                    let Some(list) = list.and_then(Value::as_array) else {
                        return Ok(false);
                    };
                    let mine: Vec<&Value> = list
                        .iter()
                        .filter(|s| {
                            s["id"]
                                .as_str()
                                .is_some_and(|id| sources.streams.contains_key(id))
                        })
                        .collect();
                    refused = mine.iter().find_map(|s| {
                        s["last_error"]
                            .as_str()
                            .filter(|e| e.contains("egress policy"))
                            .map(str::to_owned)
                    });
                    let live = mine.iter().filter(|s| s["state"] == "live").count();
                    if let Some(s) = mine.iter().find(|s| s["state"] != "live") {
                        last = format!(
                            "{live} of {} live; {} is {} ({})",
                            sources.ids.len(),
                            s["id"],
                            s["state"],
                            s["last_error"].as_str().unwrap_or("no error")
                        );
                    }
                    Ok(refused.is_some() || live >= sources.ids.len())
                },
            )
            .await;
        if let Some(refused) = refused {
            bail!(
                "the cluster refuses the simulator's address: {refused}. Allow it in every \
                 node's config (`[sources] allow = [\"{}\"]`), or run the simulator where the \
                 nodes may reach it (--sim-addr)",
                sim.addr()
            );
        }
        waited.map_err(|e| anyhow::anyhow!("{e}: {last}"))
    }

    /// The records stored of the bench's sources so far (their owners' counts).
    async fn stored(&self, sources: &Sources) -> anyhow::Result<u64> {
        let list: Value = self.get("/api/v1/sources").send().await?.json().await?;
        Ok(list
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| {
                s["id"]
                    .as_str()
                    .is_some_and(|id| sources.streams.contains_key(id))
            })
            .filter_map(|s| s["stored"].as_u64())
            .sum())
    }

    /// A figure of every member's `/metrics`, summed; `None` if a member does not give it.
    async fn members_metric(&self, name: &str) -> Option<f64> {
        let mut sum = 0.0;
        for api in &self.members {
            let text = self
                .get_at(api, "/metrics")
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            sum += text.lines().find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })?;
        }
        Some(sum)
    }

    /// CPU seconds of the node, or of every member.
    async fn cpu_seconds(&self) -> Option<f64> {
        match self.own {
            Some((node, ..)) => crate::procstat::cpu_seconds(&node.child.id().to_string()),
            None => self.members_metric("process_cpu_seconds_total").await,
        }
    }

    /// Resident memory of the node, or of every member together, in MiB.
    async fn rss_mib(&self) -> Option<f64> {
        let bytes = match self.own {
            Some((node, ..)) => {
                crate::procstat::resident_bytes(&node.child.id().to_string()).map(|b| b as f64)
            }
            None => self.members_metric("process_resident_memory_bytes").await,
        };
        bytes.map(|b| b / (1024.0 * 1024.0))
    }
}

/// A `/ws` subscriber of the target; with `filter`, sent and acknowledged before this returns.
async fn subscribe(
    target: &Target<'_>,
    filter: Option<Value>,
) -> anyhow::Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
> {
    let (mut socket, _) = tokio_tungstenite::connect_async(target.ws_url())
        .await
        .context("cannot subscribe to /ws")?;
    if let Some(filter) = filter {
        let message = json!({"type": "subscribe", "filter": filter}).to_string();
        socket
            .send(tokio_tungstenite::tungstenite::Message::text(message))
            .await?;
        let acknowledged = tokio::time::timeout(Duration::from_secs(10), async {
            let mut hellos = 0;
            while let Some(Ok(message)) = socket.next().await {
                let Ok(text) = message.to_text() else {
                    continue;
                };
                let value: Value = serde_json::from_str(text).unwrap_or_default();
                if value["type"] == "subscribed" {
                    hellos += 1;
                    if hellos == 2 {
                        return true;
                    }
                }
            }
            false
        })
        .await;
        if acknowledged != Ok(true) {
            bail!("the node did not acknowledge the subscriber's filter");
        }
    }
    Ok(socket)
}

/// The filter of the bench's subscribers on a cluster: its sources when the list fits a
/// subscribe message, else every trade (the subscribers skip other sources' records).
fn cluster_filter(sources: &Sources, after: Option<&str>) -> Value {
    let mut filter = json!({"sources": sources.ids});
    if filter.to_string().len() > 60_000 {
        filter = json!({"streams": ["trades"]});
    }
    if let Some(after) = after {
        filter["after"] = json!(after);
    }
    filter
}

/// Subscribe, add `specs` through the target if given (after the subscribers, so that they
/// see every record), load, measure and print.
async fn drive(
    args: &BenchArgs,
    sim: &anode_feedsim::FeedSim,
    target: &Target<'_>,
    sources: &Sources,
    specs: Option<Vec<Value>>,
) -> anyhow::Result<()> {
    let remote = target.own.is_none();
    println!(
        "anode bench: {} sources × {} trades/s = {:.0} records/s offered, {}, {} s, {}",
        args.sources,
        args.rate,
        args.sources as f64 * args.rate,
        subscribers_named(args.subscribers),
        args.duration,
        match (remote, args.postgres.is_some(), args.nats.is_some()) {
            (true, ..) => format!(
                "the cluster at {} ({} nodes, its own store)",
                target.api,
                target.members.len()
            ),
            (false, true, false) => "PostgreSQL store".into(),
            (false, true, true) => "PostgreSQL + JetStream store".into(),
            (false, false, false) => "embedded store".into(),
            (false, false, true) => "embedded + JetStream store".into(),
        }
    );
    let started = Instant::now();
    target
        .until(
            &target.api,
            "/api/v1/status",
            "to answer",
            Duration::from_secs(60),
            |s| Ok(s.is_some()),
        )
        .await?;
    let seen = Arc::new(Seen::default());
    let mut subscribers = Vec::new();
    // On a cluster, a subscriber of stored records sees which ids were stored, for the loss.
    if remote {
        let socket = subscribe(target, Some(cluster_filter(sources, Some("stored")))).await?;
        let (seen, streams) = (seen.clone(), sources.streams.clone());
        subscribers.push(tokio::spawn(async move {
            let (_tx, mut rx) = socket.split();
            while let Some(Ok(message)) = rx.next().await {
                let Ok(value) =
                    serde_json::from_str::<Value>(message.to_text().unwrap_or_default())
                else {
                    continue;
                };
                if value["type"] == "lag" {
                    seen.stored_lagged
                        .fetch_add(value["dropped"].as_u64().unwrap_or(1), Relaxed);
                }
                let (Some(source), Some(trade)) = (
                    value["source"].as_str(),
                    value["payload"]["trade_id"].as_u64(),
                ) else {
                    continue;
                };
                if streams.contains_key(source) {
                    seen.stored
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(source.to_owned())
                        .or_default()
                        .insert(trade);
                }
            }
        }));
    }
    let streams = Arc::new(sources.streams.clone());
    for k in 0..args.subscribers {
        // One subscriber looks up send times: enough samples, little load on the simulator.
        let clock = (k == 0).then(|| sim.emit_clock());
        let socket = subscribe(target, remote.then(|| cluster_filter(sources, None))).await?;
        let (seen, streams) = (seen.clone(), streams.clone());
        subscribers.push(tokio::spawn(async move {
            let (_tx, mut rx) = socket.split();
            while let Some(Ok(message)) = rx.next().await {
                let Ok(text) = message.to_text() else {
                    continue;
                };
                let Ok(frame) = serde_json::from_str::<TradeFrame>(text) else {
                    continue;
                };
                let Some(stream) = frame.source.and_then(|s| streams.get(&*s)) else {
                    continue;
                };
                let (Some(emitted_ms), Some(received_us), Some(decoded_us)) = (
                    frame.payload.event_timestamp,
                    frame.payload.atom_timestamp,
                    frame.ingest_time_us,
                ) else {
                    continue;
                };
                let now = crate::clock::now_us();
                let since = |from: i64| (now - from).max(0) as u64;
                let span = |from: i64, to: i64| (to - from).max(0) as u64;
                let sent_us = clock
                    .as_ref()
                    .and_then(|clock| clock.sent_us(stream, frame.payload.trade_id?));
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
    let outcome = async {
        if let Some(specs) = specs {
            super::call(target.post("/api/v1/sources").json(&specs), &target.api)
                .await
                .context("cannot add the bench's sources")?;
            target.added.store(true, Relaxed);
        }
        run_load(args, sim, target, sources, &seen, started).await
    }
    .await;
    for s in subscribers {
        s.abort();
    }
    outcome
}

async fn run_load(
    args: &BenchArgs,
    sim: &anode_feedsim::FeedSim,
    target: &Target<'_>,
    sources: &Sources,
    seen: &Seen,
    started: Instant,
) -> anyhow::Result<()> {
    target.until_live(sources, sim).await?;
    println!(
        "  {} sources live {:.1} s after start",
        sources.ids.len(),
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = Sample::take(target, sources, seen).await?;
    *seen.latencies_us.lock().unwrap_or_else(|p| p.into_inner()) = Default::default();
    let mut peak_rss = before.rss_mib.unwrap_or(f64::NAN);
    let until = Instant::now() + Duration::from_secs(args.duration);
    // Memory of a remote cluster comes from every member's /metrics: look less often.
    let every = Duration::from_millis(if target.own.is_some() { 500 } else { 2000 });
    while Instant::now() < until {
        tokio::time::sleep(every.min(until - Instant::now())).await;
        if let Some(rss) = target.rss_mib().await {
            peak_rss = peak_rss.max(rss);
        }
    }
    let after = Sample::take(target, sources, seen).await?;
    let latencies =
        std::mem::take(&mut *seen.latencies_us.lock().unwrap_or_else(|p| p.into_inner()));
    let seconds = after.at.duration_since(before.at).as_secs_f64();
    let stored = after.stored.saturating_sub(before.stored) as f64;
    let delivered = (after.received - before.received) as f64;
    let cpu = after.cpu_s.zip(before.cpu_s).map(|(a, b)| a - b);
    let own_cpu = after.own_cpu_s.zip(before.own_cpu_s).map(|(a, b)| a - b);
    let server_cpu = after
        .server_cpu_s
        .zip(before.server_cpu_s)
        .map(|(a, b)| a - b);

    // Loss: stop the venues, let every store write what it holds, compare id by id.
    sim.pause();
    let mut drained = Ok(());
    for api in &target.members {
        drained = target
            .until(
                api,
                "/api/v1/status",
                "its store drained",
                Duration::from_secs(120),
                |s| {
                    Ok(s.is_some_and(|s| {
                        let store = &s["store"];
                        store["backlog"] == 0
                            && store["sinks"]
                                .as_array()
                                .is_none_or(|sinks| sinks.iter().all(|k| k["backlog"] == 0))
                    }))
                },
            )
            .await;
        if drained.is_err() {
            break;
        }
    }
    let loss = match drained {
        Err(e) => Err(e),
        // Stored records reach the store's readers (and a subscriber of stored records)
        // after their commit: look until none is missing, a bounded time.
        Ok(()) => {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let counted = match target.own {
                    Some((_, dir, postgres)) => {
                        missing(sim, sources, &stored_ids(dir, postgres).await?)
                    }
                    None => missing(
                        sim,
                        sources,
                        &seen.stored.lock().unwrap_or_else(|p| p.into_inner()),
                    ),
                };
                if counted.missing == 0 || Instant::now() > deadline {
                    break match seen.stored_lagged.load(Relaxed) {
                        0 => Ok(counted),
                        n => Err(anyhow::anyhow!(
                            "the subscriber of stored records lagged and missed {n} of them"
                        )),
                    };
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    sim.resume();

    let pct = |h: &Histogram, q: f64| h.ms(q);
    println!("  stored      {:>10.0} records/s", stored / seconds);
    if args.subscribers > 0 {
        println!(
            "  delivered   {:>10.0} records/s to {} ({:.0} per subscriber)",
            delivered / seconds,
            subscribers_named(args.subscribers),
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
    let nodes = if target.own.is_some() {
        "node".to_owned()
    } else {
        format!("{} nodes", target.members.len())
    };
    match cpu {
        Some(cpu) => {
            let per_delivered = if delivered > 0.0 {
                format!(", {:.2} µs per delivered record", cpu * 1e6 / delivered)
            } else {
                String::new()
            };
            println!(
                "  CPU         {:.0}% of a core ({nodes}); {:.1} µs per stored record{per_delivered}",
                cpu / seconds * 100.0,
                cpu * 1e6 / stored.max(1.0),
            );
        }
        None => {
            println!("  CPU         not measured: a node did not report its process's CPU time")
        }
    }
    if let Some(own) = own_cpu {
        println!(
            "  bench       {:.0}% of a core (the simulator and the subscribers, this process)",
            own / seconds * 100.0
        );
    }
    if let Some(server) = server_cpu {
        println!(
            "  PostgreSQL  {:.0}% of a core; {:.1} µs of server CPU per stored record (every \
             local `postgres` process, other clients' work included)",
            server / seconds * 100.0,
            server * 1e6 / stored.max(1.0),
        );
    }
    match after.rss_mib {
        Some(rss) => println!(
            "  memory      {rss:.1} MiB resident at the end, {peak_rss:.1} MiB at most ({nodes})"
        ),
        None => println!("  memory      not measured: a node did not report it"),
    }
    println!(
        "  fan-out     {} dropped, {} subscribers disconnected for lag",
        after.status["fanout"]["dropped"], after.status["fanout"]["disconnected_for_lag"]
    );
    match loss {
        Ok(m) if m.missing == 0 => println!(
            "  loss        0 of {} ids the simulator sent are not stored (none)",
            m.sent
        ),
        Ok(m) => println!(
            "  loss        {} of {} ids the simulator sent are not stored, such as {}",
            m.missing,
            m.sent,
            m.examples.join(", ")
        ),
        Err(e) => println!("  loss        not measured: {e:#}"),
    }
    Ok(())
}

/// What the store lacks of the ids the simulator sent on the bench's streams.
struct Missing {
    sent: u64,
    missing: u64,
    /// The first few, as `source:id`.
    examples: Vec<String>,
}

fn missing(
    sim: &anode_feedsim::FeedSim,
    sources: &Sources,
    stored: &HashMap<String, BTreeSet<u64>>,
) -> Missing {
    let report = sim.report();
    let mut out = Missing {
        sent: 0,
        missing: 0,
        examples: Vec::new(),
    };
    for id in &sources.ids {
        let Some(stream) = report.streams.get(&sources.streams[id]) else {
            continue;
        };
        let have = stored.get(id);
        for trade in stream.ids() {
            out.sent += 1;
            if !have.is_some_and(|h| h.contains(&trade)) {
                out.missing += 1;
                if out.examples.len() < 10 {
                    out.examples.push(format!("{id}:{trade}"));
                }
            }
        }
    }
    out
}

/// Counters at one moment.
struct Sample {
    at: Instant,
    stored: u64,
    received: u64,
    cpu_s: Option<f64>,
    /// CPU of this process: the simulator and the subscribers, on the same machine as the node.
    own_cpu_s: Option<f64>,
    /// CPU of the local PostgreSQL server's processes, when the bench's node stores there.
    server_cpu_s: Option<f64>,
    rss_mib: Option<f64>,
    /// The target node's status.
    status: Value,
}

impl Sample {
    async fn take(target: &Target<'_>, sources: &Sources, seen: &Seen) -> anyhow::Result<Sample> {
        let status: Value = target.get("/api/v1/status").send().await?.json().await?;
        let local_postgres = target.own.is_some() && status["store"]["kind"] == "postgres";
        Ok(Sample {
            at: Instant::now(),
            stored: target.stored(sources).await?,
            received: seen.records.load(Relaxed),
            cpu_s: target.cpu_seconds().await,
            own_cpu_s: crate::procstat::cpu_seconds("self"),
            server_cpu_s: local_postgres.then(crate::procstat::postgres_cpu_seconds),
            rss_mib: target.rss_mib().await,
            status,
        })
    }
}

/// The node the bench started.
struct Node {
    child: std::process::Child,
    log: PathBuf,
}

impl Node {
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

/// What a subscriber reads of each frame, borrowed from the text: the bench's clients share the
/// machine with the node, so they skip the rest of the frame instead of building a `Value` of it.
#[derive(serde::Deserialize)]
struct TradeFrame<'a> {
    #[serde(borrow, default)]
    source: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    ingest_time_us: Option<i64>,
    #[serde(default)]
    payload: TradeTimes,
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct TradeTimes {
    event_timestamp: Option<i64>,
    atom_timestamp: Option<i64>,
    trade_id: Option<u64>,
}

/// "1 subscriber", "10 subscribers".
fn subscribers_named(n: usize) -> String {
    format!("{n} subscriber{}", if n == 1 { "" } else { "s" })
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
