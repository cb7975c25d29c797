//! The sandbox around one plugin instance: the store data (WASI with nothing
//! granted, the `log` import, captured stdout and stderr, the memory
//! limiter), the per-call fuel and deadlines, and the translation of traps
//! into errors that say what happened.
//!
//! It must hold against any component, not only SDK-built ones: a component
//! may print, read stdin, sleep, panic the default way, or declare many
//! memories. Hence:
//!
//! - WASI's host calls are synchronous and block (wasmtime-wasi drives them
//!   with `Handle::block_on`), which panics on a thread that drives a Tokio
//!   runtime: such callers get their call run on a thread of its own;
//! - sleeps end at the call's wall-clock deadline (see `clocks`), after
//!   which the epoch interrupt stops the guest as soon as it runs again, so
//!   the deadline covers host calls too;
//! - stdout and stderr go to the log, attributed, bounded and sanitised;
//!   stdin is empty;
//! - the memory cap counts every memory and table of the instance.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::PluginError;
use crate::PluginLimits;
use crate::bindings::log;
use crate::output::{CapturedOutput, sanitize};

/// How often the epoch advances; the deadline's resolution.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(1);

/// The engine's epoch as the ticker last set it: ticks since it started. A
/// call's deadline is kept in these ticks because reading this is cheaper
/// than reading the clock, on a path that costs a few hundred nanoseconds.
static EPOCH_NOW: AtomicU64 = AtomicU64::new(0);

/// Time left until `deadline` (in epoch ticks).
pub(crate) fn until_epoch(deadline: u64) -> Duration {
    EPOCH_TICK.saturating_mul(u32::try_from(deadline.saturating_sub(EPOCH_NOW.load(Ordering::Relaxed))).unwrap_or(u32::MAX))
}

/// Longest log message kept from a plugin.
const MAX_LOG_MESSAGE: usize = 4096;
/// Log messages kept per call; the rest are counted and dropped.
const MAX_LOGS_PER_CALL: u32 = 64;
/// Log messages kept per instance (one tier of one cycle), over all its
/// calls: a policy that logs on every partition cannot flood the log.
const MAX_LOGS_PER_INSTANCE: u32 = 1024;

/// Bytes a table element is counted as against the memory cap.
const TABLE_ELEMENT_BYTES: u64 = 16;

/// The data of one plugin instance's store.
pub(crate) struct PluginState {
    wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    plugin: Arc<str>,
    memory_limit: u64,
    /// Bytes of every linear memory and table of the instance, summed.
    memory_in_use: u64,
    memory_exceeded: bool,
    logs_this_call: u32,
    logs_total: u32,
    last_error_log: Option<String>,
    output: CapturedOutput,
    /// The wall-clock end of the current call, in epoch ticks: sleeps end
    /// there.
    pub(crate) call_deadline: u64,
    /// Set when a sleep of the current call was cut at its deadline.
    pub(crate) past_deadline: Arc<AtomicBool>,
}

