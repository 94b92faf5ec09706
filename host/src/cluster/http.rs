//! Node-to-node HTTP under `/cluster/v1`: push-pull anti-entropy of the catalog, plugin
//! bytes by digest, each node's own source reports, and the record stream of the data plane.
//! With a cluster key, every request is signed (`x-anode-auth`, see [`super::auth`]): method,
//! path, body digest, time and nonce; unsigned, stale and replayed requests are refused and
//! counted. Without a key these routes refuse writes, and answer reads on a loopback API only.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::catalog::{Entry, Version};
use super::{AUTH_HEADER, Cluster, Peer, PeerContext, Refused};
use crate::plugin::Digest;
use crate::source::SourceReport;

/// Largest node-to-node request body (a catalog push).
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Bounds every node-to-node request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

type AppState = PeerContext;

#[derive(Serialize, Deserialize)]
struct SyncRequest {
    from: String,
    fingerprint: u64,
    versions: Vec<Version>,
}

#[derive(Serialize, Deserialize, Default)]
struct SyncResponse {
    /// Entries the asker lacks or holds older.
    entries: Vec<Entry>,
    /// Keys the asker should push back.
    want: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Push {
    entries: Vec<Entry>,
}

/// The routes, mounted into the node's API.
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/cluster/v1/catalog/sync", post(sync))
        .route("/cluster/v1/catalog/push", post(receive_push))
        .route("/cluster/v1/plugins/{digest}", get(plugin_bytes))
        .route("/cluster/v1/sources", get(local_sources))
        .route("/cluster/v1/stream", get(super::relay::serve))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let stats = &state.cluster.stats;
    let keys = state.cluster.envelope.keys();
    let write = !matches!(*request.method(), Method::GET | Method::HEAD);
    if !keys.any() {
        if write {
            stats.requests_refused_no_key.fetch_add(1, Relaxed);
            return refuse(
                StatusCode::FORBIDDEN,
                "node-to-node writes need cluster.key: set the same key on every node",
            );
        }
        if !state.loopback_only {
            return refuse(
                StatusCode::FORBIDDEN,
                "node-to-node routes beyond loopback need cluster.key",
            );
        }
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "node-to-node request body too large",
        );
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str());
    let header = parts.headers.get(AUTH_HEADER).and_then(|v| v.to_str().ok());
    let now_ms = crate::clock::now_us() / 1000;
    match keys.verify_request(header, parts.method.as_str(), path, &body, now_ms) {
        Ok(()) => next.run(Request::from_parts(parts, Body::from(body))).await,
        Err(why) => {
            let (counter, message) = match why {
                Refused::Auth => (
                    &stats.requests_refused_auth,
                    "node-to-node route: the request is not signed with this cluster's key (cluster.key)",
                ),
                Refused::Stale => (
                    &stats.requests_refused_stale,
                    "node-to-node route: the request was made outside the time window \
                     (cluster.auth_window_ms); check that the nodes' clocks agree",
                ),
                Refused::Replayed => (
                    &stats.requests_refused_replay,
                    "node-to-node route: this request was seen before (a replay)",
                ),
            };
            counter.fetch_add(1, Relaxed);
            tracing::warn!(path, "{message}");
            refuse(StatusCode::UNAUTHORIZED, message)
        }
    }
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn sync(State(state): State<AppState>, Json(request): Json<SyncRequest>) -> Response {
    let catalog = &state.cluster.catalog;
    if request.fingerprint == catalog.fingerprint() {
        return Json(SyncResponse::default()).into_response();
    }
    let (entries, want) = catalog.diff(&request.versions);
    Json(SyncResponse { entries, want }).into_response()
}

async fn receive_push(
    State(state): State<AppState>,
    Json(push): Json<Push>,
) -> Json<serde_json::Value> {
    let applied = state.cluster.catalog.merge_all(push.entries);
    Json(json!({ "applied": applied }))
}

async fn plugin_bytes(State(state): State<AppState>, Path(digest): Path<String>) -> Response {
    let Ok(digest) = digest.parse::<Digest>() else {
        return (StatusCode::BAD_REQUEST, "not a sha256 digest").into_response();
    };
    let store = state.plugins.clone();
    match tokio::task::spawn_blocking(move || store.bytes(&digest)).await {
        Ok(Ok(bytes)) => ([(header::CONTENT_TYPE, "application/wasm")], bytes).into_response(),
        _ => (StatusCode::NOT_FOUND, "no such plugin here").into_response(),
    }
}

async fn local_sources(State(state): State<AppState>) -> Response {
    if state.reports.leaving() {
        // Peers must not wait for this node to take sources over.
        return (StatusCode::SERVICE_UNAVAILABLE, "this node is leaving").into_response();
    }
    Json(json!(state.reports.local_reports().await)).into_response()
}

/// Send a node-to-node request, signed with the cluster key when there is one.
pub(crate) async fn send(
    cluster: &Cluster,
    http: &reqwest::Client,
    builder: reqwest::RequestBuilder,
) -> reqwest::Result<reqwest::Response> {
    let mut request = builder.build()?;
    let url = request.url();
    let path = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    let body = request
        .body()
        .and_then(|b| b.as_bytes())
        .unwrap_or_default();
    let now_ms = crate::clock::now_us() / 1000;
    if let Some(value) =
        cluster
            .envelope
            .keys()
            .sign_request(request.method().as_str(), &path, body, now_ms)
    {
        request
            .headers_mut()
            .insert(AUTH_HEADER, value.parse().expect("the signature is ASCII"));
    }
    http.execute(request).await
}

