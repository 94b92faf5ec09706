//! The WebSocket driver: connect, send the plugin's subscriptions, read frames in batches,
//! answer pings, send the plugin's replies and heartbeats, carry out the HTTP requests the
//! plugin asks for alongside the stream (backfill), give up on silence.

use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::backoff::Backoff;
use crate::clock::now_us;
use crate::plugin::{Frame, WebsocketPlan};
use crate::source::SourceState;
use crate::source::http::{self, Failed};
use crate::source::{Feed, Input, Problem};

/// Keep one connection going until it fails (returns the problem) or the source is cancelled
/// (returns `None`).
pub(crate) async fn run(
    ctx: &impl Feed,
    plan: &WebsocketPlan,
    backoff: &mut Backoff,
) -> Option<Problem> {
    let settings = &ctx.settings();
    ctx.status().set_target(&plan.url);
    if let Err(refused) = ctx.egress().check(&plan.url).await {
        return Some(Problem::Fatal(refused.to_string()));
    }
    let connect = connect(ctx.egress(), &plan.url);
    let connected = tokio::select! {
        () = ctx.cancel().cancelled() => return None,
        r = tokio::time::timeout(Duration::from_millis(settings.connect_timeout_ms), connect) => r,
    };
    let socket = match connected {
        Err(_) => {
            return Some(Problem::Retry(format!(
                "connecting to {} timed out after {} ms",
                plan.url, settings.connect_timeout_ms
            )));
        }
        Ok(Err(e)) => {
            return Some(Problem::Retry(format!(
                "cannot connect to {}: {e}",
                plan.url
            )));
        }
        Ok(Ok(socket)) => socket,
    };
    let (mut sink, mut stream) = socket.split();
    for message in &plan.on_connect {
        if let Err(e) = sink.send(Message::text(message.as_str())).await {
            return Some(Problem::Retry(format!(
                "sending the subscription failed: {e}"
            )));
        }
    }
    ctx.status().set_state(SourceState::Live);
    let mut heartbeat = plan.heartbeat.as_ref().map(|h| {
        let period = Duration::from_millis(u64::from(h.interval_ms.max(100)));
        (
            tokio::time::interval_at(tokio::time::Instant::now() + period, period),
            h.message.clone(),
        )
    });
    let idle = Duration::from_millis(settings.idle_timeout_ms);
    let batch_max = settings.frame_batch_max.max(1);
    loop {
        let beat = async {
            match heartbeat.as_mut() {
                Some((interval, _)) => {
                    interval.tick().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let first = tokio::select! {
            () = ctx.cancel().cancelled() => {
                close(ctx, &plan.url, &mut sink, &mut stream, batch_max).await;
                return None;
            }
            () = beat => {
                let message = heartbeat.as_ref().map(|(_, m)| m.clone()).unwrap_or_default();
                if let Err(e) = sink.send(Message::text(message)).await {
                    return Some(Problem::Retry(format!("sending the heartbeat failed: {e}")));
                }
                continue;
            }
            next = tokio::time::timeout(idle, stream.next()) => match next {
                Err(_) => return Some(Problem::Retry(format!(
                    "no message for {} ms (sources.idle_timeout_ms); reconnecting", idle.as_millis()
                ))),
                Ok(next) => next,
            },
        };
        // Take what is already waiting too, so the plugin sees batches.
        let (frames, ended) = gather(first, &mut stream, &mut sink, batch_max).await;
        if !frames.is_empty() {
            let outcome = ctx.ingest(Input::Frames(frames)).await;
            backoff.reset();
            for reply in outcome.replies {
                if let Err(e) = sink.send(Message::text(reply)).await {
                    return Some(Problem::Retry(format!("sending a reply failed: {e}")));
                }
            }
            if let Some(problem) = outcome.problem {
                return Some(problem);
            }
            // Requests the connector asks for alongside the live stream (backfill of a gap).
            if !outcome.requests.is_empty() {
                match http::follow(ctx, outcome.requests, Failed::Answer).await {
                    Ok(()) => {}
                    Err(None) => {
                        close(ctx, &plan.url, &mut sink, &mut stream, batch_max).await;
                        return None;
                    }
                    Err(Some(problem)) => return Some(problem),
                }
            }
        }
        if let Some(problem) = ended {
            return Some(problem);
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
type Reader = futures_util::stream::SplitStream<Socket>;
type Writer = futures_util::stream::SplitSink<Socket, Message>;

/// `first` and the messages already waiting after it (up to `batch_max` frames), so the
/// plugin sees batches; pings answered; and how the connection ended, if it did.
async fn gather(
    first: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    stream: &mut Reader,
    sink: &mut Writer,
    batch_max: usize,
) -> (Vec<Frame>, Option<Problem>) {
    let mut frames = Vec::new();
    let mut ended: Option<Problem> = None;
    let mut pending = Some(first);
    while let Some(next) = pending.take() {
        match next {
            None => ended = Some(Problem::Retry("the server closed the connection".into())),
            Some(Err(e)) => ended = Some(Problem::Retry(format!("connection error: {e}"))),
            Some(Ok(message)) => match message {
                Message::Text(text) => frames.push(Frame {
                    data: text.as_bytes().to_vec(),
                    received_at: now_us(),
                }),
                Message::Binary(data) => frames.push(Frame {
                    data: data.to_vec(),
                    received_at: now_us(),
                }),
                Message::Ping(data) => {
                    if let Err(e) = sink.send(Message::Pong(data)).await {
                        ended = Some(Problem::Retry(format!("answering a ping failed: {e}")));
                    }
                }
                Message::Close(frame) => {
                    ended = Some(Problem::Retry(match frame {
                        Some(f) => {
                            format!("the server closed the connection: {} {}", f.code, f.reason)
                        }
                        None => "the server closed the connection".into(),
                    }))
                }
                Message::Pong(_) | Message::Frame(_) => {}
            },
        }
        if ended.is_none() && frames.len() < batch_max {
            pending = stream.next().now_or_never();
        }
    }
    (frames, ended)
}

/// A stopping source's close handshake: send Close, then read on until the venue's own Close
/// (or the end of the connection), handing what arrives to the connector. What the venue sent
/// before it saw the Close is then stored, not dropped with the socket: a source that has
/// stored nothing yet has no cursor for its next session to backfill from, so this is the only
/// way it is not lost (a hand-over, an upgrade's switch, a pause). Bounded by
/// `sources.close_timeout_ms` (a close that runs out is counted,
/// `anode_source_close_timeouts_total`); the connector's replies and requests are not carried out any
/// more (the next session backfills from the cursor this stores).
async fn close(
    ctx: &impl Feed,
    url: &str,
    sink: &mut Writer,
    stream: &mut Reader,
    batch_max: usize,
) {
    let bound = Duration::from_millis(ctx.settings().close_timeout_ms);
    let deadline = tokio::time::Instant::now() + bound;
    if tokio::time::timeout_at(deadline, sink.send(Message::Close(None)))
        .await
        .is_err()
    {
        ctx.close_timed_out();
        return;
    }
    loop {
        let Ok(first) = tokio::time::timeout_at(deadline, stream.next()).await else {
            ctx.close_timed_out();
            tracing::info!(
                "{url}: the venue did not end the connection within {} ms of the Close \
                 (sources.close_timeout_ms); what it sends later is not read",
                bound.as_millis()
            );
            return;
        };
        let (frames, ended) = gather(first, stream, sink, batch_max).await;
        if !frames.is_empty() && ctx.ingest(Input::Frames(frames)).await.problem.is_some() {
            return;
        }
        if ended.is_some() {
            return;
        }
    }
}

/// A venue's socket: a small read buffer (tungstenite's default, 128 KiB, is zero-filled and
/// so resident for every source; frames larger than the buffer still grow it as they need),
/// and messages capped well under tungstenite's 64 MiB.
fn socket_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

const READ_BUFFER: usize = 8 * 1024;
/// The largest message a venue may send.
const MAX_MESSAGE: usize = 16 << 20;

/// Connect to `url` at an address the egress policy allows (the one resolved and checked is
/// the one connected to), then speak WebSocket over it, with TLS for `wss://`.
async fn connect(egress: &super::Egress, url: &str) -> Result<Socket, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    let host = parsed.host_str().ok_or("the URL has no host")?;
    let port = parsed
        .port_or_known_default()
        .ok_or("the URL has no port")?;
    let addrs = egress
        .resolve_allowed(host, port)
        .await
        .map_err(|e| e.to_string())?;
    let mut last = String::from("no address");
    for addr in addrs {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return tokio_tungstenite::client_async_tls_with_config(
                    url,
                    stream,
                    Some(socket_config()),
                    None,
                )
                .await
                .map(|(socket, _response)| socket)
                .map_err(|e| e.to_string());
            }
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    /// A venue that sends one message of `len` bytes, then waits.
    async fn venue(len: usize) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut socket = tokio_tungstenite::accept_async(stream).await.unwrap();
            let _ = socket.send(Message::text("x".repeat(len))).await;
            let _ = socket.next().await;
        });
        addr
    }

    #[tokio::test]
    async fn a_venue_message_past_the_cap_fails_the_connection_and_one_under_it_arrives() {
        let egress = super::super::Egress::new(&["127.0.0.1".into()], &[], None).unwrap();
        let small = venue(64 * 1024).await;
        let mut socket = super::connect(&egress, &format!("ws://{small}/"))
            .await
            .unwrap();
        let got = socket.next().await.unwrap().unwrap();
        assert_eq!(
            got.len(),
            64 * 1024,
            "a message larger than the read buffer arrives"
        );

        let huge = venue(super::MAX_MESSAGE + 1).await;
        let mut socket = super::connect(&egress, &format!("ws://{huge}/"))
            .await
            .unwrap();
        let refused = socket.next().await.unwrap().unwrap_err();
        assert!(
            refused.to_string().contains("too long") || refused.to_string().contains("size"),
            "{refused}"
        );
    }
}
