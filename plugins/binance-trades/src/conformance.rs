//! Conformance to frames Binance really sent (the corpus in `shared/realframes`, see its
//! `SOURCES.md`), frame by frame: every recorded trade decodes to the trade it says, the
//! REST pages of `/api/v3/trades` and `/api/v3/historicalTrades` backfill as the trades they
//! hold, frames of other streams are named as such, and Binance's documented refusal of a
//! SUBSCRIBE stops the source with Binance's own words.

use std::collections::BTreeMap;

use anode_plugin_sdk::testing;
use serde_json::Value;

use super::*;

const CONFIG: &str = r#"{"base_url":"ws://127.0.0.1:9100/binance","symbols":["btcusdt","ethusdt"],"mode":"combined","rest_url":"http://127.0.0.1:9100/binance"}"#;

#[test]
fn every_recorded_trade_frame_decodes_to_the_trade_it_says() {
    let Some(frames) = testing::real_frames("binance_spot_trade_combined.jsonl") else {
        return;
    };
    assert_eq!(frames.len(), 4_587, "the corpus as SOURCES.md lists it");
    let mut c: BinanceTrades = testing::open(CONFIG);
    let mut ids: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (n, frame) in frames.iter().enumerate() {
        let out = testing::frames(&mut c, &[frame]);
        assert!(out.errors.is_empty(), "line {}: {:?}", n + 1, out.errors);
        assert_eq!(out.events.len(), 1, "line {}", n + 1);
        let sent: Value = serde_json::from_str(frame).unwrap();
        let trade = &sent["data"];
        let event = &out.events[0];
        let p = &testing::payloads(&out.events)[0];
        let symbol = match trade["s"].as_str().unwrap() {
            "BTCUSDT" => "BTC.USDT",
            "ETHUSDT" => "ETH.USDT",
            other => panic!("line {}: symbol {other}", n + 1),
        };
        let id = trade["t"].as_u64().unwrap();
        assert_eq!(p["symbol"], symbol);
        assert_eq!(p["price"], trade["p"], "line {}", n + 1);
        assert_eq!(p["size"], trade["q"], "line {}", n + 1);
        assert_eq!(p["trade_id"], id);
        let side = if trade["m"] == true { "sell" } else { "buy" };
        assert_eq!(p["taker_side"], side);
        assert_eq!(p["event_timestamp"], trade["T"]);
        assert_eq!(event.event_time, Some(trade["T"].as_i64().unwrap() * 1000));
        assert_eq!(
            event.upstream_id.as_deref(),
            Some(format!("{symbol}:{id}").as_str())
        );
        ids.entry(symbol.to_owned()).or_default().push(id);
        // No gap in a contiguous recording: nothing to backfill.
        assert!(
            out.requests.is_empty(),
            "line {}: {:?}",
            n + 1,
            out.requests
        );
    }
    // Both runs are contiguous, as recorded.
    for (symbol, (first, count)) in [
        ("BTC.USDT", (3_735_683_259u64, 2_571usize)),
        ("ETH.USDT", (1_520_538_925, 2_016)),
    ] {
        let mut got = ids[symbol].clone();
        got.sort_unstable();
        assert_eq!(got.len(), count, "{symbol}");
        assert_eq!(got, (first..first + count as u64).collect::<Vec<_>>());
    }
}

#[test]
fn frames_of_other_streams_are_named_not_taken_for_trades() {
    let Some(frames) = testing::real_frames("binance_spot_other_streams_combined.jsonl") else {
        return;
    };
    assert_eq!(frames.len(), 60);
    let mut c: BinanceTrades = testing::open(CONFIG);
    for frame in &frames {
        let stream = serde_json::from_str::<Value>(frame).unwrap()["stream"]
            .as_str()
            .unwrap()
            .to_owned();
        let out = testing::frames(&mut c, &[frame]);
        assert!(out.events.is_empty());
        match &out.errors[..] {
            [PluginError::BadInput(m)] => {
                assert!(m.contains(&stream) && m.contains("@trade"), "{m}")
            }
            other => panic!("{stream}: {other:?}"),
        }
    }
}

