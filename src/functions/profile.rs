//! `profile('layer.table')`: per column its type, null count and percent,
//! approximate distinct count, min, max, mean and standard deviation (for
//! numbers) and the five most frequent values. The statistics are one
//! aggregate pass; the top values one grouped pass per column.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl};
use datafusion::common::plan_err;
use datafusion::datasource::TableProvider;
use datafusion::error::Result;
use datafusion::functions_aggregate::expr_fn::{approx_distinct, avg, count, max, min, stddev};
use datafusion::logical_expr::{Expr, cast as cast_expr, col, lit};

use super::{Rows, RowsTable, Services, args};
use crate::storage::Layer;

#[derive(Debug)]
pub struct Profile(pub Services);

impl TableFunctionImpl for Profile {
    fn call_with_args(&self, a: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let [table] = a.exprs() else {
            return plan_err!("profile() takes one argument: profile('silver.sales')");
        };
        let (layer, name) = args::table("profile", table)?;
        let caller = super::Caller::of(a.session());
        caller.require_read(layer.as_str(), &name)?;
        Ok(Arc::new(RowsTable(ProfileTable {
            caller,
            services: self.0.clone(),
            layer,
            name,
        })))
    }
}

#[derive(Debug)]
struct ProfileTable {
    caller: super::Caller,
    services: Services,
    layer: Layer,
    name: String,
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("column_name", DataType::Utf8, false),
        Field::new("data_type", DataType::Utf8, false),
        Field::new("row_count", DataType::Int64, false),
        Field::new("null_count", DataType::Int64, false),
        Field::new("null_percent", DataType::Float64, false),
        Field::new("distinct_count", DataType::Int64, true),
        Field::new("min", DataType::Utf8, true),
        Field::new("max", DataType::Utf8, true),
        Field::new("mean", DataType::Float64, true),
        Field::new("stddev", DataType::Float64, true),
        Field::new("top_values", DataType::Utf8, true),
    ]))
}

fn quoted(name: &str) -> Expr {
    col(format!("\"{}\"", name.replace('"', "\"\"")))
}

fn comparable(t: &DataType) -> bool {
    t.is_primitive() || matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Boolean)
}

fn text_at(batch: &RecordBatch, name: &str) -> Option<String> {
    let column = batch.column_by_name(name)?;
    let text = cast(column, &DataType::Utf8).ok()?;
    let text = text.as_string::<i32>();
    (!text.is_null(0)).then(|| text.value(0).to_string())
}

fn float_at(batch: &RecordBatch, name: &str) -> Option<f64> {
    let column = cast(batch.column_by_name(name)?, &DataType::Float64).ok()?;
    let column = column.as_any().downcast_ref::<Float64Array>()?;
    (!column.is_null(0)).then(|| column.value(0))
}

fn int_at(batch: &RecordBatch, name: &str) -> Option<i64> {
    let column = cast(batch.column_by_name(name)?, &DataType::Int64).ok()?;
    let column = column.as_primitive::<Int64Type>();
    (!column.is_null(0)).then(|| column.value(0))
}

#[async_trait]
impl Rows for ProfileTable {
    fn schema(&self) -> SchemaRef {
        schema()
    }

    async fn rows(&self) -> Result<RecordBatch> {
        let ctx = self.services.engine.internal_session();
        let df = self.caller.frame(&ctx, self.layer, &self.name).await?;
        let fields: Vec<(String, DataType)> = df
            .schema()
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        let mut aggregates = vec![count(lit(1)).alias("__rows")];
        for (i, (name, data_type)) in fields.iter().enumerate() {
            let c = quoted(name);
            aggregates.push(count(c.clone()).alias(format!("c{i}")));
            if comparable(data_type) {
                aggregates.push(approx_distinct(c.clone()).alias(format!("d{i}")));
                aggregates.push(min(c.clone()).alias(format!("min{i}")));
                aggregates.push(max(c.clone()).alias(format!("max{i}")));
            }
            if data_type.is_numeric() {
                let number = cast_expr(c.clone(), DataType::Float64);
                aggregates.push(avg(number.clone()).alias(format!("avg{i}")));
                aggregates.push(stddev(number).alias(format!("sd{i}")));
            }
        }
        let stats = df.clone().aggregate(vec![], aggregates)?.collect().await?;
        let stats = stats.into_iter().find(|b| b.num_rows() > 0);
        let rows = stats.as_ref().and_then(|b| int_at(b, "__rows")).unwrap_or(0);
        let mut out: Vec<[Option<String>; 4]> = Vec::new(); // min, max, top, type
        let mut numbers: Vec<(i64, i64, Option<i64>, Option<f64>, Option<f64>)> = Vec::new();
        for (i, (name, data_type)) in fields.iter().enumerate() {
            let get = |key: String| stats.as_ref().and_then(|b| text_at(b, &key));
            let non_null = stats.as_ref().and_then(|b| int_at(b, &format!("c{i}"))).unwrap_or(0);
            let mut top = None;
            if comparable(data_type) {
                let c = quoted(name);
                let counts = df
                    .clone()
                    .filter(c.clone().is_not_null())?
                    .aggregate(vec![c.clone().alias("v")], vec![count(lit(1)).alias("n")])?
                    .sort(vec![col("n").sort(false, false), col("v").sort(true, false)])?
                    .limit(0, Some(5))?
                    .collect()
                    .await?;
                let mut parts = Vec::new();
                for batch in counts {
                    let values = cast(batch.column(0), &DataType::Utf8)?;
                    let values = values.as_string::<i32>();
                    let counts = cast(batch.column(1), &DataType::Int64)?;
                    let counts = counts.as_primitive::<Int64Type>();
                    for r in 0..batch.num_rows() {
                        parts.push(format!("{} ({})", values.value(r), counts.value(r)));
                    }
                }
                top = Some(parts.join(", "));
            }
            out.push([get(format!("min{i}")), get(format!("max{i}")), top, Some(data_type.to_string())]);
            numbers.push((
                non_null,
                rows - non_null,
                stats.as_ref().and_then(|b| int_at(b, &format!("d{i}"))),
                stats.as_ref().and_then(|b| float_at(b, &format!("avg{i}"))),
                stats.as_ref().and_then(|b| float_at(b, &format!("sd{i}"))),
            ));
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(fields.iter().map(|(n, _)| n.clone()))),
            Arc::new(StringArray::from_iter_values(out.iter().map(|o| o[3].clone().unwrap_or_default()))),
            Arc::new(Int64Array::from_iter_values(numbers.iter().map(|_| rows))),
            Arc::new(Int64Array::from_iter_values(numbers.iter().map(|n| n.1))),
            Arc::new(Float64Array::from_iter_values(
                numbers.iter().map(|n| if rows == 0 { 0.0 } else { n.1 as f64 * 100.0 / rows as f64 }),
            )),
            Arc::new(Int64Array::from(numbers.iter().map(|n| n.2).collect::<Vec<_>>())),
            Arc::new(StringArray::from(out.iter().map(|o| o[0].clone()).collect::<Vec<_>>())),
            Arc::new(StringArray::from(out.iter().map(|o| o[1].clone()).collect::<Vec<_>>())),
            Arc::new(Float64Array::from(numbers.iter().map(|n| n.3).collect::<Vec<_>>())),
            Arc::new(Float64Array::from(numbers.iter().map(|n| n.4).collect::<Vec<_>>())),
            Arc::new(StringArray::from(out.iter().map(|o| o[2].clone()).collect::<Vec<_>>())),
        ];
        let batch = RecordBatch::try_new(schema(), columns)?;
        Ok(batch)
    }
}
