//! The `workbench` schema: the metadata store's tables, read-only, with
//! equality filters on text columns pushed down to the store.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{SchemaProvider, Session};
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use crate::meta::MetaStore;
use crate::meta::tables::{Kind, TABLES, TableDef};

#[derive(Debug)]
pub struct MetadataSchema {
    store: Arc<MetaStore>,
    /// Tables computed by layers above (`workbench.schedules`), registered
    /// once at start-up.
    computed: RwLock<BTreeMap<String, Arc<dyn TableProvider>>>,
}

impl MetadataSchema {
    pub fn new(store: Arc<MetaStore>) -> Self {
        MetadataSchema {
            store,
            computed: RwLock::new(BTreeMap::new()),
        }
    }

    fn computed(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<dyn TableProvider>>> {
        self.computed.read().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl SchemaProvider for MetadataSchema {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|t| t.name.to_string()).chain(self.computed().keys().cloned()).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if let Some(table) = self.computed().get(name) {
            return Ok(Some(table.clone()));
        }
        Ok(TABLES.iter().find(|t| t.name == name).map(|def| {
            Arc::new(MetadataTable {
                store: self.store.clone(),
                def,
            }) as Arc<dyn TableProvider>
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.iter().any(|t| t.name == name) || self.computed().contains_key(name)
    }

    /// Only computed tables are registered; the store's own are fixed.
    fn register_table(&self, name: String, table: Arc<dyn TableProvider>) -> Result<Option<Arc<dyn TableProvider>>> {
        if TABLES.iter().any(|t| t.name == name) {
            return Err(DataFusionError::Plan(format!("workbench.{name} is a metadata table and cannot be replaced")));
        }
        Ok(self.computed.write().unwrap_or_else(|p| p.into_inner()).insert(name, table))
    }
}

#[derive(Debug)]
struct MetadataTable {
    store: Arc<MetaStore>,
    def: &'static TableDef,
}

impl MetadataTable {
    /// `text_column = 'literal'` (either way round) → (column, value).
    fn equality(&self, filter: &Expr) -> Option<(String, String)> {
        let Expr::BinaryExpr(BinaryExpr { left, op: Operator::Eq, right }) = filter else {
            return None;
        };
        let (column, value) = match (left.as_ref(), right.as_ref()) {
            (Expr::Column(c), Expr::Literal(v, _)) | (Expr::Literal(v, _), Expr::Column(c)) => (c, v),
            _ => return None,
        };
        let Column { name, .. } = column;
        if self.def.kind_of(name) != Some(Kind::Text) {
            return None;
        }
        match value {
            ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s)) => {
                Some((name.clone(), s.clone()))
            }
            _ => None,
        }
    }
}

#[async_trait]
impl TableProvider for MetadataTable {
    fn schema(&self) -> SchemaRef {
        self.def.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| match self.equality(f) {
                // The store applies it; DataFusion re-checks (exact SQL equality
                // semantics may differ in collation).
                Some(_) => TableProviderFilterPushDown::Inexact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let equal: Vec<(String, String)> = filters.iter().filter_map(|f| self.equality(f)).collect();
        let batch = self
            .store
            .read_table(self.def, &equal)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(MemorySourceConfig::try_new_exec(&[vec![batch]], self.schema(), projection.cloned())?)
    }
}
