//! The streaming merge: when a job's inputs are the engine's own outputs,
//! each sorted by the measurement's sort keys, but the copy cannot apply
//! (the keys do not begin with `time`, or the inputs' times overlap), the
//! inputs are still sorted runs. A k-way merge of them needs no full sort
//! and no spill, and its memory is bounded by one decoded batch per input
//! (`[compaction] merge_batch_rows`) plus the row group being written,
//! whatever the size of the day.
//!
//! The merge compares rows in Arrow's row format (byte-comparable keys,
//! ascending, nulls last: DuckDB's `ORDER BY` defaults). It takes whole runs
//! at once: the smallest input gives every row up to the next input's
//! current row, found by binary search in its batch, so that inputs sorted
//! by a leading key other than `time` (`host`) merge at the cost of a copy.
//! Each input's order is checked as it is read; an input out of order
//! stops the merge, and the job falls back to DuckDB.

use std::cmp::Ordering;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use arrow_array::{ArrayRef, RecordBatch};
use arrow_row::{OwnedRow, RowConverter, Rows, SortField};
use arrow_schema::{DataType, SchemaRef, SortOptions};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::arrow_writer::{ArrowColumnChunk, ArrowLeafColumn, compute_leaves, get_column_writers};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{KeyValue, ParquetMetaData};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterPropertiesPtr};
use parquet::file::writer::SerializedFileWriter;
use parquet::format::SortingColumn;
use parquet::schema::types::{ColumnPath, SchemaDescPtr};

use crate::provenance::{SORT_KEYS_KEY, WRITER_KEY, writer_name};

/// Rows decoded ahead per input when `[compaction] merge_batch_rows` is not set.
pub const DEFAULT_MERGE_BATCH_ROWS: usize = 8192;

/// Runs shorter than this are gathered row by row into the next output
/// batch; longer ones are written as slices of their input batch.
const GATHER_BELOW: usize = 1024;

/// A streaming merge that every condition allows.
#[derive(Debug)]
pub struct StreamingMerge {
    /// Storage key (for messages), local file and footer of each input,
    /// in the order ties between inputs are broken.
    pub(crate) inputs: Vec<(String, File, Arc<ParquetMetaData>)>,
    pub(crate) sort_keys: Vec<String>,
    pub(crate) row_group_size: u64,
    /// The inputs' Parquet schema, which the output keeps.
    pub(crate) parquet_schema: SchemaDescPtr,
    /// Columns written with a dictionary (those the inputs have one for).
    pub(crate) dictionary_columns: Vec<String>,
    /// Why the row-group copy could not be taken instead.
    pub copy_declined: String,
}

/// What a streaming merge did, and where its time went.
#[derive(Debug, Clone, Copy, Default)]
pub struct MergeStats {
    /// Rows written.
    pub rows: u64,
    /// Waiting for the inputs' next batches (read, decoded, their sort keys
    /// converted and checked by a thread per input).
    pub read: Duration,
    /// Gathering the output and handing it to the column encoders.
    pub write: Duration,
    /// The whole merge.
    pub total: Duration,
}

/// Why a streaming merge stopped before writing its output: the job
/// merges with DuckDB instead (`OutOfOrder`) or fails (`Failed`).
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// An input was not in the order its metadata claims.
    #[error("{key} is not sorted by {sort_keys:?} at row {row}, as its metadata says it is")]
    OutOfOrder {
        /// The input's storage key.
        key: String,
        /// The order its metadata claims.
        sort_keys: Vec<String>,
        /// The first row out of order (0-based).
        row: u64,
    },
    /// Reading, comparing or writing failed.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// One input being merged: its reader, its current batch and that batch's
/// sort keys in row format.
struct Cursor {
    /// The input's batches, decoded, converted and checked ahead by its
    /// reader thread (at most [`READ_AHEAD`] waiting).
    batches: Receiver<Result<(RecordBatch, Rows), MergeError>>,
    batch: RecordBatch,
    rows: Rows,
    position: usize,
    /// Index of the current batch in the pending output's sources.
    source: usize,
}

/// Rows handed to the column encoders at a time.
const HAND_OVER_ROWS: usize = 32_768;

/// Batches a reader thread decodes ahead of the merge, per input.
const READ_AHEAD: usize = 0;

