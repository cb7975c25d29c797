//! A size-aware tier that is not Arc's: it bin-packs a partition's small
//! files into groups of about `target_file_size_mb`, the way Iceberg's and
//! delta-rs' `optimize` plan, so outputs come out near one size whatever the
//! ingest rate. Files already at least `small_file_threshold_mb` are left
//! alone; a bin needs `min_files` files to be worth a rewrite.

use compactor_plugin_sdk::{Candidate, Partition, PartitionLevel, TierInfo, TierPolicy, Timestamp, export_tier_policy};
use serde::{Deserialize, Serialize};

pub const MB: u64 = 1024 * 1024;

/// `[tiers.config]` of the bin-packing tier.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Target output size in MiB.
    target_file_size_mb: u64,
    /// Files at least this large (MiB) are considered done; default 3/4 of the target.
    small_file_threshold_mb: Option<u64>,
    /// Minimum files per bin (at least 2).
    min_files: u32,
    /// Minimum partition age in hours before packing.
    min_age_hours: i64,
    /// `hour` or `day`.
    partition_level: String,
    /// Output suffix, without `_` or extension.
    output_suffix: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            target_file_size_mb: 128,
            small_file_threshold_mb: None,
            min_files: 2,
            min_age_hours: 1,
            partition_level: "hour".into(),
            output_suffix: "packed".into(),
        }
    }
}

pub struct BinPack {
    config: Config,
    level: PartitionLevel,
    target_bytes: u64,
    small_bytes: u64,
}

impl BinPack {
    /// Small files in key order (time order for Arc's names), greedily packed
    /// into bins of at most `target_bytes`; bins too small to be worth a
    /// rewrite are dropped.
    fn bins(&self, partition: &Partition) -> Vec<Candidate> {
        let mut bins = Vec::new();
        let (mut bin, mut bin_bytes) = (Vec::new(), 0u64);
        let suffix = format!("_{}.parquet", self.config.output_suffix);
        for file in partition.files.iter().filter(|f| f.size_bytes < self.small_bytes && !f.path.ends_with(&suffix)) {
            if !bin.is_empty() && bin_bytes + file.size_bytes > self.target_bytes {
                bins.push(Candidate { files: std::mem::take(&mut bin) });
                bin_bytes = 0;
            }
            bin.push(file.path.clone());
            bin_bytes += file.size_bytes;
        }
        bins.push(Candidate { files: bin });
        bins.retain(|b| b.files.len() >= self.config.min_files as usize);
        bins
    }
}

impl TierPolicy for BinPack {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let level = match config.partition_level.as_str() {
            "hour" => PartitionLevel::Hour,
            "day" => PartitionLevel::Day,
            other => return Err(format!("partition_level: expected \"hour\" or \"day\", got {other:?}")),
        };
        if config.target_file_size_mb == 0 {
            return Err("target_file_size_mb: must be at least 1".into());
        }
        if config.min_files < 2 {
            return Err(format!("min_files: must be at least 2, got {}", config.min_files));
        }
        if config.output_suffix.is_empty() || !config.output_suffix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(format!("output_suffix: letters, digits and '-' only, got {:?}", config.output_suffix));
        }
        let target_bytes = config.target_file_size_mb * MB;
        let small_bytes = config.small_file_threshold_mb.map_or(target_bytes / 4 * 3, |mb| mb * MB);
        Ok(Self { config, level, target_bytes, small_bytes })
    }

    fn info(&self) -> TierInfo {
        let info = match self.level {
            PartitionLevel::Hour => TierInfo::hourly("binpack", "bin-packs small files into outputs of a target size"),
            PartitionLevel::Day => TierInfo::daily("binpack", "bin-packs small files into outputs of a target size"),
        };
        info.with_output_suffix(&self.config.output_suffix)
            .with_min_files(i64::from(self.config.min_files))
            .with_effective_config(&self.config)
    }

    fn is_compacted_file(&self, name: &str) -> bool {
        name.strip_suffix(".parquet").is_some_and(|stem| stem.ends_with(&format!("_{}", self.config.output_suffix)))
    }

    fn should_compact(&self, files: &[&str], partition_time: Timestamp, now: Timestamp) -> bool {
        let uncompacted = files.iter().filter(|f| !self.is_compacted_file(f)).count();
        partition_time <= now.minus_hours(self.config.min_age_hours) && uncompacted >= self.config.min_files as usize
    }

    fn select_candidates(&self, partition: &Partition, now: Timestamp) -> Vec<Candidate> {
        if partition.time > now.minus_hours(self.config.min_age_hours) {
            return Vec::new();
        }
        self.bins(partition)
    }
}

export_tier_policy!(BinPack);
