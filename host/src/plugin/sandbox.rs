//! What every plugin instance runs inside: a WASI p2 context with no filesystem, no network,
//! no environment and no arguments; a memory cap; a bounded tail of its stderr (where a
//! panic message lands); and the host imports (`log`, `now`).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::wit::{Host, LogLevel};

/// The state of one plugin instance's store.
pub(crate) struct Sandbox {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) memory: MemoryCap,
    pub(crate) stderr: StderrTail,
    plugin: Arc<str>,
    /// Log lines the plugin may still write during the current call.
    pub(crate) log_budget: u32,
    /// The warnings (and errors) the plugin logged during the current call, for the status
    /// of the source it was called for.
    pub(crate) warnings: Vec<String>,
    log_line_max: usize,
}

/// Limits applied to every instance.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SandboxLimits {
    pub(crate) memory_bytes: usize,
    pub(crate) stderr_tail_bytes: usize,
    pub(crate) log_lines_per_call: u32,
    pub(crate) log_line_max: usize,
}

impl Sandbox {
    pub(crate) fn new(plugin: Arc<str>, limits: SandboxLimits) -> Self {
        let stderr = StderrTail::new(limits.stderr_tail_bytes);
        // Nothing is granted: no preopened directories, no environment, no arguments, no
        // sockets. std's WASI imports link, but reach nothing.
        let wasi = WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Sandbox {
            wasi,
            table: ResourceTable::new(),
            memory: MemoryCap {
                max_bytes: limits.memory_bytes,
                hit: false,
            },
            stderr,
            plugin,
            log_budget: limits.log_lines_per_call,
            warnings: Vec::new(),
            log_line_max: limits.log_line_max,
        }
    }
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl Host for Sandbox {
    fn log(&mut self, level: LogLevel, message: String) {
        // A chatty plugin cannot flood the node's log: lines past the per-call budget are
        // dropped, long lines cut.
        if self.log_budget == 0 {
            return;
        }
        self.log_budget -= 1;
        let mut message = message;
        if message.len() > self.log_line_max {
            let mut cut = self.log_line_max;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let plugin = &*self.plugin;
        match level {
            LogLevel::Trace => tracing::trace!(plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, "{message}"),
            LogLevel::Info => tracing::info!(plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, "{message}"),
            LogLevel::Error => tracing::error!(plugin, "{message}"),
        }
        if matches!(level, LogLevel::Warn | LogLevel::Error) {
            self.warnings.push(message);
        }
    }

    fn now(&mut self) -> i64 {
        crate::clock::now_us()
    }
}

impl super::wit::TypesHost for Sandbox {}

/// Plugins built against `0.1.0` import the same two functions under that version.
impl super::wit::v0_1::connector::anode::plugin::host::Host for Sandbox {
    fn log(
        &mut self,
        level: super::wit::v0_1::connector::anode::plugin::host::LogLevel,
        message: String,
    ) {
        use super::wit::v0_1::connector::anode::plugin::host::LogLevel as Old;
        let level = match level {
            Old::Trace => LogLevel::Trace,
            Old::Debug => LogLevel::Debug,
            Old::Info => LogLevel::Info,
            Old::Warn => LogLevel::Warn,
            Old::Error => LogLevel::Error,
        };
        Host::log(self, level, message)
    }

    fn now(&mut self) -> i64 {
        Host::now(self)
    }
}

/// Caps the linear memory of an instance and remembers whether the cap was hit, so a trap
/// can be reported as "out of memory" rather than a bare `unreachable`.
pub(crate) struct MemoryCap {
    max_bytes: usize,
    pub(crate) hit: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            wasmtime::bail!("memory limit of {} bytes reached", self.max_bytes);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a plugin needing more than this is broken.
        const MAX_TABLE_ELEMENTS: usize = 100_000;
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Keeps the last bytes a plugin wrote to stderr; never refuses a write.
#[derive(Clone)]
pub(crate) struct StderrTail {
    capacity: usize,
    buffer: Arc<Mutex<VecDeque<u8>>>,
}

impl StderrTail {
    fn new(capacity: usize) -> Self {
        StderrTail {
            capacity,
            buffer: Arc::new(Mutex::new(VecDeque::with_capacity(capacity))),
        }
    }

    fn push(&self, bytes: &[u8]) {
        let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = &bytes[bytes.len().saturating_sub(self.capacity)..];
        let overflow = (buffer.len() + bytes.len()).saturating_sub(self.capacity);
        buffer.drain(..overflow);
        buffer.extend(bytes);
    }

    /// What was written since the last `take`, as text.
    pub(crate) fn take(&self) -> String {
        let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        let bytes: Vec<u8> = buffer.drain(..).collect();
        String::from_utf8_lossy(&bytes).trim().to_owned()
    }
}

impl IsTerminal for StderrTail {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StderrTail {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for StderrTail {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(self.capacity.max(1))
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for StderrTail {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for StderrTail {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_tail_keeps_the_last_bytes() {
        let tail = StderrTail::new(8);
        tail.push(b"hello ");
        tail.push(b"world, again");
        assert_eq!(tail.take(), "d, again");
        assert_eq!(tail.take(), "");
    }
}
