//! The fast paths: when a job's inputs are the engine's own outputs, each
//! sorted by the measurement's sort keys, they need no full sort.
//!
//! - The row-group copy: when the keys begin with `time` and the inputs'
//!   time ranges do not overlap, the inputs in time order *are* the merged
//!   output. Their column chunks are copied byte for byte
//!   (`SerializedRowGroupWriter::append_column`, no decoding) and only the
//!   footer is new.
//! - The streaming merge ([`crate::streaming_merge`]): otherwise, a k-way
//!   merge of the sorted inputs in bounded memory.
//!
//! Anything else is merged by DuckDB, and the job says why ([`Declined`]).
//! The conditions are checked in the order the issue states them, from the
//! footers alone: every input is one of ours (its name and its key-value
//! metadata), the schemas are identical, no tag-based dedup applies, the
//! inputs were written sorted by the sort keys; then, for the copy, the
//! keys begin with `time` and the time ranges (row-group statistics) do
//! not overlap.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use parquet::basic::{Compression, LogicalType, Type as PhysicalType};
use parquet::column::writer::ColumnCloseResult;
use parquet::file::metadata::{KeyValue, ParquetMetaData};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::statistics::Statistics;
use parquet::file::writer::SerializedFileWriter;
use parquet::format::{SortingColumn, TimeUnit};
use serde::{Deserialize, Serialize};

pub use crate::provenance::{SORT_KEYS_KEY, WRITER_KEY, writer_name};
use crate::streaming_merge::StreamingMerge;

/// How a job produced its output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergePath {
    /// DuckDB read, sorted and wrote every row.
    #[default]
    Duckdb,
    /// The inputs' row groups were copied without decoding.
    RowGroupCopy,
    /// The sorted inputs were merged as streams, without a full sort.
    StreamingMerge,
}

impl MergePath {
    /// Its name, as the job record, history, the `once` summary and the
    /// `path` label of `/metrics` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Duckdb => "duckdb",
            Self::RowGroupCopy => "row_group_copy",
            Self::StreamingMerge => "streaming_merge",
        }
    }
}

/// Why a job took neither fast path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declined(pub String);

impl std::fmt::Display for Declined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn declined(why: impl Into<String>) -> Declined {
    Declined(why.into())
}

/// A row-group copy that every condition allows: the inputs in time order.
pub struct RowGroupCopy {
    inputs: Vec<Input>,
    time_column: usize,
    sort_keys: Vec<String>,
}

/// The fast path a job may take.
pub enum FastPath {
    /// The inputs' row groups, copied in time order.
    RowGroupCopy(RowGroupCopy),
    /// A k-way merge of the sorted inputs ([`StreamingMerge`]).
    StreamingMerge(StreamingMerge),
}

