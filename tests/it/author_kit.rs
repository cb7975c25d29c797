//! The plugin author's kit: `compactor plugin test` on the shipped fixtures
//! (built-in tiers and the template), a run that must fail, and the test
//! kit driving the template component with a fuel bound.

use compactor_policy_testkit::{PartitionBuilder, Policy, at};

use crate::util::{compactor, text};

fn repository(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_shipped_fixtures_pass() {
    let cases = [
        ("builtin:hourly".to_owned(), repository("examples/fixtures/hourly"), 7),
        ("builtin:daily".to_owned(), repository("examples/fixtures/daily"), 5),
        (compactor_test_components::POLICY_TEMPLATE.to_owned(), repository("examples/policy-template/fixtures"), 6),
    ];
    for (plugin, fixtures, count) in cases {
        let output = compactor(&["plugin", "test", &plugin, "--fixtures", &fixtures], &[]);
        assert!(output.status.success(), "{plugin}: {}", text(&output));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains(&format!("{count} fixtures: {count} passed, 0 failed")), "{plugin}: {stdout}");
        // Cases expected to fail with a given error are among them.
        assert!(stdout.contains("failed as expected"), "{plugin}: {stdout}");
    }
}

#[test]
fn a_fixture_that_does_not_hold_fails_the_run_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let hour = "now = \"2026-04-11T17:00:00Z\"\n[partition]\ntime = \"2026-04-11T14:00:00Z\"\nraw_files = 12\n";
    std::fs::write(dir.path().join("a-wrong-count.toml"), format!("{hour}[expect]\nfiles_selected = 3\n")).unwrap();
    std::fs::write(dir.path().join("b-no-error.toml"), format!("{hour}[expect]\nerror = \"boom\"\n")).unwrap();
    std::fs::write(dir.path().join("c-fuel.toml"), format!("{hour}[expect]\nmax_fuel = 10\n")).unwrap();
    std::fs::write(dir.path().join("d-typo.toml"), format!("{hour}[expectt]\n")).unwrap();
    std::fs::write(dir.path().join("e-passes.toml"), format!("{hour}[expect]\nfiles_selected = 12\n")).unwrap();
    std::fs::write(dir.path().join("f-long.toml"), format!("now = \"{}\"\n[partition]\ntime = \"x\"\n", "x".repeat(70_000))).unwrap();
    std::fs::write(dir.path().join("g-huge.toml"), format!("{}raw_files = 100000000\n", hour.replace("raw_files = 12\n", ""))).unwrap();
    let output = compactor(&["plugin", "test", "builtin:hourly", "--fixtures", &dir.path().display().to_string(), "--format", "json"], &[]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let outcomes: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    let verdict = |i: usize| (outcomes[i]["passed"].as_bool().unwrap(), outcomes[i]["detail"].as_str().unwrap().to_owned());
    assert!(!verdict(0).0 && verdict(0).1.contains("expected 3 files selected, got 12"), "{:?}", verdict(0));
    assert!(!verdict(1).0 && verdict(1).1.contains("but the call succeeded"), "{:?}", verdict(1));
    assert!(!verdict(2).0 && verdict(2).1.contains("max_fuel 10"), "{:?}", verdict(2));
    assert!(!verdict(3).0 && verdict(3).1.contains("bad fixture") && verdict(3).1.contains("expectt"), "{:?}", verdict(3));
    assert!(verdict(4).0, "{:?}", verdict(4));
    assert!(!verdict(5).0 && verdict(5).1.len() < 4096, "{:?}", verdict(5).1.len());
    assert!(!verdict(6).0 && verdict(6).1.contains("at most"), "{:?}", verdict(6));
    // The table (not only JSON) survives a long cell.
    let table = compactor(&["plugin", "test", "builtin:hourly", "--fixtures", &dir.path().display().to_string()], &[]);
    assert_eq!(table.status.code(), Some(1), "{}", text(&table));
    assert!(String::from_utf8_lossy(&table.stdout).contains("7 fixtures: 1 passed, 6 failed"), "{}", text(&table));
    let missing = compactor(&["plugin", "test", "builtin:hourly", "--fixtures", "/nonexistent"], &[]);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing));
}

