//! What the integration tests share: PostgreSQL databases (a fresh database on the server the
//! test command provides, or a private server a test can stop and start), nodes started in
//! process on loopback port 0, and polling with a deadline.
#![allow(dead_code)]

pub mod cluster;
pub mod ganache;
pub mod netns;
pub mod proxy;
pub mod store;

mod poll;
pub use poll::until;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anode::config::Config;
use anode::node::NodeHandle;

/// The PostgreSQL server the test command provides (`ANODE_TEST_PG`, default the local one).
pub fn pg_server() -> String {
    std::env::var("ANODE_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

static DB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A database of its own for one test, dropped at the end.
pub struct TestDb {
    pub url: String,
    name: String,
    server: String,
}

impl TestDb {
    pub async fn create(server: &str) -> TestDb {
        let name = format!(
            "anode_test_{}_{}",
            std::process::id(),
            DB_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let admin = admin(server).await;
        // One statement each: CREATE DATABASE cannot run in the implicit transaction of a
        // multi-statement query.
        for sql in [
            format!("DROP DATABASE IF EXISTS {name}"),
            format!("CREATE DATABASE {name}"),
        ] {
            admin
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql} on {server}: {e:?}"));
        }
        TestDb {
            url: format!("{server}/{name}"),
            name,
            server: server.to_owned(),
        }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.url))
    }

    pub async fn drop_db(self) {
        if let Ok(admin) = connect(&format!("{}/postgres", self.server)).await {
            let _ = admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .await;
        }
    }
}

pub async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn admin(server: &str) -> tokio_postgres::Client {
    connect(&format!("{server}/postgres")).await.unwrap_or_else(|e| {
        panic!(
            "PostgreSQL is not reachable at {server} ({e}). Run the tests with ./scripts/test.sh, \
             which starts one, or set ANODE_TEST_PG=postgres://user@host:port"
        )
    })
}

/// A PostgreSQL server of the test's own (initdb + pg_ctl in a temporary directory), so the
/// test can stop and start it without touching anyone else's.
pub struct PrivatePg {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    /// `listen_addresses`: loopback, and more for [`PrivatePg::start_reachable_at`].
    listen: String,
    _temp: tempfile::TempDir,
}

