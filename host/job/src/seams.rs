//! What happens between the job's steps besides the steps themselves: in
//! cluster mode, completion manifests that hand the output to the writer
//! nodes; in the crash tests, a kill or a stall at a named point. The steps
//! call [`Seams`] at fixed points and never branch on either.

use std::path::{Path, PathBuf};

use anyhow::bail;
use chrono::Utc;

use crate::JobConfig;
use crate::completion::{self, CompletionManifest, CompletionOutput, CompletionState};

/// The seams of one job.
pub(crate) struct Seams<'a> {
    faults: Faults,
    completion: Option<Completion<'a>>,
}

impl<'a> Seams<'a> {
    /// Fault injection from the environment, and completion manifests when
    /// the job has a completion directory.
    pub(crate) fn for_job(config: &'a JobConfig) -> Self {
        Self { faults: Faults::from_env(), completion: (!config.completion_dir.is_empty()).then_some(Completion { config }) }
    }

    /// The job began.
    pub(crate) fn started(&self) {
        if let Some(completion) = &self.completion {
            completion.write(CompletionState::WritingOutput, None, None);
        }
    }

    /// The job ends without an output (every input vanished, or none has a
    /// `time` column).
    pub(crate) fn nothing_to_do(&self) {
        if let Some(completion) = &self.completion {
            completion.discard();
        }
    }

    /// `point` of the job was reached (`after-download`, `mid-upload`, …).
    pub(crate) fn at(&self, point: &'static str) {
        self.faults.at(point);
    }

    /// The output is in the store at `key`; a completion manifest that
    /// cannot be written fails the job before any input is deleted.
    pub(crate) fn uploaded(&self, local: &Path, key: &str, size: u64) -> anyhow::Result<()> {
        match &self.completion {
            Some(completion) => completion.output_written(local, key, size),
            None => Ok(()),
        }
    }

    /// The inputs are deleted.
    pub(crate) fn inputs_deleted(&self, inputs: &[String]) {
        if let Some(completion) = &self.completion {
            completion.sources_deleted(inputs);
        }
    }
}

/// `COMPACTOR_FAULT=point` kills the job with SIGKILL there;
/// `COMPACTOR_STALL=point:millis:path` creates `path` there and sleeps, so a
/// test can cut the store off at that exact point. Read once per job.
struct Faults {
    kill_at: Option<String>,
    stall: Option<(String, u64, Option<PathBuf>)>,
}

impl Faults {
    fn from_env() -> Self {
        let stall = std::env::var("COMPACTOR_STALL").ok().map(|stall| {
            let mut parts = stall.splitn(3, ':');
            let point = parts.next().unwrap_or_default().to_owned();
            let millis = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
            (point, millis, parts.next().map(PathBuf::from))
        });
        Self { kill_at: std::env::var("COMPACTOR_FAULT").ok(), stall }
    }

    fn at(&self, point: &str) {
        if let Some((stall_at, millis, path)) = &self.stall
            && stall_at == point
        {
            if let Some(path) = path {
                let _ = std::fs::write(path, point);
            }
            std::thread::sleep(std::time::Duration::from_millis(*millis));
        }
        if self.kill_at.as_deref() == Some(point) {
            tracing::warn!(step = point, "fault injection: killing the job");
            // SAFETY: raising a signal on our own process has no memory effects.
            unsafe {
                libc::raise(libc::SIGKILL);
            }
        }
    }
}

/// Completion manifests of one job in cluster mode.
struct Completion<'a> {
    config: &'a JobConfig,
}

impl Completion<'_> {
    fn dir(&self) -> &Path {
        Path::new(&self.config.completion_dir)
    }

    fn path(&self) -> PathBuf {
        self.dir().join(format!("{}.json", self.config.job_id))
    }

    fn manifest(&self, state: CompletionState, outputs: Option<Vec<CompletionOutput>>, deleted: Option<Vec<String>>) -> CompletionManifest {
        let now = Utc::now();
        CompletionManifest {
            job_id: self.config.job_id.clone(),
            database: completion_database(&self.config.database),
            measurement: self.config.measurement.clone(),
            partition_path: self.config.partition_path.clone(),
            tier: self.config.tier.clone(),
            state,
            outputs,
            deleted_sources: deleted,
            created_at: now,
            updated_at: now,
        }
    }

    fn write(&self, state: CompletionState, outputs: Option<Vec<CompletionOutput>>, deleted: Option<Vec<String>>) -> bool {
        match completion::write(self.dir(), &self.manifest(state, outputs, deleted)) {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot write completion manifest");
                false
            }
        }
    }

    fn output_written(&self, local: &Path, key: &str, size: u64) -> anyhow::Result<()> {
        let output = CompletionOutput {
            path: key.to_owned(),
            sha256: sha256_file(local)?,
            size_bytes: size,
            database: completion_database(&self.config.database),
            measurement: self.config.measurement.clone(),
            partition_time: self.config.partition_time,
            tier: self.config.tier.clone(),
            created_at: Utc::now(),
        };
        if !self.write(CompletionState::OutputWritten, Some(vec![output]), None) {
            bail!("failed to write completion manifest");
        }
        Ok(())
    }

    fn sources_deleted(&self, inputs: &[String]) {
        let updated = completion::read(&self.path()).and_then(|mut m| {
            m.state = CompletionState::SourcesDeleted;
            m.deleted_sources = Some(inputs.to_vec());
            m.updated_at = Utc::now();
            completion::write(self.dir(), &m)
        });
        if let Err(e) = updated {
            tracing::warn!(error = %e, "cannot update completion manifest to sources_deleted");
        }
    }

    fn discard(&self) {
        let _ = completion::delete(&self.path());
    }
}

/// The database as Arc's completion manifests name it: without a
/// pseudo-database prefix (`spoke/db` → `db`).
fn completion_database(database: &str) -> String {
    database.split_once('/').map_or(database, |(_, db)| db).to_owned()
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut file = std::fs::File::open(path)?;
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}
