//! JSON (an array of objects, or one object) and NDJSON (one object per
//! line), with types inferred from the data.

use std::io::{BufReader, Cursor};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::json::reader::infer_json_schema_from_seekable;

use super::{SourceError, file_error, number_rows};

pub fn read(name: &str, bytes: &[u8], lines: bool) -> Result<Vec<RecordBatch>, SourceError> {
    let ndjson: Vec<u8> = if lines {
        bytes.to_vec()
    } else {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| file_error(name, format!("invalid JSON: {e}")))?;
        let rows = match value {
            serde_json::Value::Array(rows) => rows,
            object @ serde_json::Value::Object(_) => vec![object],
            _ => return Err(file_error(name, "expected an array of objects or one object")),
        };
        let mut out = Vec::new();
        for row in rows {
            if !row.is_object() {
                return Err(file_error(name, "every element of the array must be an object"));
            }
            serde_json::to_writer(&mut out, &row).map_err(|e| file_error(name, e.to_string()))?;
            out.push(b'\n');
        }
        out
    };
    if ndjson.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Vec::new());
    }
    let mut cursor = BufReader::new(Cursor::new(&ndjson));
    let (schema, _) = infer_json_schema_from_seekable(&mut cursor, None)
        .map_err(|e| file_error(name, format!("cannot infer a schema: {e}")))?;
    let reader = ReaderBuilder::new(Arc::new(schema))
        .with_batch_size(super::BATCH_ROWS)
        .build(BufReader::new(Cursor::new(&ndjson)))
        .map_err(|e| file_error(name, e.to_string()))?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(name, e.to_string()))?;
    number_rows(batches, 1).map_err(|e| file_error(name, e.to_string()))
}
