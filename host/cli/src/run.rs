//! `compactor run`: the daemon — recovery at start-up, then each tier on its
//! cron schedule, until SIGINT or SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;

use compactor_api::Api;
use compactor_engine::config::ApiSettings;
use compactor_engine::{GateDecision, Manager};

/// Run the scheduler until interrupted.
#[derive(Debug, clap::Args)]
#[command(after_help = "Recovers interrupted jobs, then runs each enabled tier on its schedule (5-field cron,\n\
UTC). In cluster mode the cluster gate decides at start-up whether this node compacts.\n\
SIGINT or SIGTERM stops scheduling; jobs and policy calls already running finish, nothing new starts.\n\
SIGHUP reloads the tier policies' components; a cycle in flight finishes on the old ones.\n\
With an [api] section, serves the HTTP API and /metrics on [api] listen (default 127.0.0.1:8081).")]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) config: crate::ConfigFile,
}

pub(crate) fn exec(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = crate::runtime()?;
    let manager = Arc::new(crate::open_manager(&args.config.path, &[])?);
    let config = manager.config().clone();
    runtime.block_on(async {
        // Listen for signals before anything else, so that none is missed.
        let stop_signal = ShutdownSignal::new()?;
        // The API outlives the schedulers: it answers while running jobs drain.
        let (api_stop, api_stopped) = tokio::sync::watch::channel(false);
        // The API answers from the start: /healthz at once, /readyz once
        // recovery is done.
        let api = match &config.settings().api {
            Some(api_config) => Some(start_api(&manager, api_config, api_stopped).await?),
            None => None,
        };
        spawn_reload_on_hangup(&manager)?;
        spawn_reload_on_change(&manager);
        manager.cleanup_orphaned_temp_dirs()?;
        manager.check_store().await?;
        // A cluster member: etcd unreachable stops the start, never a
        // fallback to standalone.
        let cluster = crate::cluster::join_and_wait(&manager).await?;
        // A node the gate does not allow touches nothing, recovery included.
        // In cluster mode the gate is asked again at every cycle (the lease
        // moves), so the schedulers run and each cycle compacts only where
        // the gate allows.
        let gate = manager.gate_decision();
        let idle = if cluster.is_some() {
            "the scheduler stays idle until the gate allows this node (asked at every cycle)"
        } else {
            "the scheduler stays idle"
        };
        let schedules = match &gate {
            GateDecision::Denied { role, .. } => {
                tracing::warn!(%role, "compaction: node role is not compactor; {idle} ({gate})");
                if cluster.is_some() { config.schedules() } else { Vec::new() }
            }
            GateDecision::Failed { .. } | GateDecision::CutOff { .. } => {
                tracing::error!("{gate}; {idle}");
                if cluster.is_some() { config.schedules() } else { Vec::new() }
            }
            GateDecision::Standalone | GateDecision::Allowed { .. } => {
                match manager.recover().await {
                    Ok(report) => tracing::info!(recovered = report.recovered, "start-up recovery finished"),
                    Err(e) => tracing::error!(error = %e, "start-up recovery failed"),
                }
                config.schedules()
            }
        };
        if let Some((api, _)) = &api {
            api.set_ready(!schedules.is_empty(), gate.clone());
        }
        let scheduling = !schedules.is_empty();
        let spawn_scheduler = |schedules| {
            let (stop, stopped) = tokio::sync::watch::channel(false);
            (stop, tokio::spawn(compactor_engine::scheduler::run(manager.clone(), schedules, stopped)))
        };
        let (mut scheduler_stop, mut scheduler) = spawn_scheduler(schedules);
        tracing::info!("compactor is running; SIGINT or SIGTERM stops it");
        // A config reload may change the tiers' schedules: the schedulers
        // start again with the new file's (a cycle in flight goes on; the
        // old schedulers' next firings do not come).
        let mut changes = manager.config_changes();
        let stopping = stop_signal.wait();
        tokio::pin!(stopping);
        loop {
            tokio::select! {
                () = &mut stopping => break,
                changed = changes.changed() => {
                    if changed.is_err() || !scheduling {
                        continue;
                    }
                    let _ = scheduler_stop.send(true);
                    (scheduler_stop, scheduler) = spawn_scheduler(manager.config().schedules());
                    tracing::info!("the config was reloaded: the schedules in effect are the new file's");
                }
            }
        }
        tracing::info!("shutting down: waiting for the running jobs and policy calls to finish");
        // Refuse new work first: a trigger or reload answered from now on
        // says 503, never "triggered" for a cycle that would not run.
        if let Some((api, _)) = &api {
            api.set_stopping();
        }
        manager.request_stop();
        let _ = scheduler_stop.send(true);
        let _ = scheduler.await;
        // A cycle the API triggered is not the scheduler's: wait for it too,
        // so that its jobs finish and release their partitions.
        while manager.is_cycle_running() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        // Hand back the compactor lease, so that another node takes it at
        // once rather than after the failover timeout.
        if cluster.is_some() {
            manager.leave_cluster().await;
        }
        let _ = api_stop.send(true);
        if let Some((_, server)) = api {
            let _ = server.await;
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Binds `[api] listen` and serves the API until `stopped` turns true.
async fn start_api(
    manager: &Arc<Manager>,
    config: &ApiSettings,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<(Api, tokio::task::JoinHandle<()>)> {
    let address = config.listen;
    let listener =
        tokio::net::TcpListener::bind(address).await.map_err(|e| anyhow::anyhow!("cannot listen on [api] listen = \"{address}\": {e}"))?;
    let token = config.token.clone();
    if token.is_none() {
        tracing::warn!("the API has no token ([api] token or COMPACTOR_API_TOKEN): trigger and reload are refused");
    }
    let api = Api::new(manager.clone(), token)?;
    tracing::info!(address = %listener.local_addr().unwrap_or(address), "API listening");
    let shutdown = async move {
        while !*stopped.borrow() {
            if stopped.changed().await.is_err() {
                break;
            }
        }
    };
    let served = api.clone();
    let server = tokio::spawn(async move {
        if let Err(e) = served.serve(listener, shutdown).await {
            tracing::error!(error = %e, "the API stopped");
        }
    });
    Ok((api, server))
}

/// SIGHUP reloads the tier policies (see [`Manager::reload_plugins`]).
fn spawn_reload_on_hangup(manager: &Arc<Manager>) -> anyhow::Result<()> {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let manager = manager.clone();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            let _ = manager.reload_plugins_in_background("SIGHUP", None).await;
        }
    });
    Ok(())
}

/// How often the tiers' component files are checked for a change.
const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Reloads the tier policies when one of their component files changes
/// (its size or modification time). A replacement that fails to load is
/// reported once and the running ones stay; the next change is tried again.
fn spawn_reload_on_change(manager: &Arc<Manager>) {
    // Every tier of every tenant: a tenant's own component is watched too.
    let mut paths: Vec<std::path::PathBuf> = manager
        .config()
        .settings()
        .tiers
        .iter()
        .filter_map(|t| match compactor_runtime::PluginSource::parse(&t.config.plugin, &manager.config().base_dir) {
            compactor_runtime::PluginSource::Path(path) => Some(path),
            compactor_runtime::PluginSource::Builtin(_) => None,
        })
        .collect();
    paths.sort();
    paths.dedup();
    if paths.is_empty() {
        return;
    }
    // Size and modification time, and the inode and change time: a build
    // renamed over the file, or written in place with its old mtime put back,
    // changes those even when size and mtime match.
    let signature = move || -> Vec<Option<FileSignature>> {
        use std::os::unix::fs::MetadataExt;
        let of = |m: std::fs::Metadata| FileSignature {
            len: m.len(),
            modified: m.modified().unwrap_or(std::time::UNIX_EPOCH),
            inode: m.ino(),
            changed: (m.ctime(), m.ctime_nsec()),
        };
        paths.iter().map(|p| std::fs::metadata(p).ok().map(of)).collect()
    };
    let manager = manager.clone();
    tokio::spawn(async move {
        let mut seen = signature();
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            let now = signature();
            if now == seen {
                continue;
            }
            seen = now;
            tracing::info!("a tier's component file changed; reloading the policies");
            let _ = manager.reload_plugins_in_background("a changed component file", None).await;
        }
    });
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

/// What tells a component file changed (see `spawn_reload_on_change`).
#[derive(PartialEq, Eq)]
struct FileSignature {
    len: u64,
    modified: std::time::SystemTime,
    inode: u64,
    changed: (i64, i64),
}
