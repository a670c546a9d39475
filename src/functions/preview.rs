//! `preview('dataset' [, 'path' [, limit]])`: the tidy rows a run would
//! write for one landing file (the newest when no path is given), plus
//! `_expectations_failed`; writes nothing. Cached by spec + file + arguments.

use std::sync::Arc;

use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl};
use datafusion::common::plan_err;
use datafusion::datasource::{MemTable, TableProvider};
use datafusion::error::{DataFusionError, Result};

use super::{Services, args};

#[derive(Debug)]
pub struct Preview(pub Services);

impl TableFunctionImpl for Preview {
    fn call_with_args(&self, a: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let exprs = a.exprs();
        if exprs.is_empty() || exprs.len() > 3 {
            return plan_err!("preview() takes a dataset, then optionally a landing file and a row limit: preview('sales', 'landing/sales/new.csv', 100)");
        }
        let dataset = args::text("preview", 1, &exprs[0])?;
        let path = args::optional(exprs, 1).map(|e| args::text("preview", 2, e)).transpose()?;
        let limit = args::optional(exprs, 2).map(|e| args::integer("preview", 3, e)).transpose()?.unwrap_or(1000);
        if limit < 1 {
            return plan_err!("preview(): the limit must be at least 1, got {limit}");
        }
        let Some(pipeline) = self.0.pipeline.clone() else {
            return plan_err!("preview() needs the server to be started with a specs directory (--specs)");
        };
        let caller = super::Caller::of(a.session());
        caller.require(format!("the landing files of dataset {dataset}"), |p| p.can_read_landing(&dataset))?;
        // The rows' shape comes from the file and the rules, so the preview is
        // computed while planning (on the server's multi-threaded runtime).
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| DataFusionError::Plan("preview() needs the server's runtime".into()))?;
        let batches = tokio::task::block_in_place(|| {
            handle.block_on(async { pipeline.preview(&dataset, path.as_deref(), limit as usize).await })
        })
        .map_err(|e| match e {
            crate::pipeline::PipelineError::UnknownDataset(_) => DataFusionError::Plan(e.to_string()),
            other => DataFusionError::External(Box::new(other)),
        })?;
        let Some(schema) = batches.first().map(|b| b.schema()) else {
            return plan_err!("preview(): the file has no rows");
        };
        // The rows a run would write to silver, shown as silver would be.
        caller.govern(Arc::new(MemTable::try_new(schema, vec![batches])?), "silver", &dataset)
    }
}
