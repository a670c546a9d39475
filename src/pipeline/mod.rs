//! Runs datasets: landing files or a Postgres query → bronze (faithful copy
//! plus ingest metadata) → silver (rules applied, written with the spec's
//! mode) → gold models in dependency order. Each step is one Delta commit
//! tagged with the run id, so a failed run leaves every table at its last
//! committed version.
//!
//! One file per layer: [`bronze`], [`silver`], [`gold`]; [`run`] orchestrates
//! a run (locks, history, heartbeat, events); this file holds the types they
//! share and the pipeline's set-up.

mod backfill;
mod bronze;
mod cdc;
mod cdc_silver;
mod column_lineage;
mod downstream;
mod gold;
mod maintenance;
mod monitor;
mod preview;
mod rule_lineage;
pub mod rules;
mod run;
mod scd2;
mod silver;
mod upload;
pub mod sources;

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::DataFrame;

use crate::cache::Coordinator;
use crate::engine::Engine;
use crate::meta::{DatasetRecord, LineageEdge, MetaStore};
use crate::spec::{Project, Spec};
use crate::storage::{Lake, Layer, StorageError};
pub use backfill::{BackfillProgress, Step, slices};
pub use downstream::DatasetOutcome;
pub use monitor::DatasetFreshness;
pub use run::new_run_id;
pub use upload::{CsvFraming, Uploaded};
pub use sources::DateWindow;
use bronze::with_metadata;

