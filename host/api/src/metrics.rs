//! Prometheus metrics, in the classic text exposition format.
//!
//! Job counters are fed from the job records the manager publishes, which
//! carry what the child processes did (files, bytes, rows, requests): unlike
//! Arc's (spec §7.10), they count the work of jobs. The rest is read from
//! the manager at each scrape: plugin call counters, the engine's own store
//! requests, jobs in flight, and compaction debt (from the last outlook).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus::{Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::debt::Debt;
use compactor_engine::{CycleReport, JobRecord, Manager, Progress};
use compactor_job::RecoveryReport;
use compactor_storage::RequestCost;

/// Every metric of one engine.
pub struct Metrics {
    registry: Registry,
    jobs: IntCounterVec,
    files_read: IntCounterVec,
    files_written: IntCounterVec,
    bytes_read: IntCounterVec,
    bytes_written: IntCounterVec,
    rows_read: IntCounterVec,
    rows_written: IntCounterVec,
    job_duration: HistogramVec,
    cycles: IntCounter,
    cycle_duration: Histogram,
    recovery: IntCounterVec,
    quarantined: IntCounter,
    store_requests: IntCounterVec,
    plugin_calls: IntCounterVec,
    plugin_fuel: IntCounterVec,
    plugin_traps: IntCounterVec,
    plugin_timeouts: IntCounterVec,
    plugin_out_of_fuel: IntCounterVec,
    plugin_out_of_memory: IntCounterVec,
    plugin_loaded: IntGaugeVec,
    plugin_suspended: IntGaugeVec,
    active_jobs: IntGauge,
    cycle_running: IntGauge,
    debt_files: IntGaugeVec,
    debt_partitions: IntGaugeVec,
    debt_oldest_age: IntGaugeVec,
    debt_updated: IntGauge,
    objects_set_aside: IntGauge,
    cluster_up: IntGauge,
    fuel_exhausted: IntCounterVec,
    /// Last readings of counters kept elsewhere, to add only what is new.
    seen: Mutex<HashMap<String, u64>>,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    let metric = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let metric = IntGauge::new(name, help)?;
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

impl Metrics {
    /// The metrics, registered.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new_custom(Some("compactor".into()), None)?;
        let r = &registry;
        // Every per-tier series carries `tenant` (empty outside tenants) and
        // `tier` (its name): two tenants' `hourly` are counted apart, and job
        // series join the plugin series on the same labels.
        let tier = &["tenant", "tier"];
        let job_duration = HistogramVec::new(
            HistogramOpts::new("job_duration_seconds", "Wall time of a batch, all attempts included.")
                .buckets(prometheus::exponential_buckets(0.05, 2.0, 16)?),
            tier,
        )?;
        registry.register(Box::new(job_duration.clone()))?;
        let cycle_duration = Histogram::with_opts(
            HistogramOpts::new("cycle_duration_seconds", "Wall time of a compaction cycle.")
                .buckets(prometheus::exponential_buckets(0.05, 2.0, 18)?),
        )?;
        registry.register(Box::new(cycle_duration.clone()))?;
        let cycles = IntCounter::new("cycles_total", "Compaction cycles finished.")?;
        registry.register(Box::new(cycles.clone()))?;
        let quarantined = IntCounter::new("manifests_quarantined_total", "Unparseable recovery manifests moved aside.")?;
        registry.register(Box::new(quarantined.clone()))?;
        let plugin = &["tenant", "tier", "plugin"];
        Ok(Self {
            jobs: counter_vec(
                r,
                "jobs_total",
                "Batches compacted, by tier, outcome (success, skipped: ran and merged nothing, or the kind of failure: out_of_memory, killed, timeout, sql, storage, lease_lost, unknown_outcome, ...) and path (duckdb; row_group_copy: the inputs' row groups copied without decoding; streaming_merge: the sorted inputs merged as streams).",
                &["tenant", "tier", "outcome", "path"],
            )?,
            files_read: counter_vec(r, "job_files_read_total", "Input files merged and removed by jobs.", tier)?,
            files_written: counter_vec(r, "job_files_written_total", "Output files written by jobs.", tier)?,
            bytes_read: counter_vec(r, "job_bytes_read_total", "Bytes of the inputs merged by jobs.", tier)?,
            bytes_written: counter_vec(r, "job_bytes_written_total", "Bytes of the outputs written by jobs.", tier)?,
            rows_read: counter_vec(r, "job_rows_read_total", "Rows read by jobs.", tier)?,
            rows_written: counter_vec(r, "job_rows_written_total", "Rows written (verified) by jobs.", tier)?,
            job_duration,
            cycles,
            cycle_duration,
            recovery: counter_vec(
                r,
                "recovery_manifests_total",
                "Recovery manifests resolved, by outcome (completed, rolled_back, left_live, failed, late_output_deleted).",
                &["outcome"],
            )?,
            quarantined,
            store_requests: counter_vec(
                r,
                "store_requests_total",
                "Object-store requests, by kind (list, get, put, delete) and source (engine, job).",
                &["kind", "source"],
            )?,
            fuel_exhausted: counter_vec(
                r,
                "tenant_fuel_exhausted_total",
                "Cycles in which a tier was not planned through because its tenant's fuel_per_cycle ran out.",
                tier,
            )?,
            objects_set_aside: gauge(
                r,
                "objects_set_aside",
                "Objects the last cycle left in place because compaction cannot take them (named in the log and by `compactor plan`).",
            )?,
            cluster_up: gauge(
                r,
                "cluster_up",
                "Cluster mode: 1 while this node's etcd session is alive, 0 when it is cut off (it then starts no work). Absent in standalone mode.",
            )?,
            plugin_calls: counter_vec(r, "plugin_calls_total", "Calls into a tier's policy component.", plugin)?,
            plugin_fuel: counter_vec(r, "plugin_fuel_used_total", "Fuel a tier's policy consumed.", plugin)?,
            plugin_traps: counter_vec(r, "plugin_traps_total", "Policy calls that trapped.", plugin)?,
            plugin_timeouts: counter_vec(r, "plugin_timeouts_total", "Policy calls stopped at their deadline.", plugin)?,
            plugin_out_of_fuel: counter_vec(r, "plugin_out_of_fuel_total", "Policy calls that ran out of fuel.", plugin)?,
            plugin_out_of_memory: counter_vec(r, "plugin_out_of_memory_total", "Policy calls over the memory cap.", plugin)?,
            plugin_loaded: gauge_vec(
                r,
                "plugin_loaded",
                "1 when the tier's policy is loaded (labels name its build), 0 when it failed to load.",
                &["tenant", "tier", "plugin", "wit_version", "content_hash"],
            )?,
            plugin_suspended: gauge_vec(
                r,
                "plugin_suspended",
                "1 while a tier is suspended after cycles in a row whose policy calls failed.",
                tier,
            )?,
            active_jobs: gauge(r, "active_jobs", "Batches being compacted now.")?,
            cycle_running: gauge(r, "cycle_running", "1 while a compaction cycle runs.")?,
            debt_files: gauge_vec(r, "debt_files", "Files a tier's policy would compact now (waiting for its next run).", tier)?,
            debt_partitions: gauge_vec(r, "debt_partitions", "Partitions a tier's policy would compact now.", tier)?,
            debt_oldest_age: gauge_vec(
                r,
                "debt_oldest_partition_age_seconds",
                "Age of the oldest partition a tier's policy would compact now (0: none).",
                tier,
            )?,
            debt_updated: gauge(r, "debt_updated_timestamp_seconds", "When the debt gauges were last computed (Unix time).")?,
            registry,
            seen: Mutex::default(),
        })
    }

