//! One `SchemaProvider` per lake layer (`bronze`, `silver`, `gold`): every
//! lookup reads the table's latest committed Delta version, so tables that
//! another process creates or changes are visible to the next query.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::SchemaProvider;
use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result};

use crate::storage::{Lake, Layer};

#[derive(Debug)]
pub struct LayerSchema {
    lake: Arc<Lake>,
    layer: Layer,
}

impl LayerSchema {
    pub fn new(lake: Arc<Lake>, layer: Layer) -> Self {
        LayerSchema { lake, layer }
    }
}

#[async_trait]
impl SchemaProvider for LayerSchema {
    fn table_names(&self) -> Vec<String> {
        self.lake.list_tables_blocking(self.layer)
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(table) = self
            .lake
            .table(self.layer, name)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
        else {
            return Ok(None);
        };
        Ok(Some(table.table_provider().await?))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.table_names().iter().any(|t| t == name)
    }

    fn register_table(
        &self,
        name: String,
        _table: Arc<dyn TableProvider>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        Err(DataFusionError::Plan(format!(
            "cannot create {}.{name}: the {} layer is written only by pipelines (workbench run)",
            self.layer, self.layer
        )))
    }

    fn deregister_table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Err(DataFusionError::Plan(format!(
            "cannot drop {}.{name}: the {} layer is written only by pipelines",
            self.layer, self.layer
        )))
    }
}
