//! A tier policy to copy and start from: compact an hour when its small
//! files add up to more than a byte budget — but never during the busy hours
//! of the day, when queries need the I/O — and leave the current hour alone.
//!
//! Copy this directory, rename the package, change `decide`, and keep the
//! tests and fixtures honest. Build, test and try it:
//!
//! ```text
//! cargo build --release --target wasm32-wasip2 --manifest-path examples/policy-template/Cargo.toml
//! cargo test --manifest-path examples/policy-template/Cargo.toml
//! compactor plugin test examples/policy-template/target/wasm32-wasip2/release/policy_template.wasm \
//!     --fixtures examples/policy-template/fixtures
//! ```

use compactor_plugin_sdk::{Candidate, HOUR_MS, Partition, TierInfo, TierPolicy, Timestamp, export_tier_policy};
use serde::{Deserialize, Serialize};

/// The tier's `[tiers.config]` table. `deny_unknown_fields` turns a typo in
/// the operator's config into an error that names the key.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// A file smaller than this is "small" (bytes).
    pub small_file_bytes: u64,
    /// Compact an hour once its small files add up to more than this (bytes).
    pub budget_bytes: u64,
    /// UTC hours (0–23) during which nothing is compacted.
    pub busy_hours: Vec<u32>,
    /// Minutes after the end of an hour before it is touched.
    pub min_age_minutes: i64,
}

impl Default for Config {
    fn default() -> Self {
        Self { small_file_bytes: 16 << 20, budget_bytes: 64 << 20, busy_hours: Vec::new(), min_age_minutes: 60 }
    }
}

/// Output names end in `_budget.parquet`.
pub const OUTPUT_SUFFIX: &str = "budget";

/// The policy: its configuration is all its state.
pub struct Budget(Config);

/// What the policy decides about one partition, and why (kept as data so
/// that tests can assert on the reason, not only the answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Compact these files.
    Compact(Vec<String>),
    /// Not now, for this reason.
    Wait(&'static str),
}

impl Budget {
    /// The decision for `partition` at `now`.
    pub fn decide(&self, partition: &Partition, now: Timestamp) -> Decision {
        let config = &self.0;
        let hour_of_day = ((now.as_millis().rem_euclid(24 * HOUR_MS)) / HOUR_MS) as u32;
        if config.busy_hours.contains(&hour_of_day) {
            return Decision::Wait("busy hour");
        }
        let hour_end = partition.time.as_millis() + HOUR_MS;
        if now.as_millis() - hour_end < config.min_age_minutes * 60_000 {
            return Decision::Wait("younger than min_age_minutes");
        }
        // Small files, this tier's own outputs included: a small output merges
        // again with what arrives later, a large one is left alone. One file
        // alone is never "compacted", so an hour converges to one output.
        let small: Vec<&compactor_plugin_sdk::FileInfo> =
            partition.files.iter().filter(|f| f.size_bytes < config.small_file_bytes).collect();
        if small.len() < 2 {
            return Decision::Wait("fewer than 2 small files");
        }
        let small_bytes: u64 = small.iter().map(|f| f.size_bytes).sum();
        if small_bytes <= config.budget_bytes {
            return Decision::Wait("small files within budget_bytes");
        }
        Decision::Compact(small.iter().map(|f| f.path.clone()).collect())
    }
}

