//! Compaction cycles: recovery first, then each tier in configured order —
//! plan, then execute its batches (up to `max_concurrent` partitions at once,
//! the batches of one partition in sequence), each in a child process with
//! Arc's halving retry. Tiers run one after the other so that daily sees
//! hourly's outputs. One cycle at a time: a second one is refused.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::config::Config;
pub use crate::health::{SUSPEND_AFTER_FAILING_CYCLES, TierHealth};
use crate::history::History;
use crate::planner::{self, PlanOptions, PlanProblem, PlannedBatch, PlannedTier};
pub use crate::report::{ActiveJob, CycleError, CycleOptions, CycleReport, GateDecision, JobRecord, ManagerStats, Progress};
use crate::temp::{EngineDir, sweep_dead_engines};
use compactor_job::manifest::{ManifestStore, RecoveryManifest, RecoveryObservers, RecoveryOutcome, RecoveryReport};
use compactor_job::parent::{Attempt, ChildCommand, JobFailure, RunSubset, StartedChild, compact_adaptive};
use compactor_job::{FailureKind, JobConfig, JobLease, JobResult, PolicyRef, job_id, job_prefix};
use compactor_runtime::{NodeInfo, PluginRuntime, PluginSource};
use compactor_storage::RequestCost;
use compactor_storage::lease::{Lease, Leases, new_engine_id};
use compactor_storage::{Storage, StorageDescriptor};

/// Records kept in the manager's memory (the persistent history keeps
/// `[history] max_records`).
const HISTORY_LIMIT: usize = 100;

/// Tenants that plan at once, at least (more on machines with more cores):
/// one tenant's policy spinning to its deadline leaves the others room.
const PLANNING_SLOTS: usize = 4;

/// How far ahead a forced cycle's policies see the clock: every age rule is
/// met (Arc #186: backfilled data older than the schedule's window).
const FORCE_HORIZON_DAYS: i64 = 3650;

/// Where progress events go.
type ProgressSink = Arc<dyn Fn(Progress) + Send + Sync>;

/// Runs compaction cycles over one store.
pub struct Manager {
    config: Config,
    storage: Storage,
    requests: Arc<compactor_storage::RequestCounts>,
    tiers: RwLock<Arc<Vec<PlannedTier>>>,
    plugins: PluginRuntime,
    child: ChildCommand,
    stop: Arc<AtomicBool>,
    leases: Leases,
    temp_directory: PathBuf,
    engine_dir: Mutex<Option<Arc<EngineDir>>>,
    running: Arc<AtomicBool>,
    cycle_id: AtomicU64,
    stats: Mutex<ManagerStats>,
    history: Mutex<VecDeque<JobRecord>>,
    persistent_history: History,
    active: Mutex<BTreeMap<u64, ActiveJob>>,
    next_active: AtomicU64,
    observers: Mutex<Vec<ProgressSink>>,
    health: Mutex<BTreeMap<String, TierHealth>>,
    /// Call counters of the tiers' replaced plugins, which instances of a
    /// cycle in flight may still be using.
    retired_calls: Mutex<BTreeMap<String, Vec<Arc<compactor_runtime::CallStats>>>>,
    /// Why the last reload failed (cleared by one that succeeds).
    reload_error: Mutex<Option<String>>,
    /// `[compaction] max_concurrent`: every tenant's jobs together.
    job_slots: tokio::sync::Semaphore,
    /// Tenants planning at once: bounds the memory their policies can hold
    /// together (each instance within its own memory limit).
    planning_slots: tokio::sync::Semaphore,
    /// A job process started with the cycle, for its first job: it boots and
    /// opens DuckDB while the cycle recovers, plans and takes the lease.
    standby: Mutex<Option<StartedChild>>,
}

impl Manager {
    /// The composition root: opens `config`'s store, the plugin runtime with
    /// the built-in components, and every tier's policy, and logs the
    /// config's warnings. Every command that plans or compacts starts here.
    /// A tier whose plugin cannot load is kept as an error so that the other
    /// tiers still run.
    pub fn open(config: Config, child: ChildCommand) -> anyhow::Result<Self> {
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        let storage = Storage::open(&config.storage.url, &config.storage.options, &config.base_dir)?;
        if let Some(lake) = storage.local_root() {
            crate::temp::check_outside_lake(&config.resolve_path(&config.compaction.temp_directory), &lake).map_err(anyhow::Error::msg)?;
        }
        let plugins = crate::plugin_runtime(config.plugin_cache_dir())?;
        let tiers = crate::planner::load_tiers(&config, &plugins)?;
        for tier in tiers.iter().filter(|t| t.enabled) {
            if let Err(e) = &tier.policy {
                tracing::error!(tier = %tier.key(), "{e}; the tier does nothing until its plugin loads (fix it, then SIGHUP or reload)");
            }
        }
        Ok(Self::new(config, storage, tiers, plugins, child))
    }

