//! Per-plugin counters, shared by every instance of the same plugin.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

/// Counters of one plugin (by digest). Cheap to bump from any thread.
#[derive(Debug, Default)]
pub struct PluginMetrics {
    calls: AtomicU64,
    items_in: AtomicU64,
    events_out: AtomicU64,
    errors: AtomicU64,
    traps: AtomicU64,
    timeouts: AtomicU64,
    out_of_memory: AtomicU64,
    instantiations: AtomicU64,
    busy_ns: AtomicU64,
}

/// A point-in-time copy of [`PluginMetrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PluginMetricsSnapshot {
    /// Calls into the plugin.
    pub calls: u64,
    /// Frames, responses or events handed to it.
    pub items_in: u64,
    /// Events it produced.
    pub events_out: u64,
    /// Error values it returned (bad input, retryable, fatal).
    pub errors: u64,
    /// Crashes other than timeouts and memory: panics, `unreachable`, bad memory access.
    pub traps: u64,
    /// Calls stopped at the deadline.
    pub timeouts: u64,
    /// Calls stopped at the memory cap.
    pub out_of_memory: u64,
    /// Instances created (the first, then one per restart).
    pub instantiations: u64,
    /// Time spent inside the plugin.
    pub busy_ns: u64,
}

impl PluginMetrics {
    pub(crate) fn call(&self, items_in: usize, elapsed: Duration) {
        self.calls.fetch_add(1, Relaxed);
        self.items_in.fetch_add(items_in as u64, Relaxed);
        self.busy_ns.fetch_add(elapsed.as_nanos() as u64, Relaxed);
    }

    pub(crate) fn output(&self, events: usize, errors: usize) {
        self.events_out.fetch_add(events as u64, Relaxed);
        self.errors.fetch_add(errors as u64, Relaxed);
    }

    pub(crate) fn trap(&self) {
        self.traps.fetch_add(1, Relaxed);
    }

    pub(crate) fn timeout(&self) {
        self.timeouts.fetch_add(1, Relaxed);
    }

    pub(crate) fn out_of_memory(&self) {
        self.out_of_memory.fetch_add(1, Relaxed);
    }

    pub(crate) fn instantiated(&self) {
        self.instantiations.fetch_add(1, Relaxed);
    }

    /// Read every counter.
    pub fn snapshot(&self) -> PluginMetricsSnapshot {
        PluginMetricsSnapshot {
            calls: self.calls.load(Relaxed),
            items_in: self.items_in.load(Relaxed),
            events_out: self.events_out.load(Relaxed),
            errors: self.errors.load(Relaxed),
            traps: self.traps.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            out_of_memory: self.out_of_memory.load(Relaxed),
            instantiations: self.instantiations.load(Relaxed),
            busy_ns: self.busy_ns.load(Relaxed),
        }
    }
}