impl TierPolicy for Budget {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if let Some(hour) = config.busy_hours.iter().find(|h| **h > 23) {
            return Err(format!("busy_hours: {hour} is not an hour of the day (0 to 23)"));
        }
        if config.budget_bytes == 0 || config.small_file_bytes == 0 {
            return Err("budget_bytes and small_file_bytes must be positive".into());
        }
        if config.min_age_minutes < 0 {
            return Err(format!("min_age_minutes: must not be negative, got {}", config.min_age_minutes));
        }
        Ok(Self(config))
    }

    fn info(&self) -> TierInfo {
        TierInfo::hourly("budget", "compacts an hour's small files once they exceed a byte budget, outside busy hours")
            .with_output_suffix(OUTPUT_SUFFIX)
            .with_min_files(2)
            .with_effective_config(&self.0)
    }

    fn is_compacted_file(&self, name: &str) -> bool {
        name.ends_with("_budget.parquet")
    }

    fn should_compact(&self, _files: &[&str], _partition_time: Timestamp, _now: Timestamp) -> bool {
        // Sizes decide, so `select_candidates` below does the work.
        false
    }

    fn select_candidates(&self, partition: &Partition, now: Timestamp) -> Vec<Candidate> {
        match self.decide(partition, now) {
            Decision::Compact(files) => vec![Candidate { files }],
            Decision::Wait(_) => Vec::new(),
        }
    }

    /// What `compactor plan --explain` shows for a partition: the same
    /// decision, in words.
    fn explain(&self, partition: &Partition, now: Timestamp) -> String {
        match self.decide(partition, now) {
            Decision::Compact(files) => format!("{} small files over budget_bytes", files.len()),
            Decision::Wait(reason) => reason.to_owned(),
        }
    }
}

export_tier_policy!(Budget);

#[cfg(test)]
mod tests {
    use super::*;
    use compactor_plugin_sdk::FileInfo;

    const MIB: u64 = 1 << 20;
    /// 2026-04-11T14:00:00Z.
    const HOUR_14: i64 = 1_775_916_000_000;

    fn hour(sizes: &[u64]) -> Partition {
        let path = "db/cpu/2026/04/11/14".to_owned();
        let files = sizes
            .iter()
            .enumerate()
            .map(|(i, size)| FileInfo {
                path: format!("{path}/cpu_20260411_14{i:02}00_{i:09}.parquet"),
                size_bytes: *size,
                last_modified: Timestamp::from_millis(HOUR_14),
            })
            .collect();
        Partition { database: "db".into(), measurement: "cpu".into(), path, time: Timestamp::from_millis(HOUR_14), files }
    }

    fn policy(config: Config) -> Budget {
        Budget::new(config).unwrap()
    }

    /// 17:00, three hours after the partition's start.
    const LATER: Timestamp = Timestamp::from_millis(HOUR_14 + 3 * HOUR_MS);

    #[test]
    fn small_files_over_budget_are_compacted_and_large_ones_left_alone() {
        let p = policy(Config::default());
        let mut sizes = vec![8 * MIB; 10];
        sizes.push(200 * MIB);
        match p.decide(&hour(&sizes), LATER) {
            Decision::Compact(files) => assert_eq!(files.len(), 10),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn within_budget_waits() {
        assert_eq!(policy(Config::default()).decide(&hour(&[8 * MIB; 4]), LATER), Decision::Wait("small files within budget_bytes"));
    }

    #[test]
    fn busy_hours_wait_whatever_the_files() {
        let p = policy(Config { busy_hours: vec![17], ..Config::default() });
        assert_eq!(p.decide(&hour(&[8 * MIB; 20]), LATER), Decision::Wait("busy hour"));
    }

    #[test]
    fn the_current_hour_waits() {
        let during = Timestamp::from_millis(HOUR_14 + 30 * 60_000);
        assert_eq!(policy(Config::default()).decide(&hour(&[8 * MIB; 20]), during), Decision::Wait("younger than min_age_minutes"));
    }

    #[test]
    fn one_output_alone_is_a_fixed_point() {
        // After a compaction the hour holds one (small) output: never again.
        assert_eq!(policy(Config::default()).decide(&hour(&[15 * MIB]), LATER), Decision::Wait("fewer than 2 small files"));
    }

    #[test]
    fn explain_says_what_decide_decided() {
        let p = policy(Config::default());
        assert_eq!(p.explain(&hour(&[8 * MIB; 10]), LATER), "10 small files over budget_bytes");
        assert_eq!(p.explain(&hour(&[8 * MIB; 4]), LATER), "small files within budget_bytes");
    }

    #[test]
    fn bad_configs_are_refused_naming_the_key() {
        let error = Budget::new(Config { busy_hours: vec![24], ..Config::default() }).err().unwrap();
        assert!(error.contains("busy_hours"), "{error}");
        let error = Budget::new(Config { min_age_minutes: -5, ..Config::default() }).err().unwrap();
        assert!(error.contains("min_age_minutes"), "{error}");
    }
}
