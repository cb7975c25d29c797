//! Planning a cycle over the store: list each `{database}/{measurement}/`
//! once, read what recovery manifests hold, and plan every tier through the
//! planning core ([`compactor_planning::plan_tier`]), each on a thread of
//! its own. The plan is a value; nothing in storage changes.

use std::sync::Arc;

use crate::config::{Config, RegisteredTier};
use compactor_job::ManifestStore;
use compactor_model::{HeldFiles, set_aside_reason};
use compactor_planning::{
    Listing, Plan, PlanOptions, PlanProblem, PlannedTier, PolicyFactory, TierSummary, lease_mark_cost, list_pages, plan_tier,
    predict_outputs,
};
use compactor_runtime::{PluginRuntime, PluginSource};
use compactor_storage::{self as storage, SetAside, Storage, StorageError};

/// Loads every tier of `config`: the top-level ones, then each tenant's,
/// in order. A plugin that fails to load is kept as an error, so that
/// the other tiers still plan. Each tenant loads its components apart
/// (its own call counters; its own stores and instances when planning).
pub fn load_tiers(config: &Config, runtime: &PluginRuntime) -> Vec<PlannedTier> {
    config.settings().tiers.iter().map(|registered| load_tier(config, registered, runtime)).collect()
}

/// Loads one tier's component (read from disk now, or taken from the
/// compiled cache); a failure is kept in the tier.
pub(crate) fn load_tier(config: &Config, registered: &RegisteredTier, runtime: &PluginRuntime) -> PlannedTier {
    let tier = &registered.config;
    let source = PluginSource::parse(&tier.plugin, &config.base_dir);
    PlannedTier {
        name: tier.name.clone(),
        tenant: registered.id.tenant.clone(),
        enabled: tier.enabled,
        policy: runtime.load_tier(&source).map(|p| Arc::new(p) as Arc<dyn PolicyFactory>).map_err(|e| e.to_string()),
        config_json: tier.config_json(),
        limits: registered.limits,
    }
}

/// An error that stops planning altogether.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The databases of the lake could not be listed.
    #[error("cannot discover databases: {0}")]
    Discovery(#[source] StorageError),
}

/// Plans one cycle over `storage` for `tiers`.
pub async fn plan(storage: &Storage, tiers: &[PlannedTier], options: &PlanOptions) -> Result<Plan, PlanError> {
    let mut plan = Plan::default();
    let selected: Vec<&PlannedTier> = tiers.iter().filter(|t| t.enabled).collect();
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
            let level = storage::discover_databases(storage).await.map_err(PlanError::Discovery)?;
            plan.set_aside.extend(level.set_aside);
            level.dirs
        }
    };
    let mut listings = Arc::new(list_measurements(storage, &databases, &selected, options.share.as_ref(), &mut plan).await);
    if let Some(held) = &held {
        plan.late_outputs =
            listings.iter().flat_map(|l| l.files.iter()).filter(|f| held.is_void_output(&f.key)).map(|f| f.key.clone()).collect();
    }
    let databases: std::collections::BTreeSet<&str> = listings.iter().map(|l| l.database.as_str()).collect();
    plan.planning_requests.list += databases.len() as u64;
    plan.planning_requests.list += listings.iter().map(|l| list_pages(l.files.len())).sum::<u64>();
    let last = selected.len().saturating_sub(1);
    // The tiers share their tenant's fuel for the cycle.
    let mut options = options.clone();
    for (index, tier) in selected.into_iter().enumerate() {
        let first_batch = plan.batches.len();
        let mut summary = plan_tier_on_own_thread(tier, &listings, &held, &options, &mut plan).await;
        options.fuel_left = options.fuel_left.map(|left| left.saturating_sub(summary.fuel_used));
        if storage.late_write_window().is_some() {
            // Each batch's job also marks its lease (a GET and a PUT).
            for batch in &mut plan.batches[first_batch..] {
                batch.requests += lease_mark_cost(1);
            }
            summary.requests += lease_mark_cost(summary.batches);
        }
        // A cycle runs the tiers in order: the next one sees this one's
        // outputs, not the files they replace (nothing to predict after the
        // last tier).
        if index < last {
            let predicted: &mut Vec<Listing> = Arc::make_mut(&mut listings);
            predict_outputs(predicted, &plan.batches[first_batch..], &summary.output_suffix, options.now);
        }
        plan.tiers.push(summary);
    }
    plan.set_aside.sort();
    plan.set_aside.dedup();
    Ok(plan)
}

