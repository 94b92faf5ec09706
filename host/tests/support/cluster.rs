//! Clusters of real `anode up` processes on loopback (or each in a network namespace of its
//! own, see `netns.rs`): start, `kill -9`, restart, and ask each node's API what it sees.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Gossip timings for tests: failures are detected within about two seconds.
pub const FAST_GOSSIP: &str = "probe_period_ms = 300\nprobe_rtt_ms = 150\n\
    suspect_to_down_ms = 1200\nsync_ms = 500\nannounce_ms = 300\njoin_grace_ms = 1500\n";

/// One `anode up` process.
pub struct NodeProc {
    pub id: String,
    /// `http://127.0.0.1:port`
    pub api: String,
    /// `127.0.0.1:port` (UDP)
    pub gossip: String,
    pub dir: PathBuf,
    config: PathBuf,
    child: Option<Child>,
    /// The network namespace it runs in (`ip netns exec`), if any.
    netns: Option<String>,
    /// Bearer tokens this test sends: reads (`api.read_token`) and changes (`api.token`).
    read_token: Option<String>,
    write_token: Option<String>,
    /// Environment variables the process gets besides the test's own.
    env: Vec<(String, String)>,
}

/// The cluster key of test nodes unless a test gives its own.
pub const TEST_KEY: &str = "test-cluster-key-0123456789";

/// What a node is started with.
#[derive(Clone, Default)]
pub struct NodeOptions {
    pub seeds: Vec<String>,
    /// `[cluster] key`; [`TEST_KEY`] when `None`, no key when `Some("")`.
    pub key: Option<String>,
    /// PostgreSQL URL; without one, the embedded store.
    pub postgres: Option<String>,
    /// Keep the default gossip timings instead of [`FAST_GOSSIP`].
    pub default_timing: bool,
    /// The body of `[api]` instead of `bind = "127.0.0.1:0"`.
    pub api_section: Option<String>,
    /// More TOML appended at the end (whole sections, such as `[plugins]`).
    pub extra: String,
    /// Run the process in this network namespace (`ip netns exec <netns> anode …`).
    pub netns: Option<String>,
    /// `[cluster] bind` instead of `127.0.0.1:0`.
    pub gossip_bind: Option<String>,
    /// `[sources] allow` instead of loopback only.
    pub allow: Option<Vec<String>>,
    /// The bearer token [`NodeProc::get`] sends (the node's `api.read_token`, which
    /// `api_section` sets).
    pub read_token: Option<String>,
    /// The bearer token [`NodeProc::post`] sends (the node's `api.token`).
    pub write_token: Option<String>,
    /// Environment variables for the process (`ANODE_*` overrides, proxies, …).
    pub env: Vec<(String, String)>,
}

/// Three nodes `<prefix>1`, `<prefix>2`, `<prefix>3` on one PostgreSQL, the others joining the
/// first.
pub fn three_on_postgres(root: &Path, prefix: &str, postgres: &str) -> [NodeProc; 3] {
    let first = NodeProc::start(
        root,
        &format!("{prefix}1"),
        &NodeOptions {
            postgres: Some(postgres.to_owned()),
            ..NodeOptions::default()
        },
    );
    let options = NodeOptions {
        seeds: vec![first.gossip.clone()],
        postgres: Some(postgres.to_owned()),
        ..NodeOptions::default()
    };
    let second = NodeProc::start(root, &format!("{prefix}2"), &options);
    let third = NodeProc::start(root, &format!("{prefix}3"), &options);
    [first, second, third]
}

