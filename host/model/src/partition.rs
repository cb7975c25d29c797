//! Partition paths: `{database}/{measurement}/{YYYY}/{MM}/{DD}[/{HH}]`, parsed
//! relative to the `{database}/{measurement}/` prefix so that pseudo-databases
//! (`spoke/db`) work like plain ones.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};

use crate::FileMeta;

/// How files are grouped into partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionLevel {
    /// `YYYY/MM/DD/HH/file` or deeper; hour 0–23, month 1–12 and day 1–31
    /// are required (the day is not checked against the month's length).
    Hour,
    /// `YYYY/MM/DD/file` or deeper; any integers, normalised by calendar
    /// arithmetic as Arc does.
    Day,
}

impl std::fmt::Display for PartitionLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Hour => "hour",
            Self::Day => "day",
        })
    }
}

/// One partition of one measurement and the files listed in it.
///
/// Invariants: `path` is `{database}/{measurement}/` followed by the date
/// segments exactly as they appear in the keys; every file key starts with
/// `{path}/`; files are sorted by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Database name.
    pub database: String,
    /// Measurement name.
    pub measurement: String,
    /// Partition key prefix including the database, without trailing `/`.
    pub path: String,
    /// UTC start of the hour or day.
    pub time: DateTime<Utc>,
    /// The partition's files, sorted by key.
    pub files: Vec<FileMeta>,
}

impl Partition {
    /// Total bytes of the partition's files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// A partition path split once into the day it belongs to and, for an hour
/// partition, its hour: the unit of leases (one lease object per day, a
/// claim per hour or for the whole day) and of held-file blocking (an hour
/// waits for its own and its day's manifests, a day for any of its hours').
///
/// `…/YYYY/MM/DD/HH` is an hour of `…/YYYY/MM/DD`; any other path (a day,
/// or a layout Arc never writes) is taken whole, as a day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionPath<'a> {
    day: &'a str,
    hour: Option<&'a str>,
}

impl<'a> PartitionPath<'a> {
    /// Splits `path` (a trailing `/` is ignored).
    pub fn parse(path: &'a str) -> Self {
        let path = path.trim_end_matches('/');
        let segments: Vec<&str> = path.rsplitn(5, '/').collect();
        let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
        if segments.len() == 5 && digits(segments[0], 2) && digits(segments[1], 2) && digits(segments[2], 2) && digits(segments[3], 4) {
            return Self { day: &path[..path.len() - 3], hour: Some(segments[0]) };
        }
        Self { day: path, hour: None }
    }

    /// The day: `…/YYYY/MM/DD`, or the whole path when it is not an hour.
    pub fn day(&self) -> &'a str {
        self.day
    }

    /// The hour (`HH`) of an hour partition.
    pub fn hour(&self) -> Option<&'a str> {
        self.hour
    }
}

/// Groups `files` (all under `{database}/{measurement}/`) into partitions at
/// `level`, sorted by path. Keys too shallow or with unparseable date
/// segments are skipped, as in Arc.
pub fn group_into_partitions(database: &str, measurement: &str, files: &[FileMeta], level: PartitionLevel) -> Vec<Partition> {
    let prefix = format!("{database}/{measurement}/");
    let mut partitions: BTreeMap<String, Partition> = BTreeMap::new();
    for file in files {
        let Some(relative) = file.key.strip_prefix(&prefix) else { continue };
        let Some((date_path, time)) = parse_date_segments(relative, level) else { continue };
        let path = format!("{prefix}{date_path}");
        partitions
            .entry(path)
            .or_insert_with_key(|path| Partition {
                database: database.to_owned(),
                measurement: measurement.to_owned(),
                path: path.clone(),
                time,
                files: Vec::new(),
            })
            .files
            .push(file.clone());
    }
    let mut partitions: Vec<Partition> = partitions.into_values().collect();
    for p in &mut partitions {
        p.files.sort_by(|a, b| a.key.cmp(&b.key));
    }
    partitions
}

