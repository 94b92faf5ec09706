use super::*;
use crate::record::{Payload, RecordId};

fn record(source: &str, n: u64) -> Record {
    Record {
        id: RecordId::derive(source, "trades", Some(&n.to_string()), b"{}"),
        source: source.into(),
        stream: "trades".into(),
        key: Some("BTC.USDT".into()),
        upstream_id: Some(n.to_string()),
        event_time_us: None,
        ingest_time_us: 0,
        node: "n".into(),
        payload: Payload::parse(b"{}".to_vec()).unwrap(),
    }
}

#[tokio::test]
async fn filters_and_isolates_a_slow_subscriber() {
    let hub = Hub::new(FanoutSettings {
        queue_len: 4,
        lag_disconnect_ms: 0,
        max_subscribers: 10,
        max_resuming: 1,
        dedupe_window: 64,
        dedupe_window_ms: 10_000,
        ..FanoutSettings::default()
    });
    let mut fast = hub.subscribe(Filter::default()).unwrap();
    let mut slow = hub.subscribe(Filter::default()).unwrap();
    let mut other = hub
        .subscribe(Filter {
            sources: ["b".to_owned()].into(),
            ..Filter::default()
        })
        .unwrap();
    let mut received = 0;
    for n in 0..20 {
        hub.publish(&[record("a", n)], Stage::Decoded);
        // The fast subscriber keeps up; the slow one never reads.
        match fast.next().await {
            Delivery::Record { dropped_total, .. } => assert_eq!(dropped_total, 0),
            Delivery::Disconnect(r) => panic!("fast subscriber disconnected: {r}"),
        }
        received += 1;
    }
    assert_eq!(received, 20);
    let stats = hub.stats();
    assert_eq!(stats.dropped, 16);
    assert_eq!(stats.disconnected_for_lag, 1);
    // The slow one still gets what fit, then the disconnect with its reason.
    let mut queued = 0;
    loop {
        match slow.next().await {
            Delivery::Record { .. } => queued += 1,
            Delivery::Disconnect(reason) => {
                assert!(reason.contains("too slow"), "{reason}");
                break;
            }
        }
        assert!(queued <= 4);
    }
    hub.publish(&[record("b", 1)], Stage::Decoded);
    assert!(matches!(other.next().await, Delivery::Record { .. }));
    drop(slow);
    assert_eq!(hub.stats().subscribers, 2);
}

