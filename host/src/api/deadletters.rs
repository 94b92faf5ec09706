//! `/api/v1/deadletters`: what the node could not process — list, show, replay through a
//! (fixed) plugin build, purge.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, AppState};
use crate::deadletter::{DeadQuery, DeadStage};
use crate::supervisor::ReplayRequest;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/deadletters", get(list).delete(purge))
        .route("/api/v1/deadletters/replay", post(replay))
        .route("/api/v1/deadletters/{id}", get(show))
}

/// The query string of a list or a purge.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct Params {
    source: Option<String>,
    stage: Option<String>,
    /// `true`: only those not replayed yet.
    pending: Option<bool>,
    after: Option<i64>,
    limit: Option<usize>,
    /// A purge with no other filter must say `all=true`.
    all: Option<bool>,
}

impl Params {
    fn query(self) -> Result<DeadQuery, ApiError> {
        let stage = match self.stage.as_deref() {
            None | Some("") => None,
            Some(name) => Some(DeadStage::parse(name).ok_or_else(|| {
                ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("no stage `{name}`: use decode, transform, store or cursor"),
                )
            })?),
        };
        Ok(DeadQuery {
            source: self.source.filter(|s| !s.is_empty()),
            stage,
            ids: None,
            pending: self.pending.unwrap_or(false),
            after: self.after,
            limit: self.limit,
        })
    }
}

fn bad_query(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, format!("bad query: {e}"))
}

async fn list(
    State(state): State<AppState>,
    params: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params.map_err(bad_query)?;
    let query = params.query()?;
    let letters = state.dead_letters(&query).await?;
    let counts = state.store_stats().dead_letters;
    Ok(Json(json!({ "deadletters": letters, "written": counts })))
}

async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: i64 = id.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("`{id}` is not a dead letter number"),
        )
    })?;
    let query = DeadQuery {
        ids: Some(vec![id]),
        ..DeadQuery::default()
    };
    let letter = state.dead_letters(&query).await?.into_iter().next();
    let letter =
        letter.ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no dead letter {id}")))?;
    Ok(Json(json!(letter)))
}

async fn replay(
    State(state): State<AppState>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) = body.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    // An object only (serde would take a struct from an array too).
    if !body.is_object() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "the body is a JSON object: {\"source\", \"stage\", \"ids\", \"plugin\"}, each optional".into(),
        ));
    }
    let request: ReplayRequest = serde_json::from_value(body)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("bad body: {e}")))?;
    let report = state.replay_dead_letters(request).await?;
    Ok(Json(json!(report)))
}

async fn purge(
    State(state): State<AppState>,
    params: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = params.map_err(bad_query)?;
    let all = params.all.unwrap_or(false);
    let query = params.query()?;
    let filtered = query.source.is_some() || query.stage.is_some() || query.after.is_some();
    if !filtered && !all {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "a purge names what it deletes: `source`, `stage` or `after`, or `all=true` for \
             every dead letter"
                .into(),
        ));
    }
    let purged = state.purge_dead_letters(&query).await?;
    Ok(Json(json!({ "purged": purged })))
}
