//! Shared fixtures: a plugin runtime with a shared artifact cache, partitions
//! built from keys, and times from RFC 3339.

use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use compactor_model::{FileMeta, Partition};
use compactor_runtime::PluginLimits;
use compactor_runtime::{ArtifactCache, PluginRuntime, PluginSource, TierInstance, TierPlugin};

/// One runtime per test process; compiled components are cached across runs.
pub(crate) fn runtime() -> &'static PluginRuntime {
    static RUNTIME: OnceLock<PluginRuntime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let cache = std::env::temp_dir().join("compactor-test-artifacts");
        PluginRuntime::new(ArtifactCache::new(cache)).expect("plugin runtime").with_builtins(compactor_builtin::BUILTINS)
    })
}

/// A built-in or test component, loaded once per process.
pub(crate) fn plugin(spec: &str) -> TierPlugin {
    static LOADED: OnceLock<std::sync::Mutex<Vec<(String, TierPlugin)>>> = OnceLock::new();
    let loaded = LOADED.get_or_init(Default::default);
    let mut loaded = loaded.lock().unwrap();
    if let Some((_, plugin)) = loaded.iter().find(|(s, _)| s == spec) {
        return plugin.clone();
    }
    let source = match spec {
        "hostile" => PluginSource::Path(compactor_test_components::HOSTILE.into()),
        "raw" => PluginSource::Path(compactor_test_components::RAW.into()),
        builtin => PluginSource::parse(builtin, std::path::Path::new(".")),
    };
    let plugin = runtime().load_tier(&source).unwrap_or_else(|e| panic!("{spec}: {e}"));
    loaded.push((spec.to_owned(), plugin.clone()));
    plugin
}

/// A configured instance of `spec` with default limits.
pub(crate) fn instance(spec: &str, config: &str) -> TierInstance {
    plugin(spec).instantiate(config, PluginLimits::default()).unwrap_or_else(|e| panic!("{spec}: {e}"))
}

/// An instant from RFC 3339.
pub(crate) fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().to_utc()
}

/// A partition of `path` (`db/meas/YYYY/MM/DD[/HH]`) holding `names`, which
/// are relative to `path` unless they contain `/` from the root.
pub(crate) fn partition(path: &str, time: &str, names: &[&str]) -> Partition {
    let mut segments = path.splitn(3, '/');
    let database = segments.next().unwrap().to_owned();
    let measurement = segments.next().unwrap().to_owned();
    let mut files: Vec<FileMeta> = names
        .iter()
        .map(|name| FileMeta {
            key: if name.starts_with(&format!("{database}/")) { (*name).to_owned() } else { format!("{path}/{name}") },
            size: 1000,
            last_modified: at(time),
        })
        .collect();
    files.sort_by(|a, b| a.key.cmp(&b.key));
    Partition { database, measurement, path: path.to_owned(), time: at(time), files }
}

/// `n` raw ingest names written at `stamp` (`YYYYMMDD_HHMMSS`).
pub(crate) fn raw_files(measurement: &str, stamp: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{measurement}_{stamp}_{i:09}.parquet")).collect()
}

/// Borrowed view of owned names.
pub(crate) fn refs(names: &[String]) -> Vec<&str> {
    names.iter().map(String::as_str).collect()
}

/// A tier named `name` running `spec` with `config` and `limits`.
pub(crate) fn tier(name: &str, spec: &str, config: &str, limits: PluginLimits) -> compactor_engine::PlannedTier {
    compactor_engine::PlannedTier {
        name: name.into(),
        tenant: None,
        enabled: true,
        policy: Ok(std::sync::Arc::new(plugin(spec))),
        config_json: config.into(),
        limits,
    }
}

/// An in-memory store holding `keys` (each 100 bytes).
pub(crate) async fn store_with(keys: &[String]) -> compactor_storage::Storage {
    let storage = compactor_storage::Storage::in_memory();
    for key in keys {
        storage.write(key, vec![0u8; 100]).await.unwrap();
    }
    storage
}

/// Plan options for every tier at `now`, with Arc's batch size.
pub(crate) fn plan_options(now: &str) -> compactor_engine::PlanOptions {
    compactor_engine::PlanOptions {
        now: at(now),
        database: None,
        databases: None,
        max_files_per_batch: 30,
        multipart_threshold: 64 << 20,
        explain: false,
        stop: Default::default(),
        deadline: None,
        cancel: None,
        resume_after: None,
        fuel_left: None,
        share: None,
    }
}

/// Plans `tiers` over `storage` at `now`, with Arc's batch size.
pub(crate) async fn plan(
    storage: &compactor_storage::Storage,
    tiers: &[compactor_engine::PlannedTier],
    now: &str,
) -> compactor_engine::Plan {
    compactor_engine::plan(storage, tiers, &plan_options(now)).await.unwrap()
}

/// A lease object (or its local sidecar): one per day of a measurement that
/// was ever compacted, kept (empty) after its claims end, since no store can
/// delete it conditionally.
pub(crate) fn is_lease(key: &str) -> bool {
    key.starts_with("_compaction_state/leases/")
}

/// What the engine keeps on purpose: lease objects, the outcome of an
/// aborted job (kept for a week as a fence against its late upload), and
/// the job history.
pub(crate) fn is_coordination_state(key: &str, content: impl FnOnce() -> String) -> bool {
    is_lease(key)
        || key == "_compaction_state/lake-id"
        || key.starts_with("_compaction_state/history/")
        || key.ends_with(".outcome") && content().contains("\"aborted\"")
}

/// Every file below `root`, relative and sorted, except what coordination
/// keeps on purpose; a missing root is empty.
pub(crate) fn files_under(root: &std::path::Path) -> Vec<String> {
    let mut files = files_under_all(root);
    files.retain(|f| !is_coordination_state(f, || std::fs::read_to_string(root.join(f)).unwrap_or_default()));
    files
}

/// Every file below `root`, relative and sorted; a missing root is empty.
pub(crate) fn files_under_all(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                out.push(entry.path().strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Runs the `compactor` binary with extra environment.
pub(crate) fn compactor(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_compactor"));
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run compactor")
}

/// stdout and stderr of a run, for assertion messages.
pub(crate) fn text(output: &std::process::Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}
