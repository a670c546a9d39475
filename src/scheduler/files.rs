//! File arrival: datasets with `trigger: on_file` run when new landing
//! files appear. The landing zone is listed every [`POLL`] (a listing, so
//! local and object-store lakes alike); a file is read only once its size
//! and modification time have not changed for [`SETTLE`], so a file still
//! being written (copied, uploaded, exported) is left alone until it is
//! complete. The run ingests exactly the settled files, then the datasets
//! downstream follow. Files already ingested (same path and size in the
//! metadata store) do not start a run; if two replicas see the same file,
//! the second run finds it ingested and writes nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::Scheduler;
use crate::pipeline::RunOptions;

/// How often the landing zone is listed.
pub const POLL: Duration = Duration::from_secs(1);
/// How long a file must stay the same size and age before it is read.
pub const SETTLE: Duration = Duration::from_secs(2);

struct Seen {
    size: u64,
    modified: DateTime<Utc>,
    /// Since when it has looked like this.
    since: Instant,
    /// A run was started for it (as it looks now).
    submitted: bool,
}

impl Scheduler {
    /// Watch the landing files of `trigger: on_file` datasets until `shutdown`.
    pub(super) async fn watch_files(self: Arc<Self>, shutdown: CancellationToken) {
        let watched: Vec<(String, String)> = self
            .pipeline
            .project()
            .datasets
            .iter()
            .filter(|d| d.on_file)
            .filter_map(|d| d.source.path.clone().map(|p| (d.name.clone(), p)))
            .collect();
        if watched.is_empty() {
            return;
        }
        for (dataset, pattern) in &watched {
            tracing::info!(%dataset, %pattern, settle = ?SETTLE, "watching for new landing files");
        }
        let mut seen: HashMap<(String, String), Seen> = HashMap::new();
        loop {
            for (dataset, pattern) in &watched {
                self.look(dataset, pattern, &mut seen).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn look(self: &Arc<Self>, dataset: &str, pattern: &str, seen: &mut HashMap<(String, String), Seen>) {
        let listing = match self.pipeline.landing_listing(pattern).await {
            Ok(listing) => listing,
            Err(err) => {
                tracing::warn!(%dataset, %err, "listing landing files failed; trying again");
                return;
            }
        };
        let now = Instant::now();
        let mut settled: Vec<(String, u64)> = Vec::new();
        for (path, size, modified) in &listing {
            let key = (dataset.to_string(), path.clone());
            let entry = seen.entry(key).or_insert(Seen { size: *size, modified: *modified, since: now, submitted: false });
            if entry.size != *size || entry.modified != *modified {
                // Still being written (or replaced): wait for it to settle.
                *entry = Seen { size: *size, modified: *modified, since: now, submitted: false };
                continue;
            }
            if !entry.submitted && now.duration_since(entry.since) >= SETTLE {
                settled.push((path.clone(), *size));
            }
        }
        seen.retain(|(d, p), _| d != dataset || listing.iter().any(|(path, _, _)| path == p));
        if settled.is_empty() {
            return;
        }
        let ingested = match self.meta.ingested_sizes(dataset).await {
            Ok(ingested) => ingested,
            Err(err) => {
                tracing::warn!(%dataset, %err, "cannot tell which landing files are ingested; trying again");
                return;
            }
        };
        for (path, _) in &settled {
            if let Some(entry) = seen.get_mut(&(dataset.to_string(), path.clone())) {
                entry.submitted = true;
            }
        }
        let new: Vec<String> = settled
            .into_iter()
            .filter(|(path, size)| ingested.get(path) != Some(&(*size as i64)))
            .map(|(path, _)| path)
            .collect();
        if new.is_empty() {
            return;
        }
        tracing::info!(%dataset, files = ?new, "new landing files arrived");
        let this = self.clone();
        let dataset = dataset.to_string();
        tokio::spawn(async move {
            let Ok(_permit) = this.workers.clone().acquire_owned().await else { return };
            let options = RunOptions {
                trigger: "file".into(),
                files: Some(new),
                wait: Some(super::LOCK_WAIT),
                ..Default::default()
            };
            match this.pipeline.run_downstream(&dataset, &options, super::WORKERS).await {
                Ok(outcomes) => {
                    for o in outcomes {
                        match &o.error {
                            None => tracing::info!(dataset = %o.dataset, run_id = %o.run_id, "file-arrival run succeeded"),
                            Some(error) => tracing::error!(dataset = %o.dataset, run_id = %o.run_id, status = o.status.as_str(), %error, "file-arrival run did not succeed"),
                        }
                    }
                }
                Err(err) => tracing::error!(%dataset, %err, "file-arrival run failed"),
            }
        });
    }
}
