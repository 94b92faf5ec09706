//! The sending side of a link: `GET /cluster/v1/stream` streams this node's records to a
//! peer, numbered, resending from the outbox what a resuming or lagging link missed.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;

use super::wire::{Interest, LinkQuery};
use crate::cluster::PeerContext;
use crate::fanout::{Delivery, Filter, Stage};

/// `GET /cluster/v1/stream`: stream this node's records to a peer.
pub async fn serve(
    State(state): State<PeerContext>,
    Query(query): Query<LinkQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    // A peer sends only filter updates.
    upgrade
        .read_buffer_size(8 * 1024)
        .max_message_size(1024 * 1024)
        .on_upgrade(move |socket| stream_to_peer(socket, state, query))
}

/// Records written to a peer link before one flush, at most.
const LINK_BATCH_MAX: usize = 256;

/// A record for a link: numbered (`seq` > 0, for a link that resumes), or as an older peer
/// reads it.
fn peer_message(stage: Stage, json: &str, seq: Option<u64>) -> Message {
    Message::text(match (seq, stage) {
        (Some(seq), Stage::Decoded) => {
            format!(r#"{{"seq":{seq},"after":"decoded","record":{json}}}"#)
        }
        (Some(seq), Stage::Stored) => {
            format!(r#"{{"seq":{seq},"after":"stored","record":{json}}}"#)
        }
        (None, Stage::Decoded) => json.to_owned(),
        // The receiver must know which of its clients may see it.
        (None, Stage::Stored) => format!(r#"{{"after":"stored","record":{json}}}"#),
    })
}

/// Where a link stands on the sending side: the last outbox number sent, and the records
/// dropped for it so far that were made up for (or announced).
struct Sending {
    numbered: bool,
    sent: u64,
    told: u64,
}

impl Sending {
    /// Queue a record unless it went out already (from the outbox).
    fn push(&mut self, batch: &mut Vec<Message>, stage: Stage, json: &str, seq: u64) {
        if !self.numbered {
            batch.push(peer_message(stage, json, None));
        } else if seq > self.sent {
            self.sent = seq;
            batch.push(peer_message(stage, json, Some(seq)));
        }
    }

    /// Queue what the outbox holds after the last record sent that matches `filters`, if it
    /// holds all of it; whether it did.
    fn resend(
        &mut self,
        state: &PeerContext,
        batch: &mut Vec<Message>,
        filters: &[Filter],
    ) -> bool {
        let missed = state.hub.missed(self.sent, filters);
        if !missed.complete {
            return false;
        }
        let stats = &state.cluster.stats;
        stats
            .records_resent
            .fetch_add(missed.records.len() as u64, Relaxed);
        for (seq, stage, json) in &missed.records {
            self.push(batch, *stage, json, *seq);
        }
        // Nothing else up to the last one made matches.
        self.sent = self.sent.max(missed.last);
        true
    }
}

async fn stream_to_peer(socket: WebSocket, state: PeerContext, query: LinkQuery) {
    let (mut tx, mut rx) = socket.split();
    let Ok(mut subscription) = state.hub.subscribe_peer(Vec::new()) else {
        return;
    };
    let mut sending = Sending {
        numbered: query.resume.is_some(),
        sent: 0,
        told: 0,
    };
    let mut opened = false;
    let mut filters: Vec<Filter> = Vec::new();
    loop {
        let batch: Vec<Message> = tokio::select! {
            () = state.shutdown.cancelled() => {
                let _ = tx.send(Message::Close(Some(CloseFrame { code: 1001, reason: "node shutting down".into() }))).await;
                return;
            }
            delivery = subscription.next() => match delivery {
                Delivery::Record { json, stage, seq, dropped_total } => {
                    // Whatever else is queued goes out with it, with one flush: one write per
                    // batch on the link, not one per record.
                    let mut queued = vec![(stage, json, seq)];
                    while let Some(q) = subscription.try_next_queued() {
                        queued.push((q.stage, q.json, q.seq));
                        if queued.len() >= LINK_BATCH_MAX {
                            break;
                        }
                    }
                    let mut batch = Vec::new();
                    if dropped_total > sending.told {
                        // Records were dropped for the link (it was behind): a numbered link
                        // gets them from the outbox, in order (everything still queued is
                        // taken first, so nothing made meanwhile is missed); otherwise, or
                        // when the outbox no longer has them, the peer tells its clients.
                        let told = subscription.dropped_total();
                        while let Some(q) = subscription.try_next_queued() {
                            queued.push((q.stage, q.json, q.seq));
                        }
                        if !(sending.numbered && sending.resend(&state, &mut batch, &filters)) {
                            let dropped = json!({ "gap": { "dropped": told - sending.told } });
                            batch.push(Message::text(dropped.to_string()));
                        }
                        sending.told = told;
                    }
                    for (stage, json, seq) in queued {
                        sending.push(&mut batch, stage, &json, seq);
                    }
                    batch
                }
                Delivery::Disconnect(reason) => {
                    let _ = tx.send(Message::Close(Some(CloseFrame { code: 4008, reason: reason.into() }))).await;
                    return;
                }
            },
            incoming = rx.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    let Ok(interest) = serde_json::from_str::<Interest>(&text) else {
                        continue;
                    };
                    filters = interest.filters;
                    subscription.set_filters(filters.clone());
                    let mut batch = Vec::new();
                    if sending.numbered && !opened {
                        // The filters are in place: what is made from now on comes live.
                        // A resuming link first gets what followed its position, from the
                        // outbox, if it still holds all of it.
                        opened = true;
                        let epoch = state.hub.outbox_epoch();
                        let mut resent = Vec::new();
                        let resumed = match query.epoch.zip(query.after) {
                            Some((e, after)) if e == epoch => {
                                sending.sent = after;
                                sending.resend(&state, &mut resent, &filters).then_some(after)
                            }
                            _ => None,
                        };
                        // A new link, or one that cannot resume: from the last record made.
                        let from = resumed.unwrap_or_else(|| {
                            sending.sent = state.hub.outbox_last();
                            sending.sent
                        });
                        let complete = resumed.is_some() || query.after.is_none();
                        let link = json!({ "link": { "epoch": epoch, "from": from, "complete": complete } });
                        batch.push(Message::text(link.to_string()));
                        batch.extend(resent);
                    }
                    if let Some(version) = interest.version {
                        batch.push(Message::text(json!({ "confirmed": version }).to_string()));
                    }
                    batch
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
        };
        if batch.is_empty() {
            continue;
        }
        let send = async {
            for message in batch {
                tx.feed(message).await?;
            }
            tx.flush().await
        };
        let sent = tokio::time::timeout(Duration::from_secs(5), send).await;
        if !matches!(sent, Ok(Ok(()))) {
            return;
        }
    }
}
