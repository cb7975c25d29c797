//! Arc's merge SQL for DuckDB: the input list, the time normalisation, the
//! `ORDER BY` from the sort keys, and the tag-based dedup variant.

/// Arc's row-group size: rows per Parquet row group of an output.
pub const DEFAULT_ROW_GROUP_SIZE: u64 = 122_880;

/// Write options of every output: Arc's, with `row_group_size` rows per row
/// group (Arc's is [`DEFAULT_ROW_GROUP_SIZE`]), and key-value metadata that
/// names the writer and the sort keys the rows are in, so that a later job
/// can prove its inputs' order ([`crate::fast_path`]).
pub fn write_options(row_group_size: u64, sort_keys: &[String]) -> String {
    let literal = |text: &str| format!("'{}'", text.replace('\'', "''"));
    let keys = serde_json::to_string(sort_keys).unwrap_or_else(|_| "[]".to_owned());
    format!(
        "FORMAT PARQUET, COMPRESSION ZSTD, COMPRESSION_LEVEL 3, ROW_GROUP_SIZE {row_group_size}, KV_METADATA {{{}: {}, {}: {}}}",
        literal(crate::provenance::WRITER_KEY),
        literal(&crate::provenance::writer_name()),
        literal(crate::provenance::SORT_KEYS_KEY),
        literal(&keys)
    )
}

/// Normalises `time` to TIMESTAMPTZ: timestamps and ISO strings cast
/// directly, integer-like strings are epoch microseconds (UTC), anything else
/// NULL.
///
/// Arc writes the second branch as `make_timestamptz(…)`, which lives in
/// DuckDB's ICU extension; the bundled DuckDB has no ICU (and cannot download
/// it), so the same instant is built from core functions: `make_timestamp`
/// of the microseconds, cast to TIMESTAMPTZ. Without ICU the session time
/// zone is always UTC, so the instant is preserved exactly.
pub const TIME_NORMALISATION: &str =
    r#"COALESCE(TRY_CAST("time" AS TIMESTAMPTZ), TRY_CAST(make_timestamp(TRY_CAST("time" AS BIGINT)) AS TIMESTAMPTZ)) AS "time""#;

/// The staging table of the dedup variant.
pub const STAGING_TABLE: &str = "arc_compaction_staged";

/// Escapes a path for a single-quoted SQL literal: backslashes doubled, then
/// single quotes doubled.
pub(crate) fn escape_path(path: &str) -> String {
    path.replace('\\', "\\\\").replace('\'', "''")
}

/// Quotes an identifier, doubling embedded double quotes.
pub(crate) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One file: `'a'`; several: `['a', 'b']`.
pub fn file_list(paths: &[String]) -> String {
    match paths {
        [one] => format!("'{}'", escape_path(one)),
        many => format!("[{}]", many.iter().map(|p| format!("'{}'", escape_path(p))).collect::<Vec<_>>().join(", ")),
    }
}

/// `ORDER BY "k1", "k2"`, or nothing for no keys.
pub fn order_by(sort_keys: &[String]) -> String {
    if sort_keys.is_empty() {
        return String::new();
    }
    format!("ORDER BY {}", sort_keys.iter().map(|k| quote_identifier(k)).collect::<Vec<_>>().join(", "))
}

