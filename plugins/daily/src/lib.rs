//! Arc's daily tier: merges a day's hour-level files (raw or hourly outputs)
//! into one file in the day directory once the day is `min_age_hours` old
//! (default 24) and holds at least `min_files` of them (default 12). Days older
//! than `skip_file_age_check_days` (default 7) skip the recency guard, so
//! backfilled data is compacted too.

use compactor_plugin_sdk::arc::{self, DAILY_SUFFIX};
use compactor_plugin_sdk::{Candidate, DAY_MS, HOUR_MS, Partition, TierInfo, TierPolicy, Timestamp, export_tier_policy};
use serde::{Deserialize, Serialize};

/// `[tiers.config]` of the daily tier.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Minimum partition age in hours; 0 means the default 24.
    min_age_hours: Option<i64>,
    /// Minimum hour-level files; 0 means the default 12.
    min_files: Option<i64>,
    /// Days after which the recency guard is skipped; ≤ 0 means 7.
    skip_file_age_check_days: Option<i64>,
}

pub struct Daily {
    min_age_hours: i64,
    min_files: i64,
    skip_file_age_check_days: i64,
}

impl TierPolicy for Daily {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let or_default = |value: Option<i64>, default: i64| match value.unwrap_or(0) {
            0 => default,
            n => n,
        };
        Ok(Self {
            min_age_hours: or_default(config.min_age_hours, 24),
            min_files: or_default(config.min_files, 12),
            skip_file_age_check_days: config.skip_file_age_check_days.filter(|d| *d > 0).unwrap_or(7),
        })
    }

    fn info(&self) -> TierInfo {
        TierInfo::daily("daily", "Arc's daily tier: merges a day's hour-level files into the day directory")
            .with_min_files(self.min_files)
            .with_effective_config(Config {
                min_age_hours: Some(self.min_age_hours),
                min_files: Some(self.min_files),
                skip_file_age_check_days: Some(self.skip_file_age_check_days),
            })
    }

    fn is_compacted_file(&self, name: &str) -> bool {
        name.ends_with(DAILY_SUFFIX)
    }

    fn should_compact(&self, files: &[&str], _: Timestamp, _: Timestamp) -> bool {
        arc::should_compact_by_count(files, self.min_files, DAILY_SUFFIX, arc::is_hour_level)
    }

    fn select_candidates(&self, partition: &Partition, now: Timestamp) -> Vec<Candidate> {
        match self.decide(partition, now) {
            Ok(_) => vec![Candidate::whole(partition)],
            Err(_) => Vec::new(),
        }
    }

    fn explain(&self, partition: &Partition, now: Timestamp) -> String {
        self.decide(partition, now).unwrap_or_else(|waiting| waiting)
    }
}

impl Daily {
    /// Arc's decision on the whole day at `now`, and why: `Ok` to compact
    /// it, `Err` to leave it alone.
    fn decide(&self, partition: &Partition, now: Timestamp) -> Result<String, String> {
        let cutoff = now.minus_hours(self.min_age_hours);
        if partition.time > cutoff {
            let age_hours = now.millis_since(partition.time).max(0) / HOUR_MS;
            return Err(format!("younger than the minimum age ({age_hours} of {} hours)", self.min_age_hours));
        }
        let paths = partition.paths();
        let recent_enough_to_check = now.millis_since(partition.time) <= self.skip_file_age_check_days.saturating_mul(DAY_MS);
        if recent_enough_to_check && arc::newest_file_time(paths.iter().copied()).is_some_and(|newest| newest > cutoff) {
            return Err(format!("newest file still being written (its name is less than {} h old)", self.min_age_hours));
        }
        let reason = arc::count_reason(&paths, self.min_files, DAILY_SUFFIX, arc::is_hour_level);
        if self.should_compact(&paths, partition.time, now) { Ok(reason) } else { Err(reason) }
    }
}

export_tier_policy!(Daily);
