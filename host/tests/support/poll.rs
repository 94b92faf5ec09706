//! Waiting for a condition: a poll with a deadline, never a sleep standing in for
//! synchronisation. Self-contained: the benchmarks include it by path.

use std::future::Future;
use std::time::{Duration, Instant};

/// Poll `check` until it returns `Ok`, or fail after `limit` saying what was awaited and
/// the last state seen.
pub async fn until<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(state) => {
                if Instant::now() >= deadline {
                    panic!("timed out after {limit:?} waiting for {what}; last state: {state}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
