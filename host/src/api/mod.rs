//! The HTTP surface of a node: `/api/v1` (JSON), `/ws` (records), `/metrics` (Prometheus),
//! `/healthz`, `/readyz`. Changes need `Authorization: Bearer <api.token>` and reads
//! `api.read_token` (or `api.token`) when they are configured; both must be when the API
//! listens beyond loopback.

mod auth;
pub mod dashboard;
mod deadletters;
mod error;
mod limited;
mod metrics;
mod openapi;
mod ws;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use error::{ApiError, AppState};

use crate::source::SourceSpec;
use crate::supervisor::{NodeState, RolloutRequest};

/// Largest plugin upload.
const MAX_PLUGIN_BYTES: usize = 64 * 1024 * 1024;

/// Serve the API on `listener` until the node shuts down, with at most `api.max_connections`
/// connections open at once.
pub(crate) fn serve(listener: TcpListener, state: AppState) -> JoinHandle<()> {
    let shutdown = state.stop_token();
    let stats = Arc::new(limited::ConnectionStats::default());
    let listener = limited::LimitedListener::new(listener, state.max_connections(), stats.clone());
    let app = router(state).layer(axum::Extension(stats));
    tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::error!("the HTTP API stopped: {e}");
        }
    })
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/ws", get(ws::ws))
        .route("/api/v1/openapi.json", get(openapi::openapi))
        .route("/api/v1/status", get(status))
        .route("/api/v1/sources", get(list_sources).post(add_source))
        .route(
            "/api/v1/sources/{id}",
            put(replace_source).delete(remove_source).get(get_source),
        )
        .route("/api/v1/sources/{id}/pause", post(pause_source))
        .route("/api/v1/sources/{id}/resume", post(resume_source))
        .route("/api/v1/plugins", get(list_plugins).post(install_plugin))
        .route(
            "/api/v1/plugins/{plugin}",
            axum::routing::delete(remove_plugin),
        )
        .route("/api/v1/rollouts", post(rollout))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/events", get(events))
        .merge(deadletters::routes())
        .merge(dashboard::routes())
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .with_state(state.clone())
        // Node-to-node routes authenticate with the cluster key instead of api.token.
        .merge(crate::cluster::http::routes(state.peer_context()))
        .layer(DefaultBodyLimit::max(MAX_PLUGIN_BYTES))
}

async fn readyz(State(state): State<AppState>) -> Response {
    let store = state.store_stats();
    let ready = store.connected;
    let body = Json(
        json!({ "ready": ready, "store_connected": store.connected, "store_error": store.last_error }),
    );
    if ready {
        (StatusCode::OK, body).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

/// This node, its store and fan-out, and the sources and plugins it runs (`/api/v1/status`).
pub fn status_json(state: &NodeState) -> Value {
    json!({
        "node": {
            "id": state.node_id(),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": state.uptime().as_secs(),
            "api": state.api_bind().to_string(),
            "gossip": state.cluster().gossip_addr.to_string(),
        },
        "plugins": plugins_json(state),
        "store": state.store_stats(),
        "fanout": state.fanout_stats(),
        "gossip": state.cluster().stats.snapshot(),
    })
}

async fn status(State(state): State<AppState>) -> Json<Value> {
    let mut body = status_json(&state);
    body["sources"] = json!(state.sources().await);
    Json(body)
}

/// Members as this node sees them, with the sources each owns (`/api/v1/cluster`).
pub async fn cluster_json(state: &NodeState) -> Value {
    let cluster = state.cluster();
    let view = cluster.view();
    let mut owned: HashMap<String, usize> = HashMap::new();
    for entry in cluster.catalog.live("source/") {
        let Some(spec) = entry
            .value
            .and_then(|v| serde_json::from_value::<SourceSpec>(v).ok())
        else {
            continue;
        };
        if !spec.paused {
            for owner in state.owners_of(&view, &spec) {
                *owned.entry(owner).or_default() += 1;
            }
        }
    }
    let now_ms = crate::clock::now_us() / 1000;
    let member = |peer: &crate::cluster::Peer, state: &str, me: bool| {
        json!({
            "id": peer.id,
            "generation": peer.generation,
            "state": state,
            "gossip": peer.gossip.to_string(),
            "api": peer.url(),
            "version": peer.version,
            "started_at_ms": peer.generation,
            "uptime_s": (now_ms - peer.generation as i64).max(0) / 1000,
            "sources_owned": owned.get(&peer.id).copied().unwrap_or(0),
            "self": me,
        })
    };
    let mut members = vec![member(&view.me, "alive", true)];
    for m in &view.others {
        let state = serde_json::to_value(m.state).expect("states serialise");
        members.push(member(&m.peer, state.as_str().unwrap_or("?"), false));
    }
    json!({
        "self": view.me.id,
        "cluster_id": cluster.settings.cluster_id,
        "members": members,
        "catalog": { "entries": cluster.catalog.len(), "fingerprint": format!("{:016x}", cluster.catalog.fingerprint()) },
        "gossip": cluster.stats.snapshot(),
    })
}

async fn cluster(State(state): State<AppState>) -> Json<Value> {
    Json(cluster_json(&state).await)
}

/// Every source of the cluster with its owner and the owner's report (`/api/v1/sources`).
pub async fn sources_json(state: &NodeState) -> Value {
    json!(state.cluster_sources().await)
}

async fn list_sources(State(state): State<AppState>) -> Json<Value> {
    Json(sources_json(&state).await)
}

/// The event log after `after` (`/api/v1/events?after=N`).
pub fn events_json(state: &NodeState, after: u64) -> Value {
    json!({ "events": state.events_after(after) })
}

async fn events(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let after = match query.get("after") {
        None => 0,
        Some(a) => a.parse().map_err(|_| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("after=`{a}` is not a number: give the last seq you have"),
            )
        })?,
    };
    Ok(Json(events_json(&state, after)))
}

