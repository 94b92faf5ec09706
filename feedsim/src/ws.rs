//! One WebSocket connection: a single task with one send timer that emits every due event of
//! every subscribed stream, in order per stream, and records what was sent.
//!
//! The timer wakes only when there is something to do: when the next event falls due or the
//! protocol has a deadline (a heartbeat, a subscribe timeout), on the connection's own grid of
//! `tick_ms` steps. A connection of a slow stream (0.2 events/s) thus wakes a few times a
//! second, not 50 times, and 10,000 of them leave the cores to the node under test.
//!
//! Venues plug in through [`Protocol`]: they parse client messages, decide subscriptions and
//! render events; this module owns the socket, the timers, fault injection and the record.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures_util::SinkExt;
use tokio::time::{Instant, MissedTickBehavior, interval_at};

use crate::faults::{ConnectionFaults, FaultCounters, truncate};
use crate::sim::Sim;
use crate::streams::Stream;

/// Largest client message accepted (subscribe requests are small).
const MAX_CLIENT_MESSAGE_BYTES: usize = 64 * 1024;
/// Longest sleep of a connection's timer, whatever is due (a safety net: every wake
/// recomputes what is next).
const MAX_IDLE: Duration = Duration::from_secs(1);
/// How long a closing connection waits for the client's Close reply, so that data already
/// sent is not reset away by an early socket close.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Close code of a connection dropped on purpose (`drop_every`): "going away".
pub(crate) const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a client that broke the protocol.
pub(crate) const CLOSE_POLICY: u16 = 1008;

/// A venue's WebSocket dialect.
pub(crate) trait Protocol: Send + Sync + 'static {
    /// What one subscribed stream renders from (symbol, instrument, message shape).
    type Output: Send + Sync;

    /// Called once after the upgrade.
    fn on_open(&mut self, _sim: &Sim) -> Reply<Self::Output> {
        Reply::default()
    }

    /// A text message from the client.
    fn on_text(&mut self, text: &str, sim: &Sim) -> Reply<Self::Output>;

    /// Called on every send tick, after due events were sent (heartbeats, timeouts).
    fn on_tick(&mut self, _now: Instant, _sim: &Sim) -> Reply<Self::Output> {
        Reply::default()
    }

    /// When `on_tick` next has something to do (a heartbeat or a timeout), if ever: the
    /// timer wakes for it even when no event falls due.
    fn next_deadline(&self) -> Option<Instant> {
        None
    }

    /// The message carrying event `n` of one output.
    fn render(&self, output: &Self::Output, n: u64, sim: &Sim) -> String;
}

/// What a protocol wants done after a client message or a tick, in this order.
pub(crate) struct Reply<O> {
    /// Control messages to send (acks, errors, heartbeats); not data, never recorded.
    pub(crate) messages: Vec<String>,
    /// Subscriptions to add; a subscription whose key exists gains its new outputs.
    pub(crate) subscribe: Vec<Subscription<O>>,
    /// Stream names to stop sending.
    pub(crate) unsubscribe: Vec<String>,
    /// Close the connection with this code and reason.
    pub(crate) close: Option<(u16, String)>,
}

impl<O> Default for Reply<O> {
    fn default() -> Self {
        Self {
            messages: Vec::new(),
            subscribe: Vec::new(),
            unsubscribe: Vec::new(),
            close: None,
        }
    }
}

impl<O> Reply<O> {
    pub(crate) fn message(message: String) -> Self {
        Self {
            messages: vec![message],
            ..Self::default()
        }
    }
}

/// One instrument's events on this connection, possibly rendered into several streams
/// (a Coinbase product's matches and tickers); every output is sent for event n before n + 1.
pub(crate) struct Subscription<O> {
    /// Identifies the subscription on this connection (stream or product name).
    pub(crate) key: String,
    /// Next event number to send.
    pub(crate) next: u64,
    pub(crate) outputs: Vec<(Arc<Stream>, O)>,
}

/// Upgrades the request and runs `protocol` on the socket as a tracked task.
pub(crate) fn upgrade<P: Protocol>(ws: WebSocketUpgrade, sim: Arc<Sim>, protocol: P) -> Response {
    // Clients send only small subscribe messages. tungstenite zero-fills its read buffer
    // (128 KiB by default) before every read: with 10,000 connections that was most of the
    // simulator's CPU and 1.3 GB of its memory.
    ws.read_buffer_size(4 * 1024)
        .max_message_size(MAX_CLIENT_MESSAGE_BYTES)
        .on_upgrade(move |socket| {
            let tasks = sim.tasks.clone();
            tasks.track_future(async move {
                FaultCounters::bump(&sim.faults.connections);
                let shutdown = sim.shutdown.clone();
                let conn = Connection {
                    socket,
                    sim,
                    faults: ConnectionFaults::default(),
                };
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = conn.run(protocol) => {}
                }
            })
        })
}

