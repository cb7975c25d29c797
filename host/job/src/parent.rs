//! The parent side of a job: run `compactor compact --job-stdin` as a child
//! process, hand it the job on stdin, re-emit its log lines, parse its one
//! JSON result, and describe failures the way the classifier expects. Plus
//! Arc's adaptive retry: a recoverable failure splits the batch in halves.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::classify::{Classification, classify, quoted_stderr};
use crate::{FailureKind, JobConfig, JobResult};

/// Deepest split of a failing batch.
pub(crate) const MAX_RETRY_DEPTH: usize = 4;
pub use compactor_model::MIN_BATCH_FILES;

/// A failed job attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFailure {
    /// What went wrong, in Arc's words (`subprocess failed: signal: killed
    /// (stderr: …)`, or the job's own error).
    pub message: String,
    /// The child's stderr.
    pub stderr: String,
    /// The child's exit code, when it exited with one.
    pub exit_code: Option<i32>,
    /// What kind of failure it was.
    pub kind: FailureKind,
    /// The job's result, when the child produced one.
    pub result: Option<JobResult>,
    /// Never retry, whatever the classification says (e.g. the state the
    /// failed attempt left behind could not be resolved).
    pub permanent: bool,
}

impl std::fmt::Display for JobFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl JobFailure {
    /// A failure of `kind` with nothing else known.
    pub fn new(kind: FailureKind, message: String) -> Self {
        Self { message, stderr: String::new(), exit_code: None, kind, result: None, permanent: false }
    }

    /// The verdict from the kind; a failure nobody typed falls back to Arc's
    /// text rules over the message and `stderr`.
    fn classification_with(&self, stderr: &str) -> Classification {
        match self.kind {
            FailureKind::Unknown => classify(Some(&self.message), stderr, self.exit_code),
            kind => kind.classification(),
        }
    }
}

/// How to start a child job.
#[derive(Debug, Clone)]
pub struct ChildCommand {
    /// The executable (normally this binary).
    pub program: PathBuf,
    /// Extra environment (credentials, fault injection in tests).
    pub env: Vec<(String, String)>,
    /// A job running longer is killed; `None` lets it run.
    pub timeout: Option<std::time::Duration>,
}

impl ChildCommand {
    /// This binary, with the parent's environment.
    pub fn current_exe() -> std::io::Result<Self> {
        Ok(Self { program: std::env::current_exe()?, env: Vec::new(), timeout: None })
    }

    /// Starts a job process, which boots and opens DuckDB, then waits on
    /// stdin for its job: started ahead of the job, it is ready when the job
    /// is.
    pub fn start(&self) -> std::io::Result<StartedChild> {
        let mut child = tokio::process::Command::new(&self.program)
            .args(["compact", "--job-stdin"])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take()) else {
            return Err(std::io::Error::other("no pipe to the subprocess"));
        };
        Ok(StartedChild { child, stdin, stdout, stderr, timeout: self.timeout })
    }

    /// Runs one job in a child process.
    pub async fn run(&self, config: &JobConfig) -> Result<JobResult, JobFailure> {
        let started = self
            .start()
            .map_err(|e| JobFailure::new(FailureKind::Protocol, format!("cannot start subprocess {}: {e}", self.program.display())))?;
        started.run(config).await
    }
}

/// A job process that is waiting for its job.
#[derive(Debug)]
pub struct StartedChild {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::process::ChildStdout,
    stderr: tokio::process::ChildStderr,
    timeout: Option<std::time::Duration>,
}

