//! Which job failures are worth retrying (Arc's rules, exact order; the first
//! match wins): crash evidence first, then SQL errors (permanent), then memory
//! errors (retry), then permanent errors reported on stderr, else retry.

/// The verdict on one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Classification {
    /// Whether splitting the batch and retrying may help.
    pub recoverable: bool,
    /// `segfault`, `killed`, `oom_killed`, `sql_error`, `memory_error`,
    /// `permanent_error`, `unknown`, or empty for no error.
    pub reason: &'static str,
}

const fn verdict(recoverable: bool, reason: &'static str) -> Classification {
    Classification { recoverable, reason }
}

impl crate::FailureKind {
    /// Arc's verdict on a failure of this kind. Arc reads the kind from the
    /// error text; here it was decided where the failure was seen.
    pub(crate) fn classification(self) -> Classification {
        use crate::FailureKind::*;
        match self {
            Killed | Timeout => verdict(true, "killed"),
            Segfault => verdict(true, "segfault"),
            OomKilled => verdict(true, "oom_killed"),
            Sql => verdict(false, "sql_error"),
            OutOfMemory => verdict(true, "memory_error"),
            Denied => verdict(false, "permanent_error"),
            // Retrying would race the store or another engine: recovery
            // resolves these once the lease is gone.
            UnknownOutcome => verdict(false, "unknown_outcome"),
            LeaseLost => verdict(false, "lease_lost"),
            Signal | Storage | LocalIo | Verification | NoValidInput | Protocol | Unknown => verdict(true, "unknown"),
        }
    }
}

/// Classifies a failure from its error text, the child's stderr, and the
/// child's real exit code when it exited (not a code merely quoted in text).
pub(crate) fn classify(error: Option<&str>, stderr: &str, exit_code: Option<i32>) -> Classification {
    let Some(error) = error else { return verdict(false, "") };
    if error.contains("signal:") {
        if error.contains("segmentation fault") {
            return verdict(true, "segfault");
        }
        if error.contains("killed") {
            return verdict(true, "killed");
        }
    }
    match exit_code {
        Some(137) => return verdict(true, "oom_killed"),
        Some(139) => return verdict(true, "segfault"),
        _ => {}
    }
    let error_lower = error.to_lowercase();
    let stderr_lower = stderr.to_lowercase();
    let either = |markers: &[&str]| markers.iter().any(|m| error_lower.contains(m) || stderr_lower.contains(m));
    if either(&["binder error", "catalog error", "parser error"]) {
        return verdict(false, "sql_error");
    }
    if either(&["out of memory", "cannot allocate", "memory allocation failed"]) {
        return verdict(true, "memory_error");
    }
    if ["permission denied", "no such file", "access denied", "not found"].iter().any(|m| stderr_lower.contains(m)) {
        return verdict(false, "permanent_error");
    }
    verdict(true, "unknown")
}

/// The stderr quoted in an error text after `(stderr:`, trimmed, with one
/// trailing `)` removed.
pub(crate) fn quoted_stderr(error: &str) -> Option<String> {
    let (_, rest) = error.split_once("(stderr:")?;
    let rest = rest.trim();
    Some(rest.strip_suffix(')').unwrap_or(rest).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arc_cases() {
        let cases: &[(Option<&str>, &str, bool, &str)] = &[
            (None, "", false, ""),
            (Some("subprocess failed: signal: segmentation fault"), "", true, "segfault"),
            (Some("subprocess failed: signal: killed"), "", true, "killed"),
            (Some("subprocess failed"), "Error: Out of memory while processing", true, "memory_error"),
            (Some("subprocess failed"), "cannot allocate memory for buffer", true, "memory_error"),
            (Some("subprocess failed"), "Memory allocation failed in DuckDB", true, "memory_error"),
            (Some("subprocess failed"), "Error: Permission denied: /data/file.parquet", false, "permanent_error"),
            (Some("subprocess failed"), "Error: No such file or directory", false, "permanent_error"),
            (Some("subprocess failed"), "Error: Access denied to bucket", false, "permanent_error"),
            (Some("subprocess failed"), "file not found: data.parquet", false, "permanent_error"),
            (Some("some unknown error occurred"), "some log output", true, "unknown"),
            (
                Some(
                    "failed to compact files: failed to execute compaction query: Binder Error: Column \"time\" in REPLACE list not found in FROM clause",
                ),
                "",
                false,
                "sql_error",
            ),
            (Some("failed to execute compaction query: Catalog Error: Table with name x does not exist"), "", false, "sql_error"),
            (Some("failed to execute compaction query: Parser Error: syntax error at or near \"FROM\""), "", false, "sql_error"),
            (
                Some("subprocess failed: exit status 1"),
                "{\"level\":\"error\",\"error\":\"Binder Error: Column \\\"time\\\" in REPLACE list not found in FROM clause\"}",
                false,
                "sql_error",
            ),
            (Some("failed to execute compaction query: Out of Memory Error: could not allocate block"), "", true, "memory_error"),
            (
                Some(
                    "subprocess failed: signal: killed (stderr: {\"level\":\"warn\",\"message\":\"probe failed: Binder Error: something\"})",
                ),
                "{\"level\":\"warn\",\"message\":\"probe failed: Binder Error: something\"}",
                true,
                "killed",
            ),
            (Some("failed"), "PERMISSION DENIED", false, "permanent_error"),
            (Some("exit status 139"), "", true, "unknown"),
            (Some("job failed: object not found"), "", true, "unknown"),
        ];
        for (error, stderr, recoverable, reason) in cases {
            assert_eq!(classify(*error, stderr, None), verdict(*recoverable, reason), "{error:?} | {stderr:?}");
        }
    }

    #[test]
    fn real_exit_codes_count() {
        assert_eq!(classify(Some("subprocess failed: exit status 137"), "", Some(137)), verdict(true, "oom_killed"));
        assert_eq!(classify(Some("subprocess failed: exit status 139"), "", Some(139)), verdict(true, "segfault"));
    }

    #[test]
    fn stderr_is_taken_from_the_error_text() {
        assert_eq!(quoted_stderr("subprocess failed: signal: killed (stderr: boom)").as_deref(), Some("boom"));
        assert_eq!(quoted_stderr("plain"), None);
    }
}
