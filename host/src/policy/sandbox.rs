//! The sandbox: the one place where the wasmtime engine is configured, and
//! the fresh, limited store that every plugin call gets.
//!
//! Deny by default:
//! - WASI is linked (Rust std and componentize-py import it even when
//!   unused) but with nothing behind it: no preopened directories, no
//!   environment, no arguments, closed stdin, and no sockets or name lookup.
//!   stdout and stderr are captured, capped, and shown as log lines.
//! - Each call has a wall-clock deadline that holds whatever the plugin does
//!   (see [`run_with_deadline`]).
//! - Memory is one budget per instance, summed over all of its linear
//!   memories; the counts of instances, memories and tables, the total of
//!   table elements, and the handles a plugin may hold are bounded.
//! - Address space is sized to the memory budget, not 4 GiB a memory, so
//!   sifr starts under `ulimit -v`.
//! - Instances come from wasmtime's pooling allocator: memory slots reserved
//!   once, each the size of the budget, with copy-on-write images of the
//!   plugin's initial memory. A fresh instance per decision then costs
//!   microseconds, and is as clean as a new process: a slot is reset to the
//!   module's image (or zero) before it is used again. The pool has a fixed
//!   number of slots; a call waits for room ([`Slots`]) rather than fail.
//! - What the host copies out of a plugin in one lift is bounded near the
//!   output caps (hostcall fuel), before any validation looks at it.
//! - Log lines, stdout and stderr lines together, are capped in number and
//!   length.

use std::future::Future;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wasmtime::component::{Component, Linker, ResourceTable, ResourceTableError};
use wasmtime::{
    Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store, Trap,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::capability::{DigestAccess, DigestLookup, Excused};
use super::error::FailureKind;
use crate::config::SandboxLimits;
use crate::untrusted;

/// How often the epoch advances. Deadlines are accurate to about one tick.
const TICK: Duration = Duration::from_millis(5);
/// What a plugin may write to stdout and stderr in one call, each.
pub(crate) const STDIO_CAP: usize = 64 << 10;
/// Log lines kept per call, `log` and stdout/stderr lines together; more
/// are counted and dropped.
pub(crate) const MAX_LOG_LINES: usize = 256;
/// Longest log line kept; longer ones are cut.
pub(crate) const MAX_LOG_LINE: usize = 4 << 10;
/// Core instances one plugin instance may create. The Rust plugins make one;
/// a componentize-py plugin makes about a dozen.
pub(crate) const MAX_INSTANCES: usize = 64;
/// Linear memories one plugin instance may define, all of them together
/// under the one memory budget.
pub(crate) const MAX_MEMORIES: usize = 8;
/// Tables one plugin instance may define.
pub(crate) const MAX_TABLES: usize = 64;
/// Table elements, summed over all of an instance's tables.
pub(crate) const MAX_TABLE_ELEMENTS: usize = 100_000;
/// Resource handles (WASI pollables, streams, ...) a plugin may hold at once.
pub(crate) const MAX_HANDLES: usize = 1_000;
/// Bytes the host copies out of a plugin in one lift: the result of
/// `decide`, or the arguments of one `log` call. The largest valid plan
/// (32 sources of 255-byte names, 128-byte tags and 512-byte notes) is
/// about 40 KiB, and a log line is cut at 4 KiB; wasmtime's default is
/// 128 MiB.
pub(crate) const HOSTCALL_FUEL: usize = 64 << 10;
/// Largest `wasi:random` request.
const MAX_RANDOM: u64 = 64 << 10;
/// Address space the pool of linear memories may reserve, about, in all. The
/// number of memory slots is this divided by the memory budget, but never
/// fewer than [`MAX_MEMORIES`], so that any plugin within the limits fits.
/// With the default budget of 64 MiB: 16 slots.
const POOL_ADDRESS_SPACE: u64 = 1 << 30;
/// The most memory slots a pool has, whatever the budget.
const MAX_POOL_SLOTS: u64 = 64;
/// Tables the pool holds for each memory slot: a call's weight counts its
/// tables in these units too.
const TABLES_PER_SLOT: u32 = 8;
/// What a memory or table slot keeps mapped when it is given back: reset
/// in place rather than returned to the kernel, so the next instance does
/// not fault its pages in afresh. With `PAGEMAP_SCAN` (Linux 6.7 and
/// later) only the pages a decision dirtied are copied back from the
/// snapshot's image: 5000 decisions of a 3-plugin chain took 0.23 s so,
/// against 0.54 s with `madvise`. Without it, the reset is a `memset` of
/// the whole kept region, which cost more than the faults it saved (0.64 s
/// at 1 MiB), so older kernels keep little.
const KEEP_RESIDENT: usize = 1 << 20;
const KEEP_RESIDENT_WITHOUT_SCAN: usize = 64 << 10;

/// A log line's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// A line a plugin logged (through `log`, or by writing to stdout/stderr).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub level: LogLevel,
    pub message: String,
}

