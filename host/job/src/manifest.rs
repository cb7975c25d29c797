//! Arc-compatible recovery manifests under `_compaction_state/`, the job
//! outcome that fences them, and recovery (the ownership model in
//! `docs/architecture.md`).
//!
//! A job writes its manifest before it uploads; the files a manifest holds
//! (its inputs and its output) are excluded from new candidates until the
//! job is finished or rolled back. Whether a job's output replaces its
//! inputs is decided exactly once, by whoever first creates the job's
//! outcome object (`{manifest}.outcome`, create-only): the job itself
//! (`committed`), or recovery under the partition's lease (`committed` when
//! the output is complete, `aborted` otherwise). An aborted outcome stays for
//! [`STALE_AFTER`] as a fence: should the dead job's upload land after all,
//! its output is never planned and the next recovery deletes it.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use compactor_model::HeldFiles;
use compactor_storage::lease::{Lease, Leases};
use compactor_storage::{COMPACTION_STATE_ROOT, Storage, StorageError};

/// Who wrote a manifest: the engine and the lease its job held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestOwner {
    /// The engine's id.
    pub engine: String,
    /// The id of the lease (claim) the job held.
    pub lease: String,
}

/// A recovery manifest, field for field as Arc writes it, plus its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryManifest {
    /// Storage key of the job's output.
    pub output_path: String,
    /// Expected size of the output, in bytes.
    pub output_size: i64,
    /// Storage keys of the job's validated inputs.
    pub input_files: Vec<String>,
    /// Database name.
    pub database: String,
    /// Measurement name.
    pub measurement: String,
    /// Partition key prefix including the database.
    pub partition_path: String,
    /// Tier name.
    pub tier: String,
    /// Always `pending`.
    pub status: String,
    /// When the manifest was written.
    pub created_at: DateTime<Utc>,
    /// The job's id.
    pub job_id: String,
    /// The engine and lease of the job (absent in Arc's manifests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<ManifestOwner>,
    /// The policy build that chose the inputs (absent in Arc's manifests,
    /// which Arc ignores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::PolicyRef>,
}

/// Longest manifest file name, leaving room for `.quarantined` within the
/// 255 bytes most file systems allow.
const MAX_NAME_BYTES: usize = 240;

impl RecoveryManifest {
    /// `_compaction_state/{tier}/{database}/{partition_path with "/"→"_"}_{job_id}.json`.
    pub fn key(&self) -> String {
        Self::key_for(&self.tier, &self.database, &self.partition_path, &self.job_id)
    }

    /// The key of the manifest a job would write. A name longer than 240
    /// bytes keeps its start and ends in a hash of the whole.
    pub fn key_for(tier: &str, database: &str, partition_path: &str, job_id: &str) -> String {
        let name = format!("{}_{job_id}", partition_path.replace('/', "_"));
        let name = if name.len() + ".json".len() <= MAX_NAME_BYTES {
            name
        } else {
            use sha2::Digest;
            let digest = hex::encode(&sha2::Sha256::digest(name.as_bytes())[..12]);
            let mut cut = MAX_NAME_BYTES - ".json".len() - digest.len() - 1;
            while !name.is_char_boundary(cut) {
                cut -= 1;
            }
            format!("{}-{digest}", &name[..cut])
        };
        format!("{COMPACTION_STATE_ROOT}/{tier}/{database}/{name}.json")
    }
}

/// The key of the outcome object of the manifest at `manifest_key`.
pub(crate) fn outcome_key(manifest_key: &str) -> String {
    format!("{}.outcome", manifest_key.strip_suffix(".json").unwrap_or(manifest_key))
}

/// The key of the record of the job's multipart upload (S3), which lets
/// recovery abort it.
pub(crate) fn upload_record_key(manifest_key: &str) -> String {
    format!("{}.multipart", manifest_key.strip_suffix(".json").unwrap_or(manifest_key))
}

/// A multipart upload a job started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct UploadRecord {
    output_path: String,
    upload_id: String,
}

/// Whether a job's output replaces its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The output replaces the inputs: they are deleted.
    Committed,
    /// The output is void: deleted wherever it appears; the inputs stay.
    Aborted,
}

/// A job's outcome, written once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    /// The decision.
    pub outcome: Outcome,
    /// The engine that took it.
    pub by: String,
    /// When.
    pub at: DateTime<Utc>,
    /// The job's output key.
    pub output_path: String,
}

