//! Coinbase Exchange WebSocket feed: `subscribe` within a deadline, then `match`, `ticker`
//! and `heartbeat` messages per product.
//!
//! A `match`'s `time` is when trade `n` became due (stable per run), so the REST route
//! `products/{product_id}/trades` (`coinbase_rest`) reports the same time for the same id.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{State, WebSocketUpgrade};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::clock::{rfc3339_us, wall_now_us};
use crate::content::{Instrument, decimal};
use crate::sim::Sim;
use crate::streams::Kind;
use crate::ws::{self, CLOSE_POLICY, Protocol, Reply, Subscription};

/// Venue name in stream names and reports.
pub(crate) const VENUE: &str = "coinbase";
/// Period of heartbeat messages.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// Channels the simulator serves.
const CHANNELS: [&str; 3] = ["matches", "ticker", "heartbeat"];

/// `GET /coinbase`
pub(crate) async fn handler(State(sim): State<Arc<Sim>>, ws: WebSocketUpgrade) -> Response {
    let timeout = Duration::from_millis(sim.config.coinbase_subscribe_timeout_ms);
    let protocol = Coinbase {
        subscribe_by: Instant::now() + timeout,
        timeout,
        channels: BTreeMap::new(),
        next_heartbeat: Instant::now(),
    };
    ws::upgrade(ws, sim, protocol)
}

/// A Coinbase connection.
struct Coinbase {
    /// Deadline of the first subscribe (the connection closes after it if none came).
    subscribe_by: Instant,
    timeout: Duration,
    /// Subscribed products per channel, as the `subscriptions` reply lists them.
    channels: BTreeMap<&'static str, BTreeSet<String>>,
    next_heartbeat: Instant,
}

/// What one output of a product renders.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Message {
    Match,
    Ticker,
}

pub(crate) struct Output {
    product: String,
    instrument: Arc<Instrument>,
    message: Message,
}

#[derive(Deserialize)]
struct Request {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    product_ids: Vec<String>,
    #[serde(default)]
    channels: Vec<ChannelSpec>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ChannelSpec {
    Name(String),
    Full {
        name: String,
        #[serde(default)]
        product_ids: Option<Vec<String>>,
    },
}

fn error(reason: &str) -> String {
    json!({"type": "error", "message": "Failed to subscribe", "reason": reason}).to_string()
}

/// A product id (`BASE-QUOTE`), checked and uppercased.
pub(crate) fn parse_product(product: &str) -> Result<String, String> {
    let valid = product.split_once('-').is_some_and(|(base, quote)| {
        [base, quote]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 10 && p.bytes().all(|b| b.is_ascii_alphanumeric()))
    });
    if valid {
        Ok(product.to_ascii_uppercase())
    } else {
        Err(format!(
            "{product} is not a valid product (expected BASE-QUOTE, e.g. ETH-USD)"
        ))
    }
}

/// The instrument of a product (validated, uppercase): the same for WebSocket and REST.
pub(crate) fn instrument(seed: u64, product: &str) -> Instrument {
    let (base, quote) = product.split_once('-').expect("validated product");
    Instrument::new(seed, format!("{VENUE}:{product}"), base, quote)
}

/// Name of a product's `matches` stream in reports (`coinbase/ETH-USD/matches`). The REST
/// `products/{product_id}/trades` route records the ids it serves under it too.
pub(crate) fn matches_stream_name(product: &str) -> String {
    format!("{VENUE}/{product}/matches")
}

/// The trade fields `match` messages and REST trades share for trade `n`.
pub(crate) struct MatchTrade {
    /// When the trade became due (RFC 3339, µs), so WebSocket and REST agree.
    pub(crate) time: String,
    pub(crate) price: String,
    pub(crate) size: String,
    /// The maker's side: a buyer-maker trade means the maker bought.
    pub(crate) side: &'static str,
}

pub(crate) fn match_trade(sim: &Sim, instrument: &Instrument, n: u64) -> MatchTrade {
    let t = instrument.trade(sim.seed(), n);
    MatchTrade {
        time: rfc3339_us(sim.event_wall_us(n)),
        price: decimal(t.price),
        size: decimal(t.qty),
        side: if t.buyer_maker { "buy" } else { "sell" },
    }
}