impl NodeProc {
    /// Start node `id` with its data in `root/<id>` and wait until it serves its API.
    pub fn start(root: &Path, id: &str, options: &NodeOptions) -> NodeProc {
        let dir = root.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("anode.toml");
        let quoted = |list: &[String]| {
            let items: Vec<String> = list.iter().map(|s| format!("{s:?}")).collect();
            items.join(", ")
        };
        let allow = options
            .allow
            .as_deref()
            .map_or_else(|| "\"127.0.0.0/8\"".to_owned(), quoted);
        let mut text = format!(
            "data_dir = {:?}\n[node]\nid = {id:?}\n[api]\n{}\n\
             [sources]\nreconnect_min_ms = 50\nreconnect_max_ms = 1000\nallow = [{allow}]\n\
             [store]\nreconnect_min_ms = 50\nreconnect_max_ms = 500\n",
            dir.display().to_string(),
            options
                .api_section
                .as_deref()
                .unwrap_or("bind = \"127.0.0.1:0\"")
        );
        if let Some(url) = &options.postgres {
            text.push_str(&format!("postgres_url = {url:?}\n"));
        }
        text.push_str(&format!(
            "[cluster]\nbind = {:?}\nseeds = [{}]\n{}",
            options.gossip_bind.as_deref().unwrap_or("127.0.0.1:0"),
            quoted(&options.seeds),
            if options.default_timing {
                ""
            } else {
                FAST_GOSSIP
            }
        ));
        // `Some("")`: a node without a key.
        match options.key.as_deref().unwrap_or(TEST_KEY) {
            "" => {}
            key => text.push_str(&format!("key = {key:?}\n")),
        }
        text.push_str(&options.extra);
        std::fs::write(&config, text).unwrap();
        let mut node = NodeProc {
            id: id.to_owned(),
            api: String::new(),
            gossip: String::new(),
            dir,
            config,
            child: None,
            netns: options.netns.clone(),
            read_token: options.read_token.clone(),
            write_token: options.write_token.clone(),
            env: options.env.clone(),
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("node.log"))
            .unwrap();
        let mut command = match &self.netns {
            // `ip netns exec` switches namespace and execs: the child is the node itself.
            Some(ns) => {
                let mut c = Command::new(ip_program());
                c.args(["netns", "exec", ns])
                    .arg(env!("CARGO_BIN_EXE_anode"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_anode")),
        };
        let mut child = command
            .arg("--config")
            .arg(&self.config)
            .arg("up")
            .env("ANODE_LOG", "warn,anode=info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn anode up");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut api, mut gossip) = (None, None);
        while api.is_none() || gossip.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).unwrap_or_else(|e| {
                let what = match e {
                    std::sync::mpsc::RecvTimeoutError::Timeout => {
                        let _ = child.kill();
                        "did not start within 60 s".to_owned()
                    }
                    std::sync::mpsc::RecvTimeoutError::Disconnected => {
                        format!("exited while starting ({:?})", child.wait())
                    }
                };
                let log = std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "node {} {what}; the end of its log:\n{}",
                    self.id,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            });
            let mut words = line.split_whitespace();
            match words.next() {
                Some("dashboard") => {
                    // A node bound to every interface is reached on loopback.
                    api = words
                        .next()
                        .map(|u| u.trim_end_matches('/').replace("0.0.0.0", "127.0.0.1"));
                }
                Some("gossip") => gossip = words.next().map(str::to_owned),
                _ => {}
            }
        }
        self.api = api.unwrap();
        self.gossip = gossip.unwrap();
        self.child = Some(child);
    }

