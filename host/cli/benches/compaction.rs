//! Compaction benchmark, in one run on one machine: one partition of 30 files
//! × 100,000 rows compacted end to end by the engine (child process,
//! download, merge, verify, upload, delete) versus the bare DuckDB
//! `COPY … ORDER BY` of the same files with the same threads, both in the
//! bundled build in-process and in the official build of the same version
//! (the Python wheel, installed from PyPI when missing); the same
//! partition on a loopback S3 server (moto) and the requests a compacted
//! partition costs; issue 10's workload (the partition sorted by host, then
//! time) and its daily case (24 × 1,000,000 rows under a 1GB limit), each
//! against the official build, with query times on the daily output for
//! two row-group sizes; then the engine's parent RSS over 50 cycles and the job's
//! peak RSS against its `memory_limit`; and what coordination between
//! engines (lease, second look at the manifests, commit, release) adds to
//! a job, on both stores, with one engine and with two contending for one
//! lease object.
//!
//! Run: `cargo bench -p compactor --bench compaction` (prints a Markdown
//! table).

mod common;
#[path = "common/engine.rs"]
mod engine;

use common::{at_rest, copy_file, copy_tree};
use engine::{MEMORY_LIMIT, NOW, OFFICIAL_DUCKDB, Shape, THREADS, manager, median, merge_sql, official_duckdb, run_cycle};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::DateTime;
use compactor_engine::CycleOptions;
use compactor_job::sql::DEFAULT_ROW_GROUP_SIZE;
use compactor_storage::Storage;

