//! `compactor run`: the daemon — recovery at start-up, then each tier on its
//! cron schedule, until SIGINT or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use compactor::config::{Config, parse_schedule};
use compactor::plugin::{ArtifactCache, NodeInfo, PluginRuntime, PluginSource};

/// Run the scheduler until interrupted.
#[derive(Debug, clap::Args)]
#[command(after_help = "Recovers interrupted jobs, then runs each enabled tier on its schedule (5-field cron,\n\
UTC). In cluster mode the cluster gate decides at start-up whether this node compacts.\n\
SIGINT or SIGTERM stops scheduling; a cycle in progress is finished first.")]
pub(crate) struct Args {
    /// The configuration file.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

pub(crate) fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = super::runtime()?;
    let manager = Arc::new(super::load_manager(&args.config, &[])?);
    let config = manager.config().clone();
    manager.cleanup_orphaned_temp_dirs()?;
    runtime.block_on(manager.check_store());
    runtime.block_on(async {
        // Listen for signals before anything else, so that none is missed.
        let stop_signal = ShutdownSignal::new()?;
        match manager.recover().await {
            Ok(report) => tracing::info!(recovered = report.recovered, "start-up recovery finished"),
            Err(e) => tracing::error!(error = %e, "start-up recovery failed"),
        }
        let allowed = gate_allows(&config)?;
        if !allowed {
            tracing::warn!(role = %config.cluster.role, "compaction: node role is not compactor; the scheduler stays idle");
        }
        let schedules = if allowed {
            config
                .tiers
                .iter()
                .filter(|t| t.enabled)
                .map(|t| Ok((t.name.clone(), parse_schedule(t.effective_schedule()).map_err(anyhow::Error::msg)?)))
                .collect::<anyhow::Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let scheduler = tokio::spawn(compactor::scheduler::run(manager.clone(), schedules, stopped));
        tracing::info!("compactor is running; SIGINT or SIGTERM stops it");
        stop_signal.wait().await;
        tracing::info!("shutting down: waiting for a running cycle to finish");
        let _ = stop.send(true);
        let _ = scheduler.await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Standalone nodes always compact; in cluster mode the gate component
/// decides.
fn gate_allows(config: &Config) -> anyhow::Result<bool> {
    if !config.cluster.enabled {
        return Ok(true);
    }
    let plugins = PluginRuntime::new(ArtifactCache::new(config.plugin_cache_dir()))?;
    let gate = plugins.load_gate(&PluginSource::parse(&config.cluster.gate, &config.base_dir))?;
    let gate_config = serde_json::to_string(&config.cluster.gate_config)?;
    let mut gate = gate.instantiate(&gate_config, compactor::config::PluginLimits::default())?;
    let node = NodeInfo { id: config.cluster.node_id.clone(), role: config.cluster.role.clone(), ..Default::default() };
    Ok(gate.can_compact(&node)?)
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
