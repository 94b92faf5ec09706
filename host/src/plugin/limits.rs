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
    /// The most a plugin may ask for in its manifest (`"x-anode-limits": {"memory_mib": N}` in
    /// its config schema), for runtimes that need more than `memory_limit_mib` (a Python or
    /// JavaScript component); a request above it gets this.
    pub max_memory_limit_mib: usize,
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
            max_memory_limit_mib: 256,
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

    /// The memory limit of a plugin whose config schema is `schema`: what it asks for
    /// (`x-anode-limits.memory_mib`), no less than `memory_limit_mib` and no more than
    /// `max_memory_limit_mib`.
    pub fn memory_mib_for(&self, schema: &serde_json::Value) -> usize {
        let asked = schema["x-anode-limits"]["memory_mib"]
            .as_u64()
            .map_or(0, |m| usize::try_from(m).unwrap_or(usize::MAX));
        asked
            .min(self.max_memory_limit_mib)
            .max(self.memory_limit_mib)
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

#[cfg(test)]
mod tests {
    use super::PluginLimits;
    use serde_json::json;

    #[test]
    fn a_manifest_asks_for_memory_within_the_cap() {
        let limits = PluginLimits::default();
        let ask = |mib: u64| json!({"type": "object", "x-anode-limits": {"memory_mib": mib}});
        assert_eq!(limits.memory_mib_for(&json!({"type": "object"})), 64);
        assert_eq!(limits.memory_mib_for(&ask(128)), 128);
        assert_eq!(
            limits.memory_mib_for(&ask(16)),
            64,
            "never below the node's"
        );
        assert_eq!(
            limits.memory_mib_for(&ask(100_000)),
            256,
            "never above the cap"
        );
        assert_eq!(
            limits.memory_mib_for(&json!({"x-anode-limits": {"memory_mib": "lots"}})),
            64
        );
    }
}
