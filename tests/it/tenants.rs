//! Tenants end to end with the real binary, DuckDB and Parquet: each
//! tenant's databases run its own policies in their own sandboxes, and a
//! hostile tenant (infinite loop, memory bomb, panic) costs the healthy ones
//! nothing: their partitions are compacted in the same cycle, every row
//! kept. Budgets: a tenant's bytes per cycle defer the rest, never lose it.

use std::path::Path;

use compactor_job::sample::{self, SampleSpec};
use compactor_job::verify;

use crate::compaction::copy_dir;
use crate::kit::TestConfig;
use crate::util::{at, compactor, files_under, text};

const NOW: &str = "2026-04-13T12:00:00Z";

/// Two hours × 12 files of one measurement in each database.
pub(crate) fn lake(root: &Path, databases: &[&str]) {
    for database in databases {
        let spec = SampleSpec {
            database: (*database).into(),
            measurements: vec![("cpu".into(), vec!["host".into()])],
            hours: 2,
            files_per_hour: 12,
            rows_per_file: 20,
        };
        sample::generate(&root.join("lake"), at(NOW), &spec).unwrap();
    }
    copy_dir(&root.join("lake"), &root.join("pristine"));
}

/// The rows of `database` are exactly the original ones.
pub(crate) fn assert_rows_kept(root: &Path, database: &str) {
    let connection = verify::connection().unwrap();
    let before = format!("{}/{database}/cpu/**/*.parquet", root.join("pristine").display());
    let after = format!("{}/{database}/cpu/**/*.parquet", root.join("lake").display());
    let (missing, extra) = verify::row_differences(&connection, &before, &after).unwrap();
    assert_eq!((missing, extra), (0, 0), "{database}: rows missing / duplicated");
}

pub(crate) fn files_of(root: &Path, database: &str) -> Vec<String> {
    files_under(&root.join("lake").join(database))
}

fn hostile(mode: &str) -> String {
    format!(
        r#"
        name = "evil-{mode}"
        databases = ["evil_{mode}"]
        [limits]
        fuel_per_call = 20000000
        memory = "16MiB"
        call_timeout_ms = 300
        [[tiers]]
        name = "hourly"
        plugin = "{}"
        config = {{ mode = "{mode}" }}
        "#,
        compactor_test_components::HOSTILE
    )
}

fn once_json(config: &str) -> (std::process::Output, serde_json::Value) {
    let output = compactor(&["once", "--config", config, "--now", NOW, "--format", "json"], &[]);
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&output)));
    (output, report)
}

#[test]
fn hostile_tenants_do_not_hold_back_healthy_ones() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let databases = ["acme", "acme_eu", "globex", "evil_loop", "evil_memory-bomb", "evil_panic", "unclaimed"];
    lake(root, &databases);
    let config = TestConfig::new("lake")
        .hourly_and_daily()
        .compaction("temp_directory", "tmp")
        .compaction("threads", 1)
        .tenant(&hostile("loop"))
        // acme inherits the top-level tiers; its pattern claims acme_eu too.
        .tenant(
            r#"name = "acme"
                   databases = ["acme", "acme_*"]
                   max_concurrent = 1"#,
        )
        .tenant(&hostile("memory-bomb"))
        .tenant(
            r#"name = "globex"
               databases = ["globex"]
               [[tiers]]
               name = "hourly"
               plugin = "builtin:hourly"
               [[tiers]]
               name = "daily"
               plugin = "builtin:daily"
               config = { min_files = 2 }"#,
        )
        .tenant(&hostile("panic"))
        .write(root);

    let (output, report) = once_json(&config);
    assert_eq!(output.status.code(), Some(1), "the hostile tenants' failures are reported: {}", text(&output));
    let jobs = report["jobs"].as_array().unwrap();
    for (database, tenant) in [("acme", Some("acme")), ("acme_eu", Some("acme")), ("globex", Some("globex")), ("unclaimed", None)] {
        let mine: Vec<&serde_json::Value> = jobs.iter().filter(|j| j["database"] == database).collect();
        // Two hours, then their day: three jobs, all in this one cycle.
        assert_eq!(mine.len(), 3, "{database}: {mine:#?}");
        assert!(mine.iter().all(|j| j["success"] == true && j["tenant"].as_str() == tenant), "{database}: {mine:#?}");
        let files = files_of(root, database);
        assert_eq!(files.len(), 1, "{database} compacted to one day: {files:#?}");
        assert!(files[0].ends_with("_daily.parquet"), "{files:?}");
        assert_rows_kept(root, database);
    }
    // The hostile tenants did nothing and said why, each under its own name.
    let problems: Vec<String> = report["problems"].as_array().unwrap().iter().map(|p| p["tier"].as_str().unwrap().to_owned()).collect();
    for mode in ["loop", "memory-bomb", "panic"] {
        assert!(problems.contains(&format!("evil-{mode}/hourly")), "{problems:?}");
        assert!(jobs.iter().all(|j| j["database"] != format!("evil_{mode}")));
        assert_eq!(files_of(root, &format!("evil_{mode}")).len(), 24, "evil_{mode} untouched");
        assert_rows_kept(root, &format!("evil_{mode}"));
    }
    assert!(problems.iter().all(|p| p.starts_with("evil-")), "only the hostile tenants have problems: {problems:?}");
}

