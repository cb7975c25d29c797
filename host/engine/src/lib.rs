//! The compactor engine: configuration, planning, and the cycles that
//! execute plans. It composes the other crates and is the only one that
//! knows them all:
//!
//! ```text
//! storage listing ─► planner ─► tier policy (runtime) ─► validated candidates ─► batches ─► jobs
//! ```
//!
//! - [`config`]: the TOML configuration, resolved once into settings and
//!   one registry of every tier;
//! - [`plan`]: one cycle's plan, as data (Arc's rules are in
//!   `compactor-planning`);
//! - [`Manager`]: cycles: recovery, then plan and execute each tier, with
//!   the job runner, tier health and tenants' budgets behind it;
//! - [`History`]: the persistent job history;
//! - [`scheduler`]: cron schedules per tier.

mod cluster;
pub mod config;
mod health;
mod history;
mod manager;
mod outlook;
mod planner;
mod report;
mod runner;
pub mod scheduler;
mod temp;

pub use compactor_planning::{BatchRef, PartitionPolicy, Plan, PlanOptions, PlannedTier, PolicyFactory, TierId};
pub use health::TierHealth;
pub use history::{History, Recent, UnreadableEntry};
pub use manager::{CycleTicket, Manager};
pub use outlook::{OutlookRequest, PartitionOutlook, TierOutlook};
pub use planner::{PlanError, load_tiers, plan};
pub use report::{
    ActiveJob, ConfigReload, CycleError, CycleOptions, CycleReport, GateDecision, InstalledBuild, JobRecord, ManagerStats, Progress,
    ReloadOutcome,
};

use compactor_runtime::{ArtifactCache, PluginError, PluginRuntime};

/// The plugin runtime of the `compactor` binary: the built-in components
/// resolve as `builtin:NAME`, compiled components are cached in `cache_dir`.
pub fn plugin_runtime(cache_dir: std::path::PathBuf) -> Result<PluginRuntime, PluginError> {
    Ok(PluginRuntime::new(ArtifactCache::new(cache_dir))?.with_builtins(compactor_builtin::BUILTINS))
}

pub(crate) use compactor_planning::panic_message;
