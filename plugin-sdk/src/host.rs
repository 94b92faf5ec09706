//! Services the host offers: logging and the clock. Natively they go to stderr and the
//! system clock, so plugin code runs unchanged in tests.

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Write a line to the node's log, tagged by the host with the plugin and source.
pub fn log(level: LogLevel, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::__wit::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

/// The host's wall clock, in microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    #[cfg(target_arch = "wasm32")]
    {
        crate::__wit::now()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0)
    }
}
