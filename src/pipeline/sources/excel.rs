//! Spreadsheets (xlsx, xls, xlsb, ods) through calamine: a sheet by name or
//! index, title rows above the header, blank and merged cells (NULL except
//! the merge's top-left cell), dates stored as serial numbers rendered as ISO
//! 8601. Every column is read as text, exactly as the cell shows its value.

use std::io::Cursor;
use std::sync::Arc;

use calamine::{Data, Reader, open_workbook_auto_from_rs};
use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};

use super::{SourceError, file_error, header_names, text_schema};
use crate::spec::{ExcelOptions, Sheet};

pub fn read(options: &ExcelOptions, name: &str, bytes: &[u8]) -> Result<Vec<RecordBatch>, SourceError> {
    let mut workbook = open_workbook_auto_from_rs(Cursor::new(bytes.to_vec()))
        .map_err(|e| file_error(name, format!("not a readable spreadsheet: {e}")))?;
    let sheets = workbook.sheet_names();
    let sheet = match &options.sheet {
        None => sheets.first().cloned(),
        Some(Sheet::Name(wanted)) => sheets.iter().find(|s| *s == wanted).cloned(),
        Some(Sheet::Index(i)) => sheets.get(*i).cloned(),
    }
    .ok_or_else(|| {
        file_error(
            name,
            format!("sheet {:?} not found; the workbook has {:?}", options.sheet, sheets),
        )
    })?;
    let range = workbook
        .worksheet_range(&sheet)
        .map_err(|e| file_error(name, format!("sheet {sheet}: {e}")))?;
    let Some((first_row, first_col)) = range.start() else {
        return Err(file_error(name, format!("sheet {sheet} is empty")));
    };
    // Absolute (1-based) sheet row of the header; rows above are titles.
    let header_index = (options.header_row as i64 - 1) - first_row as i64;
    let rows: Vec<&[Data]> = range.rows().collect();
    if header_index < 0 || header_index as usize >= rows.len() {
        return Err(file_error(
            name,
            format!("sheet {sheet} has no row {} for the header", options.header_row),
        ));
    }
    let header = rows[header_index as usize];
    // Columns before the used range's first column do not exist in it.
    let _ = first_col;
    let names = header_names(header.iter().map(cell_text));
    let schema = text_schema(&names);
    let mut columns: Vec<Vec<Option<String>>> = vec![Vec::new(); names.len()];
    let mut numbers = Vec::new();
    for (offset, row) in rows.iter().enumerate().skip(header_index as usize + 1) {
        let values: Vec<Option<String>> = row
            .iter()
            .map(cell_text)
            .map(|v| v.filter(|t| !options.null_values.iter().any(|n| n == t.trim())))
            .collect();
        if values.iter().all(|v| v.is_none()) {
            continue; // blank separator rows
        }
        for (i, column) in columns.iter_mut().enumerate() {
            column.push(values.get(i).cloned().flatten());
        }
        numbers.push(first_row as i64 + offset as i64 + 1);
    }
    let mut arrays: Vec<ArrayRef> = columns
        .into_iter()
        .map(|c| Arc::new(StringArray::from(c)) as ArrayRef)
        .collect();
    arrays.push(Arc::new(Int64Array::from(numbers)));
    let batch = RecordBatch::try_new(schema, arrays).map_err(|e| file_error(name, e.to_string()))?;
    Ok(vec![batch])
}

/// A cell as text; `None` for blanks and error cells.
fn cell_text(cell: &Data) -> Option<String> {
    match cell {
        Data::Empty | Data::Error(_) => None,
        Data::String(s) => Some(s.clone()),
        Data::Int(i) => Some(i.to_string()),
        Data::Float(f) => Some(if f.fract() == 0.0 && f.abs() < 1e15 {
            format!("{}", *f as i64)
        } else {
            format!("{f}")
        }),
        Data::Bool(b) => Some(b.to_string()),
        Data::DateTime(dt) => dt.as_datetime().map(|d| {
            if d.time() == chrono::NaiveTime::MIN {
                d.date().format("%Y-%m-%d").to_string()
            } else {
                d.format("%Y-%m-%dT%H:%M:%S").to_string()
            }
        }),
        Data::DateTimeIso(s) | Data::DurationIso(s) => Some(s.clone()),
    }
}
