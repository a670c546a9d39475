//! `SELECT * FROM run('dataset', ...)`: runs datasets (all when called with
//! no argument) and returns one row per step: run_id, dataset, layer, table,
//! rows_in, rows_out, rows_rejected, status, duration_ms, message.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl};
use datafusion::common::{ScalarValue, plan_err};
use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Expr;

use super::{Rows, RowsTable};
use crate::pipeline::{Pipeline, RunOptions, RunReport};

#[derive(Debug)]
pub struct RunFunction {
    pipeline: Arc<Pipeline>,
}

impl RunFunction {
    pub fn new(pipeline: Arc<Pipeline>) -> Self {
        RunFunction { pipeline }
    }
}

impl TableFunctionImpl for RunFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let mut datasets = Vec::new();
        for arg in args.exprs() {
            let name = match arg {
                Expr::Literal(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s)), _) => s.clone(),
                other => return plan_err!("run() takes dataset names as text literals, e.g. run('sales'); got {other}"),
            };
            if self.pipeline.project().dataset(&name).is_none() {
                let known: Vec<&str> = self.pipeline.project().datasets.iter().map(|d| d.name.as_str()).collect();
                return plan_err!("unknown dataset '{name}'; datasets: {}", known.join(", "));
            }
            datasets.push(name);
        }
        let caller = super::Caller::of(args.session());
        if datasets.is_empty() {
            caller.require("run() of every dataset", |p| {
                self.pipeline.project().datasets.iter().all(|d| p.can_run(&d.name))
            })?;
        }
        for name in &datasets {
            caller.require(format!("run() of dataset {name}"), |p| p.can_run(name))?;
        }
        Ok(Arc::new(RowsTable(RunTable {
            pipeline: self.pipeline.clone(),
            datasets,
        })))
    }
}

#[derive(Debug)]
struct RunTable {
    pipeline: Arc<Pipeline>,
    datasets: Vec<String>,
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("run_id", DataType::Utf8, false),
        Field::new("dataset", DataType::Utf8, false),
        Field::new("layer", DataType::Utf8, false),
        Field::new("table", DataType::Utf8, false),
        Field::new("rows_in", DataType::UInt64, false),
        Field::new("rows_out", DataType::UInt64, false),
        Field::new("rows_rejected", DataType::UInt64, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("duration_ms", DataType::UInt64, false),
        Field::new("message", DataType::Utf8, true),
    ]))
}

fn to_batch(report: &RunReport) -> Result<RecordBatch> {
    let s = &report.steps;
    let text = |f: &dyn Fn(&crate::pipeline::StepReport) -> String| -> ArrayRef {
        Arc::new(StringArray::from(s.iter().map(f).collect::<Vec<_>>()))
    };
    let number = |f: &dyn Fn(&crate::pipeline::StepReport) -> u64| -> ArrayRef {
        Arc::new(UInt64Array::from(s.iter().map(f).collect::<Vec<_>>()))
    };
    Ok(RecordBatch::try_new(
        schema(),
        vec![
            text(&|r| r.run_id.clone()),
            text(&|r| r.dataset.clone()),
            text(&|r| r.layer.as_str().to_string()),
            text(&|r| r.table.clone()),
            number(&|r| r.rows_in),
            number(&|r| r.rows_out),
            number(&|r| r.rows_rejected),
            text(&|r| r.status.as_str().to_string()),
            number(&|r| r.duration_ms),
            Arc::new(StringArray::from(s.iter().map(|r| r.message.clone()).collect::<Vec<_>>())),
        ],
    )?)
}

#[async_trait]
impl Rows for RunTable {
    fn schema(&self) -> SchemaRef {
        schema()
    }

    async fn rows(&self) -> Result<RecordBatch> {
        let report = self
            .pipeline
            .run(
                &self.datasets,
                &RunOptions {
                    trigger: "sql".into(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let batch = to_batch(&report)?;
        Ok(batch)
    }
}
