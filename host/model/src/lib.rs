//! The lake's vocabulary, shared by every crate of the engine and by plugin
//! hosts: partition paths and levels, listed files, byte sizes.
//!
//! It depends on nothing heavier than `chrono` and `serde`, so that the
//! plugin runtime and the example host can speak it without linking
//! `object_store` or DuckDB.

mod partition;
pub mod units;

use chrono::{DateTime, Utc};

pub use partition::{Partition, PartitionLevel, group_into_partitions};

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
