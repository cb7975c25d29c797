//! Cron schedules per tier (5-field, UTC): each firing runs one cycle of its
//! tier. Overlapping firings are refused by the manager ("already running"),
//! not queued.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;

use crate::manager::{CycleError, CycleOptions, Manager};

/// First pause before restarting a tier whose task failed; it doubles up to
/// [`MAX_RESTART_BACKOFF`].
const RESTART_BACKOFF: Duration = Duration::from_secs(1);
/// Longest pause before restarting a failed tier task.
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(300);

/// Runs `schedules` (tier name, cron schedule) until `shutdown` turns true;
/// a cycle in progress stops at its next partition or batch (see
/// [`Manager::request_stop`]) and is awaited. Each tier's task is supervised: a
/// task that fails (a panic is a bug, but must not silently end a tier's
/// schedule) is reported and restarted after a growing pause.
pub async fn run(manager: Arc<Manager>, schedules: Vec<(String, cron::Schedule)>, shutdown: watch::Receiver<bool>) {
    let tasks: Vec<_> =
        schedules.into_iter().map(|(tier, schedule)| tokio::spawn(supervise(manager.clone(), tier, schedule, shutdown.clone()))).collect();
    for task in tasks {
        let _ = task.await;
    }
}

async fn supervise(manager: Arc<Manager>, tier: String, schedule: cron::Schedule, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = RESTART_BACKOFF;
    loop {
        let task = tokio::spawn(run_one(manager.clone(), tier.clone(), schedule.clone(), shutdown.clone()));
        match task.await {
            Ok(()) => return,
            Err(failure) => {
                let reason = if failure.is_panic() { crate::panic_message(&*failure.into_panic()) } else { failure.to_string() };
                tracing::error!(%tier, %reason, restart_in = ?backoff, "the tier's scheduler task failed (a bug in compactor); restarting it");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        backoff = (backoff * 2).min(MAX_RESTART_BACKOFF);
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
                // The daemon has no summary table: what went wrong goes to
                // the log (a failing policy would otherwise be invisible).
                for problem in &report.problems {
                    tracing::warn!(%tier, cycle_id = report.cycle_id, "{problem}");
                }
                for job in report.failed() {
                    tracing::warn!(%tier, partition = %job.partition_path, error = job.error.as_deref().unwrap_or_default(), "job failed");
                }
                tracing::info!(%tier, cycle_id = report.cycle_id, jobs = report.jobs.len(), failed = report.failed().count(), "scheduled cycle finished")
            }
            Err(CycleError::AlreadyRunning) => tracing::warn!(%tier, "skipped a firing: a compaction cycle is already running"),
            Err(e) => tracing::error!(%tier, error = %e, "scheduled cycle failed"),
        }
    }
}
