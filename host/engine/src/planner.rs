//! Planning a cycle: list each `{database}/{measurement}/` once, group the
//! files into partitions for every tier, ask the tier's policy which files to
//! compact, validate the answer, drop files held by recovery manifests, and
//! split into batches. The plan is a value; nothing in storage changes.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::{Config, ConfigError};
use crate::tier::{Candidate, split_into_batches};
use compactor_job::manifest::{HeldFiles, ManifestStore};
use compactor_job::parent::MIN_BATCH_FILES;
use compactor_model::{FileMeta, Partition, PartitionLevel, group_into_partitions, is_eligible_input};
use compactor_runtime::{
    CallCounts, CallStats, PluginError, PluginLimits, PluginRuntime, PluginSource, TierDescription, TierInstance, TierPlugin, sanitize,
};
use compactor_storage::{self as storage, RequestCost, Storage, StorageError};

/// What the planner needs from one configured policy instance.
pub trait PartitionPolicy {
    /// How the host groups files into partitions for this policy.
    fn partition_level(&self) -> PartitionLevel;

    /// Suffix of output names, e.g. `compacted`.
    fn output_suffix(&self) -> String;

    /// The minimum number of files the policy declares (0: none declared).
    fn min_files(&self) -> u32 {
        0
    }

    /// The groups of files to compact in `partition` at `now`.
    fn select_candidates(&mut self, partition: &Partition, now: DateTime<Utc>) -> Result<Vec<Vec<String>>, PluginError>;

    /// Why it selects what it does in `partition` at `now`, in its own
    /// words (none when it cannot say: the host explains then).
    fn explain(&mut self, _partition: &Partition, _now: DateTime<Utc>) -> Result<Option<String>, PluginError> {
        Ok(None)
    }
}

/// Makes configured policy instances: a loaded plugin, or native code in
/// benchmarks that compare the two.
pub trait PolicyFactory: Send + Sync {
    /// Display name for reports and errors.
    fn name(&self) -> &str;

    /// A fresh instance with `config_json` applied.
    fn instantiate(&self, config_json: &str, limits: PluginLimits) -> Result<Box<dyn PartitionPolicy>, PluginError>;

    /// SHA-256 of the component's bytes (empty for native code).
    fn content_hash(&self) -> &str {
        ""
    }

    /// The contract version the component was built against (none for
    /// native code).
    fn wit_version(&self) -> Option<String> {
        None
    }

    /// What its calls did so far, over every instance.
    fn call_counts(&self) -> CallCounts {
        self.call_stats().map(|s| s.read()).unwrap_or_default()
    }

    /// Its call counters (none for native code).
    fn call_stats(&self) -> Option<Arc<CallStats>> {
        None
    }

    /// What a configured instance says about itself (none for native code).
    fn describe(&self, _config_json: &str, _limits: PluginLimits) -> Result<Option<TierDescription>, PluginError> {
        Ok(None)
    }
}

impl PartitionPolicy for TierInstance {
    fn partition_level(&self) -> PartitionLevel {
        self.description().partition_level
    }

    fn output_suffix(&self) -> String {
        self.description().output_suffix.clone()
    }

    fn min_files(&self) -> u32 {
        self.description().min_files
    }

    fn select_candidates(&mut self, partition: &Partition, now: DateTime<Utc>) -> Result<Vec<Vec<String>>, PluginError> {
        TierInstance::select_candidates(self, partition, now)
    }

    fn explain(&mut self, partition: &Partition, now: DateTime<Utc>) -> Result<Option<String>, PluginError> {
        TierInstance::explain(self, partition, now)
    }
}

impl PolicyFactory for TierPlugin {
    fn name(&self) -> &str {
        TierPlugin::name(self)
    }

    fn instantiate(&self, config_json: &str, limits: PluginLimits) -> Result<Box<dyn PartitionPolicy>, PluginError> {
        Ok(Box::new(TierPlugin::instantiate(self, config_json, limits)?))
    }

