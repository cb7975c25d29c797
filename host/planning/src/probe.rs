//! Asking a policy about later times: the earliest time it selects a
//! partition (coarse steps up to a week, then halving to the minute), and
//! why it does not select one now, as far as the host can tell. That works
//! for any component, built-in or not, and assumes a policy that selects a
//! partition at `t` still selects it later (true of age rules).

use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};

use crate::PartitionPolicy;
use compactor_model::Partition;
use compactor_runtime::sanitize;

/// The probes of the coarse search, in minutes after now: up to a week.
const PROBE_MINUTES: [i64; 15] = [0, 1, 5, 15, 30, 60, 120, 240, 480, 720, 1440, 2160, 2880, 4320, 10080];

/// What the policy of one tier said about one of its partitions.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// The earliest probe time at which it selects some files.
    pub eligible_at: Option<DateTime<Utc>>,
    /// The files it selects then.
    pub selected: HashSet<String>,
    /// The policy's failure, if it failed.
    pub error: Option<String>,
}

/// Why no tier's policy selects these files, as far as the host can tell.
pub fn not_selected_reason(keys: &[String], suffix: &str) -> String {
    if all_outputs(keys, suffix) {
        return format!("already compacted (its files are {suffix} outputs)");
    }
    if keys.len() < 2 {
        return format!("{} file; a merge needs at least 2", keys.len());
    }
    "its policy does not select it within 7 days (too few files, or files it leaves alone)".to_owned()
}

/// Why a policy does not select `partition` at `now`, as far as the host
/// can tell: the earliest later time it does (an age rule), or what keeps
/// it from ever doing so with these files.
pub fn explain_waiting(policy: &mut dyn PartitionPolicy, partition: &Partition, now: DateTime<Utc>) -> String {
    let verdict = earliest(policy, partition, now);
    if let Some(error) = verdict.error {
        return format!("its policy failed when asked about later times: {error}");
    }
    match verdict.eligible_at {
        Some(at) => format!(
            "not yet: its policy selects it from {} (e.g. younger than its minimum age, or the newest file is still being written)",
            at.to_rfc3339()
        ),
        None => {
            let keys: Vec<String> = partition.files.iter().map(|f| f.key.clone()).collect();
            let min_files = policy.min_files() as usize;
            if min_files >= 2 && keys.len() < min_files && !keys.is_empty() && !all_outputs(&keys, &policy.output_suffix()) {
                format!("{} of its min_files {min_files} files", keys.len())
            } else {
                not_selected_reason(&keys, &policy.output_suffix())
            }
        }
    }
}

fn all_outputs(keys: &[String], suffix: &str) -> bool {
    let output = format!("_{suffix}.parquet");
    !suffix.is_empty() && keys.iter().all(|k| k.ends_with(&output))
}

/// The earliest probe time at which the policy selects some of the
/// partition's files, to the minute.
pub fn earliest(policy: &mut dyn PartitionPolicy, partition: &Partition, now: DateTime<Utc>) -> Verdict {
    let mut ask = |minutes: i64| -> Result<HashSet<String>, String> {
        policy
            .select_candidates(partition, now + Duration::minutes(minutes))
            .map(|groups| groups.into_iter().filter(|g| g.len() >= 2).flatten().collect())
            .map_err(|e| sanitize(&e.to_string(), 512))
    };
    let mut previous = None;
    for minutes in PROBE_MINUTES {
        let selected = match ask(minutes) {
            Ok(selected) => selected,
            Err(error) => return Verdict { error: Some(error), ..Default::default() },
        };
        if selected.is_empty() {
            previous = Some(minutes);
            continue;
        }
        // Halve the gap between the last "no" and this "yes".
        let (mut low, mut high, mut found) = (previous.unwrap_or(minutes), minutes, selected);
        while previous.is_some() && high - low > 1 {
            let middle = low + (high - low) / 2;
            match ask(middle) {
                Ok(selected) if !selected.is_empty() => (high, found) = (middle, selected),
                Ok(_) => low = middle,
                Err(error) => return Verdict { error: Some(error), ..Default::default() },
            }
        }
        return Verdict { eligible_at: Some(now + Duration::minutes(high)), selected: found, error: None };
    }
    Verdict::default()
}
