//! Kraken spot best bid and ask over the WebSocket v2 API: the `ticker` channel becomes
//! `ticker` events.
//!
//! The connector subscribes on every connect. A ticker message carries a list of items (the
//! snapshot after subscribing, then updates), each becoming one event; one bad item is bad
//! input and the others still count. Kraken sends prices and quantities as JSON numbers:
//! their text is copied as is, so `0.10025` stays `"0.10025"` and never goes through a float.
//!
//! Heartbeats, status messages and successful method replies are expected and produce
//! nothing. A subscribe that Kraken refuses (`"success": false`, for instance an unknown pair)
//! is fatal: it will not succeed on retry, the configuration needs fixing.
//!
//! Kraken's ticker has no sequence number, so the upstream id is `<symbol>:<timestamp µs>`.

use std::borrow::Cow;
use std::collections::HashMap;

use anode_plugin_sdk::prelude::*;
use serde_json::value::RawValue;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_base_url")]
    base_url: String,
    symbols: Vec<String>,
}

fn default_base_url() -> String {
    "wss://ws.kraken.com/v2".to_owned()
}

/// Every Kraken v2 message this connector reads: channel data or a method reply.
#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    /// Items stay raw until decoded one by one, so one bad item spoils only itself.
    #[serde(borrow)]
    data: Option<Vec<&'a RawValue>>,
    #[serde(borrow)]
    method: Option<Cow<'a, str>>,
    success: Option<bool>,
    #[serde(borrow)]
    error: Option<Cow<'a, str>>,
    /// Kraken's v1 API names its messages by `event` (`systemStatus`, `heartbeat`, …).
    #[serde(borrow)]
    event: Option<Cow<'a, str>>,
}

/// The error for a frame of Kraken's WebSocket v1 API: this connector speaks v2.
fn v1_api(what: &str) -> PluginError {
    PluginError::fatal(format!(
        "{what}: this is Kraken's WebSocket v1 API, and kraken-ticker speaks v2; set base_url \
         to wss://ws.kraken.com/v2"
    ))
}

/// One item of a ticker message.
#[derive(Deserialize)]
struct Item<'a> {
    #[serde(borrow)]
    symbol: Cow<'a, str>,
    #[serde(borrow)]
    bid: &'a RawValue,
    #[serde(borrow)]
    bid_qty: &'a RawValue,
    #[serde(borrow)]
    ask: &'a RawValue,
    #[serde(borrow)]
    ask_qty: &'a RawValue,
    #[serde(borrow)]
    timestamp: Cow<'a, str>,
}

#[derive(Serialize)]
struct Ticker<'a> {
    exchange: &'static str,
    symbol: &'a str,
    bid_price: &'a str,
    bid_size: &'a str,
    ask_price: &'a str,
    ask_size: &'a str,
    event_timestamp: i64,
    atom_timestamp: i64,
}

/// The exact text of a number (or of a decimal string), or bad input naming the field.
fn exact_decimal<'a>(raw: &'a RawValue, name: &str) -> Result<Cow<'a, str>, PluginError> {
    let text = raw.get();
    let decimal: Option<Cow<'a, str>> = if text.starts_with('"') {
        serde_json::from_str::<String>(text)
            .ok()
            .and_then(|d| json::plain_decimal(&d).map(|p| Cow::Owned(p.into_owned())))
    } else {
        json::plain_decimal(text)
    };
    decimal.ok_or_else(|| PluginError::bad_input(format!("ticker item: `{name}` is not a number")))
}

/// The connector.
pub struct KrakenTicker {
    config: Config,
    /// `XBT/USD` → `BTC.USD`, so each item costs no symbol parsing.
    symbols: HashMap<String, String>,
}

impl KrakenTicker {
    fn normalised_symbol(&mut self, raw: &str) -> String {
        if let Some(s) = self.symbols.get(raw) {
            return s.clone();
        }
        let s = symbol::from_delimited(raw, '/').unwrap_or_else(|| raw.to_ascii_uppercase());
        self.symbols.insert(raw.to_owned(), s.clone());
        s
    }