    fn content_hash(&self) -> &str {
        TierPlugin::content_hash(self)
    }

    fn wit_version(&self) -> Option<String> {
        Some(self.contract().wit_version.to_string())
    }

    fn call_stats(&self) -> Option<Arc<CallStats>> {
        Some(TierPlugin::call_stats(self))
    }

    fn describe(&self, config_json: &str, limits: PluginLimits) -> Result<Option<TierDescription>, PluginError> {
        Ok(Some(TierPlugin::instantiate(self, config_json, limits)?.description().clone()))
    }
}

/// A tier ready to plan: its name from the config, its policy and settings.
#[derive(Clone)]
pub struct PlannedTier {
    /// Tier name (`hourly`, …), as its jobs' outputs and manifests name it.
    pub name: String,
    /// The tenant whose databases it compacts (none: the databases no
    /// tenant claims).
    pub tenant: Option<String>,
    /// Disabled tiers are skipped.
    pub enabled: bool,
    /// The policy, or why it could not be loaded.
    pub policy: Result<Arc<dyn PolicyFactory>, String>,
    /// The policy's config, as JSON.
    pub config_json: String,
    /// Sandbox limits.
    pub limits: PluginLimits,
}

impl PlannedTier {
    /// Loads every tier of `config`: the top-level ones, then each tenant's,
    /// in order. A plugin that fails to load is kept as an error, so that
    /// the other tiers still plan. Each tenant loads its components apart
    /// (its own call counters; its own stores and instances when planning).
    pub fn load_all(config: &Config, runtime: &PluginRuntime) -> Result<Vec<PlannedTier>, ConfigError> {
        let top = config.tiers.iter().enumerate().map(|(i, tier)| (None, tier, format!("tiers[{i}]")));
        let tenants = config.tenants.iter().enumerate().flat_map(|(n, tenant)| {
            config.tenant_tiers(tenant).iter().enumerate().map(move |(i, tier)| (Some(tenant), tier, format!("tenants[{n}].tiers[{i}]")))
        });
        top.chain(tenants)
            .map(|(tenant, tier, key)| {
                let source = PluginSource::parse(&tier.plugin, &config.base_dir);
                Ok(PlannedTier {
                    name: tier.name.clone(),
                    tenant: tenant.map(|t| t.name.clone()),
                    enabled: tier.enabled,
                    policy: runtime.load_tier(&source).map(|p| Arc::new(p) as Arc<dyn PolicyFactory>).map_err(|e| e.to_string()),
                    config_json: tier.config_json(),
                    limits: config.tier_limits(tenant, tier, &key)?,
                })
            })
            .collect()
    }

    /// How reports, health and metrics name it: `tier`, or `tenant/tier`.
    pub fn key(&self) -> String {
        crate::config::tier_key(self.tenant.as_deref(), &self.name)
    }

    /// Whether a `--tier` list selects it: empty selects every tier; an
    /// entry selects the tier of that key, or (unless `exact`) every
    /// tenant's tier of that name.
    pub fn is_selected_by(&self, tiers: &[String], exact: bool) -> bool {
        tiers.is_empty() || tiers.iter().any(|t| *t == self.key() || (!exact && *t == self.name))
    }
}

/// What to plan.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// The time the policies see as "now".
    pub now: DateTime<Utc>,
    /// Only this database (discovery otherwise).
    pub database: Option<String>,
    /// Only these databases, already discovered (a tenant's); with
    /// `database`, the one of them it names.
    pub databases: Option<Vec<String>>,
    /// Only these tiers (all enabled ones when empty).
    pub tiers: Vec<String>,
    /// Batch size, clamped as Arc does.
    pub max_files_per_batch: i64,
    /// Outputs larger than this are uploaded in parts (for the cost).
    pub multipart_threshold: u64,
    /// Record why each partition was or was not selected (costs extra
    /// policy calls for the ones that were not).
    pub explain: bool,
    /// Set on shutdown: planning stops before the next partition, so that a
    /// stop waits for one policy call at most, not for every partition.
    pub stop: Arc<AtomicBool>,
}

