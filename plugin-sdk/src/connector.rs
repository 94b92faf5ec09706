//! The connector trait and what a connector emits.

use crate::types::{Event, Frame, HttpRequest, HttpResponse, Manifest, Plan, PluginError};

/// A source connector: says how to reach a source and decodes what arrives.
///
/// The host creates one value per source with [`Connector::open`] and hands it batches of
/// frames or responses; the SDK calls `on_frame`/`on_response` once per item so the code stays
/// simple while the component boundary stays batched.
pub trait Connector: Sized + 'static {
    /// The plugin's description of itself.
    fn manifest() -> Manifest;

    /// Start decoding for one source. `config` is the source's JSON configuration (parse it
    /// with [`crate::json::config`]); `cursor` is the last cursor the source reported.
    fn open(config: &str, cursor: Option<&str>) -> Result<Self, PluginError>;

    /// HTTP requests to make as the source starts, before and alongside its first connection:
    /// typically the backfill from the cursor given to `open`, so a source catches up even
    /// when its venue stays quiet. Asked once per start, before `plan`; the answers come to
    /// [`Connector::on_response`]. The default asks for nothing.
    fn backfill(&mut self) -> Vec<HttpRequest> {
        Vec::new()
    }

    /// How the host should reach the data; asked after `open` and after every reconnect.
    fn plan(&self) -> Plan;

    /// Decode one WebSocket message. A `BadInput` error skips just this frame.
    fn on_frame(&mut self, frame: &Frame, out: &mut Output) -> Result<(), PluginError> {
        let _ = (frame, out);
        Err(PluginError::fatal(
            "this connector does not read WebSocket frames",
        ))
    }

    /// Decode one HTTP response. A `BadInput` error skips just this response.
    fn on_response(
        &mut self,
        response: &HttpResponse,
        out: &mut Output,
    ) -> Result<(), PluginError> {
        let _ = (response, out);
        Err(PluginError::fatal(
            "this connector does not read HTTP responses",
        ))
    }
}

/// What a batch of frames or responses turned into.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Output {
    pub events: Vec<Event>,
    /// One per input that could not be used.
    pub errors: Vec<PluginError>,
    /// HTTP requests to make now.
    pub requests: Vec<HttpRequest>,
    /// Text messages to send back on the WebSocket.
    pub replies: Vec<String>,
    /// Where the source has got to; the host stores it.
    pub cursor: Option<String>,
}

impl Output {
    /// Emit an event.
    pub fn emit(&mut self, event: Event) {
        self.events.push(event);
    }

    /// Ask the host to make a request now.
    pub fn request(&mut self, request: HttpRequest) {
        self.requests.push(request);
    }

    /// Ask the host to send a text message on the WebSocket.
    pub fn reply(&mut self, message: impl Into<String>) {
        self.replies.push(message.into());
    }

    /// Record how far the source has got.
    pub fn set_cursor(&mut self, cursor: impl Into<String>) {
        self.cursor = Some(cursor.into());
    }
}
