//! The job, in the child process. Order of steps; a crash at any arrow is
//! survivable because recovery (in `manifest`) finishes or rolls back
//! whatever a recovery manifest describes:
//!
//! 1. download the inputs into `{temp}/{job_id}/` (vanished ones are skipped)
//!    → 2. check magic bytes (corrupt inputs are skipped and never deleted),
//!    probe for `time` → 3. merge with DuckDB → 4. verify: the output's row
//!    count equals the inputs' (or the distinct-key count when deduplicating)
//!    → 5. mark the lease as having writes in flight, write the recovery
//!    manifest, then check the lease → 6. check,
//!    upload, create-only (multipart when large) → 7. check, commit: create
//!    the job's outcome object → 8. check, delete the inputs → 9. delete the
//!    recovery manifest and the outcome.
//!
//! The lease checks read the deadline the parent keeps renewed
//! (`JobConfig::lease`); why each sits where it does is the ownership model
//! in `docs/architecture.md`. Once the manifest is written, only success
//! removes it: after a failed upload or delete, recovery decides from what
//! the store actually holds, and the commit is the one step that two
//! engines can never both take.
//!
//! Setting `COMPACTOR_FAULT` to a step name (`after-download`, `after-merge`,
//! `after-manifest`, `upload-started` (a recorded multipart upload, before
//! its record), `mid-upload`, `after-upload`, `before-commit` (the completion manifest written), `mid-delete`, `after-delete`) makes the child kill itself with SIGKILL there; the crash
//! tests use it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};

use crate::fast_path;
use crate::manifest::{ManifestOwner, ManifestStore, Outcome, RecoveryManifest, upload_record_key};
use crate::seams::Seams;
use crate::sql::{self, compaction_statements, file_list, is_valid_identifier};
use crate::streaming_merge;
use crate::{FailureKind, JobConfig, JobResult, output_name};
use compactor_storage::lease::{before_deadline, deadline_file_is_valid, mark_writes_in_flight};
use compactor_storage::{EarlyWriteback, Storage, TrackedUploads};

/// Outputs up to this size are uploaded in one request.
pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 64 << 20;

/// Concurrent downloads per job.
const DOWNLOAD_CONCURRENCY: usize = 4;

/// Runs one job and always returns a result; `success: false` carries why.
/// The job's work directory is moved aside, for the caller to remove once
/// the result is delivered: removing it frees the merged inputs' blocks,
/// which takes a while that nobody needs to wait for.
pub fn run(config: &JobConfig, storage: &Storage, duckdb: &duckdb::Connection) -> (JobResult, WorkDirRemoval) {
    let started = Instant::now();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            let result = failure(JobResult::default(), &anyhow::Error::new(e).context("cannot start the I/O runtime"), started);
            return (result, WorkDirRemoval(None));
        }
    };
    let mut job = Job {
        config,
        storage,
        duckdb,
        runtime: &runtime,
        result: JobResult::default(),
        work_dir: work_dir(config),
        seams: Seams::for_job(config),
        timer: StepTimer::new(),
    };
    let outcome = job.execute();
    let removal = WorkDirRemoval::set_aside(&job.work_dir, &config.job_id);
    let result = std::mem::take(&mut job.result);
    let result = JobResult { peak_rss_bytes: crate::peak_rss_bytes(), ..result };
    let result = match outcome {
        Ok(()) => JobResult { success: true, duration_ms: started.elapsed().as_millis() as u64, ..result },
        Err(e) => failure(result, &e, started),
    };
    (result, removal)
}

/// A finished job's work directory, renamed to `.removing-{job_id}` so that
/// no cleanup by job prefix (the engine's, after the partition) races its
/// removal.
#[must_use = "the work directory stays until removed"]
#[derive(Debug)]
pub struct WorkDirRemoval(Option<PathBuf>);

