//! `SELECT * FROM schedule_preview('dataset' [, 'from' [, n]])`: the next
//! `n` (default 10, at most 1000) slots of a dataset's schedule after `from`
//! (default now), in UTC and in the schedule's own zone: what will run
//! around a month end or a daylight-saving change, before it does.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use datafusion::arrow::array::{RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl};
use datafusion::common::plan_err;
use datafusion::datasource::TableProvider;
use datafusion::error::Result;

use super::{Rows, RowsTable, args};
use crate::pipeline::Pipeline;
use crate::spec::Schedule;

const MAX_SLOTS: i64 = 1000;

#[derive(Debug)]
pub struct SchedulePreview(pub Arc<Pipeline>);

impl TableFunctionImpl for SchedulePreview {
    fn call_with_args(&self, call: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let exprs = call.exprs();
        let Some(first) = exprs.first() else {
            return plan_err!("schedule_preview() takes a dataset, e.g. schedule_preview('sales', '2027-03-27', 5)");
        };
        let dataset = args::text("schedule_preview", 1, first)?;
        let Some(spec) = self.0.project().dataset(&dataset) else {
            return plan_err!("schedule_preview(): unknown dataset '{dataset}'");
        };
        let Some(schedule) = spec.schedule.clone() else {
            return plan_err!("schedule_preview(): dataset '{dataset}' has no schedule");
        };
        let from = match args::optional(exprs, 1) {
            None => Utc::now(),
            Some(expr) => {
                let text = args::text("schedule_preview", 2, expr)?;
                match parse_instant(&text) {
                    Some(at) => at,
                    None => return plan_err!("schedule_preview(): '{text}' is not a timestamp; write e.g. '2027-03-27' or '2027-03-27T12:00:00Z'"),
                }
            }
        };
        let n = match args::optional(exprs, 2) {
            None => 10,
            Some(expr) => args::integer("schedule_preview", 3, expr)?,
        };
        if !(1..=MAX_SLOTS).contains(&n) {
            return plan_err!("schedule_preview(): n must be between 1 and {MAX_SLOTS}, got {n}");
        }
        Ok(Arc::new(RowsTable(Preview { schedule, from, n: n as usize })))
    }
}

/// `2027-03-27`, `2027-03-27 12:00:00`, RFC 3339; read as UTC without an offset.
fn parse_instant(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Some(at.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S%#z", "%Y-%m-%d %H:%M:%S%z"] {
        if let Ok(at) = DateTime::parse_from_str(text, format) {
            return Some(at.with_timezone(&Utc));
        }
    }
    if let Ok(at) = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S") {
        return Some(at.and_utc());
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)).map(|d| d.and_utc())
}

#[derive(Debug)]
struct Preview {
    schedule: Schedule,
    from: DateTime<Utc>,
    n: usize,
}

#[async_trait]
impl Rows for Preview {
    fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("slot", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), false),
            Field::new("local_time", DataType::Utf8, false),
            Field::new("timezone", DataType::Utf8, false),
        ]))
    }

    async fn rows(&self) -> Result<RecordBatch> {
        let slots = self.schedule.upcoming(self.from, self.n);
        let zone = self.schedule.timezone;
        Ok(RecordBatch::try_new(
            self.schema(),
            vec![
                Arc::new(TimestampMicrosecondArray::from(slots.iter().map(|s| s.timestamp_micros()).collect::<Vec<_>>()).with_timezone("UTC")),
                Arc::new(StringArray::from(
                    slots.iter().map(|s| s.with_timezone(&zone).format("%Y-%m-%d %H:%M:%S %Z").to_string()).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(vec![zone.name().to_string(); slots.len()])),
            ],
        )?)
    }
}