/// The engine every plugin runs on, with its linker. Built once.
pub(crate) struct Sandbox {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<HostState>,
    /// The pool's memory slots, shared by the calls in flight.
    pub(crate) slots: Slots,
    /// Cranelift's compiled functions, kept while a snapshot is made.
    pub(crate) functions: Arc<FunctionCache>,
}

/// Compiled functions, by Cranelift's key, in memory. Making a configured
/// snapshot compiles a plugin twice (instrumented, then the snapshot) with
/// the same function bodies: the second compile takes them from here. The
/// snapshot's maker empties it when done (see `LoadedPlugin::load`).
#[derive(Debug, Default)]
pub(crate) struct FunctionCache(Mutex<std::collections::HashMap<Vec<u8>, Vec<u8>>>);

impl FunctionCache {
    pub(crate) fn clear(&self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

impl wasmtime::CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(key).map(|v| std::borrow::Cow::Owned(v.clone()))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_vec(), value);
        true
    }
}

impl Sandbox {
    /// An engine whose linear memories reserve `memory_budget` bytes of
    /// address space each: the largest budget any plugin of the chain has.
    pub(crate) fn new(memory_budget: usize) -> wasmtime::Result<Arc<Self>> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        // By default each linear memory reserves 4 GiB of address space plus
        // 32 MiB guards on each side, so that bounds checks can be elided.
        // Sites that set `ulimit -v` (h_vmem) could then not start a single
        // plugin. A memory never grows past the plugin's budget (the limiter
        // sees to that), so reserving the budget is enough; bounds checks
        // are then explicit, which costs little for policy code.
        let page = 64 << 10;
        let reservation = (memory_budget as u64).div_ceil(page) * page;
        config.memory_reservation(reservation.max(page));
        config.memory_reservation_for_growth(page);
        config.memory_guard_size(page);
        config.guard_before_linear_memory(false);
        // Copy-on-write images of each module's initial memory (wasmtime's
        // default, said here because the cheap fresh instance rests on it).
        config.memory_init_cow(true);
        let slots = pool_slots(reservation);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling(
            slots,
            reservation,
        )));
        let functions = Arc::new(FunctionCache::default());
        config.enable_incremental_compilation(functions.clone())?;
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        // The async WASI host: a clock wait or a poll is then a future that
        // the call's deadline can drop (see `run_with_deadline`).
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        super::wit::add_to_linker(&mut linker)?;
        spawn_ticker(&engine);
        Ok(Arc::new(Self {
            engine,
            linker,
            slots: Slots::new(slots as usize),
            functions,
        }))
    }

    /// The pool slots one instance of `component` takes: its memories, or
    /// its tables in units of [`TABLES_PER_SLOT`], whichever is more.
    pub(crate) fn weight(&self, component: &Component) -> usize {
        let needs = component.resources_required();
        let memories = needs.as_ref().map_or(1, |n| n.num_memories);
        let tables = needs
            .as_ref()
            .map_or(0, |n| n.num_tables.div_ceil(TABLES_PER_SLOT));
        memories.max(tables).max(1) as usize
    }

    /// A fresh store for one plugin call, with every limit set.
    pub(crate) fn store(&self, limits: &SandboxLimits) -> Store<HostState> {
        let stdout = MemoryOutputPipe::new(STDIO_CAP);
        let stderr = MemoryOutputPipe::new(STDIO_CAP);
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .max_random_size(MAX_RANDOM)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_HANDLES);
        let state = HostState {
            wasi,
            table,
            limiter: Limiter::new(limits.memory_bytes),
            logs: Vec::new(),
            dropped_logs: 0,
            stdout,
            stderr,
            deciding: false,
            digests: None,
            lookup_calls: 0,
            lookups: Vec::new(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        store.set_hostcall_fuel(HOSTCALL_FUEL);
        store.set_max_component_handles(MAX_HANDLES);
        arm_deadline(&mut store, limits.timeout);
        store
    }
}

