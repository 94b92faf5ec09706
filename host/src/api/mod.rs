//! The HTTP surface of a node: `/api/v1` (JSON), `/ws` (records), `/metrics` (Prometheus),
//! `/healthz`, `/readyz`. Changes need `Authorization: Bearer <api.token>` and reads
//! `api.read_token` (or `api.token`) when they are configured; both must be when the API
//! listens beyond loopback.

pub mod dashboard;
mod deadletters;
mod limited;
mod metrics;
mod openapi;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::cluster::relay::HEARD_WITHIN;
use crate::fanout::{Delivery, Filter};
use crate::sink::{LogStart, Tail};
use crate::source::SourceSpec;
use crate::supervisor::{NodeError, NodeState, RolloutRequest, log_filter};

type AppState = Arc<NodeState>;

/// Largest message a `/ws` subscriber may send (a filter).
const SUBSCRIBER_MESSAGE_MAX: usize = 64 * 1024;
/// What a subscriber's socket reads into at a time.
const SUBSCRIBER_READ_BUFFER: usize = 4 * 1024;
/// Largest plugin upload.
const MAX_PLUGIN_BYTES: usize = 64 * 1024 * 1024;
/// How long a send to a subscriber may take before it counts as stuck.
const SUBSCRIBER_SEND_TIMEOUT: Duration = Duration::from_secs(10);

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
        .route("/ws", get(ws))
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
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state.clone())
        // Node-to-node routes authenticate with the cluster key instead of api.token.
        .merge(crate::cluster::http::routes(state.peer_context()))
        .layer(DefaultBodyLimit::max(MAX_PLUGIN_BYTES))
}

/// An API error: a status and a message that says what to do.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let status = match e {
            NodeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            NodeError::NotFound(_) => StatusCode::NOT_FOUND,
            NodeError::Conflict(_) => StatusCode::CONFLICT,
            NodeError::Startup(_) => StatusCode::INTERNAL_SERVER_ERROR,
            NodeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, e.to_string())
    }
}

/// Routes anyone may read: probes and the dashboard's page and assets (which hold no data).
fn open_route(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/" | "/assets/app.js" | "/assets/style.css"
    )
}

