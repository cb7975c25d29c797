//! Completion manifests: a per-job hand-off file on local disk from the job
//! to the watcher, which tells the cluster file manifest (through a
//! [`ManifestBridge`]) about outputs and deleted sources. Written atomically
//! (temp file, fsync, rename): readers never see a torn file.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The state of a job's completion manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompletionState {
    /// The job started; no output uploaded yet. The watcher ignores it.
    WritingOutput,
    /// The output is uploaded; its sources are not yet deleted.
    OutputWritten,
    /// The sources are deleted.
    SourcesDeleted,
}

/// One output of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionOutput {
    /// Storage key.
    pub path: String,
    /// SHA-256 of the uploaded bytes, 64 lowercase hex characters.
    pub sha256: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Database (for a pseudo-database, the part after the first `/`).
    pub database: String,
    /// Measurement.
    pub measurement: String,
    /// UTC start of the partition.
    pub partition_time: DateTime<Utc>,
    /// Tier name.
    pub tier: String,
    /// When the output was uploaded.
    pub created_at: DateTime<Utc>,
}

/// A completion manifest, field for field as Arc writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletionManifest {
    /// The job's id; the file is `{job_id}.json`.
    pub job_id: String,
    /// Database (for a pseudo-database, the part after the first `/`).
    pub database: String,
    /// Measurement.
    pub measurement: String,
    /// Partition key prefix.
    pub partition_path: String,
    /// Tier name.
    pub tier: String,
    /// Where the job is.
    pub state: CompletionState,
    /// The job's outputs (`null` while writing).
    pub outputs: Option<Vec<CompletionOutput>>,
    /// Sources deleted (`null` until `sources_deleted`).
    pub deleted_sources: Option<Vec<String>>,
    /// When the manifest was first written in this state.
    pub created_at: DateTime<Utc>,
    /// When it was last written.
    pub updated_at: DateTime<Utc>,
}

/// A completion-manifest error, naming the file or job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CompletionError {
    /// The job id cannot be a file name.
    #[error("invalid completion manifest job id {job_id:?}: {reason}")]
    InvalidJobId {
        /// The job id.
        job_id: String,
        /// Why.
        reason: &'static str,
    },
    /// An I/O error on a manifest file or directory.
    #[error("completion manifest {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A manifest is not valid JSON of the expected shape.
    #[error("completion manifest {path} is invalid: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CompletionError + '_ {
    move |source| CompletionError::Io { path: path.to_owned(), source }
}

/// Refuses job ids that are not a plain file name.
pub(crate) fn validate_job_id(job_id: &str) -> Result<(), CompletionError> {
    let reason = if job_id.is_empty() {
        Some("must not be empty")
    } else if job_id.contains('/') || job_id.contains('\\') {
        Some("must not contain path separators")
    } else if job_id.contains('\0') {
        Some("must not contain null bytes")
    } else if job_id.contains("..") {
        Some("must not contain '..'")
    } else if job_id.starts_with('.') {
        Some("must not start with '.'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(CompletionError::InvalidJobId { job_id: job_id.to_owned(), reason }),
        None => Ok(()),
    }
}

/// Writes `manifest` to `{dir}/{job_id}.json` atomically: a `0600` temp file,
/// fsync, rename; the directory is created `0700`. Returns the path.
pub fn write(dir: &Path, manifest: &CompletionManifest) -> Result<PathBuf, CompletionError> {
    validate_job_id(&manifest.job_id)?;
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_error(dir))?;
    let path = dir.join(format!("{}.json", manifest.job_id));
    let staged = dir.join(format!("{}.json.tmp", manifest.job_id));
    let json = serde_json::to_vec_pretty(manifest).map_err(|source| CompletionError::Parse { path: path.clone(), source })?;
    let result = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&staged)?;
        file.write_all(&json)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&staged, &path)
    })();
    if let Err(source) = result {
        let _ = std::fs::remove_file(&staged);
        return Err(CompletionError::Io { path, source });
    }
    Ok(path)
}

/// Reads one manifest.
pub fn read(path: &Path) -> Result<CompletionManifest, CompletionError> {
    let bytes = std::fs::read(path).map_err(io_error(path))?;
    serde_json::from_slice(&bytes).map_err(|source| CompletionError::Parse { path: path.to_owned(), source })
}

