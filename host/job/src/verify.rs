//! Row-level checks of a lake with DuckDB, for `compactor demo` and the
//! crash tests: a multiset fingerprint, and an exact comparison of two sets of
//! files row by row.

use anyhow::Context;

use crate::sql::{escape_path, quote_identifier};

/// The rows of some files as a multiset: count and sum of row hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// Number of rows.
    pub rows: u64,
    /// Sum of the rows' hashes (order-independent, duplicate-sensitive).
    pub checksum: String,
}

/// A DuckDB connection that never tries to download extensions.
pub fn connection() -> anyhow::Result<duckdb::Connection> {
    let connection = duckdb::Connection::open_in_memory()?;
    connection.execute_batch("SET autoinstall_known_extensions = false; SET autoload_known_extensions = false")?;
    Ok(connection)
}

fn scan(glob: &str) -> String {
    format!("read_parquet('{}', union_by_name=true)", escape_path(glob))
}

/// Column names of the files matching `glob`, sorted.
fn columns(connection: &duckdb::Connection, glob: &str) -> anyhow::Result<Vec<String>> {
    let mut statement = connection.prepare(&format!("SELECT column_name FROM (DESCRIBE SELECT * FROM {})", scan(glob)))?;
    let mut names: Vec<String> = statement.query_map([], |row| row.get(0))?.collect::<Result<_, _>>()?;
    names.sort();
    Ok(names)
}

/// The multiset fingerprint of every row in the files matching `glob`.
pub fn fingerprint(connection: &duckdb::Connection, glob: &str) -> anyhow::Result<Fingerprint> {
    let columns: Vec<String> = columns(connection, glob)?.iter().map(|c| quote_identifier(c)).collect();
    let sql = format!("SELECT count(*)::BIGINT, COALESCE(sum(hash({})::HUGEINT), 0)::VARCHAR FROM {}", columns.join(", "), scan(glob));
    let (rows, checksum): (i64, String) =
        connection.query_row(&sql, [], |row| Ok((row.get(0)?, row.get(1)?))).with_context(|| format!("cannot fingerprint {glob}"))?;
    Ok(Fingerprint { rows: rows as u64, checksum })
}

/// Rows in `before` missing from `after`, and rows in `after` not in
/// `before`, compared as multisets (`EXCEPT ALL`) over the sorted union of
/// column names.
pub fn row_differences(connection: &duckdb::Connection, before: &str, after: &str) -> anyhow::Result<(u64, u64)> {
    let columns: Vec<String> = columns(connection, before)?.iter().map(|c| quote_identifier(c)).collect();
    let list = columns.join(", ");
    let count = |a: &str, b: &str| -> anyhow::Result<u64> {
        let sql = format!("SELECT count(*)::BIGINT FROM (SELECT {list} FROM {} EXCEPT ALL SELECT {list} FROM {})", scan(a), scan(b));
        let n: i64 = connection.query_row(&sql, [], |row| row.get(0))?;
        Ok(n as u64)
    };
    Ok((count(before, after)?, count(after, before)?))
}
