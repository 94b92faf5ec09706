//! One thread per live plugin instance. A wasmtime `Store` is single-threaded state; instead
//! of sharing it behind a mutex taken on tokio's blocking pool, each instance lives on its own
//! thread and takes calls, in order, from a bounded queue. A caller waits for room in the
//! queue (back-pressure, never an unbounded backlog) and then for its answer; the network
//! tasks never block on a plugin.
//!
//! Control calls (opening a source's session) go ahead of the queued data through a second
//! lane: a node busy decoding for thousands of sources still adds one in milliseconds. The lane
//! holds at most one call per source being added, so it needs no bound of its own.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::error::CallError;

type Job<I> = Box<dyn FnOnce(&mut I) + Send>;

/// Calls waiting for one instance, at most.
const WORKER_QUEUE: usize = 64;

/// A handle to an instance running on its own thread. Cheap to clone; the thread ends when
/// the last handle is dropped and the queue is empty.
pub struct Worker<I> {
    jobs: mpsc::Sender<Job<I>>,
    /// Calls taken before the next queued one.
    first: Arc<Mutex<VecDeque<Job<I>>>>,
    name: Arc<str>,
}

impl<I> Clone for Worker<I> {
    fn clone(&self) -> Self {
        Worker {
            jobs: self.jobs.clone(),
            first: self.first.clone(),
            name: self.name.clone(),
        }
    }
}

fn take_first<I>(first: &Mutex<VecDeque<Job<I>>>) -> Option<Job<I>> {
    first.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
}

impl<I: Send + 'static> Worker<I> {
    /// Move `instance` onto a new thread named after `name` (the plugin).
    pub fn spawn(name: &str, instance: I) -> std::io::Result<Self> {
        let (jobs, mut queue) = mpsc::channel::<Job<I>>(WORKER_QUEUE);
        let thread_name = format!("plugin-{name}");
        let label: Arc<str> = name.into();
        let log_name = label.clone();
        let first: Arc<Mutex<VecDeque<Job<I>>>> = Arc::default();
        let lane = first.clone();
        std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                let mut instance = instance;
                let mut run = |job: Job<I>| {
                    // A call that panics in host code must not take the instance's other
                    // sessions with it: its caller sees the instance as gone, the rest go on.
                    if std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut instance))).is_err() {
                        tracing::error!(plugin = %log_name, "a plugin call panicked in the host");
                    }
                };
                while let Some(job) = queue.blocking_recv() {
                    while let Some(early) = take_first(&lane) {
                        run(early);
                    }
                    run(job);
                }
            })?;
        Ok(Worker {
            jobs,
            first,
            name: label,
        })
    }

    /// Run `f` on the instance's thread, after the calls queued before it.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut I) -> Result<R, CallError> + Send + 'static,
    ) -> Result<R, CallError> {
        let (answer, answered) = oneshot::channel();
        let job: Job<I> = Box::new(move |instance| {
            let _ = answer.send(f(instance));
        });
        if self.jobs.send(job).await.is_err() {
            return Err(self.gone());
        }
        answered.await.unwrap_or_else(|_| Err(self.gone()))
    }

    /// Run `f` on the instance's thread before the calls already queued (opening a session).
    pub async fn call_first<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut I) -> Result<R, CallError> + Send + 'static,
    ) -> Result<R, CallError> {
        if self.jobs.is_closed() {
            return Err(self.gone());
        }
        let (answer, answered) = oneshot::channel();
        self.first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(Box::new(move |instance| {
                let _ = answer.send(f(instance));
            }));
        // Wake the thread if it waits on an empty queue. A full queue means it is busy and
        // looks at this lane before its next call.
        let _ = self.jobs.try_send(Box::new(|_| {}));
        answered.await.unwrap_or_else(|_| Err(self.gone()))
    }

    /// Queue `f` without waiting for it (closing a session). If the queue is full, a task
    /// waits for room; outside a runtime the job is dropped, as the instance is going away.
    pub fn post(&self, f: impl FnOnce(&mut I) + Send + 'static) {
        let job: Job<I> = Box::new(f);
        match self.jobs.try_send(job) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(job)) => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let jobs = self.jobs.clone();
                    runtime.spawn(async move {
                        let _ = jobs.send(job).await;
                    });
                }
            }
        }
    }

    fn gone(&self) -> CallError {
        CallError::Instantiate {
            plugin: self.name.to_string(),
            message: "the call did not complete: the instance's thread stopped or the call panicked (see the log)".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_run_in_order_on_one_thread_and_a_panic_keeps_the_worker() {
        let worker = Worker::spawn("counter", Vec::<u32>::new()).unwrap();
        let mut waiting = Vec::new();
        for i in 0..200u32 {
            let w = worker.clone();
            waiting.push(tokio::spawn(async move {
                w.call(move |v| {
                    v.push(i);
                    Ok(std::thread::current().id())
                })
                .await
                .unwrap()
            }));
        }
        let mut threads = std::collections::HashSet::new();
        for w in waiting {
            threads.insert(w.await.unwrap());
        }
        assert_eq!(threads.len(), 1, "one thread serves every call");
        assert_ne!(
            threads.into_iter().next(),
            Some(std::thread::current().id())
        );

        let panicked = worker.call::<()>(|_| panic!("host bug")).await.unwrap_err();
        assert!(
            panicked.to_string().contains("did not complete"),
            "{panicked}"
        );
        let seen = worker.call(|v| Ok(v.len())).await.unwrap();
        assert_eq!(seen, 200, "the instance outlived the panic");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_first_call_overtakes_the_queued_ones() {
        let worker = Worker::spawn("order", Vec::<&'static str>::new()).unwrap();
        // Hold the thread until the queue is full behind it.
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let (started, running) = oneshot::channel::<()>();
        let w = worker.clone();
        let held = tokio::spawn(async move {
            w.call(move |_| {
                let _ = started.send(());
                hold.recv().unwrap();
                Ok(())
            })
            .await
        });
        running.await.unwrap();
        let mut queued = Vec::new();
        for _ in 0..WORKER_QUEUE {
            let w = worker.clone();
            queued.push(tokio::spawn(async move {
                w.call(|v| {
                    v.push("queued");
                    Ok(())
                })
                .await
            }));
        }
        // Wait (bounded) until every queued call is in the queue.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while worker.jobs.capacity() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the queue never filled"
            );
            tokio::task::yield_now().await;
        }
        let w = worker.clone();
        let first = tokio::spawn(async move {
            w.call_first(|v| {
                v.push("first");
                Ok(v.len())
            })
            .await
        });
        // The first call is in its lane before the thread is let go.
        while worker.first.lock().unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the first call never queued"
            );
            tokio::task::yield_now().await;
        }
        release.send(()).unwrap();
        held.await.unwrap().unwrap();
        assert_eq!(
            first.await.unwrap().unwrap(),
            1,
            "ahead of every queued call"
        );
        for q in queued {
            q.await.unwrap().unwrap();
        }
        let order = worker.call(|v| Ok(v.clone())).await.unwrap();
        assert_eq!(order.len(), WORKER_QUEUE + 1);
        assert_eq!(order[0], "first");
    }
}
