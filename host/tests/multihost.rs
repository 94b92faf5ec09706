//! Clusters of hosts: every `anode up` in a Linux network namespace of its own, with its own
//! address, joined to the others through a router namespace (see `support/netns.rs`), bound
//! beyond loopback as a deployment is (cluster key, write and read tokens, every other node
//! as a seed), reaching the feed simulator and PostgreSQL in the root namespace.
//!
//! - Three hosts share the sources, store every trade the simulator generated exactly once, and
//!   refuse a request without a token from another host (401).
//! - Five hosts under load while one host's links to the others are cut and restored every
//!   3 s for 30 s: the stable hosts never rejoin or restart, only the flapping host's sources
//!   move (hand-overs counted), no member stays suspect past the suspicion timeout, the cluster
//!   converges soon after the flapping ends, and every generated trade is stored once.
//!
//! Both skip (and say so) where network namespaces cannot be made: not root, or no `ip`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::json;
use support::binance_sources;
use support::cluster::{NodeProc, converged, own_generation, running_on, source_ids};
use support::netns::{API_PORT, GOSSIP_PORT, Hosts, Net, READ_TOKEN};
use support::store::{Stored, every_generated_id_stored_once, until_streams_move_on};
use support::until;

const SETTLE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_share_sources_store_every_trade_once_and_refuse_requests_without_a_token() {
    let Some(net) = Net::create("anmh", 201, 3) else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let Hosts {
        nodes,
        sim,
        db,
        pg: _pg,
    } = net.start_cluster(root.path(), "h", 10.0).await;
    let all: Vec<&NodeProc> = nodes.iter().collect();

    // Each node is reached at its own host's address, API and gossip alike.
    for (i, node) in nodes.iter().enumerate() {
        let addr = net.addr(i + 1);
        assert_eq!(node.api, format!("http://{addr}:{API_PORT}"));
        assert_eq!(node.gossip, format!("{addr}:{GOSSIP_PORT}"));
        let members = node.get("/api/v1/cluster").await["members"].clone();
        let gossip: BTreeSet<&str> = members
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["gossip"].as_str().unwrap())
            .collect();
        let want: BTreeSet<String> = (1..=3)
            .map(|j| format!("{}:{GOSSIP_PORT}", net.addr(j)))
            .collect();
        assert_eq!(
            gossip,
            want.iter().map(String::as_str).collect(),
            "{} sees {members}",
            node.id
        );
    }

    let binance = binance_sources(&sim, 12, "mh");
    let sources = source_ids(&binance);
    nodes[1].add_sources(&json!(binance)).await;
    until("the three hosts to converge", SETTLE, || {
        converged(&all, &sources)
    })
    .await;
    for node in &nodes {
        let mine = running_on(node).await;
        assert!(
            !mine.is_empty(),
            "{} runs none of the {} sources: they are not spread",
            node.id,
            sources.len()
        );
        println!("three hosts: {} runs {} sources", node.id, mine.len());
    }

    // A client on host 2 asks host 1: without a token it is refused, reads and changes alike;
    // with the read token it reads (so the refusal is the node's, not the network's).
    let api = nodes[0].api.clone();
    let spec = binance_sources(&sim, 1, "stranger")[0].clone();
    let (read_bare, write_bare, read_token) = net
        .run_in_node(2, move || async move {
            let client = reqwest::Client::new();
            let status = |r: reqwest::Result<reqwest::Response>| {
                r.unwrap_or_else(|e| panic!("from host 2 to host 1: {e}"))
                    .status()
                    .as_u16()
            };
            let url = format!("{api}/api/v1/status");
            (
                status(client.get(&url).send().await),
                status(
                    client
                        .post(format!("{api}/api/v1/sources"))
                        .json(&spec)
                        .send()
                        .await,
                ),
                status(client.get(&url).bearer_auth(READ_TOKEN).send().await),
            )
        })
        .await;
    assert_eq!(read_bare, 401, "a read without a token from another host");
    assert_eq!(
        write_bare, 401,
        "a change without a token from another host"
    );
    assert_eq!(
        read_token, 200,
        "a read with the read token from another host"
    );

    // Every trade generated, stored once.
    until_streams_move_on(&sim, &binance, 20).await;
    sim.pause();
    every_generated_id_stored_once(&sim, &Stored::Postgres(db), &binance, &[]).await;
    sim.shutdown().await;
}