/// The `*.json` files of `dir` (not `*.tmp`, not directories), sorted by name;
/// a missing directory is empty.
pub fn list_pending(dir: &Path) -> Result<Vec<PathBuf>, CompletionError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CompletionError::Io { path: dir.to_owned(), source: e }),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error(dir))?;
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        if is_file && entry.file_name().to_string_lossy().ends_with(".json") {
            paths.push(entry.path());
        }
    }
    paths.sort();
    Ok(paths)
}

/// Deletes one manifest; a missing file is success.
pub fn delete(path: &Path) -> Result<(), CompletionError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CompletionError::Io { path: path.to_owned(), source }),
    }
}

/// Deletes `writing_output` manifests last updated more than `timeout` ago
/// (`0` means 10 minutes): jobs that died before uploading. Manifests in any
/// other state are pending watcher work and are never aged out. Returns how
/// many were deleted. Cluster mode's watcher (the etcd issue) calls it; until
/// then only its tests do.
pub fn cleanup_orphans(dir: &Path, timeout: Duration, now: DateTime<Utc>) -> Result<usize, CompletionError> {
    let timeout = if timeout.is_zero() { Duration::from_secs(600) } else { timeout };
    let cutoff = now - chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::minutes(10));
    let mut deleted = 0;
    for path in list_pending(dir)? {
        match read(&path) {
            Ok(m) if m.state == CompletionState::WritingOutput && m.updated_at <= cutoff => match delete(&path) {
                Ok(()) => deleted += 1,
                Err(e) => tracing::warn!(error = %e, "cannot delete orphaned completion manifest"),
            },
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "keeping unreadable completion manifest"),
        }
    }
    Ok(deleted)
}

/// An entry of the cluster file manifest: the output as the completion
/// manifest describes it (the cluster side adds the origin node and log
/// sequence number).
pub type RegisterFile = CompletionOutput;

/// A source to remove from the cluster file manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteFile {
    /// Storage key.
    pub path: String,
    /// Why, e.g. `compaction:{job_id}`.
    pub reason: String,
}

/// A bridge error: [`BridgeError::NotLeader`] is transient (retry quietly),
/// anything else is a hard failure of that attempt.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// This node cannot append to the cluster manifest right now.
    #[error("{operation}: compaction bridge: not the Raft leader")]
    NotLeader {
        /// The operation attempted.
        operation: &'static str,
    },
    /// Any other failure.
    #[error("{operation}: {message}")]
    Failed {
        /// The operation attempted.
        operation: &'static str,
        /// The cause.
        message: String,
    },
}

/// Applies completion manifests to the cluster's file manifest. The watcher
/// only uses [`batch_file_ops`](Self::batch_file_ops): one call per manifest.
pub trait ManifestBridge: Send + Sync {
    /// Registers outputs, then deletes sources, in one cluster log entry.
    fn batch_file_ops(&self, registers: &[RegisterFile], deletes: &[DeleteFile]) -> Result<(), BridgeError>;
}

/// Counters of a [`Watcher`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WatcherStats {
    /// Polls run.
    pub polls_total: u64,
    /// Manifests read.
    pub manifests_seen: u64,
    /// Manifests fully applied and removed.
    pub manifests_applied: u64,
    /// Attempts that met NotLeader.
    pub manifests_not_leader: u64,
    /// Other failed attempts.
    pub apply_errors: u64,
    /// Register entries sent.
    pub register_calls: u64,
    /// Delete entries sent.
    pub delete_calls: u64,
    /// Bridge calls made.
    pub batch_calls: u64,
    /// Unix nanoseconds of the last finished poll.
    pub last_poll_at: i64,
}

/// Watches the completion directory and applies manifests through a bridge.
pub struct Watcher {
    dir: PathBuf,
    bridge: Arc<dyn ManifestBridge>,
    interval: Duration,
    state: Arc<Mutex<WatcherState>>,
    running: Mutex<Option<(tokio::sync::watch::Sender<bool>, tokio::task::JoinHandle<()>)>>,
}

#[derive(Default)]
struct WatcherState {
    stats: WatcherStats,
    registered: HashSet<String>,
}

