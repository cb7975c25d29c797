//! Candidates and Arc's batch splitting: a partition's candidate is cut into
//! batches of at most `max_files_per_batch` files, each compacted by one job.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};

/// Arc's default batch size.
pub const DEFAULT_MAX_FILES_PER_BATCH: usize = 30;
/// The smallest batch a job accepts.
pub const MIN_FILES_PER_BATCH: usize = compactor_model::MIN_BATCH_FILES;
/// The largest batch size honoured.
pub const MAX_FILES_PER_BATCH: usize = 500;

/// Arc's clamp: below 2 (0, 1, negatives) → 30, above 500 → 500. Returns the
/// effective size and whether it differs from the configured one.
pub fn clamp_max_files_per_batch(configured: i64) -> (usize, bool) {
    if configured < MIN_FILES_PER_BATCH as i64 {
        (DEFAULT_MAX_FILES_PER_BATCH, true)
    } else if configured > MAX_FILES_PER_BATCH as i64 {
        (MAX_FILES_PER_BATCH, true)
    } else {
        (configured as usize, false)
    }
}

/// One unit of compaction work, with exactly Arc's candidate fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    /// Database name (`spoke/db` for a pseudo-database).
    pub database: String,
    /// Measurement name.
    pub measurement: String,
    /// Partition key prefix including the database.
    pub partition_path: String,
    /// Storage keys of the files to merge, sorted.
    pub files: Vec<String>,
    /// Number of files.
    pub file_count: usize,
    /// Tier name.
    pub tier: String,
    /// UTC start of the partition's hour or day.
    #[serde(serialize_with = "rfc3339")]
    pub partition_time: DateTime<Utc>,
    /// 1-based index of this batch in its partition (0 only if never split).
    pub batch_number: usize,
    /// Number of batches of the partition (0 only if never split).
    pub total_batches: usize,
}

fn rfc3339<S: Serializer>(time: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&time.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// Splits `candidate` into batches of at most `max_files_per_batch` files
/// (clamped as Arc does), keeping file order. A lone leftover file is folded
/// into the last batch, because a 1-file batch can never compact. Batches are
/// numbered from 1.
pub fn split_into_batches(candidate: &Candidate, max_files_per_batch: i64) -> Vec<Candidate> {
    let (size, _) = clamp_max_files_per_batch(max_files_per_batch);
    let n = candidate.files.len();
    if n <= size {
        return vec![Candidate { batch_number: 1, total_batches: 1, ..candidate.clone() }];
    }
    let mut total = n.div_ceil(size);
    if n % size == 1 {
        total -= 1;
    }
    (0..total)
        .map(|i| {
            let end = if i + 1 == total { n } else { (i + 1) * size };
            let files = candidate.files[i * size..end].to_vec();
            Candidate { file_count: files.len(), files, batch_number: i + 1, total_batches: total, ..candidate.clone() }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(n: usize) -> Candidate {
        let files: Vec<String> = (0..n).map(|i| format!("file_{i}.parquet")).collect();
        Candidate {
            database: "db".into(),
            measurement: "cpu".into(),
            partition_path: "db/cpu/2026/07/28".into(),
            file_count: files.len(),
            files,
            tier: "hourly".into(),
            partition_time: DateTime::from_timestamp(1_785_196_800, 0).unwrap(),
            batch_number: 0,
            total_batches: 0,
        }
    }

    fn sizes(n: usize, size: i64) -> Vec<usize> {
        split_into_batches(&candidate(n), size).iter().map(|b| b.files.len()).collect()
    }

    #[test]
    fn worked_values_from_the_spec() {
        assert_eq!(sizes(31, 30), [31]);
        assert_eq!(sizes(32, 30), [30, 2]);
        assert_eq!(sizes(63, 30), [30, 30, 3]);
        assert_eq!(sizes(95, 30), [30, 30, 30, 5]);
        assert_eq!(sizes(12, 5), [5, 5, 2]);
        assert_eq!(sizes(12, 30), [12]);
        assert_eq!(sizes(30, 30), [30]);
        assert_eq!(sizes(2, 30), [2]);
        assert_eq!(sizes(3, 2), [3]);
        assert_eq!(sizes(4, 2), [2, 2]);
        assert_eq!(sizes(5, 2), [2, 3]);
        assert_eq!(sizes(6, 2), [2, 2, 2]);
        assert_eq!(sizes(7, 2), [2, 2, 3]);
        assert_eq!(sizes(31, 1), [31]);
        assert_eq!(sizes(0, 30), [0]);
    }

    #[test]
    fn clamp_reports_adjustment() {
        for (input, effective, adjusted) in
            [(-1, 30, true), (0, 30, true), (1, 30, true), (10_000, 500, true), (2, 2, false), (30, 30, false), (500, 500, false)]
        {
            assert_eq!(clamp_max_files_per_batch(input), (effective, adjusted), "{input}");
        }
        assert_eq!(sizes(31, 2).len(), 15);
        assert_eq!(*sizes(31, 2).last().unwrap(), 3);
    }

    #[test]
    fn batches_are_numbered_from_one_and_keep_order() {
        let batches = split_into_batches(&candidate(63), 30);
        assert_eq!(batches.iter().map(|b| b.batch_number).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(batches.iter().all(|b| b.total_batches == 3 && b.file_count == b.files.len()));
        let joined: Vec<String> = batches.iter().flat_map(|b| b.files.clone()).collect();
        assert_eq!(joined, candidate(63).files);
        let single = split_into_batches(&candidate(3), 5);
        assert_eq!((single[0].batch_number, single[0].total_batches), (1, 1));
    }

    #[test]
    fn single_batch_copies_file_count_verbatim() {
        let mut c = candidate(3);
        c.file_count = 7;
        assert_eq!(split_into_batches(&c, 30)[0].file_count, 7);
    }

    #[test]
    fn every_batch_is_compactable() {
        for size in [2usize, 3, 5, 7, 30] {
            for n in 1..=3 * size + 1 {
                let batches = split_into_batches(&candidate(n), size as i64);
                assert_eq!(batches.iter().map(|b| b.files.len()).sum::<usize>(), n);
                if batches.len() > 1 {
                    assert!(batches.iter().all(|b| b.files.len() >= 2 && b.files.len() <= size + 1), "{size} {n}");
                }
            }
        }
    }

    #[test]
    fn serialises_with_arc_field_names() {
        let json = serde_json::to_value(split_into_batches(&candidate(2), 30)).unwrap();
        let item = &json[0];
        let mut keys: Vec<&str> = item.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["batch_number", "database", "file_count", "files", "measurement", "partition_path", "partition_time", "tier", "total_batches"]
        );
        assert_eq!(item["partition_time"], "2026-07-28T00:00:00Z");
    }
}
