//! The fast paths (issue 23): a daily job over the engine's own hourly
//! outputs copies their row groups when every condition holds, or else
//! merges them as sorted streams, and its output holds the same rows in
//! the same order as DuckDB's merge of the same inputs, read back by DuckDB
//! and by pyarrow; every day that must fall back does, and says why in the
//! `-v` log.

use std::path::Path;

use compactor_job::verify;

use crate::kit::{TestConfig, value};
use crate::util::{compactor, text};

const NOW: &str = "2026-04-13T12:00:00Z";
const DAY: &str = "db/cpu/2026/04/11";

/// One random day's raw files.
#[derive(Debug, Clone, Default)]
struct DayShape {
    /// Hours with files, and how many rows each raw file has (0: an empty
    /// hour).
    hours: Vec<(u32, usize)>,
    /// An hour whose files have one more column.
    drift: Option<u32>,
    /// An hour with a row whose time no parser reads (a null time).
    null_time: Option<u32>,
    /// The last row of an hour at the next hour's first instant, which the
    /// next hour has too: equal times at the seam.
    tie: bool,
    /// An hour's directory holding a file of times two hours later.
    late: Option<u32>,
    /// A decimal column too wide for 8 bytes.
    wide_decimal: bool,
}

impl DayShape {
    /// Whether the daily job may copy this day's row groups (by `time`).
    fn copies(&self) -> bool {
        self.drift.is_none() && self.null_time.is_none() && self.late.is_none()
    }

    /// The path the daily job must take with `sort_keys`.
    fn path(&self, sort_keys: &[&str]) -> &'static str {
        if self.drift.is_some() {
            "duckdb"
        } else if self.copies() && sort_keys.first() == Some(&"time") {
            "row_group_copy"
        } else if self.wide_decimal {
            "duckdb"
        } else {
            "streaming_merge"
        }
    }
}

/// A small deterministic generator (xorshift), so a failing day can be
/// run again from its seed.
struct Random(u64);