/// Cut-and-restore cycles of the flapping host, and how long each half lasts.
const CYCLES: usize = 5;
const HALF_PERIOD: Duration = Duration::from_secs(3);
/// `suspect_to_down_ms` of the test timings (`support::cluster::FAST_GOSSIP`; five members do
/// not scale it), and the margin a loaded machine gets on top: polling, gossip rounds.
const SUSPICION: Duration = Duration::from_millis(1200);
const SUSPECT_MARGIN: Duration = Duration::from_secs(3);
/// How long the cluster may take to converge after the last restore.
const CONVERGE_LIMIT: Duration = Duration::from_secs(15);
/// Between two looks of the watcher.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// What the watcher saw while the links flapped, keyed by (observer, member or source).
#[derive(Default)]
struct Seen {
    owners: BTreeMap<(String, String), String>,
    /// Owner changes: observer, source, from, to.
    moves: Vec<(String, String, String, String)>,
    suspect_since: BTreeMap<(String, String), Instant>,
    /// Suspect spells: observer, member, when it ended, how long it lasted.
    suspect_spells: Vec<(String, String, Instant, Duration)>,
    generations: BTreeMap<(String, String), u64>,
    /// Generation changes (a rejoin or a restart): observer, member, old, new.
    renewals: Vec<(String, String, u64, u64)>,
    looks: u32,
}

impl Seen {
    /// One look: every node's members, and the owners the stable nodes see.
    async fn look(&mut self, nodes: &[NodeProc], stable: &[&NodeProc]) {
        // Every node asked at once, so that a look is one round trip, not nine.
        let (views, listings) = futures_util::future::join(
            futures_util::future::join_all(nodes.iter().map(|n| n.get("/api/v1/cluster"))),
            futures_util::future::join_all(stable.iter().map(|n| n.get("/api/v1/sources"))),
        )
        .await;
        let now = Instant::now();
        for (node, cluster) in nodes.iter().zip(views) {
            for m in cluster["members"].as_array().into_iter().flatten() {
                let key = (node.id.clone(), m["id"].as_str().unwrap().to_owned());
                let generation = m["generation"].as_u64().unwrap();
                if let Some(before) = self.generations.insert(key.clone(), generation)
                    && before != generation
                {
                    let (observer, member) = key.clone();
                    self.renewals.push((observer, member, before, generation));
                }
                if m["state"] == "suspect" {
                    self.suspect_since.entry(key).or_insert(now);
                } else if let Some(since) = self.suspect_since.remove(&key) {
                    self.suspect_spells.push((key.0, key.1, now, now - since));
                }
            }
        }
        for (node, listed) in stable.iter().zip(listings) {
            for s in listed.as_array().into_iter().flatten() {
                let (Some(id), Some(owner)) = (s["id"].as_str(), s["owner"].as_str()) else {
                    continue;
                };
                let key = (node.id.clone(), id.to_owned());
                if let Some(before) = self.owners.insert(key, owner.to_owned())
                    && before != owner
                {
                    let change = (node.id.clone(), id.to_owned(), before, owner.to_owned());
                    self.moves.push(change);
                }
            }
        }
        self.looks += 1;
    }

    /// Close the suspect spells still open.
    fn close(&mut self) {
        let now = Instant::now();
        for ((observer, member), since) in std::mem::take(&mut self.suspect_since) {
            self.suspect_spells
                .push((observer, member, now, now - since));
        }
    }
}

/// Look every `LOOK_EVERY` until `stop` (at most 10 minutes' worth of looks).
async fn watch(nodes: &[NodeProc], stable: &[&NodeProc], stop: &tokio::sync::Notify) -> Seen {
    let mut seen = Seen::default();
    let stopped = stop.notified();
    tokio::pin!(stopped);
    for _ in 0..2400 {
        seen.look(nodes, stable).await;
        tokio::select! {
            () = &mut stopped => break,
            () = tokio::time::sleep(LOOK_EVERY) => {}
        }
    }
    seen.close();
    seen
}