/// Checks the conditions over `inputs` (storage key, local file), in order:
/// the fast path to take, or why neither applies.
pub fn plan(inputs: &[(String, &Path)], sort_keys: &[String], row_group_size: u64) -> Result<FastPath, Declined> {
    let mut footers = Vec::with_capacity(inputs.len());
    for (key, local) in inputs {
        let name = key.rsplit('/').next().unwrap_or(key);
        if !is_output_name(name) {
            return Err(declined(format!("{name} is not named as our outputs are")));
        }
        let file = File::open(local).map_err(|e| declined(format!("cannot open {name}: {e}")))?;
        let reader = SerializedFileReader::new(file.try_clone().map_err(|e| declined(format!("cannot open {name}: {e}")))?)
            .map_err(|e| declined(format!("cannot read the footer of {name}: {e}")))?;
        let metadata = Arc::new(reader.metadata().clone());
        let kv = |wanted: &str| -> Option<String> {
            metadata.file_metadata().key_value_metadata()?.iter().find(|kv| kv.key == wanted).and_then(|kv| kv.value.clone())
        };
        if !kv(WRITER_KEY).is_some_and(|w| w.starts_with("compactor ")) {
            return Err(declined(format!("{name} was not written by compactor (no {WRITER_KEY} metadata)")));
        }
        let (written, tags, dedup_time) = (kv(SORT_KEYS_KEY), kv("arc:tags"), kv("arc:dedup_time"));
        footers.push(Input { key: key.clone(), file, metadata, written, tags, dedup_time });
    }
    let Some(first) = footers.first() else { return Err(declined("no inputs")) };
    let schema = first.metadata.file_metadata().schema_descr_ptr();
    for input in &footers[1..] {
        if input.metadata.file_metadata().schema_descr().root_schema() != schema.root_schema() {
            return Err(declined(format!("the schema of {} differs from the first input's", input.key)));
        }
    }
    for input in &footers {
        if input.tags.as_deref().is_some_and(|t| !t.is_empty()) || input.dedup_time.as_deref() == Some("true") {
            return Err(declined(format!("{} asks for tag-based dedup (arc:tags or arc:dedup_time)", input.key)));
        }
    }
    if sort_keys.is_empty() {
        return Err(declined("no sort keys: the inputs are merged in DuckDB's insertion order"));
    }
    for input in &footers {
        let written: Vec<String> = input.written.as_deref().and_then(|w| serde_json::from_str(w).ok()).unwrap_or_default();
        if !written.starts_with(sort_keys) {
            return Err(declined(format!("{} was written sorted by {written:?}, not by {sort_keys:?}", input.key)));
        }
    }
    let copy_declined = match plan_copy(&footers, &schema, sort_keys, row_group_size) {
        Ok(copy_order) => {
            let time_column = time_column(&schema).unwrap_or_default();
            let mut footers: Vec<Option<Input>> = footers.into_iter().map(Some).collect();
            let inputs = copy_order.into_iter().filter_map(|index| footers[index].take()).collect();
            return Ok(FastPath::RowGroupCopy(RowGroupCopy { inputs, time_column, sort_keys: sort_keys.to_vec() }));
        }
        Err(why) => why,
    };
    if schema.num_columns() != schema.root_schema().get_fields().len() {
        return Err(declined(format!("{copy_declined}; the streaming merge takes flat schemas only")));
    }
    // Arrow's writer lays out fixed-length values (wide decimals, UUIDs)
    // and INT96 by its own rules, not the inputs': such a schema would
    // not survive the merge unchanged.
    let unwritable = schema.columns().iter().find(|column| {
        !matches!(
            column.physical_type(),
            PhysicalType::BOOLEAN
                | PhysicalType::INT32
                | PhysicalType::INT64
                | PhysicalType::FLOAT
                | PhysicalType::DOUBLE
                | PhysicalType::BYTE_ARRAY
        )
    });
    if let Some(column) = unwritable {
        return Err(declined(format!(
            "{copy_declined}; column {} is stored as {}, which the streaming merge does not write",
            column.name(),
            column.physical_type()
        )));
    }
    for input in &footers {
        let mut columns = input.metadata.row_groups().iter().flat_map(|group| group.columns());
        if let Some(column) = columns.find(|c| !matches!(c.compression(), Compression::ZSTD(_) | Compression::UNCOMPRESSED)) {
            let codec = column.compression();
            return Err(declined(format!(
                "{copy_declined}; {} is compressed with {codec}, which the streaming merge does not read",
                input.key
            )));
        }
    }
    let dictionary_columns = dictionary_columns(&footers, &schema);
    Ok(FastPath::StreamingMerge(StreamingMerge {
        inputs: footers.into_iter().map(|input| (input.key, input.file, input.metadata)).collect(),
        sort_keys: sort_keys.to_vec(),
        row_group_size,
        parquet_schema: schema.clone(),
        dictionary_columns,
        copy_declined: copy_declined.0,
    }))
}