impl PluginState {
    fn new(plugin: Arc<str>, memory_limit: u64) -> Self {
        let output = CapturedOutput::default();
        let wasi = WasiCtx::builder()
            .stdout(output.stream("stdout"))
            .stderr(output.stream("stderr"))
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .secure_random(SplitMix64(0x5eed))
            .insecure_random(SplitMix64(0x1a5e))
            .insecure_random_seed(0)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            plugin,
            memory_limit,
            memory_in_use: 0,
            memory_exceeded: false,
            logs_this_call: 0,
            logs_total: 0,
            last_error_log: None,
            output,
            call_deadline: 0,
            past_deadline: Arc::default(),
        }
    }

    /// Sends what the guest printed during the call to the log. The last
    /// stderr line is kept like an error log: a panic with Rust's default
    /// hook prints its message there, and a trap's error quotes it.
    fn flush_output(&mut self) {
        if self.output.is_empty() {
            return;
        }
        for (stream, line) in self.output.take_lines() {
            self.emit(log::Level::Info, &format!("{stream}: {line}"));
            if stream == "stderr" && !line.starts_with("note: run with `RUST_BACKTRACE") {
                self.last_error_log = Some(sanitize(&line, MAX_LOG_MESSAGE));
            }
        }
    }

    /// Counts `bytes` more of memory or table against the instance's cap.
    fn grow(&mut self, bytes: u64) -> wasmtime::Result<bool> {
        let total = self.memory_in_use.saturating_add(bytes);
        if total > self.memory_limit {
            self.memory_exceeded = true;
            wasmtime::bail!("memory limit exceeded");
        }
        self.memory_in_use = total;
        Ok(true)
    }

    /// One bounded, sanitised log line attributed to the plugin; after
    /// `MAX_LOGS_PER_CALL` lines in a call, the rest are dropped.
    fn emit(&mut self, level: log::Level, message: &str) {
        self.logs_this_call += 1;
        self.logs_total = self.logs_total.saturating_add(1);
        if self.logs_this_call > MAX_LOGS_PER_CALL || self.logs_total > MAX_LOGS_PER_INSTANCE {
            if self.logs_this_call == MAX_LOGS_PER_CALL + 1 && self.logs_total <= MAX_LOGS_PER_INSTANCE {
                tracing::warn!(plugin = &*self.plugin, "more than {MAX_LOGS_PER_CALL} log lines in one call; dropping the rest");
            }
            if self.logs_total == MAX_LOGS_PER_INSTANCE + 1 {
                tracing::warn!(plugin = &*self.plugin, "more than {MAX_LOGS_PER_INSTANCE} log lines from this instance; dropping the rest");
            }
            return;
        }
        let message = sanitize(message, MAX_LOG_MESSAGE);
        let plugin = &*self.plugin;
        match level {
            log::Level::Trace => tracing::trace!(plugin, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, "{message}"),
            log::Level::Info => tracing::info!(plugin, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, "{message}"),
            log::Level::Error => {
                tracing::debug!(plugin, "{message}");
                self.last_error_log = Some(message);
            }
        }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl log::Host for PluginState {
    fn log(&mut self, level: log::Level, message: String) {
        self.emit(level, &message);
    }
}

impl ResourceLimiter for PluginState {
    // The cap is per instance: every memory's and table's growth is added
    // to one sum (a component may declare many memories).
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.grow((desired as u64).saturating_sub(current as u64))
    }

    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.grow((desired as u64).saturating_sub(current as u64).saturating_mul(TABLE_ELEMENT_BYTES))
    }
}

/// A clock stuck at the Unix epoch: plugins get `now` as an argument.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// A deterministic generator, so that a policy's answers never depend on
/// randomness (and `HashMap` seeds are reproducible).
struct SplitMix64(u64);

impl rand_core::TryRng for SplitMix64 {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.try_next_u64()? as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Ok(z ^ (z >> 31))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.try_next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}

/// One live instance's store with its limits. After any failed call the
/// sandbox is poisoned: the instance may be in an inconsistent state, so every
/// later call fails fast.
/// What one plugin's calls did, over every instance made from it: counters
/// shared by its sandboxes, read by the engine's metrics and API.
#[derive(Debug, Default)]
pub struct CallStats {
    calls: AtomicU64,
    fuel_used: AtomicU64,
    traps: AtomicU64,
    timeouts: AtomicU64,
    out_of_fuel: AtomicU64,
    out_of_memory: AtomicU64,
}

/// A reading of [`CallStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CallCounts {
    /// Calls made (instantiation, configure and every export call).
    pub calls: u64,
    /// Fuel consumed by those calls.
    pub fuel_used: u64,
    /// Calls that trapped (a panic, an invalid operation, a host panic).
    pub traps: u64,
    /// Calls stopped at their deadline.
    pub timeouts: u64,
    /// Calls that ran out of fuel.
    pub out_of_fuel: u64,
    /// Calls that went over the memory cap.
    pub out_of_memory: u64,
}

impl std::ops::Add for CallCounts {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            calls: self.calls + other.calls,
            fuel_used: self.fuel_used + other.fuel_used,
            traps: self.traps + other.traps,
            timeouts: self.timeouts + other.timeouts,
            out_of_fuel: self.out_of_fuel + other.out_of_fuel,
            out_of_memory: self.out_of_memory + other.out_of_memory,
        }
    }
}