impl Coinbase {
    /// (channel, products) pairs of a request, validated.
    fn requested(&self, request: &Request) -> Result<Vec<(&'static str, Vec<String>)>, String> {
        if request.channels.is_empty() {
            return Err("no channels requested".into());
        }
        request
            .channels
            .iter()
            .map(|spec| {
                let (name, products) = match spec {
                    ChannelSpec::Name(name) => (name, &request.product_ids),
                    ChannelSpec::Full { name, product_ids } => {
                        (name, product_ids.as_ref().unwrap_or(&request.product_ids))
                    }
                };
                let channel = CHANNELS.into_iter().find(|c| c == name).ok_or_else(|| {
                    format!("channel '{name}' is not served by the simulator (serves {CHANNELS:?})")
                })?;
                if products.is_empty() {
                    return Err(format!("channel '{name}' has no product_ids"));
                }
                let products = products
                    .iter()
                    .map(|p| parse_product(p))
                    .collect::<Result<_, _>>()?;
                Ok((channel, products))
            })
            .collect()
    }

    fn subscriptions_message(&self) -> String {
        let channels: Vec<Value> = self
            .channels
            .iter()
            .filter(|(_, products)| !products.is_empty())
            .map(|(name, products)| json!({"name": name, "product_ids": products}))
            .collect();
        json!({"type": "subscriptions", "channels": channels}).to_string()
    }

    fn subscribe(&mut self, request: &Request, sim: &Sim) -> Result<Reply<Output>, String> {
        let requested = self.requested(request)?;
        let mut subscribe = Vec::new();
        for (channel, products) in &requested {
            let message = match *channel {
                "matches" => Message::Match,
                "ticker" => Message::Ticker,
                _ => continue,
            };
            for product in products {
                let name = if message == Message::Match {
                    matches_stream_name(product)
                } else {
                    format!("{VENUE}/{product}/{channel}")
                };
                let kind = if message == Message::Match {
                    Kind::Trades
                } else {
                    Kind::Ticker
                };
                let stream = sim
                    .streams
                    .get(&name, VENUE, kind)
                    .map_err(|e| e.to_string())?;
                let instrument = Arc::new(instrument(sim.seed(), product));
                let output = Output {
                    product: product.clone(),
                    instrument,
                    message,
                };
                subscribe.push(Subscription {
                    key: product.clone(),
                    next: sim.head() + 1,
                    outputs: vec![(stream, output)],
                });
            }
        }
        for (channel, products) in requested {
            self.channels.entry(channel).or_default().extend(products);
        }
        Ok(Reply {
            messages: vec![self.subscriptions_message()],
            subscribe,
            ..Reply::default()
        })
    }

    fn unsubscribe(&mut self, request: &Request) -> Result<Reply<Output>, String> {
        let mut unsubscribe = Vec::new();
        for (channel, products) in self.requested(request)? {
            for product in products {
                if let Some(set) = self.channels.get_mut(channel) {
                    set.remove(&product);
                }
                unsubscribe.push(format!("{VENUE}/{product}/{channel}"));
            }
        }
        Ok(Reply {
            messages: vec![self.subscriptions_message()],
            unsubscribe,
            ..Reply::default()
        })
    }
}

impl Protocol for Coinbase {
    type Output = Output;

