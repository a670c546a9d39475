//! A query on a Postgres source, through sqlx. `{{ start_date }}` and
//! `{{ end_date }}` in the query become bound parameters (never spliced in).
//! Rows are fetched as a stream and turned into Arrow columns by type.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float32Array, Float64Array, Int16Array,
    Int32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{Field, Schema};
use futures::TryStreamExt;
use rust_decimal::Decimal;
use sqlx::postgres::{PgConnection, PgRow};
use sqlx::{Column, Connection, Row, TypeInfo};

use super::{SourceError, number_rows};
use crate::spec::PostgresOptions;

/// The run's date window, for `{{ start_date }}` / `{{ end_date }}`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DateWindow {
    pub start: Option<NaiveDate>,
    pub end: Option<NaiveDate>,
}

enum Values {
    Bool(Vec<Option<bool>>),
    I16(Vec<Option<i16>>),
    I32(Vec<Option<i32>>),
    I64(Vec<Option<i64>>),
    F32(Vec<Option<f32>>),
    F64(Vec<Option<f64>>),
    Numeric(Vec<Option<Decimal>>),
    Text(Vec<Option<String>>),
    Date(Vec<Option<NaiveDate>>),
    Timestamp(Vec<Option<NaiveDateTime>>),
    TimestampTz(Vec<Option<DateTime<Utc>>>),
}

fn err(message: impl Into<String>) -> SourceError {
    SourceError::Postgres(message.into())
}

/// A failed connection or query: `Unreachable` when the server could not be
/// reached, went away or is shutting down (SQLSTATE class 08, 57P01-57P03),
/// so the run may be retried; `Postgres` for what the query itself did wrong.
pub(super) fn query_error(what: &str, e: sqlx::Error) -> SourceError {
    let transient = match &e {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300")),
        sqlx::Error::Protocol(message) => message.contains("closed") || message.contains("EOF"),
        _ => false,
    };
    let message = format!("{what}: {e}");
    if transient { SourceError::Unreachable(message) } else { err(message) }
}

/// Resolve `env:NAME` URLs.
pub(super) fn resolve_url(url: &str) -> Result<String, SourceError> {
    match url.strip_prefix("env:") {
        Some(var) => std::env::var(var).map_err(|_| {
            err(format!("environment variable {var} (the source url) is not set; export it with the connection URL"))
        }),
        None => Ok(url.to_string()),
    }
}

/// Replace `{{ name }}` placeholders with `$n`, returning the names in order.
fn bind_placeholders(query: &str) -> (String, Vec<String>) {
    let mut out = String::with_capacity(query.len());
    let mut names: Vec<String> = Vec::new();
    let mut rest = query;
    while let Some(start) = rest.find("{{") {
        let Some(end) = rest[start..].find("}}") else { break };
        out.push_str(&rest[..start]);
        let name = rest[start + 2..start + end].trim().to_string();
        let index = match names.iter().position(|n| *n == name) {
            Some(i) => i + 1,
            None => {
                names.push(name);
                names.len()
            }
        };
        out.push_str(&format!("${index}"));
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    (out, names)
}

pub async fn read_postgres(options: &PostgresOptions, window: DateWindow) -> Result<Vec<RecordBatch>, SourceError> {
    let url = resolve_url(&options.url)?;
    let (sql, params) = bind_placeholders(&options.query);
    let mut conn = PgConnection::connect(&url)
        .await
        .map_err(|e| query_error("cannot connect", e))?;
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
    for name in &params {
        let value = match name.as_str() {
            "start_date" => window.start,
            "end_date" => window.end,
            other => return Err(err(format!("unknown query parameter {{{{ {other} }}}}; use start_date or end_date"))),
        };
        let Some(value) = value else {
            return Err(err(format!("the query uses {{{{ {name} }}}}: run with --from DATE --to DATE")));
        };
        query = query.bind(value);
    }
    let mut rows = query.fetch(&mut conn);
    let mut names: Vec<String> = Vec::new();
    let mut columns: Vec<Values> = Vec::new();
    while let Some(row) = rows.try_next().await.map_err(|e| query_error("query failed", e))? {
        if columns.is_empty() {
            for column in row.columns() {
                names.push(column.name().to_string());
                columns.push(values_for(column.type_info().name(), column.name())?);
            }
        }
        for (i, values) in columns.iter_mut().enumerate() {
            push(values, &row, i).map_err(|e| err(format!("column {}: {e}", names[i])))?;
        }
    }
    drop(rows);
    if columns.is_empty() {
        // No rows: take the shape from the statement's description.
        use sqlx::{Executor, Statement};
        let prepared = conn
            .prepare(sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(sql.clone())))
            .await
            .map_err(|e| query_error("query failed", e))?;
        for column in prepared.columns() {
            names.push(column.name().to_string());
            columns.push(values_for(column.type_info().name(), column.name())?);
        }
    }
    let _ = conn.close().await;
    let mut fields = Vec::with_capacity(names.len());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(names.len());
    for (name, values) in names.iter().zip(columns) {
        let array = to_array(values).map_err(|e| err(format!("column {name}: {e}")))?;
        fields.push(Field::new(name, array.data_type().clone(), true));
        arrays.push(array);
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).map_err(|e| err(e.to_string()))?;
    let mut batches = Vec::new();
    let mut offset = 0;
    while offset < batch.num_rows() || batches.is_empty() {
        let len = options.batch_size.min(batch.num_rows() - offset);
        batches.push(batch.slice(offset, len));
        offset += len;
        if len == 0 {
            break;
        }
    }
    number_rows(batches, 1).map_err(|e| err(e.to_string()))
}

