//! `compactor demo`: builds a sample lake on local disk and shows what the
//! built-in tiers would compact in it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use chrono::Utc;
use compactor::config::Config;
use compactor::planner::PlanOptions;
use compactor::sample::{self, SampleSpec};

use super::Format;

/// Marks a directory as made by `demo`, so a rerun may replace it.
const MARKER: &str = ".compactor-demo";

/// Build a sample lake and show the built-in tiers' plan for it.
#[derive(Debug, clap::Args)]
#[command(after_help = "Writes a day of hourly partitions (cpu, mem, disk; 12 small Parquet files per hour)\n\
under DIR/lake, a config under DIR/compactor.toml, and prints the plan of the built-in\n\
hourly and daily tiers. A directory made by an earlier demo is replaced; any other\n\
non-empty directory is refused.")]
pub(crate) struct Args {
    /// Where to build the sample lake.
    #[arg(long, value_name = "DIR", default_value = "./data/demo")]
    dir: PathBuf,
    /// Output format of the plan.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
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
        compactor::units::format_bytes(lake.bytes),
        lake.day.format("%Y-%m-%d"),
        lake_dir.display(),
        started.elapsed()
    );
    let config_path = args.dir.join("compactor.toml");
    std::fs::write(&config_path, "[storage]\nurl = \"lake\"\n\n[compaction]\ntemp_directory = \"compaction\"\n")
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let config = Config::load(&config_path)?;
    let options = PlanOptions { now, database: None, tiers: Vec::new(), max_files_per_batch: config.compaction.max_files_per_batch };
    let plan = super::plan::plan_with_config(&config, &options)?;
    super::plan::print_plan(&plan, args.format)?;
    eprintln!("try: compactor plan --config {}", config_path.display());
    Ok(if plan.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
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
