//! The compaction job: one batch, merged by DuckDB in a child process (the
//! same binary, `compactor compact --job-stdin`), so DuckDB's memory goes back
//! to the OS when the job ends and a crash of the merge cannot take the
//! engine down.
//!
//! - [`JobConfig`] / [`JobResult`]: Arc's subprocess protocol (JSON on stdin,
//!   exactly one JSON result on stdout, JSON log lines on stderr);
//! - [`child`]: the job itself, step by step, with its data-safety protocol;
//! - [`ChildCommand`] and [`compact_adaptive`]: spawning the child, reading
//!   its result, classifying failures, and the halving retry;
//! - [`sql`]: Arc's merge SQL;
//! - [`ManifestStore`]: Arc-compatible recovery manifests and recovery;
//! - [`completion`]: completion manifests for cluster mode;
//! - [`verify`] and [`sample`]: row-level checks and the demo's sample lake,
//!   both with DuckDB.

pub mod child;
mod classify;
pub mod completion;
pub mod fast_path;
mod manifest;
mod parent;
pub mod provenance;
pub mod sample;
mod seams;
pub mod sql;
pub mod streaming_merge;
pub mod verify;

pub use manifest::{
    ManifestError, ManifestOwner, ManifestStore, Outcome, RecoveryManifest, RecoveryObservers, RecoveryOutcome, RecoveryReport, Visibility,
};
pub use parent::{
    Attempt, BatchFailure, BatchRunner, BoxedFuture, ChildCommand, JobFailure, MIN_BATCH_FILES, RunJobs, RunOutcome, RunSubset,
    StartedChild, compact_adaptive,
};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The job's input, as Arc's subprocess config (plus optional extras).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobConfig {
    /// Database name.
    pub database: String,
    /// Measurement name.
    pub measurement: String,
    /// Partition key prefix including the database.
    pub partition_path: String,
    /// Storage keys of the inputs.
    pub files: Vec<String>,
    /// Tier name.
    pub tier: String,
    /// Base temp directory; the job works in `{temp_directory}/{job_id}`.
    #[serde(default)]
    pub temp_directory: String,
    /// 1-based batch number (omitted when 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub batch_number: usize,
    /// Leave the recovery manifest for the parent after a full success.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub parent_finalizes_manifest: bool,
    /// Sort keys; `null` means `["time"]`, `[]` means no ORDER BY.
    #[serde(default)]
    pub sort_keys: Option<Vec<String>>,
    /// DuckDB `memory_limit`; empty leaves DuckDB's default.
    #[serde(default)]
    pub memory_limit: String,
    /// DuckDB threads; 0 leaves DuckDB's default.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub threads: usize,
    /// `local`, `s3`, `azure`.
    pub storage_type: String,
    /// Storage settings as a JSON string (no secrets: those travel in the
    /// child's environment).
    pub storage_config: String,
    /// Job id (omitted when empty; then derived).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub job_id: String,
    /// Completion-manifest directory; empty in standalone mode.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub completion_dir: String,
    /// UTC start of the partition.
    #[serde(default = "unset_time")]
    pub partition_time: DateTime<Utc>,
    /// Output suffix; defaults to Arc's rule (`compacted` for the `hourly`
    /// tier, otherwise the tier name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_suffix: Option<String>,
    /// Outputs larger than this are uploaded in parts of this size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multipart_threshold_bytes: Option<u64>,
    /// Rows per Parquet row group of the output; Arc's 122,880 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_group_size: Option<u64>,
    /// The lease the parent holds for the job's partition; without one (a
    /// job run by hand) the job does not check a lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<JobLease>,
    /// The policy build that chose the job's files (recorded in its
    /// recovery manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyRef>,
    /// Whether the job may copy row groups or merge its sorted inputs as
    /// streams instead of merging with DuckDB when every condition holds
    /// ([`fast_path`]); absent means yes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_path: Option<bool>,
    /// Rows the streaming merge decodes ahead per input (its memory bound);
    /// absent means [`streaming_merge::DEFAULT_MERGE_BATCH_ROWS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_batch_rows: Option<u64>,
}

