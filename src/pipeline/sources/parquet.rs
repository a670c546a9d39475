//! Parquet: read with its own schema.

use bytes::Bytes;
use datafusion::arrow::array::RecordBatch;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{SourceError, file_error, number_rows};

pub fn read(name: &str, bytes: &[u8]) -> Result<Vec<RecordBatch>, SourceError> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::copy_from_slice(bytes))
        .and_then(|b| b.with_batch_size(super::BATCH_ROWS).build())
        .map_err(|e| file_error(name, format!("not a readable parquet file: {e}")))?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(name, e.to_string()))?;
    number_rows(batches, 1).map_err(|e| file_error(name, e.to_string()))
}
