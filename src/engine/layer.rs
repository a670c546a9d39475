//! One `SchemaProvider` per lake layer (`bronze`, `silver`, `gold`): every
//! lookup reads the table's latest committed Delta version, so tables that
//! another process creates or changes are visible to the next query.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::catalog::SchemaProvider;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};

use crate::storage::{Lake, Layer};

#[derive(Debug)]
pub struct LayerSchema {
    lake: Arc<Lake>,
    layer: Layer,
    /// The provider built for each table's latest version seen: catalog
    /// queries look every table up, and most lookups find no new commit.
    providers: Mutex<HashMap<String, (u64, Arc<dyn TableProvider>)>>,
}

impl LayerSchema {
    pub fn new(lake: Arc<Lake>, layer: Layer) -> Self {
        LayerSchema {
            lake,
            layer,
            providers: Mutex::new(HashMap::new()),
        }
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
            self.providers.lock().expect("provider cache poisoned").remove(name);
            return Ok(None);
        };
        let version = table.version();
        if let Some(version) = version
            && let Some((seen, provider)) = self.providers.lock().expect("provider cache poisoned").get(name)
            && *seen == version
        {
            return Ok(Some(provider.clone()));
        }
        let provider = table.table_provider().await?;
        if let Some(version) = version {
            self.providers
                .lock()
                .expect("provider cache poisoned")
                .insert(name.to_string(), (version, provider.clone()));
        }
        Ok(Some(provider))
    }

    /// Every table of a layer is a base table: no need to open it to say so.
    async fn table_type(&self, name: &str) -> Result<Option<TableType>> {
        Ok(self.lake.exists(self.layer, name).await.then_some(TableType::Base))
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
