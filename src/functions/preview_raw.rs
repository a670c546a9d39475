//! `preview_raw('landing/path/file.xlsx' [, limit])`: a landing file as read,
//! before any rule (format from the extension; first sheet, header on row 1).

use std::sync::Arc;

use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl};
use datafusion::common::plan_err;
use datafusion::datasource::{MemTable, TableProvider};
use datafusion::error::{DataFusionError, Result};

use super::{Services, args};
use crate::pipeline::sources;

#[derive(Debug)]
pub struct PreviewRaw(pub Services);

impl TableFunctionImpl for PreviewRaw {
    fn call_with_args(&self, a: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let exprs = a.exprs();
        if exprs.is_empty() || exprs.len() > 2 {
            return plan_err!("preview_raw() takes a landing file and optionally a row limit: preview_raw('landing/sales/jan.csv', 100)");
        }
        let path = args::text("preview_raw", 1, &exprs[0])?.trim_start_matches('/').to_string();
        let limit = exprs.get(1).map(|e| args::integer("preview_raw", 2, e)).transpose()?.unwrap_or(1000).max(1) as usize;
        let Some(format) = sources::format_for_path(&path) else {
            return plan_err!("preview_raw(): cannot tell the format of '{path}'; use .csv, .tsv, .xlsx, .xls, .ods, .parquet, .json or .ndjson");
        };
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| DataFusionError::Plan("preview_raw() needs the server's runtime".into()))?;
        let lake = self.0.lake.clone();
        let batches = tokio::task::block_in_place(|| {
            handle.block_on(async {
                let bytes = lake
                    .read_bytes(&path)
                    .await
                    .map_err(|e| DataFusionError::Plan(format!("preview_raw(): cannot read {path}: {e}")))?;
                sources::read_file_head(&format, &path, &bytes, Some(limit)).map_err(|e| DataFusionError::Plan(e.to_string()))
            })
        })?;
        let (Some(schema), false) = (batches.first().map(|b| b.schema()), batches.iter().all(|b| b.num_rows() == 0)) else {
            return plan_err!("preview_raw(): {path} has no rows");
        };
        Ok(Arc::new(MemTable::try_new(schema, vec![batches])?))
    }
}
