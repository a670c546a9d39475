//! `validate('layer.table' [, suite])`: run the expectations declared for the
//! table in its spec (or an ad-hoc suite in YAML/JSON, same syntax as a
//! spec's `expectations:`) and return one row per check; results are stored
//! in `workbench.validations` under one `validation_id` per call, the id of
//! the call's Data Docs page in the console (`/validations/<id>`).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl};
use datafusion::common::plan_err;
use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result};

use super::{Rows, RowsTable, Services, args};
use crate::quality::{self, CheckResult};
use crate::spec::Expectation;
use crate::storage::Layer;

#[derive(Debug)]
pub struct Validate(pub Services);

impl TableFunctionImpl for Validate {
    fn call_with_args(&self, a: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let exprs = a.exprs();
        if exprs.is_empty() || exprs.len() > 2 {
            return plan_err!("validate() takes a table and optionally a suite: validate('silver.sales') or validate('silver.sales', '- not_null: [id]')");
        }
        let (layer, name) = args::table("validate", &exprs[0])?;
        let caller = super::Caller::of(a.session());
        caller.require_read(layer.as_str(), &name)?;
        if args::optional(exprs, 1).is_some() {
            caller.require(format!("validate() of {layer}.{name} with an ad-hoc suite"), |p| {
                p.can_validate(layer.as_str(), &name)
            })?;
        }
        let expectations: Vec<Expectation> = match args::optional(exprs, 1) {
            Some(suite) => crate::spec::parse_expectations(&args::text("validate", 2, suite)?)
                .map_err(DataFusionError::Configuration)?,
            None => {
                let declared = self.0.pipeline.as_ref().and_then(|p| {
                    p.project()
                        .dataset(&name)
                        .filter(|_| layer == Layer::Silver)
                        .and_then(|d| d.silver.as_ref())
                        .map(|s| s.expectations.iter().map(|e| e.value.clone()).collect::<Vec<_>>())
                });
                match declared {
                    Some(e) if !e.is_empty() => e,
                    _ => {
                        return plan_err!(
                            "no expectations are declared for {layer}.{name}; declare them under silver.expectations in its spec, or pass a suite: validate('{layer}.{name}', '- not_null: [id]')"
                        );
                    }
                }
            }
        };
        let mut checks = Vec::new();
        for e in &expectations {
            checks.extend(quality::compile(e)?);
        }
        Ok(Arc::new(RowsTable(ValidateTable {
            caller,
            services: self.0.clone(),
            layer,
            name,
            checks,
        })))
    }
}

#[derive(Debug)]
struct ValidateTable {
    caller: super::Caller,
    services: Services,
    layer: Layer,
    name: String,
    checks: Vec<quality::Check>,
}

pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("expectation", DataType::Utf8, false),
        Field::new("columns", DataType::Utf8, false),
        Field::new("success", DataType::Boolean, false),
        Field::new("element_count", DataType::Int64, false),
        Field::new("unexpected_count", DataType::Int64, false),
        Field::new("unexpected_percent", DataType::Float64, false),
        Field::new("missing_count", DataType::Int64, false),
        Field::new("partial_unexpected_list", DataType::Utf8, false),
        Field::new("observed_value", DataType::Utf8, true),
        Field::new("validation_id", DataType::Utf8, false),
    ]))
}

fn to_batch(results: &[CheckResult], validation_id: &str) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(results.iter().map(|r| r.expectation.clone()))),
        Arc::new(StringArray::from_iter_values(results.iter().map(|r| r.columns.clone()))),
        Arc::new(BooleanArray::from(results.iter().map(|r| r.success).collect::<Vec<_>>())),
        Arc::new(Int64Array::from_iter_values(results.iter().map(|r| r.element_count))),
        Arc::new(Int64Array::from_iter_values(results.iter().map(|r| r.unexpected_count))),
        Arc::new(Float64Array::from_iter_values(results.iter().map(|r| r.unexpected_percent))),
        Arc::new(Int64Array::from_iter_values(results.iter().map(|r| r.missing_count))),
        Arc::new(StringArray::from_iter_values(
            results.iter().map(|r| serde_json::to_string(&r.partial_unexpected_list).unwrap_or_default()),
        )),
        Arc::new(StringArray::from(results.iter().map(|r| r.observed_value.clone()).collect::<Vec<_>>())),
        Arc::new(StringArray::from_iter_values(results.iter().map(|_| validation_id))),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}

#[async_trait]
impl Rows for ValidateTable {
    fn schema(&self) -> SchemaRef {
        schema()
    }

    async fn rows(&self) -> Result<RecordBatch> {
        let ctx = self.services.engine.internal_session();
        let table = format!("{}.{}", self.layer, self.name);
        let df = self.caller.frame(&ctx, self.layer, &self.name).await?;
        let view = quality::register_view(&ctx, df)?;
        let results = quality::evaluate_all(&ctx, &view, &self.checks).await?;
        let validation_id = uuid::Uuid::now_v7().to_string();
        for r in &results {
            let record = crate::meta::ValidationRecord {
                validation_id: Some(validation_id.clone()),
                validated_by: self.caller.user(),
                ..r.record(&table, None)
            };
            // The caller still gets the results; only the stored report misses them.
            if let Err(err) = self.services.meta.record_validation(&record).await {
                tracing::warn!(%err, %validation_id, "storing a validation result failed");
            }
        }
        to_batch(&results, &validation_id)
    }
}
