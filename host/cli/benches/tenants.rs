//! What tenants cost, and what a hostile tenant costs the others, in one run.
//!
//! 1. **Load**: 100 tenants, one component each (Arc's hourly tier, made
//!    distinct per tenant by a custom section, so each is its own artifact),
//!    loaded from the precompiled cache: time per tenant (target ≤ 5 ms).
//! 2. **Idle instances**: one configured instance per tenant, kept alive:
//!    resident memory per instance (target ≤ 1 MiB).
//! 3. **Planning**: a cycle's plan over 100 tenants × 100 hour partitions
//!    (10 empty files each, on local disk), against the same lake planned
//!    without tenants.
//! 4. **A hostile tenant next to healthy ones**: a full cycle (real jobs) of
//!    four healthy tenants, alone and next to three hostile ones (infinite
//!    loop, memory bomb, panic), alternated: the healthy tenants' jobs and
//!    the cycle's time.
//! 5. **Slow but valid tenants next to a benign one**: four tenants whose
//!    policy answers validly but takes 0.9 s a call (never failing, never
//!    suspended), alone and beside a benign tenant: the benign tenant's time
//!    to its first output and to the end of its part of the cycle.
//!
//! Run: `cargo bench -p compactor --bench tenants` (prints Markdown tables).

mod common;

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use compactor_engine::config::Config;
use compactor_engine::{CycleOptions, Manager};
use compactor_job::ChildCommand;
use compactor_job::sample::{self, SampleSpec};

const NOW: &str = "2026-04-13T12:00:00Z";
const TENANTS: usize = 100;
const PARTITIONS: usize = 100;
const FILES_PER_PARTITION: usize = 10;
const ROUNDS: usize = 3;
const ISOLATION_ROUNDS: usize = 6;

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(NOW).expect("a valid time").to_utc()
}

fn artifact_cache() -> String {
    std::env::temp_dir().join("compactor-bench-artifacts").display().to_string()
}

/// `component` with a custom section naming `tenant` appended: the same
/// code, a different content hash, so each tenant has its own artifact.
fn distinct_component(component: &[u8], tenant: &str) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            out.push(if n == 0 { byte } else { byte | 0x80 });
            if n == 0 {
                break;
            }
        }
    }
    let name = b"tenant";
    let mut payload = Vec::new();
    leb128(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(tenant.as_bytes());
    let mut bytes = component.to_vec();
    bytes.push(0);
    leb128(payload.len(), &mut bytes);
    bytes.extend_from_slice(&payload);
    bytes
}

fn parse(work: &Path, text: &str) -> anyhow::Result<Config> {
    let mut config = Config::parse(text)?;
    config.base_dir = work.to_owned();
    Ok(config)
}

fn header(lake: &Path, work: &Path, max_concurrent: usize) -> String {
    format!(
        "[storage]\nurl = \"{}\"\n[compaction]\nthreads = 1\nmax_concurrent = {max_concurrent}\ntemp_directory = \"{}\"\n\
         [plugins]\ncache_dir = \"{}\"\n",
        lake.display(),
        work.join("tmp").display(),
        artifact_cache()
    )
}

