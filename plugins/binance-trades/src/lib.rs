//! Binance spot trades: `<symbol>@trade` over raw (`/ws/...`) or combined
//! (`/stream?streams=...`) streams, or subscribed with the `SUBSCRIBE` method.
//!
//! The cursor is, per symbol, the highest trade id up to which every trade was emitted
//! (`{"BTCUSDT":123}`, see `cursor.rs`); it moves in the same output as the trades it covers.
//! When a live trade arrives past the cursor (after a restart, or a reconnect that missed
//! trades), the missing ids are fetched from the REST old-trade lookup
//! (`GET {rest_url}/api/v3/historicalTrades`), a page at a time, while live trades keep
//! flowing (see `backfill.rs`). Trades the venue no longer serves are reported as bad input and
//! skipped.

mod backfill;
#[cfg(test)]
mod conformance;
mod cursor;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::HashMap;

use anode_plugin_sdk::prelude::*;

use anode_plugin_sdk::watermark::{self, Page, Track};

use crate::backfill::HistoricalTrade;
use crate::cursor::CursorText;

/// The venue's own stream URLs, whose REST API is [`VENUE_REST`] (for other stream URLs it is
/// the same host and path over HTTP).
const VENUE_STREAMS: &[&str] = &[
    "wss://stream.binance.com",
    "wss://stream.binance.com:443",
    "wss://stream.binance.com:9443",
];
const VENUE_REST: &str = "https://api.binance.com";

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
    /// The REST API for backfill; derived from `base_url` when absent.
    rest_url: Option<String>,
    #[serde(default = "default_backfill")]
    backfill: bool,
}

fn default_base_url() -> String {
    "wss://stream.binance.com:9443".to_owned()
}

fn default_backfill() -> bool {
    true
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
    /// The combined stream's name (`btcusdt@trade`).
    #[serde(borrow)]
    stream: Option<Cow<'a, str>>,
    id: Option<serde::de::IgnoredAny>,
    /// A refused method call: `{"error":{"code":2,"msg":"Invalid request: …"},"id":1}`.
    error: Option<Refusal<'a>>,
}

/// Binance's word that it refused a method call (SUBSCRIBE).
#[derive(Deserialize)]
struct Refusal<'a> {
    code: Option<i64>,
    #[serde(borrow)]
    msg: Option<Cow<'a, str>>,
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

impl Trade<'_> {
    /// The normalised `trades` event, the same whether the trade came live or backfilled.
    fn event(&self) -> Event {
        Event::new("trades", self)
            // Trade ids are per symbol, and a combined source carries several symbols.
            .upstream_id(format!("{}:{}", self.symbol, self.trade_id))
            .at(time::ms_to_us(self.event_timestamp))
            .key(self.symbol)
    }
}

/// The buyer made the market, so the taker sold.
fn taker_side(buyer_is_maker: bool) -> &'static str {
    if buyer_is_maker { "sell" } else { "buy" }
}

/// One symbol's names and trade-id bookkeeping.
struct SymbolState {
    /// Uppercase raw symbol (`BTCUSDT`): the cursor key and the REST `symbol` parameter.
    name: String,
    /// `name` quoted as a JSON string, for the cursor.
    json_key: String,
    /// `BTC.USDT`, so each trade costs no symbol parsing.
    normalised: String,
    track: Track,
}

impl SymbolState {
    fn new(name: String, track: Track) -> Self {
        SymbolState {
            json_key: Value::from(name.as_str()).to_string(),
            normalised: symbol::from_concatenated(&name).unwrap_or_else(|| name.clone()),
            name,
            track,
        }
    }
}

/// The connector.
pub struct BinanceTrades {
    config: Config,
    /// Where backfill pages come from; `None` when backfill is off.
    rest_url: Option<String>,
    /// Configured symbols first, then any other a message named.
    symbols: Vec<SymbolState>,
    /// Symbol spellings seen (`BTCUSDT`, `btcusdt`) → index in `symbols`.
    index: HashMap<String, usize>,
    cursor: CursorText,
}

impl BinanceTrades {
    fn stream_names(&self) -> Vec<String> {
        self.config
            .symbols
            .iter()
            .map(|s| format!("{}@trade", s.to_ascii_lowercase()))
            .collect()
    }

    /// The index of symbol `raw`, added on first sight.
    fn symbol_index(&mut self, raw: &str) -> usize {
        if let Some(&i) = self.index.get(raw) {
            return i;
        }
        let name = raw.to_ascii_uppercase();
        let i = match self.index.get(&name) {
            Some(&i) => i,
            None => {
                self.symbols
                    .push(SymbolState::new(name.clone(), Track::default()));
                self.index.insert(name, self.symbols.len() - 1);
                self.symbols.len() - 1
            }
        };
        self.index.insert(raw.to_owned(), i);
        i
    }

