//! CSV/TSV: any encoding encoding_rs knows, title rows above the header,
//! quoting, null markers. Every column is read as text.
//!
//! A large file is parsed in parallel and streamed: the rows below the
//! header are cut into chunks of at most 4 MB, each cut at a line end outside
//! quotes (an even number of quote characters before it); one worker per
//! core parses every n-th chunk, and the chunks are handed on in file order
//! with their row numbers joined up, a few chunks in memory at a time.

use std::borrow::Cow;
use std::io::Read;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayBuilder, ArrayRef, Int64Array, Int64Builder, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::SchemaRef;

use super::{BATCH_ROWS as BATCH, SourceError, file_error, header_names, text_schema};
use crate::spec::CsvOptions;

/// Below this many bytes of rows, one thread parses the whole file.
const PARALLEL_MIN_BYTES: usize = 8 << 20;
/// A large file is parsed in chunks of about this size (at least four per
/// core), so that only a few chunks are in memory at once while the batches
/// stream on. A chunk is held about ten times over at the worst (as text
/// waiting and being parsed and as parsed batches, per worker), so this
/// bounds what parsing holds: ~45 MB on two cores (32 MB chunks held
/// ~370 MB, most of what sank a 3 GB file under a 1 GiB cap); a chunk is
/// still ~30,000 lineitem rows.
const CHUNK_BYTES: usize = 4 << 20;
/// A file read as it is parsed comes in chunks of no less than this.
const MIN_CHUNK_BYTES: usize = 1 << 20;

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
        return Err(not_utf8(name));
    }
    let (schema, at, line) = header(options, name, text.as_bytes(), true)?;
    let body = &text.as_bytes()[at..];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunks = if max_rows.is_none() && threads > 1 && body.len() >= PARALLEL_MIN_BYTES {
        split(body, options.quote, (threads * 4).max(body.len() / CHUNK_BYTES))
    } else {
        vec![body]
    };
    if let [only] = chunks[..] {
        let mut line = line;
        let emitted = emit(name, parse_rows(options, &schema, only, max_rows), &mut line, sink)?;
        if !emitted {
            sink(RecordBatch::new_empty(schema))?;
        }
        return Ok(());
    }
    parse_all(options, name, &schema, line, chunks.into_iter().map(|c| Ok(Cow::Borrowed(c))), sink)
}

/// [`read_into`] for a file read from `input` a chunk at a time (cut at
/// line ends outside quotes), so that a file larger than the memory the
/// process may use streams through: only a few chunks are held at once.
/// UTF-8 files stream; a file in another encoding is read whole first.
pub fn read_stream_into(
    options: &CsvOptions,
    name: &str,
    input: &mut (dyn std::io::Read + Send),
    length: u64,
    sink: &mut dyn FnMut(RecordBatch) -> Result<(), SourceError>,
) -> Result<(), SourceError> {
    if options.encoding != encoding_rs::UTF_8 {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes).map_err(|e| file_error(name, format!("reading the file: {e}")))?;
        return read_into(options, name, &bytes, None, sink);
    }
    // At least four chunks per core, so a mid-sized file is parsed on every
    // core too, and no more than CHUNK_BYTES each.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let size = (length / (threads * 4)).clamp(MIN_CHUNK_BYTES as u64, CHUNK_BYTES as u64) as usize;
    let mut chunks = Chunks { input, quote: options.quote, size, carry: Vec::new(), done: false };
    let first = match chunks.next() {
        Some(first) => first.map_err(|e| file_error(name, e))?,
        None => Vec::new(),
    };
    std::str::from_utf8(&first).map_err(|_| not_utf8(name))?;
    let more = !chunks.done || !chunks.carry.is_empty();
    let (schema, at, line) = header(options, name, &first, !more)?;
    let body = first[at..].to_vec();
    let rest = chunks.map(|chunk| {
        let chunk = chunk?;
        std::str::from_utf8(&chunk).map_err(|_| not_utf8(name).to_string())?;
        Ok(Cow::Owned(chunk))
    });
    parse_all(options, name, &schema, line, std::iter::once(Ok(Cow::Owned(body))).chain(rest), sink)
}

