//! `compactor once`: recovery, then one compaction cycle, then a summary.

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use compactor_engine::{CycleOptions, CycleReport, GateDecision};
use compactor_model::units::format_bytes;

use crate::Format;
use crate::table::Table;

/// Run recovery and one compaction cycle now, then exit.
#[derive(Debug, clap::Args)]
#[command(after_help = "Finishes or rolls back interrupted jobs, then plans and compacts every enabled tier\n\
(or the given ones) in order. Exit status 0 only when every job succeeded.")]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) config: crate::ConfigFile,
    /// The time the policies see as now (RFC 3339; default: the current time).
    #[arg(long, value_name = "RFC3339", value_parser = crate::plan::parse_time)]
    now: Option<DateTime<Utc>>,
    /// Only this tier (repeatable).
    #[arg(long = "tier", value_name = "NAME")]
    tiers: Vec<String>,
    /// Only this database.
    #[arg(long, value_name = "DB")]
    database: Option<String>,
    /// Ignore the policies' age rules (they see a clock ten years ahead):
    /// for backfilled data that would otherwise wait.
    #[arg(long)]
    force: bool,
    /// Output format of the summary.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub(crate) fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = crate::runtime()?;
    let manager = crate::open_manager(&args.config.path, &args.tiers)?;
    let cleaned = manager.cleanup_orphaned_temp_dirs()?;
    runtime.block_on(manager.check_store())?;
    if cleaned > 0 {
        tracing::info!(cleaned, "removed orphaned job directories");
    }
    let cluster = runtime.block_on(crate::cluster::join_and_wait(&manager))?;
    let progress = crate::progress::attach(&manager);
    let report = runtime.block_on(manager.run_cycle(CycleOptions {
        now: args.now,
        tiers: args.tiers,
        database: args.database,
        force: args.force,
        ..Default::default()
    }));
    progress.finish();
    if cluster.is_some() {
        runtime.block_on(manager.leave_cluster());
    }
    let report = report?;
    print_report(&report, args.format)?;
    Ok(if report.all_succeeded() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The cycle summary: one line per tier, totals, then every failure.
pub(crate) fn print_report(report: &CycleReport, format: Format) -> anyhow::Result<()> {
    match &report.gate {
        GateDecision::Standalone | GateDecision::Allowed { .. } => {}
        GateDecision::Denied { .. } => eprintln!("note: {}", report.gate),
        GateDecision::Failed { .. } | GateDecision::CutOff { .. } => eprintln!("error: {}", report.gate),
    }
    for problem in &report.problems {
        eprintln!("warning: {problem}");
    }
    if format == Format::Json {
        return crate::table::print_json(report);
    }
    let mut tiers: Vec<String> = Vec::new();
    for job in &report.jobs {
        if !tiers.contains(&job.tier_key()) {
            tiers.push(job.tier_key());
        }
    }
    let mut table =
        Table::new(["TIER", "JOBS", "FAILED", "FILES IN", "FILES OUT", "BEFORE", "AFTER", "ROWS", "ROW-GROUP COPIES", "STREAMING MERGES"]);
    for tier in &tiers {
        let jobs: Vec<_> = report.jobs.iter().filter(|j| j.tier_key() == *tier).collect();
        table.row([
            tier.clone(),
            jobs.len().to_string(),
            jobs.iter().filter(|j| !j.success).count().to_string(),
            jobs.iter().map(|j| j.files_compacted).sum::<usize>().to_string(),
            jobs.iter().map(|j| j.files_out).sum::<usize>().to_string(),
            format_bytes(jobs.iter().map(|j| j.bytes_before).sum()),
            format_bytes(jobs.iter().map(|j| j.bytes_after).sum()),
            jobs.iter().map(|j| j.rows_after).sum::<u64>().to_string(),
            jobs.iter().filter(|j| j.path == compactor_job::fast_path::MergePath::RowGroupCopy).count().to_string(),
            jobs.iter().filter(|j| j.path == compactor_job::fast_path::MergePath::StreamingMerge).count().to_string(),
        ]);
    }
    let failed = report.failed().count();
    let recovery = &report.recovery;
    let summary = format!(
        "cycle {}: {} jobs, {} failed, {} skipped, {} batches skipped (partition leased elsewhere); recovery: {} finished, {} rolled back; {:.1}s",
        report.cycle_id,
        report.jobs.len(),
        failed,
        report.jobs.iter().filter(|j| j.skipped.is_some()).count(),
        report.skipped_locked,
        recovery.completed,
        recovery.rolled_back,
        report.duration_ms as f64 / 1000.0
    );
    table.print(&summary)?;
    if report.deferred_by_budget > 0 {
        println!("{} batches wait for the next cycle: their tenants' max_bytes_per_cycle is spent", report.deferred_by_budget);
    }
    if report.held_back > 0 {
        println!(
            "{} batches were not started and wait for the next cycle: the cycle's deadline passed, or this node may no longer start work (see the log)",
            report.held_back
        );
    }
    if report.measurements_elsewhere > 0 {
        let measurements = if report.measurements_elsewhere == 1 { "measurement is" } else { "measurements are" };
        println!("{} {measurements} other nodes' share (cluster mode = \"spread\")", report.measurements_elsewhere);
    }
    let r = report.requests;
    println!("requests: {} ({} LIST, {} GET, {} PUT incl. parts, {} DELETE)", r.total(), r.list, r.get, r.put, r.delete);
    for job in report.failed() {
        println!(
            "failed: {} batch {} ({} files): {}",
            job.batch.partition_path,
            job.batch.batch_number,
            job.files_in,
            job.failure().unwrap_or_default()
        );
    }
    for job in report.jobs.iter().filter(|j| !j.skipped_inputs.is_empty()) {
        println!("skipped invalid inputs in {}: {}", job.batch.partition_path, job.skipped_inputs.join(", "));
    }
    for job in report.jobs.iter().filter_map(|j| j.skipped.as_ref().map(|why| (j, why))) {
        println!("skipped job in {} batch {}: {}", job.0.batch.partition_path, job.0.batch.batch_number, job.1);
    }
    for object in &report.set_aside {
        println!("left in place: {:?}: {}", object.key, object.reason.escape_debug());
    }
    for (manifest, reason) in &recovery.failed {
        println!("recovery kept {manifest}: {reason}");
    }
    if recovery.live > 0 {
        println!("recovery left {} manifests of live jobs to their engines", recovery.live);
    }
    for manifest in &recovery.quarantined {
        println!("recovery quarantined {manifest} (unparseable): the files it names stay excluded until you remove {manifest}.quarantined");
    }
    Ok(())
}
