//! CSV/TSV: any encoding encoding_rs knows, title rows above the header,
//! quoting, null markers. Every column is read as text.
//!
//! A large file is parsed in parallel and streamed: the rows below the
//! header are cut into chunks of ~32 MB, each cut at a line end outside
//! quotes (an even number of quote characters before it); one worker per
//! core parses every n-th chunk, and the chunks are handed on in file order
//! with their row numbers joined up, a few chunks in memory at a time.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayBuilder, ArrayRef, Int64Array, Int64Builder, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::SchemaRef;

use super::{SourceError, file_error, header_names, text_schema};
use crate::spec::CsvOptions;

const BATCH: usize = 8192;
/// Below this many bytes of rows, one thread parses the whole file.
const PARALLEL_MIN_BYTES: usize = 8 << 20;
/// A large file is parsed in chunks of about this size (at least four per
/// core), so that only a few chunks are in memory at once while the batches
/// stream on.
const CHUNK_BYTES: usize = 32 << 20;

/// Every row of the file (the first `max_rows` when given), as batches.
pub fn read(options: &CsvOptions, name: &str, bytes: &[u8], max_rows: Option<usize>) -> Result<Vec<RecordBatch>, SourceError> {
    let mut batches = Vec::new();
    read_into(options, name, bytes, max_rows, &mut |batch| {
        batches.push(batch);
        Ok(())
    })?;
    Ok(batches)
}

/// Hand the file's rows to `sink` in file order, batch by batch, as they are
/// parsed. An empty file gives one empty batch (its header's columns).
pub fn read_into(
    options: &CsvOptions,
    name: &str,
    bytes: &[u8],
    max_rows: Option<usize>,
    sink: &mut dyn FnMut(RecordBatch) -> Result<(), SourceError>,
) -> Result<(), SourceError> {
    let (text, _, had_errors) = options.encoding.decode(bytes);
    if had_errors && options.encoding == encoding_rs::UTF_8 {
        return Err(file_error(
            name,
            "the file is not valid UTF-8; set `encoding: latin1` (or windows-1252) in the spec's source",
        ));
    }
    let mut reader = reader(options, text.as_bytes());
    let mut record = ::csv::StringRecord::new();
    let mut line = 0i64;
    // Rows above the header are titles and notes.
    for _ in 1..options.header_row {
        line += 1;
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => return Err(file_error(name, format!("the file ends before header_row {}", options.header_row))),
            Err(err) => return Err(file_error(name, format!("row {line}: {err}"))),
        }
    }
    match reader.read_record(&mut record) {
        Ok(true) => {}
        Ok(false) => return Err(file_error(name, "the file is empty: no header row")),
        Err(err) => return Err(file_error(name, format!("header: {err}"))),
    }
    line += 1;
    let names = header_names(record.iter().map(|h| Some(h.trim_start_matches('\u{feff}').to_string())));
    let schema = text_schema(&names);
    let body = &text.as_bytes()[reader.position().byte() as usize..];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunks = if max_rows.is_none() && threads > 1 && body.len() >= PARALLEL_MIN_BYTES {
        split(body, options.quote, (threads * 4).max(body.len() / CHUNK_BYTES))
    } else {
        vec![body]
    };
    let mut emitted = false;
    // Row numbers of each chunk continue from the previous chunks' records.
    let mut emit = |result: Result<Parsed, (i64, String)>, line: &mut i64| -> Result<(), SourceError> {
        let piece = result.map_err(|(at, message)| file_error(name, format!("row {}{message}", *line + at)))?;
        for batch in piece.batches {
            sink(renumbered(batch, *line).map_err(|e| file_error(name, e.to_string()))?)?;
            emitted = true;
        }
        *line += piece.records;
        Ok(())
    };
    if chunks.len() == 1 {
        emit(parse_rows(options, &schema, chunks[0], max_rows), &mut line)?;
    } else {
        // Worker w parses chunks w, w + threads, ...; each hands over one
        // parsed chunk at a time, and they are taken in file order.
        let schema = &schema;
        let chunks = &chunks;
        std::thread::scope(|scope| {
            let parsed: Vec<std::sync::mpsc::Receiver<Result<Parsed, (i64, String)>>> = (0..threads)
                .map(|worker| {
                    let (tx, rx) = std::sync::mpsc::sync_channel(1);
                    scope.spawn(move || {
                        for chunk in chunks.iter().skip(worker).step_by(threads) {
                            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                parse_rows(options, schema, chunk, None)
                            }))
                            .unwrap_or_else(|_| Err((0, ": the CSV parser panicked".into())));
                            let failed = result.is_err();
                            if tx.send(result).is_err() || failed {
                                break;
                            }
                        }
                    });
                    rx
                })
                .collect();
            for i in 0..chunks.len() {
                let result = parsed[i % threads]
                    .recv()
                    .unwrap_or_else(|_| Err((0, ": the CSV parser stopped".into())));
                emit(result, &mut line)?;
            }
            Ok::<(), SourceError>(())
        })?;
    }
    if !emitted {
        sink(RecordBatch::new_empty(schema))?;
    }
    Ok(())
}

