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
//!
//! The cursor is, per product, the highest trade id up to which every trade was emitted
//! (`{"BTC-USD":123}`); it moves in the same output as the trades it covers (tickers do not
//! touch it). When a live match arrives past it (after a restart, or a reconnect that missed
//! trades) the missing trades are fetched from the REST API
//! (`GET {rest_url}/products/<product>/trades?after=<id>&limit=<n>`, newest first), a page
//! at a time going down, while live trades keep flowing. Trades Coinbase no longer serves are
//! reported as bad input and skipped.

use std::borrow::Cow;
use std::collections::HashMap;

use anode_plugin_sdk::prelude::*;
use anode_plugin_sdk::watermark::{self, Page, PageOrder, Track};

/// The venue's own stream URLs, whose REST API is [`VENUE_REST`] (for other stream URLs it is
/// the same host and path over HTTP).
const VENUE_STREAMS: &[&str] = &[
    "wss://ws-feed.exchange.coinbase.com",
    "wss://ws-feed.exchange.coinbase.com:443",
];
const VENUE_REST: &str = "https://api.exchange.coinbase.com";

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
    /// The REST API for backfill; derived from `base_url` when absent.
    rest_url: Option<String>,
    #[serde(default = "default_backfill")]
    backfill: bool,
}

fn default_backfill() -> bool {
    true
}

/// Most trades Coinbase returns per `/products/<id>/trades` page.
const PAGE_LIMIT: u64 = 1000;
/// Request tags: `backfill:<PRODUCT>:<first id>-<last id>`.
const TAG_PREFIX: &str = "backfill:";

/// The request for `page` of `product`'s trades: Coinbase returns the trades before `after`,
/// newest first.
fn page_request(rest_url: &str, product: &str, page: Page) -> HttpRequest {
    HttpRequest::get(
        format!(
            "{rest_url}/products/{product}/trades?after={}&limit={}",
            page.to + 1,
            page.len()
        ),
        page.tag(TAG_PREFIX, product),
    )
}

/// Ids `first..=last` of `product` that Coinbase could not serve, as the error the host counts.
fn unavailable(product: &str, first: u64, last: u64, why: &str) -> PluginError {
    PluginError::bad_input(format!(
        "{product}: trades {first} to {last} could not be backfilled ({why}); skipped"
    ))
}

fn default_base_url() -> String {
    "wss://ws-feed.exchange.coinbase.com".to_owned()
}

fn default_channels() -> Vec<Channel> {
    vec![Channel::Matches, Channel::Ticker, Channel::Heartbeat]
}

/// Every Coinbase message this connector reads, as one flat shape: which fields are present
/// depends on `type`. A trade of the REST API (`time`, `trade_id`, `price`, `size`, `side`)
/// reads into it too.
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
    price: Cow<'a, str>,
    size: Cow<'a, str>,
    taker_side: &'static str,
    trade_id: u64,
    event_timestamp: i64,
    atom_timestamp: i64,
}

#[derive(Serialize)]
struct Ticker<'a> {
    exchange: &'static str,
    symbol: &'a str,
    bid_price: Cow<'a, str>,
    /// Absent when the venue sent no size (its tickers before 2022 carry none).
    #[serde(skip_serializing_if = "Option::is_none")]
    bid_size: Option<Cow<'a, str>>,
    ask_price: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ask_size: Option<Cow<'a, str>>,
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
) -> Result<Cow<'m, str>, PluginError> {
    let text = required(field, kind, name)?;
    json::plain_decimal(text).ok_or_else(|| {
        PluginError::bad_input(format!("`{kind}` message: `{name}` is not a decimal"))
    })
}

/// A decimal field the venue may leave out.
fn optional_decimal<'m>(
    field: &'m Option<Cow<'_, str>>,
    kind: &str,
    name: &str,
) -> Result<Option<Cow<'m, str>>, PluginError> {
    match field {
        None => Ok(None),
        Some(_) => decimal(field, kind, name).map(Some),
    }
}

