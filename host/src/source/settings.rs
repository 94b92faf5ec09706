//! Bounds of the source drivers (`[sources]` in the config).

use serde::{Deserialize, Serialize};

/// Bounds of the source drivers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceSettings {
    /// First wait before reconnecting a failed source; doubles (with jitter) per failure.
    pub reconnect_min_ms: u64,
    /// Longest wait before reconnecting.
    pub reconnect_max_ms: u64,
    /// A WebSocket connect (TCP, TLS, upgrade) that takes longer fails.
    pub connect_timeout_ms: u64,
    /// A WebSocket with no message for this long is reconnected.
    pub idle_timeout_ms: u64,
    /// A stopping WebSocket source sends Close and reads on until the venue ends the
    /// connection, at most this long: what was in flight is stored, not dropped.
    pub close_timeout_ms: u64,
    /// Most WebSocket frames handed to the connector in one call.
    pub frame_batch_max: usize,
    /// An HTTP request that takes longer fails.
    pub http_timeout_ms: u64,
    /// Shortest polling interval, whatever a plugin asks for.
    pub http_min_interval_ms: u64,
    /// Tries per HTTP request (429 and 5xx are retried after `Retry-After` or a backoff).
    pub http_attempts: u32,
    /// HTTP requests of one source in flight at once.
    pub http_concurrency: usize,
    /// Follow-up rounds per poll (pages, blocks) before the poll is cut short.
    pub http_max_rounds: usize,
    /// Requests per round; more are dropped with an error.
    pub http_max_requests_per_round: usize,
    /// Largest HTTP response body accepted.
    pub http_max_body_bytes: usize,
    /// Connector instances per plugin (sources are spread over them).
    pub instances_per_plugin: usize,
    /// Record ids remembered per source to drop repeats (a poll returning the same items)
    /// before they are published; at least the largest number of items one poll returns.
    /// Seeded at start from the source's latest stored records.
    pub dedupe_window: usize,
    /// Batches of one source submitted to the store and not yet acknowledged; when reached,
    /// the source waits. Large enough that a database outage fills the store's buffer
    /// (`store.buffer_records`, the real bound) before sources stop reading.
    pub acks_in_flight: usize,
    /// How often a source's transforms are ticked, so time windows close without new events.
    pub tick_ms: u64,
    /// Nodes that collect each source at once, unless its spec says (`replicas`); 2 keeps
    /// a feed without a history API whole through the loss of a node, at twice the venue
    /// connections and decoding.
    pub replicas: u32,
    /// Times a transform step that fails on a batch (a retryable error, an instance that
    /// cannot start) is tried again on the same events before the events that fail alone are
    /// isolated into the dead-letter store; the source waits meanwhile. A crash or a deadline
    /// goes to isolation at once, on a probe instance of its own.
    pub transform_retries: u32,
    /// Wait before such a retry (an instance restarting waits for its own backoff instead).
    pub transform_retry_ms: u64,
    /// Egress policy: what sources may reach beyond the defaults (see `egress.rs`): schemes
    /// (`https:`), host names (`api.example.com`, `*.example.com`), addresses or networks
    /// (`127.0.0.1:9100`, `10.0.0.0/8`), each with an optional `:port`.
    pub allow: Vec<String>,
    /// What sources may never reach, in the same forms; deny wins over allow.
    pub deny: Vec<String>,
    /// An HTTP proxy for sources' HTTP requests (`http://proxy:3128`); none by default.
    /// Proxies are taken from here only: `HTTP_PROXY`, `HTTPS_PROXY` and `ALL_PROXY` in the
    /// environment are ignored, so they cannot route around the egress policy. WebSocket
    /// sources connect directly.
    pub proxy: Option<String>,
}

impl Default for SourceSettings {
    fn default() -> Self {
        SourceSettings {
            reconnect_min_ms: 250,
            reconnect_max_ms: 30_000,
            connect_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            close_timeout_ms: 2_000,
            frame_batch_max: 512,
            http_timeout_ms: 10_000,
            http_min_interval_ms: 50,
            http_attempts: 5,
            http_concurrency: 8,
            http_max_rounds: 50,
            http_max_requests_per_round: 200,
            http_max_body_bytes: 16 * 1024 * 1024,
            instances_per_plugin: 2,
            dedupe_window: 2048,
            acks_in_flight: 4096,
            tick_ms: 1000,
            replicas: 1,
            transform_retries: 3,
            transform_retry_ms: 200,
            allow: Vec::new(),
            deny: Vec::new(),
            proxy: None,
        }
    }
}