    /// A manager for `config`'s store and tiers, running jobs with `child`.
    pub fn new(config: Config, storage: Storage, tiers: Vec<PlannedTier>, plugins: PluginRuntime, mut child: ChildCommand) -> Self {
        // Credentials from the config reach jobs through their environment.
        child.env.extend(storage.child_env().iter().cloned());
        child.timeout = config.compaction.job_timeout().unwrap_or_default();
        let (storage, requests) = storage.counted();
        let temp_directory = config.resolve_path(&config.compaction.temp_directory);
        let leases = Leases::new(storage.clone(), new_engine_id(), config.coordination.lease_settings().unwrap_or_default());
        let persistent_history = History::new(storage.clone(), leases.engine(), config.history.max_records);
        let job_slots = tokio::sync::Semaphore::new(config.compaction.effective_max_concurrent());
        let planning_slots = tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(1, |n| n.get()).max(PLANNING_SLOTS));
        Self {
            config,
            storage,
            requests,
            tiers: RwLock::new(Arc::new(tiers)),
            plugins,
            child,
            stop: Arc::default(),
            leases,
            temp_directory,
            engine_dir: Mutex::default(),
            running: Arc::default(),
            cycle_id: AtomicU64::new(0),
            stats: Mutex::default(),
            history: Mutex::default(),
            persistent_history,
            active: Mutex::default(),
            next_active: AtomicU64::new(0),
            observers: Mutex::default(),
            health: Mutex::default(),
            retired_calls: Mutex::default(),
            reload_error: Mutex::default(),
            job_slots,
            planning_slots,
            standby: Mutex::default(),
        }
    }

    /// Asks a running cycle to stop soon: no further partition is planned
    /// and no further batch is started; a job already running finishes.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Receives progress events (every subscriber gets every event).
    pub fn subscribe(&self, observer: impl Fn(Progress) + Send + Sync + 'static) {
        lock(&self.observers).push(Arc::new(observer));
    }

    fn emit(&self, event: Progress) {
        let observers = lock(&self.observers).clone();
        for observer in observers {
            observer(event.clone());
        }
    }

    /// The tiers as loaded now (a reload swaps them between cycles).
    pub fn tiers(&self) -> Arc<Vec<PlannedTier>> {
        self.tiers.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Loads every tier's component again (a changed file on disk), checks
    /// each and configures one instance, then swaps them in for the next
    /// cycle; a cycle in flight keeps the ones it started with. If any tier
    /// fails to load or configure, nothing is swapped and the error names it.
    pub fn reload_plugins(&self) -> Result<Vec<String>, String> {
        let checked = (|| {
            let reloaded = crate::planner::load_tiers(&self.config, &self.plugins).map_err(|e| e.to_string())?;
            for tier in reloaded.iter().filter(|t| t.enabled) {
                let policy = tier.policy.as_ref().map_err(|e| format!("tier {}: {e}", tier.key()))?;
                policy.instantiate(&tier.config_json, tier.limits).map_err(|e| format!("tier {}: {e}", tier.key()))?;
            }
            Ok(reloaded)
        })();
        *lock(&self.reload_error) = checked.as_ref().err().cloned();
        let reloaded = checked?;
        let names = reloaded.iter().filter_map(|t| t.policy.as_ref().ok().map(|p| format!("{}: {}", t.key(), p.name()))).collect();
        let replaced = std::mem::replace(&mut *self.tiers.write().unwrap_or_else(|e| e.into_inner()), Arc::new(reloaded));
        let mut retired = lock(&self.retired_calls);
        for tier in replaced.iter() {
            if let Some(stats) = tier.policy.as_ref().ok().and_then(|p| p.call_stats()) {
                retired.entry(tier.key()).or_default().push(stats);
            }
        }
        drop(retired);
        // New components get a clean slate: a suspension was about the old ones.
        lock(&self.health).clear();
        tracing::info!(tiers = ?names, "plugins reloaded; the next cycle uses them");
        Ok(names)
    }

    /// Object-store requests this engine made itself (listing, recovery,
    /// leases, history), since it started; its jobs' are in their records.
    pub fn engine_requests(&self) -> RequestCost {
        self.requests.snapshot()
    }

    /// Why the last reload failed, if it did (the running builds were kept).
    pub fn reload_error(&self) -> Option<String> {
        lock(&self.reload_error).clone()
    }

    /// The tiers whose policies may be called now, and the suspended ones
    /// with their health.
    pub fn callable_tiers(&self) -> (Vec<PlannedTier>, BTreeMap<String, TierHealth>) {
        let now = Utc::now();
        let suspended: BTreeMap<String, TierHealth> =
            lock(&self.health).iter().filter(|(_, h)| h.is_suspended(now)).map(|(n, h)| (n.clone(), h.clone())).collect();
        let tiers = self.tiers().iter().filter(|t| !suspended.contains_key(&t.key())).cloned().collect();
        (tiers, suspended)
    }

    /// How each tier's policy has been doing (tiers that never failed are
    /// absent).
    pub fn tier_health(&self) -> BTreeMap<String, TierHealth> {
        lock(&self.health).clone()
    }

    /// What the calls of a tier's policies (by key: `tier` or
    /// `tenant/tier`) did since the engine started, replaced builds
    /// included: a counter for metrics, never decreasing.
    pub fn cumulative_call_counts(&self, tier: &str) -> compactor_runtime::CallCounts {
        let current = self
            .tiers()
            .iter()
            .filter(|t| t.key() == tier)
            .filter_map(|t| t.policy.as_ref().ok())
            .map(|p| p.call_counts())
            .fold(compactor_runtime::CallCounts::default(), |a, b| a + b);
        lock(&self.retired_calls).get(tier).into_iter().flatten().map(|s| s.read()).fold(current, |a, b| a + b)
    }

    /// [`Manager::reload_plugins`] off the async runtime's threads (loading
    /// compiles and blocks), logged either way; `why` says what asked.
    pub async fn reload_plugins_in_background(self: &Arc<Self>, why: &str) -> Result<Vec<String>, String> {
        let manager = self.clone();
        let outcome = tokio::task::spawn_blocking(move || manager.reload_plugins())
            .await
            .unwrap_or_else(|e| Err(format!("the reload failed (a bug in compactor): {e}")));
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "{why}: the reload failed; the running plugins are kept");
        }
        outcome
    }

    /// The batches being compacted now.
    pub fn active_jobs(&self) -> Vec<ActiveJob> {
        lock(&self.active).values().cloned().collect()
    }

    /// The lake's persistent job history.
    pub fn history(&self) -> &History {
        &self.persistent_history
    }

    /// Whether a cycle is running.
    pub fn is_cycle_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// The last cycle id handed out (0 before the first cycle).
    pub fn current_cycle_id(&self) -> u64 {
        self.cycle_id.load(Ordering::SeqCst)
    }

    /// Lifetime counters.
    pub fn stats(&self) -> ManagerStats {
        lock(&self.stats).clone()
    }

    /// The last (at most 10) job records, oldest first.
    pub fn recent_jobs(&self) -> Vec<JobRecord> {
        let history = lock(&self.history);
        history.iter().skip(history.len().saturating_sub(10)).cloned().collect()
    }

    /// The configuration this manager runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The store this manager compacts.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// When each partition of `database`/`measurement` starting in
    /// `[from, to)` will be compacted, and why not now, asked of the tiers
    /// that may be called now (a suspended tier takes nothing anyway).
    pub async fn partition_outlook(
        &self,
        database: &str,
        measurement: &str,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<(Vec<crate::outlook::PartitionOutlook>, bool), compactor_storage::StorageError> {
        let tiers = self.callable_tiers().0;
        crate::outlook::partition_outlook(&self.storage, &self.config, tiers, database, measurement, from, to, now).await
    }

    /// The plan of one cycle over every selected tier at once, changing
    /// nothing (`compactor plan`); a cycle plans each tier just before
    /// running it instead, so that daily sees hourly's outputs. Each
    /// tenant's tiers plan over its databases, within its byte budget.
    pub async fn plan(&self, options: &CycleOptions) -> Result<planner::Plan, planner::PlanError> {
        // A suspended tier is not called, here either (the API plans too).
        let (tiers, suspended) = self.callable_tiers();
        let selected: Vec<&PlannedTier> =
            tiers.iter().filter(|t| t.enabled && t.is_selected_by(&options.tiers, options.exact_tiers)).collect();
        let mut plan = planner::Plan::default();
        for group in self.tenant_groups(&selected, options, &mut plan.planning_requests).await? {
            let group_tiers: Vec<PlannedTier> = group.tiers.iter().map(|t| (*t).clone()).collect();
            let mut tenant_plan = planner::plan(&self.storage, &group_tiers, &self.plan_options(options, &group)).await?;
            group.budget().defer_over_budget(&group, &mut tenant_plan);
            plan.merge(tenant_plan);
        }
        for (name, health) in suspended {
            plan.problems.push(PlanProblem { tier: name, partition: None, message: health.suspension_note() });
        }
        Ok(plan)
    }

    /// The selected tiers grouped by tenant, each with the databases it
    /// owns: one discovery for all. Without `[[tenants]]` there is one
    /// group, and the planner discovers the databases as it always did.
    async fn tenant_groups<'a>(
        &'a self,
        selected: &[&'a PlannedTier],
        options: &CycleOptions,
        requests: &mut RequestCost,
    ) -> Result<Vec<TenantGroup<'a>>, planner::PlanError> {
        if self.config.tenants.is_empty() {
            let tiers = selected.to_vec();
            return Ok(if tiers.is_empty() { Vec::new() } else { vec![TenantGroup { tenant: None, tiers, databases: None }] });
        }
        let databases = match &options.database {
            Some(database) => vec![database.clone()],
            None => {
                requests.list += 1;
                compactor_storage::discover_databases(&self.storage).await.map_err(planner::PlanError::Discovery)?
            }
        };
        let tenants = std::iter::once(None).chain(self.config.tenants.iter().map(Some));
        Ok(tenants
            .filter_map(|tenant| {
                let name = tenant.map(|t| t.name.as_str());
                let tiers: Vec<&PlannedTier> = selected.iter().copied().filter(|t| t.tenant.as_deref() == name).collect();
                let owned: Vec<String> =
                    databases.iter().filter(|db| self.config.tenant_of(db).map(|t| t.name.as_str()) == name).cloned().collect();
                (!tiers.is_empty() && !owned.is_empty()).then_some(TenantGroup { tenant, tiers, databases: Some(owned) })
            })
            .collect())
    }

    /// What the planner needs for `group`'s tiers (already selected).
    fn plan_options(&self, options: &CycleOptions, group: &TenantGroup<'_>) -> PlanOptions {
        let now = options.now.unwrap_or_else(Utc::now);
        PlanOptions {
            now: if options.force { now + chrono::Duration::days(FORCE_HORIZON_DAYS) } else { now },
            database: options.database.clone(),
            databases: group.databases.clone(),
            max_files_per_batch: self.config.compaction.max_files_per_batch,
            multipart_threshold: self.config.compaction.multipart_threshold_bytes(),
            explain: options.explain,
            stop: self.stop.clone(),
        }
    }

    /// Asks the cluster gate whether this node may compact. Standalone nodes
    /// always may; in cluster mode the gate component decides, with the
    /// configured sandbox limits, and a gate that fails means no. Every
    /// command that compacts asks, once per cycle.
    pub fn gate_decision(&self) -> GateDecision {
        let cluster = &self.config.cluster;
        if !cluster.enabled {
            return GateDecision::Standalone;
        }
        let source = PluginSource::parse(&cluster.gate, &self.config.base_dir);
        let plugin = source.to_string();
        let node = NodeInfo { id: cluster.node_id.clone(), role: cluster.role.clone(), ..Default::default() };
        let answer = (|| -> anyhow::Result<bool> {
            let gate = self.plugins.load_gate(&source)?;
            let gate_config = serde_json::to_string(&cluster.gate_config)?;
            let mut gate = gate.instantiate(&gate_config, self.config.gate_limits()?)?;
            Ok(gate.can_compact(&node)?)
        })();
        match answer {
            Ok(true) => GateDecision::Allowed { plugin },
            Ok(false) => GateDecision::Denied { plugin, role: cluster.role.clone() },
            Err(error) => GateDecision::Failed { plugin, error: format!("{error:#}") },
        }
    }

    /// This engine's id, as its leases and manifests name it.
    pub fn engine_id(&self) -> &str {
        self.leases.engine()
    }

    /// Finishes or rolls back the interrupted jobs whose owner's lease is
    /// gone, and leaves live ones alone (see [`ManifestStore::recover`]).
    pub async fn recover(&self) -> Result<RecoveryReport, compactor_job::manifest::ManifestError> {
        let report = ManifestStore::new(self.storage.clone()).recover(&self.leases, &RecoveryObservers::default()).await?;
        if !report.quarantined.is_empty() {
            tracing::error!(manifests = ?report.quarantined, "unparseable recovery manifests moved aside to *.quarantined");
        }
        {
            let mut stats = lock(&self.stats);
            stats.total_manifests_recovered += report.recovered as u64;
            stats.total_manifests_quarantined += report.quarantined.len() as u64;
        }
        self.emit(Progress::Recovered { report: Box::new(report.clone()) });
        Ok(report)
    }

    /// Checks at start-up that the store can do create-only writes (when it
    /// cannot, says so and what it means instead of silently racing), and
    /// refuses to go on when this host's clock is further from the store's
    /// than half of `max_clock_skew`.
    pub async fn check_store(&self) -> anyhow::Result<()> {
        let skew = self.leases.settings().max_clock_skew;
        let check = match self.leases.check_store().await {
            Ok(check) => check,
            Err(e) => {
                tracing::warn!(store = %self.storage, error = %e, "cannot check the store's conditional writes and clock");
                return Ok(());
            }
        };
        if !check.conditional_writes {
            tracing::warn!(
                store = %self.storage,
                "this store cannot do conditional (create-only) writes: leases cannot exclude another \
                 compactor and an upload could overwrite an object; run a single compactor against this store \
                 (for S3-compatible servers, set aws_conditional_put in [storage.options] if they support it)"
            );
        }
        if let Some(offset) = check.clock_offset
            && offset.abs().to_std().unwrap_or_default() > skew / 2
        {
            // Leases rest on clocks within the bound: an engine whose clock is
            // off could take over a live job's partition. Refuse, do not warn.
            anyhow::bail!(
                "this host's clock differs from the store's ({}) by {} ms, more than half of [coordination] max_clock_skew \
                 ({skew:?}): leases between engines would not be safe; fix the clock (NTP) or raise max_clock_skew",
                self.storage,
                offset.num_milliseconds()
            );
        }
        Ok(())
    }

    /// Removes the temp directories of engines that are gone (their leftover
    /// job directories); nothing of a live engine's, nothing unmarked.
    pub fn cleanup_orphaned_temp_dirs(&self) -> std::io::Result<usize> {
        sweep_dead_engines(&self.temp_directory)
    }

    /// This engine's temp directory, created on first use.
    fn engine_dir(&self) -> std::io::Result<Arc<EngineDir>> {
        let mut dir = lock(&self.engine_dir);
        if let Some(dir) = dir.as_ref() {
            return Ok(dir.clone());
        }
        let created = Arc::new(EngineDir::create(&self.temp_directory, self.engine_id())?);
        *dir = Some(created.clone());
        Ok(created)
    }

    /// Runs one cycle.
    pub async fn run_cycle(&self, options: CycleOptions) -> Result<CycleReport, CycleError> {
        let ticket = self.begin_cycle()?;
        self.run_begun_cycle(ticket, options).await
    }

    /// Claims the right to run the next cycle and its id, at once: a caller
    /// that answers "started" before the cycle runs (the API's trigger) can
    /// then never race another cycle. Dropping the ticket gives it back.
    pub fn begin_cycle(&self) -> Result<CycleTicket, CycleError> {
        if self.running.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            return Err(CycleError::AlreadyRunning);
        }
        let running = RunningFlag(self.running.clone());
        Ok(CycleTicket { cycle_id: self.cycle_id.fetch_add(1, Ordering::SeqCst) + 1, _running: running })
    }

    /// Runs the cycle `ticket` claimed.
    pub async fn run_begun_cycle(&self, ticket: CycleTicket, options: CycleOptions) -> Result<CycleReport, CycleError> {
        let cycle_id = ticket.cycle_id;
        let _ticket = ticket;
        let started = Instant::now();
        let requests_before = self.requests.snapshot();
        let mut report = CycleReport { cycle_id, ..Default::default() };
        let tiers = self.tiers();
        let selected: Vec<&PlannedTier> =
            tiers.iter().filter(|t| t.enabled && t.is_selected_by(&options.tiers, options.exact_tiers)).collect();
        if selected.is_empty() {
            return Ok(report);
        }
        let Some(descriptor) = self.storage.descriptor().cloned() else {
            return Err(CycleError::NotShareable(self.storage.to_string()));
        };
        report.gate = self.gate_decision();
        if !report.gate.allows() {
            tracing::warn!(cycle_id, "{}", report.gate);
            return Ok(report);
        }
        let _standby = Standby::start(&self.standby, &self.child);
        match self.recover().await {
            Ok(recovery) => report.recovery = recovery,
            Err(e) => tracing::error!(error = %e, "recovery failed; continuing with the cycle"),
        }
        let mut discovery = RequestCost::default();
        let groups = self.tenant_groups(&selected, &options, &mut discovery).await?;
        // Tenants run side by side: one tenant's slow policy, failing jobs
        // or spent budget never holds another's partitions.
        let outcomes = futures::future::join_all(groups.iter().map(|group| self.run_tenant(group, &options, cycle_id, &descriptor))).await;
        for outcome in outcomes {
            let outcome = outcome?;
            report.jobs.extend(outcome.jobs);
            report.problems.extend(outcome.problems);
            report.skipped_locked += outcome.skipped_locked;
            report.deferred_by_budget += outcome.deferred_by_budget;
        }
        report.duration_ms = started.elapsed().as_millis() as u64;
        let own = self.requests.snapshot().since(requests_before);
        report.requests = report.jobs.iter().fold(own, |total, j| total + j.requests);
        tracing::info!(
            cycle_id,
            jobs = report.jobs.len(),
            failed = report.failed().count(),
            duration_ms = report.duration_ms,
            "compaction cycle finished"
        );
        match self.persistent_history.prune().await {
            Ok(0) => {}
            Ok(pruned) => tracing::debug!(pruned, "pruned the job history to [history] max_records"),
            Err(e) => tracing::warn!(error = %e, "cannot prune the job history"),
        }
        lock(&self.stats).total_cycles += 1;
        self.emit(Progress::CycleFinished { report: Arc::new(report.clone()) });
        Ok(report)
    }

    /// One tenant's part of a cycle: its tiers in order, each planned over
    /// its databases just before it runs, within its byte budget.
    async fn run_tenant(
        &self,
        group: &TenantGroup<'_>,
        options: &CycleOptions,
        cycle_id: u64,
        descriptor: &StorageDescriptor,
    ) -> Result<CycleReport, planner::PlanError> {
        let mut outcome = CycleReport::default();
        let mut budget = group.budget();
        for tier in &group.tiers {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let key = tier.key();
            if let Some(health) = lock(&self.health).get(&key).filter(|h| h.is_suspended(Utc::now())) {
                outcome.problems.push(PlanProblem { tier: key, partition: None, message: health.suspension_note() });
                continue;
            }
            let planning = self.planning_slots.acquire().await;
            let mut plan = planner::plan(&self.storage, std::slice::from_ref(*tier), &self.plan_options(options, group)).await?;
            drop(planning);
            let failed_calls = plan.tiers.first().is_some_and(|t| t.plugin_failures > 0);
            let failure = failed_calls.then(|| plan.problems.first().map(|p| p.message.clone()).unwrap_or_default());
            let suspended = lock(&self.health).entry(key.clone()).or_default().record(failure, Utc::now());
            if suspended {
                tracing::error!(tier = %key, "the tier's policy failed in {SUSPEND_AFTER_FAILING_CYCLES} cycles in a row; it is suspended (see /api/v1/plugins)");
            }
            outcome.problems.append(&mut plan.problems);
            budget.defer_over_budget(group, &mut plan);
            outcome.deferred_by_budget += plan.deferred_by_budget;
            self.emit(Progress::TierStarted { tier: key, batches: plan.batches.len() });
            let suffix = plan.tiers.first().map(|t| t.output_suffix.clone()).filter(|s| !s.is_empty());
            let run = TierRun {
                cycle_id,
                descriptor,
                suffix: suffix.as_deref(),
                policy: policy_ref(tier),
                tenant: group.tenant_name().map(str::to_owned),
                max_concurrent: group.max_concurrent(&self.config),
            };
            let (records, skipped) = self.execute(plan.batches, &run).await;
            outcome.jobs.extend(records);
            outcome.skipped_locked += skipped;
        }
        Ok(outcome)
    }

    /// Runs the batches of one tier: partitions in parallel (bounded), the
    /// batches of a partition in sequence.
    async fn execute(&self, batches: Vec<PlannedBatch>, run: &TierRun<'_>) -> (Vec<JobRecord>, usize) {
        let mut partitions: BTreeMap<String, Vec<PlannedBatch>> = BTreeMap::new();
        for batch in batches {
            partitions.entry(batch.candidate.partition_path.clone()).or_default().push(batch);
        }
        let limit = run.max_concurrent;
        let results: Vec<(Vec<JobRecord>, usize)> = futures::StreamExt::collect(futures::StreamExt::buffer_unordered(
            futures::stream::iter(partitions.into_values().map(|batches| self.execute_partition(batches, run))),
            limit,
        ))
        .await;
        let mut records = Vec::new();
        let mut skipped = 0;
        for (r, s) in results {
            records.extend(r);
            skipped += s;
        }
        records.sort_by(|a, b| (&a.partition_path, a.batch_number).cmp(&(&b.partition_path, b.batch_number)));
        (records, skipped)
    }

    async fn execute_partition(&self, batches: Vec<PlannedBatch>, run: &TierRun<'_>) -> (Vec<JobRecord>, usize) {
        let Some(first) = batches.first() else { return (Vec::new(), 0) };
        let partition = first.candidate.partition_path.clone();
        let database = first.candidate.database.clone();
        // Every tenant's jobs together stay within [compaction] max_concurrent
        // (the semaphore is never closed).
        let Ok(_slot) = self.job_slots.acquire().await else { return (Vec::new(), batches.len()) };
        let lease = match self.leases.try_acquire(&partition).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                tracing::info!(%partition, "partition (or its day, or an hour of it) is being compacted elsewhere; skipping it this cycle");
                return (Vec::new(), batches.len());
            }
            Err(e) => {
                tracing::error!(%partition, error = %e, "cannot take the partition's lease; skipping it this cycle");
                return (Vec::new(), batches.len());
            }
        };
        let skipped = batches.len();
        let outcome = self.execute_leased(batches, run, &lease).await;
        let (records, unknown_outcome) = match outcome {
            Ok(done) => done,
            Err(reason) => {
                tracing::error!(%partition, "{reason}; skipping it this cycle");
                self.leases.release(lease).await;
                return (Vec::new(), skipped);
            }
        };
        if unknown_outcome {
            // Keep the partition for one more lease TTL and the store's
            // late-write window, so that the request whose outcome is unknown
            // has landed or failed before anyone (this engine included)
            // recovers it.
            self.leases.release_late(lease).await;
        } else {
            self.leases.release(lease).await;
        }
        if let Ok(dir) = self.engine_dir() {
            remove_partition_temp_dirs(dir.path(), &job_prefix(&database, &partition));
        }
        (records, 0)
    }

    /// The batches of one partition, under its lease: the lease is renewed
    /// meanwhile, and the files of manifests written since the plan are
    /// dropped first. Returns the records and whether a job's outcome is
    /// unknown (then the rest of the partition waits for recovery).
    async fn execute_leased(&self, batches: Vec<PlannedBatch>, run: &TierRun<'_>, lease: &Lease) -> Result<(Vec<JobRecord>, bool), String> {
        let engine_dir = self.engine_dir().map_err(|e| format!("cannot create the engine's temp directory: {e}"))?;
        let deadline_file = engine_dir.path().join(format!("{}.deadline", lease.id()));
        let _renewal = self.leases.keep_renewed(lease, Some(deadline_file.clone()));
        // The plan's snapshot of held files may predate another job's
        // manifest; under the lease, look again.
        let held = ManifestStore::new(self.storage.clone()).held_files().await.map_err(|e| e.to_string())?;
        if let Some(manifest) = held.blocked_by(lease.partition()) {
            return Err(format!("recovery manifest {manifest} cannot be read now"));
        }
        let mut records = Vec::new();
        for mut batch in batches {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let planned = batch.candidate.files.len();
            batch.candidate.files.retain(|f| !held.contains(f));
            if batch.candidate.files.len() < compactor_job::parent::MIN_BATCH_FILES {
                if planned > 0 {
                    tracing::info!(partition = %lease.partition(), "the batch's files are held by another job's manifest now; skipping it");
                }
                continue;
            }
            let job = LeasedJob { lease, deadline_file: &deadline_file, engine_dir: engine_dir.path() };
            let (record, unknown_outcome) = self.execute_batch(&batch, run, &job).await;
            self.emit(Progress::BatchDone { record: Box::new(record.clone()) });
            records.push(record);
            if unknown_outcome {
                return Ok((records, true));
            }
        }
        Ok((records, false))
    }

    /// One batch, its log lines (the engine's and, re-emitted, its job
    /// processes') carrying the cycle, tier and partition.
    async fn execute_batch(&self, batch: &PlannedBatch, run: &TierRun<'_>, job: &LeasedJob<'_>) -> (JobRecord, bool) {
        let candidate = &batch.candidate;
        let span = tracing::info_span!(
            "batch",
            cycle_id = run.cycle_id,
            tier = %candidate.tier,
            partition = %candidate.partition_path,
            batch = candidate.batch_number
        );
        tracing::Instrument::instrument(self.execute_batch_in_span(batch, run, job), span).await
    }

    async fn execute_batch_in_span(&self, batch: &PlannedBatch, run: &TierRun<'_>, job: &LeasedJob<'_>) -> (JobRecord, bool) {
        let candidate = &batch.candidate;
        let (descriptor, suffix) = (run.descriptor, run.suffix);
        let lease = job.lease;
        let started = Instant::now();
        let started_at = Utc::now();
        let _active = ActiveGuard::register(
            &self.active,
            self.next_active.fetch_add(1, Ordering::Relaxed),
            ActiveJob {
                cycle_id: run.cycle_id,
                database: candidate.database.clone(),
                measurement: candidate.measurement.clone(),
                partition_path: candidate.partition_path.clone(),
                tier: candidate.tier.clone(),
                batch_number: candidate.batch_number,
                files: candidate.files.len(),
                bytes: batch.bytes,
                started_at,
            },
        );
        let template = JobConfig {
            database: candidate.database.clone(),
            measurement: candidate.measurement.clone(),
            partition_path: candidate.partition_path.clone(),
            files: Vec::new(),
            tier: candidate.tier.clone(),
            temp_directory: job.engine_dir.display().to_string(),
            batch_number: candidate.batch_number,
            parent_finalizes_manifest: false,
            sort_keys: Some(self.config.compaction.sort_keys_for(&candidate.measurement).to_vec()),
            memory_limit: self.config.compaction.memory_limit.clone(),
            threads: self.config.compaction.effective_threads(),
            storage_type: descriptor.storage_type.clone(),
            storage_config: descriptor.config_json.clone(),
            job_id: String::new(),
            completion_dir: String::new(),
            partition_time: candidate.partition_time,
            output_suffix: suffix.map(str::to_owned),
            multipart_threshold_bytes: Some(self.config.compaction.multipart_threshold_bytes()),
            row_group_size: Some(self.config.compaction.row_group_size as u64),
            lease: Some(JobLease {
                engine: self.engine_id().to_owned(),
                id: lease.id().to_owned(),
                deadline_file: job.deadline_file.display().to_string(),
            }),
            policy: Some(run.policy.clone()),
        };
        let run_subset: &RunSubset<'_> = &|files: Vec<String>| {
            let config = JobConfig {
                files,
                job_id: job_id(&template.database, &template.partition_path, Utc::now(), template.batch_number),
                ..template.clone()
            };
            let child = &self.child;
            let manifests = ManifestStore::new(self.storage.clone());
            let engine = self.engine_id();
            Box::pin(async move {
                if !lease.is_valid() {
                    let mut failure =
                        JobFailure::new(FailureKind::LeaseLost, "the partition's lease was lost; the job was not started".into());
                    failure.permanent = true;
                    return (config.job_id, Err(failure));
                }
                let standby = lock(&self.standby).take().and_then(|mut c| c.is_running().then_some(c));
                let mut outcome = match standby {
                    Some(started) => started.run(&config).await,
                    None => child.run(&config).await,
                };
                if let Err(failure) = &mut outcome {
                    match failure.kind {
                        // Recovery resolves these once the lease, released
                        // late, has expired (see `leaves_writes_in_flight`).
                        FailureKind::UnknownOutcome | FailureKind::LeaseLost => failure.permanent = true,
                        _ if !lease.is_valid() => {
                            failure.message = format!("{}; the partition's lease was lost, so recovery resolves the job", failure.message);
                            failure.permanent = true;
                        }
                        _ => {
                            // A job killed after writing its recovery manifest may
                            // have uploaded its output: resolve that first, or a
                            // retry in halves would merge the same rows a second time.
                            let key = RecoveryManifest::key_for(&config.tier, &config.database, &config.partition_path, &config.job_id);
                            match manifests.recover_job(&key, lease, engine).await {
                                Ok(RecoveryOutcome::Finished) => {
                                    tracing::warn!(job_id = %config.job_id, error = %failure, "the job died after its upload; recovery finished it");
                                    let files_compacted = config.files.len();
                                    outcome =
                                        Ok(JobResult { success: true, files_compacted, output_file: String::new(), ..Default::default() });
                                }
                                Ok(_) => {}
                                Err(e) => {
                                    tracing::error!(job_id = %config.job_id, error = %e, "cannot resolve the failed job's manifest; not retrying");
                                    failure.message = format!("{}; its recovery manifest could not be resolved: {e}", failure.message);
                                    failure.permanent = true;
                                }
                            }
                        }
                    }
                }
                (config.job_id, outcome)
            })
        };
        let (attempts, outcome) = compact_adaptive(run_subset, candidate.files.clone()).await;
        let results: Vec<&JobResult> = attempts.iter().filter_map(Attempt::result).collect();
        let succeeded: Vec<&JobResult> = results.iter().copied().filter(|r| r.success).collect();
        let record = JobRecord {
            database: candidate.database.clone(),
            measurement: candidate.measurement.clone(),
            partition_path: candidate.partition_path.clone(),
            tier: candidate.tier.clone(),
            tenant: run.tenant.clone(),
            batch_number: candidate.batch_number,
            files_in: candidate.files.len(),
            files_compacted: succeeded.iter().map(|r| r.files_compacted).sum(),
            files_out: succeeded.iter().filter(|r| r.files_compacted > 0).count(),
            bytes_before: succeeded.iter().map(|r| r.bytes_before).sum(),
            bytes_after: succeeded.iter().map(|r| r.bytes_after).sum(),
            rows_before: succeeded.iter().map(|r| r.rows_before).sum(),
            rows_after: succeeded.iter().map(|r| r.rows_after).sum(),
            attempts: attempts.len(),
            success: outcome.is_ok(),
            failure_kind: outcome.as_ref().err().map(|e| e.kind),
            error: outcome.err().map(|e| e.message),
            skipped_inputs: results.iter().flat_map(|r| r.skipped_inputs.clone()).collect(),
            duration_ms: started.elapsed().as_millis() as u64,
            peak_job_rss_bytes: results.iter().map(|r| r.peak_rss_bytes).max().unwrap_or(0),
            requests: results.iter().fold(RequestCost::default(), |total, r| total + r.requests),
            job_id: attempts.first().map(|a| a.job_id.clone()).unwrap_or_default(),
            cycle_id: run.cycle_id,
            engine: self.engine_id().to_owned(),
            policy: run.policy.name.clone(),
            policy_hash: run.policy.content_hash.clone(),
            started_at,
            finished_at: Utc::now(),
        };
        self.account(&record).await;
        (record, attempts.iter().any(leaves_writes_in_flight))
    }

    async fn account(&self, record: &JobRecord) {
        {
            let mut stats = lock(&self.stats);
            if record.success {
                stats.total_jobs_completed += 1;
                stats.total_files_compacted += record.files_compacted as u64;
                stats.total_bytes_saved += record.bytes_before as i64 - record.bytes_after as i64;
            } else {
                stats.total_jobs_failed += 1;
            }
        }
        {
            let mut history = lock(&self.history);
            history.push_back(record.clone());
            while history.len() > HISTORY_LIMIT {
                history.pop_front();
            }
        }
        if let Err(e) = self.persistent_history.append(record).await {
            tracing::warn!(job_id = %record.job_id, error = %e, "cannot record the job in the persistent history");
        }
    }
}