    fn on_text(&mut self, text: &str, sim: &Sim) -> Reply<Output> {
        let request: Request = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                return Reply::message(error(&format!("malformed JSON subscribe message: {e}")));
            }
        };
        let result = match request.kind.as_str() {
            "subscribe" => self.subscribe(&request, sim),
            "unsubscribe" => self.unsubscribe(&request),
            other => Err(format!(
                "unknown message type '{other}' (use subscribe or unsubscribe)"
            )),
        };
        result.unwrap_or_else(|reason| Reply::message(error(&reason)))
    }

    fn on_tick(&mut self, now: Instant, sim: &Sim) -> Reply<Output> {
        if self.channels.is_empty() && now >= self.subscribe_by {
            let reason = format!("subscribe within {} seconds", self.timeout.as_secs_f64());
            return Reply {
                messages: vec![error(&reason)],
                close: Some((CLOSE_POLICY, "no subscribe".into())),
                ..Reply::default()
            };
        }
        if now < self.next_heartbeat {
            return Reply::default();
        }
        self.next_heartbeat = now + HEARTBEAT_EVERY;
        let head = sim.head();
        let time = rfc3339_us(wall_now_us());
        let messages = self
            .channels
            .get("heartbeat")
            .into_iter()
            .flatten()
            .map(|product| {
                json!({
                    "type": "heartbeat",
                    "sequence": 2 * head + 1,
                    "last_trade_id": head,
                    "product_id": product,
                    "time": time,
                })
                .to_string()
            })
            .collect();
        Reply {
            messages,
            ..Reply::default()
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let heartbeat = self
            .channels
            .contains_key("heartbeat")
            .then_some(self.next_heartbeat);
        let subscribe = self.channels.is_empty().then_some(self.subscribe_by);
        heartbeat.into_iter().chain(subscribe).min()
    }

    fn render(&self, output: &Output, n: u64, sim: &Sim) -> String {
        let seed = sim.seed();
        match output.message {
            Message::Match => {
                let t = match_trade(sim, &output.instrument, n);
                let key = output.instrument.key();
                json!({
                    "type": "match",
                    "trade_id": n,
                    "sequence": 2 * n,
                    "maker_order_id": crate::content::uuid_like(seed, &format!("{key}:maker"), n),
                    "taker_order_id": crate::content::uuid_like(seed, &format!("{key}:taker"), n),
                    // When the trade happened (as REST `products/{id}/trades` reports it).
                    "time": t.time,
                    "product_id": output.product,
                    "size": t.size,
                    "price": t.price,
                    "side": t.side,
                })
            }
            Message::Ticker => {
                let q = output.instrument.quote(seed, n);
                let mut ticker = json!({
                    "type": "ticker",
                    "sequence": 2 * n + 1,
                    "product_id": output.product,
                    "price": decimal(q.trade.price),
                    "open_24h": decimal(output.instrument.reference()),
                    "volume_24h": decimal(q.volume_24h),
                    "low_24h": decimal(q.low),
                    "high_24h": decimal(q.high),
                    "volume_30d": decimal(q.volume_24h * 30.0),
                    "best_bid": decimal(q.bid),
                    "best_bid_size": decimal(q.bid_qty),
                    "best_ask": decimal(q.ask),
                    "best_ask_size": decimal(q.ask_qty),
                    // The taker's side.
                    "side": if q.trade.buyer_maker { "sell" } else { "buy" },
                    "time": rfc3339_us(wall_now_us()),
                    "trade_id": n,
                    "last_size": decimal(q.trade.qty),
                });
                // As Coinbase sent them until 2022: every third ticker carries no sizes.
                if n.is_multiple_of(3)
                    && let Some(fields) = ticker.as_object_mut()
                {
                    fields.remove("best_bid_size");
                    fields.remove("best_ask_size");
                }
                ticker
            }
        }
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coinbase() -> Coinbase {
        Coinbase {
            subscribe_by: Instant::now(),
            timeout: Duration::from_secs(5),
            channels: BTreeMap::new(),
            next_heartbeat: Instant::now(),
        }
    }

    #[test]
    fn channels_may_be_strings_or_objects() {
        let request: Request = serde_json::from_str(
            r#"{"type":"subscribe","product_ids":["ETH-USD"],"channels":["matches","heartbeat",{"name":"ticker","product_ids":["BTC-USD"]}]}"#,
        )
        .unwrap();
        let requested = coinbase().requested(&request).unwrap();
        assert_eq!(
            requested,
            [
                ("matches", vec!["ETH-USD".to_string()]),
                ("heartbeat", vec!["ETH-USD".to_string()]),
                ("ticker", vec!["BTC-USD".to_string()]),
            ]
        );
    }

    #[test]
    fn bad_requests_are_explained() {
        let sim = Sim::new(crate::SimConfig::default());
        let mut cb = coinbase();
        for (text, needle) in [
            ("nope", "malformed JSON"),
            (
                r#"{"type":"subscribe","product_ids":["ETH-USD"],"channels":["level2"]}"#,
                "level2",
            ),
            (
                r#"{"type":"subscribe","channels":["matches"]}"#,
                "no product_ids",
            ),
            (
                r#"{"type":"subscribe","product_ids":["ETHUSD"],"channels":["matches"]}"#,
                "not a valid product",
            ),
            (r#"{"type":"hello"}"#, "unknown message type"),
        ] {
            let reply = cb.on_text(text, &sim);
            assert!(reply.subscribe.is_empty());
            let v: Value = serde_json::from_str(&reply.messages[0]).unwrap();
            assert_eq!(v["type"], "error");
            assert!(v["reason"].as_str().unwrap().contains(needle), "{v}");
        }
    }
}