/// The columns every input stored with a dictionary in every row group:
/// the writer of the inputs (DuckDB, which keeps a dictionary only for
/// columns of few distinct values) judged them worth one, and the merge
/// keeps its judgement rather than hashing every value of every column.
fn dictionary_columns(inputs: &[Input], schema: &parquet::schema::types::SchemaDescriptor) -> Vec<String> {
    (0..schema.num_columns())
        .filter(|&column| {
            inputs.iter().all(|input| {
                input
                    .metadata
                    .row_groups()
                    .iter()
                    .all(|group| group.num_rows() == 0 || group.column(column).dictionary_page_offset().is_some())
            })
        })
        .map(|column| schema.column(column).name().to_owned())
        .collect()
}

/// One input as the conditions read it: its storage key (for its name),
/// its local file and footer.
struct Input {
    key: String,
    file: File,
    metadata: Arc<ParquetMetaData>,
    /// Its `compactor:sort_keys` and Arc's dedup markers.
    written: Option<String>,
    tags: Option<String>,
    dedup_time: Option<String>,
}

/// The row-group copy's own conditions, over inputs proven sorted by
/// `sort_keys`: the inputs' indices in the order to copy them, or why not.
fn plan_copy(
    inputs: &[Input],
    schema: &parquet::schema::types::SchemaDescriptor,
    sort_keys: &[String],
    row_group_size: u64,
) -> Result<Vec<usize>, Declined> {
    if sort_keys.first().map(String::as_str) != Some("time") {
        return Err(declined(format!("the sort keys {sort_keys:?} do not begin with time")));
    }
    let time_column = time_column(schema).ok_or_else(|| declined("no time column"))?;
    let time = schema.column(time_column);
    let microseconds_utc =
        matches!(time.logical_type(), Some(LogicalType::Timestamp { is_adjusted_to_u_t_c: true, unit: TimeUnit::MICROS(_) }));
    if time.physical_type() != PhysicalType::INT64 || !microseconds_utc {
        return Err(declined("time is not a TIMESTAMPTZ of microseconds"));
    }
    let mut order = Vec::with_capacity(inputs.len());
    for (index, input) in inputs.iter().enumerate() {
        if let Some(large) = input.metadata.row_groups().iter().find(|g| g.num_rows() as u64 > row_group_size) {
            return Err(declined(format!(
                "{} has a row group of {} rows, more than row_group_size {row_group_size}",
                input.key,
                large.num_rows()
            )));
        }
        let time_range = time_range(&input.metadata, time_column).map_err(|why| declined(format!("{}: {why}", input.key)))?;
        order.push((index, time_range));
    }
    // Files without rows first (they add no row group), then by time.
    order.sort_by_key(|(_, range)| *range);
    // Equal times at a seam are in order by `time` alone; by more keys they
    // would need the next key compared across files.
    let ties_allowed = sort_keys.len() == 1;
    for pair in order.windows(2) {
        let (Some(before), Some(after)) = (pair[0].1, pair[1].1) else { continue };
        let overlap = if ties_allowed { before.1 > after.0 } else { before.1 >= after.0 };
        if overlap {
            return Err(declined(format!("the time ranges of {} and {} overlap", inputs[pair[0].0].key, inputs[pair[1].0].key)));
        }
    }
    Ok(order.into_iter().map(|(index, _)| index).collect())
}

/// The smallest and largest `time` of a file, from every row group's
/// statistics (`None` without rows); an error when a row group has none, or
/// has nulls (DuckDB puts nulls last, so two files' nulls would end up in
/// the middle).
fn time_range(metadata: &ParquetMetaData, time_column: usize) -> Result<Option<(i64, i64)>, String> {
    let mut range: Option<(i64, i64)> = None;
    for group in metadata.row_groups().iter().filter(|g| g.num_rows() > 0) {
        let Some(Statistics::Int64(stats)) = group.column(time_column).statistics() else {
            return Err("no time statistics in a row group".to_owned());
        };
        if stats.null_count_opt() != Some(0) {
            return Err("time has nulls (or no null count)".to_owned());
        }
        let (Some(&min), Some(&max)) = (stats.min_opt(), stats.max_opt()) else {
            return Err("no time minimum or maximum in a row group".to_owned());
        };
        range = Some(range.map_or((min, max), |(lo, hi)| (lo.min(min), hi.max(max))));
    }
    Ok(range)
}

