//! CSV/TSV: any encoding encoding_rs knows, title rows above the header,
//! quoting, null markers. Every column is read as text.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};

use super::{SourceError, file_error, header_names, text_schema};
use crate::spec::CsvOptions;

pub fn read(options: &CsvOptions, name: &str, bytes: &[u8]) -> Result<Vec<RecordBatch>, SourceError> {
    let (text, _, had_errors) = options.encoding.decode(bytes);
    if had_errors && options.encoding == encoding_rs::UTF_8 {
        return Err(file_error(
            name,
            "the file is not valid UTF-8; set `encoding: latin1` (or windows-1252) in the spec's source",
        ));
    }
    let mut reader = ::csv::ReaderBuilder::new()
        .delimiter(options.delimiter)
        .quote(options.quote)
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut records = reader.records();
    let mut line = 0i64;
    // Rows above the header are titles and notes.
    for _ in 1..options.header_row {
        line += 1;
        if records.next().is_none() {
            return Err(file_error(name, format!("the file ends before header_row {}", options.header_row)));
        }
    }
    let header = match records.next() {
        Some(Ok(h)) => h,
        Some(Err(err)) => return Err(file_error(name, format!("header: {err}"))),
        None => return Err(file_error(name, "the file is empty: no header row")),
    };
    line += 1;
    let names = header_names(header.iter().map(|h| Some(h.trim_start_matches('\u{feff}').to_string())));
    let schema = text_schema(&names);
    let width = names.len();
    let mut batches = Vec::new();
    let mut columns: Vec<Vec<Option<String>>> = vec![Vec::new(); width];
    let mut numbers = Vec::new();
    let flush = |columns: &mut Vec<Vec<Option<String>>>, numbers: &mut Vec<i64>| -> Result<RecordBatch, SourceError> {
        let mut arrays: Vec<ArrayRef> = columns
            .iter_mut()
            .map(|c| Arc::new(StringArray::from(std::mem::take(c))) as ArrayRef)
            .collect();
        arrays.push(Arc::new(Int64Array::from(std::mem::take(numbers))));
        RecordBatch::try_new(schema.clone(), arrays).map_err(|e| file_error(name, e.to_string()))
    };
    for record in records {
        line += 1;
        let record = record.map_err(|err| file_error(name, format!("row {line}: {err}")))?;
        if record.iter().all(|v| v.trim().is_empty()) {
            continue;
        }
        if record.len() > width {
            return Err(file_error(
                name,
                format!("row {line} has {} fields but the header has {width}", record.len()),
            ));
        }
        for (i, column) in columns.iter_mut().enumerate() {
            let value = record.get(i);
            column.push(match value {
                Some(v) if !options.null_values.iter().any(|n| n == v.trim()) => Some(v.to_string()),
                _ => None,
            });
        }
        numbers.push(line);
        if numbers.len() == 8192 {
            batches.push(flush(&mut columns, &mut numbers)?);
        }
    }
    if !numbers.is_empty() || batches.is_empty() {
        batches.push(flush(&mut columns, &mut numbers)?);
    }
    Ok(batches)
}
