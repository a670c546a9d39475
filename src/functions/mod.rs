//! Workbench table functions, one file each. Arguments are checked when the
//! query is planned (`call_with_args`); the work happens when it runs (`scan`).

mod run;

use std::sync::Arc;

use datafusion::prelude::SessionContext;

use crate::pipeline::Pipeline;

/// Register every table function on `ctx`.
pub fn register(ctx: &SessionContext, pipeline: Arc<Pipeline>) {
    ctx.register_udtf("run", Arc::new(run::RunFunction::new(pipeline)));
}