fn not_utf8(name: &str) -> SourceError {
    file_error(name, "the file is not valid UTF-8; set `encoding: latin1` (or windows-1252) in the spec's source")
}

/// The columns from the header row (after `header_row - 1` title rows) of
/// `text`, where the rows below it start, and the header's line number.
/// `whole`: `text` is the entire file (else its first chunk).
fn header(options: &CsvOptions, name: &str, text: &[u8], whole: bool) -> Result<(SchemaRef, usize, i64), SourceError> {
    let too_long = || file_error(name, format!("the rows down to header_row {} do not fit in the first chunk of the file", options.header_row));
    let mut reader = reader(options, text);
    let mut record = ::csv::StringRecord::new();
    let mut line = 0i64;
    // Rows above the header are titles and notes.
    for _ in 1..options.header_row {
        line += 1;
        match reader.read_record(&mut record) {
            Ok(true) => {}
            Ok(false) if !whole => return Err(too_long()),
            Ok(false) => return Err(file_error(name, format!("the file ends before header_row {}", options.header_row))),
            Err(err) => return Err(file_error(name, format!("row {line}: {err}"))),
        }
    }
    match reader.read_record(&mut record) {
        Ok(true) => {}
        Ok(false) if !whole => return Err(too_long()),
        Ok(false) => return Err(file_error(name, "the file is empty: no header row")),
        Err(err) => return Err(file_error(name, format!("header: {err}"))),
    }
    line += 1;
    let names = header_names(record.iter().map(|h| Some(h.trim_start_matches('\u{feff}').to_string())));
    Ok((text_schema(&names), reader.position().byte() as usize, line))
}

/// Why a chunk gave no rows: a row of it (counted from the chunk's first)
/// does not parse, or the chunk could not be read.
enum ChunkError {
    Row(i64, String),
    Read(String),
}

/// Hand one parsed chunk's batches on, numbering its rows after `line`.
/// Returns whether it had any.
fn emit(
    name: &str,
    result: Result<Parsed, (i64, String)>,
    line: &mut i64,
    sink: &mut dyn FnMut(RecordBatch) -> Result<(), SourceError>,
) -> Result<bool, SourceError> {
    let piece = result.map_err(|(at, message)| file_error(name, format!("row {}{message}", *line + at)))?;
    let any = !piece.batches.is_empty();
    for batch in piece.batches {
        sink(renumbered(batch, *line).map_err(|e| file_error(name, e.to_string()))?)?;
    }
    *line += piece.records;
    Ok(any)
}

