//! `compactor history`: the lake's job history, newest last.

use std::process::ExitCode;

use compactor_engine::History;
use compactor_engine::config::Config;
use compactor_model::units::format_bytes;
use compactor_storage::Storage;

use crate::Format;
use crate::table::Table;

/// Show the jobs compacted in this lake (by every engine), oldest first.
#[derive(Debug, clap::Args)]
#[command(after_help = "The history lives in the lake, under _compaction_state/history/ (one small .jsonl object per\n\
job, never mistaken for a recovery manifest), so it survives restarts and is shared by every\n\
engine; it is pruned to [history] max_records (default 1000) after each cycle.")]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) config: crate::ConfigFile,
    /// How many of the most recent jobs to show.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub(crate) fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config.path)?;
    let storage = Storage::open(&config.storage.url, &config.storage.options, &config.base_dir)?;
    let history = History::new(storage, "", config.history.max_records);
    let compactor_engine::Recent { records, unreadable, .. } = crate::runtime()?.block_on(history.recent(args.limit))?;
    for entry in &unreadable {
        eprintln!("warning: unreadable history entry {}: {}", entry.key, entry.error);
    }
    if args.format == Format::Json {
        crate::table::print_json(&records)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(["FINISHED", "TIER", "PARTITION", "FILES", "BYTES IN", "BYTES OUT", "ROWS", "MS", "OUTCOME"]);
    // Entries are data anyone with write access to the lake can shape: no
    // terminal escapes reach the screen.
    let clean = |text: &str| compactor_runtime::sanitize(text, 256);
    for r in &records {
        table.row([
            r.finished_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            clean(&r.batch.tier),
            clean(&r.batch.partition_path),
            format!("{}→{}", r.files_compacted, r.files_out),
            format_bytes(r.bytes_before),
            format_bytes(r.bytes_after),
            r.rows_after.to_string(),
            r.duration_ms.to_string(),
            r.failure().map_or_else(|| "ok".into(), |failure| format!("failed: {}", clean(&failure))),
        ]);
    }
    let failed = records.iter().filter(|r| !r.success).count();
    table.print(&format!("{} jobs shown ({failed} failed)", records.len()))?;
    Ok(ExitCode::SUCCESS)
}