impl Random {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

fn random_day(seed: u64) -> DayShape {
    let mut random = Random(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    // At least two hours: the daily tier's min_files here.
    let count = 2 + random.next(23) as u32;
    let first = random.next(u64::from(25 - count)) as u32;
    let hours = (first..first + count).map(|h| (h, if random.next(10) == 0 { 0 } else { 1 + random.next(400) as usize })).collect();
    let pick = |random: &mut Random, odds: u64| (random.next(odds) == 0).then(|| first + random.next(u64::from(count)) as u32);
    DayShape {
        hours,
        drift: pick(&mut random, 5),
        null_time: pick(&mut random, 6),
        tie: random.next(2) == 0,
        late: pick(&mut random, 6).filter(|h| *h < 22),
        wide_decimal: random.next(8) == 0,
    }
}

/// Writes the day's raw files (two an hour, rows in no order) under `lake`;
/// returns the rows written. Every row's `value` is unique.
fn write_raw_day(lake: &Path, shape: &DayShape, seed: u64) -> u64 {
    let connection = verify::connection().unwrap();
    let day_us: i64 = 1_775_865_600_000_000; // 2026-04-11T00:00:00Z
    let mut rows = 0u64;
    for &(hour, n) in &shape.hours {
        let dir = lake.join(DAY).join(format!("{hour:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        let start = day_us + i64::from(hour) * 3_600_000_000;
        for file in 0..2u64 {
            let first = seed * 1_000_000 + u64::from(hour) * 10_000 + file * 1_000;
            let extra = if shape.drift == Some(hour) { ", r AS extra" } else { "" };
            // DuckDB stores a decimal this wide as FIXED_LEN_BYTE_ARRAY.
            let wide = if shape.wide_decimal { ", ((r % 13) * 1.5)::DECIMAL(21, 1) AS wide" } else { "" };
            // Distinct times within the hour, both files interleaved.
            let mut time = format!("make_timestamp(({start} + (r * 2 + {file}) * 997)::BIGINT)::TIMESTAMPTZ");
            if shape.tie && file == 1 && n > 0 {
                time = format!("CASE WHEN r = {n} - 1 THEN make_timestamp(({start} + 3600000000)::BIGINT)::TIMESTAMPTZ ELSE {time} END");
            }
            let time = if shape.null_time == Some(hour) && file == 0 {
                format!("CASE WHEN r = 0 THEN 'not a time' ELSE CAST({time} AS VARCHAR) END")
            } else {
                time
            };
            let path = dir.join(format!("cpu_20260411_{hour:02}{:02}00_{first:09}.parquet", file * 30));
            connection
                .execute_batch(&format!(
                    "COPY (SELECT {time} AS time, CASE WHEN r % 11 = 5 THEN NULL ELSE 'host-' || (r % 7) END AS host, \
                 md5((r + {first})::VARCHAR) AS note, \
                     ({first} + r)::BIGINT AS value, ((r % 13) * 1.5)::DOUBLE AS usage, ((r % 13) * 1.5)::DECIMAL(9, 2) AS price\
                     {wide}{extra} FROM range({n}) t(r) ORDER BY hash(r + {seed})) \
                     TO '{}' (FORMAT PARQUET)",
                    path.display()
                ))
                .unwrap();
            rows += n as u64;
        }
        // The next hour's first instant: the tie's other half.
        if shape.tie && n > 0 && hour > shape.hours[0].0 {
            let path = dir.join(format!("cpu_20260411_{hour:02}5900_{:09}.parquet", seed * 1_000_000 + u64::from(hour) * 10_000 + 9_000));
            connection
                .execute_batch(&format!(
                    "COPY (SELECT make_timestamp({start}::BIGINT)::TIMESTAMPTZ AS time, 'host-0' AS host, 'tie' AS note, \
                     {}::BIGINT AS value, 0.0::DOUBLE AS usage{}) TO '{}' (FORMAT PARQUET)",
                    seed * 1_000_000 + u64::from(hour) * 10_000 + 9_000,
                    if shape.drift == Some(hour) { ", 0 AS extra" } else { "" },
                    path.display()
                ))
                .unwrap();
            rows += 1;
        }
    }
    if let Some(hour) = shape.late {
        let dir = lake.join(DAY).join(format!("{hour:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        let later = day_us + i64::from(hour + 2) * 3_600_000_000;
        let value = seed * 1_000_000 + 999_000;
        let extra = if shape.drift == Some(hour) { ", 0 AS extra" } else { "" };
        connection
            .execute_batch(&format!(
                "COPY (SELECT make_timestamp(({later} + r)::BIGINT)::TIMESTAMPTZ AS time, 'host-1' AS host, 'late' AS note, \
                 ({value} + r)::BIGINT AS value, 1.0::DOUBLE AS usage{extra} FROM range(5) t(r)) TO '{}' (FORMAT PARQUET)",
                dir.join(format!("cpu_20260411_{hour:02}5800_{value:09}.parquet")).display()
            ))
            .unwrap();
        rows += 5;
    }
    rows
}

/// `once` of one tier with `-v`: its JSON report and its log.
fn once(config: &str, tier: &str) -> (serde_json::Value, String) {
    let output = compactor(&["-v", "once", "--config", config, "--now", NOW, "--tier", tier, "--format", "json"], &[]);
    assert!(output.status.success(), "{}", text(&output));
    (serde_json::from_slice(&output.stdout).unwrap(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// The day's one daily output.
fn daily_output(lake: &Path) -> std::path::PathBuf {
    let day = lake.join(DAY);
    let outputs: Vec<_> = std::fs::read_dir(&day).unwrap().flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
    assert_eq!(outputs.len(), 1, "one daily output: {outputs:?} beside {:?}", crate::util::files_under(&day));
    outputs.into_iter().next().unwrap()
}

/// `(host, time, value)` of every row of `file` in the file's order, read by DuckDB.
type Row = (Option<String>, Option<i64>, i64);

fn rows_in_order(file: &Path) -> Vec<Row> {
    let connection = verify::connection().unwrap();
    let mut statement = connection.prepare(&format!("SELECT host, epoch_us(time), value FROM read_parquet('{}')", file.display())).unwrap();
    statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?))).unwrap().collect::<Result<_, _>>().unwrap()
}

/// Rows and the sum of `value` as pyarrow reads `file`.
fn pyarrow_rows(file: &Path) -> (u64, i64) {
    let script = "import sys, pyarrow.parquet as pq, pyarrow.compute as pc\n\
                  t = pq.read_table(sys.argv[1])\n\
                  print(t.num_rows, pc.sum(t.column('value')).as_py() or 0)";
    let output = std::process::Command::new("python3").args(["-c", script, &file.display().to_string()]).output().unwrap();
    assert!(output.status.success(), "pyarrow (pip install pyarrow) cannot read {}: {}", file.display(), text(&output));
    let printed = String::from_utf8_lossy(&output.stdout);
    let mut fields = printed.split_whitespace();
    (fields.next().unwrap().parse().unwrap(), fields.next().unwrap().parse().unwrap())
}

fn day_config(root: &Path, lake: &str, fast_path: bool, sort_keys: &[&str], row_group_size: i64, merge_batch_rows: i64) -> String {
    let keys: Vec<String> = sort_keys.iter().map(|k| (*k).to_owned()).collect();
    let config = TestConfig::new(lake)
        .tier("hourly", "builtin:hourly", &[("min_files", value(2))])
        .tier("daily", "builtin:daily", &[("min_files", value(2))])
        .compaction("temp_directory", format!("tmp-{lake}"))
        .compaction("threads", 1)
        .compaction("fast_path", fast_path)
        .compaction("row_group_size", row_group_size)
        .compaction("merge_batch_rows", merge_batch_rows)
        .compaction("default_sort_keys", keys)
        .write(root);
    let path = root.join(format!("{lake}.toml"));
    std::fs::rename(config, &path).unwrap();
    path.display().to_string()
}

/// Compacts one day hourly, then daily twice from the same hourly outputs:
/// with the fast path and without. Checks the path each took, and that both
/// outputs hold the same rows in the same order. Returns the fast side's
/// daily log.
fn compare_paths(seed: u64, shape: &DayShape, sort_keys: &[&str]) -> String {
    // Smaller row groups and more rows for some days: inputs of several
    // groups, each copied with its own offsets. (DuckDB fills a group a
    // chunk of up to 2,048 rows at a time: below that its groups exceed the
    // setting, and the copy, which keeps the inputs' groups, declines.)
    let row_group_size = [122_880, 2_048, 4_096][(seed % 3) as usize];
    // The streaming merge reads its inputs in batches of this many rows:
    // small ones make runs span batches and inputs end mid-run.
    let merge_batch_rows = [8_192, 7, 100, 1_500][(seed % 4) as usize];
    let mut shape = shape.clone();
    if row_group_size < 122_880 {
        shape.hours.iter_mut().for_each(|(_, rows)| *rows *= 10);
    }
    let shape = &shape;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let rows = write_raw_day(&root.join("fast"), shape, seed);
    let fast = day_config(root, "fast", true, sort_keys, row_group_size, merge_batch_rows);
    let duckdb = day_config(root, "duckdb", false, sort_keys, row_group_size, merge_batch_rows);
    let (hourly, _) = once(&fast, "hourly");
    assert!(hourly["jobs"].as_array().unwrap().iter().all(|j| j["path"] == "duckdb"), "raw inputs are merged by DuckDB: {hourly}");
    crate::compaction::copy_dir(&root.join("fast"), &root.join("duckdb"));
    let (report, log) = once(&fast, "daily");
    let (reference, _) = once(&duckdb, "daily");
    let context =
        format!("seed {seed}, {shape:?}, keys {sort_keys:?}, row groups of {row_group_size}, merge batches of {merge_batch_rows}\n{log}");
    let jobs = report["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{context}");
    assert_eq!(jobs[0]["path"], shape.path(sort_keys), "{context}");
    assert_eq!(reference["jobs"][0]["path"], "duckdb", "fast_path = false: {reference}");
    let (ours, theirs) = (rows_in_order(&daily_output(&root.join("fast"))), rows_in_order(&daily_output(&root.join("duckdb"))));
    assert_eq!(ours.len() as u64, rows, "{context}");
    // Equal sort keys may come in either order; the keys' sequence and the
    // rows may not differ.
    let keys = |rows: &[Row]| -> Vec<(Option<String>, Option<i64>)> {
        rows.iter().map(|r| (sort_keys.contains(&"host").then(|| r.0.clone()).flatten(), r.1)).collect()
    };
    assert_eq!(keys(&ours), keys(&theirs), "the same order by {sort_keys:?}: {context}");
    let (mut ours_sorted, mut theirs_sorted) = (ours.clone(), theirs);
    ours_sorted.sort();
    theirs_sorted.sort();
    assert_eq!(ours_sorted, theirs_sorted, "the same rows: {context}");
    let (read, sum) = pyarrow_rows(&daily_output(&root.join("fast")));
    assert_eq!((read, sum), (rows, ours.iter().map(|r| r.2).sum::<i64>()), "pyarrow reads the same rows: {context}");
    log
}

#[test]
fn random_days_give_the_same_rows_in_the_same_order_by_either_path() {
    random_days(1..=8, &["time"], "row_group_copy", 2);
}

/// Sorted by `host` first, the hours interleave: the streaming merge (or
/// DuckDB, for a day whose schema drifts) gives DuckDB's order.
#[test]
fn random_days_by_host_and_time_give_the_same_rows_in_the_same_order_by_either_path() {
    random_days(21..=28, &["host", "time"], "streaming_merge", 4);
}

/// Compares both paths over the random days of `seeds`; at least
/// `at_least` of them must take `path`.
fn random_days(seeds: std::ops::RangeInclusive<u64>, sort_keys: &[&str], path: &str, at_least: usize) {
    let mut taken = 0;
    for seed in seeds {
        let shape = random_day(seed);
        eprintln!("seed {seed}: {shape:?}");
        compare_paths(seed, &shape, sort_keys);
        taken += usize::from(shape.path(sort_keys) == path);
    }
    assert!(taken >= at_least, "the random days took {path} {taken} times");
}

/// Every day the row-group copy must decline, it declines and says why;
/// `compare_paths` checks which path took it instead (the streaming merge,
/// or DuckDB for a schema that drifts or that the merge cannot write).
#[test]
fn each_day_that_must_fall_back_does_and_says_why() {
    let full: Vec<(u32, usize)> = (0..24).map(|h| (h, 50)).collect();
    let day = |change: &dyn Fn(&mut DayShape)| {
        let mut shape = DayShape { hours: full.clone(), ..DayShape::default() };
        change(&mut shape);
        shape
    };
    let cases: [(&str, DayShape, &[&str]); 6] = [
        ("the schema of", day(&|s| s.drift = Some(5)), &["time"]),
        ("time has nulls", day(&|s| s.null_time = Some(7)), &["time"]),
        ("overlap", day(&|s| s.late = Some(3)), &["time"]),
        ("do not begin with time", day(&|_| {}), &["host", "time"]),
        ("column wide is stored as FIXED_LEN_BYTE_ARRAY", day(&|s| s.wide_decimal = true), &["host", "time"]),
        ("", day(&|s| s.tie = true), &["time"]),
    ];
    for (seed, (reason, shape, keys)) in cases.iter().enumerate() {
        let log = compare_paths(100 + seed as u64, shape, keys);
        if reason.is_empty() {
            assert!(!log.contains("row-group copy not taken"), "ties at the seams are in order by time: {log}");
        } else {
            assert!(log.contains("row-group copy not taken") && log.contains(reason), "{reason}: {log}");
        }
    }
}

/// An hourly output rewritten by hand under the same name and metadata:
/// with its rows out of the order the metadata claims, the streaming merge
/// notices as it reads, says so, and DuckDB merges the day; compressed
/// with a codec the merge does not read (DuckDB's default, Snappy), the job
/// goes to DuckDB from the start.
#[test]
fn an_input_the_streaming_merge_cannot_take_is_merged_by_duckdb() {
    let cases = [
        ("ORDER BY value DESC", "COMPRESSION ZSTD, ", "is not sorted by"),
        ("ORDER BY host, time", "", "which the streaming merge does not read"),
    ];
    for (order, compression, reason) in cases {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let options = format!(
            "FORMAT PARQUET, {compression}KV_METADATA {{'compactor:writer': 'compactor 0', 'compactor:sort_keys': '[\"host\",\"time\"]'}}"
        );
        let (config, rows) = day_with_hour_two_rewritten(root, &["host", "time"], 300, 9, order, &options);
        let (report, log) = once(&config, "daily");
        assert_eq!(report["jobs"][0]["path"], "duckdb", "{reason}: {report}");
        assert!(log.contains(reason) && log.contains("merging with DuckDB"), "{reason}: {log}");
        let day = rows_in_order(&daily_output(&root.join("fast")));
        assert_eq!(day.len() as u64, rows, "{reason}");
        let keys: Vec<_> = day.iter().map(|r| (r.0.is_none(), r.0.clone(), r.1)).collect();
        assert!(keys.windows(2).all(|w| w[0] <= w[1]), "{reason}: DuckDB's output is sorted by host, time, nulls last");
    }
}

/// A streaming merge's job killed at each step of the protocol after the
/// merge (the path only changes how the output file is made): recovery
/// and the next cycle leave every row of the day exactly once.
#[test]
fn a_streaming_merge_killed_at_any_step_loses_and_duplicates_nothing() {
    for step in ["after-merge", "after-manifest", "after-upload", "mid-delete", "after-delete"] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let shape = DayShape { hours: (0..6).map(|h| (h, 300)).collect(), ..DayShape::default() };
        let rows = write_raw_day(&root.join("fast"), &shape, 11);
        let config = day_config(root, "fast", true, &["host", "time"], 122_880, 64);
        once(&config, "hourly");
        let crashed = compactor(&["-v", "once", "--config", &config, "--now", NOW, "--tier", "daily"], &[("COMPACTOR_FAULT", step)]);
        let log = String::from_utf8_lossy(&crashed.stderr);
        assert!(log.contains("merged the sorted inputs as streams") && log.contains("killed"), "{step}: {}", text(&crashed));
        let recovered = compactor(&["recover", "--config", &config], &[]);
        assert!(recovered.status.success(), "{step}: {}", text(&recovered));
        once(&config, "daily");
        let day = root.join("fast").join(DAY);
        let files: Vec<String> = crate::util::files_under(&day).into_iter().map(|f| format!("'{}'", day.join(f).display())).collect();
        let (count, distinct): (i64, i64) = verify::connection()
            .unwrap()
            .query_row(
                &format!("SELECT count(*), count(DISTINCT value) FROM read_parquet([{}], union_by_name = true)", files.join(", ")),
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        assert_eq!((count as u64, distinct as u64), (rows, rows), "{step}: every row once in {files:?}");
        assert_eq!(files.len(), 1, "{step}: the day is one file: {files:?}");
    }
}

/// Inputs that are not ours (Arc's own outputs carry the same names) go
/// through DuckDB: an hourly output renamed by hand, and one whose writer
/// metadata is another's.
#[test]
fn inputs_not_written_by_compactor_are_merged_by_duckdb() {
    let dir = tempfile::tempdir().unwrap();
    // Hour 2's output rewritten by another tool under the same name.
    let (config, _) = day_with_hour_two_rewritten(dir.path(), &["time"], 20, 7, "", "FORMAT PARQUET");
    let (report, log) = once(&config, "daily");
    assert_eq!(report["jobs"][0]["path"], "duckdb", "{report}");
    assert!(log.contains("was not written by compactor"), "{log}");
}

/// A day of four hours compacted by the hourly tier, then hour 2's output
/// rewritten by DuckDB under the same name (`SELECT * … {order}`, with the
/// COPY `options`); returns the config and the day's rows.
fn day_with_hour_two_rewritten(
    root: &Path,
    sort_keys: &[&str],
    rows_per_file: usize,
    seed: u64,
    order: &str,
    options: &str,
) -> (String, u64) {
    let shape = DayShape { hours: (0..4).map(|h| (h, rows_per_file)).collect(), ..DayShape::default() };
    let rows = write_raw_day(&root.join("fast"), &shape, seed);
    let config = day_config(root, "fast", true, sort_keys, 122_880, 5);
    once(&config, "hourly");
    let hour = root.join("fast").join(DAY).join("02");
    let output = std::fs::read_dir(&hour).unwrap().flatten().map(|e| e.path()).next().unwrap();
    let copy = root.join("rewritten.parquet");
    verify::connection()
        .unwrap()
        .execute_batch(&format!("COPY (SELECT * FROM read_parquet('{}') {order}) TO '{}' ({options})", output.display(), copy.display()))
        .unwrap();
    std::fs::rename(&copy, &output).unwrap();
    (config, rows)
}
