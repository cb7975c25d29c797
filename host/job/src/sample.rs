//! A realistic sample lake on local disk, for `compactor demo` and tests:
//! several measurements with tags, one day of hourly partitions of small raw
//! Parquet files named as Arc's ingest names them.

use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, Duration, DurationRound, Utc};

/// What to generate.
#[derive(Debug, Clone)]
pub struct SampleSpec {
    /// Database name.
    pub database: String,
    /// Measurements and their tag columns.
    pub measurements: Vec<(String, Vec<String>)>,
    /// Hours of data (consecutive, starting at the day's midnight).
    pub hours: u32,
    /// Raw files per hour partition.
    pub files_per_hour: u32,
    /// Rows per file.
    pub rows_per_file: u32,
}

impl Default for SampleSpec {
    /// `demo`: cpu, mem and disk; 24 hours of 12 files of 500 rows each.
    fn default() -> Self {
        let m = |name: &str, tags: &[&str]| (name.to_owned(), tags.iter().map(|t| (*t).to_owned()).collect());
        Self {
            database: "demo".into(),
            measurements: vec![m("cpu", &["host", "region"]), m("mem", &["host"]), m("disk", &["host", "device"])],
            hours: 24,
            files_per_hour: 12,
            rows_per_file: 500,
        }
    }
}

/// What was generated.
#[derive(Debug, Clone)]
pub struct SampleLake {
    /// Root directory of the lake.
    pub root: PathBuf,
    /// The day the data covers (UTC midnight).
    pub day: DateTime<Utc>,
    /// Files written.
    pub files: usize,
    /// Rows written.
    pub rows: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// Writes the lake under `root` for the day two days before `now`, so that
/// both Arc tiers consider it old enough at `now`.
pub fn generate(root: &Path, now: DateTime<Utc>, spec: &SampleSpec) -> anyhow::Result<SampleLake> {
    let day = now.duration_trunc(Duration::days(1)).context("cannot truncate the date")? - Duration::days(2);
    let connection = duckdb::Connection::open_in_memory().context("cannot open DuckDB")?;
    let mut lake = SampleLake { root: root.to_owned(), day, files: 0, rows: 0, bytes: 0 };
    let slot_micros = 3_600_000_000i64 / i64::from(spec.files_per_hour * spec.rows_per_file);
    for (measurement_index, (measurement, tags)) in spec.measurements.iter().enumerate() {
        for hour in 0..spec.hours {
            let hour_start = day + Duration::hours(i64::from(hour));
            let dir = root.join(format!("{}/{measurement}/{}", spec.database, hour_start.format("%Y/%m/%d/%H")));
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            for file in 0..spec.files_per_hour {
                // Ingest flushes a file every few minutes into the hour it covers.
                let written = hour_start + Duration::minutes(i64::from(file) * 60 / i64::from(spec.files_per_hour) + 4);
                let nanos = (measurement_index as u32 * 7919 + hour * 104_729 + file * 15_485_863) % 1_000_000_000;
                let name = format!("{measurement}_{}_{nanos:09}.parquet", written.format("%Y%m%d_%H%M%S"));
                let path = dir.join(&name);
                let tag_columns: String =
                    tags.iter().enumerate().map(|(i, tag)| format!(", '{tag}-' || ((r + {i}) % {}) AS \"{tag}\"", 4 + i * 2)).collect();
                let first_slot = i64::from(file) * i64::from(spec.rows_per_file);
                let sql = format!(
                    "COPY (SELECT make_timestamp(({start_us} + ({first_slot} + r) * {slot_micros})::BIGINT)::TIMESTAMPTZ AS time{tag_columns}, \
                     round(50 + 40 * sin(r / 17.0 + {seed}), 3) AS value, (r * 31 + {seed}) % 1000 AS counter \
                     FROM range({rows}) t(r)) TO '{path}' (FORMAT PARQUET, COMPRESSION ZSTD)",
                    start_us = hour_start.timestamp_micros(),
                    seed = measurement_index as u32 * 1000 + hour * 10 + file,
                    rows = spec.rows_per_file,
                    path = path.display().to_string().replace('\'', "''"),
                );
                connection.execute_batch(&sql).with_context(|| format!("cannot write {}", path.display()))?;
                lake.files += 1;
                lake.rows += u64::from(spec.rows_per_file);
                lake.bytes += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    Ok(lake)
}
