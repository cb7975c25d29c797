//! Test a tier-policy component the way the engine will run it: load it
//! (contract checks included), configure it, and ask it about partitions you
//! build, at a `now` you choose, with the fuel each call consumed.
//!
//! ```no_run
//! use compactor_policy_testkit::{PartitionBuilder, Policy, at};
//!
//! let mut policy = Policy::load("target/wasm32-wasip2/release/my_policy.wasm")?.configure(r#"{"min_files": 3}"#)?;
//! let hour = PartitionBuilder::hour("db", "cpu", at("2026-04-11T14:00:00Z")).raw_files(12, 64 * 1024).build();
//! let answer = policy.select(&hour, at("2026-04-11T16:00:00Z"))?;
//! assert_eq!(answer.files_selected(), 12);
//! assert!(answer.fuel < 5_000_000, "the policy got slower: {} fuel", answer.fuel);
//! # anyhow::Ok(())
//! ```
//!
//! Table-driven fixtures (TOML files, see [`fixtures`]) run the same way, from
//! a test or from `compactor plugin test PLUGIN --fixtures DIR`.

pub mod fixtures;
pub mod simulate;

use chrono::{DateTime, Duration, DurationRound, Utc};
use compactor_model::{FileMeta, Partition, PartitionLevel};
use compactor_runtime::{ArtifactCache, PluginError, PluginLimits, PluginRuntime, PluginSource, TierDescription, TierInstance, TierPlugin};

/// A UTC time from RFC 3339 text; panics on bad text (for tests).
pub fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("not an RFC 3339 time: {text:?}: {e}")).to_utc()
}

/// A runtime with the built-in components and the default artifact cache.
pub fn runtime() -> Result<PluginRuntime, PluginError> {
    Ok(PluginRuntime::new(ArtifactCache::new(ArtifactCache::default_dir()))?.with_builtins(compactor_builtin::BUILTINS))
}

/// A loaded policy under test.
pub struct Policy {
    plugin: TierPlugin,
    config_json: String,
    limits: PluginLimits,
    reuse: bool,
    instance: Option<TierInstance>,
}

/// What one call answered, and what it cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The candidates: groups of storage keys.
    pub candidates: Vec<Vec<String>>,
    /// Fuel the call consumed (instantiation and `configure` included when
    /// the instance was fresh).
    pub fuel: u64,
}

impl Answer {
    /// Files selected over all candidates.
    pub fn files_selected(&self) -> usize {
        self.candidates.iter().map(Vec::len).sum()
    }
}

impl Policy {
    /// Loads `spec`: `builtin:NAME` or a path to a `.wasm` component.
    pub fn load(spec: &str) -> Result<Self, PluginError> {
        Self::load_with(&runtime()?, spec)
    }

    /// Loads `spec` with `runtime`.
    pub fn load_with(runtime: &PluginRuntime, spec: &str) -> Result<Self, PluginError> {
        let base = std::env::current_dir().unwrap_or_default();
        let plugin = runtime.load_tier(&PluginSource::parse(spec, &base))?;
        Ok(Self { plugin, config_json: "{}".into(), limits: PluginLimits::default(), reuse: true, instance: None })
    }

    /// Applies `config_json` (the tier's `[tiers.config]` as JSON); fails as
    /// the engine would if the policy refuses it.
    pub fn configure(mut self, config_json: &str) -> Result<Self, PluginError> {
        self.config_json = config_json.to_owned();
        self.instance = Some(self.plugin.instantiate(&self.config_json, self.limits)?);
        Ok(self)
    }

    /// A fresh instance for every call (the engine makes one per tier and
    /// cycle; state a policy keeps between calls shows up here).
    pub fn fresh_instances(mut self) -> Self {
        self.reuse = false;
        self
    }

    /// The loaded plugin (name, contract, content hash).
    pub fn plugin(&self) -> &TierPlugin {
        &self.plugin
    }

    /// What the configured policy says about itself.
    pub fn describe(&mut self) -> Result<TierDescription, PluginError> {
        Ok(self.instance()?.description().clone())
    }

    fn instance(&mut self) -> Result<&mut TierInstance, PluginError> {
        if !self.reuse || self.instance.is_none() {
            self.instance = Some(self.plugin.instantiate(&self.config_json, self.limits)?);
        }
        self.instance.as_mut().ok_or_else(|| PluginError::Engine { message: "no instance".into() })
    }

