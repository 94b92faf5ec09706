//! Coinbase Exchange over WebSocket: the `matches` channel becomes `trades` events, the
//! `ticker` channel `ticker` events.
//!
//! The connector subscribes on every connect with one message naming the products and
//! channels. Messages it understands:
//!
//! - `match` / `last_match` → a `trades` event. Coinbase's `side` is the maker's side, so the
//!   taker took the other one.
//! - `ticker` → a `ticker` event (best bid and ask with their sizes).
//! - `subscriptions` (the reply to the subscribe) and `heartbeat` → nothing, they are expected.
//! - `error` → a retryable error carrying Coinbase's message, so the host reconnects and
//!   subscribes again with backoff.
//!
//! Anything else is bad input. Coinbase numbers trades and sequences per product, so upstream
//! ids are `<symbol>:<trade_id>` for trades and `<symbol>:<sequence>` for tickers: one source
//! with several products never gives two records the same id.

use std::borrow::Cow;
use std::collections::HashMap;

use anode_plugin_sdk::prelude::*;

/// A Coinbase channel this connector can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
enum Channel {
    Matches,
    Ticker,
    Heartbeat,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_base_url")]
    base_url: String,
    product_ids: Vec<String>,
    #[serde(default = "default_channels")]
    channels: Vec<Channel>,
}

fn default_base_url() -> String {
    "wss://ws-feed.exchange.coinbase.com".to_owned()
}

fn default_channels() -> Vec<Channel> {
    vec![Channel::Matches, Channel::Ticker, Channel::Heartbeat]
}

/// Every Coinbase message this connector reads, as one flat shape: which fields are present
/// depends on `type`.
#[derive(Deserialize)]
struct Message<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    product_id: Option<Cow<'a, str>>,
    trade_id: Option<u64>,
    sequence: Option<u64>,
    #[serde(borrow)]
    time: Option<Cow<'a, str>>,
    #[serde(borrow)]
    price: Option<Cow<'a, str>>,
    #[serde(borrow)]
    size: Option<Cow<'a, str>>,
    #[serde(borrow)]
    side: Option<Cow<'a, str>>,
    #[serde(borrow)]
    best_bid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    best_bid_size: Option<Cow<'a, str>>,
    #[serde(borrow)]
    best_ask: Option<Cow<'a, str>>,
    #[serde(borrow)]
    best_ask_size: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reason: Option<Cow<'a, str>>,
}

#[derive(Serialize)]
struct Trade<'a> {
    exchange: &'static str,
    symbol: &'a str,
    price: &'a str,
    size: &'a str,
    taker_side: &'static str,
    trade_id: u64,
    event_timestamp: i64,
    atom_timestamp: i64,
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

const EXCHANGE: &str = "coinbase";

/// A required field of a message, or bad input naming it.
fn required<'m, T>(field: &'m Option<T>, kind: &str, name: &str) -> Result<&'m T, PluginError> {
    field
        .as_ref()
        .ok_or_else(|| PluginError::bad_input(format!("`{kind}` message without `{name}`")))
}

/// A required decimal-as-text field.
fn decimal<'m>(
    field: &'m Option<Cow<'_, str>>,
    kind: &str,
    name: &str,
) -> Result<&'m str, PluginError> {
    let text = required(field, kind, name)?;
    if json::is_decimal(text) {
        Ok(text)
    } else {
        Err(PluginError::bad_input(format!(
            "`{kind}` message: `{name}` is not a decimal"
        )))
    }
}

/// The connector.
pub struct Coinbase {
    config: Config,
    /// `BTC-USD` → `BTC.USD`, so each message costs no symbol parsing.
    symbols: HashMap<String, String>,
}

impl Coinbase {
    fn normalised_symbol(&mut self, product: &str) -> String {
        if let Some(s) = self.symbols.get(product) {
            return s.clone();
        }
        let s =
            symbol::from_delimited(product, '-').unwrap_or_else(|| product.to_ascii_uppercase());
        self.symbols.insert(product.to_owned(), s.clone());
        s
    }

    /// `time` in microseconds and in milliseconds.
    fn times(message: &Message, kind: &str) -> Result<(i64, i64), PluginError> {
        let us = time::parse_rfc3339_us(required(&message.time, kind, "time")?)?;
        Ok((us, us.div_euclid(1000)))
    }

