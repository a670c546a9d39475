//! Running a dataset and everything downstream of it: each dataset is its
//! own run, started once every dataset it follows (within the set) has
//! succeeded; independent branches run side by side up to a worker limit. A
//! dataset whose upstream did not succeed is not run: it is recorded as a
//! `skipped` run naming the upstream, so history shows why it is stale.

use std::collections::HashMap;

use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::{Pipeline, PipelineError, RunOptions, RunReport, RunStatus, new_run_id};
use crate::meta::RunRecord;

/// What became of one dataset of a downstream run.
#[derive(Debug)]
pub struct DatasetOutcome {
    pub dataset: String,
    pub status: RunStatus,
    /// The run, when it started.
    pub report: Option<RunReport>,
    pub run_id: String,
    pub error: Option<String>,
}

impl Pipeline {
    /// Run `root` with `options`, then every dataset downstream of it (see
    /// [`crate::spec::Project::downstream_of`]), at most `workers` at once.
    /// Outcomes come in the order the datasets finished.
    pub async fn run_downstream(&self, root: &str, options: &RunOptions, workers: usize) -> Result<Vec<DatasetOutcome>, PipelineError> {
        if self.project.dataset(root).is_none() {
            return Err(PipelineError::UnknownDataset(root.to_string()));
        }
        let members = self.project.downstream_of(root);
        let upstream: HashMap<&str, Vec<String>> = members
            .iter()
            .map(|m| (m.as_str(), self.project.upstream(m).into_iter().filter(|u| members.contains(u)).collect()))
            .collect();
        let mut pending: Vec<String> = members.clone();
        let mut outcomes: Vec<DatasetOutcome> = Vec::with_capacity(members.len());
        let mut running = FuturesUnordered::new();
        loop {
            let mut i = 0;
            while i < pending.len() {
                let name = pending[i].clone();
                let ups = &upstream[name.as_str()];
                let failed = ups.iter().find(|u| outcomes.iter().any(|o| &o.dataset == *u && o.status != RunStatus::Succeeded));
                if let Some(failed) = failed {
                    pending.remove(i);
                    let status = outcomes.iter().find(|o| &o.dataset == failed).map(|o| o.status.as_str()).unwrap_or("failed");
                    let reason = format!("skipped: upstream dataset {failed} {status}");
                    outcomes.push(self.record_skipped(&name, options, &reason).await);
                    continue;
                }
                let ready = ups.iter().all(|u| outcomes.iter().any(|o| &o.dataset == u));
                if ready && running.len() < workers.max(1) {
                    pending.remove(i);
                    let options = if name == root {
                        options.clone()
                    } else {
                        RunOptions {
                            trigger: "downstream".into(),
                            run_id: None,
                            slot: None,
                            wait: options.wait.or(Some(std::time::Duration::from_secs(600))),
                            ..options.clone()
                        }
                    };
                    running.push(async move {
                        let result = self.run(std::slice::from_ref(&name), &options).await;
                        (name, result)
                    });
                    continue;
                }
                i += 1;
            }
            let Some((dataset, result)) = running.next().await else { break };
            outcomes.push(match result {
                Ok(report) => DatasetOutcome {
                    dataset,
                    status: report.status,
                    run_id: report.run_id.clone(),
                    error: report.error.clone(),
                    report: Some(report),
                },
                Err(err) => DatasetOutcome {
                    dataset,
                    status: RunStatus::of(&err),
                    run_id: String::new(),
                    error: Some(crate::spec::secrets::redact(&err.to_string())),
                    report: None,
                },
            });
        }
        Ok(outcomes)
    }

    /// Record that `dataset` was not run, and why.
    async fn record_skipped(&self, dataset: &str, options: &RunOptions, reason: &str) -> DatasetOutcome {
        let run_id = new_run_id();
        tracing::warn!(%dataset, %run_id, %reason, "dataset not run");
        let now = chrono::Utc::now();
        let record = RunRecord {
            id: run_id.clone(),
            datasets: vec![dataset.to_string()],
            trigger: "downstream".into(),
            parameters: serde_json::json!({ "full_refresh": options.full_refresh }),
            started_at: now,
            attempt: 1,
            retry_of: None,
        };
        let recorded = match self.meta.start_run(&record).await {
            Ok(()) => self.meta.finish_run(&run_id, RunStatus::Skipped.as_str(), Some(reason), 0, 0, 0, &serde_json::Value::Null).await,
            Err(err) => Err(err),
        };
        if let Err(err) = recorded {
            tracing::warn!(%err, %dataset, "recording a skipped run failed");
        }
        self.publish("run_skipped", vec![("run_id", run_id.clone()), ("dataset", dataset.to_string()), ("reason", reason.to_string())]).await;
        DatasetOutcome { dataset: dataset.to_string(), status: RunStatus::Skipped, report: None, run_id, error: Some(reason.to_string()) }
    }
}
