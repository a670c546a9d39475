//! `workbench.freshness`: per dataset, when its last successful run
//! finished, how old that is, and its state against the spec's
//! `freshness: { warn_after, error_after }`: fresh, warn, error, never (no
//! successful run yet), or unmonitored (no `freshness:`).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::error::{DataFusionError, Result};

use super::Rows;
use crate::pipeline::Pipeline;

#[derive(Debug)]
pub struct FreshnessTable {
    pub pipeline: Arc<Pipeline>,
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("dataset", DataType::Utf8, false),
        Field::new("last_success", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
        Field::new("age_seconds", DataType::Int64, true),
        Field::new("warn_after", DataType::Utf8, true),
        Field::new("error_after", DataType::Utf8, true),
        Field::new("state", DataType::Utf8, false),
    ]))
}

#[async_trait]
impl Rows for FreshnessTable {
    fn schema(&self) -> SchemaRef {
        schema()
    }

    async fn rows(&self) -> Result<RecordBatch> {
        let states = self.pipeline.freshness().await.map_err(|e| DataFusionError::External(Box::new(e)))?;
        let now = Utc::now();
        let text = |values: Vec<Option<String>>| Arc::new(StringArray::from(values)) as ArrayRef;
        let duration = |d: Option<std::time::Duration>| d.map(|d| humantime::format_duration(d).to_string());
        let columns: Vec<ArrayRef> = vec![
            text(states.iter().map(|s| Some(s.dataset.clone())).collect()),
            Arc::new(
                TimestampMicrosecondArray::from(states.iter().map(|s| s.last_success.map(|t| t.timestamp_micros())).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ),
            Arc::new(Int64Array::from(states.iter().map(|s| s.last_success.map(|t| (now - t).num_seconds())).collect::<Vec<_>>())),
            text(states.iter().map(|s| duration(s.freshness.and_then(|f| f.warn_after))).collect()),
            text(states.iter().map(|s| duration(s.freshness.and_then(|f| f.error_after))).collect()),
            text(states.iter().map(|s| Some(s.state().to_string())).collect()),
        ];
        Ok(RecordBatch::try_new(schema(), columns)?)
    }
}