/// A recovery-manifest error, naming the manifest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Listing `_compaction_state/` failed; callers must not treat this as
    /// "no manifests".
    #[error("failed to list manifests: {0}")]
    List(#[source] StorageError),
    /// Reading one manifest failed.
    #[error("failed to read manifest {key}: {source}")]
    Read {
        /// The manifest key.
        key: String,
        /// The cause.
        source: StorageError,
    },
    /// A manifest is not valid JSON of the expected shape.
    #[error("failed to unmarshal manifest {key}: {source}")]
    Parse {
        /// The manifest key.
        key: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// Writing a manifest failed.
    #[error("failed to write manifest to {key}: {source}")]
    Write {
        /// The manifest key.
        key: String,
        /// The cause.
        source: StorageError,
    },
    /// Deleting a manifest failed.
    #[error("failed to delete manifest {key}: {source}")]
    Delete {
        /// The manifest key.
        key: String,
        /// The cause.
        source: StorageError,
    },
    /// The cluster file manifest could not be read.
    #[error("cannot read the cluster file manifest: {0}")]
    Registry(String),
    /// Jobs kept starting or finishing while a listing ran.
    #[error("jobs kept starting or finishing during {attempts} listings; try again")]
    Unstable {
        /// Listings tried.
        attempts: usize,
    },
}

/// What `_compaction_state/` holds, from one listing: manifest keys,
/// outcome keys and quarantined manifests.
#[derive(Debug, Default, PartialEq, Eq)]
struct StateListing {
    manifests: Vec<String>,
    outcomes: HashSet<String>,
    quarantined: Vec<String>,
    upload_records: Vec<String>,
}

/// Reads and writes the recovery manifests of one store.
#[derive(Debug, Clone)]
pub struct ManifestStore {
    storage: Storage,
}

impl ManifestStore {
    /// The manifests of `storage`.
    pub fn new(storage: Storage) -> Self {
        Self { storage }
    }

    /// Keys of every manifest (`.json` under `_compaction_state/`, except
    /// its `leases/` and `history/`), sorted. A missing directory is an empty list; a
    /// listing error propagates.
    pub async fn list(&self) -> Result<Vec<String>, ManifestError> {
        Ok(self.list_state().await?.manifests)
    }

    async fn list_state(&self) -> Result<StateListing, ManifestError> {
        let mut listing = StateListing::default();
        let root = format!("{COMPACTION_STATE_ROOT}/");
        let mut keys: Vec<String> = Vec::new();
        // Leases (one per day of a measurement) and history entries (up to
        // `[history] max_records`) are many and never manifests: list around
        // them, so that every plan and every partition's second look stays
        // one short listing per tier.
        let top = self.storage.list_level(&root).await.map_err(ManifestError::List)?;
        keys.extend(top.objects);
        for dir in top.dirs.iter().filter(|d| !matches!(d.as_str(), "leases" | "history")) {
            keys.extend(self.storage.list(&format!("{root}{dir}/")).await.map_err(ManifestError::List)?.into_iter().map(|f| f.key));
        }
        keys.sort();
        for key in keys {
            if key.ends_with(".json") {
                listing.manifests.push(key);
            } else if key.ends_with(".outcome") {
                listing.outcomes.insert(key);
            } else if key.ends_with(".json.quarantined") {
                listing.quarantined.push(key);
            } else if key.ends_with(".multipart") {
                listing.upload_records.push(key);
            }
        }
        Ok(listing)
    }

    /// Reads the manifest at `key`.
    pub async fn read(&self, key: &str) -> Result<RecoveryManifest, ManifestError> {
        let bytes = self.storage.read(key).await.map_err(|source| ManifestError::Read { key: key.to_owned(), source })?;
        serde_json::from_slice(&bytes).map_err(|source| ManifestError::Parse { key: key.to_owned(), source })
    }

    /// Writes `manifest` (pretty JSON, 2-space indent, create-only: a job
    /// never replaces another's) durably, and returns its key.
    pub async fn write(&self, manifest: &RecoveryManifest) -> Result<String, ManifestError> {
        let key = manifest.key();
        let json = serde_json::to_vec_pretty(manifest).map_err(|source| ManifestError::Parse { key: key.clone(), source })?;
        let write_error = |source| ManifestError::Write { key: key.clone(), source };
        if !self.storage.swap(&key, None, json).await.map_err(write_error)? {
            let exists = object_store::Error::AlreadyExists { path: key.clone(), source: "a manifest with this job id exists".into() };
            return Err(write_error(self.storage.object_error("create", &key, exists)));
        }
        Ok(key)
    }

    /// Deletes the manifest at `key`.
    pub async fn delete(&self, key: &str) -> Result<(), ManifestError> {
        self.storage.delete(key).await.map_err(|source| ManifestError::Delete { key: key.to_owned(), source })
    }

    /// The outcome of the job of the manifest at `manifest_key`, if decided.
    pub async fn outcome(&self, manifest_key: &str) -> Result<Option<OutcomeRecord>, StorageError> {
        let key = outcome_key(manifest_key);
        match self.storage.read_versioned(&key).await? {
            // An outcome that cannot be parsed still says "decided": aborted
            // is the reading that never deletes an input.
            Some((bytes, _)) => Ok(Some(serde_json::from_slice(&bytes).unwrap_or_else(|_| OutcomeRecord {
                outcome: Outcome::Aborted,
                by: "unknown".into(),
                at: Utc::now(),
                output_path: String::new(),
            }))),
            None => Ok(None),
        }
    }

    /// Decides the outcome of the job of `manifest`, unless it is decided
    /// already; returns the decision that stands.
    pub async fn decide(&self, manifest_key: &str, output_path: &str, outcome: Outcome, by: &str) -> Result<OutcomeRecord, StorageError> {
        let key = outcome_key(manifest_key);
        let record = OutcomeRecord { outcome, by: by.to_owned(), at: Utc::now(), output_path: output_path.to_owned() };
        let body = serde_json::to_vec(&record).unwrap_or_default();
        if self.storage.swap(&key, None, body).await? {
            return Ok(record);
        }
        match self.outcome(manifest_key).await? {
            Some(standing) => Ok(standing),
            // Created and removed in between: only a finished job removes it.
            None => Ok(OutcomeRecord { outcome: Outcome::Committed, ..record }),
        }
    }

    /// Records the multipart upload `upload_id` of `output_path` by the job
    /// of the manifest at `manifest_key`, before any part is sent.
    pub(crate) async fn record_upload(&self, manifest_key: &str, output_path: &str, upload_id: &str) -> Result<(), StorageError> {
        let record = UploadRecord { output_path: output_path.to_owned(), upload_id: upload_id.to_owned() };
        self.storage.write(&upload_record_key(manifest_key), serde_json::to_vec(&record).unwrap_or_default()).await
    }

    /// Aborts the recorded multipart upload of the manifest at
    /// `manifest_key`, if any, and removes the record.
    async fn abort_recorded_upload(&self, manifest_key: &str) -> Result<(), StorageError> {
        let key = upload_record_key(manifest_key);
        let Some((bytes, _)) = self.storage.read_versioned(&key).await? else { return Ok(()) };
        if let (Ok(record), Some(uploads)) = (serde_json::from_slice::<UploadRecord>(&bytes), self.storage.tracked_uploads()) {
            uploads
                .abort(&record.output_path, &record.upload_id)
                .await
                .map_err(|source| self.storage.object_error("abort the multipart upload of", &record.output_path, source))?;
            tracing::info!(output = %record.output_path, "aborted the dead job's multipart upload");
        }
        self.storage.delete(&key).await
    }

    /// Removes a finished job's upload record (when `upload_recorded`),
    /// manifest, then outcome (in that order: a manifest without an outcome
    /// is decided again from the store).
    pub async fn finish(&self, manifest_key: &str, upload_recorded: bool) -> Result<(), ManifestError> {
        if upload_recorded {
            let record = upload_record_key(manifest_key);
            self.storage.delete(&record).await.map_err(|source| ManifestError::Delete { key: record, source })?;
        }
        self.delete(manifest_key).await?;
        let outcome = outcome_key(manifest_key);
        self.storage.delete(&outcome).await.map_err(|source| ManifestError::Delete { key: outcome, source })
    }

    /// Every file no new job may take: the inputs and output of every
    /// pending manifest, the output of every aborted job (its fence), and
    /// every `*.parquet` name in a quarantined manifest. A manifest that
    /// vanished since the listing holds nothing; one that cannot be read
    /// right now blocks the partitions its name mentions
    /// ([`HeldFiles::blocked_by`]); a listing error propagates, so that
    /// callers fail safe.
    pub async fn held_files(&self) -> Result<HeldFiles, ManifestError> {
        let state = self.list_state().await?;
        let mut held = HeldFiles::default();
        for key in &state.manifests {
            match self.read(key).await {
                Ok(manifest) => {
                    let aborted = self.listed_outcome(&state, key).await == Some(Outcome::Aborted);
                    if !aborted {
                        held.hold_all(manifest.input_files);
                    }
                    held.hold(manifest.output_path);
                }
                Err(ManifestError::Read { source, .. })
                    if matches!(source.object_store_error(), Some(object_store::Error::NotFound { .. })) =>
                {
                    // Resolved since the listing. If recovery aborted it, its
                    // outcome (created before the manifest was deleted, so
                    // maybe after the listing) is the fence for an upload
                    // that may still land.
                    if let Ok(Some(OutcomeRecord { outcome: Outcome::Aborted, output_path, .. })) = self.outcome(key).await {
                        held.hold_void_output(output_path);
                    }
                }
                Err(e) => {
                    tracing::warn!(manifest = %key, error = %e, "cannot read a recovery manifest now; its partitions wait");
                    held.block(key.rsplit('/').next().unwrap_or(key).to_owned());
                }
            }
        }
        for (_, record) in self.orphan_outcomes(&state).await {
            if record.outcome == Outcome::Aborted {
                held.hold_void_output(record.output_path);
            }
        }
        for key in &state.quarantined {
            if let Ok(bytes) = self.storage.read(key).await {
                held.hold_all(parquet_names(&String::from_utf8_lossy(&bytes)));
            }
        }
        Ok(held)
    }
}

/// What a reader may not count in a listing of the lake, by the one
/// visibility rule (Arc #638, #844): a job's output counts only once its
/// outcome is committed, and its inputs stop counting at that same moment.
#[derive(Debug, Default)]
pub struct Visibility {
    /// Keys a reader must not count: outputs of jobs not committed (in
    /// flight, dead or aborted) and inputs of committed jobs (deletes
    /// pending).
    pub hidden: HashSet<String>,
    /// Manifests that could not be read or parsed: the partitions their
    /// names or contents mention cannot be answered exactly.
    pub unsure: Vec<String>,
    /// Outputs of committed jobs whose manifests are still there: they
    /// count, whether or not a listing (the cluster file manifest, which
    /// learns of them a moment later) has them yet.
    pub committed_outputs: Vec<String>,
}

impl ManifestStore {
    /// The keys hidden from readers now, read so that no job starts,
    /// commits or finishes while the rule is read and `listing` runs: the
    /// state of `_compaction_state/` is listed before the rule and after the
    /// listing, and all are taken again while the two differ (at most
    /// `attempts` times). Returns
    /// what `listing` returned with the rule that applies to it.
    ///
    /// With `partition`, the claims covering it are compared too: a job
    /// that started and finished whole while the listing ran (its manifest
    /// and outcome come and go, so the state looks the same) changed them,
    /// and a listing that saw neither its inputs nor its output is taken
    /// again.
    pub async fn visible<T, F, Fut>(
        &self,
        attempts: usize,
        partition: Option<&str>,
        mut listing: F,
    ) -> Result<(T, Visibility), ManifestError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ManifestError>>,
    {
        let claims = || async {
            match partition {
                Some(partition) => compactor_storage::lease::claims_generation(&self.storage, partition).await.map_err(ManifestError::List),
                None => Ok(0),
            }
        };
        for attempt in 0..attempts.max(1) {
            if attempt > 0 {
                // Jobs are busy here: give the next look a moment, growing.
                tokio::time::sleep(std::time::Duration::from_millis(5 * (attempt as u64).min(20))).await;
            }
            let before = (claims().await?, self.list_state().await?);
            // The manifests and outcomes are read between the two looks at
            // the state, so that the rule holds for the listing only if the
            // state stood still throughout: read after the second look, a
            // job finishing between the read of its manifest and of its
            // outcome would hide its committed output.
            let visibility = self.visibility(&before.1).await?;
            let listed = listing().await?;
            let after = (claims().await?, self.list_state().await?);
            if after == before {
                return Ok((listed, visibility));
            }
        }
        Err(ManifestError::Unstable { attempts })
    }

    /// The keys of the recovery manifests in the store (jobs running, or
    /// dead and not yet recovered); [`RecoveryManifest::key_for`] names a
    /// job's.
    pub async fn manifest_keys(&self) -> Result<Vec<String>, ManifestError> {
        Ok(self.list_state().await?.manifests)
    }

    /// The decided outcome of the manifest at `key`, when `state` listed
    /// one and it can be read now.
    async fn listed_outcome(&self, state: &StateListing, key: &str) -> Option<Outcome> {
        if !state.outcomes.contains(&outcome_key(key)) {
            return None;
        }
        self.outcome(key).await.ok().flatten().map(|record| record.outcome)
    }

    async fn visibility(&self, state: &StateListing) -> Result<Visibility, ManifestError> {
        let mut visibility = Visibility::default();
        for key in &state.manifests {
            match self.read(key).await {
                Ok(manifest) => {
                    let committed = self.listed_outcome(state, key).await == Some(Outcome::Committed);
                    if committed {
                        visibility.hidden.extend(manifest.input_files);
                        visibility.committed_outputs.push(manifest.output_path);
                    } else {
                        visibility.hidden.insert(manifest.output_path);
                    }
                }
                // Resolved since the state was listed: the caller's second
                // look sees the change and asks again; hide nothing.
                Err(ManifestError::Read { source, .. })
                    if matches!(source.object_store_error(), Some(object_store::Error::NotFound { .. })) => {}
                Err(_) => visibility.unsure.push(key.clone()),
            }
        }
        for (_, record) in self.orphan_outcomes(state).await {
            if record.outcome == Outcome::Aborted {
                visibility.hidden.insert(record.output_path);
            }
        }
        visibility.unsure.extend(state.quarantined.iter().cloned());
        Ok(visibility)
    }
}

/// Every quoted string ending in `.parquet` in `text` (what a quarantined,
/// unparseable manifest may still hold).
fn parquet_names(text: &str) -> Vec<String> {
    text.split('"').filter(|s| s.ends_with(".parquet") && !s.contains('\n')).map(str::to_owned).collect()
}

/// Manifests older than this are logged as stale (and still processed, as
/// in Arc); aborted outcomes are kept this long as fences.
pub(crate) const STALE_AFTER: chrono::Duration = chrono::Duration::days(7);

/// What recovery did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecoveryReport {
    /// Manifests resolved and deleted.
    pub recovered: usize,
    /// Jobs finished: output kept, inputs deleted.
    pub completed: usize,
    /// Jobs rolled back: output missing or partial, inputs untouched.
    pub rolled_back: usize,
    /// Manifests left alone because their owner's lease is live.
    pub live: usize,
    /// Unparseable manifests moved aside to `{key}.quarantined`.
    pub quarantined: Vec<String>,
    /// Outputs of aborted jobs that landed late and were deleted.
    pub late_outputs_deleted: usize,
    /// Manifests kept for the next attempt, with the reason.
    pub failed: Vec<(String, String)>,
}