fn values_for(type_name: &str, column: &str) -> Result<Values, SourceError> {
    Ok(match type_name {
        "BOOL" => Values::Bool(Vec::new()),
        "INT2" => Values::I16(Vec::new()),
        "INT4" => Values::I32(Vec::new()),
        "INT8" => Values::I64(Vec::new()),
        "FLOAT4" => Values::F32(Vec::new()),
        "FLOAT8" => Values::F64(Vec::new()),
        "NUMERIC" => Values::Numeric(Vec::new()),
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" | "UUID" | "JSON" | "JSONB" => Values::Text(Vec::new()),
        "DATE" => Values::Date(Vec::new()),
        "TIMESTAMP" => Values::Timestamp(Vec::new()),
        "TIMESTAMPTZ" => Values::TimestampTz(Vec::new()),
        other => {
            return Err(err(format!(
                "column {column} has type {other}, which Workbench does not read yet; cast it in the query (e.g. {column}::text)"
            )));
        }
    })
}

fn push(values: &mut Values, row: &PgRow, i: usize) -> Result<(), sqlx::Error> {
    match values {
        Values::Bool(v) => v.push(row.try_get(i)?),
        Values::I16(v) => v.push(row.try_get(i)?),
        Values::I32(v) => v.push(row.try_get(i)?),
        Values::I64(v) => v.push(row.try_get(i)?),
        Values::F32(v) => v.push(row.try_get(i)?),
        Values::F64(v) => v.push(row.try_get(i)?),
        Values::Numeric(v) => v.push(row.try_get(i)?),
        Values::Text(v) => {
            let name = row.columns()[i].type_info().name().to_string();
            v.push(match name.as_str() {
                "UUID" => row.try_get::<Option<uuid::Uuid>, _>(i)?.map(|u| u.to_string()),
                "JSON" | "JSONB" => row.try_get::<Option<serde_json::Value>, _>(i)?.map(|j| j.to_string()),
                _ => row.try_get(i)?,
            })
        }
        Values::Date(v) => v.push(row.try_get(i)?),
        Values::Timestamp(v) => v.push(row.try_get(i)?),
        Values::TimestampTz(v) => v.push(row.try_get(i)?),
    }
    Ok(())
}

fn to_array(values: Values) -> Result<ArrayRef, String> {
    Ok(match values {
        Values::Bool(v) => Arc::new(BooleanArray::from(v)),
        Values::I16(v) => Arc::new(Int16Array::from(v)),
        Values::I32(v) => Arc::new(Int32Array::from(v)),
        Values::I64(v) => Arc::new(Int64Array::from(v)),
        Values::F32(v) => Arc::new(Float32Array::from(v)),
        Values::F64(v) => Arc::new(Float64Array::from(v)),
        Values::Numeric(v) => {
            let scale = v.iter().flatten().map(|d| d.scale()).max().unwrap_or(0).min(18);
            let mantissas: Vec<Option<i128>> = v
                .iter()
                .map(|d| {
                    d.map(|mut d| {
                        d.rescale(scale);
                        d.mantissa()
                    })
                })
                .collect();
            Arc::new(
                Decimal128Array::from(mantissas)
                    .with_precision_and_scale(38, scale as i8)
                    .map_err(|e| e.to_string())?,
            )
        }
        Values::Text(v) => Arc::new(StringArray::from(v)),
        Values::Date(v) => {
            let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
            Arc::new(Date32Array::from(
                v.iter()
                    .map(|d| d.map(|d| (d - epoch).num_days() as i32))
                    .collect::<Vec<_>>(),
            ))
        }
        Values::Timestamp(v) => Arc::new(TimestampMicrosecondArray::from(
            v.iter().map(|t| t.map(|t| t.and_utc().timestamp_micros())).collect::<Vec<_>>(),
        )),
        Values::TimestampTz(v) => Arc::new(
            TimestampMicrosecondArray::from(v.iter().map(|t| t.map(|t| t.timestamp_micros())).collect::<Vec<_>>())
                .with_timezone("UTC"),
        ),
    })
}