/// 100 tenants, tenant `tNNN` owning database `tNNN`, each with its own
/// hourly component.
fn tenants_config(work: &Path, lake: &Path) -> anyhow::Result<Config> {
    let hourly = compactor_builtin::BUILTINS.iter().find(|(name, _)| *name == "hourly").map(|(_, bytes)| *bytes);
    let hourly = hourly.ok_or_else(|| anyhow::anyhow!("no built-in hourly"))?;
    std::fs::create_dir_all(work.join("components"))?;
    let mut text = header(lake, work, 2);
    for i in 0..TENANTS {
        let tenant = format!("t{i:03}");
        let path = work.join("components").join(format!("{tenant}.wasm"));
        std::fs::write(&path, distinct_component(hourly, &tenant))?;
        writeln!(
            text,
            "[[tenants]]\nname = \"{tenant}\"\ndatabases = [\"{tenant}\"]\n[[tenants.tiers]]\nname = \"hourly\"\nplugin = \"{}\"",
            path.display()
        )?;
    }
    parse(work, &text)
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn load_and_idle(work: &Path) -> anyhow::Result<()> {
    let config = tenants_config(work, &work.join("lake"))?;
    let runtime = compactor_engine::plugin_runtime(config.plugin_cache_dir())?;
    let started = Instant::now();
    let tiers = compactor_engine::load_tiers(&config, &runtime);
    let first = started.elapsed();
    if let Some(error) = tiers.iter().find_map(|t| t.policy.as_ref().err()) {
        anyhow::bail!("a tenant's component did not load: {error}");
    }
    let tenant_tiers = tiers.iter().filter(|t| t.tenant.is_some()).count();
    let mut loads = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let tiers = compactor_engine::load_tiers(&config, &runtime);
        loads.push(started.elapsed());
        drop(tiers);
    }
    let load = median(loads);
    println!("### Load: {TENANTS} tenants, one component each\n");
    println!("| what | total ms | per tenant ms | target |");
    println!("|---|---|---|---|");
    println!(
        "| first load (compile, or the cache if warm) | {} | {:.2} | |",
        ms(first),
        first.as_secs_f64() * 1000.0 / tenant_tiers as f64
    );
    println!(
        "| from the precompiled cache, median of {ROUNDS} | {} | {:.2} | ≤ 5 |",
        ms(load),
        load.as_secs_f64() * 1000.0 / tenant_tiers as f64
    );

    let before = resident_bytes();
    let mut instances = Vec::new();
    for tier in tiers.iter().filter(|t| t.tenant.is_some()) {
        let policy = tier.policy.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        instances.push(policy.instantiate(&tier.config_json, tier.limits)?);
    }
    let after = resident_bytes();
    let per_instance = after.saturating_sub(before) as f64 / instances.len() as f64;
    println!("\n### Idle configured instances\n");
    println!("| instances | resident before MiB | after MiB | per instance KiB | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| {} | {:.1} | {:.1} | {:.0} | ≤ 1024 |",
        instances.len(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        per_instance / 1024.0
    );
    Ok(())
}

/// 100 databases × 100 hour partitions × 10 empty files.
fn planning_lake(lake: &Path) -> anyhow::Result<()> {
    let start = now() - chrono::Duration::days(6);
    for i in 0..TENANTS {
        for p in 0..PARTITIONS {
            let hour = start + chrono::Duration::hours(p as i64);
            let dir = lake.join(format!("t{i:03}/cpu/{}", hour.format("%Y/%m/%d/%H")));
            std::fs::create_dir_all(&dir)?;
            for f in 0..FILES_PER_PARTITION {
                std::fs::write(dir.join(format!("cpu_{}_{f:09}.parquet", hour.format("%Y%m%d_%H%M%S"))), b"")?;
            }
        }
    }
    Ok(())
}

fn planning(work: &Path) -> anyhow::Result<()> {
    let lake = work.join("lake");
    planning_lake(&lake)?;
    let with_tenants = tenants_config(work, &lake)?;
    let without = parse(work, &format!("{}[[tiers]]\nname = \"hourly\"\nplugin = \"builtin:hourly\"\n", header(&lake, work, 2)))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let child = || ChildCommand { program: env!("CARGO_BIN_EXE_compactor").into(), env: Vec::new(), timeout: None };
    let managers = [
        ("100 tenants, a component each", Manager::open(with_tenants, child())?),
        ("no tenants, one hourly tier", Manager::open(without, child())?),
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); managers.len()];
    let mut batches = vec![0; managers.len()];
    for _ in 0..ROUNDS {
        for (i, (_, manager)) in managers.iter().enumerate() {
            let started = Instant::now();
            let plan = runtime.block_on(manager.plan(&CycleOptions { now: Some(now()), ..Default::default() }))?;
            times[i].push(started.elapsed());
            anyhow::ensure!(plan.problems.is_empty(), "planning problems: {:?}", plan.problems.first());
            batches[i] = plan.batches.len();
        }
    }
    println!("\n### Planning a cycle: {TENANTS} databases × {PARTITIONS} hour partitions × {FILES_PER_PARTITION} files (local disk)\n");
    println!("| config | batches | median ms of {ROUNDS} | per partition µs |");
    println!("|---|---|---|---|");
    for (i, (name, _)) in managers.iter().enumerate() {
        let time = median(times[i].clone());
        println!("| {name} | {} | {} | {:.0} |", batches[i], ms(time), time.as_secs_f64() * 1e6 / (TENANTS * PARTITIONS) as f64);
    }
    Ok(())
}

const HEALTHY: [&str; 4] = ["alpha", "beta", "gamma", "delta"];
const HOSTILE: [&str; 3] = ["loop", "memory-bomb", "panic"];

/// The hostile tenants' limits: `None` for no hostile tenant.
const NEIGHBOURS: [(&str, Option<&str>); 3] = [
    ("4 healthy", None),
    (
        "4 healthy + loop, memory bomb, panic (tenant limits: 20M fuel, 16 MiB, 300 ms)",
        Some("[tenants.limits]\nfuel_per_call = 20000000\nmemory = \"16MiB\"\ncall_timeout_ms = 300\n"),
    ),
    ("4 healthy + loop, memory bomb, panic (default limits: 2G fuel a call, 100M a cycle, 256 MiB, 5 s)", Some("")),
];

