//! An example tier policy: compact an hour once it holds `min_files` files
//! and is `min_age_minutes` old, skipping hours whose files are all already
//! compacted. About as small as a policy gets; read it with the SDK docs.

use compactor_plugin_sdk::{TierInfo, TierPolicy, Timestamp, export_tier_policy};
use serde::Deserialize;

/// The tier's `[tiers.config]` table. `deny_unknown_fields` turns a typo in
/// the operator's config into an error that names the key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Files an hour needs before it is compacted.
    pub min_files: usize,
    /// Minutes after the end of the hour before it is touched.
    pub min_age_minutes: i64,
}

impl Default for Config {
    fn default() -> Self {
        Self { min_files: 4, min_age_minutes: 30 }
    }
}

/// The policy: its configuration is all its state.
pub struct Example(Config);

impl TierPolicy for Example {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.min_files < 2 {
            return Err(format!("min_files: must be at least 2, got {}", config.min_files));
        }
        Ok(Self(config))
    }

    fn info(&self) -> TierInfo {
        TierInfo::hourly("example", "compacts an hour once it has a few files")
            .with_min_files(self.0.min_files as i64)
            .with_effective_config(serde_json_config(&self.0))
    }

    fn is_compacted_file(&self, name: &str) -> bool {
        name.ends_with("_example.parquet")
    }

    // The default `select_candidates` calls this with every file of the
    // partition and, when it says yes, compacts them all together.
    fn should_compact(&self, files: &[&str], partition_time: Timestamp, now: Timestamp) -> bool {
        let hour_end = partition_time.as_millis() + compactor_plugin_sdk::HOUR_MS;
        let old_enough = now.as_millis() - hour_end >= self.0.min_age_minutes * 60_000;
        let fresh = files.iter().filter(|f| !self.is_compacted_file(f)).count();
        old_enough && files.len() >= self.0.min_files && fresh > 0
    }
}

fn serde_json_config(config: &Config) -> compactor_plugin_sdk::serde_json::Value {
    compactor_plugin_sdk::serde_json::json!({ "min_files": config.min_files, "min_age_minutes": config.min_age_minutes })
}

export_tier_policy!(Example);
