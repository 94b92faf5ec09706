//! Kraken spot WebSocket v2: `ticker` channel with a snapshot of the head event on subscribe,
//! then one update per event, and a heartbeat every second.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{State, WebSocketUpgrade};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::clock::{rfc3339_us, wall_now_us};
use crate::content::{Instrument, round_to};
use crate::sim::Sim;
use crate::streams::Kind;
use crate::ws::{self, Protocol, Reply, Subscription};

/// Venue name in stream names and reports.
const VENUE: &str = "kraken";
/// Period of heartbeat messages.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// Decimals of prices and sizes sent as JSON numbers.
const PRICE_DECIMALS: usize = 5;
const QTY_DECIMALS: usize = 8;

/// `GET /kraken/v2`
pub(crate) async fn handler(State(sim): State<Arc<Sim>>, ws: WebSocketUpgrade) -> Response {
    ws::upgrade(
        ws,
        sim,
        Kraken {
            next_heartbeat: None,
        },
    )
}

/// A Kraken v2 connection.
struct Kraken {
    /// Heartbeats start with the first subscription.
    next_heartbeat: Option<Instant>,
}

pub(crate) struct Output {
    symbol: String,
    instrument: Instrument,
    /// The event sent as `type: snapshot` (the head at subscribe time), if any.
    snapshot: Option<u64>,
}

#[derive(Deserialize)]
struct Request {
    method: String,
    #[serde(default)]
    params: Option<Params>,
    #[serde(default)]
    req_id: Option<Value>,
}

#[derive(Deserialize)]
struct Params {
    channel: String,
    #[serde(default)]
    symbol: Vec<String>,
    #[serde(default)]
    snapshot: Option<bool>,
}

fn parse_symbol(symbol: &str) -> Result<(String, String), String> {
    let parts = symbol.split_once('/').filter(|(base, quote)| {
        [base, quote]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 10 && p.bytes().all(|b| b.is_ascii_alphanumeric()))
    });
    parts
        .map(|(b, q)| (b.to_ascii_uppercase(), q.to_ascii_uppercase()))
        .ok_or_else(|| {
            format!("Currency pair not supported {symbol} (expected BASE/QUOTE, e.g. BTC/USD)")
        })
}

/// Adds the fields every method response carries.
fn response(mut body: Value, req_id: &Option<Value>, time_in: &str) -> String {
    body["time_in"] = json!(time_in);
    body["time_out"] = json!(rfc3339_us(wall_now_us()));
    if let Some(id) = req_id {
        body["req_id"] = id.clone();
    }
    body.to_string()
}

impl Kraken {
    fn subscribe(
        &mut self,
        params: &Params,
        req_id: &Option<Value>,
        time_in: &str,
        sim: &Sim,
    ) -> Reply<Output> {
        let mut reply = Reply::default();
        for raw in &params.symbol {
            let result = parse_symbol(raw).and_then(|(base, quote)| {
                let symbol = format!("{base}/{quote}");
                let stream = sim
                    .streams
                    .get(&format!("{VENUE}/{symbol}/ticker"), VENUE, Kind::Ticker)
                    .map_err(|e| e.to_string())?;
                Ok((symbol, base, quote, stream))
            });
            let (symbol, base, quote, stream) = match result {
                Ok(ok) => ok,
                Err(e) => {
                    let body =
                        json!({"error": e, "method": "subscribe", "success": false, "symbol": raw});
                    reply.messages.push(response(body, req_id, time_in));
                    continue;
                }
            };
            let snapshot_wanted = params.snapshot.unwrap_or(true);
            let body = json!({
                "method": "subscribe",
                "result": {"channel": "ticker", "symbol": symbol, "snapshot": snapshot_wanted, "event_trigger": "trades"},
                "success": true,
            });
            reply.messages.push(response(body, req_id, time_in));
            let head = sim.head();
            let snapshot = (snapshot_wanted && head >= 1).then_some(head);
            let instrument =
                Instrument::new(sim.seed(), format!("{VENUE}:{symbol}"), &base, &quote);
            reply.subscribe.push(Subscription {
                key: symbol.clone(),
                next: snapshot.unwrap_or(head + 1),
                outputs: vec![(
                    stream,
                    Output {
                        symbol,
                        instrument,
                        snapshot,
                    },
                )],
            });
        }
        if !reply.subscribe.is_empty() && self.next_heartbeat.is_none() {
            self.next_heartbeat = Some(Instant::now());
        }
        reply
    }
}

impl Protocol for Kraken {
    type Output = Output;

    fn on_open(&mut self, _sim: &Sim) -> Reply<Output> {
        let status = json!({
            "channel": "status",
            "type": "update",
            "data": [{"api_version": "v2", "connection_id": 0, "system": "online", "version": "2.0.0"}],
        });
        Reply::message(status.to_string())
    }

