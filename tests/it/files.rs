//! The one visibility rule readers rely on: `compactor files` lists a
//! partition's live files while jobs commit around it, and reading exactly
//! those never shows a row twice or misses one.

use compactor_job::sample::{self, SampleSpec};
use compactor_job::verify;

use crate::kit::TestConfig;
use crate::util::{compactor, text};

const NOW: &str = "2026-04-13T12:00:00Z";
const DAY: &str = "db/cpu/2026/04/11";

#[test]
fn a_reader_polling_the_live_files_while_jobs_commit_never_sees_a_row_twice_or_misses_one() {
    reader_polls_while_jobs_commit(|config| config, false);
}

/// In cluster mode the answer comes from the cluster file manifest in etcd,
/// under the same rule.
#[test]
fn a_reader_polling_the_cluster_file_manifest_while_jobs_commit_never_sees_a_row_twice_or_misses_one() {
    reader_polls_while_jobs_commit(|config| config.cluster_on_etcd("compactor"), true);
}

/// `register_first`: a cycle that compacts nothing registers the lake's
/// files first (what Arc's ingest does as it writes them).
fn reader_polls_while_jobs_commit(configure: impl FnOnce(TestConfig) -> TestConfig, register_first: bool) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let spec = SampleSpec {
        database: "db".into(),
        measurements: vec![("cpu".into(), vec!["host".into()])],
        hours: 24,
        files_per_hour: 12,
        rows_per_file: 10,
    };
    let lake = sample::generate(&root.join("lake"), crate::util::at(NOW), &spec).unwrap();
    let expected = lake.rows as i64;
    let config =
        configure(TestConfig::new("lake").hourly_and_daily().compaction("temp_directory", "tmp").compaction("threads", 1)).write(root);
    if register_first {
        register_and_check_every_file(&config, &root.join("lake"));
    }
    let connection = verify::connection().unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (mut reads, mut retries) = (0, 0);
    std::thread::scope(|s| {
        let engine = s.spawn(|| {
            let mut outputs = Vec::new();
            for tier in ["hourly", "daily"] {
                outputs.push(compactor(&["once", "--config", &config, "--now", NOW, "--tier", tier], &[]));
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            outputs
        });
        while !done.load(std::sync::atomic::Ordering::SeqCst) || reads == 0 {
            let listed = compactor(&["files", "--config", &config, "--partition", DAY, "--format", "json"], &[]);
            assert!(listed.status.success(), "{}", text(&listed));
            let keys: Vec<String> = serde_json::from_slice(&listed.stdout).unwrap();
            let paths: Vec<String> = keys.iter().map(|k| format!("'{}'", root.join("lake").join(k).display())).collect();
            let query = format!("SELECT count(*), count(DISTINCT time) FROM read_parquet([{}], union_by_name = true)", paths.join(", "));
            match connection.query_row(&query, [], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?))) {
                Ok((rows, distinct)) => {
                    assert_eq!((rows, distinct), (expected, expected), "read {reads}: {} keys: {keys:#?}", keys.len());
                    reads += 1;
                }
                // A listed input deleted since (its job committed): ask again.
                Err(e) if e.to_string().contains("No files found") || e.to_string().contains("No such file") => retries += 1,
                Err(e) => panic!("{e}"),
            }
        }
        for output in engine.join().unwrap() {
            assert!(output.status.success(), "{}", text(&output));
        }
    });
    assert!(reads >= 3, "the reader read {reads} times ({retries} retries)");
    let last = compactor(&["files", "--config", &config, "--partition", DAY, "--format", "json"], &[]);
    let keys: Vec<String> = serde_json::from_slice(&last.stdout).unwrap();
    assert_eq!(keys.len(), 1, "one daily output at the end: {keys:?}");
    eprintln!("reader: {reads} consistent reads, {retries} retries");
}

/// A cycle that compacts nothing registers the lake's files (288: several
/// requests of nested transactions) and, once some are deleted by hand,
/// removes their entries: the registry is the store's live set each time.
fn register_and_check_every_file(config: &str, lake: &std::path::Path) {
    let registered_then_stored = || {
        let registered = compactor(&["once", "--config", config, "--now", NOW, "--database", "none"], &[]);
        assert!(registered.status.success(), "{}", text(&registered));
        let listed = compactor(&["files", "--config", config, "--partition", DAY, "--format", "json"], &[]);
        assert!(listed.status.success(), "{}", text(&listed));
        let keys: Vec<String> = serde_json::from_slice(&listed.stdout).unwrap();
        let stored: Vec<String> = crate::util::files_under(lake).into_iter().filter(|k| k.starts_with(DAY)).collect();
        (keys, stored)
    };
    let (registered, stored) = registered_then_stored();
    assert_eq!(registered.len(), 288);
    assert_eq!(registered, stored);
    // Seven hours (84 files) moved aside, then put back.
    let aside = lake.parent().unwrap().join("aside");
    for hour in ["00", "01", "02", "03", "04", "05", "06"] {
        let from = lake.join(DAY).join(hour);
        crate::compaction::copy_dir(&from, &aside.join(hour));
        std::fs::remove_dir_all(&from).unwrap();
    }
    let (registered, stored) = registered_then_stored();
    assert_eq!(registered.len(), 288 - 7 * 12, "entries of the deleted files are removed");
    assert_eq!(registered, stored);
    for hour in ["00", "01", "02", "03", "04", "05", "06"] {
        crate::compaction::copy_dir(&aside.join(hour), &lake.join(DAY).join(hour));
    }
    let (registered, stored) = registered_then_stored();
    assert_eq!(registered.len(), 288);
    assert_eq!(registered, stored);
}

#[test]
fn files_refuses_what_is_not_a_partition() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("lake")).unwrap();
    let config = TestConfig::new("lake").hourly_and_daily().compaction("temp_directory", "tmp").write(dir.path());
    for bad in ["db/cpu", "db/cpu/2026/4/11", "2026/04/11", "db/cpu/2026/04/11/1x"] {
        let output = compactor(&["files", "--config", &config, "--partition", bad], &[]);
        assert_eq!(output.status.code(), Some(2), "{bad}: {}", text(&output));
        assert!(String::from_utf8_lossy(&output.stderr).contains("invalid partition"), "{bad}: {}", text(&output));
    }
    let empty = compactor(&["files", "--config", &config, "--partition", "db/cpu/2026/04/11/03", "--format", "json"], &[]);
    assert!(empty.status.success(), "{}", text(&empty));
    assert_eq!(String::from_utf8_lossy(&empty.stdout).trim(), "[]");
}
