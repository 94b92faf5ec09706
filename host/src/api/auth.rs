//! Who may call the API: `api.token` for changes (and reads), `api.read_token` for reads;
//! probes and the dashboard's page are open, node-to-node routes check the cluster key.

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use super::error::{ApiError, AppState};

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
pub(super) async fn require_token(
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