/// A connection's timer steps: `start + k · step`, so that connections opened at different
/// times keep their own phase and do not all send at once.
struct Grid {
    start: Instant,
    step: Duration,
}

impl Grid {
    /// The first step at or after `target`, and after `last` (the previous wake).
    fn next_after(&self, last: Instant, target: Instant) -> Instant {
        let step = self.step.as_nanos().max(1);
        let since = target.saturating_duration_since(self.start).as_nanos();
        let steps = since.div_ceil(step);
        let at = self.start + Duration::from_nanos((steps * step) as u64);
        at.max(last + self.step)
    }
}

/// Why a connection ends.
enum End {
    /// The socket failed or the client went away.
    Gone,
    /// We close: send a Close frame, then wait briefly for the client's.
    Close(u16, String),
}

struct Connection {
    socket: WebSocket,
    sim: Arc<Sim>,
    faults: ConnectionFaults,
}

enum Wake {
    Client(Option<Result<Message, axum::Error>>),
    Tick,
    Ping,
}

impl Connection {
    async fn run<P: Protocol>(mut self, mut protocol: P) {
        let mut subs: Vec<Subscription<P::Output>> = Vec::new();
        let end = match self.serve(&mut protocol, &mut subs).await {
            Ok(()) => return,
            Err(end) => end,
        };
        if let End::Close(code, reason) = end {
            self.close(code, reason).await;
        }
    }