impl Watcher {
    /// A watcher of `dir` polling every `interval` (zero means 1 s).
    pub fn new(dir: impl Into<PathBuf>, bridge: Arc<dyn ManifestBridge>, interval: Duration) -> Result<Self, CompletionError> {
        let dir = dir.into();
        if dir.as_os_str().is_empty() {
            return Err(CompletionError::Io {
                path: dir,
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "the completion directory is required"),
            });
        }
        let interval = if interval.is_zero() { Duration::from_secs(1) } else { interval };
        Ok(Self { dir, bridge, interval, state: Default::default(), running: Mutex::new(None) })
    }

    /// The poll interval in effect.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> WatcherStats {
        self.state.lock().map(|s| s.stats.clone()).unwrap_or_default()
    }

    /// Starts polling (first poll one interval from now); a second start is a
    /// no-op.
    pub fn start(&self) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.is_some() {
            return;
        }
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let (dir, bridge, state, interval) = (self.dir.clone(), self.bridge.clone(), self.state.clone(), self.interval);
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stopped.changed() => break,
                }
                let (dir, bridge, state) = (dir.clone(), bridge.clone(), state.clone());
                let _ = tokio::task::spawn_blocking(move || poll(&dir, bridge.as_ref(), &state)).await;
            }
            // A final drain, so that work finished just before the stop is applied.
            let _ = tokio::task::spawn_blocking(move || poll(&dir, bridge.as_ref(), &state)).await;
        });
        *running = Some((stop, task));
    }

    /// Stops polling after a final drain; a no-op when not running.
    pub async fn stop(&self) {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((stop, task)) = running {
            let _ = stop.send(true);
            let _ = task.await;
        }
    }

    /// Runs one poll now (for tests, and for the cluster daemon's shutdown
    /// once cluster mode runs the watcher).
    pub fn poll_once(&self) {
        poll(&self.dir, self.bridge.as_ref(), &self.state);
    }
}

