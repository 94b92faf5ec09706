//! Drive a plugin natively the way the host does, for `cargo test`.

use crate::batch;
use crate::connector::{Connector, Output};
use crate::transform::Transform;
use crate::types::{Event, Frame, HttpResponse, PluginError};

/// Open a connector with a JSON config, panicking with the plugin's message if it refuses.
pub fn open<C: Connector>(config: &str) -> C {
    match C::open(config, None) {
        Ok(connector) => connector,
        Err(error) => panic!("open({config}) failed: {error}"),
    }
}

/// Open a connector with a JSON config and the cursor the host would pass after a restart,
/// panicking with the plugin's message if it refuses.
pub fn open_at<C: Connector>(config: &str, cursor: Option<&str>) -> C {
    match C::open(config, cursor) {
        Ok(connector) => connector,
        Err(error) => panic!("open({config}, cursor {cursor:?}) failed: {error}"),
    }
}

/// Feed text frames to a connector as one batch, all received at `received_at`
/// (microseconds since the Unix epoch), for tests that depend on time.
pub fn frames_at<C: Connector>(connector: &mut C, texts: &[&str], received_at: i64) -> Output {
    let frames: Vec<Frame> = texts
        .iter()
        .map(|t| Frame {
            data: t.as_bytes().to_vec(),
            received_at,
        })
        .collect();
    batch::frames(connector, &frames)
}

/// An HTTP response with any status, received now (for tests).
pub fn response(tag: &str, status: u16, body: &str) -> HttpResponse {
    HttpResponse {
        status,
        ..HttpResponse::ok(tag, body)
    }
}

/// Feed text frames to a connector as one batch.
pub fn frames<C: Connector>(connector: &mut C, texts: &[&str]) -> Output {
    let frames: Vec<Frame> = texts.iter().map(|t| Frame::text(t)).collect();
    batch::frames(connector, &frames)
}

/// Feed frames to a connector as one batch, exactly as the component glue does.
pub fn frame_batch<C: Connector>(connector: &mut C, frames: &[Frame]) -> Output {
    batch::frames(connector, frames)
}

/// Feed HTTP responses to a connector as one batch.
pub fn responses<C: Connector>(connector: &mut C, responses: &[HttpResponse]) -> Output {
    batch::responses(connector, responses)
}

/// Run one batch through a transform.
pub fn process<T: Transform>(
    transform: &mut T,
    events: Vec<Event>,
) -> Result<Vec<Event>, PluginError> {
    batch::process(transform, events)
}

/// Give a transform a tick at `now_us`.
pub fn tick<T: Transform>(transform: &mut T, now_us: i64) -> Result<Vec<Event>, PluginError> {
    batch::tick(transform, now_us)
}

/// Parse every event's payload, for assertions.
pub fn payloads(events: &[Event]) -> Vec<serde_json::Value> {
    events
        .iter()
        .map(|e| serde_json::from_slice(&e.payload).expect("payload is JSON"))
        .collect()
}

/// The frames of `file` in the corpus of real recorded venue frames, one per line: the folder
/// `ANODE_REALFRAMES` names, else `realframes/` in the `shared` folder beside the project's
/// root. `None` when the folder is absent, after saying on stderr that conformance to
/// recorded frames was not checked (a file missing from a present folder fails the test).
pub fn real_frames(file: &str) -> Option<Vec<String>> {
    let dir = std::env::var_os("ANODE_REALFRAMES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/realframes")
        });
    if !dir.is_dir() {
        eprintln!(
            "NOT CHECKED: the corpus of real venue frames is absent ({} is not a folder); \
             conformance to recorded frames was not tested. Set ANODE_REALFRAMES to the folder \
             that holds it.",
            dir.display()
        );
        return None;
    }
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{} is in the corpus list but unreadable: {e}",
            path.display()
        )
    });
    Some(
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect(),
    )
}
