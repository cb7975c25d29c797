//! Compaction cycles: recovery first, then each tier in configured order —
//! plan, then execute its batches (up to `max_concurrent` partitions at once,
//! the batches of one partition in sequence), each in a child process with
//! Arc's halving retry. Tiers run one after the other so that daily sees
//! hourly's outputs. One cycle at a time: a second one is refused.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::health::{SUSPEND_AFTER_FAILING_CYCLES, TierHealth};
use crate::history::History;
use crate::planner::{self, PlanError};
use crate::report::{
    ActiveJob, ConfigReload, CycleError, CycleOptions, CycleReport, GateDecision, InstalledBuild, JobRecord, ManagerStats, Progress,
    ReloadOutcome,
};
use crate::runner::{JobRunner, TierRun};
use crate::temp::sweep_dead_engines;
use compactor_job::ChildCommand;
use compactor_job::PolicyRef;
use compactor_job::{ManifestStore, RecoveryObservers, RecoveryReport};
use compactor_planning::{Plan, PlanOptions, PlanProblem, PlannedBatch, PlannedTier};
use compactor_runtime::{NodeInfo, PluginRuntime, PluginSource};
use compactor_storage::RequestCost;
use compactor_storage::lease::{Leases, new_engine_id};
use compactor_storage::{SetAside, Storage, StoreDescriptor};

/// Records kept in the manager's memory (the persistent history keeps
/// `[history] max_records`).
const HISTORY_LIMIT: usize = 100;

/// How far ahead a forced cycle's policies see the clock: every age rule is
/// met (Arc #186: backfilled data older than the schedule's window).
const FORCE_HORIZON_DAYS: i64 = 3650;

/// Where progress events go.
type ProgressSink = Arc<dyn Fn(Progress) + Send + Sync>;