#[test]
fn a_tenants_byte_budget_defers_batches_to_later_cycles_and_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    lake(root, &["small", "free"]);
    let config = TestConfig::new("lake")
        .hourly_and_daily()
        .compaction("temp_directory", "tmp")
        .compaction("threads", 1)
        // One byte: each cycle runs the tenant's first batch only.
        .tenant(
            r#"name = "small"
                   databases = ["small"]
                   max_bytes_per_cycle = "1B""#,
        )
        .write(root);

    // The plan shows what the cycle will run: the budget applies to it too.
    let plan = compactor(&["plan", "--config", &config, "--now", NOW, "--format", "json"], &[]);
    assert!(plan.status.success(), "{}", text(&plan));
    let batches: Vec<serde_json::Value> = serde_json::from_slice(&plan.stdout).unwrap();
    let small: Vec<&serde_json::Value> = batches.iter().filter(|b| b["database"] == "small").collect();
    assert_eq!(small.len(), 1, "{batches:#?}");
    assert_eq!(small[0]["tenant"], "small", "a tenant's batches say whose they are");
    assert!(batches.iter().filter(|b| b["database"] == "free").all(|b| b.get("tenant").is_none()));
    let table = compactor(&["plan", "--config", &config, "--now", NOW], &[]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("small/hourly") && table.contains("2 more batches wait for a later cycle"), "{table}");
    // Its request estimate counts what the cycle runs (issue 21 §4d: it
    // counted the deferred batches too): one hour's batch, where the
    // untenanted database of the same shape runs two.
    let gets = |tier: &str| -> u64 {
        let line = table.lines().find(|l| l.trim_start().starts_with(&format!("{tier}: "))).unwrap_or_else(|| panic!("{tier}: {table}"));
        line.trim_start()[tier.len() + 2..].split(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(2 * gets("small/hourly"), gets("hourly"), "{table}");
    assert_eq!(gets("small/daily"), 0, "the day is deferred: {table}");

    let (output, report) = once_json(&config);
    assert!(output.status.success(), "a deferral is not a failure: {}", text(&output));
    let jobs = report["jobs"].as_array().unwrap();
    assert_eq!(jobs.iter().filter(|j| j["database"] == "small").count(), 1, "{jobs:#?}");
    assert_eq!(jobs.iter().filter(|j| j["database"] == "free").count(), 3, "the other databases are not held back");
    // The second hour waits, and so does the day (daily sees the first
    // hour's output and the second hour's raw files).
    assert_eq!(report["deferred_by_budget"], 2, "{report:#}");

    // Two more cycles: the second hour, then the day.
    for _ in 0..2 {
        let (output, _) = once_json(&config);
        assert!(output.status.success(), "{}", text(&output));
    }
    let files = files_of(root, "small");
    assert_eq!(files.len(), 1, "{files:#?}");
    assert_rows_kept(root, "small");
    assert_rows_kept(root, "free");
}

#[test]
fn tenant_config_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (tenant, key) in [
        ("name = \"a b\"\ndatabases = [\"x\"]", "tenants[0].name"),
        ("name = \"a\"\ndatabases = []", "tenants[0].databases"),
        ("name = \"a\"\ndatabases = [\"x\"]\nmax_concurrent = 0", "tenants[0].max_concurrent"),
        ("name = \"a\"\ndatabases = [\"x\"]\nmax_bytes_per_cycle = \"lots\"", "tenants[0].max_bytes_per_cycle"),
        ("name = \"a\"\ndatabases = [\"x\"]\n[limits]\nfuel_per_call = 0", "tenants[0].limits.fuel_per_call"),
        (
            "name = \"a\"\ndatabases = [\"x\"]\n[[tiers]]\nname = \"h\"\nplugin = \"builtin:hourly\"\nschedule = \"@daily\"",
            "tenants[0].tiers[0].schedule",
        ),
    ] {
        let config = TestConfig::new("lake").tenant(tenant).write(dir.path());
        let output = compactor(&["plan", "--config", &config], &[]);
        assert_eq!(output.status.code(), Some(2), "{tenant}: {}", text(&output));
        assert!(String::from_utf8_lossy(&output.stderr).contains(key), "{tenant}: {}", text(&output));
    }
}

