//! Running a tier's batches: partitions in parallel within the job slots,
//! each under its lease (renewed, with its deadline in a file for the job),
//! its batches in sequence, each in a job process with Arc's halving retry;
//! the standby process; the engine's temp directory; the jobs in flight.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::Utc;

use crate::config::Config;
use crate::report::{ActiveJob, JobRecord};
use crate::temp::EngineDir;
use compactor_job::{Attempt, BatchRunner, BoxedFuture, ChildCommand, JobFailure, RunOutcome, StartedChild, compact_adaptive};
use compactor_job::{FailureKind, JobConfig, JobLease, JobResult, PolicyRef, job_id, job_prefix};
use compactor_job::{ManifestStore, RecoveryManifest, RecoveryOutcome};
use compactor_planning::PlannedBatch;
use compactor_storage::lease::{Lease, Leases};
use compactor_storage::{RequestCost, Storage, StoreDescriptor};

/// Told each batch's record as soon as it is done (the manager counts it,
/// keeps it in the history and publishes it).
pub(crate) type OnRecord<'a> = dyn Fn(JobRecord) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> + Sync + 'a;

/// Runs batches in job processes for one engine.
pub(crate) struct JobRunner {
    storage: Storage,
    child: ChildCommand,
    leases: Leases,
    temp_directory: PathBuf,
    engine_dir: Mutex<Option<Arc<EngineDir>>>,
    active: Mutex<BTreeMap<u64, ActiveJob>>,
    next_active: AtomicU64,
    /// `[compaction] max_concurrent`: every tenant's jobs together.
    job_slots: tokio::sync::Semaphore,
    /// A job process started once a cycle has work, for its first job: it
    /// boots and opens DuckDB while the cycle takes the lease.
    standby: Mutex<Option<StartedChild>>,
    /// Standby processes started so far.
    standby_starts: std::sync::atomic::AtomicU64,
    /// Set on shutdown: no further batch starts.
    stop: Arc<AtomicBool>,
}

impl JobRunner {
    pub(crate) fn new(
        config: &Config,
        storage: Storage,
        child: ChildCommand,
        leases: Leases,
        temp_directory: PathBuf,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let job_slots = tokio::sync::Semaphore::new(config.settings().max_concurrent);
        Self {
            storage,
            child,
            leases,
            temp_directory,
            engine_dir: Mutex::default(),
            active: Mutex::default(),
            next_active: AtomicU64::new(0),
            job_slots,
            standby: Mutex::default(),
            standby_starts: Default::default(),
            stop,
        }
    }

    /// This engine's leases.
    pub(crate) fn leases(&self) -> &Leases {
        &self.leases
    }

    fn engine_id(&self) -> &str {
        self.leases.engine()
    }

    /// `[compaction] temp_directory`, resolved.
    pub(crate) fn temp_directory(&self) -> &Path {
        &self.temp_directory
    }

    /// The batches being compacted now.
    pub(crate) fn active_jobs(&self) -> Vec<ActiveJob> {
        lock(&self.active).values().cloned().collect()
    }

