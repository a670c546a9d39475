//! Bronze ingestion: new landing files (or a Postgres query's result) →
//! one Delta commit of their rows plus ingest metadata.
//!
//! Files stream into the Delta writer: a blocking task reads them in order
//! (a large CSV is parsed by every core, chunk by chunk) and sends their
//! batches down a short channel that the write drains, so parsing overlaps
//! Parquet encoding and only a few batches are in memory at a time. The
//! commit happens only after the last file's last row has arrived: a file
//! that fails to parse (or a reader that stops early) fails the write, and
//! bronze stays at its last version.
//!
//! When silver would read back exactly this run's rows, it is written from
//! the same batches as they pass (see [`Pipeline::silver_alongside`]): one
//! read and parse of the landing files for both layers, and the two tables'
//! Parquet encoded side by side. Silver's input ends only once bronze has
//! committed where silver expects it, so silver never records rows bronze
//! does not hold.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::silver::Alongside;
use super::{Pipeline, PipelineError, RunOptions, edge, sources, step_error};
use crate::storage::StorageError;
use crate::meta::FileRecord;
use crate::spec::{SourceFormat, Spec};
use crate::storage::{Layer, WriteKind};
use super::rules::ident;

/// What one bronze step took in.
pub(super) struct Ingested {
    pub rows: u64,
    pub files: usize,
    pub skipped_files: usize,
    /// The rows silver wrote alongside, from the same parsed batches, when
    /// it was asked to (see [`Pipeline::silver_alongside`]), or why it did not.
    pub silver: Option<Result<u64, PipelineError>>,
}

/// A landing file (or query result) to ingest in this run, known by its
/// content hash before anything is written.
struct NewFile {
    path: String,
    hash: String,
    size: i64,
    /// A query's result, read while planning (it is hashed whole).
    rows: Option<Vec<RecordBatch>>,
}

/// One bronze step's reading: the dataset and how its rows are tagged.
#[derive(Clone, Copy)]
struct Reading<'a> {
    spec: &'a Spec,
    run_id: &'a str,
    ingested_at: i64,
}

/// What the reader sends to the write: batches, then `Done` once every file
/// was read whole. A channel that closes without `Done` means the reader
/// failed, and the write fails with it.
enum Feed {
    Batch(RecordBatch),
    Done,
    Failed(String),
}

/// Batches in flight between the reader and the write: enough to keep the
/// writer busy while the reader parses the next ones.
const FEED_DEPTH: usize = 4;

/// How often a step that lost a race with another run's commit is planned
/// again (each time it sees the winner's commit, so it converges quickly).
pub(super) const RACE_ATTEMPTS: u32 = 5;

/// The idempotency key of a landing file's content in a dataset's bronze.
fn content_key(dataset: &str, hash: &str) -> String {
    format!("bronze.{dataset}:{hash}")
}