    /// Counts what the manager reports.
    pub fn observe(&self, event: &Progress) {
        match event {
            Progress::BatchDone { record } => self.observe_job(record),
            Progress::Recovered { report } => self.observe_recovery(report),
            Progress::CycleFinished { report } => self.observe_cycle(report),
            Progress::TierStarted { .. } => {}
        }
    }

    fn observe_job(&self, record: &JobRecord) {
        let id = record.tier_id();
        let tier = id.labels();
        let outcome = job_outcome(record);
        self.jobs.with_label_values(&[tier[0], tier[1], outcome.as_str(), record.path.name()]).inc();
        self.files_read.with_label_values(&tier).inc_by(record.files_compacted as u64);
        self.files_written.with_label_values(&tier).inc_by(record.files_out as u64);
        self.bytes_read.with_label_values(&tier).inc_by(record.bytes_before);
        self.bytes_written.with_label_values(&tier).inc_by(record.bytes_after);
        self.rows_read.with_label_values(&tier).inc_by(record.rows_before);
        self.rows_written.with_label_values(&tier).inc_by(record.rows_after);
        self.job_duration.with_label_values(&tier).observe(record.duration_ms as f64 / 1000.0);
        self.add_requests("job", record.requests);
    }

    fn observe_recovery(&self, report: &RecoveryReport) {
        let outcomes = [
            ("completed", report.completed),
            ("rolled_back", report.rolled_back),
            ("left_live", report.live),
            ("failed", report.failed.len()),
            ("late_output_deleted", report.late_outputs_deleted),
        ];
        for (outcome, count) in outcomes {
            self.recovery.with_label_values(&[outcome]).inc_by(count as u64);
        }
        self.quarantined.inc_by(report.quarantined.len() as u64);
    }

