//! Issue 23: the daily tier's job over a day of 24 hourly outputs (each
//! written by the engine's own hourly tier, so each sorted by the sort
//! keys), with its fast path and with `fast_path = false` (DuckDB, as
//! before the fast path), against the official DuckDB build's `COPY` of
//! the same 24 files and against the physical floor of this machine — the
//! input bytes read and written once, with an fsync. Days of 24 × 1,000,000 and
//! 24 × 100,000 rows, sort keys `["time"]` and `["host", "time"]`; the
//! sides alternate run after run, medians of [`RUNS`], peak RSS of each.
//!
//! Run: `cargo bench -p compactor --bench fast_merge` (prints a Markdown
//! table).

mod common;
#[path = "common/engine.rs"]
mod engine;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::DateTime;
use common::{at_rest, copy_tree};
use compactor_job::sql::DEFAULT_ROW_GROUP_SIZE;
use compactor_storage::Storage;
use engine::{Shape, median, official_duckdb, run_cycle};

const HOURS: usize = 24;
const RAW_FILES_PER_HOUR: usize = 10;
const RUNS: usize = 3;
const DAY: &str = "bench/cpu/2026/04/11";

/// One day's shape: rows per hour and the measurement's sort keys.
struct Case {
    rows_per_hour: usize,
    sort_keys: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case { rows_per_hour: 1_000_000, sort_keys: &["time"] },
    Case { rows_per_hour: 1_000_000, sort_keys: &["host", "time"] },
    Case { rows_per_hour: 100_000, sort_keys: &["time"] },
    Case { rows_per_hour: 100_000, sort_keys: &["host", "time"] },
];

fn main() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    println!(
        "| day | sort keys | inputs | floor (copy + fsync) | official DuckDB COPY, peak RSS | engine job, fast_path = false, peak RSS | engine job, peak RSS (path) | engine / floor | official / engine |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (n, case) in CASES.iter().enumerate() {
        let template = hourly_day(work.path(), n, case)?;
        let inputs = day_files(&template)?;
        let input_bytes: u64 = inputs.iter().map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum();
        let (mut floor, mut official, mut engine, mut duckdb) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut official_rss, mut engine_rss, mut duckdb_rss) = (0u64, 0u64, 0u64);
        let mut path = String::new();
        for run in 0..RUNS {
            floor.push(copy_floor(&inputs, &work.path().join("floor.bin"))?);
            if let Some((elapsed, rss)) = official_duckdb(&inputs, &work.path().join("official.parquet"), case.sort_keys, 1)? {
                official.push(elapsed);
                official_rss = official_rss.max(rss);
            }
            for fast_path in [true, false] {
                let lake = work.path().join(format!("lake{n}-{run}-{fast_path}"));
                copy_tree(&template, &lake)?;
                let compaction = if fast_path { "" } else { "fast_path = false" };
                let shape = Shape { tier: "daily", sort_keys: case.sort_keys, row_group_size: DEFAULT_ROW_GROUP_SIZE, compaction };
                let (elapsed, report) = run_cycle(work.path(), Storage::local(&lake)?, &format!("tmp{n}-{run}"), shape)?;
                let job = match report.jobs.as_slice() {
                    [job] if job.files_compacted == HOURS => job,
                    jobs => anyhow::bail!("one daily job of {HOURS} inputs expected: {jobs:?}"),
                };
                if fast_path {
                    engine.push(elapsed);
                    engine_rss = engine_rss.max(job.peak_job_rss_bytes);
                    path = job.path.name().to_owned();
                } else {
                    duckdb.push(elapsed);
                    duckdb_rss = duckdb_rss.max(job.peak_job_rss_bytes);
                }
                std::fs::remove_dir_all(&lake)?;
            }
        }
        let (floor, engine, duckdb) = (median(floor), median(engine), median(duckdb));
        let official = (!official.is_empty()).then(|| median(official));
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1e3);
        println!(
            "| {HOURS} × {} rows | {} | {:.0} MB | {} | {} | {}, {:.0} MB | {}, {:.0} MB ({path}) | {:.1} | {} |",
            case.rows_per_hour,
            case.sort_keys.join(", "),
            input_bytes as f64 / 1e6,
            ms(floor),
            official.map_or("-".to_owned(), |o| format!("{}, {:.0} MB", ms(o), official_rss as f64 / 1e6)),
            ms(duckdb),
            duckdb_rss as f64 / 1e6,
            ms(engine),
            engine_rss as f64 / 1e6,
            engine.as_secs_f64() / floor.as_secs_f64(),
            official.map_or("-".to_owned(), |o| format!("{:.2}", o.as_secs_f64() / engine.as_secs_f64())),
        );
    }
    Ok(())
}