/// The token a request carries: `Authorization: Bearer …`, or `?token=…` for clients that
/// cannot set headers (browsers' `EventSource` and `WebSocket`).
fn given_token(request: &Request) -> Option<String> {
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(token) = bearer {
        return Some(token.to_owned());
    }
    let query = request.uri().query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

/// Whether `given` is `secret`, in time that does not depend on where they differ.
fn same_secret(given: &str, secret: &str) -> bool {
    use sha2::Digest as _;
    let (a, b) = (sha2::Sha256::digest(given), sha2::Sha256::digest(secret));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Scopes: `api.token` for changes (and reads), `api.read_token` for reads. A route is open
/// when no token of its scope is set (only a loopback API may run so).
async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let path = request.uri().path();
    if open_route(path) || path.starts_with("/cluster/v1/") {
        return Ok(next.run(request).await);
    }
    let mutating = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let given = given_token(&request);
    let holds = |secret: Option<&str>| matches!((secret, &given), (Some(secret), Some(given)) if same_secret(given, secret));
    let write = state.api_token();
    let read = state.read_token();
    let allowed = if mutating {
        write.is_none() || holds(write)
    } else {
        read.is_none() || holds(read) || holds(write)
    };
    if allowed {
        return Ok(next.run(request).await);
    }
    state.count_refused_request();
    Err(ApiError(
        StatusCode::UNAUTHORIZED,
        if mutating {
            "this route changes the node: send `Authorization: Bearer <api.token>` \
             (the CLI reads ANODE_TOKEN)"
                .into()
        } else {
            "reading this node needs a token: send `Authorization: Bearer <api.read_token>` \
             (or api.token), or `?token=…` from a browser or WebSocket client"
                .into()
        },
    ))
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

async fn ws(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let filter = match Filter::from_query(&query) {
        Ok(filter) => filter,
        Err(message) => return ApiError(StatusCode::BAD_REQUEST, message).into_response(),
    };
    // A subscriber sends only small filter messages. The read buffer is small too: tungstenite
    // zero-fills it before every read, and a 128 KiB default cost a tenth of the node's CPU
    // with ten subscribers (the read half is polled whenever the socket wakes).
    let upgrade = upgrade
        .read_buffer_size(SUBSCRIBER_READ_BUFFER)
        .max_message_size(SUBSCRIBER_MESSAGE_MAX)
        .max_frame_size(SUBSCRIBER_MESSAGE_MAX);
    let Some(since) = query.get("since") else {
        return upgrade.on_upgrade(move |socket| serve_subscriber(socket, state, filter));
    };
    // A resuming subscriber reads the durable log: stored records only.
    if query.get("after").is_some_and(|a| a.trim() == "decoded") {
        return ApiError(
            StatusCode::BAD_REQUEST,
            "since= replays stored records: it cannot be combined with after=decoded".into(),
        )
        .into_response();
    }
    if filter.final_only {
        return ApiError(
            StatusCode::BAD_REQUEST,
            "since= with after=final is not supported yet: replay with after=stored and keep \
             the records whose upstream_id starts with `final:`"
                .into(),
        )
        .into_response();
    }
    let start = match LogStart::parse(since, crate::clock::now_us()) {
        Ok(start) => start,
        Err(message) => return ApiError(StatusCode::BAD_REQUEST, message).into_response(),
    };
    match state.tail(start, &filter).await {
        Ok(tail) => {
            let since = since.clone();
            upgrade.on_upgrade(move |socket| serve_resuming(socket, state, filter, since, tail))
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// A close frame's reason: at most 123 bytes.
fn close_reason(text: &str) -> String {
    let mut end = text.len().min(120);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// What a subscriber sent: a new filter, or `None` for anything else.
fn subscribe_message(text: &str) -> Option<Filter> {
    let v = serde_json::from_str::<Value>(text).ok()?;
    if v.get("type")?.as_str()? != "subscribe" {
        return None;
    }
    serde_json::from_value(v.get("filter").cloned().unwrap_or(json!({}))).ok()
}

const SUBSCRIBE_HELP: &str =
    "send {\"type\":\"subscribe\",\"filter\":{\"sources\":[..],\"streams\":[..],\"keys\":[..]}}";

/// Stream the durable log to one resuming subscriber: the stored records from its start, each
/// with its `position`, then the new ones as they are stored, until it leaves or the node
/// stops. A slow reader is never dropped from: the log waits for it.
async fn serve_resuming(
    socket: WebSocket,
    state: AppState,
    filter: Filter,
    since: String,
    (mut tail, _permit): (Tail, tokio::sync::OwnedSemaphorePermit),
) {
    let (mut tx, mut rx) = socket.split();
    let hello =
        json!({ "type": "subscribed", "node": state.node_id(), "filter": filter, "since": since });
    if tx.send(Message::text(hello.to_string())).await.is_err() {
        return;
    }
    loop {
        let outgoing: Vec<String> = tokio::select! {
            () = state.stopping() => {
                let _ = tx.send(Message::Close(Some(CloseFrame { code: 1001, reason: "node shutting down".into() }))).await;
                return;
            }
            records = tail.next() => match records {
                Ok(records) => records,
                Err(e) => {
                    let message = format!("{e}; reconnect with since=<the last position you received>");
                    let _ = tx.send(Message::text(json!({ "type": "error", "message": message }).to_string())).await;
                    let _ = tx.send(Message::Close(Some(CloseFrame { code: 1011, reason: close_reason(&message).into() }))).await;
                    return;
                }
            },
            incoming = rx.next() => match incoming {
                Some(Ok(Message::Text(text))) => match subscribe_message(&text) {
                    Some(filter) => match tail.set_filter(log_filter(&filter)).await {
                        Ok(()) => vec![json!({ "type": "subscribed", "node": state.node_id(), "filter": filter }).to_string()],
                        Err(e) => vec![json!({ "type": "error", "message": e.to_string() }).to_string()],
                    },
                    None => vec![json!({ "type": "error", "message": SUBSCRIBE_HELP }).to_string()],
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
        };
        if !matches!(
            tokio::time::timeout(SUBSCRIBER_SEND_TIMEOUT, send_all(&mut tx, outgoing)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}

/// Stream records to one subscriber until it leaves, the node stops, or it falls behind.
async fn serve_subscriber(socket: WebSocket, state: AppState, filter: Filter) {
    let (mut tx, mut rx) = socket.split();
    let mut subscription = match state.subscribe(filter.clone()) {
        Ok(s) => s,
        Err(e) => {
            let _ = tx
                .send(Message::Close(Some(CloseFrame {
                    code: 1013,
                    reason: e.to_string().into(),
                })))
                .await;
            return;
        }
    };
    // Subscribed once every live peer has heard the filter: from then on nothing of their
    // sources is missed.
    subscription.until_peers_heard(HEARD_WITHIN).await;
    let hello = json!({ "type": "subscribed", "node": state.node_id(), "filter": filter });
    if tx.send(Message::text(hello.to_string())).await.is_err() {
        return;
    }
    let mut notified_drops = 0u64;
    loop {
        let outgoing: Vec<String> = tokio::select! {
            () = state.stopping() => {
                let _ = tx.send(Message::Close(Some(CloseFrame { code: 1001, reason: "node shutting down".into() }))).await;
                return;
            }
            delivery = subscription.next() => match delivery {
                Delivery::Record { json, dropped_total, .. } => {
                    let mut out = Vec::new();
                    queue_record(&mut out, &json, dropped_total, &mut notified_drops);
                    // Whatever else is queued goes out with it, with one flush.
                    while out.len() < SUBSCRIBER_BATCH_MAX {
                        let Some((json, dropped_total)) = subscription.try_next() else {
                            break;
                        };
                        queue_record(&mut out, &json, dropped_total, &mut notified_drops);
                    }
                    out
                }
                Delivery::Disconnect(reason) => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(Message::Close(Some(CloseFrame { code: 4008, reason: reason.into() })))).await;
                    return;
                }
            },
            incoming = rx.next() => match incoming {
                Some(Ok(Message::Text(text))) => match subscribe_message(&text) {
                    Some(filter) => {
                        subscription.set_filter(filter.clone());
                        subscription.until_peers_heard(HEARD_WITHIN).await;
                        vec![json!({ "type": "subscribed", "node": state.node_id(), "filter": filter }).to_string()]
                    }
                    None => vec![json!({ "type": "error", "message": SUBSCRIBE_HELP }).to_string()],
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
        };
        // A subscriber that stops reading blocks this send; the hub then drops records for it
        // and finally disconnects it, which ends the wait here.
        tokio::select! {
            sent = tokio::time::timeout(SUBSCRIBER_SEND_TIMEOUT, send_all(&mut tx, outgoing)) => {
                if !matches!(sent, Ok(Ok(()))) {
                    return;
                }
            }
            reason = subscription.kicked() => {
                tracing::info!("disconnected a subscriber: {reason}");
                return;
            }
        }
    }
}

/// Write every message, then flush once.
async fn send_all(
    tx: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    outgoing: Vec<String>,
) -> Result<(), axum::Error> {
    for text in outgoing {
        tx.feed(Message::text(text)).await?;
    }
    tx.flush().await
}

/// Most messages written to a subscriber before one flush.
const SUBSCRIBER_BATCH_MAX: usize = 256;

/// A record for a subscriber, preceded by a lag notice when records were dropped for it
/// since the last one.
fn queue_record(out: &mut Vec<String>, json: &str, dropped_total: u64, notified: &mut u64) {
    if dropped_total > *notified {
        out.push(
            json!({
                "type": "lag",
                "dropped": dropped_total - *notified,
                "dropped_total": dropped_total,
                "message": "you are reading slower than records arrive; records were dropped for you"
            })
            .to_string(),
        );
        *notified = dropped_total;
    }
    out.push(json.to_owned());
}
