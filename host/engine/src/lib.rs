//! The compactor engine: configuration, planning, and the cycles that
//! execute plans. It composes the other crates and is the only one that
//! knows them all:
//!
//! ```text
//! storage listing ─► planner ─► tier policy (runtime) ─► validated candidates ─► batches ─► jobs
//! ```
//!
//! - [`config`]: the TOML configuration, defaults and validation;
//! - [`tier`]: Arc's candidate and batch splitting;
//! - [`planner`]: one cycle's plan, as data;
//! - [`manager`]: cycles: recovery, then plan and execute each tier;
//! - [`scheduler`]: cron schedules per tier.

pub mod config;
mod health;
pub mod history;
pub mod manager;
pub mod outlook;
pub mod planner;
mod report;
mod runner;
pub mod scheduler;
pub mod temp;
pub mod tier;

use compactor_runtime::{ArtifactCache, PluginError, PluginRuntime};

/// The plugin runtime of the `compactor` binary: the built-in components
/// resolve as `builtin:NAME`, compiled components are cached in `cache_dir`.
pub fn plugin_runtime(cache_dir: std::path::PathBuf) -> Result<PluginRuntime, PluginError> {
    Ok(PluginRuntime::new(ArtifactCache::new(cache_dir))?.with_builtins(compactor_builtin::BUILTINS))
}

pub(crate) use compactor_planning::panic_message;
