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
    assert_eq!(keyed.open(&sealed, NOW), Ok(&b"hello"[..]));
    assert_eq!(
        envelope("prod", &["other"]).open(&sealed, NOW),
        Err(Rejected::Auth)
    );
    let open = envelope("prod", &[]);
    assert_eq!(open.open(&open.seal(b"x", NOW), NOW), Ok(&b"x"[..]));
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
fn a_packet_opens_once_and_only_while_fresh() {
    let keyed = envelope("prod", &["secret"]);
    let sealed = keyed.seal(b"hello", NOW);
    assert_eq!(keyed.open(&sealed, NOW + 5), Ok(&b"hello"[..]));
    assert_eq!(keyed.open(&sealed, NOW + 10), Err(Rejected::Replayed));
    let old = keyed.seal(b"hello", NOW - 31_000);
    assert_eq!(keyed.open(&old, NOW), Err(Rejected::Stale));
    let ahead = keyed.seal(b"hello", NOW + 31_000);
    assert_eq!(keyed.open(&ahead, NOW), Err(Rejected::Stale));
    // Two packets sealed in the same millisecond differ by their nonce.
    let (a, b) = (keyed.seal(b"x", NOW), keyed.seal(b"x", NOW));
    assert_eq!(keyed.open(&a, NOW), Ok(&b"x"[..]));
    assert_eq!(keyed.open(&b, NOW), Ok(&b"x"[..]));
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
