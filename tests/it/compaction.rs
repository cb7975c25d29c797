//! Compaction end to end with the real binary, real DuckDB and real Parquet
//! on local disk: crash safety by fault injection at every step boundary of
//! the job and by killing the engine mid-cycle, bad inputs, memory pressure,
//! and two engines racing on one lake. After every scenario, recovery and a
//! clean cycle must leave exactly the original rows (compared row by row).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use compactor_job::sample::{self, SampleSpec};
use compactor_job::verify;

use crate::kit::{TestConfig, kill_engine_and_wait_for_jobs, run_until_ready_then_sigterm, value};
use crate::util::{compactor, files_under, text};

pub(crate) const NOW: &str = "2026-04-13T12:00:00Z";

pub(crate) struct Lake {
    _dir: tempfile::TempDir,
    pub(crate) root: PathBuf,
    pub(crate) lake: PathBuf,
    pristine: PathBuf,
    pub(crate) config: String,
}

fn spec(rows_per_file: u32) -> SampleSpec {
    SampleSpec {
        database: "db".into(),
        measurements: vec![("cpu".into(), vec!["host".into()]), ("mem_total".into(), vec![])],
        hours: 2,
        files_per_hour: 12,
        rows_per_file,
    }
}

/// A lake of two measurements × two hours × 12 files, a pristine copy, and a
/// config (Arc's tiers, daily with `min_files = 2` so that two hours make a
/// day); `extra` adds `[compaction]` keys.
fn lake_with(rows_per_file: u32, extra: &[(&str, toml::Value)]) -> Lake {
    lake_configured(rows_per_file, |mut config| {
        for (key, value) in extra {
            config = config.compaction(key, value.clone());
        }
        config
    })
}

/// The same lake, with `configure` applied to its config.
pub(crate) fn lake_configured(rows_per_file: u32, configure: impl FnOnce(TestConfig) -> TestConfig) -> Lake {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let lake = root.join("lake");
    sample::generate(&lake, crate::util::at(NOW), &spec(rows_per_file)).unwrap();
    let pristine = root.join("pristine");
    copy_dir(&lake, &pristine);
    let config = TestConfig::new("lake").hourly_and_daily().compaction("temp_directory", "tmp").compaction("threads", 1);
    let config = configure(config).write(&root);
    Lake { _dir: dir, root, lake, pristine, config }
}

pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

pub(crate) fn once(lake: &Lake, env: &[(&str, &str)]) -> Output {
    compactor(&["once", "--config", &lake.config, "--now", NOW], env)
}

/// Exactly the original rows, no manifest, lock or job directory left, and
/// nothing but Parquet files in the lake.
pub(crate) fn assert_intact(lake: &Lake) {
    let connection = verify::connection().unwrap();
    for measurement in ["cpu", "mem_total"] {
        let before = format!("{}/db/{measurement}/**/*.parquet", lake.pristine.display());
        let after = format!("{}/db/{measurement}/**/*.parquet", lake.lake.display());
        let (missing, extra) = verify::row_differences(&connection, &before, &after).unwrap();
        assert_eq!((missing, extra), (0, 0), "{measurement}: rows missing / duplicated; lake: {:#?}", files_under(&lake.lake));
    }
    let leftovers: Vec<String> = files_under(&lake.lake).into_iter().filter(|f| !f.ends_with(".parquet")).collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    let temp = files_under(&lake.root.join("tmp"));
    assert!(temp.is_empty(), "temp files left behind: {temp:?}");
}

/// Fully compacted: one daily file per measurement and nothing else.
pub(crate) fn assert_compacted(lake: &Lake) {
    let files: Vec<String> = files_under(&lake.lake);
    assert_eq!(files.len(), 2, "{files:#?}");
    assert!(files.iter().all(|f| f.ends_with("_b1_daily.parquet")), "{files:#?}");
}

/// Row groups in each output of the lake.
fn row_groups(lake: &Lake) -> Vec<i64> {
    let connection = verify::connection().unwrap();
    files_under(&lake.lake)
        .iter()
        .map(|f| {
            let path = lake.lake.join(f).display().to_string().replace('\'', "''");
            connection
                .query_row(&format!("SELECT count(DISTINCT row_group_id) FROM parquet_metadata('{path}')"), [], |row| row.get(0))
                .unwrap()
        })
        .collect()
}