    /// `kill -9`: no leave, no drain.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Rewrite the node's `[cluster] key` list in its config file and send it SIGHUP, which
    /// makes it take the new keys without a restart.
    pub fn roll_keys(&self, keys: &[&str]) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let list: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
        let text: Vec<String> = text
            .lines()
            .map(|l| {
                if l.starts_with("key = ") {
                    format!("key = [{}]", list.join(", "))
                } else {
                    l.to_owned()
                }
            })
            .collect();
        std::fs::write(&self.config, text.join("\n") + "\n").unwrap();
        self.signal("HUP");
    }

    /// Send the process a signal by name (`STOP` freezes it, `CONT` thaws it).
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("the node runs").id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{name} {pid}");
    }

    /// SIGTERM, then wait (bounded) for the process to drain and exit; returns its status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!(
                    "node {} did not exit within 60 s of SIGTERM; see {}",
                    self.id,
                    self.dir.join("node.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status once the process has exited (it is then forgotten), without waiting.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().unwrap()?;
        self.child = None;
        Some(status)
    }

    /// Start again after [`NodeProc::kill`], same id and data dir (new ports).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart after kill or terminate");
        self.spawn();
    }

    /// GET JSON from this node (with its read token, if it has one); `Null` when it does not
    /// answer.
    pub async fn get(&self, path: &str) -> Value {
        get_as(&format!("{}{path}", self.api), self.read_token.as_deref()).await
    }

    /// POST JSON to this node (with its write token, if it has one): the status and the body.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .post(format!("{}{path}", self.api))
            .json(body)
            .timeout(Duration::from_secs(30));
        if let Some(token) = &self.write_token {
            request = request.bearer_auth(token);
        }
        let reply = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path} to {}: {e}", self.id));
        let status = reply.status().as_u16();
        (status, reply.json().await.unwrap_or(Value::Null))
    }

    /// Add a source spec, or an array of them, through this node: the test fails unless the
    /// node adds them (201).
    pub async fn add_sources(&self, specs: &Value) {
        let (status, reply) = self.post("/api/v1/sources", specs).await;
        assert_eq!(status, 201, "adding sources through {}: {reply}", self.id);
    }

    /// The messages of this node's event log that contain any of `words`.
    pub async fn events_saying(&self, words: &[&str]) -> Vec<String> {
        let events = self.get("/api/v1/events").await;
        events["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["message"].as_str())
            .filter(|m| words.iter().any(|w| m.contains(w)))
            .map(str::to_owned)
            .collect()
    }
}