fn pg_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("ANODE_PG_BIN") {
        return PathBuf::from(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("pg_ctl").exists() {
            return dir;
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .filter(|d| d.join("pg_ctl").exists())
        .unwrap_or_else(|| {
            panic!(
                "PostgreSQL server programs (initdb, pg_ctl) were not found: install them \
                 (Debian: apt-get install postgresql) or set ANODE_PG_BIN to their directory"
            )
        })
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("openssl is needed to make test certificates: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PrivatePg {
    /// Run a PostgreSQL program; as root, as the `postgres` user (the server refuses root).
    fn run(&self, program: &str, args: &[&str]) -> std::process::Output {
        let exe = self.bin.join(program);
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        command
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()))
    }

    pub fn start() -> PrivatePg {
        Self::start_with(false).0
    }

    /// A server that also listens on `addr` and trusts clients from `clients` (a network such
    /// as `10.202.0.0/16`): nodes in network namespaces reach it through their router.
    pub fn start_reachable_at(addr: std::net::IpAddr, clients: &str) -> PrivatePg {
        let pg = Self::init(&format!("127.0.0.1,{addr}"));
        let hba = pg.data_dir().join("pg_hba.conf");
        let mut text = std::fs::read_to_string(&hba).unwrap();
        text.push_str(&format!("host all all {clients} trust\n"));
        std::fs::write(&hba, text).unwrap();
        pg.pg_ctl_start();
        pg
    }

    /// `postgres://postgres@<addr>:<port>`: the server as seen at another of its addresses.
    pub fn server_at(&self, addr: std::net::IpAddr) -> String {
        format!("postgres://postgres@{addr}:{}", self.port)
    }

    /// A server that also speaks TLS, with a certificate for `127.0.0.1` and `localhost`
    /// signed by a test CA; returns the CA's PEM file.
    pub fn start_with_tls() -> (PrivatePg, PathBuf) {
        let (pg, ca) = Self::start_with(true);
        (pg, ca.expect("made with TLS"))
    }

    /// A certificate authority of its own in `dir` (`<name>.crt`, `<name>.key`).
    pub fn make_ca(dir: &Path, name: &str) -> PathBuf {
        let (crt, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            crt.to_str().unwrap(),
        ]);
        crt
    }

    fn start_with(tls: bool) -> (PrivatePg, Option<PathBuf>) {
        let pg = Self::init("127.0.0.1");
        let ca = tls.then(|| pg.serve_tls());
        pg.pg_ctl_start();
        (pg, ca)
    }

    /// initdb in a temporary directory (not started yet), to listen on `listen`.
    fn init(listen: &str) -> PrivatePg {
        let bin = pg_bin_dir();
        let temp = tempfile::Builder::new()
            .prefix("anode-pg")
            .tempdir_in("/tmp")
            .unwrap();
        let dir = temp.path().to_owned();
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(status.success(), "chown of {} failed", dir.display());
        }
        let port = free_port();
        let pg = PrivatePg {
            port,
            dir,
            bin,
            listen: listen.to_owned(),
            _temp: temp,
        };
        let data = pg.data_dir();
        let out = pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg
    }

    /// Make a CA and a server certificate signed by it, and turn TLS on; returns the CA file.
    fn serve_tls(&self) -> PathBuf {
        let data = self.data_dir();
        let ca = Self::make_ca(&self.dir, "anode-test-ca");
        let ca_key = self.dir.join("anode-test-ca.key");
        let (crt, key, csr, ext) = (
            data.join("server.crt"),
            data.join("server.key"),
            self.dir.join("server.csr"),
            self.dir.join("server.ext"),
        );
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            csr.to_str().unwrap(),
        ]);
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            csr.to_str().unwrap(),
            "-CA",
            ca.to_str().unwrap(),
            "-CAkey",
            ca_key.to_str().unwrap(),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            crt.to_str().unwrap(),
            "-extfile",
            ext.to_str().unwrap(),
        ]);
        if is_root() {
            for file in [&crt, &key] {
                let status = Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(file)
                    .status();
                assert!(status.unwrap().success(), "chown {}", file.display());
            }
        }
        let status = Command::new("chmod").arg("600").arg(&key).status().unwrap();
        assert!(status.success());
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, text).unwrap();
        ca
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn server(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -c listen_addresses={} -k {} -c fsync=off",
            self.port,
            self.listen,
            self.dir.display()
        );
        let log = self.dir.join("log");
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                self.data_dir().to_str().unwrap(),
                "-o",
                &options,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stop the server (fast: connections are cut) and wait until it is down.
    pub fn stop(&self) {
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                self.data_dir().to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Start it again on the same port and wait until it accepts connections.
    pub fn restart(&self) {
        self.pg_ctl_start();
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &[
                "-D",
                self.data_dir().to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}

/// A port nobody listens on now, for a program that must be told its port before it starts
/// (a database, a NATS server, a browser driver). Taken below the kernel's ephemeral range
/// (32768 and up here): a port the kernel handed out for `bind(0)` would go back to a pool
/// that every outgoing connection of the tests running beside this one draws from, and could
/// be taken before the program binds it. Chosen at random, so tests rarely pick the same one.
pub fn free_port() -> u16 {
    (0..1_000)
        .map(|_| 20_000 + rand::random::<u16>() % 12_000)
        .find(|&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        .expect("a free loopback port between 20000 and 32000")
}

/// A UDP port nobody uses now on loopback (below the ephemeral range, as [`free_port`]).
pub fn free_udp_port() -> u16 {
    (0..1_000)
        .map(|_| 20_000 + rand::random::<u16>() % 12_000)
        .find(|&port| std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok())
        .expect("a free loopback UDP port between 20000 and 32000")
}

/// Wait (up to 60 s) until `node`'s metric `line_start` is above `above`; returns it.
pub async fn until_metric_above(node: &cluster::NodeProc, line_start: &str, above: f64) -> f64 {
    let what = format!("{line_start} on {} above {above}", node.id);
    until(&what, Duration::from_secs(60), || async {
        let now = cluster::metric(node, line_start).await;
        if now > above {
            Ok(now)
        } else {
            Err(format!("{now}"))
        }
    })
    .await
}

/// What test nodes allow their sources to reach: the feed simulator on loopback.
pub const LOOPBACK: &str = "127.0.0.0/8";

/// Defaults for a test node: loopback port 0, a data dir of its own, fast reconnects, and
/// loopback allowed to sources (the feed simulator runs there).
pub fn node_config(data_dir: &Path) -> Config {
    let mut config = Config {
        data_dir: data_dir.to_owned(),
        ..Config::default()
    };
    config.api.bind = "127.0.0.1:0".parse().unwrap();
    config.cluster.bind = "127.0.0.1:0".parse().unwrap();
    config.sources.reconnect_min_ms = 50;
    config.sources.reconnect_max_ms = 1000;
    config.sources.allow = vec![LOOPBACK.into()];
    config.store.reconnect_min_ms = 50;
    config.store.reconnect_max_ms = 500;
    config
}

pub async fn start_node(config: Config) -> NodeHandle {
    anode::node::start(config)
        .await
        .unwrap_or_else(|e| panic!("node did not start: {e}"))
}

/// A feed simulator on loopback: `rate` events per second per stream, no faults.
pub async fn simulator(rate: f64) -> anode_feedsim::FeedSim {
    anode_feedsim::start(anode_feedsim::SimConfig {
        rate_per_stream: rate,
        ..anode_feedsim::SimConfig::default()
    })
    .await
    .expect("start the feed simulator")
}

/// `n` Binance raw-stream sources (one symbol each, `<prefix><i>usdt`) on `sim`, as specs.
pub fn binance_sources(
    sim: &anode_feedsim::FeedSim,
    n: usize,
    prefix: &str,
) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            serde_json::json!({"id": format!("{prefix}-{i}"), "plugin": "binance-trades",
                "config": {"base_url": format!("{}/binance", sim.ws_url()),
                    "symbols": [format!("{prefix}{i}usdt")], "mode": "raw"}})
        })
        .collect()
}