    fn item(&mut self, raw: &RawValue, received_at: i64) -> Result<Event, PluginError> {
        let item: Item = serde_json::from_str(raw.get())
            .map_err(|e| PluginError::bad_input(format!("unexpected ticker item: {e}")))?;
        let bid_price = exact_decimal(item.bid, "bid")?;
        let bid_size = exact_decimal(item.bid_qty, "bid_qty")?;
        let ask_price = exact_decimal(item.ask, "ask")?;
        let ask_size = exact_decimal(item.ask_qty, "ask_qty")?;
        let time_us = time::parse_rfc3339_us(&item.timestamp)?;
        let symbol = self.normalised_symbol(&item.symbol);
        let payload = Ticker {
            exchange: "kraken",
            symbol: &symbol,
            bid_price: &bid_price,
            bid_size: &bid_size,
            ask_price: &ask_price,
            ask_size: &ask_size,
            event_timestamp: time_us.div_euclid(1000),
            atom_timestamp: received_at,
        };
        Ok(Event::new("ticker", &payload)
            .upstream_id(format!("{symbol}:{time_us}"))
            .at(time_us)
            .key(symbol))
    }

    /// A reply to a method call: only a refused subscribe matters.
    fn method_reply(method: &str, message: &Message) -> Result<(), PluginError> {
        if message.success != Some(false) {
            return Ok(());
        }
        let error = message.error.as_deref().unwrap_or("no reason given");
        if method == "subscribe" {
            Err(PluginError::fatal(format!(
                "kraken refused the ticker subscription: {error}"
            )))
        } else {
            Err(PluginError::bad_input(format!(
                "kraken refused `{method}`: {error}"
            )))
        }
    }
}

impl Connector for KrakenTicker {
    fn manifest() -> Manifest {
        Manifest::new(
            "kraken-ticker",
            env!("CARGO_PKG_VERSION"),
            "Kraken spot best bid and ask (WebSocket v2 ticker channel)",
        )
        .schema(json!({
            "type": "object",
            "required": ["symbols"],
            "additionalProperties": false,
            "properties": {
                "base_url": {"type": "string", "default": default_base_url()},
                "symbols": {
                    "type": "array",
                    "items": {"type": "string", "pattern": "^[A-Za-z0-9]+/[A-Za-z0-9]+$"},
                    "minItems": 1
                }
            }
        }))
        .example(json!({
            "base_url": "ws://127.0.0.1:9100/kraken/v2",
            "symbols": ["BTC/USD", "ETH/USD"]
        }))
    }

    fn open(config: &str, _cursor: Option<&str>) -> Result<Self, PluginError> {
        let config: Config = json::config(config)?;
        if config.symbols.is_empty() {
            return Err(PluginError::fatal("invalid config: `symbols` is empty"));
        }
        if let Some(bad) = config
            .symbols
            .iter()
            .find(|s| symbol::from_delimited(s, '/').is_none())
        {
            return Err(PluginError::fatal(format!(
                "invalid config: symbol `{bad}` is not of the form `BASE/QUOTE`"
            )));
        }
        Ok(KrakenTicker {
            config,
            symbols: HashMap::new(),
        })
    }

    fn plan(&self) -> Plan {
        let subscribe = json!({
            "method": "subscribe",
            "params": {"channel": "ticker", "symbol": self.config.symbols},
        });
        Plan::websocket(&self.config.base_url)
            .subscribe_json(&subscribe)
            .into()
    }

    fn on_frame(&mut self, frame: &Frame, out: &mut Output) -> Result<(), PluginError> {
        if frame.data.trim_ascii_start().starts_with(b"[") {
            return Err(v1_api("a channel message as an array"));
        }
        let message: Message = json::decode(&frame.data)?;
        if let Some(event) = message.event.as_deref() {
            return Err(v1_api(&format!("an `{event}` event")));
        }
        match (message.channel.as_deref(), message.method.as_deref()) {
            (Some("ticker"), _) => {
                match message.kind.as_deref() {
                    Some("snapshot" | "update") => {}
                    other => {
                        return Err(PluginError::bad_input(format!(
                            "ticker message of type {other:?}; expected snapshot or update"
                        )));
                    }
                }
                let items = message
                    .data
                    .as_ref()
                    .ok_or_else(|| PluginError::bad_input("ticker message without `data`"))?;
                for raw in items {
                    match self.item(raw, frame.received_at) {
                        Ok(event) => out.emit(event),
                        Err(error) => out.errors.push(error),
                    }
                }
                Ok(())
            }
            (Some("heartbeat" | "status"), _) => Ok(()),
            (Some(other), _) => Err(PluginError::bad_input(format!(
                "a message of the `{other}` channel: kraken-ticker reads the ticker channel only"
            ))),
            (None, Some(method)) => Self::method_reply(method, &message),
            (None, None) => Err(PluginError::bad_input(
                "message with neither `channel` nor `method`",
            )),
        }
    }
}