impl Cursor {
    fn current(&self) -> arrow_row::Row<'_> {
        self.rows.row(self.position)
    }
}

/// The sort key columns, compared ascending with nulls last (DuckDB's
/// default `ORDER BY`).
struct Keys {
    names: Vec<String>,
    columns: Vec<usize>,
    converter: RowConverter,
}

impl Keys {
    fn new(schema: &SchemaRef, sort_keys: &[String]) -> anyhow::Result<Self> {
        let mut columns = Vec::with_capacity(sort_keys.len());
        let mut fields = Vec::with_capacity(sort_keys.len());
        for key in sort_keys {
            let (index, field) = schema.column_with_name(key).ok_or_else(|| anyhow::anyhow!("no column {key:?} to sort by"))?;
            columns.push(index);
            fields.push(SortField::new_with_options(field.data_type().clone(), SortOptions { descending: false, nulls_first: false }));
        }
        Ok(Self { names: sort_keys.to_vec(), columns, converter: RowConverter::new(fields)? })
    }

    fn rows(&self, batch: &RecordBatch) -> anyhow::Result<Rows> {
        let columns: Vec<ArrayRef> = self.columns.iter().map(|&i| batch.column(i).clone()).collect();
        Ok(self.converter.convert_columns(&columns)?)
    }
}

impl StreamingMerge {
    /// Merges the inputs into `output` with at most `batch_rows` rows
    /// decoded per input; returns the rows written.
    pub fn write(&self, output: &Path, batch_rows: usize) -> Result<MergeStats, MergeError> {
        let started = Instant::now();
        limit_malloc_arenas();
        let mut stats = MergeStats::default();
        let batch_rows = batch_rows.max(1);
        let mut schema: Option<SchemaRef> = None;
        let mut keys: Option<Arc<Keys>> = None;
        let mut cursors: Vec<Cursor> = Vec::with_capacity(self.inputs.len());
        for (key, file, metadata) in &self.inputs {
            // The footer the plan read, not read again.
            let file = file.try_clone().map_err(|e| anyhow::anyhow!("cannot open {key}: {e}"))?;
            let footer = ArrowReaderMetadata::try_new(metadata.clone(), ArrowReaderOptions::new())
                .map_err(|e| anyhow::anyhow!("cannot read {key}: {e}"))?;
            // Strings the inputs keep in a dictionary are read as Arrow
            // dictionaries: never materialised, row by row.
            let fields: Vec<arrow_schema::FieldRef> = footer
                .schema()
                .fields()
                .iter()
                .map(|field| {
                    if self.dictionary_columns.contains(field.name()) && matches!(field.data_type(), DataType::Utf8) {
                        let dictionary = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
                        Arc::new(field.as_ref().clone().with_data_type(dictionary))
                    } else {
                        field.clone()
                    }
                })
                .collect();
            let options = ArrowReaderOptions::new().with_schema(Arc::new(arrow_schema::Schema::new(fields)));
            let hinted =
                ArrowReaderMetadata::try_new(footer.metadata().clone(), options).map_err(|e| anyhow::anyhow!("cannot read {key}: {e}"))?;
            let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(file, hinted);
            let input_schema = builder.schema().clone();
            let reader = builder.with_batch_size(batch_rows).build().map_err(|e| anyhow::anyhow!("cannot read {key}: {e}"))?;
            let schema = schema.get_or_insert_with(|| input_schema.clone());
            if input_schema.fields() != schema.fields() {
                return Err(anyhow::anyhow!("the Arrow schema of {key} differs from the first input's").into());
            }
            let keys = match &keys {
                Some(keys) => keys,
                None => keys.insert(Arc::new(Keys::new(schema, &self.sort_keys)?)),
            };
            let waiting = Instant::now();
            let cursor = Cursor::open(key, reader, keys.clone())?;
            stats.read += waiting.elapsed();
            cursors.extend(cursor);
        }
        let Some(schema) = schema else { return Err(anyhow::anyhow!("no inputs").into()) };
        let mut writer = self.writer(output, &schema)?;
        let mut out = Output::new(schema.clone(), batch_rows);
        for cursor in &mut cursors {
            cursor.source = out.add_source(cursor.batch.clone());
        }
        // Cursors by current row (ties by input order): `order[0]` is next.
        let mut order: Vec<usize> = (0..cursors.len()).collect();
        order.sort_by(|&a, &b| compare(&cursors, a, b));
        while let Some(&next) = order.first() {
            // Every row of `next` before the runner-up's current row.
            let end = match order.get(1) {
                Some(&runner_up) => {
                    let bound = cursors[runner_up].current();
                    let cursor = &cursors[next];
                    let tie_goes_first = next < runner_up;
                    let position = cursor.position;
                    position
                        + partition_point(position, cursor.rows.num_rows(), |i| match cursor.rows.row(i).cmp(&bound) {
                            Ordering::Less => true,
                            Ordering::Equal => tie_goes_first,
                            Ordering::Greater => false,
                        })
                }
                None => cursors[next].rows.num_rows(),
            };
            let cursor = &mut cursors[next];
            let run = end.max(cursor.position + 1) - cursor.position;
            stats.rows += run as u64;
            let writing = Instant::now();
            for batch in out.take(cursor.source, &cursor.batch, cursor.position, run)? {
                writer.write(&batch).map_err(|e| anyhow::anyhow!("writing the output: {e}"))?;
            }
            stats.write += writing.elapsed();
            cursor.position += run;
            order.remove(0);
            if cursor.position == cursor.rows.num_rows() {
                let waiting = Instant::now();
                let more = cursor.advance()?;
                stats.read += waiting.elapsed();
                if !more {
                    continue;
                }
                cursor.source = out.add_source(cursor.batch.clone());
            }
            // Sources grow by one per input batch: once the gathered rows
            // are written, only the cursors' current batches are needed.
            if out.indices.is_empty() && out.sources.len() > 2 * cursors.len() {
                out.sources.clear();
                for cursor in &mut cursors {
                    cursor.source = out.add_source(cursor.batch.clone());
                }
            }
            let at = order.partition_point(|&other| compare(&cursors, other, next) == Ordering::Less);
            order.insert(at, next);
        }
        let writing = Instant::now();
        if let Some(batch) = out.flush()? {
            writer.write(&batch).map_err(|e| anyhow::anyhow!("writing the output: {e}"))?;
        }
        writer.close().map_err(|e| anyhow::anyhow!("closing the output: {e}"))?;
        stats.write += writing.elapsed();
        self.check_schema(output)?;
        stats.total = started.elapsed();
        Ok(stats)
    }

