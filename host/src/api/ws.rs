//! `/ws`: live subscribers (filters, `after=decoded|stored|final`) and resuming ones
//! (`since=`, from the durable log), each fed by the fan-out with bounded queues.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};

use super::error::{ApiError, AppState};
use crate::cluster::relay::HEARD_WITHIN;
use crate::fanout::{Delivery, Filter};
use crate::sink::{LogStart, Tail};
use crate::supervisor::log_filter;

/// Largest message a `/ws` subscriber may send (a filter).
const SUBSCRIBER_MESSAGE_MAX: usize = 64 * 1024;
/// What a subscriber's socket reads into at a time.
const SUBSCRIBER_READ_BUFFER: usize = 4 * 1024;
/// How long a send to a subscriber may take before it counts as stuck.
const SUBSCRIBER_SEND_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn ws(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let filter = match Filter::from_query(&query) {
        Ok(filter) => filter,
        Err(message) => return ApiError(StatusCode::BAD_REQUEST, message).into_response(),
    };
    // A subscriber sends only small filter messages. The read buffer is small too: tungstenite
    // zero-fills it before every read, and a 128 KiB default cost a tenth of the node's CPU
    // with ten subscribers (the read half is polled whenever the socket wakes).
    let upgrade = upgrade
        .read_buffer_size(SUBSCRIBER_READ_BUFFER)
        .max_message_size(SUBSCRIBER_MESSAGE_MAX)
        .max_frame_size(SUBSCRIBER_MESSAGE_MAX);
    let Some(since) = query.get("since") else {
        return upgrade.on_upgrade(move |socket| serve_subscriber(socket, state, filter));
    };
    // A resuming subscriber reads the durable log: stored records only.
    if query.get("after").is_some_and(|a| a.trim() == "decoded") {
        return ApiError(
            StatusCode::BAD_REQUEST,
            "since= replays stored records: it cannot be combined with after=decoded".into(),
        )
        .into_response();
    }
    if filter.final_only {
        return ApiError(
            StatusCode::BAD_REQUEST,
            "since= with after=final is not supported yet: replay with after=stored and keep \
             the records whose upstream_id starts with `final:`"
                .into(),
        )
        .into_response();
    }
    let start = match LogStart::parse(since, crate::clock::now_us()) {
        Ok(start) => start,
        Err(message) => return ApiError(StatusCode::BAD_REQUEST, message).into_response(),
    };
    match state.tail(start, &filter).await {
        Ok(tail) => {
            let since = since.clone();
            upgrade.on_upgrade(move |socket| serve_resuming(socket, state, filter, since, tail))
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// A close frame's reason: at most 123 bytes.
fn close_reason(text: &str) -> String {
    let mut end = text.len().min(120);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// What a subscriber sent: a new filter, or `None` for anything else.
fn subscribe_message(text: &str) -> Option<Filter> {
    let v = serde_json::from_str::<Value>(text).ok()?;
    if v.get("type")?.as_str()? != "subscribe" {
        return None;
    }
    serde_json::from_value(v.get("filter").cloned().unwrap_or(json!({}))).ok()
}

const SUBSCRIBE_HELP: &str =
    "send {\"type\":\"subscribe\",\"filter\":{\"sources\":[..],\"streams\":[..],\"keys\":[..]}}";

/// Stream the durable log to one resuming subscriber: the stored records from its start, each
/// with its `position`, then the new ones as they are stored, until it leaves or the node
/// stops. A slow reader is never dropped from: the log waits for it.
async fn serve_resuming(
    socket: WebSocket,
    state: AppState,
    filter: Filter,
    since: String,
    (mut tail, _permit): (Tail, tokio::sync::OwnedSemaphorePermit),
) {
    let (mut tx, mut rx) = socket.split();
    let hello =
        json!({ "type": "subscribed", "node": state.node_id(), "filter": filter, "since": since });
    if tx.send(Message::text(hello.to_string())).await.is_err() {
        return;
    }
    loop {
        let outgoing: Vec<String> = tokio::select! {
            () = state.stopping() => {
                let _ = tx.send(Message::Close(Some(CloseFrame { code: 1001, reason: "node shutting down".into() }))).await;
                return;
            }
            records = tail.next() => match records {
                Ok(records) => records,
                Err(e) => {
                    let message = format!("{e}; reconnect with since=<the last position you received>");
                    let _ = tx.send(Message::text(json!({ "type": "error", "message": message }).to_string())).await;
                    let _ = tx.send(Message::Close(Some(CloseFrame { code: 1011, reason: close_reason(&message).into() }))).await;
                    return;
                }
            },
            incoming = rx.next() => match incoming {
                Some(Ok(Message::Text(text))) => match subscribe_message(&text) {
                    Some(filter) => match tail.set_filter(log_filter(&filter)).await {
                        Ok(()) => vec![json!({ "type": "subscribed", "node": state.node_id(), "filter": filter }).to_string()],
                        Err(e) => vec![json!({ "type": "error", "message": e.to_string() }).to_string()],
                    },
                    None => vec![json!({ "type": "error", "message": SUBSCRIBE_HELP }).to_string()],
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
        };
        if !matches!(
            tokio::time::timeout(SUBSCRIBER_SEND_TIMEOUT, send_all(&mut tx, outgoing)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}

/// Stream records to one subscriber until it leaves, the node stops, or it falls behind.
async fn serve_subscriber(socket: WebSocket, state: AppState, filter: Filter) {
    let (mut tx, mut rx) = socket.split();
    let mut subscription = match state.subscribe(filter.clone()) {
        Ok(s) => s,
        Err(e) => {
            let _ = tx
                .send(Message::Close(Some(CloseFrame {
                    code: 1013,
                    reason: e.to_string().into(),
                })))
                .await;
            return;
        }
    };
    // Subscribed once every live peer has heard the filter: from then on nothing of their
    // sources is missed.
    subscription.until_peers_heard(HEARD_WITHIN).await;
    let hello = json!({ "type": "subscribed", "node": state.node_id(), "filter": filter });
    if tx.send(Message::text(hello.to_string())).await.is_err() {
        return;
    }
    let mut notified_drops = 0u64;
    loop {
        let outgoing: Vec<String> = tokio::select! {
            () = state.stopping() => {
                let _ = tx.send(Message::Close(Some(CloseFrame { code: 1001, reason: "node shutting down".into() }))).await;
                return;
            }
            delivery = subscription.next() => match delivery {
                Delivery::Record { json, dropped_total, .. } => {
                    let mut out = Vec::new();
                    queue_record(&mut out, &json, dropped_total, &mut notified_drops);
                    // Whatever else is queued goes out with it, with one flush.
                    while out.len() < SUBSCRIBER_BATCH_MAX {
                        let Some((json, dropped_total)) = subscription.try_next() else {
                            break;
                        };
                        queue_record(&mut out, &json, dropped_total, &mut notified_drops);
                    }
                    out
                }
                Delivery::Disconnect(reason) => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(Message::Close(Some(CloseFrame { code: 4008, reason: reason.into() })))).await;
                    return;
                }
            },
            incoming = rx.next() => match incoming {
                Some(Ok(Message::Text(text))) => match subscribe_message(&text) {
                    Some(filter) => {
                        subscription.set_filter(filter.clone());
                        subscription.until_peers_heard(HEARD_WITHIN).await;
                        vec![json!({ "type": "subscribed", "node": state.node_id(), "filter": filter }).to_string()]
                    }
                    None => vec![json!({ "type": "error", "message": SUBSCRIBE_HELP }).to_string()],
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
        };
        // A subscriber that stops reading blocks this send; the hub then drops records for it
        // and finally disconnects it, which ends the wait here.
        tokio::select! {
            sent = tokio::time::timeout(SUBSCRIBER_SEND_TIMEOUT, send_all(&mut tx, outgoing)) => {
                if !matches!(sent, Ok(Ok(()))) {
                    return;
                }
            }
            reason = subscription.kicked() => {
                tracing::info!("disconnected a subscriber: {reason}");
                return;
            }
        }
    }
}

/// Write every message, then flush once.
async fn send_all(
    tx: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    outgoing: Vec<String>,
) -> Result<(), axum::Error> {
    for text in outgoing {
        tx.feed(Message::text(text)).await?;
    }
    tx.flush().await
}

/// Most messages written to a subscriber before one flush.
const SUBSCRIBER_BATCH_MAX: usize = 256;

/// A record for a subscriber, preceded by a lag notice when records were dropped for it
/// since the last one.
fn queue_record(out: &mut Vec<String>, json: &str, dropped_total: u64, notified: &mut u64) {
    if dropped_total > *notified {
        out.push(
            json!({
                "type": "lag",
                "dropped": dropped_total - *notified,
                "dropped_total": dropped_total,
                "message": "you are reading slower than records arrive; records were dropped for you"
            })
            .to_string(),
        );
        *notified = dropped_total;
    }
    out.push(json.to_owned());
}
