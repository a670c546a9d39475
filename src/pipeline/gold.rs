//! Gold: SQL models over silver (and other gold), rebuilt by overwrite, with
//! their column lineage from the logical plan.

use datafusion::prelude::SessionContext;

use super::{Pipeline, PipelineError, column_lineage, step_error};
use crate::meta::LineageEdge;
use crate::storage::{Layer, WriteKind};

impl Pipeline {
    /// Column-level edges of a gold model from its logical plan.
    pub(super) async fn gold_column_edges(&self, sql: &str, name: &str) -> Vec<LineageEdge> {
        let ctx = self.engine.internal_session();
        let plan = match ctx.state().create_logical_plan(sql).await {
            Ok(plan) => plan,
            Err(err) => {
                tracing::warn!(%err, model = name, "cannot plan the model for column lineage");
                return Vec::new();
            }
        };
        column_lineage::column_sources(&plan)
            .into_iter()
            .flat_map(|(output, sources)| {
                sources.into_iter().map(move |(table, column)| LineageEdge {
                    from_table: table,
                    from_column: column,
                    to_table: format!("gold.{name}"),
                    to_column: output.clone(),
                    transform: "sql".into(),
                })
            })
            .collect()
    }

    pub(super) async fn build_gold(&self, sql: &str, name: &str, run_id: &str) -> Result<u64, PipelineError> {
        let step = format!("gold.{name}");
        let ctx: SessionContext = self.engine.internal_session();
        let df = ctx.sql(sql).await.map_err(|e| step_error(&step, e.strip_backtrace()))?;
        Ok(self.lake.write_frame(Layer::Gold, name, df, WriteKind::Overwrite, run_id, vec![]).await?.rows_written)
    }
}