/// Issue 24: a tenant's planning has a wall-clock budget per cycle. A
/// tenant whose policy answers validly in 0.9 s a call over 32 partitions
/// (~29 s) stops planning at its 2 s; the cycle says so, compacts what it
/// planned and the benign tenant's partitions, and the rest waits for the
/// next cycle: no row lost or duplicated.
#[test]
fn a_tenants_planning_stops_at_its_budget_and_the_rest_waits() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let slow: Vec<String> = (1..=16).map(|n| format!("slow_{n:02}")).collect();
    let databases: Vec<&str> = std::iter::once("acme").chain(slow.iter().map(String::as_str)).collect();
    lake(root, &databases);
    let config = TestConfig::new("lake")
        .hourly_and_daily()
        .compaction("temp_directory", "tmp")
        .compaction("threads", 1)
        .tenant(
            r#"name = "acme"
               databases = ["acme"]"#,
        )
        .tenant(&format!(
            r#"name = "slow"
               databases = ["slow_*"]
               max_planning_time = "2s"
               [limits]
               call_timeout_ms = 2000
               [[tiers]]
               name = "hourly"
               plugin = "{}"
               config = {{ mode = "nap" }}"#,
            compactor_test_components::RAW
        ))
        .write(root);
    let started = std::time::Instant::now();
    let (output, report) = once_json(&config);
    let took = started.elapsed();
    assert_eq!(output.status.code(), Some(1), "the cut-short planning is reported: {}", text(&output));
    let problems = report["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| p["tier"] == "slow/hourly" && p["message"].as_str().unwrap().contains("planning deadline")),
        "{problems:?}"
    );
    assert!(took < std::time::Duration::from_secs(20), "the tenant stopped planning at its budget, not after ~29 s: {took:?}");
    let jobs = report["jobs"].as_array().unwrap();
    assert_eq!(jobs.iter().filter(|j| j["database"] == "acme" && j["success"] == true).count(), 3, "{jobs:?}");
    let slow_jobs = jobs.iter().filter(|j| j["tenant"] == "slow").count();
    assert!((1..32).contains(&slow_jobs), "what it planned in time ran, not all of it: {slow_jobs}");
    for database in &databases {
        assert_rows_kept(root, database);
    }
}

