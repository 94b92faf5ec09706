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

    /// Mark this event as undoing the earlier event of the same stream whose upstream id
    /// is `undone` (a block that left the chain): stores take that event off the canonical
    /// view, subscribers get `{"type":"undo","undoes":<its record id>,…}`. `generation`
    /// tells one undo of the same event from a later one (count the undos a source made).
    /// Sets the upstream id to `undo:<generation>:<undone>`.
    pub fn undoes(mut self, generation: u64, undone: &str) -> Self {
        self.upstream_id = Some(format!("undo:{generation}:{undone}"));
        self
    }

    /// Mark this event as the irreversible version of the event whose upstream id is
    /// `earlier` (a block now final): stores keep this one in the canonical view instead of
    /// the earlier, which need not exist; `after=final` subscribers get only such events.
    /// Sets the upstream id to `final:<earlier>`.
    pub fn irreversible(mut self, earlier: &str) -> Self {
        self.upstream_id = Some(format!("final:{earlier}"));
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
    /// A WebSocket plan to `url`, to build on: `Plan::websocket(url).subscribe(msg)
    /// .heartbeat(ms, ping).into()`.
    pub fn websocket(url: impl Into<String>) -> WebSocketPlan {
        WebSocketPlan {
            url: url.into(),
            on_connect: Vec::new(),
            heartbeat: None,
        }
    }

    /// An HTTP polling plan made every `interval_ms`, to build on:
    /// `Plan::http(1000).get(url, tag).into()`.
    pub fn http(interval_ms: u32) -> HttpPlan {
        HttpPlan {
            requests: Vec::new(),
            interval_ms,
        }
    }
}

impl From<WebSocketPlan> for Plan {
    fn from(plan: WebSocketPlan) -> Self {
        Plan::WebSocket(plan)
    }
}

impl From<HttpPlan> for Plan {
    fn from(plan: HttpPlan) -> Self {
        Plan::Http(plan)
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
    /// Send `message` after every (re)connect, after the ones added before it.
    pub fn subscribe(mut self, message: impl Into<String>) -> Self {
        self.on_connect.push(message.into());
        self
    }

    /// Send `message` as JSON text after every (re)connect.
    pub fn subscribe_json(self, message: &impl Serialize) -> Self {
        let text = serde_json::to_string(message).expect("a JSON value serialises");
        self.subscribe(text)
    }

    /// Send `message` every `interval_ms` while connected (an application-level ping, for
    /// venues that want one; WebSocket pings are answered by the host in any case).
    pub fn heartbeat(mut self, interval_ms: u32, message: impl Into<String>) -> Self {
        self.heartbeat = Some(Heartbeat {
            interval_ms,
            message: message.into(),
        });
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

impl HttpPlan {
    /// Make `request` on every round, after the ones added before it.
    pub fn request(mut self, request: HttpRequest) -> Self {
        self.requests.push(request);
        self
    }

    /// `GET url` on every round; the response comes back tagged `tag`.
    pub fn get(self, url: impl Into<String>, tag: impl Into<String>) -> Self {
        self.request(HttpRequest::get(url, tag))
    }

    /// `POST` the JSON `body` to `url` on every round; the response comes back tagged `tag`.
    pub fn post_json(
        self,
        url: impl Into<String>,
        body: &serde_json::Value,
        tag: impl Into<String>,
    ) -> Self {
        self.request(HttpRequest::post_json(url, body, tag))
    }
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

    /// Add a request header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_built_fluently() {
        let subscription = serde_json::json!({"op": "sub", "args": ["a"]});
        let plan: Plan = Plan::websocket("ws://h/ws")
            .subscribe("hello")
            .subscribe_json(&subscription)
            .heartbeat(5_000, "ping")
            .into();
        assert_eq!(
            plan,
            Plan::WebSocket(WebSocketPlan {
                url: "ws://h/ws".to_owned(),
                on_connect: vec!["hello".to_owned(), subscription.to_string()],
                heartbeat: Some(Heartbeat {
                    interval_ms: 5_000,
                    message: "ping".to_owned()
                }),
            })
        );

        let body = serde_json::json!({"id": 1});
        let Plan::Http(plan) = Plan::http(250)
            .get("http://h/a", "a")
            .post_json("http://h/b", &body, "b")
            .request(HttpRequest::get("http://h/c", "c").header("X-Key", "k"))
            .into()
        else {
            panic!("an HTTP plan");
        };
        assert_eq!(plan.interval_ms, 250);
        let tags: Vec<_> = plan.requests.iter().map(|r| r.tag.as_str()).collect();
        assert_eq!(tags, ["a", "b", "c"]);
        assert_eq!(plan.requests[1].method, "POST");
        assert_eq!(plan.requests[1].body.as_deref(), Some(&br#"{"id":1}"#[..]));
        assert_eq!(
            plan.requests[2].headers,
            [("X-Key".to_owned(), "k".to_owned())]
        );
    }
}
