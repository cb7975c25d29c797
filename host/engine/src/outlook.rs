//! "When will my partition be compacted, and why not yet?": for each
//! partition of one measurement, which tier takes it next, the earliest time
//! its policy selects it, the first scheduled run after that, and why it is
//! not compacted now.
//!
//! The policies are asked, not imitated: the earliest time is found by
//! calling a tier's policy with later and later clocks (coarse steps up to a
//! week, then halving to the minute) over the partition's current files.
//! That works for any component, built-in or not. It assumes a policy that
//! selects a partition at time `t` still selects it later, which holds for
//! age rules; a policy that is not monotone gets the first time found.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::config::Config;
use compactor_model::HeldFiles;
use compactor_model::{FileMeta, PartitionLevel, group_into_partitions};
use compactor_planning::PlannedTier;
use compactor_planning::probe::{Verdict, earliest, not_selected_reason};

/// At most this many partitions are described per request (the newest).
pub(crate) const MAX_PARTITIONS: usize = 1000;

/// One partition (an hour, or a day's files outside its hours) and its
/// outlook.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionOutlook {
    /// Partition key prefix.
    pub partition_path: String,
    /// UTC start of the hour or day.
    pub partition_time: DateTime<Utc>,
    /// `hour` or `day`.
    pub level: &'static str,
    /// Files in it now.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Files held by a recovery manifest (an interrupted job).
    pub held_files: usize,
    /// The tier that would compact it next (none within a week).
    pub next_tier: Option<String>,
    /// The earliest time that tier's policy selects it (now if it does).
    pub eligible_at: Option<DateTime<Utc>>,
    /// The first scheduled run of that tier at or after `eligible_at`.
    pub next_run_at: Option<DateTime<Utc>>,
    /// Why it is not compacted yet, in words.
    pub reason: String,
    /// What each enabled tier says.
    pub tiers: Vec<TierOutlook>,
}

/// What one tier says about one partition.
#[derive(Debug, Clone, Serialize)]
pub struct TierOutlook {
    /// Tier name.
    pub tier: String,
    /// The partition the tier groups it into (its hour or its day).
    pub tier_partition: String,
    /// Whether the policy selects some of its files now.
    pub selected_now: bool,
    /// The earliest time the policy selects some of its files.
    pub eligible_at: Option<DateTime<Utc>>,
    /// How many of its files are selected then.
    pub files_selected: usize,
    /// The tier's verdict in words.
    pub reason: String,
}

/// One enabled tier's verdicts over the request's partitions.
struct TierView {
    name: String,
    schedule: Option<cron::Schedule>,
    verdicts: HashMap<String, Verdict>,
    load_error: Option<String>,
    suffix: String,
}

/// The input of [`outlook`]: one measurement's files and the engine's tiers.
pub struct OutlookRequest<'a> {
    /// Database.
    pub database: &'a str,
    /// Measurement.
    pub measurement: &'a str,
    /// The measurement's files.
    pub files: &'a [FileMeta],
    /// Partitions starting before this are left out.
    pub from: Option<DateTime<Utc>>,
    /// Partitions starting at or after this are left out.
    pub to: Option<DateTime<Utc>>,
    /// The time the policies see as now.
    pub now: DateTime<Utc>,
    /// Files held by recovery manifests (none known: `None`).
    pub held: Option<&'a HeldFiles>,
}