impl WorkDirRemoval {
    fn set_aside(work_dir: &Path, job_id: &str) -> Self {
        let aside = work_dir.with_file_name(format!(".removing-{job_id}"));
        match std::fs::rename(work_dir, &aside) {
            Ok(()) => Self(Some(aside)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self(None),
            Err(_) => {
                let _ = std::fs::remove_dir_all(work_dir);
                Self(None)
            }
        }
    }

    /// Removes the directory.
    pub fn remove(self) {
        if let Some(dir) = self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn failure(result: JobResult, error: &anyhow::Error, started: Instant) -> JobResult {
    JobResult {
        success: false,
        error: Some(format!("{error:#}")),
        failure_kind: Some(failure_kind(error)),
        duration_ms: started.elapsed().as_millis() as u64,
        ..result
    }
}

/// The output's row count differs from the inputs'.
#[derive(Debug, thiserror::Error)]
#[error(
    "output verification failed: expected {expected} rows (inputs have {before}), the output has {after}; nothing was uploaded or deleted"
)]
struct VerificationMismatch {
    expected: u64,
    before: u64,
    after: u64,
}

/// None of the downloaded inputs is valid Parquet.
#[derive(Debug, thiserror::Error)]
#[error("no valid parquet files found")]
struct NoValidInput;

/// The job's lease ended before an irreversible step, which it did not take.
#[derive(Debug, thiserror::Error)]
#[error("the partition's lease was lost before {step}; the job stopped without it (recovery resolves what it left)")]
struct LeaseLost {
    step: &'static str,
}

/// A request that changes the store failed without saying whether it took
/// effect.
#[derive(Debug, thiserror::Error)]
#[error("the outcome of {what} is unknown; the recovery manifest stays and recovery resolves it once the lease is gone")]
struct UnknownOutcome {
    what: &'static str,
}

/// The kind of a job's failure, from the type of the first error in its
/// chain that has one.
fn failure_kind(error: &anyhow::Error) -> FailureKind {
    // A context layer is not its own type in `chain()`: ask the error.
    if error.downcast_ref::<UnknownOutcome>().is_some() {
        return FailureKind::UnknownOutcome;
    }
    for cause in error.chain() {
        if cause.is::<VerificationMismatch>() {
            return FailureKind::Verification;
        }
        if cause.is::<NoValidInput>() {
            return FailureKind::NoValidInput;
        }
        if cause.is::<LeaseLost>() {
            return FailureKind::LeaseLost;
        }
        if let Some(e) = cause.downcast_ref::<duckdb::Error>() {
            return duckdb_failure_kind(&e.to_string());
        }
        let store_error = cause
            .downcast_ref::<compactor_storage::StorageError>()
            .and_then(|e| e.object_store_error())
            .or_else(|| cause.downcast_ref::<object_store::Error>());
        if let Some(e) = store_error {
            return match e {
                object_store::Error::NotFound { .. }
                | object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. } => FailureKind::Denied,
                _ => FailureKind::Storage,
            };
        }
        if let Some(e) = cause.downcast_ref::<std::io::Error>() {
            return match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => FailureKind::Denied,
                _ => FailureKind::LocalIo,
            };
        }
    }
    FailureKind::Unknown
}

/// DuckDB reports its error type only as the message's prefix
/// (`Binder Error: …`); the Rust crate does not expose it otherwise.
fn duckdb_failure_kind(message: &str) -> FailureKind {
    let lower = message.to_lowercase();
    if ["binder error", "catalog error", "parser error"].iter().any(|m| lower.contains(m)) {
        FailureKind::Sql
    } else if ["out of memory", "could not allocate", "cannot allocate", "memory allocation failed"].iter().any(|m| lower.contains(m)) {
        FailureKind::OutOfMemory
    } else if ["permission denied", "no such file"].iter().any(|m| lower.contains(m)) {
        FailureKind::Denied
    } else {
        FailureKind::Unknown
    }
}

/// `{temp_directory}/{job_id}`.
pub fn work_dir(config: &JobConfig) -> PathBuf {
    let base = if config.temp_directory.is_empty() { "./data/compaction" } else { &config.temp_directory };
    Path::new(base).join(&config.job_id)
}

struct Job<'a> {
    config: &'a JobConfig,
    storage: &'a Storage,
    duckdb: &'a duckdb::Connection,
    runtime: &'a tokio::runtime::Runtime,
    result: JobResult,
    work_dir: PathBuf,
    seams: Seams<'a>,
    timer: StepTimer,
}

/// A downloaded input: its storage key and local copy.
struct Input {
    key: String,
    local: PathBuf,
}

/// The valid inputs of the job, downloaded.
struct Inputs {
    inputs: Vec<Input>,
    /// Their local paths as a DuckDB list literal.
    files_sql: String,
    /// Their columns (by name, over every input), read once by the probe;
    /// `None` when the probe failed.
    columns: Option<std::collections::HashSet<String>>,
}

impl Inputs {
    fn keys(&self) -> Vec<String> {
        self.inputs.iter().map(|i| i.key.clone()).collect()
    }

    fn local_paths(&self) -> Vec<String> {
        self.inputs.iter().map(|i| i.local.display().to_string()).collect()
    }
}

/// The merged output: its local file and its storage key.
struct Output {
    local: PathBuf,
    key: String,
}

