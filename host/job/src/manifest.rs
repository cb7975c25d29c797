//! Arc-compatible recovery manifests under `_compaction_state/`: a job writes
//! one before it uploads its output, and the files a pending manifest holds
//! (its inputs and its output) are excluded from new candidates until
//! recovery finishes the job.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use compactor_storage::{COMPACTION_STATE_ROOT, Storage, StorageError};

/// A recovery manifest, field for field as Arc writes it.
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
}

impl RecoveryManifest {
    /// `_compaction_state/{tier}/{database}/{partition_path with "/"→"_"}_{job_id}.json`.
    pub fn key(&self) -> String {
        Self::key_for(&self.tier, &self.database, &self.partition_path, &self.job_id)
    }

    /// The key of the manifest a job would write.
    pub fn key_for(tier: &str, database: &str, partition_path: &str, job_id: &str) -> String {
        format!("{COMPACTION_STATE_ROOT}/{tier}/{database}/{}_{job_id}.json", partition_path.replace('/', "_"))
    }
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

    /// Keys of every manifest (`.json` under `_compaction_state/`), sorted. A
    /// missing directory is an empty list; a listing error propagates.
    pub async fn list(&self) -> Result<Vec<String>, ManifestError> {
        let listed = self.storage.list(&format!("{COMPACTION_STATE_ROOT}/")).await.map_err(ManifestError::List)?;
        let mut keys: Vec<String> = listed.into_iter().map(|f| f.key).filter(|k| k.ends_with(".json")).collect();
        keys.sort();
        Ok(keys)
    }

    /// Reads the manifest at `key`.
    pub async fn read(&self, key: &str) -> Result<RecoveryManifest, ManifestError> {
        let bytes = self.storage.read(key).await.map_err(|source| ManifestError::Read { key: key.to_owned(), source })?;
        serde_json::from_slice(&bytes).map_err(|source| ManifestError::Parse { key: key.to_owned(), source })
    }

    /// Writes `manifest` (pretty JSON, 2-space indent) and returns its key.
    pub async fn write(&self, manifest: &RecoveryManifest) -> Result<String, ManifestError> {
        let key = manifest.key();
        let json = serde_json::to_vec_pretty(manifest).map_err(|source| ManifestError::Parse { key: key.clone(), source })?;
        self.storage.write(&key, json).await.map_err(|source| ManifestError::Write { key: key.clone(), source })?;
        Ok(key)
    }

    /// Deletes the manifest at `key`.
    pub async fn delete(&self, key: &str) -> Result<(), ManifestError> {
        self.storage.delete(key).await.map_err(|source| ManifestError::Delete { key: key.to_owned(), source })
    }

    /// Every file held by a pending manifest: all inputs and every output.
    /// A manifest that vanished since the listing was resolved and holds
    /// nothing; one that is not valid JSON is skipped with a warning (it
    /// says nothing it holds). Any other error — a listing or a read that
    /// failed, perhaps only for now — propagates, so that callers fail safe:
    /// releasing a live job's files to the planner would let another job
    /// merge them a second time.
    pub async fn held_files(&self) -> Result<HashSet<String>, ManifestError> {
        let mut held = HashSet::new();
        for key in self.list().await? {
            match self.read(&key).await {
                Ok(manifest) => {
                    held.extend(manifest.input_files);
                    held.insert(manifest.output_path);
                }
                Err(ManifestError::Read { source, .. })
                    if matches!(source.object_store_error(), Some(object_store::Error::NotFound { .. })) => {}
                Err(e @ ManifestError::Parse { .. }) => {
                    tracing::warn!(manifest = %key, error = %e, "skipping unreadable recovery manifest")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(held)
    }
}

/// Manifests older than this are logged as stale (and still processed, as
/// in Arc).
pub const STALE_AFTER: chrono::Duration = chrono::Duration::days(7);

/// What recovery did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecoveryReport {
    /// Manifests resolved and deleted.
    pub recovered: usize,
    /// Jobs finished: output kept, inputs deleted.
    pub completed: usize,
    /// Jobs rolled back: output missing or partial, inputs untouched.
    pub rolled_back: usize,
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
    /// The manifest could not be parsed and was deleted.
    UnreadableDropped,
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
    /// The observer of consumed inputs failed.
    #[error("receipt marking incomplete; keeping manifest for re-fire: {0}")]
    Receipt(String),
}

/// Told a finished job's inputs; an error keeps the manifest.
pub type ConsumedInputsObserver<'a> = dyn Fn(&[String]) -> Result<(), String> + Sync + 'a;

/// Hooks recovery calls; both optional.
#[derive(Default)]
pub struct RecoveryObservers<'a> {
    /// Called with each output that recovery keeps, before inputs are deleted.
    pub kept_output: Option<&'a (dyn Fn(&str) + Sync)>,
    /// Called with a finished job's inputs; an error keeps the manifest so
    /// the call is repeated next time.
    pub consumed_inputs: Option<&'a ConsumedInputsObserver<'a>>,
}

impl ManifestStore {
    /// Finishes or rolls back every job that left a recovery manifest:
    ///
    /// - unreadable manifest → deleted;
    /// - output missing → the job died before its upload finished: the
    ///   manifest is deleted, inputs untouched;
    /// - output present but not the recorded size, or not ending in Parquet's
    ///   magic → a partial upload: output and manifest deleted, inputs
    ///   untouched;
    /// - otherwise the output is complete: the inputs are deleted (missing ones
    ///   are fine), then the manifest.
    ///
    /// Every row therefore exists exactly once afterwards. A listing error is
    /// returned; per-manifest failures keep that manifest and are reported.
    pub async fn recover(&self, observers: &RecoveryObservers<'_>) -> Result<RecoveryReport, ManifestError> {
        let mut report = RecoveryReport::default();
        for key in self.list().await? {
            match self.recover_one(&key, observers).await {
                Ok(outcome) => {
                    report.recovered += 1;
                    match outcome {
                        RecoveryOutcome::Finished => report.completed += 1,
                        RecoveryOutcome::RolledBack => report.rolled_back += 1,
                        RecoveryOutcome::NoManifest | RecoveryOutcome::UnreadableDropped => {}
                    }
                }
                Err(error) => {
                    let reason = error.to_string();
                    tracing::warn!(manifest = %key, %reason, "recovery manifest kept for the next attempt");
                    report.failed.push((key, reason));
                }
            }
        }
        Ok(report)
    }

