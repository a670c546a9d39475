//! Registry of live client connections ("backends" in Postgres terms): their
//! pid and cancel key, user, and the query each is running. Cancel requests,
//! `pg_cancel_backend`, `pg_terminate_backend` and graceful shutdown all act
//! through it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::governance::audit::{AuditIdentity, StatementAudit};

/// Why a running query stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Cancel request, `pg_cancel_backend` or Ctrl-C in psql.
    UserRequest,
    /// `pg_terminate_backend` or server shutdown.
    Terminated,
}

#[derive(Debug)]
struct Running {
    id: u64,
    token: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
    sql: String,
    started: Instant,
    audit: Option<Arc<StatementAudit>>,
}

/// One client connection.
#[derive(Debug)]
pub struct Backend {
    pub pid: i32,
    pub addr: SocketAddr,
    pub connected_at: chrono::DateTime<chrono::Utc>,
    secret: Mutex<Option<Vec<u8>>>,
    user: Mutex<Option<String>>,
    running: Mutex<Option<Running>>,
    /// Set at login when the server keeps an audit trail.
    audit: Mutex<Option<AuditIdentity>>,
    next_query: AtomicU64,
    /// Fires when the connection must close (terminate or shutdown).
    closed: CancellationToken,
}

/// A snapshot of one backend, for `pg_stat_activity`-style views and shutdown.
#[derive(Debug, Clone)]
pub struct BackendInfo {
    pub pid: i32,
    pub user: Option<String>,
    pub addr: SocketAddr,
    pub query: Option<String>,
    pub query_started: Option<Instant>,
}

/// Held while a query runs; stopping the query fires `token`. Dropping the
/// guard marks the backend idle again.
#[derive(Debug)]
pub struct QueryGuard {
    backend: Arc<Backend>,
    id: u64,
    pub token: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
    /// This statement's audit record, submitted when the last holder drops it.
    pub audit: Option<Arc<StatementAudit>>,
    started: Instant,
    /// The SQLSTATE it failed with, for the metrics.
    failed: Mutex<Option<String>>,
}

impl QueryGuard {
    /// Count one row returned to the client.
    pub fn row(&self) {
        if let Some(audit) = &self.audit {
            audit.row();
        }
    }

    /// The statement failed with `sqlstate`.
    pub fn failed(&self, sqlstate: &str) {
        if let Some(audit) = &self.audit {
            audit.failed(sqlstate);
        }
        *self.failed.lock().expect("query state poisoned") = Some(sqlstate.to_string());
    }

    /// Why the query was stopped, once `token` has fired.
    pub fn stop_reason(&self) -> StopReason {
        self.reason
            .lock()
            .expect("stop reason poisoned")
            .unwrap_or(StopReason::UserRequest)
    }
}

impl Drop for QueryGuard {
    fn drop(&mut self) {
        let failed = self.failed.lock().map(|f| f.clone()).unwrap_or(None);
        crate::metrics::statement(failed.as_deref(), self.started.elapsed());
        let mut running = self.backend.running.lock().expect("backend state poisoned");
        if running.as_ref().is_some_and(|r| r.id == self.id) {
            *running = None;
        }
    }
}

impl Backend {
    pub fn set_authenticated(&self, user: &str, secret: &[u8]) {
        *self.user.lock().expect("backend state poisoned") = Some(user.to_string());
        *self.secret.lock().expect("backend state poisoned") = Some(secret.to_vec());
    }

    /// Audit this connection's statements as `identity`.
    pub fn set_audit(&self, identity: AuditIdentity) {
        *self.audit.lock().expect("backend state poisoned") = Some(identity);
    }

    /// Note tables the running statement reads, for its audit record.
    pub fn note_tables(&self, tables: impl IntoIterator<Item = String>) {
        let running = self.running.lock().expect("backend state poisoned");
        if let Some(audit) = running.as_ref().and_then(|r| r.audit.as_ref()) {
            audit.tables(tables);
        }
    }

    pub fn user(&self) -> Option<String> {
        self.user.lock().expect("backend state poisoned").clone()
    }

