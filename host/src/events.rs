//! The node's event log: joins, failures, hand-overs, plugin installs, sink outages. A
//! bounded ring, read by the API and the dashboard with a cursor (`after`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// One event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Increases by one per event on this node.
    pub seq: u64,
    pub time_ms: i64,
    /// The node that logged it.
    pub node: String,
    /// `join`, `down`, `handover`, `plugin`, `sink` or `source`.
    pub kind: &'static str,
    pub message: String,
}

/// A bounded log. Cheap to clone (shared).
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Mutex<(u64, VecDeque<Event>)>>,
    capacity: usize,
}

impl EventLog {
    pub fn new(capacity: usize) -> Self {
        EventLog {
            inner: Arc::new(Mutex::new((0, VecDeque::with_capacity(capacity)))),
            capacity: capacity.max(1),
        }
    }

    /// Log an event (and trace it).
    pub fn push(&self, node: &str, kind: &'static str, message: String) {
        tracing::info!(kind, "{message}");
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.0 += 1;
        let event = Event {
            seq: inner.0,
            time_ms: crate::clock::now_us() / 1000,
            node: node.to_owned(),
            kind,
            message,
        };
        if inner.1.len() == self.capacity {
            inner.1.pop_front();
        }
        inner.1.push_back(event);
    }

    /// Events with `seq > after`, oldest first.
    pub fn after(&self, after: u64) -> Vec<Event> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.1.iter().filter(|e| e.seq > after).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_bounded_and_read_after_a_cursor() {
        let log = EventLog::new(3);
        for i in 0..5 {
            log.push("n", "join", format!("e{i}"));
        }
        let all = log.after(0);
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(log.after(4).len(), 1);
        assert!(log.after(5).is_empty());
    }
}