impl CallStats {
    fn record(&self, fuel_used: u64, error: Option<&PluginError>) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.fuel_used.fetch_add(fuel_used, Ordering::Relaxed);
        let counter = match error {
            None | Some(PluginError::Disabled { .. }) => return,
            Some(PluginError::Deadline { .. }) => &self.timeouts,
            Some(PluginError::OutOfFuel { .. }) => &self.out_of_fuel,
            Some(PluginError::OutOfMemory { .. }) => &self.out_of_memory,
            Some(_) => &self.traps,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn read(&self) -> CallCounts {
        CallCounts {
            calls: self.calls.load(Ordering::Relaxed),
            fuel_used: self.fuel_used.load(Ordering::Relaxed),
            traps: self.traps.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            out_of_fuel: self.out_of_fuel.load(Ordering::Relaxed),
            out_of_memory: self.out_of_memory.load(Ordering::Relaxed),
        }
    }
}

pub(crate) struct Sandbox {
    pub(crate) store: Store<PluginState>,
    calls: Arc<CallStats>,
    limits: PluginLimits,
    deadline_ticks: u64,
    poisoned: Option<String>,
}

impl Sandbox {
    pub(crate) fn new(engine: &Engine, plugin: Arc<str>, limits: PluginLimits, calls: Arc<CallStats>) -> Self {
        let mut store = Store::new(engine, PluginState::new(plugin, limits.memory_bytes));
        store.limiter(|state| state);
        let deadline_ticks = (limits.call_timeout.as_nanos() / EPOCH_TICK.as_nanos()).max(1) as u64;
        Self { store, calls, limits, deadline_ticks, poisoned: None }
    }

    pub(crate) fn plugin(&self) -> &str {
        &self.store.data().plugin
    }

    /// Runs `f` (one export call, or instantiation) under a fresh fuel budget
    /// and deadline, translating failures into [`PluginError`]. Never
    /// panics, whatever the guest does, and works from any thread.
    pub(crate) fn call<R: Send>(
        &mut self,
        export: &'static str,
        f: impl FnOnce(&mut Store<PluginState>) -> wasmtime::Result<R> + Send,
    ) -> Result<R, PluginError> {
        if let Some(earlier) = &self.poisoned {
            return Err(PluginError::Disabled { plugin: self.plugin().to_owned(), earlier: earlier.clone() });
        }
        let (fuel, ticks) = (self.limits.fuel_per_call, self.deadline_ticks);
        let store = &mut self.store;
        let run = move || {
            let outcome = store.set_fuel(fuel).and_then(|()| {
                store.set_epoch_deadline(ticks);
                let state = store.data_mut();
                state.logs_this_call = 0;
                state.last_error_log = None;
                state.call_deadline = EPOCH_NOW.load(Ordering::Relaxed) + ticks;
                let result = f(store);
                let past_deadline = &store.data().past_deadline;
                if past_deadline.load(Ordering::Relaxed) {
                    past_deadline.store(false, Ordering::Relaxed);
                    // The guest slept to the deadline and returned before
                    // the epoch interrupt could stop it: the call failed.
                    return Err(wasmtime::Error::new(Trap::Interrupt));
                }
                result
            });
            store.data_mut().flush_output();
            let fuel_used = fuel.saturating_sub(store.get_fuel().unwrap_or(0));
            (outcome, fuel_used)
        };
        let (outcome, fuel_used) = if tokio::runtime::Handle::try_current().is_ok() {
            // This thread may be driving a Tokio runtime, where WASI's
            // blocking host calls panic: run the call where blocking is
            // legal. (Callers that make many calls, like the planner, run
            // them all on a plain thread, so this is the rare path.)
            std::thread::scope(|scope| match std::thread::Builder::new().name("compactor-plugin".into()).spawn_scoped(scope, run) {
                Ok(thread) => thread.join().unwrap_or_else(|panic| (Err(host_panic(&*panic)), 0)),
                Err(e) => (Err(wasmtime::Error::msg(format!("cannot start a thread for the plugin call: {e}"))), 0),
            })
        } else {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|panic| (Err(host_panic(&*panic)), 0))
        };
        let outcome = outcome.map_err(|error| {
            let error = self.classify(export, error);
            self.poisoned = Some(error.to_string());
            error
        });
        self.calls.record(fuel_used, outcome.as_ref().err());
        outcome
    }