    async fn serve<P: Protocol>(
        &mut self,
        protocol: &mut P,
        subs: &mut Vec<Subscription<P::Output>>,
    ) -> Result<(), End> {
        let reply = protocol.on_open(&self.sim);
        self.apply(protocol, subs, reply).await?;
        let config = &self.sim.config;
        let grid = Grid {
            start: Instant::now(),
            step: Duration::from_millis(config.tick_ms),
        };
        let mut last_tick = grid.start;
        let tick = tokio::time::sleep_until(grid.start);
        tokio::pin!(tick);
        let ping_every = Duration::from_millis(config.ping_interval_ms);
        let mut ping = interval_at(Instant::now() + ping_every, ping_every);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let wake = tokio::select! {
                msg = self.socket.recv() => Wake::Client(msg),
                () = &mut tick => Wake::Tick,
                _ = ping.tick() => Wake::Ping,
            };
            if matches!(wake, Wake::Tick) {
                last_tick = tick.deadline();
            }
            match wake {
                Wake::Client(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => {
                    return Err(End::Gone);
                }
                Wake::Client(Some(Ok(Message::Text(text)))) => {
                    let reply = protocol.on_text(text.as_str(), &self.sim);
                    self.apply(protocol, subs, reply).await?;
                }
                Wake::Client(Some(Ok(Message::Binary(bytes)))) => {
                    let reply = protocol.on_text(&String::from_utf8_lossy(&bytes), &self.sim);
                    self.apply(protocol, subs, reply).await?;
                }
                Wake::Client(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                Wake::Tick => {
                    self.send_due(protocol, subs).await?;
                    let reply = protocol.on_tick(Instant::now(), &self.sim);
                    self.apply(protocol, subs, reply).await?;
                }
                Wake::Ping => self.send(Message::Ping(Default::default())).await?,
            }
            // What is next may have changed (a subscription, a heartbeat sent).
            let now = Instant::now();
            let due = match self.sim.until_next_event() {
                Some(wait) => now + wait,
                None => last_tick + grid.step, // paused: look again every step
            };
            let mut target = due.min(now + MAX_IDLE);
            if let Some(deadline) = protocol.next_deadline() {
                target = target.min(deadline);
            }
            tick.as_mut().reset(grid.next_after(last_tick, target));
        }
    }

    /// Carries out a protocol reply, then sends whatever became due (e.g. a snapshot).
    async fn apply<P: Protocol>(
        &mut self,
        protocol: &P,
        subs: &mut Vec<Subscription<P::Output>>,
        reply: Reply<P::Output>,
    ) -> Result<(), End> {
        for message in reply.messages {
            self.send(Message::Text(message.into())).await?;
        }
        if let Some((code, reason)) = reply.close {
            return Err(End::Close(code, reason));
        }
        for name in &reply.unsubscribe {
            for sub in subs.iter_mut() {
                sub.outputs.retain(|(stream, _)| stream.name() != name);
            }
        }
        subs.retain(|sub| !sub.outputs.is_empty());
        for new in reply.subscribe {
            // Each stream learns the first id offered on it, for the report's `generated`.
            match subs.iter_mut().find(|s| s.key == new.key) {
                Some(existing) => {
                    for (stream, output) in new.outputs {
                        if !existing
                            .outputs
                            .iter()
                            .any(|(s, _)| s.name() == stream.name())
                        {
                            stream.offer_from(existing.next);
                            existing.outputs.push((stream, output));
                        }
                    }
                }
                None => {
                    for (stream, _) in &new.outputs {
                        stream.offer_from(new.next);
                    }
                    subs.push(new);
                }
            }
        }
        self.send_due(protocol, subs).await
    }

    /// Sends every event up to the head, per subscription in order, in one write (as a venue
    /// sends what it has at once), recording each once the write succeeded.
    async fn send_due<P: Protocol>(
        &mut self,
        protocol: &P,
        subs: &mut [Subscription<P::Output>],
    ) -> Result<(), End> {
        let head = self.sim.head();
        let mut unflushed = Vec::new();
        for sub in subs.iter_mut() {
            while sub.next <= head {
                let n = sub.next;
                for (stream, output) in &sub.outputs {
                    let message = protocol.render(output, n, &self.sim);
                    self.send_data(message, stream, n, &mut unflushed).await?;
                }
                sub.next += 1;
            }
        }
        self.flush(&mut unflushed).await
    }

    /// Queues one data message (recorded once flushed), then injects the faults due after it
    /// (flushing first, so that they follow it on the wire).
    async fn send_data(
        &mut self,
        message: String,
        stream: &Arc<Stream>,
        n: u64,
        unflushed: &mut Vec<(Arc<Stream>, u64)>,
    ) -> Result<(), End> {
        let copy_for_truncation = self
            .sim
            .config
            .faults
            .truncated_every
            .map(|_| message.clone());
        self.socket
            .feed(Message::Text(message.into()))
            .await
            .map_err(|_| End::Gone)?;
        unflushed.push((stream.clone(), n));
        let after = self.faults.after_data_message(&self.sim.config.faults);
        if after.malformed.is_some() || after.truncated || after.drop {
            self.flush(unflushed).await?;
        }
        if let Some(frame) = after.malformed {
            self.send(Message::Text(frame.into())).await?;
            FaultCounters::bump(&self.sim.faults.malformed_frames);
        }
        if after.truncated
            && let Some(message) = copy_for_truncation
        {
            self.send(Message::Text(truncate(&message).into())).await?;
            FaultCounters::bump(&self.sim.faults.truncated_frames);
        }
        if after.drop {
            FaultCounters::bump(&self.sim.faults.dropped_connections);
            return Err(End::Close(CLOSE_GOING_AWAY, "simulated drop".into()));
        }
        Ok(())
    }

    /// Writes the queued data messages out and records them as sent.
    async fn flush(&mut self, unflushed: &mut Vec<(Arc<Stream>, u64)>) -> Result<(), End> {
        if unflushed.is_empty() {
            return Ok(());
        }
        self.socket.flush().await.map_err(|_| End::Gone)?;
        for (stream, n) in unflushed.drain(..) {
            stream.record(n);
        }
        Ok(())
    }

    async fn send(&mut self, message: Message) -> Result<(), End> {
        self.socket.send(message).await.map_err(|_| End::Gone)
    }

    /// Sends a Close frame and waits (bounded) for the client's, so buffered data is delivered.
    async fn close(&mut self, code: u16, reason: String) {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        if self.socket.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while let Some(Ok(message)) = self.socket.recv().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timer_wakes_on_its_own_grid_when_something_is_due() {
        let start = Instant::now();
        let ms = |n: u64| Duration::from_millis(n);
        let grid = Grid {
            start,
            step: ms(20),
        };
        // An event due in 95 ms is sent on the step after it, not on the four before.
        assert_eq!(grid.next_after(start, start + ms(95)), start + ms(100));
        // Due exactly on a step: that step.
        assert_eq!(grid.next_after(start, start + ms(60)), start + ms(60));
        // Due already (or a deadline passed): the next step, never the same wake again.
        assert_eq!(
            grid.next_after(start + ms(40), start + ms(10)),
            start + ms(60)
        );
        assert_eq!(
            grid.next_after(start + ms(40), start + ms(40)),
            start + ms(60)
        );
        // A late wake (off the grid) still moves on by at least a step.
        assert_eq!(
            grid.next_after(start + ms(47), start + ms(41)),
            start + ms(67)
        );
    }
}
