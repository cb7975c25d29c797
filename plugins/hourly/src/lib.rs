//! Arc's hourly tier: compacts an hour partition once it is at least
//! `min_age_hours` old (never less than 1), no file name in it is newer than
//! that, and it holds at least `min_files` uncompacted files (default 10).

use compactor_plugin_sdk::arc::{self, HOURLY_SUFFIX};
use compactor_plugin_sdk::{Candidate, Level, Partition, TierInfo, TierPolicy, Timestamp, export_tier_policy, log};
use serde::{Deserialize, Serialize};

/// `[tiers.config]` of the hourly tier.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Minimum partition age in hours; values below 1 are raised to 1.
    min_age_hours: Option<i64>,
    /// Minimum uncompacted files; 0 means the default 10.
    min_files: Option<i64>,
}

pub struct Hourly {
    min_age_hours: i64,
    min_files: i64,
}

impl TierPolicy for Hourly {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let mut min_age_hours = config.min_age_hours.unwrap_or(0);
        if min_age_hours < 1 {
            if config.min_age_hours.is_some() {
                log(Level::Warn, &format!("min_age_hours {min_age_hours} would race ingestion; using 1"));
            }
            min_age_hours = 1;
        }
        let min_files = match config.min_files.unwrap_or(0) {
            0 => 10,
            n => n,
        };
        Ok(Self { min_age_hours, min_files })
    }

    fn info(&self) -> TierInfo {
        TierInfo::hourly("hourly", "Arc's hourly tier: merges the raw files of each hour")
            .with_output_suffix("compacted")
            .with_min_files(self.min_files)
            .with_effective_config(Config { min_age_hours: Some(self.min_age_hours), min_files: Some(self.min_files) })
    }

    fn is_compacted_file(&self, name: &str) -> bool {
        name.ends_with(HOURLY_SUFFIX)
    }

    fn should_compact(&self, files: &[&str], _: Timestamp, _: Timestamp) -> bool {
        arc::should_compact_by_count(files, self.min_files, HOURLY_SUFFIX, |f| !f.contains(HOURLY_SUFFIX))
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

impl Hourly {
    /// Arc's decision on the whole partition at `now`, and why: `Ok` to
    /// compact it, `Err` to leave it alone.
    fn decide(&self, partition: &Partition, now: Timestamp) -> Result<String, String> {
        let cutoff = now.minus_hours(self.min_age_hours);
        if partition.time > cutoff {
            let age_minutes = now.millis_since(partition.time).max(0) / 60_000;
            return Err(format!("younger than the minimum age ({age_minutes} of {} minutes)", self.min_age_hours * 60));
        }
        let paths = partition.paths();
        if arc::newest_file_time(paths.iter().copied()).is_some_and(|newest| newest > cutoff) {
            return Err(format!("newest file still being written (its name is less than {} h old)", self.min_age_hours));
        }
        let reason = arc::count_reason(&paths, self.min_files, HOURLY_SUFFIX, |f| !f.contains(HOURLY_SUFFIX));
        if self.should_compact(&paths, partition.time, now) { Ok(reason) } else { Err(reason) }
    }
}

export_tier_policy!(Hourly);
