//! `files('layer.table')`: the data files of a table's current version
//! (path, bytes, rows, modified, whether it is small); `storage()`: per
//! table the caller may read, its version, files, bytes, rows and how many
//! files are small — what says a table needs `workbench optimize`.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl};
use datafusion::common::plan_err;
use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result};

use super::{Rows, RowsTable, Services, args};
use crate::storage::{Layer, SMALL_FILE_BYTES};

fn external(e: crate::storage::StorageError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

#[derive(Debug)]
pub struct Files(pub Services);

impl TableFunctionImpl for Files {
    fn call_with_args(&self, a: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let [table] = a.exprs() else {
            return plan_err!("files() takes one argument: files('silver.sales')");
        };
        let (layer, name) = args::table("files", table)?;
        super::Caller::of(a.session()).require_read(layer.as_str(), &name)?;
        Ok(Arc::new(RowsTable(FilesTable { services: self.0.clone(), layer, name })))
    }
}

#[derive(Debug)]
struct FilesTable {
    services: Services,
    layer: Layer,
    name: String,
}

#[async_trait]
impl Rows for FilesTable {
    fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("path", DataType::Utf8, false),
            Field::new("bytes", DataType::Int64, false),
            Field::new("rows", DataType::Int64, true),
            Field::new("modified", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
            Field::new("small", DataType::Boolean, false),
        ]))
    }

    async fn rows(&self) -> Result<RecordBatch> {
        let files = self.services.lake.files(self.layer, &self.name).await.map_err(external)?;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(files.iter().map(|f| f.path.as_str()))),
            Arc::new(Int64Array::from_iter_values(files.iter().map(|f| f.bytes))),
            Arc::new(Int64Array::from(files.iter().map(|f| f.rows).collect::<Vec<_>>())),
            Arc::new(TimestampMillisecondArray::from_iter_values(files.iter().map(|f| f.modified_ms)).with_timezone("UTC")),
            Arc::new(BooleanArray::from(files.iter().map(|f| f.bytes < SMALL_FILE_BYTES).collect::<Vec<_>>())),
        ];
        Ok(RecordBatch::try_new(self.schema(), columns)?)
    }
}

#[derive(Debug)]
pub struct Storage(pub Services);

impl TableFunctionImpl for Storage {
    fn call_with_args(&self, a: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        if !a.exprs().is_empty() {
            return plan_err!("storage() takes no arguments: SELECT * FROM storage()");
        }
        Ok(Arc::new(RowsTable(StorageTable { services: self.0.clone(), caller: super::Caller::of(a.session()) })))
    }
}

#[derive(Debug)]
struct StorageTable {
    services: Services,
    caller: super::Caller,
}

#[async_trait]
impl Rows for StorageTable {
    fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("table_name", DataType::Utf8, false),
            Field::new("version", DataType::Int64, false),
            Field::new("files", DataType::Int64, false),
            Field::new("bytes", DataType::Int64, false),
            Field::new("rows", DataType::Int64, true),
            Field::new("small_files", DataType::Int64, false),
        ]))
    }

    async fn rows(&self) -> Result<RecordBatch> {
        let lake = &self.services.lake;
        let mut found: Vec<(String, i64, Vec<crate::storage::DataFile>)> = Vec::new();
        for layer in Layer::ALL {
            for name in lake.list_tables(layer).await.map_err(external)? {
                if !self.caller.can_read(layer.as_str(), &name) {
                    continue;
                }
                let Some(table) = lake.table(layer, &name).await.map_err(external)? else { continue };
                let files = lake.files(layer, &name).await.map_err(external)?;
                found.push((format!("{layer}.{name}"), table.version().unwrap_or_default() as i64, files));
            }
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(found.iter().map(|(n, _, _)| n.as_str()))),
            Arc::new(Int64Array::from_iter_values(found.iter().map(|(_, v, _)| *v))),
            Arc::new(Int64Array::from_iter_values(found.iter().map(|(_, _, f)| f.len() as i64))),
            Arc::new(Int64Array::from_iter_values(found.iter().map(|(_, _, f)| f.iter().map(|f| f.bytes).sum()))),
            Arc::new(Int64Array::from(
                found.iter().map(|(_, _, f)| f.iter().map(|f| f.rows).sum::<Option<i64>>()).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from_iter_values(
                found.iter().map(|(_, _, f)| f.iter().filter(|f| f.bytes < SMALL_FILE_BYTES).count() as i64),
            )),
        ];
        Ok(RecordBatch::try_new(self.schema(), columns)?)
    }
}
