use super::*;

#[test]
fn envelopes_check_magic_cluster_and_key() {
    let keyed = Envelope::new("prod", Some("secret"));
    let sealed = keyed.seal(b"hello");
    assert_eq!(keyed.open(&sealed), Ok(&b"hello"[..]));
    assert_eq!(
        Envelope::new("prod", Some("other")).open(&sealed),
        Err(Rejected::Auth)
    );
    assert_eq!(
        Envelope::new("prod", None).open(&Envelope::new("prod", None).seal(b"x")),
        Ok(&b"x"[..])
    );
    // Without a tag, a keyed node refuses; with a flipped bit, too.
    assert_eq!(
        keyed.open(&Envelope::new("prod", None).seal(b"hello")),
        Err(Rejected::Auth)
    );
    let mut forged = sealed.clone();
    forged[8] ^= 1;
    assert_eq!(keyed.open(&forged), Err(Rejected::Auth));
    assert_eq!(
        Envelope::new("test", Some("secret")).open(&sealed),
        Err(Rejected::Foreign)
    );
    assert_eq!(keyed.open(b"GET / HTTP/1.1"), Err(Rejected::Garbage));
    assert_eq!(keyed.open(b""), Err(Rejected::Garbage));
    assert_ne!(
        keyed.http_token(),
        Envelope::new("prod", Some("other")).http_token()
    );
    assert_eq!(Envelope::new("prod", None).http_token(), None);
}

#[test]
fn seeds_take_a_list_or_comma_separated_text() {
    let from_list: ClusterSettings = toml::from_str("seeds = [\"a:1\", \"b:2\"]").unwrap();
    let from_text: ClusterSettings = toml::from_str("seeds = \"a:1, b:2\"").unwrap();
    assert_eq!(from_list.seeds, ["a:1", "b:2"]);
    assert_eq!(from_text.seeds, from_list.seeds);
}
