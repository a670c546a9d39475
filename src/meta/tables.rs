//! The metadata tables as read-only Arrow tables (`workbench.<name>` over the
//! wire). Equality filters on text columns are pushed down to the store.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use sqlx::Row;
use sqlx::types::Json as SqlJson;

use super::{MetaError, MetaStore, on_pool};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Json,
    Int,
    Float,
    Bool,
    Timestamp,
}

/// A metadata table: its name and columns.
#[derive(Debug)]
pub struct TableDef {
    pub name: &'static str,
    pub columns: &'static [(&'static str, Kind)],
    pub order_by: &'static str,
}

use Kind::*;

pub const TABLES: &[TableDef] = &[
    TableDef {
        name: "datasets",
        columns: &[
            ("name", Text), ("description", Text), ("owner", Text), ("spec_hash", Text), ("spec_text", Text),
            ("spec_file", Text), ("tables", Json), ("schedule", Text), ("status", Text), ("synced_at", Timestamp),
        ],
        order_by: "name",
    },
    TableDef {
        name: "runs",
        columns: &[
            ("id", Text), ("datasets", Json), ("trigger", Text), ("parameters", Json), ("status", Text),
            ("started_at", Timestamp), ("finished_at", Timestamp), ("error", Text), ("rows_in", Int),
            ("rows_out", Int), ("rows_rejected", Int), ("openlineage", Json), ("attempt", Int), ("retry_of", Text),
            ("cancel_requested_at", Timestamp), ("cancel_requested_by", Text), ("progress", Json),
        ],
        order_by: "started_at, id",
    },
    TableDef {
        name: "run_steps",
        columns: &[
            ("run_id", Text), ("seq", Int), ("dataset", Text), ("layer", Text), ("table_name", Text), ("rows_in", Int),
            ("rows_out", Int), ("rows_rejected", Int), ("status", Text), ("duration_ms", Int), ("message", Text),
        ],
        order_by: "run_id, seq",
    },
    TableDef {
        name: "files",
        columns: &[
            ("dataset", Text), ("path", Text), ("content_hash", Text), ("size_bytes", Int), ("run_id", Text),
            ("ingested_at", Timestamp),
        ],
        order_by: "dataset, ingested_at, path",
    },
    TableDef {
        name: "lineage_edges",
        columns: &[
            ("from_table", Text), ("from_column", Text), ("to_table", Text), ("to_column", Text), ("transform", Text),
            ("run_id", Text), ("updated_at", Timestamp),
        ],
        order_by: "to_table, to_column, from_table, from_column",
    },
    TableDef {
        name: "validations",
        columns: &[
            ("run_id", Text), ("table_name", Text), ("expectation", Text), ("columns", Text), ("success", Bool),
            ("element_count", Int), ("unexpected_count", Int), ("unexpected_percent", Float), ("missing_count", Int),
            ("partial_unexpected_list", Text), ("observed_value", Text), ("validated_at", Timestamp),
            ("validation_id", Text), ("validated_by", Text),
        ],
        order_by: "validated_at",
    },
    TableDef {
        name: "audit",
        columns: &[
            ("id", Int), ("at", Timestamp), ("user_name", Text), ("roles", Text), ("client_addr", Text),
            ("application_name", Text), ("kind", Text), ("statement", Text), ("tables_read", Text),
            ("rows_returned", Int), ("duration_ms", Int), ("sqlstate", Text),
        ],
        order_by: "id",
    },
    TableDef {
        name: "schedule_slots",
        columns: &[
            ("dataset", Text), ("slot", Timestamp), ("claimed_by", Text), ("claimed_at", Timestamp), ("run_id", Text),
            ("status", Text), ("finished_at", Timestamp), ("error", Text), ("heartbeat_at", Timestamp),
        ],
        order_by: "slot, dataset",
    },
    TableDef {
        name: "alerts",
        columns: &[
            ("id", Text), ("dataset", Text), ("event", Text), ("run_id", Text), ("target", Text), ("status", Text),
            ("attempts", Int), ("last_error", Text), ("payload", Json), ("created_at", Timestamp), ("updated_at", Timestamp),
        ],
        order_by: "created_at, id",
    },
];