/// Ingest metadata columns bronze adds to every row.
pub const BRONZE_METADATA: [&str; 5] = ["_run_id", "_source_file", "_source_hash", "_ingested_at", "_row_number"];
/// Silver commit metadata: the bronze version the silver table has consumed.
const BRONZE_VERSION_KEY: &str = "workbench.bronze_version";
/// Of those, the ones silver keeps (the rest only serve the rules).
pub(crate) const SILVER_METADATA_DROPPED: [&str; 3] = ["_source_hash", "_ingested_at", "_row_number"];

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("unknown dataset '{0}'; `workbench check` lists the specs it loaded")]
    UnknownDataset(String),
    #[error("no run with id '{0}'; SELECT id, status FROM workbench.runs ORDER BY started_at DESC lists them")]
    UnknownRun(String),
    #[error("{0}")]
    Rule(#[from] rules::RuleError),
    #[error("{0}")]
    Source(#[from] sources::SourceError),
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("{step}: {message}")]
    Step { step: String, message: String },
    #[error("{0}")]
    Meta(#[from] crate::meta::MetaError),
    #[error("dataset '{dataset}' is already being run by run {holder}; wait for it (SELECT * FROM workbench.runs WHERE id = '{holder}') and try again")]
    Locked { dataset: String, holder: String },
    #[error("cannot take the run lock: {0}")]
    Coordination(String),
    #[error("cannot upload to landing.{dataset}: {message}")]
    Upload { dataset: String, message: String },
    #[error("cannot backfill: {0}")]
    Backfill(String),
    #[error("run {run_id} was cancelled; each table keeps its last fully committed version")]
    Cancelled { run_id: String },
    #[error("run {run_id} timed out after {after} (the dataset's `timeout`); each table keeps its last fully committed version")]
    TimedOut { run_id: String, after: String },
}

impl PipelineError {
    /// Whether running again later may succeed with nothing changed: a
    /// source, the lake's store or the metadata store unreachable, another
    /// writer or run in the way. Data errors (a bad cast, a failed
    /// expectation, a rule on a missing column) are not.
    pub fn is_transient(&self) -> bool {
        match self {
            PipelineError::Source(sources::SourceError::Unreachable(_)) => true,
            PipelineError::Storage(err) => err.is_transient(),
            PipelineError::Meta(err) => err.is_transient(),
            PipelineError::Locked { .. } | PipelineError::Coordination(_) => true,
            _ => false,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    /// Not run: a dataset it follows did not succeed.
    Skipped,
}

impl RunStatus {
    /// How a run that ended with `err` ended.
    pub fn of(err: &PipelineError) -> RunStatus {
        match err {
            PipelineError::Cancelled { .. } => RunStatus::Cancelled,
            PipelineError::TimedOut { .. } => RunStatus::TimedOut,
            _ => RunStatus::Failed,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::TimedOut => "timed_out",
            RunStatus::Skipped => "skipped",
        }
    }
}

fn step_error(step: &str, err: impl std::fmt::Display) -> PipelineError {
    PipelineError::Step {
        step: step.to_string(),
        message: err.to_string(),
    }
}

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub full_refresh: bool,
    pub window: DateWindow,
    /// Who started the run: cli, sql, startup, schedule, api.
    pub trigger: String,
    /// Wait up to this long for another run of the same dataset to finish
    /// (instead of failing at once).
    pub wait: Option<std::time::Duration>,
    /// The run's id, when the caller needs it before the run starts (the
    /// scheduler claims a slot with it); a new one otherwise.
    pub run_id: Option<String>,
    /// The scheduled slot this run is for, recorded in its parameters.
    pub slot: Option<chrono::DateTime<chrono::Utc>>,
    /// Ingest only these landing files (a file-arrival run: the files seen
    /// complete), not every file the source path matches.
    pub files: Option<Vec<String>>,
    /// Whether the caller holds the datasets' run locks (a backfill runs
    /// its slices side by side under one lock; their writes reconcile as
    /// racing runs'). Only the pipeline itself can say yes.
    pub lock_held: LockHeld,
    /// Told of each step as it starts and ends (`workbench run` shows it).
    pub progress: ProgressSink,
    /// A change-data-capture dataset's run goes on until it is stopped
    /// (`serve`), instead of stopping once it caught up.
    pub continuous: bool,
}

/// What a run tells whoever watches it, as it goes.
#[derive(Debug, Clone)]
pub enum RunProgress {
    StepStarted { run_id: String, dataset: String, layer: Layer, table: String },
    StepFinished(StepReport),
}

/// Where a run's [`RunProgress`] goes.
#[derive(Clone, Default)]
pub struct ProgressSink(Option<Arc<dyn Fn(&RunProgress) + Send + Sync>>);

impl ProgressSink {
    pub fn new(sink: impl Fn(&RunProgress) + Send + Sync + 'static) -> ProgressSink {
        ProgressSink(Some(Arc::new(sink)))
    }

    fn emit(&self, event: RunProgress) {
        if let Some(sink) = &self.0 {
            sink(&event);
        }
    }
}

impl std::fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "ProgressSink(watched)" } else { "ProgressSink(none)" })
    }
}

/// See [`RunOptions::lock_held`].
#[derive(Debug, Clone, Copy, Default)]
pub struct LockHeld(bool);

/// Which attempt of a run this is: the first, or a retry of `first`.
#[derive(Debug, Clone)]
struct Attempt {
    number: u32,
    /// The first attempt's run id, for retries.
    first: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepStatus {
    Ok,
    Skipped,
    Failed,
}

impl StepStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            StepStatus::Ok => "ok",
            StepStatus::Skipped => "skipped",
            StepStatus::Failed => "failed",
        }
    }
}

/// One step of a run, as `run()` and `workbench run` report it.
#[derive(Debug, Clone)]
pub struct StepReport {
    pub run_id: String,
    pub dataset: String,
    pub layer: Layer,
    pub table: String,
    pub rows_in: u64,
    pub rows_out: u64,
    pub rows_rejected: u64,
    pub status: StepStatus,
    pub duration_ms: u64,
    pub message: Option<String>,
}

