//! A running source's life: started from where the store says it got to, driven (plan,
//! connect or poll, back off, again), its transforms ticked, and stopped after its last
//! batches are acknowledged.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::plugins::Prepared;
use super::{NodeError, NodeState, Running, SharedCursor, cursor_key, stable_hash};
use crate::backoff::Backoff;
use crate::pipeline::SourceCtx;
use crate::plugin::Plan;
use crate::source::{self, Problem, SourceSpec, SourceState, SourceStatus};

impl NodeState {
    /// Run a source here (replacing a running one of the same id), from where the store
    /// says it got to.
    pub(super) async fn start_source(&self, spec: SourceSpec) -> Result<(), NodeError> {
        if self.sources.lock().await.contains_key(&spec.id) {
            // Its last batches are acknowledged before the cursor is read again.
            let _ = self.stop_source(&spec.id).await;
        }
        let resume = self.resume(&spec.id).await?;
        let Prepared { connector, chain } = self
            .prepare(&spec, resume.cursor.clone(), &resume.states)
            .await?;
        let status = Arc::new(SourceStatus::default());
        status.resumed_at(resume.cursor);
        let mut recent = crate::record::RecentIds::new(self.config.sources.dedupe_window);
        for id in resume.recent.iter().rev() {
            recent.insert(id);
        }
        let cancel = self.shutdown.child_token();
        let (acks, receipts) =
            tokio::sync::mpsc::channel(self.config.sources.acks_in_flight.max(1));
        let ctx = SourceCtx {
            source: Arc::from(spec.id.as_str()),
            spec: spec.clone(),
            status: status.clone(),
            connector,
            chain,
            ingest: self.ingest.clone(),
            cancel: cancel.clone(),
            recent: Mutex::new(recent),
            kept_states: Mutex::new(
                (0..spec.transforms.len() as u32)
                    .map(|i| {
                        resume
                            .states
                            .iter()
                            .any(|s| s.step == i && !s.state.is_empty())
                    })
                    .collect(),
            ),
            acks,
        };
        let task = tokio::spawn(run_source(ctx, receipts));
        let mut sources = self.sources.lock().await;
        if let Some(previous) = sources.insert(
            spec.id.clone(),
            Running {
                spec,
                status,
                cancel,
                task,
            },
        ) {
            // Two concurrent adds of one id: the later one wins.
            previous.cancel.cancel();
        }
        Ok(())
    }

    /// Where a source stands in the store. A source never opens without its cursor: while
    /// the store cannot be read, it waits (the reconcile loop tries again).
    async fn resume(&self, id: &str) -> Result<crate::sink::Resume, NodeError> {
        let store = &self.ingest.store;
        let unavailable = |why: String| {
            NodeError::Startup(format!(
                "waiting for the store to read where `{id}` got to: {why}"
            ))
        };
        if !store.stats().connected {
            return Err(unavailable("the store is not connected yet".into()));
        }
        let mut resume = store
            .resume(id, self.config.sources.dedupe_window)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        // With embedded stores the catalog carries cursors between nodes: the later wins.
        if let Some(shared) = self
            .cluster
            .catalog
            .get(&cursor_key(id))
            .and_then(|e| e.value)
            .and_then(|v| serde_json::from_value::<SharedCursor>(v).ok())
            && resume.updated_us.is_none_or(|at| at < shared.at_us)
        {
            resume.cursor = Some(shared.cursor);
            resume.updated_us = Some(shared.at_us);
        }
        Ok(resume)
    }

    /// Stop and forget a source running here; waits for its task to end.
    pub(super) async fn stop_source(&self, id: &str) -> Result<SourceSpec, NodeError> {
        let running = self
            .sources
            .lock()
            .await
            .remove(id)
            .ok_or_else(|| NodeError::NotFound(format!("no source `{id}`")))?;
        running.cancel.cancel();
        let _ = running.task.await;
        Ok(running.spec)
    }
}