/// How many memory slots the pool has, for memories that reserve
/// `reservation` bytes each.
fn pool_slots(reservation: u64) -> u32 {
    (POOL_ADDRESS_SPACE / reservation.max(1)).clamp(MAX_MEMORIES as u64, MAX_POOL_SLOTS) as u32
}

/// The pooling allocator, sized so that `slots` instances of one memory
/// each, or fewer instances of more, run at once; and so that no single
/// instance can take more than the per-instance limits allow, whatever the
/// pool has free. The limiter still sums memory over an instance's
/// memories: the pool sizes address space, the limiter budgets use.
fn pooling(slots: u32, reservation: u64) -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_memories(slots)
        .total_component_instances(slots)
        .total_stacks(slots)
        .total_tables(slots * TABLES_PER_SLOT)
        .total_core_instances(slots * MAX_INSTANCES as u32)
        .max_memory_size(reservation as usize)
        .max_memories_per_component(MAX_MEMORIES as u32)
        .max_memories_per_module(MAX_MEMORIES as u32)
        .max_tables_per_component(MAX_TABLES as u32)
        .max_tables_per_module(MAX_TABLES as u32)
        .max_core_instances_per_component(MAX_INSTANCES as u32)
        .table_elements(MAX_TABLE_ELEMENTS)
        .linear_memory_keep_resident(if pagemap_scan() {
            KEEP_RESIDENT
        } else {
            KEEP_RESIDENT_WITHOUT_SCAN
        })
        .pagemap_scan(wasmtime::Enabled::Auto)
        .table_keep_resident(KEEP_RESIDENT_WITHOUT_SCAN);
    // No batching of decommits (`decommit_batch_size`, 1 by default): a
    // batched slot is free to [`Slots`] when its store is dropped but not
    // yet to the pool, and under load a caller then found the pool
    // exhausted (wasmtime's flush-and-retry races a flush in progress on
    // another thread). Batching saved 10-15% of a bulk resolve before
    // `PAGEMAP_SCAN`; a call must wait, never fail.
    pool
}

/// Whether the kernel has `PAGEMAP_SCAN` (Linux 6.7): wasmtime then resets
/// only the dirtied pages of a slot (it checks again itself).
fn pagemap_scan() -> bool {
    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= (6, 7)
}

/// The pool's memory slots as a counting semaphore: a call takes its
/// weight in slots before it instantiates and gives them back when its
/// store is gone. The pool itself would fail an instantiation that finds
/// no free slot; an embedder calling from many threads waits instead.
pub(crate) struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
    capacity: usize,
}

/// Slots held by one call, given back on drop.
pub(crate) struct Permit<'a> {
    slots: &'a Slots,
    held: usize,
}

impl Slots {
    fn new(capacity: usize) -> Self {
        Self {
            free: Mutex::new(capacity),
            freed: Condvar::new(),
            capacity,
        }
    }

    /// Wait until `weight` slots are free, and take them. A weight above
    /// the pool's size takes the whole pool (the instantiation then fails
    /// on the per-instance limits, with their message).
    pub(crate) fn acquire(&self, weight: usize) -> Permit<'_> {
        let held = weight.clamp(1, self.capacity);
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        while *free < held {
            free = self
                .freed
                .wait(free)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *free -= held;
        Permit { slots: self, held }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut free = self
            .slots
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *free += self.held;
        self.slots.freed.notify_all();
    }
}

/// Give the next stretch of wasm code on `store` the whole deadline, from
/// now.
pub(crate) fn arm_deadline(store: &mut Store<HostState>, timeout: Duration) {
    let ticks = timeout.as_nanos().div_ceil(TICK.as_nanos()) as u64;
    store.set_epoch_deadline(ticks.max(1));
}