impl TableDef {
    pub fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|(name, kind)| {
                    let data_type = match kind {
                        Text | Json => DataType::Utf8,
                        Int => DataType::Int64,
                        Float => DataType::Float64,
                        Bool => DataType::Boolean,
                        Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                    };
                    Field::new(*name, data_type, true)
                })
                .collect::<Vec<_>>(),
        ))
    }

    pub fn kind_of(&self, column: &str) -> Option<Kind> {
        self.columns.iter().find(|(n, _)| *n == column).map(|(_, k)| *k)
    }
}

enum Values {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Bool(Vec<Option<bool>>),
    Timestamp(Vec<Option<i64>>),
}

impl Values {
    fn new(kind: Kind) -> Self {
        match kind {
            Text | Json => Values::Text(Vec::new()),
            Int => Values::Int(Vec::new()),
            Float => Values::Float(Vec::new()),
            Bool => Values::Bool(Vec::new()),
            Timestamp => Values::Timestamp(Vec::new()),
        }
    }

    fn into_array(self) -> ArrayRef {
        match self {
            Values::Text(v) => Arc::new(StringArray::from(v)),
            Values::Int(v) => Arc::new(Int64Array::from(v)),
            Values::Float(v) => Arc::new(Float64Array::from(v)),
            Values::Bool(v) => Arc::new(BooleanArray::from(v)),
            Values::Timestamp(v) => Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC")),
        }
    }
}

/// Decode column `i` of `row` into `values`, for either backend's row type.
macro_rules! decode {
    ($row:expr, $i:expr, $kind:expr, $values:expr) => {{
        match ($kind, $values) {
            (Kind::Json, Values::Text(v)) => v.push(
                $row.try_get::<Option<SqlJson<serde_json::Value>>, _>($i)?.map(|j| j.0.to_string()),
            ),
            (_, Values::Text(v)) => v.push($row.try_get::<Option<String>, _>($i)?),
            (_, Values::Int(v)) => v.push($row.try_get::<Option<i64>, _>($i)?),
            (_, Values::Float(v)) => v.push($row.try_get::<Option<f64>, _>($i)?),
            (_, Values::Bool(v)) => v.push($row.try_get::<Option<bool>, _>($i)?),
            (_, Values::Timestamp(v)) => {
                v.push($row.try_get::<Option<DateTime<Utc>>, _>($i)?.map(|t| t.timestamp_micros()))
            }
        }
    }};
}

impl MetaStore {
    /// All rows of `table` where each `(column, value)` in `equal` matches.
    pub async fn read_table(&self, table: &TableDef, equal: &[(String, String)]) -> Result<RecordBatch, MetaError> {
        let columns: Vec<String> = table
            .columns
            .iter()
            .map(|(name, kind)| match (self, kind) {
                // Postgres stores counts as BIGINT and seq as INTEGER: read all as BIGINT.
                (MetaStore::Postgres(_), Int) => format!("CAST({name} AS BIGINT) AS {name}"),
                _ => name.to_string(),
            })
            .collect();
        let mut sql = format!("SELECT {} FROM {}", columns.join(", "), table.name);
        for (i, (column, _)) in equal.iter().enumerate() {
            sql.push_str(if i == 0 { " WHERE " } else { " AND " });
            sql.push_str(&format!("{column} = ${}", i + 1));
        }
        sql.push_str(&format!(" ORDER BY {}", table.order_by));
        let mut values: Vec<Values> = table.columns.iter().map(|(_, k)| Values::new(*k)).collect();
        on_pool!(self, |pool| {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
            for (_, value) in equal {
                query = query.bind(value);
            }
            async {
                let rows = query.fetch_all(pool).await?;
                for row in &rows {
                    for (i, ((_, kind), column)) in table.columns.iter().zip(values.iter_mut()).enumerate() {
                        decode!(row, i, *kind, column);
                    }
                }
                Ok::<(), sqlx::Error>(())
            }
            .await
        })?;
        let arrays: Vec<ArrayRef> = values.into_iter().map(Values::into_array).collect();
        RecordBatch::try_new(table.schema(), arrays).map_err(|e| MetaError::Query {
            backend: self.backend(),
            source: sqlx::Error::Decode(Box::new(e)),
        })
    }
}
