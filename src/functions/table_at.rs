//! `table_at('layer.table', version)` or `table_at('layer.table',
//! '2024-05-01T12:00:00Z')`: the table as it was at a Delta version or a
//! point in time (time travel).

use std::sync::Arc;

use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl};
use datafusion::common::{ScalarValue, plan_err};
use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Expr;

use super::{Services, args};
use crate::storage::At;

#[derive(Debug)]
pub struct TableAt(pub Services);

impl TableFunctionImpl for TableAt {
    fn call_with_args(&self, a: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let [table, when] = a.exprs() else {
            return plan_err!("table_at() takes a table and a version or timestamp: table_at('silver.sales', 3)");
        };
        let (layer, name) = args::table("table_at", table)?;
        let caller = super::Caller::of(a.session());
        caller.require_read(layer.as_str(), &name)?;
        let at = match when {
            Expr::Literal(ScalarValue::Utf8(Some(_)) | ScalarValue::Utf8View(Some(_)) | ScalarValue::LargeUtf8(Some(_)), _) => {
                At::Timestamp(args::text("table_at", 2, when)?)
            }
            _ => {
                let version = args::integer("table_at", 2, when)?;
                if version < 0 {
                    return plan_err!("table_at(): versions start at 0, got {version}");
                }
                At::Version(version as u64)
            }
        };
        // The provider's schema is that version's schema, so it must be
        // loaded while planning; the server runs on a multi-threaded runtime.
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| DataFusionError::Plan("table_at() needs the server's runtime".into()))?;
        let lake = self.0.lake.clone();
        let table = tokio::task::block_in_place(|| {
            handle.block_on(async {
                let table = lake
                    .table_at(layer, &name, at)
                    .await
                    .map_err(|e| match e {
                        crate::storage::StorageError::Missing { .. } => DataFusionError::Plan(e.to_string()),
                        other => DataFusionError::Configuration(other.to_string()),
                    })?;
                table.table_provider().await
            })
        })?;
        // Old versions are masked and filtered as the current one is.
        caller.govern(table, layer.as_str(), &name)
    }
}