    /// The written footer's schema is the inputs': what readers see does
    /// not depend on the path that wrote the file.
    fn check_schema(&self, output: &Path) -> anyhow::Result<()> {
        use parquet::file::reader::FileReader;
        let reader = parquet::file::reader::SerializedFileReader::new(File::open(output)?)?;
        let written = reader.metadata().file_metadata().schema_descr_ptr();
        anyhow::ensure!(
            written.root_schema() == self.parquet_schema.root_schema(),
            "the output's schema differs from the inputs': {:?} for {:?}",
            written.root_schema(),
            self.parquet_schema.root_schema()
        );
        Ok(())
    }

    /// The output's writer: the inputs' own Parquet schema, ZSTD level 3,
    /// row groups of `row_group_size`, the writer and sort keys as
    /// key-value metadata and as `sorting_columns`.
    fn writer(&self, output: &Path, schema: &SchemaRef) -> anyhow::Result<ColumnsWriter> {
        let mut sorting = Vec::with_capacity(self.sort_keys.len());
        for key in &self.sort_keys {
            let index = schema.index_of(key)?;
            sorting.push(SortingColumn { column_idx: i32::try_from(index)?, descending: false, nulls_first: false });
        }
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
            .set_max_row_group_size(usize::try_from(self.row_group_size)?.max(1))
            .set_created_by(format!("{} (streaming merge)", writer_name()))
            .set_key_value_metadata(Some(vec![
                KeyValue::new(WRITER_KEY.to_owned(), writer_name()),
                KeyValue::new(SORT_KEYS_KEY.to_owned(), serde_json::to_string(&self.sort_keys)?),
            ]))
            .set_sorting_columns(Some(sorting))
            // Column chunk statistics, as DuckDB writes them (no page index).
            .set_statistics_enabled(EnabledStatistics::Chunk)
            .set_dictionary_enabled(false);
        let properties = self
            .dictionary_columns
            .iter()
            .fold(properties, |properties, column| properties.set_column_dictionary_enabled(ColumnPath::from(column.as_str()), true))
            .build();
        let file = File::create(output).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", output.display()))?;
        ColumnsWriter::new(file, self.parquet_schema.clone(), Arc::new(properties), schema.clone())
    }
}

