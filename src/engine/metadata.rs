//! The `workbench` schema: the metadata store's tables, read-only, with
//! equality filters on text columns pushed down to the store.

use std::sync::Arc;

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
}

impl MetadataSchema {
    pub fn new(store: Arc<MetaStore>) -> Self {
        MetadataSchema { store }
    }
}

#[async_trait]
impl SchemaProvider for MetadataSchema {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|t| t.name.to_string()).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(TABLES.iter().find(|t| t.name == name).map(|def| {
            Arc::new(MetadataTable {
                store: self.store.clone(),
                def,
            }) as Arc<dyn TableProvider>
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.iter().any(|t| t.name == name)
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