    fn classify(&mut self, export: &'static str, error: wasmtime::Error) -> PluginError {
        let plugin = self.plugin().to_owned();
        let state = self.store.data();
        if state.memory_exceeded {
            return PluginError::OutOfMemory { plugin, export, limit: self.limits.memory_bytes };
        }
        // The trap or the root cause alone: wasmtime's wasm backtrace is noise
        // here.
        let error = match error.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => return PluginError::OutOfFuel { plugin, export, fuel: self.limits.fuel_per_call },
            Some(Trap::Interrupt) => return PluginError::Deadline { plugin, export, timeout: self.limits.call_timeout },
            Some(trap) => trap.to_string(),
            None => sanitize(&error.root_cause().to_string(), MAX_LOG_MESSAGE),
        };
        let cause = match &state.last_error_log {
            Some(message) => format!("{error}; the plugin reported: {message}"),
            None => error,
        };
        PluginError::Trap { plugin, export, cause }
    }
}

/// A panic of host code during a plugin call, as an error: the host keeps
/// running and the instance is poisoned like after a trap.
fn host_panic(panic: &(dyn std::any::Any + Send)) -> wasmtime::Error {
    let message = panic.downcast_ref::<&str>().map(|s| (*s).to_owned()).or_else(|| panic.downcast_ref::<String>().cloned());
    wasmtime::Error::msg(format!("the host panicked during the call: {}", message.unwrap_or_else(|| "no message".into())))
}

/// The process-wide engine. An epoch ticker thread keeps the epoch equal to
/// the milliseconds since start (catching up after a late wake-up), so a
/// deadline of n ticks fires between n and n + 1 ms of wall time, plus the
/// ticker's wake-up latency.
pub(crate) fn shared_engine() -> Result<&'static Engine, PluginError> {
    static ENGINE: std::sync::OnceLock<Result<Engine, String>> = std::sync::OnceLock::new();
    let engine = ENGINE.get_or_init(|| {
        let mut config = wasmtime::Config::new();
        config
            .wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .cranelift_opt_level(wasmtime::OptLevel::Speed)
            .parallel_compilation(true);
        let engine = Engine::new(&config).map_err(|e| format!("{e:#}"))?;
        let ticking = engine.weak();
        std::thread::Builder::new()
            .name("compactor-epoch".into())
            .spawn(move || {
                let start = Instant::now();
                let mut ticks: u128 = 0;
                while let Some(engine) = ticking.upgrade() {
                    let due = start.elapsed().as_nanos() / EPOCH_TICK.as_nanos();
                    while ticks < due {
                        engine.increment_epoch();
                        ticks += 1;
                    }
                    EPOCH_NOW.store(ticks as u64, Ordering::Relaxed);
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| format!("cannot start the epoch ticker: {e}"))?;
        Ok(engine)
    });
    engine.as_ref().map_err(|message| PluginError::Engine { message: message.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module with `count` memories of `pages` 64-KiB pages each.
    fn memories(count: usize, pages: u32) -> String {
        format!("(module {})", "(memory PAGES) ".replace("PAGES", &pages.to_string()).repeat(count))
    }

    fn instantiate(limit: u64, wat: &str) -> Result<(), PluginError> {
        let engine = shared_engine().unwrap();
        let module = wasmtime::Module::new(engine, wat).unwrap();
        let limits = PluginLimits { memory_bytes: limit, ..PluginLimits::default() };
        let mut sandbox = Sandbox::new(engine, "test:memories".into(), limits, Arc::default());
        sandbox.call("instantiate", |store| wasmtime::Linker::new(engine).instantiate(store, &module).map(drop))
    }

    #[test]
    fn the_memory_cap_counts_every_memory_of_the_instance() {
        // 16 memories of 60 MiB each: every one fits the 64 MiB cap alone.
        let error = instantiate(64 << 20, &memories(16, 960)).unwrap_err();
        assert!(matches!(error, PluginError::OutOfMemory { .. }), "{error}");
        assert_eq!(error.to_string(), "plugin test:memories exceeded its memory limit of 64.0 MiB in instantiate");
        instantiate(64 << 20, &memories(3, 320)).expect("60 MiB in three memories fits");
    }

    #[test]
    fn tables_count_against_the_cap() {
        let error = instantiate(1 << 20, "(module (table 100000 funcref))").unwrap_err();
        assert!(matches!(error, PluginError::OutOfMemory { .. }), "{error}");
    }
}