    fn observe_cycle(&self, report: &CycleReport) {
        self.cycles.inc();
        self.cycle_duration.observe(report.duration_ms as f64 / 1000.0);
        self.objects_set_aside.set(report.set_aside.len() as i64);
        for id in &report.fuel_exhausted {
            self.fuel_exhausted.with_label_values(&id.labels()).inc();
        }
    }

    fn add_requests(&self, source: &str, cost: RequestCost) {
        for (kind, count) in by_kind(cost) {
            self.store_requests.with_label_values(&[kind, source]).inc_by(count);
        }
    }

    /// Adds to `counter` what a cumulative reading kept elsewhere (it
    /// never decreases) gained since the last scrape.
    fn follow(&self, seen: &mut HashMap<String, u64>, counter: &IntCounter, key: String, reading: u64) {
        let last = seen.insert(key, reading).unwrap_or(0);
        counter.inc_by(reading.saturating_sub(last));
    }

    /// Reads the manager's live state into the gauges and followed counters.
    fn refresh(&self, manager: &Manager, debt: Option<&Debt>) {
        if let Some(cluster) = manager.cluster() {
            self.cluster_up.set(i64::from(cluster.alive()));
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let own = manager.engine_requests();
        for (kind, count) in by_kind(own) {
            self.follow(&mut seen, &self.store_requests.with_label_values(&[kind, "engine"]), format!("engine/{kind}"), count);
        }
        self.plugin_loaded.reset();
        for tier in manager.tiers().iter() {
            let (id, key) = (tier.id(), tier.key());
            let [tenant, name] = id.labels();
            let policy = match &tier.policy {
                Ok(policy) => policy,
                Err(_) => {
                    self.plugin_loaded.with_label_values(&[tenant, name, "", "", ""]).set(0);
                    continue;
                }
            };
            let labels = [tenant, name, policy.name()];
            let version = policy.wit_version().unwrap_or_default();
            self.plugin_loaded.with_label_values(&[tenant, name, policy.name(), &version, policy.content_hash()]).set(1);
            let counts = manager.cumulative_call_counts(&key);
            let followed = [
                (&self.plugin_calls, "calls", counts.calls),
                (&self.plugin_fuel, "fuel", counts.fuel_used),
                (&self.plugin_traps, "traps", counts.traps),
                (&self.plugin_timeouts, "timeouts", counts.timeouts),
                (&self.plugin_out_of_fuel, "out_of_fuel", counts.out_of_fuel),
                (&self.plugin_out_of_memory, "out_of_memory", counts.out_of_memory),
            ];
            for (family, what, reading) in followed {
                self.follow(&mut seen, &family.with_label_values(&labels), format!("plugin/{key}/{what}"), reading);
            }
        }
        let health = manager.tier_health();
        let now = chrono::Utc::now();
        for tier in manager.tiers().iter() {
            let id = tier.id();
            let suspended = health.get(&id.key()).is_some_and(|h| h.is_suspended(now));
            self.plugin_suspended.with_label_values(&id.labels()).set(i64::from(suspended));
        }
        self.active_jobs.set(manager.active_jobs().len() as i64);
        self.cycle_running.set(i64::from(manager.is_cycle_running()));
        if let Some(debt) = debt {
            for owed in debt.tiers.values() {
                let labels = owed.id.labels();
                self.debt_files.with_label_values(&labels).set(owed.files as i64);
                self.debt_partitions.with_label_values(&labels).set(owed.partitions as i64);
                self.debt_oldest_age.with_label_values(&labels).set(owed.oldest_age_seconds(debt.computed_at));
            }
            self.debt_updated.set(debt.computed_at.timestamp());
        }
    }

    /// The exposition text, after reading the live state.
    pub fn render(&self, manager: &Manager, debt: Option<&Debt>) -> String {
        self.refresh(manager, debt);
        let mut out = Vec::new();
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// A request count by its `kind` label.
fn by_kind(cost: RequestCost) -> [(&'static str, u64); 4] {
    [("list", cost.list), ("get", cost.get), ("put", cost.put), ("delete", cost.delete)]
}

/// Keeps `metrics` up to date with `manager`'s events.
pub fn attach(metrics: &Arc<Metrics>, manager: &Manager) {
    let metrics = metrics.clone();
    manager.subscribe(move |event| metrics.observe(&event));
}

/// A job record's `outcome` label: `success`, `skipped` (it ran and merged
/// nothing), or the kind of failure that ended it, as history and the
/// `once` summary name it (`failure` when a record from an older engine has
/// none).
fn job_outcome(record: &JobRecord) -> String {
    match (record.success, record.failure_kind) {
        (true, _) if record.skipped.is_some() => "skipped".to_owned(),
        (true, _) => "success".to_owned(),
        (false, Some(kind)) => kind.name(),
        (false, None) => "failure".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use compactor_job::FailureKind;

    #[test]
    fn job_outcomes_name_the_kind_of_failure() {
        let record = |success, failure_kind| JobRecord { success, failure_kind, ..Default::default() };
        assert_eq!(job_outcome(&record(true, None)), "success");
        assert_eq!(job_outcome(&record(false, Some(FailureKind::OutOfMemory))), "out_of_memory");
        assert_eq!(job_outcome(&record(false, Some(FailureKind::LeaseLost))), "lease_lost");
        assert_eq!(job_outcome(&record(false, Some(FailureKind::Timeout))), "timeout");
        assert_eq!(job_outcome(&record(false, None)), "failure", "a record of an older engine");
    }

    #[test]
    fn two_tenants_hourly_jobs_are_counted_apart() {
        let metrics = Metrics::new().unwrap();
        for tenant in [Some("a"), Some("b"), Some("b"), None] {
            let batch = compactor_engine::BatchRef { tenant: tenant.map(str::to_owned), tier: "hourly".into(), ..Default::default() };
            let record = JobRecord { batch, success: true, ..Default::default() };
            metrics.observe(&Progress::BatchDone { record: Box::new(record) });
        }
        let mut out = Vec::new();
        prometheus::TextEncoder::new().encode(&metrics.registry.gather(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let jobs = |tenant: &str| -> f64 {
            text.lines()
                .filter(|l| {
                    l.starts_with("compactor_jobs_total{") && l.contains(&format!("tenant=\"{tenant}\"")) && l.contains("tier=\"hourly\"")
                })
                .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
                .sum()
        };
        assert_eq!((jobs("a"), jobs("b"), jobs("")), (1.0, 2.0, 1.0), "{text}");
    }
}
