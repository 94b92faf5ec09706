use std::borrow::Cow;

use super::*;

fn envelope(cluster: &str, keys: &[&str]) -> Envelope {
    let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    Envelope::new(Keys::new(cluster, &keys, 30_000))
}

const NOW: i64 = 1_700_000_000_000;

#[test]
fn envelopes_check_magic_cluster_and_key() {
    let keyed = envelope("prod", &["secret"]);
    let sealed = keyed.seal(b"hello", NOW);
    assert_eq!(keyed.open(&sealed, NOW), Ok(Cow::from(&b"hello"[..])));
    assert_eq!(
        envelope("prod", &["other"]).open(&sealed, NOW),
        Err(Rejected::Auth)
    );
    let open = envelope("prod", &[]);
    assert_eq!(
        open.open(&open.seal(b"x", NOW), NOW),
        Ok(Cow::from(&b"x"[..]))
    );
    // Without a tag, a keyed node refuses; with a flipped bit, too.
    assert_eq!(
        keyed.open(&open.seal(b"hello", NOW), NOW),
        Err(Rejected::Auth)
    );
    let mut forged = keyed.seal(b"hello", NOW);
    forged[8] ^= 1;
    assert_eq!(keyed.open(&forged, NOW), Err(Rejected::Auth));
    assert_eq!(
        envelope("test", &["secret"]).open(&sealed, NOW),
        Err(Rejected::Foreign)
    );
    assert_eq!(keyed.open(b"GET / HTTP/1.1", NOW), Err(Rejected::Garbage));
    assert_eq!(keyed.open(b"", NOW), Err(Rejected::Garbage));
}

#[test]
fn a_sealed_packet_hides_its_body_and_any_changed_byte_spoils_it() {
    let keyed = envelope("prod", &["secret"]);
    let body = br#"{"key":"source/binance-btc","value":{"headers":{"X-Api-Key":"hunter2"}}}"#;
    let sealed = keyed.seal(body, NOW);
    for needle in [&b"hunter2"[..], b"binance-btc", b"source/"] {
        assert!(
            !sealed.windows(needle.len()).any(|w| w == needle),
            "{} in the clear",
            String::from_utf8_lossy(needle)
        );
    }
    // Every byte after the header's cluster id is bound: time, nonce, body, tag.
    for at in 8..sealed.len() {
        let mut changed = sealed.clone();
        changed[at] ^= 0x40;
        assert_eq!(keyed.open(&changed, NOW), Err(Rejected::Auth), "byte {at}");
    }
    let mut cut = sealed.clone();
    cut.pop();
    assert_eq!(keyed.open(&cut, NOW), Err(Rejected::Auth));
    assert_eq!(keyed.open(&sealed, NOW), Ok(Cow::from(&body[..])));
    // Without a key (a loopback-only node) the body travels as it is.
    let open = envelope("prod", &[]);
    assert!(open.seal(b"plain", NOW).ends_with(b"plain"));
}

#[test]
fn a_packet_opens_once_and_only_while_fresh() {
    let keyed = envelope("prod", &["secret"]);
    let sealed = keyed.seal(b"hello", NOW);
    assert_eq!(keyed.open(&sealed, NOW + 5), Ok(Cow::from(&b"hello"[..])));
    assert_eq!(keyed.open(&sealed, NOW + 10), Err(Rejected::Replayed));
    let old = keyed.seal(b"hello", NOW - 31_000);
    assert_eq!(keyed.open(&old, NOW), Err(Rejected::Stale));
    let ahead = keyed.seal(b"hello", NOW + 31_000);
    assert_eq!(keyed.open(&ahead, NOW), Err(Rejected::Stale));
    // Two packets sealed in the same millisecond differ by their nonce.
    let (a, b) = (keyed.seal(b"x", NOW), keyed.seal(b"x", NOW));
    assert_eq!(keyed.open(&a, NOW), Ok(Cow::from(&b"x"[..])));
    assert_eq!(keyed.open(&b, NOW), Ok(Cow::from(&b"x"[..])));
}

#[test]
fn keys_roll_the_first_signs_and_every_one_verifies() {
    let old = envelope("prod", &["old-key"]);
    let both = envelope("prod", &["new-key", "old-key"]);
    let new = envelope("prod", &["new-key"]);
    // A node that added the new key (second) still talks with one that has only the old.
    assert!(both.open(&old.seal(b"a", NOW), NOW).is_ok());
    assert!(
        envelope("prod", &["old-key", "new-key"])
            .open(&new.seal(b"b", NOW), NOW)
            .is_ok()
    );
    assert!(new.open(&both.seal(b"c", NOW), NOW).is_ok());
    assert_eq!(old.open(&both.seal(b"d", NOW), NOW), Err(Rejected::Auth));
}