/// A recorded REST page answers the backfill of the gap it covers: its trades are the events.
fn backfills_a_recorded_page(file: &str) {
    let Some(pages) = testing::real_frames(file) else {
        return;
    };
    let page: Vec<Value> = serde_json::from_str(&pages[0]).unwrap();
    let first = page[0]["id"].as_u64().unwrap();
    let last = page.last().unwrap()["id"].as_u64().unwrap();
    let cursor = format!(r#"{{"BTCUSDT":{}}}"#, first - 1);
    let mut c: BinanceTrades = testing::open_at(CONFIG, Some(&cursor));
    // A live trade past the page reveals the gap the page fills.
    let next = format!(
        r#"{{"stream":"btcusdt@trade","data":{{"e":"trade","E":1634943300000,"s":"BTCUSDT","t":{},"p":"60800.00000000","q":"0.00100000","T":1634943300000,"m":true,"M":true}}}}"#,
        last + 1
    );
    let out = testing::frames(&mut c, &[&next]);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let tag = format!("backfill:BTCUSDT:{first}-{last}");
    assert_eq!(
        out.requests.iter().map(|r| &r.tag).collect::<Vec<_>>(),
        [&tag]
    );
    let out = testing::responses(&mut c, &[HttpResponse::ok(&tag, &pages[0])]);
    assert!(out.errors.is_empty(), "{file}: {:?}", out.errors);
    assert_eq!(out.events.len(), page.len(), "{file}");
    for (p, trade) in testing::payloads(&out.events).iter().zip(&page) {
        assert_eq!(p["trade_id"], trade["id"]);
        assert_eq!(p["price"], trade["price"]);
        assert_eq!(p["size"], trade["qty"]);
        assert_eq!(p["event_timestamp"], trade["time"]);
        let side = if trade["isBuyerMaker"] == true {
            "sell"
        } else {
            "buy"
        };
        assert_eq!(p["taker_side"], side);
    }
    let cursor: Value = serde_json::from_str(out.cursor.as_deref().unwrap()).unwrap();
    assert_eq!(
        cursor["BTCUSDT"],
        last + 1,
        "the cursor passes the gap and the live trade"
    );
}

#[test]
fn recorded_rest_pages_backfill_as_their_trades() {
    backfills_a_recorded_page("binance_rest_historicalTrades.jsonl");
    backfills_a_recorded_page("binance_rest_trades.jsonl");
}

#[test]
fn a_refused_subscription_stops_the_source_with_binances_words() {
    // Binance's documented error reply (the corpus holds no recorded one).
    let reply = r#"{"error":{"code":2,"msg":"Invalid request: unknown variant `SUBSCRIB`, expected one of `SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY` at line 1 column 28"},"id":1}"#;
    let mut c: BinanceTrades = testing::open(r#"{"symbols":["btcusdt"],"mode":"subscribe"}"#);
    let out = testing::frames(&mut c, &[r#"{"result":null,"id":1}"#, reply]);
    match &out.errors[..] {
        [PluginError::Fatal(m)] => {
            assert!(m.contains("binance refused the subscription"), "{m}");
            assert!(
                m.contains("unknown variant `SUBSCRIB`") && m.contains("code 2"),
                "{m}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn prices_in_exponent_form_become_plain_decimals() {
    let frame = r#"{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":7,"p":"6.1837E+4","q":"5.1e-05","T":1,"m":false,"M":true}}"#;
    let mut c: BinanceTrades = testing::open(CONFIG);
    let out = testing::frames(&mut c, &[frame]);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let p = &testing::payloads(&out.events)[0];
    assert_eq!(
        (&p["price"], &p["size"]),
        (&"61837".into(), &"0.000051".into())
    );
}
