//! Binance spot REST: `ticker/price` and `trades`, over the same trade sequence as the
//! WebSocket streams, and the helpers `historicalTrades` shares with them.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::binance::{instrument, parse_symbol, trade_time_ms};
use crate::content::{Instrument, decimal};
use crate::sim::Sim;
use crate::streams::{Kind, Stream};

/// Venue name of REST streams in reports.
const VENUE: &str = "binance-rest";
/// Trades returned without `limit`, and the most with it (Binance's documented values).
const DEFAULT_TRADES_LIMIT: u64 = 500;
const MAX_TRADES_LIMIT: u64 = 1_000;

#[derive(Deserialize)]
pub(crate) struct SymbolQuery {
    symbol: Option<String>,
    limit: Option<String>,
}

/// A Binance-shaped error (`{"code":…,"msg":…}`) with its HTTP status; small, so the helpers
/// can return it in a `Result` and the handlers use `?`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: i64,
    msg: String,
}

impl ApiError {
    /// A 400 Bad Request with Binance error `code`.
    pub(crate) fn bad_request(code: i64, msg: String) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code,
            msg,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"code": self.code, "msg": self.msg});
        (self.status, Json(body)).into_response()
    }
}

/// The `symbol` parameter, checked and uppercased.
fn symbol_of(query: &SymbolQuery) -> Result<Option<String>, String> {
    query.symbol.as_deref().map(parse_symbol).transpose()
}

fn invalid_symbol(reason: String) -> ApiError {
    ApiError::bad_request(-1121, format!("Invalid symbol: {reason}."))
}

/// A mandatory `symbol` parameter, checked and uppercased, or the venue's error.
pub(crate) fn required_symbol(symbol: Option<&str>) -> Result<String, ApiError> {
    match symbol.map(parse_symbol).transpose() {
        Err(reason) => Err(invalid_symbol(reason)),
        Ok(None) => Err(ApiError::bad_request(
            -1102,
            "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.".into(),
        )),
        Ok(Some(symbol)) => Ok(symbol),
    }
}

/// The `limit` of a trade list: 1 to [`MAX_TRADES_LIMIT`], [`DEFAULT_TRADES_LIMIT`] if absent.
pub(crate) fn trades_limit(limit: Option<&str>) -> Result<u64, ApiError> {
    match limit.map(str::parse::<u64>) {
        None => Ok(DEFAULT_TRADES_LIMIT),
        Some(Ok(n)) if (1..=MAX_TRADES_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request(
            -1100,
            format!(
                "Illegal characters or value in parameter 'limit'; expected 1 to {MAX_TRADES_LIMIT}."
            ),
        )),
    }
}

/// The stream called `name`, or the venue's error when the stream limit is reached.
pub(crate) fn stream(sim: &Sim, name: &str, venue: &'static str) -> Result<Arc<Stream>, ApiError> {
    sim.streams
        .get(name, venue, Kind::Trades)
        .map_err(|e| ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: -1000,
            msg: e.to_string(),
        })
}

/// The report stream of everything the REST endpoints served for `symbol`.
pub(crate) fn rest_stream(sim: &Sim, symbol: &str) -> Result<Arc<Stream>, ApiError> {
    stream(sim, &format!("{VENUE}/{symbol}/trades"), VENUE)
}

/// Oldest trade id still served when the head is `head` (see `history_retention`).
pub(crate) fn oldest_kept(sim: &Sim, head: u64) -> u64 {
    (head + 1)
        .saturating_sub(sim.config.history_retention)
        .max(1)
}

/// Trades `ids` of one instrument in Binance's REST shape; the same generator as the
/// WebSocket, so trade `n` has the same price, size, side and time on both.
pub(crate) fn trade_list(
    sim: &Sim,
    instrument: &Instrument,
    ids: std::ops::RangeInclusive<u64>,
) -> Vec<Value> {
    ids.map(|n| {
        let t = instrument.trade(sim.seed(), n);
        json!({
            "id": t.id,
            "price": decimal(t.price),
            "qty": decimal(t.qty),
            "quoteQty": decimal(t.price * t.qty),
            "time": trade_time_ms(sim, n),
            "isBuyerMaker": t.buyer_maker,
            "isBestMatch": true,
        })
    })
    .collect()
}

fn price_entry(sim: &Sim, symbol: &str, head: u64) -> Value {
    let trade = instrument(sim.seed(), symbol).trade(sim.seed(), head);
    json!({"symbol": symbol, "price": decimal(trade.price)})
}

/// `GET /binance/api/v3/ticker/price[?symbol=BTCUSDT]`: the price of the head trade.
pub(crate) async fn ticker_price(
    State(sim): State<Arc<Sim>>,
    Query(query): Query<SymbolQuery>,
) -> Response {
    let head = sim.head();
    match symbol_of(&query) {
        Err(reason) => invalid_symbol(reason).into_response(),
        Ok(Some(symbol)) => {
            sim.note_binance_symbol(&symbol);
            Json(price_entry(&sim, &symbol, head)).into_response()
        }
        Ok(None) => {
            let all: Vec<Value> = sim
                .binance_symbols()
                .iter()
                .map(|s| price_entry(&sim, s, head))
                .collect();
            Json(all).into_response()
        }
    }
}

/// `GET /binance/api/v3/trades?symbol=BTCUSDT[&limit=N]`: the last N trades up to the head
/// (none older than the retention window).
pub(crate) async fn trades(
    State(sim): State<Arc<Sim>>,
    Query(query): Query<SymbolQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let symbol = required_symbol(query.symbol.as_deref())?;
    let limit = trades_limit(query.limit.as_deref())?;
    let stream = rest_stream(&sim, &symbol)?;
    sim.note_binance_symbol(&symbol);
    let head = sim.head();
    let first = head.saturating_sub(limit - 1).max(oldest_kept(&sim, head));
    let trades = trade_list(&sim, &instrument(sim.seed(), &symbol), first..=head);
    stream.record_all(first..=head);
    Ok(Json(trades))
}
