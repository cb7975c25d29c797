//! What the manager reports, as data: what to run, each batch's record, the
//! gate's answer, a cycle's report, lifetime counters, progress events and
//! the jobs in flight. The summary table, JSON, the history, the API and
//! the metrics all read these.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use compactor_job::FailureKind;
use compactor_job::RecoveryReport;
use compactor_planning::{BatchRef, PlanProblem, PlannedTier, TierId};
use compactor_storage::RequestCost;

/// A cycle that could not run.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    /// Another cycle is running.
    #[error("compaction cycle already running")]
    AlreadyRunning,
    /// The engine is stopping: no new cycle begins.
    #[error("the engine is shutting down")]
    Stopping,
    /// Planning failed (e.g. the databases could not be listed).
    #[error(transparent)]
    Plan(#[from] crate::planner::PlanError),
    /// The store cannot be used by a child process.
    #[error("storage {0} cannot be compacted by a job process (use file://, s3://, …)")]
    NotShareable(String),
    /// This host's wall clock stepped since it was checked against the
    /// store's, and is now off by more than the bound.
    #[error("{0}")]
    Clock(String),
}

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct CycleOptions {
    /// The time policies see as now (default: the current time).
    pub now: Option<DateTime<Utc>>,
    /// Only these tiers (default: every enabled tier): a tier's name
    /// (every tenant's tier of that name) or `tenant/tier`.
    pub tiers: Vec<String>,
    /// `tiers` names tiers by their key only (`hourly` is then the
    /// top-level tier alone): the scheduler's firings.
    pub exact_tiers: bool,
    /// Only this database.
    pub database: Option<String>,
    /// Ignore the policies' age rules: they see a clock ten years ahead, so
    /// every partition counts as old (for backfilled data).
    pub force: bool,
    /// Planning only: record why each partition was or was not selected.
    pub explain: bool,
    /// Planning only: how long each tenant's planning may take; a tenant
    /// still planning then stops, and its tiers' summaries say so
    /// (`interrupted`). The API's planning views set it.
    pub planning_deadline: Option<std::time::Duration>,
    /// Planning only: set when nobody waits for the plan any more.
    pub cancel: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// No batch starts after it (running jobs finish, or meet
    /// `compaction.job_timeout`): the API's triggers set it from
    /// `[api] trigger_timeout`.
    pub deadline: Option<std::time::Instant>,
}

impl CycleOptions {
    /// Whether a cycle of these options runs `tier`: enabled and named by
    /// [`CycleOptions::tiers`] (every tier when empty).
    pub fn selects(&self, tier: &PlannedTier) -> bool {
        tier.enabled && tier.is_selected_by(&self.tiers, self.exact_tiers)
    }
}

/// One batch's outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
// Read back from the history: fields added later, or skipped when empty, default.
#[serde(default)]
pub struct JobRecord {
    /// Which batch (its fields are the record's, in JSON).
    #[serde(flatten)]
    pub batch: BatchRef,
    /// Files in the batch.
    pub files_in: usize,
    /// Inputs merged and removed, over all attempts.
    pub files_compacted: usize,
    /// Outputs written.
    pub files_out: usize,
    /// Bytes of the merged inputs.
    pub bytes_before: u64,
    /// Bytes of the outputs.
    pub bytes_after: u64,
    /// Rows read.
    pub rows_before: u64,
    /// Rows written (verified).
    pub rows_after: u64,
    /// Child processes run (more than one after a halving retry).
    pub attempts: usize,
    /// Whether every attempt needed succeeded.
    pub success: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What kind of failure ended it (`out_of_memory`, `killed`, `timeout`,
    /// `sql`, `storage`, `lease_lost`, `unknown_outcome`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_kind: Option<FailureKind>,
    /// Inputs skipped as invalid Parquet (left in place).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped_inputs: Vec<String>,
    /// Why a job that ran merged nothing (its inputs had vanished, one
    /// valid input was left, …): a skipped job, counted apart from the
    /// successes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// How the output was produced: `duckdb`, `row_group_copy` or `streaming_merge`.
    #[serde(default)]
    pub path: compactor_job::fast_path::MergePath,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// Largest peak resident memory of the job processes, in bytes.
    pub peak_job_rss_bytes: u64,
    /// Object-store requests the batch's job processes made.
    pub requests: RequestCost,
    /// The first attempt's job id (its log lines carry it).
    pub job_id: String,
    /// The cycle that ran it.
    pub cycle_id: u64,
    /// The engine that ran it.
    pub engine: String,
    /// The tier's policy (`builtin:hourly`, a path).
    pub policy: String,
    /// SHA-256 of the policy component's bytes.
    pub policy_hash: String,
    /// When the batch started.
    pub started_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
}

impl JobRecord {
    /// Its tier as reports name it: `tier`, or `tenant/tier`.
    pub fn tier_key(&self) -> String {
        self.batch.tier_key()
    }