    /// Symbol `i`'s watermark moved: put it in this output's cursor.
    fn write_cursor(&mut self, i: usize, out: &mut Output) {
        let Some(done) = self.symbols[i].track.done() else {
            return;
        };
        if !self.cursor.patch(&mut out.cursor, i, done) {
            let marks = self
                .symbols
                .iter()
                .map(|s| (s.json_key.as_str(), s.track.done()));
            self.cursor.render(&mut out.cursor, marks);
        }
    }

    /// Live trade `id` of symbol `i` was emitted at `now`: move the watermark, and ask for
    /// the trades before it if it came past a gap.
    fn after_live(&mut self, i: usize, id: u64, now: i64, out: &mut Output) {
        let state = &mut self.symbols[i];
        let mut moved = state.track.live(id);
        match &self.rest_url {
            Some(rest_url) => {
                if let Some(page) = backfill::next_page(&mut state.track, now) {
                    out.request(backfill::request(page, rest_url, &state.name));
                }
            }
            None => {
                if let Some((first, last)) = state.track.skip_gaps() {
                    moved = true;
                    host::log(
                        LogLevel::Info,
                        &format!(
                            "{}: trades {first} to {last} were missed (backfill is off)",
                            state.name
                        ),
                    );
                }
            }
        }
        if moved {
            self.write_cursor(i, out);
        }
    }

    /// A page of symbol `i`'s old trades answered the page in flight: emit the trades of
    /// the gap, report the ids the venue did not have, ask for the next page.
    fn on_page(&mut self, i: usize, page: Page, response: &HttpResponse, out: &mut Output) {
        let state = &mut self.symbols[i];
        let Some((first, last)) = state.track.gap() else {
            self.on_probe(i, page, response, out);
            return;
        };
        let status = response.status;
        if status == 429 || status >= 500 {
            // Passing: the host already retried; ask again later rather than drop the gap.
            let wait = state.track.failed(response.received_at);
            host::log(
                LogLevel::Warn,
                &format!(
                    "{}: backfill of trades from {first} got HTTP {status}; asking again in {} s",
                    state.name,
                    wait / 1_000_000
                ),
            );
            return;
        }
        let mut next = first;
        if !(200..300).contains(&status) {
            // The venue cannot serve the gap (retention passed, or it refuses): give it up.
            let why = json::response(response)
                .err()
                .map(|e| e.message().to_owned())
                .unwrap_or_default();
            out.errors
                .push(backfill::unavailable(&state.name, first, last, &why));
            next = last + 1;
        } else {
            let mut trades: Vec<HistoricalTrade> = match json::decode(&response.body) {
                Ok(trades) => trades,
                Err(e) => {
                    state.track.failed(response.received_at);
                    out.errors.push(PluginError::bad_input(format!(
                        "{}: backfill page from {first}: {}",
                        state.name,
                        e.message()
                    )));
                    return;
                }
            };
            state.track.succeeded();
            next = state.emit_page(&mut trades, next, last, response.received_at, out);
            if next == first {
                // Nothing of the gap (an empty page): the venue no longer has it.
                out.errors.push(backfill::unavailable(
                    &state.name,
                    first,
                    last,
                    "the venue returned no trades from there",
                ));
                next = last + 1;
            }
        }
        let moved = backfill::fill_to(&mut state.track, next - 1);
        if let Some(rest_url) = &self.rest_url
            && let Some(page) = backfill::next_page(&mut state.track, response.received_at)
        {
            out.request(backfill::request(page, rest_url, &state.name));
        }
        if moved {
            self.write_cursor(i, out);
        }
    }

    /// An answer to a page asked for at start (no live trade seen yet, so no known end):
    /// emit the trades past the watermark in order, and ask for the next page while pages
    /// come back full. A failure is left to the first live trade, which asks for its gap.
    fn on_probe(&mut self, i: usize, page: Page, response: &HttpResponse, out: &mut Output) {
        let state = &mut self.symbols[i];
        let Some(done) = state.track.done() else {
            return;
        };
        let status = response.status;
        if !(200..300).contains(&status) {
            if status == 429 || status >= 500 {
                state.track.failed(response.received_at);
            }
            host::log(
                LogLevel::Warn,
                &format!(
                    "{}: backfill from trade {} at start got HTTP {status}; the first live \
                     trade asks again",
                    state.name,
                    done + 1
                ),
            );
            return;
        }
        let mut trades: Vec<HistoricalTrade> = match json::decode(&response.body) {
            Ok(trades) => trades,
            Err(e) => {
                out.errors.push(PluginError::bad_input(format!(
                    "{}: backfill page from {}: {}",
                    state.name,
                    done + 1,
                    e.message()
                )));
                return;
            }
        };
        state.track.succeeded();
        let next = state.emit_page(&mut trades, done + 1, u64::MAX, response.received_at, out);
        let moved = backfill::fill_to(&mut state.track, next - 1);
        if trades.len() as u64 >= page.len()
            && let Some(rest_url) = &self.rest_url
            && let Some(page) = state
                .track
                .probe(response.received_at, backfill::PAGE_LIMIT)
        {
            out.request(backfill::request(page, rest_url, &state.name));
        }
        if moved {
            self.write_cursor(i, out);
        }
    }
}

