//! The audit trail: one record per statement a client sends (and per failed
//! login, and per run started from the CLI), written to the metadata store's
//! `audit` table and served as `workbench.audit`.
//!
//! Writing it never blocks or fails a query: records go into a bounded queue
//! that one task drains in batches, one transaction per batch. When the queue
//! is full (the metadata store is down or slower than the clients) a record is
//! dropped and counted; the count is itself written as a `dropped` record as
//! soon as the store takes writes again, and logged.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::meta::{AuditRecord, MetaStore};

/// Records written per transaction at most.
const BATCH: usize = 500;
/// How long the writer waits for more records after the first of a batch.
const LINGER: Duration = Duration::from_millis(50);
/// Attempts at writing one batch before its records count as dropped.
const ATTEMPTS: u32 = 3;

/// The queue into the audit table. Cheap to clone into every connection.
#[derive(Debug)]
pub struct Auditor {
    queue: mpsc::Sender<AuditRecord>,
    dropped: Arc<AtomicU64>,
    closing: CancellationToken,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Auditor {
    /// Start the writer task; at most `capacity` records wait in memory.
    /// With a `retention`, records older than it are deleted at start and
    /// hourly, and each deletion leaves a `pruned` record.
    pub fn start(meta: Arc<MetaStore>, capacity: usize, retention: Option<Duration>) -> Arc<Auditor> {
        let (queue, records) = mpsc::channel(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let closing = CancellationToken::new();
        let writer = tokio::spawn(write_batches(meta.clone(), records, dropped.clone(), closing.clone()));
        let auditor = Arc::new(Auditor {
            queue,
            dropped,
            closing: closing.clone(),
            writer: Mutex::new(Some(writer)),
        });
        if let Some(retention) = retention {
            tokio::spawn(prune(meta, Arc::downgrade(&auditor), retention, closing));
        }
        auditor
    }

    /// Queue `record`; never waits. A full queue drops it and counts it.
    pub fn submit(&self, record: AuditRecord) {
        if self.queue.try_send(record).is_err() {
            let before = self.dropped.fetch_add(1, Ordering::Relaxed);
            if before == 0 {
                tracing::warn!("audit queue full: dropping audit records until the metadata store catches up");
            }
        }
    }

    /// Records dropped since the last time the count was written.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Write what is queued and stop the writer (at shutdown). Records
    /// submitted afterwards are dropped.
    pub async fn close(&self, deadline: Duration) {
        self.closing.cancel();
        let writer = self.writer.lock().expect("audit writer poisoned").take();
        let Some(mut writer) = writer else { return };
        if tokio::time::timeout(deadline, &mut writer).await.is_err() {
            tracing::warn!("audit records still queued at shutdown were not written");
            writer.abort();
        }
    }
}

async fn write_batches(
    meta: Arc<MetaStore>,
    mut records: mpsc::Receiver<AuditRecord>,
    dropped: Arc<AtomicU64>,
    closing: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let received = tokio::select! {
            n = records.recv_many(&mut batch, BATCH) => n,
            _ = closing.cancelled(), if !records.is_closed() => {
                // Take no more; write what is queued, then stop.
                records.close();
                continue;
            }
        };
        if received == 0 {
            return;
        }
        // Let a burst gather: one transaction for many statements costs the
        // store (and the clients' cores) far less than one each.
        if batch.len() < BATCH && !closing.is_cancelled() {
            tokio::time::sleep(LINGER).await;
            while batch.len() < BATCH {
                match records.try_recv() {
                    Ok(record) => batch.push(record),
                    Err(_) => break,
                }
            }
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            tracing::warn!(lost, "audit records were dropped: the queue was full");
            batch.push(dropped_record(lost));
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match meta.record_audit(&batch).await {
                Ok(()) => break,
                Err(err) if attempt < ATTEMPTS && !closing.is_cancelled() => {
                    tracing::warn!(%err, attempt, "cannot write audit records; retrying");
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                }
                Err(err) => {
                    tracing::error!(%err, records = batch.len(), "cannot write audit records: counting them as dropped");
                    let statements = batch.iter().filter(|r| r.kind != "dropped").count() as u64;
                    let carried: u64 = batch
                        .iter()
                        .filter(|r| r.kind == "dropped")
                        .filter_map(|r| r.rows_returned)
                        .map(|n| n as u64)
                        .sum();
                    dropped.fetch_add(statements + carried, Ordering::Relaxed);
                    break;
                }
            }
        }
        batch.clear();
    }
}

/// `400d`, `36h`: a retention as its config is usually written.
fn whole_units(retention: Duration) -> String {
    let secs = retention.as_secs();
    match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        _ => humantime::format_duration(retention).to_string(),
    }
}

