//! Coinbase Exchange REST `GET /coinbase/products/{product_id}/trades`: the latest trades of a
//! product, or the page older than a trade id, so a client that missed part of the WebSocket
//! `matches` channel can fetch exactly the ids it lacks.
//!
//! Trades come from the same generator as `match` messages (trade id = event number `n`; same
//! price, size, side and time), only ids within [`SimConfig::history_retention`] are served,
//! and every id served is recorded as sent for the product's `matches` stream
//! (`coinbase/<PRODUCT>/matches`).
//!
//! [`SimConfig::history_retention`]: crate::SimConfig::history_retention

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::coinbase::{self, instrument, match_trade, matches_stream_name, parse_product};
use crate::rest::oldest_kept;
use crate::sim::Sim;
use crate::streams::Kind;

/// Trades returned without `limit`, and the most with it (Coinbase's documented values).
const DEFAULT_LIMIT: u64 = 100;
const MAX_LIMIT: u64 = 1_000;

#[derive(Deserialize)]
pub(crate) struct TradesQuery {
    limit: Option<String>,
    after: Option<String>,
}

/// A Coinbase-shaped error (`{"message": …}`) with its HTTP status.
#[derive(Debug)]
pub(crate) struct CoinbaseError {
    status: StatusCode,
    message: String,
}

impl CoinbaseError {
    fn bad_request(message: String) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message,
        }
    }
}

impl IntoResponse for CoinbaseError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"message": self.message}))).into_response()
    }
}

/// `GET /coinbase/products/{product_id}/trades[?limit=N][&after=X]`.
///
/// Newest first: without `after`, trades `head` down to `head - limit + 1`; with `after=X`,
/// trades older than `X`, i.e. `min(X - 1, head)` down to `X - limit`. Never below the oldest
/// id kept (`history_retention`), so a page may be short or `[]`. `limit` is 1 to 1000,
/// default 100. A non-empty page carries `cb-before` (its largest trade id) and `cb-after`
/// (its smallest; pass it as `after` for the next, older page).
pub(crate) async fn trades(
    State(sim): State<Arc<Sim>>,
    Path(product_id): Path<String>,
    Query(query): Query<TradesQuery>,
) -> Result<Response, CoinbaseError> {
    let product = parse_product(&product_id).map_err(CoinbaseError::bad_request)?;
    let limit = limit(query.limit.as_deref())?;
    let after = query.after.as_deref().map(after).transpose()?;
    let stream = sim
        .streams
        .get(
            &matches_stream_name(&product),
            coinbase::VENUE,
            Kind::Trades,
        )
        .map_err(|e| CoinbaseError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: e.to_string(),
        })?;
    let head = sim.head();
    let oldest = oldest_kept(&sim, head);
    let newest = match after {
        Some(x) => x.saturating_sub(1).min(head),
        None => head,
    };
    let floor = newest.saturating_sub(limit - 1).max(oldest);
    // Empty when `newest` is below the window (or 0: ids start at 1).
    let ids = floor..=newest;
    let instrument = instrument(sim.seed(), &product);
    let trades: Vec<Value> = ids
        .clone()
        .rev()
        .map(|n| {
            let t = match_trade(&sim, &instrument, n);
            json!({
                "time": t.time,
                "trade_id": n,
                "price": t.price,
                "size": t.size,
                "side": t.side,
            })
        })
        .collect();
    // Recorded before the body is written, as the Binance routes do: a response lost in transit
    // still counts as sent, the same as a WebSocket frame lost after a successful send.
    stream.record_all(ids.clone());
    let mut response = Json(trades).into_response();
    if !ids.is_empty() {
        let headers = response.headers_mut();
        headers.insert("cb-before", HeaderValue::from(*ids.end()));
        headers.insert("cb-after", HeaderValue::from(*ids.start()));
    }
    Ok(response)
}

/// The `limit` parameter: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] if absent.
fn limit(raw: Option<&str>) -> Result<u64, CoinbaseError> {
    match raw.map(str::parse::<u64>) {
        None => Ok(DEFAULT_LIMIT),
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(CoinbaseError::bad_request(format!(
            "Invalid limit: expected an integer from 1 to {MAX_LIMIT}"
        ))),
    }
}

/// The `after` cursor: a trade id; the page holds ids strictly below it.
fn after(raw: &str) -> Result<u64, CoinbaseError> {
    raw.parse::<u64>().map_err(|_| {
        CoinbaseError::bad_request(format!(
            "Invalid after: expected a trade id (an integer from 0 to {})",
            u64::MAX
        ))
    })
}

/// `/coinbase/products/{product_id}[/{other}]`: Coinbase's 404 for a route it does not have.
pub(crate) async fn not_found() -> CoinbaseError {
    CoinbaseError {
        status: StatusCode::NOT_FOUND,
        message: "NotFound".into(),
    }
}