/// The ids of source specs.
pub fn source_ids(specs: &[Value]) -> BTreeSet<String> {
    specs
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

/// `ip` from iproute2: on the `PATH`, else where distributions put it.
pub fn ip_program() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    on_path
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/bin".into()])
        .map(|dir| dir.join("ip"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| "ip".into())
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// GET JSON, with a bound; `Null` when the node does not answer.
pub async fn get(url: &str) -> Value {
    get_as(url, None).await
}

/// [`get`] with a bearer token, if any.
pub async fn get_as(url: &str, token: Option<&str>) -> Value {
    let mut request = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let reply = request.send().await;
    match reply {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// POST JSON; panics unless the node answers 2xx.
pub async fn post(url: &str, body: &Value) -> Value {
    let reply = reqwest::Client::new()
        .post(url)
        .json(body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = reply.status();
    let text = reply.text().await.unwrap();
    assert!(status.is_success(), "POST {url}: {status}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// A node's alive (or suspect) members, itself included.
pub async fn live_members(node: &NodeProc) -> BTreeSet<String> {
    members_in(node, &["alive", "suspect"]).await
}

/// Ids of a node's members in one of `states`.
pub async fn members_in(node: &NodeProc, states: &[&str]) -> BTreeSet<String> {
    let cluster = node.get("/api/v1/cluster").await;
    cluster["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| states.contains(&m["state"].as_str().unwrap_or("")))
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

/// A node's own generation, as it reports itself in `/api/v1/cluster`: it changes when the
/// node restarts, or rejoins after the others took it for down.
pub async fn own_generation(node: &NodeProc) -> u64 {
    node.get("/api/v1/cluster").await["members"]
        .as_array()
        .and_then(|members| members.iter().find(|m| m["self"] == true))
        .and_then(|m| m["generation"].as_u64())
        .expect("a node lists itself, with its generation, in /api/v1/cluster")
}

/// The sources a node runs itself, by id, with their reports.
pub async fn running_on(node: &NodeProc) -> BTreeMap<String, Value> {
    node.get("/api/v1/status").await["sources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["state"] != "failed")
        .map(|r| (r["id"].as_str().unwrap().to_owned(), r.clone()))
        .collect()
}

/// Whether the nodes agree: the same live members, the same catalog, the same owner for each
/// of `sources`, and each source running on exactly its owner (live). `Err` says what is off.
pub async fn converged(nodes: &[&NodeProc], sources: &BTreeSet<String>) -> Result<(), String> {
    let want: BTreeSet<String> = nodes.iter().map(|n| n.id.clone()).collect();
    let mut fingerprints = BTreeSet::new();
    let mut owners: Option<BTreeMap<String, String>> = None;
    for node in nodes {
        let members = live_members(node).await;
        if members != want {
            return Err(format!("{} sees {members:?}", node.id));
        }
        let cluster = node.get("/api/v1/cluster").await;
        fingerprints.insert(cluster["catalog"]["fingerprint"].to_string());
        let listed = node.get("/api/v1/sources").await;
        let these: BTreeMap<String, String> = listed
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                (
                    s["id"].as_str().unwrap().to_owned(),
                    s["owner"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        let ids: BTreeSet<String> = these.keys().cloned().collect();
        if &ids != sources {
            return Err(format!(
                "{} lists {} of {} sources",
                node.id,
                ids.len(),
                sources.len()
            ));
        }
        match &owners {
            None => owners = Some(these),
            Some(first) if *first != these => {
                return Err(format!("{} disagrees on owners", node.id));
            }
            Some(_) => {}
        }
    }
    if fingerprints.len() != 1 {
        return Err(format!("catalogs differ: {fingerprints:?}"));
    }
    let owners = owners.unwrap_or_default();
    let mut runners: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for node in nodes {
        for (id, report) in running_on(node).await {
            if report["state"] != "live" {
                return Err(format!("{id} on {} is {}", node.id, report["state"]));
            }
            runners.entry(id).or_default().push(node.id.clone());
        }
    }
    for id in sources {
        let on = runners.get(id).cloned().unwrap_or_default();
        if on != [owners[id].clone()] {
            return Err(format!("{id} (owner {}) runs on {on:?}", owners[id]));
        }
    }
    Ok(())
}

/// The value of the first `/metrics` line starting with `line_start` (0 when absent).
pub async fn metric(node: &NodeProc, line_start: &str) -> f64 {
    metric_as(node, line_start, node.read_token.as_deref()).await
}

/// [`metric`] of a node whose reads need `token`.
pub async fn metric_as(node: &NodeProc, line_start: &str, token: Option<&str>) -> f64 {
    metric_at(&node.api, line_start, token).await
}

/// The value of the first `/metrics` line of the node at `api` that starts with `line_start`
/// (0 when absent), read with `token` when the node needs one.
pub async fn metric_at(api: &str, line_start: &str, token: Option<&str>) -> f64 {
    let mut request = reqwest::Client::new().get(format!("{api}/metrics"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let text = request.send().await.unwrap().text().await.unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// `n` nodes `<prefix>1…<prefix>n` sharing PostgreSQL at `postgres` (the embedded store each
/// when `None`), the others seeded with the first; returned once the first sees all of them.
pub async fn start_cluster(
    root: &Path,
    prefix: &str,
    n: usize,
    postgres: Option<&str>,
) -> Vec<NodeProc> {
    let first = NodeProc::start(
        root,
        &format!("{prefix}1"),
        &NodeOptions {
            postgres: postgres.map(str::to_owned),
            ..NodeOptions::default()
        },
    );
    let options = NodeOptions {
        seeds: vec![first.gossip.clone()],
        postgres: postgres.map(str::to_owned),
        ..NodeOptions::default()
    };
    let mut nodes = vec![first];
    for i in 2..=n {
        nodes.push(NodeProc::start(root, &format!("{prefix}{i}"), &options));
    }
    // Polled here rather than with `support::until`: the cluster bench includes this file alone.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = live_members(&nodes[0]).await;
        if seen.len() == n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after 30 s waiting for {n} members; {} sees {seen:?}",
            nodes[0].id
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nodes
}