/// How often records past their retention are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Delete records older than `retention`, now and every [`PRUNE_EVERY`],
/// until the server closes. Replicas sharing a store may prune at the same
/// time: each deletes what is still there.
async fn prune(meta: Arc<MetaStore>, auditor: std::sync::Weak<Auditor>, retention: Duration, closing: CancellationToken) {
    let mut every = tokio::time::interval(PRUNE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = closing.cancelled() => return,
        }
        let Some(age) = chrono::Duration::from_std(retention).ok() else { return };
        let cutoff = Utc::now() - age;
        match meta.prune_audit(cutoff).await {
            Ok(0) => {}
            Ok(deleted) => {
                tracing::info!(deleted, %cutoff, "deleted audit records past their retention");
                let Some(auditor) = auditor.upgrade() else { return };
                auditor.submit(AuditRecord {
                    at: Utc::now(),
                    user_name: "workbench".into(),
                    roles: String::new(),
                    client_addr: None,
                    application_name: None,
                    kind: "pruned".into(),
                    statement: Some(format!(
                        "{deleted} audit record(s) older than {} deleted (audit.retention {})",
                        cutoff.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        whole_units(retention)
                    )),
                    tables_read: None,
                    rows_returned: Some(deleted as i64),
                    duration_ms: None,
                    sqlstate: None,
                });
            }
            Err(err) => tracing::warn!(%err, "cannot delete audit records past their retention; trying again in an hour"),
        }
    }
}

fn dropped_record(count: u64) -> AuditRecord {
    AuditRecord {
        at: Utc::now(),
        user_name: "workbench".into(),
        roles: String::new(),
        client_addr: None,
        application_name: None,
        kind: "dropped".into(),
        statement: Some(format!("{count} audit record(s) dropped: the audit queue was full")),
        tables_read: None,
        rows_returned: Some(count as i64),
        duration_ms: None,
        sqlstate: None,
    }
}

/// Who a connection is, for its audit records.
#[derive(Debug, Clone)]
pub struct AuditIdentity {
    pub auditor: Arc<Auditor>,
    pub user: String,
    pub roles: String,
    pub client_addr: String,
    pub application_name: Option<String>,
}

impl AuditIdentity {
    /// A failed login of `user` from `client_addr`.
    pub fn login_failed(auditor: &Auditor, user: &str, client_addr: String, application_name: Option<String>, sqlstate: &str) {
        auditor.submit(AuditRecord {
            at: Utc::now(),
            user_name: user.to_string(),
            roles: String::new(),
            client_addr: Some(client_addr),
            application_name,
            kind: "login_failed".into(),
            statement: None,
            tables_read: None,
            rows_returned: None,
            duration_ms: None,
            sqlstate: Some(sqlstate.to_string()),
        });
    }
}

/// One statement being audited: tables, rows and outcome are noted while it
/// runs; the record is submitted when the statement is over (dropped).
#[derive(Debug)]
pub struct StatementAudit {
    identity: AuditIdentity,
    at: chrono::DateTime<Utc>,
    started: Instant,
    statement: String,
    tables: Mutex<BTreeSet<String>>,
    rows: AtomicI64,
    sqlstate: Mutex<Option<String>>,
}

impl StatementAudit {
    pub fn new(identity: AuditIdentity, statement: &str) -> StatementAudit {
        StatementAudit {
            identity,
            at: Utc::now(),
            started: Instant::now(),
            statement: statement.to_string(),
            tables: Mutex::new(BTreeSet::new()),
            rows: AtomicI64::new(0),
            sqlstate: Mutex::new(None),
        }
    }

    pub fn tables(&self, names: impl IntoIterator<Item = String>) {
        self.tables.lock().expect("audit state poisoned").extend(names);
    }

    pub fn row(&self) {
        self.rows.fetch_add(1, Ordering::Relaxed);
    }

    /// The statement failed with `sqlstate` (the first failure counts).
    pub fn failed(&self, sqlstate: &str) {
        self.sqlstate
            .lock()
            .expect("audit state poisoned")
            .get_or_insert_with(|| sqlstate.to_string());
    }
}

impl Drop for StatementAudit {
    fn drop(&mut self) {
        let tables = std::mem::take(&mut *self.tables.lock().expect("audit state poisoned"));
        let sqlstate = self.sqlstate.lock().expect("audit state poisoned").take();
        self.identity.auditor.submit(AuditRecord {
            at: self.at,
            user_name: self.identity.user.clone(),
            roles: self.identity.roles.clone(),
            client_addr: Some(self.identity.client_addr.clone()),
            application_name: self.identity.application_name.clone(),
            kind: "statement".into(),
            statement: Some(std::mem::take(&mut self.statement)),
            tables_read: (!tables.is_empty()).then(|| tables.into_iter().collect::<Vec<_>>().join(",")),
            rows_returned: Some(*self.rows.get_mut()),
            duration_ms: Some(self.started.elapsed().as_millis() as i64),
            sqlstate: Some(sqlstate.unwrap_or_else(|| "00000".into())),
        });
    }
}