/// A Parquet writer that encodes and compresses the columns of a row group
/// on a few threads of their own (`ArrowColumnWriter`s, dealt round-robin),
/// while the merge goes on and while the next row group fills: the
/// encoding, most of the merge's work, spreads over the machine's cores.
struct ColumnsWriter {
    file: SerializedFileWriter<File>,
    parquet_schema: SchemaDescPtr,
    properties: WriterPropertiesPtr,
    schema: SchemaRef,
    row_group_size: usize,
    /// Encoder threads per row group (the machine's cores, at most one per
    /// column): a schema of hundreds of columns does not start hundreds.
    threads: usize,
    /// Rows sent to the row group being encoded.
    buffered: usize,
    /// The encoders of the row group being filled.
    workers: Vec<ColumnWorker>,
    /// Slices of the row group not yet handed to its workers.
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    /// The encoders of the row group filled before it, still at work.
    encoding: Option<Vec<EncodedColumns>>,
}

/// A thread encoding some of a row group's columns: each message holds
/// the leaves of each of its columns, in the order of `columns`.
struct ColumnWorker {
    leaves: std::sync::mpsc::SyncSender<Vec<Vec<ArrowLeafColumn>>>,
    encoded: EncodedColumns,
}

/// The leaf indices a worker encodes, and its chunks once it is done.
type EncodedColumns = (Vec<usize>, std::thread::JoinHandle<parquet::errors::Result<Vec<ArrowColumnChunk>>>);