fn poll(dir: &Path, bridge: &dyn ManifestBridge, state: &Mutex<WatcherState>) {
    let Ok(mut state) = state.lock() else { return };
    state.stats.polls_total += 1;
    match list_pending(dir) {
        Ok(paths) => {
            for path in paths {
                apply(&path, bridge, &mut state);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list completion manifests"),
    }
    state.stats.last_poll_at = Utc::now().timestamp_nanos_opt().unwrap_or(0);
}

fn apply(path: &Path, bridge: &dyn ManifestBridge, state: &mut WatcherState) {
    let manifest = match read(path) {
        Ok(m) => m,
        Err(e) => {
            state.stats.apply_errors += 1;
            tracing::warn!(error = %e, "cannot read completion manifest");
            return;
        }
    };
    state.stats.manifests_seen += 1;
    if manifest.state == CompletionState::WritingOutput {
        return;
    }
    let registers: Vec<RegisterFile> =
        if state.registered.contains(&manifest.job_id) { Vec::new() } else { manifest.outputs.iter().flatten().cloned().collect() };
    let deletes: Vec<DeleteFile> = if manifest.state == CompletionState::SourcesDeleted {
        let reason = format!("compaction:{}", manifest.job_id);
        manifest.deleted_sources.iter().flatten().map(|p| DeleteFile { path: p.clone(), reason: reason.clone() }).collect()
    } else {
        Vec::new()
    };
    if registers.is_empty() && deletes.is_empty() {
        return;
    }
    state.stats.batch_calls += 1;
    state.stats.register_calls += registers.len() as u64;
    state.stats.delete_calls += deletes.len() as u64;
    match bridge.batch_file_ops(&registers, &deletes) {
        Err(BridgeError::NotLeader { .. }) => {
            state.stats.manifests_not_leader += 1;
            tracing::debug!(job_id = %manifest.job_id, "not the leader; will retry the completion manifest");
        }
        Err(e) => {
            state.stats.apply_errors += 1;
            tracing::error!(job_id = %manifest.job_id, error = %e, "cannot apply completion manifest; will retry");
        }
        Ok(()) => {
            if !registers.is_empty() {
                state.registered.insert(manifest.job_id.clone());
            }
            if manifest.state != CompletionState::SourcesDeleted {
                return;
            }
            match delete(path) {
                Ok(()) => {
                    state.registered.remove(&manifest.job_id);
                    state.stats.manifests_applied += 1;
                }
                Err(e) => {
                    state.stats.apply_errors += 1;
                    tracing::warn!(error = %e, "cannot remove applied completion manifest");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(job_id: &str, state: CompletionState) -> CompletionManifest {
        let t = DateTime::parse_from_rfc3339("2026-04-11T18:00:00Z").unwrap().to_utc();
        CompletionManifest {
            job_id: job_id.into(),
            database: "testdb".into(),
            measurement: "cpu".into(),
            partition_path: "testdb/cpu/2026/04/11/14".into(),
            tier: "hot".into(),
            state,
            outputs: Some(vec![CompletionOutput {
                path: "testdb/cpu/2026/04/11/14/compacted_abc.parquet".into(),
                sha256: "abc123".into(),
                size_bytes: 1024,
                database: "testdb".into(),
                measurement: "cpu".into(),
                partition_time: DateTime::parse_from_rfc3339("2026-04-11T14:00:00Z").unwrap().to_utc(),
                tier: "hot".into(),
                created_at: t,
            }]),
            deleted_sources: None,
            created_at: t,
            updated_at: t,
        }
    }

    #[test]
    fn writes_atomically_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("nested/deeper/.completion/pending");
        let path = write(&nested, &manifest("db_cpu_123", CompletionState::OutputWritten)).unwrap();
        assert_eq!(path, nested.join("db_cpu_123.json"));
        assert!(!nested.join("db_cpu_123.json.tmp").exists());
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&nested).unwrap().permissions().mode() & 0o777, 0o700);
        let mut next = manifest("db_cpu_123", CompletionState::SourcesDeleted);
        next.deleted_sources = Some(vec!["a.parquet".into(), "b.parquet".into()]);
        write(&nested, &next).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.state, CompletionState::SourcesDeleted);
        assert_eq!(back.deleted_sources.unwrap().len(), 2);
    }

    #[test]
    fn job_ids_must_be_plain_file_names() {
        for (bad, fragment) in [
            ("", "empty"),
            ("foo/bar", "path separators"),
            ("foo\\bar", "path separators"),
            ("/absolute", "path separators"),
            ("foo\0bar", "null bytes"),
            ("foo..bar", "'..'"),
            ("..", "'..'"),
            ("safe..", "'..'"),
            (".hidden", "'.'"),
            (".", "'.'"),
        ] {
            let error = validate_job_id(bad).unwrap_err().to_string();
            assert!(error.contains(fragment), "{bad:?}: {error}");
        }
        for good in [
            "simple",
            "mydb_cpu_2026_04_11_14_1234567890",
            "db-with-dashes_measurement",
            "UPPERCASE_OK",
            "unicode_café",
            "db_with.single_dot",
            "trailing_dot.",
        ] {
            assert!(validate_job_id(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn listing_skips_tmp_other_files_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        assert!(list_pending(&dir.path().join("missing")).unwrap().is_empty());
        for name in ["c.json", "a.json", "b.json", "in_progress.json.tmp", "README.md"] {
            std::fs::write(dir.path().join(name), "{}").unwrap();
        }
        std::fs::create_dir(dir.path().join("subdir")).unwrap();
        let names: Vec<String> =
            list_pending(dir.path()).unwrap().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["a.json", "b.json", "c.json"]);
        delete(&dir.path().join("a.json")).unwrap();
        delete(&dir.path().join("never.json")).unwrap();
        assert!(read(&dir.path().join("missing.json")).is_err());
        std::fs::write(dir.path().join("bad.json"), "not json").unwrap();
        assert!(read(&dir.path().join("bad.json")).is_err());
    }

    #[test]
    fn json_has_arc_field_names() {
        let mut m = manifest("j", CompletionState::SourcesDeleted);
        m.deleted_sources = Some(vec!["x".into()]);
        let json = serde_json::to_string(&m).unwrap();
        for key in [
            "job_id",
            "database",
            "measurement",
            "partition_path",
            "tier",
            "state",
            "outputs",
            "deleted_sources",
            "created_at",
            "updated_at",
            "path",
            "sha256",
            "size_bytes",
            "partition_time",
        ] {
            assert!(json.contains(&format!("\"{key}\"")), "{key}");
        }
        assert!(json.contains("\"sources_deleted\""));
    }

    #[test]
    fn orphan_sweep_only_ages_out_writing_output() {
        let dir = tempfile::tempdir().unwrap();
        let now = DateTime::parse_from_rfc3339("2026-04-11T19:00:00Z").unwrap().to_utc();
        let mut old = manifest("old", CompletionState::WritingOutput);
        old.updated_at = now - chrono::Duration::minutes(11);
        let mut fresh = manifest("fresh", CompletionState::WritingOutput);
        fresh.updated_at = now - chrono::Duration::minutes(1);
        let mut pending = manifest("pending", CompletionState::OutputWritten);
        pending.updated_at = now - chrono::Duration::days(3);
        for m in [&old, &fresh, &pending] {
            write(dir.path(), m).unwrap();
        }
        assert_eq!(cleanup_orphans(dir.path(), Duration::ZERO, now).unwrap(), 1);
        assert!(!dir.path().join("old.json").exists());
        assert!(dir.path().join("fresh.json").exists() && dir.path().join("pending.json").exists());
    }

    /// A bridge that records calls and fails the first `fail` of them.
    #[derive(Default)]
    struct FakeBridge {
        calls: Mutex<Vec<(usize, usize)>>,
        failures: Mutex<Vec<BridgeError>>,
    }

    impl ManifestBridge for FakeBridge {
        fn batch_file_ops(&self, registers: &[RegisterFile], deletes: &[DeleteFile]) -> Result<(), BridgeError> {
            self.calls.lock().unwrap().push((registers.len(), deletes.len()));
            match self.failures.lock().unwrap().pop() {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }
    }

    fn watcher(dir: &Path, bridge: Arc<FakeBridge>) -> Watcher {
        Watcher::new(dir, bridge, Duration::from_millis(10)).unwrap()
    }

    #[test]
    fn registers_once_then_deletes_when_sources_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let bridge = Arc::new(FakeBridge::default());
        let w = watcher(dir.path(), bridge.clone());
        write(dir.path(), &manifest("happy_1", CompletionState::OutputWritten)).unwrap();
        w.poll_once();
        w.poll_once();
        assert_eq!(*bridge.calls.lock().unwrap(), [(1, 0)], "registered once, not on every tick");
        assert!(dir.path().join("happy_1.json").exists());
        let mut done = manifest("happy_1", CompletionState::SourcesDeleted);
        done.deleted_sources = Some(vec!["src_a.parquet".into(), "src_b.parquet".into()]);
        write(dir.path(), &done).unwrap();
        w.poll_once();
        assert_eq!(*bridge.calls.lock().unwrap(), [(1, 0), (0, 2)]);
        assert!(!dir.path().join("happy_1.json").exists());
        let stats = w.stats();
        assert_eq!((stats.manifests_applied, stats.register_calls, stats.delete_calls, stats.batch_calls), (1, 1, 2, 2));
    }

    #[test]
    fn writing_output_is_ignored_and_one_shot_applies_in_one_call() {
        let dir = tempfile::tempdir().unwrap();
        let bridge = Arc::new(FakeBridge::default());
        let w = watcher(dir.path(), bridge.clone());
        write(dir.path(), &manifest("writing_1", CompletionState::WritingOutput)).unwrap();
        let mut oneshot = manifest("oneshot_1", CompletionState::SourcesDeleted);
        oneshot.deleted_sources = Some(vec!["s.parquet".into()]);
        write(dir.path(), &oneshot).unwrap();
        w.poll_once();
        assert_eq!(*bridge.calls.lock().unwrap(), [(1, 1)]);
        assert!(dir.path().join("writing_1.json").exists());
        assert_eq!(w.stats().manifests_applied, 1);
    }

    #[test]
    fn not_leader_and_errors_keep_the_manifest_for_the_next_tick() {
        let dir = tempfile::tempdir().unwrap();
        let bridge = Arc::new(FakeBridge::default());
        bridge.failures.lock().unwrap().extend([
            BridgeError::Failed { operation: "batch file ops", message: "raft apply timeout".into() },
            BridgeError::NotLeader { operation: "batch file ops" },
            BridgeError::NotLeader { operation: "batch file ops" },
        ]);
        let w = watcher(dir.path(), bridge.clone());
        let mut m = manifest("job-2", CompletionState::SourcesDeleted);
        m.deleted_sources = Some(vec!["s".into()]);
        write(dir.path(), &m).unwrap();
        for _ in 0..3 {
            w.poll_once();
            assert!(dir.path().join("job-2.json").exists());
        }
        w.poll_once();
        assert!(!dir.path().join("job-2.json").exists());
        let stats = w.stats();
        assert_eq!((stats.manifests_not_leader, stats.apply_errors, stats.manifests_applied, stats.batch_calls), (2, 1, 1, 4));
    }

    #[tokio::test]
    async fn start_and_stop_are_idempotent_and_drain() {
        let dir = tempfile::tempdir().unwrap();
        let bridge = Arc::new(FakeBridge::default());
        let w = watcher(dir.path(), bridge.clone());
        assert_eq!(Watcher::new(dir.path(), bridge.clone(), Duration::ZERO).unwrap().interval(), Duration::from_secs(1));
        w.start();
        w.start();
        let mut m = manifest("multi_00", CompletionState::SourcesDeleted);
        m.deleted_sources = Some(vec!["s".into()]);
        write(dir.path(), &m).unwrap();
        w.stop().await;
        w.stop().await;
        assert_eq!(w.stats().manifests_applied, 1, "the final drain applies pending work");
        assert!(w.stats().polls_total >= 1);
    }
}
