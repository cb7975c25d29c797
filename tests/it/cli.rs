//! The `compactor` binary, end to end: `plan` on a generated tree on local
//! disk, `plugin check|info`, and errors for bad input.

use std::path::Path;
use std::process::{Command, Output};

use crate::kit::TestConfig;
use crate::util::raw_files;

fn compactor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_compactor")).args(args).output().expect("run compactor")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A lake on disk: `mydb/cpu` with two hourly partitions of 12 raw files and
/// one of 3, `mydb/mem` with one of 40, and a stray text file.
fn generated_lake(root: &Path) {
    let mut keys = Vec::new();
    for hour in ["13", "14"] {
        keys.extend(raw_files("cpu", &format!("20260411_{hour}0512"), 12).iter().map(|f| format!("mydb/cpu/2026/04/11/{hour}/{f}")));
    }
    keys.extend(raw_files("cpu", "20260411_150512", 3).iter().map(|f| format!("mydb/cpu/2026/04/11/15/{f}")));
    keys.extend(raw_files("mem", "20260411_140512", 40).iter().map(|f| format!("mydb/mem/2026/04/11/14/{f}")));
    keys.push("mydb/cpu/2026/04/11/14/readme.txt".into());
    for key in keys {
        let path = root.join(&key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"PAR1 not really parquet PAR1").unwrap();
    }
}

fn write_config(dir: &Path, extra: &str) -> String {
    let config = TestConfig::new(format!("file://{}", dir.join("lake").display()));
    // `extra` is deliberately bad TOML for the config-error tests, so it is
    // appended as text to a config that is valid on its own.
    let path = dir.join("compactor.toml");
    std::fs::write(&path, format!("{}\n{extra}", config.to_toml())).unwrap();
    path.display().to_string()
}