impl Pipeline {
    /// Ingest what is new. Each file's content is committed at most once,
    /// even by runs that race without a lock (no Redis, or a lock lost when
    /// Redis restarted): the bronze commit carries the content hashes as
    /// Delta transaction ids. The run that loses such a race (or any commit
    /// conflict) re-reads what is new (now nothing) and ingests the rest.
    ///
    /// With `alongside`, silver is written from the batches bronze writes
    /// (one read of the landing files for both), and commits right after
    /// bronze, at the bronze version it expects; otherwise (bronze lost a
    /// race, a file failed) silver commits nothing and says why.
    pub(super) async fn ingest(
        &self,
        spec: &Spec,
        options: &RunOptions,
        run_id: &str,
        alongside: Option<&Alongside<'_>>,
    ) -> Result<Ingested, PipelineError> {
        let mut attempt = 1;
        loop {
            // A retry plans again; silver then reads the committed bronze.
            let alongside = alongside.filter(|_| attempt == 1);
            match self.ingest_new(spec, options, run_id, alongside).await {
                Err(PipelineError::Storage(raced @ (StorageError::AlreadyCommitted { .. } | StorageError::Conflict { .. })))
                    if attempt < RACE_ATTEMPTS =>
                {
                    tracing::info!(dataset = %spec.name, %raced, attempt, "another run wrote bronze at the same time; re-reading what is new");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn ingest_new(
        &self,
        spec: &Spec,
        options: &RunOptions,
        run_id: &str,
        alongside: Option<&Alongside<'_>>,
    ) -> Result<Ingested, PipelineError> {
        let step = format!("bronze.{}", spec.name);
        let known: HashSet<String> = if options.full_refresh {
            HashSet::new()
        } else {
            self.ingested_hashes(&spec.name).await?
        };
        let (new_files, skipped_files) = self.new_files(spec, options, &known).await?;
        if new_files.is_empty() {
            if options.full_refresh {
                return Err(step_error(&step, "no landing files matched the source path; nothing to rebuild bronze from"));
            }
            return Ok(Ingested { rows: 0, files: 0, skipped_files, silver: None });
        }
        let keys: Vec<String> = new_files.iter().map(|f| content_key(&spec.name, &f.hash)).collect();
        let ingested_at = chrono::Utc::now().timestamp_micros();
        let kind = if options.full_refresh { WriteKind::Overwrite } else { WriteKind::Append };
        let (tx, mut rx) = mpsc::channel::<Feed>(FEED_DEPTH);
        let write_stopped = Arc::new(AtomicBool::new(false));
        let reading = Reading { spec, run_id, ingested_at };
        let read = self.read_new(&reading, &new_files, tx, write_stopped.clone());
        // Silver's copy of the batches, ended by `Done` once bronze committed
        // where silver expects it.
        let (silver_tx, mut silver_rx) = mpsc::channel::<Feed>(FEED_DEPTH);
        let write = async {
            // The first batch gives the schema; nothing new, nothing written.
            let first = match rx.recv().await {
                Some(Feed::Batch(batch)) => batch,
                _ => return Ok(None),
            };
            let rows = match alongside {
                Some(_) => tee(incoming(first, rx), silver_tx.clone()),
                None => incoming(first, rx),
            };
            let frame = super::scan_once(&self.engine.internal_session(), rows, "the incoming landing rows")
                .map_err(|e| step_error(&step, e))?;
            let written = self
                .lake
                .write_frame_once(Layer::Bronze, &spec.name, frame, kind, run_id, vec![], &keys)
                .await
                .map(Some)
                .map_err(PipelineError::from);
            if let Some(plan) = alongside {
                let _ = silver_tx
                    .send(match &written {
                        Ok(Some(commit)) if commit.version == plan.bronze_version() => Feed::Done,
                        Ok(Some(commit)) => Feed::Failed(format!(
                            "bronze committed version {} where silver expected {} (another writer committed between)",
                            commit.version,
                            plan.bronze_version()
                        )),
                        _ => Feed::Failed("bronze committed nothing".into()),
                    })
                    .await;
            }
            drop(silver_tx);
            written
        };
        let silver = async {
            let plan = alongside?;
            let first = match silver_rx.recv().await {
                Some(Feed::Batch(batch)) => batch,
                Some(Feed::Failed(message)) => return Some(Err(step_error(&format!("silver.{}", spec.name), message))),
                _ => return Some(Err(step_error(&format!("silver.{}", spec.name), "bronze wrote no rows"))),
            };
            Some(self.refine_alongside(plan, incoming(first, silver_rx), run_id).await)
        };
        let (read, write, silver) = tokio::join!(read, write, silver);
        let rows = match (read, write) {
            (Ok(()), Ok(written)) => written.map_or(0, |c| c.rows_written),
            // The reader stopped because the write had failed: the write's error says why.
            (Err(_), Err(write)) if write_stopped.load(Ordering::Acquire) => return Err(write),
            // Otherwise a reading error is the cause of any write error that came with it.
            (Err(err), _) | (Ok(_), Err(err)) => return Err(err),
        };
        for file in &new_files {
            let record = FileRecord {
                dataset: spec.name.clone(),
                path: file.path.clone(),
                content_hash: file.hash.clone(),
                size_bytes: file.size,
                run_id: run_id.to_string(),
            };
            if let Err(err) = self.meta.record_file(&record).await {
                tracing::warn!(%err, "recording an ingested file failed");
            }
        }
        let source = match &spec.source.path {
            Some(path) => format!("landing:{path}"),
            None => format!("{}:query", spec.source.format.name()),
        };
        self.record_lineage(&[edge(&source, &format!("bronze.{}", spec.name), "ingest")], run_id).await;
        Ok(Ingested { rows, files: new_files.len(), skipped_files, silver })
    }

    /// The source's files whose content bronze does not hold yet, in order,
    /// with their hashes; and how many were skipped. A file whose content
    /// appears twice in one run is ingested once.
    async fn new_files(&self, spec: &Spec, options: &RunOptions, known: &HashSet<String>) -> Result<(Vec<NewFile>, usize), PipelineError> {
        let step = format!("bronze.{}", spec.name);
        if let SourceFormat::Postgres(pg) = &spec.source.format {
            let data = sources::read_postgres(pg, options.window).await?;
            let hash = hash_batches(&data);
            if known.contains(&hash) {
                return Ok((Vec::new(), 1));
            }
            let size = data.iter().map(|b| b.get_array_memory_size() as i64).sum();
            return Ok((vec![NewFile { path: "postgres:query".into(), hash, size, rows: Some(data) }], 0));
        }
        let pattern = spec.source.path.as_deref().unwrap_or_default();
        let mut seen = known.clone();
        let mut new_files = Vec::new();
        let mut skipped = 0;
        for path in self.landing_files(pattern).await.map_err(|e| step_error(&step, e))? {
            if options.files.as_ref().is_some_and(|only| !only.contains(&path)) {
                continue;
            }
            let (hash, size) = self.digest(&path).await.map_err(|e| step_error(&step, format!("reading {path}: {e}")))?;
            if seen.insert(hash.clone()) {
                new_files.push(NewFile { path, hash, size, rows: None });
            } else {
                skipped += 1;
            }
        }
        Ok((new_files, skipped))
    }

    /// A landing file's content hash and size. A local file is hashed as it
    /// is read, a megabyte at a time; from object storage it is fetched
    /// whole. Hashing is CPU work: off the async threads.
    async fn digest(&self, path: &str) -> Result<(String, i64), String> {
        if let Some(file) = self.lake.local_file(path) {
            return tokio::task::spawn_blocking(move || {
                use std::io::Read;
                let mut input = std::fs::File::open(&file).map_err(|e| e.to_string())?;
                let (mut hasher, mut size) = (Sha256::new(), 0i64);
                let mut buffer = vec![0u8; 1 << 20];
                loop {
                    let n = input.read(&mut buffer).map_err(|e| e.to_string())?;
                    if n == 0 {
                        return Ok((hex::encode(hasher.finalize()), size));
                    }
                    hasher.update(&buffer[..n]);
                    size += n as i64;
                }
            })
            .await
            .map_err(|e| format!("hashing stopped: {e}"))?;
        }
        let bytes = self.lake.read_bytes(path).await.map_err(|e| e.to_string())?;
        let size = bytes.len() as i64;
        let hash = tokio::task::spawn_blocking(move || hex::encode(Sha256::digest(&bytes)))
            .await
            .map_err(|e| format!("hashing stopped: {e}"))?;
        Ok((hash, size))
    }

    /// Feed the rows of `files`, with ingest metadata, to `tx`. On an error
    /// the feed says so, and the write fails.
    async fn read_new(
        &self,
        reading: &Reading<'_>,
        files: &[NewFile],
        tx: mpsc::Sender<Feed>,
        write_stopped: Arc<AtomicBool>,
    ) -> Result<(), PipelineError> {
        let result = self.feed_new(reading, files, &tx, &write_stopped).await;
        let _ = tx
            .send(match &result {
                Ok(_) => Feed::Done,
                Err(err) => Feed::Failed(err.to_string()),
            })
            .await;
        result
    }

    async fn feed_new(
        &self,
        reading: &Reading<'_>,
        files: &[NewFile],
        tx: &mpsc::Sender<Feed>,
        write_stopped: &Arc<AtomicBool>,
    ) -> Result<(), PipelineError> {
        let Reading { spec, run_id, ingested_at } = *reading;
        let step = format!("bronze.{}", spec.name);
        let mut columns: Option<(String, SchemaRef)> = None;
        for file in files {
            if let Some(rows) = &file.rows {
                let mut stamp = Stamp::new(run_id, &file.path, &file.hash, ingested_at);
                for batch in rows {
                    let batch = stamp.apply(batch.clone()).map_err(|e| step_error(&step, e))?;
                    if tx.send(Feed::Batch(batch)).await.is_err() {
                        write_stopped.store(true, Ordering::Release);
                        return Err(step_error(&step, "the bronze write stopped before the query's rows were read"));
                    }
                }
                continue;
            }
            let path = &file.path;
            let changed = || {
                step_error(
                    &step,
                    format!("{path} changed while it was being ingested (it is still being written?); nothing was committed, run again once it is complete"),
                )
            };
            // A local CSV streams from the file, a few chunks in memory;
            // anything else is read whole.
            let input = match (&spec.source.format, self.lake.local_file(path)) {
                (SourceFormat::Csv(_), Some(local)) => {
                    let opened = std::fs::File::open(&local).map_err(|e| step_error(&step, format!("reading {path}: {e}")))?;
                    let length = opened.metadata().map_err(|e| step_error(&step, format!("reading {path}: {e}")))?.len();
                    if length as i64 != file.size {
                        return Err(changed());
                    }
                    Input::File(opened, length)
                }
                _ => {
                    let bytes = self
                        .lake
                        .read_bytes(path)
                        .await
                        .map_err(|e| step_error(&step, format!("reading {path}: {e}")))?;
                    if bytes.len() as i64 != file.size {
                        return Err(changed());
                    }
                    Input::Bytes(bytes)
                }
            };
            let format = spec.source.format.clone();
            let (tx, first_file) = (tx.clone(), columns.clone());
            let (file_path, hash, run) = (path.clone(), file.hash.clone(), run_id.to_string());
            let stopped = write_stopped.clone();
            // Parsing is CPU work: off the async threads.
            let read = tokio::task::spawn_blocking(move || -> Result<SchemaRef, PipelineError> {
                let mut schema: Option<SchemaRef> = None;
                let mut stamp = Stamp::new(&run, &file_path, &hash, ingested_at);
                let mut sink = |batch| {
                    let batch = stamp
                        .apply(batch)
                        .map_err(|e| sources::file_error(&file_path, e.to_string()))?;
                    if schema.is_none() {
                        same_columns(&file_path, batch.schema_ref(), first_file.as_ref())?;
                        schema = Some(batch.schema());
                    }
                    tx.blocking_send(Feed::Batch(batch)).map_err(|_| {
                        stopped.store(true, Ordering::Release);
                        sources::file_error(&file_path, "the bronze write stopped before the file was read")
                    })
                };
                match input {
                    Input::File(mut opened, length) => sources::read_open_file_into(&format, &file_path, &mut opened, length, &mut sink)?,
                    Input::Bytes(bytes) => sources::read_file_into(&format, &file_path, &bytes, &mut sink)?,
                }
                Ok(schema.expect("a file gives at least one batch"))
            });
            let schema = read
                .await
                .map_err(|e| step_error(&step, format!("reading {path}: the reader stopped: {e}")))??;
            columns.get_or_insert_with(|| (path.clone(), schema));
        }
        Ok(())
    }

    pub(super) async fn ingested_hashes(&self, dataset: &str) -> Result<HashSet<String>, PipelineError> {
        let step = format!("bronze.{dataset}");
        if self.lake.table(Layer::Bronze, dataset).await?.is_none() {
            return Ok(HashSet::new());
        }
        let ctx = self.engine.internal_session();
        let df = ctx
            .table(format!("bronze.{dataset}"))
            .await
            .and_then(|t| t.select(vec![ident("_source_hash")]))
            .and_then(|t| t.distinct())
            .map_err(|e| step_error(&step, e))?;
        let mut hashes = HashSet::new();
        for batch in df.collect().await.map_err(|e| step_error(&step, e))? {
            let column = datafusion::arrow::compute::cast(batch.column(0), &DataType::Utf8).map_err(|e| step_error(&step, e))?;
            for v in column.as_string::<i32>().iter().flatten() {
                hashes.insert(v.to_string());
            }
        }
        Ok(hashes)
    }
}

/// Files ingested in one commit must have the same columns.
/// A landing file to parse: open (read as it is parsed) or read whole.
enum Input {
    /// The file, and its length.
    File(std::fs::File, u64),
    Bytes(bytes::Bytes),
}

fn same_columns(file: &str, schema: &SchemaRef, first: Option<&(String, SchemaRef)>) -> Result<(), sources::SourceError> {
    let Some((first_file, first_schema)) = first else { return Ok(()) };
    if first_schema.fields() == schema.fields() {
        return Ok(());
    }
    let names = |s: &Schema| s.fields().iter().map(|f| f.name().as_str()).filter(|n| !n.starts_with('_')).collect::<Vec<_>>().join(", ");
    Err(sources::file_error(
        file,
        format!(
            "has columns [{}] but {first_file}, ingested in the same run, has [{}]; make the headers match, or land the files in separate runs (bronze adds new columns run by run)",
            names(schema),
            names(first_schema)
        ),
    ))
}

/// `rows`, each batch also sent to `copy` (a copy that stopped listening is
/// left behind: bronze goes on).
fn tee(rows: SendableRecordBatchStream, copy: mpsc::Sender<Feed>) -> SendableRecordBatchStream {
    use futures::StreamExt;
    let schema = rows.schema();
    let teed = rows.then(move |item| {
        let copy = copy.clone();
        async move {
            if let Ok(batch) = &item {
                let _ = copy.send(Feed::Batch(batch.clone())).await;
            }
            item
        }
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, teed))
}

/// The reader's batches, `first` then what the channel brings, as one stream.
fn incoming(first: RecordBatch, rx: mpsc::Receiver<Feed>) -> SendableRecordBatchStream {
    let schema = first.schema();
    let stream = futures::stream::unfold(Some((Some(first), rx)), |state| async move {
        let (first, mut rx) = state?;
        if let Some(batch) = first {
            return Some((Ok(batch), Some((None, rx))));
        }
        match rx.recv().await {
            Some(Feed::Batch(batch)) => Some((Ok(batch), Some((None, rx)))),
            Some(Feed::Done) => None,
            Some(Feed::Failed(message)) => Some((Err(DataFusionError::Execution(message)), None)),
            None => Some((Err(DataFusionError::Execution("the landing file reader stopped early".into())), None)),
        }
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, stream))
}

pub(super) fn hash_batches(batches: &[RecordBatch]) -> String {
    let mut hasher = Sha256::new();
    for batch in batches {
        for column in batch.columns() {
            let data = column.to_data();
            for buffer in data.buffers() {
                hasher.update(buffer.as_slice());
            }
        }
    }
    hex::encode(hasher.finalize())
}

/// Add the bronze ingest metadata columns.
pub(super) fn with_metadata(batch: RecordBatch, run_id: &str, file: &str, hash: &str, ingested_at: i64) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    Stamp::new(run_id, file, hash, ingested_at).apply(batch)
}

/// The bronze ingest metadata of one file's rows. Its columns are the same
/// on every row, so they are built once, as long as the longest batch seen,
/// and every batch gets a slice of them: the ~130 bytes a row they would
/// take as text (as much as a lineitem row itself) are shared, not copied
/// into each batch in flight.
pub(super) struct Stamp {
    run_id: String,
    file: String,
    hash: String,
    ingested_at: i64,
    columns: [ArrayRef; 4],
}

impl Stamp {
    pub(super) fn new(run_id: &str, file: &str, hash: &str, ingested_at: i64) -> Stamp {
        let mut stamp = Stamp {
            run_id: run_id.to_string(),
            file: file.to_string(),
            hash: hash.to_string(),
            ingested_at,
            columns: std::array::from_fn(|_| Arc::new(StringArray::from(Vec::<&str>::new())) as ArrayRef),
        };
        // Sized by the first batch (a preview's few rows build no more).
        stamp.grow(0);
        stamp
    }

    fn grow(&mut self, n: usize) {
        let text = |v: &str| Arc::new(StringArray::from_iter_values(std::iter::repeat_n(v, n))) as ArrayRef;
        self.columns = [
            text(&self.run_id),
            text(&self.file),
            text(&self.hash),
            Arc::new(TimestampMicrosecondArray::from(vec![self.ingested_at; n]).with_timezone("UTC")),
        ];
    }

    /// `batch` with the metadata columns, `_row_number` last.
    pub(super) fn apply(&mut self, batch: RecordBatch) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
        let n = batch.num_rows();
        if self.columns[0].len() < n {
            self.grow(n);
        }
        let schema = batch.schema();
        let mut fields: Vec<Field> = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        let mut row_number: Option<ArrayRef> = None;
        for (field, column) in schema.fields().iter().zip(batch.columns()) {
            if field.name() == "_row_number" {
                row_number = Some(column.clone());
            } else {
                fields.push(field.as_ref().clone());
                columns.push(column.clone());
            }
        }
        fields.push(Field::new("_run_id", DataType::Utf8, false));
        fields.push(Field::new("_source_file", DataType::Utf8, false));
        fields.push(Field::new("_source_hash", DataType::Utf8, false));
        fields.push(Field::new("_ingested_at", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false));
        columns.extend(self.columns.iter().map(|c| c.slice(0, n)));
        fields.push(Field::new("_row_number", DataType::Int64, false));
        columns.push(row_number.unwrap_or_else(|| Arc::new(datafusion::arrow::array::Int64Array::from_iter_values(1..=n as i64))));
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
    }
}
