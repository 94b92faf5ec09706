//! Deterministic fault injection: "every Nth" decisions, their counters, and the HTTP layer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::Faults;
use crate::report::FaultCounts;
use crate::sim::Sim;

/// Frames sent by `malformed_every`, in turn: neither is valid JSON.
const MALFORMED_FRAMES: [&str; 2] = [r#"{"e":"trade","s":"#, "not json"];

/// Whether the `count`th occurrence is hit by an "every Nth" setting (None or 0 = off).
fn hits(every: Option<u64>, count: u64) -> bool {
    matches!(every, Some(e) if e > 0 && count > 0 && count.is_multiple_of(e))
}

/// Live counters behind [`FaultCounts`].
#[derive(Debug, Default)]
pub(crate) struct FaultCounters {
    pub(crate) connections: AtomicU64,
    pub(crate) dropped_connections: AtomicU64,
    pub(crate) malformed_frames: AtomicU64,
    pub(crate) truncated_frames: AtomicU64,
    pub(crate) http_429: AtomicU64,
    pub(crate) slow_responses: AtomicU64,
    pub(crate) http_requests: AtomicU64,
}

impl FaultCounters {
    pub(crate) fn bump(counter: &AtomicU64) -> u64 {
        counter.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn snapshot(&self) -> FaultCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FaultCounts {
            connections: get(&self.connections),
            dropped_connections: get(&self.dropped_connections),
            malformed_frames: get(&self.malformed_frames),
            truncated_frames: get(&self.truncated_frames),
            http_429: get(&self.http_429),
            slow_responses: get(&self.slow_responses),
            http_requests: get(&self.http_requests),
        }
    }
}

/// Faults due after one data message on a connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct AfterMessage {
    /// Send this extra non-JSON frame.
    pub(crate) malformed: Option<&'static str>,
    /// Send the message just sent, cut in half.
    pub(crate) truncated: bool,
    /// Close the connection with 1001.
    pub(crate) drop: bool,
}

/// Per-connection fault state: counts data messages and decides what follows each.
#[derive(Debug, Default)]
pub(crate) struct ConnectionFaults {
    data_messages: u64,
    malformed_sent: u64,
}

impl ConnectionFaults {
    /// Called once per data message sent successfully.
    pub(crate) fn after_data_message(&mut self, faults: &Faults) -> AfterMessage {
        self.data_messages += 1;
        let n = self.data_messages;
        let malformed = hits(faults.malformed_every, n).then(|| {
            let frame = MALFORMED_FRAMES[(self.malformed_sent % 2) as usize];
            self.malformed_sent += 1;
            frame
        });
        AfterMessage {
            malformed,
            truncated: hits(faults.truncated_every, n),
            drop: matches!(faults.drop_every, Some(e) if e > 0 && n >= e),
        }
    }
}

/// The first half of `message`, cut on a character boundary.
pub(crate) fn truncate(message: &str) -> &str {
    let mut cut = message.len() / 2;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    &message[..cut]
}

/// Middleware on REST and EVM routes: counts requests, injects 429s and slow responses.
pub(crate) async fn http_faults(State(sim): State<Arc<Sim>>, req: Request, next: Next) -> Response {
    let n = FaultCounters::bump(&sim.faults.http_requests);
    let faults = &sim.config.faults;
    if hits(faults.http_429_every, n) {
        FaultCounters::bump(&sim.faults.http_429);
        let msg = format!(
            "Too many requests (simulated every {} requests); retry after {} s.",
            faults.http_429_every.unwrap_or_default(),
            faults.retry_after_s
        );
        // In the venue's error shape: Coinbase `{"message"}`, Binance `{"code","msg"}`.
        let body = if req.uri().path().starts_with("/coinbase/") {
            serde_json::json!({ "message": msg })
        } else {
            serde_json::json!({ "code": -1003, "msg": msg })
        };
        let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(faults.retry_after_s));
        return response;
    }
    if hits(faults.slow_every, n) {
        FaultCounters::bump(&sim.faults.slow_responses);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(faults.slow_ms)) => {}
            _ = sim.shutdown.cancelled() => {}
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_nth_decisions() {
        let faults = Faults {
            drop_every: Some(5),
            malformed_every: Some(2),
            truncated_every: Some(3),
            ..Faults::default()
        };
        let mut conn = ConnectionFaults::default();
        let decisions: Vec<_> = (0..5).map(|_| conn.after_data_message(&faults)).collect();
        assert_eq!(decisions[0], AfterMessage::default());
        assert_eq!(decisions[1].malformed, Some(MALFORMED_FRAMES[0]));
        assert!(decisions[2].truncated && decisions[2].malformed.is_none());
        assert_eq!(decisions[3].malformed, Some(MALFORMED_FRAMES[1]));
        assert!(decisions.iter().take(4).all(|d| !d.drop));
        assert!(decisions[4].drop);
    }

    #[test]
    fn off_by_default_and_zero_means_off() {
        let mut conn = ConnectionFaults::default();
        let zero = Faults {
            drop_every: Some(0),
            malformed_every: Some(0),
            ..Faults::default()
        };
        for _ in 0..10 {
            assert_eq!(
                conn.after_data_message(&Faults::default()),
                AfterMessage::default()
            );
            assert_eq!(conn.after_data_message(&zero), AfterMessage::default());
        }
        assert!(!hits(Some(3), 0));
    }

    #[test]
    fn malformed_frames_are_not_json_and_truncation_is_not_either() {
        for frame in MALFORMED_FRAMES {
            assert!(serde_json::from_str::<serde_json::Value>(frame).is_err());
        }
        let msg = r#"{"e":"trade","s":"BTCUSDT","t":1}"#;
        let half = truncate(msg);
        assert_eq!(half.len(), msg.len() / 2);
        assert!(serde_json::from_str::<serde_json::Value>(half).is_err());
        assert_eq!(truncate("é"), "");
    }
}
