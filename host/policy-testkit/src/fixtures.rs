//! Table-driven fixtures: one TOML file per case — a partition, `now`, the
//! tier's config, and what the policy must answer (or the error it must
//! give). `compactor plugin test PLUGIN --fixtures DIR` runs a directory of
//! them; a test can call [`run_dir`].
//!
//! ```toml
//! description = "an hour of 12 raw files, two hours old, is compacted whole"
//! now = "2026-04-11T16:00:00Z"
//! config = { min_files = 10 }        # the tier's [tiers.config]; {} if absent
//!
//! [partition]                        # grouped at the policy's level (hour or day)
//! database = "db"                    # default "db"
//! measurement = "cpu"                # default "cpu"
//! time = "2026-04-11T14:00:00Z"      # any time inside the hour or day
//! raw_files = 12                     # raw files named as Arc's ingest names them
//! file_size = 65536                  # their size in bytes (default 64 KiB)
//! files = ["cpu_20260411_140000_x_compacted.parquet"]  # more files, by name under the partition
//!
//! [expect]                           # every key optional
//! files_selected = 12                # files over all candidates
//! candidates = 1                     # number of candidates
//! error = "min_files"                # the call (or configure) must fail, with this text
//! max_fuel = 50000000                # fuel of the call, at most
//! ```

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::{PartitionBuilder, Policy};
use compactor_model::PartitionLevel;
use compactor_runtime::PluginRuntime;

/// One fixture file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    /// What the case shows.
    #[serde(default)]
    pub description: String,
    /// The time the policy sees as now (RFC 3339).
    pub now: String,
    /// The tier's config.
    #[serde(default)]
    pub config: toml::Table,
    /// The partition.
    pub partition: FixturePartition,
    /// What must happen.
    #[serde(default)]
    pub expect: Expect,
}

/// The partition of a fixture.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixturePartition {
    /// Database (default `db`).
    #[serde(default = "default_database")]
    pub database: String,
    /// Measurement (default `cpu`).
    #[serde(default = "default_measurement")]
    pub measurement: String,
    /// A time inside the partition (RFC 3339).
    pub time: String,
    /// Raw files to generate.
    #[serde(default)]
    pub raw_files: usize,
    /// Size of every file, in bytes.
    #[serde(default = "default_file_size")]
    pub file_size: u64,
    /// More files, by name under the partition's path.
    #[serde(default)]
    pub files: Vec<String>,
}

/// What a fixture expects.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Files selected over all candidates.
    pub files_selected: Option<usize>,
    /// Number of candidates.
    pub candidates: Option<usize>,
    /// The call (or `configure`) fails with an error containing this.
    pub error: Option<String>,
    /// Fuel the call may consume at most.
    pub max_fuel: Option<u64>,
}

fn default_database() -> String {
    "db".into()
}

fn default_measurement() -> String {
    "cpu".into()
}

fn default_file_size() -> u64 {
    64 * 1024
}

/// The result of one fixture.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    /// The fixture's file name.
    pub fixture: String,
    /// Its description.
    pub description: String,
    /// Whether every expectation held.
    pub passed: bool,
    /// Fuel of the call (0 when it did not run).
    pub fuel: u64,
    /// What was answered, or what went wrong.
    pub detail: String,
}

/// Runs every `*.toml` fixture in `dir` (sorted by name) against `plugin`.
pub fn run_dir(runtime: &PluginRuntime, plugin: &str, dir: &Path) -> anyhow::Result<Vec<Outcome>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot read fixture directory {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    anyhow::ensure!(!paths.is_empty(), "no *.toml fixtures in {}", dir.display());
    Ok(paths.iter().map(|path| run_file(runtime, plugin, path)).collect())
}

/// Runs one fixture file; a file that cannot be read or parsed fails.
pub fn run_file(runtime: &PluginRuntime, plugin: &str, path: &Path) -> Outcome {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let fixture = read_fixture(path).and_then(|text| toml::from_str::<Fixture>(&text).map_err(|e| sanitize_error(&e.to_string())));
    match fixture {
        Ok(fixture) => run(runtime, plugin, &name, &fixture),
        Err(error) => {
            Outcome { fixture: name, description: String::new(), passed: false, fuel: 0, detail: format!("bad fixture: {error}") }
        }
    }
}

/// The largest fixture file read.
const MAX_FIXTURE_BYTES: u64 = 1 << 20;
/// The most raw files a fixture may ask for.
pub const MAX_RAW_FILES: usize = 100_000;

/// A fixture's text: a regular file of at most [`MAX_FIXTURE_BYTES`] (not
/// a FIFO or a device, which could block or never end).
fn read_fixture(path: &Path) -> Result<String, String> {
    let metadata = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !metadata.is_file() || metadata.len() > MAX_FIXTURE_BYTES {
        return Err(format!("not a regular file of at most {} KiB", MAX_FIXTURE_BYTES >> 10));
    }
    std::fs::read_to_string(path).map_err(|e| e.to_string())
}