const FILES: usize = 30;
const ROWS_PER_FILE: usize = 100_000;
const PARTITION: &str = "bench/cpu/2026/04/11/10";

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--parent-rss") {
        return parent_rss_child();
    }
    let work = tempfile::tempdir()?;
    let template = work.path().join("template");
    generate(&template, ROWS_PER_FILE)?;
    let input_bytes: u64 = inputs(&template).iter().map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum();
    let rows = (FILES * ROWS_PER_FILE) as f64;
    let mb = input_bytes as f64 / 1e6;

    let by_time = alternate(work.path(), &template, HOURLY_BY_TIME, "lake")?;
    let (bare, official, engine) = (by_time.bare, by_time.official, by_time.engine);
    let (peak_job_rss, local_requests) = (by_time.peak_job_rss, by_time.requests);
    let moto = Moto::start()?;
    let mut s3 = Duration::MAX;
    let mut s3_requests = Default::default();
    for run in 0..3 {
        let storage = moto.bucket_with(&format!("bench{run}"), &template)?;
        let (elapsed, _, requests) = engine_cycle(work.path(), storage, &format!("s3tmp{run}"), HOURLY_BY_TIME)?;
        s3 = s3.min(elapsed);
        s3_requests = requests;
    }
    let per_core = |d: Duration, x: f64| x / d.as_secs_f64() / THREADS as f64;
    let mut coordination = Vec::new();
    for (label, storage, job) in
        [("local", Storage::local(&work.path().join("lake0"))?, engine), ("S3", moto.bucket_with("coordination", &template)?, s3)]
    {
        for engines in [1, 2] {
            let (per_job, requests) = coordination_cost(&storage, engines)?;
            coordination.push((label, engines, per_job, requests, job));
        }
    }

    // Issue 10's own workload: the same partition sorted by host, then time.
    let by_host = Shape { sort_keys: &["host", "time"], ..HOURLY_BY_TIME };
    let by_host = alternate(work.path(), &template, by_host, "host-lake")?;
    let (host_bare, host_official, host_engine) = (by_host.bare, by_host.official, by_host.engine);
    let daily = daily_case(work.path())?;

    let parent = std::process::Command::new(std::env::current_exe()?).arg("--parent-rss").output()?;
    anyhow::ensure!(parent.status.success(), "parent RSS run failed: {}", String::from_utf8_lossy(&parent.stderr));
    let rss: Vec<u64> = String::from_utf8(parent.stdout)?.split_whitespace().map(|n| n.parse().unwrap_or(0)).collect();
    let (rss_first, rss_max, rss_last) =
        (rss.first().copied().unwrap_or(0), rss.iter().copied().max().unwrap_or(0), rss.last().copied().unwrap_or(0));
    let limit = compactor_model::units::parse_size(MEMORY_LIMIT).unwrap_or(0);

    println!(
        "Partition: {FILES} files × {ROWS_PER_FILE} rows ({:.1} MB of Parquet), sorted by time, {THREADS} DuckDB threads; medians of {RUNS} runs, the three sides alternating (S3: best of 3).\n",
        mb
    );
    println!("| measurement | value | target |");
    println!("|---|---|---|");
    if let Some(official) = official {
        println!("| official DuckDB {OFFICIAL_DUCKDB} (Python wheel), same COPY | {:.0} ms | - |", official.as_secs_f64() * 1e3);
        println!("| bundled (in-process) / official throughput | {:.2} | - |", official.as_secs_f64() / bare.as_secs_f64());
        println!("| engine / official throughput | {:.2} | - |", official.as_secs_f64() / engine.as_secs_f64());
    }
    println!("| bare DuckDB COPY … ORDER BY (the bundled build, in-process) | {:.0} ms | - |", bare.as_secs_f64() * 1e3);
    println!("| engine end to end (child, download, merge, verify, upload, delete) | {:.0} ms | - |", engine.as_secs_f64() * 1e3);
    println!("| engine / bare throughput | {:.2} | ≥ 0.85 |", bare.as_secs_f64() / engine.as_secs_f64());
    println!("| bare: rows/s per core, MB/s per core | {:.0}, {:.1} | - |", per_core(bare, rows), per_core(bare, mb));
    println!("| engine: rows/s per core, MB/s per core | {:.0}, {:.1} | - |", per_core(engine, rows), per_core(engine, mb));
    println!("| engine on loopback S3 (moto), same partition | {:.0} ms | - |", s3.as_secs_f64() * 1e3);
    println!("| engine on S3: rows/s per core, MB/s per core | {:.0}, {:.1} | - |", per_core(s3, rows), per_core(s3, mb));
    for (label, r) in [("local", local_requests), ("S3", s3_requests)] {
        let r: compactor_storage::RequestCost = r;
        println!(
            "| requests per compacted partition, {label} ({FILES} files) | {} ({} LIST, {} GET, {} PUT, {} DELETE) = files + {} | ≤ files + a small constant |",
            r.total(),
            r.list,
            r.get,
            r.put,
            r.delete,
            r.total() as i64 - FILES as i64
        );
    }
    println!(
        "| issue 10's workload (ORDER BY host, time): bundled in-process / official / engine | {:.0} / {} / {:.0} ms | - |",
        host_bare.as_secs_f64() * 1e3,
        host_official.map_or("-".into(), |o| format!("{:.0}", o.as_secs_f64() * 1e3)),
        host_engine.as_secs_f64() * 1e3
    );
    if let Some(official) = host_official {
        println!(
            "| issue 10's workload: engine / official throughput | {:.2} | ≥ 0.92 |",
            official.as_secs_f64() / host_engine.as_secs_f64()
        );
    }
    daily.print();
    for (label, engines, per_job, r, job) in coordination {
        println!(
            "| coordination per job, {label}, {engines} engine(s): lease, second look, commit, release | {:.1} ms, {:.1} requests ({:.1} LIST, {:.1} GET, {:.1} PUT, {:.1} DELETE) = {:.1}% of the job | ≤ ~10% |",
            per_job.as_secs_f64() * 1e3,
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            per_job.as_secs_f64() * 100.0 / job.as_secs_f64()
        );
    }
    println!(
        "| parent RSS over 50 cycles (first / max / last) | {:.1} / {:.1} / {:.1} MB | < 100 MB |",
        rss_first as f64 / 1e6,
        rss_max as f64 / 1e6,
        rss_last as f64 / 1e6
    );
    println!(
        "| job peak RSS vs memory_limit {MEMORY_LIMIT} | {:.0} MB ({:.0}% of the limit) | ≤ limit + 30% |",
        peak_job_rss as f64 / 1e6,
        peak_job_rss as f64 * 100.0 / limit as f64
    );
    Ok(())
}