impl Job<'_> {
    /// The job's steps, in order; see the module's documentation for why a
    /// crash between any two of them is survivable.
    fn execute(&mut self) -> anyhow::Result<()> {
        self.seams.started();
        create_private_dir(&self.work_dir).with_context(|| format!("failed to create temp directory {}", self.work_dir.display()))?;
        let mut inputs = match self.download_valid_inputs()? {
            Ok(inputs) => inputs,
            Err(why) => {
                self.skip(why);
                return Ok(());
            }
        };
        if !self.probe_time_column(&mut inputs) {
            self.skip("no input has a `time` column; they are left as they are".to_owned());
            return Ok(());
        }
        let (output, expected_rows) = self.merge_inputs(&inputs)?;
        self.verify(&inputs, &output, expected_rows)?;
        let manifest_key = self.write_manifest(&inputs, &output)?;
        self.upload_output(&output, &manifest_key)?;
        if self.commit(&manifest_key, &output)? {
            self.delete_inputs_and_manifest(&inputs, manifest_key)?;
        }
        tracing::info!(steps = %self.timer, "job steps");
        Ok(())
    }

    /// Steps 1 and 2: the inputs that still exist, downloaded, and of those
    /// the valid Parquet files (the others stay in storage, never deleted).
    /// `Err(why)` when there is nothing to merge: every input vanished, or
    /// one valid input is left (merging it alone would only rewrite it, and
    /// a tier would do so every cycle).
    fn download_valid_inputs(&mut self) -> anyhow::Result<Result<Inputs, String>> {
        let downloaded = self.download().context("failed to download files")?;
        self.timer.step("download");
        self.seams.at("after-download");
        let vanished = self.config.files.len() - downloaded.len();
        if downloaded.is_empty() {
            return Ok(Err(format!("all {vanished} inputs vanished before download (another job took them)")));
        }
        let mut inputs = Vec::new();
        for input in downloaded {
            match validate_parquet_file(&input.local).and_then(|()| self.check_footer(&input.local)) {
                Ok(()) => inputs.push(input),
                Err(e) => {
                    tracing::warn!(file = %input.key, error = %e, "skipping invalid input; it stays in storage");
                    self.result.skipped_inputs.push(input.key);
                }
            }
        }
        if inputs.is_empty() {
            return Err(NoValidInput.into());
        }
        if inputs.len() < compactor_model::MIN_BATCH_FILES {
            let invalid = self.result.skipped_inputs.len();
            return Ok(Err(format!(
                "one valid input is left ({vanished} vanished, {invalid} not valid Parquet): nothing to merge, it stays as it is"
            )));
        }
        let mut inputs = Inputs { inputs, files_sql: String::new(), columns: None };
        inputs.files_sql = file_list(&inputs.local_paths());
        Ok(Ok(inputs))
    }

    /// Ends the job without an output, saying why.
    fn skip(&mut self, why: String) {
        tracing::info!(reason = %why, "nothing to compact");
        self.result.bytes_before = 0;
        self.result.skipped = Some(why);
        self.seams.nothing_to_do();
    }

    /// Step 3a: whether the inputs have a `time` column (without one they
    /// are left as they are); a failed probe merges anyway.
    fn probe_time_column(&mut self, inputs: &mut Inputs) -> bool {
        inputs.columns = match self.input_columns(&inputs.files_sql) {
            Ok(columns) => Some(columns),
            Err(e) => {
                tracing::warn!(error = %e, "time-column probe failed; merging anyway");
                None
            }
        };
        let has_time = inputs.columns.as_ref().is_none_or(|columns| columns.contains("time"));
        if !has_time {
            tracing::warn!(partition = %self.config.partition_path, "no time column in the inputs; leaving them as they are");
        }
        self.timer.step("probe");
        has_time
    }

    /// Step 3b: the merge into a local output; returns it and the rows it
    /// must have.
    fn merge_inputs(&mut self, inputs: &Inputs) -> anyhow::Result<(Output, u64)> {
        let config = self.config;
        let name = output_name(&config.measurement, Utc::now(), config.batch_number, &config.effective_output_suffix());
        let local = self.work_dir.join(&name);
        let key = format!("{}/{name}", config.partition_path);
        self.result.output_file = key.clone();
        // On local disk the output is made durable at the commit; writing it
        // back while DuckDB still produces it leaves the commit only the tail.
        let writeback = self.storage.links_from(&self.work_dir).then(|| EarlyWriteback::start(local.clone()));
        let merged = self.merge(inputs, &local);
        drop(writeback);
        let (rows_before, expected_rows) = merged.context("failed to compact files")?;
        self.result.rows_before = rows_before;
        self.timer.step("merge");
        self.seams.at("after-merge");
        Ok((Output { local, key }, expected_rows))
    }

    /// Step 4: the output has exactly the rows it must have; otherwise
    /// nothing is uploaded or deleted.
    fn verify(&mut self, inputs: &Inputs, output: &Output, expected_rows: u64) -> anyhow::Result<()> {
        let rows_after = self.count_rows(&file_list(std::slice::from_ref(&output.local.display().to_string())))?;
        self.result.rows_after = rows_after;
        if rows_after != expected_rows {
            return Err(VerificationMismatch { expected: expected_rows, before: self.result.rows_before, after: rows_after }.into());
        }
        self.result.compacted_inputs = inputs.keys();
        self.result.files_compacted = inputs.inputs.len();
        self.timer.step("verify");
        Ok(())
    }

    /// Step 5: the recovery manifest; from here on only success removes it.
    fn write_manifest(&mut self, inputs: &Inputs, output: &Output) -> anyhow::Result<String> {
        let config = self.config;
        let size = std::fs::metadata(&output.local).context("failed to stat the output")?.len();
        self.result.bytes_after = size;
        let manifest = RecoveryManifest {
            output_path: output.key.clone(),
            output_size: size as i64,
            input_files: inputs.keys(),
            database: config.database.clone(),
            measurement: config.measurement.clone(),
            partition_path: config.partition_path.clone(),
            tier: config.tier.clone(),
            status: "pending".into(),
            created_at: Utc::now(),
            job_id: config.job_id.clone(),
            owner: config.lease.as_ref().map(|l| ManifestOwner { engine: l.engine.clone(), lease: l.id.clone() }),
            policy: config.policy.clone(),
        };
        // The manifest is the job's first write that others must see, and on
        // a remote store any write may land after the job is gone: from here
        // on, seeing its engine dead must not free the partition early.
        if let Some(lease) = &config.lease {
            self.check_lease("the manifest")?;
            let marked = self.runtime.block_on(mark_writes_in_flight(self.storage, &config.partition_path, &lease.id));
            if !marked.context("failed to mark the partition's lease as having writes in flight")? {
                return Err(LeaseLost { step: "the manifest" }.into());
            }
        }
        let written = self.before_deadline(ManifestStore::new(self.storage.clone()).write(&manifest));
        let key = written.ok_or(LeaseLost { step: "the manifest was written" })?.context("failed to write manifest")?;
        self.timer.step("manifest");
        self.seams.at("after-manifest");
        // After the write, not before: passing here means the manifest was in
        // the store while the lease was valid, so any later owner sees it.
        self.check_lease("the upload")?;
        Ok(key)
    }

    /// Runs one of the job's writes that others must see, but never past
    /// the lease's deadline ([`before_deadline`]): everything the job sends
    /// is then sent before its deadline and lands within the store's
    /// request timeout of it, the window other engines honour its claim
    /// for. `None` when cut there.
    fn before_deadline<T>(&self, write: impl std::future::Future<Output = T>) -> Option<T> {
        self.runtime.block_on(self.within_lease(write))
    }

    /// [`Job::before_deadline`], inside the job's async steps.
    async fn within_lease<T>(&self, write: impl std::future::Future<Output = T>) -> Option<T> {
        match &self.config.lease {
            Some(lease) => before_deadline(Path::new(&lease.deadline_file), write).await,
            None => Some(write.await),
        }
    }

    /// [`Job::within_lease`] for a step of the upload: cut at the deadline,
    /// it fails as a lost lease (and the upload's outcome is unknown).
    async fn upload_step<T>(&self, step: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
        self.within_lease(step).await.unwrap_or_else(|| Err(LeaseLost { step: "the upload's next request" }.into()))
    }

    /// Fails with [`LeaseLost`] when the parent's lease on the partition is
    /// no longer valid (with its safety margin).
    fn check_lease(&self, step: &'static str) -> anyhow::Result<()> {
        match &self.config.lease {
            Some(lease) if !deadline_file_is_valid(Path::new(&lease.deadline_file)) => Err(LeaseLost { step }.into()),
            _ => Ok(()),
        }
    }

    /// Step 7: the output replaces the inputs, decided once by creating the
    /// job's outcome object. `Ok(false)` when recovery committed it on the
    /// job's behalf (and finishes it); an abort by recovery deletes the
    /// output and fails the job.
    fn commit(&mut self, manifest_key: &str, output: &Output) -> anyhow::Result<bool> {
        self.seams.at("before-commit");
        // On local disk, make the output durable before anything that lets
        // its inputs go.
        self.storage.sync(&output.key).context("failed to sync the output")?;
        self.check_lease("the commit")?;
        let manifests = ManifestStore::new(self.storage.clone());
        let engine = self.config.lease.as_ref().map_or("job", |l| l.engine.as_str());
        let decided = self
            .before_deadline(manifests.decide(manifest_key, &output.key, Outcome::Committed, engine))
            .ok_or(LeaseLost { step: "the commit was decided (its outcome is unknown)" })?
            .map_err(|e| anyhow::Error::new(e).context(UnknownOutcome { what: "the commit" }))?;
        self.timer.step("commit");
        match decided.outcome {
            Outcome::Committed if decided.by == engine => Ok(true),
            Outcome::Committed => {
                tracing::warn!(by = %decided.by, "recovery committed this job on its behalf and finishes it");
                Ok(false)
            }
            Outcome::Aborted => {
                if let Err(e) = self.runtime.block_on(self.storage.delete(&output.key)) {
                    tracing::error!(output = %output.key, error = %e, "cannot delete this aborted job's output; recovery will");
                }
                Err(LeaseLost { step: "the commit (another engine aborted this job)" }.into())
            }
        }
    }

    /// Step 6: the create-only upload.
    fn upload_output(&mut self, output: &Output, manifest_key: &str) -> anyhow::Result<()> {
        let size = self.result.bytes_after;
        self.check_lease("the upload")?;
        if let Err(e) = self.runtime.block_on(self.upload(&output.local, &output.key, size, manifest_key)) {
            // A failed upload is ambiguous: a request that timed out may still
            // land. Arc deletes the manifest here, which can leave a complete
            // output beside its inputs; keeping it lets recovery decide from
            // what is actually in the store.
            return Err(e.context("failed to upload compacted file").context(UnknownOutcome { what: "the upload" }));
        }
        self.seams.at("after-upload");
        self.timer.step("upload");
        self.seams.uploaded(&output.local, &output.key, size)
    }

    /// Steps 8 and 9: the inputs are deleted, then the manifest and the
    /// outcome (or the parent is told to). Inputs that cannot be deleted
    /// keep the manifest, for recovery to finish.
    fn delete_inputs_and_manifest(&mut self, inputs: &Inputs, manifest_key: String) -> anyhow::Result<()> {
        let keys = inputs.keys();
        let undeleted = self.runtime.block_on(self.delete_inputs(&keys))?;
        self.seams.at("after-delete");
        self.timer.step("delete");
        if !undeleted.is_empty() {
            tracing::warn!(count = undeleted.len(), "some inputs could not be deleted; recovery will retry");
            self.result.undeleted_inputs = undeleted;
            return Ok(());
        }
        if self.config.parent_finalizes_manifest {
            self.result.manifest_path = manifest_key;
        } else if let Err(e) =
            self.runtime.block_on(ManifestStore::new(self.storage.clone()).finish(&manifest_key, self.upload_is_tracked()))
        {
            tracing::warn!(error = %e, "cannot delete the recovery manifest; recovery will");
        }
        self.seams.inputs_deleted(&keys);
        Ok(())
    }

    /// Streams every input into the work directory, `DOWNLOAD_CONCURRENCY` at
    /// a time, keeping input order; vanished inputs are skipped.
    fn download(&mut self) -> anyhow::Result<Vec<Input>> {
        let dir = self.work_dir.clone();
        let keys = self.config.files.clone();
        let downloads = futures::stream::iter(keys.into_iter().enumerate().map(|(index, key)| {
            let (storage, dir) = (self.storage.clone(), dir.clone());
            async move {
                // Named by position only: an object's own name may hold what
                // DuckDB reads as a glob (`*`, `?`, `[`) or a quote, or be
                // too long for the local file system once prefixed.
                let local = dir.join(format!("{index:05}.parquet"));
                match storage.download(&key, &local).await {
                    Ok(Some(size)) => Ok(Some((Input { key, local }, size))),
                    Ok(None) => {
                        let _ = tokio::fs::remove_file(&local).await;
                        tracing::info!(file = %key, "input vanished before download; skipping it");
                        Ok(None)
                    }
                    Err(e) => {
                        let _ = tokio::fs::remove_file(&local).await;
                        Err(anyhow::Error::new(e).context(format!("failed to stream {key}")))
                    }
                }
            }
        }))
        .buffered(DOWNLOAD_CONCURRENCY)
        .try_collect::<Vec<_>>();
        let downloaded = self.runtime.block_on(downloads)?;
        let mut inputs = Vec::new();
        for (input, size) in downloaded.into_iter().flatten() {
            self.result.bytes_before += size;
            inputs.push(input);
        }
        Ok(inputs)
    }

    /// Reads `path`'s footer with DuckDB: a file with both magic numbers
    /// and a footer DuckDB cannot read would fail every merge it is in, and
    /// its partition every cycle; it is skipped like any invalid input.
    fn check_footer(&self, path: &Path) -> anyhow::Result<()> {
        let files_sql = file_list(&[path.display().to_string()]);
        self.duckdb
            .query_row(&format!("SELECT count(*) FROM parquet_file_metadata({files_sql})"), [], |row| row.get::<_, i64>(0))
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("unreadable Parquet footer: {}", e.to_string().lines().next().unwrap_or_default()))
    }

    /// The columns of the inputs, by name, as the merge reads them.
    fn input_columns(&self, files_sql: &str) -> anyhow::Result<std::collections::HashSet<String>> {
        let mut statement = self
            .duckdb
            .prepare(&format!("SELECT column_name FROM (DESCRIBE SELECT * FROM read_parquet({files_sql}, union_by_name=true))"))?;
        let columns = statement.query_map([], |row| row.get::<_, String>(0))?.collect::<Result<_, _>>()?;
        Ok(columns)
    }

    /// The configured sort keys the inputs have: a key naming no column of
    /// theirs would fail the merge as an SQL error, in every cycle, so it is
    /// left out with a warning (without the columns, every key is kept).
    fn sort_keys_present(&self, columns: Option<&std::collections::HashSet<String>>) -> Vec<String> {
        let keys = self.config.effective_sort_keys();
        let Some(columns) = columns else { return keys };
        let (present, missing): (Vec<String>, Vec<String>) = keys.into_iter().partition(|k| columns.contains(k));
        if !missing.is_empty() {
            tracing::warn!(partition = %self.config.partition_path, missing = ?missing, "sort keys name no column of the inputs; sorting by the others");
        }
        present
    }

    fn count_rows(&self, files_sql: &str) -> anyhow::Result<u64> {
        let rows: i64 = self
            .duckdb
            .query_row(&format!("SELECT COALESCE(SUM(num_rows), 0)::BIGINT FROM parquet_file_metadata({files_sql})"), [], |row| row.get(0))
            .context("cannot count rows")?;
        Ok(rows as u64)
    }

    /// Runs the merge; returns (input rows, rows the output must have).
    fn merge(&mut self, inputs: &Inputs, output: &Path) -> anyhow::Result<(u64, u64)> {
        let files_sql = inputs.files_sql.as_str();
        let rows_before = self.count_rows(files_sql)?;
        let sort_keys = self.sort_keys_present(inputs.columns.as_ref());
        if self.config.fast_path != Some(false) {
            let local: Vec<(String, &Path)> = inputs.inputs.iter().map(|i| (i.key.clone(), i.local.as_path())).collect();
            match fast_path::plan(&local, &sort_keys, self.config.effective_row_group_size()) {
                Ok(fast_path::FastPath::RowGroupCopy(copy)) => {
                    let started = Instant::now();
                    let rows = copy.write(output).context("row-group copy failed")?;
                    fast_path::check_order(output).context("the row-group copy's output failed its order check")?;
                    anyhow::ensure!(rows == rows_before, "the row-group copy wrote {rows} rows of {rows_before}");
                    self.result.merge_path = fast_path::MergePath::RowGroupCopy;
                    tracing::info!(elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "merged by copying row groups");
                    return Ok((rows_before, rows_before));
                }
                Ok(fast_path::FastPath::StreamingMerge(merge)) => {
                    tracing::info!(reason = %merge.copy_declined, "row-group copy not taken; merging the sorted inputs as streams");
                    self.result.fast_path_declined = Some(merge.copy_declined.clone());
                    let started = Instant::now();
                    let batch_rows = self.config.merge_batch_rows.map_or(streaming_merge::DEFAULT_MERGE_BATCH_ROWS, |n| n as usize);
                    match merge.write(output, batch_rows) {
                        Ok(stats) => {
                            let rows = stats.rows;
                            anyhow::ensure!(rows == rows_before, "the streaming merge wrote {rows} rows of {rows_before}");
                            self.result.merge_path = fast_path::MergePath::StreamingMerge;
                            let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
                            tracing::info!(
                                elapsed_ms = ms(started.elapsed()),
                                read_ms = ms(stats.read),
                                write_ms = ms(stats.write),
                                "merged the sorted inputs as streams"
                            );
                            return Ok((rows_before, rows_before));
                        }
                        // An input not in the order its metadata claims, or
                        // one the merge cannot read: DuckDB merges them (its
                        // output replaces this one), or says what is wrong.
                        Err(why) => {
                            tracing::warn!(reason = %format!("{why:#}"), "streaming merge stopped; merging with DuckDB");
                            self.result.fast_path_declined = Some(format!("{}; {why:#}", merge.copy_declined));
                        }
                    }
                }
                Err(why) => {
                    tracing::info!(reason = %why, "row-group copy not taken; merging with DuckDB");
                    self.result.fast_path_declined = Some(why.0);
                }
            }
        }
        let (tags, dedup_time) = self.dedup_settings(&inputs.local_paths());
        let statements = compaction_statements(
            files_sql,
            &sort_keys,
            &output.display().to_string(),
            &tags,
            dedup_time,
            self.config.effective_row_group_size(),
        );
        let dedup = statements.len() > 1;
        if sort_keys.is_empty() {
            self.duckdb.execute_batch("SET preserve_insertion_order = true")?;
        }
        let mut expected = rows_before;
        for (i, statement) in statements.iter().enumerate() {
            if dedup && i == 1 {
                let key: Vec<String> = tags.iter().map(|t| sql::quote_identifier(t)).chain(["\"time\"".to_owned()]).collect();
                let distinct: i64 = self.duckdb.query_row(
                    &format!("SELECT COUNT(*) FROM (SELECT DISTINCT {} FROM {})", key.join(", "), sql::STAGING_TABLE),
                    [],
                    |row| row.get(0),
                )?;
                expected = distinct as u64;
            }
            let started = Instant::now();
            self.duckdb.execute_batch(statement).with_context(|| "failed to execute compaction query")?;
            tracing::debug!(statement = i, elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "merge statement");
        }
        if dedup {
            let _ = self.duckdb.execute_batch(&format!("DROP TABLE IF EXISTS {}", sql::STAGING_TABLE));
            tracing::info!(rows_before, rows_after = expected, tags = ?tags, dedup_time, "deduplicated");
        }
        Ok((rows_before, expected))
    }

    /// Tag columns (sorted union of every file's `arc:tags`) and the
    /// `arc:dedup_time` marker, read in one query over all inputs. A bad tag
    /// list disables tag dedup (warning).
    fn dedup_settings(&self, local: &[String]) -> (Vec<String>, bool) {
        let query = format!(
            "SELECT decode(key), decode(value) FROM parquet_kv_metadata({}) WHERE decode(key) IN ('arc:tags', 'arc:dedup_time')",
            file_list(local)
        );
        let rows: Result<Vec<(String, String)>, _> =
            self.duckdb.prepare(&query).and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect());
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read Parquet metadata; no dedup for this job");
                return (Vec::new(), false);
            }
        };
        let mut tags = std::collections::BTreeSet::new();
        let mut dedup_time = false;
        for (key, value) in rows {
            if key == "arc:dedup_time" {
                dedup_time |= value == "true";
                continue;
            }
            if value.is_empty() {
                continue;
            }
            for tag in value.split(',') {
                if !is_valid_identifier(tag) {
                    tracing::warn!(tag, "invalid tag column name in parquet metadata; no tag dedup for this job");
                    return (Vec::new(), dedup_time);
                }
                tags.insert(tag.to_owned());
            }
        }
        (tags.into_iter().collect(), dedup_time)
    }

    /// Uploads create-only: one request when small, parts when large.
    async fn upload(&self, local: &Path, key: &str, size: u64, manifest_key: &str) -> anyhow::Result<()> {
        let threshold = self.multipart_threshold();
        // On local disk the output is linked into place whatever its size.
        if size <= threshold || self.storage.links_from(&self.work_dir) {
            let create = async { self.storage.create_from_file(local, key).await.map_err(anyhow::Error::from) };
            return self.upload_step(create).await.with_context(|| format!("cannot create {key}"));
        }
        self.storage.ensure_absent(key).await?;
        if let Some(uploads) = self.storage.tracked_uploads() {
            return self.upload_tracked(uploads, local, key, manifest_key).await;
        }
        let untracked = async {
            let parts = self.storage.upload_in_parts(local, key, threshold, || self.seams.at("mid-upload"));
            parts.await.with_context(|| format!("cannot complete the upload of {key}"))
        };
        self.upload_step(untracked).await
    }

    /// Whether the output goes up as a multipart upload whose id is recorded.
    fn upload_is_tracked(&self) -> bool {
        self.storage.tracked_uploads().is_some() && self.result.bytes_after > self.multipart_threshold()
    }

    fn multipart_threshold(&self) -> u64 {
        self.config.multipart_threshold_bytes.unwrap_or(DEFAULT_MULTIPART_THRESHOLD).max(1)
    }

    /// A multipart upload whose id is recorded beside the manifest before any
    /// part is sent, so that recovery can abort it if the job dies; the
    /// lease is checked again before the upload is completed (the moment the
    /// output appears).
    async fn upload_tracked(&self, uploads: &TrackedUploads, local: &Path, key: &str, manifest_key: &str) -> anyhow::Result<()> {
        let create = async { uploads.create(key).await.map_err(anyhow::Error::from) };
        let id = self.upload_step(create).await.with_context(|| format!("cannot start the upload of {key}"))?;
        self.seams.at("upload-started");
        // The parts and the completion are cut at the lease's deadline; the
        // abort below is not (it only removes what the job staged).
        let parts = match self.upload_step(self.send_parts(uploads, local, key, manifest_key, &id)).await {
            Ok(parts) => parts,
            Err(e) => {
                // Nothing made the object appear: free the parts now rather
                // than leave them to recovery, which may already have come
                // and gone (a job paused here past its lease).
                if let Err(abort) = uploads.abort(key, &id).await {
                    tracing::warn!(output = %key, error = %abort, "cannot abort the unfinished multipart upload");
                } else {
                    let _ = self.storage.delete(&upload_record_key(manifest_key)).await;
                }
                return Err(e);
            }
        };
        let complete = async { uploads.complete(key, &id, parts).await.map_err(anyhow::Error::from) };
        self.upload_step(complete).await.with_context(|| format!("cannot complete the upload of {key}"))
    }

    /// Records the upload's id beside the manifest, then sends the parts
    /// (checking the lease before each, and before the completion).
    async fn send_parts(
        &self,
        uploads: &TrackedUploads,
        local: &Path,
        key: &str,
        manifest_key: &str,
        id: &str,
    ) -> anyhow::Result<Vec<object_store::multipart::PartId>> {
        let id = id.to_owned();
        ManifestStore::new(self.storage.clone()).record_upload(manifest_key, key, &id).await?;
        let before_part = || self.check_lease("uploading a part or completing the upload");
        uploads.put_file_parts(local, key, &id, self.multipart_threshold(), before_part, || self.seams.at("mid-upload")).await
    }

    /// Deletes the inputs (checking the lease before the first and before
    /// the rest); returns those that could not be deleted.
    async fn delete_inputs(&self, keys: &[String]) -> anyhow::Result<Vec<String>> {
        self.check_lease("deleting the inputs")?;
        let between = || {
            self.seams.at("mid-delete");
            self.check_lease("deleting the inputs")
        };
        self.storage.delete_all(keys, between).await
    }
}

