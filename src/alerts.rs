//! Alerts: a dataset's `notify:` webhooks are told when a run fails, an
//! expectation fails, a volume anomaly shows or the dataset goes stale.
//! Each alert is recorded in `workbench.alerts` before it is sent, under a
//! key that makes it go out once however many replicas notice it; delivery
//! is retried with backoff and each attempt's outcome recorded. It is also
//! published on the run event stream. Webhook URLs come from the
//! environment and are only ever shown as scheme://host:port.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;

use crate::cache::{Coordinator, Event};
use crate::meta::{AlertRecord, MetaStore};
use crate::spec::{AlertEvent, Notify, Spec};

/// Delivery attempts per alert, and the wait before the second.
const ATTEMPTS: u32 = 4;
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// How long one delivery may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What an alert says.
#[derive(Debug, Clone)]
pub struct Alert {
    pub dataset: String,
    pub event: AlertEvent,
    pub run_id: Option<String>,
    /// Makes the alert unique (with dataset, event and the webhook).
    pub key: String,
    pub body: serde_json::Value,
}

pub struct Notifier {
    meta: Arc<MetaStore>,
    coordinator: Arc<Coordinator>,
    http: reqwest::Client,
    deliveries: TaskTracker,
}

impl Notifier {
    pub fn new(meta: Arc<MetaStore>, coordinator: Arc<Coordinator>) -> Notifier {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("workbench/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client with default TLS settings");
        Notifier { meta, coordinator, http, deliveries: TaskTracker::new() }
    }

    /// Send `alert` to each of `spec`'s webhooks that wants its event, in
    /// the background.
    pub async fn notify(self: &Arc<Self>, spec: &Spec, alert: Alert) {
        for (index, notify) in spec.notify.iter().enumerate() {
            if !notify.on.contains(&alert.event) {
                continue;
            }
            let target = describe_target(notify);
            let record = AlertRecord {
                id: uuid::Uuid::now_v7().to_string(),
                dedupe_key: format!("{}:{}:{}:{index}", alert.dataset, alert.event.as_str(), alert.key),
                dataset: alert.dataset.clone(),
                event: alert.event.as_str().to_string(),
                run_id: alert.run_id.clone(),
                target: target.clone(),
                payload: alert.body.clone(),
            };
            match self.meta.claim_alert(&record).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(err) => {
                    tracing::warn!(%err, dataset = %alert.dataset, event = alert.event.as_str(), "cannot record an alert; it is not sent");
                    continue;
                }
            }
            let event = Event {
                kind: "alert".into(),
                fields: vec![
                    ("alert_id".into(), record.id.clone()),
                    ("dataset".into(), record.dataset.clone()),
                    ("alert".into(), record.event.clone()),
                    ("run_id".into(), record.run_id.clone().unwrap_or_default()),
                    ("target".into(), target.clone()),
                ],
            };
            if let Err(err) = self.coordinator.publish(event).await {
                tracing::warn!(%err, "publishing an alert event failed");
            }
            let this = self.clone();
            let variable = notify.webhook_env.clone();
            self.deliveries.spawn(async move { this.deliver(record, &variable).await });
        }
    }

    /// Wait for deliveries in flight (a `workbench run` waits before it exits).
    pub async fn flush(&self) {
        self.deliveries.close();
        self.deliveries.wait().await;
        self.deliveries.reopen();
    }

    async fn deliver(&self, record: AlertRecord, variable: &str) {
        let Ok(url) = std::env::var(variable) else {
            let error = format!("environment variable {variable} (the webhook URL) is not set");
            tracing::error!(dataset = %record.dataset, alert = %record.event, %error, "alert not sent");
            self.attempted(&record, "failed", 0, Some(&error)).await;
            return;
        };
        let mut wait = FIRST_RETRY;
        for attempt in 1..=ATTEMPTS {
            let error = match self.http.post(&url).json(&record.payload).send().await {
                Ok(response) if response.status().is_success() => None,
                Ok(response) => Some(format!("HTTP {}", response.status())),
                // reqwest's errors name the URL: keep only what went wrong.
                Err(err) => Some(describe_error(&err)),
            };
            match error {
                None => {
                    tracing::info!(dataset = %record.dataset, alert = %record.event, target = %record.target, attempt, "alert sent");
                    self.attempted(&record, "sent", attempt, None).await;
                    return;
                }
                Some(error) if attempt == ATTEMPTS => {
                    tracing::error!(dataset = %record.dataset, alert = %record.event, target = %record.target, %error, attempts = attempt, "alert not delivered");
                    self.attempted(&record, "failed", attempt, Some(&error)).await;
                }
                Some(error) => {
                    tracing::warn!(dataset = %record.dataset, alert = %record.event, target = %record.target, %error, attempt, retry_in = ?wait, "alert delivery failed; retrying");
                    self.attempted(&record, "sending", attempt, Some(&error)).await;
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
            }
        }
    }

    async fn attempted(&self, record: &AlertRecord, status: &str, attempts: u32, error: Option<&str>) {
        if status != "sending" {
            crate::metrics::alert(status);
        }
        if let Err(err) = self.meta.alert_attempted(&record.id, status, attempts, error).await {
            tracing::warn!(%err, "recording an alert delivery failed");
        }
    }
}

/// Where a webhook goes, safe to show: the variable and scheme://host:port
/// of its URL (paths, queries and user info carry secrets).
fn describe_target(notify: &Notify) -> String {
    let shown = std::env::var(&notify.webhook_env)
        .ok()
        .and_then(|u| url::Url::parse(&u).ok())
        .map(|u| match (u.host_str(), u.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}/…", u.scheme()),
            (Some(host), None) => format!("{}://{host}/…", u.scheme()),
            _ => format!("{}:…", u.scheme()),
        })
        .unwrap_or_else(|| "unset".into());
    format!("env:{} ({shown})", notify.webhook_env)
}

fn describe_error(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "cannot connect"
    } else if err.is_request() {
        "request failed"
    } else {
        "failed"
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(err);
    let mut cause = String::new();
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if cause.is_empty() { kind.to_string() } else { format!("{kind}: {cause}") }
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").finish()
    }
}

/// The alert body: dataset, event, run and how it ended, failed
/// expectations; `run_query` finds the run in `workbench.runs`.
pub fn run_body(
    dataset: &str,
    event: AlertEvent,
    run_id: &str,
    status: &str,
    error: Option<&str>,
    failed: &[(String, String, String, i64, Option<String>)],
) -> serde_json::Value {
    serde_json::json!({
        "event": event.as_str(),
        "dataset": dataset,
        "run_id": run_id,
        "status": status,
        "error": error,
        "failed_expectations": failed.iter().map(|(table, expectation, columns, unexpected, observed)| serde_json::json!({
            "table": table,
            "expectation": expectation,
            "columns": columns,
            "unexpected_count": unexpected,
            "observed_value": observed,
        })).collect::<Vec<_>>(),
        "run_query": format!("SELECT * FROM workbench.runs WHERE id = '{run_id}'"),
        "sent_by": concat!("workbench/", env!("CARGO_PKG_VERSION")),
        "at": chrono::Utc::now().to_rfc3339(),
    })
}