impl StepReport {
    fn new(run_id: &str, dataset: &str, layer: Layer, table: &str) -> Self {
        StepReport {
            run_id: run_id.to_string(),
            dataset: dataset.to_string(),
            layer,
            table: table.to_string(),
            rows_in: 0,
            rows_out: 0,
            rows_rejected: 0,
            status: StepStatus::Ok,
            duration_ms: 0,
            message: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunReport {
    pub run_id: String,
    pub steps: Vec<StepReport>,
    /// Set when a step failed; later steps did not run.
    pub error: Option<String>,
    pub status: RunStatus,
    /// Attempts made (1 unless transient failures were retried).
    pub attempts: u32,
    /// The failure was transient (see [`PipelineError::is_transient`]).
    transient: bool,
    progress: ProgressSink,
}

impl RunReport {
    /// A step starts.
    fn started(&self, dataset: &str, layer: Layer, table: &str) {
        self.progress.emit(RunProgress::StepStarted {
            run_id: self.run_id.clone(),
            dataset: dataset.to_string(),
            layer,
            table: table.to_string(),
        });
    }

    /// A step ended.
    fn push(&mut self, step: StepReport) {
        self.progress.emit(RunProgress::StepFinished(step.clone()));
        self.steps.push(step);
    }
}

pub struct Pipeline {
    lake: Arc<Lake>,
    engine: Arc<Engine>,
    meta: Arc<MetaStore>,
    coordinator: Arc<Coordinator>,
    lock_ttl: std::time::Duration,
    project: Project,
    notifier: Arc<crate::alerts::Notifier>,
    /// The largest upload accepted (`upload_max_size`).
    upload_max_bytes: usize,
    /// Runs working in this process, by id: cancelling one stops it.
    running: std::sync::Mutex<std::collections::HashMap<String, tokio_util::sync::CancellationToken>>,
    /// One turn at a time for the runs of this process writing one silver or
    /// gold table (a backfill's slices run side by side under one lock).
    writers: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Pipeline {
    pub fn new(
        lake: Arc<Lake>,
        engine: Arc<Engine>,
        meta: Arc<MetaStore>,
        coordinator: Arc<Coordinator>,
        lock_ttl: std::time::Duration,
        project: Project,
    ) -> Self {
        let notifier = Arc::new(crate::alerts::Notifier::new(meta.clone(), coordinator.clone()));
        Pipeline { lake, engine, meta, coordinator, lock_ttl, project, notifier, upload_max_bytes: 512 * 1024 * 1024, running: Default::default(), writers: Default::default() }
    }

    /// Wait for this process's turn to write `table` (`layer.name`): each
    /// writer plans from what the one before it committed.
    async fn write_turn(&self, table: String) -> tokio::sync::OwnedMutexGuard<()> {
        let gate = self.writers.lock().expect("write turns").entry(table).or_default().clone();
        gate.lock_owned().await
    }

    /// [`write_turn`](Self::write_turn) if no one has it now.
    fn try_write_turn(&self, table: String) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        let gate = self.writers.lock().expect("write turns").entry(table).or_default().clone();
        gate.try_lock_owned().ok()
    }

    /// Record every spec in the metadata store; specs that disappeared are
    /// marked retired (their history stays).
    pub async fn sync_datasets(&self) -> Result<(), crate::meta::MetaError> {
        let records: Vec<DatasetRecord> = self
            .project
            .datasets
            .iter()
            .map(|d| {
                let mut tables = vec![format!("bronze.{}", d.name)];
                if d.silver.is_some() {
                    tables.push(format!("silver.{}", d.name));
                }
                tables.extend(d.gold.iter().map(|g| format!("gold.{g}")));
                DatasetRecord {
                    name: d.name.clone(),
                    description: d.description.clone(),
                    owner: d.owner.clone(),
                    spec_hash: d.hash.clone(),
                    spec_text: crate::spec::secrets::redact(&d.text),
                    spec_file: d.file.display().to_string(),
                    tables,
                    schedule: d.schedule.as_ref().map(|s| s.describe()),
                }
            })
            .collect();
        self.meta.sync_datasets(&records).await
    }

    /// Wait for alerts being delivered (before a `workbench run` exits).
    pub async fn flush_alerts(&self) {
        self.notifier.flush().await;
    }

    /// Accept uploads up to `bytes`.
    pub fn with_upload_limit(mut self, bytes: usize) -> Pipeline {
        self.upload_max_bytes = bytes;
        self
    }

    /// The largest upload accepted.
    pub fn upload_limit(&self) -> usize {
        self.upload_max_bytes
    }

    /// How long a lock (and a heartbeat) outlives a process that died.
    pub fn lock_ttl(&self) -> std::time::Duration {
        self.lock_ttl
    }

    pub fn meta(&self) -> &Arc<MetaStore> {
        &self.meta
    }

    pub fn project(&self) -> &Project {
        &self.project
    }

    /// The tables the specs ask the server to keep in memory (`serve: { memory: ... }`).
    pub fn tables_in_memory(&self) -> Vec<(Layer, String)> {
        let mut tables = Vec::new();
        for spec in &self.project.datasets {
            let memory = spec.memory;
            if memory.bronze {
                tables.push((Layer::Bronze, spec.name.clone()));
            }
            if memory.silver && spec.silver.is_some() {
                tables.push((Layer::Silver, spec.name.clone()));
            }
            if memory.gold {
                tables.extend(spec.gold.iter().map(|model| (Layer::Gold, model.clone())));
            }
        }
        tables
    }

    /// Plan `spec`'s rules on a sample of its first landing file, so
    /// references to columns that do not exist are reported with the rule's
    /// location before anything runs. Sources without files are skipped.
    pub async fn dry_plan(&self, spec: &Spec) -> Result<bool, PipelineError> {
        let (Some(silver), Some(pattern)) = (&spec.silver, &spec.source.path) else {
            return Ok(false);
        };
        let step = format!("check {}", spec.name);
        let files = self.landing_files(pattern).await.map_err(|e| step_error(&step, e))?;
        let Some(first) = files.first() else { return Ok(false) };
        let bytes = self.lake.read_bytes(first).await.map_err(|e| step_error(&step, e))?;
        let batches: Vec<RecordBatch> = sources::read_file_head(&spec.source.format, first, &bytes, Some(1000))?
            .into_iter()
            .map(|b| with_metadata(b, "check", first, "check", 0))
            .collect::<Result<_, _>>()
            .map_err(|e| step_error(&step, e))?;
        let ctx = self.engine.internal_session();
        let Some(schema) = batches.first().map(|b| b.schema()) else { return Ok(false) };
        let table = datafusion::datasource::MemTable::try_new(schema, vec![batches]).map_err(|e| step_error(&step, e))?;
        let df = ctx.read_table(Arc::new(table)).map_err(|e| step_error(&step, e))?;
        rules::apply(&ctx, df, &silver.rules).await?;
        Ok(true)
    }

    /// Datasets with a layer table that does not exist yet.
    pub async fn unbuilt(&self) -> Vec<String> {
        let mut names = Vec::new();
        for d in &self.project.datasets {
            let bronze = self.lake.table(Layer::Bronze, &d.name).await.ok().flatten();
            let silver = match d.silver {
                Some(_) => self.lake.table(Layer::Silver, &d.name).await.ok().flatten().map(|_| ()),
                None => Some(()),
            };
            if bronze.is_none() || silver.is_none() {
                names.push(d.name.clone());
            }
        }
        names
    }

    /// Landing files matching `pattern` (relative to the lake), sorted by name.
    async fn landing_files(&self, pattern: &str) -> Result<Vec<String>, String> {
        Ok(self.landing_files_with_times(pattern).await?.into_iter().map(|(p, _)| p).collect())
    }

    /// Landing files matching `pattern` with their modification times, sorted by name.
    async fn landing_files_with_times(&self, pattern: &str) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>)>, String> {
        Ok(self.landing_listing(pattern).await?.into_iter().map(|(p, _, t)| (p, t)).collect())
    }

    /// Landing files matching `pattern` with their size and modification
    /// time, sorted by name (local and object-store lakes alike).
    pub async fn landing_listing(&self, pattern: &str) -> Result<Vec<(String, u64, chrono::DateTime<chrono::Utc>)>, String> {
        let glob = glob::Pattern::new(pattern).map_err(|e| e.to_string())?;
        let parts: Vec<&str> = pattern.split('/').collect();
        let prefix = parts
            .iter()
            .take(parts.len().saturating_sub(1))
            .take_while(|part| !part.contains(['*', '?', '[']))
            .copied()
            .collect::<Vec<_>>()
            .join("/");
        let listed = self.lake.list_sized(&prefix).await.map_err(|e| e.to_string())?;
        let mut matched: Vec<(String, u64, chrono::DateTime<chrono::Utc>)> =
            listed.into_iter().filter(|(p, _, _)| glob.matches(p)).collect();
        matched.sort();
        Ok(matched)
    }

    async fn record_lineage(&self, edges: &[LineageEdge], run_id: &str) {
        if let Err(err) = self.meta.upsert_lineage(edges, run_id).await {
            tracing::warn!(%err, "recording lineage failed");
        }
    }

}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("datasets", &self.project().datasets.len()).finish()
    }
}