/// Which policy build decided a job: kept in its manifest and history entry,
/// so that a bad decision can be traced to the component that made it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRef {
    /// `builtin:NAME` or the component's path.
    pub name: String,
    /// The contract version it was built against.
    #[serde(default)]
    pub wit_version: String,
    /// SHA-256 of the component's bytes.
    #[serde(default)]
    pub content_hash: String,
}

/// The parent's lease on the job's partition, as the child sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLease {
    /// The engine's id.
    pub engine: String,
    /// The lease's id.
    pub id: String,
    /// The file where the parent keeps the lease's deadline
    /// (`CLOCK_BOOTTIME` nanoseconds).
    pub deadline_file: String,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Go's zero time, which Arc sends for "unset".
fn unset_time() -> DateTime<Utc> {
    chrono::NaiveDate::from_ymd_opt(1, 1, 1).and_then(|d| d.and_hms_opt(0, 0, 0)).map_or(DateTime::<Utc>::MIN_UTC, |t| t.and_utc())
}

impl JobConfig {
    /// Rows per row group of the output.
    pub(crate) fn effective_row_group_size(&self) -> u64 {
        self.row_group_size.unwrap_or(sql::DEFAULT_ROW_GROUP_SIZE)
    }

    /// The sort keys in effect.
    pub(crate) fn effective_sort_keys(&self) -> Vec<String> {
        self.sort_keys.clone().unwrap_or_else(|| vec!["time".into()])
    }

    /// The output suffix in effect.
    pub(crate) fn effective_output_suffix(&self) -> String {
        match &self.output_suffix {
            Some(suffix) => suffix.clone(),
            None if self.tier == "hourly" => "compacted".into(),
            None => self.tier.clone(),
        }
    }
}

/// What ended a failed job, decided where the failure was seen: by the child
/// from the type of its error (DuckDB, object store, local file system, a
/// verification mismatch), by the parent from how the child exited. Arc's
/// retry rule is a function of it ([`FailureKind::classification`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The child was killed (SIGKILL: the OOM killer or an operator).
    Killed,
    /// The child ran past `compaction.job_timeout` and was killed.
    Timeout,
    /// The child crashed (SIGSEGV, or exit status 139).
    Segfault,
    /// The child died of another signal.
    Signal,
    /// The child exited with status 137 (killed for memory).
    OomKilled,
    /// DuckDB refused the SQL (binder, catalog or parser error): permanent.
    Sql,
    /// DuckDB ran out of memory.
    OutOfMemory,
    /// A file or object is missing or access to it was refused: permanent.
    Denied,
    /// Another object-store failure (timeout, server error…).
    Storage,
    /// Another local file-system failure (disk full…).
    LocalIo,
    /// The output's row count did not match the inputs'.
    Verification,
    /// None of the inputs is valid Parquet.
    NoValidInput,
    /// The child could not be started, or its result could not be read.
    Protocol,
    /// A request that changes the store (the upload, the commit) failed in
    /// a way that does not say whether it took effect: the manifest stays,
    /// and recovery decides once the lease is gone.
    UnknownOutcome,
    /// The job's lease ended (or another engine aborted the job) before an
    /// irreversible step: the job stopped without taking it.
    LeaseLost,
    /// Nothing typed it; Arc's text rules decide.
    Unknown,
}

impl FailureKind {
    /// Its name, as the job's result, history, the `once` JSON and the
    /// `outcome` label of `compactor_jobs_total` spell it (`out_of_memory`).
    pub fn name(self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    }
}