/// One product's names and trade-id bookkeeping.
struct Product {
    /// `BTC-USD`: the cursor key and the REST path segment.
    id: String,
    /// `BTC.USD`, so each message costs no symbol parsing.
    symbol: String,
    track: Track,
}

impl Product {
    fn new(id: String, track: Track) -> Self {
        Product {
            symbol: symbol::from_delimited(&id, '-').unwrap_or_else(|| id.to_ascii_uppercase()),
            id,
            track,
        }
    }
}

/// The `trades` event of a match (live or backfilled) of the product named `symbol`, and its
/// trade id.
fn trade_event(
    symbol: &str,
    m: &Message,
    kind: &str,
    received_at: i64,
) -> Result<(Event, u64), PluginError> {
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
    let (time_us, time_ms) = Coinbase::times(m, kind)?;
    let payload = Trade {
        exchange: EXCHANGE,
        symbol,
        price,
        size,
        taker_side,
        trade_id,
        event_timestamp: time_ms,
        atom_timestamp: received_at,
    };
    let event = Event::new("trades", &payload)
        .upstream_id(format!("{symbol}:{trade_id}"))
        .at(time_us)
        .key(symbol);
    Ok((event, trade_id))
}

/// The connector.
pub struct Coinbase {
    config: Config,
    /// Where backfill pages come from; `None` when backfill is off.
    rest_url: Option<String>,
    /// Configured products first, then any other a message named.
    products: Vec<Product>,
    /// Product id spellings seen (`BTC-USD`, `btc-usd`) → index in `products`.
    index: HashMap<String, usize>,
}

impl Coinbase {
    /// The index of product `raw`, added on first sight.
    fn product_index(&mut self, raw: &str) -> usize {
        if let Some(&i) = self.index.get(raw) {
            return i;
        }
        let id = raw.to_ascii_uppercase();
        let i = match self.index.get(&id) {
            Some(&i) => i,
            None => {
                self.products
                    .push(Product::new(id.clone(), Track::default()));
                self.index.insert(id, self.products.len() - 1);
                self.products.len() - 1
            }
        };
        self.index.insert(raw.to_owned(), i);
        i
    }

    /// `time` in microseconds and in milliseconds.
    fn times(message: &Message, kind: &str) -> Result<(i64, i64), PluginError> {
        let us = time::parse_rfc3339_us(required(&message.time, kind, "time")?)?;
        Ok((us, us.div_euclid(1000)))
    }

    /// A watermark moved: put the cursor in this output.
    fn write_cursor(&self, out: &mut Output) {
        let marks = self
            .products
            .iter()
            .filter_map(|p| Some((p.id.as_str(), p.track.done()?)));
        out.set_cursor(watermark::render_cursor(marks));
    }

    fn live_match(
        &mut self,
        m: &Message,
        kind: &str,
        received_at: i64,
        out: &mut Output,
    ) -> Result<(), PluginError> {
        let product = required(&m.product_id, kind, "product_id")?;
        let i = self.product_index(product);
        let (event, trade_id) = trade_event(&self.products[i].symbol, m, kind, received_at)?;
        out.emit(event);
        let p = &mut self.products[i];
        let mut moved = p.track.live(trade_id);
        match &self.rest_url {
            Some(rest_url) => {
                if let Some(page) =
                    p.track
                        .next_page(received_at, PAGE_LIMIT, PageOrder::NewestFirst)
                {
                    out.request(page_request(rest_url, &p.id, page));
                }
            }
            None => {
                if let Some((first, last)) = p.track.skip_gaps() {
                    moved = true;
                    host::log(
                        LogLevel::Info,
                        &format!(
                            "{}: trades {first} to {last} were missed (backfill is off)",
                            p.id
                        ),
                    );
                }
            }
        }
        if moved {
            self.write_cursor(out);
        }
        Ok(())
    }

