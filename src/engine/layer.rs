//! One `SchemaProvider` per lake layer (`bronze`, `silver`, `gold`): every
//! lookup reads the table's latest committed Delta version, so tables that
//! another process creates or changes are visible to the next query.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use std::borrow::Cow;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{ScanArgs, ScanResult, SchemaProvider, Session};
use datafusion::common::{Constraints, Statistics};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, LogicalPlan, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use deltalake::DeltaTable;

use super::estimates::{Source, TableEstimates};
use super::memory::MemoryTables;
use crate::storage::{Lake, Layer};

#[derive(Debug)]
pub struct LayerSchema {
    lake: Arc<Lake>,
    layer: Layer,
    /// Tables served from memory (`serve: { memory: true }`).
    memory: Arc<MemoryTables>,
    /// The provider built for each table's latest version seen: catalog
    /// queries look every table up, and most lookups find no new commit.
    providers: Mutex<HashMap<String, (u64, Arc<dyn TableProvider>)>>,
    /// The estimates of each table's latest version seen, shared by the
    /// providers of that version (a table in memory gets a new one per query).
    estimates: Mutex<HashMap<String, (u64, Estimates)>>,
}

/// A table version's estimates, read from its log when first asked for.
type Estimates = Arc<OnceLock<Option<Arc<TableEstimates>>>>;

impl LayerSchema {
    pub fn new(lake: Arc<Lake>, layer: Layer, memory: Arc<MemoryTables>) -> Self {
        LayerSchema {
            lake,
            layer,
            memory,
            providers: Mutex::new(HashMap::new()),
            estimates: Mutex::new(HashMap::new()),
        }
    }

    /// The shared estimates of `name` at `version` (none shared without one).
    fn estimates_of(&self, name: &str, version: Option<u64>) -> Estimates {
        let Some(version) = version else {
            return Estimates::default();
        };
        let mut cache = self.estimates.lock().expect("estimates cache poisoned");
        match cache.get(name) {
            Some((seen, estimates)) if *seen == version => estimates.clone(),
            _ => {
                let estimates = Estimates::default();
                cache.insert(name.to_string(), (version, estimates.clone()));
                estimates
            }
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
            self.estimates.lock().expect("estimates cache poisoned").remove(name);
            self.memory.forget(self.layer, name);
            return Ok(None);
        };
        let version = table.version();
        let estimates = self.estimates_of(name, version);
        if let Some(version) = version
            && let Some(memory) = self.memory.get(self.layer, name, version)
        {
            return Ok(Some(Arc::new(LakeTable {
                inner: memory,
                layer: self.layer,
                name: name.to_string(),
                table,
                in_memory: true,
                estimates,
            })));
        }
        if let Some(version) = version
            && let Some((seen, provider)) = self.providers.lock().expect("provider cache poisoned").get(name)
            && *seen == version
        {
            return Ok(Some(provider.clone()));
        }
        let delta = table.table_provider().await?;
        if let Some(version) = version
            && self.memory.wants(self.layer, name)
        {
            // This query reads the files; the next ones, memory.
            self.memory.load_later(self.layer, name, version, delta.clone());
        }
        let provider: Arc<dyn TableProvider> = Arc::new(LakeTable {
            inner: delta,
            layer: self.layer,
            name: name.to_string(),
            table,
            in_memory: false,
            estimates,
        });
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

/// A lake table as queries see it: Delta's own scan of one committed
/// version (or that version held in memory), plus what the cluster needs
/// to read that same version elsewhere (which table, its files).
/// Everything a query asks of it is the scan's answer.
#[derive(Debug)]
pub struct LakeTable {
    inner: Arc<dyn TableProvider>,
    layer: Layer,
    name: String,
    /// The table at the version `inner` reads.
    table: DeltaTable,
    /// `inner` is that version decoded in memory, not its files.
    in_memory: bool,
    /// Rows and column ranges of that version, read from the log when the
    /// join order first asks.
    estimates: Estimates,
}

impl LakeTable {
    pub fn layer(&self) -> Layer {
        self.layer
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Served from memory (only this server holds it).
    pub fn in_memory(&self) -> bool {
        self.in_memory
    }

    /// The Delta table at the version this provider reads.
    pub fn delta(&self) -> &DeltaTable {
        &self.table
    }

    pub fn estimates(&self) -> Option<Arc<TableEstimates>> {
        self.estimates
            .get_or_init(|| TableEstimates::of(&self.table, &self.inner.schema()).map(Arc::new))
            .clone()
    }
}

/// Estimates of the lake tables a plan scans, for the join order.
#[derive(Debug, Default, Clone, Copy)]
pub struct LakeEstimates;

impl Source for LakeEstimates {
    fn table(&self, scan: &datafusion::logical_expr::TableScan) -> Option<Arc<TableEstimates>> {
        let provider = datafusion::datasource::source_as_provider(&scan.source).ok()?;
        provider.downcast_ref::<LakeTable>()?.estimates()
    }
}

#[async_trait]
impl TableProvider for LakeTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn constraints(&self) -> Option<&Constraints> {
        self.inner.constraints()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn get_table_definition(&self) -> Option<&str> {
        self.inner.get_table_definition()
    }

    fn get_logical_plan(&self) -> Option<Cow<'_, LogicalPlan>> {
        self.inner.get_logical_plan()
    }

    fn get_column_default(&self, column: &str) -> Option<&Expr> {
        self.inner.get_column_default(column)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.inner.scan(state, projection, filters, limit).await
    }

    async fn scan_with_args<'a>(&self, state: &dyn Session, args: ScanArgs<'a>) -> Result<ScanResult> {
        self.inner.scan_with_args(state, args).await
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    fn statistics(&self) -> Option<Statistics> {
        self.inner.statistics()
    }

    async fn insert_into(
        &self,
        state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.inner.insert_into(state, input, insert_op).await
    }
}
