//! Planning benchmark: 1,000,000 files in 20,000 hourly partitions of an
//! in-memory store, planned with the built-in `hourly` component and with the
//! same policy compiled natively, in one run; plus the plugin runtime's
//! per-call, instantiation, loading and deadline costs.
//!
//! Run: `cargo bench --bench planning` (prints a Markdown table).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Duration as Span, Utc};
use compactor_engine::{self as planner, PartitionPolicy, PlanOptions, PlannedTier, PolicyFactory};
use compactor_model::{Partition, PartitionLevel, group_into_partitions};
use compactor_plugin_sdk::TierPolicy;
use compactor_runtime::PluginLimits;
use compactor_runtime::{ArtifactCache, PluginError, PluginRuntime, PluginSource, TierPlugin};
use compactor_storage::Storage;

const MEASUREMENTS: usize = 10;
const HOURS: usize = 2_000;
const FILES_PER_PARTITION: usize = 50;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")?.to_utc();
    let now = start + Span::hours(HOURS as i64 + 2);
    let mut rows: Vec<(String, String, String)> = Vec::new();

    let cache_dir = tempfile::tempdir()?;
    let plugins = PluginRuntime::new(ArtifactCache::new(cache_dir.path()))?.with_builtins(compactor_builtin::BUILTINS);
    let (cold, cached) = load_times(&plugins)?;
    rows.push(("component load, cold compile".into(), format!("{:.1} ms", ms(cold)), "-".into()));
    rows.push(("component load, cached artifact (median of 20)".into(), format!("{:.2} ms", ms(cached)), "≤ 2 ms".into()));
    let hourly = plugins.load_tier(&PluginSource::Builtin("hourly".into()))?;

    let built = Instant::now();
    let storage = runtime.block_on(lake(start))?;
    eprintln!("built the lake of {} files in {:.1?}", MEASUREMENTS * HOURS * FILES_PER_PARTITION, built.elapsed());

    let options = PlanOptions {
        now,
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
    };
    let wasm_tier = PlannedTier {
        name: "hourly".into(),
        tenant: None,
        enabled: true,
        policy: Ok(Arc::new(hourly.clone())),
        config_json: "{}".into(),
        limits: PluginLimits::default(),
    };
    let native_tier = PlannedTier { policy: Ok(Arc::new(NativeHourly)), ..wasm_tier.clone() };
    // Interleaved (wasm, native, wasm, …), best of 5 each: the machine's
    // drift hits both sides alike, which back-to-back blocks did not.
    let plan_once = |tier: &PlannedTier| -> anyhow::Result<(Duration, usize)> {
        let started = Instant::now();
        let plan = runtime.block_on(planner::plan(&storage, std::slice::from_ref(tier), &options))?;
        let elapsed = started.elapsed();
        anyhow::ensure!(plan.problems.is_empty(), "{:?}", plan.problems);
        Ok((elapsed, plan.batches.len()))
    };
    let (mut wasm_total, mut native_total) = (Duration::MAX, Duration::MAX);
    let (mut wasm_batches, mut native_batches) = (0, 0);
    for _ in 0..5 {
        let (elapsed, batches) = plan_once(&wasm_tier)?;
        (wasm_total, wasm_batches) = (wasm_total.min(elapsed), batches);
        let (elapsed, batches) = plan_once(&native_tier)?;
        (native_total, native_batches) = (native_total.min(elapsed), batches);
    }
    anyhow::ensure!(wasm_batches == native_batches, "the component and the native policy disagree");
    rows.push((
        format!("plan 1,000,000 files / 20,000 partitions, wasm ({wasm_batches} batches, best of 5, interleaved)"),
        format!("{:.0} ms", ms(wasm_total)),
        "-".into(),
    ));
    rows.push(("plan, same rules native (best of 5, interleaved)".into(), format!("{:.0} ms", ms(native_total)), "-".into()));
    rows.push(("plan, wasm / native".into(), format!("{:.2}×", ratio(wasm_total, native_total)), "≤ 1.5×".into()));

    let partitions = runtime.block_on(grouped(&storage))?;
    let wasm_policy = policy_time(&hourly, &partitions, now)?;
    let native_policy = policy_time(&NativeHourly, &partitions, now)?;
    rows.push(("policy calls only, wasm (20,000 select-candidates)".into(), format!("{:.0} ms", ms(wasm_policy)), "-".into()));
    rows.push(("policy calls only, native".into(), format!("{:.0} ms", ms(native_policy)), "-".into()));
    rows.push(("policy calls only, wasm / native".into(), format!("{:.2}×", ratio(wasm_policy, native_policy)), "-".into()));

    let mut instance = hourly.instantiate("{}", PluginLimits::default())?;
    let calls = 1_000_000;
    let started = Instant::now();
    for _ in 0..calls {
        std::hint::black_box(instance.is_compacted_file(std::hint::black_box("a_compacted.parquet"))?);
    }
    rows.push((
        "call, warm instance: is-compacted-file (one string argument)".into(),
        format!("{:.3} µs", us(started.elapsed()) / calls as f64),
        "-".into(),
    ));
    let (no_files, epoch) = (Vec::new(), DateTime::UNIX_EPOCH);
    let started = Instant::now();
    for _ in 0..calls {
        std::hint::black_box(instance.should_compact(std::hint::black_box(&no_files), epoch, epoch)?);
    }
    rows.push((
        "call overhead, warm instance: should-compact([], t, now) (scalars only)".into(),
        format!("{:.3} µs", us(started.elapsed()) / calls as f64),
        "≤ 0.3 µs".into(),
    ));

    let instances = 2_000;
    let started = Instant::now();
    for _ in 0..instances {
        hourly.instantiate_bare(PluginLimits::default())?;
    }
    rows.push((
        "fresh instance from InstancePre (store + instantiate)".into(),
        format!("{:.1} µs", us(started.elapsed()) / instances as f64),
        "≤ 25 µs".into(),
    ));
    let started = Instant::now();
    for _ in 0..instances {
        std::hint::black_box(hourly.instantiate("{}", PluginLimits::default())?);
    }
    rows.push((
        "fresh configured instance (+ configure + info)".into(),
        format!("{:.1} µs", us(started.elapsed()) / instances as f64),
        "-".into(),
    ));

    let overshoot = deadline_overshoot(&plugins)?;
    rows.push(("infinite loop stopped after deadline (100 ms), worst of 5".into(), format!("+{:.2} ms", ms(overshoot)), "≤ +5 ms".into()));

    println!("| measurement | value | target |");
    println!("|---|---|---|");
    for (name, value, target) in rows {
        println!("| {name} | {value} | {target} |");
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

/// Cold compile vs. loading the cached artifact of the hourly component.
fn load_times(plugins: &PluginRuntime) -> anyhow::Result<(Duration, Duration)> {
    let source = PluginSource::Builtin("hourly".into());
    let cold = PluginRuntime::new(ArtifactCache::disabled())?.with_builtins(compactor_builtin::BUILTINS).load(&source)?.stats.load_time;
    plugins.load(&source)?;
    let mut cached: Vec<Duration> = (0..20).map(|_| plugins.load(&source).map(|l| l.stats.load_time)).collect::<Result<_, _>>()?;
    cached.sort();
    Ok((cold, cached[cached.len() / 2]))
}

/// 10 measurements × 2,000 hours × 50 raw files.
async fn lake(start: DateTime<Utc>) -> anyhow::Result<Storage> {
    let storage = Storage::in_memory();
    for m in 0..MEASUREMENTS {
        for h in 0..HOURS {
            let hour = start + Span::hours(h as i64);
            for f in 0..FILES_PER_PARTITION {
                let written = hour + Span::seconds(300 + f as i64 * 60);
                let key =
                    format!("bench/m{m}/{}/m{m}_{}_{:09}.parquet", hour.format("%Y/%m/%d/%H"), written.format("%Y%m%d_%H%M%S"), f * 7919);
                storage.write(&key, bytes::Bytes::from_static(b"")).await?;
            }
        }
    }
    Ok(storage)
}

async fn grouped(storage: &Storage) -> anyhow::Result<Vec<Partition>> {
    let mut partitions = Vec::new();
    for m in 0..MEASUREMENTS {
        let files = storage.list(&format!("bench/m{m}/")).await?;
        partitions.extend(group_into_partitions("bench", &format!("m{m}"), &files, PartitionLevel::Hour));
    }
    Ok(partitions)
}

/// Time of one `select_candidates` per partition on one warm instance.
fn policy_time(factory: &dyn PolicyFactory, partitions: &[Partition], now: DateTime<Utc>) -> anyhow::Result<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let mut instance = factory.instantiate("{}", PluginLimits::default())?;
        let started = Instant::now();
        for p in partitions {
            std::hint::black_box(instance.select_candidates(p, now)?);
        }
        best = best.min(started.elapsed());
    }
    Ok(best)
}

