//! One cycle's plan, as data: the tiers to plan, the batches, per-tier
//! counts, problems and verdicts, and how one tier is planned over the
//! listed files.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::batching::{Candidate, split_into_batches};
use crate::cost::batch_cost;
use crate::policy::PolicyFactory;
use crate::validate_answer;
use compactor_model::{FileMeta, HeldFiles, MIN_BATCH_FILES, Partition, RequestCost, SetAside, group_into_partitions};
use compactor_runtime::{PluginLimits, sanitize};

/// Which tier: its tenant (none outside `[[tenants]]`) and its name. Two
/// tenants may each have an `hourly`; every surface that counts or reports
/// per tier (health, metrics, debt, history, the API) tells them apart by
/// this, as its key (`tenant/tier`) or as the `tenant` and `tier` labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct TierId {
    /// The tenant, if any.
    pub tenant: Option<String>,
    /// The tier's name in the config.
    #[serde(rename = "tier")]
    pub name: String,
}

impl TierId {
    /// The tier `name` of `tenant`.
    pub fn new(tenant: Option<&str>, name: &str) -> Self {
        Self { tenant: tenant.map(str::to_owned), name: name.to_owned() }
    }

    /// How reports, health, `--tier` and the API name it: `tier`, or
    /// `tenant/tier` for a tenant's.
    pub fn key(&self) -> String {
        match &self.tenant {
            Some(tenant) => format!("{tenant}/{}", self.name),
            None => self.name.clone(),
        }
    }

    /// The `tenant` and `tier` label values of its metric series (`tenant`
    /// empty outside tenants).
    pub fn labels(&self) -> [&str; 2] {
        [self.tenant.as_deref().unwrap_or_default(), &self.name]
    }
}

impl std::fmt::Display for TierId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key())
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
    /// How reports, health and metrics name it: `tier`, or `tenant/tier`.
    pub fn key(&self) -> String {
        self.id().key()
    }

    /// Which tier it is.
    pub fn id(&self) -> TierId {
        TierId::new(self.tenant.as_deref(), &self.name)
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
    /// Planning stops before the next partition once this has passed (the
    /// rest of the tier is not planned, and its summary says so).
    pub deadline: Option<std::time::Instant>,
    /// Set when nobody waits for the plan any more (an API request gone):
    /// planning stops before the next partition.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Where the last plan of this tier was cut short
    /// ([`TierSummary::resume_after`]): planning starts after this
    /// partition and comes round to the ones before it last.
    pub resume_after: Option<String>,
    /// The fuel the tenant's policies may still spend this cycle
    /// (`fuel_per_cycle`; `None`: no limit). No call is given more, and a
    /// tier whose tenant has none left is not called again this cycle.
    pub fuel_left: Option<u64>,
    /// Which measurements this node plans (cluster `spread` mode: its
    /// share); `None`: all.
    pub share: Option<MeasurementShare>,
}

/// Whether a node plans `(database, measurement)`.
pub type OwnsMeasurement = dyn Fn(&str, &str) -> bool + Send + Sync;

/// A node's share of the lake's measurements (cluster `spread` mode).
#[derive(Clone)]
pub struct MeasurementShare(pub Arc<OwnsMeasurement>);

impl MeasurementShare {
    /// Whether this node plans `database/measurement`.
    pub fn owns(&self, database: &str, measurement: &str) -> bool {
        (self.0)(database, measurement)
    }
}

impl std::fmt::Debug for MeasurementShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeasurementShare")
    }
}

impl PlanOptions {
    /// Why planning must stop before the next partition, if it must.
    fn interrupted(&self) -> Option<&'static str> {
        if self.stop.load(Ordering::Relaxed) {
            Some("the engine is stopping")
        } else if self.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
            Some("nobody waits for the plan any more")
        } else if self.deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            Some("its planning deadline passed")
        } else {
            None
        }
    }
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
    /// Object-store requests its job would make (in its tier's
    /// [`TierSummary::requests`]).
    #[serde(skip)]
    pub requests: RequestCost,
}