#[test]
fn plan_json_lists_arc_candidates() {
    let dir = tempfile::tempdir().unwrap();
    generated_lake(&dir.path().join("lake"));
    let config = write_config(dir.path(), "");
    let output = compactor(&["plan", "--config", &config, "--now", "2026-04-11T18:00:00Z", "--format", "json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let batches: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON array on stdout");
    let batches = batches.as_array().unwrap();
    let summary: Vec<(String, String, u64, u64, u64)> = batches
        .iter()
        .map(|b| {
            (
                b["tier"].as_str().unwrap().to_owned(),
                b["partition_path"].as_str().unwrap().to_owned(),
                b["file_count"].as_u64().unwrap(),
                b["batch_number"].as_u64().unwrap(),
                b["total_batches"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("hourly", "mydb/cpu/2026/04/11/13", 12, 1, 1),
        ("hourly", "mydb/cpu/2026/04/11/14", 12, 1, 1),
        ("hourly", "mydb/mem/2026/04/11/14", 30, 1, 2),
        ("hourly", "mydb/mem/2026/04/11/14", 10, 2, 2),
    ];
    assert_eq!(summary, expected.map(|(t, p, n, b, tb)| (t.to_owned(), p.to_owned(), n, b, tb)));

    let first = &batches[0];
    let mut keys: Vec<&str> = first.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["batch_number", "database", "file_count", "files", "measurement", "partition_path", "partition_time", "tier", "total_batches"]
    );
    assert_eq!(first["database"], "mydb");
    assert_eq!(first["measurement"], "cpu");
    assert_eq!(first["partition_time"], "2026-04-11T13:00:00Z");
    let files: Vec<&str> = first["files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    assert_eq!(files.len(), 12);
    assert!(files.windows(2).all(|w| w[0] < w[1]));
    assert!(files.iter().all(|f| f.starts_with("mydb/cpu/2026/04/11/13/cpu_20260411_130512_") && f.ends_with(".parquet")));
    assert!(!stdout(&output).contains("readme.txt"));
}

#[test]
fn plan_changes_nothing_in_storage() {
    let dir = tempfile::tempdir().unwrap();
    generated_lake(&dir.path().join("lake"));
    let config = write_config(dir.path(), "");
    let before = listing(&dir.path().join("lake"));
    let output = compactor(&["plan", "--config", &config, "--now", "2026-04-11T18:00:00Z"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(listing(&dir.path().join("lake")), before);
}

fn listing(root: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                out.push((entry.path().display().to_string(), entry.metadata().unwrap().len()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn plan_table_is_aligned_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    generated_lake(&dir.path().join("lake"));
    let config = write_config(dir.path(), "");
    let output = compactor(&["plan", "--config", &config, "--now", "2026-04-11T18:00:00Z", "--tier", "hourly"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("TIER    DATABASE  MEASUREMENT  PARTITION"), "{text}");
    let partition_column = lines[0].find("PARTITION").unwrap();
    assert!(lines[1..5].iter().all(|l| l.find("mydb/").unwrap() == partition_column), "{text}");
    assert!(lines.iter().any(|l| l.starts_with("4 batches in 3 partitions, 64 files")), "{text}");
    // 4 batches, each: a GET per input and two for the lease (64 + 8);
    // 5 PUTs (lease taken and released, manifest, output, commit); 4 DELETEs
    // (first input, the rest in bulk, manifest, outcome); a LIST for the
    // second look at the manifests. Planning LISTs: manifests, databases,
    // the measurements of mydb, one listing each of cpu and mem.
    let cost = lines.iter().find(|l| l.starts_with("cost of the cycle")).expect("a cost line");
    assert!(cost.contains("(9 LIST, 72 GET, 20 PUT incl. parts, 16 DELETE)"), "{cost}");
}

#[test]
fn plan_reports_config_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("lake")).unwrap();
    let config = write_config(dir.path(), "[compaction]\nmax_concurent = 3\n");
    let output = compactor(&["plan", "--config", &config]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("max_concurent"), "{}", stderr(&output));

    let config = write_config(dir.path(), "[[tiers]]\nname = \"hourly\"\nplugin = \"builtin:hourly\"\n[tiers.config]\nmin_file = 3\n");
    let output = compactor(&["plan", "--config", &config, "--now", "2026-04-11T18:00:00Z"]);
    assert_eq!(output.status.code(), Some(1), "a tier that fails is reported, the plan still prints");
    assert!(
        stderr(&output).contains("tier hourly: plugin builtin:hourly refused its configuration: invalid config: unknown field `min_file`"),
        "{}",
        stderr(&output)
    );

    let output = compactor(&["plan", "--config", &config, "--now", "yesterday"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("expected RFC 3339"), "{}", stderr(&output));

    let output = compactor(&["plan", "--config", &config, "--tier", "weekly"]);
    assert!(stderr(&output).contains("unknown tier \"weekly\" (configured: hourly)"), "{}", stderr(&output));
}

/// Found by an adversarial run: an object named with an escape sequence and
/// a newline reached stderr verbatim through a listing error, so whoever can
/// write to the lake could forge log lines or drive the operator's terminal.
#[test]
fn object_names_with_control_characters_do_not_reach_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    generated_lake(&dir.path().join("lake"));
    let forged = dir.path().join("lake/mydb/cpu/2026/04/11/13/cpu_x\u{1b}[31m\nERROR forged.parquet");
    std::fs::write(forged, b"PAR1").unwrap();
    let config = write_config(dir.path(), "");
    let output = compactor(&["plan", "--config", &config, "--now", "2026-04-11T18:00:00Z"]);
    let stderr = stderr(&output);
    assert!(!stderr.contains('\u{1b}') && !stderr.lines().any(|l| l.starts_with("ERROR forged")), "{stderr}");
}

#[test]
fn plan_refuses_a_missing_lake() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let output = compactor(&["plan", "--config", &config]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("cannot open storage"), "{}", stderr(&output));
}

#[test]
fn plugin_check_and_info() {
    let output = compactor(&["plugin", "check", "builtin:hourly"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), "ok: builtin:hourly is a tier-policy component for compactor:policy@1.1.0 (host speaks 1.1.0)");

    let output = compactor(&["plugin", "info", "builtin:daily", "--format", "json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let info: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(info["world"], "tier-policy");
    assert_eq!(info["wit_version"], "1.1.0");
    assert_eq!(info["explains"], true);
    assert_eq!(info["tier"]["name"], "daily");
    assert_eq!(info["tier"]["partition_level"], "day");
    assert_eq!(info["tier"]["min_files"], 12);

    // A component built for 1.0.0: accepted, and the host explains for it.
    let old = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/components/hourly-wit-1.0.0.wasm");
    let output = compactor(&["plugin", "info", old]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("compactor:policy@1.0.0 (host speaks 1.1.0, accepts >=1.0.0, <2.0.0)"), "{text}");
    assert!(text.contains("explains:     no: plan --explain uses the host's reasons"), "{text}");

    let output = compactor(&["plugin", "info", "builtin:role"]);
    assert!(stdout(&output).contains("world:        cluster-gate"), "{}", stdout(&output));

    let output = compactor(&["plugin", "check", compactor_test_components::HOSTILE, "--plugin-config", r#"{"mode":"configure-error"}"#]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("refused its configuration"), "{}", stderr(&output));
}

#[test]
fn output_piped_into_a_closed_reader_ends_quietly() {
    for args in [&["plugin", "info", "builtin:hourly"][..], &["plugin", "simulate", "--hours", "24"][..]] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_compactor"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before the command writes (like `| head -0`).
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