/// One batch of the plan and the bytes it would read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedBatch {
    /// Arc's candidate fields.
    #[serde(flatten)]
    pub candidate: Candidate,
    /// Total size of the batch's files.
    #[serde(skip)]
    pub bytes: u64,
    /// The tenant whose database it is (absent outside `[[tenants]]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

impl PlannedBatch {
    /// Its tier as reports name it: `tier`, or `tenant/tier`.
    pub fn tier_key(&self) -> String {
        crate::config::tier_key(self.tenant.as_deref(), &self.candidate.tier)
    }
}

/// Per-tier counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TierSummary {
    /// Tier name.
    pub tier: String,
    /// Plugin display name.
    pub plugin: String,
    /// Suffix of the tier's output names.
    pub output_suffix: String,
    /// Partitions shown to the policy.
    pub partitions_seen: usize,
    /// Partitions with at least one batch.
    pub partitions_selected: usize,
    /// Batches planned.
    pub batches: usize,
    /// Files in those batches.
    pub files: usize,
    /// Bytes in those batches.
    pub bytes: u64,
    /// Files the policy chose that a pending recovery manifest holds.
    pub held_files_dropped: usize,
    /// Policy calls that failed (trap, fuel, deadline, memory, refused
    /// configuration): a tier failing cycle after cycle is suspended.
    #[serde(skip_serializing_if = "is_zero")]
    pub plugin_failures: usize,
    /// Object-store requests executing this tier's batches would make.
    pub requests: RequestCost,
}

/// What one batch costs to execute: the partition's lease (a GET and a
/// PUT to take it, the same to release it), a second look at the
/// manifests (one LIST), one GET per input, the recovery manifest (PUT,
/// DELETE), the output (one PUT, or parts + 2 and the upload's record (PUT,
/// DELETE) when larger than `multipart_threshold`, sized at most the inputs'
/// bytes), the commit (PUT, DELETE) and the inputs' deletion (the first
/// alone, the rest in bulk requests of up to 1,000 keys).
pub fn batch_cost(files: usize, bytes: u64, multipart_threshold: u64) -> RequestCost {
    let multipart = bytes > multipart_threshold;
    let output_puts = if multipart { bytes.div_ceil(multipart_threshold.max(1)) + 3 } else { 1 };
    let input_deletes = if files == 0 { 0 } else { 1 + (files as u64 - 1).div_ceil(1000) };
    RequestCost { list: 1, get: files as u64 + 2, put: 2 + 1 + 1 + output_puts, delete: input_deletes + 2 + u64::from(multipart) }
}

/// What marking the lease before the manifest costs `batches` jobs (a GET
/// and a PUT each), on stores where a write can land after its process is
/// gone ([`Storage::late_write_window`]).
pub fn lease_mark_cost(batches: usize) -> RequestCost {
    RequestCost { get: batches as u64, put: batches as u64, ..RequestCost::default() }
}

/// LIST pages needed for `keys` keys (at least one request).
pub fn list_pages(keys: usize) -> u64 {
    (keys as u64).div_ceil(1000).max(1)
}

/// Something that went wrong in one tier or partition; the rest of the plan
/// is still valid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanProblem {
    /// The tier.
    pub tier: String,
    /// The partition, when the problem is specific to one.
    pub partition: Option<String>,
    /// What happened.
    pub message: String,
}

// Sanitised as a whole: a message can quote a storage error, and an object
// name in the lake may hold control characters just as a plugin's text can.
impl std::fmt::Display for PlanProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match &self.partition {
            Some(partition) => format!("tier {} on partition {partition}: {}", self.tier, self.message),
            None => format!("tier {}: {}", self.tier, self.message),
        };
        f.write_str(&sanitize(&text, MAX_PROBLEM_TEXT))
    }
}

