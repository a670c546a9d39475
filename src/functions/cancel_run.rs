//! `SELECT * FROM cancel_run('<run id>')`: stop a run, wherever it runs. The
//! process running it stops it at once when it is this one, otherwise on its
//! next heartbeat (a few seconds); each table keeps its last fully committed
//! version and the run ends `cancelled`. One row: run_id, status, message.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl};
use datafusion::common::plan_err;
use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result};

use super::{Caller, Rows, RowsTable, args};
use crate::pipeline::Pipeline;

#[derive(Debug)]
pub struct CancelRun(pub Arc<Pipeline>);

impl TableFunctionImpl for CancelRun {
    fn call_with_args(&self, call: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let [arg] = call.exprs() else {
            return plan_err!("cancel_run() takes one argument, the run's id: cancel_run('0192...')");
        };
        let run_id = args::text("cancel_run", 1, arg)?;
        Ok(Arc::new(RowsTable(Cancel {
            pipeline: self.0.clone(),
            run_id,
            caller: Caller::of(call.session()),
        })))
    }
}

#[derive(Debug)]
struct Cancel {
    pipeline: Arc<Pipeline>,
    run_id: String,
    caller: Caller,
}

#[async_trait]
impl Rows for Cancel {
    fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("run_id", DataType::Utf8, false),
            Field::new("status", DataType::Utf8, false),
            Field::new("message", DataType::Utf8, false),
        ]))
    }

    async fn rows(&self) -> Result<RecordBatch> {
        let external = |e: crate::pipeline::PipelineError| DataFusionError::External(Box::new(e));
        let meta_error = |e: crate::meta::MetaError| external(e.into());
        // Who may run every dataset of the run may cancel it.
        let Some((_, datasets)) = self.pipeline.meta().run_status(&self.run_id).await.map_err(meta_error)? else {
            return Err(external(crate::pipeline::PipelineError::UnknownRun(self.run_id.clone())));
        };
        for dataset in &datasets {
            self.caller.require(format!("cancel_run() of a run of dataset {dataset}"), |p| p.can_run(dataset))?;
        }
        let by = self.caller.user().unwrap_or_else(|| "workbench".into());
        let (status, _) = self
            .pipeline
            .cancel(&self.run_id, &by)
            .await
            .map_err(external)?
            .unwrap_or_else(|| ("unknown".into(), datasets));
        let (status, message) = match status.as_str() {
            "running" => ("cancelling".to_string(), "the run stops within seconds and ends cancelled; SELECT status FROM workbench.runs shows it".to_string()),
            other => (other.to_string(), format!("the run is not running (it {other}); nothing to cancel")),
        };
        Ok(RecordBatch::try_new(
            self.schema(),
            vec![
                Arc::new(StringArray::from(vec![self.run_id.clone()])),
                Arc::new(StringArray::from(vec![status])),
                Arc::new(StringArray::from(vec![message])),
            ],
        )?)
    }
}
