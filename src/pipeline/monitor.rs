//! Watching datasets: freshness against each spec's `freshness:`, and the
//! alerts a run or a stale dataset sends to the spec's `notify:` webhooks
//! (delivered by [`crate::alerts`]).

use super::{Pipeline, PipelineError, RunReport, RunStatus};
use crate::spec::Spec;
use crate::spec::secrets::redact;

/// A dataset's last success against its `freshness:`.
#[derive(Debug, Clone)]
pub struct DatasetFreshness {
    pub dataset: String,
    pub freshness: Option<crate::spec::Freshness>,
    pub last_success: Option<chrono::DateTime<chrono::Utc>>,
}

impl DatasetFreshness {
    /// fresh, warn, error, never, or unmonitored.
    pub fn state(&self) -> &'static str {
        match self.freshness {
            None => "unmonitored",
            Some(f) => f.state(self.last_success.map(|t| (chrono::Utc::now() - t).to_std().unwrap_or_default())).as_str(),
        }
    }
}

impl Pipeline {
    /// Alert the webhooks of datasets whose freshness is warn or error
    /// (once per state and last success, across replicas).
    pub async fn alert_stale(&self) {
        let watched = self.project.datasets.iter().any(|d| d.notify.iter().any(|n| n.on.contains(&crate::spec::AlertEvent::Freshness)));
        if !watched {
            return;
        }
        let states = match self.freshness().await {
            Ok(states) => states,
            Err(err) => {
                tracing::warn!(%err, "cannot check freshness");
                return;
            }
        };
        for state in states {
            let level = state.state();
            if !matches!(level, "warn" | "error") {
                continue;
            }
            let Some(spec) = self.project.dataset(&state.dataset) else { continue };
            let last = state.last_success.map(|t| t.to_rfc3339()).unwrap_or_default();
            let body = serde_json::json!({
                "event": "freshness",
                "dataset": state.dataset,
                "state": level,
                "last_success": state.last_success.map(|t| t.to_rfc3339()),
                "age_seconds": state.last_success.map(|t| (chrono::Utc::now() - t).num_seconds()),
                "warn_after": state.freshness.and_then(|f| f.warn_after).map(|d| humantime::format_duration(d).to_string()),
                "error_after": state.freshness.and_then(|f| f.error_after).map(|d| humantime::format_duration(d).to_string()),
                "sent_by": concat!("workbench/", env!("CARGO_PKG_VERSION")),
                "at": chrono::Utc::now().to_rfc3339(),
            });
            let alert = crate::alerts::Alert {
                dataset: state.dataset.clone(),
                event: crate::spec::AlertEvent::Freshness,
                run_id: None,
                key: format!("{level}:{last}"),
                body,
            };
            self.notifier.notify(spec, alert).await;
        }
    }

    /// Every dataset's last success and freshness state, in spec order.
    pub async fn freshness(&self) -> Result<Vec<DatasetFreshness>, crate::meta::MetaError> {
        let mut states = Vec::with_capacity(self.project.datasets.len());
        for d in &self.project.datasets {
            states.push(DatasetFreshness {
                dataset: d.name.clone(),
                freshness: d.freshness,
                last_success: self.meta.last_success(&d.name).await?,
            });
        }
        Ok(states)
    }

    /// Tell the webhooks of the run's datasets how it ended: failure or
    /// success, failed expectations, volume anomalies.
    pub(super) async fn alert_run(&self, names: &[String], run_id: &str, result: &Result<RunReport, PipelineError>) {
        use crate::alerts::{Alert, run_body};
        use crate::spec::AlertEvent;
        let watched: Vec<&Spec> = names.iter().filter_map(|n| self.project.dataset(n)).filter(|s| !s.notify.is_empty()).collect();
        if watched.is_empty() {
            return;
        }
        let (status, error) = match result {
            Ok(report) => (report.status, report.error.clone()),
            Err(err) => (RunStatus::of(err), Some(redact(&err.to_string()))),
        };
        let failed = self.meta.failed_validations(run_id).await.unwrap_or_else(|err| {
            tracing::warn!(%err, "cannot read the run's failed expectations for its alerts");
            Vec::new()
        });
        for spec in watched {
            let table = format!("silver.{}", spec.name);
            let mine: Vec<_> = failed.iter().filter(|f| f.0 == table).cloned().collect();
            let mut events = match status {
                RunStatus::Failed | RunStatus::TimedOut => vec![AlertEvent::Failure],
                RunStatus::Succeeded => vec![AlertEvent::Success],
                RunStatus::Cancelled | RunStatus::Skipped => vec![],
            };
            if mine.iter().any(|f| f.1 != "row_count_anomaly") {
                events.push(AlertEvent::ExpectationFailure);
            }
            if mine.iter().any(|f| f.1 == "row_count_anomaly") {
                events.push(AlertEvent::Anomaly);
            }
            for event in events {
                let body = run_body(&spec.name, event, run_id, status.as_str(), error.as_deref(), &mine);
                let alert = Alert { dataset: spec.name.clone(), event, run_id: Some(run_id.to_string()), key: run_id.to_string(), body };
                self.notifier.notify(spec, alert).await;
            }
        }
    }

}
