//! Spreadsheets (xlsx, xls, xlsb, ods) through calamine: a sheet by name or
//! index, title rows above the header, blank and merged cells (NULL except
//! the merge's top-left cell), dates stored as serial numbers rendered as ISO
//! 8601. Every column is read as text, exactly as the cell shows its value.

use std::io::Cursor;
use std::sync::Arc;

use calamine::{Data, Reader, Xlsx, open_workbook_auto_from_rs};
use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};

use super::{SourceError, file_error, header_names, text_schema};
use crate::spec::{ExcelOptions, Sheet};

pub fn read(options: &ExcelOptions, name: &str, bytes: &[u8], max_rows: Option<usize>) -> Result<Vec<RecordBatch>, SourceError> {
    let grid = if bytes.starts_with(b"PK") && looks_like_xlsx(bytes) {
        xlsx_grid(options, name, bytes, max_rows)?
    } else {
        range_grid(options, name, bytes)?
    };
    to_batch(options, name, grid, max_rows)
}

/// The used cells of the chosen sheet, row by row: each row's absolute
/// (0-based) index and its cells from the used area's first column on.
struct Grid {
    sheet: String,
    rows: Vec<(u32, Vec<Data>)>,
}

fn choose_sheet(options: &ExcelOptions, name: &str, sheets: &[String]) -> Result<String, SourceError> {
    match &options.sheet {
        None => sheets.first().cloned(),
        Some(Sheet::Name(wanted)) => sheets.iter().find(|s| *s == wanted).cloned(),
        Some(Sheet::Index(i)) => sheets.get(*i).cloned(),
    }
    .ok_or_else(|| {
        file_error(
            name,
            format!("sheet {:?} not found; the workbook has {:?}", options.sheet, sheets),
        )
    })
}

fn looks_like_xlsx(bytes: &[u8]) -> bool {
    // An .xlsx is a zip holding xl/workbook.xml (.ods and .xlsb are zips too).
    bytes.windows(b"xl/workbook.xml".len()).any(|w| w == b"xl/workbook.xml")
}

/// Any spreadsheet calamine reads, through a whole-sheet range.
fn range_grid(options: &ExcelOptions, name: &str, bytes: &[u8]) -> Result<Grid, SourceError> {
    let mut workbook = open_workbook_auto_from_rs(Cursor::new(bytes.to_vec()))
        .map_err(|e| file_error(name, format!("not a readable spreadsheet: {e}")))?;
    let sheet = choose_sheet(options, name, &workbook.sheet_names())?;
    let range = workbook
        .worksheet_range(&sheet)
        .map_err(|e| file_error(name, format!("sheet {sheet}: {e}")))?;
    let first_row = range.start().map_or(0, |(row, _)| row);
    let rows = range
        .rows()
        .enumerate()
        .map(|(offset, row)| (first_row + offset as u32, row.to_vec()))
        .collect();
    Ok(Grid { sheet, rows })
}

/// An .xlsx sheet streamed cell by cell, stopping once the header and
/// `max_rows` non-blank rows below it have been read.
fn xlsx_grid(options: &ExcelOptions, name: &str, bytes: &[u8], max_rows: Option<usize>) -> Result<Grid, SourceError> {
    let mut workbook: Xlsx<_> = Xlsx::new(Cursor::new(bytes))
        .map_err(|e| file_error(name, format!("not a readable spreadsheet: {e}")))?;
    let sheet = choose_sheet(options, name, &workbook.sheet_names())?;
    let header = options.header_row.saturating_sub(1) as u32;
    let mut cells = workbook
        .worksheet_cells_reader(&sheet)
        .map_err(|e| file_error(name, format!("sheet {sheet}: {e}")))?;
    let mut sparse: Vec<(u32, Vec<(u32, Data)>)> = Vec::new();
    let mut data_rows = 0usize;
    while let Some(cell) = cells.next_cell().map_err(|e| file_error(name, format!("sheet {sheet}: {e}")))? {
        let value = Data::from(cell.get_value().clone());
        if matches!(value, Data::Empty) {
            continue;
        }
        let (row, col) = cell.get_position();
        if sparse.last().is_none_or(|(r, _)| *r != row) {
            if let Some(max) = max_rows
                && let Some((last, cells)) = sparse.last()
                && *last > header
                && cells.iter().any(|(_, v)| is_value(options, v))
            {
                data_rows += 1;
                if data_rows >= max {
                    break;
                }
            }
            sparse.push((row, Vec::new()));
        }
        sparse.last_mut().expect("pushed above").1.push((col, value));
    }
    // Columns start at the first used column, as in a whole-sheet range.
    let first_col = sparse.iter().flat_map(|(_, cells)| cells.iter().map(|(c, _)| *c)).min().unwrap_or(0);
    let width = sparse
        .iter()
        .flat_map(|(_, cells)| cells.iter().map(|(c, _)| *c))
        .max()
        .map_or(0, |last| (last - first_col + 1) as usize);
    let mut rows = Vec::with_capacity(sparse.len());
    let mut previous: Option<u32> = None;
    for (row, cells) in sparse {
        // Rows without cells between used rows are blank rows of the range.
        if let Some(p) = previous {
            for blank in p + 1..row {
                rows.push((blank, vec![Data::Empty; width]));
            }
        }
        previous = Some(row);
        let mut values = vec![Data::Empty; width];
        for (col, value) in cells {
            values[(col - first_col) as usize] = value;
        }
        rows.push((row, values));
    }
    Ok(Grid { sheet, rows })
}

/// Whether a cell holds a value (not blank, not an error, not a null marker).
fn is_value(options: &ExcelOptions, cell: &Data) -> bool {
    cell_text(cell).is_some_and(|t| !options.null_values.iter().any(|n| n == t.trim()))
}

fn to_batch(options: &ExcelOptions, name: &str, grid: Grid, max_rows: Option<usize>) -> Result<Vec<RecordBatch>, SourceError> {
    let Grid { sheet, rows } = grid;
    if rows.is_empty() {
        return Err(file_error(name, format!("sheet {sheet} is empty")));
    }
    // Absolute (1-based) sheet row of the header; rows above are titles.
    let header_row = options.header_row as i64 - 1;
    let Some(header_at) = rows.iter().position(|(row, _)| *row as i64 == header_row) else {
        return Err(file_error(
            name,
            format!("sheet {sheet} has no row {} for the header", options.header_row),
        ));
    };
    let names = header_names(rows[header_at].1.iter().map(cell_text));
    let schema = text_schema(&names);
    let mut columns: Vec<Vec<Option<String>>> = vec![Vec::new(); names.len()];
    let mut numbers = Vec::new();
    for (row, cells) in rows.iter().skip(header_at + 1) {
        if max_rows.is_some_and(|max| numbers.len() >= max) {
            break;
        }
        let values: Vec<Option<String>> = cells
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
        numbers.push(*row as i64 + 1);
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