export_connector!(KrakenTicker);

#[cfg(test)]
mod conformance;

#[cfg(test)]
mod tests {
    use super::*;
    use anode_plugin_sdk::testing;

    const SNAPSHOT: &str = r#"{"channel":"ticker","type":"snapshot","data":[{"symbol":"ALGO/USD","bid":0.10025,"bid_qty":740.0,"ask":0.10036,"ask_qty":1361.44813783,"last":0.10035,"volume":997038.98383185,"vwap":0.10148,"low":0.09979,"high":0.10285,"change":-0.00017,"change_pct":-0.17,"timestamp":"2023-09-25T09:04:31.742648Z"}]}"#;
    const UPDATE: &str = r#"{"channel":"ticker","type":"update","data":[{"symbol":"XBT/USD","bid":26350.1,"bid_qty":0.00000001,"ask":26350.2,"ask_qty":12.123456789012345678,"last":26350.2,"volume":1000.5,"vwap":26300.0,"low":26000.0,"high":26500.0,"change":50.2,"change_pct":0.19,"timestamp":"2023-09-25T09:04:32.000001Z"},{"symbol":"ETH/USD","bid":1580.55,"bid_qty":3.5,"ask":1580.56,"ask_qty":2,"last":1580.56,"volume":5000.1,"vwap":1575.2,"low":1560.0,"high":1590.0,"change":-2.1,"change_pct":-0.13,"timestamp":"2023-09-25T09:04:32.100000Z"}]}"#;
    const HEARTBEAT: &str = r#"{"channel":"heartbeat"}"#;
    const STATUS: &str = r#"{"channel":"status","type":"update","data":[{"api_version":"v2","connection_id":12393906104898154338,"system":"online","version":"2.0.0"}]}"#;
    const SUBSCRIBED: &str = r#"{"method":"subscribe","result":{"channel":"ticker","event_trigger":"trades","snapshot":true,"symbol":"ALGO/USD"},"success":true,"time_in":"2023-09-25T09:04:31.742599Z","time_out":"2023-09-25T09:04:31.742648Z"}"#;

    fn open(config: &str) -> KrakenTicker {
        testing::open(config)
    }

