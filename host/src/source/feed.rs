//! What a driver hands its frames and responses to, and what it learns back: the narrow
//! interface between the drivers and the pipeline that decodes and stores (the pipeline
//! implements [`Feed`]; the drivers never see it).

use std::future::Future;

use tokio_util::sync::CancellationToken;

use super::{SourceSettings, SourceStatus};
use crate::plugin::{Frame, HttpRequest, HttpResponse};

/// Input for one batched connector call.
pub(crate) enum Input {
    Frames(Vec<Frame>),
    Responses(Vec<HttpResponse>),
}

/// Why a driver must stop reading for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Problem {
    /// Back off, then reconnect / poll again.
    Retry(String),
    /// Stop the source; an operator must act.
    Fatal(String),
}

/// What a batch asks of the driver.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) requests: Vec<HttpRequest>,
    pub(crate) replies: Vec<String>,
    pub(crate) problem: Option<Problem>,
}

/// One running source, as its driver sees it.
pub(crate) trait Feed: Sync {
    /// Decode, store and publish one batch.
    fn ingest(&self, input: Input) -> impl Future<Output = Outcome> + Send;
    fn status(&self) -> &SourceStatus;
    /// Set when the source must stop.
    fn cancel(&self) -> &CancellationToken;
    fn settings(&self) -> &SourceSettings;
    fn source_http(&self) -> &reqwest::Client;
    /// What the source may reach.
    fn egress(&self) -> &super::Egress;
    /// Count a stopping session whose venue did not end the connection within
    /// `sources.close_timeout_ms`.
    fn close_timed_out(&self);
}