/// GET a JSON document.
pub async fn get_json(url: &str) -> serde_json::Value {
    reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A copy of a built-in component with a custom section appended: a valid component with
/// another digest, so it is a plugin no node has until it is installed.
pub fn variant_of(wasm: &[u8], tag: &str) -> Vec<u8> {
    let name = b"anode-test";
    let payload = tag.as_bytes();
    let mut body = vec![name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(payload);
    let mut out = wasm.to_vec();
    out.push(0); // custom section
    let mut size = body.len();
    loop {
        let byte = (size & 0x7f) as u8;
        size >>= 7;
        if size == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(&body);
    out
}

/// The bytes of a component the build made for the tests (`hostile-plugin`, `candles`, …).
pub fn component(name: &str) -> Vec<u8> {
    let path = Path::new(env!("ANODE_WASM_DIR")).join(format!("{}.wasm", name.replace('-', "_")));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Upload a component through the node's API (no token); its digest.
pub async fn install_plugin(api: &str, wasm: Vec<u8>) -> String {
    let installed: serde_json::Value = reqwest::Client::new()
        .post(format!("{api}/api/v1/plugins"))
        .body(wasm)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    installed["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("not installed: {installed}"))
        .to_owned()
}

/// POST a JSON body (no token) and read the JSON answer, whatever its status.
pub async fn post_json(url: &str, body: &serde_json::Value) -> serde_json::Value {
    reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: not JSON: {e}"))
}

/// `POST /api/v1/sources` with an array of specs (no token): all are added, or the test fails
/// with the node's answer.
pub async fn add_sources(api: &str, specs: &[serde_json::Value]) {
    let response = reqwest::Client::new()
        .post(format!("{api}/api/v1/sources"))
        .json(specs)
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert_eq!(status, 201, "{}", response.text().await.unwrap_or_default());
}

/// The NATS server the JetStream tests share: `ANODE_TEST_NATS`, else 127.0.0.1:4222.
pub fn nats_url() -> String {
    std::env::var("ANODE_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A private NATS server, stopped when dropped (also when the test fails).
pub struct NatsServer(std::process::Child);

impl NatsServer {
    pub fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private `nats-server -js` on `port`, keeping its stream in `dir`.
pub fn nats_server(port: u16, dir: &Path) -> NatsServer {
    let server = std::env::var("ANODE_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
    Command::new(&server)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map(NatsServer)
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {server}: {e}; install it (Debian: apt-get install nats-server) or \
                 set ANODE_NATS_SERVER"
            )
        })
}

pub async fn until_nats_answers(url: &str) {
    until(
        "the NATS server to answer",
        Duration::from_secs(20),
        || async {
            async_nats::connect(url)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    )
    .await;
}

/// JetStream settings with a stream and subjects of the test's own (`tag`).
pub fn nats_settings(url: &str, tag: &str) -> anode::sink::NatsSettings {
    anode::sink::NatsSettings {
        url: url.to_owned(),
        stream: format!("ANODE_TEST_{tag}"),
        subject_prefix: format!("anodetest{}", tag.to_ascii_lowercase()),
        ..anode::sink::NatsSettings::default()
    }
}

/// The config of a test node (see [`node_config`]) storing into PostgreSQL at `postgres`,
/// with JetStream beside it.
pub fn jetstream_config(
    data_dir: &Path,
    postgres: &str,
    nats: anode::sink::NatsSettings,
) -> Config {
    let mut config = node_config(data_dir);
    config.store.postgres_url = Some(postgres.to_owned());
    config.store.nats = Some(nats);
    config
}

/// The `/metrics` text of the node at `api` (no token).
pub async fn metrics_text(api: &str) -> String {
    reqwest::get(format!("{api}/metrics"))
        .await
        .unwrap_or_else(|e| panic!("GET {api}/metrics: {e}"))
        .text()
        .await
        .unwrap()
}

/// A TCP proxy on loopback between a source and its venue that can hold what the venue sends:
/// while held, the venue's writes succeed (the simulator counts those trades as sent) and the
/// bytes wait in the proxy, as data in flight from a distant venue would; released, they go
/// on in order, and then the venue's end of the connection. What the source sends goes
/// through at once.
pub struct HoldingProxy {
    pub addr: std::net::SocketAddr,
    /// Where it forwards to; a client that comes before it is set waits for it.
    upstream: tokio::sync::watch::Sender<Option<std::net::SocketAddr>>,
    held: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    client_bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl HoldingProxy {
    pub async fn start(upstream: std::net::SocketAddr) -> HoldingProxy {
        let proxy = HoldingProxy::listen().await;
        proxy.forward_to(upstream);
        proxy
    }

    /// A proxy that listens before it knows where to forward (see [`HoldingProxy::forward_to`]):
    /// for a node that must be told the proxy's address before it binds its own port.
    pub async fn listen() -> HoldingProxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = tokio::sync::watch::channel(None).0;
        let mut target = upstream.subscribe();
        let held = std::sync::Arc::new(tokio::sync::watch::channel(false).0);
        let shared = held.clone();
        let client_bytes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = client_bytes.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(upstream) = target.wait_for(Option::is_some).await.map(|to| to.unwrap())
                else {
                    return;
                };
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = client_read.read(&mut buf).await {
                        if n == 0 || server_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        counted.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    let _ = server_write.shutdown().await;
                });
                let (chunks, mut queued) = tokio::sync::mpsc::channel::<Option<Vec<u8>>>(1024);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let chunk = match server_read.read(&mut buf).await {
                            Ok(0) | Err(_) => None,
                            Ok(n) => Some(buf[..n].to_vec()),
                        };
                        let end = chunk.is_none();
                        if chunks.send(chunk).await.is_err() || end {
                            return;
                        }
                    }
                });
                let mut released = shared.subscribe();
                tokio::spawn(async move {
                    while let Some(chunk) = queued.recv().await {
                        if released.wait_for(|held| !*held).await.is_err() {
                            return;
                        }
                        match chunk {
                            Some(bytes) => {
                                if client_write.write_all(&bytes).await.is_err() {
                                    return;
                                }
                            }
                            None => {
                                let _ = client_write.shutdown().await;
                                return;
                            }
                        }
                    }
                });
            }
        });
        HoldingProxy {
            addr,
            upstream,
            held,
            client_bytes,
        }
    }

    /// Forward to `upstream` from now on.
    pub fn forward_to(&self, upstream: std::net::SocketAddr) {
        self.upstream.send_replace(Some(upstream));
    }

    /// Bytes the clients have sent through the proxy so far.
    pub fn client_bytes(&self) -> u64 {
        self.client_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Keep what the venue sends from here on in the proxy.
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    /// Pass on what was held, and what comes.
    pub fn release(&self) {
        self.held.send_replace(false);
    }
}

/// What `anode bench` printed (stdout and stderr).
pub struct BenchOutput(pub String);

impl BenchOutput {
    /// The line that starts with `name` (after its indent).
    pub fn line(&self, name: &str) -> &str {
        self.0
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no `{name}` line in:\n{}", self.0))
    }

    /// The first figure of the line that starts with `name`.
    pub fn figure(&self, name: &str) -> f64 {
        first_figure(self.line(name))
    }

    /// The ids the simulator sent, none of which may be missing from the store.
    pub fn sent_none_lost(&self) -> u64 {
        let loss = self.line("loss");
        assert!(loss.contains("loss        0 of"), "{}", self.0);
        let sent: u64 = loss
            .split_whitespace()
            .nth(3)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(sent > 0, "the simulator sent ids: {}", self.0);
        sent
    }
}

/// The first number in `line` (a percentage's number without its `%`).
pub fn first_figure(line: &str) -> f64 {
    line.split_whitespace()
        .find_map(|w| w.trim_end_matches('%').parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no figure in `{line}`"))
}