    /// Asks for the candidates of `partition` at `now`.
    pub fn select(&mut self, partition: &Partition, now: DateTime<Utc>) -> Result<Answer, PluginError> {
        let before = self.plugin.call_counts().fuel_used;
        let candidates = self.instance()?.select_candidates(partition, now)?;
        Ok(Answer { candidates, fuel: self.plugin.call_counts().fuel_used - before })
    }

    /// Why the policy selects what it does in `partition` at `now`, in its
    /// own words (WIT 1.1's `explain`); `None` when it does not say (a
    /// 1.0.0 component, or an empty answer).
    pub fn explain(&mut self, partition: &Partition, now: DateTime<Utc>) -> Result<Option<String>, PluginError> {
        self.instance()?.explain(partition, now)
    }
}

/// Builds a partition of files, named as Arc's ingest names them.
#[derive(Debug, Clone)]
pub struct PartitionBuilder {
    database: String,
    measurement: String,
    level: PartitionLevel,
    start: DateTime<Utc>,
    files: Vec<FileMeta>,
}

impl PartitionBuilder {
    /// The hour of `database`/`measurement` that contains `time`.
    pub fn hour(database: &str, measurement: &str, time: DateTime<Utc>) -> Self {
        Self::new(database, measurement, PartitionLevel::Hour, time.duration_trunc(Duration::hours(1)).unwrap_or(time))
    }

    /// The day of `database`/`measurement` that contains `time`.
    pub fn day(database: &str, measurement: &str, time: DateTime<Utc>) -> Self {
        Self::new(database, measurement, PartitionLevel::Day, time.duration_trunc(Duration::days(1)).unwrap_or(time))
    }

    /// A partition at `level` starting at `start`.
    pub fn new(database: &str, measurement: &str, level: PartitionLevel, start: DateTime<Utc>) -> Self {
        Self { database: database.into(), measurement: measurement.into(), level, start, files: Vec::new() }
    }

    /// The partition's key prefix.
    pub fn path(&self) -> String {
        let date = match self.level {
            PartitionLevel::Hour => self.start.format("%Y/%m/%d/%H"),
            PartitionLevel::Day => self.start.format("%Y/%m/%d"),
        };
        format!("{}/{}/{date}", self.database, self.measurement)
    }

    /// `count` raw files of `size` bytes, written a minute apart from the
    /// partition's start (for a day: into its first hour).
    pub fn raw_files(mut self, count: usize, size: u64) -> Self {
        for i in 0..count {
            let written = self.start + Duration::minutes(i as i64 % 60);
            let dir = match self.level {
                PartitionLevel::Hour => self.path(),
                PartitionLevel::Day => format!("{}/{}", self.path(), written.format("%H")),
            };
            let name = format!("{}_{}_{:09}.parquet", self.measurement, written.format("%Y%m%d_%H%M%S"), self.files.len());
            self.files.push(FileMeta { key: format!("{dir}/{name}"), size, last_modified: written });
        }
        self
    }

    /// One file named `name` (relative to the partition's path) of `size`
    /// bytes.
    pub fn file(mut self, name: &str, size: u64) -> Self {
        self.files.push(FileMeta { key: format!("{}/{name}", self.path()), size, last_modified: self.start });
        self
    }

    /// The partition, its files sorted by key as the host lists them.
    pub fn build(mut self) -> Partition {
        self.files.sort_by(|a, b| a.key.cmp(&b.key));
        Partition {
            database: self.database.clone(),
            measurement: self.measurement.clone(),
            path: self.path(),
            time: self.start,
            files: self.files,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arcs_hourly_waits_for_its_age_and_reports_fuel() {
        let mut policy = Policy::load("builtin:hourly").unwrap().configure("{}").unwrap();
        let hour = PartitionBuilder::hour("db", "cpu", at("2026-04-11T14:00:00Z")).raw_files(12, 1024).build();
        assert_eq!(hour.path, "db/cpu/2026/04/11/14");
        let young = policy.select(&hour, at("2026-04-11T14:30:00Z")).unwrap();
        assert_eq!(young.files_selected(), 0);
        let old = policy.select(&hour, at("2026-04-11T17:00:00Z")).unwrap();
        assert_eq!(old.files_selected(), 12);
        assert!(old.fuel > 0);
    }

    #[test]
    fn a_refused_config_is_an_error() {
        let refused = Policy::load("builtin:hourly").unwrap().configure(r#"{"min_filez": 3}"#);
        assert!(refused.is_err());
    }
}
