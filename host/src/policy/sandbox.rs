//! The sandbox: the one place where the wasmtime engine is configured, and
//! the fresh, limited store that every plugin call gets.
//!
//! Deny by default:
//! - WASI is linked (Rust std and componentize-py import it even when
//!   unused) but with nothing behind it: no preopened directories, no
//!   environment, no arguments, closed stdin, and no sockets or name lookup.
//!   stdout and stderr are captured, capped, and shown as log lines.
//! - Each call has a wall-clock deadline (epoch interruption) and a memory cap.
//! - Log lines are capped in number and length.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use serde::Serialize;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::v0_1_0;
use crate::config::SandboxLimits;
use crate::error::FailureKind;

/// How often the epoch advances. Deadlines are accurate to about one tick.
const TICK: Duration = Duration::from_millis(5);
/// What a plugin may write to stdout and stderr in one call, each.
const STDIO_CAP: usize = 64 << 10;
/// Log lines kept per call; more are counted and dropped.
const MAX_LOG_LINES: usize = 256;
/// Longest log line kept; longer ones are cut.
const MAX_LOG_LINE: usize = 4 << 10;
/// Table elements a plugin may grow to.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// A log line's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// A line a plugin logged (through `log`, or by writing to stdout/stderr).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

/// The engine every plugin runs on, with its linker. Built once.
pub(crate) struct Sandbox {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<HostState>,
    pub(crate) limits: SandboxLimits,
}

impl Sandbox {
    pub(crate) fn new(limits: SandboxLimits) -> wasmtime::Result<Arc<Self>> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        // One instance per call is short-lived and small; the on-demand
        // allocator costs nothing up front, which suits a CLI that makes a
        // handful of calls. (The pooling allocator pays off only for
        // thousands of instantiations, and reserves a lot of address space.)
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        v0_1_0::Plugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
            &mut linker,
            |state: &mut HostState| state,
        )?;
        spawn_ticker(&engine);
        Ok(Arc::new(Self {
            engine,
            linker,
            limits,
        }))
    }

    /// A fresh store for one plugin call, with every limit set.
    pub(crate) fn store(&self) -> Store<HostState> {
        let stdout = MemoryOutputPipe::new(STDIO_CAP);
        let stderr = MemoryOutputPipe::new(STDIO_CAP);
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let state = HostState {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter {
                memory_bytes: self.limits.memory_bytes,
                exceeded: false,
            },
            logs: Vec::new(),
            dropped_logs: 0,
            stdout,
            stderr,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        self.arm_deadline(&mut store);
        store
    }

    /// Give the next call on `store` the whole deadline, from now.
    pub(crate) fn arm_deadline(&self, store: &mut Store<HostState>) {
        let ticks = self.limits.timeout.as_nanos().div_ceil(TICK.as_nanos()) as u64;
        store.set_epoch_deadline(ticks.max(1));
    }
}

/// Advance the engine's epoch every [`TICK`] while the engine lives.
fn spawn_ticker(engine: &Engine) {
    let weak = engine.weak();
    thread::Builder::new()
        .name("sifr-epoch".to_string())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                thread::sleep(TICK);
            }
        })
        .expect("spawning the epoch thread");
}

/// Per-call state of one plugin instance.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    logs: Vec<LogLine>,
    dropped_logs: usize,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
}

impl HostState {
    /// The log lines of this call, with stdout and stderr folded in.
    pub(crate) fn take_logs(&mut self) -> Vec<LogLine> {
        let mut logs = std::mem::take(&mut self.logs);
        for (pipe, level, what) in [
            (&self.stdout, LogLevel::Info, "stdout"),
            (&self.stderr, LogLevel::Warn, "stderr"),
        ] {
            let text = pipe.contents();
            for line in String::from_utf8_lossy(&text).lines() {
                if !line.trim().is_empty() {
                    logs.push(LogLine {
                        level,
                        message: format!("[{what}] {}", sanitize(line, MAX_LOG_LINE)),
                    });
                }
            }
        }
        if self.dropped_logs > 0 {
            logs.push(LogLine {
                level: LogLevel::Warn,
                message: format!(
                    "{} more log lines were dropped (at most {MAX_LOG_LINES} a call)",
                    self.dropped_logs
                ),
            });
        }
        logs
    }

    /// What went wrong, from the error wasmtime returned and what the
    /// plugin left behind.
    pub(crate) fn classify(&self, error: &wasmtime::Error, limits: &SandboxLimits) -> FailureKind {
        if self.limiter.exceeded {
            return FailureKind::OutOfMemory {
                limit_bytes: limits.memory_bytes,
            };
        }
        if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return FailureKind::Timeout(limits.timeout);
        }
        let stderr = self.stderr.contents();
        let stderr = String::from_utf8_lossy(&stderr);
        if let Some(message) = panic_message(&stderr) {
            return FailureKind::Panic(message);
        }
        let mut reason = error.to_string();
        if let Some(trap) = error.downcast_ref::<Trap>() {
            reason = trap.to_string();
        }
        let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        if let Some(last) = tail.last() {
            reason = format!("{reason} (its stderr ended with: {})", sanitize(last, 512));
        }
        FailureKind::Trap(reason)
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The types interface has no functions; the host only has to name it.
impl v0_1_0::sifr::policy::types::Host for HostState {}

impl v0_1_0::sifr::policy::host::Host for HostState {
    fn log(&mut self, level: v0_1_0::sifr::policy::host::Level, message: String) {
        use v0_1_0::sifr::policy::host::Level;
        if self.logs.len() >= MAX_LOG_LINES {
            self.dropped_logs += 1;
            return;
        }
        let level = match level {
            Level::Trace => LogLevel::Trace,
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        self.logs.push(LogLine {
            level,
            message: sanitize(&message, MAX_LOG_LINE),
        });
    }
}

/// Caps linear memory and tables; remembers when a plugin hit the cap, so
/// the failure can be named for what it is.
struct Limiter {
    memory_bytes: usize,
    exceeded: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.exceeded = true;
            wasmtime::bail!("memory limit of {} bytes reached", self.memory_bytes);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// The message of a Rust panic, from what the panic hook wrote to stderr:
/// `thread '…' panicked at src/lib.rs:1:2:\nmessage`.
fn panic_message(stderr: &str) -> Option<String> {
    let at = stderr.find("panicked at ")?;
    let rest = &stderr[at + "panicked at ".len()..];
    let (location, message) = rest.split_once('\n').unwrap_or((rest, ""));
    let message: Vec<&str> = message
        .lines()
        .take_while(|l| !l.starts_with("note: run with `RUST_BACKTRACE"))
        .collect();
    let location = location.trim_end_matches(':');
    Some(sanitize(
        &format!("{} (at {location})", message.join(" ").trim()),
        1024,
    ))
}

/// Make untrusted text safe to print: control characters (terminal escapes
/// among them) are escaped, and the text is cut to `max` bytes.
pub(crate) fn sanitize(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        if out.len() >= max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_messages_are_extracted() {
        let stderr = "\nthread '<unnamed>' panicked at src/lib.rs:63:24:\nboom\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(panic_message(stderr).unwrap(), "boom (at src/lib.rs:63:24)");
        assert_eq!(panic_message("nothing here"), None);
    }

    #[test]
    fn sanitize_escapes_terminal_control_and_caps_length() {
        assert_eq!(sanitize("a\u{1b}[2Jb", 100), "a\\u{1b}[2Jb");
        assert_eq!(sanitize(&"x".repeat(10), 4), "xxxx…");
    }
}