    /// A page of product `i`'s trades answered `page`, the request in flight: emit the
    /// trades of the gap, give up what Coinbase does not have, ask for the next page.
    fn on_page(&mut self, i: usize, page: Page, response: &HttpResponse, out: &mut Output) {
        let p = &mut self.products[i];
        let Some((first, _)) = p.track.gap() else {
            return;
        };
        let last = page.to;
        let status = response.status;
        let moved = if status == 429 || status >= 500 {
            // Passing: the host already retried; ask again on a later match, not drop the gap.
            let wait = p.track.failed(response.received_at);
            host::log(
                LogLevel::Warn,
                &format!(
                    "{}: backfill of trades before {} got HTTP {status}; asking again in {} s",
                    p.id,
                    last + 1,
                    wait / 1_000_000
                ),
            );
            return;
        } else if !(200..300).contains(&status) {
            // Coinbase cannot serve the gap (unknown product, refused): give it up.
            let why = json::response(response)
                .err()
                .map(|e| e.message().to_owned())
                .unwrap_or_default();
            out.errors.push(unavailable(&p.id, first, last, &why));
            p.track.emitted(first, last)
        } else {
            let trades: Vec<Message> = match json::decode(&response.body) {
                Ok(trades) => trades,
                Err(e) => {
                    p.track.failed(response.received_at);
                    out.errors.push(PluginError::bad_input(format!(
                        "{}: backfill page before {}: {}",
                        p.id,
                        last + 1,
                        e.message()
                    )));
                    return;
                }
            };
            p.track.succeeded();
            let mut lowest: Option<u64> = None;
            for trade in &trades {
                let Some(id) = trade.trade_id.filter(|id| (first..=last).contains(id)) else {
                    continue; // Emitted already, or not of this gap.
                };
                lowest = Some(lowest.map_or(id, |l| l.min(id)));
                match trade_event(&p.symbol, trade, "backfilled trade", response.received_at) {
                    Ok((event, _)) => out.emit(event),
                    Err(e) => out.errors.push(PluginError::bad_input(format!(
                        "{}: {}",
                        p.id,
                        e.message()
                    ))),
                }
            }
            match lowest {
                Some(lowest) => p.track.emitted(lowest, last),
                None => {
                    // Nothing of the gap: Coinbase no longer has it.
                    out.errors.push(unavailable(
                        &p.id,
                        first,
                        last,
                        "the venue returned no trades from there",
                    ));
                    p.track.emitted(first, last)
                }
            }
        };
        if let Some(rest_url) = &self.rest_url
            && let Some(next) =
                p.track
                    .next_page(response.received_at, PAGE_LIMIT, PageOrder::NewestFirst)
        {
            out.request(page_request(rest_url, &p.id, next));
        }
        if moved {
            self.write_cursor(out);
        }
    }

