//! Arc's building blocks for tier policies: file-name timestamps, suffix
//! tests, hour-level path detection and the shared should-compact rule.
//!
//! Each function reproduces a rule of Arc's `internal/compaction` package
//! exactly, quirks included, so that policies built from them pick the same
//! files Arc would.

use crate::Timestamp;

/// Suffix of hourly-compacted outputs.
pub const HOURLY_SUFFIX: &str = "_compacted.parquet";
/// Suffix of daily-compacted outputs.
pub const DAILY_SUFFIX: &str = "_daily.parquet";

/// The last `/`-separated segment of a storage key.
pub fn file_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// Parses Arc's `YYYYMMDD` and `HHMMSS` name parts as a UTC instant.
pub fn parse_name_datetime(date: &str, time: &str) -> Option<Timestamp> {
    fn digits(s: &str) -> Option<u32> {
        if s.bytes().all(|b| b.is_ascii_digit()) { s.parse().ok() } else { None }
    }
    if date.len() != 8 || time.len() != 6 {
        return None;
    }
    let year = digits(&date[0..4])?;
    let month = digits(&date[4..6])?;
    let day = digits(&date[6..8])?;
    let hour = digits(&time[0..2])?;
    let minute = digits(&time[2..4])?;
    let second = digits(&time[4..6])?;
    Timestamp::from_civil(i64::from(year), month, day, hour, minute, second)
}

/// The timestamp embedded in one file name, if any (Arc's rules):
///
/// - raw files `{m}_{YYYYMMDD}_{HHMMSS}_{nanos}.parquet` yield their
///   third- and second-from-last `_` parts;
/// - legacy outputs `{m}_{YYYYMMDD}_{HHMMSS}[_{nanos}]_{compacted|daily}.parquet`
///   yield their timestamp;
/// - current outputs `…_{unixnanos}_b{N}_compacted.parquet` yield **none**
///   (an Arc quirk kept on purpose: the recency guard ignores outputs).
pub fn name_timestamp(key: &str) -> Option<Timestamp> {
    let name = file_name(key);
    let stem = name.strip_suffix(".parquet").unwrap_or(name);
    let compacted_stem = stem.strip_suffix("_daily").or_else(|| stem.strip_suffix("_compacted"));
    let parts: Vec<&str> = compacted_stem.unwrap_or(stem).split('_').collect();
    let n = parts.len();
    if n < 3 {
        return None;
    }
    if compacted_stem.is_some() {
        parse_name_datetime(parts[n - 2], parts[n - 1])
            .or_else(|| if n >= 4 { parse_name_datetime(parts[n - 3], parts[n - 2]) } else { None })
    } else {
        parse_name_datetime(parts[n - 3], parts[n - 2])
    }
}

/// The newest timestamp found in the names of `keys`, or `None` when no name
/// carries one.
pub fn newest_file_time<'a>(keys: impl IntoIterator<Item = &'a str>) -> Option<Timestamp> {
    keys.into_iter().filter_map(name_timestamp).max()
}

/// True when `key` sits in an hour directory: counting from the end, segment
/// −2 is an hour 0–23, −3 a day 1–31, −4 a month 1–12 and −5 a year ≥ 1970.
/// The file name itself is not inspected.
pub fn is_hour_level(key: &str) -> bool {
    let segments: Vec<&str> = key.split('/').collect();
    let n = segments.len();
    if n < 5 {
        return false;
    }
    let int = |s: &str| s.parse::<i64>().ok();
    matches!(int(segments[n - 2]), Some(0..=23))
        && matches!(int(segments[n - 3]), Some(1..=31))
        && matches!(int(segments[n - 4]), Some(1..=12))
        && int(segments[n - 5]).is_some_and(|y| y >= 1970)
}

/// Arc's shared should-compact rule: true iff the partition has at least
/// `min_files` files and at least `min_files` of them are uncompacted inputs
/// (not ending in `compacted_suffix` and accepted by `is_uncompacted`).
/// Files that are neither still travel with the candidate.
pub fn should_compact_by_count(files: &[&str], min_files: i64, compacted_suffix: &str, is_uncompacted: impl Fn(&str) -> bool) -> bool {
    if (files.len() as i64) < min_files {
        return false;
    }
    count_uncompacted(files, compacted_suffix, is_uncompacted) as i64 >= min_files
}

/// The files [`should_compact_by_count`] counts as uncompacted inputs.
pub fn count_uncompacted(files: &[&str], compacted_suffix: &str, is_uncompacted: impl Fn(&str) -> bool) -> usize {
    files.iter().filter(|f| !f.ends_with(compacted_suffix) && is_uncompacted(f)).count()
}

/// Why Arc's count rule holds or not, for `explain`: "12 of 10 needed
/// uncompacted files (14 files)".
pub fn count_reason(files: &[&str], min_files: i64, compacted_suffix: &str, is_uncompacted: impl Fn(&str) -> bool) -> String {
    let uncompacted = count_uncompacted(files, compacted_suffix, is_uncompacted);
    if uncompacted == 0 && !files.is_empty() {
        return format!("already compacted ({} files, none uncompacted)", files.len());
    }
    format!("{uncompacted} of {min_files} needed uncompacted files ({} files)", files.len())
}
