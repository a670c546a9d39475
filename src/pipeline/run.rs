//! Run orchestration: take the datasets' locks, record the run and its
//! heartbeat, run each dataset's layers in order, record steps, lineage and
//! the OpenLineage event, publish run events, release the locks.

use std::collections::HashSet;
use std::time::Instant;

use super::{Attempt, Pipeline, PipelineError, RunOptions, RunReport, RunStatus, StepReport, StepStatus, bronze, edge, normalize};
use crate::cache::{Event, LockGuard};
use crate::meta::{LineageEdge, RunRecord, StepRecord};
use crate::spec::{RunPolicy, Spec};
use crate::spec::secrets::redact;
use crate::storage::{Layer, StorageError};

impl Pipeline {
    /// Take every dataset's run lock, or none: a second run of a dataset
    /// fails naming the run that holds it.
    pub(super) async fn lock(&self, datasets: &[String], run_id: &str, wait: Option<std::time::Duration>) -> Result<Vec<LockGuard>, PipelineError> {
        let asked = std::time::Instant::now();
        let deadline = wait.map(|w| asked + w);
        loop {
            match self.try_lock_all(datasets, run_id).await {
                Err(PipelineError::Locked { .. }) if deadline.is_some_and(|d| std::time::Instant::now() < d) => {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                other => {
                    match &other {
                        Ok(_) => crate::metrics::run_lock(true, asked.elapsed()),
                        Err(PipelineError::Locked { .. }) => crate::metrics::run_lock(false, asked.elapsed()),
                        Err(_) => {}
                    }
                    return other;
                }
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

    pub(super) async fn publish(&self, kind: &str, fields: Vec<(&str, String)>) {
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
    /// them, recording the run, its steps, files and lineage. A run that
    /// fails for a transient reason is tried again as the datasets'
    /// `retries` say, each attempt its own run (naming the first); a run
    /// longer than their `timeout` is stopped.
    pub async fn run(&self, datasets: &[String], options: &RunOptions) -> Result<RunReport, PipelineError> {
        let names: Vec<String> = if datasets.is_empty() {
            self.project.datasets.iter().map(|d| d.name.clone()).collect()
        } else {
            datasets.to_vec()
        };
        if let Some(unknown) = names.iter().find(|n| self.project.dataset(n).is_none()) {
            return Err(PipelineError::UnknownDataset(unknown.clone()));
        }
        let policy = self.policy_of(&names);
        let mut attempt = Attempt { number: 1, first: None };
        loop {
            let run_id = match attempt.number {
                1 => options.run_id.clone().unwrap_or_else(new_run_id),
                _ => new_run_id(),
            };
            let result = self.attempt(&names, datasets, options, &run_id, &attempt, &policy).await;
            let transient = match &result {
                Ok(report) => report.status == RunStatus::Failed && report.transient,
                Err(err) => err.is_transient(),
            };
            if !transient || attempt.number > policy.retries.max {
                self.alert_run(&names, &run_id, &result).await;
                return result.map(|mut report| {
                    report.attempts = attempt.number;
                    report
                });
            }
            let error = match &result {
                Ok(report) => report.error.clone().unwrap_or_default(),
                Err(err) => redact(&err.to_string()),
            };
            let delay = policy.retries.delay_before(attempt.number + 1);
            let first = attempt.first.clone().unwrap_or_else(|| run_id.clone());
            tracing::warn!(%run_id, attempt = attempt.number, of = policy.retries.max + 1, %error, retry_in = ?delay, "run failed for a transient reason; retrying");
            self.publish(
                "run_retry",
                vec![("run_id", run_id.clone()), ("first_run_id", first.clone()), ("attempt", attempt.number.to_string()), ("error", error)],
            )
            .await;
            // A cancel of the attempt that failed also stops the wait.
            let token = self.register(&run_id);
            let cancelled = tokio::select! {
                _ = tokio::time::sleep(delay) => false,
                _ = token.cancelled() => true,
            };
            self.unregister(&run_id);
            if cancelled {
                return Err(PipelineError::Cancelled { run_id });
            }
            attempt = Attempt { number: attempt.number + 1, first: Some(first) };
        }
    }

    /// The retries and timeout of a run of `names`: the most retries any of
    /// them allows, the shortest timeout any of them sets.
    fn policy_of(&self, names: &[String]) -> RunPolicy {
        let policies: Vec<&RunPolicy> = names.iter().filter_map(|n| self.project.dataset(n)).map(|d| &d.policy).collect();
        let retries = policies
            .iter()
            .map(|p| p.retries.clone())
            .max_by_key(|r| r.max)
            .unwrap_or_default();
        RunPolicy { retries, timeout: policies.iter().filter_map(|p| p.timeout).min() }
    }

    /// Ask run `run_id` to stop. It stops at once when this process runs it,
    /// otherwise on its next heartbeat (at most a few seconds) wherever it
    /// runs. Returns the run's status and datasets, `None` for no such run.
    pub async fn cancel(&self, run_id: &str, by: &str) -> Result<Option<(String, Vec<String>)>, PipelineError> {
        let local = self.running.lock().expect("run registry").get(run_id).cloned();
        let status = self.meta.request_cancel(run_id, by).await?;
        if let Some(token) = local {
            token.cancel();
        }
        Ok(status)
    }

    fn register(&self, run_id: &str) -> tokio_util::sync::CancellationToken {
        let token = tokio_util::sync::CancellationToken::new();
        self.running.lock().expect("run registry").insert(run_id.to_string(), token.clone());
        token
    }

    fn unregister(&self, run_id: &str) {
        self.running.lock().expect("run registry").remove(run_id);
    }

    /// One attempt of a run: lock, record, execute (until done, cancelled or
    /// timed out), record how it ended, unlock.
    async fn attempt(
        &self,
        names: &[String],
        datasets: &[String],
        options: &RunOptions,
        run_id: &str,
        attempt: &Attempt,
        policy: &RunPolicy,
    ) -> Result<RunReport, PipelineError> {
        let run_id = run_id.to_string();
        let locks = if options.lock_held.0 { Vec::new() } else { self.lock(names, &run_id, options.wait).await? };
        self.abandon_silent_runs().await;
        self.publish("run_started", vec![("run_id", run_id.clone()), ("datasets", names.join(","))]).await;
        let started = self
            .meta
            .start_run(&RunRecord {
                id: run_id.clone(),
                datasets: names.to_vec(),
                trigger: if options.trigger.is_empty() { "api".into() } else { options.trigger.clone() },
                parameters: serde_json::json!({
                    "full_refresh": options.full_refresh,
                    "from": options.window.start.map(|d| d.to_string()),
                    "to": options.window.end.map(|d| d.to_string()),
                    "slot": options.slot.map(|s| s.to_rfc3339()),
                    "files": options.files,
                }),
                started_at: chrono::Utc::now(),
                attempt: attempt.number,
                retry_of: attempt.first.clone(),
            })
            .await;
        if let Err(err) = started {
            release(locks).await;
            return Err(err.into());
        }
        let token = self.register(&run_id);
        // While it works, the run says so (and learns whether someone asked
        // to cancel it); if this process dies, the next one to look marks
        // the run abandoned once the heartbeat is lock_ttl old.
        let heartbeat = {
            let meta = self.meta.clone();
            let id = run_id.clone();
            let token = token.clone();
            let every = (self.lock_ttl / 3).clamp(std::time::Duration::from_millis(200), std::time::Duration::from_secs(2));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    match meta.heartbeat(&id).await {
                        Ok(true) => token.cancel(),
                        Ok(false) => {}
                        Err(err) => tracing::warn!(%err, run_id = %id, "writing the run's heartbeat failed"),
                    }
                }
            })
        };
        let mut report = RunReport {
            run_id: run_id.clone(),
            steps: Vec::new(),
            error: None,
            status: RunStatus::Succeeded,
            attempts: attempt.number,
            transient: false,
            progress: options.progress.clone(),
        };
        let outcome = {
            let work = self.execute(datasets, options, &mut report);
            let deadline = async {
                match policy.timeout {
                    Some(timeout) => tokio::time::sleep(timeout).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                done = work => done,
                _ = token.cancelled() => Err(PipelineError::Cancelled { run_id: run_id.clone() }),
                _ = deadline => Err(PipelineError::TimedOut {
                    run_id: run_id.clone(),
                    after: humantime::format_duration(policy.timeout.unwrap_or_default()).to_string(),
                }),
            }
        };
        heartbeat.abort();
        self.unregister(&run_id);
        // Source errors can echo a connection string: what a run reports,
        // records and publishes has its secrets redacted.
        report.error = report.error.take().map(|e| redact(&e));
        for step in &mut report.steps {
            step.message = step.message.take().map(|m| redact(&m));
        }
        let outcome = match outcome {
            Err(PipelineError::Step { step, message }) => Err(PipelineError::Step { step, message: redact(&message) }),
            other => other,
        };
        report.status = match &outcome {
            Ok(()) if report.error.is_none() => RunStatus::Succeeded,
            Ok(()) => RunStatus::Failed,
            Err(PipelineError::Cancelled { .. }) => RunStatus::Cancelled,
            Err(PipelineError::TimedOut { .. }) => RunStatus::TimedOut,
            Err(_) => RunStatus::Failed,
        };
        if let Err(err) = &outcome {
            report.error = Some(redact(&err.to_string()));
            report.transient = err.is_transient();
        }
        let error = report.error.clone();
        let mut totals = (0i64, 0i64, 0i64);
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
        let openlineage = openlineage_event(&run_id, names, Some(&report), error.as_deref());
        let status = report.status.as_str();
        crate::metrics::run(status);
        for step in report.steps.iter().filter(|s| s.status == StepStatus::Ok) {
            crate::metrics::rows_written(step.layer.as_str(), step.rows_out);
        }
        if let Err(err) = self.meta.finish_run(&run_id, status, error.as_deref(), totals.0, totals.1, totals.2, &openlineage).await {
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
                    vec![
                        ("run_id", run_id.clone()),
                        ("status", status.to_string()),
                        ("error", e.clone()),
                        ("openlineage", openlineage.to_string()),
                    ],
                )
                .await
            }
        }
        release(locks).await;
        outcome.map(|()| report)
    }

    async fn execute(&self, datasets: &[String], options: &RunOptions, report: &mut RunReport) -> Result<(), PipelineError> {
        let selected: Vec<&Spec> = if datasets.is_empty() {
            self.project.datasets.iter().collect()
        } else {
            datasets
                .iter()
                .map(|n| self.project.dataset(n).ok_or_else(|| PipelineError::UnknownDataset(n.clone())))
                .collect::<Result<_, _>>()?
        };
        let run_id = report.run_id.clone();
        let span = tracing::info_span!("run", run_id = %run_id);
        let _enter = span.enter();
        let mut changed: HashSet<String> = HashSet::new();
        for spec in selected.iter() {
            let result = self.run_dataset(spec, options, &run_id, report, &mut changed).await;
            if let Err(err) = result {
                report.error = Some(err.to_string());
                report.transient = err.is_transient();
                return Ok(());
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
                report.push(step);
                continue;
            }
            report.started(&dataset, Layer::Gold, &model.name);
            let _turn = self.write_turn(format!("gold.{}", model.name)).await;
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
                    report.push(step);
                    report.error = Some(format!("gold.{} ({}): {err}", model.name, model.location));
                    return Ok(());
                }
            }
            step.duration_ms = started.elapsed().as_millis() as u64;
            report.push(step);
        }
        Ok(())
    }

    async fn run_dataset(
        &self,
        spec: &Spec,
        options: &RunOptions,
        run_id: &str,
        report: &mut RunReport,
        changed: &mut HashSet<String>,
    ) -> Result<(), PipelineError> {
        if let crate::spec::SourceFormat::PostgresCdc(source) = &spec.source.format {
            let before = report.steps.len();
            let captured = self.capture(spec, source, options, run_id, report).await;
            for step in &report.steps[before..] {
                if step.status == StepStatus::Ok {
                    changed.insert(format!("{}.{}", step.layer, spec.name));
                }
            }
            return captured;
        }
        // Silver written from the rows bronze parses, when it would read
        // back exactly those (its write turn held from before it looks, if
        // nothing else in this process is writing silver now).
        let silver_turn = spec.silver.as_ref().and_then(|_| self.try_write_turn(format!("silver.{}", spec.name)));
        let alongside = match silver_turn {
            Some(_) => self.silver_alongside(spec, options, run_id).await.unwrap_or_else(|err| {
                tracing::info!(dataset = %spec.name, %err, "silver will read bronze once it is committed");
                None
            }),
            None => None,
        };
        let silver_turn = silver_turn.filter(|_| alongside.is_some());
        let started = Instant::now();
        let mut step = StepReport::new(&run_id, &spec.name, Layer::Bronze, &spec.name);
        report.started(&spec.name, Layer::Bronze, &spec.name);
        let bronze = self.ingest(spec, options, run_id, alongside.as_ref()).await;
        step.duration_ms = started.elapsed().as_millis() as u64;
        let (ingested, alongside_written) = match bronze {
            Ok(ingest) => {
                step.rows_in = ingest.rows;
                step.rows_out = ingest.rows;
                step.message = Some(format!("{} new file(s), {} already ingested", ingest.files, ingest.skipped_files));
                if ingest.rows == 0 && ingest.files == 0 {
                    step.status = StepStatus::Skipped;
                }
                report.push(step);
                (ingest.files > 0, ingest.silver.map(|written| (ingest.rows, written)))
            }
            Err(err) => {
                step.status = StepStatus::Failed;
                step.message = Some(err.to_string());
                report.push(step);
                return Err(err);
            }
        };
        if ingested {
            changed.insert(format!("bronze.{}", spec.name));
        }
        match alongside_written {
            Some((rows_in, Ok(rows_out))) => {
                report.started(&spec.name, Layer::Silver, &spec.name);
                let mut step = StepReport::new(&run_id, &spec.name, Layer::Silver, &spec.name);
                step.rows_in = rows_in;
                step.rows_out = rows_out;
                step.message = Some("written alongside bronze from the same read of the landing files".into());
                step.duration_ms = started.elapsed().as_millis() as u64;
                report.push(step);
                changed.insert(format!("silver.{}", spec.name));
                return Ok(());
            }
            // Nothing of silver was committed; it reads bronze as committed.
            Some((_, Err(err))) => tracing::info!(dataset = %spec.name, %err, "silver did not complete alongside bronze; refining from bronze"),
            None => {}
        }
        drop(silver_turn);
        let Some(silver) = &spec.silver else { return Ok(()) };
        let started = Instant::now();
        let mut step = StepReport::new(&run_id, &spec.name, Layer::Silver, &spec.name);
        report.started(&spec.name, Layer::Silver, &spec.name);
        let _turn = self.write_turn(format!("silver.{}", spec.name)).await;
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
                report.push(step);
                Ok(())
            }
            Ok(Some((rows_in, rows_out, rejected))) => {
                step.rows_in = rows_in;
                step.rows_out = rows_out;
                step.rows_rejected = rejected;
                step.duration_ms = started.elapsed().as_millis() as u64;
                report.push(step);
                changed.insert(format!("silver.{}", spec.name));
                Ok(())
            }
            Err(err) => {
                step.status = StepStatus::Failed;
                step.message = Some(err.to_string());
                step.duration_ms = started.elapsed().as_millis() as u64;
                report.push(step);
                Err(err)
            }
        }
    }
}

pub(super) async fn release(locks: Vec<LockGuard>) {
    for guard in locks {
        if let Err(err) = guard.release().await {
            tracing::warn!(%err, "releasing a run lock failed (it expires by itself)");
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