/// Whether `attempt` may have left writes that have not landed yet: an
/// upload or commit whose outcome is unknown, or a job that lost its lease
/// (it may have sent writes before its deadline). Its partition is then
/// released late, and recovery resolves it after the claim has expired.
fn leaves_writes_in_flight(attempt: &Attempt) -> bool {
    matches!(&attempt.outcome, Err(failure) if matches!(failure.kind, FailureKind::UnknownOutcome | FailureKind::LeaseLost))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the batches of one tier share in a cycle.
struct TierRun<'a> {
    cycle_id: u64,
    descriptor: &'a StorageDescriptor,
    suffix: Option<&'a str>,
    policy: PolicyRef,
    tenant: Option<String>,
    /// The tenant's partitions at once.
    max_concurrent: usize,
}

/// One tenant's selected tiers and the databases it owns.
struct TenantGroup<'a> {
    /// None: the databases no tenant claims, with the top-level tiers.
    tenant: Option<&'a crate::config::TenantConfig>,
    tiers: Vec<&'a PlannedTier>,
    /// None: every database (no `[[tenants]]`; the planner discovers).
    databases: Option<Vec<String>>,
}

impl TenantGroup<'_> {
    fn tenant_name(&self) -> Option<&str> {
        self.tenant.map(|t| t.name.as_str())
    }

    fn max_concurrent(&self, config: &Config) -> usize {
        let global = config.compaction.effective_max_concurrent();
        self.tenant.and_then(|t| t.max_concurrent).map_or(global, |n| (n.max(1) as usize).min(global))
    }

    fn budget(&self) -> ByteBudget {
        ByteBudget { limit: self.tenant.and_then(|t| t.max_bytes_per_cycle()), spent: 0 }
    }
}