/// Whether `relative` (a key after `{database}/{measurement}/`) lies in a
/// partition of either level: `YYYY/MM/DD/file` or deeper. A key no tier
/// could ever group (too shallow, or with date segments that do not parse)
/// is never compacted.
pub fn in_partition_layout(relative: &str) -> bool {
    parse_date_segments(relative, PartitionLevel::Day).is_some()
}

/// The start of the partition `relative` (a key after
/// `{database}/{measurement}/`) lies in: its hour, else its day, by the
/// rule that groups files into partitions; `None` outside the layout.
pub fn partition_start(relative: &str) -> Option<DateTime<Utc>> {
    parse_date_segments(relative, PartitionLevel::Hour).or_else(|| parse_date_segments(relative, PartitionLevel::Day)).map(|(_, time)| time)
}

/// Parses the date segments at the start of `relative` (the key after
/// `{database}/{measurement}/`), returning them joined by `/` and the
/// partition's start time.
fn parse_date_segments(relative: &str, level: PartitionLevel) -> Option<(&str, DateTime<Utc>)> {
    let depth = match level {
        PartitionLevel::Hour => 4,
        PartitionLevel::Day => 3,
    };
    // `depth` date segments, then at least one more (the file name).
    let mut boundaries = relative.match_indices('/').map(|(i, _)| i);
    let end = boundaries.nth(depth - 1)?;
    let date_path = &relative[..end];
    let parts: Vec<&str> = date_path.split('/').collect();
    let int = |s: &str| s.parse::<i64>().ok();
    let (year, month, day) = (int(parts[0])?, int(parts[1])?, int(parts[2])?);
    let time = match level {
        PartitionLevel::Hour => {
            let hour = int(parts[3])?;
            if !(0..=23).contains(&hour) || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
                return None;
            }
            normalised_date(year, month, day)? + Duration::hours(hour)
        }
        PartitionLevel::Day => normalised_date(year, month, day)?,
    };
    Some((date_path, time))
}