#[test]
fn row_group_size_is_a_config_key_with_arcs_default() {
    // One day: 2 hours × 12 files × 500 rows per measurement, 12,000 rows
    // per daily output.
    let lake = lake_with(500, &[("row_group_size", value(2048)), ("fast_path", value(false))]);
    let output = once(&lake, &[]);
    assert!(output.status.success(), "{}", text(&output));
    assert_intact(&lake);
    assert_eq!(row_groups(&lake), [6, 6], "12,000 rows in groups of 2,048");
    let lake = lake_with(500, &[("fast_path", value(false))]);
    assert!(once(&lake, &[]).status.success());
    assert_eq!(row_groups(&lake), [1, 1], "Arc's 122,880 rows hold the whole day");
    // The row-group copy keeps the hourly outputs' groups: two hours of
    // 6,000 rows each, in groups of at most 2,048 (3 an hour) or one.
    for (size, groups) in [(2048, [6, 6]), (122_880, [2, 2])] {
        let lake = lake_with(500, &[("row_group_size", value(size))]);
        let output = compactor(&["once", "--config", &lake.config, "--now", NOW, "--format", "json"], &[]);
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let paths: Vec<&str> = report["jobs"].as_array().unwrap().iter().map(|j| j["path"].as_str().unwrap()).collect();
        assert_eq!(paths, ["duckdb", "duckdb", "duckdb", "duckdb", "row_group_copy", "row_group_copy"], "{report}");
        assert_intact(&lake);
        assert_eq!(row_groups(&lake), groups, "row_group_size {size}");
    }
}

#[test]
fn once_compacts_hourly_then_daily_and_keeps_every_row() {
    let lake = lake_with(50, &[]);
    let output = once(&lake, &[]);
    assert!(output.status.success(), "{}", text(&output));
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(summary.contains("hourly  4     0       48        4"), "{summary}");
    assert!(summary.contains("daily   2     0       4         2"), "{summary}");
    assert_intact(&lake);
    assert_compacted(&lake);
    let again = once(&lake, &[]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains(": 0 jobs,"), "{}", text(&again));
}

#[test]
fn a_job_killed_at_any_step_loses_and_duplicates_nothing() {
    for step in ["after-download", "after-merge", "after-manifest", "mid-upload", "after-upload", "mid-delete", "after-delete"] {
        // A tiny multipart threshold makes every upload multipart, so that
        // `mid-upload` lands between two parts; on local disk only an output
        // that cannot be linked into place (its temp directory on another
        // file system: tmpfs, where there is one) is uploaded in parts.
        let other_fs = tempfile::tempdir_in("/dev/shm").or_else(|_| tempfile::tempdir()).unwrap();
        let lake =
            lake_with(50, &[("multipart_threshold", value("1KiB")), ("temp_directory", value(other_fs.path().display().to_string()))]);
        let crashed = once(&lake, &[("COMPACTOR_FAULT", step)]);
        let recovered = compactor(&["recover", "--config", &lake.config], &[]);
        assert!(recovered.status.success(), "{step}: {}", text(&recovered));
        let clean = once(&lake, &[]);
        assert!(clean.status.success(), "{step}: crashed run:\n{}\nclean run:\n{}", text(&crashed), text(&clean));
        assert_intact(&lake);
        assert_compacted(&lake);
    }
}

#[test]
fn the_engine_killed_mid_cycle_loses_and_duplicates_nothing() {
    for delay_ms in [150, 400, 800] {
        // Short leases: a write the kill interrupted leaves a staging file
        // that recovery removes once it has settled (a lease TTL).
        let lake = lake_configured(2000, |config| config.lease_ttl_ms(1000));
        let mut child = Command::new(env!("CARGO_BIN_EXE_compactor"))
            .args(["once", "--config", &lake.config, "--now", NOW])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        kill_engine_and_wait_for_jobs(&mut child);
        std::thread::sleep(std::time::Duration::from_millis(1200));
        let clean = once(&lake, &[]);
        assert!(clean.status.success(), "killed after {delay_ms} ms: {}", text(&clean));
        assert_intact(&lake);
        assert_compacted(&lake);
    }
}

