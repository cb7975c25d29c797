//! The guest SDK's building blocks, natively: Arc's file-name rules and the
//! calendar arithmetic behind them.

use compactor_plugin_sdk::Timestamp;
use compactor_plugin_sdk::arc::*;

#[test]
fn civil_dates_match_known_instants() {
    assert_eq!(Timestamp::from_civil(1970, 1, 1, 0, 0, 0), Some(Timestamp(0)));
    assert_eq!(Timestamp::from_civil(2026, 1, 1, 12, 0, 0), Some(Timestamp(1_767_268_800_000)));
    assert_eq!(Timestamp::from_civil(2024, 2, 29, 0, 0, 0).map(|t| t.0 / 1000), Some(1_709_164_800));
}

#[test]
fn invalid_fields_are_refused() {
    assert_eq!(Timestamp::from_civil(2026, 2, 29, 0, 0, 0), None);
    assert_eq!(Timestamp::from_civil(2026, 13, 1, 0, 0, 0), None);
    assert_eq!(Timestamp::from_civil(2026, 1, 1, 24, 0, 0), None);
    assert_eq!(Timestamp::from_civil(2026, 4, 31, 0, 0, 0), None);
}

fn at(y: i64, mo: u32, d: u32, h: u32) -> Option<Timestamp> {
    Timestamp::from_civil(y, mo, d, h, 0, 0)
}

#[test]
fn raw_and_legacy_names_carry_timestamps() {
    assert_eq!(name_timestamp("db/m/2026/01/01/00/metrics_20260101_120000_123456789.parquet"), at(2026, 1, 1, 12));
    assert_eq!(name_timestamp("db/m/2026/01/01/metrics_20260102_000000_daily.parquet"), at(2026, 1, 2, 0));
    assert_eq!(name_timestamp("cpu_20260102_030000_123_compacted.parquet"), at(2026, 1, 2, 3));
    assert_eq!(name_timestamp("my_long_measurement_20260102_030000_1.parquet"), at(2026, 1, 2, 3));
}

#[test]
fn current_outputs_and_odd_names_carry_none() {
    assert_eq!(name_timestamp("cpu_20260411_150512_1776006312123456789_b1_compacted.parquet"), None);
    assert_eq!(name_timestamp("cpu_20260412_030004_1776063604000000000_b2_daily.parquet"), None);
    assert_eq!(name_timestamp("invalid.parquet"), None);
    assert_eq!(name_timestamp("no_timestamp.parquet"), None);
    assert_eq!(name_timestamp("cpu_20260230_000000_1.parquet"), None);
}

#[test]
fn newest_wins_in_any_order() {
    let keys = ["a/metrics_20260102_090000_1.parquet", "a/metrics_20260103_150000_1.parquet", "a/metrics_20260101_120000_1.parquet"];
    assert_eq!(newest_file_time(keys), at(2026, 1, 3, 15));
    assert_eq!(newest_file_time([]), None);
}

#[test]
fn hour_level_detection() {
    assert!(is_hour_level("db/meas/2026/08/19/10/f.parquet"));
    assert!(is_hour_level("rocket-01/db/meas/2026/08/19/10/f.parquet"));
    assert!(!is_hour_level("db/meas/2026/08/19/f_daily.parquet"));
    assert!(!is_hour_level("rocket-01/db/meas/2026/08/19/f.parquet"));
    assert!(!is_hour_level("db/meas/f.parquet"));
}