#[test]
fn the_test_kit_drives_the_template_and_bounds_its_fuel() {
    let mut policy = Policy::load(compactor_test_components::POLICY_TEMPLATE).unwrap().configure(r#"{"busy_hours": [9]}"#).unwrap();
    assert_eq!(policy.describe().unwrap().output_suffix, "budget");
    let hour = PartitionBuilder::hour("db", "cpu", at("2026-04-11T14:00:00Z")).raw_files(100, 1 << 20).build();
    // 100 MiB of small files: over the 64 MiB budget, outside busy hours.
    let answer = policy.select(&hour, at("2026-04-11T16:00:00Z")).unwrap();
    assert_eq!(answer.files_selected(), 100);
    assert!(answer.fuel < 2_000_000, "the template's cost regressed: {} fuel for 100 files", answer.fuel);
    assert_eq!(policy.select(&hour, at("2026-04-11T09:30:00Z")).unwrap().files_selected(), 0, "busy hour");
    // And says why, in its own words.
    assert_eq!(policy.explain(&hour, at("2026-04-11T09:30:00Z")).unwrap().as_deref(), Some("busy hour"));
    assert_eq!(policy.explain(&hour, at("2026-04-11T16:00:00Z")).unwrap().as_deref(), Some("100 small files over budget_bytes"));
    // Fresh instances answer the same.
    let mut fresh = Policy::load(compactor_test_components::POLICY_TEMPLATE).unwrap().configure("{}").unwrap().fresh_instances();
    assert_eq!(fresh.select(&hour, at("2026-04-11T16:00:00Z")).unwrap().files_selected(), 100);
}

#[test]
fn the_simulator_passes_the_built_in_tiers_and_the_template_and_flags_a_policy_that_never_converges() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("builtin.svg");
    let args = ["plugin", "simulate", "--hours", "72", "--late-percent", "10", "--backfill-files", "48", "--svg", svg.to_str().unwrap()];
    let builtin = compactor(&args, &[]);
    assert!(builtin.status.success(), "{}", text(&builtin));
    let stdout = String::from_utf8_lossy(&builtin.stdout);
    assert!(stdout.contains("fixed point: every tier converged"), "{stdout}");
    assert!(stdout.contains("hourly") && stdout.contains("daily"), "{stdout}");
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"), "an SVG chart");

    let template = compactor_test_components::POLICY_TEMPLATE;
    let budget = compactor(&["plugin", "simulate", "--plugin", template, "--file-size", "8MiB", "--format", "json"], &[]);
    assert!(budget.status.success(), "{}", text(&budget));
    let report: serde_json::Value = serde_json::from_slice(&budget.stdout).unwrap();
    assert_eq!(report["converged"], true, "{report}");
    assert!(report["tiers"][0]["jobs"].as_u64().unwrap() > 0, "{report}");

    let greedy = compactor(
        &["plugin", "simulate", "--plugin", compactor_test_components::HOSTILE, "--plugin-config", r#"{"mode": "self-select"}"#],
        &[],
    );
    assert_eq!(greedy.status.code(), Some(1), "{}", text(&greedy));
    let stdout = String::from_utf8_lossy(&greedy.stdout);
    assert!(stdout.contains("NOT CONVERGED") && stdout.contains("keeps re-selecting its own output"), "{stdout}");
    assert!(stdout.contains("sim/m0/2026/"), "names the partition: {stdout}");
    // Answers the engine would reject are flagged, not simulated.
    let foreign = compactor(
        &["plugin", "simulate", "--plugin", compactor_test_components::HOSTILE, "--plugin-config", r#"{"mode": "foreign-file"}"#],
        &[],
    );
    assert_eq!(foreign.status.code(), Some(1), "{}", text(&foreign));
    assert!(String::from_utf8_lossy(&foreign.stdout).contains("is not in the partition's listing"), "{}", text(&foreign));
}

/// Found by review: a policy that answers several candidates per partition
/// (binpack's bins) had every candidate's output named `…_b1_…` in the
/// simulator, so each overwrote the last and the lake lost files and bytes.
/// Three 1 MB bins of 256 KiB files an hour leave three outputs an hour.
#[test]
fn the_simulator_keeps_every_output_of_a_policy_with_several_candidates() {
    let output = compactor(
        &[
            "plugin",
            "simulate",
            "--plugin",
            "builtin:binpack",
            "--plugin-config",
            r#"{"target_file_size_mb":1}"#,
            "--file-size",
            "256KiB",
            "--hours",
            "24",
        ],
        &[],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", text(&output));
    assert!(stdout.contains("288 files (72.0 MiB) in, 72 files left"), "{stdout}");
}
