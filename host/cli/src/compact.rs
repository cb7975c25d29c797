//! `compactor compact --job-stdin`: the child side of a job. Reads one JSON
//! job config, writes exactly one JSON result on stdout and JSON log lines on
//! stderr. Exits 0 whenever the job ran (even if it failed), 1 when it could
//! not run at all.

use std::io::{Read, Write};
use std::process::ExitCode;

use compactor_job::{JobConfig, child, job_id};
use compactor_storage::{Storage, StoreDescriptor};

/// Run one compaction job (used by the engine itself; JSON in, JSON out).
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Read the job config (JSON) from stdin.
    #[arg(long)]
    job_stdin: bool,
    /// The job config as a JSON argument (legacy).
    #[arg(long, value_name = "JSON")]
    job: Option<String>,
}

pub(crate) fn exec(args: Args) -> anyhow::Result<ExitCode> {
    // Die with the parent: a job outliving a killed engine would race the
    // next engine's recovery.
    // SAFETY: prctl with PR_SET_PDEATHSIG only sets a flag on this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let fail = |message: String| {
        eprintln!("error: {message}");
        Ok(ExitCode::from(1))
    };
    // DuckDB opens before the job arrives: the engine starts this process
    // ahead of its job.
    let duckdb = match child::open_duckdb() {
        Ok(connection) => connection,
        Err(e) => return fail(format!("{e:#}")),
    };
    let text = match (args.job_stdin, args.job) {
        (true, _) => {
            let mut text = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut text) {
                return fail(format!("cannot read stdin: {e}"));
            }
            text
        }
        (false, Some(json)) => json,
        (false, None) => return fail("--job-stdin or --job flag required".into()),
    };
    let mut config: JobConfig = match serde_json::from_str(&text) {
        Ok(config) => config,
        Err(e) => return fail(format!("invalid job config: {e}")),
    };
    if config.job_id.is_empty() {
        config.job_id = job_id(&config.database, &config.partition_path, chrono::Utc::now(), config.batch_number);
    }
    let storage = match StoreDescriptor::from_arc(&config.storage_type, &config.storage_config).and_then(|d| Storage::from_descriptor(&d)) {
        Ok(storage) => storage,
        Err(e) => return fail(e.to_string()),
    };
    child::configure_duckdb(&duckdb, &config);
    let (storage, counts) = storage.counted();
    let (mut result, work_dir) = child::run(&config, &storage, &duckdb);
    result.requests = counts.snapshot();
    let json = match serde_json::to_string(&result) {
        Ok(json) => json,
        Err(e) => {
            work_dir.remove();
            return fail(format!("cannot encode the result: {e}"));
        }
    };
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{json}").and_then(|()| stdout.flush()).is_err() {
        work_dir.remove();
        return Ok(ExitCode::from(1));
    }
    drop(stdout);
    // The job is over and the parent has all it needs: ending the output
    // lets it go on without waiting for this process to finish; the work
    // directory is removed meanwhile. Exiting without closing DuckDB saves
    // handing its buffers back one by one (the kernel takes them at once).
    // `_exit` skips the C++ static destructors, which DuckDB's still running
    // threads could trip over.
    detach_output();
    work_dir.remove();
    // SAFETY: ends the process; everything it must write is written.
    unsafe { libc::_exit(0) }
}

/// Points stdout and stderr at `/dev/null`, which closes this process's end
/// of the parent's pipes.
fn detach_output() {
    let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") else {
        return;
    };
    for fd in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: dup2 onto the standard descriptors, which stay open (now on
        // /dev/null) for anything that still writes to them.
        unsafe {
            libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd);
        }
    }
}
