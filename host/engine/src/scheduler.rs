//! Cron schedules (5-field, UTC): each firing runs one cycle of the tiers
//! on that schedule (`tier` or `tenant/tier`; tiers sharing a schedule share
//! the cycle). Overlapping firings are refused by the manager ("already
//! running"), not queued.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;

use crate::manager::Manager;
use crate::report::{CycleError, CycleOptions, CycleReport};

/// First pause before restarting a tier whose task failed; it doubles up to
/// [`MAX_RESTART_BACKOFF`].
const RESTART_BACKOFF: Duration = Duration::from_secs(1);
/// Longest pause before restarting a failed tier task.
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(300);

/// Runs `schedules` (the tiers, their cron schedule) until `shutdown` turns true;
/// a cycle in progress stops at its next partition or batch (see
/// [`Manager::request_stop`]) and is awaited. Each tier's task is supervised: a
/// task that fails (a panic is a bug, but must not silently end a tier's
/// schedule) is reported and restarted after a growing pause.
pub async fn run(manager: Arc<Manager>, schedules: Vec<(Vec<String>, cron::Schedule)>, shutdown: watch::Receiver<bool>) {
    let tasks: Vec<_> = schedules
        .into_iter()
        .map(|(tiers, schedule)| tokio::spawn(supervise(manager.clone(), tiers, schedule, shutdown.clone())))
        .collect();
    for task in tasks {
        let _ = task.await;
    }
}

async fn supervise(manager: Arc<Manager>, tiers: Vec<String>, schedule: cron::Schedule, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = RESTART_BACKOFF;
    let tier = tiers.join(",");
    loop {
        let task = tokio::spawn(run_one(manager.clone(), tiers.clone(), schedule.clone(), shutdown.clone()));
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

async fn run_one(manager: Arc<Manager>, tiers: Vec<String>, schedule: cron::Schedule, mut shutdown: watch::Receiver<bool>) {
    let tier = tiers.join(",");
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
        let options = CycleOptions { tiers: tiers.clone(), exact_tiers: true, ..Default::default() };
        match manager.run_cycle(options).await {
            Err(CycleError::AlreadyRunning) => tracing::warn!(%tier, "skipped a firing: a compaction cycle is already running"),
            Err(CycleError::Stopping) => tracing::info!(%tier, "skipped a firing: the engine is shutting down"),
            outcome => log_cycle_outcome("scheduled", &outcome),
        }
    }
}

/// Logs what a cycle of the daemon did (`origin`: scheduled, triggered):
/// the daemon has no summary table, so every problem and failed job goes to
/// the log, or a failing policy would be invisible.
pub fn log_cycle_outcome(origin: &str, outcome: &Result<CycleReport, CycleError>) {
    match outcome {
        Ok(report) => {
            for problem in &report.problems {
                tracing::warn!(origin, cycle_id = report.cycle_id, "{problem}");
            }
            for job in report.failed() {
                tracing::warn!(
                    origin,
                    cycle_id = report.cycle_id,
                    tier = %job.batch.tier,
                    partition = %job.batch.partition_path,
                    error = job.error.as_deref().unwrap_or_default(),
                    "job failed"
                );
            }
            for (manifest, reason) in &report.recovery.failed {
                tracing::warn!(origin, cycle_id = report.cycle_id, %manifest, %reason, "recovery kept a manifest");
            }
            tracing::info!(
                origin,
                cycle_id = report.cycle_id,
                jobs = report.jobs.len(),
                failed = report.failed().count(),
                "cycle finished"
            );
        }
        Err(e) => tracing::error!(origin, error = %e, "cycle failed"),
    }
}
