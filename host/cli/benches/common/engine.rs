//! What the benchmarks that run the engine's jobs share: the engine set up
//! on one store with one tier, a cycle timed, and the same merge statement
//! in the official DuckDB build.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::DateTime;
use compactor_engine::config::Config;
use compactor_engine::{CycleOptions, Manager};
use compactor_job::ChildCommand;
use compactor_job::sql::{DEFAULT_ROW_GROUP_SIZE, TIME_NORMALISATION, file_list, order_by, write_options};
use compactor_runtime::{ArtifactCache, PluginRuntime};
use compactor_storage::Storage;

/// DuckDB threads of every side.
pub(crate) const THREADS: usize = 2;
/// DuckDB's memory limit of every side.
pub(crate) const MEMORY_LIMIT: &str = "1GB";
/// The cycles' `now`: two days after the benchmarks' partitions.
pub(crate) const NOW: &str = "2026-04-13T00:00:00Z";

pub(crate) fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

/// The merge statement both baselines run: the job's DuckDB SQL for this
/// partition.
pub(crate) fn merge_sql(inputs: &[PathBuf], output: &Path, order: &[&str], row_group_size: u64) -> String {
    let files: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
    let order: Vec<String> = order.iter().map(|k| (*k).to_owned()).collect();
    format!(
        "COPY (SELECT * REPLACE ({TIME_NORMALISATION}) FROM read_parquet({}, union_by_name=true) {}) TO '{}' ({})",
        file_list(&files),
        order_by(&order),
        output.display(),
        write_options(row_group_size, &order)
    )
}

/// The DuckDB version the engine bundles; the official build compared with
/// it is the Python wheel of the same version.
pub(crate) const OFFICIAL_DUCKDB: &str = "1.4.5";

/// The same statement in the official DuckDB build (the Python wheel of the
/// bundled version, installed from PyPI if missing): the best of `runs` in one process, timed inside
/// Python, so interpreter start-up is not counted. `None` when Python or the
/// wheel cannot be had.
pub(crate) fn official_duckdb(inputs: &[PathBuf], output: &Path, order: &[&str], runs: usize) -> anyhow::Result<Option<(Duration, u64)>> {
    let has_wheel = |python: &str| {
        std::process::Command::new(python)
            .args(["-c", &format!("import duckdb, sys; sys.exit(duckdb.__version__ != '{OFFICIAL_DUCKDB}')")])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has_wheel("python3") {
        let _ =
            std::process::Command::new("python3").args(["-m", "pip", "install", "--quiet", &format!("duckdb=={OFFICIAL_DUCKDB}")]).status();
        if !has_wheel("python3") {
            eprintln!("official DuckDB {OFFICIAL_DUCKDB} (pip install duckdb=={OFFICIAL_DUCKDB}) is not available; skipping that baseline");
            return Ok(None);
        }
    }
    let script = format!(
        "import duckdb, resource, sys, time\n\
         sql = sys.stdin.read()\n\
         best = None\n\
         for _ in range({runs}):\n\
         \x20   con = duckdb.connect()\n\
         \x20   con.execute(\"SET threads={THREADS}; SET memory_limit='{MEMORY_LIMIT}'; SET TimeZone='UTC'; SET enable_progress_bar=false\")\n\
         \x20   t = time.perf_counter(); con.execute(sql); e = time.perf_counter() - t\n\
         \x20   best = e if best is None else min(best, e)\n\
         \x20   con.close()\n\
         print(best, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)\n"
    );
    let mut child = std::process::Command::new("python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let sql = merge_sql(inputs, output, order, DEFAULT_ROW_GROUP_SIZE);
    std::io::Write::write_all(&mut child.stdin.take().ok_or_else(|| anyhow::anyhow!("no stdin"))?, sql.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(out.status.success(), "the official DuckDB run failed");
    let out = String::from_utf8(out.stdout)?;
    let mut fields = out.lines().last().unwrap_or_default().split_whitespace();
    let best: f64 = fields.next().unwrap_or_default().parse()?;
    let peak_rss: u64 = fields.next().unwrap_or_default().parse()?;
    Ok(Some((Duration::from_secs_f64(best), peak_rss)))
}

/// A partition's shape for the engine: its tier, sort keys and row groups.
#[derive(Clone, Copy)]
pub(crate) struct Shape {
    pub(crate) tier: &'static str,
    pub(crate) sort_keys: &'static [&'static str],
    pub(crate) row_group_size: u64,
    /// More `[compaction]` lines (TOML).
    pub(crate) compaction: &'static str,
}

pub(crate) fn config(work: &Path, lake: &Path, temp: &str, shape: Shape) -> anyhow::Result<Config> {
    // The storage URL is not used: the manager gets its store directly.
    let keys: Vec<String> = shape.sort_keys.iter().map(|k| format!("{k:?}")).collect();
    let mut config = Config::parse(&format!(
        "[storage]\nurl = \"{}\"\n[compaction]\nthreads = {THREADS}\nmemory_limit = \"{MEMORY_LIMIT}\"\ntemp_directory = \"{}\"\n\
         row_group_size = {}\ndefault_sort_keys = [{}]\n{}\n[[tiers]]\nname = \"{}\"\nplugin = \"builtin:{}\"\n",
        lake.display(),
        work.join(temp).display(),
        shape.row_group_size,
        keys.join(", "),
        shape.compaction,
        shape.tier,
        shape.tier
    ))?;
    config.base_dir = work.to_owned();
    Ok(config)
}

pub(crate) fn manager(work: &Path, storage: Storage, temp: &str, shape: Shape) -> anyhow::Result<Manager> {
    let config = config(work, work, temp, shape)?;
    let plugins = PluginRuntime::new(ArtifactCache::new(std::env::temp_dir().join("compactor-bench-artifacts")))?
        .with_builtins(compactor_builtin::BUILTINS);
    let tiers = compactor_engine::load_tiers(&config, &plugins);
    let child = ChildCommand { program: env!("CARGO_BIN_EXE_compactor").into(), env: Vec::new(), timeout: None };
    Ok(Manager::new(config, storage, tiers, plugins, child))
}

/// One cycle of `shape`'s tier over `storage`: its wall time and report.
pub(crate) fn run_cycle(
    work: &Path,
    storage: Storage,
    temp: &str,
    shape: Shape,
) -> anyhow::Result<(Duration, compactor_engine::CycleReport)> {
    let manager = manager(work, storage, temp, shape)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let now = DateTime::parse_from_rfc3339(NOW)?.to_utc();
    let started = Instant::now();
    let report = runtime.block_on(manager.run_cycle(CycleOptions { now: Some(now), ..Default::default() }))?;
    let elapsed = started.elapsed();
    anyhow::ensure!(!report.jobs.is_empty() && report.all_succeeded(), "engine run failed: {:?}", report.jobs);
    Ok((elapsed, report))
}
