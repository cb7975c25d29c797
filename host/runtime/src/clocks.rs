//! Sleeps that end at the call's deadline. wasmtime-wasi's
//! `subscribe-duration` and `subscribe-instant` sleep for as long as the
//! guest asks, and the epoch interrupt cannot fire while a host call blocks;
//! these replacements end every sleep at the call's wall-clock deadline and
//! mark the call as past it, so that it fails with a deadline error even if
//! the guest returns without running another instruction the interrupt
//! checks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

use crate::sandbox::PluginState;

/// The monotonic-clock interface as wasmtime-wasi registers it; guests that
/// import an older 0.2 version resolve to it by semver.
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// Replaces the monotonic clock's sleeps in `linker` (after WASI is added).
pub(crate) fn add_capped_sleeps(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap("subscribe-duration", |mut store, (nanos,): (u64,)| Ok((capped_sleep(store.data_mut(), nanos)?,)))?;
    // The guest's monotonic clock is frozen at zero, so an instant is a
    // duration from now.
    clock.func_wrap("subscribe-instant", |mut store, (when,): (u64,)| Ok((capped_sleep(store.data_mut(), when)?,)))?;
    linker.allow_shadowing(false);
    Ok(())
}

fn capped_sleep(state: &mut PluginState, nanos: u64) -> wasmtime::Result<Resource<DynPollable>> {
    let now = Instant::now();
    let deadline = now + crate::sandbox::until_epoch(state.call_deadline);
    let wanted = now.checked_add(Duration::from_nanos(nanos)).unwrap_or(deadline + Duration::from_secs(1));
    let sleep = CappedSleep {
        until: tokio::time::Instant::from_std(wanted.min(deadline)),
        cut: wanted > deadline,
        past_deadline: state.past_deadline.clone(),
    };
    let sleep = state.table.push(sleep)?;
    subscribe(&mut state.table, sleep)
}

/// A sleep until `until`, which is never past the call's deadline; a sleep
/// that was `cut` marks the call as past it when it ends.
struct CappedSleep {
    until: tokio::time::Instant,
    cut: bool,
    past_deadline: Arc<AtomicBool>,
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedSleep {
    async fn ready(&mut self) {
        tokio::time::sleep_until(self.until).await;
        if self.cut {
            self.past_deadline.store(true, Ordering::Relaxed);
        }
    }
}