impl SymbolState {
    /// Emit the trades of a page from id `next` up to `last` in id order, reporting the ids
    /// missing between them. Returns the id after the last one emitted (or `next`).
    fn emit_page(
        &self,
        trades: &mut [HistoricalTrade],
        mut next: u64,
        last: u64,
        received_at: i64,
        out: &mut Output,
    ) -> u64 {
        trades.sort_unstable_by_key(|t| t.id);
        for trade in trades.iter() {
            if trade.id < next {
                continue; // Emitted already, asked for before the gap, or a repeat.
            }
            if trade.id > last {
                break; // From the live trades on: emitted already.
            }
            if trade.id > next {
                out.errors.push(backfill::unavailable(
                    &self.name,
                    next,
                    trade.id - 1,
                    "not in the venue's answer",
                ));
            }
            next = trade.id + 1;
            self.backfilled(trade, received_at, out);
        }
        next
    }

    /// Emit backfilled `trade`, the same event as had it come live.
    fn backfilled(&self, trade: &HistoricalTrade, received_at: i64, out: &mut Output) {
        let (Some(price), Some(size)) = (
            json::plain_decimal(&trade.price),
            json::plain_decimal(&trade.qty),
        ) else {
            out.errors.push(PluginError::bad_input(format!(
                "{}: backfilled trade {} has a price or size that is not a decimal",
                self.name, trade.id
            )));
            return;
        };
        let payload = Trade {
            exchange: "binance",
            symbol: &self.normalised,
            price: &price,
            size: &size,
            taker_side: taker_side(trade.is_buyer_maker),
            trade_id: trade.id,
            event_timestamp: trade.time,
            atom_timestamp: received_at,
        };
        out.emit(payload.event());
    }
}

impl Connector for BinanceTrades {
    fn manifest() -> Manifest {
        Manifest::new(
            "binance-trades",
            env!("CARGO_PKG_VERSION"),
            "Binance spot trades (<symbol>@trade) over WebSocket, raw, combined or SUBSCRIBE; \
             resumes from a per-symbol trade-id cursor and backfills the trades missed while \
             down or disconnected from the REST old-trade lookup (historicalTrades)",
        )
        .schema(json!({
            "type": "object",
            "required": ["symbols"],
            "additionalProperties": false,
            "properties": {
                "base_url": {"type": "string", "default": default_base_url()},
                "symbols": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "mode": {"enum": ["raw", "combined", "subscribe"], "default": "combined"},
                "rest_url": {
                    "type": "string",
                    "pattern": "^https?://",
                    "description": "REST API for backfill (GET <rest_url>/api/v3/historicalTrades); \
                        default: https://api.binance.com for wss://stream.binance.com:9443, \
                        otherwise base_url with ws:// → http:// and wss:// → https://"
                },
                "backfill": {
                    "type": "boolean",
                    "default": true,
                    "description": "fetch the trades missed between the cursor (or a reconnect) \
                        and the live stream; when off, such gaps are skipped"
                }
            }
        }))
        .example(
            json!({"base_url": "ws://127.0.0.1:9100/binance", "symbols": ["btcusdt", "ethusdt"]}),
        )
    }