/// How late an infinite loop is stopped after a 100 ms deadline.
fn deadline_overshoot(plugins: &PluginRuntime) -> anyhow::Result<Duration> {
    let hostile: TierPlugin = plugins.load_tier(&PluginSource::Path(compactor_test_components::HOSTILE.into()))?;
    let limits = PluginLimits { fuel_per_call: u64::MAX, memory_bytes: 64 << 20, call_timeout: Duration::from_millis(100) };
    let partition = Partition {
        database: "db".into(),
        measurement: "cpu".into(),
        path: "db/cpu/2026/01/01/00".into(),
        time: DateTime::UNIX_EPOCH,
        files: Vec::new(),
    };
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let mut instance = hostile.instantiate(r#"{"mode": "loop"}"#, limits)?;
        let started = Instant::now();
        let outcome = instance.select_candidates(&partition, Utc::now());
        let elapsed = started.elapsed();
        anyhow::ensure!(matches!(outcome, Err(PluginError::Deadline { .. })), "expected a deadline error, got {outcome:?}");
        worst = worst.max(elapsed.saturating_sub(limits.call_timeout));
    }
    Ok(worst)
}

/// The hourly policy compiled natively, behind the same planner interface.
struct NativeHourly;

struct NativeInstance<P>(P);

impl PolicyFactory for NativeHourly {
    fn name(&self) -> &str {
        "native:hourly"
    }