impl StartedChild {
    /// Whether the process still runs (a started process can be killed
    /// before its job comes).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Hands the process its job and waits for the result.
    pub async fn run(self, config: &JobConfig) -> Result<JobResult, JobFailure> {
        let Self { mut child, mut stdin, stdout, stderr, timeout } = self;
        let failure = |message: String| JobFailure::new(FailureKind::Protocol, message);
        let input = serde_json::to_vec(config).map_err(|e| failure(format!("cannot encode job config: {e}")))?;
        let origin = JobOrigin { job_id: config.job_id.clone(), tier: config.tier.clone(), partition: config.partition_path.clone() };
        let write = async move {
            let _ = stdin.write_all(&input).await;
            drop(stdin);
        };
        // The result is the first complete line: a child stopped or slow
        // after writing it (before it lets go of its output, or while the
        // kernel takes back its memory) has done its job, and is neither
        // waited for nor, under `job_timeout`, killed as a failure.
        let read_result = async move {
            let mut line = Vec::new();
            let _ = BufReader::new(stdout).read_until(b'\n', &mut line).await;
            line
        };
        // Its log lines are passed on as they come, also after the result.
        let stderr_lines = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let collected = stderr_lines.clone();
        let mut read_stderr = tokio::spawn(tracing::Instrument::in_current_span(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                reemit(&origin, &line);
                if !line.trim().is_empty() {
                    let mut all = collected.lock().unwrap_or_else(|e| e.into_inner());
                    all.push_str(&line);
                    all.push('\n');
                }
            }
        }));
        let pid = child.id();
        let finished = async move {
            let ((), out) = tokio::join!(write, read_result);
            let complete = out.ends_with(b"\n");
            let parsed = match serde_json::from_slice::<JobResult>(&out) {
                Ok(result) if complete => {
                    tokio::spawn(async move {
                        let _ = child.wait().await;
                    });
                    Ok(result)
                }
                Ok(_) => Err(("the result line is not complete".to_owned(), child.wait().await)),
                Err(unparsed) => Err((unparsed.to_string(), child.wait().await)),
            };
            (out, parsed)
        };
        tokio::pin!(finished);
        let deadline = async {
            match timeout {
                Some(timeout) => tokio::time::sleep(timeout).await,
                None => std::future::pending().await,
            }
        };
        let ((out, parsed), timed_out) = tokio::select! {
            done = &mut finished => (done, false),
            () = deadline => {
                if let Some(pid) = pid {
                    tracing::error!(job_id = %config.job_id, timeout = ?timeout, "the job ran past compaction.job_timeout; killing it");
                    // SAFETY: signalling our own child, which has not been reaped yet.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                }
                ((&mut finished).await, true)
            }
        };
        // The job's lines are in the pipe before its result (or its exit):
        // they are passed on before the job is reported, but a process that
        // holds the pipe (stopped, or one it left behind) is not waited for.
        let _ = tokio::time::timeout(STDERR_DRAIN, &mut read_stderr).await;
        let err = stderr_lines.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut err = err;
        if timed_out {
            err.push_str(&format!("killed after compaction.job_timeout ({:?})", timeout.unwrap_or_default()));
        }
        let stderr = err.trim_end().to_owned();
        let result = match parsed {
            Ok(result) => result,
            Err((unparsed, status)) => {
                let status = status.map_err(|e| failure(format!("cannot wait for subprocess: {e}")))?;
                if !status.success() {
                    let mut failure = exit_failure(status, stderr);
                    if timed_out {
                        failure.kind = FailureKind::Timeout;
                    }
                    return Err(failure);
                }
                return Err(JobFailure {
                    message: format!(
                        "failed to parse subprocess result: {unparsed} (stdout: {})",
                        String::from_utf8_lossy(&out).trim_end()
                    ),
                    stderr,
                    exit_code: status.code(),
                    kind: FailureKind::Protocol,
                    result: None,
                    permanent: false,
                });
            }
        };
        if !result.success {
            return Err(JobFailure {
                message: result.error.clone().unwrap_or_else(|| "job failed without an error message".into()),
                stderr,
                // A result means the job ran to its end, and so exits 0.
                exit_code: Some(0),
                kind: result.failure_kind.unwrap_or(FailureKind::Unknown),
                result: Some(result),
                permanent: false,
            });
        }
        Ok(result)
    }
}

/// How long the job's log lines are drained after its result or exit.
const STDERR_DRAIN: std::time::Duration = std::time::Duration::from_millis(500);

/// A job process that exited unsuccessfully, described as Arc describes it.
fn exit_failure(status: std::process::ExitStatus, stderr: String) -> JobFailure {
    use std::os::unix::process::ExitStatusExt;
    let (kind, description) = match (status.code(), status.signal()) {
        (_, Some(libc::SIGKILL)) => (FailureKind::Killed, "signal: killed".to_owned()),
        (_, Some(libc::SIGSEGV)) => (FailureKind::Segfault, "signal: segmentation fault".to_owned()),
        (_, Some(libc::SIGABRT)) => (FailureKind::Signal, "signal: aborted".to_owned()),
        (_, Some(signal)) => (FailureKind::Signal, format!("signal: {signal}")),
        (Some(137), None) => (FailureKind::OomKilled, "exit status 137".to_owned()),
        (Some(139), None) => (FailureKind::Segfault, "exit status 139".to_owned()),
        (Some(code), None) => (FailureKind::Unknown, format!("exit status {code}")),
        (None, None) => (FailureKind::Unknown, "unknown exit".to_owned()),
    };
    JobFailure {
        message: format!("subprocess failed: {description} (stderr: {stderr})"),
        stderr,
        exit_code: status.code(),
        kind,
        result: None,
        permanent: false,
    }
}