/// Runs of each side of a comparison.
const RUNS: usize = 7;

/// One shape of the partition compacted by the bundled DuckDB in-process,
/// by the official build and by the engine: medians of [`RUNS`], the three
/// sides alternating run after run, since this VM's speed drifts by ±10%
/// within minutes.
struct Sides {
    bare: Duration,
    official: Option<Duration>,
    engine: Duration,
    peak_job_rss: u64,
    requests: compactor_storage::RequestCost,
}

fn alternate(work: &Path, template: &Path, shape: Shape, name: &str) -> anyhow::Result<Sides> {
    let (mut bare, mut official, mut engine) = (Vec::new(), Vec::new(), Vec::new());
    let (mut peak_job_rss, mut requests, mut has_official) = (0, Default::default(), true);
    for run in 0..RUNS {
        bare.push(bare_duckdb(&inputs(template), &work.join(format!("{name}-bare.parquet")), shape.sort_keys)?);
        if has_official {
            let elapsed = official_duckdb(&inputs(template), &work.join(format!("{name}-official.parquet")), shape.sort_keys, 1)?;
            has_official = elapsed.is_some();
            official.extend(elapsed.map(|(elapsed, _)| elapsed));
        }
        let lake = work.join(format!("{name}{run}"));
        copy_partition(template, &lake)?;
        let (elapsed, peak, cost) = engine_cycle(work, Storage::local(&lake)?, &format!("{name}-tmp{run}"), shape)?;
        engine.push(elapsed);
        peak_job_rss = peak_job_rss.max(peak);
        requests = cost;
    }
    let official = (!official.is_empty()).then(|| median(official));
    Ok(Sides { bare: median(bare), official, engine: median(engine), peak_job_rss, requests })
}

/// 30 raw files of one hour partition, written by DuckDB.
fn generate(root: &Path, rows: usize) -> anyhow::Result<()> {
    let dir = root.join(PARTITION);
    std::fs::create_dir_all(&dir)?;
    let connection = compactor_job::verify::connection()?;
    let hour_us = DateTime::parse_from_rfc3339("2026-04-11T10:00:00Z")?.timestamp_micros();
    for f in 0..FILES {
        let path = dir.join(format!("cpu_20260411_10{:02}00_{:09}.parquet", f * 2, f));
        connection.execute_batch(&format!(
            "COPY (SELECT make_timestamp(({hour_us} + ((r * {FILES} + {f}) % 3600000000))::BIGINT)::TIMESTAMPTZ AS time, \
             'host-' || (r % 50) AS host, 'region-' || (r % 5) AS region, random() * 100 AS usage, r AS counter \
             FROM range({rows}) t(r)) TO '{}' (FORMAT PARQUET, COMPRESSION ZSTD)",
            path.display()
        ))?;
        at_rest(&path)?;
    }
    Ok(())
}

fn inputs(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(root.join(PARTITION)).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    files.sort();
    files
}

fn copy_partition(template: &Path, lake: &Path) -> anyhow::Result<()> {
    let dir = lake.join(PARTITION);
    std::fs::create_dir_all(&dir)?;
    for file in inputs(template) {
        copy_file(&file, &dir.join(file.file_name().unwrap_or_default()))?;
    }
    Ok(())
}