async fn count(df: &DataFrame) -> datafusion::error::Result<u64> {
    Ok(df.clone().count().await? as u64)
}

/// A table-level lineage edge.
fn edge(from: &str, to: &str, transform: &str) -> LineageEdge {
    LineageEdge {
        from_table: from.to_string(),
        from_column: String::new(),
        to_table: to.to_string(),
        to_column: String::new(),
        transform: transform.to_string(),
    }
}

/// `workbench.silver.x` / `silver.x` → `silver.x`.
fn normalize(reference: &str) -> String {
    let parts: Vec<&str> = reference.split('.').collect();
    match parts.as_slice() {
        [_, layer, table] => format!("{layer}.{table}"),
        _ => reference.to_string(),
    }
}

/// `stream` as a table its one reader — the Delta writer — scans once, so a
/// write consumes rows produced elsewhere (a landing-file reader, a sort
/// run as the root of its own plan) without collecting them. A second scan
/// is an error naming `what`.
fn scan_once(
    ctx: &datafusion::prelude::SessionContext,
    stream: datafusion::execution::SendableRecordBatchStream,
    what: &'static str,
) -> datafusion::error::Result<datafusion::prelude::DataFrame> {
    use datafusion::physical_plan::streaming::PartitionStream;
    let once = ScanOnce { schema: stream.schema(), stream: std::sync::Mutex::new(Some(stream)), what };
    let table = datafusion::catalog::streaming::StreamingTable::try_new(once.schema.clone(), vec![Arc::new(once) as Arc<dyn PartitionStream>])?;
    ctx.read_table(Arc::new(table))
}

struct ScanOnce {
    schema: datafusion::arrow::datatypes::SchemaRef,
    stream: std::sync::Mutex<Option<datafusion::execution::SendableRecordBatchStream>>,
    what: &'static str,
}

impl std::fmt::Debug for ScanOnce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanOnce").field("what", &self.what).finish_non_exhaustive()
    }
}

impl datafusion::physical_plan::streaming::PartitionStream for ScanOnce {
    fn schema(&self) -> &datafusion::arrow::datatypes::SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<datafusion::execution::TaskContext>) -> datafusion::execution::SendableRecordBatchStream {
        match self.stream.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(stream) => stream,
            None => {
                let what = self.what;
                let twice = futures::stream::once(async move {
                    Err(datafusion::error::DataFusionError::Internal(format!("{what} can be read only once")))
                });
                Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(self.schema.clone(), twice))
            }
        }
    }
}