/// The job's outcome: exactly one JSON object on the child's stdout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    /// The job completed (including clean zero-file skips).
    pub success: bool,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What kind of failure it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_kind: Option<FailureKind>,
    /// Inputs merged.
    #[serde(default)]
    pub files_compacted: usize,
    /// Bytes of the downloaded inputs.
    #[serde(default)]
    pub bytes_before: u64,
    /// Bytes of the output.
    #[serde(default)]
    pub bytes_after: u64,
    /// Output storage key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output_file: String,
    /// Validated inputs merged (even if their deletion later failed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compacted_inputs: Vec<String>,
    /// The retained recovery manifest (parent finalises).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub manifest_path: String,
    /// Rows read from the inputs.
    #[serde(default)]
    pub rows_before: u64,
    /// Rows in the output (verified before upload).
    #[serde(default)]
    pub rows_after: u64,
    /// Inputs skipped because they are not valid Parquet (left in place).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_inputs: Vec<String>,
    /// Why the job merged nothing although it ran: every input vanished
    /// (another engine took them), fewer than two valid inputs were left
    /// (a merge of one would only rewrite it), or no input has a `time`
    /// column. `None` when it merged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Inputs that could not be deleted (recovery retries them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub undeleted_inputs: Vec<String>,
    /// How the output was produced.
    #[serde(default)]
    pub merge_path: fast_path::MergePath,
    /// Why the row-group copy was not taken, when the fast path was allowed
    /// (and why the streaming merge was not either, when DuckDB merged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_path_declined: Option<String>,
    /// Wall time of the job, in milliseconds.
    #[serde(default)]
    pub duration_ms: u64,
    /// Peak resident memory of the job process, in bytes (0 if unknown).
    #[serde(default)]
    pub peak_rss_bytes: u64,
    /// Object-store requests the job made.
    #[serde(default)]
    pub requests: compactor_storage::RequestCost,
}

/// Peak resident set size of this process (`VmHWM`), in bytes.
pub fn peak_rss_bytes() -> u64 {
    proc_status_kib("VmHWM:") * 1024
}

/// Current resident set size of this process (`VmRSS`), in bytes.
pub fn rss_bytes() -> u64 {
    proc_status_kib("VmRSS:") * 1024
}

fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// `db` with `/` replaced by `.`, so a pseudo-database `spoke/db` cannot
/// collide with a legal `spoke_db`.
pub(crate) fn sanitize_database(database: &str) -> String {
    database.replace('/', ".")
}

/// The prefix of every job id (and temp directory) of a partition.
pub fn job_prefix(database: &str, partition_path: &str) -> String {
    format!("{}_{}_", sanitize_database(database), partition_path.replace('/', "_"))
}

/// `{db'}_{partition_path "/"→"_"}_{unixnanos}_b{batch}`.
pub fn job_id(database: &str, partition_path: &str, now: DateTime<Utc>, batch_number: usize) -> String {
    format!("{}{}_b{batch_number}", job_prefix(database, partition_path), now.timestamp_nanos_opt().unwrap_or(0))
}

pub use compactor_model::output_name;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_arc() {
        let now = DateTime::from_timestamp_nanos(1_776_006_312_123_456_789);
        assert_eq!(job_id("mydb", "mydb/cpu/2026/04/11/14", now, 1), "mydb_mydb_cpu_2026_04_11_14_1776006312123456789_b1");
        assert_eq!(output_name("cpu", now, 2, "compacted"), "cpu_20260412_150512_1776006312123456789_b2_compacted.parquet");
        assert_eq!(sanitize_database("telemetry"), "telemetry");
        assert_eq!(sanitize_database("rocket-01/telemetry"), "rocket-01.telemetry");
        assert_ne!(sanitize_database("rocket-01/telemetry"), sanitize_database("rocket-01_telemetry"));
    }

    #[test]
    fn config_round_trips_arc_json() {
        let json = r#"{"database":"db","measurement":"cpu","partition_path":"db/cpu/2026/04/11/14","files":["a"],"tier":"hourly",
            "temp_directory":"/tmp/c","sort_keys":null,"memory_limit":"","storage_type":"local","storage_config":"{\"base_path\":\"/x\"}",
            "partition_time":"2026-04-11T14:00:00Z"}"#;
        let config: JobConfig = serde_json::from_str(json).unwrap();
        assert_eq!(config.effective_sort_keys(), ["time"]);
        assert_eq!(config.effective_output_suffix(), "compacted");
        let out = serde_json::to_value(&config).unwrap();
        assert!(out.get("batch_number").is_none() && out.get("threads").is_none() && out.get("job_id").is_none());
        let daily = JobConfig { tier: "daily".into(), sort_keys: Some(vec![]), ..config };
        assert_eq!(daily.effective_output_suffix(), "daily");
        assert!(daily.effective_sort_keys().is_empty());
    }
}
