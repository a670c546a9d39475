//! Run orchestration: take the datasets' locks, record the run and its
//! heartbeat, run each dataset's layers in order, record steps, lineage and
//! the OpenLineage event, publish run events, release the locks.

use std::collections::HashSet;
use std::time::Instant;

use super::{Pipeline, PipelineError, RunOptions, RunReport, StepReport, StepStatus, bronze, edge, normalize};
use crate::cache::{Event, LockGuard};
use crate::meta::{LineageEdge, RunRecord, StepRecord};
use crate::spec::Spec;
use crate::spec::secrets::redact;
use crate::storage::{Layer, StorageError};

impl Pipeline {
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

    /// Mark runs whose process died as abandoned (see `MetaStore::abandon_silent_runs`).
    pub async fn abandon_silent_runs(&self) {
        match self.meta.abandon_silent_runs(self.lock_ttl).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(runs = n, "marked runs whose process stopped as abandoned"),
            Err(err) => tracing::warn!(%err, "checking for abandoned runs failed"),
        }
    }

    /// Run `datasets` (all when empty) and the gold models that depend on
    /// them, recording the run, its steps, files and lineage.
    pub async fn run(&self, datasets: &[String], options: &RunOptions) -> Result<RunReport, PipelineError> {
        let run_id = options.run_id.clone().unwrap_or_else(new_run_id);
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
                    "slot": options.slot.map(|s| s.to_rfc3339()),
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
        // Source errors can echo a connection string: what a run reports,
        // records and publishes has its secrets redacted.
        let result = match self.execute(datasets, options, &run_id).await {
            Ok(mut report) => {
                report.error = report.error.map(|e| redact(&e));
                for step in &mut report.steps {
                    step.message = step.message.take().map(|m| redact(&m));
                }
                Ok(report)
            }
            Err(PipelineError::Step { step, message }) => Err(PipelineError::Step { step, message: redact(&message) }),
            Err(err) => Err(err),
        };
        heartbeat.abort();
        let (error, report) = match &result {
            Ok(report) => (report.error.clone(), Some(report)),
            Err(err) => (Some(redact(&err.to_string())), None),
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
                    if attempt < bronze::RACE_ATTEMPTS =>
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

/// A new run id (UUIDv7: ids sort by start time).
pub fn new_run_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