    /// The cycle's standby job process, not started yet: the cycle starts
    /// it once it has a batch to run ([`Standby::warm`]); the returned guard
    /// stops it if no job took it.
    pub(crate) fn standby(&self) -> Standby<'_> {
        Standby {
            slot: &self.standby,
            command: &self.child,
            started: std::sync::atomic::AtomicBool::new(false),
            starts: &self.standby_starts,
        }
    }

    /// Standby processes started so far.
    #[cfg(test)]
    pub(crate) fn standby_starts(&self) -> u64 {
        self.standby_starts.load(Ordering::SeqCst)
    }

    /// This engine's temp directory, created on first use.
    fn engine_dir(&self) -> std::io::Result<Arc<EngineDir>> {
        let mut dir = lock(&self.engine_dir);
        if let Some(dir) = dir.as_ref() {
            return Ok(dir.clone());
        }
        let created = Arc::new(EngineDir::create(&self.temp_directory, self.engine_id())?);
        *dir = Some(created.clone());
        Ok(created)
    }

    /// Runs the batches of one tier: partitions in parallel (bounded), the
    /// batches of a partition in sequence.
    pub(crate) async fn execute(&self, batches: Vec<PlannedBatch>, run: &TierRun<'_>, on_record: &OnRecord<'_>) -> Executed {
        let mut partitions: BTreeMap<String, Vec<PlannedBatch>> = BTreeMap::new();
        for batch in batches {
            partitions.entry(batch.candidate.partition_path.clone()).or_default().push(batch);
        }
        let limit = run.max_concurrent;
        let results: Vec<Executed> = futures::StreamExt::collect(futures::StreamExt::buffer_unordered(
            futures::stream::iter(partitions.into_values().map(|batches| self.execute_partition(batches, run, on_record))),
            limit,
        ))
        .await;
        let mut executed = Executed::default();
        for partition in results {
            executed.records.extend(partition.records);
            executed.skipped_locked += partition.skipped_locked;
            executed.held_back += partition.held_back;
        }
        executed
            .records
            .sort_by(|a, b| (&a.batch.partition_path, a.batch.batch_number).cmp(&(&b.batch.partition_path, b.batch.batch_number)));
        executed
    }

    async fn execute_partition(&self, batches: Vec<PlannedBatch>, run: &TierRun<'_>, on_record: &OnRecord<'_>) -> Executed {
        let Some(first) = batches.first() else { return Executed::default() };
        let locked = Executed { skipped_locked: batches.len(), ..Executed::default() };
        let held_back = Executed { held_back: batches.len(), ..Executed::default() };
        let partition = first.candidate.partition_path.clone();
        let database = first.candidate.database.clone();
        // Every tenant's jobs together stay within [compaction] max_concurrent
        // (the semaphore is never closed).
        let Ok(_slot) = self.job_slots.acquire().await else { return locked };
        if run.expired() {
            tracing::warn!(%partition, "the cycle's deadline ([api] trigger_timeout) passed: the partition waits for the next cycle");
            return held_back;
        }
        if let Some(Err(e)) = run.cluster.map(|cluster| cluster.may_start()) {
            tracing::warn!(%partition, error = %e, "the partition waits for the next cycle");
            return held_back;
        }
        if let Some(step) = self.leases.clock_stepped() {
            tracing::error!(%partition, step_ms = step.num_milliseconds(), "this host's wall clock stepped during the cycle; the partition waits for the next cycle, which checks the clock against the store's again");
            return held_back;
        }
        let lease = match self.leases.try_acquire(&partition).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                tracing::info!(%partition, "partition (or its day, or an hour of it) is being compacted elsewhere; skipping it this cycle");
                return locked;
            }
            Err(e) => {
                tracing::error!(%partition, error = %e, "cannot take the partition's lease; skipping it this cycle");
                return locked;
            }
        };
        let outcome = self.execute_leased(batches, run, &lease, on_record).await;
        let (records, unknown_outcome) = match outcome {
            Ok(done) => done,
            Err(reason) => {
                tracing::error!(%partition, "{reason}; skipping it this cycle");
                self.leases.release(lease).await;
                return locked;
            }
        };
        if unknown_outcome {
            // Keep the partition for one more lease TTL and the store's
            // late-write window, so that the request whose outcome is unknown
            // has landed or failed before anyone (this engine included)
            // recovers it.
            self.leases.release_late(lease).await;
        } else {
            self.leases.release(lease).await;
        }
        if let Ok(dir) = self.engine_dir() {
            remove_partition_temp_dirs(dir.path(), &job_prefix(&database, &partition));
        }
        Executed { records, ..Executed::default() }
    }

    /// The batches of one partition, under its lease: the lease is renewed
    /// meanwhile, and the files of manifests written since the plan are
    /// dropped first. Returns the records and whether a job's outcome is
    /// unknown (then the rest of the partition waits for recovery).
    async fn execute_leased(
        &self,
        batches: Vec<PlannedBatch>,
        run: &TierRun<'_>,
        lease: &Lease,
        on_record: &OnRecord<'_>,
    ) -> Result<(Vec<JobRecord>, bool), String> {
        let engine_dir = self.engine_dir().map_err(|e| format!("cannot create the engine's temp directory: {e}"))?;
        let deadline_file = engine_dir.path().join(format!("{}.deadline", lease.id()));
        let _renewal = self.leases.keep_renewed(lease, Some(deadline_file.clone()));
        // The plan's snapshot of held files may predate another job's
        // manifest; under the lease, look again.
        let held = ManifestStore::new(self.storage.clone()).held_files().await.map_err(|e| e.to_string())?;
        if let Some(manifest) = held.blocked_by(lease.partition()) {
            return Err(format!("recovery manifest {manifest} cannot be read now"));
        }
        let mut records = Vec::new();
        for mut batch in batches {
            if self.stop.load(Ordering::SeqCst) || run.expired() {
                break;
            }
            let planned = batch.candidate.files.len();
            batch.candidate.files.retain(|f| !held.contains(f));
            if batch.candidate.files.len() < compactor_job::MIN_BATCH_FILES {
                if planned > 0 {
                    tracing::info!(partition = %lease.partition(), "the batch's files are held by another job's manifest now; skipping it");
                }
                continue;
            }
            let job = LeasedJob { lease, deadline_file: &deadline_file, engine_dir: engine_dir.path() };
            let (record, unknown_outcome) = self.execute_batch(&batch, run, &job).await;
            on_record(record.clone()).await;
            records.push(record);
            if unknown_outcome {
                return Ok((records, true));
            }
        }
        Ok((records, false))
    }

    /// One batch, its log lines (the engine's and, re-emitted, its job
    /// processes') carrying the cycle, tier and partition.
    async fn execute_batch(&self, batch: &PlannedBatch, run: &TierRun<'_>, job: &LeasedJob<'_>) -> (JobRecord, bool) {
        let candidate = &batch.candidate;
        let span = tracing::info_span!(
            "batch",
            cycle_id = run.cycle_id,
            tier = %candidate.tier,
            partition = %candidate.partition_path,
            batch = candidate.batch_number
        );
        tracing::Instrument::instrument(self.execute_batch_in_span(batch, run, job), span).await
    }

    async fn execute_batch_in_span(&self, batch: &PlannedBatch, run: &TierRun<'_>, job: &LeasedJob<'_>) -> (JobRecord, bool) {
        let candidate = &batch.candidate;
        let (descriptor, suffix) = (run.descriptor, run.suffix);
        let lease = job.lease;
        let started = Instant::now();
        let started_at = Utc::now();
        let _active = ActiveGuard::register(
            &self.active,
            self.next_active.fetch_add(1, Ordering::Relaxed),
            ActiveJob { cycle_id: run.cycle_id, batch: batch.reference(), files: candidate.files.len(), bytes: batch.bytes, started_at },
        );
        let template = JobConfig {
            database: candidate.database.clone(),
            measurement: candidate.measurement.clone(),
            partition_path: candidate.partition_path.clone(),
            files: Vec::new(),
            tier: candidate.tier.clone(),
            temp_directory: job.engine_dir.display().to_string(),
            batch_number: candidate.batch_number,
            parent_finalizes_manifest: false,
            sort_keys: Some(run.config.compaction.sort_keys_for(&candidate.measurement)),
            memory_limit: run.config.compaction.memory_limit.clone(),
            threads: run.config.settings().threads,
            storage_type: descriptor.storage_type().to_owned(),
            storage_config: descriptor.storage_config(),
            job_id: String::new(),
            // Cluster mode: the job hands its outputs and deleted sources to
            // the completion watcher, for the cluster file manifest.
            completion_dir: run
                .cluster
                .map(|_| crate::cluster::completion_dir(&self.temp_directory).display().to_string())
                .unwrap_or_default(),
            partition_time: candidate.partition_time,
            output_suffix: suffix.map(str::to_owned),
            multipart_threshold_bytes: Some(run.config.settings().multipart_threshold),
            row_group_size: Some(run.config.compaction.row_group_size as u64),
            lease: Some(JobLease {
                engine: self.engine_id().to_owned(),
                id: lease.id().to_owned(),
                deadline_file: job.deadline_file.display().to_string(),
            }),
            policy: Some(run.policy.clone()),
            fast_path: Some(run.config.compaction.fast_path),
            merge_batch_rows: Some(run.config.compaction.merge_batch_rows as u64),
        };
        let attempts = LeasedAttempts { runner: self, template, lease };
        let (attempts, outcome) = compact_adaptive(&attempts, candidate.files.clone()).await;
        let results: Vec<&JobResult> = attempts.iter().filter_map(Attempt::result).collect();
        let succeeded: Vec<&JobResult> = results.iter().copied().filter(|r| r.success).collect();
        let record = JobRecord {
            batch: batch.reference(),
            files_in: candidate.files.len(),
            files_compacted: succeeded.iter().map(|r| r.files_compacted).sum(),
            files_out: succeeded.iter().filter(|r| r.files_compacted > 0).count(),
            bytes_before: succeeded.iter().map(|r| r.bytes_before).sum(),
            bytes_after: succeeded.iter().map(|r| r.bytes_after).sum(),
            rows_before: succeeded.iter().map(|r| r.rows_before).sum(),
            rows_after: succeeded.iter().map(|r| r.rows_after).sum(),
            attempts: attempts.len(),
            success: outcome.is_ok(),
            skipped: skipped_reason(&succeeded).filter(|_| outcome.is_ok()),
            path: succeeded.iter().find(|r| r.files_compacted > 0).map(|r| r.merge_path).unwrap_or_default(),
            failure_kind: outcome.as_ref().err().map(|e| e.kind),
            error: outcome.err().map(|e| e.message),
            skipped_inputs: results.iter().flat_map(|r| r.skipped_inputs.clone()).collect(),
            duration_ms: started.elapsed().as_millis() as u64,
            peak_job_rss_bytes: results.iter().map(|r| r.peak_rss_bytes).max().unwrap_or(0),
            requests: results.iter().fold(RequestCost::default(), |total, r| total + r.requests),
            job_id: attempts.first().map(|a| a.job_id.clone()).unwrap_or_default(),
            cycle_id: run.cycle_id,
            engine: self.engine_id().to_owned(),
            policy: run.policy.name.clone(),
            policy_hash: run.policy.content_hash.clone(),
            started_at,
            finished_at: Utc::now(),
        };
        (record, attempts.iter().any(leaves_writes_in_flight))
    }
}

