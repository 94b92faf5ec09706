//! Binance spot trades: `<symbol>@trade` over raw (`/ws/...`) or combined
//! (`/stream?streams=...`) streams, or subscribed with the `SUBSCRIBE` method.

use std::borrow::Cow;
use std::collections::HashMap;

use anode_plugin_sdk::prelude::*;

/// How to reach the streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// One symbol at `/ws/<symbol>@trade`.
    Raw,
    /// All symbols at `/stream?streams=a@trade/b@trade`; messages wrapped in `{stream, data}`.
    #[default]
    Combined,
    /// Connect to `/ws` and send `{"method":"SUBSCRIBE",...}`.
    Subscribe,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_base_url")]
    base_url: String,
    symbols: Vec<String>,
    #[serde(default)]
    mode: Mode,
}

fn default_base_url() -> String {
    "wss://stream.binance.com:9443".to_owned()
}

/// One Binance message: a trade, a combined-stream wrapper around one, or a method reply.
#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    e: Option<Cow<'a, str>>,
    #[serde(borrow)]
    s: Option<Cow<'a, str>>,
    t: Option<u64>,
    #[serde(borrow)]
    p: Option<Cow<'a, str>>,
    #[serde(borrow)]
    q: Option<Cow<'a, str>>,
    #[serde(rename = "T")]
    trade_time: Option<i64>,
    m: Option<bool>,
    #[serde(borrow)]
    data: Option<Box<Message<'a>>>,
    id: Option<serde::de::IgnoredAny>,
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

/// The connector.
pub struct BinanceTrades {
    config: Config,
    /// `BTCUSDT` → `BTC.USDT`, so each trade costs no symbol parsing.
    symbols: HashMap<String, String>,
}

impl BinanceTrades {
    fn normalised_symbol(&mut self, raw: &str) -> String {
        if let Some(s) = self.symbols.get(raw) {
            return s.clone();
        }
        let s = symbol::from_concatenated(raw).unwrap_or_else(|| raw.to_ascii_uppercase());
        self.symbols.insert(raw.to_owned(), s.clone());
        s
    }

    fn stream_names(&self) -> Vec<String> {
        self.config
            .symbols
            .iter()
            .map(|s| format!("{}@trade", s.to_ascii_lowercase()))
            .collect()
    }
}

impl Connector for BinanceTrades {
    fn manifest() -> Manifest {
        Manifest::new(
            "binance-trades",
            env!("CARGO_PKG_VERSION"),
            "Binance spot trades (<symbol>@trade) over WebSocket, raw, combined or SUBSCRIBE",
        )
        .schema(json!({
            "type": "object",
            "required": ["symbols"],
            "properties": {
                "base_url": {"type": "string", "default": default_base_url()},
                "symbols": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "mode": {"enum": ["raw", "combined", "subscribe"], "default": "combined"}
            }
        }))
        .example(
            json!({"base_url": "ws://127.0.0.1:9100/binance", "symbols": ["btcusdt", "ethusdt"]}),
        )
    }

    fn open(config: &str, _cursor: Option<&str>) -> Result<Self, PluginError> {
        let config: Config = json::config(config)?;
        if config.symbols.is_empty() {
            return Err(PluginError::fatal("invalid config: `symbols` is empty"));
        }
        if config.mode == Mode::Raw && config.symbols.len() != 1 {
            return Err(PluginError::fatal(
                "invalid config: mode `raw` takes exactly one symbol; use `combined` for more",
            ));
        }
        Ok(BinanceTrades {
            config,
            symbols: HashMap::new(),
        })
    }

    fn plan(&self) -> Plan {
        let base = self.config.base_url.trim_end_matches('/');
        let streams = self.stream_names();
        match self.config.mode {
            Mode::Raw => Plan::websocket(format!("{base}/ws/{}", streams[0])),
            Mode::Combined => {
                Plan::websocket(format!("{base}/stream?streams={}", streams.join("/")))
            }
            Mode::Subscribe => {
                let subscribe = json!({"method": "SUBSCRIBE", "params": streams, "id": 1});
                match Plan::websocket(format!("{base}/ws")) {
                    Plan::WebSocket(ws) => {
                        Plan::WebSocket(ws.send_on_connect(subscribe.to_string()))
                    }
                    other => other,
                }
            }
        }
    }

    fn on_frame(&mut self, frame: &Frame, out: &mut Output) -> Result<(), PluginError> {
        let message: Message = json::decode(&frame.data)?;
        let trade = match message.data {
            Some(inner) => *inner,
            // `{"result":null,"id":1}`: the reply to SUBSCRIBE.
            None if message.id.is_some() => return Ok(()),
            None => message,
        };
        if trade.e.as_deref() != Some("trade") {
            return Err(PluginError::bad_input("not a trade message"));
        }
        let missing = |field| PluginError::bad_input(format!("trade without `{field}`"));
        let raw_symbol = trade.s.ok_or_else(|| missing("s"))?;
        let price = trade.p.ok_or_else(|| missing("p"))?;
        let size = trade.q.ok_or_else(|| missing("q"))?;
        let trade_id = trade.t.ok_or_else(|| missing("t"))?;
        let trade_time = trade.trade_time.ok_or_else(|| missing("T"))?;
        let buyer_is_maker = trade.m.ok_or_else(|| missing("m"))?;
        if !json::is_decimal(&price) || !json::is_decimal(&size) {
            return Err(PluginError::bad_input(
                "trade price or size is not a decimal",
            ));
        }
        let symbol = self.normalised_symbol(&raw_symbol);
        let payload = Trade {
            exchange: "binance",
            symbol: &symbol,
            price: &price,
            size: &size,
            // The buyer made the market, so the taker sold.
            taker_side: if buyer_is_maker { "sell" } else { "buy" },
            trade_id,
            event_timestamp: trade_time,
            atom_timestamp: frame.received_at,
        };
        let event = Event::new("trades", &payload)
            // Trade ids are per symbol, and a combined source carries several symbols.
            .upstream_id(format!("{symbol}:{trade_id}"))
            .at(time::ms_to_us(trade_time))
            .key(symbol);
        out.emit(event);
        Ok(())
    }
}

export_connector!(BinanceTrades);

#[cfg(test)]
mod tests {
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
        ] {
            match BinanceTrades::open(config, None) {
                Err(PluginError::Fatal(m)) => assert!(m.starts_with("invalid config"), "{m}"),
                Err(other) => panic!("{config}: {other}"),
                Ok(_) => panic!("{config} was accepted"),
            }
        }
    }
}
