//! `compactor cluster status`, and how the one-shot commands join the
//! cluster: join, wait at most one check interval for the lease decision,
//! act only if the gate allows, leave (handing back a lease they held).

use std::process::ExitCode;
use std::sync::Arc;

use compactor_cluster::{Cluster, Mode};
use compactor_engine::Manager;

use crate::Format;
use crate::table::Table;

/// Cluster mode on etcd.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// The members, the compactor lease holder, the failover state and
    /// the nodes that compact (read from etcd without joining).
    Status(StatusArgs),
}

/// `compactor cluster status`.
#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    config: crate::ConfigFile,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

impl StatusArgs {
    pub(crate) fn config_path(&self) -> &std::path::Path {
        &self.config.path
    }
}

pub(crate) fn exec(command: Command) -> anyhow::Result<ExitCode> {
    let Command::Status(args) = command;
    let runtime = crate::runtime()?;
    let manager = crate::open_manager(&args.config.path, &[])?;
    runtime.block_on(async {
        let Some(status) = manager.observe_cluster().await? else {
            anyhow::bail!("cluster mode is off in {} ([cluster] enabled = false)", args.config.path.display());
        };
        match args.format {
            Format::Json => crate::table::print_json(&status)?,
            Format::Table => {
                let mut table = Table::new(["NODE", "ROLE", "HEALTHY", "COMPACTS", "LEASE", "VERSION", "JOINED"]);
                let holder = status.compactor_lease.as_ref().map(|l| l.holder.as_str());
                for member in &status.members {
                    table.row([
                        member.node_id.clone(),
                        member.role.clone(),
                        member.healthy.to_string(),
                        status.compacting_nodes.contains(&member.node_id).to_string(),
                        if holder == Some(member.node_id.as_str()) { "holder".to_owned() } else { String::new() },
                        member.version.clone(),
                        member.joined_at.to_rfc3339(),
                    ]);
                }
                let lease = match &status.compactor_lease {
                    Some(lease) => format!("compactor lease: {} (epoch {}, {})", lease.holder, lease.epoch, lease.reason),
                    None if status.mode == Mode::Spread => "spread mode: every member that compacts takes its share".to_owned(),
                    None => "compactor lease: not assigned".to_owned(),
                };
                table.print(&format!(
                    "cluster {} ({:?} mode): {} members; leader {}; {lease}",
                    status.key_prefix,
                    status.mode,
                    status.members.len(),
                    status.leader.as_deref().unwrap_or("none")
                ))?;
                if let Some(stats) = &status.lease_manager {
                    println!(
                        "lease manager: consecutive_fails {}, failover_in_progress {}, cooldown {}, last failover {}",
                        stats.consecutive_fails,
                        stats.failover_in_progress,
                        stats.cooldown_period,
                        stats.last_failover_at.map(|t| t.to_rfc3339()).unwrap_or_else(|| "never".to_owned())
                    );
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// For `run`, `once` and `recover`: joins (cluster mode only), waits at most one
/// check interval for the compactor lease to be decided, and refuses a
/// cluster in which no node may ever compact (Arc #895).
pub(crate) async fn join_and_wait(manager: &Manager) -> anyhow::Result<Option<Arc<Cluster>>> {
    let Some(cluster) = manager.join_cluster().await? else { return Ok(None) };
    cluster.wait_for_lease_decision(cluster.settings().timings.check_interval).await;
    refuse_if_nobody_compacts(&cluster)?;
    Ok(Some(cluster))
}

/// Arc #895: a cluster whose live members are all readers compacts
/// nothing, ever; say so instead of idling.
fn refuse_if_nobody_compacts(cluster: &Cluster) -> anyhow::Result<()> {
    let status = cluster.status();
    if !status.members.is_empty() && status.members.iter().all(|m| m.role == "reader") {
        anyhow::bail!(
            "no node of this cluster may compact: its members ({}) are all readers; start a node with role \"compactor\" \
             (or \"writer\", \"standalone\")",
            status.members.iter().map(|m| m.node_id.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}