#[test]
fn signed_requests_cover_method_path_body_and_are_used_once() {
    let keys = Keys::new("prod", &["secret".to_owned()], 30_000);
    let header = keys
        .sign_request("POST", "/cluster/v1/catalog/push", b"{}", NOW)
        .unwrap();
    let verify = |h: &str, method, path, body: &[u8], now| {
        keys.verify_request(Some(h), method, path, body, now)
    };
    assert_eq!(
        verify(&header, "POST", "/cluster/v1/catalog/sync", b"{}", NOW),
        Err(Refused::Auth)
    );
    assert_eq!(
        verify(&header, "GET", "/cluster/v1/catalog/push", b"{}", NOW),
        Err(Refused::Auth)
    );
    assert_eq!(
        verify(
            &header,
            "POST",
            "/cluster/v1/catalog/push",
            b"{\"x\":1}",
            NOW
        ),
        Err(Refused::Auth)
    );
    assert_eq!(
        verify(
            &header,
            "POST",
            "/cluster/v1/catalog/push",
            b"{}",
            NOW + 31_000
        ),
        Err(Refused::Stale)
    );
    assert_eq!(
        verify(&header, "POST", "/cluster/v1/catalog/push", b"{}", NOW),
        Ok(())
    );
    assert_eq!(
        verify(&header, "POST", "/cluster/v1/catalog/push", b"{}", NOW + 1),
        Err(Refused::Replayed)
    );
    assert_eq!(
        keys.verify_request(None, "GET", "/cluster/v1/sources", b"", NOW),
        Err(Refused::Auth)
    );
    let other = Keys::new("prod", &["other-secret".to_owned()], 30_000);
    let forged = other
        .sign_request("GET", "/cluster/v1/sources", b"", NOW)
        .unwrap();
    assert_eq!(
        verify(&forged, "GET", "/cluster/v1/sources", b"", NOW),
        Err(Refused::Auth)
    );
    assert!(
        Keys::new("prod", &[], 30_000)
            .sign_request("GET", "/", b"", NOW)
            .is_none()
    );
}

#[test]
fn seeds_take_a_list_or_comma_separated_text() {
    let from_list: ClusterSettings = toml::from_str("seeds = [\"a:1\", \"b:2\"]").unwrap();
    let from_text: ClusterSettings = toml::from_str("seeds = \"a:1, b:2\"").unwrap();
    assert_eq!(from_list.seeds, ["a:1", "b:2"]);
    assert_eq!(from_text.seeds, from_list.seeds);
}

/// SplitMix64: a small deterministic generator, so a failing case can be replayed by seed.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Up to `max - 1` random bytes.
    fn bytes(&mut self, max: u64) -> Vec<u8> {
        let len = self.below(max);
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Fuzz, bounded: random and mutated packets never panic the envelope, and only the packets
/// it sealed itself open (once).
#[test]
fn fuzzed_packets_never_open_unless_sealed_by_a_key_holder() {
    let keyed = envelope("prod", &["secret-key-0123456789"]);
    let mut rng = Mix(0x5EED);
    for round in 0..5_000 {
        let body = rng.bytes(300);
        let sealed = keyed.seal(&body, NOW + round);
        let mut packet = sealed.clone();
        match rng.below(4) {
            0 => {
                let i = rng.below(packet.len() as u64) as usize;
                packet[i] ^= 1 << rng.below(8);
            }
            1 => packet.truncate(rng.below(packet.len() as u64) as usize),
            2 => packet.extend(rng.bytes(8).into_iter().chain([0])),
            _ => packet = rng.bytes(400),
        }
        assert!(
            keyed.open(&packet, NOW + round).is_err(),
            "round {round}: a changed packet opened"
        );
        assert_eq!(
            keyed.open(&sealed, NOW + round),
            Ok(Cow::from(&body[..])),
            "round {round}"
        );
    }
}

/// Fuzz, bounded: the catalog merge converges whatever the order, never panics on hostile
/// entries, and refuses every entry the checks reject.
#[test]
fn fuzzed_catalog_merges_converge_in_any_order() {
    let mut rng = Mix(0xCA7A);
    let keys = [
        "cursor/a", "cursor/b", "source/a", "plugin/x", "bad key", "cursor/", "other/a",
    ];
    let nodes = ["n1", "n2", "n3", "", "n 4"];
    let entries: Vec<Entry> = (0..2_000)
        .map(|_| {
            let key = keys[rng.below(keys.len() as u64) as usize].to_owned();
            // Small clocks, or ones no local clock comes near: every order takes the same.
            let clock = match rng.below(10) {
                0 => u64::MAX - rng.below(3),
                1 => (1 << 41) + rng.below(1 << 20),
                _ => rng.below(50),
            };
            let value = match rng.below(4) {
                0 => None,
                1 => Some(serde_json::json!({"cursor": rng.next().to_string(), "at_us": 1})),
                2 => Some(serde_json::json!({"id": "a", "plugin": "p", "config": {}})),
                _ => Some(serde_json::json!(rng.next())),
            };
            Entry {
                key,
                clock,
                node: nodes[rng.below(nodes.len() as u64) as usize].to_owned(),
                value,
            }
        })
        .collect();
    let mut fingerprints = std::collections::BTreeSet::new();
    for seed in 0..3u64 {
        let catalog = Catalog::open("observer", None).unwrap();
        let mut order = entries.clone();
        let mut shuffle = Mix(seed);
        for i in (1..order.len()).rev() {
            order.swap(i, shuffle.below(i as u64 + 1) as usize);
        }
        let taken = catalog.merge_all(order);
        assert!(taken > 0 && catalog.refused() > 0);
        for entry in catalog.live("") {
            assert!(
                entry.key.starts_with("cursor/") || entry.key.starts_with("source/"),
                "{entry:?}"
            );
            assert!(entry.clock < 50, "{entry:?}");
        }
        fingerprints.insert(catalog.fingerprint());
    }
    assert_eq!(fingerprints.len(), 1, "the orders disagree");
}

#[test]
fn suspicion_grows_with_the_log_of_the_cluster_size() {
    use super::gossip::suspicion_timeout;
    let base = Duration::from_secs(4);
    for small in [1, 2, 3, 10] {
        assert_eq!(suspicion_timeout(base, small), base, "{small} members");
    }
    assert_eq!(suspicion_timeout(base, 100), base * 2);
    let mut last = base;
    for n in 11..2000 {
        let t = suspicion_timeout(base, n);
        assert!(t >= last, "never shorter for a larger cluster ({n})");
        last = t;
    }
    assert!(last < base * 4, "{last:?}");
}
