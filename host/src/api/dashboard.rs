//! The web dashboard: the page and its two assets, embedded into the binary at build time, and
//! `GET /api/v1/live`, a Server-Sent Events stream of the cluster's state for it.
//!
//! The page is plain HTML, CSS and JavaScript (no build step). It reads everything from
//! `/api/v1/live` (one `snapshot` event about once a second: members, sources, plugins, the
//! store and fan-out, new cluster events), records from `/ws`, and changes the cluster through
//! the ordinary `/api/v1` routes with the bearer token the operator types in.
//!
//! Caching: the assets are named in the page with a hash of their content (`?v=…`), so they
//! can be cached for good; the page itself is revalidated (`ETag`) on every load, so a new
//! binary's page, and with it new assets, shows at once.

use std::convert::Infallible;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::Stream;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::api;
use crate::supervisor::NodeState;

/// How often the live stream sends a snapshot.
const SNAPSHOT_PERIOD: Duration = Duration::from_secs(1);
/// A comment line this often keeps proxies from closing a quiet stream.
const KEEP_ALIVE_PERIOD: Duration = Duration::from_secs(15);
/// How long a browser waits before reconnecting a dropped stream.
const RECONNECT_HINT: Duration = Duration::from_secs(2);

const INDEX_HTML: &str = include_str!("../../../dashboard/index.html");
const APP_JS: &str = include_str!("../../../dashboard/app.js");
const STYLE_CSS: &str = include_str!("../../../dashboard/style.css");

/// Placeholder in `index.html` replaced by the assets' content hash.
const VERSION_PLACEHOLDER: &str = "__ASSET_VERSION__";
/// Cache policy of content-hashed assets: they never change under their name.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Cache policy of the page: keep it, but ask every time whether it changed.
const REVALIDATE: &str = "no-cache";

/// The page as served: asset links carry the assets' hash, and its ETag.
struct Page {
    html: String,
    etag: String,
}

static PAGE: LazyLock<Page> = LazyLock::new(|| {
    let assets = short_hash(&[APP_JS.as_bytes(), STYLE_CSS.as_bytes()]);
    let html = INDEX_HTML.replace(VERSION_PLACEHOLDER, &assets);
    let etag = format!("\"{}\"", short_hash(&[html.as_bytes()]));
    Page { html, etag }
});

fn short_hash(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hex::encode(&hasher.finalize()[..8])
}

/// The dashboard's routes; the API router merges them.
pub fn routes() -> Router<Arc<NodeState>> {
    Router::new()
        .route("/", get(index))
        .route("/assets/app.js", get(app_js))
        .route("/assets/style.css", get(style_css))
        .route("/api/v1/live", get(live))
}

async fn index(request_headers: HeaderMap) -> Response {
    let page = &*PAGE;
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(REVALIDATE));
    headers.insert(
        header::ETAG,
        HeaderValue::from_str(&page.etag).expect("hex is a valid header value"),
    );
    // The page only talks to its own origin (the API, `/ws`); nothing else may load.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; \
             style-src 'self'; script-src 'self'; frame-ancestors 'none'",
        ),
    );
    let unchanged = request_headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == page.etag));
    if unchanged {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    (headers, page.html.clone()).into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, IMMUTABLE),
        ],
        body,
    )
        .into_response()
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

/// `GET /api/v1/live`: a `snapshot` event now and then every [`SNAPSHOT_PERIOD`], until the
/// client leaves or the node shuts down (so a graceful shutdown never waits on a browser).
async fn live(
    State(state): State<Arc<NodeState>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut ticks = tokio::time::interval(SNAPSHOT_PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = futures_util::stream::unfold(
        (state, ticks, 0u64),
        |(state, mut ticks, after)| async move {
            tokio::select! {
                () = state.stopping() => return None,
                _ = ticks.tick() => {}
            }
            let (body, after) = snapshot(&state, after).await;
            let event = Event::default()
                .event("snapshot")
                .retry(RECONNECT_HINT)
                .data(body.to_string());
            Some((Ok(event), (state, ticks, after)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE_PERIOD))
}

/// One snapshot for the page and the sequence number of the newest event in it: the events
/// are only those after `after`, so each appears once per stream (a new stream sends all
/// the node still keeps).
async fn snapshot(state: &NodeState, after: u64) -> (Value, u64) {
    let mut sources = api::sources_json(state).await;
    // Cursors can be long and the page never shows them.
    if let Some(list) = sources.as_array_mut() {
        for source in list {
            if let Some(fields) = source.as_object_mut() {
                fields.remove("cursor");
            }
        }
    }
    let mut status = api::status_json(state);
    // Sent once, at the top level, not twice.
    if let Some(fields) = status.as_object_mut() {
        fields.remove("sources");
        fields.remove("plugins");
    }
    let events = api::events_json(state, after)
        .get("events")
        .cloned()
        .unwrap_or_else(|| json!([]));
    let newest = events
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("seq").and_then(Value::as_u64))
        .fold(after, u64::max);
    let plugins = api::plugins_on_nodes(api::plugins_json(state), &sources);
    let body = json!({
        "time_ms": crate::clock::now_us() / 1000,
        "node": state.node_id(),
        "cluster": api::cluster_json(state).await,
        "sources": sources,
        "plugins": plugins,
        "status": status,
        "events": events,
    });
    (body, newest)
}
