//! The sandbox against components built without the SDK (`plugins/testing/
//! raw` and `raw-gate`: plain `wit-bindgen`, `println!`, the default panic
//! hook, `std::thread::sleep`, stdin), through the real commands: `plan`,
//! `once`, `run` and `plugin check`. Whatever a component does, the host
//! keeps running, the error names the plugin, the healthy tier in the same
//! run still plans and compacts, and the host's memory stays bounded.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use compactor_job::sample::{self, SampleSpec};
use compactor_job::verify;
use compactor_test_components::{RAW, RAW_GATE};

use crate::kit::{TestConfig, run_until_ready_then_sigterm, value};
use crate::util::{files_under, text};

const NOW: &str = "2026-04-13T12:00:00Z";
/// The raw plugin's per-call deadline in these tests.
const DEADLINE_MS: i64 = 300;
/// The raw plugin's memory cap in these tests.
const MEMORY_CAP: &str = "128MiB";
/// What the host may use beyond its plugins' memory caps: the engine,
/// wasmtime's code, DuckDB in `once`, and copies of what a plugin returns
/// (a 50 MB key crosses the boundary twice).
const HOST_RSS_ALLOWANCE: u64 = 384 << 20;

struct Lake {
    _dir: tempfile::TempDir,
    root: PathBuf,
    lake: PathBuf,
}

/// One measurement, two old hours of 12 small Parquet files each.
fn lake() -> Lake {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let lake = root.join("lake");
    let spec = SampleSpec {
        database: "db".into(),
        measurements: vec![("cpu".into(), vec!["host".into()])],
        hours: 2,
        files_per_hour: 12,
        rows_per_file: 20,
    };
    sample::generate(&lake, crate::util::at(NOW), &spec).unwrap();
    Lake { _dir: dir, root, lake }
}

fn limits() -> toml::Value {
    let mut limits = toml::Table::new();
    limits.insert("call_timeout_ms".into(), value(DEADLINE_MS));
    limits.insert("memory".into(), value(MEMORY_CAP));
    toml::Value::Table(limits)
}

/// A config with the raw tier in `mode` first, then Arc's hourly tier.
fn raw_tier_config(lake: &Lake, mode: &str) -> String {
    let config = TestConfig::new("lake")
        .compaction("temp_directory", "tmp")
        .compaction("threads", 1)
        .tier("raw", RAW, &[("mode", value(mode))])
        .tier_limits(limits())
        .tier("hourly", "builtin:hourly", &[]);
    config.write(&lake.root)
}

/// A config in cluster mode whose gate is `gate` (configured with `mode`),
/// for a node of `role`.
fn gated_config(lake: &Lake, gate: &str, mode: &str, role: &str) -> String {
    let mut gate_config = toml::Table::new();
    if !mode.is_empty() {
        gate_config.insert("mode".into(), value(mode));
    }
    let config = TestConfig::new("lake")
        .compaction("temp_directory", "tmp")
        .compaction("threads", 1)
        .plugin_limits(limits())
        .cluster_on_etcd(role)
        // A lone writer takes the compactor lease in single mode (Arc #894);
        // in spread mode `builtin:role` lets no writer compact.
        .cluster("mode", if role == "writer" { "spread" } else { "single" })
        .cluster("gate", gate)
        .cluster("gate_config", toml::Value::Table(gate_config))
        .tier("hourly", "builtin:hourly", &[]);
    config.write(&lake.root)
}

/// Runs the binary; returns its output and its peak RSS in bytes, read from
/// the kernel's accounting of this one child (`wait4`, which also reaps it).
#[allow(clippy::zombie_processes)]
fn run_measured(args: &[&str]) -> (Output, u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_compactor")).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut buffer).unwrap();
        buffer
    });
    let err = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut buffer).unwrap();
        buffer
    });
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid, and wait4 only writes to it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child; std's Child is not waited on after.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4 failed");
    let status = std::os::unix::process::ExitStatusExt::from_raw(status);
    let output = Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() };
    (output, usage.ru_maxrss as u64 * 1024)
}