/// The index of the top-level `time` column.
fn time_column(schema: &parquet::schema::types::SchemaDescriptor) -> Option<usize> {
    (0..schema.num_columns()).find(|&i| schema.column(i).path().parts() == ["time"])
}

/// Whether `name` is an output's name: `{measurement}_{YYYYMMDD}_{HHMMSS}_{nanos}_b{n}_{suffix}.parquet`.
fn is_output_name(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".parquet") else { return false };
    let parts: Vec<&str> = stem.rsplitn(5, '_').collect();
    let digits = |s: &str, len: Option<usize>| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && len.is_none_or(|l| s.len() == l);
    // Reversed: suffix, b{n}, nanos, HHMMSS, then `{measurement}_{YYYYMMDD}`.
    let [suffix, batch, nanos, time, rest] = parts.as_slice() else { return false };
    let date = rest.rsplit('_').next().unwrap_or_default();
    !suffix.is_empty()
        && batch.strip_prefix('b').is_some_and(|n| digits(n, None))
        && digits(nanos, None)
        && digits(time, Some(6))
        && rest.len() > 9
        && digits(date, Some(8))
}

impl RowGroupCopy {
    /// Writes the output: every input's row groups in time order, copied,
    /// under a footer with the writer, the sort keys and `sorting_columns`.
    /// Returns the rows written.
    pub fn write(&self, output: &Path) -> anyhow::Result<u64> {
        let Some(first) = self.inputs.first() else { anyhow::bail!("no inputs") };
        let schema = first.metadata.file_metadata().schema_descr().root_schema_ptr();
        let properties = WriterProperties::builder()
            .set_created_by(format!("{} (row-group copy)", writer_name()))
            .set_key_value_metadata(Some(vec![
                KeyValue::new(WRITER_KEY.to_owned(), writer_name()),
                KeyValue::new(SORT_KEYS_KEY.to_owned(), serde_json::to_string(&self.sort_keys)?),
            ]))
            .set_sorting_columns(Some(vec![SortingColumn { column_idx: self.time_column as i32, descending: false, nulls_first: false }]))
            .build();
        // Large writes: the copy is one pass over the bytes, as the floor's.
        let file = std::io::BufWriter::with_capacity(COPY_BUFFER, File::create(output)?);
        let mut writer = SerializedFileWriter::new(file, schema, Arc::new(properties))?;
        let mut rows = 0u64;
        for input in &self.inputs {
            for group in input.metadata.row_groups().iter().filter(|g| g.num_rows() > 0) {
                let chunks =
                    RowGroupBytes::read(&input.file, group).map_err(|e| anyhow::anyhow!("reading a row group of {}: {e}", input.key))?;
                let mut group_writer = writer.next_row_group()?;
                for column in group.columns() {
                    let close = ColumnCloseResult {
                        bytes_written: column.compressed_size() as u64,
                        rows_written: group.num_rows() as u64,
                        metadata: column.clone(),
                        bloom_filter: None,
                        column_index: None,
                        offset_index: None,
                    };
                    group_writer
                        .append_column(&chunks, close)
                        .map_err(|e| anyhow::anyhow!("copying a column chunk of {}: {e}", input.key))?;
                }
                group_writer.close()?;
                rows += group.num_rows() as u64;
            }
        }
        writer.close()?;
        Ok(rows)
    }
}

/// Bytes written to the output per system call.
const COPY_BUFFER: usize = 8 << 20;

