//! Hosts of their own for cluster tests: each node in a Linux network namespace, joined to a
//! router namespace by a veth pair on a /24 of its own, the router joined to the root namespace
//! (where the test process, the feed simulator and PostgreSQL run). A cut between nodes is a
//! routing rule in the router (`ip rule … prohibit`, both directions): gossip (UDP) and
//! node-to-node HTTP (TCP) are cut alike, while every node still reaches the root namespace.
//! Healing deletes the rules. No iptables, no netem: only `ip` from iproute2, as root.
//!
//! Addresses on a test's subnet `X` (one per test, so tests run in parallel):
//!
//! ```text
//! root namespace 10.X.0.1 ── <p>-h ═ <p>-hr ── 10.X.0.2 router <p>-r (ip_forward=1)
//!                                               10.X.i.1 ── <p>-ir ═ <p>-in ── 10.X.i.2 node <p>-i
//! ```
//!
//! The root namespace routes 10.X.0.0/16 via the router; each node's default route is the
//! router. Namespaces and links are removed when the [`Net`] is dropped (a panicking test
//! included), and leftovers of an earlier run with the same prefix are removed at start; a
//! lock file makes a second run of the same test on the machine wait for the first.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use super::cluster::{NodeOptions, NodeProc, ip_program, live_members};
use super::{PrivatePg, TestDb, until};

/// Where every namespaced node's API listens, on its own address.
pub const API_PORT: u16 = 7400;
/// Where every namespaced node's gossip listens, on its own address.
pub const GOSSIP_PORT: u16 = 7946;
/// `api.token` of namespaced nodes (changes).
pub const WRITE_TOKEN: &str = "netns-write-token-0123456789abcdef";
/// `api.read_token` of namespaced nodes (reads).
pub const READ_TOKEN: &str = "netns-read-token-0123456789abcdef";

/// A router namespace and `nodes` node namespaces on subnet 10.`subnet`.0.0/16.
pub struct Net {
    prefix: String,
    subnet: u8,
    nodes: usize,
    /// Node pairs (lower index first) cut now.
    cuts: Mutex<BTreeSet<(usize, usize)>>,
    /// Held while the namespaces exist: a second run of the same test on this machine (the
    /// same names and subnet) waits for it instead of removing them under the first.
    _lock: std::fs::File,
}

impl Net {
    /// Make the namespaces and links, or `None` (after printing why) when network namespaces
    /// cannot be made here: not root, no `ip`, or `ip netns add` refused. Anything failing
    /// after the first namespace is made fails the test.
    pub fn create(prefix: &str, subnet: u8, nodes: usize) -> Option<Net> {
        let skip = |why: String| {
            println!("SKIPPED: this test needs Linux network namespaces, and {why}");
        };
        if !super::is_root() {
            skip("it does not run as root (ip netns add needs CAP_SYS_ADMIN)".into());
            return None;
        }
        if !ip_program().is_file() {
            skip("`ip` (iproute2) is not installed: apt-get install iproute2".into());
            return None;
        }
        assert!(
            (1..=250).contains(&nodes) && prefix.len() <= 8,
            "at most 250 nodes, a prefix of at most 8 characters (interface names are short)"
        );
        let path = std::env::temp_dir().join(format!("anode-netns-{prefix}.lock"));
        let lock = std::fs::File::create(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        // Released when the file closes, a crashed test's too.
        lock.lock()
            .unwrap_or_else(|e| panic!("cannot lock {}: {e}", path.display()));
        let net = Net {
            prefix: prefix.to_owned(),
            subnet,
            nodes,
            cuts: Mutex::default(),
            _lock: lock,
        };
        net.remove_all();
        // The first namespace tells whether they can be made here at all.
        let made = Command::new(ip_program())
            .args(["netns", "add", &net.router()])
            .output();
        match made {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                skip(format!(
                    "`ip netns add` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                return None;
            }
            Err(e) => {
                skip(format!("`ip` could not run: {e}"));
                return None;
            }
        }
        net.build();
        Some(net)
    }

    fn router(&self) -> String {
        format!("{}-r", self.prefix)
    }

    /// The namespace of node `i` (1-based).
    pub fn ns(&self, i: usize) -> String {
        format!("{}-{i}", self.prefix)
    }

    /// The root namespace's address on this network (the simulator and PostgreSQL listen here).
    pub fn host(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, self.subnet, 0, 1))
    }

