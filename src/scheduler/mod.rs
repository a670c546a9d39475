//! The scheduler inside `workbench serve`: runs each dataset that has a
//! `schedule:` at its slots. Every replica runs one; a slot runs once across
//! all of them because a replica must first claim it in the metadata store,
//! where `(dataset, slot)` is a unique key (the claim carries the run's id,
//! and the run records its slot). While a replica waits for or runs a slot's
//! run it writes the slot's heartbeat; a replica that dies leaves its slot
//! claimed with a silent heartbeat, and any scheduler that wakes marks it
//! abandoned after `lock_ttl`. It is not run again; the next slot runs
//! wherever it is claimed.
//!
//! A scheduled run of a dataset is followed by the datasets downstream of
//! it (`depends_on`, gold SQL, `relationships`), in dependency order.
//!
//! It also watches the freshness of datasets that alert on it, and the
//! landing files of datasets with `trigger: on_file` ([`files`]).
//!
//! When a server starts, each dataset's `catchup` decides what the slots
//! missed since the last claimed one do: `latest` runs the most recent once,
//! `all` runs each (at most [`CATCHUP_LIMIT`], oldest first), `none` skips them.

mod files;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::meta::MetaStore;
use crate::pipeline::{Pipeline, RunOptions, RunStatus, new_run_id};
use crate::spec::{Catchup, Schedule};

/// Missed slots `catchup: all` runs at most, per dataset.
pub const CATCHUP_LIMIT: usize = 100;
/// Scheduled runs at the same time on one replica, at most.
const WORKERS: usize = 4;
/// The scheduler looks at the clock at least this often (a slot is never
/// later than this after a jump of the system clock).
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// How often freshness is checked when a dataset alerts on it.
const FRESHNESS_EVERY: Duration = Duration::from_secs(5);
/// How long a scheduled run waits for a run of the same dataset to finish.
const LOCK_WAIT: Duration = Duration::from_secs(600);

/// What a slot does: run a dataset, or maintain its tables.
#[derive(Debug, Clone)]
enum Job {
    Run(String),
    Maintain(String),
}

impl Job {
    /// The name its slots are claimed under (`workbench.schedule_slots.dataset`).
    fn key(&self) -> String {
        match self {
            Job::Run(dataset) => dataset.clone(),
            Job::Maintain(dataset) => format!("{dataset}:maintenance"),
        }
    }
}

pub struct Scheduler {
    pipeline: Arc<Pipeline>,
    meta: Arc<MetaStore>,
    /// Who claims slots: host and process.
    replica: String,
    jobs: Vec<(Job, Schedule)>,
    workers: Arc<Semaphore>,
    /// Some dataset alerts when it goes stale: look every [`FRESHNESS_EVERY`].
    watch_freshness: bool,
}

impl Scheduler {
    /// A scheduler for the datasets of `pipeline` that have a schedule;
    /// `None` when none has.
    pub fn new(pipeline: Arc<Pipeline>, meta: Arc<MetaStore>) -> Option<Scheduler> {
        let mut jobs: Vec<(Job, Schedule)> = Vec::new();
        for d in &pipeline.project().datasets {
            if let Some(schedule) = &d.schedule {
                jobs.push((Job::Run(d.name.clone()), schedule.clone()));
            }
            if let Some(maintenance) = &d.maintenance {
                jobs.push((Job::Maintain(d.name.clone()), maintenance.schedule.clone()));
            }
        }
        let watch_freshness = pipeline
            .project()
            .datasets
            .iter()
            .any(|d| d.freshness.is_some() && d.notify.iter().any(|n| n.on.contains(&crate::spec::AlertEvent::Freshness)));
        let watch_files = pipeline.project().datasets.iter().any(|d| d.on_file);
        if jobs.is_empty() && !watch_freshness && !watch_files {
            return None;
        }
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        Some(Scheduler {
            pipeline,
            meta,
            replica: format!("{host}:{}", std::process::id()),
            jobs,
            workers: Arc::new(Semaphore::new(WORKERS)),
            watch_freshness,
        })
    }

