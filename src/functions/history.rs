//! `history('layer.table')`: the table's Delta commits, newest first
//! (version, timestamp, operation, rows added / updated / removed), joined
//! with the Workbench run that made each commit. A caller whose row filter
//! hides rows of the table sees the row counts as NULL: they count every row.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl};
use datafusion::common::plan_err;
use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result};

use super::{Rows, RowsTable, Services, args};
use crate::meta::tables::TABLES;
use crate::storage::Layer;

#[derive(Debug)]
pub struct History(pub Services);

impl TableFunctionImpl for History {
    fn call_with_args(&self, a: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let [table] = a.exprs() else {
            return plan_err!("history() takes one argument: history('silver.sales')");
        };
        let (layer, name) = args::table("history", table)?;
        let caller = super::Caller::of(a.session());
        caller.require_read(layer.as_str(), &name)?;
        Ok(Arc::new(RowsTable(HistoryTable {
            services: self.0.clone(),
            counts_hidden: caller.filters_rows(layer.as_str(), &name),
            layer,
            name,
        })))
    }
}

#[derive(Debug)]
struct HistoryTable {
    services: Services,
    layer: Layer,
    name: String,
    /// The caller's row filter hides rows of the table: the commits' row
    /// counts (which count hidden rows too) are shown as NULL.
    counts_hidden: bool,
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("version", DataType::Int64, false),
        Field::new("timestamp", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), true),
        Field::new("operation", DataType::Utf8, true),
        Field::new("rows_added", DataType::Int64, true),
        Field::new("rows_updated", DataType::Int64, true),
        Field::new("rows_removed", DataType::Int64, true),
        Field::new("run_id", DataType::Utf8, true),
        Field::new("run_trigger", DataType::Utf8, true),
        Field::new("run_status", DataType::Utf8, true),
    ]))
}

fn metric(metadata: &HashMap<String, serde_json::Value>, keys: &[&str]) -> Option<i64> {
    let metrics = metadata.get("operationMetrics")?;
    let values: Vec<i64> = keys.iter().filter_map(|k| metrics.get(*k).and_then(|v| v.as_i64())).collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

#[async_trait]
impl Rows for HistoryTable {
    fn schema(&self) -> SchemaRef {
        schema()
    }

    async fn rows(&self) -> Result<RecordBatch> {
        let external = |e: Box<dyn std::error::Error + Send + Sync>| DataFusionError::External(e);
        if self.services.lake.table(self.layer, &self.name).await.map_err(|e| external(Box::new(e)))?.is_none() {
            return plan_err!("table '{}.{}' not found", self.layer, self.name);
        }
        let commits = self
            .services
            .lake
            .commits(self.layer, &self.name, None)
            .await
            .map_err(|e| external(Box::new(e)))?;
        let runs_def = TABLES.iter().find(|t| t.name == "runs").expect("runs table");
        let mut runs: HashMap<String, (Option<String>, Option<String>)> = HashMap::new();
        for run_id in commits.iter().filter_map(|c| c.run_id.clone()) {
            if runs.contains_key(&run_id) {
                continue;
            }
            let batch = self
                .services
                .meta
                .read_table(runs_def, &[("id".to_string(), run_id.clone())])
                .await
                .map_err(|e| external(Box::new(e)))?;
            let text = |name: &str| {
                batch
                    .column_by_name(name)
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                    .filter(|c| !c.is_empty())
                    .map(|c| c.value(0).to_string())
            };
            runs.insert(run_id, (text("trigger"), text("status")));
        }
        let run_of = |c: &crate::storage::CommitRecord, i: usize| {
            c.run_id.as_ref().and_then(|r| runs.get(r)).and_then(|r| if i == 0 { r.0.clone() } else { r.1.clone() })
        };
        let count = |c: &crate::storage::CommitRecord, keys: &[&str]| if self.counts_hidden { None } else { metric(&c.metadata, keys) };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(commits.iter().map(|c| c.version))),
            Arc::new(TimestampMillisecondArray::from(commits.iter().map(|c| c.timestamp_ms).collect::<Vec<_>>()).with_timezone("UTC")),
            Arc::new(StringArray::from(commits.iter().map(|c| c.operation.clone()).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(
                commits
                    .iter()
                    .map(|c| count(c, &["num_added_rows"]).or_else(|| count(c, &["num_target_rows_inserted"])))
                    .collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(commits.iter().map(|c| count(c, &["num_target_rows_updated"])).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(
                commits
                    .iter()
                    .map(|c| count(c, &["num_removed_rows", "num_deleted_rows", "num_target_rows_deleted"]))
                    .collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(commits.iter().map(|c| c.run_id.clone()).collect::<Vec<_>>())),
            Arc::new(StringArray::from(commits.iter().map(|c| run_of(c, 0)).collect::<Vec<_>>())),
            Arc::new(StringArray::from(commits.iter().map(|c| run_of(c, 1)).collect::<Vec<_>>())),
        ];
        let batch = RecordBatch::try_new(schema(), columns)?;
        Ok(batch)
    }
}
