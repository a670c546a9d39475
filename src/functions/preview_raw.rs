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
        let limit = args::optional(exprs, 1).map(|e| args::integer("preview_raw", 2, e)).transpose()?.unwrap_or(1000).max(1) as usize;
        let Some(format) = sources::format_for_path(&path) else {
            return plan_err!("preview_raw(): cannot tell the format of '{path}'; use .csv, .tsv, .xlsx, .xls, .ods, .parquet, .json or .ndjson");
        };
        // A landing file belongs to the datasets whose source glob matches
        // it; the caller needs the landing grant of one of them.
        let caller = super::Caller::of(a.session());
        let owners: Vec<String> = self
            .0
            .pipeline
            .as_ref()
            .map(|p| p.project().datasets.iter().filter(|d| d.source.path.as_deref().is_some_and(|g| glob::Pattern::new(g).is_ok_and(|g| g.matches(&path)))).map(|d| d.name.clone()).collect())
            .unwrap_or_default();
        caller.require(format!("the landing file {path}"), |p| {
            p.is_admin() || owners.iter().any(|d| p.can_read_landing(d))
        })?;
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
        // Raw rows are masked as the owning dataset's bronze table is.
        let mut table: Arc<dyn TableProvider> = Arc::new(MemTable::try_new(schema, vec![batches])?);
        for owner in &owners {
            table = caller.govern(table, "bronze", owner)?;
        }
        Ok(table)
    }
}