    /// Node `i`'s address (1-based).
    pub fn addr(&self, i: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, self.subnet, i as u8, 2))
    }

    /// The whole network, `10.X.0.0/16`.
    pub fn network(&self) -> String {
        format!("10.{}.0.0/16", self.subnet)
    }

    fn lan(&self, i: usize) -> String {
        format!("10.{}.{i}.0/24", self.subnet)
    }

    fn build(&self) {
        let (p, x, router) = (&self.prefix, self.subnet, self.router());
        ip(&["-n", &router, "link", "set", "lo", "up"]);
        // The router forwards between its links (a sysctl of its own namespace).
        in_namespace(&router, || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                .unwrap_or_else(|e| panic!("ip_forward=1 in the router namespace: {e}"))
        });
        let (host, hr) = (format!("{p}-h"), format!("{p}-hr"));
        ip(&[
            "link", "add", &host, "type", "veth", "peer", "name", &hr, "netns", &router,
        ]);
        ip(&["addr", "add", &format!("10.{x}.0.1/24"), "dev", &host]);
        ip(&["link", "set", &host, "up"]);
        ip(&[
            "-n",
            &router,
            "addr",
            "add",
            &format!("10.{x}.0.2/24"),
            "dev",
            &hr,
        ]);
        ip(&["-n", &router, "link", "set", &hr, "up"]);
        ip(&[
            "route",
            "add",
            &self.network(),
            "via",
            &format!("10.{x}.0.2"),
        ]);
        for i in 1..=self.nodes {
            let (ns, outer, inner) = (self.ns(i), format!("{p}-{i}r"), format!("{p}-{i}n"));
            ip(&["netns", "add", &ns]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n", &router, "link", "add", &outer, "type", "veth", "peer", "name", &inner,
                "netns", &ns,
            ]);
            ip(&[
                "-n",
                &router,
                "addr",
                "add",
                &format!("10.{x}.{i}.1/24"),
                "dev",
                &outer,
            ]);
            ip(&["-n", &router, "link", "set", &outer, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.{x}.{i}.2/24"),
                "dev",
                &inner,
            ]);
            ip(&["-n", &ns, "link", "set", &inner, "up"]);
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &format!("10.{x}.{i}.1"),
            ]);
        }
    }

    /// Cut every node of `a` from every node of `b`, both ways (they still reach the root
    /// namespace). Cutting a pair already cut does nothing.
    pub fn cut(&self, a: &[usize], b: &[usize]) {
        let mut cuts = self.cuts.lock().unwrap();
        for &i in a {
            for &j in b {
                assert_ne!(i, j, "a node cannot be cut from itself");
                if cuts.insert((i.min(j), i.max(j))) {
                    self.rules("add", i, j);
                }
            }
        }
    }

    /// Cut node `i` from every other node.
    pub fn isolate(&self, i: usize) {
        let others: Vec<usize> = (1..=self.nodes).filter(|&j| j != i).collect();
        self.cut(&[i], &others);
    }

    /// Remove every cut: the network is whole again.
    pub fn heal(&self) {
        let mut cuts = self.cuts.lock().unwrap();
        for (i, j) in std::mem::take(&mut *cuts) {
            self.rules("del", i, j);
        }
    }

    fn rules(&self, verb: &str, i: usize, j: usize) {
        for (from, to) in [(i, j), (j, i)] {
            ip(&[
                "-n",
                &self.router(),
                "rule",
                verb,
                "from",
                &self.lan(from),
                "to",
                &self.lan(to),
                "prohibit",
            ]);
        }
    }

    /// Run `f` (async) on a thread of its own inside node `i`'s namespace: the sockets it
    /// opens are that host's, as a client there would.
    pub async fn run_in_node<T, F, Fut>(&self, i: usize, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        let ns = self.ns(i);
        tokio::task::spawn_blocking(move || {
            in_namespace(&ns, move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(f())
            })
        })
        .await
        .unwrap()
    }

    /// A feed simulator in the root namespace, on this network's root address: `rate` events
    /// per second per stream.
    pub async fn simulator(&self, rate: f64) -> anode_feedsim::FeedSim {
        anode_feedsim::start(anode_feedsim::SimConfig {
            bind: std::net::SocketAddr::new(self.host(), 0),
            rate_per_stream: rate,
            ..anode_feedsim::SimConfig::default()
        })
        .await
        .expect("start the feed simulator on the namespaces' network")
    }

    /// A private PostgreSQL server the nodes reach at the root address, and a database on it
    /// (its URL names that address).
    pub async fn postgres(&self) -> (PrivatePg, TestDb) {
        let pg = PrivatePg::start_reachable_at(self.host(), &self.network());
        let db = TestDb::create(&pg.server_at(self.host())).await;
        (pg, db)
    }

    /// What every test on this network runs on: a private PostgreSQL the namespaces reach, the
    /// feed simulator at `rate`, and nodes `<id>1…<id>n` (see [`Net::start_nodes`]) storing
    /// into the one and allowed to reach the other.
    pub async fn start_cluster(&self, root: &Path, id: &str, rate: f64) -> Hosts {
        let (pg, db) = self.postgres().await;
        let sim = self.simulator(rate).await;
        let allow = [sim.addr().to_string()];
        let nodes = self.start_nodes(root, id, Some(&db.url), &allow).await;
        Hosts { nodes, sim, db, pg }
    }

    /// What node `i` starts with, as a real deployment has it: API and gossip on its own
    /// address (not loopback), the cluster key, write and read tokens, every other node as
    /// a seed, sources allowed to reach `allow` only.
    pub fn node_options(&self, i: usize, postgres: Option<&str>, allow: &[String]) -> NodeOptions {
        let seeds = (1..=self.nodes)
            .filter(|&j| j != i)
            .map(|j| format!("{}:{GOSSIP_PORT}", self.addr(j)))
            .collect();
        NodeOptions {
            seeds,
            postgres: postgres.map(str::to_owned),
            api_section: Some(format!(
                "bind = \"{}:{API_PORT}\"\ntoken = {WRITE_TOKEN:?}\nread_token = {READ_TOKEN:?}",
                self.addr(i)
            )),
            netns: Some(self.ns(i)),
            gossip_bind: Some(format!("{}:{GOSSIP_PORT}", self.addr(i))),
            allow: Some(allow.to_vec()),
            read_token: Some(READ_TOKEN.into()),
            write_token: Some(WRITE_TOKEN.into()),
            ..NodeOptions::default()
        }
    }

    /// Start nodes `<id>1…<id>n`, node i in namespace i (see [`Net::node_options`]), all at
    /// once; returned once every node sees all of them alive.
    pub async fn start_nodes(
        &self,
        root: &Path,
        id: &str,
        postgres: Option<&str>,
        allow: &[String],
    ) -> Vec<NodeProc> {
        let nodes: Vec<NodeProc> = std::thread::scope(|s| {
            let started: Vec<_> = (1..=self.nodes)
                .map(|i| {
                    let options = self.node_options(i, postgres, allow);
                    s.spawn(move || NodeProc::start(root, &format!("{id}{i}"), &options))
                })
                .collect();
            started
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        });
        let n = nodes.len();
        until(
            "every namespaced node to see all the others",
            Duration::from_secs(60),
            || async {
                for node in &nodes {
                    let seen = live_members(node).await;
                    if seen.len() != n {
                        return Err(format!("{} sees {seen:?}", node.id));
                    }
                }
                Ok(())
            },
        )
        .await;
        nodes
    }

    /// Remove this prefix's namespaces (ending the processes left in them: nodes of this
    /// test, or of an earlier run that did not clean up) and the root's link.
    fn remove_all(&self) {
        let listed = Command::new(ip_program())
            .args(["netns", "list"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mine = format!("{}-", self.prefix);
        for name in listed.lines().filter_map(|l| l.split_whitespace().next()) {
            if !name.starts_with(&mine) {
                continue;
            }
            let pids = Command::new(ip_program())
                .args(["netns", "pids", name])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
            let _ = Command::new(ip_program())
                .args(["netns", "del", name])
                .output();
        }
        // Gone with the router namespace's end of it, unless that is still held somewhere.
        let _ = Command::new(ip_program())
            .args(["link", "del", &format!("{}-h", self.prefix)])
            .output();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.remove_all();
    }
}

/// Run `ip` with `args`; the test fails with its message unless it succeeds.
fn ip(args: &[&str]) {
    let out = Command::new(ip_program())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

unsafe extern "C" {
    /// setns(2), from the C library std links anyway.
    fn setns(fd: std::os::raw::c_int, nstype: std::os::raw::c_int) -> std::os::raw::c_int;
}

/// `CLONE_NEWNET`: setns(2) joins a network namespace.
const CLONE_NEWNET: std::os::raw::c_int = 0x4000_0000;

/// Run `f` on a new thread that joined network namespace `ns` (a namespace belongs to a
/// thread: the test's other threads stay where they are).
fn in_namespace<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: setns only reads the descriptor, which lives until the call returns; it
        // changes this thread's network namespace and nothing in Rust's memory.
        let joined = unsafe { setns(file.as_raw_fd(), CLONE_NEWNET) };
        assert_eq!(
            joined,
            0,
            "setns into {path}: {}",
            std::io::Error::last_os_error()
        );
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// A cluster on a [`Net`], with what it stores into and reads from. The nodes go first when
/// it is dropped, the PostgreSQL server last.
pub struct Hosts {
    pub nodes: Vec<NodeProc>,
    pub sim: anode_feedsim::FeedSim,
    pub db: TestDb,
    /// Bind it (`pg: _pg`) for as long as the nodes run: dropping it stops the server.
    pub pg: PrivatePg,
}