fn isolation_config(work: &Path, lake: &Path, hostile_limits: Option<&str>) -> anyhow::Result<Config> {
    // The databases no tenant claims (the hostile ones, when their tenants
    // are absent) are left alone: both sides run the same healthy jobs only.
    let mut text = format!("{}[[tiers]]\nname = \"hourly\"\nplugin = \"builtin:hourly\"\nenabled = false\n", header(lake, work, 2));
    for tenant in HEALTHY {
        writeln!(
            text,
            "[[tenants]]\nname = \"{tenant}\"\ndatabases = [\"{tenant}\"]\nmax_concurrent = 1\n\
             [[tenants.tiers]]\nname = \"hourly\"\nplugin = \"builtin:hourly\"\n\
             [[tenants.tiers]]\nname = \"daily\"\nplugin = \"builtin:daily\"\nconfig = {{ min_files = 2 }}"
        )?;
    }
    if let Some(limits) = hostile_limits {
        for mode in HOSTILE {
            writeln!(
                text,
                "[[tenants]]\nname = \"evil-{mode}\"\ndatabases = [\"evil_{mode}\"]\n{limits}\
                 [[tenants.tiers]]\nname = \"hourly\"\nplugin = \"{}\"\nconfig = {{ mode = \"{mode}\" }}",
                compactor_test_components::HOSTILE
            )?;
        }
    }
    parse(work, &text)
}

/// Two hours × 12 files × 20,000 rows of one measurement in each database.
fn sample_lake(lake: &Path, databases: impl Iterator<Item = String>) -> anyhow::Result<()> {
    for database in databases {
        let spec = SampleSpec {
            database,
            measurements: vec![("cpu".into(), vec!["host".into()])],
            hours: 2,
            files_per_hour: 12,
            rows_per_file: 20_000,
        };
        sample::generate(lake, now(), &spec)?;
    }
    Ok(())
}

fn isolation(work: &Path) -> anyhow::Result<()> {
    let pristine = work.join("pristine");
    sample_lake(&pristine, HEALTHY.iter().map(|d| d.to_string()).chain(HOSTILE.iter().map(|m| format!("evil_{m}"))))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut rows: Vec<(Vec<Duration>, usize, usize)> = vec![(Vec::new(), 0, 0); NEIGHBOURS.len()];
    for round in 0..ISOLATION_ROUNDS {
        // Rotate which goes first, so that none always runs on a colder
        // machine.
        for step in 0..NEIGHBOURS.len() {
            let index = (round + step) % NEIGHBOURS.len();
            let lake = work.join(format!("lake-{round}-{index}"));
            common::copy_tree(&pristine, &lake)?;
            let config = isolation_config(work, &lake, NEIGHBOURS[index].1)?;
            let child = ChildCommand { program: env!("CARGO_BIN_EXE_compactor").into(), env: Vec::new(), timeout: None };
            let manager = Manager::open(config, child)?;
            let started = Instant::now();
            let report = runtime.block_on(manager.run_cycle(CycleOptions { now: Some(now()), ..Default::default() }))?;
            let elapsed = started.elapsed();
            let healthy_jobs: Vec<_> = report.jobs.iter().filter(|j| HEALTHY.contains(&j.batch.database.as_str())).collect();
            anyhow::ensure!(healthy_jobs.iter().all(|j| j.success), "a healthy tenant's job failed");
            anyhow::ensure!(
                healthy_jobs.len() == 3 * HEALTHY.len(),
                "healthy jobs: {} (expected {})",
                healthy_jobs.len(),
                3 * HEALTHY.len()
            );
            anyhow::ensure!(report.jobs.len() == healthy_jobs.len(), "jobs beyond the healthy tenants': {}", report.jobs.len());
            rows[index] = (rows[index].0.iter().copied().chain([elapsed]).collect(), healthy_jobs.len(), report.problems.len());
            std::fs::remove_dir_all(&lake)?;
        }
    }
    println!("\n### Four healthy tenants, alone and next to three hostile ones (a full cycle, real jobs)\n");
    println!("| tenants | healthy jobs (all succeeded) | problems reported | cycle ms, median of {ISOLATION_ROUNDS} | all rounds ms |");
    println!("|---|---|---|---|---|");
    for ((name, _), (times, jobs, problems)) in NEIGHBOURS.iter().zip(&rows) {
        let all: Vec<String> = times.iter().map(|t| ms(*t)).collect();
        println!("| {name} | {jobs} | {problems} | {} | {} |", ms(median(times.clone())), all.join(", "));
    }
    Ok(())
}

const SLOW: [&str; 4] = ["slow_1", "slow_2", "slow_3", "slow_4"];

