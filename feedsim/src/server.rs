//! The router: every venue, control and report endpoint on one listener.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router, middleware};

use crate::report::Report;
use crate::sim::Sim;
use crate::{binance, coinbase, coinbase_rest, evm, faults, history, kraken, rest};

/// All routes. HTTP faults apply to the REST and EVM routes only.
pub(crate) fn router(sim: Arc<Sim>) -> Router {
    let faulty = Router::new()
        .route("/binance/api/v3/ticker/price", get(rest::ticker_price))
        .route("/binance/api/v3/trades", get(rest::trades))
        .route(
            "/binance/api/v3/historicalTrades",
            get(history::historical_trades),
        )
        .route(
            "/coinbase/products/{product_id}/trades",
            get(coinbase_rest::trades),
        )
        // Other Coinbase product routes are not simulated: Coinbase's 404 body.
        .route(
            "/coinbase/products/{product_id}",
            get(coinbase_rest::not_found),
        )
        .route(
            "/coinbase/products/{product_id}/{endpoint}",
            get(coinbase_rest::not_found),
        )
        .route("/evm/{chain}", post(evm::handler))
        .layer(middleware::from_fn_with_state(
            sim.clone(),
            faults::http_faults,
        ));
    Router::new()
        .route("/binance/ws", get(binance::live))
        .route("/binance/ws/{stream}", get(binance::raw))
        .route("/binance/stream", get(binance::combined))
        .route("/coinbase", get(coinbase::handler))
        .route("/kraken/v2", get(kraken::handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/control/pause", post(pause))
        .route("/control/resume", post(resume))
        .route("/report", get(report))
        .merge(faulty)
        .with_state(sim)
}

async fn pause(State(sim): State<Arc<Sim>>) -> Json<serde_json::Value> {
    sim.pause();
    Json(serde_json::json!({"paused": true}))
}

async fn resume(State(sim): State<Arc<Sim>>) -> Json<serde_json::Value> {
    sim.resume();
    Json(serde_json::json!({"paused": false}))
}

async fn report(State(sim): State<Arc<Sim>>) -> Json<Report> {
    Json(sim.report())
}