/// A tenant's `max_bytes_per_cycle`, spent batch by batch in plan order.
struct ByteBudget {
    limit: Option<u64>,
    spent: u64,
}

impl ByteBudget {
    /// Takes out of `plan` the batches past the budget, logs it, and counts
    /// them as deferred to the next cycle: `plan` and a cycle do the same.
    fn defer_over_budget(&mut self, group: &TenantGroup<'_>, plan: &mut planner::Plan) {
        let deferred = self.take(&mut plan.batches);
        if !deferred.is_empty() {
            tracing::info!("{}", self.note(group, &deferred));
            plan.defer(&deferred);
        }
    }

    /// Keeps in `batches` those that fit what is left (the cycle's first
    /// batch always does, so an oversized one cannot starve), and returns
    /// the others.
    fn take(&mut self, batches: &mut Vec<PlannedBatch>) -> Vec<PlannedBatch> {
        let Some(limit) = self.limit else { return Vec::new() };
        let (kept, deferred): (Vec<PlannedBatch>, Vec<PlannedBatch>) = std::mem::take(batches).into_iter().partition(|batch| {
            let fits = self.spent == 0 || self.spent.saturating_add(batch.bytes) <= limit;
            if fits {
                self.spent = self.spent.saturating_add(batch.bytes);
            }
            fits
        });
        *batches = kept;
        deferred
    }

