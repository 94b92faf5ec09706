//! The OpenAPI document of the HTTP API (`/api/v1/openapi.json`).
//!
//! It is the contract a client generator or a contract tester reads: every route, parameter,
//! body and status the server answers with, and the server's own checks on request bodies
//! (the id pattern, a non-blank plugin, no unknown fields). The suite runs schemathesis
//! against a live node with this document (`host/tests/contract.rs`).

use axum::Json;
use serde_json::{Map, Value, json};

/// A source id: what `SourceSpec::validate` accepts.
pub(super) const ID_PATTERN: &str = "^[A-Za-z0-9._-]{1,128}$";

/// A JSON response described as `description`.
fn json_response(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

/// An error answer: `{"error": "..."}` saying what to do.
fn error(description: &str) -> Value {
    json_response(description, json!({"$ref": "#/components/schemas/Error"}))
}

/// An error answered by the HTTP layer before the route runs (a body too large, a path that
/// is not UTF-8): plain text.
fn plain(description: &str) -> Value {
    json!({"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}})
}

/// The answers every route behind the token check may give besides its own.
fn guarded(mut responses: Value, mutating: bool) -> Value {
    let why = if mutating {
        "no `Authorization: Bearer <api.token>` (when api.token is set)"
    } else {
        "no `Authorization: Bearer <api.read_token>` (or api.token), when one is set"
    };
    responses["401"] = error(why);
    responses
}

/// An operation: summary, the operation id, and its answers.
fn operation(id: &str, summary: &str, responses: Value) -> Value {
    json!({"operationId": id, "summary": summary, "responses": responses})
}

/// The path parameter `id` of the source routes.
fn id_parameter() -> Value {
    json!({"name": "id", "in": "path", "required": true, "description": "The source id",
        "schema": {"type": "string", "pattern": ID_PATTERN}})
}

/// A JSON request body of `schema`, required.
fn json_body(schema: Value) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": schema}}})
}

fn schemas() -> Value {
    let object = json!({"type": "object"});
    json!({
        "Error": {"type": "object", "required": ["error"],
            "properties": {"error": {"type": "string", "description": "What happened and what to do"}}},
        "TransformSpec": {"type": "object", "required": ["plugin"], "additionalProperties": false,
            "properties": {
                "plugin": {"type": "string", "minLength": 1, "pattern": "\\S",
                    "description": "The transform: plugin name or sha256 digest"},
                "config": object}},
        "SourceSpec": {"type": "object", "required": ["id", "plugin"], "additionalProperties": false,
            "properties": {
                "id": {"type": "string", "pattern": ID_PATTERN,
                    "description": "Unique in the cluster: 1 to 128 letters, digits, `-`, `_` or `.`"},
                "plugin": {"type": "string", "minLength": 1, "pattern": "\\S",
                    "description": "The connector: plugin name or sha256 digest, installed in the cluster"},
                "config": {"type": "object", "description": "The connector's configuration (its manifest's config-schema)"},
                "transforms": {"type": "array", "items": {"$ref": "#/components/schemas/TransformSpec"}},
                "paused": {"type": "boolean", "description": "A paused source stays in the catalog and runs nowhere"},
                "previous_plugin": {"type": "string", "minLength": 1, "pattern": "\\S",
                    "description": "In a canary: the plugin the source ran before, which a rollback returns it to"}}},
        "Rollout": {"type": "object", "required": ["plugin"], "additionalProperties": false,
            "properties": {
                "plugin": {"type": "string", "minLength": 1, "description": "The plugin's name"},
                "to": {"type": "string", "minLength": 1, "description": "The version or digest (8+ hex digits of it) to move to; not with rollback"},
                "canary_percent": {"type": "number", "exclusiveMinimum": true, "minimum": 0, "maximum": 100,
                    "description": "Move only the sources whose canary hash falls in the first P%"},
                "ids": {"type": "array", "items": {"type": "string", "pattern": ID_PATTERN}, "description": "Only these sources"},
                "rollback": {"type": "boolean", "description": "Move the canary's sources back to what each ran before"}}},
    })
}

/// The document: the routes, their parameters, bodies and every status they answer with.
pub(super) async fn openapi() -> Json<Value> {
    let object = json!({"type": "object"});
    let array = json!({"type": "array", "items": {"type": "object"}});
    let source = json!({"$ref": "#/components/schemas/SourceSpec"});
    let too_large = plain("the body is larger than 64 MiB");
    let bad_path = plain("the path is not valid (not UTF-8)");
    let invalid = error("the body is not valid: the message names the field and what to do");

    let mut paths = Map::new();
    // The probes and the dashboard's page need no token.
    let open = |mut operation: Value| {
        operation["security"] = json!([]);
        json!({ "get": operation })
    };
    paths.insert(
        "/healthz".into(),
        open(operation(
            "healthz",
            "Liveness: the process answers",
            json!({"200": plain("alive: `ok`")}),
        )),
    );
    paths.insert("/readyz".into(), open(operation("readyz", "Readiness: the store is reachable",
        json!({"200": json_response("ready", object.clone()), "503": json_response("not ready; the body says why", object.clone())}))));
    paths.insert("/".into(), open(operation("dashboard", "The dashboard's page (it reads the API with the token it is given)",
        json!({"200": {"description": "the page", "content": {"text/html": {"schema": {"type": "string"}}}},
            "304": {"description": "unchanged since the ETag given in If-None-Match"}}))));
    paths.insert("/api/v1/live".into(), json!({"get": operation("live",
        "The dashboard's feed (Server-Sent Events): a `snapshot` event now and then every second, until the client leaves",
        guarded(json!({"200": {"description": "an endless event stream", "content": {
            "text/event-stream": {"schema": {"type": "string"}}}}}), false))}));
    paths.insert(
        "/metrics".into(),
        json!({"get": operation("metrics", "Prometheus metrics (text format 0.0.4)",
        guarded(json!({"200": {"description": "the metrics", "content": {
            "text/plain": {"schema": {"type": "string"}}}}}), false))}),
    );
    let filter = |name: &str, what: &str| {
        json!({"name": name, "in": "query", "required": false, "schema": {"type": "string"},
            "description": format!("Only records of these {what} (comma-separated)")})
    };
    let mut ws = operation(
        "subscribe",
        "Record stream (WebSocket): one JSON record per text message; see the README's `/ws` protocol",
        guarded(
            json!({
                "101": {"description": "upgraded to a WebSocket"},
                "400": {"description": "a filter, `after` or `since` parameter is not valid, or the request is not a WebSocket upgrade",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}},
                        "text/plain": {"schema": {"type": "string"}}}},
                "426": plain("the connection cannot be upgraded"),
                "503": error("with `since`: the durable log cannot be read now, or fanout.max_resuming subscribers are resuming"),
            }),
            false,
        ),
    );
    ws["parameters"] = json!([
        filter("source", "sources"),
        filter("stream", "streams"),
        filter("key", "keys"),
        {"name": "after", "in": "query", "required": false,
            "schema": {"type": "string", "enum": ["decoded", "stored", "final"]},
            "description": "When records reach the subscriber: as soon as decoded (default), once stored, \
                or (`final`) once stored and only the irreversible records of a chain (not with `since`)"},
        {"name": "since", "in": "query", "required": false, "schema": {"type": "string"},
            "description": "Resume from the durable log: `earliest`, `now`, a UTC time (2026-12-03T10:00:00Z), \
                a time ago (-5m) or the `position` of the last record received. Stored records are \
                replayed, each with its `position`, then new ones follow with no gap and none twice"}
    ]);
    paths.insert("/ws".into(), json!({ "get": ws }));
    paths.insert(
        "/api/v1/openapi.json".into(),
        json!({"get": operation("openapi", "This document",
        guarded(json!({"200": json_response("the document", object.clone())}), false))}),
    );
    paths.insert(
        "/api/v1/status".into(),
        json!({"get": operation("status",
        "This node, its sources, plugins, store and fan-out",
        guarded(json!({"200": json_response("status", object.clone())}), false))}),
    );

    let mut add = operation(
        "addSources",
        "Add a source, or an array of sources: all are checked first; none is added unless all pass",
        guarded(
            json!({
                "201": json_response("added", object.clone()),
                "400": invalid.clone(),
                "409": error("a source with this id exists (for an array: nothing was added)"),
                "413": too_large.clone(),
            }),
            true,
        ),
    );
    add["requestBody"] = json_body(json!({"oneOf": [
        source.clone(), {"type": "array", "items": source.clone(), "minItems": 1}]}));
    paths.insert(
        "/api/v1/sources".into(),
        json!({
            "get": operation("listSources", "Every source of the cluster with its owner and state",
                guarded(json!({"200": json_response("the sources", array.clone())}), false)),
            "post": add,
        }),
    );

    let mut replace = operation(
        "replaceSource",
        "Replace a source's spec (the body's id must be the path's)",
        guarded(
            json!({
                "200": json_response("replaced", object.clone()),
                "400": invalid.clone(),
                "404": error("no such source"),
                "413": too_large.clone(),
            }),
            true,
        ),
    );
    replace["requestBody"] = json_body(source.clone());
    paths.insert(
        "/api/v1/sources/{id}".into(),
        json!({
            "parameters": [id_parameter()],
            "get": operation("getSource", "One source: its spec and its owner's report",
                guarded(json!({"200": json_response("the source", object.clone()), "400": bad_path.clone(),
                    "404": error("no such source")}), false)),
            "put": replace,
            "delete": operation("removeSource", "Remove a source from the cluster",
                guarded(json!({"200": json_response("removed", object.clone()), "400": bad_path.clone(),
                    "404": error("no such source")}), true)),
        }),
    );
    for (verb, summary) in [
        (
            "pause",
            "Pause a source: it stays in the catalog and runs nowhere",
        ),
        ("resume", "Resume a paused source"),
    ] {
        paths.insert(
            format!("/api/v1/sources/{{id}}/{verb}"),
            json!({
                "parameters": [id_parameter()],
                "post": operation(&format!("{verb}Source"), summary,
                    guarded(json!({"200": json_response("done", object.clone()), "400": bad_path.clone(),
                        "404": error("no such source")}), true)),
            }),
        );
    }
    paths.insert("/api/v1/cluster".into(), json!({"get": operation("cluster",
        "Members (alive, suspect, down) with the sources each owns, the catalog's fingerprint, gossip counters",
        guarded(json!({"200": json_response("the cluster", object.clone())}), false))}));
    let mut events = operation(
        "events",
        "The event log (joins, failures, hand-overs, plugin installs, sink outages) after a sequence number",
        guarded(
            json!({"200": json_response("events", object.clone()),
                "400": error("`after` is not a number")}),
            false,
        ),
    );
    events["parameters"] = json!([{"name": "after", "in": "query", "required": false,
        "description": "Only events with a larger seq (the last one you have)",
        "schema": {"type": "integer", "minimum": 0}}]);
    paths.insert("/api/v1/events".into(), json!({ "get": events }));

    let dead_filters = json!([
        {"name": "source", "in": "query", "required": false, "description": "Only this source's",
            "schema": {"type": "string"}},
        {"name": "stage", "in": "query", "required": false, "description": "Only this stage's",
            "schema": {"type": "string", "enum": ["decode", "transform", "store", "cursor"]}},
        {"name": "pending", "in": "query", "required": false,
            "description": "Only those not replayed yet", "schema": {"type": "boolean"}},
        {"name": "after", "in": "query", "required": false,
            "description": "Only those numbered after this", "schema": {"type": "integer", "format": "int64"}},
    ]);
    let unavailable = error("the store cannot be read now");
    let bad_query = error("a parameter is not of its type, or an unknown stage");
    let mut list_dead = operation(
        "listDeadLetters",
        "Dead letters: what could not be processed (bad frames, refused events, refused rows, \
         bad cursors), oldest first, with the counts written per stage",
        guarded(
            json!({"200": json_response("the dead letters", object.clone()), "400": bad_query.clone(),
                "503": unavailable.clone()}),
            false,
        ),
    );
    let mut list_params = dead_filters.clone();
    list_params
        .as_array_mut()
        .expect("array")
        .push(json!({"name": "limit", "in": "query",
        "required": false, "description": "At most this many (1 to 1000; 1000 by default)",
        "schema": {"type": "integer", "minimum": 0}}));
    list_dead["parameters"] = list_params;
    let mut purge_dead = operation(
        "purgeDeadLetters",
        "Delete dead letters: those the filters select, or every one with all=true",
        guarded(
            json!({"200": json_response("how many were deleted", object.clone()),
                "400": error("no filter and no all=true, or a bad parameter"),
                "503": unavailable.clone()}),
            true,
        ),
    );
    let mut purge_params = dead_filters;
    purge_params.as_array_mut().expect("array").push(json!({"name": "all", "in": "query",
        "required": false, "description": "Delete every dead letter (needed when no filter is given)",
        "schema": {"type": "boolean"}}));
    purge_dead["parameters"] = purge_params;
    paths.insert(
        "/api/v1/deadletters".into(),
        json!({ "get": list_dead, "delete": purge_dead }),
    );
    let mut replay = operation(
        "replayDeadLetters",
        "Run pending dead letters again through the plugin that refused them, or a fixed build \
         (`plugin`), and store what it now accepts (idempotently: records keep their ids)",
        guarded(
            json!({"200": json_response("which were replayed and which failed again, with why", object.clone()),
                "400": error("a bad body, or no such plugin"),
                "413": too_large.clone(),
                "503": unavailable.clone()}),
            true,
        ),
    );
    replay["requestBody"] = json_body(json!({"type": "object", "additionalProperties": false,
        "properties": {
            "source": {"type": "string", "nullable": true},
            "stage": {"type": "string", "nullable": true, "enum": ["decode", "transform", "store", "cursor", null]},
            "ids": {"type": "array", "nullable": true, "items": {"type": "integer", "format": "int64"}},
            "plugin": {"type": "string", "nullable": true,
                "description": "name or digest of the build to replay through"}}}));
    paths.insert(
        "/api/v1/deadletters/replay".into(),
        json!({ "post": replay }),
    );
    paths.insert(
        "/api/v1/deadletters/{id}".into(),
        json!({
            "parameters": [{"name": "id", "in": "path", "required": true,
                "description": "The dead letter's number", "schema": {"type": "integer", "format": "int64"}}],
            "get": operation("getDeadLetter", "One dead letter, with its raw bytes",
                guarded(json!({"200": json_response("the dead letter", object.clone()),
                    "400": error("not a number"), "404": error("no such dead letter"),
                    "503": unavailable}), false)),
        }),
    );

    let mut install = operation(
        "installPlugin",
        "Install a plugin: the body is the component's .wasm bytes (with plugins.trusted_keys set, a \
         publisher signature is required); the catalog spreads it to every node",
        guarded(
            json!({"201": json_response("installed: its manifest", object.clone()),
                "400": error("not a plugin component, a bad signature, or refused by the node's checks"),
                "413": too_large}),
            true,
        ),
    );
    install["parameters"] = json!([{"name": "x-anode-plugin-signature", "in": "header", "required": false,
        "description": "<public key hex>:<signature hex>, as `anode plugin sign` writes it",
        "schema": {"type": "string"}}]);
    let wasm = json!({"schema": {"type": "string", "format": "binary"}});
    install["requestBody"] = json!({"required": true, "content": {
        "application/wasm": wasm, "application/octet-stream": wasm}});
    let mut rollout = operation(
        "rollout",
        "Move a plugin's sources to another of its versions: a canary (canary_percent), a \
         promotion (no canary_percent: every other source, and the canary is finished) or a rollback",
        guarded(
            json!({"200": json_response("what moved, and which sources are in the canary", object.clone()),
                "400": invalid.clone(),
                "404": error("no plugin of that name in the cluster"),
                "409": error("a rollback with no canary to roll back"),
                "413": too_large.clone()}),
            true,
        ),
    );
    rollout["requestBody"] = json_body(json!({"$ref": "#/components/schemas/Rollout"}));
    paths.insert("/api/v1/rollouts".into(), json!({ "post": rollout }));
    paths.insert(
        "/api/v1/plugins/{plugin}".into(),
        json!({
            "parameters": [{"name": "plugin", "in": "path", "required": true,
                "description": "The plugin's digest (or 8+ hex digits of it), or its name when it has one build",
                "schema": {"type": "string"}}],
            "delete": operation("removePlugin",
                "Remove a plugin version from the cluster: every node deletes its copy once no source uses it",
                guarded(json!({"200": json_response("removed: its manifest", object.clone()),
                    "400": error("ambiguous, or built into the binary"),
                    "404": error("no such plugin"),
                    "409": error("sources use it; the message names them")}), true)),
        }),
    );
    paths.insert(
        "/api/v1/plugins".into(),
        json!({
            "get": operation("listPlugins", "Installed plugins, with metrics where loaded",
                guarded(json!({"200": json_response("the plugins", array)}), false)),
            "post": install,
        }),
    );

    Json(json!({
        "openapi": "3.0.3",
        "info": {"title": "aNode API", "version": env!("CARGO_PKG_VERSION"),
            "description": "A node's HTTP API. Changes need `Authorization: Bearer <api.token>` and reads \
                `api.read_token` (or `api.token`) when they are set; both must be when the API listens \
                beyond loopback."},
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                "description": "api.token for changes; api.read_token (or api.token) for reads, when set"}}
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }))
}