/// Parse `chunks` (each ending at a line end outside quotes) on one worker
/// per core and hand their rows to `sink` in file order. Worker w parses
/// chunks w, w + threads, ...; each worker holds at most one chunk waiting,
/// one being parsed and one parsed, so memory stays a few chunks whatever
/// the file's size.
fn parse_all<'a>(
    options: &CsvOptions,
    name: &str,
    schema: &SchemaRef,
    mut line: i64,
    chunks: impl Iterator<Item = Result<Cow<'a, [u8]>, String>> + Send,
    sink: &mut dyn FnMut(RecordBatch) -> Result<(), SourceError>,
) -> Result<(), SourceError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).max(1);
    let mut emitted = false;
    std::thread::scope(|scope| {
        let mut inputs = Vec::with_capacity(threads);
        let mut outputs = Vec::with_capacity(threads);
        for _ in 0..threads {
            let (to_worker, work) = std::sync::mpsc::sync_channel::<Result<Cow<'a, [u8]>, String>>(1);
            let (done, parsed) = std::sync::mpsc::sync_channel::<Result<Parsed, ChunkError>>(1);
            scope.spawn(move || {
                for chunk in work {
                    let result = match chunk {
                        Ok(chunk) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parse_rows(options, schema, &chunk, None)))
                            .unwrap_or_else(|_| Err((0, ": the CSV parser panicked".into())))
                            .map_err(|(at, message)| ChunkError::Row(at, message)),
                        Err(message) => Err(ChunkError::Read(message)),
                    };
                    let failed = result.is_err();
                    if done.send(result).is_err() || failed {
                        break;
                    }
                }
            });
            inputs.push(to_worker);
            outputs.push(parsed);
        }
        // The reader deals the chunks out in turn, as the workers take them.
        scope.spawn(move || {
            for (i, chunk) in chunks.enumerate() {
                let failed = chunk.is_err();
                if inputs[i % threads].send(chunk).is_err() || failed {
                    break;
                }
            }
        });
        for i in 0.. {
            let result = match outputs[i % threads].recv() {
                Ok(result) => result,
                // Every worker's chunks are parsed (or one stopped on an error, handed on before).
                Err(_) => break,
            };
            let result = match result {
                Ok(parsed) => Ok(parsed),
                Err(ChunkError::Row(at, message)) => Err((at, message)),
                Err(ChunkError::Read(message)) => return Err(file_error(name, message)),
            };
            emitted |= emit(name, result, &mut line, sink)?;
        }
        Ok::<(), SourceError>(())
    })?;
    if !emitted {
        sink(RecordBatch::new_empty(schema.clone()))?;
    }
    Ok(())
}

/// A reader's bytes as chunks of at least `size` bytes (the last one
/// shorter), each cut after a line end outside quotes.
struct Chunks<'r> {
    input: &'r mut (dyn std::io::Read + Send),
    quote: u8,
    size: usize,
    /// Bytes read past the last cut.
    carry: Vec<u8>,
    done: bool,
}

impl Iterator for Chunks<'_> {
    type Item = Result<Vec<u8>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if !self.done && self.carry.len() < self.size {
                let want = self.size + (self.size >> 3) - self.carry.len();
                // Exactly what is read: `read_to_end` would grow by doubling.
                self.carry.reserve_exact(want);
                let before = self.carry.len();
                if let Err(e) = (&mut *self.input).take(want as u64).read_to_end(&mut self.carry) {
                    self.done = true;
                    return Some(Err(format!("reading the file: {e}")));
                }
                self.done = self.carry.len() == before;
                continue;
            }
            if self.done {
                return (!self.carry.is_empty()).then(|| Ok(std::mem::take(&mut self.carry)));
            }
            // A chunk starts outside quotes: the last line end with an even
            // number of quote characters before it is where this one ends.
            let mut quoted = false;
            let mut cut = None;
            for i in memchr::memchr2_iter(self.quote, b'\n', &self.carry) {
                if self.carry[i] == self.quote {
                    quoted = !quoted;
                } else if !quoted {
                    cut = Some(i + 1);
                }
            }
            match cut {
                Some(end) => {
                    let rest = self.carry.split_off(end);
                    return Some(Ok(std::mem::replace(&mut self.carry, rest)));
                }
                // One quoted value longer than the buffer: read on.
                None => {
                    let before = self.carry.len();
                    if let Err(e) = (&mut *self.input).take(self.size as u64).read_to_end(&mut self.carry) {
                        self.done = true;
                        return Some(Err(format!("reading the file: {e}")));
                    }
                    self.done = self.carry.len() == before;
                }
            }
        }
    }
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
    // A finished builder starts again from nothing and would grow by
    // doubling (each batch then holding up to twice its text): the next
    // batch of a column is given what the last one took, and a little more.
    let flush = |columns: &mut Vec<StringBuilder>, numbers: &mut Int64Builder| -> Result<RecordBatch, String> {
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(columns.len() + 1);
        for column in columns.iter_mut() {
            let array = column.finish();
            let bytes = array.values().len();
            *column = StringBuilder::with_capacity(BATCH, bytes + bytes / 8);
            arrays.push(Arc::new(array));
        }
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

