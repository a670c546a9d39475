//! Runs datasets: landing files or a Postgres query → bronze (faithful copy
//! plus ingest metadata) → silver (rules applied, written with the spec's
//! mode) → gold models in dependency order. Each step is one Delta commit
//! tagged with the run id, so a failed run leaves every table at its last
//! committed version.

mod column_lineage;
mod ingest;
mod preview;
mod rule_lineage;
pub mod rules;
mod scd2;
pub mod sources;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::{DataFrame, SessionContext, lit};

use crate::cache::{Coordinator, Event, LockGuard};
use crate::engine::Engine;
use crate::meta::{DatasetRecord, LineageEdge, MetaStore, RunRecord, StepRecord};
use crate::spec::{Project, Spec, WriteMode};
use crate::storage::{CommitMetadata, Lake, Layer, StorageError, WriteKind};
use rules::ident;
pub use sources::DateWindow;
use ingest::with_metadata;

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
}

pub struct Pipeline {
    lake: Arc<Lake>,
    engine: Arc<Engine>,
    meta: Arc<MetaStore>,
    coordinator: Arc<Coordinator>,
    lock_ttl: std::time::Duration,
    project: Project,
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
        Pipeline { lake, engine, meta, coordinator, lock_ttl, project }
    }

    /// Take every dataset's run lock, or none: a second run of a dataset
    /// fails naming the run that holds it.
    async fn lock(&self, datasets: &[String], run_id: &str, wait: Option<std::time::Duration>) -> Result<Vec<LockGuard>, PipelineError> {
        let deadline = wait.map(|w| std::time::Instant::now() + w);
        loop {
            match self.try_lock_all(datasets, run_id).await {
                Err(PipelineError::Locked { .. }) if deadline.is_some_and(|d| std::time::Instant::now() < d) => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                other => return other,
            }
        }
    }

    async fn try_lock_all(&self, datasets: &[String], run_id: &str) -> Result<Vec<LockGuard>, PipelineError> {
        let mut names = datasets.to_vec();
        names.sort();
        names.dedup();
        let mut guards = Vec::with_capacity(names.len());
        for name in &names {
            match self.coordinator.try_lock(&format!("dataset:{name}"), run_id, self.lock_ttl).await {
                Ok(Ok(guard)) => guards.push(guard),
                Ok(Err(held)) => {
                    for guard in guards {
                        let _ = guard.release().await;
                    }
                    return Err(PipelineError::Locked {
                        dataset: name.clone(),
                        holder: held.holder,
                    });
                }
                Err(err) => {
                    for guard in guards {
                        let _ = guard.release().await;
                    }
                    return Err(PipelineError::Coordination(err.to_string()));
                }
            }
        }
        Ok(guards)
    }

    async fn publish(&self, kind: &str, fields: Vec<(&str, String)>) {
        let event = Event {
            kind: kind.to_string(),
            fields: fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        };
        if let Err(err) = self.coordinator.publish(event).await {
            tracing::warn!(%err, "publishing a run event failed");
        }
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
                    schedule: d.schedule.clone(),
                }
            })
            .collect();
        self.meta.sync_datasets(&records).await
    }

    /// Mark runs whose process died as abandoned (see `MetaStore::abandon_silent_runs`).
    pub async fn abandon_silent_runs(&self) {
        match self.meta.abandon_silent_runs(self.lock_ttl).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(runs = n, "marked runs whose process stopped as abandoned"),
            Err(err) => tracing::warn!(%err, "checking for abandoned runs failed"),
        }
    }

    pub fn project(&self) -> &Project {
        &self.project
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

    /// Run `datasets` (all when empty) and the gold models that depend on
    /// them, recording the run, its steps, files and lineage.
    pub async fn run(&self, datasets: &[String], options: &RunOptions) -> Result<RunReport, PipelineError> {
        let run_id = uuid::Uuid::now_v7().to_string();
        let names: Vec<String> = if datasets.is_empty() {
            self.project.datasets.iter().map(|d| d.name.clone()).collect()
        } else {
            datasets.to_vec()
        };
        if let Some(unknown) = names.iter().find(|n| self.project.dataset(n).is_none()) {
            return Err(PipelineError::UnknownDataset(unknown.clone()));
        }
        let locks = self.lock(&names, &run_id, options.wait).await?;
        self.abandon_silent_runs().await;
        let names_for_event = names.clone();
        self.publish("run_started", vec![("run_id", run_id.clone()), ("datasets", names.join(","))]).await;
        self.meta
            .start_run(&RunRecord {
                id: run_id.clone(),
                datasets: names,
                trigger: if options.trigger.is_empty() { "api".into() } else { options.trigger.clone() },
                parameters: serde_json::json!({
                    "full_refresh": options.full_refresh,
                    "from": options.window.start.map(|d| d.to_string()),
                    "to": options.window.end.map(|d| d.to_string()),
                }),
                started_at: chrono::Utc::now(),
            })
            .await?;
        // While it works, the run says so; if this process dies, the next one
        // to look marks the run abandoned once the heartbeat is lock_ttl old.
        let heartbeat = {
            let meta = self.meta.clone();
            let id = run_id.clone();
            let every = (self.lock_ttl / 3).max(std::time::Duration::from_millis(200));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if let Err(err) = meta.heartbeat(&id).await {
                        tracing::warn!(%err, run_id = %id, "writing the run's heartbeat failed");
                    }
                }
            })
        };
        let result = self.execute(datasets, options, &run_id).await;
        heartbeat.abort();
        let (error, report) = match &result {
            Ok(report) => (report.error.clone(), Some(report)),
            Err(err) => (Some(err.to_string()), None),
        };
        let mut totals = (0i64, 0i64, 0i64);
        if let Some(report) = report {
            for (seq, step) in report.steps.iter().enumerate() {
                totals.0 += step.rows_in as i64;
                totals.1 += step.rows_out as i64;
                totals.2 += step.rows_rejected as i64;
                let record = StepRecord {
                    run_id: run_id.clone(),
                    seq: seq as i32,
                    dataset: step.dataset.clone(),
                    layer: step.layer.as_str().to_string(),
                    table_name: step.table.clone(),
                    rows_in: step.rows_in as i64,
                    rows_out: step.rows_out as i64,
                    rows_rejected: step.rows_rejected as i64,
                    status: step.status.as_str().to_string(),
                    duration_ms: step.duration_ms as i64,
                    message: step.message.clone(),
                };
                if let Err(err) = self.meta.record_step(&record).await {
                    tracing::warn!(%err, "recording a run step failed");
                }
                self.publish(
                    "step",
                    vec![
                        ("run_id", run_id.clone()),
                        ("dataset", record.dataset.clone()),
                        ("layer", record.layer.clone()),
                        ("table", record.table_name.clone()),
                        ("status", record.status.clone()),
                        ("rows_out", record.rows_out.to_string()),
                    ],
                )
                .await;
            }
        }
        let openlineage = openlineage_event(&run_id, &names_for_event, report, error.as_deref());
        if let Err(err) = self.meta.finish_run(&run_id, error.as_deref(), totals.0, totals.1, totals.2, &openlineage).await {
            tracing::warn!(%err, "recording the end of the run failed");
        }
        match &error {
            None => {
                self.publish(
                    "run_finished",
                    vec![("run_id", run_id.clone()), ("rows_out", totals.1.to_string()), ("openlineage", openlineage.to_string())],
                )
                .await
            }
            Some(e) => {
                self.publish(
                    "run_failed",
                    vec![("run_id", run_id.clone()), ("error", e.clone()), ("openlineage", openlineage.to_string())],
                )
                .await
            }
        }
        for guard in locks {
            if let Err(err) = guard.release().await {
                tracing::warn!(%err, "releasing a run lock failed (it expires by itself)");
            }
        }
        result
    }

    async fn execute(&self, datasets: &[String], options: &RunOptions, run_id: &str) -> Result<RunReport, PipelineError> {
        let selected: Vec<&Spec> = if datasets.is_empty() {
            self.project.datasets.iter().collect()
        } else {
            datasets
                .iter()
                .map(|n| self.project.dataset(n).ok_or_else(|| PipelineError::UnknownDataset(n.clone())))
                .collect::<Result<_, _>>()?
        };
        let run_id = run_id.to_string();
        let mut report = RunReport {
            run_id: run_id.clone(),
            steps: Vec::new(),
            error: None,
        };
        let span = tracing::info_span!("run", run_id = %run_id);
        let _enter = span.enter();
        let mut changed: HashSet<String> = HashSet::new();
        for spec in selected.iter() {
            let result = self.run_dataset(spec, options, &run_id, &mut report, &mut changed).await;
            if let Err(err) = result {
                report.error = Some(err.to_string());
                return Ok(report);
            }
        }
        // Gold models reading anything this run touched (transitively), in order.
        let touched: HashSet<String> = selected
            .iter()
            .flat_map(|d| [format!("bronze.{}", d.name), format!("silver.{}", d.name)])
            .collect();
        let mut affected: HashSet<String> = touched.clone();
        for model in &self.project.gold {
            let reads_affected = model.reads.iter().any(|r| affected.contains(&normalize(r)));
            let declared_by_run = model.dataset.as_ref().is_some_and(|d| selected.iter().any(|s| &s.name == d));
            if !(reads_affected || declared_by_run) {
                continue;
            }
            affected.insert(format!("gold.{}", model.name));
            let upstream_changed = model.reads.iter().any(|r| changed.contains(&normalize(r)));
            let exists = self.lake.table(Layer::Gold, &model.name).await?.is_some();
            let started = Instant::now();
            let dataset = model.dataset.clone().unwrap_or_default();
            let mut step = StepReport {
                status: StepStatus::Skipped,
                ..StepReport::new(&run_id, &dataset, Layer::Gold, &model.name)
            };
            if exists && !upstream_changed && !options.full_refresh {
                step.message = Some("inputs unchanged".into());
                report.steps.push(step);
                continue;
            }
            match self.build_gold(&model.sql, &model.name, &run_id).await {
                Ok(rows) => {
                    let mut edges: Vec<LineageEdge> = model
                        .reads
                        .iter()
                        .map(|r| edge(&normalize(r), &format!("gold.{}", model.name), "sql"))
                        .collect();
                    edges.extend(self.gold_column_edges(&model.sql, &model.name).await);
                    self.record_lineage(&edges, &run_id).await;
                    step.rows_out = rows;
                    step.status = StepStatus::Ok;
                    changed.insert(format!("gold.{}", model.name));
                }
                Err(err) => {
                    step.status = StepStatus::Failed;
                    step.message = Some(err.to_string());
                    step.duration_ms = started.elapsed().as_millis() as u64;
                    report.steps.push(step);
                    report.error = Some(format!("gold.{} ({}): {err}", model.name, model.location));
                    return Ok(report);
                }
            }
            step.duration_ms = started.elapsed().as_millis() as u64;
            report.steps.push(step);
        }
        Ok(report)
    }

    async fn run_dataset(
        &self,
        spec: &Spec,
        options: &RunOptions,
        run_id: &str,
        report: &mut RunReport,
        changed: &mut HashSet<String>,
    ) -> Result<(), PipelineError> {
        let started = Instant::now();
        let mut step = StepReport::new(&run_id, &spec.name, Layer::Bronze, &spec.name);
        let bronze = self.ingest(spec, options, run_id).await;
        step.duration_ms = started.elapsed().as_millis() as u64;
        let ingested = match bronze {
            Ok(ingest) => {
                step.rows_in = ingest.rows;
                step.rows_out = ingest.rows;
                step.message = Some(format!("{} new file(s), {} already ingested", ingest.files, ingest.skipped_files));
                if ingest.rows == 0 && ingest.files == 0 {
                    step.status = StepStatus::Skipped;
                }
                report.steps.push(step);
                ingest.files > 0
            }
            Err(err) => {
                step.status = StepStatus::Failed;
                step.message = Some(err.to_string());
                report.steps.push(step);
                return Err(err);
            }
        };
        if ingested {
            changed.insert(format!("bronze.{}", spec.name));
        }
        let Some(silver) = &spec.silver else { return Ok(()) };
        let started = Instant::now();
        let mut step = StepReport::new(&run_id, &spec.name, Layer::Silver, &spec.name);
        let mut attempt = 1;
        let refined = loop {
            match self.refine(spec, silver.mode, &silver.key, &silver.rules, options, run_id).await {
                // A run racing this one wrote silver first (appended some of
                // the same bronze runs, or replaced the table): plan again
                // from what it committed.
                Err(PipelineError::Storage(raced @ (StorageError::AlreadyCommitted { .. } | StorageError::Conflict { .. })))
                    if attempt < ingest::RACE_ATTEMPTS =>
                {
                    tracing::info!(dataset = %spec.name, %raced, attempt, "another run wrote silver at the same time; re-reading what is pending");
                    attempt += 1;
                }
                other => break other,
            }
        };
        match refined {
            Ok(None) => {
                step.status = StepStatus::Skipped;
                step.message = Some("bronze has nothing silver has not seen".into());
                step.duration_ms = started.elapsed().as_millis() as u64;
                report.steps.push(step);
                Ok(())
            }
            Ok(Some((rows_in, rows_out, rejected))) => {
                step.rows_in = rows_in;
                step.rows_out = rows_out;
                step.rows_rejected = rejected;
                step.duration_ms = started.elapsed().as_millis() as u64;
                report.steps.push(step);
                changed.insert(format!("silver.{}", spec.name));
                Ok(())
            }
            Err(err) => {
                step.status = StepStatus::Failed;
                step.message = Some(err.to_string());
                step.duration_ms = started.elapsed().as_millis() as u64;
                report.steps.push(step);
                Err(err)
            }
        }
    }

    /// Landing files matching `pattern` (relative to the lake), sorted by name.
    async fn landing_files(&self, pattern: &str) -> Result<Vec<String>, String> {
        Ok(self.landing_files_with_times(pattern).await?.into_iter().map(|(p, _)| p).collect())
    }

    /// Landing files matching `pattern` with their modification times, sorted by name.
    async fn landing_files_with_times(&self, pattern: &str) -> Result<Vec<(String, chrono::DateTime<chrono::Utc>)>, String> {
        let glob = glob::Pattern::new(pattern).map_err(|e| e.to_string())?;
        let parts: Vec<&str> = pattern.split('/').collect();
        let prefix = parts
            .iter()
            .take(parts.len().saturating_sub(1))
            .take_while(|part| !part.contains(['*', '?', '[']))
            .copied()
            .collect::<Vec<_>>()
            .join("/");
        let listed = self.lake.list_files(&prefix).await.map_err(|e| e.to_string())?;
        let mut matched: Vec<(String, chrono::DateTime<chrono::Utc>)> =
            listed.into_iter().filter(|(p, _)| glob.matches(p)).collect();
        matched.sort();
        Ok(matched)
    }

    async fn refine(
        &self,
        spec: &Spec,
        mode: WriteMode,
        key: &[String],
        rule_list: &[crate::spec::Located<crate::spec::Rule>],
        options: &RunOptions,
        run_id: &str,
    ) -> Result<Option<(u64, u64, u64)>, PipelineError> {
        let step = format!("silver.{}", spec.name);
        let ctx = self.engine.internal_session();
        let Some(bronze_table) = self.lake.table(Layer::Bronze, &spec.name).await? else {
            return Ok(None);
        };
        let bronze_version = bronze_table.version().unwrap_or_default() as i64;
        // Silver records the bronze version it has consumed; everything bronze
        // committed after it (even by a run that died before its silver step)
        // is pending.
        let consumed: Option<i64> = self
            .lake
            .commits(Layer::Silver, &spec.name, Some(1))
            .await?
            .first()
            .and_then(|c| c.metadata.get(BRONZE_VERSION_KEY))
            .and_then(|v| v.as_i64());
        if !options.full_refresh && consumed == Some(bronze_version) {
            return Ok(None);
        }
        let whole = options.full_refresh || mode == WriteMode::Overwrite || consumed.is_none();
        let bronze = ctx.table(format!("bronze.{}", spec.name)).await.map_err(|e| step_error(&step, e))?;
        let bronze_columns: Vec<String> = bronze.schema().fields().iter().map(|f| f.name().clone()).collect();
        // What this write consumes, committed at most once even by racing
        // runs (see `Lake::write_frame_once`): each bronze run an append
        // takes, or the bronze version a whole rewrite reads.
        let mut consumed_keys: Vec<String> = vec![format!("silver.{}:bronze version {bronze_version}", spec.name)];
        let input = if whole {
            bronze
        } else {
            let pending: Vec<String> = self
                .lake
                .commits(Layer::Bronze, &spec.name, None)
                .await?
                .into_iter()
                .filter(|c| consumed.is_none_or(|v| c.version > v) && c.version <= bronze_version)
                .filter_map(|c| c.run_id)
                .collect();
            if pending.is_empty() {
                return Ok(None);
            }
            consumed_keys = pending.iter().map(|r| format!("silver.{}:bronze run {r}", spec.name)).collect();
            bronze
                .filter(ident("_run_id").in_list(pending.into_iter().map(lit).collect(), false))
                .map_err(|e| step_error(&step, e))?
        };
        let watermark: CommitMetadata = vec![(BRONZE_VERSION_KEY.to_string(), serde_json::json!(bronze_version))];
        let rows_in = count(&input).await.map_err(|e| step_error(&step, e))?;
        let expectations = spec.silver.as_ref().map(|s| s.expectations.clone()).unwrap_or_default();
        // The casts' data checks ride along the silver write (one scan of
        // bronze instead of two), unless a quarantine table is written first:
        // its rows must have passed them, so then they run before anything.
        let quarantines = expectations.iter().any(|e| e.value.on_fail == crate::spec::OnFail::Quarantine);
        let (refined, deferred) = if quarantines {
            (rules::apply(&ctx, input, rule_list).await?, rules::Deferred::default())
        } else {
            rules::apply_deferred(&ctx, input, rule_list).await?
        };
        let rule_names: Vec<&str> = rule_list.iter().map(|r| r.value.name()).collect();
        let transform = if rule_names.is_empty() { "copy".to_string() } else { format!("rules: {}", rule_names.join(", ")) };
        let written: Result<(u64, u64), PipelineError> = async {
            let drop: Vec<&str> = SILVER_METADATA_DROPPED
                .iter()
                .copied()
                .filter(|c| refined.schema().field_with_unqualified_name(c).is_ok())
                .collect();
            let refined = refined.drop_columns(&drop).map_err(|e| step_error(&step, e))?;
            let refined = refined
                .with_column("_run_id", lit(run_id.to_string()))
                .map_err(|e| step_error(&step, e))?;
            let (refined, rejected) = self.enforce(&ctx, spec, refined, &expectations, run_id).await?;
            let rows_out = match (mode, whole) {
                (WriteMode::Merge, false) => {
                    let info = self.lake.merge(Layer::Silver, &spec.name, refined, key, run_id, watermark).await?;
                    info.rows_written + info.rows_updated
                }
                (WriteMode::Scd2, _) => {
                    let current = if whole {
                        None
                    } else {
                        match self.lake.table(Layer::Silver, &spec.name).await? {
                            Some(_) => Some(ctx.table(format!("silver.{}", spec.name)).await.map_err(|e| step_error(&step, e))?),
                            None => None,
                        }
                    };
                    let now = chrono::Utc::now().timestamp_micros();
                    let state = scd2::next_state(&ctx, current, refined, key, now)
                        .await
                        .map_err(|e| step_error(&step, e.strip_backtrace()))?;
                    let batches = state.collect().await.map_err(|e| step_error(&step, e.strip_backtrace()))?;
                    self.lake.write(Layer::Silver, &spec.name, batches, WriteKind::Overwrite, run_id, watermark).await?.rows_written
                }
                (WriteMode::Append, false) => {
                    self.lake
                        .write_frame_once(Layer::Silver, &spec.name, refined, WriteKind::Append, run_id, watermark, &consumed_keys)
                        .await?
                        .rows_written
                }
                _ => {
                    self.lake
                        .write_frame_once(Layer::Silver, &spec.name, refined, WriteKind::Overwrite, run_id, watermark, &consumed_keys)
                        .await?
                        .rows_written
                }
            };
            Ok((rows_out, rejected))
        }
        .await;
        let (rows_out, rejected) = match written {
            Ok(written) => written,
            // Reading the rules' result failed: a rejected value, reported as
            // the rule's own check would have, or the failure as it came.
            Err(err) => return Err(deferred.explain(&ctx).await.map_or(err, PipelineError::from)),
        };
        let (bronze_table, silver_table) = (format!("bronze.{}", spec.name), format!("silver.{}", spec.name));
        let mut edges = vec![edge(&bronze_table, &silver_table, &transform)];
        for (column, (sources, how)) in rule_lineage::column_sources(&bronze_columns, rule_list) {
            if column.starts_with('_') {
                continue;
            }
            let transform = if how.is_empty() { "copy".to_string() } else { how.join(", ") };
            for source in sources {
                edges.push(LineageEdge {
                    from_table: bronze_table.clone(),
                    from_column: source,
                    to_table: silver_table.clone(),
                    to_column: column.clone(),
                    transform: transform.clone(),
                });
            }
        }
        self.record_lineage(&edges, run_id).await;
        Ok(Some((rows_in, rows_out, rejected)))
    }

    /// Evaluate the silver expectations on `refined` and apply each one's
    /// `on_fail`: warn (record only), drop or quarantine the failing rows
    /// (quarantine: into `silver.<table>__quarantine` with the reasons), or
    /// fail the run before anything is committed. Returns the rows to write
    /// and how many were rejected.
    async fn enforce(
        &self,
        ctx: &SessionContext,
        spec: &Spec,
        refined: DataFrame,
        expectations: &[crate::spec::Located<crate::spec::Expectation>],
        run_id: &str,
    ) -> Result<(DataFrame, u64), PipelineError> {
        use crate::quality;
        use crate::spec::OnFail;
        if expectations.is_empty() {
            return Ok((refined, 0));
        }
        let step = format!("silver.{}", spec.name);
        let columns: Vec<String> = refined.schema().fields().iter().map(|f| f.name().clone()).collect();
        let view = quality::register_view(ctx, refined.clone()).map_err(|e| step_error(&step, e))?;
        let mut rejecting: Vec<(quality::Check, OnFail)> = Vec::new();
        for expectation in expectations {
            let checks = quality::compile(&expectation.value)
                .map_err(|e| step_error(&step, format!("{}: {}", expectation.location, e.strip_backtrace())))?;
            for check in checks {
                let result = quality::evaluate(ctx, &view, &check)
                    .await
                    .map_err(|e| step_error(&step, format!("{}: {}", expectation.location, e.strip_backtrace())))?;
                let record = result.record(&step, Some(run_id));
                if let Err(err) = self.meta.record_validation(&record).await {
                    tracing::warn!(%err, "storing a validation result failed");
                }
                match expectation.value.on_fail {
                    OnFail::Warn => {
                        if !result.success {
                            tracing::warn!(expectation = %check.label(), unexpected = result.unexpected_count, "expectation failed (warn)");
                        }
                    }
                    OnFail::Fail if !result.success => {
                        return Err(step_error(
                            &step,
                            format!(
                                "{}: expectation {} failed: {} of {} rows ({:.2}%) unexpected, e.g. {}; nothing was written",
                                expectation.location,
                                check.label(),
                                result.unexpected_count,
                                result.element_count,
                                result.unexpected_percent,
                                result.partial_unexpected_list.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
                            ),
                        ));
                    }
                    OnFail::Fail => {}
                    action @ (OnFail::Drop | OnFail::Quarantine) => {
                        if check.failing.is_none() {
                            return Err(step_error(&step, format!("{}: {} is a table-level check: use on_fail: warn or fail", expectation.location, check.label())));
                        }
                        rejecting.push((check, action));
                    }
                }
            }
        }
        if rejecting.is_empty() {
            return Ok((refined, 0));
        }
        let refs: Vec<&quality::Check> = rejecting.iter().map(|(c, _)| c).collect();
        let (source, predicates) = quality::augmented_source(&view, &refs);
        let rejecting: Vec<(String, String, OnFail)> = rejecting
            .iter()
            .zip(predicates)
            .map(|((check, action), predicate)| (check.label(), predicate, *action))
            .collect();
        let quoted: Vec<String> = columns.iter().map(|c| format!("\"{c}\"")).collect();
        let any_bad = rejecting.iter().map(|(_, p, _)| format!("COALESCE(({p}), false)")).collect::<Vec<_>>().join(" OR ");
        let kept = ctx
            .sql(&format!("SELECT {} FROM {source} AS t WHERE NOT ({any_bad})", quoted.join(", ")))
            .await
            .map_err(|e| step_error(&step, e.strip_backtrace()))?;
        let quarantine: Vec<&(String, String, OnFail)> = rejecting.iter().filter(|(_, _, a)| *a == OnFail::Quarantine).collect();
        if !quarantine.is_empty() {
            let reasons = quarantine
                .iter()
                .map(|(label, p, _)| format!("CASE WHEN COALESCE(({p}), false) THEN '{}' END", label.replace('\'', "''")))
                .collect::<Vec<_>>()
                .join(", ");
            let any_quarantined = quarantine.iter().map(|(_, p, _)| format!("COALESCE(({p}), false)")).collect::<Vec<_>>().join(" OR ");
            let business: Vec<&String> = quoted.iter().filter(|c| c.as_str() != "\"_run_id\"").collect();
            let rows = ctx
                .sql(&format!(
                    "SELECT {}, concat_ws(', ', {reasons}) AS _failed_expectations, '{run_id}' AS _run_id, now() AS _quarantined_at \
                     FROM {source} AS t WHERE {any_quarantined}",
                    business.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")
                ))
                .await
                .map_err(|e| step_error(&step, e.strip_backtrace()))?
                .collect()
                .await
                .map_err(|e| step_error(&step, e.strip_backtrace()))?;
            if rows.iter().any(|b| b.num_rows() > 0) {
                self.lake
                    .write(Layer::Silver, &format!("{}__quarantine", spec.name), rows, WriteKind::Append, run_id, vec![])
                    .await?;
            }
        }
        let total = count(&refined).await.map_err(|e| step_error(&step, e))?;
        let kept_rows = count(&kept).await.map_err(|e| step_error(&step, e))?;
        Ok((kept, total - kept_rows))
    }

    /// Column-level edges of a gold model from its logical plan.
    async fn gold_column_edges(&self, sql: &str, name: &str) -> Vec<LineageEdge> {
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

    async fn record_lineage(&self, edges: &[LineageEdge], run_id: &str) {
        if let Err(err) = self.meta.upsert_lineage(edges, run_id).await {
            tracing::warn!(%err, "recording lineage failed");
        }
    }

    async fn build_gold(&self, sql: &str, name: &str, run_id: &str) -> Result<u64, PipelineError> {
        let step = format!("gold.{name}");
        let ctx: SessionContext = self.engine.internal_session();
        let df = ctx.sql(sql).await.map_err(|e| step_error(&step, e.strip_backtrace()))?;
        Ok(self.lake.write_frame(Layer::Gold, name, df, WriteKind::Overwrite, run_id, vec![]).await?.rows_written)
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

/// An OpenLineage-shaped run event (COMPLETE or FAIL) naming the tables the
/// run read and wrote.
fn openlineage_event(run_id: &str, datasets: &[String], report: Option<&RunReport>, error: Option<&str>) -> serde_json::Value {
    let steps = report.map(|r| r.steps.as_slice()).unwrap_or_default();
    let outputs: Vec<serde_json::Value> = steps
        .iter()
        .filter(|s| s.status == StepStatus::Ok)
        .map(|s| serde_json::json!({"namespace": "workbench", "name": format!("{}.{}", s.layer, s.table)}))
        .collect();
    let inputs: Vec<serde_json::Value> = steps
        .iter()
        .filter(|s| s.status == StepStatus::Ok && s.layer == Layer::Silver)
        .map(|s| serde_json::json!({"namespace": "workbench", "name": format!("bronze.{}", s.table)}))
        .collect();
    let mut event = serde_json::json!({
        "eventType": if error.is_some() { "FAIL" } else { "COMPLETE" },
        "eventTime": chrono::Utc::now().to_rfc3339(),
        "producer": concat!("https://workbench/", env!("CARGO_PKG_VERSION")),
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
        "run": {"runId": run_id},
        "job": {"namespace": "workbench", "name": datasets.join(",")},
        "inputs": inputs,
        "outputs": outputs,
    });
    if let Some(error) = error {
        event["run"]["facets"] = serde_json::json!({"errorMessage": {"message": error, "programmingLanguage": "SQL"}});
    }
    event
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