    fn on_text(&mut self, text: &str, sim: &Sim) -> Reply<Output> {
        let time_in = rfc3339_us(wall_now_us());
        let request: Request = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                let body = json!({"error": format!("Malformed request: {e}"), "success": false});
                return Reply::message(response(body, &None, &time_in));
            }
        };
        let req_id = &request.req_id;
        let fail = |msg: String| {
            let body = json!({"error": msg, "method": request.method, "success": false});
            Reply::message(response(body, req_id, &time_in))
        };
        match (request.method.as_str(), &request.params) {
            ("ping", _) => Reply::message(response(json!({"method": "pong"}), req_id, &time_in)),
            ("subscribe" | "unsubscribe", Some(params)) if params.channel != "ticker" => {
                fail(format!(
                    "Channel {} is not served by the simulator (serves ticker)",
                    params.channel
                ))
            }
            ("subscribe", Some(params)) => self.subscribe(params, req_id, &time_in, sim),
            ("unsubscribe", Some(params)) => {
                let mut reply = Reply::default();
                for symbol in &params.symbol {
                    let body = json!({
                        "method": "unsubscribe",
                        "result": {"channel": "ticker", "symbol": symbol},
                        "success": true,
                    });
                    reply.messages.push(response(body, req_id, &time_in));
                    reply
                        .unsubscribe
                        .push(format!("{VENUE}/{}/ticker", symbol.to_ascii_uppercase()));
                }
                reply
            }
            ("subscribe" | "unsubscribe", None) => fail("Missing params".into()),
            (other, _) => fail(format!(
                "Method {other} not supported (use subscribe, unsubscribe or ping)"
            )),
        }
    }

    fn on_tick(&mut self, now: Instant, _sim: &Sim) -> Reply<Output> {
        match self.next_heartbeat {
            Some(at) if now >= at => {
                self.next_heartbeat = Some(now + HEARTBEAT_EVERY);
                Reply::message(json!({"channel": "heartbeat"}).to_string())
            }
            _ => Reply::default(),
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.next_heartbeat
    }

    fn render(&self, output: &Output, n: u64, sim: &Sim) -> String {
        let q = output.instrument.quote(sim.seed(), n);
        let price = |x: f64| round_to(x, PRICE_DECIMALS);
        let qty = |x: f64| round_to(x, QTY_DECIMALS);
        let open = output.instrument.reference();
        let change = price(q.trade.price - open);
        let ask_qty = qty(q.ask_qty);
        let text = json!({
            "channel": "ticker",
            "type": if output.snapshot == Some(n) { "snapshot" } else { "update" },
            "data": [{
                "symbol": output.symbol,
                "bid": price(q.bid),
                "bid_qty": qty(q.bid_qty),
                "ask": price(q.ask),
                "ask_qty": ask_qty,
                "last": price(q.trade.price),
                "volume": qty(q.volume_24h),
                "vwap": price(q.vwap),
                "low": price(q.low),
                "high": price(q.high),
                "change": change,
                "change_pct": round_to(change / open * 100.0, 2),
                // Unique per event and stable within a run: when event n became due.
                "timestamp": rfc3339_us(sim.event_wall_us(n)),
            }],
        })
        .to_string();
        // A number in exponent form now and then, as JSON libraries write small ones
        // (Kraken's own frames carry `5.1e-05`): the same value, another spelling.
        if n % 5 == 2 {
            let plain = format!("\"ask_qty\":{}", json!(ask_qty));
            return text.replacen(&plain, &format!("\"ask_qty\":{ask_qty:e}"), 1);
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_base_slash_quote() {
        assert_eq!(
            parse_symbol("btc/usd").unwrap(),
            ("BTC".into(), "USD".into())
        );
        assert!(parse_symbol("BTCUSD").is_err());
        assert!(parse_symbol("BTC/").is_err());
    }

    #[test]
    fn errors_are_answered_not_panicked() {
        let sim = Sim::new(crate::SimConfig::default());
        let mut k = Kraken {
            next_heartbeat: None,
        };
        for text in [
            "{",
            r#"{"method":"subscribe"}"#,
            r#"{"method":"subscribe","params":{"channel":"book","symbol":["BTC/USD"]},"req_id":3}"#,
            r#"{"method":"subscribe","params":{"channel":"ticker","symbol":["BTCUSD"]}}"#,
            r#"{"method":"dance"}"#,
        ] {
            let reply = k.on_text(text, &sim);
            assert!(reply.subscribe.is_empty(), "{text}");
            let v: Value = serde_json::from_str(&reply.messages[0]).unwrap();
            assert_eq!(v["success"], false, "{v}");
            assert!(v["error"].is_string());
        }
        assert!(k.next_heartbeat.is_none());
    }
}