    /// Resolves the manifest at `key` if there is one.
    pub async fn recover_job(&self, key: &str) -> Result<RecoveryOutcome, RecoveryError> {
        match self.storage.size(key).await? {
            None => Ok(RecoveryOutcome::NoManifest),
            Some(_) => self.recover_one(key, &RecoveryObservers::default()).await,
        }
    }

    async fn recover_one(&self, key: &str, observers: &RecoveryObservers<'_>) -> Result<RecoveryOutcome, RecoveryError> {
        let manifest = match self.read(key).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(manifest = %key, error = %e, "deleting unreadable recovery manifest");
                self.delete(key).await?;
                return Ok(RecoveryOutcome::UnreadableDropped);
            }
        };
        if chrono::Utc::now() - manifest.created_at > STALE_AFTER {
            tracing::warn!(manifest = %key, created_at = %manifest.created_at, "stale recovery manifest; processing it normally");
        }
        let output = &manifest.output_path;
        let complete = match self.storage.size(output).await? {
            None => {
                tracing::info!(manifest = %key, %output, "output missing: the job died before uploading; inputs untouched");
                false
            }
            Some(size) if i64::try_from(size).ok() != Some(manifest.output_size) || !self.has_parquet_footer(output, size).await => {
                tracing::warn!(manifest = %key, %output, size, expected = manifest.output_size, "partial output: deleting it; inputs untouched");
                if let Err(e) = self.storage.delete(output).await {
                    tracing::warn!(%output, error = %e, "cannot delete partial output");
                }
                false
            }
            Some(_) => true,
        };
        if !complete {
            self.storage.discard_staged_uploads(output);
        }
        if complete {
            if let Some(observer) = observers.kept_output {
                observer(output);
            }
            let mut failures = 0;
            for input in &manifest.input_files {
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
        }
        self.delete(key).await?;
        Ok(if complete { RecoveryOutcome::Finished } else { RecoveryOutcome::RolledBack })
    }

    async fn has_parquet_footer(&self, key: &str, size: u64) -> bool {
        if size < 12 {
            return false;
        }
        let location = object_store::path::Path::from(key);
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

    fn manifest(job_id: &str) -> RecoveryManifest {
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
        }
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

    #[tokio::test]
    async fn held_files_are_inputs_and_outputs() {
        let store = ManifestStore::new(Storage::in_memory());
        store.write(&manifest("j")).await.unwrap();
        let held = store.held_files().await.unwrap();
        assert_eq!(held.len(), 4);
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
        assert!(store.held_files().await.unwrap().is_empty());
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
        let report = store.recover(&RecoveryObservers::default()).await.unwrap();
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
        let report = store.recover(&observers).await.unwrap();
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
            let report = store.recover(&RecoveryObservers::default()).await.unwrap();
            assert_eq!((report.recovered, report.rolled_back), (1, 1));
            assert_eq!(storage.size("testdb/cpu/output.parquet").await.unwrap(), None);
            assert!(storage.size("testdb/cpu/input1.parquet").await.unwrap().is_some());
        }
    }

    #[tokio::test]
    async fn a_failing_observer_keeps_the_manifest_for_the_next_attempt() {
        let output = b"PAR1 fake data PAR1";
        let (_storage, store) = with_manifest(Some(output), output.len() as i64).await;
        let refuse = |_: &[String]| -> Result<(), String> { Err("sqlite busy".into()) };
        let report = store.recover(&RecoveryObservers { kept_output: None, consumed_inputs: Some(&refuse) }).await.unwrap();
        assert_eq!(report.failed.len(), 1);
        assert!(report.failed[0].1.contains("receipt marking incomplete"));
        assert_eq!(store.list().await.unwrap().len(), 1);
        assert_eq!(store.recover(&RecoveryObservers::default()).await.unwrap().recovered, 1);
    }
}