    /// What deferring `deferred` means, for the log.
    fn note(&self, group: &TenantGroup<'_>, deferred: &[PlannedBatch]) -> String {
        let bytes: u64 = deferred.iter().map(|b| b.bytes).sum();
        format!(
            "tenant {}: max_bytes_per_cycle ({} bytes) is spent; {} batches ({bytes} bytes) wait for the next cycle",
            group.tenant_name().unwrap_or_default(),
            self.limit.unwrap_or_default(),
            deferred.len()
        )
    }
}

/// Which policy build decides a tier's jobs, for their manifests and
/// history entries.
fn policy_ref(tier: &PlannedTier) -> PolicyRef {
    match &tier.policy {
        Ok(policy) => PolicyRef {
            name: policy.name().to_owned(),
            wit_version: policy.wit_version().unwrap_or_default(),
            content_hash: policy.content_hash().to_owned(),
        },
        Err(_) => PolicyRef::default(),
    }
}

/// Keeps a batch in [`Manager::active_jobs`] while it runs.
struct ActiveGuard<'a> {
    active: &'a Mutex<BTreeMap<u64, ActiveJob>>,
    id: u64,
}

impl<'a> ActiveGuard<'a> {
    fn register(active: &'a Mutex<BTreeMap<u64, ActiveJob>>, id: u64, job: ActiveJob) -> Self {
        lock(active).insert(id, job);
        Self { active, id }
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        lock(self.active).remove(&self.id);
    }
}