/// Cut host `i` from the others and restore it, `CYCLES` times; returns when the last
/// restore happened. The sleeps pace the schedule; they wait for nothing.
async fn flap(net: &Net, i: usize) -> Instant {
    let mut restored = Instant::now();
    for _ in 0..CYCLES {
        net.isolate(i);
        tokio::time::sleep(HALF_PERIOD).await;
        net.heal();
        restored = Instant::now();
        tokio::time::sleep(HALF_PERIOD).await;
    }
    restored
}

/// The owner of every source as `node` sees it.
async fn owners(node: &NodeProc) -> BTreeMap<String, String> {
    let listed = node.get("/api/v1/sources").await;
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let owner = s["owner"].as_str().unwrap_or_default();
            (s["id"].as_str().unwrap().to_owned(), owner.to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_host_moves_only_its_own_sources_and_the_stable_hosts_never_rejoin() {
    let Some(net) = Net::create("anfl", 203, 5) else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let Hosts {
        nodes,
        sim,
        db,
        pg: _pg,
    } = net.start_cluster(root.path(), "f", 10.0).await;
    let all: Vec<&NodeProc> = nodes.iter().collect();
    let (stable, flapper) = (&all[..4], &nodes[4]);
    let binance = binance_sources(&sim, 20, "fl");
    let sources = source_ids(&binance);
    nodes[0].add_sources(&json!(binance)).await;
    until("five hosts to converge", SETTLE, || {
        converged(&all, &sources)
    })
    .await;
    let before = owners(&nodes[0]).await;
    let theirs: BTreeSet<&String> = before
        .iter()
        .filter(|(_, owner)| **owner == flapper.id)
        .map(|(id, _)| id)
        .collect();
    let mut generations = Vec::new();
    for node in stable {
        generations.push(own_generation(node).await);
    }
    let handovers_before = handover_count(&all).await;

    let stop = tokio::sync::Notify::new();
    let (seen, (restored, converged_in, lingering)) =
        tokio::join!(watch(&nodes, stable, &stop), async {
            let restored = flap(&net, 5).await;
            until(
                "the cluster to converge after the flapping",
                CONVERGE_LIMIT,
                || converged(&all, &sources),
            )
            .await;
            let converged_in = restored.elapsed();
            // Then no member stays suspect past the suspicion timeout and its margin (checked
            // below, with the figures).
            let deadline = Instant::now() + SUSPICION + SUSPECT_MARGIN;
            let mut lingering = suspects(&all).await;
            while !lingering.is_empty() && Instant::now() < deadline {
                tokio::time::sleep(LOOK_EVERY).await;
                lingering = suspects(&all).await;
            }
            stop.notify_one();
            (restored, converged_in, lingering)
        });

    // The figures.
    let longest = seen
        .suspect_spells
        .iter()
        .max_by_key(|s| s.3)
        .map(|(o, m, _, d)| format!("{m} held suspect by {o} for {:.1} s", d.as_secs_f64()))
        .unwrap_or_else(|| "no member was ever seen suspect".into());
    let longest_after = seen
        .suspect_spells
        .iter()
        .filter(|s| s.2 > restored)
        .map(|s| s.3)
        .max()
        .unwrap_or_default();
    let seen_by_first: Vec<_> = seen.moves.iter().filter(|m| m.0 == nodes[0].id).collect();
    let handovers = handover_count(&all).await - handovers_before;
    let flapper_renewals = seen
        .renewals
        .iter()
        .filter(|r| r.0 == nodes[0].id && r.1 == flapper.id)
        .count();
    println!(
        "flapping: {CYCLES} cuts of {} over {} looks; {} of {} sources on the flapping host; \
         {} owner changes seen by {} ({} by the 4 stable hosts together), {handovers} sources \
         handed over (event log); the flapping host rejoined {flapper_renewals} times; longest \
         suspect: {longest}; longest after the last restore {:.1} s; converged {:.1} s after \
         the last restore",
        nodes[4].id,
        seen.looks,
        theirs.len(),
        sources.len(),
        seen_by_first.len(),
        nodes[0].id,
        seen.moves.len(),
        longest_after.as_secs_f64(),
        converged_in.as_secs_f64(),
    );

    for (observer, member, ended, lasted) in &seen.suspect_spells {
        if *lasted > SUSPICION + SUSPECT_MARGIN {
            println!(
                "flapping: {observer} held {member} suspect {:.1} s, until {:.1} s after the \
                 last restore",
                lasted.as_secs_f64(),
                ended.saturating_duration_since(restored).as_secs_f64()
            );
        }
    }
    let mut renewed: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for (_, member, _, new) in &seen.renewals {
        renewed.entry(member.as_str()).or_default().insert(*new);
    }
    for (member, generations) in &renewed {
        println!(
            "flapping: {member} took {} new generation(s)",
            generations.len()
        );
    }
    assert!(
        lingering.is_empty(),
        "members still suspect {SUSPICION:?} + {SUSPECT_MARGIN:?} after the cluster \
         converged: {lingering:?}"
    );

    // The stable hosts never rejoined nor restarted: their generations stay, in their own
    // eyes and in everyone's, and no event log says otherwise.
    for (node, generation) in stable.iter().zip(&generations) {
        assert_eq!(
            own_generation(node).await,
            *generation,
            "{} renewed",
            node.id
        );
    }
    let stable_ids: BTreeSet<&str> = stable.iter().map(|n| n.id.as_str()).collect();
    let stable_renewals: Vec<_> = seen
        .renewals
        .iter()
        .filter(|r| stable_ids.contains(r.1.as_str()))
        .collect();
    assert!(
        stable_renewals.is_empty(),
        "stable hosts renewed their identity (observer, member, old, new): {stable_renewals:?}"
    );
    for node in &all {
        let restarts = node.events_saying(&["restarted"]).await;
        assert!(restarts.is_empty(), "{}: {restarts:?}", node.id);
        let rejoins: Vec<String> = node
            .events_saying(&["rejoined"])
            .await
            .into_iter()
            .filter(|m| stable_ids.iter().any(|id| m.starts_with(&format!("{id} "))))
            .collect();
        assert!(rejoins.is_empty(), "{}: {rejoins:?}", node.id);
    }
    for node in stable {
        let own = node.events_saying(&["rejoined as generation"]).await;
        assert!(own.is_empty(), "{} rejoined: {own:?}", node.id);
    }

    // Only the flapping host's sources moved, each at most there and back per cut.
    let strays: Vec<_> = seen
        .moves
        .iter()
        .filter(|m| !theirs.contains(&m.1))
        .collect();
    assert!(
        strays.is_empty(),
        "sources of stable hosts moved (observer, source, from, to): {strays:?}"
    );
    let bound = theirs.len() * 2 * (CYCLES + 1);
    assert!(
        seen_by_first.len() <= bound,
        "{} owner changes seen by {}, more than {bound}",
        seen_by_first.len(),
        nodes[0].id
    );

    // No member held suspect past the suspicion timeout once the links stopped flapping.
    assert!(
        longest_after <= SUSPICION + SUSPECT_MARGIN,
        "a member stayed suspect {longest_after:?} after the last restore"
    );
    assert_eq!(
        owners(&nodes[0]).await,
        before,
        "the owners are back as before"
    );

    // Every trade generated, the flapping included, stored once.
    until_streams_move_on(&sim, &binance, 20).await;
    sim.pause();
    every_generated_id_stored_once(&sim, &Stored::Postgres(db), &binance, &[]).await;
    sim.shutdown().await;
}

/// Who holds whom suspect: (observer, member).
async fn suspects(nodes: &[&NodeProc]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for node in nodes {
        for member in support::cluster::members_in(node, &["suspect"]).await {
            out.push((node.id.clone(), member));
        }
    }
    out
}

/// Sources handed over so far, as every node's event log counts them ("handed over N
/// source(s)").
async fn handover_count(nodes: &[&NodeProc]) -> usize {
    let mut total = 0;
    for node in nodes {
        for message in node.events_saying(&["handed over"]).await {
            let n = message
                .split_whitespace()
                .nth(2)
                .and_then(|n| n.parse::<usize>().ok());
            total += n.unwrap_or(0);
        }
    }
    total
}
