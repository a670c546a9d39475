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
    /// Whether a scan with `filters` filters rows inside the Parquet reader
    /// (see [`with_row_filters`]): as `workbench.row_filters` says, or, when
    /// it is `auto` (the default), when the session asks for DataFusion's
    /// `pushdown_filters` or a filter is estimated from the Delta log to keep
    /// at most 1% of the rows on its own (a lookup by key).
    fn row_filters(&self, state: &dyn Session, filters: &[Expr]) -> bool {
        let options = state.config_options();
        let mode = options.extensions.get::<super::PlannerOptions>().map_or("auto", |o| o.row_filters.as_str());
        match mode {
            "on" => true,
            "off" => false,
            _ => {
                options.execution.parquet.pushdown_filters
                    || (!filters.is_empty()
                        && self.estimates().is_some_and(|e| e.most_selective(&self.schema(), filters) <= SELECTIVE))
            }
        }
    }

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
        let on = self.row_filters(state, filters);
        with_row_filters(self.inner.scan(state, projection, filters, limit).await?, on)
    }

    async fn scan_with_args<'a>(&self, state: &dyn Session, args: ScanArgs<'a>) -> Result<ScanResult> {
        let on = self.row_filters(state, args.filters().unwrap_or(&[]));
        let plan = self.inner.scan_with_args(state, args).await?.into_inner();
        Ok(ScanResult::new(with_row_filters(plan, on)?))
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

/// The largest share of a table's rows a filter may keep for the scan to
/// filter rows inside the Parquet reader (`workbench.row_filters = auto`).
const SELECTIVE: f64 = 0.01;

/// The Parquet scans of `plan` with row filters `on` or off.
///
/// A row filter decodes the filter's columns first, then the others only for
/// the rows that passed (and, on, the filters a hash join derives from its
/// build side as it runs are applied the same way). That pays off when few
/// rows pass: a lookup by key reads one row of a 20,000-row page (TPC-H
/// orders: 10 ms instead of 26 ms). It costs when the rows that pass are
/// scattered through every page: Q6 keeps 2% of lineitem through three
/// conditions that each keep 15-50%, and the scan decoded each column row run
/// by row run (0.49 s, against 0.14 s decoding whole pages and filtering
/// after); Q9's join filter keeps 5% of lineitem and took 0.82 s against
/// 0.23 s. Delta's scan turns row filters on whenever a query has a filter;
/// this decides instead. Off, the filters still prune files by the Delta
/// log's statistics and row groups and pages by the Parquet statistics and
/// page index, and the filter above the scan, which Delta keeps (its pushdown
/// is inexact), removes the rest.
fn with_row_filters(plan: Arc<dyn ExecutionPlan>, on: bool) -> Result<Arc<dyn ExecutionPlan>> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::datasource::physical_plan::{FileScanConfigBuilder, ParquetSource};
    use datafusion::datasource::source::DataSourceExec;

    plan.transform_up(|node| {
        let Some((config, parquet)) = node
            .downcast_ref::<DataSourceExec>()
            .and_then(|exec| exec.downcast_to_file_source::<ParquetSource>())
        else {
            return Ok(Transformed::no(node));
        };
        if parquet.table_parquet_options().global.pushdown_filters == on {
            return Ok(Transformed::no(node));
        }
        let source = parquet.clone().with_pushdown_filters(on);
        let config = FileScanConfigBuilder::from(config.clone()).with_source(Arc::new(source)).build();
        Ok(Transformed::yes(DataSourceExec::from_data_source(config) as Arc<dyn ExecutionPlan>))
    })
    .map(|transformed| transformed.data)
}