/// Grant `resolve-digest` on `store`: the host's time in look-ups is then
/// added to the deadline (see [`Excused`]). When the epoch deadline comes,
/// the excused time not yet credited extends it; with none, the call is
/// interrupted as always.
pub(crate) fn grant_digests(store: &mut Store<HostState>, access: DigestAccess, excused: Excused) {
    store.data_mut().digests = Some(access);
    let mut credited = Duration::ZERO;
    store.epoch_deadline_callback(move |_| {
        let total = excused.total();
        if total <= credited {
            return Ok(wasmtime::UpdateDeadline::Interrupt);
        }
        let owed = total - credited;
        credited = total;
        Ok(wasmtime::UpdateDeadline::Continue(
            owed.as_nanos().div_ceil(TICK.as_nanos()).max(1) as u64,
        ))
    });
}

/// How a call under a deadline ended.
pub(crate) enum Deadline<T> {
    /// It returned (or trapped) in time.
    Done(wasmtime::Result<T>),
    /// It was still waiting in a host call (a clock wait, a poll) when the
    /// deadline passed, and was dropped there.
    Blocked,
}

/// Run `call` (instantiating, `configure` or `decide`) so that it cannot
/// outlive `timeout` by more than a tick, whatever the plugin does.
///
/// Two mechanisms, because each covers what the other cannot:
/// - **Epoch interruption** stops wasm code: a busy loop traps with
///   `Trap::Interrupt` at the first loop header or function entry after the
///   deadline. But it only fires *in wasm code*. A plugin blocked inside a
///   host function (WASI `pollable.block` on a clock subscription, which is
///   what Rust's `std::thread::sleep` compiles to) would never see it.
/// - So WASI is linked async, the call is a future, and it runs under a
///   host-side timer. Every blocking WASI function is then an `await`
///   point: when the timer fires, the future is dropped at that point, the
///   plugin's fiber is unwound, and the store is thrown away. (A store is
///   per call, so nothing half-run is ever reused.)
///
/// The timer is armed only for a call that is still pending after its
/// first poll, i.e. one that blocked in WASI; a call that never blocks
/// costs no timer at all.
///
/// sifr's own `log` never blocks. `resolve-digest` blocks on the network,
/// under its own timeout; the time it takes is `excused`: the timer is
/// pushed back by as much (and [`grant_digests`] does the same for the
/// epoch deadline). The call runs on the calling thread ([`TIMERS`] only
/// drives the timers), so a policy can be used from many threads at once.
pub(crate) fn run_with_deadline<T>(
    timeout: Duration,
    excused: Option<&Excused>,
    call: impl Future<Output = wasmtime::Result<T>>,
) -> Deadline<T> {
    // Most calls never wait in WASI: one poll on this thread finishes them
    // (busy code is held by the epoch deadline), and no timer is set. A
    // call still pending has blocked in a host call; only then is the
    // timer armed, for what is left of the deadline (10% of a bulk
    // resolve was arming and disarming timers).
    let started = std::time::Instant::now();
    let mut call = std::pin::pin!(call);
    {
        let _runtime = TIMERS.enter();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if let std::task::Poll::Ready(result) = call.as_mut().poll(&mut cx) {
            return Deadline::Done(result);
        }
    }
    let excused_total = || excused.map_or(Duration::ZERO, Excused::total);
    let mut credited = excused_total();
    let remaining = (timeout + credited).saturating_sub(started.elapsed());
    TIMERS.block_on(async {
        let mut deadline = tokio::time::Instant::now() + remaining;
        loop {
            match tokio::time::timeout_at(deadline, call.as_mut()).await {
                Ok(result) => return Deadline::Done(result),
                Err(_elapsed) => {
                    let total = excused_total();
                    if total <= credited {
                        return Deadline::Blocked;
                    }
                    deadline += total - credited;
                    credited = total;
                }
            }
        }
    })
}