/// Why a batch whose attempts all succeeded merged nothing, if none did.
fn skipped_reason(succeeded: &[&JobResult]) -> Option<String> {
    if succeeded.iter().any(|r| r.files_compacted > 0) {
        return None;
    }
    succeeded.iter().find_map(|r| r.skipped.clone())
}

/// Whether `attempt` may have left writes that have not landed yet: an
/// upload or commit whose outcome is unknown, or a job that lost its lease
/// (it may have sent writes before its deadline). Its partition is then
/// released late, and recovery resolves it after the claim has expired.
fn leaves_writes_in_flight(attempt: &Attempt) -> bool {
    let Err(failure) = &attempt.outcome else { return false };
    // A job the lease was lost before (no result: it never started) sent
    // nothing.
    failure.kind == FailureKind::UnknownOutcome || (failure.kind == FailureKind::LeaseLost && failure.result.is_some())
}

/// What running a tier's batches did.
#[derive(Debug, Default)]
pub(crate) struct Executed {
    /// One record per batch run.
    pub(crate) records: Vec<JobRecord>,
    /// Batches skipped because another compaction held their partition.
    pub(crate) skipped_locked: usize,
    /// Batches not started because the cycle's deadline passed or this node
    /// may no longer start work (cluster mode).
    pub(crate) held_back: usize,
}

