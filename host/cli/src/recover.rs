//! `compactor recover`: finish or roll back interrupted jobs, then exit.

use std::process::ExitCode;

use compactor_engine::GateDecision;

use crate::Format;

/// Finish or roll back jobs interrupted by a crash, and clean up after them.
#[derive(Debug, clap::Args)]
#[command(after_help = "For every recovery manifest in _compaction_state/ whose job's engine no longer holds\n\
the partition's lease: if the job's output is complete, its inputs are deleted; if the\n\
output is missing or partial, it is removed and the inputs stay. Either way every row exists\n\
exactly once afterwards. Manifests of live jobs (another engine's, or this host's) are left\n\
alone; unparseable ones are moved aside to *.quarantined. Also removes the temp directories\n\
of engines that are gone (never a live engine's).")]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) config: crate::ConfigFile,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub(crate) fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = crate::runtime()?;
    let manager = crate::open_manager(&args.config.path, &[])?;
    // Recovery deletes inputs and outputs: a node the gate does not allow
    // to compact leaves the lake to the node that does.
    let cluster = runtime.block_on(crate::cluster::join_and_wait(&manager))?;
    let outcome = recover(&runtime, &manager, args.format);
    if cluster.is_some() {
        runtime.block_on(manager.leave_cluster());
    }
    outcome
}

fn recover(runtime: &tokio::runtime::Runtime, manager: &compactor_engine::Manager, format: Format) -> anyhow::Result<ExitCode> {
    let gate = manager.gate_decision();
    match gate {
        GateDecision::Standalone | GateDecision::Allowed { .. } => {}
        GateDecision::Denied { .. } => {
            eprintln!("note: {gate}; nothing was recovered");
            return Ok(ExitCode::SUCCESS);
        }
        GateDecision::Failed { .. } | GateDecision::CutOff { .. } => {
            eprintln!("error: {gate}; nothing was recovered");
            return Ok(ExitCode::from(1));
        }
    }
    let cleaned = manager.cleanup_orphaned_temp_dirs()?;
    runtime.block_on(manager.check_store())?;
    let report = runtime.block_on(manager.recover())?;
    match format {
        crate::Format::Json => crate::table::print_json(&report)?,
        crate::Format::Table => {
            println!(
                "recovery: {} manifests resolved ({} jobs finished, {} rolled back), {} left to live jobs, {} kept, \
                 {} quarantined, {} late outputs of aborted jobs deleted, {} temp directories of gone engines removed",
                report.recovered,
                report.completed,
                report.rolled_back,
                report.live,
                report.failed.len(),
                report.quarantined.len(),
                report.late_outputs_deleted,
                cleaned
            );
            for (manifest, reason) in &report.failed {
                println!("kept {manifest}: {reason}");
            }
            for manifest in &report.quarantined {
                println!(
                    "quarantined {manifest} (unparseable): moved to {manifest}.quarantined; the files it names stay excluded until you remove it"
                );
            }
        }
    }
    Ok(if report.failed.is_empty() && report.quarantined.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
