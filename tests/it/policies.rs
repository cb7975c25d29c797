//! Arc's tier rules (spec §1.3–§5), checked against the built-in *components*
//! through the plugin runtime, plus the bin-packing policy and the role gate.

use compactor_model::PartitionLevel;
use compactor_runtime::PluginLimits;
use compactor_runtime::{NodeInfo, PluginSource};

use crate::util::{at, instance, partition, raw_files, refs, runtime};

fn count(candidates: &[Vec<String>]) -> Vec<usize> {
    candidates.iter().map(Vec::len).collect()
}

mod hourly {
    use super::*;

    #[test]
    fn defaults_are_min_files_10_and_min_age_at_least_one_hour() {
        let tier = instance("builtin:hourly", "{}");
        let d = tier.description();
        assert_eq!(
            (d.name.as_str(), d.partition_level, d.output_suffix.as_str(), d.min_files),
            ("hourly", PartitionLevel::Hour, "compacted", 10)
        );
        assert_eq!(d.effective_config["min_age_hours"], 1);
        for forced in ["0", "-5"] {
            let tier = instance("builtin:hourly", &format!(r#"{{"min_age_hours": {forced}}}"#));
            assert_eq!(tier.description().effective_config["min_age_hours"], 1, "{forced}");
        }
        assert_eq!(instance("builtin:hourly", r#"{"min_files": 0}"#).description().min_files, 10);
        assert_eq!(
            instance("builtin:hourly", r#"{"min_files": 20, "min_age_hours": 3}"#).description().effective_config["min_age_hours"],
            3
        );
    }

    #[test]
    fn unknown_config_keys_are_refused_by_name() {
        let error = crate::util::plugin("builtin:hourly").instantiate(r#"{"min_file": 3}"#, PluginLimits::default()).err().unwrap();
        assert!(error.to_string().contains("min_file"), "{error}");
        assert!(error.to_string().contains("builtin:hourly"), "{error}");
    }

    #[test]
    fn should_compact_counts_uncompacted_files() {
        let mut tier = instance("builtin:hourly", "{}");
        let mut files = raw_files("cpu", "20260411_100500", 10);
        files.push("cpu_20260411_110512_1776006312123456789_b1_compacted.parquet".into());
        let (t, now) = (at("2026-04-11T10:00:00Z"), at("2026-04-12T00:00:00Z"));
        assert!(tier.should_compact(&files, t, now).unwrap());
        files.remove(0);
        assert!(!tier.should_compact(&files, t, now).unwrap(), "9 raw + 1 compacted");
        assert!(!tier.should_compact(&raw_files("cpu", "20260411_100500", 9), t, now).unwrap());
    }

    #[test]
    fn is_compacted_file_is_the_suffix_test() {
        let mut tier = instance("builtin:hourly", "{}");
        assert!(tier.is_compacted_file("db/cpu/2026/04/11/10/cpu_x_b1_compacted.parquet").unwrap());
        assert!(!tier.is_compacted_file("cpu_x_b1_daily.parquet").unwrap());
        assert!(!tier.is_compacted_file("cpu_20260411_100500_1.parquet").unwrap());
    }

    #[test]
    fn an_hour_becomes_eligible_min_age_after_it_starts() {
        let mut tier = instance("builtin:hourly", "{}");
        let names: Vec<String> = (0..10).map(|i| format!("f{i}.parquet")).collect();
        let p = partition("db/cpu/2026/04/11/10", "2026-04-11T10:00:00Z", &refs(&names));
        assert!(tier.select_candidates(&p, at("2026-04-11T10:59:59Z")).unwrap().is_empty());
        assert_eq!(count(&tier.select_candidates(&p, at("2026-04-11T11:00:00Z")).unwrap()), [10]);
        let mut slow = instance("builtin:hourly", r#"{"min_age_hours": 3}"#);
        assert!(slow.select_candidates(&p, at("2026-04-11T12:59:59Z")).unwrap().is_empty());
        assert_eq!(count(&slow.select_candidates(&p, at("2026-04-11T13:00:00Z")).unwrap()), [10]);
    }

    #[test]
    fn recent_raw_file_names_hold_the_partition_back() {
        let mut tier = instance("builtin:hourly", "{}");
        let names = raw_files("cpu", "20260411_103000", 12);
        let p = partition("db/cpu/2026/04/11/10", "2026-04-11T10:00:00Z", &refs(&names));
        assert!(tier.select_candidates(&p, at("2026-04-11T11:29:59Z")).unwrap().is_empty());
        assert_eq!(count(&tier.select_candidates(&p, at("2026-04-11T11:30:00Z")).unwrap()), [12]);
    }

    #[test]
    fn current_format_outputs_carry_no_timestamp_but_legacy_ones_do() {
        let mut tier = instance("builtin:hourly", "{}");
        let mut names: Vec<String> = (0..10).map(|i| format!("f{i}.parquet")).collect();
        names.push("cpu_20260411_235959_1776006312123456789_b1_compacted.parquet".into());
        let now = at("2026-04-11T12:00:00Z");
        let p = partition("db/cpu/2026/04/11/10", "2026-04-11T10:00:00Z", &refs(&names));
        assert_eq!(count(&tier.select_candidates(&p, now).unwrap()), [11], "current outputs never hold back");
        names.push("cpu_20260411_235959_compacted.parquet".into());
        let p = partition("db/cpu/2026/04/11/10", "2026-04-11T10:00:00Z", &refs(&names));
        assert!(tier.select_candidates(&p, now).unwrap().is_empty(), "legacy outputs do");
    }

    #[test]
    fn the_candidate_carries_every_file_of_the_partition() {
        let mut tier = instance("builtin:hourly", "{}");
        let mut names = raw_files("cpu", "20260411_100500", 10);
        names.push("cpu_20260411_110512_1776006312123456789_b1_compacted.parquet".into());
        names.push("cpu_20260411_120512_1776009912123456789_b1_compacted.parquet".into());
        let p = partition("db/cpu/2026/04/11/10", "2026-04-11T10:00:00Z", &refs(&names));
        let candidates = tier.select_candidates(&p, at("2026-04-12T00:00:00Z")).unwrap();
        assert_eq!(candidates.len(), 1);
        let mut chosen = candidates[0].clone();
        chosen.sort();
        let mut all: Vec<String> = p.files.iter().map(|f| f.key.clone()).collect();
        all.sort();
        assert_eq!(chosen, all);
    }

    #[test]
    fn negative_min_files_is_kept_as_arc_does() {
        let mut tier = instance("builtin:hourly", r#"{"min_files": -1}"#);
        let p = partition("db/cpu/2026/04/11/10", "2026-04-11T10:00:00Z", &["only.parquet"]);
        assert_eq!(count(&tier.select_candidates(&p, at("2026-04-12T00:00:00Z")).unwrap()), [1]);
    }

    /// Asserts that the newest timestamp the component reads from `names`
    /// is exactly `expected` (RFC 3339), or that none is read: the recency
    /// guard lets the partition through at `expected + 1h` but not a second
    /// earlier.
    fn assert_newest(names: &[&str], expected: Option<&str>) {
        let mut tier = instance("builtin:hourly", r#"{"min_files": 1}"#);
        let p = partition("default/metrics/2020/01/01/00", "2020-01-01T00:00:00Z", names);
        match expected {
            Some(newest) => {
                let released = at(newest) + chrono::Duration::hours(1);
                assert!(!tier.select_candidates(&p, released).unwrap().is_empty(), "{names:?} released at {released}");
                let held = released - chrono::Duration::seconds(1);
                assert!(tier.select_candidates(&p, held).unwrap().is_empty(), "{names:?} held at {held}");
            }
            None => assert!(!tier.select_candidates(&p, at("2020-01-01T01:00:00Z")).unwrap().is_empty(), "{names:?}"),
        }
    }

    #[test]
    fn newest_file_time_follows_arc_name_rules() {
        assert_newest(&["metrics_20260101_120000_123456789.parquet"], Some("2026-01-01T12:00:00Z"));
        assert_newest(
            &["metrics_20260103_150000_1.parquet", "metrics_20260102_120000_1.parquet", "metrics_20260101_090000_1.parquet"],
            Some("2026-01-03T15:00:00Z"),
        );
        assert_newest(
            &["metrics_20260101_090000_1.parquet", "metrics_20260102_120000_1.parquet", "metrics_20260103_150000_1.parquet"],
            Some("2026-01-03T15:00:00Z"),
        );
        assert_newest(
            &["metrics_20260102_090000_1.parquet", "metrics_20260103_150000_1.parquet", "metrics_20260101_120000_1.parquet"],
            Some("2026-01-03T15:00:00Z"),
        );
        assert_newest(&["metrics_20260102_000000_daily.parquet"], Some("2026-01-02T00:00:00Z"));
        assert_newest(
            &["metrics_20260101_120000_1.parquet", "metrics_20260101_130000_1.parquet", "metrics_20260102_000000_daily.parquet"],
            Some("2026-01-02T00:00:00Z"),
        );
        assert_newest(&["invalid.parquet", "no_timestamp.parquet"], None);
        assert_newest(
            &["invalid.parquet", "metrics_20260102_120000_123456789.parquet", "no_timestamp.parquet"],
            Some("2026-01-02T12:00:00Z"),
        );
        assert_newest(&["my_long_name_20260102_120000_1.parquet"], Some("2026-01-02T12:00:00Z"));
        assert_newest(&["plain.parquet", "metrics_20260102_120000_1_compacted.parquet"], Some("2026-01-02T12:00:00Z"));
        assert_newest(&["metrics_20260230_120000_1.parquet"], None);
    }
}

mod daily {
    use super::*;

    fn hour_keys(day: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{day}/{:02}/f{i}.parquet", i % 24)).collect()
    }

    #[test]
    fn defaults_are_min_files_12_min_age_24_and_skip_check_after_7_days() {
        let tier = instance("builtin:daily", "{}");
        let d = tier.description();
        assert_eq!(
            (d.name.as_str(), d.partition_level, d.output_suffix.as_str(), d.min_files),
            ("daily", PartitionLevel::Day, "daily", 12)
        );
        assert_eq!(d.effective_config["min_age_hours"], 24);
        assert_eq!(d.effective_config["skip_file_age_check_days"], 7);
        let zeroes = instance("builtin:daily", r#"{"min_age_hours": 0, "min_files": 0, "skip_file_age_check_days": -3}"#);
        assert_eq!(zeroes.description().effective_config["min_age_hours"], 24);
        assert_eq!(zeroes.description().effective_config["skip_file_age_check_days"], 7);
        assert_eq!(zeroes.description().min_files, 12);
        let negative = instance("builtin:daily", r#"{"min_age_hours": -5}"#);
        assert_eq!(negative.description().effective_config["min_age_hours"], -5, "negative ages are kept, as in Arc");
    }

    #[test]
    fn should_compact_counts_hour_level_files() {
        let mut tier = instance("builtin:daily", "{}");
        let (t, now) = (at("2026-04-11T00:00:00Z"), at("2026-04-20T00:00:00Z"));
        let day = "db/cpu/2026/04/11";
        assert!(tier.should_compact(&hour_keys(day, 12), t, now).unwrap());
        let mut with_daily = hour_keys(day, 11);
        with_daily.push(format!("{day}/cpu_20260412_030004_1776063604000000000_b1_daily.parquet"));
        assert!(!tier.should_compact(&with_daily, t, now).unwrap());
        let day_level: Vec<String> = (0..12).map(|i| format!("{day}/stray{i}.parquet")).collect();
        assert!(!tier.should_compact(&day_level, t, now).unwrap());
        let mut hourly_outputs = hour_keys(day, 11);
        hourly_outputs.push(format!("{day}/23/cpu_20260412_000512_1776000000000000000_b1_compacted.parquet"));
        assert!(tier.should_compact(&hourly_outputs, t, now).unwrap(), "hourly outputs are daily input");
    }

    #[test]
    fn a_day_becomes_eligible_at_the_next_midnight() {
        let mut tier = instance("builtin:daily", "{}");
        let keys = hour_keys("db/cpu/2026/04/11", 12);
        let p = partition("db/cpu/2026/04/11", "2026-04-11T00:00:00Z", &refs(&keys));
        assert!(tier.select_candidates(&p, at("2026-04-11T23:59:59Z")).unwrap().is_empty());
        assert_eq!(count(&tier.select_candidates(&p, at("2026-04-12T00:00:00Z")).unwrap()), [12]);
    }

    #[test]
    fn recent_names_hold_back_a_recent_day_but_not_a_backfilled_one() {
        let mut tier = instance("builtin:daily", "{}");
        let late: Vec<String> = (0..12).map(|i| format!("db/cpu/2026/04/11/{:02}/cpu_20260412_010000_{i}.parquet", i)).collect();
        let recent = partition("db/cpu/2026/04/11", "2026-04-11T00:00:00Z", &refs(&late));
        assert!(tier.select_candidates(&recent, at("2026-04-12T12:00:00Z")).unwrap().is_empty());
        assert_eq!(count(&tier.select_candidates(&recent, at("2026-04-13T01:00:00Z")).unwrap()), [12]);

        let fresh_names: Vec<String> = (0..12).map(|i| format!("db/cpu/2026/04/01/{:02}/cpu_20260412_110000_{i}.parquet", i)).collect();
        let backfill = partition("db/cpu/2026/04/01", "2026-04-01T00:00:00Z", &refs(&fresh_names));
        assert_eq!(count(&tier.select_candidates(&backfill, at("2026-04-12T12:00:00Z")).unwrap()), [12], "older than 7 days");

        let seven: Vec<String> = (0..12).map(|i| format!("db/cpu/2026/04/05/{:02}/cpu_20260411_230000_{i}.parquet", i)).collect();
        let exactly_seven = partition("db/cpu/2026/04/05", "2026-04-05T00:00:00Z", &refs(&seven));
        assert!(tier.select_candidates(&exactly_seven, at("2026-04-12T00:00:00Z")).unwrap().is_empty(), "age == 7 days still checks");
        assert_eq!(count(&tier.select_candidates(&exactly_seven, at("2026-04-12T00:00:00.001Z")).unwrap()), [12]);
    }

    #[test]
    fn the_candidate_carries_stray_and_previous_daily_files() {
        let mut tier = instance("builtin:daily", "{}");
        let mut keys = hour_keys("db/cpu/2026/04/11", 12);
        keys.push("db/cpu/2026/04/11/cpu_20260412_030004_1776063604000000000_b1_daily.parquet".into());
        keys.push("db/cpu/2026/04/11/stray.parquet".into());
        let p = partition("db/cpu/2026/04/11", "2026-04-11T00:00:00Z", &refs(&keys));
        assert_eq!(count(&tier.select_candidates(&p, at("2026-04-13T00:00:00Z")).unwrap()), [14]);
    }

    #[test]
    fn is_compacted_file_is_the_daily_suffix() {
        let mut tier = instance("builtin:daily", "{}");
        assert!(tier.is_compacted_file("cpu_x_b2_daily.parquet").unwrap());
        assert!(!tier.is_compacted_file("cpu_x_b2_compacted.parquet").unwrap());
    }
}

mod binpack {
    use super::*;

    #[test]
    fn packs_small_files_into_bins_up_to_the_target() {
        let mut tier = instance("builtin:binpack", r#"{"target_file_size_mb": 1, "small_file_threshold_mb": 1}"#);
        assert_eq!(tier.description().output_suffix, "packed");
        let names: Vec<String> = (0..10).map(|i| format!("f{i}.parquet")).collect();
        let mut p = partition("db/cpu/2026/04/11/10", "2026-04-11T10:00:00Z", &refs(&names));
        for file in &mut p.files {
            file.size = 300 * 1024;
        }
        // 3 files of 300 KiB fit in 1 MiB; the last lone file is not worth a rewrite.
        assert_eq!(count(&tier.select_candidates(&p, at("2026-04-12T00:00:00Z")).unwrap()), [3, 3, 3]);
        assert!(tier.select_candidates(&p, at("2026-04-11T10:30:00Z")).unwrap().is_empty(), "too young");
    }

    #[test]
    fn bad_config_names_the_key() {
        let plugin = crate::util::plugin("builtin:binpack");
        for (config, key) in [
            (r#"{"partition_level": "week"}"#, "partition_level"),
            (r#"{"target_size": 3}"#, "target_size"),
            (r#"{"min_files": 1}"#, "min_files"),
        ] {
            let error = plugin.instantiate(config, PluginLimits::default()).err().unwrap().to_string();
            assert!(error.contains(key), "{error}");
        }
    }
}

mod role_gate {
    use super::*;

    fn can_compact(role: &str, lease_assigned: bool, holds: bool) -> bool {
        let gate = runtime().load_gate(&PluginSource::Builtin("role".into())).unwrap();
        let mut gate = gate.instantiate("{}", PluginLimits::default()).unwrap();
        let node = NodeInfo { id: "n1".into(), role: role.into(), holds_compactor_lease: holds, lease_assigned, labels: vec![] };
        gate.can_compact(&node).unwrap()
    }

    #[test]
    fn standalone_compactor_and_unknown_roles_may_compact() {
        for role in ["standalone", "compactor", "", "something-else"] {
            assert!(can_compact(role, false, false), "{role:?}");
        }
        for role in ["writer", "reader"] {
            assert!(!can_compact(role, false, false), "{role:?}");
        }
    }

    #[test]
    fn an_assigned_lease_decides() {
        assert!(can_compact("writer", true, true));
        assert!(!can_compact("compactor", true, false));
    }

    #[test]
    fn a_gate_is_not_a_tier() {
        let error = runtime().load_tier(&PluginSource::Builtin("role".into())).err().unwrap().to_string();
        assert!(error.contains("cluster-gate component, but a tier-policy component is needed"), "{error}");
    }
}
