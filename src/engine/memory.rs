//! Hot tables: the lake tables a spec asks to serve from memory
//! (`serve: { memory: true }`), kept decoded in Arrow memory at their
//! latest Delta version, within one budget for the whole process
//! (`table_memory_budget`).
//!
//! A version is loaded in the background (when the server starts, when a
//! refresh sees a new commit, or when a query meets a version not loaded
//! yet); until it is complete, queries read that version's files. A query
//! gets one provider for one version, so it never sees a mix. A table that
//! does not fit the budget stays on its files, says so in a metric and a
//! warning, and is tried again at its next version.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;

use super::join_filters::HeldJoinFilters;

use crate::storage::{Lake, Layer};

type TableKey = (Layer, String);

/// One table's version held in memory.
struct Loaded {
    version: u64,
    table: Arc<HotTable>,
    bytes: u64,
}

/// A version's rows, decoded, one list of batches per partition.
#[derive(Debug)]
struct HotTable {
    schema: SchemaRef,
    partitions: Vec<Vec<RecordBatch>>,
}

#[async_trait]
impl TableProvider for HotTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let source = MemorySourceConfig::try_new(&self.partitions, self.schema.clone(), projection.cloned())?
            .with_show_sizes(state.config_options().explain.show_sizes);
        Ok(HeldJoinFilters::scan(source))
    }
}

#[derive(Default)]
struct State {
    /// The tables the specs ask to keep in memory.
    wanted: HashSet<TableKey>,
    loaded: HashMap<TableKey, Loaded>,
    /// The version last tried per table (being loaded, loaded, or over
    /// budget): each version is tried once.
    tried: HashMap<TableKey, u64>,
}

/// The process's hot tables and their budget.
pub struct MemoryTables {
    budget: u64,
    state: Mutex<State>,
    /// Bytes read so far by the loads under way (counted against the budget).
    loading: Arc<AtomicU64>,
}

impl std::fmt::Debug for MemoryTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryTables").field("budget", &self.budget).field("bytes", &self.bytes()).finish()
    }
}

/// Why a version was not loaded.
#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("it needs more than the {} left of table_memory_budget ({})", bytesize::ByteSize(*.available), bytesize::ByteSize(*.budget))]
    OverBudget { available: u64, budget: u64 },
    #[error("{0}")]
    Read(#[from] DataFusionError),
}

fn label(key: &TableKey) -> String {
    format!("{}.{}", key.0, key.1)
}

impl MemoryTables {
    pub fn new(budget: u64) -> Arc<MemoryTables> {
        Arc::new(MemoryTables { budget, state: Mutex::new(State::default()), loading: Arc::new(AtomicU64::new(0)) })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keep exactly `tables` in memory from now on; tables no longer asked
    /// for are let go.
    pub fn keep(&self, tables: impl IntoIterator<Item = (Layer, String)>) {
        let mut state = self.state();
        state.wanted = tables.into_iter().collect();
        let State { wanted, loaded, tried } = &mut *state;
        loaded.retain(|key, _| {
            let keep = wanted.contains(key);
            if !keep {
                crate::metrics::memory_table(&label(key), 0, false);
            }
            keep
        });
        tried.retain(|key, _| wanted.contains(key));
    }

    pub fn wants(&self, layer: Layer, name: &str) -> bool {
        self.state().wanted.contains(&(layer, name.to_string()))
    }

    /// Bytes held now, all tables together.
    pub fn bytes(&self) -> u64 {
        self.state().loaded.values().map(|l| l.bytes).sum()
    }

    /// The table at `version`, from memory, when that version is loaded.
    pub fn get(&self, layer: Layer, name: &str, version: u64) -> Option<Arc<dyn TableProvider>> {
        let state = self.state();
        let loaded = state.loaded.get(&(layer, name.to_string()))?;
        (loaded.version == version).then(|| loaded.table.clone() as Arc<dyn TableProvider>)
    }

    /// The table is gone from the lake: let its memory go.
    pub fn forget(&self, layer: Layer, name: &str) {
        let key = (layer, name.to_string());
        let mut state = self.state();
        if state.loaded.remove(&key).is_some() {
            crate::metrics::memory_table(&label(&key), 0, false);
        }
        state.tried.remove(&key);
    }

    /// Claim `version` of a table for loading: false when it is not wanted
    /// or that version was tried already.
    fn claim(&self, key: &TableKey, version: u64) -> bool {
        let mut state = self.state();
        if !state.wanted.contains(key) || state.tried.get(key) == Some(&version) {
            return false;
        }
        state.tried.insert(key.clone(), version);
        true
    }

    /// Load `version` in the background unless it is loaded, being loaded
    /// or was found not to fit; `files` is the provider reading its files.
    pub fn load_later(self: &Arc<Self>, layer: Layer, name: &str, version: u64, files: Arc<dyn TableProvider>) {
        let key = (layer, name.to_string());
        if !self.claim(&key, version) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move { this.load(key, version, files).await });
    }

    /// Bring every wanted table's latest version into memory (one at a
    /// time, so loading never takes every core from the queries).
    pub async fn refresh(self: &Arc<Self>, lake: &Lake) {
        let wanted: Vec<TableKey> = self.state().wanted.iter().cloned().collect();
        for key in wanted {
            let table = match lake.table(key.0, &key.1).await {
                Ok(Some(table)) => table,
                Ok(None) => {
                    self.forget(key.0, &key.1);
                    continue;
                }
                Err(err) => {
                    tracing::debug!(table = %label(&key), %err, "memory tables: reading the table's log failed");
                    continue;
                }
            };
            let Some(version) = table.version() else { continue };
            if !self.claim(&key, version) {
                continue;
            }
            match table.table_provider().await {
                Ok(files) => self.load(key, version, files).await,
                Err(err) => tracing::warn!(table = %label(&key), %err, "memory tables: opening the table failed"),
            }
        }
    }