/// One benign tenant (Arc's tiers), and with `slow`, four tenants whose
/// policy naps 0.9 s a call and then selects every file.
fn slow_config(work: &Path, lake: &Path, slow: bool) -> anyhow::Result<Config> {
    let mut text = format!("{}[[tiers]]\nname = \"hourly\"\nplugin = \"builtin:hourly\"\nenabled = false\n", header(lake, work, 2));
    // The slow tenants come first: the benign one would be the last to get
    // anything handed out in config order.
    for database in SLOW.iter().filter(|_| slow) {
        writeln!(
            text,
            "[[tenants]]\nname = \"{database}\"\ndatabases = [\"{database}\"]\n[tenants.limits]\ncall_timeout_ms = 2000\n\
             [[tenants.tiers]]\nname = \"hourly\"\nplugin = \"{}\"\nconfig = {{ mode = \"nap\" }}",
            compactor_test_components::RAW
        )?;
    }
    writeln!(
        text,
        "[[tenants]]\nname = \"benign\"\ndatabases = [\"benign\"]\n\
         [[tenants.tiers]]\nname = \"hourly\"\nplugin = \"builtin:hourly\"\n\
         [[tenants.tiers]]\nname = \"daily\"\nplugin = \"builtin:daily\"\nconfig = {{ min_files = 2 }}"
    )?;
    parse(work, &text)
}

fn slow_neighbours(work: &Path) -> anyhow::Result<()> {
    let pristine = work.join("pristine");
    sample_lake(&pristine, std::iter::once("benign").chain(SLOW).map(str::to_owned))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let sides = [("benign alone", false), ("benign + 4 slow-but-valid tenants (0.9 s a call)", true)];
    // Per side: time to the benign tenant's first output, to its last.
    let mut rows: Vec<(Vec<Duration>, Vec<Duration>)> = vec![(Vec::new(), Vec::new()); sides.len()];
    for round in 0..ISOLATION_ROUNDS {
        for step in 0..sides.len() {
            let index = (round + step) % sides.len();
            let lake = work.join(format!("slow-{round}-{index}"));
            common::copy_tree(&pristine, &lake)?;
            let config = slow_config(work, &lake, sides[index].1)?;
            let child = ChildCommand { program: env!("CARGO_BIN_EXE_compactor").into(), env: Vec::new(), timeout: None };
            let manager = Manager::open(config, child)?;
            let benign_outputs: std::sync::Arc<std::sync::Mutex<Vec<Instant>>> = Default::default();
            let seen = benign_outputs.clone();
            manager.subscribe(move |event| {
                if let compactor_engine::Progress::BatchDone { record } = event
                    && record.batch.tenant.as_deref() == Some("benign")
                    && record.success
                {
                    seen.lock().unwrap_or_else(|e| e.into_inner()).push(Instant::now());
                }
            });
            let started = Instant::now();
            let report = runtime.block_on(manager.run_cycle(CycleOptions { now: Some(now()), ..Default::default() }))?;
            let benign = benign_outputs.lock().unwrap_or_else(|e| e.into_inner()).clone();
            anyhow::ensure!(benign.len() == 3, "the benign tenant's jobs: {} (expected 3)", benign.len());
            anyhow::ensure!(report.failed().count() == 0, "a job failed");
            let (first, last) = (benign[0] - started, benign[benign.len() - 1] - started);
            rows[index].0.push(first);
            rows[index].1.push(last);
            std::fs::remove_dir_all(&lake)?;
        }
    }
    println!("\n### A benign tenant, alone and beside four slow-but-valid ones (a full cycle, real jobs)\n");
    println!(
        "| tenants | benign: first output ms, median of {ISOLATION_ROUNDS} | benign: its part done ms, median | all rounds (first / done) ms |"
    );
    println!("|---|---|---|---|");
    for ((name, _), (first, last)) in sides.iter().zip(&rows) {
        let all: Vec<String> = first.iter().zip(last).map(|(f, l)| format!("{} / {}", ms(*f), ms(*l))).collect();
        println!("| {name} | {} | {} | {} |", ms(median(first.clone())), ms(median(last.clone())), all.join(", "));
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |part: &str| filter.as_deref().is_none_or(|f| part.contains(f));
    if wanted("load") {
        let work = tempfile::tempdir()?;
        load_and_idle(work.path())?;
    }
    if wanted("planning") {
        let work = tempfile::tempdir()?;
        planning(work.path())?;
    }
    if wanted("isolation") {
        let work = tempfile::tempdir()?;
        isolation(work.path())?;
    }
    if wanted("slow") {
        let work = tempfile::tempdir()?;
        slow_neighbours(work.path())?;
    }
    Ok(())
}