/// A tag column name from `arc:tags` metadata: non-empty, `[A-Za-z0-9_-]`.
pub(crate) fn is_valid_identifier(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The statements of one merge, in order, on one connection. Dedup runs when
/// `tags` is non-empty or `dedup_time` is set, keyed by the sorted tags then
/// `time`.
pub(crate) fn compaction_statements(
    files_sql: &str,
    sort_keys: &[String],
    output: &str,
    tags: &[String],
    dedup_time: bool,
    row_group_size: u64,
) -> Vec<String> {
    let output = escape_path(output);
    let write_options = write_options(row_group_size, sort_keys);
    let order_by = order_by(sort_keys);
    let order = if order_by.is_empty() { String::new() } else { format!(" {order_by}") };
    if tags.is_empty() && !dedup_time {
        return vec![format!(
            "COPY (SELECT * REPLACE ({TIME_NORMALISATION}) FROM read_parquet({files_sql}, union_by_name=true){order}) TO '{output}' ({write_options})"
        )];
    }
    let key: Vec<String> = tags.iter().map(|t| quote_identifier(t)).chain(std::iter::once("\"time\"".to_owned())).collect();
    vec![
        format!(
            "CREATE OR REPLACE TEMP TABLE {STAGING_TABLE} AS SELECT * REPLACE ({TIME_NORMALISATION}) FROM read_parquet({files_sql}, union_by_name=true)"
        ),
        format!(
            "COPY (SELECT * FROM {STAGING_TABLE} QUALIFY ROW_NUMBER() OVER (PARTITION BY {} ORDER BY \"time\" DESC) = 1{order}) TO '{output}' ({write_options})",
            key.join(", ")
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn order_by_quotes_each_key() {
        assert_eq!(order_by(&[]), "");
        assert_eq!(order_by(&keys(&["time"])), r#"ORDER BY "time""#);
        assert_eq!(order_by(&keys(&["tag_sensor_id", "time"])), r#"ORDER BY "tag_sensor_id", "time""#);
        assert_eq!(order_by(&keys(&["tag_region", "tag_host", "time"])), r#"ORDER BY "tag_region", "tag_host", "time""#);
        assert_eq!(order_by(&keys(&["my-column", "tag_host", "time"])), r#"ORDER BY "my-column", "tag_host", "time""#);
    }

    #[test]
    fn paths_escape_quotes() {
        assert_eq!(escape_path("/tmp/file.parquet"), "/tmp/file.parquet");
        assert_eq!(escape_path("/tmp/file's.parquet"), "/tmp/file''s.parquet");
        assert_eq!(escape_path("/tmp/'file'test'.parquet"), "/tmp/''file''test''.parquet");
        assert_eq!(escape_path("'''"), "''''''");
        assert_eq!(file_list(&keys(&["a.parquet"])), "'a.parquet'");
        assert_eq!(file_list(&keys(&["a.parquet", "b.parquet"])), "['a.parquet', 'b.parquet']");
    }

    #[test]
    fn standard_variant_has_no_dedup() {
        let sql =
            compaction_statements("['a.parquet', 'b.parquet']", &keys(&["time"]), "/tmp/out.parquet", &[], false, DEFAULT_ROW_GROUP_SIZE)
                .join(";");
        assert!(sql.contains("read_parquet") && sql.contains(r#"ORDER BY "time""#));
        assert!(!sql.contains("ROW_NUMBER"));
        assert!(sql.contains("make_timestamp(") && sql.contains("TIMESTAMPTZ"));
        assert!(sql.contains("ROW_GROUP_SIZE 122880"), "Arc's write options: {sql}");
        assert!(sql.contains(r#"'compactor:sort_keys': '["time"]'"#), "the order is recorded: {sql}");
    }

    #[test]
    fn dedup_variant_partitions_by_tags_then_time() {
        let sql = compaction_statements(
            "['a.parquet', 'b.parquet']",
            &keys(&["time"]),
            "/tmp/out.parquet",
            &keys(&["host", "region"]),
            false,
            1_000_000,
        )
        .join(";");
        assert!(sql.contains("ROW_GROUP_SIZE 1000000"), "{sql}");
        assert!(sql.contains(r#"PARTITION BY "host", "region", "time""#));
        assert!(sql.contains("QUALIFY ROW_NUMBER") && sql.contains("make_timestamp(") && sql.contains(r#"ORDER BY "time""#));
        assert!(!sql.contains("__dedup_rn"));
        let time_only = compaction_statements("['a.parquet']", &keys(&["time"]), "/o", &[], true, DEFAULT_ROW_GROUP_SIZE).join(";");
        assert!(time_only.contains(r#"PARTITION BY "time""#) && !time_only.contains("PARTITION BY ,"));
        let both = compaction_statements("['a.parquet']", &[], "/o", &keys(&["host"]), true, DEFAULT_ROW_GROUP_SIZE).join(";");
        assert!(both.contains(r#"PARTITION BY "host", "time""#));
        let empty = compaction_statements("['a.parquet']", &[], "/o", &[], false, DEFAULT_ROW_GROUP_SIZE).join(";");
        assert!(!empty.contains("ROW_NUMBER"));
    }

    #[test]
    fn output_paths_and_identifiers_are_escaped() {
        let sql = compaction_statements("'a'", &[], "/tmp/it's out.parquet", &keys(&["host"]), false, DEFAULT_ROW_GROUP_SIZE).join(";");
        assert!(sql.contains("it''s"));
        let sql = compaction_statements("'a'", &[], "/o", &keys(&["host\"injection"]), false, DEFAULT_ROW_GROUP_SIZE).join(";");
        assert!(sql.contains(r#""host""injection""#));
    }

    #[test]
    fn tag_identifiers_are_validated() {
        for ok in ["host", "host_name", "host-name", "sensor123", "HostName", "region", "sensor_id"] {
            assert!(is_valid_identifier(ok), "{ok}");
        }
        for bad in ["", "host\"", "host name", "host;DROP", "host()", "a,b", "host\" OR 1=1--", "\"; DROP TABLE"] {
            assert!(!is_valid_identifier(bad), "{bad}");
        }
    }
}