/// Describes every partition of the request (the newest [`MAX_PARTITIONS`];
/// the flag says whether older ones were left out). Plugin calls block: run
/// it off the async runtime's threads.
pub(crate) fn outlook(config: &Config, tiers: &[PlannedTier], request: &OutlookRequest<'_>) -> (Vec<PartitionOutlook>, bool) {
    let (mut entries, truncated) = entries(request);
    let mut tier_views = Vec::new();
    for tier in tiers.iter().filter(|t| t.enabled) {
        let schedule = config.tier(&tier.id()).map(|t| t.schedule.clone());
        let mut view = TierView { name: tier.name.clone(), schedule, verdicts: HashMap::new(), load_error: None, suffix: String::new() };
        let instance = tier
            .policy
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|p| p.instantiate(&tier.config_json, tier.limits).map_err(|e| e.to_string()));
        match instance {
            Ok(mut instance) => {
                view.suffix = instance.output_suffix();
                let partitions = group_into_partitions(request.database, request.measurement, request.files, instance.partition_level());
                for partition in partitions.iter().filter(|p| entries.iter().any(|e| contains(&p.path, &e.outlook.partition_path))) {
                    view.verdicts.insert(partition.path.clone(), earliest(instance.as_mut(), partition, request.now));
                }
            }
            Err(error) => view.load_error = Some(error),
        }
        tier_views.push(view);
    }
    for entry in &mut entries {
        let keys: HashSet<&str> = entry.keys.iter().map(String::as_str).collect();
        let held = request.held.map_or(0, |held| entry.keys.iter().filter(|k| held.contains(k)).count());
        entry.outlook.held_files = held;
        let mut best: Option<(DateTime<Utc>, usize)> = None;
        for (index, TierView { name: tier, verdicts, load_error, suffix, .. }) in tier_views.iter().enumerate() {
            let found = verdicts.iter().find(|(path, _)| contains(path, &entry.outlook.partition_path));
            let view = match (found, load_error) {
                (None, Some(error)) => tier_view(tier, "", None, 0, request.now, format!("its policy cannot run: {error}")),
                (None, None) => {
                    tier_view(tier, "", None, 0, request.now, "its policy does not group these files (a different level)".into())
                }
                (Some((path, verdict)), _) => {
                    let selected = verdict.selected.iter().filter(|k| keys.contains(k.as_str())).count();
                    let eligible_at = verdict.eligible_at.filter(|_| selected > 0);
                    let reason = match (&verdict.error, eligible_at) {
                        (Some(error), _) => format!("its policy failed: {error}"),
                        (None, Some(at)) if at <= request.now => format!("selects {selected} of {} files now", entry.outlook.files),
                        (None, Some(at)) => format!("selects {selected} of {} files from {}", entry.outlook.files, at.to_rfc3339()),
                        (None, None) => not_selected_reason(&entry.keys, suffix),
                    };
                    if let Some(at) = eligible_at
                        && best.is_none_or(|(earliest, _)| at < earliest)
                    {
                        best = Some((at, index));
                    }
                    tier_view(tier, path, eligible_at, selected, request.now, reason)
                }
            };
            entry.outlook.tiers.push(view);
        }
        let outlook = &mut entry.outlook;
        match best {
            Some((at, index)) => {
                let TierView { name: tier, schedule, .. } = &tier_views[index];
                outlook.next_tier = Some(tier.clone());
                outlook.eligible_at = Some(at);
                outlook.next_run_at = schedule.as_ref().and_then(|s| s.after(&(at - Duration::seconds(1))).next());
                let run =
                    outlook.next_run_at.map_or_else(|| "no scheduled run".to_owned(), |t| format!("its next run is at {}", t.to_rfc3339()));
                outlook.reason = if held > 0 {
                    format!("{held} of its files are held by a recovery manifest (an interrupted job); recovery resolves them first")
                } else if at <= request.now {
                    format!("eligible now for {tier}; {run}")
                } else {
                    format!(
                        "not yet eligible: {tier}'s policy selects it from {} (e.g. the partition is younger than its minimum age); {run}",
                        at.to_rfc3339()
                    )
                };
            }
            None if outlook.tiers.is_empty() => outlook.reason = "no tier is enabled".to_owned(),
            None => {
                let verdicts: Vec<String> = outlook.tiers.iter().map(|t| format!("{}: {}", t.tier, t.reason)).collect();
                outlook.reason = format!("no tier selects it within 7 days as its files stand ({})", verdicts.join("; "));
            }
        }
    }
    (entries.into_iter().map(|e| e.outlook).collect(), truncated)
}

fn tier_view(
    tier: &str,
    path: &str,
    eligible_at: Option<DateTime<Utc>>,
    selected: usize,
    now: DateTime<Utc>,
    reason: String,
) -> TierOutlook {
    TierOutlook {
        tier: tier.to_owned(),
        tier_partition: path.to_owned(),
        selected_now: eligible_at.is_some_and(|at| at <= now),
        eligible_at,
        files_selected: selected,
        reason,
    }
}

/// Whether `partition` (a tier's grouping) contains the entry at `path`.
fn contains(partition: &str, path: &str) -> bool {
    path == partition || path.strip_prefix(partition).is_some_and(|rest| rest.starts_with('/'))
}

/// The outlook of `database`/`measurement`'s partitions in `storage`
/// starting in `[from, to)` (see [`outlook`]), at `now`, asked of `tiers`
/// (the callable ones; only those of the database's tenant look at it).
/// Empty when the measurement has no files.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn partition_outlook(
    storage: &compactor_storage::Storage,
    config: &Config,
    mut tiers: Vec<PlannedTier>,
    database: &str,
    measurement: &str,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(Vec<PartitionOutlook>, bool), compactor_storage::StorageError> {
    let files = crate::planner::list_measurement(storage, database, measurement).await?.0.files;
    let held = match compactor_job::ManifestStore::new(storage.clone()).held_files().await {
        Ok(held) => Some(held),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the recovery manifests; the outlook does not show held files");
            None
        }
    };
    let config = config.clone();
    let owner = config.tenant_of(database).map(|t| t.name.clone());
    tiers.retain(|t| t.tenant == owner);
    let (database, measurement) = (database.to_owned(), measurement.to_owned());
    // Plugin calls block; WASI host calls must not run on the runtime's threads.
    let described = tokio::task::spawn_blocking(move || {
        let request = OutlookRequest { database: &database, measurement: &measurement, files: &files, from, to, now, held: held.as_ref() };
        outlook(&config, &tiers, &request)
    })
    .await;
    Ok(described.unwrap_or_else(|e| {
        tracing::error!(error = %e, "the partition outlook failed (a bug in compactor)");
        (Vec::new(), false)
    }))
}

