//! Checking a policy's answer before anything acts on it.

use std::collections::HashSet;

use compactor_model::Partition;
use compactor_runtime::sanitize;

/// Longest key a policy may name: S3's limit on object names.
const MAX_KEY_BYTES: usize = 1024;

/// Checks a policy's answer: every key could be an object name, comes from
/// the partition's listing, and appears once. The messages quote keys
/// sanitised and cut, whatever the policy sent.
pub fn validate_answer(partition: &Partition, answer: &[Vec<String>]) -> Result<(), String> {
    let listed: HashSet<&str> = partition.files.iter().map(|f| f.key.as_str()).collect();
    let mut seen = HashSet::new();
    for key in answer.iter().flatten() {
        let quoted = || format!("\"{}\"", sanitize(key, 200));
        // The listing sets such keys aside: a policy can only make them up.
        if key.len() > MAX_KEY_BYTES || compactor_model::key_problem(key).is_some() {
            return Err(format!(
                "it named {}, which cannot be an object name (control characters or over {MAX_KEY_BYTES} bytes)",
                quoted()
            ));
        }
        if key.starts_with('/') || key.split('/').any(|segment| segment == ".." || segment == ".") {
            return Err(format!("it named the path-traversal key {}", quoted()));
        }
        if !listed.contains(key.as_str()) {
            return Err(format!("it named {}, which is not in the partition's listing", quoted()));
        }
        if !seen.insert(key.as_str()) {
            return Err(format!("it named {} more than once", quoted()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;
    use compactor_model::FileMeta;

    fn partition(keys: &[&str]) -> Partition {
        Partition {
            database: "db".into(),
            measurement: "cpu".into(),
            path: "db/cpu/2026/01/01/00".into(),
            time: DateTime::UNIX_EPOCH,
            files: keys.iter().map(|k| FileMeta { key: (*k).into(), size: 10, last_modified: DateTime::UNIX_EPOCH }).collect(),
        }
    }

    #[test]
    fn answers_naming_only_listed_files_once_are_valid() {
        let p = partition(&["db/cpu/2026/01/01/00/a.parquet", "db/cpu/2026/01/01/00/b.parquet"]);
        let answer = vec![vec!["db/cpu/2026/01/01/00/a.parquet".to_owned()], vec!["db/cpu/2026/01/01/00/b.parquet".to_owned()]];
        assert_eq!(validate_answer(&p, &answer), Ok(()));
    }

    #[test]
    fn foreign_duplicate_and_traversal_keys_are_rejected() {
        let p = partition(&["db/cpu/2026/01/01/00/a.parquet"]);
        let a = "db/cpu/2026/01/01/00/a.parquet".to_owned();
        assert!(validate_answer(&p, &[vec![a.clone()], vec![a.clone()]]).unwrap_err().contains("more than once"));
        assert!(validate_answer(&p, &[vec!["db/cpu/x.parquet".into()]]).unwrap_err().contains("not in the partition's listing"));
        assert!(
            validate_answer(&p, &[vec!["db/cpu/2026/01/01/00/../../../../../etc/passwd".into()]]).unwrap_err().contains("path-traversal")
        );
        let huge = "db/cpu/2026/01/01/00/".to_owned() + &"k".repeat(50 << 20);
        let message = validate_answer(&p, &[vec![huge]]).unwrap_err();
        assert!(message.len() < 400 && message.contains("cannot be an object name"), "{}", &message[..400.min(message.len())]);
        let forged = validate_answer(&p, &[vec!["db/cpu/x\nERROR forged line".into()]]).unwrap_err();
        assert!(forged.contains("x\\nERROR") && !forged.contains('\n'), "{forged}");
    }
}