/// Wall time per job step, for the log.
struct StepTimer {
    last: Instant,
    steps: Vec<(&'static str, std::time::Duration)>,
}

impl StepTimer {
    fn new() -> Self {
        Self { last: Instant::now(), steps: Vec::new() }
    }

    fn step(&mut self, name: &'static str) {
        let now = Instant::now();
        self.steps.push((name, now - self.last));
        self.last = now;
    }
}

impl std::fmt::Display for StepTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.steps.iter().map(|(n, d)| format!("{n}={:.1}ms", d.as_secs_f64() * 1e3)).collect();
        f.write_str(&parts.join(" "))
    }
}

/// Checks Parquet's magic bytes: at least 12 bytes, `PAR1` at both ends.
pub(crate) fn validate_parquet_file(path: &Path) -> anyhow::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).with_context(|| format!("failed to open file {}", path.display()))?;
    let size = file.metadata()?.len();
    if size < 12 {
        bail!("file too small to be valid parquet ({size} bytes)");
    }
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic)?;
    if &magic != b"PAR1" {
        bail!("invalid parquet magic header: got {:?}", String::from_utf8_lossy(&magic));
    }
    file.seek(SeekFrom::End(-4))?;
    file.read_exact(&mut magic)?;
    if &magic != b"PAR1" {
        bail!("invalid parquet magic footer: got {:?}", String::from_utf8_lossy(&magic));
    }
    Ok(())
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Opens DuckDB with the settings every job shares; a job process opens it
/// before its job arrives (see [`configure_duckdb`]).
pub fn open_duckdb() -> anyhow::Result<duckdb::Connection> {
    let connection = duckdb::Connection::open_in_memory().context("cannot open DuckDB")?;
    // Extensions cannot be downloaded here; fail fast instead of trying.
    connection.execute_batch("SET autoinstall_known_extensions = false; SET autoload_known_extensions = false")?;
    // The probe, the row count, the dedup settings and the merge all read the
    // inputs' footers: read them once.
    connection.execute_batch("SET parquet_metadata_cache = true")?;
    Ok(connection)
}