/// Longest problem text shown.
const MAX_PROBLEM_TEXT: usize = 4096;

/// The plan of one cycle.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    /// Batches in tier order, then database, measurement, partition path and
    /// batch number.
    pub batches: Vec<PlannedBatch>,
    /// LIST requests planning made (discovery, manifests, one listing per
    /// measurement), also what a cycle's planning costs.
    pub planning_requests: RequestCost,
    /// Counts per tier, in tier order.
    pub tiers: Vec<TierSummary>,
    /// Failures that skipped a tier or a partition.
    pub problems: Vec<PlanProblem>,
    /// With [`PlanOptions::explain`]: every partition each tier looked at,
    /// and why it was or was not selected.
    pub partitions: Vec<PartitionVerdict>,
    /// Batches left out by a tenant's `max_bytes_per_cycle`: the next
    /// cycle's.
    pub deferred_by_budget: usize,
}

/// Why a tier did or did not select a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionVerdict {
    /// Tier.
    pub tier: String,
    /// Partition key prefix.
    pub partition_path: String,
    /// Whether some of its files are in the plan.
    pub selected: bool,
    /// Why, in words.
    pub reason: String,
}

impl Plan {
    /// Adds `other` (another tenant's plan) to this one.
    pub fn merge(&mut self, other: Plan) {
        self.batches.extend(other.batches);
        self.planning_requests += other.planning_requests;
        self.tiers.extend(other.tiers);
        self.problems.extend(other.problems);
        self.partitions.extend(other.partitions);
        self.deferred_by_budget += other.deferred_by_budget;
    }

    /// Records that `deferred` (taken out of `batches`) waits for the next
    /// cycle: the tiers' counts no longer include them.
    pub fn defer(&mut self, deferred: &[PlannedBatch]) {
        self.deferred_by_budget += deferred.len();
        for batch in deferred {
            let Some(summary) = self.tiers.iter_mut().find(|t| t.tier == batch.tier_key()) else {
                continue;
            };
            summary.batches = summary.batches.saturating_sub(1);
            summary.files = summary.files.saturating_sub(batch.candidate.files.len());
            summary.bytes = summary.bytes.saturating_sub(batch.bytes);
        }
    }

    /// Number of distinct partitions with batches.
    pub fn partition_count(&self) -> usize {
        self.tiers.iter().map(|t| t.partitions_selected).sum()
    }
}

/// An error that stops planning altogether.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The databases of the lake could not be listed.
    #[error("cannot discover databases: {0}")]
    Discovery(#[source] StorageError),
}

/// The files of one measurement, listed once per plan.
#[derive(Clone)]
struct Listing {
    database: String,
    measurement: String,
    files: Vec<FileMeta>,
}