    /// Mark `sql` as running on this backend.
    pub fn begin_query(self: &Arc<Self>, sql: &str) -> QueryGuard {
        let id = self.next_query.fetch_add(1, Ordering::Relaxed);
        let token = self.closed.child_token();
        let reason = Arc::new(Mutex::new(None));
        let audit = self
            .audit
            .lock()
            .expect("backend state poisoned")
            .clone()
            .map(|identity| Arc::new(StatementAudit::new(identity, sql)));
        *self.running.lock().expect("backend state poisoned") = Some(Running {
            id,
            token: token.clone(),
            reason: reason.clone(),
            sql: sql.to_string(),
            started: Instant::now(),
            audit: audit.clone(),
        });
        QueryGuard {
            backend: self.clone(),
            id,
            token,
            reason,
            audit,
            started: Instant::now(),
            failed: Mutex::new(None),
        }
    }

    /// Stop the running query, if any. Returns whether one was running.
    pub fn cancel(&self, why: StopReason) -> bool {
        let running = self.running.lock().expect("backend state poisoned");
        match running.as_ref() {
            Some(r) => {
                r.reason.lock().expect("stop reason poisoned").get_or_insert(why);
                r.token.cancel();
                true
            }
            None => false,
        }
    }

    /// Stop the running query and close the connection.
    pub fn terminate(&self) {
        self.cancel(StopReason::Terminated);
        self.closed.cancel();
    }

    /// Resolves when the connection must close.
    pub fn closed(&self) -> CancellationToken {
        self.closed.clone()
    }

    pub fn is_busy(&self) -> bool {
        self.running.lock().expect("backend state poisoned").is_some()
    }

    fn info(&self) -> BackendInfo {
        let running = self.running.lock().expect("backend state poisoned");
        BackendInfo {
            pid: self.pid,
            user: self.user(),
            addr: self.addr,
            query: running.as_ref().map(|r| r.sql.clone()),
            query_started: running.as_ref().map(|r| r.started),
        }
    }
}

/// All live backends of this server process.
#[derive(Debug)]
pub struct Backends {
    next_pid: AtomicI32,
    live: RwLock<HashMap<i32, Arc<Backend>>>,
}

impl Default for Backends {
    fn default() -> Self {
        Backends {
            // Postgres pids are positive and small; start well above 0 so a
            // pid never looks like a sentinel to client code.
            next_pid: AtomicI32::new(1000 + (std::process::id() as i32 % 1000) * 1000),
            live: RwLock::new(HashMap::new()),
        }
    }
}

/// Removes the backend from the registry when the connection ends.
#[derive(Debug)]
pub struct Registration {
    backends: Arc<Backends>,
    pub backend: Arc<Backend>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.backend.terminate();
        self.backends
            .live
            .write()
            .expect("backend registry poisoned")
            .remove(&self.backend.pid);
    }
}

impl Backends {
    pub fn register(self: &Arc<Self>, addr: SocketAddr) -> Registration {
        let pid = self.next_pid.fetch_add(1, Ordering::Relaxed);
        let backend = Arc::new(Backend {
            pid,
            addr,
            connected_at: chrono::Utc::now(),
            secret: Mutex::new(None),
            user: Mutex::new(None),
            running: Mutex::new(None),
            audit: Mutex::new(None),
            next_query: AtomicU64::new(0),
            closed: CancellationToken::new(),
        });
        self.live
            .write()
            .expect("backend registry poisoned")
            .insert(pid, backend.clone());
        Registration {
            backends: self.clone(),
            backend,
        }
    }

    pub fn get(&self, pid: i32) -> Option<Arc<Backend>> {
        self.live.read().expect("backend registry poisoned").get(&pid).cloned()
    }

    /// A protocol cancel request: only honoured with the matching secret key.
    pub fn cancel_with_key(&self, pid: i32, secret: &[u8]) -> bool {
        match self.get(pid) {
            Some(backend)
                if backend.secret.lock().expect("backend state poisoned").as_deref()
                    == Some(secret) =>
            {
                backend.cancel(StopReason::UserRequest)
            }
            _ => false,
        }
    }

    pub fn all(&self) -> Vec<Arc<Backend>> {
        self.live
            .read()
            .expect("backend registry poisoned")
            .values()
            .cloned()
            .collect()
    }

    pub fn snapshot(&self) -> Vec<BackendInfo> {
        let mut infos: Vec<BackendInfo> = self.all().iter().map(|b| b.info()).collect();
        infos.sort_by_key(|i| i.pid);
        infos
    }

    pub fn busy_count(&self) -> usize {
        self.all().iter().filter(|b| b.is_busy()).count()
    }
}
