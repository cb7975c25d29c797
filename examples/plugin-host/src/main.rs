//! The example host: load a tier-policy component, configure it, and show its
//! answers on a few fixture partitions — the quickest way to try a policy
//! without a lake.
//!
//! Run it on the example policy (built with the repository):
//!
//!     cargo run --release -p plugin-host-example
//!
//! or on your own component and config:
//!
//!     cargo run --release -p plugin-host-example -- path/to/policy.wasm '{"min_files": 3}'
//!
//! or on a built-in policy: `-- builtin:hourly`.

use chrono::{DateTime, Duration, DurationRound, Utc};
use compactor_model::{FileMeta, Partition};
use compactor_runtime::PluginLimits;
use compactor_runtime::{ArtifactCache, PluginRuntime, PluginSource};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let component = args.next().unwrap_or_else(|| compactor_test_components::EXAMPLE_POLICY.to_owned());
    let config = args.next().unwrap_or_else(|| "{}".to_owned());

    // 1. One runtime per process; compiled components are cached on disk.
    let runtime = PluginRuntime::new(ArtifactCache::new(ArtifactCache::default_dir()))?.with_builtins(compactor_builtin::BUILTINS);

    // 2. Load the component: it is checked against the WIT contract (world,
    //    version, imports) before anything runs.
    let source = PluginSource::parse(&component, &std::env::current_dir()?);
    let plugin = runtime.load_tier(&source)?;
    println!("{} speaks compactor:policy@{}", plugin.name(), plugin.contract().wit_version);

    // 3. A configured instance, sandboxed with the default limits.
    let mut tier = plugin.instantiate(&config, PluginLimits::default())?;
    let info = tier.description();
    println!("tier {:?} ({} partitions): {}", info.name, info.partition_level, info.description);
    println!("effective config: {}\n", info.effective_config);

    // 4. Fixture partitions: an old hour with many files, an old hour with
    //    few, and the current hour.
    let now = Utc::now();
    for (label, hours_ago, files) in [("old, 12 files", 3, 12), ("old, 2 files", 3, 2), ("current hour, 12 files", 0, 12)] {
        let partition = fixture(now - Duration::hours(hours_ago), files);
        let candidates = tier.select_candidates(&partition, now)?;
        let sizes: Vec<usize> = candidates.iter().map(Vec::len).collect();
        println!("{label:<24} {} -> candidates of {sizes:?} files", partition.path);
    }
    Ok(())
}

/// An hour partition of `files` raw files, named as Arc's ingest names them.
fn fixture(at: DateTime<Utc>, files: usize) -> Partition {
    let start = at.duration_trunc(Duration::hours(1)).unwrap_or(at);
    let path = format!("example/cpu/{}", start.format("%Y/%m/%d/%H"));
    Partition {
        database: "example".into(),
        measurement: "cpu".into(),
        path: path.clone(),
        time: start,
        files: (0..files)
            .map(|i| FileMeta {
                key: format!("{path}/cpu_{}_{i:09}.parquet", start.format("%Y%m%d_%H%M%S")),
                size: 64 * 1024,
                last_modified: start,
            })
            .collect(),
    }
}