/// Parse errors quote the offending line: keep them short.
fn sanitize_error(text: &str) -> String {
    compactor_runtime::sanitize(text, 1024)
}

fn parse_time(field: &str, text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.to_utc())
        .map_err(|e| format!("bad fixture: {field} {}: {e}", sanitize_error(&format!("{text:?}"))))
}

/// Runs one fixture.
pub fn run(runtime: &PluginRuntime, plugin: &str, name: &str, fixture: &Fixture) -> Outcome {
    let mut outcome =
        Outcome { fixture: name.to_owned(), description: fixture.description.clone(), passed: false, fuel: 0, detail: String::new() };
    let answer = (|| -> Result<Result<crate::Answer, String>, String> {
        let now = parse_time("now", &fixture.now)?;
        let time = parse_time("partition.time", &fixture.partition.time)?;
        let config = serde_json::to_string(&fixture.config).map_err(|e| format!("bad fixture: config: {e}"))?;
        let policy = Policy::load_with(runtime, plugin).map_err(|e| e.to_string())?;
        let mut policy = match policy.configure(&config) {
            Ok(policy) => policy,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let level = policy.describe().map_err(|e| e.to_string())?.partition_level;
        let p = &fixture.partition;
        if p.raw_files > MAX_RAW_FILES {
            return Err(format!("bad fixture: partition.raw_files {} (at most {MAX_RAW_FILES})", p.raw_files));
        }
        let mut builder = match level {
            PartitionLevel::Hour => PartitionBuilder::hour(&p.database, &p.measurement, time),
            PartitionLevel::Day => PartitionBuilder::day(&p.database, &p.measurement, time),
        }
        .raw_files(p.raw_files, p.file_size);
        for file in &p.files {
            builder = builder.file(file, p.file_size);
        }
        Ok(policy.select(&builder.build(), now).map_err(|e| e.to_string()))
    })();
    let expect = &fixture.expect;
    let mut failures = Vec::new();
    match answer {
        Err(setup) => failures.push(setup),
        Ok(Err(error)) => match &expect.error {
            Some(wanted) if error.contains(wanted.as_str()) => outcome.detail = format!("failed as expected: {error}"),
            Some(wanted) => failures.push(format!("expected an error containing {wanted:?}, got: {error}")),
            None => failures.push(format!("unexpected error: {error}")),
        },
        Ok(Ok(answer)) => {
            outcome.fuel = answer.fuel;
            let sizes: Vec<usize> = answer.candidates.iter().map(Vec::len).collect();
            outcome.detail = format!("{} candidates of {sizes:?} files", sizes.len());
            if let Some(wanted) = &expect.error {
                failures.push(format!("expected an error containing {wanted:?}, but the call succeeded ({})", outcome.detail));
            }
            if let Some(wanted) = expect.files_selected
                && wanted != answer.files_selected()
            {
                failures.push(format!("expected {wanted} files selected, got {}", answer.files_selected()));
            }
            if let Some(wanted) = expect.candidates
                && wanted != answer.candidates.len()
            {
                failures.push(format!("expected {wanted} candidates, got {}", answer.candidates.len()));
            }
            if let Some(limit) = expect.max_fuel
                && answer.fuel > limit
            {
                failures.push(format!("used {} fuel, more than max_fuel {limit}", answer.fuel));
            }
        }
    }
    outcome.passed = failures.is_empty();
    if !outcome.passed {
        outcome.detail = failures.join("; ");
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(text: &str) -> Fixture {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_passing_and_a_failing_expectation() {
        let runtime = crate::runtime().unwrap();
        let old_hour = "now = \"2026-04-11T17:00:00Z\"\n[partition]\ntime = \"2026-04-11T14:10:00Z\"\nraw_files = 12\n";
        let pass = run(&runtime, "builtin:hourly", "old", &fixture(&format!("{old_hour}[expect]\nfiles_selected = 12\ncandidates = 1\n")));
        assert!(pass.passed, "{pass:?}");
        let fail = run(&runtime, "builtin:hourly", "old", &fixture(&format!("{old_hour}[expect]\nfiles_selected = 3\nmax_fuel = 1\n")));
        assert!(!fail.passed);
        assert!(fail.detail.contains("expected 3 files selected") && fail.detail.contains("max_fuel"), "{}", fail.detail);
    }

    #[test]
    fn an_expected_error_must_happen() {
        let runtime = crate::runtime().unwrap();
        let text = "now = \"2026-04-11T17:00:00Z\"\nconfig = { min_filez = 3 }\n[partition]\ntime = \"2026-04-11T14:00:00Z\"\n[expect]\nerror = \"min_filez\"\n";
        let outcome = run(&runtime, "builtin:hourly", "typo", &fixture(text));
        assert!(outcome.passed, "{outcome:?}");
    }
}