    /// Read `version` whole and swap it in, or leave the table on its files.
    async fn load(&self, key: TableKey, version: u64, files: Arc<dyn TableProvider>) {
        let started = std::time::Instant::now();
        let others: u64 = self.state().loaded.iter().filter(|(k, _)| **k != key).map(|(_, l)| l.bytes).sum();
        let budget = Budget { total: self.budget, others, loading: self.loading.clone() };
        let read = super::executor::on_lake("loading a table into memory", async move { Ok(read_all(files, budget).await) }).await;
        match read.unwrap_or_else(|e| Err(LoadError::Read(e))) {
            Ok((table, bytes)) => {
                let mut state = self.state();
                // Still wanted, and no newer version was swapped in meanwhile.
                let newer = state.loaded.get(&key).is_some_and(|l| l.version > version);
                if state.wanted.contains(&key) && !newer {
                    state.loaded.insert(key.clone(), Loaded { version, table: Arc::new(table), bytes });
                    crate::metrics::memory_table(&label(&key), bytes, false);
                    crate::metrics::memory_table_load("loaded");
                    tracing::info!(table = %label(&key), version, bytes, seconds = started.elapsed().as_secs_f64(), "table held in memory");
                }
            }
            Err(err @ LoadError::OverBudget { .. }) => {
                let mut state = self.state();
                // An older version in memory would be stale: queries read the files.
                state.loaded.remove(&key);
                crate::metrics::memory_table(&label(&key), 0, true);
                crate::metrics::memory_table_load("over_budget");
                tracing::warn!(table = %label(&key), version, "not served from memory: {err}; queries read its files (raise table_memory_budget or keep fewer tables in memory)");
            }
            Err(err) => {
                let mut state = self.state();
                state.loaded.remove(&key);
                crate::metrics::memory_table(&label(&key), 0, false);
                crate::metrics::memory_table_load("failed");
                tracing::warn!(table = %label(&key), version, %err, "loading the table into memory failed; queries read its files (tried again at its next version)");
            }
        }
    }
}

/// What one load may use: the budget less the other tables held and what
/// the other loads under way have read so far.
struct Budget {
    total: u64,
    others: u64,
    loading: Arc<AtomicU64>,
}

/// This load's share of [`MemoryTables::loading`], given back when it ends.
struct Reading<'a> {
    loading: &'a AtomicU64,
    mine: AtomicU64,
}

impl Reading<'_> {
    /// Count `bytes` more; false when the budget is exceeded.
    fn add(&self, bytes: u64, budget: &Budget) -> bool {
        self.mine.fetch_add(bytes, Ordering::Relaxed);
        let loading = self.loading.fetch_add(bytes, Ordering::Relaxed) + bytes;
        budget.others + loading <= budget.total
    }
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        self.loading.fetch_sub(self.mine.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// Every row of `files`, in as many partitions as its scan has, unless
/// they do not fit `budget`.
async fn read_all(files: Arc<dyn TableProvider>, budget: Budget) -> std::result::Result<(HotTable, u64), LoadError> {
    let partitions = std::thread::available_parallelism().map_or(2, |n| n.get());
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(partitions));
    let schema: SchemaRef = files.schema();
    let plan: Arc<dyn ExecutionPlan> = ctx.read_table(files)?.create_physical_plan().await?;
    let reading = Reading { loading: &budget.loading, mine: AtomicU64::new(0) };
    let over = || LoadError::OverBudget { available: budget.total.saturating_sub(budget.others), budget: budget.total };
    let count = plan.output_partitioning().partition_count();
    let readers = (0..count).map(|partition| {
        let (plan, task, schema, reading, budget, over) = (plan.clone(), ctx.task_ctx(), schema.clone(), &reading, &budget, &over);
        async move {
            let mut stream = plan.execute(partition, task)?;
            let mut batches = Vec::new();
            while let Some(batch) = stream.next().await {
                let batch = conform(&schema, batch?)?;
                if !reading.add(batch.get_array_memory_size() as u64, budget) {
                    return Err(over());
                }
                batches.push(batch);
            }
            Ok::<_, LoadError>(batches)
        }
    });
    let read: Vec<Vec<RecordBatch>> = futures::future::try_join_all(readers).await?;
    let table = HotTable { schema, partitions: balanced(read, partitions) };
    Ok((table, reading.mine.load(Ordering::Relaxed)))
}

/// The batches dealt out over `n` partitions so that each holds about as
/// many rows: a scan's partitions are byte ranges of files and can be far
/// apart in rows (or one, for a small file), and a query over the table
/// runs one thread per partition.
fn balanced(read: Vec<Vec<RecordBatch>>, n: usize) -> Vec<Vec<RecordBatch>> {
    let mut dealt: Vec<(usize, Vec<RecordBatch>)> = (0..n.max(1)).map(|_| (0, Vec::new())).collect();
    for batch in read.into_iter().flatten() {
        if let Some((rows, batches)) = dealt.iter_mut().min_by_key(|(rows, _)| *rows) {
            *rows += batch.num_rows();
            batches.push(batch);
        }
    }
    dealt.into_iter().map(|(_, batches)| batches).collect()
}

/// `batch` under the table's own schema (the scan may differ in field
/// metadata or nullability; a type it differs in is cast).
fn conform(schema: &SchemaRef, batch: RecordBatch) -> Result<RecordBatch> {
    if batch.schema() == *schema {
        return Ok(batch);
    }
    let columns = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, column)| {
            if column.data_type() == field.data_type() {
                Ok(column.clone())
            } else {
                datafusion::arrow::compute::cast(column, field.data_type()).map_err(DataFusionError::from)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
