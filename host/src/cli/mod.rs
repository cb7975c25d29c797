//! Command-line parsing and dispatch: one file per subcommand.

mod demo;
mod plan;
mod plugin;
mod table;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Compacts time-series Parquet lakes in object storage, with tier policies
/// as sandboxed WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "compactor", version, about, propagate_version = true)]
#[command(after_help = "Start with `compactor demo`, which builds a sample lake and shows its plan.\n\
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
    Plan(plan::Args),
    #[command(subcommand)]
    Plugin(plugin::Command),
    Demo(demo::Args),
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
    init_logging(cli.verbose);
    match cli.command {
        Command::Plan(args) => plan::exec(args),
        Command::Plugin(command) => plugin::exec(command),
        Command::Demo(args) => demo::exec(args),
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("COMPACTOR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}

/// Two worker threads are plenty for the CLI's I/O.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}