/// One row group's column chunks, read from its file in one request, as
/// `append_column` reads them: by their offsets in the file.
struct RowGroupBytes {
    start: u64,
    bytes: bytes::Bytes,
}

impl RowGroupBytes {
    fn read(file: &File, group: &parquet::file::metadata::RowGroupMetaData) -> std::io::Result<Self> {
        use std::os::unix::fs::FileExt;
        let range = |column: &parquet::file::metadata::ColumnChunkMetaData| {
            let start = column.dictionary_page_offset().unwrap_or(column.data_page_offset());
            (start, start + column.compressed_size())
        };
        let start = group.columns().iter().map(|c| range(c).0).min().unwrap_or(0);
        let end = group.columns().iter().map(|c| range(c).1).max().unwrap_or(start);
        let (start, end) = (u64::try_from(start).unwrap_or(0), u64::try_from(end).unwrap_or(0));
        let mut bytes = vec![0u8; end.saturating_sub(start) as usize];
        file.read_exact_at(&mut bytes, start)?;
        Ok(Self { start, bytes: bytes.into() })
    }
}

impl parquet::file::reader::Length for RowGroupBytes {
    fn len(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }
}

impl parquet::file::reader::ChunkReader for RowGroupBytes {
    type T = bytes::buf::Reader<bytes::Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        use bytes::Buf;
        Ok(self.slice(start, None)?.reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<bytes::Bytes> {
        self.slice(start, Some(length))
    }
}

impl RowGroupBytes {
    fn slice(&self, start: u64, length: Option<usize>) -> parquet::errors::Result<bytes::Bytes> {
        let from = start.checked_sub(self.start).map(|f| f as usize).filter(|f| *f <= self.bytes.len());
        let Some(from) = from else {
            return Err(parquet::errors::ParquetError::General(format!("offset {start} outside the row group read")));
        };
        let to = length.map_or(self.bytes.len(), |l| from + l);
        if to > self.bytes.len() {
            return Err(parquet::errors::ParquetError::General(format!("{length:?} bytes at {start} run past the row group read")));
        }
        Ok(self.bytes.slice(from..to))
    }
}

/// The output's order at every seam between row groups: each one's
/// smallest `time` is not below the previous one's largest (read back from
/// the written footer, not from the plan).
pub fn check_order(output: &Path) -> anyhow::Result<()> {
    let reader = SerializedFileReader::new(File::open(output)?)?;
    let metadata = reader.metadata();
    let schema = metadata.file_metadata().schema_descr();
    let time_column = time_column(schema).ok_or_else(|| anyhow::anyhow!("no time column"))?;
    let mut previous_max: Option<i64> = None;
    for (i, group) in metadata.row_groups().iter().enumerate().filter(|(_, g)| g.num_rows() > 0) {
        let Some(Statistics::Int64(stats)) = group.column(time_column).statistics() else {
            anyhow::bail!("row group {i} of the output has no time statistics");
        };
        let (Some(&min), Some(&max)) = (stats.min_opt(), stats.max_opt()) else { anyhow::bail!("row group {i} has no time range") };
        if previous_max.is_some_and(|previous| min < previous) {
            anyhow::bail!("the output is out of order at row group {i}: time {min} after {}", previous_max.unwrap_or_default());
        }
        previous_max = Some(max);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_names_are_recognised() {
        assert!(is_output_name("cpu_20260412_150512_1776006312123456789_b2_compacted.parquet"));
        assert!(is_output_name("mem_total_20260412_150512_1776006312123456789_b1_daily.parquet"));
        for other in [
            "cpu_20260411_100400_000000001.parquet",
            "cpu_20260412_150512_177600_bx_compacted.parquet",
            "cpu_2026041_150512_1776006312123456789_b2_compacted.parquet",
            "20260412_150512_1776006312123456789_b2_compacted.parquet",
            "cpu_20260412_150512_1776006312123456789_b2_compacted.csv",
        ] {
            assert!(!is_output_name(other), "{other}");
        }
    }
}