    fn open(config: &str, cursor: Option<&str>) -> Result<Self, PluginError> {
        let config: Config = json::config(config)?;
        if config.symbols.is_empty() {
            return Err(PluginError::fatal("invalid config: `symbols` is empty"));
        }
        if config.mode == Mode::Raw && config.symbols.len() != 1 {
            return Err(PluginError::fatal(
                "invalid config: mode `raw` takes exactly one symbol; use `combined` for more",
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
            .map(|text| watermark::marks_or_none(cursor::parse(text), text))
            .unwrap_or_default();
        let mut connector = BinanceTrades {
            rest_url,
            symbols: Vec::with_capacity(config.symbols.len()),
            index: HashMap::new(),
            cursor: CursorText::default(),
            config,
        };
        for raw in &connector.config.symbols {
            let name = raw.to_ascii_uppercase();
            if connector.index.contains_key(&name) {
                continue;
            }
            let track = marks
                .remove(&name)
                .map_or_else(Track::default, Track::resume);
            connector
                .symbols
                .push(SymbolState::new(name.clone(), track));
            connector.index.insert(name, connector.symbols.len() - 1);
        }
        // Cursor entries of symbols no longer configured are dropped.
        Ok(connector)
    }

    /// With a cursor, ask for the trades after it at once, so a quiet venue still catches up.
    fn backfill(&mut self) -> Vec<HttpRequest> {
        let Some(rest_url) = &self.rest_url else {
            return Vec::new();
        };
        let now = host::now_us();
        self.symbols
            .iter_mut()
            .filter_map(|state| {
                let page = state.track.probe(now, backfill::PAGE_LIMIT)?;
                Some(backfill::request(page, rest_url, &state.name))
            })
            .collect()
    }

    fn plan(&self) -> Plan {
        let base = self.config.base_url.trim_end_matches('/');
        let streams = self.stream_names();
        match self.config.mode {
            Mode::Raw => Plan::websocket(format!("{base}/ws/{}", streams[0])),
            Mode::Combined => {
                Plan::websocket(format!("{base}/stream?streams={}", streams.join("/")))
            }
            Mode::Subscribe => Plan::websocket(format!("{base}/ws"))
                .subscribe_json(&json!({"method": "SUBSCRIBE", "params": streams, "id": 1})),
        }
        .into()
    }

    fn on_frame(&mut self, frame: &Frame, out: &mut Output) -> Result<(), PluginError> {
        let message: Message = json::decode(&frame.data)?;
        if let Some(refusal) = &message.error {
            // The subscription will not start: the source stops with Binance's own words.
            return Err(PluginError::fatal(format!(
                "binance refused the subscription: {} (code {}); check the symbols and the \
                 base_url (wss://stream.binance.com:9443 for spot)",
                refusal.msg.as_deref().unwrap_or("no message"),
                refusal
                    .code
                    .map_or_else(|| "none".to_owned(), |c| c.to_string())
            )));
        }
        let stream = message.stream.clone();
        let trade = match message.data {
            Some(inner) => *inner,
            // `{"result":null,"id":1}`: the reply to SUBSCRIBE.
            None if message.id.is_some() => return Ok(()),
            None => message,
        };
        if trade.e.as_deref() != Some("trade") {
            return Err(PluginError::bad_input(match (stream, trade.e) {
                (Some(stream), _) if !stream.ends_with("@trade") => format!(
                    "a frame of the `{stream}` stream: binance-trades reads `<symbol>@trade` \
                     streams only"
                ),
                (_, Some(kind)) => format!("a `{kind}` message, not a trade"),
                _ => "not a trade message".to_owned(),
            }));
        }
        let missing = |field| PluginError::bad_input(format!("trade without `{field}`"));
        let raw_symbol = trade.s.ok_or_else(|| missing("s"))?;
        let price = trade.p.ok_or_else(|| missing("p"))?;
        let size = trade.q.ok_or_else(|| missing("q"))?;
        let trade_id = trade.t.ok_or_else(|| missing("t"))?;
        let trade_time = trade.trade_time.ok_or_else(|| missing("T"))?;
        let buyer_is_maker = trade.m.ok_or_else(|| missing("m"))?;
        let (Some(price), Some(size)) = (json::plain_decimal(&price), json::plain_decimal(&size))
        else {
            return Err(PluginError::bad_input(
                "trade price or size is not a decimal",
            ));
        };
        let i = self.symbol_index(&raw_symbol);
        let payload = Trade {
            exchange: "binance",
            symbol: &self.symbols[i].normalised,
            price: &price,
            size: &size,
            taker_side: taker_side(buyer_is_maker),
            trade_id,
            event_timestamp: trade_time,
            atom_timestamp: frame.received_at,
        };
        out.emit(payload.event());
        self.after_live(i, trade_id, frame.received_at, out);
        Ok(())
    }

    fn on_response(
        &mut self,
        response: &HttpResponse,
        out: &mut Output,
    ) -> Result<(), PluginError> {
        let unknown =
            || PluginError::bad_input(format!("response with unknown tag `{}`", response.tag));
        let (symbol, page) = backfill::from_tag(&response.tag).ok_or_else(unknown)?;
        let &i = self.index.get(symbol).ok_or_else(unknown)?;
        if !self.symbols[i].track.answered(page) {
            // Asked again after a timeout and answered twice, or overtaken: already handled.
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

export_connector!(BinanceTrades);
