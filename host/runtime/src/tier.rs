//! `WasmTier`: a tier-policy component behind a plain-Rust interface.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::PluginLimits;
use crate::bindings::explained::exports::compactor::policy::explain::{Guest as Explain, GuestIndices as ExplainIndices};
use crate::bindings::tier::{TierPolicy, TierPolicyIndices};
use crate::bindings::types;
use crate::contract::Contract;
use crate::output::sanitize;
use crate::sandbox::{CallCounts, CallStats, Sandbox};
use crate::{PluginError, PluginRuntime, World, wrong_world};
use compactor_model::{Partition, PartitionLevel};

/// What a tier policy says about itself, after `configure`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TierDescription {
    /// The policy's default tier name.
    pub name: String,
    /// One-line description.
    pub description: String,
    /// How the host groups files for it.
    pub partition_level: PartitionLevel,
    /// Suffix of output names, e.g. `compacted`.
    pub output_suffix: String,
    /// Its minimum number of files.
    pub min_files: u32,
    /// Its configuration after defaults.
    pub effective_config: serde_json::Value,
}

/// A loaded tier-policy component, pre-instantiated: instances are cheap.
#[derive(Clone)]
pub struct TierPlugin {
    name: Arc<str>,
    contract: Contract,
    content_hash: Arc<str>,
    calls: Arc<CallStats>,
    engine: &'static wasmtime::Engine,
    pre: wasmtime::component::InstancePre<crate::PluginState>,
    indices: TierPolicyIndices,
    /// The `explain` export of a 1.1.0 component (none for 1.0.0).
    explain: Option<ExplainIndices>,
}

impl TierPlugin {
    pub(crate) fn new(runtime: &PluginRuntime, loaded: crate::LoadedComponent) -> Result<Self, PluginError> {
        if loaded.contract.world != World::TierPolicy {
            return Err(wrong_world(&loaded, World::TierPolicy));
        }
        let pre = runtime.instantiate_pre(&loaded)?;
        let indices = TierPolicyIndices::new(&pre).map_err(|e| PluginError::Incompatible {
            plugin: loaded.name.to_string(),
            reason: format!("does not match the tier-policy world: {e:#}"),
        })?;
        let explain = if loaded.contract.exports_explain {
            Some(ExplainIndices::new(&pre).map_err(|e| PluginError::Incompatible {
                plugin: loaded.name.to_string(),
                reason: format!(
                    "exports {}/explain, but not as the explained-tier-policy world defines it: {e:#}",
                    crate::contract::WIT_PACKAGE
                ),
            })?)
        } else {
            None
        };
        Ok(Self {
            name: loaded.name,
            contract: loaded.contract,
            content_hash: loaded.content_hash.into(),
            calls: Arc::default(),
            engine: runtime.engine,
            pre,
            indices,
            explain,
        })
    }

    /// The plugin's display name (`builtin:hourly` or its path).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the contract check found.
    pub fn contract(&self) -> &Contract {
        &self.contract
    }

    /// SHA-256 of the component's bytes, hex.
    pub fn content_hash(&self) -> &str {
        &self.content_hash
    }

    /// What the calls of every instance made from this plugin did so far.
    pub fn call_counts(&self) -> CallCounts {
        self.calls.read()
    }

    /// The counters themselves: they keep counting while an instance made
    /// from this plugin runs, even after the plugin was replaced.
    pub fn call_stats(&self) -> Arc<CallStats> {
        self.calls.clone()
    }

    /// Creates a store and instantiates the component without configuring
    /// it, then drops both: the bare cost of a fresh instance.
    pub fn instantiate_bare(&self, limits: PluginLimits) -> Result<(), PluginError> {
        self.fresh(limits).map(drop)
    }

    /// Whether the component explains its decisions (WIT 1.1.0's `explain`).
    pub fn explains(&self) -> bool {
        self.explain.is_some()
    }

    fn fresh(&self, limits: PluginLimits) -> Result<(Sandbox, Bindings), PluginError> {
        let mut sandbox = Sandbox::new(self.engine, self.name.clone(), limits, self.calls.clone());
        let bindings = sandbox.call("instantiate", |store| {
            let instance = self.pre.instantiate(&mut *store)?;
            let tier = self.indices.load(&mut *store, &instance)?;
            let explain = self.explain.as_ref().map(|indices| indices.load(&mut *store, &instance)).transpose()?;
            Ok(Bindings { tier, explain })
        })?;
        Ok((sandbox, bindings))
    }

    /// A fresh instance with `config_json` applied and its description read.
    pub fn instantiate(&self, config_json: &str, limits: PluginLimits) -> Result<TierInstance, PluginError> {
        let (mut sandbox, bindings) = self.fresh(limits)?;
        let tier = bindings.tier.compactor_policy_tier();
        sandbox
            .call("configure", |store| tier.call_configure(store, config_json))?
            .map_err(|message| PluginError::Config { plugin: self.name.to_string(), message: sanitize(&message, MAX_MESSAGE) })?;
        let info = sandbox.call("info", |store| tier.call_info(store))?;
        let effective_config = if info.effective_config.len() > MAX_EFFECTIVE_CONFIG {
            serde_json::Value::String(sanitize(&info.effective_config, 256))
        } else {
            serde_json::from_str(&info.effective_config)
                .map(sanitize_json)
                .unwrap_or_else(|_| serde_json::Value::String(sanitize(&info.effective_config, 256)))
        };
        let description = TierDescription {
            name: sanitize(&info.name, MAX_NAME),
            description: sanitize(&info.description, MAX_MESSAGE),
            partition_level: match info.partition_level {
                types::PartitionLevel::Hour => PartitionLevel::Hour,
                types::PartitionLevel::Day => PartitionLevel::Day,
            },
            output_suffix: info.output_suffix,
            min_files: info.min_files,
            effective_config,
        };
        validate_suffix(&self.name, &description.output_suffix)?;
        Ok(TierInstance { sandbox, bindings, description })
    }
}