fn reader<'a>(options: &CsvOptions, bytes: &'a [u8]) -> ::csv::Reader<&'a [u8]> {
    ::csv::ReaderBuilder::new()
        .delimiter(options.delimiter)
        .quote(options.quote)
        .has_headers(false)
        .flexible(true)
        .from_reader(bytes)
}

/// `body` cut into up to `parts` pieces, each ending at a line end that is
/// not inside a quoted value.
fn split(body: &[u8], quote: u8, parts: usize) -> Vec<&[u8]> {
    let mut pieces = Vec::with_capacity(parts);
    let mut start = 0;
    let mut quotes_before = 0usize; // quote characters in body[..start]
    for part in 1..parts {
        let target = body.len() * part / parts;
        if target <= start {
            continue;
        }
        let mut quoted = (quotes_before + memchr::memchr_iter(quote, &body[start..target]).count()) % 2 == 1;
        let mut cut = None;
        for (i, &b) in body[target..].iter().enumerate() {
            if b == quote {
                quoted = !quoted;
            } else if b == b'\n' && !quoted {
                cut = Some(target + i + 1);
                break;
            }
        }
        let Some(end) = cut else { break };
        quotes_before += memchr::memchr_iter(quote, &body[start..end]).count();
        pieces.push(&body[start..end]);
        start = end;
    }
    pieces.push(&body[start..]);
    pieces
}

/// One piece's rows; `_row_number` counts from 1 within the piece.
struct Parsed {
    batches: Vec<RecordBatch>,
    /// Records read, blank ones included (they keep their row number).
    records: i64,
}

fn parse_rows(options: &CsvOptions, schema: &SchemaRef, piece: &[u8], max_rows: Option<usize>) -> Result<Parsed, (i64, String)> {
    let width = schema.fields().len() - 1;
    let mut reader = reader(options, piece);
    let mut record = ::csv::StringRecord::new();
    let mut batches = Vec::new();
    // Values go straight into Arrow builders: no String per cell.
    let mut columns: Vec<StringBuilder> = (0..width).map(|_| StringBuilder::with_capacity(BATCH, BATCH * 16)).collect();
    let mut numbers = Int64Builder::with_capacity(BATCH);
    let flush = |columns: &mut Vec<StringBuilder>, numbers: &mut Int64Builder| -> Result<RecordBatch, String> {
        let mut arrays: Vec<ArrayRef> = columns.iter_mut().map(|c| Arc::new(c.finish()) as ArrayRef).collect();
        arrays.push(Arc::new(numbers.finish()));
        RecordBatch::try_new(schema.clone(), arrays).map_err(|e| e.to_string())
    };
    let mut line = 0i64;
    let mut read = 0usize;
    loop {
        if max_rows.is_some_and(|max| read >= max) {
            break;
        }
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(err) => return Err((line + 1, format!(": {err}"))),
        }
        line += 1;
        if record.iter().all(|v| v.trim().is_empty()) {
            continue;
        }
        if record.len() > width {
            return Err((line, format!(" has {} fields but the header has {width}", record.len())));
        }
        for (i, column) in columns.iter_mut().enumerate() {
            match record.get(i) {
                Some(v) if !options.null_values.iter().any(|n| n == v.trim()) => column.append_value(v),
                _ => column.append_null(),
            }
        }
        numbers.append_value(line);
        read += 1;
        if numbers.len() == BATCH {
            batches.push(flush(&mut columns, &mut numbers).map_err(|e| (line, format!(": {e}")))?);
        }
    }
    if !numbers.is_empty() {
        batches.push(flush(&mut columns, &mut numbers).map_err(|e| (line, format!(": {e}")))?);
    }
    Ok(Parsed { batches, records: line })
}

/// `batch` with `offset` added to its `_row_number` (the last column).
fn renumbered(batch: RecordBatch, offset: i64) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    let last = batch.num_columns() - 1;
    let numbers = batch
        .column(last)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("_row_number is Int64");
    let shifted: Int64Array = numbers.values().iter().map(|n| n + offset).collect::<Vec<_>>().into();
    let mut columns = batch.columns().to_vec();
    columns[last] = Arc::new(shifted);
    RecordBatch::try_new(batch.schema(), columns)
}