/// What recovering one job's manifest did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryOutcome {
    /// There was no manifest: nothing to resolve.
    NoManifest,
    /// The output was complete: the inputs and the manifest are deleted.
    Finished,
    /// The output was missing or partial: it is deleted, the inputs stay.
    RolledBack,
    /// The manifest could not be parsed and was moved aside.
    Quarantined,
}

/// Why a manifest was kept for the next attempt.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// A storage request failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The manifest itself could not be deleted.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Some inputs of a finished job could not be deleted.
    #[error("failed to delete {failed} of {total} input files")]
    InputsNotDeleted {
        /// Inputs left.
        failed: usize,
        /// Inputs of the job.
        total: usize,
    },
    /// The job committed, but its output is not in the store.
    #[error("the job committed but its output {0} is missing or incomplete; inputs kept, manifest kept for an operator")]
    CommittedOutputMissing(String),
    /// The lease that recovery needs is no longer held.
    #[error("lost the partition's lease; left for the next recovery")]
    LeaseLost,
    /// The observer of consumed inputs failed.
    #[error("receipt marking incomplete; keeping manifest for re-fire: {0}")]
    Receipt(String),
}

/// Told a finished job's inputs; an error keeps the manifest.
pub(crate) type ConsumedInputsObserver<'a> = dyn Fn(&[String]) -> Result<(), String> + Sync + 'a;

