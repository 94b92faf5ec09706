//! The shared state of one running simulator: config, clock, streams, counters, shutdown.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::{SimClock, head_at};
use crate::config::SimConfig;
use crate::faults::FaultCounters;
use crate::report::Report;
use crate::streams::{Kind, StreamRegistry};

/// Most symbols listed by `GET /binance/api/v3/ticker/price` without a symbol.
pub(crate) const MAX_LISTED_SYMBOLS: usize = 1_000;

/// State shared by the HTTP handlers and every connection task.
#[derive(Debug)]
pub(crate) struct Sim {
    pub(crate) config: SimConfig,
    pub(crate) clock: SimClock,
    pub(crate) streams: StreamRegistry,
    pub(crate) faults: FaultCounters,
    /// Binance symbols seen so far (WebSocket or REST), for the symbol-less ticker price list.
    binance_symbols: Mutex<BTreeSet<String>>,
    /// Cancelled once, at shutdown; every task watches it.
    pub(crate) shutdown: CancellationToken,
    /// Every connection task, so shutdown can wait for them.
    pub(crate) tasks: TaskTracker,
}

impl Sim {
    pub(crate) fn new(config: SimConfig) -> Self {
        Self {
            streams: StreamRegistry::new(config.max_streams),
            clock: SimClock::new(),
            faults: FaultCounters::default(),
            binance_symbols: Mutex::new(BTreeSet::new()),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            config,
        }
    }

    pub(crate) fn seed(&self) -> u64 {
        self.config.seed
    }

    /// Highest event number that has happened in every trade/ticker stream.
    pub(crate) fn head(&self) -> u64 {
        head_at(self.clock.elapsed(), self.config.rate_per_stream)
    }

    /// How long until the next event (`head() + 1`) falls due; `None` while the clock is
    /// paused, when no event falls due until it resumes.
    pub(crate) fn until_next_event(&self) -> Option<Duration> {
        if self.clock.is_paused() {
            return None;
        }
        let elapsed = self.clock.elapsed();
        let rate = self.config.rate_per_stream;
        let next = head_at(elapsed, rate) + 1;
        Some(Duration::from_secs_f64(next as f64 / rate).saturating_sub(elapsed))
    }

    /// Current block number of every simulated EVM chain.
    pub(crate) fn evm_head(&self) -> u64 {
        let elapsed_ms = self.clock.elapsed().as_millis() as u64;
        self.config.evm_start_block + elapsed_ms / self.config.block_interval_ms
    }

    /// Wall-clock time (µs) at which event `n` became due, ignoring pauses: stable per run.
    pub(crate) fn event_wall_us(&self, n: u64) -> u64 {
        self.clock.start_wall_us() + (n as f64 * 1e6 / self.config.rate_per_stream) as u64
    }

    /// Wall-clock time (s) of EVM block `n`, stable per run.
    pub(crate) fn block_wall_s(&self, n: u64) -> u64 {
        let since_start = n.saturating_sub(self.config.evm_start_block);
        (self.clock.start_wall_us() / 1_000 + since_start * self.config.block_interval_ms) / 1_000
    }

    pub(crate) fn pause(&self) {
        self.clock.pause_at(Instant::now());
    }

    pub(crate) fn resume(&self) {
        self.clock.resume_at(Instant::now());
    }

    /// Remembers a Binance symbol (uppercase) for the ticker price list, up to a bound.
    pub(crate) fn note_binance_symbol(&self, symbol: &str) {
        let mut symbols = self.binance_symbols.lock().expect("symbols lock");
        if symbols.len() < MAX_LISTED_SYMBOLS && !symbols.contains(symbol) {
            symbols.insert(symbol.to_string());
        }
    }

    pub(crate) fn binance_symbols(&self) -> Vec<String> {
        self.binance_symbols
            .lock()
            .expect("symbols lock")
            .iter()
            .cloned()
            .collect()
    }

    pub(crate) fn report(&self) -> Report {
        Report {
            seed: self.config.seed,
            rate_per_stream: self.config.rate_per_stream,
            paused: self.clock.is_paused(),
            streams: self.streams.report(|kind| match kind {
                Kind::Blocks => self.evm_head(),
                Kind::Trades | Kind::Ticker => self.head(),
            }),
            faults: self.faults.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_event_is_due_within_one_period_and_never_while_paused() {
        let sim = Sim::new(SimConfig {
            rate_per_stream: 4.0,
            ..SimConfig::default()
        });
        let head = sim.head();
        let wait = sim.until_next_event().expect("running");
        assert!(wait <= Duration::from_millis(250), "{wait:?}");
        // Once that wait is over, the head has moved on.
        std::thread::sleep(wait + Duration::from_millis(1));
        assert!(sim.head() > head);
        sim.pause();
        assert_eq!(sim.until_next_event(), None);
        sim.resume();
        assert!(sim.until_next_event().is_some());
    }
}
