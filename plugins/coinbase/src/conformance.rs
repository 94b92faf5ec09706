//! Conformance to frames Coinbase Exchange really sent (the corpus in `shared/realframes`, see
//! its `SOURCES.md`), frame by frame: every recorded `match` and `last_match` is the trade it
//! says, every `ticker` keeps its prices (the 2021 and 2022 recordings carry no sizes, and
//! none are made up), `subscriptions` is understood, and a `level2` frame is named as a channel
//! this connector does not read.

use anode_plugin_sdk::testing;
use serde_json::Value;

use super::*;

const PRODUCTS: &str = r#"["DASH-BTC","CRV-EUR","SKL-GBP","SKL-USD","SKL-BTC","NMR-EUR","BAND-GBP","BAND-BTC","YFI-BTC","NU-GBP","BTC-USD"]"#;

fn connector() -> Coinbase {
    testing::open(&format!(
        r#"{{"product_ids":{PRODUCTS},"channels":["matches","ticker","heartbeat"],"backfill":false}}"#
    ))
}

/// Each frame alone: the events it gives match what it says.
fn check(c: &mut Coinbase, line: usize, frame: &str) -> &'static str {
    let sent: Value = serde_json::from_str(frame).unwrap();
    let out = testing::frames(c, &[frame]);
    assert!(out.errors.is_empty(), "line {line}: {:?}", out.errors);
    let payloads = testing::payloads(&out.events);
    let symbol = sent["product_id"]
        .as_str()
        .map(|p| p.replace('-', "."))
        .unwrap_or_default();
    match sent["type"].as_str().unwrap() {
        "subscriptions" => {
            assert!(out.events.is_empty());
            "subscriptions"
        }
        "match" | "last_match" => {
            assert_eq!(payloads.len(), 1, "line {line}");
            let p = &payloads[0];
            assert_eq!(p["symbol"], symbol.as_str());
            assert_eq!(p["price"], sent["price"], "line {line}");
            assert_eq!(p["size"], sent["size"], "line {line}");
            assert_eq!(p["trade_id"], sent["trade_id"]);
            // `side` is the maker's; the taker did the opposite.
            let taker = if sent["side"] == "sell" {
                "buy"
            } else {
                "sell"
            };
            assert_eq!(p["taker_side"], taker);
            assert_eq!(
                out.events[0].upstream_id.as_deref(),
                Some(format!("{symbol}:{}", sent["trade_id"]).as_str())
            );
            "trade"
        }
        "ticker" => {
            assert_eq!(payloads.len(), 1, "line {line}");
            let p = &payloads[0];
            assert_eq!(p["bid_price"], sent["best_bid"], "line {line}");
            assert_eq!(p["ask_price"], sent["best_ask"], "line {line}");
            // Sizes only where the venue sent them.
            assert_eq!(p.get("bid_size"), sent.get("best_bid_size"), "line {line}");
            assert_eq!(p.get("ask_size"), sent.get("best_ask_size"), "line {line}");
            assert_eq!(
                out.events[0].upstream_id.as_deref(),
                Some(format!("{symbol}:{}", sent["sequence"]).as_str())
            );
            "ticker"
        }
        other => panic!("line {line}: a `{other}` frame in the corpus"),
    }
}

#[test]
fn every_recorded_frame_decodes_to_what_it_says() {
    let (Some(frames), Some(extra)) = (
        testing::real_frames("coinbase_exchange_ws.jsonl"),
        testing::real_frames("coinbase_exchange_ws_extra.jsonl"),
    ) else {
        return;
    };
    assert_eq!(frames.len(), 217, "the corpus as SOURCES.md lists it");
    let mut c = connector();
    let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
    for (n, frame) in frames.iter().chain(&extra).enumerate() {
        *kinds.entry(check(&mut c, n + 1, frame)).or_default() += 1;
    }
    assert_eq!(kinds["subscriptions"], 3);
    assert_eq!(kinds["trade"], 10 + 97 + 1);
    assert_eq!(kinds["ticker"], 107 + 1);
}

#[test]
fn a_level2_frame_is_named_as_a_channel_not_read() {
    let Some(frames) = testing::real_frames("coinbase_exchange_ws_other_channels.jsonl") else {
        return;
    };
    let mut c = connector();
    for frame in &frames {
        let out = testing::frames(&mut c, &[frame]);
        match &out.errors[..] {
            [PluginError::BadInput(m)] => assert!(m.contains("`l2update`"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_refusal_is_the_sources_error_in_coinbases_words() {
    // Coinbase's documented error message (the corpus holds no recorded one).
    let refusal = r#"{"type":"error","message":"Failed to subscribe","reason":"FOO-BAR is not a valid product"}"#;
    let out = testing::frames(&mut connector(), &[refusal]);
    match &out.errors[..] {
        [PluginError::Retryable(m)] => {
            assert!(
                m.contains("Failed to subscribe: FOO-BAR is not a valid product"),
                "{m}"
            )
        }
        other => panic!("{other:?}"),
    }
}