    fn ticker(&mut self, m: &Message, received_at: i64) -> Result<Event, PluginError> {
        let kind = "ticker";
        let product = required(&m.product_id, kind, "product_id")?;
        let sequence = *required(&m.sequence, kind, "sequence")?;
        let bid_price = decimal(&m.best_bid, kind, "best_bid")?;
        let bid_size = optional_decimal(&m.best_bid_size, kind, "best_bid_size")?;
        let ask_price = decimal(&m.best_ask, kind, "best_ask")?;
        let ask_size = optional_decimal(&m.best_ask_size, kind, "best_ask_size")?;
        let (time_us, time_ms) = Self::times(m, kind)?;
        let i = self.product_index(product);
        let symbol = &self.products[i].symbol;
        let payload = Ticker {
            exchange: EXCHANGE,
            symbol,
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
             over WebSocket; resumes trades from a per-product trade-id cursor and backfills \
             the trades missed while down or disconnected from the REST API \
             (/products/<id>/trades)",
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
                },
                "rest_url": {
                    "type": "string",
                    "pattern": "^https?://",
                    "description": "REST API for backfill (GET <rest_url>/products/<id>/trades); \
                        default: https://api.exchange.coinbase.com for \
                        wss://ws-feed.exchange.coinbase.com, otherwise base_url with \
                        ws:// → http:// and wss:// → https://"
                },
                "backfill": {
                    "type": "boolean",
                    "default": true,
                    "description": "fetch the trades missed between the cursor (or a reconnect) \
                        and the live matches; when off, such gaps are skipped"
                }
            }
        }))
        .example(json!({
            "base_url": "ws://127.0.0.1:9100/coinbase",
            "product_ids": ["BTC-USD", "ETH-USD"],
            "channels": ["matches", "ticker", "heartbeat"]
        }))
    }

    fn open(config: &str, cursor: Option<&str>) -> Result<Self, PluginError> {
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
        let rest_url = watermark::rest_base(
            config.rest_url.as_deref(),
            &config.base_url,
            config.backfill,
            VENUE_STREAMS,
            VENUE_REST,
        )?;
        let mut marks = cursor
            .map(|text| watermark::marks_or_none(watermark::parse_cursor(text), text))
            .unwrap_or_default();
        let mut connector = Coinbase {
            rest_url,
            products: Vec::with_capacity(config.product_ids.len()),
            index: HashMap::new(),
            config,
        };
        for raw in &connector.config.product_ids {
            let id = raw.to_ascii_uppercase();
            if connector.index.contains_key(&id) {
                continue;
            }
            let track = marks.remove(&id).map_or_else(Track::default, Track::resume);
            connector.products.push(Product::new(id.clone(), track));
            connector.index.insert(id, connector.products.len() - 1);
        }
        // Cursor entries of products no longer configured are dropped.
        Ok(connector)
    }

    fn plan(&self) -> Plan {
        let subscribe = json!({
            "type": "subscribe",
            "product_ids": self.config.product_ids,
            "channels": self.config.channels,
        });
        Plan::websocket(&self.config.base_url)
            .subscribe_json(&subscribe)
            .into()
    }

    fn on_frame(&mut self, frame: &Frame, out: &mut Output) -> Result<(), PluginError> {
        let message: Message = json::decode(&frame.data)?;
        let kind = message
            .kind
            .as_deref()
            .ok_or_else(|| PluginError::bad_input("message without `type`"))?;
        match kind {
            "match" | "last_match" => {
                self.live_match(&message, kind, frame.received_at, out)?;
            }
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
                    "a `{other}` message: the coinbase connector reads the matches, ticker and \
                     heartbeat channels only"
                )));
            }
        }
        Ok(())
    }

    fn on_response(
        &mut self,
        response: &HttpResponse,
        out: &mut Output,
    ) -> Result<(), PluginError> {
        let unknown =
            || PluginError::bad_input(format!("response with unknown tag `{}`", response.tag));
        let (product, page) = Page::from_tag(TAG_PREFIX, &response.tag).ok_or_else(unknown)?;
        let &i = self.index.get(product).ok_or_else(unknown)?;
        if !self.products[i].track.answered(page) {
            // Asked again after a timeout and answered twice: already handled.
            host::log(
                LogLevel::Debug,
                &format!("stale backfill answer `{}` ignored", response.tag),
            );
            return Ok(());
        }
        self.on_page(i, page, response, out);
        Ok(())
    }
}

export_connector!(Coinbase);