async fn list_measurements(
    storage: &Storage,
    databases: &[String],
    tiers: &[&PlannedTier],
    share: Option<&compactor_planning::MeasurementShare>,
    plan: &mut Plan,
) -> Vec<Listing> {
    let mut listings = Vec::new();
    for database in databases {
        let measurements = match storage::discover_measurements(storage, database).await {
            Ok(level) => {
                plan.set_aside.extend(level.set_aside);
                level.dirs
            }
            Err(e) => {
                report_to_tiers(plan, tiers, format!("skipping database {database}: {e}"));
                continue;
            }
        };
        for measurement in measurements {
            // Another node's share is not even listed: listing divides too.
            if share.is_some_and(|share| !share.owns(database, &measurement)) {
                plan.measurements_elsewhere += 1;
                continue;
            }
            match list_measurement(storage, database, &measurement).await {
                Ok((listing, set_aside)) => {
                    listings.push(listing);
                    plan.set_aside.extend(set_aside);
                }
                Err(e) => report_to_tiers(plan, tiers, format!("skipping {database}/{measurement}: {e}")),
            }
        }
    }
    listings
}

fn report_to_tiers(plan: &mut Plan, tiers: &[&PlannedTier], message: String) {
    for tier in tiers {
        plan.problems.push(PlanProblem { tier: tier.key(), partition: None, message: message.clone() });
    }
}

/// The files of `database`/`measurement` that compaction may read, and the
/// objects there it leaves in place, each with the reason: what the store
/// cannot name, and what is not a Parquet input Arc would take
/// ([`compactor_model::set_aside_reason`]). The one listing of a
/// measurement: plans and partition outlooks both take it.
pub(crate) async fn list_measurement(
    storage: &Storage,
    database: &str,
    measurement: &str,
) -> Result<(Listing, Vec<SetAside>), StorageError> {
    let prefix = format!("{database}/{measurement}/");
    let (files, set_aside) = list_eligible(storage, &prefix, &prefix).await?;
    Ok((Listing { database: database.to_owned(), measurement: measurement.to_owned(), files }, set_aside))
}

/// The objects under `prefix` (within the measurement at
/// `measurement_prefix`) that compaction may read, and the ones it sets
/// aside: the one rule plans, partition outlooks and `compactor files`
/// share.
pub(crate) async fn list_eligible(
    storage: &Storage,
    prefix: &str,
    measurement_prefix: &str,
) -> Result<(Vec<compactor_model::FileMeta>, Vec<SetAside>), StorageError> {
    let listed = storage.list_objects(prefix).await?;
    let mut set_aside = listed.set_aside;
    let mut files = Vec::with_capacity(listed.files.len());
    for file in listed.files {
        let outside = || !compactor_model::in_partition_layout(file.key.strip_prefix(measurement_prefix).unwrap_or(&file.key));
        let reason = set_aside_reason(&file).or_else(|| {
            outside().then(|| format!("not in a partition directory ({measurement_prefix}YYYY/MM/DD[/HH]/…): no tier can take it"))
        });
        match reason {
            Some(reason) => set_aside.push(SetAside { key: file.key, reason }),
            None => files.push(file),
        }
    }
    Ok((files, set_aside))
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
        let _ = sender.send(
            outcome.map_err(|panic| format!("planning panicked (a bug in compactor): {}", compactor_planning::panic_message(&*panic))),
        );
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
