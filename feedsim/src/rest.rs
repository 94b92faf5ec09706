//! Binance spot REST: `ticker/price` and `trades`, over the same trade sequence as the
//! WebSocket streams.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::binance::{instrument, parse_symbol};
use crate::content::decimal;
use crate::sim::Sim;
use crate::streams::Kind;

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

/// A Binance-shaped error (`{"code":…,"msg":…}`).
fn error(status: StatusCode, code: i64, msg: String) -> Response {
    (status, Json(json!({"code": code, "msg": msg}))).into_response()
}

/// The `symbol` parameter, checked and uppercased.
fn symbol_of(query: &SymbolQuery) -> Result<Option<String>, String> {
    query.symbol.as_deref().map(parse_symbol).transpose()
}

fn invalid_symbol(reason: String) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        -1121,
        format!("Invalid symbol: {reason}."),
    )
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
        Err(reason) => invalid_symbol(reason),
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

/// `GET /binance/api/v3/trades?symbol=BTCUSDT[&limit=N]`: the last N trades up to the head.
pub(crate) async fn trades(
    State(sim): State<Arc<Sim>>,
    Query(query): Query<SymbolQuery>,
) -> Response {
    let symbol = match symbol_of(&query) {
        Err(reason) => return invalid_symbol(reason),
        Ok(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                -1102,
                "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.".into(),
            );
        }
        Ok(Some(symbol)) => symbol,
    };
    let limit = match query.limit.as_deref().map(str::parse::<u64>) {
        None => DEFAULT_TRADES_LIMIT,
        Some(Ok(n)) if (1..=MAX_TRADES_LIMIT).contains(&n) => n,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                -1100,
                format!(
                    "Illegal characters or value in parameter 'limit'; expected 1 to {MAX_TRADES_LIMIT}."
                ),
            );
        }
    };
    let stream = match sim
        .streams
        .get(&format!("{VENUE}/{symbol}/trades"), VENUE, Kind::Trades)
    {
        Ok(stream) => stream,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, -1000, e.to_string()),
    };
    sim.note_binance_symbol(&symbol);
    let head = sim.head();
    let first = head.saturating_sub(limit - 1).max(1);
    let instrument = instrument(sim.seed(), &symbol);
    let trades: Vec<Value> = (first..=head)
        .map(|n| {
            let t = instrument.trade(sim.seed(), n);
            json!({
                "id": t.id,
                "price": decimal(t.price),
                "qty": decimal(t.qty),
                "quoteQty": decimal(t.price * t.qty),
                "time": sim.event_wall_us(n) / 1_000,
                "isBuyerMaker": t.buyer_maker,
                "isBestMatch": true,
            })
        })
        .collect();
    stream.record_all(first..=head);
    Json(trades).into_response()
}
