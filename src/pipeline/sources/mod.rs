//! One reader per source format. File readers turn a landing file's bytes
//! into Arrow batches: CSV and spreadsheets as text columns (bronze is a
//! faithful copy; silver rules give types), Parquet and JSON with their own
//! types. Each batch carries `_row_number`: where the row is in the file.

mod csv;
mod excel;
mod json;
mod parquet;
pub mod pgoutput;
mod postgres;
pub mod postgres_cdc;

use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};

pub use postgres::{DateWindow, read_postgres};

/// Rows per batch a source hands on.
pub const BATCH_ROWS: usize = 8192;

use crate::spec::SourceFormat;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{file}: {message}")]
    File { file: String, message: String },
    #[error("postgres source: {0}")]
    Postgres(String),
    /// The source could not be reached or dropped the connection: worth
    /// trying again later (a run's `retries` do).
    #[error("postgres source unreachable: {0}")]
    Unreachable(String),
}

pub fn file_error(file: &str, message: impl Into<String>) -> SourceError {
    SourceError::File {
        file: file.to_string(),
        message: message.into(),
    }
}

/// Read one landing file. `name` is used in messages.
pub fn read_file(format: &SourceFormat, name: &str, bytes: &[u8]) -> Result<Vec<RecordBatch>, SourceError> {
    read_file_head(format, name, bytes, None)
}

/// Read one landing file, handing its batches to `sink` in file order as
/// they are read (CSV streams them as it parses; other formats are read
/// whole first).
pub fn read_file_into(
    format: &SourceFormat,
    name: &str,
    bytes: &[u8],
    sink: &mut dyn FnMut(RecordBatch) -> Result<(), SourceError>,
) -> Result<(), SourceError> {
    match format {
        SourceFormat::Csv(options) => csv::read_into(options, name, bytes, None, sink),
        _ => read_file(format, name, bytes)?.into_iter().try_for_each(sink),
    }
}

/// [`read_file_into`] from an open file: a CSV streams through, a few
/// chunks in memory at a time; other formats are read whole first.
pub fn read_open_file_into(
    format: &SourceFormat,
    name: &str,
    file: &mut (dyn std::io::Read + Send),
    length: u64,
    sink: &mut dyn FnMut(RecordBatch) -> Result<(), SourceError>,
) -> Result<(), SourceError> {
    match format {
        SourceFormat::Csv(options) => csv::read_stream_into(options, name, file, length, sink),
        _ => {
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map_err(|e| file_error(name, format!("reading the file: {e}")))?;
            read_file_into(format, name, &bytes, sink)
        }
    }
}

/// Read the first `max_rows` data rows of a landing file (all with `None`).
/// CSV and spreadsheets stop reading there; other formats are read whole
/// and cut.
pub fn read_file_head(
    format: &SourceFormat,
    name: &str,
    bytes: &[u8],
    max_rows: Option<usize>,
) -> Result<Vec<RecordBatch>, SourceError> {
    let batches = match format {
        SourceFormat::Csv(options) => csv::read(options, name, bytes, max_rows),
        SourceFormat::Excel(options) => excel::read(options, name, bytes, max_rows),
        SourceFormat::Parquet => parquet::read(name, bytes),
        SourceFormat::Json => json::read(name, bytes, false),
        SourceFormat::Ndjson => json::read(name, bytes, true),
        SourceFormat::Postgres(_) | SourceFormat::PostgresCdc(_) => Err(file_error(name, "a database source has no files")),
    }?;
    let Some(mut left) = max_rows else { return Ok(batches) };
    Ok(batches
        .into_iter()
        .map(|batch| {
            let take = batch.num_rows().min(left);
            left -= take;
            batch.slice(0, take)
        })
        .collect())
}

/// Column names as a spreadsheet or CSV header gives them: blanks become
/// `column_<n>`, repeats get `_2`, `_3`, ...
pub fn header_names(raw: impl IntoIterator<Item = Option<String>>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (i, name) in raw.into_iter().enumerate() {
        let base = name
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("column_{}", i + 1));
        let mut candidate = base.clone();
        let mut n = 2;
        while names.contains(&candidate) {
            candidate = format!("{base}_{n}");
            n += 1;
        }
        names.push(candidate);
    }
    names
}

/// Text columns named `names`, plus `_row_number`.
pub fn text_schema(names: &[String]) -> Arc<Schema> {
    let mut fields: Vec<Field> = names.iter().map(|n| Field::new(n, DataType::Utf8, true)).collect();
    fields.push(Field::new("_row_number", DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

/// Append `_row_number` (first row numbered `first`) to batches without it.
pub fn number_rows(batches: Vec<RecordBatch>, first: i64) -> Result<Vec<RecordBatch>, datafusion::arrow::error::ArrowError> {
    let mut next = first;
    batches
        .into_iter()
        .map(|batch| {
            let n = batch.num_rows() as i64;
            let numbers = Int64Array::from_iter_values(next..next + n);
            next += n;
            let mut fields: Vec<Arc<Field>> = batch.schema().fields().iter().cloned().collect();
            fields.push(Arc::new(Field::new("_row_number", DataType::Int64, false)));
            let mut columns = batch.columns().to_vec();
            columns.push(Arc::new(numbers));
            RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        })
        .collect()
}

/// How to read a file judging by its extension, with default options
/// (first sheet, header on the first row, comma-separated UTF-8).
pub fn format_for_path(path: &str) -> Option<SourceFormat> {
    let extension = path.rsplit('.').next()?.to_ascii_lowercase();
    Some(match extension.as_str() {
        "csv" | "tsv" | "txt" => SourceFormat::Csv(crate::spec::CsvOptions {
            delimiter: if extension == "tsv" { b'\t' } else { b',' },
            quote: b'"',
            encoding: encoding_rs::UTF_8,
            null_values: vec![String::new()],
            header_row: 1,
        }),
        "xlsx" | "xlsm" | "xlsb" | "xls" | "ods" => SourceFormat::Excel(crate::spec::ExcelOptions {
            sheet: None,
            header_row: 1,
            null_values: vec![String::new()],
        }),
        "parquet" => SourceFormat::Parquet,
        "json" => SourceFormat::Json,
        "ndjson" | "jsonl" => SourceFormat::Ndjson,
        _ => return None,
    })
}
