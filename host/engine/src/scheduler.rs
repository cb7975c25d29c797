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
        fault_point(&tier);
        let options = CycleOptions { tiers: tiers.clone(), exact_tiers: true, ..Default::default() };
        match manager.run_cycle(options).await {
            Err(CycleError::AlreadyRunning) => tracing::warn!(%tier, "skipped a firing: a compaction cycle is already running"),
            Err(CycleError::Stopping) => tracing::info!(%tier, "skipped a firing: the engine is shutting down"),
            outcome => log_cycle_outcome("scheduled", &outcome),
        }
    }
}

/// Panics left to inject at a firing: one with `COMPACTOR_FAULT=scheduler-panic`,
/// so that a test (or an operator checking a deployment) sees the
/// supervisor restart a tier's task and the task's next cycle.
static PANICS_LEFT: std::sync::LazyLock<std::sync::atomic::AtomicU32> = std::sync::LazyLock::new(|| {
    std::sync::atomic::AtomicU32::new(u32::from(std::env::var("COMPACTOR_FAULT").as_deref() == Ok("scheduler-panic")))
});

fn fault_point(tier: &str) {
    let injected = PANICS_LEFT.fetch_update(std::sync::atomic::Ordering::SeqCst, std::sync::atomic::Ordering::SeqCst, |n| n.checked_sub(1));
    if injected.is_ok() {
        panic!("fault injection: the scheduler task of {tier} panics at a firing");
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

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;
    use compactor_job::ChildCommand;
    use compactor_runtime::{ArtifactCache, PluginRuntime};
    use compactor_storage::Storage;

    /// Issue 21 §4k: the supervisor's restart had never met a real panic.
    #[tokio::test]
    async fn a_tier_task_that_panics_is_restarted_and_runs_its_next_cycle() {
        let config = crate::config::Config::parse("[storage]\nurl = \"memory://\"\n").unwrap();
        let child = ChildCommand { program: "/nonexistent".into(), env: Vec::new(), timeout: None };
        let plugins = PluginRuntime::new(ArtifactCache::disabled()).unwrap();
        let manager = Arc::new(Manager::new(config, Storage::in_memory(), Vec::new(), plugins, child));
        PANICS_LEFT.store(1, std::sync::atomic::Ordering::SeqCst);
        // Every second (the cron crate's own six fields).
        let every_second = cron::Schedule::from_str("* * * * * *").unwrap();
        let (stop, shutdown) = watch::channel(false);
        let scheduler = tokio::spawn(run(manager.clone(), vec![(vec!["hourly".into()], every_second)], shutdown));
        let started = std::time::Instant::now();
        while manager.current_cycle_id() == 0 {
            assert!(started.elapsed() < Duration::from_secs(20), "no cycle after the restart");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(PANICS_LEFT.load(std::sync::atomic::Ordering::SeqCst), 0, "the first firing panicked");
        assert!(started.elapsed() >= RESTART_BACKOFF, "the cycle came after the restart's pause");
        let _ = stop.send(true);
        scheduler.await.unwrap();
    }
}