/// A day of raw files ([`RAW_FILES_PER_HOUR`] an hour, rows in no order)
/// compacted by the engine's hourly tier: the day the daily tier finds.
fn hourly_day(work: &Path, n: usize, case: &Case) -> anyhow::Result<PathBuf> {
    let template = work.join(format!("template{n}"));
    let connection = compactor_job::verify::connection()?;
    let day_us = DateTime::parse_from_rfc3339("2026-04-11T00:00:00Z")?.timestamp_micros();
    let rows = case.rows_per_hour / RAW_FILES_PER_HOUR;
    for hour in 0..HOURS {
        let dir = template.join(DAY).join(format!("{hour:02}"));
        std::fs::create_dir_all(&dir)?;
        for file in 0..RAW_FILES_PER_HOUR {
            let start = day_us + hour as i64 * 3_600_000_000;
            let first = (hour * RAW_FILES_PER_HOUR + file) * rows;
            let path = dir.join(format!("cpu_20260411_{hour:02}{:02}00_{first:09}.parquet", file * 10));
            // Times spread over the hour in no order (a prime stride), 200
            // hosts, a unique counter.
            connection.execute_batch(&format!(
                "COPY (SELECT make_timestamp(({start} + ((r * 7919 + {file}) % 3600000000))::BIGINT)::TIMESTAMPTZ AS time, \
                 'host-' || (r % 200) AS host, 'region-' || (r % 5) AS region, random() * 100 AS usage, ({first} + r)::BIGINT AS counter \
                 FROM range({rows}) t(r)) TO '{}' (FORMAT PARQUET, COMPRESSION ZSTD)",
                path.display()
            ))?;
        }
    }
    let shape = Shape { tier: "hourly", sort_keys: case.sort_keys, row_group_size: DEFAULT_ROW_GROUP_SIZE, compaction: "" };
    let (_, report) = run_cycle(work, Storage::local(&template)?, &format!("hourly-tmp{n}"), shape)?;
    anyhow::ensure!(report.jobs.len() == HOURS, "one hourly job an hour: {} jobs", report.jobs.len());
    for input in day_files(&template)? {
        at_rest(&input)?;
    }
    Ok(template)
}

/// The day's files, hour by hour.
fn day_files(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for hour in 0..HOURS {
        let dir = root.join(DAY).join(format!("{hour:02}"));
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "parquet") {
                files.push(path);
            }
        }
    }
    files.sort();
    anyhow::ensure!(files.len() == HOURS, "one hourly output an hour: {files:?}");
    Ok(files)
}

/// The physical floor: every input byte read and written once into one
/// file, then fsync.
fn copy_floor(inputs: &[PathBuf], output: &Path) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut out = std::fs::File::create(output)?;
    let mut buffer = vec![0u8; 1 << 20];
    for input in inputs {
        let mut file = std::fs::File::open(input)?;
        loop {
            let n = file.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            out.write_all(&buffer[..n])?;
        }
    }
    out.sync_all()?;
    let elapsed = started.elapsed();
    std::fs::remove_file(output)?;
    Ok(elapsed)
}
