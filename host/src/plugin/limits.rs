//! The sandbox limits every plugin call and instance runs under (`[plugins]` in the config).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Limits applied to every plugin call and instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginLimits {
    /// A call into a plugin is interrupted after this long.
    pub call_timeout_ms: u64,
    /// Linear memory one instance may grow to.
    pub memory_limit_mib: usize,
    /// Resolution of call deadlines.
    pub epoch_tick_ms: u64,
    /// First wait before re-creating a crashed instance; doubles on each crash.
    pub restart_backoff_min_ms: u64,
    /// Longest wait before re-creating a crashed instance.
    pub restart_backoff_max_ms: u64,
    /// How much of a plugin's stderr is kept to explain a crash.
    pub stderr_tail_bytes: usize,
    /// Log lines a plugin may write per call; the rest are dropped.
    pub log_lines_per_call: u32,
    /// Longer log lines are cut.
    pub log_line_max_bytes: usize,
    /// A second bound on a call, independent of the clock: roughly the WebAssembly
    /// instructions it may run (fuel). 0, the default, turns it off: metering costs about a
    /// quarter of a plugin's decode rate (`cargo bench --bench plugin_throughput`).
    pub fuel_per_call: u64,
    /// Publisher keys (ed25519, hex) a plugin must be signed by to be installed here, from a
    /// file, an upload or a peer; empty: any plugin. Built-in plugins are trusted as such.
    pub trusted_keys: Vec<String>,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            call_timeout_ms: 500,
            memory_limit_mib: 64,
            epoch_tick_ms: 5,
            restart_backoff_min_ms: 100,
            restart_backoff_max_ms: 30_000,
            stderr_tail_bytes: 4096,
            log_lines_per_call: 16,
            log_line_max_bytes: 1024,
            fuel_per_call: 0,
            trusted_keys: Vec::new(),
        }
    }
}

impl PluginLimits {
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms.max(1))
    }

    pub fn epoch_tick(&self) -> Duration {
        Duration::from_millis(self.epoch_tick_ms.clamp(1, self.call_timeout_ms.max(1)))
    }

    pub fn restart_backoff_min(&self) -> Duration {
        Duration::from_millis(self.restart_backoff_min_ms)
    }

    pub fn restart_backoff_max(&self) -> Duration {
        Duration::from_millis(self.restart_backoff_max_ms.max(self.restart_backoff_min_ms))
    }
}
