//! Workbench table functions, one file each. Arguments are checked when the
//! query is planned (`call_with_args`); the work happens when it runs (`scan`).

mod args;
mod history;
mod lineage;
mod preview;
mod preview_raw;
mod profile;
mod run;
mod table_at;
mod validate;

use std::sync::Arc;

use datafusion::prelude::SessionContext;

use crate::engine::Engine;
use crate::meta::MetaStore;
use crate::pipeline::Pipeline;
use crate::storage::Lake;

/// What the table functions work with.
#[derive(Clone)]
pub struct Services {
    pub lake: Arc<Lake>,
    pub meta: Arc<MetaStore>,
    pub engine: Arc<Engine>,
    /// Absent when the server runs without specs.
    pub pipeline: Option<Arc<Pipeline>>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").field("lake", &self.lake.root()).finish()
    }
}

/// A table function result with a fixed schema whose rows are computed
/// when the query runs.
#[async_trait::async_trait]
pub trait Rows: std::fmt::Debug + Send + Sync + 'static {
    fn schema(&self) -> datafusion::arrow::datatypes::SchemaRef;
    async fn rows(&self) -> datafusion::error::Result<datafusion::arrow::array::RecordBatch>;
}

/// The `TableProvider` for any [`Rows`].
#[derive(Debug)]
pub struct RowsTable<R: Rows>(pub R);

#[async_trait::async_trait]
impl<R: Rows> datafusion::datasource::TableProvider for RowsTable<R> {
    fn schema(&self) -> datafusion::arrow::datatypes::SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> datafusion::datasource::TableType {
        datafusion::datasource::TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        _filters: &[datafusion::logical_expr::Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let batch = self.0.rows().await?;
        Ok(datafusion::datasource::memory::MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.0.schema(),
            projection.cloned(),
        )?)
    }
}

/// Register every table function on `ctx`.
pub fn register(ctx: &SessionContext, services: Services) {
    if let Some(pipeline) = &services.pipeline {
        ctx.register_udtf("run", Arc::new(run::RunFunction::new(pipeline.clone())));
        ctx.register_udtf("preview", Arc::new(preview::Preview(services.clone())));
    }
    ctx.register_udtf("preview_raw", Arc::new(preview_raw::PreviewRaw(services.clone())));
    ctx.register_udtf("history", Arc::new(history::History(services.clone())));
    ctx.register_udtf("table_at", Arc::new(table_at::TableAt(services.clone())));
    ctx.register_udtf("lineage", Arc::new(lineage::Lineage(services.clone())));
    ctx.register_udtf("validate", Arc::new(validate::Validate(services.clone())));
    ctx.register_udtf("profile", Arc::new(profile::Profile(services)));
}