/// Which batch: its tier (and tenant), partition and number, as every
/// record of it (job records, the history, jobs in flight) names it. Arc's
/// candidate and job config keep their own flat fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct BatchRef {
    /// Database.
    pub database: String,
    /// Measurement.
    pub measurement: String,
    /// Partition key prefix.
    pub partition_path: String,
    /// Tier.
    pub tier: String,
    /// The tenant whose database it is (none outside `[[tenants]]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// 1-based batch number within its partition.
    pub batch_number: usize,
}

impl BatchRef {
    /// Its tier as reports name it: `tier`, or `tenant/tier`.
    pub fn tier_key(&self) -> String {
        self.tier_id().key()
    }

    /// Which tier it belongs to.
    pub fn tier_id(&self) -> TierId {
        TierId::new(self.tenant.as_deref(), &self.tier)
    }
}

impl PlannedBatch {
    /// Which batch this is, for the records of its job.
    pub fn reference(&self) -> BatchRef {
        let c = &self.candidate;
        BatchRef {
            database: c.database.clone(),
            measurement: c.measurement.clone(),
            partition_path: c.partition_path.clone(),
            tier: c.tier.clone(),
            tenant: self.tenant.clone(),
            batch_number: c.batch_number,
        }
    }

    /// Its tier as reports name it: `tier`, or `tenant/tier`.
    pub fn tier_key(&self) -> String {
        self.tier_id().key()
    }

    /// Which tier planned it.
    pub fn tier_id(&self) -> TierId {
        TierId::new(self.tenant.as_deref(), &self.candidate.tier)
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
    /// Planning stopped before every partition was seen (its deadline
    /// passed, or it was cancelled): the plan of this tier is partial.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
    /// When interrupted: the last partition planned, where the next plan
    /// of this tier should go on ([`PlanOptions::resume_after`]).
    #[serde(skip)]
    pub resume_after: Option<String>,
    /// Object-store requests executing this tier's batches would make.
    pub requests: RequestCost,
    /// Fuel its policy spent planning (instantiation and calls).
    #[serde(skip)]
    pub fuel_used: u64,
    /// Its tenant's fuel for the cycle ran out: its policy was not called
    /// for the rest of the cycle.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fuel_spent: bool,
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
    /// Objects the listings found that compaction leaves in place (names
    /// the store cannot give, keys Arc refuses, files that are not Parquet
    /// inputs), sorted, each once.
    pub set_aside: Vec<SetAside>,
    /// Outputs of aborted jobs that the listings found: they landed after
    /// the job was aborted, and a cycle deletes them (a plan only names
    /// them).
    pub late_outputs: Vec<String>,
    /// Measurements left to other nodes (cluster `spread` mode).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub measurements_elsewhere: usize,
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
        self.set_aside.extend(other.set_aside);
        self.set_aside.sort();
        self.set_aside.dedup();
        self.late_outputs.extend(other.late_outputs);
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
            summary.requests = summary.requests.since(batch.requests);
        }
    }

    /// Number of distinct partitions with batches.
    pub fn partition_count(&self) -> usize {
        self.tiers.iter().map(|t| t.partitions_selected).sum()
    }
}

/// The files of one measurement, listed once per plan.
#[derive(Debug, Clone)]
pub struct Listing {
    /// Database.
    pub database: String,
    /// Measurement.
    pub measurement: String,
    /// Its eligible files.
    pub files: Vec<FileMeta>,
}

