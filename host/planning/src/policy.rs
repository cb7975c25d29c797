//! What planning needs from a tier's policy, and its implementation by the
//! plugin runtime's components. Benchmarks implement it with native code.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use compactor_model::{Partition, PartitionLevel};
use compactor_runtime::{CallCounts, CallStats, PluginError, PluginLimits, TierDescription, TierInstance, TierPlugin};

/// What the planner needs from one configured policy instance.
pub trait PartitionPolicy {
    /// How the host groups files into partitions for this policy.
    fn partition_level(&self) -> PartitionLevel;

    /// Suffix of output names, e.g. `compacted`.
    fn output_suffix(&self) -> String;

    /// The minimum number of files the policy declares (0: none declared).
    fn min_files(&self) -> u32 {
        0
    }

    /// The groups of files to compact in `partition` at `now`.
    fn select_candidates(&mut self, partition: &Partition, now: DateTime<Utc>) -> Result<Vec<Vec<String>>, PluginError>;

    /// Why it selects what it does in `partition` at `now`, in its own
    /// words (none when it cannot say: the host explains then).
    fn explain(&mut self, _partition: &Partition, _now: DateTime<Utc>) -> Result<Option<String>, PluginError> {
        Ok(None)
    }
}

/// Makes configured policy instances: a loaded plugin, or native code in
/// benchmarks that compare the two.
pub trait PolicyFactory: Send + Sync {
    /// Display name for reports and errors.
    fn name(&self) -> &str;

    /// A fresh instance with `config_json` applied.
    fn instantiate(&self, config_json: &str, limits: PluginLimits) -> Result<Box<dyn PartitionPolicy>, PluginError>;

    /// SHA-256 of the component's bytes (empty for native code).
    fn content_hash(&self) -> &str {
        ""
    }

    /// The contract version the component was built against (none for
    /// native code).
    fn wit_version(&self) -> Option<String> {
        None
    }

    /// What its calls did so far, over every instance.
    fn call_counts(&self) -> CallCounts {
        self.call_stats().map(|s| s.read()).unwrap_or_default()
    }

    /// Its call counters (none for native code).
    fn call_stats(&self) -> Option<Arc<CallStats>> {
        None
    }

    /// What a configured instance says about itself (none for native code).
    fn describe(&self, _config_json: &str, _limits: PluginLimits) -> Result<Option<TierDescription>, PluginError> {
        Ok(None)
    }
}

impl PartitionPolicy for TierInstance {
    fn partition_level(&self) -> PartitionLevel {
        self.description().partition_level
    }

    fn output_suffix(&self) -> String {
        self.description().output_suffix.clone()
    }

    fn min_files(&self) -> u32 {
        self.description().min_files
    }

    fn select_candidates(&mut self, partition: &Partition, now: DateTime<Utc>) -> Result<Vec<Vec<String>>, PluginError> {
        TierInstance::select_candidates(self, partition, now)
    }

    fn explain(&mut self, partition: &Partition, now: DateTime<Utc>) -> Result<Option<String>, PluginError> {
        TierInstance::explain(self, partition, now)
    }
}

impl PolicyFactory for TierPlugin {
    fn name(&self) -> &str {
        TierPlugin::name(self)
    }

    fn instantiate(&self, config_json: &str, limits: PluginLimits) -> Result<Box<dyn PartitionPolicy>, PluginError> {
        Ok(Box::new(TierPlugin::instantiate(self, config_json, limits)?))
    }

    fn content_hash(&self) -> &str {
        TierPlugin::content_hash(self)
    }

    fn wit_version(&self) -> Option<String> {
        Some(self.contract().wit_version.to_string())
    }

    fn call_stats(&self) -> Option<Arc<CallStats>> {
        Some(TierPlugin::call_stats(self))
    }

    fn describe(&self, config_json: &str, limits: PluginLimits) -> Result<Option<TierDescription>, PluginError> {
        Ok(Some(TierPlugin::instantiate(self, config_json, limits)?.description().clone()))
    }
}
