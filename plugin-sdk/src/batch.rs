//! The batched calls the host makes, in plain Rust: the component glue and the native test
//! harness both go through these, so tests exercise exactly what runs in the component.

use crate::connector::{Connector, Output};
use crate::transform::Transform;
use crate::types::{Event, Frame, HttpResponse, PluginError};

/// Decode a batch of frames: per-frame errors are collected, the rest of the batch counts.
pub(crate) fn frames<C: Connector>(connector: &mut C, frames: &[Frame]) -> Output {
    let mut out = Output::default();
    for frame in frames {
        if let Err(error) = connector.on_frame(frame, &mut out) {
            out.errors.push(error);
        }
    }
    out
}

/// Decode a batch of HTTP responses, like [`frames`].
pub(crate) fn responses<C: Connector>(connector: &mut C, responses: &[HttpResponse]) -> Output {
    let mut out = Output::default();
    for response in responses {
        if let Err(error) = connector.on_response(response, &mut out) {
            out.errors.push(error);
        }
    }
    out
}

/// Run one batch through a transform.
pub(crate) fn process<T: Transform>(
    transform: &mut T,
    events: Vec<Event>,
) -> Result<Vec<Event>, PluginError> {
    let mut out = Vec::with_capacity(events.len());
    transform.process(events, &mut out)?;
    Ok(out)
}

/// Give a transform a tick.
pub(crate) fn tick<T: Transform>(
    transform: &mut T,
    now_us: i64,
) -> Result<Vec<Event>, PluginError> {
    let mut out = Vec::new();
    transform.tick(now_us, &mut out)?;
    Ok(out)
}