    fn trade(&mut self, m: &Message, kind: &str, received_at: i64) -> Result<Event, PluginError> {
        let product = required(&m.product_id, kind, "product_id")?;
        let trade_id = *required(&m.trade_id, kind, "trade_id")?;
        let price = decimal(&m.price, kind, "price")?;
        let size = decimal(&m.size, kind, "size")?;
        // `side` is the maker's order side: the taker did the opposite.
        let taker_side = match required(&m.side, kind, "side")?.as_ref() {
            "buy" => "sell",
            "sell" => "buy",
            other => {
                return Err(PluginError::bad_input(format!(
                    "`{kind}` message: side `{other}` is neither buy nor sell"
                )));
            }
        };
        let (time_us, time_ms) = Self::times(m, kind)?;
        let symbol = self.normalised_symbol(product);
        let payload = Trade {
            exchange: EXCHANGE,
            symbol: &symbol,
            price,
            size,
            taker_side,
            trade_id,
            event_timestamp: time_ms,
            atom_timestamp: received_at,
        };
        Ok(Event::new("trades", &payload)
            .upstream_id(format!("{symbol}:{trade_id}"))
            .at(time_us)
            .key(symbol))
    }

    fn ticker(&mut self, m: &Message, received_at: i64) -> Result<Event, PluginError> {
        let kind = "ticker";
        let product = required(&m.product_id, kind, "product_id")?;
        let sequence = *required(&m.sequence, kind, "sequence")?;
        let bid_price = decimal(&m.best_bid, kind, "best_bid")?;
        let bid_size = decimal(&m.best_bid_size, kind, "best_bid_size")?;
        let ask_price = decimal(&m.best_ask, kind, "best_ask")?;
        let ask_size = decimal(&m.best_ask_size, kind, "best_ask_size")?;
        let (time_us, time_ms) = Self::times(m, kind)?;
        let symbol = self.normalised_symbol(product);
        let payload = Ticker {
            exchange: EXCHANGE,
            symbol: &symbol,
            bid_price,
            bid_size,
            ask_price,
            ask_size,
            event_timestamp: time_ms,
            atom_timestamp: received_at,
        };
        Ok(Event::new("ticker", &payload)
            .upstream_id(format!("{symbol}:{sequence}"))
            .at(time_us)
            .key(symbol))
    }
}

impl Connector for Coinbase {
    fn manifest() -> Manifest {
        Manifest::new(
            "coinbase",
            env!("CARGO_PKG_VERSION"),
            "Coinbase Exchange trades (matches channel) and best bid/ask (ticker channel) \
             over WebSocket",
        )
        .schema(json!({
            "type": "object",
            "required": ["product_ids"],
            "additionalProperties": false,
            "properties": {
                "base_url": {"type": "string", "default": default_base_url()},
                "product_ids": {
                    "type": "array",
                    "items": {"type": "string", "pattern": "^[A-Za-z0-9]+-[A-Za-z0-9]+$"},
                    "minItems": 1
                },
                "channels": {
                    "type": "array",
                    "items": {"enum": ["matches", "ticker", "heartbeat"]},
                    "minItems": 1,
                    "default": ["matches", "ticker", "heartbeat"]
                }
            }
        }))
        .example(json!({
            "base_url": "ws://127.0.0.1:9100/coinbase",
            "product_ids": ["BTC-USD", "ETH-USD"],
            "channels": ["matches", "ticker", "heartbeat"]
        }))
    }

    fn open(config: &str, _cursor: Option<&str>) -> Result<Self, PluginError> {
        let config: Config = json::config(config)?;
        if config.product_ids.is_empty() {
            return Err(PluginError::fatal("invalid config: `product_ids` is empty"));
        }
        if let Some(bad) = config
            .product_ids
            .iter()
            .find(|p| symbol::from_delimited(p, '-').is_none())
        {
            return Err(PluginError::fatal(format!(
                "invalid config: product id `{bad}` is not of the form `BASE-QUOTE`"
            )));
        }
        if config.channels.is_empty() {
            return Err(PluginError::fatal(
                "invalid config: `channels` is empty; name at least one of matches, ticker, heartbeat",
            ));
        }
        Ok(Coinbase {
            config,
            symbols: HashMap::new(),
        })
    }

    fn plan(&self) -> Plan {
        let subscribe = json!({
            "type": "subscribe",
            "product_ids": self.config.product_ids,
            "channels": self.config.channels,
        });
        match Plan::websocket(&self.config.base_url) {
            Plan::WebSocket(ws) => Plan::WebSocket(ws.send_on_connect(subscribe.to_string())),
            other => other,
        }
    }

    fn on_frame(&mut self, frame: &Frame, out: &mut Output) -> Result<(), PluginError> {
        let message: Message = json::decode(&frame.data)?;
        let kind = message
            .kind
            .as_deref()
            .ok_or_else(|| PluginError::bad_input("message without `type`"))?;
        match kind {
            "match" | "last_match" => out.emit(self.trade(&message, kind, frame.received_at)?),
            "ticker" => out.emit(self.ticker(&message, frame.received_at)?),
            "subscriptions" | "heartbeat" => {}
            "error" => {
                let text = message.message.as_deref().unwrap_or("no message");
                return Err(PluginError::retryable(match message.reason.as_deref() {
                    Some(reason) => format!("coinbase error: {text}: {reason}"),
                    None => format!("coinbase error: {text}"),
                }));
            }
            other => {
                return Err(PluginError::bad_input(format!(
                    "unexpected message type `{other}`"
                )));
            }
        }
        Ok(())
    }
}