/// A source's life: plan, drive, back off, again — until cancelled or fatally failed; its
/// transforms ticked meanwhile; then its last batches acknowledged (bounded by
/// `store.drain_timeout_ms`).
async fn run_source(ctx: SourceCtx, receipts: tokio::sync::mpsc::Receiver<crate::sink::Receipt>) {
    let ctx = Arc::new(ctx);
    let status = ctx.status.clone();
    let drain = ctx.ingest.drain_timeout;
    let acker = tokio::spawn(crate::pipeline::acknowledge(
        receipts,
        ctx.ingest.hub.clone(),
        status.clone(),
        ctx.ingest
            .cursor_shelf
            .clone()
            .map(|shelf| (ctx.source.clone(), shelf)),
    ));
    let driven = CancellationToken::new();
    let ticker = (!ctx.chain.is_empty()).then(|| tokio::spawn(tick(ctx.clone(), driven.clone())));
    drive(&ctx).await;
    driven.cancel();
    if let Some(ticker) = ticker {
        let _ = ticker.await;
        // A clean stop flushes what is due (windows past their end), and the steps' state
        // goes to the store with it.
        ctx.tick().await;
    }
    ctx.close();
    // The last reference: the acknowledgement channel closes once its receipts are settled.
    drop(ctx);
    if tokio::time::timeout(drain, acker).await.is_err() {
        status.error(format!(
            "stopped before the store acknowledged the last batches within {} ms; they stay \
             queued in the store",
            drain.as_millis()
        ));
    }
    status.set_state(SourceState::Stopped);
}

/// Tick the transforms every `sources.tick_ms` until the source stops.
async fn tick(ctx: Arc<SourceCtx>, done: CancellationToken) {
    let period = Duration::from_millis(ctx.ingest.settings.tick_ms.max(1));
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = done.cancelled() => return,
            _ = interval.tick() => ctx.tick().await,
        }
    }
}

/// Plan, drive, back off, again — until cancelled or fatally failed.
async fn drive(ctx: &SourceCtx) {
    let settings = &ctx.ingest.settings;
    let mut backoff = Backoff::with_jitter(
        Duration::from_millis(settings.reconnect_min_ms),
        Duration::from_millis(settings.reconnect_max_ms),
        stable_hash(&ctx.spec.id),
    );
    if let Some(problem) = start_backfill(ctx).await {
        match problem {
            Problem::Fatal(message) => {
                tracing::error!(source = %ctx.spec.id, "source failed: {message}");
                ctx.status.fail(SourceState::Failed, message);
                ctx.cancel.cancelled().await;
                return;
            }
            Problem::Retry(message) => ctx
                .status
                .error(format!("the backfill asked for at start failed: {message}")),
        }
    }
    let mut attempts = 0u64;
    loop {
        if ctx.cancel.is_cancelled() {
            break;
        }
        if attempts > 0 {
            ctx.status
                .reconnects
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        attempts += 1;
        ctx.status.set_state(SourceState::Connecting);
        let ended = match ctx.plan().await {
            Ok(Plan::Websocket(plan)) => source::ws::run(ctx, &plan, &mut backoff).await,
            Ok(Plan::Http(plan)) => source::http::run(ctx, &plan, &mut backoff).await,
            Err(problem) => Some(problem),
        };
        match ended {
            None => break,
            Some(Problem::Fatal(message)) => {
                tracing::error!(source = %ctx.spec.id, "source failed: {message}");
                ctx.status.fail(SourceState::Failed, message);
                ctx.cancel.cancelled().await;
                break;
            }
            Some(Problem::Retry(message)) => {
                let wait = backoff.fail();
                tracing::info!(source = %ctx.spec.id, "{message}; retrying in {} ms", wait.as_millis());
                ctx.status.fail(SourceState::BackingOff, message);
                tokio::select! {
                    () = ctx.cancel.cancelled() => break,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Make the requests the connector asks for as it starts (its backfill from the cursor), and
/// their follow-ups, before the first connection: one batch at a time, so the cursors the
/// store commits keep their order.
async fn start_backfill(ctx: &SourceCtx) -> Option<Problem> {
    let requests = match ctx.backfill().await {
        Ok(requests) if requests.is_empty() => return None,
        Ok(requests) => requests,
        Err(problem) => return Some(problem),
    };
    ctx.status.set_state(SourceState::Connecting);
    match source::http::follow(ctx, requests, source::http::Failed::Answer).await {
        Ok(()) | Err(None) => None,
        Err(Some(problem)) => Some(problem),
    }
}