/// Hooks recovery calls; both optional. Kept for cluster mode (issue 22):
/// the completion watcher's `ManifestBridge` marks a recovered job's outputs
/// and inputs in the cluster's file registry through them, as Arc's
/// receipts do; standalone recovery passes none.
#[derive(Default)]
pub struct RecoveryObservers<'a> {
    /// Called with each output that recovery keeps, before inputs are deleted.
    pub kept_output: Option<&'a (dyn Fn(&str) + Sync)>,
    /// Called with a finished job's inputs; an error keeps the manifest so
    /// the call is repeated next time.
    pub consumed_inputs: Option<&'a ConsumedInputsObserver<'a>>,
}

impl ManifestStore {
    /// Finishes or rolls back every job that left a recovery manifest and
    /// whose owner's lease is gone: recovery takes the lease of the
    /// manifest's partition first, and a manifest whose partition it cannot
    /// take is left alone (its files stay held). Under the lease:
    ///
    /// - outcome `committed`, or none and the output complete (recorded
    ///   size, Parquet footer) → the inputs are deleted (missing ones are
    ///   fine), then the manifest;
    /// - otherwise → outcome `aborted`, the output (partial, or landed late)
    ///   and staged parts are deleted, the inputs stay, the manifest goes;
    /// - a manifest that cannot be parsed → moved aside to
    ///   `{key}.quarantined`.
    ///
    /// Every row therefore exists exactly once afterwards. Aborted outcomes
    /// are kept for [`STALE_AFTER`]; an output that appears under one is
    /// deleted. A listing error is returned; per-manifest failures keep that
    /// manifest and are reported.
    pub async fn recover(&self, leases: &Leases, observers: &RecoveryObservers<'_>) -> Result<RecoveryReport, ManifestError> {
        let mut report = RecoveryReport::default();
        let state = self.list_state().await?;
        for key in &state.manifests {
            let manifest = match self.read(key).await {
                Ok(manifest) => manifest,
                Err(ManifestError::Read { source, .. })
                    if matches!(source.object_store_error(), Some(object_store::Error::NotFound { .. })) =>
                {
                    continue;
                }
                Err(ManifestError::Parse { .. }) => {
                    match self.quarantine(key).await {
                        Ok(()) => report.quarantined.push(key.clone()),
                        Err(e) => report.failed.push((key.clone(), e.to_string())),
                    }
                    continue;
                }
                Err(e) => {
                    report.failed.push((key.clone(), e.to_string()));
                    continue;
                }
            };
            let lease = match leases.try_acquire(&manifest.partition_path).await {
                Ok(Some(lease)) => lease,
                Ok(None) => {
                    tracing::info!(manifest = %key, "its job's partition is leased: left to its owner");
                    report.live += 1;
                    continue;
                }
                Err(e) => {
                    report.failed.push((key.clone(), format!("cannot take the partition's lease: {e}")));
                    continue;
                }
            };
            // The lease was granted, so the job's claim has ended: expired,
            // with the late-write window where its writes were in flight, or
            // void because its engine is gone and nothing of it can land.
            let resolved = self.resolve(key, &manifest, &lease, leases.engine(), None, observers).await;
            leases.release(lease).await;
            match resolved {
                Ok(outcome) => {
                    report.recovered += 1;
                    match outcome {
                        RecoveryOutcome::Finished => report.completed += 1,
                        RecoveryOutcome::RolledBack => report.rolled_back += 1,
                        RecoveryOutcome::NoManifest | RecoveryOutcome::Quarantined => {}
                    }
                }
                Err(error) => {
                    let reason = error.to_string();
                    tracing::warn!(manifest = %key, %reason, "recovery manifest kept for the next attempt");
                    report.failed.push((key.clone(), reason));
                }
            }
        }
        let settings = leases.settings();
        let settle = chrono::Duration::from_std(settings.ttl + settings.max_clock_skew).unwrap_or(chrono::Duration::hours(1));
        report.late_outputs_deleted = self.sweep_outcomes(&state, settle).await;
        self.sweep_upload_records(&state, settle).await;
        let staging = self.storage.remove_stale_staging(COMPACTION_STATE_ROOT, settings.ttl + settings.max_clock_skew);
        if staging > 0 {
            tracing::info!(removed = staging, "removed staging files of writes that dead jobs left in _compaction_state/");
        }
        Ok(report)
    }

    /// Resolves the manifest at `key`, if there is one, under `lease` (the
    /// lease its job held: the parent resolves a failed attempt, whose
    /// process has just ended). On a store where a write can land after its
    /// process is gone, a job without an outcome or a complete output is
    /// aborted only after the store's late-write window: its upload may be
    /// on its way.
    pub async fn recover_job(&self, key: &str, lease: &Lease, engine: &str) -> Result<RecoveryOutcome, RecoveryError> {
        let manifest = match self.read(key).await {
            Ok(manifest) => manifest,
            Err(ManifestError::Read { source, .. })
                if matches!(source.object_store_error(), Some(object_store::Error::NotFound { .. })) =>
            {
                return Ok(RecoveryOutcome::NoManifest);
            }
            Err(ManifestError::Parse { .. }) => {
                self.quarantine(key).await?;
                return Ok(RecoveryOutcome::Quarantined);
            }
            Err(e) => return Err(e.into()),
        };
        let late_writes = self.storage.late_write_window();
        self.resolve(key, &manifest, lease, engine, late_writes, &RecoveryObservers::default()).await
    }

