//! The sandbox around one plugin instance: the store data (WASI with nothing
//! granted, the `log` import, the memory limiter), the per-call fuel and
//! deadline, and the translation of traps into errors that say what happened.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::PluginError;
use crate::PluginLimits;
use crate::bindings::log;

/// How often the epoch advances; the deadline's resolution.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Longest log message kept from a plugin.
const MAX_LOG_MESSAGE: usize = 4096;
/// Log messages kept per call; the rest are counted and dropped.
const MAX_LOGS_PER_CALL: u32 = 64;

/// The data of one plugin instance's store.
pub(crate) struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    plugin: Arc<str>,
    memory_limit: u64,
    memory_exceeded: bool,
    logs_this_call: u32,
    last_error_log: Option<String>,
}

impl PluginState {
    fn new(plugin: Arc<str>, memory_limit: u64) -> Self {
        let wasi = WasiCtx::builder()
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .secure_random(SplitMix64(0x5eed))
            .insecure_random(SplitMix64(0x1a5e))
            .insecure_random_seed(0)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self { wasi, table: ResourceTable::new(), plugin, memory_limit, memory_exceeded: false, logs_this_call: 0, last_error_log: None }
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl log::Host for PluginState {
    fn log(&mut self, level: log::Level, mut message: String) {
        self.logs_this_call += 1;
        if self.logs_this_call > MAX_LOGS_PER_CALL {
            return;
        }
        if message.len() > MAX_LOG_MESSAGE {
            let mut cut = MAX_LOG_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
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

impl ResourceLimiter for PluginState {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired as u64 > self.memory_limit {
            self.memory_exceeded = true;
            wasmtime::bail!("memory limit exceeded");
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
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
pub(crate) struct Sandbox {
    pub(crate) store: Store<PluginState>,
    limits: PluginLimits,
    deadline_ticks: u64,
    poisoned: Option<String>,
}

impl Sandbox {
    pub(crate) fn new(engine: &Engine, plugin: Arc<str>, limits: PluginLimits) -> Self {
        let mut store = Store::new(engine, PluginState::new(plugin, limits.memory_bytes));
        store.limiter(|state| state);
        let deadline_ticks = (limits.call_timeout.as_nanos() / EPOCH_TICK.as_nanos()).max(1) as u64;
        Self { store, limits, deadline_ticks, poisoned: None }
    }

    pub(crate) fn plugin(&self) -> &str {
        &self.store.data().plugin
    }

    /// Runs `f` (one export call, or instantiation) under a fresh fuel budget
    /// and deadline, translating failures into [`PluginError`].
    pub(crate) fn call<R>(
        &mut self,
        export: &'static str,
        f: impl FnOnce(&mut Store<PluginState>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        if let Some(earlier) = &self.poisoned {
            return Err(PluginError::Disabled { plugin: self.plugin().to_owned(), earlier: earlier.clone() });
        }
        let outcome = self.store.set_fuel(self.limits.fuel_per_call).and_then(|()| {
            self.store.set_epoch_deadline(self.deadline_ticks);
            let state = self.store.data_mut();
            state.logs_this_call = 0;
            if state.last_error_log.is_some() {
                state.last_error_log = None;
            }
            f(&mut self.store)
        });
        outcome.map_err(|error| {
            let error = self.classify(export, error);
            self.poisoned = Some(error.to_string());
            error
        })
    }

    fn classify(&mut self, export: &'static str, error: wasmtime::Error) -> PluginError {
        let plugin = self.plugin().to_owned();
        let state = self.store.data();
        if state.memory_exceeded {
            return PluginError::OutOfMemory { plugin, export, limit: self.limits.memory_bytes };
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => PluginError::OutOfFuel { plugin, export, fuel: self.limits.fuel_per_call },
            Some(Trap::Interrupt) => PluginError::Deadline { plugin, export, timeout: self.limits.call_timeout },
            _ => {
                let cause = match &state.last_error_log {
                    Some(message) => format!("{error:#}; the plugin reported: {message}"),
                    None => format!("{error:#}"),
                };
                PluginError::Trap { plugin, export, cause }
            }
        }
    }
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
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| format!("cannot start the epoch ticker: {e}"))?;
        Ok(engine)
    });
    engine.as_ref().map_err(|message| PluginError::Engine { message: message.clone() })
}
