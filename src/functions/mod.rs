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