    /// Which tier ran it.
    pub fn tier_id(&self) -> TierId {
        self.batch.tier_id()
    }

    /// Why it failed, for tables: `[kind] message` (none when it succeeded).
    pub fn failure(&self) -> Option<String> {
        if self.success {
            return None;
        }
        let kind = self.failure_kind.map(|k| format!("[{}] ", k.name())).unwrap_or_default();
        Some(format!("{kind}{}", self.error.as_deref().unwrap_or("unknown error")))
    }
}

/// What the cluster gate said about this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum GateDecision {
    /// Not in cluster mode: the node compacts.
    #[default]
    Standalone,
    /// The gate lets this node compact.
    Allowed {
        /// The gate component.
        plugin: String,
    },
    /// The gate says this node does not compact.
    Denied {
        /// The gate component.
        plugin: String,
        /// This node's configured role.
        role: String,
    },
    /// The gate failed (trap, deadline, load error…): nothing is compacted,
    /// to be safe.
    Failed {
        /// The gate component.
        plugin: String,
        /// What went wrong.
        error: String,
    },
    /// Cluster mode, and this node is cut off from etcd: it starts no work
    /// and never falls back to standalone.
    CutOff {
        /// Why.
        error: String,
    },
}

impl GateDecision {
    /// Whether this node may compact.
    pub fn allows(&self) -> bool {
        matches!(self, Self::Standalone | Self::Allowed { .. })
    }
}

impl std::fmt::Display for GateDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Standalone => f.write_str("standalone: this node compacts"),
            Self::Allowed { plugin } => write!(f, "the cluster gate {plugin} lets this node compact"),
            Self::Denied { plugin, role } => {
                write!(f, "the cluster gate {plugin} says this node (role {role:?}) does not compact; nothing is compacted here")
            }
            Self::Failed { plugin, error } => write!(f, "the cluster gate {plugin} failed, so nothing is compacted: {error}"),
            Self::CutOff { error } => write!(f, "nothing is compacted: {error}"),
        }
    }
}

/// The outcome of one cycle, as data: it feeds the summary table, JSON and
/// stats alike.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CycleReport {
    /// The cycle's id (1-based).
    pub cycle_id: u64,
    /// What the cluster gate said; a cycle the gate does not allow does
    /// nothing else.
    pub gate: GateDecision,
    /// What recovery did first.
    pub recovery: RecoveryReport,
    /// One record per batch run.
    pub jobs: Vec<JobRecord>,
    /// Batches skipped because another compaction held their partition.
    pub skipped_locked: usize,
    /// Batches left for the next cycle by a tenant's `max_bytes_per_cycle`.
    pub deferred_by_budget: usize,
    /// Batches not started because the cycle's deadline passed or, in
    /// cluster mode, this node may no longer start work (its session ended
    /// or the compactor lease moved during the cycle).
    pub held_back: usize,
    /// Measurements this node left to other nodes (cluster `spread` mode).
    pub measurements_elsewhere: usize,
    /// Planning problems (a tier or partition that could not be planned).
    pub problems: Vec<PlanProblem>,
    /// Objects the cycle's listings left in place, each once, with the
    /// reason ([`compactor_planning::Plan::set_aside`]).
    pub set_aside: Vec<compactor_model::SetAside>,
    /// Tiers whose tenant's `fuel_per_cycle` ran out before they were
    /// planned through.
    pub fuel_exhausted: Vec<compactor_planning::TierId>,
    /// Object-store requests of the whole cycle: the engine's own (recovery,
    /// listing, locks) and its jobs'.
    pub requests: RequestCost,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
}