/// Issue 24: the engine's job slots are shared in turn. A tenant with six
/// partitions takes both slots first; the other tenant's first job, waiting
/// since then, gets the next free slot, before the busy tenant's third job
/// (every job stalls a second, so the order is not a matter of luck).
#[test]
fn a_tenant_with_many_partitions_never_takes_every_job_slot_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    lake(root, &["a_1", "a_2", "a_3", "b"]);
    let config = TestConfig::new("lake")
        .tier("hourly", "builtin:hourly", &[])
        .compaction("temp_directory", "tmp")
        .compaction("threads", 1)
        .compaction("max_concurrent", 2)
        .tenant(
            r#"name = "busy"
               databases = ["a_*"]"#,
        )
        .tenant(
            r#"name = "other"
               databases = ["b"]"#,
        )
        .write(root);
    let output = compactor(&["once", "--config", &config, "--now", NOW, "--format", "json"], &[("COMPACTOR_STALL", "after-merge:1000")]);
    assert!(output.status.success(), "{}", text(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut jobs: Vec<(String, String)> = report["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["started_at"].as_str().unwrap().to_owned(), j["tenant"].as_str().unwrap().to_owned()))
        .collect();
    jobs.sort();
    assert_eq!(jobs.len(), 8, "{jobs:?}");
    let first_other = jobs.iter().position(|(_, tenant)| tenant == "other").unwrap();
    assert!(first_other <= 2, "the other tenant's first job starts no later than third: {jobs:?}");
    for database in ["a_1", "a_2", "a_3", "b"] {
        assert_rows_kept(root, database);
    }
}

/// Issue 21 §4f: a tenant pattern that owns no database (a typo, or one an
/// earlier tenant's pattern shadows) was accepted silently, and its
/// databases ran the top-level tiers.
#[test]
fn a_tenant_pattern_that_owns_no_database_is_warned_about_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    lake(root, &["acme_eu", "acme_us"]);
    let config = TestConfig::new("lake")
        .hourly_and_daily()
        .compaction("temp_directory", "tmp")
        .tenant("name = \"acme\"\ndatabases = [\"acme_*\", \"amce_*\"]")
        .tenant("name = \"late\"\ndatabases = [\"acme_eu\"]")
        .write(root);
    let once = compactor(&["once", "--config", &config, "--now", NOW], &[]);
    assert!(once.status.success(), "{}", text(&once));
    let stderr = String::from_utf8_lossy(&once.stderr);
    assert!(stderr.contains("tenant acme: database pattern \"amce_*\" matches no database of the lake"), "{stderr}");
    assert!(
        stderr.contains("tenant late: database pattern \"acme_eu\" only matches databases an earlier tenant owns (acme_eu)"),
        "{stderr}"
    );
    assert!(!stderr.contains("\"acme_*\""), "the pattern in use is not warned about: {stderr}");
}

/// Issue 21 §4o: nothing bounded a tenant's whole cycle. With a
/// `fuel_per_cycle` worth about one hourly call, each cycle plans one of
/// the tenant's partitions, says why it stopped, and the next goes on where
/// it stopped: every partition is compacted in the end, every row once.
#[test]
fn a_tenants_fuel_per_cycle_stops_its_policies_and_the_next_cycle_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    lake(root, &["acme_a", "acme_b"]);
    let config = TestConfig::new("lake")
        .hourly_and_daily()
        .compaction("temp_directory", "tmp")
        .compaction("threads", 1)
        .tenant("name = \"acme\"\ndatabases = [\"acme_*\"]\n[limits]\nfuel_per_cycle = 150000")
        .write(root);
    let mut cycles = 0;
    while files_of(root, "acme_a").len() + files_of(root, "acme_b").len() > 2 {
        cycles += 1;
        assert!(cycles <= 12, "no progress: {:?} {:?}", files_of(root, "acme_a"), files_of(root, "acme_b"));
        let (output, report) = once_json(&config);
        let problems = report["problems"].as_array().unwrap();
        let fuel_spent = problems.iter().any(|p| p["message"].as_str().unwrap_or_default().contains("fuel_per_cycle is spent"));
        assert!(fuel_spent || cycles > 1, "the first cycle runs out and says so: {}", text(&output));
        let jobs = report["jobs"].as_array().unwrap();
        assert!(jobs.len() <= 2, "a cycle's fuel plans about one partition per tier: {jobs:#?}");
    }
    assert!(cycles >= 3, "four hours and two days cannot fit in fewer cycles: {cycles}");
    assert_rows_kept(root, "acme_a");
    assert_rows_kept(root, "acme_b");
}