    #[test]
    fn a_snapshot_item_is_a_ticker_event_with_exact_numbers() {
        let mut c = open(r#"{"symbols":["ALGO/USD"]}"#);
        let frame = Frame {
            data: SNAPSHOT.as_bytes().to_vec(),
            received_at: 1_695_632_671_800_000,
        };
        let out = testing::frame_batch(&mut c, &[frame]);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let event = &out.events[0];
        assert_eq!(event.stream, "ticker");
        assert_eq!(event.key.as_deref(), Some("ALGO.USD"));
        assert_eq!(
            event.upstream_id.as_deref(),
            Some("ALGO.USD:1695632671742648")
        );
        assert_eq!(event.event_time, Some(1_695_632_671_742_648));
        assert_eq!(
            testing::payloads(&out.events)[0],
            json!({
                "exchange": "kraken",
                "symbol": "ALGO.USD",
                "bid_price": "0.10025",
                "bid_size": "740.0",
                "ask_price": "0.10036",
                "ask_size": "1361.44813783",
                "event_timestamp": 1_695_632_671_742i64,
                "atom_timestamp": 1_695_632_671_800_000i64
            })
        );
    }

    #[test]
    fn every_item_of_an_update_is_an_event_and_xbt_is_btc() {
        let mut c = open(r#"{"symbols":["XBT/USD","ETH/USD"]}"#);
        let out = testing::frames(&mut c, &[UPDATE]);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(out.events.len(), 2);
        let p = testing::payloads(&out.events);
        assert_eq!(p[0]["symbol"], "BTC.USD");
        assert_eq!(out.events[0].key.as_deref(), Some("BTC.USD"));
        // Digits beyond what an f64 holds survive, and so do tiny quantities.
        assert_eq!(p[0]["bid_size"], "0.00000001");
        assert_eq!(p[0]["ask_size"], "12.123456789012345678");
        assert_eq!(p[1]["symbol"], "ETH.USD");
        assert_eq!(p[1]["ask_size"], "2");
        assert_eq!(p[1]["event_timestamp"], 1_695_632_672_100i64);
    }

    #[test]
    fn heartbeats_status_and_subscribe_acks_are_silent() {
        let mut c = open(r#"{"symbols":["ALGO/USD"]}"#);
        let pong = r#"{"method":"pong","req_id":3,"time_in":"2023-09-25T09:04:31.742599Z","time_out":"2023-09-25T09:04:31.742648Z"}"#;
        let out = testing::frames(&mut c, &[STATUS, SUBSCRIBED, HEARTBEAT, pong, SNAPSHOT]);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(out.events.len(), 1);
    }

    #[test]
    fn a_refused_subscribe_is_fatal_with_krakens_reason() {
        let mut c = open(r#"{"symbols":["XYZ/USD"]}"#);
        let refused = r#"{"error":"Currency pair not supported XYZ/USD","method":"subscribe","success":false,"symbol":"XYZ/USD","time_in":"2023-09-25T09:04:31.742599Z","time_out":"2023-09-25T09:04:31.742648Z"}"#;
        let out = testing::frames(&mut c, &[refused]);
        assert_eq!(
            out.errors,
            vec![PluginError::fatal(
                "kraken refused the ticker subscription: Currency pair not supported XYZ/USD"
            )]
        );
        let other = r#"{"method":"unsubscribe","success":false,"error":"not subscribed"}"#;
        let out = testing::frames(&mut c, &[other]);
        assert!(matches!(out.errors[..], [PluginError::BadInput(_)]));
    }

    #[test]
    fn a_bad_item_spoils_only_itself() {
        let mut c = open(r#"{"symbols":["XBT/USD","ETH/USD"]}"#);
        let one_bad = UPDATE.replace(r#""bid":26350.1"#, r#""bid":"cheap""#);
        let out = testing::frames(&mut c, &[&one_bad]);
        assert_eq!(out.events.len(), 1);
        assert_eq!(testing::payloads(&out.events)[0]["symbol"], "ETH.USD");
        assert!(matches!(out.errors[..], [PluginError::BadInput(_)]));
    }

    #[test]
    fn malformed_frames_are_bad_input_and_the_rest_still_counts() {
        let mut c = open(r#"{"symbols":["ALGO/USD"]}"#);
        let no_ask = SNAPSHOT.replace(r#""ask":0.10036,"#, "");
        let null_bid = SNAPSHOT.replace(r#""bid":0.10025"#, r#""bid":null"#);
        let bad_time = SNAPSHOT.replace("2023-09-25T09:04:31.742648Z", "now");
        let no_data = r#"{"channel":"ticker","type":"update"}"#;
        let bad_type = SNAPSHOT.replace(r#""type":"snapshot""#, r#""type":"delta""#);
        let out = testing::frames(
            &mut c,
            &[
                "{\"channel\":",
                "42",
                "{}",
                r#"{"channel":"book","type":"update","data":[]}"#,
                &no_ask,
                &null_bid,
                &bad_time,
                no_data,
                &bad_type,
                SNAPSHOT,
            ],
        );
        assert_eq!(out.events.len(), 1);
        assert_eq!(out.errors.len(), 9, "{:?}", out.errors);
        assert!(
            out.errors
                .iter()
                .all(|e| matches!(e, PluginError::BadInput(_))),
            "{:?}",
            out.errors
        );
    }

    #[test]
    fn plans_a_ticker_subscribe() {
        let Plan::WebSocket(ws) = open(r#"{"symbols":["BTC/USD","ETH/USD"]}"#).plan() else {
            panic!("expected a WebSocket plan");
        };
        assert_eq!(ws.url, "wss://ws.kraken.com/v2");
        let subscribe: Value = serde_json::from_str(&ws.on_connect[0]).unwrap();
        assert_eq!(
            subscribe,
            json!({"method":"subscribe","params":{"channel":"ticker","symbol":["BTC/USD","ETH/USD"]}})
        );
    }

    #[test]
    fn bad_config_is_fatal_and_says_why() {
        for config in [
            r#"{}"#,
            r#"{"symbols":[]}"#,
            r#"{"symbols":["BTCUSD"]}"#,
            r#"{"symbols":["BTC/USD"],"channel":"book"}"#,
            r#"{"symbols":[1]}"#,
        ] {
            match KrakenTicker::open(config, None) {
                Err(PluginError::Fatal(m)) => assert!(m.starts_with("invalid config"), "{m}"),
                Err(other) => panic!("{config}: {other}"),
                Ok(_) => panic!("{config} was accepted"),
            }
        }
    }

    #[test]
    fn the_manifest_example_opens() {
        let manifest = KrakenTicker::manifest();
        assert_eq!(manifest.name, "kraken-ticker");
        assert!(KrakenTicker::open(&manifest.config_example, None).is_ok());
    }
}
