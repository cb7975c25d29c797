//! `compactor run`: the daemon — recovery at start-up, then each tier on its
//! cron schedule, until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use compactor_engine::config::parse_schedule;
use compactor_engine::manager::GateDecision;

/// Run the scheduler until interrupted.
#[derive(Debug, clap::Args)]
#[command(after_help = "Recovers interrupted jobs, then runs each enabled tier on its schedule (5-field cron,\n\
UTC). In cluster mode the cluster gate decides at start-up whether this node compacts.\n\
SIGINT or SIGTERM stops scheduling; jobs and policy calls already running finish, nothing new starts.")]
pub(crate) struct Args {
    /// The configuration file.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

pub(crate) fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = crate::runtime()?;
    let manager = Arc::new(crate::open_manager(&args.config, &[])?);
    let config = manager.config().clone();
    manager.cleanup_orphaned_temp_dirs()?;
    runtime.block_on(manager.check_store())?;
    runtime.block_on(async {
        // Listen for signals before anything else, so that none is missed.
        let stop_signal = ShutdownSignal::new()?;
        // A node the gate does not allow touches nothing, recovery included.
        let gate = manager.gate_decision();
        let schedules = match &gate {
            GateDecision::Denied { role, .. } => {
                tracing::warn!(%role, "compaction: node role is not compactor; the scheduler stays idle ({gate})");
                Vec::new()
            }
            GateDecision::Failed { .. } => {
                tracing::error!("{gate}; the scheduler stays idle");
                Vec::new()
            }
            GateDecision::Standalone | GateDecision::Allowed { .. } => {
                match manager.recover().await {
                    Ok(report) => tracing::info!(recovered = report.recovered, "start-up recovery finished"),
                    Err(e) => tracing::error!(error = %e, "start-up recovery failed"),
                }
                config
                    .tiers
                    .iter()
                    .filter(|t| t.enabled)
                    .map(|t| Ok((t.name.clone(), parse_schedule(t.effective_schedule()).map_err(anyhow::Error::msg)?)))
                    .collect::<anyhow::Result<Vec<_>>>()?
            }
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let scheduler = tokio::spawn(compactor_engine::scheduler::run(manager.clone(), schedules, stopped));
        tracing::info!("compactor is running; SIGINT or SIGTERM stops it");
        stop_signal.wait().await;
        tracing::info!("shutting down: waiting for the running jobs and policy calls to finish");
        manager.request_stop();
        let _ = stop.send(true);
        let _ = scheduler.await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// SIGINT and SIGTERM, registered when created.
struct ShutdownSignal {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self { interrupt: signal(SignalKind::interrupt())?, terminate: signal(SignalKind::terminate())? })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
