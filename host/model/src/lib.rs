//! The lake's vocabulary, shared by every crate of the engine and by plugin
//! hosts: partition paths and levels, listed files, byte sizes.
//!
//! It depends on nothing heavier than `chrono` and `serde`, so that the
//! plugin runtime and the example host can speak it without linking
//! `object_store` or DuckDB.

mod cost;
mod held;
mod partition;
pub mod units;

use chrono::{DateTime, Utc};

pub use cost::RequestCost;
pub use held::HeldFiles;
pub use partition::{Partition, PartitionLevel, PartitionPath, group_into_partitions};

/// The fewest files a job merges: one file alone cannot be compacted.
pub const MIN_BATCH_FILES: usize = 2;

/// A job's output name:
/// `{measurement}_{YYYYMMDD}_{HHMMSS}_{unixnanos}_b{batch}_{suffix}.parquet`.
/// The planner predicts outputs by it, the simulator names its own by it,
/// and the job writes its output under it.
pub fn output_name(measurement: &str, now: DateTime<Utc>, batch_number: usize, suffix: &str) -> String {
    format!("{measurement}_{}_{}_b{batch_number}_{suffix}.parquet", now.format("%Y%m%d_%H%M%S"), now.timestamp_nanos_opt().unwrap_or(0))
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// Storage key, relative to the store root.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last-modified time reported by the store.
    pub last_modified: DateTime<Utc>,
}

/// True for objects compaction may read: `*.parquet`, not hidden.
pub fn is_eligible_input(key: &str) -> bool {
    key.ends_with(".parquet") && !key.split('/').any(|segment| segment.starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_visible_parquet_is_input() {
        assert!(is_eligible_input("db/cpu/2026/01/01/00/a.parquet"));
        assert!(!is_eligible_input("db/cpu/2026/01/01/00/notes.txt"));
        assert!(!is_eligible_input("db/cpu/2026/01/01/00/.a.parquet"));
    }
}