/// What the batches of one tier share in a cycle.
pub(crate) struct TierRun<'a> {
    /// The configuration of the cycle (a reload applies from the next).
    pub(crate) config: &'a Config,
    pub(crate) cycle_id: u64,
    pub(crate) descriptor: &'a StoreDescriptor,
    pub(crate) suffix: Option<&'a str>,
    pub(crate) policy: PolicyRef,
    /// The tenant's partitions at once.
    pub(crate) max_concurrent: usize,
    /// No batch starts after it ([`CycleOptions::deadline`]).
    pub(crate) deadline: Option<std::time::Instant>,
    /// In cluster mode: no batch starts while the node is cut off from etcd.
    pub(crate) cluster: Option<&'a compactor_cluster::Cluster>,
}

impl TierRun<'_> {
    /// Whether the cycle's deadline has passed: no further batch starts.
    pub(crate) fn expired(&self) -> bool {
        self.deadline.is_some_and(|deadline| std::time::Instant::now() >= deadline)
    }
}

/// Keeps a batch in [`JobRunner::active_jobs`] while it runs.
struct ActiveGuard<'a> {
    active: &'a Mutex<BTreeMap<u64, ActiveJob>>,
    id: u64,
}

impl<'a> ActiveGuard<'a> {
    fn register(active: &'a Mutex<BTreeMap<u64, ActiveJob>>, id: u64, job: ActiveJob) -> Self {
        lock(active).insert(id, job);
        Self { active, id }
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        lock(self.active).remove(&self.id);
    }
}

