//! Binance's "old trade lookup", `GET /binance/api/v3/historicalTrades`: trades by id, so a
//! client that missed part of a WebSocket trade stream can fetch exactly the ids it lacks.
//!
//! Trades come from the same generator as the WebSocket stream, and every id served is
//! recorded as sent for that symbol's WebSocket trade stream (`binance/<symbol>@trade`): a
//! backfilled id counts as delivered for the stream, so comparing the report with what a
//! consumer stored holds across gaps it filled over REST.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::Value;

use crate::binance::{self, instrument, trade_stream_name};
use crate::rest::{
    ApiError, oldest_kept, required_symbol, rest_stream, stream, trade_list, trades_limit,
};
use crate::sim::Sim;

#[derive(Deserialize)]
pub(crate) struct HistoryQuery {
    symbol: Option<String>,
    limit: Option<String>,
    #[serde(rename = "fromId")]
    from_id: Option<String>,
}

/// `GET /binance/api/v3/historicalTrades?symbol=BTCUSDT[&fromId=N][&limit=L]`.
///
/// With `fromId`: trades `start ..= min(start + limit - 1, head)` where `start` is `fromId`
/// raised to the oldest id kept (`history_retention`); `[]` if `fromId` is past the head.
/// Without it: the most recent `limit` trades, like Binance. `limit` is 1 to 1000, default 500.
pub(crate) async fn historical_trades(
    State(sim): State<Arc<Sim>>,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let symbol = required_symbol(query.symbol.as_deref())?;
    let limit = trades_limit(query.limit.as_deref())?;
    let from_id = query.from_id.as_deref().map(from_id).transpose()?;
    let ws_stream = stream(&sim, &trade_stream_name(&symbol), binance::VENUE)?;
    let rest = rest_stream(&sim, &symbol)?;
    sim.note_binance_symbol(&symbol);
    let head = sim.head();
    let oldest = oldest_kept(&sim, head);
    let first = match from_id {
        Some(from) => from.max(oldest),
        None => head.saturating_sub(limit - 1).max(oldest),
    };
    let last = first.saturating_add(limit - 1).min(head);
    let ids = first..=last;
    let trades = trade_list(&sim, &instrument(sim.seed(), &symbol), ids.clone());
    // Recorded before the body is written, as `trades` does: a response lost in transit still
    // counts as sent, the same as a WebSocket frame lost after a successful send.
    ws_stream.record_all(ids.clone());
    rest.record_all(ids);
    Ok(Json(trades))
}

/// The `fromId` parameter: a trade id (ids start at 1; 0 means "the oldest kept").
fn from_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>().map_err(|_| {
        ApiError::bad_request(
            -1100,
            format!(
                "Illegal characters found in parameter 'fromId'; legal range is '0' to '{}'.",
                u64::MAX
            ),
        )
    })
}
