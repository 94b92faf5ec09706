//! Binance spot trade streams over WebSocket: raw (`/ws/<symbol>@trade`), combined
//! (`/stream?streams=a/b`) and live `SUBSCRIBE`/`UNSUBSCRIBE` on an open connection.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State, WebSocketUpgrade};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::clock::wall_now_ms;
use crate::content::{Instrument, decimal};
use crate::sim::Sim;
use crate::streams::Kind;
use crate::ws::{self, CLOSE_POLICY, Protocol, Reply, Subscription};

/// Venue name in stream names and reports.
pub(crate) const VENUE: &str = "binance";
/// The only stream type served.
const TRADE_SUFFIX: &str = "@trade";
/// Longest accepted symbol.
const MAX_SYMBOL_LEN: usize = 20;
/// Quote assets recognised at the end of a symbol, longest first.
const QUOTES: [&str; 10] = [
    "FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USD", "EUR", "BTC", "ETH", "BNB",
];

/// Checks a symbol (any case) and returns it uppercase.
pub(crate) fn parse_symbol(symbol: &str) -> Result<String, String> {
    let ok = !symbol.is_empty()
        && symbol.len() <= MAX_SYMBOL_LEN
        && symbol.bytes().all(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(symbol.to_ascii_uppercase())
    } else {
        Err(format!(
            "invalid symbol '{symbol}': expected 1 to {MAX_SYMBOL_LEN} letters or digits"
        ))
    }
}

/// The instrument behind a symbol; WebSocket and REST share it, so a trade id means one trade.
pub(crate) fn instrument(seed: u64, symbol: &str) -> Instrument {
    let (base, quote) = QUOTES
        .iter()
        .find(|q| symbol.len() > q.len() && symbol.ends_with(*q))
        .map(|q| (&symbol[..symbol.len() - q.len()], *q))
        .unwrap_or((symbol, "USDT"));
    Instrument::new(seed, format!("{VENUE}:{symbol}"), base, quote)
}

/// Name of a symbol's trade stream in reports (`binance/btcusdt@trade`). REST backfills record
/// under it too, so the report tells which trades of the stream reached a client by any route.
pub(crate) fn trade_stream_name(symbol: &str) -> String {
    format!("{VENUE}/{}{TRADE_SUFFIX}", symbol.to_ascii_lowercase())
}

/// Trade time (ms) of trade `n`: when it became due, so WebSocket `T` and REST `time` agree.
pub(crate) fn trade_time_ms(sim: &Sim, n: u64) -> u64 {
    sim.event_wall_us(n) / 1_000
}

/// Binance's trade message for trade `n`, fields in the venue's order: `E` is when the message
/// was sent, `T` when the trade happened.
fn trade_message(sim: &Sim, output: &Output, n: u64) -> String {
    let t = output.instrument.trade(sim.seed(), n);
    format!(
        r#"{{"e":"trade","E":{},"s":"{}","t":{},"p":"{}","q":"{}","T":{},"m":{},"M":true}}"#,
        wall_now_ms(),
        output.symbol,
        t.id,
        decimal(t.price),
        decimal(t.qty),
        trade_time_ms(sim, n),
        t.buyer_maker
    )
}

/// `GET /binance/ws/<symbol>@trade`
pub(crate) async fn raw(
    State(sim): State<Arc<Sim>>,
    Path(stream): Path<String>,
    ws: WebSocketUpgrade,
) -> Response {
    ws::upgrade(
        ws,
        sim,
        Binance {
            combined: false,
            initial: vec![stream],
        },
    )
}