#[cfg(test)]
mod conformance;

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

    const T0: i64 = 1_700_000_000_000_000;

    /// A live BTC-USD match with trade id `id`.
    fn live(id: u64) -> String {
        MATCH.replace(r#""trade_id":10"#, &format!(r#""trade_id":{id}"#))
    }

    /// Feed live matches with these ids, received at `at`.
    fn lives(c: &mut Coinbase, ids: &[u64], at: i64) -> Output {
        let texts: Vec<String> = ids.iter().map(|&id| live(id)).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        testing::frames_at(c, &refs, at)
    }

    /// A REST page of BTC-USD trades with these ids, in the order given.
    fn page(ids: &[u64]) -> String {
        let trades: Vec<Value> = ids
            .iter()
            .map(|&id| {
                json!({"time": "2014-11-07T08:19:27.028459Z", "trade_id": id,
                       "price": "400.23", "size": "5.23512", "side": "sell"})
            })
            .collect();
        Value::from(trades).to_string()
    }

    fn answer(c: &mut Coinbase, tag: &str, status: u16, body: &str, at: i64) -> Output {
        let mut response = testing::response(tag, status, body);
        response.received_at = at;
        testing::responses(c, &[response])
    }

    fn ids(out: &Output) -> Vec<u64> {
        testing::payloads(&out.events)
            .iter()
            .map(|p| p["trade_id"].as_u64().unwrap())
            .collect()
    }

    const CONFIG: &str =
        r#"{"base_url":"ws://127.0.0.1:9100/coinbase","product_ids":["BTC-USD","ETH-USD"]}"#;

    #[test]
    fn the_cursor_follows_contiguous_trades_and_ignores_tickers() {
        let mut c = open(CONFIG);
        let out = lives(&mut c, &[10, 11, 12], T0);
        assert!(out.errors.is_empty() && out.requests.is_empty(), "{out:?}");
        assert_eq!(out.cursor.as_deref(), Some(r#"{"BTC-USD":12}"#));
        let ticker = TICKER.replace("ETH-USD", "BTC-USD");
        let out = testing::frames_at(&mut c, &[&ticker, HEARTBEAT], T0);
        assert_eq!((out.events.len(), out.cursor), (1, None));
        // Duplicates and old ids do not move it.
        let out = lives(&mut c, &[12, 5], T0);
        assert_eq!(out.cursor, None);
    }

    #[test]
    fn a_gap_after_a_restart_is_backfilled_newest_first() {
        let mut c = testing::open_at::<Coinbase>(CONFIG, Some(r#"{"BTC-USD":100,"ETH-USD":7}"#));
        let out = lives(&mut c, &[106, 107], T0);
        assert_eq!(ids(&out), [106, 107]);
        assert_eq!(out.cursor, None, "the gap holds the watermark");
        assert_eq!(out.requests.len(), 1, "one request in flight");
        let request = &out.requests[0];
        assert_eq!(request.method, "GET");
        assert_eq!(
            request.url,
            "http://127.0.0.1:9100/coinbase/products/BTC-USD/trades?after=106&limit=5"
        );
        assert_eq!(request.tag, "backfill:BTC-USD:101-105");
        // Newest first, and with a trade from before the gap.
        let out = answer(
            &mut c,
            &request.tag,
            200,
            &page(&[105, 104, 103, 102, 101, 100]),
            T0 + 9,
        );
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(ids(&out), [105, 104, 103, 102, 101]);
        assert!(out.requests.is_empty());
        assert_eq!(
            out.cursor.as_deref(),
            Some(r#"{"BTC-USD":107,"ETH-USD":7}"#)
        );
        // The same normalised event as the live path, received when the page came.
        let backfilled = &out.events[0];
        let live_event = &lives(&mut open(CONFIG), &[105], T0 + 9).events[0];
        assert_eq!(backfilled, live_event);
        // A second answer to the same tag is stale.
        let out = answer(&mut c, &request.tag, 200, &page(&[105]), T0);
        assert!(out.events.is_empty() && out.errors.is_empty());
    }

    #[test]
    fn a_long_gap_pages_down_from_the_smallest_id() {
        let mut c = testing::open_at::<Coinbase>(CONFIG, Some(r#"{"BTC-USD":0}"#));
        let out = lives(&mut c, &[1501], T0);
        let first = &out.requests[0];
        assert!(
            first
                .url
                .ends_with("/products/BTC-USD/trades?after=1501&limit=1000"),
            "{}",
            first.url
        );
        assert_eq!(first.tag, "backfill:BTC-USD:501-1500");
        // Another live match while the page is out asks for nothing more.
        assert!(lives(&mut c, &[1502], T0).requests.is_empty());
        let body = page(&(501..=1500).rev().collect::<Vec<_>>());
        let out = answer(&mut c, &first.tag, 200, &body, T0);
        assert_eq!(out.events.len(), 1000);
        assert_eq!(out.cursor, None);
        assert_eq!(out.requests.len(), 1);
        let second = &out.requests[0];
        assert!(
            second.url.ends_with("/trades?after=501&limit=500"),
            "{}",
            second.url
        );
        let out = answer(
            &mut c,
            &second.tag,
            200,
            &page(&(1..=500).rev().collect::<Vec<_>>()),
            T0,
        );
        assert_eq!(out.events.len(), 500);
        assert_eq!(out.cursor.as_deref(), Some(r#"{"BTC-USD":1502}"#));
    }

    #[test]
    fn an_empty_page_or_a_refusal_gives_the_gap_up() {
        let mut c = testing::open_at::<Coinbase>(CONFIG, Some(r#"{"BTC-USD":100}"#));
        let tag = lives(&mut c, &[110], T0).requests[0].tag.clone();
        let out = answer(&mut c, &tag, 200, "[]", T0);
        assert_eq!(
            out.errors,
            [PluginError::bad_input(
                "BTC-USD: trades 101 to 109 could not be backfilled \
                 (the venue returned no trades from there); skipped"
            )]
        );
        assert_eq!(out.cursor.as_deref(), Some(r#"{"BTC-USD":110}"#));
        // A 404 after a first page gives up the rest.
        let tag = lives(&mut c, &[120], T0).requests[0].tag.clone();
        assert_eq!(tag, "backfill:BTC-USD:111-119");
        let out = answer(&mut c, &tag, 200, &page(&[119, 118]), T0);
        let tag = out.requests[0].tag.clone();
        assert_eq!(tag, "backfill:BTC-USD:111-117");
        let out = answer(&mut c, &tag, 404, r#"{"message":"NotFound"}"#, T0);
        assert_eq!(out.errors.len(), 1);
        assert!(
            matches!(&out.errors[0], PluginError::BadInput(m) if m.starts_with("BTC-USD: trades 111 to 117")),
            "{:?}",
            out.errors
        );
        assert_eq!(out.cursor.as_deref(), Some(r#"{"BTC-USD":120}"#));
    }

    #[test]
    fn throttling_and_server_errors_retry_on_a_later_match() {
        let mut c = testing::open_at::<Coinbase>(CONFIG, Some(r#"{"BTC-USD":100}"#));
        let tag = lives(&mut c, &[110], T0).requests[0].tag.clone();
        let out = answer(&mut c, &tag, 429, "slow down", T0);
        assert!(out.errors.is_empty() && out.requests.is_empty() && out.cursor.is_none());
        // Too soon: nothing; after the backoff: the same page again.
        assert!(lives(&mut c, &[111], T0 + 500_000).requests.is_empty());
        let out = lives(&mut c, &[112], T0 + watermark::RETRY_MIN_US);
        assert_eq!(out.requests.len(), 1);
        assert_eq!(out.requests[0].tag, tag);
        let out = answer(
            &mut c,
            &tag,
            503,
            "connection refused",
            T0 + watermark::RETRY_MIN_US,
        );
        assert!(out.errors.is_empty() && out.requests.is_empty());
        assert!(
            lives(&mut c, &[113], T0 + 2 * watermark::RETRY_MIN_US)
                .requests
                .is_empty()
        );
        assert_eq!(
            lives(&mut c, &[114], T0 + 3 * watermark::RETRY_MIN_US)
                .requests
                .len(),
            1
        );
        // A lost request is asked again after 30 s.
        assert!(
            lives(&mut c, &[115], T0 + 4 * watermark::RETRY_MIN_US)
                .requests
                .is_empty()
        );
        let out = lives(
            &mut c,
            &[116],
            T0 + 3 * watermark::RETRY_MIN_US + watermark::ANSWER_TIMEOUT_US,
        );
        assert_eq!(out.requests.len(), 1);
    }

    #[test]
    fn without_backfill_gaps_are_skipped() {
        let config = r#"{"base_url":"ws://127.0.0.1:9100/coinbase","product_ids":["BTC-USD"],"backfill":false}"#;
        let mut c = testing::open_at::<Coinbase>(config, Some(r#"{"BTC-USD":100}"#));
        let out = lives(&mut c, &[110, 111], T0);
        assert!(out.requests.is_empty() && out.errors.is_empty());
        assert_eq!(out.cursor.as_deref(), Some(r#"{"BTC-USD":111}"#));
    }

    #[test]
    fn a_reconnect_gap_is_backfilled() {
        let mut c = open(CONFIG);
        let out = lives(&mut c, &[50, 51], T0);
        assert_eq!(out.cursor.as_deref(), Some(r#"{"BTC-USD":51}"#));
        assert!(out.requests.is_empty());
        // The feed came back past trades 52..=59.
        let last_match = live(60).replace(r#""type":"match""#, r#""type":"last_match""#);
        let out = testing::frames_at(&mut c, &[&last_match, &live(61)], T0 + 5);
        assert_eq!(out.cursor, None);
        assert_eq!(out.requests.len(), 1);
        assert!(
            out.requests[0]
                .url
                .ends_with("/products/BTC-USD/trades?after=60&limit=8")
        );
        let out = answer(
            &mut c,
            &out.requests[0].tag.clone(),
            200,
            &page(&[59, 58, 57, 56, 55, 54, 53, 52]),
            T0,
        );
        assert_eq!(out.events.len(), 8);
        assert_eq!(out.cursor.as_deref(), Some(r#"{"BTC-USD":61}"#));
    }

    #[test]
    fn an_unreadable_cursor_does_not_stop_the_source() {
        for cursor in [
            "",
            "garbage",
            "[1,2]",
            r#"{"BTC-USD":"x"}"#,
            r#"{"BTC-USD":-3}"#,
        ] {
            let mut c = testing::open_at::<Coinbase>(CONFIG, Some(cursor));
            let out = lives(&mut c, &[500], T0);
            assert!(out.requests.is_empty() && out.errors.is_empty(), "{cursor}");
            assert_eq!(
                out.cursor.as_deref(),
                Some(r#"{"BTC-USD":500}"#),
                "{cursor}"
            );
        }
        // Lowercase keys and ids as strings are read; unknown products are dropped.
        let mut c = testing::open_at::<Coinbase>(CONFIG, Some(r#"{"btc-usd":"499","XRP-USD":3}"#));
        let out = lives(&mut c, &[500], T0);
        assert_eq!(out.cursor.as_deref(), Some(r#"{"BTC-USD":500}"#));
    }

    #[test]
    fn rest_urls_are_derived_or_refused() {
        let url = |config: &str| {
            let c: Coinbase = open(config);
            c.rest_url
        };
        assert_eq!(
            url(r#"{"product_ids":["BTC-USD"]}"#).as_deref(),
            Some("https://api.exchange.coinbase.com")
        );
        assert_eq!(
            url(r#"{"base_url":"wss://h:1/cb/","product_ids":["BTC-USD"]}"#).as_deref(),
            Some("https://h:1/cb")
        );
        assert_eq!(
            url(r#"{"product_ids":["BTC-USD"],"rest_url":"http://r:2/x/"}"#).as_deref(),
            Some("http://r:2/x")
        );
        assert_eq!(url(r#"{"product_ids":["BTC-USD"],"backfill":false}"#), None);
        for bad in [
            r#"{"product_ids":["BTC-USD"],"rest_url":"ftp://x"}"#,
            r#"{"base_url":"tcp://x","product_ids":["BTC-USD"]}"#,
        ] {
            assert!(
                matches!(Coinbase::open(bad, None), Err(PluginError::Fatal(_))),
                "{bad}"
            );
        }
        let mut c = open(CONFIG);
        let out = answer(&mut c, "head", 200, "[]", T0);
        assert!(matches!(&out.errors[..], [PluginError::BadInput(_)]));
    }

    #[test]
    fn the_manifest_example_opens() {
        let manifest = Coinbase::manifest();
        assert_eq!(manifest.name, "coinbase");
        assert!(Coinbase::open(&manifest.config_example, None).is_ok());
        let schema: Value = serde_json::from_str(&manifest.config_schema).unwrap();
        assert_eq!(schema["required"], json!(["product_ids"]));
        assert_eq!(schema["properties"]["backfill"]["default"], json!(true));
        assert_eq!(schema["properties"]["rest_url"]["type"], "string");
    }
}
