//! `workbench.schedules`: each scheduled dataset, its next slots and how its
//! last claimed slot went. A table of the `workbench` schema computed from
//! the specs and the metadata store when it is read.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::error::{DataFusionError, Result};

use super::Rows;
use crate::meta::MetaStore;
use crate::pipeline::Pipeline;

/// Upcoming slots shown per dataset.
const NEXT: usize = 3;

#[derive(Debug)]
pub struct Schedules {
    pub pipeline: Arc<Pipeline>,
    pub meta: Arc<MetaStore>,
}

fn schema() -> SchemaRef {
    let at = |name: &str| Field::new(name, DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true);
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        text("dataset", false),
        text("schedule", false),
        text("timezone", false),
        text("catchup", false),
        at("next_slot"),
        text("following_slots", true),
        at("last_slot"),
        text("last_status", true),
        text("last_run_id", true),
        text("last_error", true),
    ]))
}

#[async_trait]
impl Rows for Schedules {
    fn schema(&self) -> SchemaRef {
        schema()
    }

    async fn rows(&self) -> Result<RecordBatch> {
        let now = Utc::now();
        let scheduled: Vec<_> = self
            .pipeline
            .project()
            .datasets
            .iter()
            .filter_map(|d| d.schedule.as_ref().map(|s| (d.name.clone(), s.clone())))
            .collect();
        let mut last = Vec::with_capacity(scheduled.len());
        for (dataset, _) in &scheduled {
            last.push(self.meta.last_slot_record(dataset).await.map_err(|e| DataFusionError::External(Box::new(e)))?);
        }
        let micros = |t: Option<DateTime<Utc>>| t.map(|t| t.timestamp_micros());
        let upcoming: Vec<Vec<DateTime<Utc>>> = scheduled.iter().map(|(_, s)| s.upcoming(now, NEXT)).collect();
        let text = |values: Vec<Option<String>>| Arc::new(StringArray::from(values)) as ArrayRef;
        let columns: Vec<ArrayRef> = vec![
            text(scheduled.iter().map(|(d, _)| Some(d.clone())).collect()),
            text(scheduled.iter().map(|(_, s)| Some(s.cron.clone())).collect()),
            text(scheduled.iter().map(|(_, s)| Some(s.timezone.name().to_string())).collect()),
            text(scheduled.iter().map(|(_, s)| Some(s.catchup.as_str().to_string())).collect()),
            Arc::new(TimestampMicrosecondArray::from(upcoming.iter().map(|u| micros(u.first().copied())).collect::<Vec<_>>()).with_timezone("UTC")),
            text(upcoming
                .iter()
                .map(|u| (u.len() > 1).then(|| u[1..].iter().map(|t| t.to_rfc3339()).collect::<Vec<_>>().join(", ")))
                .collect()),
            Arc::new(TimestampMicrosecondArray::from(last.iter().map(|l| micros(l.as_ref().map(|l| l.slot))).collect::<Vec<_>>()).with_timezone("UTC")),
            text(last.iter().map(|l| l.as_ref().map(|l| l.status.clone())).collect()),
            text(last.iter().map(|l| l.as_ref().map(|l| l.run_id.clone())).collect()),
            text(last.iter().map(|l| l.as_ref().and_then(|l| l.error.clone())).collect()),
        ];
        Ok(RecordBatch::try_new(schema(), columns)?)
    }
}