/// Plans one cycle over `storage` for `tiers`.
pub async fn plan(storage: &Storage, tiers: &[PlannedTier], options: &PlanOptions) -> Result<Plan, PlanError> {
    let mut plan = Plan::default();
    let selected: Vec<&PlannedTier> = tiers.iter().filter(|t| t.enabled && t.is_selected_by(&options.tiers, false)).collect();
    if selected.is_empty() {
        return Ok(plan);
    }
    plan.planning_requests.list += 1;
    let held = match ManifestStore::new(storage.clone()).held_files().await {
        Ok(held) => Some(Arc::new(held)),
        Err(e) => {
            for tier in &selected {
                plan.problems.push(PlanProblem {
                    tier: tier.key(),
                    partition: None,
                    message: format!("{e}; every candidate is skipped this cycle, to be safe"),
                });
            }
            None
        }
    };
    let databases = match (&options.databases, &options.database) {
        (Some(databases), None) => databases.clone(),
        (Some(databases), Some(db)) => databases.iter().filter(|d| *d == db).cloned().collect(),
        (None, Some(db)) => vec![db.clone()],
        (None, None) => {
            plan.planning_requests.list += 1;
            storage::discover_databases(storage).await.map_err(PlanError::Discovery)?
        }
    };
    let mut listings = Arc::new(list_measurements(storage, &databases, &selected, &mut plan.problems).await);
    let databases: std::collections::BTreeSet<&str> = listings.iter().map(|l| l.database.as_str()).collect();
    plan.planning_requests.list += databases.len() as u64;
    plan.planning_requests.list += listings.iter().map(|l| list_pages(l.files.len())).sum::<u64>();
    for tier in selected {
        let first_batch = plan.batches.len();
        let mut summary = plan_tier_on_own_thread(tier, &listings, &held, options, &mut plan).await;
        if storage.late_write_window().is_some() {
            summary.requests += lease_mark_cost(summary.batches);
        }
        // A cycle runs the tiers in order: the next one sees this one's
        // outputs, not the files they replace.
        let predicted: &mut Vec<Listing> = Arc::make_mut(&mut listings);
        predict_outputs(predicted, &plan.batches[first_batch..], &summary.output_suffix, options.now);
        plan.tiers.push(summary);
    }
    Ok(plan)
}

async fn list_measurements(
    storage: &Storage,
    databases: &[String],
    tiers: &[&PlannedTier],
    problems: &mut Vec<PlanProblem>,
) -> Vec<Listing> {
    let mut report = |message: String| {
        for tier in tiers {
            problems.push(PlanProblem { tier: tier.key(), partition: None, message: message.clone() });
        }
    };
    let mut listings = Vec::new();
    for database in databases {
        let measurements = match storage::discover_measurements(storage, database).await {
            Ok(m) => m,
            Err(e) => {
                report(format!("skipping database {database}: {e}"));
                continue;
            }
        };
        for measurement in measurements {
            match storage.list(&format!("{database}/{measurement}/")).await {
                Ok(mut files) => {
                    files.retain(|f| is_eligible_input(&f.key));
                    listings.push(Listing { database: database.clone(), measurement, files });
                }
                Err(e) => report(format!("skipping {database}/{measurement}: {e}")),
            }
        }
    }
    listings
}

/// Replaces each batch's files in `listings` with the output its job would
/// write (named as the job names it, in the partition's directory).
fn predict_outputs(listings: &mut [Listing], batches: &[PlannedBatch], suffix: &str, now: DateTime<Utc>) {
    for batch in batches {
        let candidate = &batch.candidate;
        let Some(listing) = listings.iter_mut().find(|l| l.database == candidate.database && l.measurement == candidate.measurement) else {
            continue;
        };
        let merged: HashSet<&str> = candidate.files.iter().map(String::as_str).collect();
        listing.files.retain(|f| !merged.contains(f.key.as_str()));
        let name = compactor_job::output_name(&candidate.measurement, now, candidate.batch_number, suffix);
        listing.files.push(FileMeta { key: format!("{}/{name}", candidate.partition_path), size: batch.bytes, last_modified: now });
    }
}

