//! Compaction debt: what each tier's policy would compact if it ran now.
//! Computed by planning (listing the lake, asking the policies, changing
//! nothing) after each cycle and every few minutes between cycles, so the
//! gauges also grow while data arrives.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use compactor_engine::{CycleOptions, Manager};
use compactor_engine::{PlanError, TierId};

/// What each enabled tier owes, at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Debt {
    /// When it was computed.
    pub computed_at: DateTime<Utc>,
    /// By tier key (`tier`, or `tenant/tier`).
    pub tiers: BTreeMap<String, TierDebt>,
}

/// What one tier owes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TierDebt {
    /// Which tier.
    #[serde(flatten)]
    pub id: TierId,
    /// Files its policy would compact now.
    pub files: usize,
    /// Partitions they are in.
    pub partitions: usize,
    /// The start of the oldest of those partitions.
    pub oldest_partition: Option<DateTime<Utc>>,
}

impl TierDebt {
    /// Seconds from the oldest partition's start to `at` (0 when none).
    pub fn oldest_age_seconds(&self, at: DateTime<Utc>) -> i64 {
        self.oldest_partition.map_or(0, |oldest| (at - oldest).num_seconds().max(0))
    }
}

/// Plans every enabled tier at the current time and sums what it selects.
pub async fn compute(manager: &Manager) -> Result<Debt, PlanError> {
    let computed_at = Utc::now();
    let plan = manager.plan(&CycleOptions { now: Some(computed_at), ..Default::default() }).await?;
    let mut tiers: BTreeMap<String, TierDebt> =
        manager.tiers().iter().filter(|t| t.enabled).map(|t| (t.key(), TierDebt { id: t.id(), ..Default::default() })).collect();
    let mut partitions: HashSet<(String, &str)> = HashSet::new();
    for batch in &plan.batches {
        let candidate = &batch.candidate;
        let id = batch.tier_id();
        let key = id.key();
        let owed = tiers.entry(key.clone()).or_insert_with(|| TierDebt { id, ..Default::default() });
        owed.files += candidate.files.len();
        if partitions.insert((key, &candidate.partition_path)) {
            owed.partitions += 1;
        }
        owed.oldest_partition = Some(owed.oldest_partition.map_or(candidate.partition_time, |t| t.min(candidate.partition_time)));
    }
    Ok(Debt { computed_at, tiers })
}
