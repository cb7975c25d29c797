//! What every output records about how it was written, so that a later
//! job can prove its inputs' order from their footers alone (the fast
//! paths, [`crate::fast_path`]): every path that writes an output (DuckDB's
//! `KV_METADATA`, the row-group copy, the streaming merge) writes these.

/// Key-value metadata naming the writer of an output: `compactor {version}`.
pub const WRITER_KEY: &str = "compactor:writer";
/// Key-value metadata recording the sort keys an output was written in
/// (a JSON array; `[]` for none). With Parquet's `sorting_columns`, the
/// proof of a file's order.
pub const SORT_KEYS_KEY: &str = "compactor:sort_keys";

/// This build's [`WRITER_KEY`] value.
pub fn writer_name() -> String {
    format!("compactor {}", env!("CARGO_PKG_VERSION"))
}
