//! Command-line parsing and dispatch: one file per subcommand.

mod compact;
mod demo;
mod once;
mod plan;
mod plugin;
mod progress;
mod recover;
mod run;
mod table;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Compacts time-series Parquet lakes in object storage, with tier policies
/// as sandboxed WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "compactor", version, about, propagate_version = true)]
#[command(after_help = "Start with `compactor demo`: it builds a sample lake, compacts it and verifies every row.\n\
Logs go to stderr; set COMPACTOR_LOG (e.g. COMPACTOR_LOG=debug) or pass -v for more.")]
struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Demo(demo::Args),
    Plan(plan::Args),
    Once(once::Args),
    Run(run::Args),
    Recover(recover::Args),
    #[command(subcommand)]
    Plugin(plugin::Command),
    #[command(hide = true)]
    Compact(compact::Args),
}

/// Output formats of reporting commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub(crate) enum Format {
    /// Aligned columns and a summary line, for people.
    #[default]
    Table,
    /// Machine-readable JSON on stdout.
    Json,
}

pub(crate) fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let child = matches!(cli.command, Command::Compact(_));
    init_logging(cli.verbose, child);
    match cli.command {
        Command::Demo(args) => demo::exec(args),
        Command::Plan(args) => plan::exec(args),
        Command::Once(args) => once::exec(args),
        Command::Run(args) => run::exec(args),
        Command::Recover(args) => recover::exec(args),
        Command::Plugin(command) => plugin::exec(command),
        Command::Compact(args) => compact::exec(args),
    }
}

/// Loads the config, checks `tiers` names, and builds the manager.
pub(crate) fn load_manager(config_path: &std::path::Path, tiers: &[String]) -> anyhow::Result<compactor::manager::Manager> {
    let config = compactor::config::Config::load(config_path)?;
    check_tier_names(&config, tiers)?;
    let storage = compactor::storage::Storage::open(&config.storage.url, &config.storage.options, &config.base_dir)?;
    let plugins = compactor::plugin::PluginRuntime::new(compactor::plugin::ArtifactCache::new(config.plugin_cache_dir()))?;
    let planned = compactor::planner::PlannedTier::load_all(&config, &plugins)?;
    let child = compactor::job::parent::ChildCommand::current_exe()?;
    Ok(compactor::manager::Manager::new(config, storage, planned, child))
}

/// Refuses `--tier` names the config does not define.
pub(crate) fn check_tier_names(config: &compactor::config::Config, tiers: &[String]) -> anyhow::Result<()> {
    let known: Vec<&str> = config.tiers.iter().map(|t| t.name.as_str()).collect();
    if let Some(unknown) = tiers.iter().find(|t| !known.contains(&t.as_str())) {
        anyhow::bail!("unknown tier {unknown:?} (configured: {})", known.join(", "));
    }
    Ok(())
}

/// Logs go to stderr; the job child writes JSON lines for its parent.
fn init_logging(verbose: u8, child: bool) {
    let default = match (child, verbose) {
        (true, _) | (false, 1) => "info",
        (false, 0) => "warn",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("COMPACTOR_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let logger = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    if child {
        logger.json().init();
    } else {
        logger.init();
    }
}

/// Two worker threads are plenty for the CLI's I/O.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}