/// What a job needs of its partition's lease.
struct LeasedJob<'a> {
    lease: &'a Lease,
    deadline_file: &'a Path,
    engine_dir: &'a Path,
}

/// The right to run one cycle (see [`Manager::begin_cycle`]).
pub struct CycleTicket {
    /// The cycle's id.
    pub cycle_id: u64,
    _running: RunningFlag,
}

/// Clears the manager's "cycle running" flag when dropped.
struct RunningFlag(Arc<AtomicBool>);

impl Drop for RunningFlag {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// The cycle's standby job process: started with the cycle, and stopped with
/// it if no job took it.
struct Standby<'m>(&'m Mutex<Option<StartedChild>>);

impl<'m> Standby<'m> {
    fn start(slot: &'m Mutex<Option<StartedChild>>, command: &ChildCommand) -> Self {
        // Without one, the first job starts its own process, as the others do.
        *lock(slot) = command.start().ok();
        Self(slot)
    }
}

impl Drop for Standby<'_> {
    fn drop(&mut self) {
        // Closing its stdin ends it; `kill_on_drop` makes sure.
        lock(self.0).take();
    }
}

fn remove_partition_temp_dirs(temp_directory: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(temp_directory) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use compactor_runtime::ArtifactCache;

    fn manager(tiers: Vec<PlannedTier>) -> Manager {
        let config = Config::parse("[storage]\nurl = \"memory://\"\n").unwrap();
        let child = ChildCommand { program: "/nonexistent".into(), env: Vec::new(), timeout: None };
        let plugins = PluginRuntime::new(ArtifactCache::disabled()).unwrap();
        Manager::new(config, Storage::in_memory(), tiers, plugins, child)
    }

    #[tokio::test]
    async fn cycle_ids_start_at_one_and_are_used_even_by_empty_cycles() {
        let manager = manager(Vec::new());
        assert_eq!((manager.current_cycle_id(), manager.is_cycle_running()), (0, false));
        for expected in 1..=3 {
            assert_eq!(manager.run_cycle(CycleOptions::default()).await.unwrap().cycle_id, expected);
        }
        let unknown = CycleOptions { tiers: vec!["weekly".into()], database: Some("db1".into()), ..Default::default() };
        assert_eq!(manager.run_cycle(unknown).await.unwrap().cycle_id, 4, "unknown tier names are ignored");
        assert!(manager.recent_jobs().is_empty());
        assert_eq!(manager.stats().total_jobs_completed, 0);
    }

    #[tokio::test]
    async fn a_second_cycle_is_refused_while_one_runs() {
        let manager = manager(Vec::new());
        manager.running.store(true, Ordering::SeqCst);
        assert!(matches!(manager.run_cycle(CycleOptions::default()).await, Err(CycleError::AlreadyRunning)));
        assert_eq!(manager.current_cycle_id(), 0, "a refused cycle gets no id");
    }

    #[tokio::test]
    async fn an_in_memory_store_cannot_be_compacted_by_a_job_process() {
        let plugin = PluginRuntime::new(ArtifactCache::disabled())
            .unwrap()
            .with_builtins(compactor_builtin::BUILTINS)
            .load_tier(&compactor_runtime::PluginSource::Builtin("hourly".into()))
            .unwrap();
        let tier = PlannedTier {
            name: "hourly".into(),
            tenant: None,
            enabled: true,
            policy: Ok(std::sync::Arc::new(plugin)),
            config_json: "{}".into(),
            limits: compactor_runtime::PluginLimits::default(),
        };
        let error = manager(vec![tier]).run_cycle(CycleOptions::default()).await.unwrap_err();
        assert!(error.to_string().contains("cannot be compacted by a job process"), "{error}");
    }
}
