//! Native tests of the connector, driven the way the host drives it.

use super::*;
use anode_plugin_sdk::testing;

const TRADE: &str = r#"{"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.001","q":"100","T":1672515782136,"m":true,"M":true}"#;

#[test]
fn decodes_a_raw_trade() {
    let mut c: BinanceTrades = testing::open(r#"{"symbols":["bnbbtc"],"mode":"raw"}"#);
    let out = testing::frames(&mut c, &[TRADE]);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let event = &out.events[0];
    assert_eq!(event.stream, "trades");
    assert_eq!(event.key.as_deref(), Some("BNB.BTC"));
    assert_eq!(event.upstream_id.as_deref(), Some("BNB.BTC:12345"));
    assert_eq!(event.event_time, Some(1_672_515_782_136_000));
    let p = &testing::payloads(&out.events)[0];
    assert_eq!(p["exchange"], "binance");
    assert_eq!(p["symbol"], "BNB.BTC");
    assert_eq!(p["price"], "0.001");
    assert_eq!(p["size"], "100");
    assert_eq!(p["taker_side"], "sell");
    assert_eq!(p["trade_id"], 12345);
    assert_eq!(p["event_timestamp"], 1_672_515_782_136i64);
}

#[test]
fn decodes_combined_and_ignores_subscribe_reply() {
    let mut c: BinanceTrades = testing::open(r#"{"symbols":["bnbbtc"],"mode":"subscribe"}"#);
    let wrapped = format!(r#"{{"stream":"bnbbtc@trade","data":{TRADE}}}"#);
    let buy = TRADE.replace(r#""m":true"#, r#""m":false"#);
    let out = testing::frames(&mut c, &[r#"{"result":null,"id":1}"#, &wrapped, &buy]);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert_eq!(out.events.len(), 2);
    assert_eq!(testing::payloads(&out.events)[1]["taker_side"], "buy");
}

#[test]
fn malformed_frames_are_bad_input_and_the_rest_still_counts() {
    let mut c: BinanceTrades = testing::open(r#"{"symbols":["bnbbtc"]}"#);
    let no_price = TRADE.replace(r#""p":"0.001","#, "");
    let bad_price = TRADE.replace(r#""p":"0.001""#, r#""p":"abc""#);
    let out = testing::frames(
        &mut c,
        &[
            "{\"e\":\"trade\",",
            "[1,2]",
            &no_price,
            &bad_price,
            r#"{"e":"kline"}"#,
            TRADE,
        ],
    );
    assert_eq!(out.events.len(), 1);
    assert_eq!(out.errors.len(), 5);
    assert!(
        out.errors
            .iter()
            .all(|e| matches!(e, PluginError::BadInput(_)))
    );
}

#[test]
fn plans_each_mode() {
    let plan = |config: &str| testing::open::<BinanceTrades>(config).plan();
    let ws = |plan: Plan| match plan {
        Plan::WebSocket(ws) => ws,
        other => panic!("expected a WebSocket plan, got {other:?}"),
    };
    let raw = ws(plan(
        r#"{"base_url":"ws://h:1/","symbols":["BTCUSDT"],"mode":"raw"}"#,
    ));
    assert_eq!(raw.url, "ws://h:1/ws/btcusdt@trade");
    let combined = ws(plan(
        r#"{"base_url":"ws://h:1","symbols":["btcusdt","ethusdt"]}"#,
    ));
    assert_eq!(
        combined.url,
        "ws://h:1/stream?streams=btcusdt@trade/ethusdt@trade"
    );
    let sub = ws(plan(
        r#"{"base_url":"ws://h:1","symbols":["btcusdt"],"mode":"subscribe"}"#,
    ));
    assert_eq!(sub.url, "ws://h:1/ws");
    let msg: Value = serde_json::from_str(&sub.on_connect[0]).unwrap();
    assert_eq!(
        msg,
        json!({"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1})
    );
}

#[test]
fn bad_config_is_fatal_and_says_why() {
    for config in [
        r#"{}"#,
        r#"{"symbols":[]}"#,
        r#"{"symbols":["a","b"],"mode":"raw"}"#,
        r#"{"symbols":["a"],"bogus":1}"#,
        r#"{"symbols":["a"],"rest_url":"ftp://h"}"#,
        r#"{"symbols":["a"],"backfill":"yes"}"#,
        r#"{"symbols":["a"],"base_url":"tcp://h"}"#,
    ] {
        match BinanceTrades::open(config, None) {
            Err(PluginError::Fatal(m)) => assert!(m.starts_with("invalid config"), "{m}"),
            Err(other) => panic!("{config}: {other}"),
            Ok(_) => panic!("{config} was accepted"),
        }
    }
}

// Cursor and backfill.

const BASE: &str = "ws://127.0.0.1:9100/binance";
const REST: &str = "http://127.0.0.1:9100/binance";

fn config(extra: &str) -> String {
    format!(r#"{{"base_url":"{BASE}","symbols":["btcusdt","ethusdt"]{extra}}}"#)
}

/// Trade `id` as the combined stream sends it; its time and side follow from the id.
fn live(symbol: &str, id: u64) -> String {
    let inner = format!(
        r#"{{"e":"trade","E":{time},"s":"{symbol}","t":{id},"p":"1.5","q":"2","T":{time},"m":{maker},"M":true}}"#,
        time = 1_700_000_000_000 + id,
        maker = id.is_multiple_of(2),
    );
    format!(
        r#"{{"stream":"{}@trade","data":{inner}}}"#,
        symbol.to_ascii_lowercase()
    )
}

fn lives(symbol: &str, ids: impl IntoIterator<Item = u64>) -> Vec<String> {
    ids.into_iter().map(|id| live(symbol, id)).collect()
}

fn feed(c: &mut BinanceTrades, frames: &[String]) -> Output {
    let frames: Vec<&str> = frames.iter().map(String::as_str).collect();
    testing::frames(c, &frames)
}

/// The same trades as `live` makes, as `historicalTrades` returns them.
fn page(ids: impl IntoIterator<Item = u64>) -> String {
    let trades: Vec<Value> = ids
        .into_iter()
        .map(|id| {
            json!({"id": id, "price": "1.5", "qty": "2", "quoteQty": "3",
                   "time": 1_700_000_000_000 + id, "isBuyerMaker": id.is_multiple_of(2),
                   "isBestMatch": true})
        })
        .collect();
    Value::from(trades).to_string()
}

fn ids(out: &Output) -> Vec<u64> {
    testing::payloads(&out.events)
        .iter()
        .map(|p| p["trade_id"].as_u64().unwrap())
        .collect()
}

fn cursor(out: &Output) -> Option<Value> {
    out.cursor
        .as_deref()
        .map(|c| serde_json::from_str(c).expect("the cursor is JSON"))
}

/// `(url, tag)` of each request.
fn asked(out: &Output) -> Vec<(String, String)> {
    out.requests
        .iter()
        .map(|r| {
            assert_eq!(r.method, "GET");
            (r.url.clone(), r.tag.clone())
        })
        .collect()
}

fn historical(symbol: &str, from: u64, limit: u64) -> String {
    format!("{REST}/api/v3/historicalTrades?symbol={symbol}&fromId={from}&limit={limit}")
}

/// The backfill request for `limit` trades of `symbol` from `from`: (URL, tag).
fn asking(symbol: &str, from: u64, limit: u64) -> (String, String) {
    (
        historical(symbol, from, limit),
        format!("backfill:{symbol}:{from}-{}", from + limit - 1),
    )
}

/// Answer the request tagged `tag` with a page of the trades `ids`.
fn answer(c: &mut BinanceTrades, tag: &str, ids: std::ops::RangeInclusive<u64>) -> Output {
    testing::responses(c, &[HttpResponse::ok(tag, &page(ids))])
}

fn assert_clean(out: &Output) {
    assert!(out.errors.is_empty(), "{:?}", out.errors);
}

#[test]
fn the_cursor_covers_each_batch() {
    let mut c: BinanceTrades = testing::open(&config(""));
    let mut frames = lives("BTCUSDT", 100..=102);
    frames.push(live("ETHUSDT", 7));
    let out = feed(&mut c, &frames);
    assert_clean(&out);
    assert_eq!(ids(&out), [100, 101, 102, 7]);
    assert_eq!(cursor(&out), Some(json!({"BTCUSDT": 102, "ETHUSDT": 7})));
    assert!(out.requests.is_empty());
    // One symbol moves; the cursor still carries both.
    let out = feed(&mut c, &lives("ETHUSDT", 8..=9));
    assert_eq!(cursor(&out), Some(json!({"BTCUSDT": 102, "ETHUSDT": 9})));
    // Nothing moved (a repeated trade, a bad frame): no cursor.
    let out = testing::frames(&mut c, &[&live("BTCUSDT", 101), "{}"]);
    assert_eq!(out.events.len(), 1);
    assert_eq!(out.cursor, None);
    // A batch that grows a number by a digit is still one well-formed object.
    let out = feed(&mut c, &lives("ETHUSDT", 10..=11));
    assert_eq!(cursor(&out), Some(json!({"BTCUSDT": 102, "ETHUSDT": 11})));
}

#[test]
fn a_live_trade_ahead_of_the_cursor_asks_for_the_gap_once() {
    let mut c: BinanceTrades =
        testing::open_at(&config(""), Some(r#"{"BTCUSDT":100,"ETHUSDT":50}"#));
    let out = feed(&mut c, &[live("BTCUSDT", 150)]);
    assert_clean(&out);
    assert_eq!(ids(&out), [150]);
    assert_eq!(asked(&out), [asking("BTCUSDT", 101, 49)]);
    // Trades past the gap are not covered by the cursor yet.
    assert_eq!(out.cursor, None);
    // Live trades keep flowing, without asking again; the other symbol's watermark moves.
    let mut frames = lives("BTCUSDT", 151..=152);
    frames.push(live("ETHUSDT", 51));
    let out = feed(&mut c, &frames);
    assert_eq!(ids(&out), [151, 152, 51]);
    assert!(out.requests.is_empty());
    assert_eq!(cursor(&out), Some(json!({"BTCUSDT": 100, "ETHUSDT": 51})));

    // The page fills the gap: the watermark jumps to the newest live trade.
    let out = answer(&mut c, "backfill:BTCUSDT:101-149", 101..=149);
    assert_clean(&out);
    assert_eq!(ids(&out), (101..=149).collect::<Vec<_>>());
    assert!(out.requests.is_empty());
    assert_eq!(cursor(&out), Some(json!({"BTCUSDT": 152, "ETHUSDT": 51})));
    let out = feed(&mut c, &[live("BTCUSDT", 153)]);
    assert_eq!(cursor(&out), Some(json!({"BTCUSDT": 153, "ETHUSDT": 51})));
    assert!(out.requests.is_empty());
}

#[test]
fn backfilled_trades_are_the_same_events_as_live_ones() {
    let at = 1_700_000_123_456_789;
    let mut live_side: BinanceTrades = testing::open(&config(""));
    let frame = Frame {
        data: live("BTCUSDT", 101).into_bytes(),
        received_at: at,
    };
    let from_live = testing::frame_batch(&mut live_side, &[frame]).events;

    let mut backfilled: BinanceTrades = testing::open_at(&config(""), Some(r#"{"BTCUSDT":100}"#));
    let out = feed(&mut backfilled, &[live("BTCUSDT", 102)]);
    assert_eq!(out.requests[0].tag, "backfill:BTCUSDT:101-101");
    let response = HttpResponse {
        received_at: at,
        ..HttpResponse::ok("backfill:BTCUSDT:101-101", &page([101]))
    };
    let from_rest = testing::responses(&mut backfilled, &[response]).events;
    assert_eq!(from_rest, from_live);
    let event = &from_rest[0];
    assert_eq!(event.stream, "trades");
    assert_eq!(event.key.as_deref(), Some("BTC.USDT"));
    assert_eq!(event.upstream_id.as_deref(), Some("BTC.USDT:101"));
    let p = &testing::payloads(&from_rest)[0];
    assert_eq!(p["atom_timestamp"], at);
    assert_eq!(p["event_timestamp"], 1_700_000_000_101i64);
    assert_eq!(p["taker_side"], "buy");
    assert_eq!(p["size"], "2");
}

#[test]
fn a_gap_over_two_pages_asks_for_the_second() {
    let mut c: BinanceTrades = testing::open_at(&config(""), Some(r#"{"BTCUSDT":0}"#));
    let out = feed(&mut c, &[live("BTCUSDT", 1502)]);
    assert_eq!(asked(&out), [asking("BTCUSDT", 1, 1000)]);
    let out = answer(&mut c, "backfill:BTCUSDT:1-1000", 1..=1000);
    assert_clean(&out);
    assert_eq!(out.events.len(), 1000);
    assert_eq!(cursor(&out), Some(json!({"BTCUSDT": 1000})));
    assert_eq!(asked(&out), [asking("BTCUSDT", 1001, 501)]);
    let out = answer(&mut c, "backfill:BTCUSDT:1001-1501", 1001..=1501);
    assert_clean(&out);
    assert_eq!(out.events.len(), 501);
    assert_eq!(cursor(&out), Some(json!({"BTCUSDT": 1502})));
    assert!(out.requests.is_empty());
}

#[test]
fn a_short_page_asks_for_the_rest() {
    let mut c: BinanceTrades = testing::open_at(&config(""), Some(r#"{"BTCUSDT":100}"#));
    feed(&mut c, &[live("BTCUSDT", 150)]);
    let out = answer(&mut c, "backfill:BTCUSDT:101-149", 101..=120);
    assert_clean(&out);
    assert_eq!(cursor(&out), Some(json!({"BTCUSDT": 120})));
    assert_eq!(out.requests[0].url, historical("BTCUSDT", 121, 29));
}

#[test]
fn an_empty_page_or_a_refusal_gives_up_the_gap() {
    for (status, body) in [
        (200, "[]"),
        (400, r#"{"code":-1100,"msg":"fromId too old"}"#),
    ] {
        let mut c: BinanceTrades = testing::open_at(&config(""), Some(r#"{"BTCUSDT":100}"#));
        feed(&mut c, &lives("BTCUSDT", 150..=151));
        let out = testing::responses(
            &mut c,
            &[testing::response("backfill:BTCUSDT:101-149", status, body)],
        );
        match &out.errors[..] {
            [PluginError::BadInput(m)] => {
                assert!(m.contains("BTCUSDT") && m.contains("101 to 149"), "{m}");
                if status == 400 {
                    assert!(
                        m.contains("HTTP 400") && m.contains("fromId too old"),
                        "{m}"
                    );
                }
            }
            other => panic!("{status}: {other:?}"),
        }
        assert!(out.events.is_empty() && out.requests.is_empty());
        // Past the gap, on to the live trades.
        assert_eq!(cursor(&out), Some(json!({"BTCUSDT": 151})));
    }
}

#[test]
fn ids_missing_from_a_page_are_reported_and_skipped() {
    let mut c: BinanceTrades = testing::open_at(&config(""), Some(r#"{"BTCUSDT":100}"#));
    feed(&mut c, &[live("BTCUSDT", 111)]);
    // 101 expired, 104 and 105 are missing, 99 was not asked for, 111 came live.
    let body = page([99, 102, 103, 106, 107, 108, 109, 110, 111]);
    let out = testing::responses(
        &mut c,
        &[HttpResponse::ok("backfill:BTCUSDT:101-110", &body)],
    );
    assert_eq!(ids(&out), [102, 103, 106, 107, 108, 109, 110]);
    let messages: Vec<&str> = out.errors.iter().map(PluginError::message).collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages[0].contains("101 to 101"), "{messages:?}");
    assert!(messages[1].contains("104 to 105"), "{messages:?}");
    assert_eq!(cursor(&out), Some(json!({"BTCUSDT": 111})));
}

#[test]
fn a_passing_failure_asks_again_later_without_giving_up() {
    let t0 = 1_700_000_000_000_000;
    let mut c: BinanceTrades = testing::open_at(&config(""), Some(r#"{"BTCUSDT":100}"#));
    assert_eq!(
        testing::frames_at(&mut c, &[&live("BTCUSDT", 150)], t0)
            .requests
            .len(),
        1
    );
    let busy = HttpResponse {
        received_at: t0,
        ..testing::response("backfill:BTCUSDT:101-149", 503, "busy")
    };
    let out = testing::responses(&mut c, &[busy]);
    assert!(out.errors.is_empty() && out.cursor.is_none() && out.requests.is_empty());
    // Not at once: after a wait, the next live trade asks again.
    let out = testing::frames_at(&mut c, &[&live("BTCUSDT", 151)], t0 + 1);
    assert!(out.requests.is_empty());
    let out = testing::frames_at(&mut c, &[&live("BTCUSDT", 152)], t0 + 1_000_000);
    assert_eq!(asked(&out), [asking("BTCUSDT", 101, 49)]);
    // An unreadable page is bad input and is asked for again too.
    let garbage = HttpResponse {
        received_at: t0 + 1_000_000,
        ..HttpResponse::ok("backfill:BTCUSDT:101-149", "<html>")
    };
    let out = testing::responses(&mut c, &[garbage]);
    assert!(matches!(out.errors[..], [PluginError::BadInput(_)]));
    assert!(out.cursor.is_none());
    let out = testing::frames_at(&mut c, &[&live("BTCUSDT", 153)], t0 + 60_000_000);
    assert_eq!(out.requests.len(), 1);
}

#[test]
fn an_unanswered_page_is_asked_again_and_answered_once() {
    let t0 = 1_700_000_000_000_000;
    let mut c: BinanceTrades = testing::open_at(&config(""), Some(r#"{"BTCUSDT":100}"#));
    let first = testing::frames_at(&mut c, &[&live("BTCUSDT", 150)], t0);
    let out = testing::frames_at(&mut c, &[&live("BTCUSDT", 151)], t0 + 29_000_000);
    assert!(out.requests.is_empty());
    // The host dropped it (its follow-up rounds ran out, the connection restarted).
    let again = testing::frames_at(&mut c, &[&live("BTCUSDT", 152)], t0 + 30_000_000);
    assert_eq!(asked(&again), asked(&first));
    let answer = HttpResponse::ok("backfill:BTCUSDT:101-149", &page(101..=149));
    let out = testing::responses(&mut c, &[answer.clone(), answer]);
    assert_clean(&out);
    assert_eq!(out.events.len(), 49);
    assert_eq!(cursor(&out), Some(json!({"BTCUSDT": 152})));
}

#[test]
fn unknown_responses_are_bad_input() {
    let mut c: BinanceTrades = testing::open_at(&config(""), Some(r#"{"BTCUSDT":100}"#));
    feed(&mut c, &[live("BTCUSDT", 150)]);
    let out = testing::responses(
        &mut c,
        &[
            HttpResponse::ok("head", "[]"),
            HttpResponse::ok("backfill:XRPUSDT:1-2", "[]"),
            // Never asked for: ignored, the page in flight is still awaited.
            HttpResponse::ok("backfill:BTCUSDT:1-2", &page(1..=2)),
        ],
    );
    assert_eq!(out.errors.len(), 2, "{:?}", out.errors);
    assert!(out.events.is_empty() && out.cursor.is_none());
    let out = answer(&mut c, "backfill:BTCUSDT:101-149", 101..=149);
    assert_eq!(cursor(&out), Some(json!({"BTCUSDT": 150})));
}

#[test]
fn no_backfill_when_it_is_off() {
    let mut c: BinanceTrades =
        testing::open_at(&config(r#","backfill":false"#), Some(r#"{"BTCUSDT":100}"#));
    let out = feed(&mut c, &lives("BTCUSDT", 150..=151));
    assert_clean(&out);
    assert!(out.requests.is_empty());
    assert_eq!(cursor(&out), Some(json!({"BTCUSDT": 151})));
    let out = feed(&mut c, &[live("BTCUSDT", 170)]);
    assert!(out.requests.is_empty());
    assert_eq!(cursor(&out), Some(json!({"BTCUSDT": 170})));
}

#[test]
fn a_reconnect_gap_is_backfilled_without_reopening() {
    let mut c: BinanceTrades = testing::open(&config(""));
    // First start: no history before the first live trade.
    let out = feed(&mut c, &lives("BTCUSDT", 1..=3));
    assert!(out.requests.is_empty());
    assert_eq!(cursor(&out), Some(json!({"BTCUSDT": 3})));
    // The connection dropped and came back: ids jump.
    let out = feed(&mut c, &lives("BTCUSDT", 10..=11));
    assert_eq!(ids(&out), [10, 11]);
    assert_eq!(out.cursor, None);
    assert_eq!(asked(&out), [asking("BTCUSDT", 4, 6)]);
    // Another drop while the page is in flight: a second gap, filled next.
    let out = feed(&mut c, &lives("BTCUSDT", 20..=21));
    assert!(out.requests.is_empty() && out.cursor.is_none());
    let out = answer(&mut c, "backfill:BTCUSDT:4-9", 4..=9);
    assert_eq!(ids(&out), [4, 5, 6, 7, 8, 9]);
    assert_eq!(cursor(&out), Some(json!({"BTCUSDT": 11})));
    assert_eq!(out.requests[0].url, historical("BTCUSDT", 12, 8));
    let out = answer(&mut c, "backfill:BTCUSDT:12-19", 12..=19);
    assert_eq!(cursor(&out), Some(json!({"BTCUSDT": 21})));
    assert!(out.requests.is_empty());
}

#[test]
fn an_invalid_cursor_does_not_fail_open() {
    for bad in [
        "",
        "not json",
        "123",
        "[1,2]",
        r#"{"BTCUSDT":"abc"}"#,
        r#"{"BTCUSDT":-5}"#,
    ] {
        let mut c: BinanceTrades = testing::open_at(&config(""), Some(bad));
        let out = feed(&mut c, &[live("BTCUSDT", 500)]);
        assert_clean(&out);
        assert!(out.requests.is_empty(), "{bad}");
        assert_eq!(cursor(&out), Some(json!({"BTCUSDT": 500})), "{bad}");
    }
    // Entries are read one by one: a good one counts, unknown symbols are dropped, keys are
    // matched whatever their case.
    let mut c: BinanceTrades = testing::open_at(
        &config(""),
        Some(r#"{"btcusdt":"7","ETHUSDT":null,"XRPUSDT":5}"#),
    );
    let out = feed(&mut c, &[live("BTCUSDT", 9), live("ETHUSDT", 40)]);
    assert_eq!(out.requests[0].tag, "backfill:BTCUSDT:8-8");
    assert_eq!(cursor(&out), Some(json!({"BTCUSDT": 7, "ETHUSDT": 40})));
}

#[test]
fn the_rest_url_is_derived_or_configured() {
    let rest = |config: &str| testing::open::<BinanceTrades>(config).rest_url;
    assert_eq!(
        rest(r#"{"symbols":["a"]}"#).as_deref(),
        Some("https://api.binance.com")
    );
    assert_eq!(
        rest(r#"{"symbols":["a"],"base_url":"wss://stream.binance.com:9443/"}"#).as_deref(),
        Some("https://api.binance.com")
    );
    assert_eq!(rest(&config("")).as_deref(), Some(REST));
    assert_eq!(
        rest(r#"{"symbols":["a"],"base_url":"wss://example.com:8443/x/"}"#).as_deref(),
        Some("https://example.com:8443/x")
    );
    assert_eq!(
        rest(&config(r#","rest_url":"https://api.example.com/""#)).as_deref(),
        Some("https://api.example.com")
    );
    assert_eq!(rest(&config(r#","backfill":false"#)), None);
    // Without backfill, a base_url with nothing to derive from is fine.
    assert_eq!(
        rest(r#"{"symbols":["a"],"base_url":"tcp://h","backfill":false}"#),
        None
    );
}

#[test]
fn the_manifest_describes_the_new_fields_and_its_example_opens() {
    let manifest = BinanceTrades::manifest();
    assert_eq!(manifest.name, "binance-trades");
    let schema: Value = serde_json::from_str(&manifest.config_schema).unwrap();
    assert_eq!(schema["additionalProperties"], false);
    assert_eq!(schema["properties"]["backfill"]["default"], true);
    assert_eq!(schema["properties"]["rest_url"]["type"], "string");
    assert!(manifest.description.contains("historicalTrades"));
    assert!(BinanceTrades::open(&manifest.config_example, None).is_ok());
}

#[test]
fn a_cursor_asks_for_the_trades_after_it_at_start() {
    let mut c: BinanceTrades = testing::open_at(&config(""), Some(r#"{"BTCUSDT":100}"#));
    let asked_at_start: Vec<(String, String)> =
        c.backfill().into_iter().map(|r| (r.url, r.tag)).collect();
    assert_eq!(
        asked_at_start,
        [asking("BTCUSDT", 101, 1000)],
        "only the symbol with a cursor entry is asked for"
    );
    // A full page: emitted in order, the cursor moves, the next page is asked for.
    let out = answer(&mut c, "backfill:BTCUSDT:101-1100", 101..=1100);
    assert_clean(&out);
    assert_eq!(ids(&out), (101..=1100).collect::<Vec<_>>());
    assert_eq!(cursor(&out), Some(json!({"BTCUSDT": 1100})));
    assert_eq!(asked(&out), [asking("BTCUSDT", 1101, 1000)]);
    // A short page: the venue's newest trade; nothing more is asked.
    let out = answer(&mut c, "backfill:BTCUSDT:1101-2100", 1101..=1150);
    assert_clean(&out);
    assert_eq!(ids(&out).len(), 50);
    assert_eq!(cursor(&out), Some(json!({"BTCUSDT": 1150})));
    assert!(out.requests.is_empty());
    let out = feed(&mut c, &[live("BTCUSDT", 1151)]);
    assert_eq!(cursor(&out), Some(json!({"BTCUSDT": 1151})));
    assert!(out.requests.is_empty());
}

#[test]
fn a_live_trade_during_the_start_backfill_waits_for_it_then_asks_for_the_rest() {
    let mut c: BinanceTrades = testing::open_at(&config(""), Some(r#"{"BTCUSDT":100}"#));
    assert_eq!(c.backfill().len(), 1);
    // No cursor without a backfill: nothing is asked for.
    let mut fresh: BinanceTrades = testing::open(&config(""));
    assert!(fresh.backfill().is_empty());
    let mut off: BinanceTrades =
        testing::open_at(&config(r#","backfill":false"#), Some(r#"{"BTCUSDT":100}"#));
    assert!(off.backfill().is_empty());

    let out = feed(&mut c, &[live("BTCUSDT", 1300)]);
    assert!(out.requests.is_empty(), "the start page is still in flight");
    assert_eq!(out.cursor, None);
    let out = answer(&mut c, "backfill:BTCUSDT:101-1100", 101..=1100);
    assert_clean(&out);
    assert_eq!(ids(&out).len(), 1000);
    assert_eq!(cursor(&out), Some(json!({"BTCUSDT": 1100})));
    assert_eq!(asked(&out), [asking("BTCUSDT", 1101, 199)]);
}
