//! Conformance to frames Kraken really sent (the corpus in `shared/realframes`, see its
//! `SOURCES.md`), frame by frame: the v2 `status`, subscribe acknowledgement, ticker
//! `snapshot` and `heartbeat` are understood and the ticker is the one it says; frames of the
//! v2 `book`, `trade` and `ohlc` channels are named as channels this connector does not read;
//! and every frame of the v1 API stops the source saying it is the v1 API.

use anode_plugin_sdk::testing;
use serde_json::Value;

use super::*;

fn connector() -> KrakenTicker {
    testing::open(r#"{"symbols":["BTC/USD"]}"#)
}

#[test]
fn every_recorded_v2_ticker_frame_is_understood() {
    let Some(frames) = testing::real_frames("kraken_v2_ws_ticker.jsonl") else {
        return;
    };
    assert_eq!(frames.len(), 4, "the corpus as SOURCES.md lists it");
    let mut c = connector();
    let mut tickers = 0;
    for (n, frame) in frames.iter().enumerate() {
        let out = testing::frames(&mut c, &[frame]);
        assert!(out.errors.is_empty(), "line {}: {:?}", n + 1, out.errors);
        let sent: Value = serde_json::from_str(frame).unwrap();
        if sent["channel"] != "ticker" {
            assert!(out.events.is_empty(), "line {}", n + 1);
            continue;
        }
        let item = &sent["data"][0];
        let p = &testing::payloads(&out.events)[0];
        assert_eq!(p["symbol"], "BTC.USD");
        // The numbers as sent, digit for digit, as decimal strings.
        assert_eq!(p["bid_price"], "71770.3");
        assert_eq!(p["bid_size"], "0.03155564");
        assert_eq!(p["ask_price"], "71770.4");
        assert_eq!(p["ask_size"], "1.72978253");
        assert_eq!(item["bid"].to_string(), "71770.3");
        assert_eq!(
            out.events[0].event_time,
            Some(time::parse_rfc3339_us(item["timestamp"].as_str().unwrap()).unwrap())
        );
        tickers += 1;
    }
    assert_eq!(tickers, 1);
}

#[test]
fn other_v2_channels_are_named_as_not_read() {
    let Some(frames) = testing::real_frames("kraken_v2_ws_other_channels.jsonl") else {
        return;
    };
    let mut c = connector();
    for frame in &frames {
        let channel = serde_json::from_str::<Value>(frame).unwrap()["channel"]
            .as_str()
            .unwrap()
            .to_owned();
        let out = testing::frames(&mut c, &[frame]);
        match &out.errors[..] {
            [PluginError::BadInput(m)] => {
                assert!(m.contains(&format!("`{channel}` channel")), "{m}")
            }
            other => panic!("{channel}: {other:?}"),
        }
    }
}

#[test]
fn every_v1_frame_says_it_is_the_v1_api() {
    let mut frames = Vec::new();
    for file in [
        "kraken_v1_ws_ticker.jsonl",
        "kraken_v1_ws_trade.jsonl",
        "kraken_v1_ws_extra.jsonl",
    ] {
        let Some(more) = testing::real_frames(file) else {
            return;
        };
        frames.extend(more);
    }
    assert_eq!(frames.len(), 60 + 49 + 2);
    for frame in &frames {
        let out = testing::frames(&mut connector(), &[frame]);
        match &out.errors[..] {
            [PluginError::Fatal(m)] => {
                assert!(
                    m.contains("v1 API") && m.contains("wss://ws.kraken.com/v2"),
                    "{m}"
                )
            }
            other => panic!("{frame}: {other:?}"),
        }
    }
}

#[test]
fn a_quantity_in_exponent_form_is_a_plain_decimal() {
    let frame = r#"{"channel":"ticker","type":"update","data":[{"symbol":"BTC/USD","bid":71770.3,"bid_qty":5.1e-05,"ask":7.17704E4,"ask_qty":"1.5e-3","last":71770.4,"volume":1,"vwap":1,"low":1,"high":1,"change":0,"change_pct":0,"timestamp":"2026-03-15T11:25:19.200068Z"}]}"#;
    let out = testing::frames(&mut connector(), &[frame]);
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let p = &testing::payloads(&out.events)[0];
    assert_eq!(p["bid_size"], "0.000051");
    assert_eq!(p["ask_price"], "71770.4");
    assert_eq!(p["ask_size"], "0.0015");
}
