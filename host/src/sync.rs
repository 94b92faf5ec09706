//! One helper for the node's short critical sections.

use std::sync::{Mutex, MutexGuard};

/// Lock `m`, taking the data as it is when a holder panicked: every critical section in the
/// node leaves its data consistent at each step, so a panic elsewhere must not stop the rest.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