/// `GET /binance/stream?streams=<a>@trade/<b>@trade`
pub(crate) async fn combined(
    State(sim): State<Arc<Sim>>,
    Query(query): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    let initial = query
        .get("streams")
        .map(|s| {
            s.split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    ws::upgrade(
        ws,
        sim,
        Binance {
            combined: true,
            initial,
        },
    )
}

/// `GET /binance/ws`: streams come from `SUBSCRIBE` messages.
pub(crate) async fn live(State(sim): State<Arc<Sim>>, ws: WebSocketUpgrade) -> Response {
    ws::upgrade(
        ws,
        sim,
        Binance {
            combined: false,
            initial: Vec::new(),
        },
    )
}

/// A Binance connection; `combined` wraps every message as `{"stream":…,"data":…}`.
struct Binance {
    combined: bool,
    /// Streams named in the URL, subscribed on open.
    initial: Vec<String>,
}

/// One trade stream on a connection.
pub(crate) struct Output {
    /// Stream name as the client wrote it, lowercased (`btcusdt@trade`).
    name: String,
    symbol: String,
    instrument: Instrument,
}

#[derive(Deserialize)]
struct Request {
    method: String,
    #[serde(default)]
    params: Vec<String>,
    #[serde(default)]
    id: Value,
}

fn error(code: i64, msg: &str, id: Option<&Value>) -> String {
    match id {
        Some(id) => json!({"error": {"code": code, "msg": msg}, "id": id}),
        None => json!({"error": {"code": code, "msg": msg}}),
    }
    .to_string()
}

impl Binance {
    /// Subscriptions for stream names, all or nothing.
    fn subscriptions(
        &self,
        names: &[String],
        sim: &Sim,
    ) -> Result<Vec<Subscription<Output>>, String> {
        names
            .iter()
            .map(|raw| {
                let name = raw.to_ascii_lowercase();
                let symbol = name
                    .strip_suffix(TRADE_SUFFIX)
                    .ok_or_else(|| {
                        format!("unknown stream '{raw}': the simulator serves <symbol>@trade")
                    })
                    .and_then(parse_symbol)?;
                let stream = sim
                    .streams
                    .get(&trade_stream_name(&symbol), VENUE, Kind::Trades)
                    .map_err(|e| e.to_string())?;
                sim.note_binance_symbol(&symbol);
                let output = Output {
                    instrument: instrument(sim.seed(), &symbol),
                    symbol,
                    name,
                };
                Ok(Subscription {
                    key: output.name.clone(),
                    next: sim.head() + 1,
                    outputs: vec![(stream, output)],
                })
            })
            .collect()
    }
}

impl Protocol for Binance {
    type Output = Output;

    fn on_open(&mut self, sim: &Sim) -> Reply<Output> {
        let names = std::mem::take(&mut self.initial);
        match self.subscriptions(&names, sim) {
            Ok(subscribe) => Reply {
                subscribe,
                ..Reply::default()
            },
            Err(msg) => Reply {
                messages: vec![error(2, &format!("Invalid request: {msg}"), None)],
                close: Some((CLOSE_POLICY, "invalid stream".into())),
                ..Reply::default()
            },
        }
    }

    fn on_text(&mut self, text: &str, sim: &Sim) -> Reply<Output> {
        let request: Request = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                let msg = format!(
                    "Invalid JSON: {e}; expected {{\"method\":\"SUBSCRIBE\",\"params\":[\"btcusdt@trade\"],\"id\":1}}"
                );
                return Reply::message(error(3, &msg, None));
            }
        };
        let id = request.id;
        match request.method.as_str() {
            "SUBSCRIBE" => match self.subscriptions(&request.params, sim) {
                Ok(subscribe) => Reply {
                    messages: vec![json!({"result": null, "id": id}).to_string()],
                    subscribe,
                    ..Reply::default()
                },
                Err(msg) => Reply::message(error(2, &format!("Invalid request: {msg}"), Some(&id))),
            },
            "UNSUBSCRIBE" => Reply {
                messages: vec![json!({"result": null, "id": id}).to_string()],
                unsubscribe: request
                    .params
                    .iter()
                    .map(|p| format!("{VENUE}/{}", p.to_ascii_lowercase()))
                    .collect(),
                ..Reply::default()
            },
            other => Reply::message(error(
                2,
                &format!(
                    "Invalid request: unknown method '{other}' (use SUBSCRIBE or UNSUBSCRIBE)"
                ),
                Some(&id),
            )),
        }
    }

    fn render(&self, output: &Output, n: u64, sim: &Sim) -> String {
        let trade = trade_message(sim, output, n);
        if self.combined {
            format!(r#"{{"stream":"{}","data":{trade}}}"#, output.name)
        } else {
            trade
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_split_into_base_and_quote() {
        assert!((instrument(1, "BTCUSDT").reference() - 60_000.0).abs() < 1e-9);
        assert!((instrument(1, "ETHBTC").reference() - 0.05).abs() < 1e-9);
        assert!(parse_symbol("btc-usdt").is_err());
        assert!(parse_symbol("").is_err());
        assert_eq!(parse_symbol("bnbbtc").unwrap(), "BNBBTC");
    }

    #[test]
    fn trade_message_has_the_venue_shape() {
        let sim = Sim::new(crate::SimConfig::default());
        let output = Output {
            name: "btcusdt@trade".into(),
            symbol: "BTCUSDT".into(),
            instrument: instrument(1, "BTCUSDT"),
        };
        let v: Value = serde_json::from_str(&trade_message(&sim, &output, 42)).unwrap();
        assert_eq!(v["e"], "trade");
        assert_eq!(v["s"], "BTCUSDT");
        assert_eq!(v["t"], 42);
        assert_eq!(v["M"], true);
        assert!(v["p"].as_str().unwrap().split('.').nth(1).unwrap().len() == 8);
        assert!(v["E"].is_u64() && v["m"].is_boolean());
        assert_eq!(v["T"], trade_time_ms(&sim, 42));
        assert_eq!(trade_stream_name("BTCUSDT"), "binance/btcusdt@trade");
    }
}