/// Midnight UTC of `year-month-day`, where out-of-range months and days
/// roll over like Go's `time.Date` (month 13 is January of the next year,
/// February 31 is March 3 or 2).
fn normalised_date(year: i64, month: i64, day: i64) -> Option<DateTime<Utc>> {
    let months = year.checked_mul(12)?.checked_add(month - 1)?;
    let (year, month0) = (months.div_euclid(12), months.rem_euclid(12));
    let first = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, u32::try_from(month0 + 1).ok()?, 1)?;
    let date = first.checked_add_signed(Duration::try_days(day - 1)?)?;
    Some(date.and_hms_opt(0, 0, 0)?.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(key: &str) -> FileMeta {
        FileMeta { key: key.into(), size: 1, last_modified: DateTime::UNIX_EPOCH }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn partition_paths_split_into_day_and_hour() {
        let split = |p: &'static str| (PartitionPath::parse(p).day(), PartitionPath::parse(p).hour());
        assert_eq!(split("db/cpu/2026/04/11/14"), ("db/cpu/2026/04/11", Some("14")));
        assert_eq!(split("spoke/db/cpu/2026/04/11/14/"), ("spoke/db/cpu/2026/04/11", Some("14")));
        assert_eq!(split("db/cpu/2026/04/11"), ("db/cpu/2026/04/11", None), "a day ends in two digits too");
        assert_eq!(split("db/12/2026/04/11"), ("db/12/2026/04/11", None), "a measurement named like an hour");
        assert_eq!(split("db/cpu/26/04/11/14"), ("db/cpu/26/04/11/14", None), "a layout Arc never writes is taken whole");
    }

    #[test]
    fn hour_partitions_group_by_four_levels() {
        let files = [
            file("db/cpu/2026/04/11/14/a.parquet"),
            file("db/cpu/2026/04/11/14/b.parquet"),
            file("db/cpu/2026/04/11/14/sub/c.parquet"),
            file("db/cpu/2026/04/11/15/d.parquet"),
            file("db/cpu/2026/04/11/e_daily.parquet"),
        ];
        let partitions = group_into_partitions("db", "cpu", &files, PartitionLevel::Hour);
        assert_eq!(partitions.len(), 2);
        assert_eq!(partitions[0].path, "db/cpu/2026/04/11/14");
        assert_eq!(partitions[0].files.len(), 3);
        assert_eq!(partitions[0].time, utc("2026-04-11T14:00:00Z"));
    }

    #[test]
    fn hour_level_refuses_out_of_range_segments() {
        for key in [
            "db/cpu/2026/04/11/24/a.parquet",
            "db/cpu/2026/13/11/10/a.parquet",
            "db/cpu/2026/04/00/10/a.parquet",
            "db/cpu/2026/04/xx/10/a.parquet",
            "db/cpu/2026/04/11/a.parquet",
        ] {
            assert!(group_into_partitions("db", "cpu", &[file(key)], PartitionLevel::Hour).is_empty(), "{key}");
        }
    }

    #[test]
    fn impossible_days_normalise_in_time_but_keep_their_path() {
        let p = group_into_partitions("db", "cpu", &[file("db/cpu/2026/02/31/10/a.parquet")], PartitionLevel::Hour);
        assert_eq!(p[0].path, "db/cpu/2026/02/31/10");
        assert_eq!(p[0].time, utc("2026-03-03T10:00:00Z"));
    }

    #[test]
    fn day_partitions_take_hour_and_day_level_files() {
        let files =
            [file("db/cpu/2026/04/11/14/a.parquet"), file("db/cpu/2026/04/11/cpu_x_daily.parquet"), file("db/cpu/2026/04/12/00/b.parquet")];
        let partitions = group_into_partitions("db", "cpu", &files, PartitionLevel::Day);
        assert_eq!(partitions.len(), 2);
        assert_eq!(partitions[0].path, "db/cpu/2026/04/11");
        assert_eq!(partitions[0].files.len(), 2);
        assert_eq!(partitions[0].time, utc("2026-04-11T00:00:00Z"));
        let rolled = group_into_partitions("db", "cpu", &[file("db/cpu/2026/13/40/a.parquet")], PartitionLevel::Day);
        assert_eq!(rolled[0].time, utc("2027-02-09T00:00:00Z"));
    }

    /// Adversarial run: keys no tier can group were left without a word.
    #[test]
    fn keys_outside_every_partition_layout_are_told_apart() {
        for inside in ["2026/04/11/14/a.parquet", "2026/04/11/a_daily.parquet", "2026/04/11/14/sub/a.parquet"] {
            assert!(in_partition_layout(inside), "{inside}");
        }
        for outside in ["a.parquet", "2026/a.parquet", "2026/04/a.parquet", "2026/xx/11/14/a.parquet", "cpu/2026/04/11/a.parquet"] {
            assert!(!in_partition_layout(outside), "{outside}");
        }
    }

    #[test]
    fn pseudo_databases_parse_relative_to_their_prefix() {
        let files = [file("rocket-01/factory/temps/2026/08/19/10/fa.parquet")];
        let p = group_into_partitions("rocket-01/factory", "temps", &files, PartitionLevel::Hour);
        assert_eq!(p[0].path, "rocket-01/factory/temps/2026/08/19/10");
        assert_eq!(p[0].time, utc("2026-08-19T10:00:00Z"));
    }

    #[test]
    fn a_key_starts_at_its_hour_or_else_its_day() {
        let at = |text: &str| DateTime::parse_from_rfc3339(text).unwrap().to_utc();
        assert_eq!(partition_start("2026/04/11/14/x.parquet"), Some(at("2026-04-11T14:00:00Z")));
        assert_eq!(partition_start("2026/04/11/x_daily.parquet"), Some(at("2026-04-11T00:00:00Z")));
        assert_eq!(partition_start("2026/04/11/ab/x.parquet"), Some(at("2026-04-11T00:00:00Z")));
        assert_eq!(partition_start("2026/04/x.parquet"), None);
    }
}