/// The runtime whose one worker thread drives the deadlines' timers (and
/// WASI's clock waits), for every plugin call in the process. One thread,
/// not one a core: wasmtime-wasi's default runtime would start a worker per
/// core, 128 of them on a large node, for a few timers. The driver runs on
/// that worker, not on a caller, so a plugin busy on one thread never
/// holds up another thread's deadline.
static TIMERS: std::sync::LazyLock<tokio::runtime::Runtime> = std::sync::LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sifr-timers")
        .enable_all()
        .build()
        .expect("starting sifr's timer thread")
});

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
    /// Whether the call is in `decide` (host capabilities answer only then).
    pub(crate) deciding: bool,
    /// The `resolve-digest` grant, when the config gives one.
    pub(crate) digests: Option<DigestAccess>,
    /// `resolve-digest` calls in this call, answered or not.
    pub(crate) lookup_calls: usize,
    /// What they were, for `--explain`.
    pub(crate) lookups: Vec<DigestLookup>,
}

impl HostState {
    /// A line from the plugin's `log` import, whatever its contract version.
    pub(crate) fn log_line(&mut self, level: LogLevel, message: &str) {
        if self.logs.len() >= MAX_LOG_LINES {
            self.dropped_logs += 1;
            return;
        }
        self.logs.push(LogLine {
            level,
            message: untrusted::escape(message, MAX_LOG_LINE),
        });
    }