    /// Run slots until `shutdown` fires. Runs already started finish (or are
    /// stopped with the server).
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        tokio::spawn(this.clone().watch_files(shutdown.clone()));
        let started = Utc::now();
        for (job, schedule) in &this.jobs {
            tracing::info!(job = %job.key(), schedule = %schedule.describe(), next = ?schedule.next_after(started), "scheduled");
            for slot in this.missed(&job.key(), schedule, started).await {
                this.fire(job, slot);
            }
        }
        let mut cursors: Vec<DateTime<Utc>> = vec![started; this.jobs.len()];
        loop {
            let due = this
                .jobs
                .iter()
                .zip(&cursors)
                .filter_map(|((_, schedule), cursor)| schedule.next_after(*cursor))
                .min();
            let longest = if this.watch_freshness { FRESHNESS_EVERY } else { MAX_SLEEP };
            let wait = due
                .map(|due| (due - Utc::now()).to_std().unwrap_or(Duration::ZERO))
                .unwrap_or(longest)
                .min(longest);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
            this.abandon_silent_slots().await;
            if this.watch_freshness {
                let pipeline = this.pipeline.clone();
                tokio::spawn(async move { pipeline.alert_stale().await });
            }
            let now = Utc::now();
            for ((job, schedule), cursor) in this.jobs.iter().zip(cursors.iter_mut()) {
                // Slots that came due while this replica slept or was busy;
                // after a long stall (a suspended machine) only the latest runs.
                let due = schedule.slots_between(*cursor, now, 1);
                if let Some(slot) = due.last() {
                    *cursor = *slot;
                    this.fire(job, *slot);
                }
            }
        }
    }

    /// Slots whose replica died while waiting for or running their run.
    async fn abandon_silent_slots(&self) {
        match self.meta.abandon_silent_slots(self.pipeline.lock_ttl()).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(slots = n, "marked scheduled slots whose replica stopped as abandoned"),
            Err(err) => tracing::warn!(%err, "checking for abandoned scheduled slots failed"),
        }
    }

    /// The slots missed since the last one any replica claimed, as `catchup` says.
    async fn missed(&self, dataset: &str, schedule: &Schedule, now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let limit = match schedule.catchup {
            Catchup::None => return vec![],
            Catchup::Latest => 1,
            Catchup::All => CATCHUP_LIMIT,
        };
        match self.meta.last_slot(dataset).await {
            // Never scheduled before: nothing was missed.
            Ok(None) => vec![],
            Ok(Some(last)) => {
                let missed = schedule.slots_between(last, now, limit);
                if !missed.is_empty() {
                    tracing::info!(%dataset, missed = missed.len(), catchup = schedule.catchup.as_str(), "running slots missed while no server ran");
                }
                missed
            }
            Err(err) => {
                tracing::warn!(%dataset, %err, "cannot read the last scheduled slot; missed slots are not caught up");
                vec![]
            }
        }
    }

    /// Claim `slot` of `job` and, if this replica got it, do it.
    fn fire(self: &Arc<Self>, job: &Job, slot: DateTime<Utc>) {
        let this = self.clone();
        let (job, dataset) = (job.clone(), job.key());
        tokio::spawn(async move {
            let run_id = new_run_id();
            match this.meta.claim_slot(&dataset, slot, &this.replica, &run_id).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!(%dataset, %slot, "slot claimed by another replica");
                    return;
                }
                Err(err) => {
                    tracing::warn!(%dataset, %slot, %err, "cannot claim a scheduled slot; another replica may run it");
                    return;
                }
            }
            // While this replica waits for a worker, for the dataset's lock
            // and runs, the slot's heartbeat says it is alive.
            let heartbeat = {
                let (meta, dataset) = (this.meta.clone(), dataset.clone());
                let every = (this.pipeline.lock_ttl() / 3).max(Duration::from_millis(200));
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(every).await;
                        if let Err(err) = meta.slot_heartbeat(&dataset, slot).await {
                            tracing::warn!(%dataset, %slot, %err, "writing a scheduled slot's heartbeat failed");
                        }
                    }
                })
            };
            let Ok(_permit) = this.workers.clone().acquire_owned().await else {
                heartbeat.abort();
                return;
            };
            crate::metrics::schedule_lag((Utc::now() - slot).to_std().unwrap_or_default());
            if let Job::Maintain(of) = &job {
                let (status, error) = match this.pipeline.maintain(of).await {
                    Ok(_) => ("succeeded", None),
                    Err(err) => ("failed", Some(err.to_string())),
                };
                heartbeat.abort();
                if let Some(error) = &error {
                    tracing::error!(dataset = %of, %slot, %error, "scheduled table maintenance failed");
                }
                if let Err(err) = this.meta.finish_slot(&dataset, slot, status, error.as_deref()).await {
                    tracing::warn!(%dataset, %slot, %err, "recording the end of a scheduled slot failed");
                }
                return;
            }
            tracing::info!(%dataset, %slot, %run_id, "scheduled run starting");
            let options = RunOptions {
                trigger: "schedule".into(),
                run_id: Some(run_id.clone()),
                slot: Some(slot),
                wait: Some(LOCK_WAIT),
                ..Default::default()
            };
            // The datasets downstream of it follow, in dependency order.
            let (status, error) = match this.pipeline.run_downstream(&dataset, &options, WORKERS).await {
                Ok(outcomes) => {
                    for other in outcomes.iter().filter(|o| o.dataset != dataset) {
                        tracing::info!(%dataset, downstream = %other.dataset, run_id = %other.run_id, status = other.status.as_str(), "downstream of a scheduled run");
                    }
                    match outcomes.into_iter().find(|o| o.dataset == dataset) {
                        Some(outcome) => (outcome.status, outcome.error),
                        None => (RunStatus::Failed, Some("the scheduled dataset did not run".to_string())),
                    }
                }
                Err(err) => (RunStatus::of(&err), Some(err.to_string())),
            };
            let status = status.as_str();
            heartbeat.abort();
            match &error {
                None => tracing::info!(%dataset, %slot, %run_id, "scheduled run succeeded"),
                Some(error) => tracing::error!(%dataset, %slot, %run_id, %error, "scheduled run failed"),
            }
            if let Err(err) = this.meta.finish_slot(&dataset, slot, status, error.as_deref()).await {
                tracing::warn!(%dataset, %slot, %err, "recording the end of a scheduled slot failed");
            }
        });
    }
}