/// Replaces each batch's files in `listings` with the output its job would
/// write (named as the job names it, in the partition's directory).
pub fn predict_outputs(listings: &mut [Listing], batches: &[PlannedBatch], suffix: &str, now: DateTime<Utc>) {
    // One pass over each listing, not one per batch: a tier plans tens of
    // thousands of batches over a million files (the planning benchmark).
    let mut by_listing: HashMap<(&str, &str), Vec<&PlannedBatch>> = HashMap::new();
    for batch in batches {
        by_listing.entry((batch.candidate.database.as_str(), batch.candidate.measurement.as_str())).or_default().push(batch);
    }
    for listing in listings.iter_mut() {
        let Some(batches) = by_listing.get(&(listing.database.as_str(), listing.measurement.as_str())) else { continue };
        let merged: HashSet<&str> = batches.iter().flat_map(|b| b.candidate.files.iter().map(String::as_str)).collect();
        listing.files.retain(|f| !merged.contains(f.key.as_str()));
        for batch in batches {
            let candidate = &batch.candidate;
            let name = compactor_model::output_name(&candidate.measurement, now, candidate.batch_number, suffix);
            listing.files.push(FileMeta { key: format!("{}/{name}", candidate.partition_path), size: batch.bytes, last_modified: now });
        }
    }
}

/// Plans one tier over `listings`: for each partition (grouped at the
/// policy's level), the policy's answer, validated; files `held` by recovery
/// manifests dropped (nothing is planned when `held` is `None`: the
/// manifests could not be read); candidates of fewer than
/// [`MIN_BATCH_FILES`] files skipped; the rest sorted and split into batches
/// as Arc does. Batches, problems and (with [`PlanOptions::explain`]) a
/// verdict per partition go to `plan`. Plugin calls block: call it off an
/// async runtime's threads. The engine, the API and the simulator all plan
/// through it.
pub fn plan_tier(
    tier: &PlannedTier,
    listings: &[Listing],
    held: Option<&HeldFiles>,
    options: &PlanOptions,
    plan: &mut Plan,
) -> TierSummary {
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
    let mut limits = tier.limits;
    if let Some(left) = options.fuel_left {
        if left == 0 {
            problem(None, FUEL_SPENT.to_owned());
            summary.fuel_spent = true;
            summary.interrupted = true;
            summary.resume_after = options.resume_after.clone();
            return summary;
        }
        // No call may take more than the cycle has left.
        limits.fuel_per_call = limits.fuel_per_call.min(left);
    }
    let fuel_before = policy.call_counts().fuel_used;
    let fuel_spent = || policy.call_counts().fuel_used.saturating_sub(fuel_before);
    let summary = plan_partitions(tier, policy.as_ref(), limits, listings, held, options, plan, summary, &fuel_spent);
    TierSummary { fuel_used: fuel_spent(), ..summary }
}

/// What [`plan_tier`] says when a tenant's `fuel_per_cycle` is spent.
const FUEL_SPENT: &str =
    "its tenant's fuel_per_cycle is spent: its policies are not called again this cycle (the partitions left wait for the next)";

