//! What every route shares: the node state it serves, and the error it answers with.

use std::sync::Arc;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::supervisor::{NodeError, NodeState};

pub(super) type AppState = Arc<NodeState>;

/// An API error: a status and a message that says what to do.
pub(super) struct ApiError(pub(super) StatusCode, pub(super) String);

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