async fn pause_source(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.set_paused(&id, true).await?;
    Ok(Json(json!({ "paused": id })))
}

async fn resume_source(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.set_paused(&id, false).await?;
    Ok(Json(json!({ "resumed": id })))
}

async fn get_source(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (spec, report) = state
        .source(&id)
        .await
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no source `{id}`")))?;
    Ok(Json(json!({ "status": report, "spec": spec })))
}

fn parse_spec(body: &Bytes) -> Result<SourceSpec, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!("the body is not a source spec ({e}); expected {{\"id\", \"plugin\", \"config\", \"transforms\"}}"),
        )
    })
}

/// One spec, or an array of specs (added all together or not at all).
async fn add_source(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        let specs: Vec<SourceSpec> = serde_json::from_slice(&body).map_err(|e| {
            ApiError(
                StatusCode::BAD_REQUEST,
                format!("the body is not an array of source specs ({e})"),
            )
        })?;
        if specs.is_empty() {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                "the array is empty: give at least one source spec".into(),
            ));
        }
        let added = state.add_sources(specs, false).await?;
        return Ok((StatusCode::CREATED, Json(json!({ "added": added }))).into_response());
    }
    let spec = parse_spec(&body)?;
    let id = spec.id.clone();
    state.add_source(spec, false).await?;
    Ok((StatusCode::CREATED, Json(json!({ "added": id }))).into_response())
}

async fn replace_source(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let spec = parse_spec(&body)?;
    if spec.id != id {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("the body's id `{}` is not the path's `{id}`", spec.id),
        ));
    }
    state.add_source(spec, true).await?;
    Ok(Json(json!({ "replaced": id })))
}

/// Remove a plugin version from the cluster (refused while a source uses it).
async fn remove_plugin(
    State(state): State<AppState>,
    Path(plugin): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let removed = state.remove_plugin(&plugin).await?;
    Ok(Json(json!({ "removed": removed })))
}

/// Move a plugin's sources between its versions: a canary, a promotion or a rollback.
async fn rollout(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let request: RolloutRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "the body is not a rollout ({e}); expected {{\"plugin\", \"to\", \"canary_percent\", \"ids\", \"rollback\"}}"
            ),
        )
    })?;
    Ok(Json(json!(state.rollout(request).await?)))
}

async fn remove_source(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.remove_source(&id).await?;
    Ok(Json(json!({ "removed": id })))
}

/// Installed plugins, with metrics where loaded (`/api/v1/plugins`).
pub fn plugins_json(state: &NodeState) -> Value {
    let loaded: HashMap<String, Value> = state
        .loaded_plugins()
        .into_iter()
        .map(|p| (p.manifest().digest.to_hex(), json!(p.metrics().snapshot())))
        .collect();
    let installed = state.installed_plugins();
    Value::Array(
        installed
            .into_iter()
            .map(|m| {
                let metrics = loaded.get(&m.digest.to_hex()).cloned();
                let loaded_on: Vec<&str> = metrics.iter().map(|_| state.node_id()).collect();
                json!({ "manifest": m, "loaded": metrics.is_some(), "loaded_on": loaded_on, "metrics": metrics })
            })
            .collect(),
    )
}

async fn list_plugins(State(state): State<AppState>) -> Json<Value> {
    let sources = sources_json(&state).await;
    Json(plugins_on_nodes(plugins_json(&state), &sources))
}

/// `plugins` (from [`plugins_json`]) with `loaded_on` widened to every node that runs a
/// source of the plugin, according to `sources` (from [`sources_json`]).
pub fn plugins_on_nodes(mut plugins: Value, sources: &Value) -> Value {
    let mut users: HashMap<&str, Vec<&str>> = HashMap::new();
    for source in sources.as_array().into_iter().flatten() {
        if let (Some(plugin), Some(node)) = (source["plugin"].as_str(), source["node"].as_str()) {
            let nodes = users.entry(plugin).or_default();
            if !nodes.contains(&node) {
                nodes.push(node);
            }
        }
    }
    for plugin in plugins.as_array_mut().into_iter().flatten() {
        let mut on: Vec<String> = plugin["loaded_on"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect();
        for key in [&plugin["manifest"]["name"], &plugin["manifest"]["digest"]] {
            let nodes: &[&str] = key.as_str().and_then(|k| users.get(k)).map_or(&[], |v| v);
            for &node in nodes {
                if !on.iter().any(|n| n.as_str() == node) {
                    on.push(node.to_owned());
                }
            }
        }
        on.sort();
        plugin["loaded_on"] = json!(on);
    }
    plugins
}

/// The header an upload's publisher signature comes in: `<public key hex>:<signature hex>`
/// (what `anode plugin sign` writes to `<file>.sig`).
const SIGNATURE_HEADER: &str = "x-anode-plugin-signature";

async fn install_plugin(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let signature = match headers.get(SIGNATURE_HEADER) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .map_err(|e| e.to_string())
                .and_then(crate::plugin::PluginSignature::from_text)
                .map_err(|e| {
                    ApiError(StatusCode::BAD_REQUEST, format!("{SIGNATURE_HEADER}: {e}"))
                })?,
        ),
    };
    let manifest = state.install_plugin(body, signature).await?;
    Ok((StatusCode::CREATED, Json(json!(manifest))).into_response())
}