fn bare_duckdb(inputs: &[PathBuf], output: &Path, order: &[&str]) -> anyhow::Result<Duration> {
    let connection = compactor_job::verify::connection()?;
    connection.execute_batch(&format!("SET threads={THREADS}; SET memory_limit='{MEMORY_LIMIT}'"))?;
    let sql = merge_sql(inputs, output, order, DEFAULT_ROW_GROUP_SIZE);
    let started = Instant::now();
    connection.execute_batch(&sql)?;
    Ok(started.elapsed())
}

const HOURLY_BY_TIME: Shape = Shape { tier: "hourly", sort_keys: &["time"], row_group_size: DEFAULT_ROW_GROUP_SIZE, compaction: "" };

/// One cycle over a fresh copy of the partition, which makes one job:
/// (wall time, job peak RSS, requests).
fn engine_cycle(
    work: &Path,
    storage: Storage,
    temp: &str,
    shape: Shape,
) -> anyhow::Result<(Duration, u64, compactor_storage::RequestCost)> {
    let (elapsed, report) = run_cycle(work, storage, temp, shape)?;
    anyhow::ensure!(report.jobs.len() == 1, "one job expected: {:?}", report.jobs);
    Ok((elapsed, report.jobs[0].peak_job_rss_bytes, report.requests))
}

/// The daily case of issue 10: 24 hourly outputs of 1,000,000 rows each
/// (sorted by time, as hourly outputs are) merged by the daily tier sorted
/// by host, then time, with `memory_limit` 1GB so that DuckDB spills; the
/// official build runs the same statement under the same limit; then the
/// output is queried with Arc's row groups and with 1,000,000-row groups.
struct DailyCase {
    engine: Duration,
    engine_peak_rss: u64,
    official: Option<(Duration, u64)>,
    query_default_groups: Duration,
    query_large_groups: Duration,
}

const DAILY_FILES: usize = 24;
const DAILY_ROWS: usize = 1_000_000;

fn daily_case(work: &Path) -> anyhow::Result<DailyCase> {
    let template = work.join("daily-template");
    let day = template.join("bench/cpu/2026/04/11");
    let connection = compactor_job::verify::connection()?;
    let day_us = DateTime::parse_from_rfc3339("2026-04-11T00:00:00Z")?.timestamp_micros();
    for hour in 0..DAILY_FILES {
        let dir = day.join(format!("{hour:02}"));
        std::fs::create_dir_all(&dir)?;
        let start = day_us + hour as i64 * 3_600_000_000;
        connection.execute_batch(&format!(
            "COPY (SELECT make_timestamp(({start} + r * 3600)::BIGINT)::TIMESTAMPTZ AS time, 'host-' || (r % 200) AS host, \
             'region-' || (r % 5) AS region, random() * 100 AS usage, r AS counter FROM range({DAILY_ROWS}) t(r) ORDER BY time) \
             TO '{}' (FORMAT PARQUET, COMPRESSION ZSTD)",
            dir.join(format!("cpu_20260411_{hour:02}0000_{hour:09}_b1_compacted.parquet")).display()
        ))?;
    }
    let inputs: Vec<PathBuf> =
        (0..DAILY_FILES).map(|hour| day.join(format!("{hour:02}/cpu_20260411_{hour:02}0000_{hour:09}_b1_compacted.parquet"))).collect();
    for input in &inputs {
        at_rest(input)?;
    }
    let official = official_duckdb(&inputs, &work.join("daily-official.parquet"), &["host", "time"], 1)?;
    let mut runs = Vec::new();
    for (run, row_group_size) in [DEFAULT_ROW_GROUP_SIZE, 1_000_000].into_iter().enumerate() {
        let lake = work.join(format!("daily-lake{run}"));
        copy_tree(&template, &lake)?;
        let shape = Shape { tier: "daily", sort_keys: &["host", "time"], row_group_size, compaction: "" };
        let (elapsed, peak, _) = engine_cycle(work, Storage::local(&lake)?, &format!("daily-tmp{run}"), shape)?;
        let output = find_daily_output(&lake.join("bench/cpu/2026/04/11"))?;
        runs.push((elapsed, peak, query_time(&output)?));
    }
    Ok(DailyCase {
        engine: runs[0].0,
        engine_peak_rss: runs[0].1,
        official,
        query_default_groups: runs[0].2,
        query_large_groups: runs[1].2,
    })
}