    /// Whether no WASI resource is open.
    pub(crate) fn resources_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The log lines of this call, with stdout and stderr folded in. They
    /// share one cap: a plugin cannot print past it on another channel.
    pub(crate) fn take_logs(&mut self) -> Vec<LogLine> {
        let mut logs = std::mem::take(&mut self.logs);
        let mut dropped = self.dropped_logs;
        for (pipe, level, what) in [
            (&self.stdout, LogLevel::Info, "stdout"),
            (&self.stderr, LogLevel::Warn, "stderr"),
        ] {
            let text = pipe.contents();
            let text = String::from_utf8_lossy(&text);
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                if logs.len() >= MAX_LOG_LINES {
                    dropped += 1;
                    continue;
                }
                logs.push(LogLine {
                    level,
                    message: format!("[{what}] {}", untrusted::escape(line, MAX_LOG_LINE)),
                });
            }
            if text.len() >= STDIO_CAP {
                logs.push(LogLine {
                    level: LogLevel::Warn,
                    message: format!(
                        "[{what}] cut: a plugin may write at most {} KiB a call",
                        STDIO_CAP >> 10
                    ),
                });
            }
        }
        if dropped > 0 {
            logs.push(LogLine {
                level: LogLevel::Warn,
                message: format!(
                    "{dropped} more log lines were dropped (at most {MAX_LOG_LINES} a call, \
                     stdout and stderr included)"
                ),
            });
        }
        logs
    }

    /// What went wrong, from the error wasmtime returned and what the
    /// plugin left behind. Never the raw error: wasmtime attaches a wasm
    /// backtrace whose names the plugin chose.
    pub(crate) fn classify(&self, error: &wasmtime::Error, limits: &SandboxLimits) -> FailureKind {
        if let Some(exceeded) = self.limiter.exceeded {
            return match exceeded {
                Exceeded::Memory => FailureKind::OutOfMemory {
                    limit_bytes: limits.memory_bytes,
                },
                Exceeded::TableElements => FailureKind::ResourceLimit(format!(
                    "more than {MAX_TABLE_ELEMENTS} table elements in all"
                )),
            };
        }
        if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
            return FailureKind::Timeout(limits.timeout);
        }
        if let Some(ResourceTableError::Full) = error.downcast_ref::<ResourceTableError>() {
            return FailureKind::ResourceLimit(format!(
                "WASI resource table full (at most {MAX_HANDLES} handles at once)"
            ));
        }
        let root = error.root_cause().to_string();
        // wasmtime's own limits say so only in their message: its error
        // types for them are private.
        if root.contains("fuel allocated for hostcalls has been exhausted") {
            return FailureKind::InvalidOutput(format!(
                "more than {} KiB in one call (the host copies no more; see the output caps)",
                HOSTCALL_FUEL >> 10
            ));
        }
        if let Some(what) = root.strip_prefix("resource limit exceeded: ") {
            let what = what.split(" count").next().unwrap_or(what);
            let (max, what) = match what {
                "instance" => (MAX_INSTANCES, "instances"),
                "table" => (MAX_TABLES, "tables"),
                _ => (MAX_MEMORIES, "memories"),
            };
            return FailureKind::ResourceLimit(format!("more than {max} {what}"));
        }
        if root.contains("handle limit exceeded") {
            return FailureKind::ResourceLimit(format!(
                "more than {MAX_HANDLES} resource handles at once"
            ));
        }
        let stderr = self.stderr.contents();
        let stderr = String::from_utf8_lossy(&stderr);
        if let Some(message) = panic_message(&stderr) {
            return FailureKind::Panic(message);
        }
        let mut reason = match error.downcast_ref::<Trap>() {
            Some(trap) => trap.to_string(),
            None => untrusted::escape(&root, 512),
        };
        let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        if let Some(last) = tail.last() {
            reason = format!(
                "{reason} (its stderr ended with: {})",
                untrusted::escape(last, 512)
            );
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

/// Which budget a plugin ran into.
#[derive(Debug, Clone, Copy)]
enum Exceeded {
    Memory,
    TableElements,
}

/// One memory budget for the whole plugin instance, however many core
/// instances and linear memories its component holds: wasmtime asks per
/// memory, so the sum is kept here. Table elements are summed the same
/// way. The counts of instances, memories and tables are bounded too, so
/// the address space reserved per memory stays bounded.
struct Limiter {
    memory_budget: usize,
    memory_used: usize,
    table_elements: usize,
    /// The last growth allowed, taken back if wasmtime then fails it.
    last_memory_growth: usize,
    last_table_growth: usize,
    exceeded: Option<Exceeded>,
}

impl Limiter {
    fn new(memory_budget: usize) -> Self {
        Self {
            memory_budget,
            memory_used: 0,
            table_elements: 0,
            last_memory_growth: 0,
            last_table_growth: 0,
            exceeded: None,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current);
        let total = self.memory_used.saturating_add(growth);
        if total > self.memory_budget {
            self.exceeded = Some(Exceeded::Memory);
            wasmtime::bail!(
                "memory budget of {} bytes reached (all linear memories together)",
                self.memory_budget
            );
        }
        self.memory_used = total;
        self.last_memory_growth = growth;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory_used -= std::mem::take(&mut self.last_memory_growth);
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current);
        let total = self.table_elements.saturating_add(growth);
        if total > MAX_TABLE_ELEMENTS {
            self.exceeded = Some(Exceeded::TableElements);
            wasmtime::bail!("table budget of {MAX_TABLE_ELEMENTS} elements reached");
        }
        self.table_elements = total;
        self.last_table_growth = growth;
        Ok(true)
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.table_elements -= std::mem::take(&mut self.last_table_growth);
        Ok(())
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
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
    Some(untrusted::escape(
        &format!("{} (at {location})", message.join(" ").trim()),
        1024,
    ))
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
    fn the_memory_budget_is_summed_over_memories() {
        let mut limiter = Limiter::new(64 << 20);
        assert!(limiter.memory_growing(0, 40 << 20, None).unwrap());
        // A second memory of 40 MiB would fit on its own, not in the sum.
        assert!(limiter.memory_growing(0, 40 << 20, None).is_err());
        assert!(matches!(limiter.exceeded, Some(Exceeded::Memory)));
    }

    #[test]
    fn a_failed_growth_is_given_back() {
        let mut limiter = Limiter::new(64 << 20);
        assert!(limiter.memory_growing(0, 60 << 20, None).unwrap());
        limiter
            .memory_grow_failed(wasmtime::format_err!("mmap failed"))
            .unwrap();
        assert!(limiter.memory_growing(0, 60 << 20, None).unwrap());
    }

    #[test]
    fn table_elements_are_summed_over_tables() {
        let mut limiter = Limiter::new(1 << 20);
        assert!(limiter.table_growing(0, 60_000, None).unwrap());
        assert!(limiter.table_growing(0, 60_000, None).is_err());
        assert!(matches!(limiter.exceeded, Some(Exceeded::TableElements)));
    }
}