/// [`plan_tier`] for a loaded policy, within `limits`.
#[allow(clippy::too_many_arguments)]
fn plan_partitions(
    tier: &PlannedTier,
    policy: &dyn PolicyFactory,
    limits: PluginLimits,
    listings: &[Listing],
    held: Option<&HeldFiles>,
    options: &PlanOptions,
    plan: &mut Plan,
    mut summary: TierSummary,
    fuel_spent: &dyn Fn() -> u64,
) -> TierSummary {
    let key = summary.tier.clone();
    let mut problem = |partition: Option<&str>, message: String| {
        plan.problems.push(PlanProblem { tier: key.clone(), partition: partition.map(str::to_owned), message })
    };
    let mut instance = match policy.instantiate(&tier.config_json, limits) {
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
    let mut explainer = if explain { Some(policy.instantiate(&tier.config_json, limits)) } else { None };
    let mut verdict = |partition: &str, selected: bool, reason: String| {
        if explain {
            plan.partitions.push(PartitionVerdict { tier: key.clone(), partition_path: partition.to_owned(), selected, reason });
        }
    };
    let mut partitions: Vec<Partition> =
        listings.iter().flat_map(|l| group_into_partitions(&l.database, &l.measurement, &l.files, level)).collect();
    // A plan cut short last time goes on where it stopped, so that a tenant
    // whose planning never finishes in time still gets round its partitions.
    let start = options.resume_after.as_deref().map_or(0, |after| match partitions.iter().position(|p| p.path == after) {
        Some(index) => index + 1,
        None => partitions.iter().position(|p| p.path.as_str() > after).unwrap_or(0),
    });
    let start = start.min(partitions.len());
    partitions.rotate_left(start);
    for (seen, partition) in partitions.iter().enumerate() {
        // The first partition is always planned (a budget of a
        // millisecond still makes progress); a stop is obeyed at once.
        let out_of_fuel = options.fuel_left.is_some_and(|left| fuel_spent() >= left);
        let interrupted = options.interrupted().filter(|_| seen > 0 || options.stop.load(Ordering::Relaxed));
        if out_of_fuel {
            problem(None, FUEL_SPENT.to_owned());
            summary.fuel_spent = true;
            summary.interrupted = true;
            summary.resume_after = seen.checked_sub(1).map(|last| partitions[last].path.clone()).or_else(|| options.resume_after.clone());
            return summary;
        }
        if let Some(why) = interrupted {
            tracing::info!(tier = %key, "{why}: the rest of the tier is not planned");
            if !options.stop.load(Ordering::Relaxed) {
                problem(None, format!("{why}: the rest of the tier was not planned (its partitions wait for the next plan)"));
            }
            summary.interrupted = true;
            summary.resume_after = seen.checked_sub(1).map(|last| partitions[last].path.clone());
            return summary;
        }
        summary.partitions_seen += 1;
        let answer = match instance.select_candidates(partition, options.now) {
            Ok(answer) => answer,
            Err(e) => {
                verdict(&partition.path, false, format!("its policy failed: {e}"));
                problem(Some(&partition.path), format!("{e}; the tier is skipped for the rest of this cycle"));
                summary.plugin_failures += 1;
                return summary;
            }
        };
        if let Err(reason) = validate_answer(partition, &answer) {
            verdict(&partition.path, false, format!("its policy gave an invalid answer: {reason}"));
            problem(Some(&partition.path), format!("plugin {} gave an invalid answer: {reason}; the partition is skipped", policy.name()));
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
                let bytes = batch_bytes(partition, &batch.files);
                let requests = batch_cost(batch.files.len(), bytes, options.multipart_threshold);
                summary.requests += requests;
                summary.batches += 1;
                summary.files += batch.files.len();
                summary.bytes += bytes;
                plan.batches.push(PlannedBatch { candidate: batch, bytes, tenant: tier.tenant.clone(), requests });
            }
            selected = true;
        }
        summary.partitions_selected += usize::from(selected);
        if let Some(explainer) = &mut explainer {
            let files = partition.files.len();
            let mut own_words = || match explainer {
                Ok(explainer) => explainer.explain(partition, options.now).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let reason = if selected {
                let held_note = if held_files > 0 { format!(" ({held_files} held by a recovery manifest wait)") } else { String::new() };
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
                        Ok(explainer) => crate::probe::explain_waiting(explainer.as_mut(), partition, options.now),
                        Err(e) => format!("its policy cannot be asked why: {e}"),
                    },
                    Err(e) => format!("its policy failed to explain: {e}"),
                }
            };
            verdict(&partition.path, selected, reason);
        }
    }
    summary
}

fn batch_bytes(partition: &Partition, files: &[String]) -> u64 {
    let chosen: HashSet<&str> = files.iter().map(String::as_str).collect();
    partition.files.iter().filter(|f| chosen.contains(f.key.as_str())).map(|f| f.size).sum()
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_bytes_sums_the_chosen_files() {
        let p = Partition {
            database: "db".into(),
            measurement: "cpu".into(),
            path: "db/cpu/2026/01/01/00".into(),
            time: DateTime::UNIX_EPOCH,
            files: ["a", "b", "c"].iter().map(|k| FileMeta { key: (*k).into(), size: 10, last_modified: DateTime::UNIX_EPOCH }).collect(),
        };
        assert_eq!(batch_bytes(&p, &["a".into(), "c".into()]), 20);
    }
}