impl DailyCase {
    fn print(&self) {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "| daily case ({DAILY_FILES} × {DAILY_ROWS} rows, ORDER BY host, time, memory_limit {MEMORY_LIMIT}): engine, job peak RSS | {:.0} ms, {:.0} MB | - |",
            ms(self.engine),
            self.engine_peak_rss as f64 / 1e6
        );
        if let Some((official, rss)) = self.official {
            println!("| daily case: official, its peak RSS | {:.0} ms, {:.0} MB | - |", ms(official), rss as f64 / 1e6);
            println!("| daily case: engine / official throughput | {:.2} | reported |", official.as_secs_f64() / self.engine.as_secs_f64());
        }
        println!(
            "| daily output, one host's average over the day (best of 3): row groups of {DEFAULT_ROW_GROUP_SIZE} / 1,000,000 | {:.1} / {:.1} ms | - |",
            ms(self.query_default_groups),
            ms(self.query_large_groups)
        );
    }
}

fn find_daily_output(day: &Path) -> anyhow::Result<PathBuf> {
    std::fs::read_dir(day)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .ok_or_else(|| anyhow::anyhow!("no daily output in {}", day.display()))
}

/// A selective query on one output: one host's average over the day, best
/// of 3, in the bundled DuckDB.
fn query_time(output: &Path) -> anyhow::Result<Duration> {
    let connection = compactor_job::verify::connection()?;
    connection.execute_batch(&format!("SET threads={THREADS}"))?;
    let sql = format!("SELECT avg(usage) FROM read_parquet('{}') WHERE host = 'host-7'", output.display());
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        let _: Option<f64> = connection.query_row(&sql, [], |row| row.get(0))?;
        best = best.min(started.elapsed());
    }
    Ok(best)
}

/// Jobs timed per engine when measuring coordination.
const COORDINATION_JOBS: u32 = 20;

/// What the ownership protocol adds to one job, beyond Arc's: take the
/// partition's lease, look at the manifests again under it, create the
/// outcome (the commit), remove it with the manifest, release the lease.
/// `engines` engines run at once, each on its own hours of one day, so that
/// they contend for one lease object. Returns the mean wall time per job and
/// the requests per job (total, LIST, GET, PUT, DELETE).
fn coordination_cost(storage: &Storage, engines: usize) -> anyhow::Result<(Duration, [f64; 5])> {
    use compactor_job::{ManifestStore, Outcome};
    use compactor_storage::lease::{Leases, new_engine_id};
    let (storage, counts) = storage.counted();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let started = Instant::now();
    runtime.block_on(async {
        let jobs = (0..engines).map(|engine| {
            let storage = storage.clone();
            async move {
                let leases = Leases::new(storage.clone(), new_engine_id(), Default::default());
                let manifests = ManifestStore::new(storage);
                for job in 0..COORDINATION_JOBS {
                    let partition = format!("bench/cpu/2026/04/12/{:02}", engine * 12 + job as usize % 12);
                    let lease = leases.try_acquire(&partition).await?.ok_or_else(|| anyhow::anyhow!("{partition} is busy"))?;
                    manifests.held_files().await?;
                    let manifest = format!("_compaction_state/hourly/bench/coordination_{engine}_{job}.json");
                    manifests.decide(&manifest, "bench/out.parquet", Outcome::Committed, leases.engine()).await?;
                    manifests.finish(&manifest, false).await?;
                    leases.release(lease).await;
                }
                anyhow::Ok(())
            }
        });
        futures::future::try_join_all(jobs).await
    })?;
    let elapsed = started.elapsed();
    let total = counts.snapshot();
    let jobs = f64::from(COORDINATION_JOBS) * engines as f64;
    let per_job = [total.total(), total.list, total.get, total.put, total.delete].map(|n| n as f64 / jobs);
    // The engines run at once: a job's share is the wall time over the jobs
    // of one engine.
    Ok((elapsed / COORDINATION_JOBS, per_job))
}

