//! Plain Rust mirrors of the WIT types, so plugin logic never touches generated bindings.

use serde::Serialize;

/// What a plugin is; the SDK fills it in from the trait you implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginKind {
    Connector,
    Transform,
}

/// What a plugin says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub description: String,
    /// JSON Schema of the accepted configuration.
    pub config_schema: String,
    /// A working configuration, as JSON.
    pub config_example: String,
}

impl Manifest {
    /// A manifest with an open schema (`{}`) and an empty example (`{}`).
    pub fn new(name: &str, version: &str, description: &str) -> Self {
        Manifest {
            name: name.to_owned(),
            version: version.to_owned(),
            description: description.to_owned(),
            config_schema: "{}".to_owned(),
            config_example: "{}".to_owned(),
        }
    }

    /// Set the JSON Schema of the configuration.
    pub fn schema(mut self, schema: serde_json::Value) -> Self {
        self.config_schema = schema.to_string();
        self
    }

    /// Set an example configuration.
    pub fn example(mut self, example: serde_json::Value) -> Self {
        self.config_example = example.to_string();
        self
    }
}

/// A failure, shaped by what the host should do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginError {
    /// This input cannot be understood: counted and skipped.
    BadInput(String),
    /// A passing failure: the host backs off and retries.
    Retryable(String),
    /// The source or transform cannot go on: the host stops it with this message.
    Fatal(String),
}

impl PluginError {
    /// Shorthand for [`PluginError::BadInput`].
    pub fn bad_input(message: impl Into<String>) -> Self {
        PluginError::BadInput(message.into())
    }

    /// Shorthand for [`PluginError::Retryable`].
    pub fn retryable(message: impl Into<String>) -> Self {
        PluginError::Retryable(message.into())
    }

    /// Shorthand for [`PluginError::Fatal`].
    pub fn fatal(message: impl Into<String>) -> Self {
        PluginError::Fatal(message.into())
    }

    /// The message, whatever the variant.
    pub fn message(&self) -> &str {
        match self {
            PluginError::BadInput(m) | PluginError::Retryable(m) | PluginError::Fatal(m) => m,
        }
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            PluginError::BadInput(_) => "bad input",
            PluginError::Retryable(_) => "retryable",
            PluginError::Fatal(_) => "fatal",
        };
        write!(f, "{kind}: {}", self.message())
    }
}

impl std::error::Error for PluginError {}

/// One normalised record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Kind of record: `trades`, `ticker`, `blocks`, `candles`.
    pub stream: String,
    /// What the record is about (a symbol, a chain).
    pub key: Option<String>,
    /// The upstream's id for this record: with the source id, the idempotency key.
    pub upstream_id: Option<String>,
    /// When the upstream says it happened, in microseconds since the Unix epoch.
    pub event_time: Option<i64>,
    /// One JSON object, UTF-8.
    pub payload: Vec<u8>,
}

impl Event {
    /// An event whose payload is `payload` serialised as JSON.
    pub fn new(stream: &str, payload: &impl Serialize) -> Self {
        Event {
            stream: stream.to_owned(),
            key: None,
            upstream_id: None,
            event_time: None,
            // Serialising plain data (maps, strings, numbers) cannot fail.
            payload: serde_json::to_vec(payload).unwrap_or_else(|_| b"null".to_vec()),
        }
    }

    /// Set the key subscribers filter on.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Set the upstream id (the idempotency key within the source).
    pub fn upstream_id(mut self, id: impl Into<String>) -> Self {
        self.upstream_id = Some(id.into());
        self
    }

    /// Set the event time, in microseconds since the Unix epoch.
    pub fn at(mut self, event_time_us: i64) -> Self {
        self.event_time = Some(event_time_us);
        self
    }

    /// The payload parsed back into JSON.
    pub fn json(&self) -> Result<serde_json::Value, PluginError> {
        crate::json::parse(&self.payload)
    }
}

/// How the host reaches a source's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    WebSocket(WebSocketPlan),
    Http(HttpPlan),
}

impl Plan {
    /// A WebSocket plan with no subscribe messages and no heartbeat.
    pub fn websocket(url: impl Into<String>) -> Self {
        Plan::WebSocket(WebSocketPlan {
            url: url.into(),
            on_connect: Vec::new(),
            heartbeat: None,
        })
    }

    /// An HTTP polling plan: `requests` every `interval_ms`.
    pub fn http(requests: Vec<HttpRequest>, interval_ms: u32) -> Self {
        Plan::Http(HttpPlan {
            requests,
            interval_ms,
        })
    }
}

/// A WebSocket connection the host keeps open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocketPlan {
    pub url: String,
    /// Text messages sent after every (re)connect.
    pub on_connect: Vec<String>,
    pub heartbeat: Option<Heartbeat>,
}

impl WebSocketPlan {
    /// Add a message to send after every connect.
    pub fn send_on_connect(mut self, message: impl Into<String>) -> Self {
        self.on_connect.push(message.into());
        self
    }
}

/// An application-level ping the host sends on an interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub interval_ms: u32,
    pub message: String,
}

/// Requests the host makes on an interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPlan {
    pub requests: Vec<HttpRequest>,
    pub interval_ms: u32,
}

/// An HTTP request the host makes for the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    /// Handed back with the response.
    pub tag: String,
}

impl HttpRequest {
    /// A `GET` of `url`, tagged `tag`.
    pub fn get(url: impl Into<String>, tag: impl Into<String>) -> Self {
        HttpRequest {
            method: "GET".to_owned(),
            url: url.into(),
            headers: Vec::new(),
            body: None,
            tag: tag.into(),
        }
    }

    /// A `POST` of a JSON body to `url`, tagged `tag`.
    pub fn post_json(
        url: impl Into<String>,
        body: &serde_json::Value,
        tag: impl Into<String>,
    ) -> Self {
        HttpRequest {
            method: "POST".to_owned(),
            url: url.into(),
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: Some(body.to_string().into_bytes()),
            tag: tag.into(),
        }
    }
}

/// A WebSocket message as the host received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub data: Vec<u8>,
    /// Microseconds since the Unix epoch.
    pub received_at: i64,
}

impl Frame {
    /// A frame received now (for tests).
    pub fn text(data: &str) -> Self {
        Frame {
            data: data.as_bytes().to_vec(),
            received_at: crate::time::now_us(),
        }
    }
}

/// An HTTP response as the host received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The tag of the request this answers.
    pub tag: String,
    pub status: u16,
    pub body: Vec<u8>,
    /// Microseconds since the Unix epoch.
    pub received_at: i64,
}

impl HttpResponse {
    /// A `200 OK` response received now (for tests).
    pub fn ok(tag: &str, body: &str) -> Self {
        HttpResponse {
            tag: tag.to_owned(),
            status: 200,
            body: body.as_bytes().to_vec(),
            received_at: crate::time::now_us(),
        }
    }
}
