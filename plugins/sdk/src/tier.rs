//! The tier-policy side of the SDK: the [`TierPolicy`] trait and its
//! plain-Rust types.

use crate::Timestamp;

/// One object of a partition, as listed by the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// Full storage key.
    pub path: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Last-modified time reported by the store.
    pub last_modified: Timestamp,
}

impl FileInfo {
    /// The file name: the key's last segment.
    pub fn name(&self) -> &str {
        crate::arc::file_name(&self.path)
    }
}

/// One partition of one measurement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Database name.
    pub database: String,
    /// Measurement name.
    pub measurement: String,
    /// Key prefix including the database, e.g. `db/cpu/2026/04/11/14`.
    pub path: String,
    /// UTC start of the partition's hour or day.
    pub time: Timestamp,
    /// Every listed object of the partition, sorted by key.
    pub files: Vec<FileInfo>,
}

impl Partition {
    /// The storage keys of every file.
    pub fn paths(&self) -> Vec<&str> {
        self.files.iter().map(|f| f.path.as_str()).collect()
    }
}

/// A group of files to merge into one output.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Candidate {
    /// Storage keys taken from the partition's listing.
    pub files: Vec<String>,
}

impl Candidate {
    /// A candidate carrying every file of `partition`, as Arc's tiers do.
    pub fn whole(partition: &Partition) -> Self {
        Self { files: partition.files.iter().map(|f| f.path.clone()).collect() }
    }
}

/// How the host groups files into partitions for a tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionLevel {
    /// `{db}/{measurement}/YYYY/MM/DD/HH`.
    Hour,
    /// `{db}/{measurement}/YYYY/MM/DD`, hour directories included.
    Day,
}

/// What a tier says about itself.
#[derive(Debug, Clone)]
pub struct TierInfo {
    /// Default tier name.
    pub name: String,
    /// One-line description.
    pub description: String,
    /// Partition grouping.
    pub partition_level: PartitionLevel,
    /// Output suffix without `_` or extension.
    pub output_suffix: String,
    /// The configured minimum number of files.
    pub min_files: u32,
    /// The configuration in effect after defaults.
    pub effective_config: serde_json::Value,
}

impl TierInfo {
    /// An hour-level tier named `name` whose outputs end in `_{name}.parquet`.
    pub fn hourly(name: &str, description: &str) -> Self {
        Self::new(name, description, PartitionLevel::Hour)
    }

    /// A day-level tier named `name` whose outputs end in `_{name}.parquet`.
    pub fn daily(name: &str, description: &str) -> Self {
        Self::new(name, description, PartitionLevel::Day)
    }

    fn new(name: &str, description: &str, partition_level: PartitionLevel) -> Self {
        Self {
            name: name.to_owned(),
            description: description.to_owned(),
            partition_level,
            output_suffix: name.to_owned(),
            min_files: 0,
            effective_config: serde_json::Value::Object(Default::default()),
        }
    }

    /// Sets the output suffix.
    pub fn with_output_suffix(mut self, suffix: &str) -> Self {
        self.output_suffix = suffix.to_owned();
        self
    }

    /// Sets the reported minimum file count (negative reports as 0).
    pub fn with_min_files(mut self, min_files: i64) -> Self {
        self.min_files = u32::try_from(min_files.max(0)).unwrap_or(u32::MAX);
        self
    }

    /// Sets the effective configuration shown to operators.
    pub fn with_effective_config(mut self, config: impl serde::Serialize) -> Self {
        self.effective_config = serde_json::to_value(config).unwrap_or_default();
        self
    }
}

/// A tier policy: which partitions to compact and which files go together.
///
/// Implement [`new`](Self::new), [`info`](Self::info),
/// [`is_compacted_file`](Self::is_compacted_file) and
/// [`should_compact`](Self::should_compact); the default
/// [`select_candidates`](Self::select_candidates) compacts the whole partition
/// when `should_compact` says so.
pub trait TierPolicy: Sized + 'static {
    /// The tier's `[tiers.config]` table. Use `#[serde(deny_unknown_fields)]`
    /// so a typo in the operator's config is an error naming the key.
    type Config: serde::de::DeserializeOwned;

    /// Builds the policy from its configuration, applying defaults.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// Describes the tier with the configuration in effect.
    fn info(&self) -> TierInfo;

    /// True when `name` is an output of this tier.
    fn is_compacted_file(&self, name: &str) -> bool;

    /// The decision on a partition's full list of keys.
    fn should_compact(&self, files: &[&str], partition_time: Timestamp, now: Timestamp) -> bool;

    /// The groups of files to compact in `partition` at `now`.
    fn select_candidates(&self, partition: &Partition, now: Timestamp) -> Vec<Candidate> {
        if self.should_compact(&partition.paths(), partition.time, now) { vec![Candidate::whole(partition)] } else { Vec::new() }
    }

    /// Why [`select_candidates`](Self::select_candidates) with the same
    /// arguments selects what it does, or nothing: one short sentence for
    /// `compactor plan --explain` ("9 of 10 files", "younger than the
    /// minimum age"). The default, empty, lets the host explain by probing
    /// the policy with later clocks.
    fn explain(&self, partition: &Partition, now: Timestamp) -> String {
        let _ = (partition, now);
        String::new()
    }
}