/// Applies the job's settings: memory limit, threads, and a spill directory
/// under the job's work directory.
pub fn configure_duckdb(connection: &duckdb::Connection, config: &JobConfig) {
    if !config.memory_limit.is_empty()
        && let Err(e) = connection.execute_batch(&format!("SET memory_limit='{}'", config.memory_limit.replace('\'', "''")))
    {
        tracing::warn!(error = %e, "cannot set DuckDB memory_limit");
    }
    if config.threads > 0
        && let Err(e) = connection.execute_batch(&format!("SET threads={}", config.threads))
    {
        tracing::warn!(error = %e, "cannot set DuckDB threads");
    }
    if !config.job_id.is_empty() {
        let spill = work_dir(config).join("duckdb-spill");
        match create_private_dir(&spill) {
            Ok(()) => {
                if let Err(e) =
                    connection.execute_batch(&format!("SET temp_directory='{}'", sql::escape_path(&spill.display().to_string())))
                {
                    tracing::warn!(error = %e, "cannot set DuckDB temp_directory");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot create DuckDB spill directory"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_typed_by_their_source() {
        let duckdb = duckdb::Connection::open_in_memory().unwrap();
        let sql = duckdb.execute_batch("SELECT nope FROM range(1)").unwrap_err();
        assert_eq!(failure_kind(&anyhow::Error::new(sql).context("failed to compact files")), FailureKind::Sql);
        let missing = object_store::Error::NotFound { path: "a".into(), source: "gone".into() };
        assert_eq!(failure_kind(&anyhow::Error::new(missing).context("x")), FailureKind::Denied);
        let full = std::io::Error::new(std::io::ErrorKind::StorageFull, "disk full");
        assert_eq!(failure_kind(&anyhow::Error::new(full)), FailureKind::LocalIo);
        let mismatch = VerificationMismatch { expected: 2, before: 2, after: 1 };
        assert_eq!(failure_kind(&anyhow::Error::new(mismatch).context("y")), FailureKind::Verification);
        let timeout = object_store::Error::Generic { store: "S3", source: "timed out".into() };
        let upload = anyhow::Error::new(timeout).context("failed to upload").context(UnknownOutcome { what: "the upload" });
        assert_eq!(failure_kind(&upload.context("outer")), FailureKind::UnknownOutcome, "not a plain storage failure");
        assert_eq!(failure_kind(&LeaseLost { step: "the commit" }.into()), FailureKind::LeaseLost);
        assert_eq!(failure_kind(&anyhow::anyhow!("Binder Error in plain text")), FailureKind::Unknown, "text alone is not a type");
    }
}