/// Longest name a policy may give itself (longer ones are cut).
const MAX_NAME: usize = 128;
/// Longest description or message kept from a policy (longer ones are cut).
const MAX_MESSAGE: usize = 1024;
/// Longest effective config kept as JSON.
const MAX_EFFECTIVE_CONFIG: usize = 64 * 1024;
/// Longest output suffix: it becomes part of every output's name.
const MAX_OUTPUT_SUFFIX: usize = 64;

/// `value` with every key and string sanitised: JSON escapes control
/// characters when printed, but not bidi or zero-width marks.
fn sanitize_json(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(sanitize(&s, MAX_MESSAGE)),
        Value::Array(items) => Value::Array(items.into_iter().map(sanitize_json).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (sanitize(&k, MAX_NAME), sanitize_json(v))).collect()),
        other => other,
    }
}

/// Output suffixes become part of storage keys: keep them tame and short.
fn validate_suffix(plugin: &str, suffix: &str) -> Result<(), PluginError> {
    let tame = suffix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if suffix.is_empty() || suffix.len() > MAX_OUTPUT_SUFFIX || !tame {
        return Err(PluginError::Incompatible {
            plugin: plugin.to_owned(),
            reason: format!(
                "declares output suffix \"{}\"; it must be 1 to {MAX_OUTPUT_SUFFIX} letters, digits, '-' or '_'",
                sanitize(suffix, MAX_OUTPUT_SUFFIX)
            ),
        });
    }
    Ok(())
}

/// The exports of one instance.
struct Bindings {
    tier: TierPolicy,
    explain: Option<Explain>,
}

/// Longest reason kept from a policy's `explain`.
const MAX_REASON: usize = 512;

/// One configured instance of a tier policy. Calls run under the instance's
/// limits; after a failure every later call fails fast.
pub struct TierInstance {
    sandbox: Sandbox,
    bindings: Bindings,
    description: TierDescription,
}

impl TierInstance {
    /// The tier's description after `configure`.
    pub fn description(&self) -> &TierDescription {
        &self.description
    }

    /// The plugin's display name.
    pub fn plugin(&self) -> &str {
        self.sandbox.plugin()
    }

    /// Asks the policy for the candidates of `partition` at `now`.
    pub fn select_candidates(&mut self, partition: &Partition, now: DateTime<Utc>) -> Result<Vec<Vec<String>>, PluginError> {
        let wit_partition = to_wit(partition);
        let tier = self.bindings.tier.compactor_policy_tier();
        let now = now.timestamp_millis();
        let candidates = self.sandbox.call("select-candidates", |store| tier.call_select_candidates(store, &wit_partition, now))?;
        Ok(candidates.into_iter().map(|c| c.files).collect())
    }

    /// Asks the policy why it selects what it does in `partition` at `now`:
    /// `None` when the component predates WIT 1.1.0 or answers with an
    /// empty string (then the host explains), the reason sanitised and cut
    /// otherwise.
    pub fn explain(&mut self, partition: &Partition, now: DateTime<Utc>) -> Result<Option<String>, PluginError> {
        let Some(explain) = &self.bindings.explain else { return Ok(None) };
        let wit_partition = to_wit(partition);
        let now = now.timestamp_millis();
        let reason = self.sandbox.call("explain", |store| explain.call_explain(store, &wit_partition, now))?;
        let reason = sanitize(reason.trim(), MAX_REASON);
        Ok(Some(reason).filter(|r| !r.is_empty()))
    }

    /// The policy's decision on a whole file list.
    pub fn should_compact(&mut self, files: &[String], partition_time: DateTime<Utc>, now: DateTime<Utc>) -> Result<bool, PluginError> {
        let tier = self.bindings.tier.compactor_policy_tier();
        let (partition_ms, now_ms) = (partition_time.timestamp_millis(), now.timestamp_millis());
        self.sandbox.call("should-compact", |store| tier.call_should_compact(store, files, partition_ms, now_ms))
    }

    /// Whether `name` is an output of this tier.
    pub fn is_compacted_file(&mut self, name: &str) -> Result<bool, PluginError> {
        let tier = self.bindings.tier.compactor_policy_tier();
        self.sandbox.call("is-compacted-file", |store| tier.call_is_compacted_file(store, name))
    }
}

fn to_wit(partition: &Partition) -> types::Partition {
    types::Partition {
        database: partition.database.clone(),
        measurement: partition.measurement.clone(),
        path: partition.path.clone(),
        time_ms: partition.time.timestamp_millis(),
        files: partition
            .files
            .iter()
            .map(|f| types::FileInfo { path: f.key.clone(), size_bytes: f.size, last_modified_ms: f.last_modified.timestamp_millis() })
            .collect(),
    }
}