    /// Decides and carries out the manifest's job's outcome. Without an
    /// outcome, a missing or partial output means aborted — after waiting
    /// `late_writes` first, when a write the job sent may still land.
    async fn resolve(
        &self,
        key: &str,
        manifest: &RecoveryManifest,
        lease: &Lease,
        engine: &str,
        late_writes: Option<std::time::Duration>,
        observers: &RecoveryObservers<'_>,
    ) -> Result<RecoveryOutcome, RecoveryError> {
        if Utc::now() - manifest.created_at > STALE_AFTER {
            tracing::warn!(manifest = %key, created_at = %manifest.created_at, "stale recovery manifest; processing it normally");
        }
        let output = &manifest.output_path;
        let decided = match self.outcome(key).await? {
            Some(record) => record.outcome,
            None => {
                let mut complete = self.output_is_complete(manifest).await?;
                if !complete && let Some(window) = late_writes {
                    tracing::info!(manifest = %key, ?window, "the job died without a complete output; waiting for an upload it may have sent before deciding");
                    tokio::time::sleep(window).await;
                    complete = self.output_is_complete(manifest).await?;
                }
                let proposal = if complete { Outcome::Committed } else { Outcome::Aborted };
                if !lease.is_valid() {
                    return Err(RecoveryError::LeaseLost);
                }
                self.decide(key, output, proposal, engine).await?.outcome
            }
        };
        if decided == Outcome::Aborted {
            tracing::info!(manifest = %key, %output, "the job did not commit: its output (if any) is deleted, its inputs untouched");
            self.abort_recorded_upload(key).await?;
            self.delete_void_output(output).await?;
            self.delete(key).await?;
            return Ok(RecoveryOutcome::RolledBack);
        }
        if !self.output_is_complete(manifest).await? {
            return Err(RecoveryError::CommittedOutputMissing(output.clone()));
        }
        if let Some(observer) = observers.kept_output {
            observer(output);
        }
        let mut failures = 0;
        for input in &manifest.input_files {
            if !lease.is_valid() {
                return Err(RecoveryError::LeaseLost);
            }
            if let Err(e) = self.storage.delete(input).await {
                tracing::warn!(%input, error = %e, "cannot delete compacted input");
                failures += 1;
            }
        }
        if failures > 0 {
            return Err(RecoveryError::InputsNotDeleted { failed: failures, total: manifest.input_files.len() });
        }
        if let Some(observer) = observers.consumed_inputs {
            observer(&manifest.input_files).map_err(RecoveryError::Receipt)?;
        }
        // Rare enough to look for an upload record whatever the output's size.
        self.finish(key, true).await?;
        Ok(RecoveryOutcome::Finished)
    }

    /// The output exists with the recorded size and ends in Parquet's magic.
    async fn output_is_complete(&self, manifest: &RecoveryManifest) -> Result<bool, StorageError> {
        let output = &manifest.output_path;
        Ok(match self.storage.size(output).await? {
            None => false,
            Some(size) => i64::try_from(size).ok() == Some(manifest.output_size) && self.has_parquet_footer(output, size).await,
        })
    }

    /// Deletes the outputs of aborted jobs that a listing found (they landed
    /// after the job was aborted); returns how many were deleted.
    pub async fn delete_late_outputs(&self, outputs: &[String]) -> usize {
        let mut deleted = 0;
        for output in outputs {
            match self.delete_void_output(output).await {
                Ok(true) => deleted += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(%output, error = %e, "cannot delete a late output of an aborted job; retrying next cycle"),
            }
        }
        deleted
    }

    /// Deletes the output of an aborted job, and what a multipart upload of
    /// it staged.
    async fn delete_void_output(&self, output: &str) -> Result<bool, StorageError> {
        let existed = self.storage.size(output).await?.is_some();
        if existed {
            tracing::warn!(%output, "deleting the output of a job that did not commit");
            self.storage.delete(output).await?;
        }
        self.storage.discard_staged_uploads(output);
        Ok(existed)
    }

    /// Outcomes without a manifest: a committed one is a finished job's
    /// leftover, removed once older than `settle`; an aborted one is a
    /// fence — an output appearing under it is deleted, and after
    /// [`STALE_AFTER`] it is removed. Returns how many late outputs were
    /// deleted.
    async fn sweep_outcomes(&self, state: &StateListing, settle: chrono::Duration) -> usize {
        let mut deleted = 0;
        for (key, record) in self.orphan_outcomes(state).await {
            if record.outcome == Outcome::Aborted {
                // While the fence stands, a late output is held (never
                // planned) and found by the plans' listings, which delete it
                // ([`ManifestStore::delete_late_outputs`]): a fence costs no
                // request per cycle. Before the fence goes, one last look.
                if Utc::now() - record.at > STALE_AFTER {
                    if matches!(self.delete_void_output(&record.output_path).await, Ok(true)) {
                        deleted += 1;
                    }
                    let _ = self.storage.delete(&key).await;
                }
            } else if Utc::now() - record.at > settle {
                // A finished job's leftover. Only a settled one: a listing
                // that raced a live job may have seen its outcome but not
                // (yet) its manifest.
                let _ = self.storage.delete(&key).await;
            }
        }
        deleted
    }

    /// The outcomes in `state` whose manifest is not: those of finished or
    /// aborted jobs. One that cannot be read or parsed now is left out (and
    /// left alone).
    async fn orphan_outcomes(&self, state: &StateListing) -> Vec<(String, OutcomeRecord)> {
        let mut orphans = Vec::new();
        for key in state.outcomes.iter().filter(|k| !state.manifests.contains(&format!("{}.json", k.trim_end_matches(".outcome")))) {
            if let Some(record) = self.storage.read_immutable(key).await.ok().and_then(|b| serde_json::from_slice::<OutcomeRecord>(&b).ok())
            {
                orphans.push((key.clone(), record));
            }
        }
        // Outcomes no longer listed are forgotten.
        self.storage.forget_immutable(COMPACTION_STATE_ROOT, |key| state.outcomes.contains(key));
        orphans
    }

    /// Upload records whose manifest is gone: a job that recorded its upload
    /// after recovery had resolved it (it was paused in between) and died
    /// before aborting it. Once settled (older than `settle`, so that the
    /// listing cannot have raced a live job's manifest), the upload is
    /// aborted and the record removed.
    async fn sweep_upload_records(&self, state: &StateListing, settle: chrono::Duration) {
        for key in &state.upload_records {
            let manifest = format!("{}.json", key.trim_end_matches(".multipart"));
            if state.manifests.contains(&manifest) {
                continue;
            }
            let settled = match self.storage.object_store().head(&compactor_storage::object_path(key)).await {
                Ok(meta) => Utc::now() - meta.last_modified > settle,
                Err(_) => false,
            };
            if settled && let Err(e) = self.abort_recorded_upload(&manifest).await {
                tracing::warn!(record = %key, error = %e, "cannot abort an orphaned multipart upload; retrying next time");
            }
        }
    }

