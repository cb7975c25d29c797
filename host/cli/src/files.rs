//! `compactor files`: the live file set of a partition, by the one
//! visibility rule readers rely on.

use std::process::ExitCode;

use crate::Format;

/// List the files a reader should read for a partition.
#[derive(Debug, clap::Args)]
#[command(after_help = "An output counts only once its job committed, and its inputs stop counting at that same\n\
moment: reading exactly these keys, a reader never sees a row twice or misses one. A key\n\
deleted since (its job's inputs, after the commit) may be gone by the time it is read:\n\
ask again. JSON: an array of storage keys.")]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) config: crate::ConfigFile,
    /// The partition: DATABASE/MEASUREMENT/YYYY/MM/DD (with its hours) or …/DD/HH.
    #[arg(long, value_name = "PATH")]
    partition: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub(crate) fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = crate::runtime()?;
    let manager = crate::open_manager(&args.config.path, &[])?;
    let files = runtime.block_on(manager.live_files(&args.partition))?;
    match args.format {
        Format::Json => crate::table::print_json(&files)?,
        Format::Table => {
            for key in &files {
                println!("{}", compactor_runtime::sanitize(key, 4096));
            }
            eprintln!("{} live files in {}", files.len(), args.partition.trim_matches('/'));
        }
    }
    Ok(ExitCode::SUCCESS)
}