#[test]
fn two_engines_on_one_lake_compact_every_row_once() {
    let lake = lake_with(500, &[]);
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_compactor")).args(["once", "--config", &lake.config, "--now", NOW, "--tier", "hourly"]).output()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(spawn);
        let b = s.spawn(spawn);
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    assert!(a.status.success() && b.status.success(), "{}\n{}", text(&a), text(&b));
    let clean = once(&lake, &[]);
    assert!(clean.status.success(), "{}", text(&clean));
    assert_intact(&lake);
    assert_compacted(&lake);
}

#[test]
fn an_impossible_memory_limit_fails_cleanly_with_inputs_untouched() {
    let lake = lake_with(20_000, &[("memory_limit", value("1MB")), ("max_files_per_batch", value(12))]);
    let before = files_under(&lake.lake);
    let output = once(&lake, &[]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(report.contains("Out of Memory"), "the failure names its cause: {}", text(&output));
    assert!(report.contains("[out_of_memory]"), "and its kind: {}", text(&output));
    assert_eq!(files_under(&lake.lake), before, "inputs untouched");
    assert_intact(&lake);
    // The kind survives in the history, as JSON, for every failed job.
    let history = compactor(&["history", "--config", &lake.config, "--format", "json"], &[]);
    assert!(history.status.success(), "{}", text(&history));
    let entries: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
    let failed: Vec<&serde_json::Value> = entries.as_array().unwrap().iter().filter(|e| e["success"] == false).collect();
    assert!(!failed.is_empty(), "{entries}");
    assert!(failed.iter().all(|e| e["failure_kind"] == "out_of_memory"), "{entries}");
}

/// Writes one Parquet file with DuckDB.
pub(crate) fn write_parquet(path: &Path, select: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    verify::connection().unwrap().execute_batch(&format!("COPY ({select}) TO '{}' (FORMAT PARQUET)", path.display())).unwrap();
}

/// Writes the bad-input lake under `lake`: `db/cpu_total` with 8 good files,
/// schema drift both ways, epoch-string times, a zero-row file, corrupt and
/// truncated Parquet and a text file; `db/trades` without a time column.
/// Returns the names of the corrupt and truncated inputs.
pub(crate) fn write_bad_inputs(lake: &Path) -> (String, String) {
    let hour = lake.join("db/cpu_total/2026/04/11/10");
    let t = |i: usize| format!("cpu_total_20260411_10{i:02}00_000000001.parquet");
    for i in 0..8 {
        write_parquet(
            &hour.join(t(i)),
            &format!(
                "SELECT make_timestamp((1775901600000000 + {i} * 1000000 + r)::BIGINT)::TIMESTAMPTZ AS time, 'h' || r AS host, r * 1.5 AS value FROM range(100) t(r)"
            ),
        );
    }
    // Schema drift: an extra column, and a missing one.
    write_parquet(
        &hour.join(t(8)),
        "SELECT make_timestamp((1775901700000000 + r)::BIGINT)::TIMESTAMPTZ AS time, 'h' AS host, 1.0 AS value, 'x' AS extra FROM range(10) t(r)",
    );
    write_parquet(
        &hour.join(t(9)),
        "SELECT make_timestamp((1775901800000000 + r)::BIGINT)::TIMESTAMPTZ AS time, 2.0 AS value FROM range(10) t(r)",
    );
    // `time` as integer-epoch strings (microseconds).
    write_parquet(&hour.join(t(10)), "SELECT (1775901900000000 + r)::VARCHAR AS time, 'h' AS host, 3.25 AS value FROM range(10) t(r)");
    // A zero-row file.
    write_parquet(&hour.join(t(11)), "SELECT make_timestamp(0::BIGINT)::TIMESTAMPTZ AS time, 'h' AS host, 0.0 AS value FROM range(0) t(r)");
    // Corrupt and truncated Parquet, and a file that is not Parquet at all.
    std::fs::write(hour.join(t(12)), b"this is not parquet at all").unwrap();
    let real = std::fs::read(hour.join(t(0))).unwrap();
    std::fs::write(hour.join(t(13)), &real[..real.len() / 2]).unwrap();
    // Both magic numbers, and a footer no reader can read (adversarial run:
    // it failed its partition and day every cycle).
    std::fs::write(hour.join(t(14)), [&b"PAR1"[..], &[0u8; 64], &b"PAR1"[..]].concat()).unwrap();
    std::fs::write(hour.join("notes.txt"), b"operator notes").unwrap();
    // A partition without a time column.
    let no_time = lake.join("db/trades/2026/04/11/10");
    for i in 0..10 {
        write_parquet(
            &no_time.join(format!("trades_20260411_10{i:02}00_000000001.parquet")),
            "SELECT 'AAPL' AS symbol, 1.5 AS price FROM range(5)",
        );
    }
    (t(12), t(13))
}

/// Checks the `once --format json` report of a cycle over the bad-input lake.
pub(crate) fn assert_bad_input_report(report: &serde_json::Value) {
    let jobs = report["jobs"].as_array().unwrap();
    let cpu = jobs.iter().find(|j| j["measurement"] == "cpu_total").unwrap();
    assert_eq!(cpu["success"], true);
    assert_eq!(cpu["files_compacted"], 12, "8 good + 2 drifted + 1 epoch-string + 1 empty");
    assert_eq!(cpu["rows_after"], 830);
    let skipped: Vec<&str> = cpu["skipped_inputs"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert_eq!(skipped.len(), 3, "corrupt, truncated and unreadable-footer inputs are skipped: {skipped:?}");
    let trades = jobs.iter().find(|j| j["measurement"] == "trades").unwrap();
    assert_eq!((trades["success"].as_bool(), trades["files_compacted"].as_u64()), (Some(true), Some(0)), "no time column: clean skip");
}

#[test]
fn bad_inputs_get_the_spec_outcome_and_lose_no_row() {
    let dir = tempfile::tempdir().unwrap();
    let (corrupt, truncated) = write_bad_inputs(&dir.path().join("lake"));
    let config = dir.path().join("compactor.toml");
    std::fs::write(&config, TestConfig::new("lake").compaction("temp_directory", "tmp").tier("hourly", "builtin:hourly", &[]).to_toml())
        .unwrap();

    let output = compactor(&["once", "--config", &config.display().to_string(), "--now", NOW, "--format", "json"], &[]);
    assert!(output.status.success(), "{}", text(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_bad_input_report(&report);

    let left = files_under(&dir.path().join("lake/db/cpu_total"));
    assert!(left.iter().any(|f| f.ends_with(&corrupt)) && left.iter().any(|f| f.ends_with(&truncated)), "bad files stay: {left:?}");
    assert!(left.iter().any(|f| f.ends_with("notes.txt")), "non-Parquet files are never touched");
    assert_eq!(left.iter().filter(|f| f.ends_with("_compacted.parquet")).count(), 1);
    assert_eq!(files_under(&dir.path().join("lake/db/trades")).len(), 10, "inputs without time stay");

    let connection = verify::connection().unwrap();
    let output_glob = format!("{}/lake/db/cpu_total/**/*_compacted.parquet", dir.path().display());
    let (rows, min_time, typ): (i64, String, String) = connection
        .query_row(
            &format!("SELECT count(*), min(time)::VARCHAR, any_value(typeof(time)) FROM read_parquet('{output_glob}') WHERE value = 3.25"),
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((rows, typ.as_str()), (10, "TIMESTAMP WITH TIME ZONE"));
    assert_eq!(min_time, "2026-04-11 10:05:00+00", "epoch microseconds keep their instant");
}

#[test]
fn the_child_protocol_reports_errors_as_arc_does() {
    let output = compactor(&["compact"], &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("error: --job-stdin or --job flag required"));
    let job = r#"{"database":"db","measurement":"cpu","partition_path":"db/cpu/2026/04/11/10","files":["db/cpu/2026/04/11/10/a.parquet"],"tier":"hourly","storage_type":"resilient","storage_config":"{}"}"#;
    let output = compactor(&["compact", "--job", job], &[]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.lines().last().unwrap().starts_with("error:") && stderr.contains("unsupported storage type: resilient"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("db/cpu/2026/04/11/10")).unwrap();
    std::fs::write(dir.path().join("db/cpu/2026/04/11/10/a.parquet"), b"garbage garbage garbage").unwrap();
    let job = serde_json::json!({
        "database": "db", "measurement": "cpu", "partition_path": "db/cpu/2026/04/11/10",
        "files": ["db/cpu/2026/04/11/10/a.parquet"], "tier": "hourly",
        "temp_directory": dir.path().join("tmp").display().to_string(),
        "storage_type": "local", "storage_config": serde_json::json!({"base_path": dir.path().display().to_string()}).to_string(),
    });
    let output = compactor(&["compact", "--job", &job.to_string()], &[]);
    assert_eq!(output.status.code(), Some(0), "a failed job still exits 0");
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).expect("exactly one JSON object on stdout");
    assert_eq!(result["success"], false);
    assert_eq!(result["error"], "no valid parquet files found");
}

#[test]
fn cluster_mode_jobs_hand_over_completion_manifests() {
    let lake = lake_with(50, &[]);
    let dir = lake.lake.join("db/cpu/2026/04/11/00");
    let files: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| format!("db/cpu/2026/04/11/00/{}", e.unwrap().file_name().to_string_lossy())).collect();
    let completion = lake.root.join("completion");
    let job = serde_json::json!({
        "database": "db", "measurement": "cpu", "partition_path": "db/cpu/2026/04/11/00", "files": files,
        "tier": "hourly", "batch_number": 1, "job_id": "db_db_cpu_2026_04_11_00_1_b1",
        "temp_directory": lake.root.join("tmp").display().to_string(),
        "completion_dir": completion.display().to_string(),
        "partition_time": "2026-04-11T00:00:00Z",
        "storage_type": "local", "storage_config": serde_json::json!({"base_path": lake.lake.display().to_string()}).to_string(),
    });
    let output = compactor(&["compact", "--job", &job.to_string()], &[]);
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["success"], true, "{}", text(&output));
    let manifest = compactor_job::completion::read(&completion.join("db_db_cpu_2026_04_11_00_1_b1.json")).unwrap();
    assert_eq!(manifest.state, compactor_job::completion::CompletionState::SourcesDeleted);
    assert_eq!(manifest.deleted_sources.as_ref().unwrap().len(), 12);
    let out = &manifest.outputs.as_ref().unwrap()[0];
    assert_eq!(out.path, result["output_file"].as_str().unwrap());
    use sha2::Digest;
    let bytes = std::fs::read(lake.lake.join(&out.path)).unwrap();
    assert_eq!(out.sha256, hex::encode(sha2::Sha256::digest(&bytes)));
    assert_eq!(out.size_bytes, bytes.len() as u64);
}

#[test]
fn run_starts_recovers_and_stops_cleanly_on_sigterm() {
    let lake = lake_with(10, &[]);
    let config =
        // A writer in spread mode: builtin:role lets no writer compact there.
        TestConfig::new("lake").hourly_and_daily().compaction("temp_directory", "tmp").cluster_on_etcd("writer").cluster("mode", "spread");
    let config = config.write(&lake.root);
    let (status, stderr) = run_until_ready_then_sigterm(&config);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("node role is not compactor"), "a writer in a spread cluster stays idle: {stderr}");
    assert!(stderr.contains("shutting down"), "{stderr}");
}

#[test]
fn inputs_that_vanish_before_the_job_reads_them_are_skipped() {
    let lake = lake_with(50, &[]);
    let dir = lake.lake.join("db/cpu/2026/04/11/00");
    let mut files: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| format!("db/cpu/2026/04/11/00/{}", e.unwrap().file_name().to_string_lossy())).collect();
    files.sort();
    files.push("db/cpu/2026/04/11/00/cpu_20260411_005900_000000009.parquet".into());
    let job = serde_json::json!({
        "database": "db", "measurement": "cpu", "partition_path": "db/cpu/2026/04/11/00", "files": files,
        "tier": "hourly", "batch_number": 1, "job_id": "db_db_cpu_2026_04_11_00_2_b1",
        "temp_directory": lake.root.join("tmp").display().to_string(),
        "storage_type": "local", "storage_config": serde_json::json!({"base_path": lake.lake.display().to_string()}).to_string(),
    });
    let output = compactor(&["compact", "--job-stdin"], &[]);
    assert_eq!(output.status.code(), Some(1), "stdin was empty: {}", text(&output));
    let mut child = Command::new(env!("CARGO_BIN_EXE_compactor"))
        .args(["compact", "--job-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(job.to_string().as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let result: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["success"], true, "{}", text(&output));
    assert_eq!(result["files_compacted"], 12, "the vanished input is skipped, the rest compacted");
    assert_intact(&lake);
}

#[test]
fn plan_explains_every_partition_and_previews_the_jobs_once_runs() {
    let lake = lake_with(50, &[]);
    // Half an hour into the first hour: nothing is old enough yet.
    let young = compactor(&["plan", "--config", &lake.config, "--now", "2026-04-11T00:30:00Z", "--explain", "--format", "json"], &[]);
    assert!(young.status.success(), "{}", text(&young));
    let young: serde_json::Value = serde_json::from_slice(&young.stdout).unwrap();
    assert_eq!(young["batches"], serde_json::json!([]));
    let partitions = young["partitions"].as_array().unwrap();
    assert!(!partitions.is_empty());
    for verdict in partitions {
        assert_eq!(verdict["selected"], false, "{verdict}");
        assert!(verdict["tier"].is_string() && verdict["partition_path"].is_string(), "{verdict}");
        // Arc's tiers (WIT 1.1.0) say why in their own words.
        assert!(verdict["reason"].as_str().unwrap().starts_with("younger than the minimum age ("), "{verdict}");
    }
    // Without --explain the JSON is the array of batches, as before.
    let plain = compactor(&["plan", "--config", &lake.config, "--now", NOW, "--format", "json"], &[]);
    let batches: Vec<serde_json::Value> = serde_json::from_slice(&plain.stdout).unwrap();
    // The plan predicts hourly's outputs for daily: it shows the jobs a cycle runs.
    let cycle = once(&lake, &[]);
    assert!(cycle.status.success(), "{}", text(&cycle));
    let summary = String::from_utf8_lossy(&cycle.stdout);
    assert!(summary.contains(&format!("cycle 1: {} jobs", batches.len())), "plan: {} batches; once: {summary}", batches.len());
    assert_intact(&lake);
}

/// Issue 21 §3 (Arc #930, #933): a backup copies `_compaction_state/`
/// before the data. Taken while a job is between its upload and its
/// deletes (its manifest says what it did), the copy restored elsewhere
/// converges with every row exactly once.
#[test]
fn a_lake_restored_from_a_backup_taken_mid_job_converges_with_every_row_once() {
    // One job at a time: the backup is taken while one job is between its
    // upload and its deletes. (With two, the other may write its manifest
    // after the state was copied and its output before the data was: a
    // backup taken while jobs start is what the README says not to take.)
    let lake = lake_with(50, &[("max_concurrent", toml::Value::Integer(1))]);
    let marker = lake.root.join("stalled");
    let mut engine = Command::new(env!("CARGO_BIN_EXE_compactor"))
        .args(["once", "--config", &lake.config, "--now", NOW])
        .env("COMPACTOR_STALL", format!("after-upload:4000:{}", marker.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    crate::kit::wait_until("a job between its upload and its deletes", std::time::Duration::from_secs(60), || marker.exists());
    // The backup, in the order the README gives: the state, then the data.
    let backup = lake.root.join("backup");
    copy_dir(&lake.lake.join("_compaction_state"), &backup.join("_compaction_state"));
    for entry in std::fs::read_dir(&lake.lake).unwrap().flatten() {
        if entry.file_name() != "_compaction_state" {
            copy_dir(&entry.path(), &backup.join(entry.file_name()));
        }
    }
    let _ = engine.kill();
    let _ = engine.wait();
    let copied = files_under(&backup);
    assert!(copied.iter().any(|f| f.ends_with(".json")), "the backup holds the in-flight job's manifest: {copied:#?}");
    // Restored as a lake of its own.
    std::fs::remove_dir_all(&lake.lake).unwrap();
    std::fs::rename(&backup, &lake.lake).unwrap();
    let _ = std::fs::remove_dir_all(lake.root.join("tmp"));
    let recovered = compactor(&["recover", "--config", &lake.config], &[]);
    assert!(recovered.status.success(), "{}", text(&recovered));
    let once = once(&lake, &[]);
    assert!(once.status.success(), "{}", text(&once));
    assert_intact(&lake);
    assert_compacted(&lake);
}

/// Adversarial run: a sort key naming no column of the inputs failed the
/// measurement's jobs as an SQL error, in every cycle. It is left out.
#[test]
fn a_sort_key_naming_no_column_is_left_out_and_the_jobs_succeed() {
    let keys: toml::Table = toml::from_str("cpu = [\"nope\", \"host\"]").unwrap();
    let lake = lake_configured(50, |config| config.compaction("sort_keys", toml::Value::Table(keys)));
    let output = once(&lake, &[]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("sort keys name no column of the inputs"), "{}", text(&output));
    assert_intact(&lake);
    assert_compacted(&lake);
}