/// Which job a child's log line belongs to: every re-emitted line says so,
/// so that the engine's and its jobs' lines join up.
struct JobOrigin {
    job_id: String,
    tier: String,
    partition: String,
}

/// Re-emits one child log line at the level it carries.
fn reemit(origin: &JobOrigin, line: &str) {
    if line.trim().is_empty() {
        return;
    }
    let parsed: Option<serde_json::Value> = serde_json::from_str(line).ok();
    let level = parsed.as_ref().and_then(|v| v.get("level")).and_then(|l| l.as_str()).unwrap_or("info").to_ascii_lowercase();
    let fields = parsed.as_ref().and_then(|v| v.get("fields")).and_then(|f| f.as_object());
    let message = match fields {
        Some(fields) => fields
            .iter()
            .map(|(k, v)| match (k.as_str(), v.as_str()) {
                ("message", Some(text)) => text.to_owned(),
                (_, Some(text)) => format!("{k}={text}"),
                _ => format!("{k}={v}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        None => line.to_owned(),
    };
    let JobOrigin { job_id, tier, partition } = origin;
    match level.as_str() {
        "error" => tracing::error!(subprocess = "compaction", job_id, tier, partition, "{message}"),
        "warn" => tracing::warn!(subprocess = "compaction", job_id, tier, partition, "{message}"),
        "debug" => tracing::debug!(subprocess = "compaction", job_id, tier, partition, "{message}"),
        "trace" => tracing::trace!(subprocess = "compaction", job_id, tier, partition, "{message}"),
        _ => tracing::info!(subprocess = "compaction", job_id, tier, partition, "{message}"),
    }
}

/// One attempt of the adaptive retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Files in the attempt.
    pub files: usize,
    /// Its job id (its log lines carry it).
    pub job_id: String,
    /// The job's result, or its failure.
    pub outcome: Result<JobResult, JobFailure>,
}

impl Attempt {
    /// What the job process reported, a failed job's result included.
    pub fn result(&self) -> Option<&JobResult> {
        match &self.outcome {
            Ok(result) => Some(result),
            Err(failure) => failure.result.as_ref(),
        }
    }
}

/// Why a batch did not fully succeed: the kind of the failure that ended
/// it (the last attempt's, through any halving), and Arc's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchFailure {
    /// What kind of failure ended the batch.
    pub kind: FailureKind,
    /// What went wrong, with the halves that failed (`first half failed: …`).
    pub message: String,
}

impl std::fmt::Display for BatchFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What running a job over a subset gave: its job id and its outcome.
pub type RunOutcome = (String, Result<JobResult, JobFailure>);

/// Runs a job over a subset of files.
pub type RunSubset<'a> = dyn Fn(Vec<String>) -> Pin<Box<dyn Future<Output = RunOutcome> + Send + 'a>> + Sync + 'a;

/// A boxed future that may cross threads.
pub type BoxedFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the halving retry asks of whoever runs the jobs.
pub trait BatchRunner: Sync {
    /// Runs a job over `files`; returns its job id and outcome.
    fn run(&self, files: Vec<String>) -> BoxedFuture<'_, RunOutcome>;

    /// Settles a failed job before anything is retried: a job killed after
    /// its recovery manifest may have uploaded its output, and a retry in
    /// halves would then merge the same rows a second time. Returns the
    /// outcome to go on with (a success when recovery finished the job);
    /// a failure marked permanent is not retried.
    fn settle<'s>(&'s self, job_id: &'s str, files: &'s [String], failure: JobFailure) -> BoxedFuture<'s, Result<JobResult, JobFailure>> {
        let _ = (job_id, files);
        Box::pin(std::future::ready(Err(failure)))
    }
}