/// Plans one tier on a thread of its own, awaited without blocking: the
/// policy's WASI host calls may block, which is illegal on a thread that
/// drives the async runtime; tenants plan side by side, so one tenant's slow
/// policy must not hold the others' planning; and a panic there must cost
/// one tier, not the engine.
async fn plan_tier_on_own_thread(
    tier: &PlannedTier,
    listings: &Arc<Vec<Listing>>,
    held: &Option<Arc<HeldFiles>>,
    options: &PlanOptions,
    plan: &mut Plan,
) -> TierSummary {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let work = (tier.clone(), listings.clone(), held.clone(), options.clone());
    let spawned = std::thread::Builder::new().name(format!("plan-{}", tier.key())).spawn(move || {
        let (tier, listings, held, options) = work;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // A plan of its own, merged only when the thread finishes: a
            // tier that panics half-way adds no batch.
            let mut tier_plan = Plan::default();
            let summary = plan_tier(&tier, &listings, held.as_deref(), &options, &mut tier_plan);
            (summary, tier_plan)
        }));
        // Let go of the listings before answering: the next tier's
        // predictions then change them in place rather than a copy.
        drop((tier, listings, held, options));
        let _ = sender.send(outcome.map_err(|panic| format!("planning panicked (a bug in compactor): {}", crate::panic_message(&*panic))));
    });
    let outcome = match spawned {
        Ok(_) => receiver.await.unwrap_or_else(|_| Err("the planning thread ended without an answer".to_owned())),
        Err(e) => Err(format!("cannot start a planning thread: {e}")),
    };
    match outcome {
        Ok((summary, tier_plan)) => {
            plan.batches.extend(tier_plan.batches);
            plan.problems.extend(tier_plan.problems);
            plan.partitions.extend(tier_plan.partitions);
            summary
        }
        Err(message) => {
            tracing::error!(tier = %tier.key(), "{message}");
            plan.problems.push(PlanProblem { tier: tier.key(), partition: None, message });
            TierSummary { tier: tier.key(), ..Default::default() }
        }
    }
}