impl CycleReport {
    /// Jobs that failed.
    pub fn failed(&self) -> impl Iterator<Item = &JobRecord> {
        self.jobs.iter().filter(|j| !j.success)
    }

    /// True when every job succeeded, nothing failed to plan, and the gate
    /// (if any) answered.
    pub fn all_succeeded(&self) -> bool {
        self.failed().next().is_none()
            && self.problems.is_empty()
            && self.recovery.failed.is_empty()
            && !matches!(self.gate, GateDecision::Failed { .. })
    }
}

/// Counters over the manager's lifetime.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ManagerStats {
    /// Jobs that succeeded.
    pub total_jobs_completed: u64,
    /// Jobs that failed.
    pub total_jobs_failed: u64,
    /// Jobs that ran and merged nothing ([`JobRecord::skipped`]).
    pub total_jobs_skipped: u64,
    /// Inputs compacted.
    pub total_files_compacted: u64,
    /// Bytes saved (may be negative).
    pub total_bytes_saved: i64,
    /// Manifests recovered.
    pub total_manifests_recovered: u64,
    /// Unparseable manifests moved aside.
    pub total_manifests_quarantined: u64,
    /// Cycles finished.
    pub total_cycles: u64,
}

/// A progress event, for a terminal progress bar.
#[derive(Debug, Clone)]
pub enum Progress {
    /// A tier's plan is ready: `batches` jobs to run.
    TierStarted {
        /// Tier name.
        tier: String,
        /// Batches planned.
        batches: usize,
    },
    /// A batch finished.
    BatchDone {
        /// The record.
        record: Box<JobRecord>,
    },
    /// Recovery ran (at start-up, before a cycle, or on its own).
    Recovered {
        /// What it did.
        report: Box<RecoveryReport>,
    },
    /// A cycle finished.
    CycleFinished {
        /// What it did.
        report: Arc<CycleReport>,
    },
}

/// A batch being compacted now.
#[derive(Debug, Clone, Serialize)]
pub struct ActiveJob {
    /// The cycle running it.
    pub cycle_id: u64,
    /// Which batch (its fields are the entry's, in JSON).
    #[serde(flatten)]
    pub batch: BatchRef,
    /// Files in the batch.
    pub files: usize,
    /// Bytes in the batch.
    pub bytes: u64,
    /// When it started.
    pub started_at: DateTime<Utc>,
}

/// What a reload installed, and what it could not.
#[derive(Debug, Clone, Default)]
pub struct ReloadOutcome {
    /// The tiers whose component was loaded and checked, with the build now
    /// installed.
    pub installed: Vec<InstalledBuild>,
    /// The tiers (by key) whose new build failed, and why: they keep their
    /// last good build.
    pub failed: Vec<(String, String)>,
    /// What reading the config file again did (`None`: not read, the
    /// manager has no file, or one tenant's components were reloaded).
    pub config: Option<Result<ConfigReload, String>>,
}

/// A config file read again by a reload ([`crate::Manager::reload`]).
#[derive(Debug, Clone, Default)]
pub struct ConfigReload {
    /// Changed sections that apply only after a restart (they keep their
    /// running values): see [`crate::config::RESTART_ONLY`].
    pub restart_needed: Vec<String>,
}

/// A tier's build, as a reload installed it.
#[derive(Debug, Clone)]
pub struct InstalledBuild {
    /// The tier's key (`tier` or `tenant/tier`).
    pub tier: String,
    /// The component's name.
    pub name: String,
    /// SHA-256 of the component's bytes.
    pub content_hash: String,
}
