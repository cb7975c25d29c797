//! Cron schedules per tier (5-field, UTC): each firing runs one cycle of its
//! tier. Overlapping firings are refused by the manager ("already running"),
//! not queued.

use std::sync::Arc;

use chrono::Utc;
use tokio::sync::watch;

use crate::manager::{CycleError, CycleOptions, Manager};

/// Runs `schedules` (tier name, cron schedule) until `shutdown` turns true;
/// a cycle in progress is finished first.
pub async fn run(manager: Arc<Manager>, schedules: Vec<(String, cron::Schedule)>, shutdown: watch::Receiver<bool>) {
    let tasks: Vec<_> =
        schedules.into_iter().map(|(tier, schedule)| tokio::spawn(run_one(manager.clone(), tier, schedule, shutdown.clone()))).collect();
    for task in tasks {
        let _ = task.await;
    }
}

async fn run_one(manager: Arc<Manager>, tier: String, schedule: cron::Schedule, mut shutdown: watch::Receiver<bool>) {
    loop {
        let Some(next) = schedule.upcoming(Utc).next() else {
            tracing::warn!(%tier, "schedule has no upcoming firing");
            return;
        };
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tracing::info!(%tier, next = %next.to_rfc3339(), "next compaction scheduled");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        let options = CycleOptions { tiers: vec![tier.clone()], ..Default::default() };
        match manager.run_cycle(options).await {
            Ok(report) => {
                tracing::info!(%tier, cycle_id = report.cycle_id, jobs = report.jobs.len(), failed = report.failed().count(), "scheduled cycle finished")
            }
            Err(CycleError::AlreadyRunning) => tracing::warn!(%tier, "skipped a firing: a compaction cycle is already running"),
            Err(e) => tracing::error!(%tier, error = %e, "scheduled cycle failed"),
        }
    }
}
