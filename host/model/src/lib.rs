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
pub use partition::{Partition, PartitionLevel, PartitionPath, group_into_partitions, in_partition_layout, partition_start};

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

/// An object a listing found that compaction leaves where it is: never
/// read, merged or deleted, and reported by name once per cycle.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct SetAside {
    /// The key as the store spells it (percent-encoded where it is not UTF-8).
    pub key: String,
    /// Why it is left alone.
    pub reason: String,
}

/// True for objects compaction may read: `*.parquet`, not hidden, and a
/// key Arc accepts ([`key_problem`]).
pub fn is_eligible_input(key: &str) -> bool {
    key.ends_with(".parquet") && !key.split('/').any(|segment| segment.starts_with('.')) && key_problem(key).is_none()
}

/// Longest key segment Arc accepts (#755: leaves room for its suffixes
/// within a file system's 255-byte name).
pub const MAX_KEY_SEGMENT_BYTES: usize = 250;
/// Longest key Arc accepts (#755: S3's 1,024 bytes less its suffixes).
pub const MAX_KEY_BYTES: usize = 1019;
/// The smallest Parquet file: `PAR1`, a footer length and `PAR1`.
const MIN_PARQUET_BYTES: u64 = 12;

/// Why compaction leaves the listed data object `file` (not hidden) where
/// it is, in words; `None` for an input it may read. These objects are
/// reported by name each cycle, never read, merged or deleted.
pub fn set_aside_reason(file: &FileMeta) -> Option<String> {
    if let Some(problem) = key_problem(&file.key) {
        return Some(problem);
    }
    if !file.key.ends_with(".parquet") {
        return Some("not a Parquet file (no `.parquet` suffix)".to_owned());
    }
    if file.size < MIN_PARQUET_BYTES {
        return Some(format!("too small to be a Parquet file ({} bytes)", file.size));
    }
    None
}

/// A control character (C1 included), and Arc's rules for keys it sets
/// aside (#755): a `\`, a segment over [`MAX_KEY_SEGMENT_BYTES`], a key
/// over [`MAX_KEY_BYTES`]. (The empty and
/// `.` segments it also refuses never reach here: the store cannot name
/// them, see `compactor_storage::SetAside`.)
pub fn key_problem(key: &str) -> Option<String> {
    // Any control character (C1 too, which object_store accepts): such a
    // name is never one a policy may return, nor safe to print.
    if key.chars().any(char::is_control) {
        return Some("its key has a control character".to_owned());
    }
    if key.contains('\\') {
        return Some("its key has a `\\`".to_owned());
    }
    if let Some(segment) = key.split('/').find(|s| s.len() > MAX_KEY_SEGMENT_BYTES) {
        return Some(format!("a segment of its key is {} bytes (at most {MAX_KEY_SEGMENT_BYTES})", segment.len()));
    }
    if key.len() > MAX_KEY_BYTES {
        return Some(format!("its key is {} bytes (at most {MAX_KEY_BYTES})", key.len()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_visible_parquet_is_input() {
        assert!(is_eligible_input("db/cpu/2026/01/01/00/a.parquet"));
        assert!(!is_eligible_input("db/cpu/2026/01/01/00/notes.txt"));
        assert!(!is_eligible_input("db/cpu/2026/01/01/00/.a.parquet"));
        assert!(!is_eligible_input("db/cpu/2026/01/01/00/a\\b.parquet"));
        assert!(!is_eligible_input(&format!("db/cpu/2026/01/01/00/{}.parquet", "x".repeat(243))));
        assert!(is_eligible_input(&format!("db/cpu/2026/01/01/00/{}.parquet", "x".repeat(242))));
        assert!(!is_eligible_input(&format!("db/cpu/{}/a.parquet", ["y"; 600].join("/"))));
    }

    #[test]
    fn set_aside_objects_say_why() {
        let file = |key: &str, size| FileMeta { key: key.into(), size, last_modified: DateTime::UNIX_EPOCH };
        assert_eq!(set_aside_reason(&file("db/m/2026/01/01/00/a.parquet", 400)), None);
        assert!(set_aside_reason(&file("db/m/2026/01/01/00/_SUCCESS", 0)).unwrap().contains("not a Parquet"));
        assert!(set_aside_reason(&file("db/m/2026/01/01/00/a.parquet", 0)).unwrap().contains("too small"));
        assert!(set_aside_reason(&file("db/m/2026/01/01/00/a\\b.parquet", 400)).unwrap().contains("`\\`"));
        // Adversarial run: a C1 control character was listed and then
        // refused in the policy's answer, failing its partition every cycle.
        assert!(set_aside_reason(&file("db/m/2026/01/01/00/\u{9b}31mx.parquet", 400)).unwrap().contains("control character"));
    }
}