/// A partition being described, with its file keys.
struct Entry {
    keys: Vec<String>,
    outlook: PartitionOutlook,
}

/// The hours of the request, and each day's files that lie outside its
/// hours (e.g. daily outputs), newest last.
fn entries(request: &OutlookRequest<'_>) -> (Vec<Entry>, bool) {
    let hours = group_into_partitions(request.database, request.measurement, request.files, PartitionLevel::Hour);
    let in_hours: HashSet<&str> = hours.iter().flat_map(|p| p.files.iter().map(|f| f.key.as_str())).collect();
    let day_files: Vec<FileMeta> = request.files.iter().filter(|f| !in_hours.contains(f.key.as_str())).cloned().collect();
    let days = group_into_partitions(request.database, request.measurement, &day_files, PartitionLevel::Day);
    let mut all: BTreeMap<(DateTime<Utc>, String), Entry> = BTreeMap::new();
    for (partition, level) in hours.into_iter().map(|p| (p, "hour")).chain(days.into_iter().map(|p| (p, "day"))) {
        if request.from.is_some_and(|from| partition.time < from) || request.to.is_some_and(|to| partition.time >= to) {
            continue;
        }
        let outlook = PartitionOutlook {
            partition_path: partition.path.clone(),
            partition_time: partition.time,
            level,
            files: partition.files.len(),
            bytes: partition.total_bytes(),
            held_files: 0,
            next_tier: None,
            eligible_at: None,
            next_run_at: None,
            reason: String::new(),
            tiers: Vec::new(),
        };
        let keys = partition.files.iter().map(|f| f.key.clone()).collect();
        all.insert((partition.time, partition.path), Entry { keys, outlook });
    }
    let skip = all.len().saturating_sub(MAX_PARTITIONS);
    (all.into_values().skip(skip).collect(), skip > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn file(key: &str) -> FileMeta {
        FileMeta { key: key.into(), size: 10, last_modified: Utc.with_ymd_and_hms(2026, 4, 11, 12, 0, 0).unwrap() }
    }

    fn outlook_at(files: &[FileMeta], now: DateTime<Utc>) -> Vec<PartitionOutlook> {
        let config = Config::parse("[storage]\nurl = \"memory://\"\n").unwrap();
        let cache = tempfile::tempdir().unwrap();
        let runtime = crate::plugin_runtime(cache.path().to_path_buf()).unwrap();
        let tiers = crate::planner::load_tiers(&config, &runtime);
        let request = OutlookRequest { database: "db", measurement: "cpu", files, from: None, to: None, now, held: None };
        outlook(&config, &tiers, &request).0
    }

    #[test]
    fn a_young_hour_waits_for_the_hourly_minimum_age_then_the_next_firing() {
        let files: Vec<FileMeta> = (0..12).map(|i| file(&format!("db/cpu/2026/04/11/14/cpu_20260411_14{i:02}00_1.parquet"))).collect();
        // Arc's hourly tier: an hour is compacted once it is an hour old.
        let now = Utc.with_ymd_and_hms(2026, 4, 11, 14, 30, 0).unwrap();
        let outlook = outlook_at(&files, now);
        assert_eq!(outlook.len(), 1);
        let hour = &outlook[0];
        assert_eq!(hour.next_tier.as_deref(), Some("hourly"), "{hour:#?}");
        let eligible = hour.eligible_at.unwrap();
        assert!(eligible > now, "{hour:#?}");
        assert!(hour.next_run_at.unwrap() >= eligible, "{hour:#?}");
        assert!(hour.reason.starts_with("not yet eligible"), "{}", hour.reason);
        // Later, it is eligible now.
        let later = outlook_at(&files, eligible + Duration::minutes(1));
        assert!(later[0].reason.starts_with("eligible now for hourly"), "{}", later[0].reason);
        assert!(later[0].tiers[0].selected_now);
    }

    #[test]
    fn a_single_file_is_never_selected_and_says_why() {
        let files = [file("db/cpu/2026/04/11/14/cpu_20260411_140000_1.parquet")];
        let outlook = outlook_at(&files, Utc.with_ymd_and_hms(2026, 4, 20, 0, 0, 0).unwrap());
        assert_eq!(outlook[0].next_tier, None);
        assert!(outlook[0].reason.contains("a merge needs at least 2"), "{}", outlook[0].reason);
    }
}