/// Runs compaction cycles over one store.
pub struct Manager {
    /// Swapped whole by a reload ([`Manager::reload_config`]); each use
    /// takes the one in effect.
    config: RwLock<Arc<Config>>,
    storage: Storage,
    requests: Arc<compactor_storage::RequestCounts>,
    tiers: RwLock<Arc<Vec<PlannedTier>>>,
    plugins: PluginRuntime,
    /// Runs the batches: job slots, the standby process, leases, the
    /// engine's temp directory, the jobs in flight.
    runner: JobRunner,
    stop: Arc<AtomicBool>,
    /// The tenants whose cycle is running (`None`: the top-level tiers'):
    /// each tenant's tiers run in cycles of their own, so that one tenant's
    /// slow cycle never holds another's.
    running: Arc<Mutex<BTreeSet<Option<String>>>>,
    cycle_id: AtomicU64,
    stats: Mutex<ManagerStats>,
    history: Mutex<VecDeque<JobRecord>>,
    persistent_history: History,
    observers: Mutex<Vec<ProgressSink>>,
    health: Mutex<BTreeMap<String, TierHealth>>,
    /// Call counters of the tiers' replaced plugins, which instances of a
    /// cycle in flight may still be using.
    retired_calls: Mutex<BTreeMap<String, Vec<Arc<compactor_runtime::CallStats>>>>,
    /// Why the last reload of each tier failed, by tier key (cleared by
    /// one that succeeds).
    reload_errors: Mutex<BTreeMap<String, String>>,
    /// Held by the reload that runs: reloads read the files when they run,
    /// one at a time, so the last one installs what is on disk.
    reloading: Mutex<()>,
    /// Where each tier's planning was last cut short by its tenant's
    /// planning time, by tier key: its next cycle goes on from there.
    planning_cursors: Mutex<BTreeMap<String, String>>,
    /// Counts the config reloads applied ([`Manager::config_changes`]).
    config_generation: tokio::sync::watch::Sender<u64>,
    /// This node's membership, once it joined ([`Manager::join_cluster`]).
    cluster: std::sync::OnceLock<Arc<compactor_cluster::Cluster>>,
    /// The completion watcher feeding the cluster file manifest, once joined.
    watcher: std::sync::OnceLock<compactor_job::completion::Watcher>,
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
        let tiers = crate::planner::load_tiers(&config, &plugins);
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
        child.timeout = config.settings().job_timeout;
        let (storage, requests) = storage.counted();
        let temp_directory = config.resolve_path(&config.compaction.temp_directory);
        let leases = Leases::new(storage.clone(), new_engine_id(), config.settings().lease);
        let persistent_history = History::new(storage.clone(), leases.engine(), config.history.max_records);
        let stop: Arc<AtomicBool> = Arc::default();
        let runner = JobRunner::new(&config, storage.clone(), child, leases, temp_directory, stop.clone());
        Self {
            config: RwLock::new(Arc::new(config)),
            storage,
            requests,
            tiers: RwLock::new(Arc::new(tiers)),
            plugins,
            runner,
            stop,
            running: Arc::default(),
            cycle_id: AtomicU64::new(0),
            stats: Mutex::default(),
            history: Mutex::default(),
            persistent_history,
            observers: Mutex::default(),
            health: Mutex::default(),
            retired_calls: Mutex::default(),
            cluster: std::sync::OnceLock::new(),
            watcher: std::sync::OnceLock::new(),
            reload_errors: Mutex::default(),
            reloading: Mutex::default(),
            planning_cursors: Mutex::default(),
            config_generation: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Asks a running cycle to stop soon: no further partition is planned
    /// and no further batch is started; a job already running finishes.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Whether [`Manager::request_stop`] was called: nothing new begins.
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
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

    /// Loads the components of every tier again (of `tenant`'s tiers only,
    /// when given), checks each and configures one instance, and swaps in
    /// those that pass for the next cycle; a cycle in flight keeps the ones
    /// it started with. A tier whose new build fails keeps its last good
    /// one and is reported; the other tiers are swapped all the same.
    /// Reloads run one at a time and read the files when they run, so the
    /// last one installs what is on disk then. A tier's suspension is lifted
    /// only when its own build changed.
    pub fn reload_plugins(&self, tenant: Option<&str>) -> ReloadOutcome {
        let _one_at_a_time = lock(&self.reloading);
        let current = self.tiers();
        let config = self.config();
        let mut next = Vec::with_capacity(current.len());
        let mut outcome = ReloadOutcome::default();
        for old in current.iter() {
            let registered = config.tier(&old.id());
            let Some(registered) = registered.filter(|r| tenant.is_none_or(|t| r.id.tenant.as_deref() == Some(t))) else {
                next.push(old.clone());
                continue;
            };
            let new = crate::planner::load_tier(&config, registered, &self.plugins);
            let key = new.key();
            let checked = match &new.policy {
                Ok(policy) if new.enabled => policy.instantiate(&new.config_json, new.limits).map(drop).map_err(|e| e.to_string()),
                Ok(_) => Ok(()),
                Err(e) => Err(e.clone()),
            };
            if let Err(error) = checked {
                lock(&self.reload_errors).insert(key.clone(), error.clone());
                outcome.failed.push((key, error));
                next.push(old.clone());
                continue;
            }
            lock(&self.reload_errors).remove(&key);
            let hash = |t: &PlannedTier| t.policy.as_ref().ok().map(|p| p.content_hash().to_owned());
            if hash(old) != hash(&new) {
                // A new build gets a clean slate: a suspension was about the old one.
                lock(&self.health).remove(&key);
            }
            if let Some(stats) = old.policy.as_ref().ok().and_then(|p| p.call_stats()) {
                lock(&self.retired_calls).entry(key.clone()).or_default().push(stats);
            }
            let (name, content_hash) = new.policy.as_ref().map(|p| (p.name().to_owned(), p.content_hash().to_owned())).unwrap_or_default();
            outcome.installed.push(InstalledBuild { tier: key, name, content_hash });
            next.push(new);
        }
        *self.tiers.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        for (tier, error) in &outcome.failed {
            tracing::error!(%tier, %error, "the new build of this tier's component failed to load; its last good build stays");
        }
        let installed: Vec<String> = outcome.installed.iter().map(|b| format!("{}: {}", b.tier, b.name)).collect();
        tracing::info!(tiers = ?installed, "plugins reloaded; the next cycle uses them");
        outcome
    }

    /// Object-store requests this engine made itself (listing, recovery,
    /// leases, history), since it started; its jobs' are in their records.
    pub fn engine_requests(&self) -> RequestCost {
        self.requests.snapshot()
    }

    /// Why the last reload failed, if it did for some tier (their running
    /// builds were kept).
    pub fn reload_error(&self) -> Option<String> {
        let errors = lock(&self.reload_errors);
        (!errors.is_empty()).then(|| errors.iter().map(|(tier, e)| format!("tier {tier}: {e}")).collect::<Vec<_>>().join("; "))
    }

    /// Why the last reload of tier `key` failed, if it did.
    pub fn tier_reload_error(&self, key: &str) -> Option<String> {
        lock(&self.reload_errors).get(key).cloned()
    }

    /// The tiers whose policies may be called now, and the suspended ones
    /// with their health.
    pub(crate) fn callable_tiers(&self) -> (Vec<PlannedTier>, BTreeMap<String, TierHealth>) {
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

    /// Reads the config file again and validates it whole, then applies it
    /// from the next cycle: tiers, tenants, their configs, limits and
    /// schedules, the compaction settings. An invalid file changes nothing
    /// (the error says why). Sections a running engine cannot change keep
    /// their values and are named ([`ConfigReload::restart_needed`]). A tier
    /// whose component no longer loads keeps its running build.
    pub fn reload_config(&self) -> Result<ConfigReload, crate::config::ConfigError> {
        let _one_at_a_time = lock(&self.reloading);
        let current = self.config();
        let (new, restart_needed) = current.reloaded()?;
        for warning in new.warnings() {
            tracing::warn!("{warning}");
        }
        let running = self.tiers();
        let mut tiers = crate::planner::load_tiers(&new, &self.plugins);
        for tier in &mut tiers {
            let Err(error) = &tier.policy else { continue };
            if let Some(good) = running.iter().find(|old| old.id() == tier.id() && old.policy.is_ok()) {
                tracing::error!(tier = %tier.key(), "{error}; the tier keeps its running build");
                lock(&self.reload_errors).insert(tier.key(), error.clone());
                tier.policy = good.policy.clone();
            }
        }
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        *self.tiers.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(tiers);
        self.config_generation.send_modify(|generation| *generation += 1);
        if !restart_needed.is_empty() {
            tracing::warn!(sections = %restart_needed.join(", "), "the config reload changed sections that apply only after a restart; they keep their running values");
        }
        Ok(ConfigReload { restart_needed })
    }

    /// Notified after each config reload applied (its count).
    pub fn config_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.config_generation.subscribe()
    }

    /// A reload off the async runtime's threads (loading compiles and
    /// blocks), logged either way; `why` says what asked. Without `tenant`,
    /// the config file is read again first ([`Manager::reload_config`]; an
    /// invalid one stops the reload there); then the tiers' components
    /// ([`Manager::reload_plugins`]).
    pub async fn reload_plugins_in_background(self: &Arc<Self>, why: &str, tenant: Option<String>) -> ReloadOutcome {
        let manager = self.clone();
        let has_file = self.config().path().is_some();
        let config = if tenant.is_none() && has_file {
            let reloading = self.clone();
            let reloaded = tokio::task::spawn_blocking(move || reloading.reload_config()).await;
            match reloaded {
                Ok(Ok(reload)) => Some(Ok(reload)),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "{why}: the config file is invalid; the running config is kept");
                    return ReloadOutcome { config: Some(Err(e.to_string())), ..Default::default() };
                }
                Err(e) => Some(Err(format!("the config reload failed (a bug in compactor): {e}"))),
            }
        } else {
            None
        };
        let outcome = tokio::task::spawn_blocking(move || manager.reload_plugins(tenant.as_deref())).await;
        let outcome = outcome.map(|outcome| ReloadOutcome { config, ..outcome });
        match outcome {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::error!(error = %e, "{why}: the reload failed (a bug in compactor); the running plugins are kept");
                ReloadOutcome {
                    installed: Vec::new(),
                    failed: vec![("*".into(), format!("the reload failed (a bug in compactor): {e}"))],
                    config: None,
                }
            }
        }
    }

    /// The batches being compacted now.
    pub fn active_jobs(&self) -> Vec<ActiveJob> {
        self.runner.active_jobs()
    }

    /// The lake's persistent job history.
    pub fn history(&self) -> &History {
        &self.persistent_history
    }

    /// Whether a cycle is running (of any tenant).
    pub fn is_cycle_running(&self) -> bool {
        !lock(&self.running).is_empty()
    }

    /// The tenants whose cycle is running (`None`: the top-level tiers').
    pub fn running_tenants(&self) -> Vec<Option<String>> {
        lock(&self.running).iter().cloned().collect()
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

    /// The configuration in effect (a reload swaps it between cycles).
    pub fn config(&self) -> Arc<Config> {
        self.config.read().unwrap_or_else(|e| e.into_inner()).clone()
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
        crate::outlook::partition_outlook(&self.storage, &self.config(), tiers, database, measurement, from, to, now).await
    }

    /// The plan of one cycle over every selected tier at once, changing
    /// nothing (`compactor plan`); a cycle plans each tier just before
    /// running it instead, so that daily sees hourly's outputs. Each
    /// tenant's tiers plan over its databases, within its byte budget.
    pub async fn plan(&self, options: &CycleOptions) -> Result<Plan, PlanError> {
        // A suspended tier is not called, here either (the API plans too).
        let (tiers, suspended) = self.callable_tiers();
        let selected: Vec<&PlannedTier> = tiers.iter().filter(|t| options.selects(t)).collect();
        let mut plan = Plan::default();
        let groups = self.tenant_groups(&selected, options, &mut plan.planning_requests, &mut plan.set_aside).await?;
        // Tenants plan side by side, each within its own deadline: a slow
        // tenant's planning holds back no other's.
        let plans = futures::future::join_all(groups.iter().map(|group| async move {
            let group_tiers: Vec<PlannedTier> = group.tiers.iter().map(|t| (*t).clone()).collect();
            let mut tenant_plan = planner::plan(&self.storage, &group_tiers, &self.plan_options(options, group)).await?;
            group.budget().defer_over_budget(group, &mut tenant_plan);
            Ok::<Plan, PlanError>(tenant_plan)
        }))
        .await;
        let mut plan = plans.into_iter().try_fold(plan, |mut plan, tenant_plan| {
            plan.merge(tenant_plan?);
            Ok::<Plan, PlanError>(plan)
        })?;
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
        set_aside: &mut Vec<SetAside>,
    ) -> Result<Vec<TenantGroup<'a>>, PlanError> {
        if self.config().tenants.is_empty() {
            let tiers = selected.to_vec();
            return Ok(if tiers.is_empty() { Vec::new() } else { vec![TenantGroup { tenant: None, tiers, databases: None }] });
        }
        let databases = match &options.database {
            Some(database) => vec![database.clone()],
            None => {
                requests.list += 1;
                let level = compactor_storage::discover_databases(&self.storage).await.map_err(PlanError::Discovery)?;
                set_aside.extend(level.set_aside);
                level.dirs
            }
        };
        let config = self.config();
        let tenants = std::iter::once(None).chain(config.tenants.iter().map(Some));
        Ok(tenants
            .filter_map(|tenant| {
                let name = tenant.map(|t| t.name.as_str());
                let tiers: Vec<&PlannedTier> = selected.iter().copied().filter(|t| t.tenant.as_deref() == name).collect();
                let owned: Vec<String> =
                    databases.iter().filter(|db| config.tenant_of(db).map(|t| t.name.as_str()) == name).cloned().collect();
                (!tiers.is_empty() && !owned.is_empty()).then_some(TenantGroup { tenant: tenant.cloned(), tiers, databases: Some(owned) })
            })
            .collect())
    }

    /// What the planner needs for `group`'s tiers (already selected).
    fn plan_options(&self, options: &CycleOptions, group: &TenantGroup<'_>) -> PlanOptions {
        self.plan_options_until(options, group, options.planning_deadline.map(|d| std::time::Instant::now() + d))
    }

    /// [`Manager::plan_options`] with planning stopped at `deadline`.
    fn plan_options_until(&self, options: &CycleOptions, group: &TenantGroup<'_>, deadline: Option<std::time::Instant>) -> PlanOptions {
        let now = options.now.unwrap_or_else(Utc::now);
        PlanOptions {
            now: if options.force { now + chrono::Duration::days(FORCE_HORIZON_DAYS) } else { now },
            database: options.database.clone(),
            databases: group.databases.clone(),
            max_files_per_batch: self.config().compaction.max_files_per_batch,
            multipart_threshold: self.config().settings().multipart_threshold,
            explain: options.explain,
            stop: self.stop.clone(),
            deadline,
            cancel: options.cancel.clone(),
            resume_after: None,
            fuel_left: self.config().settings().fuel_per_cycle.get(&group.tenant_name().map(str::to_owned)).copied().flatten(),
            share: self.cluster.get().and_then(|cluster| cluster.share()).map(|share| {
                compactor_planning::MeasurementShare(Arc::new(move |database: &str, measurement: &str| share.owns(database, measurement)))
            }),
        }
    }

    /// Asks the cluster gate whether this node may compact. Standalone nodes
    /// always may; in cluster mode the gate component decides, with the
    /// configured sandbox limits and `node-info` filled from etcd (whether
    /// this node holds the compactor lease, whether any does); a gate that
    /// fails, or a node cut off from etcd, means no. Every command that
    /// compacts asks, once per cycle, and tells the cluster the answer.
    pub fn gate_decision(&self) -> GateDecision {
        let config = self.config();
        let cluster = &config.cluster;
        if !cluster.enabled {
            return GateDecision::Standalone;
        }
        let source = PluginSource::parse(&cluster.gate, &config.base_dir);
        let plugin = source.to_string();
        let mut node = NodeInfo {
            id: cluster.node_id(),
            role: cluster.role.clone(),
            labels: cluster.labels.clone().into_iter().collect(),
            ..Default::default()
        };
        if let Some(member) = self.cluster.get() {
            match member.lease_facts() {
                Ok(facts) => {
                    node.holds_compactor_lease = facts.holds_compactor_lease;
                    node.lease_assigned = facts.lease_assigned;
                }
                Err(e) => return GateDecision::CutOff { error: e.to_string() },
            }
        }
        let answer = (|| -> anyhow::Result<bool> {
            let gate = self.plugins.load_gate(&source)?;
            let gate_config = serde_json::to_string(&cluster.gate_config)?;
            let mut gate = gate.instantiate(&gate_config, config.settings().plugin_limits)?;
            Ok(gate.can_compact(&node)?)
        })();
        let decision = match answer {
            Ok(true) => GateDecision::Allowed { plugin },
            Ok(false) => GateDecision::Denied { plugin, role: cluster.role.clone() },
            Err(error) => GateDecision::Failed { plugin, error: format!("{error:#}") },
        };
        if let Some(member) = self.cluster.get() {
            let member = member.clone();
            let (healthy, compacts) = (!matches!(decision, GateDecision::Failed { .. }), decision.allows());
            if member.note(healthy, compacts)
                && let Ok(runtime) = tokio::runtime::Handle::try_current()
            {
                runtime.spawn(async move {
                    if let Err(e) = member.publish().await {
                        tracing::warn!(error = %e, "cluster: cannot publish this node's state");
                    }
                });
            }
        }
        decision
    }

    /// Joins the cluster (cluster mode only; a no-op otherwise): the key
    /// prefix defaults to `/compactor/{lake id}`, the lake id read from (or
    /// created once in) `_compaction_state/lake-id`. Fails when etcd cannot
    /// be reached: a node never falls back to standalone.
    pub async fn join_cluster(&self) -> anyhow::Result<Option<Arc<compactor_cluster::Cluster>>> {
        let config = self.config();
        let Some(resolved) = &config.settings().cluster else { return Ok(None) };
        if let Some(joined) = self.cluster.get() {
            return Ok(Some(joined.clone()));
        }
        let joined = compactor_cluster::Cluster::join(self.cluster_settings(&resolved.join).await?).await?;
        tracing::info!(node = %joined.settings().node_id, prefix = %joined.settings().key_prefix, "joined the cluster");
        let joined = self.cluster.get_or_init(|| joined).clone();
        // Jobs leave completion manifests; the watcher applies each to the
        // cluster file manifest in one etcd transaction, and keeps it for a
        // retry while etcd cannot take it.
        let bridge = crate::cluster::EtcdBridge { cluster: joined.clone(), runtime: tokio::runtime::Handle::current() };
        let dir = crate::cluster::completion_dir(self.runner.temp_directory());
        let watcher = compactor_job::completion::Watcher::new(dir, Arc::new(bridge), std::time::Duration::from_secs(1))?;
        self.watcher.get_or_init(|| watcher).start();
        Ok(Some(joined))
    }

    /// Leaves the cluster (a no-op standalone): the completion watcher
    /// applies what the jobs left, then the node hands back a compactor
    /// lease it holds and ends its session.
    pub async fn leave_cluster(&self) {
        if let Some(watcher) = self.watcher.get() {
            watcher.stop().await;
        }
        if let Some(cluster) = self.cluster.get() {
            cluster.leave().await;
        }
    }

    /// [`Manager::reconcile_registry`] in cluster mode, logged.
    async fn reconcile_logged(&self, cycle_id: u64) {
        if self.cluster.get().is_none() {
            return;
        }
        match self.reconcile_registry().await {
            Ok((0, 0)) => {}
            Ok((added, removed)) => tracing::info!(cycle_id, added, removed, "cluster file manifest reconciled with the store"),
            Err(e) => tracing::warn!(cycle_id, error = %e, "cannot reconcile the cluster file manifest; the next cycle tries again"),
        }
    }

    /// Makes the cluster file manifest hold this node's share of the lake's
    /// live files (the visibility rule over the store): files others wrote
    /// are registered, entries whose object is gone are removed. Arc's
    /// ingest registers its own files; here a cycle does it.
    pub async fn reconcile_registry(&self) -> anyhow::Result<(usize, usize)> {
        let Some(cluster) = self.cluster.get() else { return Ok((0, 0)) };
        self.drop_stale_completions().await;
        let share = cluster.share();
        let (mut added, mut removed) = (0, 0);
        for database in compactor_storage::discover_databases(&self.storage).await?.dirs {
            for measurement in compactor_storage::discover_measurements(&self.storage, &database).await?.dirs {
                if share.as_ref().is_some_and(|share| !share.owns(&database, &measurement)) {
                    continue;
                }
                let prefix = format!("{database}/{measurement}/");
                // Read before the store is listed: an entry the watcher
                // writes after this is never removed by what the listing
                // misses.
                let (registered, since) = cluster.registered_files(&prefix).await?;
                // A job missed whole by this listing (it began and ended
                // during it) registers its output through the watcher, and
                // its inputs are gone anyway: no need to compare claims.
                let (listed, visibility) = self.listed_files(&prefix, &prefix, false).await?;
                // Entries go only with their objects: an output the watcher
                // registered before its job committed is hidden from
                // readers, not gone.
                let present: std::collections::HashSet<&str> = listed.iter().map(|f| f.key.as_str()).collect();
                let origin = cluster.settings().node_id.clone();
                let entries: Vec<compactor_cluster::FileEntry> = listed
                    .iter()
                    .filter(|file| !visibility.hidden.contains(&file.key))
                    .map(|file| compactor_cluster::FileEntry {
                        partition_time: file
                            .key
                            .strip_prefix(&prefix)
                            .and_then(compactor_model::partition_start)
                            .unwrap_or(file.last_modified),
                        path: file.key.clone(),
                        sha256: String::new(),
                        size_bytes: file.size,
                        database: database.clone(),
                        measurement: measurement.clone(),
                        origin_node_id: origin.clone(),
                        tier: String::new(),
                        created_at: file.last_modified,
                        lsn: 0,
                    })
                    .collect();
                let (a, r) = cluster.reconcile_files(&registered, since, &entries, &present).await?;
                added += a;
                removed += r;
            }
        }
        Ok((added, removed))
    }

    /// Removes this node's completion manifests of jobs that ended without
    /// finishing them (killed after their upload): left, the watcher would
    /// register their output again at every start, after the output was
    /// merged away. A job whose partition is in flight here, or whose
    /// recovery manifest is still in the store, keeps its manifest; the
    /// reconciliation that follows puts the registry right.
    async fn drop_stale_completions(&self) {
        let dir = crate::cluster::completion_dir(self.runner.temp_directory());
        let Ok(paths) = compactor_job::completion::list_pending(&dir) else { return };
        let in_flight: std::collections::HashSet<String> = self.active_jobs().into_iter().map(|j| j.batch.partition_path).collect();
        let candidates: Vec<_> = paths
            .into_iter()
            .filter_map(|path| compactor_job::completion::read(&path).ok().map(|manifest| (path, manifest)))
            .filter(|(_, m)| m.state == compactor_job::completion::CompletionState::OutputWritten && !in_flight.contains(&m.partition_path))
            .collect();
        if candidates.is_empty() {
            return;
        }
        // One listing for them all; a listing that fails keeps every one.
        let Ok(recovery_manifests) = ManifestStore::new(self.storage.clone()).manifest_keys().await else { return };
        for (path, manifest) in candidates {
            let recovery_key =
                compactor_job::RecoveryManifest::key_for(&manifest.tier, &manifest.database, &manifest.partition_path, &manifest.job_id);
            if recovery_manifests.contains(&recovery_key) {
                continue;
            }
            match compactor_job::completion::delete(&path) {
                Ok(()) => {
                    tracing::warn!(job_id = %manifest.job_id, "removed the completion manifest of a job that ended without finishing it; the registry is reconciled with the store")
                }
                Err(e) => tracing::warn!(job_id = %manifest.job_id, error = %e, "cannot remove a stale completion manifest"),
            }
        }
    }

    /// The cluster's state, read without joining (`compactor cluster
    /// status`); `None` outside cluster mode.
    pub async fn observe_cluster(&self) -> anyhow::Result<Option<compactor_cluster::ClusterStatus>> {
        let config = self.config();
        let Some(resolved) = &config.settings().cluster else { return Ok(None) };
        Ok(Some(compactor_cluster::Cluster::observe(self.cluster_settings(&resolved.join).await?).await?))
    }

    /// `settings` with the key prefix's lake id and this engine's id.
    async fn cluster_settings(&self, settings: &compactor_cluster::Settings) -> anyhow::Result<compactor_cluster::Settings> {
        let mut settings = settings.clone();
        if settings.key_prefix.is_empty() {
            settings.key_prefix = format!("/compactor/{}", crate::cluster::lake_id(&self.storage).await?);
        }
        settings.engine_id = self.engine_id().to_owned();
        Ok(settings)
    }

    /// This node's membership, once joined.
    pub fn cluster(&self) -> Option<&Arc<compactor_cluster::Cluster>> {
        self.cluster.get()
    }

    /// The live files of `partition` (`DB/MEASUREMENT/YYYY/MM/DD[/HH]`; a
    /// day includes its hours), by the one visibility rule: an output
    /// counts only once its job committed, and its inputs stop counting at
    /// that same moment, so a reader of these keys never sees a row twice
    /// or misses one (a key deleted since may be gone: ask again).
    pub async fn live_files(&self, partition: &str) -> anyhow::Result<Vec<String>> {
        let partition = partition.trim_matches('/');
        let measurement_prefix = measurement_prefix(partition)
            .ok_or_else(|| anyhow::anyhow!("invalid partition {partition:?}: expected DATABASE/MEASUREMENT/YYYY/MM/DD or …/DD/HH"))?;
        let prefix = format!("{partition}/");
        let files = match &self.config().settings().cluster {
            // In cluster mode the files come from the cluster file
            // manifest, under the same rule.
            Some(resolved) => {
                let reader = compactor_cluster::Cluster::reader(self.cluster_settings(&resolved.join).await?).await?;
                let (entries, visibility) = self
                    .listed_with_visibility(
                        || async {
                            let (entries, _) = reader
                                .registered_files(&prefix)
                                .await
                                .map_err(|e| compactor_job::ManifestError::Registry(e.to_string()))?;
                            Ok(entries.into_iter().map(|e| e.path).collect::<Vec<_>>())
                        },
                        partition,
                        true,
                    )
                    .await?;
                // A committed output counts before the watcher registers it.
                let committed = visibility.committed_outputs.into_iter().filter(|key| key.starts_with(&prefix));
                entries.into_iter().filter(|key| !visibility.hidden.contains(key)).chain(committed).collect()
            }
            None => self.visible_files(&prefix, &measurement_prefix, true).await?.into_iter().map(|f| f.key).collect(),
        };
        let mut live: Vec<String> = files;
        live.sort();
        live.dedup();
        Ok(live)
    }

    /// The eligible files under `prefix` a reader may count now (the
    /// visibility rule over the store's listing); `claims`: `prefix` is one
    /// partition, whose claims are compared too.
    async fn visible_files(&self, prefix: &str, measurement_prefix: &str, claims: bool) -> anyhow::Result<Vec<compactor_model::FileMeta>> {
        let (files, visibility) = self.listed_files(prefix, measurement_prefix, claims).await?;
        Ok(files.into_iter().filter(|file| !visibility.hidden.contains(&file.key)).collect())
    }

    /// Every eligible file under `prefix`, and the visibility rule that
    /// applies to the listing.
    async fn listed_files(
        &self,
        prefix: &str,
        measurement_prefix: &str,
        claims: bool,
    ) -> anyhow::Result<(Vec<compactor_model::FileMeta>, compactor_job::Visibility)> {
        let listing = || async {
            crate::planner::list_eligible(&self.storage, prefix, measurement_prefix)
                .await
                .map(|(files, _)| files)
                .map_err(compactor_job::ManifestError::List)
        };
        self.listed_with_visibility(listing, prefix.trim_end_matches('/'), claims).await
    }

    /// What `listing` returns and the visibility rule that applies to it
    /// ([`ManifestStore::visible`]); an error when a manifest that mentions
    /// `partition` cannot be read.
    async fn listed_with_visibility<T, F, Fut>(
        &self,
        listing: F,
        partition: &str,
        claims: bool,
    ) -> anyhow::Result<(Vec<T>, compactor_job::Visibility)>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Vec<T>, compactor_job::ManifestError>>,
    {
        let (items, visibility) = ManifestStore::new(self.storage.clone()).visible(50, claims.then_some(partition), listing).await?;
        let mut unsure = compactor_model::HeldFiles::default();
        for key in &visibility.unsure {
            unsure.block(key.rsplit('/').next().unwrap_or(key).to_owned());
        }
        if let Some(manifest) = unsure.blocked_by(partition) {
            anyhow::bail!(
                "cannot answer for {partition} exactly: the recovery manifest {manifest} cannot be read (run `compactor recover`)"
            );
        }
        Ok((items, visibility))
    }

    /// This engine's id, as its leases and manifests name it.
    pub fn engine_id(&self) -> &str {
        self.runner.leases().engine()
    }

    /// Finishes or rolls back the interrupted jobs whose owner's lease is
    /// gone, and leaves live ones alone (see [`ManifestStore::recover`]).
    pub async fn recover(&self) -> Result<RecoveryReport, compactor_job::ManifestError> {
        let report = ManifestStore::new(self.storage.clone()).recover(self.runner.leases(), &RecoveryObservers::default()).await?;
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
        let skew = self.runner.leases().settings().max_clock_skew;
        let check = match self.runner.leases().check_store().await {
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
        self.runner.leases().anchor_clock();
        for warning in self.unmatched_tenant_patterns().await {
            tracing::warn!("{warning}");
        }
        Ok(())
    }

    /// When this host's wall clock stepped by more than half
    /// `max_clock_skew` since it was last checked, checks it against the
    /// store's again: leases are judged on it, and a clock stepped ahead
    /// would take live jobs' partitions. A cycle of a host whose clock is
    /// now off does nothing.
    async fn recheck_clock_after_a_step(&self) -> Result<(), CycleError> {
        let Some(step) = self.runner.leases().clock_stepped() else { return Ok(()) };
        tracing::warn!(
            step_ms = step.num_milliseconds(),
            "this host's wall clock stepped since it was checked; checking it against the store again"
        );
        self.check_store().await.map_err(|e| CycleError::Clock(e.to_string()))
    }

    /// A warning for each tenant's database pattern that owns no database
    /// of the lake: it matches none, or only databases an earlier tenant
    /// owns (a database belongs to the first tenant that matches). Likely a
    /// typo, whose databases then run the top-level tiers.
    pub async fn unmatched_tenant_patterns(&self) -> Vec<String> {
        if self.config().tenants.is_empty() {
            return Vec::new();
        }
        let databases = match compactor_storage::discover_databases(&self.storage).await {
            Ok(level) => level.dirs,
            Err(e) => return vec![format!("cannot list the databases to check the tenants' patterns: {e}")],
        };
        let mut warnings = Vec::new();
        for tenant in &self.config().tenants {
            for pattern in &tenant.databases {
                let matcher = wildmatch::WildMatch::new(pattern);
                let matched: Vec<&String> = databases.iter().filter(|db| matcher.matches(db)).collect();
                let owned = matched.iter().any(|db| self.config().tenant_of(db).is_some_and(|owner| owner.name == tenant.name));
                if matched.is_empty() {
                    warnings.push(format!("tenant {}: database pattern {pattern:?} matches no database of the lake", tenant.name));
                } else if !owned {
                    warnings.push(format!(
                        "tenant {}: database pattern {pattern:?} only matches databases an earlier tenant owns ({}); it can never take one",
                        tenant.name,
                        matched.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        }
        warnings
    }

    /// Removes the temp directories of engines that are gone (their leftover
    /// job directories); nothing of a live engine's, nothing unmarked.
    pub fn cleanup_orphaned_temp_dirs(&self) -> std::io::Result<usize> {
        sweep_dead_engines(self.runner.temp_directory())
    }

    /// Runs one cycle.
    pub async fn run_cycle(&self, options: CycleOptions) -> Result<CycleReport, CycleError> {
        let ticket = self.begin_cycle(&options)?;
        self.run_begun_cycle(ticket, options).await
    }

    /// Claims the right to run the next cycle of the tenants `options`
    /// selects, and its id, at once: a caller that answers "started" before
    /// the cycle runs (the API's trigger) can then never race another
    /// cycle of those tenants. Tenants whose own cycle is running are left
    /// out ([`CycleTicket::busy`]); when all are, the cycle is refused.
    /// Dropping the ticket gives it back.
    pub fn begin_cycle(&self, options: &CycleOptions) -> Result<CycleTicket, CycleError> {
        if self.stop_requested() {
            return Err(CycleError::Stopping);
        }
        let mut scopes = self.cycle_scopes(options);
        let mut running = lock(&self.running);
        let busy: Vec<Option<String>> = scopes.iter().filter(|s| running.contains(*s)).cloned().collect();
        scopes.retain(|s| !running.contains(s));
        if scopes.is_empty() {
            return Err(CycleError::AlreadyRunning);
        }
        running.extend(scopes.iter().cloned());
        drop(running);
        let guard = RunningScopes { running: self.running.clone(), scopes: Mutex::new(scopes) };
        Ok(CycleTicket { cycle_id: self.cycle_id.fetch_add(1, Ordering::SeqCst) + 1, busy, _running: guard })
    }

    /// The tenants (`None`: the top-level tiers) a cycle of `options` runs:
    /// those of the selected tiers, narrowed to the owner of `database` when
    /// one is named; the top-level scope when nothing is selected, so that
    /// even an empty cycle is one at a time.
    fn cycle_scopes(&self, options: &CycleOptions) -> BTreeSet<Option<String>> {
        let owner = options.database.as_deref().map(|db| self.config().tenant_of(db).map(|t| t.name.clone()));
        let mut scopes: BTreeSet<Option<String>> = self
            .tiers()
            .iter()
            .filter(|t| options.selects(t))
            .map(|t| t.tenant.clone())
            .filter(|tenant| owner.as_ref().is_none_or(|owner| owner == tenant))
            .collect();
        if scopes.is_empty() {
            scopes.insert(None);
        }
        scopes
    }

    /// Runs the cycle `ticket` claimed.
    pub async fn run_begun_cycle(&self, ticket: CycleTicket, options: CycleOptions) -> Result<CycleReport, CycleError> {
        let cycle_id = ticket.cycle_id;
        let _ticket = ticket;
        let started = Instant::now();
        let requests_before = self.requests.snapshot();
        let mut report = CycleReport { cycle_id, ..Default::default() };
        let tiers = self.tiers();
        let selected: Vec<&PlannedTier> = tiers.iter().filter(|t| options.selects(t) && _ticket._running.contains(&t.tenant)).collect();
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
        self.recheck_clock_after_a_step().await?;
        // Files others wrote since the last cycle join the cluster file
        // manifest before any job takes them (and again after the jobs).
        self.reconcile_logged(cycle_id).await;
        let standby = self.runner.standby();
        // One configuration for the whole cycle: a reload applies from the next.
        let config = self.config();
        match self.recover().await {
            Ok(recovery) => report.recovery = recovery,
            Err(e) => tracing::error!(error = %e, "recovery failed; continuing with the cycle"),
        }
        let mut discovery = RequestCost::default();
        let groups = self.tenant_groups(&selected, &options, &mut discovery, &mut report.set_aside).await?;
        // Tenants run side by side: one tenant's slow policy, failing jobs
        // or spent budget never holds another's partitions.
        // Each tenant's part ends on its own: its next cycle may begin while
        // the others' parts go on.
        let outcomes = futures::future::join_all(groups.iter().map(|group| async {
            let outcome = self.run_tenant(group, &options, cycle_id, &descriptor, &standby, &config).await;
            _ticket._running.release(&group.tenant_name().map(str::to_owned));
            outcome
        }))
        .await;
        for outcome in outcomes {
            let outcome = outcome?;
            report.jobs.extend(outcome.jobs);
            report.recovery.late_outputs_deleted += outcome.recovery.late_outputs_deleted;
            report.fuel_exhausted.extend(outcome.fuel_exhausted);
            report.problems.extend(outcome.problems);
            report.skipped_locked += outcome.skipped_locked;
            report.deferred_by_budget += outcome.deferred_by_budget;
            report.held_back += outcome.held_back;
            report.measurements_elsewhere += outcome.measurements_elsewhere;
            report.set_aside.extend(outcome.set_aside);
        }
        self.reconcile_logged(cycle_id).await;
        report.set_aside.sort();
        report.set_aside.dedup();
        for object in &report.set_aside {
            let (key, reason) = (compactor_runtime::sanitize(&object.key, 2048), compactor_runtime::sanitize(&object.reason, 2048));
            tracing::warn!(cycle_id, %key, %reason, "object left in place: compaction cannot take it");
        }
        report.duration_ms = started.elapsed().as_millis() as u64;
        let own = self.requests.snapshot().since(requests_before);
        report.requests = report.jobs.iter().fold(own, |total, j| total + j.requests);
        tracing::info!(
            cycle_id,
            jobs = report.jobs.len(),
            failed = report.failed().count(),
            skipped_locked = report.skipped_locked,
            held_back = report.held_back,
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
        descriptor: &StoreDescriptor,
        standby: &crate::runner::Standby<'_>,
        config: &Config,
    ) -> Result<CycleReport, PlanError> {
        let mut outcome = CycleReport::default();
        let mut budget = group.budget();
        // The tenant's planning time for this cycle, over all its tiers.
        let scope = group.tenant_name().map(str::to_owned);
        let planning_time = config.settings().max_planning_time.get(&scope).copied().flatten();
        let mut planning_deadline = planning_time.map(|t| std::time::Instant::now() + t);
        // The tenant's policy fuel spent this cycle, over its tiers.
        let mut fuel_spent = 0u64;
        for tier in &group.tiers {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            if options.deadline.is_some_and(|deadline| std::time::Instant::now() >= deadline) {
                let message = "the cycle's deadline ([api] trigger_timeout) passed: this tier's batches wait for the next cycle".to_owned();
                tracing::warn!(tier = %tier.key(), "{message}");
                outcome.problems.push(PlanProblem { tier: tier.key(), partition: None, message });
                continue;
            }
            let key = tier.key();
            if let Some(health) = lock(&self.health).get(&key).filter(|h| h.is_suspended(Utc::now())) {
                outcome.problems.push(PlanProblem { tier: key, partition: None, message: health.suspension_note() });
                continue;
            }
            // Each tenant plans one tier at a time, in its own cycle, and no
            // tenant waits for a slot another holds: planning memory is at most
            // one instance per tenant, each within its tier's memory limit.
            let mut plan_options = self.plan_options_until(options, group, planning_deadline);
            plan_options.resume_after = lock(&self.planning_cursors).get(&key).cloned();
            plan_options.fuel_left = plan_options.fuel_left.map(|budget| budget.saturating_sub(fuel_spent));
            let mut plan = planner::plan(&self.storage, std::slice::from_ref(*tier), &plan_options).await?;
            fuel_spent = fuel_spent.saturating_add(plan.tiers.iter().map(|t| t.fuel_used).sum());
            if plan.tiers.iter().any(|t| t.fuel_spent) {
                outcome.fuel_exhausted.push(tier.id());
            }
            match plan.tiers.first().and_then(|t| t.resume_after.clone()) {
                Some(cursor) => lock(&self.planning_cursors).insert(key.clone(), cursor),
                None => lock(&self.planning_cursors).remove(&key),
            };
            // Running jobs does not spend the planning time: the next tier's
            // deadline moves by the time this tier's jobs take (below).
            let planned = std::time::Instant::now();
            let failed_calls = plan.tiers.first().is_some_and(|t| t.plugin_failures > 0);
            let failure = failed_calls.then(|| plan.problems.first().map(|p| p.message.clone()).unwrap_or_default());
            let suspended = lock(&self.health).entry(key.clone()).or_default().record(failure, Utc::now());
            if suspended {
                tracing::error!(tier = %key, "the tier's policy failed in {SUSPEND_AFTER_FAILING_CYCLES} cycles in a row; it is suspended (see /api/v1/plugins)");
            }
            outcome.problems.append(&mut plan.problems);
            outcome.set_aside.append(&mut plan.set_aside);
            if !plan.late_outputs.is_empty() {
                let deleted = ManifestStore::new(self.storage.clone()).delete_late_outputs(&plan.late_outputs).await;
                outcome.recovery.late_outputs_deleted += deleted;
            }
            budget.defer_over_budget(group, &mut plan);
            outcome.deferred_by_budget += plan.deferred_by_budget;
            // Every tier counts the same measurements of other nodes.
            outcome.measurements_elsewhere = outcome.measurements_elsewhere.max(plan.measurements_elsewhere);
            if !plan.batches.is_empty() {
                standby.warm();
            }
            self.emit(Progress::TierStarted { tier: key, batches: plan.batches.len() });
            let suffix = plan.tiers.first().map(|t| t.output_suffix.clone()).filter(|s| !s.is_empty());
            let run = TierRun {
                config,
                cycle_id,
                descriptor,
                suffix: suffix.as_deref(),
                policy: policy_ref(tier),
                max_concurrent: group.max_concurrent(config),
                deadline: options.deadline,
                cluster: self.cluster.get().map(|c| c.as_ref()),
            };
            let on_record = |record: JobRecord| -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
                Box::pin(async move {
                    self.account(&record).await;
                    self.emit(Progress::BatchDone { record: Box::new(record) });
                })
            };
            let executed = self.runner.execute(plan.batches, &run, &on_record).await;
            planning_deadline = planning_deadline.map(|deadline| deadline + planned.elapsed());
            outcome.jobs.extend(executed.records);
            outcome.skipped_locked += executed.skipped_locked;
            outcome.held_back += executed.held_back;
        }
        Ok(outcome)
    }

    async fn account(&self, record: &JobRecord) {
        {
            let mut stats = lock(&self.stats);
            if record.skipped.is_some() {
                stats.total_jobs_skipped += 1;
            } else if record.success {
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// One tenant's selected tiers and the databases it owns.
struct TenantGroup<'a> {
    /// None: the databases no tenant claims, with the top-level tiers.
    tenant: Option<crate::config::TenantConfig>,
    tiers: Vec<&'a PlannedTier>,
    /// None: every database (no `[[tenants]]`; the planner discovers).
    databases: Option<Vec<String>>,
}

impl TenantGroup<'_> {
    fn tenant_name(&self) -> Option<&str> {
        self.tenant.as_ref().map(|t| t.name.as_str())
    }

    fn max_concurrent(&self, config: &Config) -> usize {
        let global = config.settings().max_concurrent;
        self.tenant.as_ref().and_then(|t| t.max_concurrent).map_or(global, |n| (n.max(1) as usize).min(global))
    }

    fn budget(&self) -> ByteBudget {
        ByteBudget { limit: self.tenant.as_ref().and_then(|t| t.max_bytes_per_cycle()), spent: 0 }
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
    fn defer_over_budget(&mut self, group: &TenantGroup<'_>, plan: &mut Plan) {
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

/// The right to run one cycle (see [`Manager::begin_cycle`]).
pub struct CycleTicket {
    /// The cycle's id.
    pub cycle_id: u64,
    /// The selected tenants left out because their own cycle is running
    /// (`None`: the top-level tiers).
    pub busy: Vec<Option<String>>,
    _running: RunningScopes,
}

impl CycleTicket {
    /// Whether the cycle runs `tenant`'s tiers (`None`: the top-level ones):
    /// selected, the owner of the named database if any, and not busy.
    pub fn runs(&self, tenant: &Option<String>) -> bool {
        self._running.contains(tenant)
    }
}

/// The tenants a cycle runs; each marked running until its part of the
/// cycle ends ([`RunningScopes::release`]) or the cycle does.
struct RunningScopes {
    running: Arc<Mutex<BTreeSet<Option<String>>>>,
    scopes: Mutex<BTreeSet<Option<String>>>,
}

impl RunningScopes {
    fn contains(&self, scope: &Option<String>) -> bool {
        lock(&self.scopes).contains(scope)
    }

    /// `scope`'s part of the cycle is over: its next cycle may begin while
    /// the other tenants' parts go on.
    fn release(&self, scope: &Option<String>) {
        if lock(&self.scopes).remove(scope) {
            lock(&self.running).remove(scope);
        }
    }
}

impl Drop for RunningScopes {
    fn drop(&mut self) {
        let mut running = lock(&self.running);
        for scope in lock(&self.scopes).iter() {
            running.remove(scope);
        }
    }
}

/// `DB/MEASUREMENT/` of a partition path `DB/MEASUREMENT/YYYY/MM/DD[/HH]`,
/// or `None` when it is not one.
fn measurement_prefix(partition: &str) -> Option<String> {
    let day = compactor_model::PartitionPath::parse(partition).day();
    let mut segments = day.rsplitn(4, '/');
    let digits = |s: Option<&str>, n: usize| s.is_some_and(|s| s.len() == n && s.bytes().all(|b| b.is_ascii_digit()));
    let (dd, mm, yyyy) = (segments.next(), segments.next(), segments.next());
    let rest = segments.next()?;
    (digits(dd, 2) && digits(mm, 2) && digits(yyyy, 4) && rest.contains('/') && !rest.starts_with('/')).then(|| format!("{rest}/"))
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

    /// Issue 21 §4h: every cycle started (and killed) a job process, even
    /// one with nothing to do.
    #[tokio::test]
    async fn an_idle_cycle_starts_no_job_process() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("lake/db/cpu/2026/04/11/10")).unwrap();
        let config = Config::parse(&format!("[storage]\nurl = \"{}\"\n", dir.path().join("lake").display())).unwrap();
        let storage = Storage::local(&dir.path().join("lake")).unwrap();
        let plugins = PluginRuntime::new(ArtifactCache::disabled()).unwrap().with_builtins(compactor_builtin::BUILTINS);
        let tiers = crate::load_tiers(&config, &plugins);
        assert!(tiers.iter().any(|t| t.enabled && t.policy.is_ok()), "the cycle has tiers to plan");
        let child = ChildCommand { program: "/bin/cat".into(), env: Vec::new(), timeout: None };
        let manager = Manager::new(config, storage, tiers, plugins, child);
        let report = manager.run_cycle(CycleOptions::default()).await.unwrap();
        assert!(report.jobs.is_empty());
        assert_eq!(manager.runner.standby_starts(), 0, "no job process was started");
    }

    #[tokio::test]
    async fn a_second_cycle_is_refused_while_one_runs() {
        let manager = manager(Vec::new());
        lock(&manager.running).insert(None);
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