/// A [`BatchRunner`] that only runs jobs (nothing to settle).
pub struct RunJobs<'a>(pub &'a RunSubset<'a>);

impl BatchRunner for RunJobs<'_> {
    fn run(&self, files: Vec<String>) -> BoxedFuture<'_, RunOutcome> {
        (self.0)(files)
    }
}

/// Arc's adaptive compaction: run the batch; on a failure, settle it; on a
/// recoverable one split it at n/2 and run the first half, then (only if it
/// succeeded) the second, down to depth 4 or 2 files. Returns every attempt,
/// in order, and the final error if the batch did not fully succeed.
pub async fn compact_adaptive(runner: &dyn BatchRunner, files: Vec<String>) -> (Vec<Attempt>, Result<(), BatchFailure>) {
    let mut attempts = Vec::new();
    let outcome = attempt(runner, files, 0, String::new(), None, &mut attempts).await;
    (attempts, outcome)
}

fn attempt<'b>(
    run: &'b dyn BatchRunner,
    files: Vec<String>,
    depth: usize,
    previous_stderr: String,
    cause: Option<BatchFailure>,
    attempts: &'b mut Vec<Attempt>,
) -> Pin<Box<dyn Future<Output = Result<(), BatchFailure>> + Send + 'b>> {
    Box::pin(async move {
        // Halving stops at a limit: the batch failed of what made it halve.
        let kind = cause.as_ref().map_or(FailureKind::Unknown, |c| c.kind);
        if depth > MAX_RETRY_DEPTH {
            return Err(BatchFailure { kind, message: format!("compaction failed: exceeded max retry depth {MAX_RETRY_DEPTH}") });
        }
        if files.len() < MIN_BATCH_FILES {
            let after = cause.map(|c| format!(" (after: {})", c.message)).unwrap_or_default();
            let message = format!("compaction failed: batch size {} below minimum {MIN_BATCH_FILES}{after}", files.len());
            return Err(BatchFailure { kind, message });
        }
        let count = files.len();
        let (job_id, outcome) = run.run(files.clone()).await;
        let outcome = match outcome {
            Ok(result) => Ok(result),
            Err(failure) => run.settle(&job_id, &files, failure).await,
        };
        let failure = match outcome {
            Ok(result) => {
                attempts.push(Attempt { files: count, job_id, outcome: Ok(result) });
                return Ok(());
            }
            Err(failure) => failure,
        };
        attempts.push(Attempt { files: count, job_id, outcome: Err(failure.clone()) });
        let stderr =
            quoted_stderr(&failure.message).unwrap_or(if failure.stderr.is_empty() { previous_stderr } else { failure.stderr.clone() });
        let verdict = failure.classification_with(&stderr);
        let ended = BatchFailure { kind: failure.kind, message: failure.message };
        if failure.permanent || !verdict.recoverable || count <= MIN_BATCH_FILES {
            return Err(ended);
        }
        tracing::warn!(files = count, reason = verdict.reason, "recoverable failure; retrying in halves");
        let mid = count / 2;
        let (first, second) = (files[..mid].to_vec(), files[mid..].to_vec());
        let half = |which: &str, e: BatchFailure| BatchFailure { kind: e.kind, message: format!("{which} half failed: {}", e.message) };
        attempt(run, first, depth + 1, stderr.clone(), Some(ended.clone()), attempts).await.map_err(|e| half("first", e))?;
        attempt(run, second, depth + 1, stderr, Some(ended), attempts).await.map_err(|e| half("second", e))
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A stand-in job process: `body` as a shell script, run as
    /// `job.sh compact --job-stdin`.
    fn script(dir: &std::path::Path, body: &str) -> ChildCommand {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("job.sh");
        std::fs::write(&path, format!("#!/bin/sh\n[ -n \"$JOB_SH_PROBE\" ] && exit 0\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A process another test forked while the script was being written
        // holds it open for writing until it execs, and executing it then
        // fails with "Text file busy" (seen once in CI). Once a probe run
        // succeeds, no writer is left, and none can appear.
        for _ in 0..500 {
            match std::process::Command::new(&path).env("JOB_SH_PROBE", "1").status() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => std::thread::sleep(std::time::Duration::from_millis(2)),
                probed => {
                    assert!(probed.unwrap().success());
                    break;
                }
            }
        }
        ChildCommand { program: path, env: Vec::new(), timeout: Some(std::time::Duration::from_secs(60)) }
    }

    fn job() -> JobConfig {
        serde_json::from_value(serde_json::json!({
            "database": "db", "measurement": "cpu", "partition_path": "db/cpu/2026/04/11/00", "files": [],
            "tier": "hourly", "storage_type": "local", "storage_config": "{}",
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_job_that_wrote_its_result_and_closed_its_output_is_not_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        // Its exit takes a minute (as freeing a large merge's memory takes a
        // while): the result is what counts.
        let mut command =
            script(dir.path(), r#"cat >/dev/null; echo '{"success":true,"files_compacted":2}'; exec >/dev/null 2>&1; sleep 60"#);
        // Waiting for the exit would run into this and fail the job as killed.
        command.timeout = Some(std::time::Duration::from_secs(5));
        let result = command.run(&job()).await.unwrap();
        assert_eq!(result.files_compacted, 2);
    }

    /// Issue 21 §4a: the parent used to wait for the end of the child's
    /// output, so a child stopped between its result and letting go of its
    /// output held the cycle, and under `job_timeout` a job that succeeded
    /// was killed and failed as a timeout.
    #[tokio::test]
    async fn a_job_stopped_right_after_its_result_is_taken_at_its_result_line() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let mut command = script(
            dir.path(),
            &format!(r#"cat >/dev/null; echo $$ > {}; echo '{{"success":true,"files_compacted":2}}'; kill -STOP $$"#, pid_file.display()),
        );
        command.timeout = Some(std::time::Duration::from_secs(5));
        let started = std::time::Instant::now();
        let result = command.run(&job()).await;
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        // SAFETY: the stopped script is this test's own grandchild.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        assert_eq!(result.unwrap().files_compacted, 2);
        assert!(started.elapsed() < std::time::Duration::from_secs(4), "taken at once, not at the timeout: {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_job_that_ends_without_a_result_is_waited_for_and_described() {
        let dir = tempfile::tempdir().unwrap();
        let command = script(dir.path(), "cat >/dev/null; echo 'half a result' >&2; exec >/dev/null 2>&1; sleep 1; exit 3");
        let failure = command.run(&job()).await.unwrap_err();
        assert_eq!(failure.exit_code, Some(3));
        assert_eq!(failure.message, "subprocess failed: exit status 3 (stderr: half a result)");
    }

    #[tokio::test]
    async fn a_started_process_killed_before_its_job_is_not_reused_and_fails_as_killed() {
        let dir = tempfile::tempdir().unwrap();
        let command = script(dir.path(), r#"cat >/dev/null; echo '{"success":true}'"#);
        let mut started = command.start().unwrap();
        assert!(started.is_running(), "it waits for its job");
        let pid = started.child.id().unwrap();
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        while started.is_running() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // The manager starts a new process then; one handed the job anyway
        // fails as a killed job does (retried in halves), and never hangs.
        let failure = started.run(&job()).await.unwrap_err();
        assert_eq!(failure.kind, FailureKind::Killed);
    }

    fn files(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("f{i}")).collect()
    }

    fn failing(message: &str) -> JobFailure {
        JobFailure::new(FailureKind::Unknown, message.into())
    }

    #[tokio::test]
    async fn recoverable_failures_split_in_halves_first_half_first() {
        let sizes = Mutex::new(Vec::new());
        let run = |f: Vec<String>| -> Pin<Box<dyn Future<Output = RunOutcome> + Send + '_>> {
            sizes.lock().unwrap().push(f.len());
            let n = f.len();
            Box::pin(async move {
                (String::new(), if n > 15 { Err(failing("subprocess failed: signal: killed")) } else { Ok(JobResult::default()) })
            })
        };
        let (attempts, outcome) = compact_adaptive(&RunJobs(&run), files(30)).await;
        assert_eq!(outcome, Ok(()));
        assert_eq!(*sizes.lock().unwrap(), [30, 15, 15]);
        assert_eq!(attempts.len(), 3);
    }

    #[tokio::test]
    async fn permanent_failures_make_one_attempt_and_small_batches_never_split() {
        let count = Mutex::new(0);
        let run = |_f: Vec<String>| -> Pin<Box<dyn Future<Output = RunOutcome> + Send + '_>> {
            *count.lock().unwrap() += 1;
            Box::pin(async { (String::new(), Err(failing("failed to execute compaction query: Binder Error: nope"))) })
        };
        let (_, outcome) = compact_adaptive(&RunJobs(&run), files(30)).await;
        assert!(outcome.unwrap_err().message.contains("Binder Error"));
        assert_eq!(*count.lock().unwrap(), 1);
        let (_, outcome) = compact_adaptive(&RunJobs(&run), files(1)).await;
        assert_eq!(outcome.unwrap_err().message, "compaction failed: batch size 1 below minimum 2");
    }

    #[tokio::test]
    async fn the_kind_decides_not_the_text() {
        let count = Mutex::new(0);
        let run = |_f: Vec<String>| -> Pin<Box<dyn Future<Output = RunOutcome> + Send + '_>> {
            *count.lock().unwrap() += 1;
            // No marker in the text: only the kind says it is permanent.
            Box::pin(async { (String::new(), Err(JobFailure::new(FailureKind::Sql, "the merge failed".into()))) })
        };
        let (_, outcome) = compact_adaptive(&RunJobs(&run), files(30)).await;
        assert_eq!(outcome.unwrap_err(), BatchFailure { kind: FailureKind::Sql, message: "the merge failed".into() });
        assert_eq!(*count.lock().unwrap(), 1, "a SQL error is not retried");
    }

    /// Kills every job, and settles each as recovery would find it: the
    /// first job had uploaded its output before it died.
    struct UploadedThenKilled(Mutex<Vec<usize>>);

    impl BatchRunner for UploadedThenKilled {
        fn run(&self, files: Vec<String>) -> BoxedFuture<'_, RunOutcome> {
            self.0.lock().unwrap().push(files.len());
            Box::pin(async { ("job-1".into(), Err(JobFailure::new(FailureKind::Killed, "subprocess failed: signal: killed".into()))) })
        }

        fn settle<'s>(
            &'s self,
            job_id: &'s str,
            files: &'s [String],
            failure: JobFailure,
        ) -> BoxedFuture<'s, Result<JobResult, JobFailure>> {
            let finished = job_id == "job-1" && files.len() == 30;
            Box::pin(async move {
                if finished { Ok(JobResult { success: true, files_compacted: 30, ..Default::default() }) } else { Err(failure) }
            })
        }
    }

    #[tokio::test]
    async fn a_failed_job_is_settled_before_it_is_halved() {
        let runner = UploadedThenKilled(Mutex::new(Vec::new()));
        let (attempts, outcome) = compact_adaptive(&runner, files(30)).await;
        assert_eq!(outcome, Ok(()), "recovery finished the job: nothing to retry");
        assert_eq!(*runner.0.lock().unwrap(), [30], "no half ran: its rows would have been merged twice");
        assert_eq!(attempts.len(), 1);
        assert!(attempts[0].outcome.as_ref().is_ok_and(|r| r.files_compacted == 30));
    }

    #[tokio::test]
    async fn a_failed_first_half_skips_the_second() {
        let sizes = Mutex::new(Vec::new());
        let run = |f: Vec<String>| -> Pin<Box<dyn Future<Output = RunOutcome> + Send + '_>> {
            sizes.lock().unwrap().push(f.len());
            Box::pin(async { (String::new(), Err(JobFailure::new(FailureKind::Killed, "subprocess failed: signal: killed".into()))) })
        };
        let (_, outcome) = compact_adaptive(&RunJobs(&run), files(30)).await;
        // 30 → 15 → 7 → 3 → 1: the 1-file half is refused.
        assert_eq!(*sizes.lock().unwrap(), [30, 15, 7, 3]);
        let BatchFailure { kind, message: error } = outcome.unwrap_err();
        assert_eq!(kind, FailureKind::Killed, "the batch failed of what made it halve");
        assert!(
            error
                .starts_with("first half failed: first half failed: first half failed: first half failed: compaction failed: batch size 1"),
            "{error}"
        );
        assert!(error.ends_with("(after: subprocess failed: signal: killed)"), "the cause is kept: {error}");
        sizes.lock().unwrap().clear();
        let (_, outcome) = compact_adaptive(&RunJobs(&run), files(2)).await;
        assert_eq!(*sizes.lock().unwrap(), [2], "two files never split");
        assert!(outcome.is_err());
    }
}