export_connector!(Coinbase);

#[cfg(test)]
mod tests {
    use super::*;
    use anode_plugin_sdk::testing;

    const MATCH: &str = r#"{"type":"match","trade_id":10,"sequence":50,"maker_order_id":"ac928c66-ca53-498f-9c13-a110027a60e8","taker_order_id":"132fb6ae-456b-4654-b4e0-d681ac05cea1","time":"2014-11-07T08:19:27.028459Z","product_id":"BTC-USD","size":"5.23512","price":"400.23","side":"sell"}"#;
    const TICKER: &str = r#"{"type":"ticker","sequence":37475248783,"product_id":"ETH-USD","price":"1285.22","open_24h":"1310.79","volume_24h":"245532.79269678","low_24h":"1280.52","high_24h":"1313.8","volume_30d":"9788783.60117027","best_bid":"1285.04","best_bid_size":"0.46688654","best_ask":"1285.27","best_ask_size":"1.56637040","side":"buy","time":"2022-10-19T23:28:22.061769Z","trade_id":370843401,"last_size":"11.4396987"}"#;
    const HEARTBEAT: &str = r#"{"type":"heartbeat","sequence":90,"last_trade_id":20,"product_id":"BTC-USD","time":"2014-11-07T08:19:28.464459Z"}"#;
    const SUBSCRIPTIONS: &str = r#"{"type":"subscriptions","channels":[{"name":"matches","product_ids":["BTC-USD"]},{"name":"heartbeat","product_ids":["BTC-USD"]}]}"#;

    fn open(config: &str) -> Coinbase {
        testing::open(config)
    }