impl ColumnsWriter {
    fn new(file: File, parquet_schema: SchemaDescPtr, properties: WriterPropertiesPtr, schema: SchemaRef) -> anyhow::Result<Self> {
        let row_group_size = properties.max_row_group_size();
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        // The writer buffers small writes itself; a column chunk goes
        // straight to the file.
        let file = SerializedFileWriter::new(file, parquet_schema.root_schema_ptr(), properties.clone())?;
        Ok(Self {
            file,
            parquet_schema,
            properties,
            schema,
            row_group_size,
            threads,
            buffered: 0,
            workers: Vec::new(),
            pending: Vec::new(),
            pending_rows: 0,
            encoding: None,
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> anyhow::Result<()> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            if self.workers.is_empty() {
                self.start_row_group()?;
            }
            let length = (batch.num_rows() - offset).min(self.row_group_size - self.buffered);
            self.pending.push(batch.slice(offset, length));
            self.pending_rows += length;
            offset += length;
            self.buffered += length;
            if self.buffered == self.row_group_size {
                self.finish_row_group()?;
            } else if self.pending_rows >= HAND_OVER_ROWS {
                self.hand_over()?;
            }
        }
        Ok(())
    }

    /// Sends the pending slices to the encoders, each worker's columns in
    /// one message (a wake-up per worker per [`HAND_OVER_ROWS`], not per
    /// run).
    fn hand_over(&mut self) -> anyhow::Result<()> {
        let leaves_per_row: usize = self.workers.iter().map(|worker| worker.encoded.0.len()).sum();
        let mut columns: Vec<Vec<ArrowLeafColumn>> = (0..leaves_per_row).map(|_| Vec::with_capacity(self.pending.len())).collect();
        for part in self.pending.drain(..) {
            let mut column = columns.iter_mut();
            for (array, field) in part.columns().iter().zip(self.schema.fields()) {
                for leaf in compute_leaves(field, array)? {
                    column.next().ok_or_else(|| anyhow::anyhow!("more leaves than columns"))?.push(leaf);
                }
            }
        }
        self.pending_rows = 0;
        for worker in &self.workers {
            let message: Vec<Vec<ArrowLeafColumn>> = worker.encoded.0.iter().map(|&leaf| std::mem::take(&mut columns[leaf])).collect();
            // A worker gone has failed: its error comes from `finish_row_group`.
            if worker.leaves.send(message).is_err() {
                self.finish_row_group()?;
                anyhow::bail!("a column encoder stopped");
            }
        }
        Ok(())
    }

    fn start_row_group(&mut self) -> anyhow::Result<()> {
        let writers = get_column_writers(&self.parquet_schema, &self.properties, &self.schema)?;
        let threads = self.threads.clamp(1, writers.len().max(1));
        // Columns dealt round-robin over the threads.
        let mut shares: Vec<(Vec<usize>, Vec<_>)> = (0..threads).map(|_| (Vec::new(), Vec::new())).collect();
        for (leaf, writer) in writers.into_iter().enumerate() {
            let share = &mut shares[leaf % threads];
            share.0.push(leaf);
            share.1.push(writer);
        }
        self.workers = shares
            .into_iter()
            .map(|(leaves_of, mut writers)| {
                let (leaves, received) = std::sync::mpsc::sync_channel::<Vec<Vec<ArrowLeafColumn>>>(1);
                let encoded = std::thread::spawn(move || {
                    for message in received {
                        for (writer, leaves) in writers.iter_mut().zip(message) {
                            for leaf in leaves {
                                writer.write(&leaf)?;
                            }
                        }
                    }
                    writers.into_iter().map(|writer| writer.close()).collect()
                });
                ColumnWorker { leaves, encoded: (leaves_of, encoded) }
            })
            .collect();
        Ok(())
    }

    /// Ends the row group being filled: its columns finish encoding while
    /// the next one fills, and the one before it, done by now, is
    /// appended to the file.
    fn finish_row_group(&mut self) -> anyhow::Result<()> {
        if !self.pending.is_empty() {
            self.hand_over()?;
        }
        // Closing a worker's channel lets it finish its columns.
        let ended: Vec<EncodedColumns> = std::mem::take(&mut self.workers).into_iter().map(|worker| worker.encoded).collect();
        self.buffered = 0;
        if let Some(previous) = self.encoding.replace(ended) {
            self.append(previous)?;
        }
        Ok(())
    }

    /// Waits for every column of a row group and appends them in order.
    fn append(&mut self, workers: Vec<EncodedColumns>) -> anyhow::Result<()> {
        let mut chunks: Vec<(usize, ArrowColumnChunk)> = Vec::new();
        for (leaves, encoded) in workers {
            let encoded = encoded.join().map_err(|_| anyhow::anyhow!("a column encoder panicked"))??;
            chunks.extend(leaves.into_iter().zip(encoded));
        }
        chunks.sort_by_key(|(leaf, _)| *leaf);
        let mut row_group = self.file.next_row_group()?;
        for (_, chunk) in chunks {
            chunk.append_to_row_group(&mut row_group)?;
        }
        row_group.close()?;
        Ok(())
    }

    fn close(mut self) -> anyhow::Result<()> {
        if !self.workers.is_empty() {
            self.finish_row_group()?;
        }
        if let Some(last) = self.encoding.take() {
            self.append(last)?;
        }
        self.file.close()?;
        Ok(())
    }
}

/// Keeps glibc to two malloc arenas in this (job) process: by default each
/// of the merge's threads may get its own, and memory freed in one is not
/// reused by another, which costs a day's merge tens of MB of peak RSS.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before the
    // merge starts its threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// The first index in `from..to` for which `before` is false, minus `from`
/// (`before` is true, then false, over the range).
fn partition_point(from: usize, to: usize, before: impl Fn(usize) -> bool) -> usize {
    let (mut low, mut high) = (from, to);
    while low < high {
        let middle = low + (high - low) / 2;
        if before(middle) {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    low - from
}

fn compare(cursors: &[Cursor], a: usize, b: usize) -> Ordering {
    cursors[a].current().cmp(&cursors[b].current()).then(a.cmp(&b))
}

impl Cursor {
    /// A cursor on the input read by `reader`, whose batches a thread of
    /// its own decodes and checks ahead; `None` for an input without rows.
    fn open(key: &str, mut reader: ParquetRecordBatchReader, keys: Arc<Keys>) -> Result<Option<Self>, MergeError> {
        let (sender, batches) = std::sync::mpsc::sync_channel(READ_AHEAD);
        let (key, empty_rows) = (key.to_owned(), keys.converter.empty_rows(0, 0));
        std::thread::spawn(move || {
            let (mut last, mut rows_before): (Option<OwnedRow>, u64) = (None, 0);
            loop {
                let next = next_batch(&key, &mut reader, &keys, last.as_ref(), rows_before);
                if let Ok(Some((batch, rows))) = &next {
                    last = Some(rows.row(rows.num_rows() - 1).owned());
                    rows_before += batch.num_rows() as u64;
                }
                let end = !matches!(next, Ok(Some(_)));
                // The merge stopped (it has what it needs, or failed).
                if next.transpose().is_some_and(|next| sender.send(next).is_err()) || end {
                    return;
                }
            }
        });
        let mut cursor = Self {
            batches,
            batch: RecordBatch::new_empty(Arc::new(arrow_schema::Schema::empty())),
            rows: empty_rows,
            position: 0,
            source: 0,
        };
        Ok(cursor.advance()?.then_some(cursor))
    }

    /// Moves to the input's next batch; `false` at the input's end.
    fn advance(&mut self) -> Result<bool, MergeError> {
        match self.batches.recv() {
            Ok(next) => {
                (self.batch, self.rows) = next?;
                self.position = 0;
                Ok(true)
            }
            // The reader thread ended: the input's end.
            Err(_) => Ok(false),
        }
    }
}

/// The next non-empty batch of `reader` and its sort keys, checked in
/// order after `last`; `None` at its end.
fn next_batch(
    key: &str,
    reader: &mut ParquetRecordBatchReader,
    keys: &Keys,
    last: Option<&OwnedRow>,
    rows_before: u64,
) -> Result<Option<(RecordBatch, Rows)>, MergeError> {
    loop {
        let Some(batch) = reader.next() else { return Ok(None) };
        let batch = batch.map_err(|e| anyhow::anyhow!("reading {key}: {e}"))?;
        if batch.num_rows() == 0 {
            continue;
        }
        let rows = keys.rows(&batch)?;
        // Each row after the one before it: the last row of the previous
        // batch, then this batch's own.
        let previous = last.map(OwnedRow::row).into_iter().chain(rows.iter());
        let later = rows.iter().skip(usize::from(last.is_none()));
        if let Some(at) = previous.zip(later).position(|(before, row)| before > row) {
            let row = rows_before + at as u64 + u64::from(last.is_none());
            return Err(MergeError::OutOfOrder { key: key.to_owned(), sort_keys: keys.names.clone(), row });
        }
        return Ok(Some((batch, rows)));
    }
}

/// The output batch being assembled: short runs gathered by index from
/// their input batches (`sources`), long ones passed on as slices.
struct Output {
    schema: SchemaRef,
    batch_rows: usize,
    sources: Vec<RecordBatch>,
    /// (source, row) of each row gathered so far.
    indices: Vec<(usize, usize)>,
}

impl Output {
    fn new(schema: SchemaRef, batch_rows: usize) -> Self {
        Self { schema, batch_rows, sources: Vec::new(), indices: Vec::new() }
    }

    /// Registers an input's new batch; returns its source index.
    fn add_source(&mut self, batch: RecordBatch) -> usize {
        self.sources.push(batch);
        self.sources.len() - 1
    }

    /// Takes `length` rows of `batch` (source `source`) from `offset`:
    /// returns what is ready to write, in order.
    fn take(&mut self, source: usize, batch: &RecordBatch, offset: usize, length: usize) -> anyhow::Result<Vec<RecordBatch>> {
        if length >= GATHER_BELOW {
            let mut ready: Vec<RecordBatch> = self.flush()?.into_iter().collect();
            ready.push(batch.slice(offset, length));
            return Ok(ready);
        }
        self.indices.extend((offset..offset + length).map(|row| (source, row)));
        if self.indices.len() >= self.batch_rows {
            return Ok(self.flush()?.into_iter().collect());
        }
        Ok(Vec::new())
    }

    /// The rows gathered so far as one batch. Sources no cursor still
    /// reads are dropped by the caller re-adding the live ones.
    fn flush(&mut self) -> anyhow::Result<Option<RecordBatch>> {
        if self.indices.is_empty() {
            return Ok(None);
        }
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        for column in 0..self.schema.fields().len() {
            let arrays: Vec<&dyn arrow_array::Array> = self.sources.iter().map(|b| b.column(column).as_ref()).collect();
            columns.push(arrow_select::interleave::interleave(&arrays, &self.indices)?);
        }
        self.indices.clear();
        Ok(Some(RecordBatch::try_new(self.schema.clone(), columns)?))
    }
}
