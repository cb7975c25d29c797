//! `compactor recover`: finish or roll back interrupted jobs, then exit.

use std::path::PathBuf;
use std::process::ExitCode;

use compactor_engine::manager::GateDecision;

use crate::Format;

/// Finish or roll back jobs interrupted by a crash, and clean up after them.
#[derive(Debug, clap::Args)]
#[command(after_help = "For every recovery manifest in _compaction_state/: if the job's output is complete,\n\
its inputs are deleted; if the output is missing or partial, it is removed and the inputs\n\
stay. Either way every row exists exactly once afterwards. Also removes orphaned job\n\
directories under the temp directory.")]
pub(crate) struct Args {
    /// The configuration file.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub(crate) fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = crate::runtime()?;
    let manager = crate::open_manager(&args.config, &[])?;
    // Recovery deletes inputs and outputs: a node the gate does not allow
    // to compact leaves the lake to the node that does.
    let gate = manager.gate_decision();
    match gate {
        GateDecision::Standalone | GateDecision::Allowed { .. } => {}
        GateDecision::Denied { .. } => {
            eprintln!("note: {gate}; nothing was recovered");
            return Ok(ExitCode::SUCCESS);
        }
        GateDecision::Failed { .. } => {
            eprintln!("error: {gate}; nothing was recovered");
            return Ok(ExitCode::from(1));
        }
    }
    let cleaned = manager.cleanup_orphaned_temp_dirs()?;
    let report = runtime.block_on(manager.recover())?;
    match args.format {
        crate::Format::Json => crate::table::print_json(&report)?,
        crate::Format::Table => {
            println!(
                "recovery: {} manifests resolved ({} jobs finished, {} rolled back), {} kept, {} orphaned job directories removed",
                report.recovered,
                report.completed,
                report.rolled_back,
                report.failed.len(),
                cleaned
            );
            for (manifest, reason) in &report.failed {
                println!("kept {manifest}: {reason}");
            }
        }
    }
    Ok(if report.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