    fn instantiate(&self, config_json: &str, _: PluginLimits) -> Result<Box<dyn PartitionPolicy>, PluginError> {
        let refused = |message: String| PluginError::Config { plugin: "native:hourly".into(), message };
        let config = serde_json::from_str(config_json).map_err(|e| refused(e.to_string()))?;
        Ok(Box::new(NativeInstance(hourly::Hourly::new(config).map_err(refused)?)))
    }
}

impl<P: TierPolicy> PartitionPolicy for NativeInstance<P> {
    fn partition_level(&self) -> PartitionLevel {
        match self.0.info().partition_level {
            compactor_plugin_sdk::PartitionLevel::Hour => PartitionLevel::Hour,
            compactor_plugin_sdk::PartitionLevel::Day => PartitionLevel::Day,
        }
    }

    fn output_suffix(&self) -> String {
        self.0.info().output_suffix
    }

    fn select_candidates(&mut self, p: &Partition, now: DateTime<Utc>) -> Result<Vec<Vec<String>>, PluginError> {
        let partition = compactor_plugin_sdk::Partition {
            database: p.database.clone(),
            measurement: p.measurement.clone(),
            path: p.path.clone(),
            time: compactor_plugin_sdk::Timestamp(p.time.timestamp_millis()),
            files: p
                .files
                .iter()
                .map(|f| compactor_plugin_sdk::FileInfo {
                    path: f.key.clone(),
                    size_bytes: f.size,
                    last_modified: compactor_plugin_sdk::Timestamp(f.last_modified.timestamp_millis()),
                })
                .collect(),
        };
        let now = compactor_plugin_sdk::Timestamp(now.timestamp_millis());
        Ok(self.0.select_candidates(&partition, now).into_iter().map(|c| c.files).collect())
    }
}
