//! Helpers shared by the integration tests: start a simulator, speak WebSocket, poll with
//! deadlines.
#![allow(dead_code)]

use std::time::Duration;

use anode_feedsim::{FeedSim, SimConfig};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Upper bound of any single wait in the tests.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// Silence that means "the simulator has nothing more to send" once paused.
pub const QUIET: Duration = Duration::from_millis(300);

/// A fast simulator on loopback port 0.
pub fn fast_config() -> SimConfig {
    SimConfig {
        rate_per_stream: 100.0,
        tick_ms: 10,
        ..SimConfig::default()
    }
}

pub async fn start(config: SimConfig) -> FeedSim {
    anode_feedsim::start(config)
        .await
        .expect("start feed simulator")
}

pub async fn connect(url: &str) -> Ws {
    let (ws, _) = timeout(DEADLINE, connect_async(url))
        .await
        .expect("connect in time")
        .expect("connect");
    ws
}

pub async fn send_json(ws: &mut Ws, value: Value) {
    ws.send(Message::Text(value.to_string().into()))
        .await
        .expect("send");
}

/// What a read produced.
#[derive(Debug)]
pub enum Frame {
    Text(String),
    Close(Option<u16>, String),
    /// The stream ended without a Close frame, or failed.
    Ended,
}

/// The next text or close frame, skipping pings; None if nothing came within `wait`.
pub async fn next_frame(ws: &mut Ws, wait: Duration) -> Option<Frame> {
    let until = Instant::now() + wait;
    loop {
        let left = until.checked_duration_since(Instant::now())?;
        match timeout(left, ws.next()).await.ok()? {
            Some(Ok(Message::Text(t))) => return Some(Frame::Text(t.to_string())),
            Some(Ok(Message::Close(frame))) => {
                return Some(match frame {
                    Some(f) => Frame::Close(Some(f.code.into()), f.reason.to_string()),
                    None => Frame::Close(None, String::new()),
                });
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Some(Frame::Ended),
        }
    }
}

/// The next text frame parsed as JSON (panics on anything else or on timeout).
pub async fn next_json(ws: &mut Ws) -> Value {
    match next_frame(ws, DEADLINE).await {
        Some(Frame::Text(t)) => {
            serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t}"))
        }
        other => panic!("expected a JSON text frame, got {other:?}"),
    }
}

/// The next JSON message satisfying `pred`, skipping others (bounded by [`DEADLINE`]).
pub async fn next_matching(ws: &mut Ws, pred: impl Fn(&Value) -> bool) -> Value {
    let until = Instant::now() + DEADLINE;
    while Instant::now() < until {
        let v = next_json(ws).await;
        if pred(&v) {
            return v;
        }
    }
    panic!("no matching message within {DEADLINE:?}");
}

/// Reads text frames until `QUIET` passes without one (bounded by [`DEADLINE`]).
pub async fn drain_until_quiet(ws: &mut Ws) -> Vec<String> {
    let until = Instant::now() + DEADLINE;
    let mut out = Vec::new();
    while Instant::now() < until {
        match next_frame(ws, QUIET).await {
            Some(Frame::Text(t)) => out.push(t),
            _ => return out,
        }
    }
    panic!("the simulator kept sending for {DEADLINE:?} after pause");
}

/// Polls `check` every 20 ms until it returns Some, or panics after [`DEADLINE`].
pub async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET url`: the status and the JSON body.
pub async fn get_json(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

/// Compresses sorted ids into inclusive ranges, as the report keeps them.
pub fn ranges(ids: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &id in ids {
        match out.last_mut() {
            Some(last) if last.1 + 1 == id => last.1 = id,
            _ => out.push((id, id)),
        }
    }
    out
}