/// Send entries to one peer.
pub async fn push(
    cluster: &Cluster,
    http: &reqwest::Client,
    peer: &Peer,
    entries: &[Entry],
) -> Result<(), String> {
    let url = format!("{}/cluster/v1/catalog/push", peer.url());
    let builder = http
        .post(&url)
        .timeout(REQUEST_TIMEOUT)
        .json(&json!({ "entries": entries }));
    send(cluster, http, builder)
        .await
        .and_then(reqwest::Response::error_for_status)
        .map(|_| ())
        .map_err(|e| format!("push to {}: {e}", peer.id))
}

/// One push-pull round with `peer`.
pub async fn sync_with(
    cluster: &Cluster,
    http: &reqwest::Client,
    peer: &Peer,
) -> Result<(), String> {
    let catalog = &cluster.catalog;
    let body = SyncRequest {
        from: cluster.view().me.id,
        fingerprint: catalog.fingerprint(),
        versions: catalog.versions(),
    };
    let url = format!("{}/cluster/v1/catalog/sync", peer.url());
    let builder = http.post(&url).timeout(REQUEST_TIMEOUT).json(&body);
    let reply: SyncResponse = send(cluster, http, builder)
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("sync with {}: {e}", peer.id))?
        .json()
        .await
        .map_err(|e| format!("sync with {}: {e}", peer.id))?;
    catalog.merge_all(reply.entries);
    if !reply.want.is_empty() {
        push(cluster, http, peer, &catalog.entries(&reply.want)).await?;
    }
    Ok(())
}

/// Every `sync_ms`, a push-pull round with one random live peer; and the catalog written to
/// disk when it changed.
pub async fn anti_entropy(cluster: Cluster, http: reqwest::Client, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(cluster.settings.sync_ms.max(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let view = cluster.view();
        let peers: Vec<&Peer> = view.live_peers().collect();
        let peer = peers.choose(&mut rand::rng()).map(|p| (*p).clone());
        if let Some(peer) = &peer {
            cluster.stats.sync_rounds.fetch_add(1, Relaxed);
            if let Err(e) = sync_with(&cluster, &http, peer).await {
                cluster.stats.sync_failures.fetch_add(1, Relaxed);
                tracing::debug!("{e}");
            }
        }
        // Off the async workers: a flush writes and syncs a file.
        let catalog = cluster.catalog.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || catalog.flush()).await {
            tracing::warn!("cannot write the catalog: {e}");
        }
    }
    let _ = cluster.catalog.flush();
}

/// Fetch a plugin's bytes by digest from the peers, `first` tried first; bytes whose sha256
/// is not `digest`, or that run past `size` (the manifest's), are refused and the next peer is
/// tried.
pub async fn fetch_plugin(
    cluster: &Cluster,
    http: &reqwest::Client,
    digest: &Digest,
    size: usize,
    first: &str,
) -> Result<(Vec<u8>, String), String> {
    let view = cluster.view();
    let mut peers: Vec<&Peer> = view.live_peers().collect();
    peers.sort_by_key(|p| p.id != first);
    let mut problems = Vec::new();
    for peer in peers {
        cluster.stats.plugin_fetches.fetch_add(1, Relaxed);
        let url = format!("{}/cluster/v1/plugins/{}", peer.url(), digest.to_hex());
        let got = async {
            let builder = http.get(&url).timeout(Duration::from_secs(30));
            let response = send(cluster, http, builder)
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| e.to_string())?;
            crate::source::http::read_capped(response, size)
                .await
                .map_err(|e| match e {
                    crate::source::http::BodyError::TooLarge => {
                        format!("more than the manifest's {size} bytes, refused")
                    }
                    crate::source::http::BodyError::Failed(e) => e.to_string(),
                })
        }
        .await;
        match got {
            Ok(bytes) if Digest::of(&bytes) == *digest => {
                return Ok((bytes, peer.id.clone()));
            }
            Ok(_) => problems.push(format!("{}: sha256 mismatch, refused", peer.id)),
            Err(e) => problems.push(format!("{}: {e}", peer.id)),
        }
        cluster.stats.plugin_fetch_failures.fetch_add(1, Relaxed);
    }
    if problems.is_empty() {
        problems.push("no live peer to fetch from".into());
    }
    Err(problems.join("; "))
}

/// Sources reported by each live peer (their own running ones), fetched concurrently.
pub async fn peer_sources(cluster: &Cluster, http: &reqwest::Client) -> Vec<SourceReport> {
    let view = cluster.view();
    let calls = view
        .live_peers()
        .map(|peer| sources_of(cluster, http, peer));
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .filter_map(Result::ok)
        .flatten()
        .collect()
}

/// Why a peer gave no source reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerAnswer {
    /// It is shutting down: it takes no source over.
    Leaving,
    /// It did not answer (in time, or at all).
    Silent,
}

/// One peer's own source reports.
pub async fn sources_of(
    cluster: &Cluster,
    http: &reqwest::Client,
    peer: &Peer,
) -> Result<Vec<SourceReport>, PeerAnswer> {
    let url = format!("{}/cluster/v1/sources", peer.url());
    let builder = http.get(url).timeout(Duration::from_millis(1500));
    let reply = send(cluster, http, builder)
        .await
        .map_err(|_| PeerAnswer::Silent)?;
    if reply.status() == StatusCode::SERVICE_UNAVAILABLE {
        return Err(PeerAnswer::Leaving);
    }
    reply
        .error_for_status()
        .map_err(|_| PeerAnswer::Silent)?
        .json::<Vec<SourceReport>>()
        .await
        .map_err(|_| PeerAnswer::Silent)
}