fn plan_tier(tier: &PlannedTier, listings: &[Listing], held: Option<&HeldFiles>, options: &PlanOptions, plan: &mut Plan) -> TierSummary {
    let key = tier.key();
    let mut summary = TierSummary { tier: key.clone(), ..Default::default() };
    let mut problem = |partition: Option<&str>, message: String| {
        plan.problems.push(PlanProblem { tier: key.clone(), partition: partition.map(str::to_owned), message })
    };
    let policy = match &tier.policy {
        Ok(policy) => policy,
        Err(message) => {
            problem(None, message.clone());
            return summary;
        }
    };
    summary.plugin = policy.name().to_owned();
    let mut instance = match policy.instantiate(&tier.config_json, tier.limits) {
        Ok(instance) => instance,
        Err(e) => {
            problem(None, e.to_string());
            summary.plugin_failures += 1;
            return summary;
        }
    };
    let level = instance.partition_level();
    summary.output_suffix = instance.output_suffix();
    let explain = options.explain;
    // Explaining asks the policy more (its reasons, later clocks) on an
    // instance of its own: a call that fails there must not cost the plan.
    let mut explainer = if explain { Some(policy.instantiate(&tier.config_json, tier.limits)) } else { None };
    let mut verdict = |partition: &str, selected: bool, reason: String| {
        if explain {
            plan.partitions.push(PartitionVerdict { tier: key.clone(), partition_path: partition.to_owned(), selected, reason });
        }
    };
    for listing in listings {
        for partition in group_into_partitions(&listing.database, &listing.measurement, &listing.files, level) {
            if options.stop.load(Ordering::Relaxed) {
                tracing::info!(tier = %key, "stopping: the rest of the tier is not planned");
                return summary;
            }
            summary.partitions_seen += 1;
            let answer = match instance.select_candidates(&partition, options.now) {
                Ok(answer) => answer,
                Err(e) => {
                    verdict(&partition.path, false, format!("its policy failed: {e}"));
                    problem(Some(&partition.path), format!("{e}; the tier is skipped for the rest of this cycle"));
                    summary.plugin_failures += 1;
                    return summary;
                }
            };
            if let Err(reason) = validate_answer(&partition, &answer) {
                verdict(&partition.path, false, format!("its policy gave an invalid answer: {reason}"));
                problem(
                    Some(&partition.path),
                    format!("plugin {} gave an invalid answer: {reason}; the partition is skipped", policy.name()),
                );
                continue;
            }
            let Some(held) = held else {
                verdict(&partition.path, false, "the recovery manifests cannot be read: every partition waits, to be safe".into());
                continue;
            };
            if let Some(manifest) = held.blocked_by(&partition.path) {
                verdict(&partition.path, false, format!("held: recovery manifest {manifest} cannot be read now"));
                problem(Some(&partition.path), format!("recovery manifest {manifest} cannot be read now; the partition waits, to be safe"));
                continue;
            }
            let chosen: usize = answer.iter().map(Vec::len).sum();
            let held_files = answer.iter().flatten().filter(|f| held.contains(f)).count();
            let mut selected = false;
            for mut files in answer {
                let before = files.len();
                files.retain(|f| !held.contains(f));
                summary.held_files_dropped += before - files.len();
                if files.is_empty() {
                    continue;
                }
                if files.len() < MIN_BATCH_FILES && before >= MIN_BATCH_FILES {
                    // What recovery holds comes back next cycle.
                    continue;
                }
                if files.len() < MIN_BATCH_FILES {
                    // A job needs two files; one alone would fail every cycle.
                    problem(
                        Some(&partition.path),
                        format!(
                            "plugin {} chose a candidate of {} file ({}); at least {MIN_BATCH_FILES} are needed, so it is skipped",
                            policy.name(),
                            files.len(),
                            sanitize(&files[0], 200)
                        ),
                    );
                    continue;
                }
                files.sort();
                let candidate = Candidate {
                    database: partition.database.clone(),
                    measurement: partition.measurement.clone(),
                    partition_path: partition.path.clone(),
                    file_count: files.len(),
                    files,
                    tier: tier.name.clone(),
                    partition_time: partition.time,
                    batch_number: 0,
                    total_batches: 0,
                };
                for batch in split_into_batches(&candidate, options.max_files_per_batch) {
                    let bytes = batch_bytes(&partition, &batch.files);
                    summary.requests += batch_cost(batch.files.len(), bytes, options.multipart_threshold);
                    summary.batches += 1;
                    summary.files += batch.files.len();
                    summary.bytes += bytes;
                    plan.batches.push(PlannedBatch { candidate: batch, bytes, tenant: tier.tenant.clone() });
                }
                selected = true;
            }
            summary.partitions_selected += usize::from(selected);
            if let Some(explainer) = &mut explainer {
                let files = partition.files.len();
                let mut own_words = || match explainer {
                    Ok(explainer) => explainer.explain(&partition, options.now).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                let reason = if selected {
                    let held_note =
                        if held_files > 0 { format!(" ({held_files} held by a recovery manifest wait)") } else { String::new() };
                    let chosen = format!("selects {} of {files} files{held_note}", chosen - held_files);
                    match own_words() {
                        Ok(Some(reason)) => format!("{chosen}: {reason}"),
                        _ => chosen,
                    }
                } else if chosen > 0 && held_files > 0 {
                    "held by a recovery manifest (an interrupted job): recovery resolves it first".to_owned()
                } else if chosen > 0 {
                    "its policy chose a single file; a merge needs at least 2".to_owned()
                } else {
                    match own_words() {
                        Ok(Some(reason)) => reason,
                        Ok(None) => match explainer {
                            Ok(explainer) => crate::outlook::explain_waiting(explainer.as_mut(), &partition, options.now),
                            Err(e) => format!("its policy cannot be asked why: {e}"),
                        },
                        Err(e) => format!("its policy failed to explain: {e}"),
                    }
                };
                verdict(&partition.path, selected, reason);
            }
        }
    }
    summary
}

fn batch_bytes(partition: &Partition, files: &[String]) -> u64 {
    let chosen: HashSet<&str> = files.iter().map(String::as_str).collect();
    partition.files.iter().filter(|f| chosen.contains(f.key.as_str())).map(|f| f.size).sum()
}

/// Longest key a policy may name: S3's limit on object names.
const MAX_KEY_BYTES: usize = 1024;

/// Checks a policy's answer: every key could be an object name, comes from
/// the partition's listing, and appears once. The messages quote keys
/// sanitised and cut, whatever the policy sent.
fn validate_answer(partition: &Partition, answer: &[Vec<String>]) -> Result<(), String> {
    let listed: HashSet<&str> = partition.files.iter().map(|f| f.key.as_str()).collect();
    let mut seen = HashSet::new();
    for key in answer.iter().flatten() {
        let quoted = || format!("\"{}\"", sanitize(key, 200));
        if key.len() > MAX_KEY_BYTES || key.chars().any(char::is_control) {
            return Err(format!(
                "it named {}, which cannot be an object name (control characters or over {MAX_KEY_BYTES} bytes)",
                quoted()
            ));
        }
        if key.starts_with('/') || key.split('/').any(|segment| segment == ".." || segment == ".") {
            return Err(format!("it named the path-traversal key {}", quoted()));
        }
        if !listed.contains(key.as_str()) {
            return Err(format!("it named {}, which is not in the partition's listing", quoted()));
        }
        if !seen.insert(key.as_str()) {
            return Err(format!("it named {} more than once", quoted()));
        }
    }
    Ok(())
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(keys: &[&str]) -> Partition {
        Partition {
            database: "db".into(),
            measurement: "cpu".into(),
            path: "db/cpu/2026/01/01/00".into(),
            time: DateTime::UNIX_EPOCH,
            files: keys.iter().map(|k| FileMeta { key: (*k).into(), size: 10, last_modified: DateTime::UNIX_EPOCH }).collect(),
        }
    }

    #[test]
    fn answers_naming_only_listed_files_once_are_valid() {
        let p = partition(&["db/cpu/2026/01/01/00/a.parquet", "db/cpu/2026/01/01/00/b.parquet"]);
        let answer = vec![vec!["db/cpu/2026/01/01/00/a.parquet".to_owned()], vec!["db/cpu/2026/01/01/00/b.parquet".to_owned()]];
        assert_eq!(validate_answer(&p, &answer), Ok(()));
    }

    #[test]
    fn foreign_duplicate_and_traversal_keys_are_rejected() {
        let p = partition(&["db/cpu/2026/01/01/00/a.parquet"]);
        let a = "db/cpu/2026/01/01/00/a.parquet".to_owned();
        assert!(validate_answer(&p, &[vec![a.clone()], vec![a.clone()]]).unwrap_err().contains("more than once"));
        assert!(validate_answer(&p, &[vec!["db/cpu/x.parquet".into()]]).unwrap_err().contains("not in the partition's listing"));
        assert!(
            validate_answer(&p, &[vec!["db/cpu/2026/01/01/00/../../../../../etc/passwd".into()]]).unwrap_err().contains("path-traversal")
        );
        let huge = "db/cpu/2026/01/01/00/".to_owned() + &"k".repeat(50 << 20);
        let message = validate_answer(&p, &[vec![huge]]).unwrap_err();
        assert!(message.len() < 400 && message.contains("cannot be an object name"), "{}", &message[..400.min(message.len())]);
        let forged = validate_answer(&p, &[vec!["db/cpu/x\nERROR forged line".into()]]).unwrap_err();
        assert!(forged.contains("x\\nERROR") && !forged.contains('\n'), "{forged}");
    }

    #[test]
    fn request_costs_follow_the_job_protocol() {
        assert_eq!(batch_cost(30, 1000, 64 << 20), RequestCost { list: 1, get: 32, put: 5, delete: 4 });
        assert_eq!(batch_cost(2, 250, 100).put, 4 + 3 + 2 + 1, "three parts, create, complete and the upload's record");
        assert_eq!((list_pages(0), list_pages(1000), list_pages(1001)), (1, 1, 2));
    }

    #[test]
    fn batch_bytes_sums_the_chosen_files() {
        let p = partition(&["a", "b", "c"]);
        assert_eq!(batch_bytes(&p, &["a".into(), "c".into()]), 20);
    }
}