    /// Moves an unparseable manifest aside to `{key}.quarantined`, where it
    /// keeps the files it names held until an operator removes it.
    async fn quarantine(&self, key: &str) -> Result<(), ManifestError> {
        let bytes = self.storage.read(key).await.map_err(|source| ManifestError::Read { key: key.to_owned(), source })?;
        let target = format!("{key}.quarantined");
        self.storage.write(&target, bytes).await.map_err(|source| ManifestError::Write { key: target.clone(), source })?;
        self.delete(key).await?;
        tracing::error!(manifest = %key, quarantined = %target, "unparseable recovery manifest moved aside; the files it names stay excluded until an operator removes it");
        Ok(())
    }

    async fn has_parquet_footer(&self, key: &str, size: u64) -> bool {
        if size < 12 {
            return false;
        }
        let location = compactor_storage::object_path(key);
        match self.storage.object_store().get_range(&location, size - 4..size).await {
            Ok(tail) => tail.as_ref() == b"PAR1",
            Err(e) => {
                tracing::warn!(%key, error = %e, "cannot read the output's footer; trusting its size");
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn manifest(job_id: &str) -> RecoveryManifest {
        RecoveryManifest {
            output_path: "testdb/cpu/output.parquet".into(),
            output_size: 17,
            input_files: vec!["testdb/cpu/file1.parquet".into(), "testdb/cpu/file2.parquet".into(), "testdb/cpu/file3.parquet".into()],
            database: "testdb".into(),
            measurement: "cpu".into(),
            partition_path: "testdb/cpu/2025/01/15/10".into(),
            tier: "hourly".into(),
            status: "pending".into(),
            created_at: DateTime::from_timestamp(1_736_935_200, 0).unwrap(),
            job_id: job_id.into(),
            owner: None,
            policy: None,
        }
    }

    fn leases(storage: &Storage) -> Leases {
        Leases::new(storage.clone(), compactor_storage::lease::new_engine_id(), Default::default())
    }

    #[tokio::test]
    async fn write_read_list_delete_round_trip() {
        let store = ManifestStore::new(Storage::in_memory());
        assert!(store.list().await.unwrap().is_empty());
        let key = store.write(&manifest("test_job_123")).await.unwrap();
        assert_eq!(key, "_compaction_state/hourly/testdb/testdb_cpu_2025_01_15_10_test_job_123.json");
        assert_eq!(store.read(&key).await.unwrap(), manifest("test_job_123"));
        for id in ["job_0", "job_1"] {
            store.write(&manifest(id)).await.unwrap();
        }
        assert_eq!(store.list().await.unwrap().len(), 3);
        store.delete(&key).await.unwrap();
        assert!(store.read(&key).await.is_err());
    }

    #[test]
    fn an_unreadable_manifest_blocks_its_hour_and_day_only() {
        let mut held = HeldFiles::default();
        held.block("db_cpu_2026_04_11_10_db_db_cpu_2026_04_11_10_1776006312123456789_b1.json".into());
        held.block("db_db_mem_2026_04_12_1776006312123456789_b1.json".into());
        assert!(held.blocked_by("db/cpu/2026/04/11/10").is_some());
        assert!(held.blocked_by("db/cpu/2026/04/11").is_some(), "its day");
        assert!(held.blocked_by("db/cpu/2026/04/11/11").is_none(), "another hour");
        assert!(held.blocked_by("db/cpu/2026/04/12").is_none(), "another day");
        assert!(held.blocked_by("db/mem/2026/04/12/05").is_some(), "an hour of a day-level manifest (Arc's newer naming)");
        assert!(held.blocked_by("db/mem/2026/04/12").is_some());
    }

    #[tokio::test]
    async fn held_files_are_inputs_and_outputs() {
        let store = ManifestStore::new(Storage::in_memory());
        store.write(&manifest("j")).await.unwrap();
        let held = store.held_files().await.unwrap();
        assert_eq!(held.len(), 4);
        assert!(held.blocked_by("testdb/cpu/2025/01/15/10").is_none());
        assert!(held.contains("testdb/cpu/output.parquet") && held.contains("testdb/cpu/file2.parquet"));
        assert!(!held.contains("testdb/cpu/untracked.parquet"));
    }

    #[tokio::test]
    async fn unreadable_manifests_are_skipped_and_non_json_ignored() {
        let storage = Storage::in_memory();
        storage.write("_compaction_state/hourly/db/bad.json", "not json").await.unwrap();
        storage.write("_compaction_state/hourly/db/notes.txt", "x").await.unwrap();
        let store = ManifestStore::new(storage);
        assert_eq!(store.list().await.unwrap().len(), 1);
        assert_eq!(store.held_files().await.unwrap().len(), 0, "a manifest that says nothing holds nothing");
    }

    async fn with_manifest(output: Option<&[u8]>, output_size: i64) -> (Storage, ManifestStore) {
        let storage = Storage::in_memory();
        storage.write("testdb/cpu/input1.parquet", "in").await.unwrap();
        if let Some(bytes) = output {
            storage.write("testdb/cpu/output.parquet", bytes.to_vec()).await.unwrap();
        }
        let store = ManifestStore::new(storage.clone());
        let m = RecoveryManifest {
            output_size,
            input_files: vec!["testdb/cpu/input1.parquet".into(), "testdb/cpu/already-gone.parquet".into()],
            ..manifest("j1")
        };
        store.write(&m).await.unwrap();
        (storage, store)
    }

    #[tokio::test]
    async fn recovery_rolls_back_when_the_output_is_missing() {
        let (storage, store) = with_manifest(None, 17).await;
        let report = store.recover(&leases(&storage), &RecoveryObservers::default()).await.unwrap();
        assert_eq!((report.recovered, report.rolled_back, report.completed), (1, 1, 0));
        assert!(store.list().await.unwrap().is_empty());
        assert_eq!(storage.size("testdb/cpu/input1.parquet").await.unwrap(), Some(2), "inputs untouched");
    }

    #[tokio::test]
    async fn recovery_finishes_a_complete_output() {
        let output = b"PAR1 fake data PAR1";
        let (storage, store) = with_manifest(Some(output), output.len() as i64).await;
        let consumed = std::sync::Mutex::new(Vec::new());
        let observe = |inputs: &[String]| -> Result<(), String> {
            consumed.lock().unwrap().extend_from_slice(inputs);
            Ok(())
        };
        let observers = RecoveryObservers { kept_output: None, consumed_inputs: Some(&observe) };
        let report = store.recover(&leases(&storage), &observers).await.unwrap();
        assert_eq!((report.recovered, report.completed), (1, 1));
        assert_eq!(storage.size("testdb/cpu/input1.parquet").await.unwrap(), None, "inputs deleted; a missing one is fine");
        assert!(storage.size("testdb/cpu/output.parquet").await.unwrap().is_some());
        assert_eq!(consumed.lock().unwrap().len(), 2);
        assert!(store.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn recovery_deletes_a_partial_output_and_keeps_inputs() {
        for (bytes, size) in [(&b"PAR1 fake data PAR1"[..], 999), (&b"PAR1 truncated upload"[..], 21)] {
            let (storage, store) = with_manifest(Some(bytes), size).await;
            let report = store.recover(&leases(&storage), &RecoveryObservers::default()).await.unwrap();
            assert_eq!((report.recovered, report.rolled_back), (1, 1));
            assert_eq!(storage.size("testdb/cpu/output.parquet").await.unwrap(), None);
            assert!(storage.size("testdb/cpu/input1.parquet").await.unwrap().is_some());
        }
    }

    #[tokio::test]
    async fn a_failing_observer_keeps_the_manifest_for_the_next_attempt() {
        let output = b"PAR1 fake data PAR1";
        let (storage, store) = with_manifest(Some(output), output.len() as i64).await;
        let refuse = |_: &[String]| -> Result<(), String> { Err("sqlite busy".into()) };
        let report =
            store.recover(&leases(&storage), &RecoveryObservers { kept_output: None, consumed_inputs: Some(&refuse) }).await.unwrap();
        assert_eq!(report.failed.len(), 1);
        assert!(report.failed[0].1.contains("receipt marking incomplete"));
        assert_eq!(store.list().await.unwrap().len(), 1);
        assert_eq!(store.recover(&leases(&storage), &RecoveryObservers::default()).await.unwrap().recovered, 1);
    }

    fn owned(job_id: &str) -> RecoveryManifest {
        RecoveryManifest { owner: Some(ManifestOwner { engine: "owner".into(), lease: "owner-0".into() }), ..manifest(job_id) }
    }

    #[tokio::test]
    async fn recovery_leaves_a_live_owners_manifest_alone() {
        let (storage, store) = with_manifest(None, 17).await;
        let owner = Leases::new(storage.clone(), compactor_storage::lease::new_engine_id(), Default::default());
        let lease = owner.try_acquire("testdb/cpu/2025/01/15/10").await.unwrap().unwrap();
        let report = store.recover(&leases(&storage), &RecoveryObservers::default()).await.unwrap();
        assert_eq!((report.live, report.recovered), (1, 0));
        assert_eq!(store.list().await.unwrap().len(), 1, "the live job's manifest stays");
        assert!(store.held_files().await.unwrap().contains("testdb/cpu/input1.parquet"), "and its files stay held");
        let daily = Leases::new(storage.clone(), format!("daily-{}", compactor_storage::lease::new_engine_id()), Default::default());
        assert!(daily.try_acquire("testdb/cpu/2025/01/15").await.unwrap().is_none(), "its day is busy too");
        owner.release(lease).await;
        let report = store.recover(&leases(&storage), &RecoveryObservers::default()).await.unwrap();
        assert_eq!((report.live, report.rolled_back), (0, 1), "once the owner is gone, recovery acts");
    }

    #[tokio::test]
    async fn the_outcome_is_decided_once() {
        let store = ManifestStore::new(Storage::in_memory());
        let key = store.write(&owned("j")).await.unwrap();
        let first = store.decide(&key, "out.parquet", Outcome::Aborted, "recoverer").await.unwrap();
        let second = store.decide(&key, "out.parquet", Outcome::Committed, "job").await.unwrap();
        assert_eq!((first.outcome, second.outcome, second.by.as_str()), (Outcome::Aborted, Outcome::Aborted, "recoverer"));
        assert!(store.write(&owned("j")).await.is_err(), "a manifest is never replaced");
    }

    #[tokio::test]
    async fn an_aborted_jobs_late_output_is_held_then_deleted() {
        let storage = Storage::in_memory();
        storage.write("testdb/cpu/input1.parquet", "in").await.unwrap();
        let store = ManifestStore::new(storage.clone());
        store.write(&RecoveryManifest { input_files: vec!["testdb/cpu/input1.parquet".into()], ..owned("j1") }).await.unwrap();
        // The owner died before its upload landed: recovery aborts the job.
        let report = store.recover(&leases(&storage), &RecoveryObservers::default()).await.unwrap();
        assert_eq!(report.rolled_back, 1);
        assert!(store.list().await.unwrap().is_empty());
        // Then the upload lands after all.
        storage.write("testdb/cpu/output.parquet", "PAR1 late PAR1").await.unwrap();
        let held = store.held_files().await.unwrap();
        assert!(held.contains("testdb/cpu/output.parquet"), "the late output is never planned");
        assert!(held.is_void_output("testdb/cpu/output.parquet"), "a listing that meets it knows it must go");
        assert!(!held.contains("testdb/cpu/input1.parquet"), "the inputs are free again");
        // Issue 21 §4b: a fence cost a GET (and a HEAD) every cycle for a
        // week. Now, once read, it costs nothing beyond the state listing.
        let (counted, counts) = storage.counted();
        let store = ManifestStore::new(counted);
        store.recover(&leases(&storage), &RecoveryObservers::default()).await.unwrap();
        let before = counts.snapshot();
        store.held_files().await.unwrap();
        store.recover(&leases(&storage), &RecoveryObservers::default()).await.unwrap();
        let cost = counts.snapshot().since(before);
        assert_eq!((cost.get, cost.put, cost.delete), (0, 0, 0), "{cost:?}");
        assert_eq!(store.delete_late_outputs(&["testdb/cpu/output.parquet".to_owned()]).await, 1);
        assert_eq!(storage.size("testdb/cpu/output.parquet").await.unwrap(), None);
        assert!(storage.size("testdb/cpu/input1.parquet").await.unwrap().is_some(), "every row still exactly once");
    }

    #[tokio::test]
    async fn a_complete_output_without_outcome_is_committed_by_recovery() {
        let output = b"PAR1 fake data PAR1";
        let (storage, store) = with_manifest(Some(output), output.len() as i64).await;
        let key = store.list().await.unwrap().remove(0);
        let report = store.recover(&leases(&storage), &RecoveryObservers::default()).await.unwrap();
        assert_eq!(report.completed, 1);
        let left = storage.list("_compaction_state/").await.unwrap();
        assert!(left.iter().all(|f| f.key.starts_with("_compaction_state/leases/")), "manifest and outcome are gone: {left:?}");
        // A job that comes back and tries to commit learns it was done.
        let decided = store.decide(&key, "testdb/cpu/output.parquet", Outcome::Committed, "job").await.unwrap();
        assert_eq!(decided.outcome, Outcome::Committed);
    }

    #[tokio::test]
    async fn unparseable_manifests_are_quarantined_and_keep_their_files() {
        let storage = Storage::in_memory();
        let key = "_compaction_state/hourly/db/db_cpu_2026_04_11_10_j.json";
        storage
            .write(key, r#"{"output_path":"db/cpu/2026/04/11/10/out.parquet","input_files":["db/cpu/2026/04/11/10/a.parquet","#)
            .await
            .unwrap();
        let store = ManifestStore::new(storage.clone());
        let report = store.recover(&leases(&storage), &RecoveryObservers::default()).await.unwrap();
        assert_eq!(report.quarantined, [key]);
        assert!(storage.size(&format!("{key}.quarantined")).await.unwrap().is_some());
        assert!(store.list().await.unwrap().is_empty());
        let held = store.held_files().await.unwrap();
        assert!(held.contains("db/cpu/2026/04/11/10/a.parquet") && held.contains("db/cpu/2026/04/11/10/out.parquet"), "{held:?}");
        assert_eq!(store.recover(&leases(&storage), &RecoveryObservers::default()).await.unwrap().quarantined.len(), 0, "reported once");
    }

    #[tokio::test]
    async fn arcs_newer_manifest_names_are_read_and_recovered() {
        let (storage, store) = with_manifest(None, 17).await;
        let arc_key = format!("{COMPACTION_STATE_ROOT}/hourly/testdb/j2.json");
        storage.write(&arc_key, serde_json::to_vec(&manifest("j2")).unwrap()).await.unwrap();
        assert_eq!(store.list().await.unwrap().len(), 2);
        assert_eq!(store.recover(&leases(&storage), &RecoveryObservers::default()).await.unwrap().rolled_back, 2);
    }

    #[test]
    fn manifest_names_never_exceed_255_bytes() {
        let long = "d".repeat(120);
        let partition = format!("{long}/cpu/2026/04/11/10");
        let job = crate::job_id(&long, &partition, Utc::now(), 1);
        let key = RecoveryManifest::key_for("hourly", &long, &partition, &job);
        let name = key.rsplit('/').next().unwrap();
        assert!(name.len() <= 240 && name.ends_with(".json"), "{} bytes: {name}", name.len());
        assert_ne!(key, RecoveryManifest::key_for("hourly", &long, &partition, &format!("{job}x")), "still unique");
        assert!(format!("{name}.quarantined").len() <= 255);
    }

    /// The requests a cycle's recovery and two plans' held-file reads make
    /// with 100 aborted fences in the store (docs/benchmarks.md).
    #[tokio::test]
    async fn measure_the_per_cycle_cost_of_aborted_fences() {
        let storage = Storage::in_memory();
        let store = ManifestStore::new(storage.clone());
        for i in 0..100 {
            let key = store
                .write(&RecoveryManifest { input_files: vec![format!("testdb/cpu/in{i}.parquet")], ..owned(&format!("j{i}")) })
                .await
                .unwrap();
            store.decide(&key, &format!("testdb/cpu/out{i}.parquet"), Outcome::Aborted, "recoverer").await.unwrap();
            store.delete(&key).await.unwrap();
        }
        let (counted, counts) = storage.counted();
        let store = ManifestStore::new(counted);
        let mut costs = Vec::new();
        for _ in 0..2 {
            let before = counts.snapshot();
            store.recover(&leases(&storage), &RecoveryObservers::default()).await.unwrap();
            store.held_files().await.unwrap();
            store.held_files().await.unwrap();
            costs.push(counts.snapshot().since(before));
        }
        println!("fence cost per cycle: first {:?}, then {:?}", costs[0], costs[1]);
        assert_eq!((costs[1].get, costs[1].put, costs[1].delete), (0, 0, 0), "a known fence costs no request");
    }
}

#[cfg(test)]
mod visibility_race {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use futures::stream::BoxStream;
    use object_store::memory::InMemory;
    use object_store::path::Path;
    use object_store::{
        GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    };

    use super::*;

    /// An in-memory store in which a job finishes (its manifest, then its
    /// outcome, removed) just before the first read of an outcome once
    /// armed: between a reader's read of the manifest and of its outcome.
    #[derive(Debug)]
    struct FinishesBeforeOutcomeRead {
        inner: InMemory,
        armed: AtomicBool,
    }

    impl std::fmt::Display for FinishesBeforeOutcomeRead {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("FinishesBeforeOutcomeRead")
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for FinishesBeforeOutcomeRead {
        async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> object_store::Result<PutResult> {
            self.inner.put_opts(location, payload, opts).await
        }

        async fn put_multipart_opts(&self, location: &Path, opts: PutMultipartOptions) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }

        async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
            if let Some(manifest) = location.as_ref().strip_suffix(".outcome")
                && self.armed.swap(false, Ordering::SeqCst)
            {
                self.inner.delete(&Path::from(format!("{manifest}.json"))).await?;
                self.inner.delete(location).await?;
            }
            self.inner.get_opts(location, options).await
        }

        async fn delete(&self, location: &Path) -> object_store::Result<()> {
            self.inner.delete(location).await
        }

        fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.inner.list(prefix)
        }

        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy(&self, from: &Path, to: &Path) -> object_store::Result<()> {
            self.inner.copy(from, to).await
        }

        async fn copy_if_not_exists(&self, from: &Path, to: &Path) -> object_store::Result<()> {
            self.inner.copy_if_not_exists(from, to).await
        }
    }

    /// A reader asking while a committed job removes its inputs and then
    /// finishes sees its output, never neither it nor its inputs: what it
    /// is told to hide is read in the same stable state as its listing. (A
    /// manifest read just before its job removed it and its outcome once
    /// hid a committed output whose inputs were gone: a reader missed an
    /// hour of rows.)
    #[tokio::test]
    async fn a_job_finishing_between_the_reads_of_its_manifest_and_outcome_hides_nothing_it_should_not() {
        let store = Arc::new(FinishesBeforeOutcomeRead { inner: InMemory::new(), armed: AtomicBool::new(false) });
        let storage = Storage::from_store(store.clone(), "memory://");
        let manifests = ManifestStore::new(storage.clone());
        // Its inputs are deleted already.
        let manifest = super::tests::manifest("job0");
        let output = manifest.output_path.clone();
        // Committed, not finished yet.
        let key = manifests.write(&manifest).await.unwrap();
        storage.write(&output, "out").await.unwrap();
        manifests.decide(&key, &output, Outcome::Committed, "test").await.unwrap();
        store.armed.store(true, Ordering::SeqCst);
        let listing = || async { storage.list("testdb/").await.map_err(ManifestError::List) };
        let (files, visibility) = manifests.visible(10, None, listing).await.unwrap();
        assert!(!store.armed.load(Ordering::SeqCst), "the job finished during the read");
        let visible: Vec<String> = files.into_iter().map(|f| f.key).filter(|k| !visibility.hidden.contains(k)).collect();
        assert_eq!(visible, vec![output]);
    }
}