/// A moto server on 127.0.0.1 for the S3 runs, stopped on drop.
struct Moto {
    child: std::process::Child,
    endpoint: String,
}

impl Moto {
    fn start() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = std::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start moto_server ({e}); pip install 'moto[server]'"))?;
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Self { child, endpoint: format!("http://127.0.0.1:{port}") });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        anyhow::bail!("moto_server did not start")
    }

    /// A new bucket holding the template partition.
    fn bucket_with(&self, name: &str, template: &Path) -> anyhow::Result<Storage> {
        use std::io::{Read, Write};
        let address = self.endpoint.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(address)?;
        write!(stream, "PUT /{name} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        stream.read_to_string(&mut String::new())?;
        let options: std::collections::BTreeMap<String, String> = [
            ("aws_endpoint", self.endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_region", "us-east-1"),
            ("aws_access_key_id", "test"),
            ("aws_secret_access_key", "test"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let storage = Storage::open(&format!("s3://{name}/lake"), &options, Path::new("."))?;
        let runtime = tokio::runtime::Runtime::new()?;
        for file in inputs(template) {
            let key = format!("{PARTITION}/{}", file.file_name().unwrap_or_default().to_string_lossy());
            runtime.block_on(storage.write(&key, std::fs::read(&file)?))?;
        }
        Ok(storage)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// In a fresh process that never opens DuckDB: 50 cycles over small
/// partitions, printing this process's RSS after each.
fn parent_rss_child() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let template = work.path().join("template");
    // Small inputs, written by the job binary's own DuckDB-free path: copy a
    // tiny Parquet file produced by a throwaway child.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_compactor"))
        .args(["demo", "--plan-only", "--dir"])
        .arg(work.path().join("seed"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "cannot make seed files");
    let seed_hour = find_hour_dir(&work.path().join("seed/lake/demo/cpu"))?;
    let dir = template.join(PARTITION);
    std::fs::create_dir_all(&dir)?;
    for (i, file) in std::fs::read_dir(&seed_hour)?.flatten().enumerate() {
        std::fs::copy(file.path(), dir.join(format!("cpu_20260411_10{:02}00_{i:09}.parquet", i * 2)))?;
    }
    let lake = work.path().join("lake");
    std::fs::create_dir_all(&lake)?;
    let manager = manager(work.path(), Storage::local(&lake)?, "tmp", HOURLY_BY_TIME)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let now = DateTime::parse_from_rfc3339(NOW)?.to_utc();
    let mut out = Vec::new();
    for _ in 0..50 {
        let _ = std::fs::remove_dir_all(lake.join("bench"));
        copy_partition(&template, &lake)?;
        let report = runtime.block_on(manager.run_cycle(CycleOptions { now: Some(now), ..Default::default() }))?;
        anyhow::ensure!(report.all_succeeded() && report.jobs.len() == 1, "cycle failed: {:?}", report.jobs);
        out.push(compactor_job::rss_bytes().to_string());
    }
    println!("{}", out.join(" "));
    Ok(())
}

fn find_hour_dir(measurement: &Path) -> anyhow::Result<PathBuf> {
    let mut dir = measurement.to_owned();
    for _ in 0..4 {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)?.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
        entries.sort();
        dir = entries.into_iter().next().ok_or_else(|| anyhow::anyhow!("no sample hour under {}", measurement.display()))?;
    }
    Ok(dir)
}
