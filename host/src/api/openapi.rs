//! The OpenAPI document of the HTTP API (`/api/v1/openapi.json`).

use axum::Json;
use serde_json::{Value, json};

/// The document: the routes, their scopes, request bodies and main answers.
pub(super) async fn openapi() -> Json<Value> {
    let source = json!({"type": "object", "required": ["id", "plugin"], "properties": {
        "id": {"type": "string"}, "plugin": {"type": "string"},
        "config": {"type": "object"}, "transforms": {"type": "array", "items": {"type": "object",
            "properties": {"plugin": {"type": "string"}, "config": {"type": "object"}}}}}});
    let ok = |d: &str| json!({"description": d});
    Json(json!({
        "openapi": "3.0.3",
        "info": {"title": "aNode API", "version": env!("CARGO_PKG_VERSION")},
        "components": {
            "schemas": {"SourceSpec": source},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                "description": "api.token for changes; api.read_token (or api.token) for reads, when set"}}
        },
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": ok("alive")}}},
            "/readyz": {"get": {"summary": "Readiness (store reachable)", "responses": {"200": ok("ready"), "503": ok("not ready")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": ok("text exposition")}}},
            "/ws": {"get": {"summary": "Record stream (WebSocket); filter with ?source=&stream=&key= (comma-separated)", "responses": {"101": ok("upgraded")}}},
            "/api/v1/status": {"get": {"summary": "Node, sources, plugins, store and fan-out", "responses": {"200": ok("status")}}},
            "/api/v1/sources": {
                "get": {"summary": "Sources with their state", "responses": {"200": ok("list")}},
                "post": {"summary": "Add a source, or an array of sources (all are checked first; none is added unless all pass)", "security": [{"bearer": []}],
                    "requestBody": {"content": {"application/json": {"schema": {"oneOf": [
                        {"$ref": "#/components/schemas/SourceSpec"},
                        {"type": "array", "items": {"$ref": "#/components/schemas/SourceSpec"}}]}}}},
                    "responses": {"201": ok("added"), "400": ok("invalid (for an array: nothing was added)"), "409": ok("exists")}}
            },
            "/api/v1/sources/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
                "get": {"summary": "One source", "responses": {"200": ok("source"), "404": ok("unknown")}},
                "put": {"summary": "Replace a source", "security": [{"bearer": []}],
                    "requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/SourceSpec"}}}},
                    "responses": {"200": ok("replaced"), "400": ok("invalid")}},
                "delete": {"summary": "Remove a source", "security": [{"bearer": []}], "responses": {"200": ok("removed"), "404": ok("unknown")}}
            },
            "/api/v1/sources/{id}/pause": {"post": {"summary": "Pause a source (it stays in the catalog, runs nowhere)", "security": [{"bearer": []}], "responses": {"200": ok("paused"), "404": ok("unknown")}}},
            "/api/v1/sources/{id}/resume": {"post": {"summary": "Resume a paused source", "security": [{"bearer": []}], "responses": {"200": ok("resumed"), "404": ok("unknown")}}},
            "/api/v1/cluster": {"get": {"summary": "Members (alive, suspect, down) with the sources each owns, catalog fingerprint, gossip counters", "responses": {"200": ok("cluster")}}},
            "/api/v1/events": {"get": {"summary": "Event log (joins, failures, hand-overs, plugin installs, sink outages) after ?after=<seq>", "responses": {"200": ok("events")}}},
            "/api/v1/plugins": {
                "get": {"summary": "Installed plugins, with metrics where loaded", "responses": {"200": ok("list")}},
                "post": {"summary": "Install a plugin (body: the .wasm bytes; with plugins.trusted_keys, a signature is required)", "security": [{"bearer": []}],
                    "parameters": [{"name": "x-anode-plugin-signature", "in": "header", "required": false,
                        "description": "<public key hex>:<signature hex>, as `anode plugin sign` writes it",
                        "schema": {"type": "string"}}],
                    "requestBody": {"content": {"application/wasm": {"schema": {"type": "string", "format": "binary"}}}},
                    "responses": {"201": ok("installed"), "400": ok("rejected")}}
            }
        }
    }))
}