/// What a job needs of its partition's lease.
struct LeasedJob<'a> {
    lease: &'a Lease,
    deadline_file: &'a Path,
    engine_dir: &'a Path,
}

/// The cycle's standby job process: started when the cycle has work (an
/// idle cycle starts no process), and stopped with the cycle if no job
/// took it.
pub(crate) struct Standby<'m> {
    slot: &'m Mutex<Option<StartedChild>>,
    command: &'m ChildCommand,
    started: std::sync::atomic::AtomicBool,
    starts: &'m std::sync::atomic::AtomicU64,
}

impl Standby<'_> {
    /// Starts the process (once per cycle), to open DuckDB while the batches
    /// are leased; without one, the first job starts its own, as the others do.
    pub(crate) fn warm(&self) {
        if !self.started.swap(true, Ordering::SeqCst) {
            self.starts.fetch_add(1, Ordering::SeqCst);
            *lock(self.slot) = self.command.start().ok();
        }
    }
}

impl Drop for Standby<'_> {
    fn drop(&mut self) {
        // Closing its stdin ends it; `kill_on_drop` makes sure.
        lock(self.slot).take();
    }
}

fn remove_partition_temp_dirs(temp_directory: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(temp_directory) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The jobs of one batch in its leased partition, for the halving retry: each
/// runs only while the lease holds, and a failed one is settled before the
/// retry halves it.
struct LeasedAttempts<'a> {
    runner: &'a JobRunner,
    template: JobConfig,
    lease: &'a Lease,
}

impl BatchRunner for LeasedAttempts<'_> {
    fn run(&self, files: Vec<String>) -> BoxedFuture<'_, RunOutcome> {
        let t = &self.template;
        let config = JobConfig { files, job_id: job_id(&t.database, &t.partition_path, Utc::now(), t.batch_number), ..t.clone() };
        Box::pin(async move {
            if !self.lease.is_valid() {
                let mut failure = JobFailure::new(FailureKind::LeaseLost, "the partition's lease was lost; the job was not started".into());
                failure.permanent = true;
                return (config.job_id, Err(failure));
            }
            let standby = lock(&self.runner.standby).take().and_then(|mut c| c.is_running().then_some(c));
            let outcome = match standby {
                Some(started) => started.run(&config).await,
                None => self.runner.child.run(&config).await,
            };
            (config.job_id, outcome)
        })
    }

    fn settle<'s>(
        &'s self,
        job_id: &'s str,
        files: &'s [String],
        mut failure: JobFailure,
    ) -> BoxedFuture<'s, Result<JobResult, JobFailure>> {
        Box::pin(async move {
            match failure.kind {
                // Recovery resolves these once the lease, released late, has
                // expired (see `leaves_writes_in_flight`).
                FailureKind::UnknownOutcome | FailureKind::LeaseLost => failure.permanent = true,
                _ if !self.lease.is_valid() => {
                    failure.message = format!("{}; the partition's lease was lost, so recovery resolves the job", failure.message);
                    failure.permanent = true;
                }
                _ => {
                    let t = &self.template;
                    let key = RecoveryManifest::key_for(&t.tier, &t.database, &t.partition_path, job_id);
                    let manifests = ManifestStore::new(self.runner.storage.clone());
                    match manifests.recover_job(&key, self.lease, self.runner.engine_id()).await {
                        Ok(RecoveryOutcome::Finished) => {
                            tracing::warn!(%job_id, error = %failure, "the job died after its upload; recovery finished it");
                            return Ok(JobResult { success: true, files_compacted: files.len(), ..Default::default() });
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::error!(%job_id, error = %e, "cannot resolve the failed job's manifest; not retrying");
                            failure.message = format!("{}; its recovery manifest could not be resolved: {e}", failure.message);
                            failure.permanent = true;
                        }
                    }
                }
            }
            Err(failure)
        })
    }
}