/// The host survived: it exited on its own, with a code it documents, and
/// printed no panic.
fn assert_survived(output: &Output, what: &str) {
    let code = output.status.code();
    assert!(matches!(code, Some(0..=2)), "{what}: exit {:?}\n{}", output.status, text(output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    // A host panic starts a line with "thread '…' panicked"; a plugin's own
    // panic message only appears inside a log line attributed to it.
    assert!(
        !stderr.lines().any(|l| l.starts_with("thread '")) && !stderr.contains("Cannot start a runtime"),
        "{what}: the host panicked\n{stderr}"
    );
    assert!(!stderr.contains('\u{1b}'), "{what}: a terminal escape reached the output\n{stderr}");
    assert!(!stderr.lines().any(|l| l.starts_with("2026-01-01T00:00:00Z ERROR")), "{what}: a plugin forged a log line\n{stderr}");
}

fn cap_bytes() -> u64 {
    compactor_model::units::parse_size(MEMORY_CAP).unwrap()
}

#[test]
fn raw_policies_never_stop_plan_and_the_healthy_tier_still_plans() {
    let lake = lake();
    // (mode, whether the raw tier must be reported as a problem)
    let modes = [
        ("print", false),
        ("print-flood", false),
        ("stdin", false),
        ("huge-info", false),
        ("panic", true),
        ("sleep", true),
        ("loop", true),
        ("huge-key", true),
        ("forge", true),
        ("long-suffix", true),
        ("one-file", true),
    ];
    for (mode, problem) in modes {
        let config = raw_tier_config(&lake, mode);
        let started = Instant::now();
        let (output, rss) = run_measured(&["-v", "plan", "--config", &config, "--now", NOW, "--format", "json"]);
        let elapsed = started.elapsed();
        assert_survived(&output, mode);
        assert!(elapsed < Duration::from_secs(20), "{mode}: plan took {elapsed:?}; the deadline is {DEADLINE_MS} ms");
        assert!(rss < cap_bytes() + HOST_RSS_ALLOWANCE, "{mode}: host peak RSS {} MiB", rss >> 20);
        let batches: serde_json::Value =
            serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{mode}: {e}\n{}", text(&output)));
        // Both hours are planned: by the raw tier where its answer is valid
        // (then hourly sees its predicted outputs), by hourly otherwise.
        let hours: std::collections::BTreeSet<&str> = batches
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["tier"] == "hourly" || b["tier"] == "raw")
            .filter_map(|b| b["partition_path"].as_str())
            .collect();
        assert_eq!(hours.len(), 2, "{mode}: both hours are still planned\n{}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(if problem { 1 } else { 0 }), "{mode}\n{stderr}");
        if problem {
            let warning = stderr.lines().find(|l| l.starts_with("warning: ")).unwrap_or_default();
            assert!(warning.contains(RAW), "{mode}: the problem names the plugin: {warning}");
            assert!(warning.len() < 2048, "{mode}: the problem is bounded ({} bytes)", warning.len());
        }
        eprintln!("{mode}: exit {:?} in {elapsed:?}, host peak RSS {} MiB", output.status.code(), rss >> 20);
    }
}

#[test]
fn what_a_raw_policy_prints_reaches_the_log_attributed_and_bounded() {
    let lake = lake();
    let (output, _) = run_measured(&["-v", "plan", "--config", &raw_tier_config(&lake, "print"), "--now", NOW]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr.lines().find(|l| l.contains("stdout from select-candidates")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains(RAW), "attributed to the plugin: {line}");
    assert!(stderr.contains("stderr: stderr from select-candidates"), "{stderr}");

    let (output, _) = run_measured(&["-v", "plan", "--config", &raw_tier_config(&lake, "print-flood"), "--now", NOW]);
    assert!(output.stderr.len() < 256 << 10, "100,000 printed lines are cut to a bounded log: {} bytes", output.stderr.len());
    assert!(String::from_utf8_lossy(&output.stderr).contains("dropping the rest"));
}

#[test]
fn a_raw_panic_names_the_plugin_and_quotes_its_message() {
    let lake = lake();
    let (output, _) = run_measured(&["plan", "--config", &raw_tier_config(&lake, "panic"), "--now", NOW]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // `info` is the first export after `configure` that panics in this mode.
    assert!(stderr.contains(&format!("plugin {RAW} trapped in info: wasm trap: wasm `unreachable` instruction executed")), "{stderr}");
    assert!(stderr.contains("the plugin reported: raw policy panics in info"), "the default hook's message is quoted: {stderr}");
}

#[test]
fn once_compacts_the_healthy_tier_beside_a_misbehaving_raw_one() {
    for mode in ["print", "panic", "sleep", "one-file", "long-suffix"] {
        let lake = lake();
        let connection = verify::connection().unwrap();
        let glob = format!("{}/db/cpu/**/*.parquet", lake.lake.display());
        let before = verify::fingerprint(&connection, &glob).unwrap();
        let (output, rss) = run_measured(&["once", "--config", &raw_tier_config(&lake, mode), "--now", NOW, "--format", "json"]);
        assert_survived(&output, mode);
        assert!(rss < cap_bytes() + HOST_RSS_ALLOWANCE, "{mode}: host peak RSS {} MiB", rss >> 20);
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{mode}: {e}\n{}", text(&output)));
        let jobs = report["jobs"].as_array().unwrap();
        // A raw policy that works (it prints) compacts first; when it fails,
        // the hourly tier compacts the same hours.
        let by = if mode == "print" { "raw" } else { "hourly" };
        assert_eq!(jobs.len(), 2, "{mode}: {}", text(&output));
        assert!(jobs.iter().all(|j| j["success"] == true && j["tier"] == by), "{mode}: {}", text(&output));
        assert_eq!(verify::fingerprint(&connection, &glob).unwrap(), before, "{mode}: every row once");
        let left = files_under(&lake.lake);
        assert_eq!(left.len(), 2, "{mode}: one output per hour: {left:#?}");
    }
}

#[test]
fn plugin_check_survives_raw_components_and_is_cut_off_by_the_deadline() {
    for (mode, ok) in [("print", true), ("stdin", true), ("forge", true), ("huge-info", true), ("panic", false), ("long-suffix", false)] {
        let config = format!(r#"{{"mode": "{mode}"}}"#);
        let (output, _) = run_measured(&["plugin", "info", RAW, "--plugin-config", &config]);
        assert_survived(&output, mode);
        assert_eq!(output.status.success(), ok, "{mode}: {}", text(&output));
        assert!(output.stdout.len() < 8192, "{mode}: plugin info is bounded ({} bytes)", output.stdout.len());
        if !ok {
            assert!(String::from_utf8_lossy(&output.stderr).contains(RAW), "{mode}: names the plugin: {}", text(&output));
        }
    }
    // Bidi and zero-width marks survive JSON's own escaping: the host
    // escapes them in names, descriptions and the effective config alike.
    let (output, _) = run_measured(&["plugin", "info", RAW, "--plugin-config", r#"{"mode": "forge"}"#, "--format", "json"]);
    let info = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && !info.contains('\u{202e}') && !info.contains('\u{200b}'), "{}", text(&output));
    assert!(info.contains(r"k\\u{202e}y"), "escaped, and JSON escapes the backslash: {info}");
    // No Tokio runtime here: the sleep is a blocking host call, cut at the
    // default 5 s deadline.
    let started = Instant::now();
    let (output, _) = run_measured(&["plugin", "check", RAW, "--plugin-config", r#"{"mode": "sleep-configure"}"#]);
    assert_survived(&output, "sleep-configure");
    assert!(started.elapsed() < Duration::from_secs(15), "a one-hour sleep stopped after {:?}", started.elapsed());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("plugin {RAW} ran past its 5s deadline in configure")), "{stderr}");
}

#[test]
fn once_asks_the_gate_and_compacts_nothing_unless_it_says_yes() {
    // (gate, mode, role, exit code)
    let cases = [
        (RAW_GATE, "no", "compactor", 0),
        (RAW_GATE, "loop", "compactor", 1),
        (RAW_GATE, "panic", "compactor", 1),
        (RAW_GATE, "sleep", "compactor", 1),
        ("builtin:role", "", "writer", 0),
    ];
    for (gate, mode, role, code) in cases {
        let lake = lake();
        let before = files_under(&lake.lake);
        let config = gated_config(&lake, gate, mode, role);
        let (output, _) = run_measured(&["once", "--config", &config, "--now", NOW, "--format", "json"]);
        assert_survived(&output, mode);
        assert_eq!(output.status.code(), Some(code), "{gate} {mode}: {}", text(&output));
        assert_eq!(files_under(&lake.lake), before, "{gate} {mode}: nothing is compacted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&format!("the cluster gate {gate}")), "{gate} {mode}: {stderr}");
        let (plan, _) = run_measured(&["plan", "--config", &config, "--now", NOW]);
        assert!(String::from_utf8_lossy(&plan.stderr).contains(&format!("note: the cluster gate {gate}")), "plan shows the gate");
        let (recover, _) = run_measured(&["recover", "--config", &config]);
        assert_survived(&recover, mode);
        assert_eq!(recover.status.code(), Some(code), "{gate} {mode}: recover asks the gate too: {}", text(&recover));
        assert!(String::from_utf8_lossy(&recover.stderr).contains("nothing was recovered"), "{}", text(&recover));
    }
    let lake = lake();
    let (output, _) = run_measured(&["once", "--config", &gated_config(&lake, RAW_GATE, "yes", "compactor"), "--now", NOW]);
    assert!(output.status.success(), "{}", text(&output));
    assert_eq!(files_under(&lake.lake).len(), 2, "a gate that says yes lets the node compact");
}

#[test]
fn run_with_a_failing_gate_stays_up_idle_and_stops_on_sigterm() {
    let lake = lake();
    let config = gated_config(&lake, RAW_GATE, "panic", "compactor");
    let (status, stderr) = run_until_ready_then_sigterm(&config);
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains(&format!("the cluster gate {RAW_GATE} failed")) && stderr.contains("stays idle"), "{stderr}");
    assert!(!stderr.contains("panicked at") || stderr.contains("raw policy panics"), "only the plugin's own panic: {stderr}");
}