#[tokio::test]
async fn a_stored_subscriber_sees_records_only_once_stored() {
    let hub = Hub::new(FanoutSettings::default());
    let query = |after: &str| HashMap::from([("after".to_owned(), after.to_owned())]);
    let mut stored = hub
        .subscribe(Filter::from_query(&query("stored")).unwrap())
        .unwrap();
    let mut decoded = hub
        .subscribe(Filter::from_query(&query("decoded")).unwrap())
        .unwrap();
    assert!(
        Filter::from_query(&query("never"))
            .unwrap_err()
            .contains("after=stored")
    );
    hub.publish(&[record("a", 1)], Stage::Decoded);
    match decoded.next().await {
        Delivery::Record { stage, .. } => assert_eq!(stage, Stage::Decoded),
        Delivery::Disconnect(r) => panic!("{r}"),
    }
    assert!(
        stored.records.try_recv().is_err(),
        "nothing for a stored subscriber before the store commits"
    );
    hub.publish(&[record("a", 1)], Stage::Stored);
    match stored.next().await {
        Delivery::Record { json, stage, .. } => {
            assert_eq!(stage, Stage::Stored);
            assert!(json.contains(r#""upstream_id":"1""#), "{json}");
        }
        Delivery::Disconnect(r) => panic!("{r}"),
    }
    assert!(
        decoded.records.try_recv().is_err(),
        "a decoded subscriber sees it once"
    );
    // The same record again (a second owner during a hand-over) reaches no one twice.
    hub.publish(&[record("a", 1)], Stage::Stored);
    let relayed = record("a", 2);
    for _ in 0..2 {
        let parts = Parts {
            source: "a".into(),
            stream: "trades".into(),
            key: Some("BTC.USDT".into()),
            upstream_id: None,
        };
        hub.publish_relayed(&relayed.id, &parts, Stage::Stored, relayed.to_json().into());
    }
    assert!(matches!(stored.next().await, Delivery::Record { .. }));
    assert!(stored.records.try_recv().is_err());
    assert_eq!(hub.stats().repeats, 2);
}

#[tokio::test]
async fn a_client_is_heard_by_the_peers_once_the_relay_says_so() {
    let hub = Hub::new(FanoutSettings::default());
    // No relay (a node alone): nothing to wait for.
    let alone = hub.subscribe(Filter::default()).unwrap();
    assert!(alone.until_peers_heard(Duration::from_secs(5)).await);

    let mut interest = hub.attach_relay();
    let mut client = hub.subscribe(Filter::default()).unwrap();
    let version = *interest.borrow_and_update();
    assert!(!client.until_peers_heard(Duration::from_millis(20)).await);
    hub.peers_heard(version - 1);
    assert!(!client.until_peers_heard(Duration::from_millis(20)).await);
    hub.peers_heard(version);
    assert!(client.until_peers_heard(Duration::ZERO).await);

    // A new filter is interest of its own, and the relay hears of it.
    client.set_filter(Filter {
        sources: ["b".to_owned()].into(),
        ..Filter::default()
    });
    assert!(interest.has_changed().unwrap());
    assert!(!client.until_peers_heard(Duration::from_millis(20)).await);
    hub.peers_heard(*interest.borrow_and_update());
    assert!(client.until_peers_heard(Duration::ZERO).await);
    // A peer link is no interest of this node's.
    let _link = hub.subscribe_peer(Vec::new()).unwrap();
    assert!(!interest.has_changed().unwrap());
}

/// The outbox numbers records for peer links and gives a link that dropped what it missed,
/// matching its filters, while it holds all of it; once the oldest wanted record is gone, it
/// says so.
#[tokio::test]
async fn a_link_resumes_from_the_outbox_while_it_holds_what_followed() {
    let hub = Hub::new(FanoutSettings {
        relay_buffer_bytes: 4 * record("a", 0).to_json().len(),
        ..FanoutSettings::default()
    });
    let only_a = vec![Filter {
        sources: ["a".to_owned()].into(),
        ..Filter::default()
    }];
    let mut link = hub.subscribe_peer(only_a.clone()).unwrap();
    hub.publish(&[record("a", 1), record("b", 1)], Stage::Decoded);
    let Delivery::Record { seq: first, .. } = link.next().await else {
        panic!("disconnected")
    };
    assert_eq!(first, 1);
    // The link drops; records go on being numbered and kept (those of `b` too: a link
    // coming back may want them).
    drop(link);
    hub.publish(&[record("a", 2), record("b", 2)], Stage::Decoded);
    let missed = hub.missed(first, &only_a);
    assert!(missed.complete);
    assert_eq!(missed.last, 4);
    let seqs: Vec<u64> = missed.records.iter().map(|(seq, _, _)| *seq).collect();
    assert_eq!(
        seqs,
        [3],
        "record b1 (2) and b2 (4) do not match the filter"
    );
    assert!(missed.records[0].2.contains(r#""upstream_id":"2""#));
    // Past the bound the oldest go: a link at 1 can no longer resume, one at 3 can.
    hub.publish(&[record("a", 3), record("a", 4)], Stage::Decoded);
    assert!(!hub.missed(first, &only_a).complete);
    let from_three = hub.missed(3, &only_a);
    assert!(from_three.complete, "4 is still kept");
    assert_eq!(from_three.records.len(), 2);
    assert_eq!(hub.outbox_last(), 6);
}