    #[test]
    fn a_match_is_a_trade_with_the_takers_side() {
        let mut c = open(r#"{"product_ids":["BTC-USD"]}"#);
        let received = Frame {
            data: MATCH.as_bytes().to_vec(),
            received_at: 1_415_348_367_500_000,
        };
        let buy_maker = MATCH.replace(r#""side":"sell""#, r#""side":"buy""#);
        let last = MATCH.replace(r#""type":"match""#, r#""type":"last_match""#);
        let out = testing::frame_batch(
            &mut c,
            &[received, Frame::text(&buy_maker), Frame::text(&last)],
        );
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(out.events.len(), 3);
        let event = &out.events[0];
        assert_eq!(event.stream, "trades");
        assert_eq!(event.key.as_deref(), Some("BTC.USD"));
        assert_eq!(event.upstream_id.as_deref(), Some("BTC.USD:10"));
        assert_eq!(event.event_time, Some(1_415_348_367_028_459));
        let payloads = testing::payloads(&out.events);
        assert_eq!(
            payloads[0],
            json!({
                "exchange": "coinbase",
                "symbol": "BTC.USD",
                "price": "400.23",
                "size": "5.23512",
                "taker_side": "buy",
                "trade_id": 10,
                "event_timestamp": 1_415_348_367_028i64,
                "atom_timestamp": 1_415_348_367_500_000i64
            })
        );
        assert_eq!(payloads[1]["taker_side"], "sell");
        assert_eq!(payloads[2]["trade_id"], 10);
    }

    #[test]
    fn a_ticker_is_best_bid_and_ask() {
        let mut c = open(r#"{"product_ids":["ETH-USD"],"channels":["ticker"]}"#);
        let out = testing::frames(&mut c, &[TICKER]);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let event = &out.events[0];
        assert_eq!(event.stream, "ticker");
        assert_eq!(event.key.as_deref(), Some("ETH.USD"));
        assert_eq!(event.upstream_id.as_deref(), Some("ETH.USD:37475248783"));
        assert_eq!(event.event_time, Some(1_666_222_102_061_769));
        let p = &testing::payloads(&out.events)[0];
        assert_eq!(p["exchange"], "coinbase");
        assert_eq!(p["symbol"], "ETH.USD");
        assert_eq!(p["bid_price"], "1285.04");
        assert_eq!(p["bid_size"], "0.46688654");
        assert_eq!(p["ask_price"], "1285.27");
        assert_eq!(p["ask_size"], "1.56637040");
        assert_eq!(p["event_timestamp"], 1_666_222_102_061i64);
        assert!(p["atom_timestamp"].is_i64());
    }

    #[test]
    fn subscriptions_and_heartbeats_are_expected_and_silent() {
        let mut c = open(r#"{"product_ids":["BTC-USD"]}"#);
        let out = testing::frames(&mut c, &[SUBSCRIPTIONS, HEARTBEAT, MATCH]);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(out.events.len(), 1);
    }

    #[test]
    fn a_venue_error_is_retryable_with_its_message() {
        let mut c = open(r#"{"product_ids":["BTC-USD"]}"#);
        let out = testing::frames(
            &mut c,
            &[
                r#"{"type":"error","message":"Failed to subscribe","reason":"FOO-BAR is not a valid product"}"#,
                r#"{"type":"error"}"#,
            ],
        );
        assert_eq!(
            out.errors,
            vec![
                PluginError::retryable(
                    "coinbase error: Failed to subscribe: FOO-BAR is not a valid product"
                ),
                PluginError::retryable("coinbase error: no message"),
            ]
        );
    }

    #[test]
    fn malformed_frames_are_bad_input_and_the_rest_still_counts() {
        let mut c = open(r#"{"product_ids":["BTC-USD"]}"#);
        let no_price = MATCH.replace(r#""price":"400.23","#, "");
        let bad_size = MATCH.replace(r#""size":"5.23512""#, r#""size":"lots""#);
        let bad_side = MATCH.replace(r#""side":"sell""#, r#""side":"up""#);
        let bad_time = MATCH.replace("2014-11-07T08:19:27.028459Z", "yesterday");
        let string_id = MATCH.replace(r#""trade_id":10"#, r#""trade_id":{}"#);
        let ticker_no_bid = TICKER.replace(r#""best_bid":"1285.04","#, "");
        let out = testing::frames(
            &mut c,
            &[
                "{\"type\":\"match\",",
                "[]",
                "{}",
                r#"{"type":"l2update"}"#,
                &no_price,
                &bad_size,
                &bad_side,
                &bad_time,
                &string_id,
                &ticker_no_bid,
                MATCH,
            ],
        );
        assert_eq!(out.events.len(), 1);
        assert_eq!(out.errors.len(), 10, "{:?}", out.errors);
        assert!(
            out.errors
                .iter()
                .all(|e| matches!(e, PluginError::BadInput(_))),
            "{:?}",
            out.errors
        );
    }

    #[test]
    fn plans_a_subscribe_for_the_configured_channels() {
        let ws = |config: &str| match open(config).plan() {
            Plan::WebSocket(ws) => ws,
            other => panic!("expected a WebSocket plan, got {other:?}"),
        };
        let all = ws(r#"{"product_ids":["BTC-USD","ETH-USD"]}"#);
        assert_eq!(all.url, "wss://ws-feed.exchange.coinbase.com");
        assert_eq!(all.on_connect.len(), 1);
        let subscribe: Value = serde_json::from_str(&all.on_connect[0]).unwrap();
        assert_eq!(
            subscribe,
            json!({
                "type": "subscribe",
                "product_ids": ["BTC-USD", "ETH-USD"],
                "channels": ["matches", "ticker", "heartbeat"]
            })
        );
        let some = ws(
            r#"{"base_url":"ws://127.0.0.1:1/cb","product_ids":["BTC-USD"],"channels":["matches"]}"#,
        );
        assert_eq!(some.url, "ws://127.0.0.1:1/cb");
        let subscribe: Value = serde_json::from_str(&some.on_connect[0]).unwrap();
        assert_eq!(subscribe["channels"], json!(["matches"]));
    }

    #[test]
    fn bad_config_is_fatal_and_says_why() {
        for config in [
            r#"{}"#,
            r#"{"product_ids":[]}"#,
            r#"{"product_ids":["BTCUSD"]}"#,
            r#"{"product_ids":["BTC-USD"],"channels":[]}"#,
            r#"{"product_ids":["BTC-USD"],"channels":["level2"]}"#,
            r#"{"product_ids":["BTC-USD"],"bogus":1}"#,
            r#"{"product_ids":"BTC-USD"}"#,
            "[",
        ] {
            match Coinbase::open(config, None) {
                Err(PluginError::Fatal(m)) => assert!(m.starts_with("invalid config"), "{m}"),
                Err(other) => panic!("{config}: {other}"),
                Ok(_) => panic!("{config} was accepted"),
            }
        }
    }

    #[test]
    fn the_manifest_example_opens() {
        let manifest = Coinbase::manifest();
        assert_eq!(manifest.name, "coinbase");
        assert!(Coinbase::open(&manifest.config_example, None).is_ok());
        let schema: Value = serde_json::from_str(&manifest.config_schema).unwrap();
        assert_eq!(schema["required"], json!(["product_ids"]));
    }
}
