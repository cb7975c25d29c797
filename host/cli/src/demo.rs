//! `compactor demo`: builds a sample lake on local disk, shows the built-in
//! tiers' plan, compacts hourly then daily, checks that every row survived,
//! and prints a before/after report.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use compactor_engine::CycleOptions;
use compactor_job::sample::{self, SampleSpec};
use compactor_job::verify::{self, Fingerprint};

use crate::Format;
use crate::table::Table;

/// Marks a directory as made by `demo`, so a rerun may replace it.
const MARKER: &str = ".compactor-demo";

/// Build a sample lake, compact it with the built-in tiers, and verify every row.
#[derive(Debug, clap::Args)]
#[command(after_help = "Writes a day of hourly partitions (cpu, mem, disk; 12 small Parquet files per hour)\n\
under DIR/lake and a config under DIR/compactor.toml, prints the plan of the built-in\n\
hourly and daily tiers, runs one cycle (hourly, then daily), checks with DuckDB that\n\
the lake holds exactly the rows it had, and reports files, bytes and the time of a\n\
query before and after. A directory made by an earlier demo is replaced; any other\n\
non-empty directory is refused. Exit status 1 if a row was lost or duplicated.")]
pub(crate) struct Args {
    /// Where to build the sample lake.
    #[arg(long, value_name = "DIR", default_value = "./data/demo")]
    dir: PathBuf,
    /// Output format of the plan and the cycle summary.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// Only build the lake and show the plan; compact nothing.
    #[arg(long)]
    plan_only: bool,
}

pub(crate) fn exec(args: Args) -> anyhow::Result<ExitCode> {
    prepare_dir(&args.dir)?;
    let lake_dir = args.dir.join("lake");
    let now = Utc::now();
    let started = std::time::Instant::now();
    let lake = sample::generate(&lake_dir, now, &SampleSpec::default())?;
    eprintln!(
        "generated {} files ({} rows, {}) for {} under {} in {:.1?}",
        lake.files,
        lake.rows,
        compactor_model::units::format_bytes(lake.bytes),
        lake.day.format("%Y-%m-%d"),
        lake_dir.display(),
        started.elapsed()
    );
    let config_path = args.dir.join("compactor.toml");
    std::fs::write(&config_path, "[storage]\nurl = \"lake\"\n\n[compaction]\ntemp_directory = \"compaction\"\n")
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let manager = crate::open_manager(&config_path, &[])?;
    let options = CycleOptions { now: Some(now), ..Default::default() };
    let plan = crate::plan::plan(&manager, &options)?;
    crate::plan::print_plan(&plan, args.format, false)?;
    if args.plan_only || !plan.problems.is_empty() {
        eprintln!("try: compactor plan --config {}", config_path.display());
        return Ok(if plan.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) });
    }

    let lake_root = std::fs::canonicalize(&lake_dir)?;
    let before = Snapshot::take(&lake_root)?;
    let progress = crate::progress::attach(&manager);
    let report = crate::runtime()?.block_on(manager.run_cycle(options))?;
    progress.finish();
    println!();
    crate::once::print_report(&report, args.format)?;
    let after = Snapshot::take(&lake_root)?;

    let mut table = Table::new(["", "FILES", "SIZE", "ROWS", "QUERY"]);
    for (label, s) in [("before", &before), ("after", &after)] {
        table.row([
            label.to_owned(),
            s.files.to_string(),
            compactor_model::units::format_bytes(s.bytes),
            s.fingerprints.iter().map(|(_, f)| f.rows).sum::<u64>().to_string(),
            format!("{:.1} ms", s.query.as_secs_f64() * 1000.0),
        ]);
    }
    println!();
    let intact = before.fingerprints == after.fingerprints;
    table.print(&format!(
        "every row survived: {} (row count and checksum of every measurement compared); query: {}",
        if intact { "yes" } else { "NO" },
        QUERY_DESCRIPTION
    ))?;
    Ok(if intact && report.all_succeeded() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

const QUERY_DESCRIPTION: &str = "per-host count and average of cpu, best of 3";

/// What the demo compares before and after compacting.
struct Snapshot {
    files: usize,
    bytes: u64,
    fingerprints: Vec<(String, Fingerprint)>,
    query: Duration,
}

impl Snapshot {
    fn take(lake: &Path) -> anyhow::Result<Self> {
        let connection = verify::connection()?;
        let mut files = 0;
        let mut bytes = 0;
        let mut stack = vec![lake.to_owned()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir)? {
                let entry = entry?;
                if entry.file_type()?.is_dir() {
                    stack.push(entry.path());
                } else if entry.file_name().to_string_lossy().ends_with(".parquet") {
                    files += 1;
                    bytes += entry.metadata()?.len();
                }
            }
        }
        let mut fingerprints = Vec::new();
        for measurement in ["cpu", "mem", "disk"] {
            let glob = format!("{}/demo/{measurement}/**/*.parquet", lake.display());
            fingerprints.push((measurement.to_owned(), verify::fingerprint(&connection, &glob)?));
        }
        let query =
            format!("SELECT host, count(*), avg(value) FROM read_parquet('{}/demo/cpu/**/*.parquet') GROUP BY host", lake.display());
        let mut best = Duration::MAX;
        for _ in 0..3 {
            let started = Instant::now();
            connection.prepare(&query)?.query_map([], |_| Ok(()))?.for_each(drop);
            best = best.min(started.elapsed());
        }
        Ok(Self { files, bytes, fingerprints, query: best })
    }
}

/// Creates `dir`, or empties it if an earlier demo made it.
fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?.next().is_none();
        if !empty {
            anyhow::ensure!(
                dir.join(MARKER).exists(),
                "{} is not empty and was not made by `compactor demo`; choose another --dir",
                dir.display()
            );
            std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), "").with_context(|| format!("cannot write {}", dir.join(MARKER).display()))?;
    Ok(())
}
