//! The `compactor` command line. Exit status: 0 on success, 1 when the work
//! ran but something in it failed (a plugin, a partition), 2 on an error
//! that stopped it (bad config, unreachable storage, bad flags).

mod cluster;
mod compact;
mod demo;
mod files;
mod history;
mod once;
mod plan;
mod plugin;
mod progress;
mod recover;
mod run;
mod table;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use compactor_engine::Manager;
use compactor_engine::config::Config;
use compactor_job::ChildCommand;

fn main() -> ExitCode {
    match run() {
        Ok(status) => status,
        Err(error) => {
            if is_broken_pipe(&error) {
                return ExitCode::SUCCESS;
            }
            // Errors can quote object names and plugin text.
            eprintln!("error: {}", compactor_runtime::sanitize(&format!("{error:#}"), 8192));
            ExitCode::from(2)
        }
    }
}

/// Output piped into `head` is not an error.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|e| e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

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
    /// Log lines as text or as JSON objects (default: the config's
    /// `[log] format`, else text).
    #[arg(long, value_enum, global = true, value_name = "FORMAT")]
    log_format: Option<LogFormatArg>,
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
    History(history::Args),
    Files(files::Args),
    #[command(subcommand)]
    Plugin(plugin::Command),
    #[command(subcommand)]
    Cluster(cluster::Command),
    #[command(hide = true)]
    Compact(compact::Args),
}

/// `--config FILE`, shared by every command that reads a configuration.
#[derive(Debug, clap::Args)]
pub(crate) struct ConfigFile {
    /// The configuration file.
    #[arg(long = "config", value_name = "FILE")]
    pub(crate) path: std::path::PathBuf,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormatArg {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
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
    if !matches!(cli.command, Command::Run(_)) {
        // A report piped into `head` ends quietly when the reader goes away,
        // as for any Unix filter. The daemon keeps Rust's default (ignore
        // SIGPIPE, get an error) so that a closed log pipe cannot kill it.
        // SAFETY: restoring a signal's default disposition at start-up, before
        // any thread is spawned.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let child = matches!(cli.command, Command::Compact(_));
    let json = match cli.log_format {
        Some(format) => format == LogFormatArg::Json,
        // The config's key; a config that does not load is reported by the
        // command itself.
        None => config_path(&cli.command)
            .and_then(|path| Config::load(path).ok())
            .is_some_and(|config| config.log.format == compactor_engine::config::LogFormat::Json),
    };
    init_logging(cli.verbose, child, json);
    match cli.command {
        Command::Demo(args) => demo::exec(args),
        Command::Plan(args) => plan::exec(args),
        Command::Once(args) => once::exec(args),
        Command::Run(args) => run::exec(args),
        Command::Recover(args) => recover::exec(args),
        Command::History(args) => history::exec(args),
        Command::Files(args) => files::exec(args),
        Command::Plugin(command) => plugin::exec(command),
        Command::Cluster(command) => cluster::exec(command),
        Command::Compact(args) => compact::exec(args),
    }
}

/// The composition root of every command that plans or compacts: the
/// config, loaded once, with `--tier` names checked.
pub(crate) fn open_manager(config_path: &std::path::Path, tiers: &[String]) -> anyhow::Result<Manager> {
    let config = Config::load(config_path)?;
    config.check_tier_names(tiers)?;
    Manager::open(config, ChildCommand::current_exe()?)
}

/// The config file a command reads, if any.
fn config_path(command: &Command) -> Option<&std::path::Path> {
    match command {
        Command::Plan(args) => Some(&args.config.path),
        Command::Once(args) => Some(&args.config.path),
        Command::Run(args) => Some(&args.config.path),
        Command::Recover(args) => Some(&args.config.path),
        Command::History(args) => Some(&args.config.path),
        Command::Files(args) => Some(&args.config.path),
        Command::Cluster(cluster::Command::Status(args)) => Some(args.config_path()),
        Command::Demo(_) | Command::Plugin(_) | Command::Compact(_) => None,
    }
}

/// Logs go to stderr; the job child writes JSON lines for its parent, which
/// re-emits them with the job's id, tier and partition.
fn init_logging(verbose: u8, child: bool, json: bool) {
    let default = match (child, verbose) {
        (true, _) | (false, 1) => "info",
        (false, 0) => "warn",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("COMPACTOR_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only for a terminal: a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logger = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).with_ansi(ansi);
    if child || json {
        logger.json().with_current_span(true).init();
    } else {
        logger.init();
    }
}

/// Two worker threads are plenty for the CLI's I/O.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}
