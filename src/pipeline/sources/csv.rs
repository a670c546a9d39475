//! CSV/TSV: any encoding encoding_rs knows, title rows above the header,
//! quoting, null markers. Every column is read as text.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayBuilder, ArrayRef, Int64Builder, RecordBatch, StringBuilder};

use super::{SourceError, file_error, header_names, text_schema};
use crate::spec::CsvOptions;

pub fn read(options: &CsvOptions, name: &str, bytes: &[u8], max_rows: Option<usize>) -> Result<Vec<RecordBatch>, SourceError> {
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
    let mut record = ::csv::StringRecord::new();
    let mut next = |record: &mut ::csv::StringRecord| reader.read_record(record);
    let mut line = 0i64;
    // Rows above the header are titles and notes.
    for _ in 1..options.header_row {
        line += 1;
        match next(&mut record) {
            Ok(true) => {}
            Ok(false) => return Err(file_error(name, format!("the file ends before header_row {}", options.header_row))),
            Err(err) => return Err(file_error(name, format!("row {line}: {err}"))),
        }
    }
    match next(&mut record) {
        Ok(true) => {}
        Ok(false) => return Err(file_error(name, "the file is empty: no header row")),
        Err(err) => return Err(file_error(name, format!("header: {err}"))),
    }
    line += 1;
    let names = header_names(record.iter().map(|h| Some(h.trim_start_matches('\u{feff}').to_string())));
    let schema = text_schema(&names);
    let width = names.len();
    const BATCH: usize = 8192;
    let mut batches = Vec::new();
    // Values go straight into Arrow builders: no String per cell.
    let new_columns = || (0..width).map(|_| StringBuilder::with_capacity(BATCH, BATCH * 16)).collect::<Vec<_>>();
    let mut columns = new_columns();
    let mut numbers = Int64Builder::with_capacity(BATCH);
    let flush = |columns: &mut Vec<StringBuilder>, numbers: &mut Int64Builder| -> Result<RecordBatch, SourceError> {
        let mut arrays: Vec<ArrayRef> = columns.iter_mut().map(|c| std::sync::Arc::new(c.finish()) as ArrayRef).collect();
        arrays.push(Arc::new(numbers.finish()));
        RecordBatch::try_new(schema.clone(), arrays).map_err(|e| file_error(name, e.to_string()))
    };
    let mut read = 0usize;
    loop {
        if max_rows.is_some_and(|max| read >= max) {
            break;
        }
        match next(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(err) => return Err(file_error(name, format!("row {}: {err}", line + 1))),
        }
        line += 1;
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
            match record.get(i) {
                Some(v) if !options.null_values.iter().any(|n| n == v.trim()) => column.append_value(v),
                _ => column.append_null(),
            }
        }
        numbers.append_value(line);
        read += 1;
        if numbers.len() == BATCH {
            batches.push(flush(&mut columns, &mut numbers)?);
        }
    }
    if !numbers.is_empty() || batches.is_empty() {
        batches.push(flush(&mut columns, &mut numbers)?);
    }
    Ok(batches)
}
