//! Which node runs which source: rendezvous (highest-random-weight) hashing over the stable
//! ids of the live members. Every node computes it alone from its own view; nodes with the
//! same view agree. A node joining takes the sources it now scores highest on (about 1/N),
//! and only those; a node leaving gives up only its own.
//!
//! The hash is explicit and fixed (FNV-1a 64 finished with the murmur3 mixer), never
//! `DefaultHasher`, so every process and version computes the same owners.

/// FNV-1a, 64 bits.
pub struct Fnv(u64);

impl Fnv {
    pub fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Fnv {
    fn default() -> Self {
        Fnv::new()
    }
}

/// FNV-1a of `text`.
pub fn stable_hash(text: &str) -> u64 {
    let mut h = Fnv::new();
    h.write(text.as_bytes());
    h.finish()
}

/// murmur3's 64-bit finaliser: spreads FNV's weak low bits over the whole word.
fn mix(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// The weight of `node` for `source`.
pub fn score(node: &str, source: &str) -> u64 {
    let mut h = Fnv::new();
    h.write(node.as_bytes());
    h.write(&[0]);
    h.write(source.as_bytes());
    mix(h.finish())
}

/// The owner of `source` among `nodes` (stable ids): the highest score, ties to the greater id.
pub fn owner<'a, I>(source: &str, nodes: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    nodes
        .into_iter()
        .max_by_key(|node| (score(node, source), *node))
}

/// The `k` owners of `source` among `nodes`, best first: the owner, then the nodes that
/// would own it were the ones before them gone (rendezvous order). A source with `replicas`
/// runs on all of them.
pub fn owners<'a, I>(source: &str, nodes: I, k: usize) -> Vec<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut ranked: Vec<(u64, &'a str)> = nodes
        .into_iter()
        .map(|node| (score(node, source), node))
        .collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    ranked.dedup_by(|a, b| a.1 == b.1);
    ranked.into_iter().take(k.max(1)).map(|(_, n)| n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn the_first_of_the_owners_is_the_owner_and_a_death_keeps_the_other() {
        let all = nodes(5);
        for i in 0..200 {
            let source = format!("s-{i}");
            let two = owners(&source, all.iter().map(String::as_str), 2);
            assert_eq!(two.len(), 2);
            assert_ne!(two[0], two[1]);
            assert_eq!(Some(two[0]), owner(&source, all.iter().map(String::as_str)));
            // The first owner dies: the second stays an owner, and becomes the first.
            let rest: Vec<&str> = all
                .iter()
                .map(String::as_str)
                .filter(|n| *n != two[0])
                .collect();
            let after = owners(&source, rest.iter().copied(), 2);
            assert_eq!(after[0], two[1]);
        }
        assert_eq!(owners("x", ["a"], 3), ["a"]);
    }

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    fn assign(sources: &[String], nodes: &[String]) -> HashMap<String, String> {
        sources
            .iter()
            .map(|s| {
                let o = owner(s, nodes.iter().map(String::as_str)).unwrap();
                (s.clone(), o.to_owned())
            })
            .collect()
    }

    #[test]
    fn the_hash_is_fixed() {
        // Changing these numbers moves every source in every running cluster.
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            score("node-a", "binance/btcusdt"),
            score("node-a", "binance/btcusdt")
        );
        assert_ne!(score("node-a", "x"), score("node-b", "x"));
    }

    #[test]
    fn a_join_moves_only_sources_to_the_new_node_and_about_one_nth() {
        let sources: Vec<String> = (0..10_000).map(|i| format!("source-{i}")).collect();
        let before = assign(&sources, &nodes(9));
        let after = assign(&sources, &nodes(10));
        let moved: Vec<_> = sources.iter().filter(|s| before[*s] != after[*s]).collect();
        assert!(moved.iter().all(|s| after[*s] == "node-9"));
        let share = moved.len() as f64 / sources.len() as f64;
        assert!((0.07..0.13).contains(&share), "moved {share}");
        // And a leave gives up only the leaver's sources.
        let fewer: Vec<String> = nodes(10).into_iter().filter(|n| n != "node-3").collect();
        let after_leave = assign(&sources, &fewer);
        for s in &sources {
            if after[s] != "node-3" {
                assert_eq!(after[s], after_leave[s]);
            }
        }
    }

    #[test]
    fn load_is_balanced() {
        let sources: Vec<String> = (0..10_000).map(|i| format!("source-{i}")).collect();
        let a = assign(&sources, &nodes(3));
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for o in a.values() {
            *counts.entry(o).or_default() += 1;
        }
        let max = *counts.values().max().unwrap() as f64;
        assert!(max / (10_000.0 / 3.0) < 1.05, "{counts:?}");
    }
}
