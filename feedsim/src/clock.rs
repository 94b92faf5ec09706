//! Simulated time: elapsed time that excludes paused periods, and wall-clock formatting.
//!
//! Every stream head is a function of [`SimClock::elapsed`], so pausing the clock freezes every
//! head at once without touching a connection.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Pause-aware monotonic clock of one simulator run.
#[derive(Debug)]
pub(crate) struct SimClock {
    start: Instant,
    start_wall_us: u64,
    state: Mutex<PauseState>,
}

#[derive(Debug, Default)]
struct PauseState {
    paused_at: Option<Instant>,
    paused_total: Duration,
}

impl SimClock {
    pub(crate) fn new() -> Self {
        Self::starting_at(Instant::now(), wall_now_us())
    }

    pub(crate) fn starting_at(start: Instant, start_wall_us: u64) -> Self {
        Self {
            start,
            start_wall_us,
            state: Mutex::new(PauseState::default()),
        }
    }

    /// Wall-clock time (µs since the epoch) at which the simulation started.
    pub(crate) fn start_wall_us(&self) -> u64 {
        self.start_wall_us
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.elapsed_at(Instant::now())
    }

    /// Simulated time at `now`: real time since start minus time spent paused.
    pub(crate) fn elapsed_at(&self, now: Instant) -> Duration {
        let state = self.state.lock().expect("clock lock");
        let until = state.paused_at.unwrap_or(now);
        until
            .saturating_duration_since(self.start)
            .saturating_sub(state.paused_total)
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.state.lock().expect("clock lock").paused_at.is_some()
    }

    pub(crate) fn pause_at(&self, now: Instant) {
        let mut state = self.state.lock().expect("clock lock");
        if state.paused_at.is_none() {
            state.paused_at = Some(now);
        }
    }

    pub(crate) fn resume_at(&self, now: Instant) {
        let mut state = self.state.lock().expect("clock lock");
        if let Some(at) = state.paused_at.take() {
            state.paused_total += now.saturating_duration_since(at);
        }
    }
}

/// Highest event number that has happened after `elapsed` at `rate` events per second.
pub(crate) fn head_at(elapsed: Duration, rate: f64) -> u64 {
    (elapsed.as_secs_f64() * rate).floor() as u64
}

/// Wall-clock now, µs since the epoch.
pub(crate) fn wall_now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Wall-clock now, ms since the epoch.
pub(crate) fn wall_now_ms() -> u64 {
    wall_now_us() / 1_000
}

/// RFC 3339 UTC with microseconds, e.g. `2023-09-25T09:04:31.742648Z`.
pub(crate) fn rfc3339_us(us: u64) -> String {
    let secs = us / 1_000_000;
    let micros = us % 1_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3_600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_follows_elapsed_time_and_rate() {
        assert_eq!(head_at(Duration::from_millis(0), 10.0), 0);
        assert_eq!(head_at(Duration::from_millis(99), 10.0), 0);
        assert_eq!(head_at(Duration::from_millis(100), 10.0), 1);
        assert_eq!(head_at(Duration::from_millis(2_550), 10.0), 25);
        assert_eq!(head_at(Duration::from_secs(3), 0.5), 1);
    }

    #[test]
    fn pause_freezes_and_resume_excludes_paused_time() {
        let t0 = Instant::now();
        let clock = SimClock::starting_at(t0, 0);
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(clock.elapsed_at(at(1_000)), Duration::from_millis(1_000));
        clock.pause_at(at(1_000));
        clock.pause_at(at(1_500)); // a second pause changes nothing
        assert!(clock.is_paused());
        assert_eq!(clock.elapsed_at(at(5_000)), Duration::from_millis(1_000));
        assert_eq!(head_at(clock.elapsed_at(at(5_000)), 10.0), 10);
        clock.resume_at(at(3_000));
        assert!(!clock.is_paused());
        assert_eq!(clock.elapsed_at(at(3_000)), Duration::from_millis(1_000));
        assert_eq!(clock.elapsed_at(at(4_000)), Duration::from_millis(2_000));
        clock.resume_at(at(4_000)); // resuming a running clock changes nothing
        assert_eq!(clock.elapsed_at(at(4_500)), Duration::from_millis(2_500));
    }

    #[test]
    fn formats_rfc3339_with_microseconds() {
        assert_eq!(rfc3339_us(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339_us(1_695_632_671_742_648),
            "2023-09-25T09:04:31.742648Z"
        );
        assert_eq!(
            rfc3339_us(951_782_400_000_001),
            "2000-02-29T00:00:00.000001Z"
        );
    }
}
