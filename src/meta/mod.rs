//! The metadata store: datasets, runs, run steps, ingested files, lineage
//! and validations, in PostgreSQL (`DATABASE_URL` / `metadata.url`) or, by
//! default, in a SQLite file in the lake's `_workbench/` folder. Both run the
//! same numbered migrations from `migrations/` and the same SQL; this module
//! does not know about pipelines or the wire protocol.

mod records;
pub mod tables;

use std::path::Path;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

pub use records::{AlertRecord, AuditRecord, DatasetRecord, FileRecord, LineageEdge, RunRecord, SlotRecord, StepRecord, ValidationRecord};

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata store unreachable ({backend}): {source}; queries on the lake still work, runs need the store")]
    Unavailable {
        backend: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("metadata migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("metadata store ({backend}): {source}")]
    Query {
        backend: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

impl MetaError {
    /// The store could not be reached or lost the connection (worth a retry).
    pub fn is_transient(&self) -> bool {
        match self {
            MetaError::Unavailable { .. } => true,
            MetaError::Query { source, .. } => matches!(
                source,
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed
            ),
            MetaError::Migrate(_) => false,
        }
    }
}

/// One metadata store, one of two back-ends with the same behaviour.
#[derive(Debug, Clone)]
pub enum MetaStore {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Run the same statement on whichever pool the store has. The SQL uses
/// `$n` placeholders, which both Postgres and SQLite accept.
macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match $store {
            MetaStore::Postgres($pool) => $body.map_err(|source| MetaError::Query { backend: "postgres", source }),
            MetaStore::Sqlite($pool) => $body.map_err(|source| MetaError::Query { backend: "sqlite", source }),
        }
    };
}
pub(crate) use on_pool;

const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "metadata", include_str!("../../migrations/postgres/0001_metadata.sql")),
    (2, "openlineage", include_str!("../../migrations/postgres/0002_openlineage.sql")),
    (3, "heartbeat", include_str!("../../migrations/postgres/0003_heartbeat.sql")),
    (4, "audit", include_str!("../../migrations/postgres/0004_audit.sql")),
    (5, "schedule", include_str!("../../migrations/postgres/0005_schedule.sql")),
    (6, "run control", include_str!("../../migrations/postgres/0006_run_control.sql")),
    (7, "alerts", include_str!("../../migrations/postgres/0007_alerts.sql")),
    (8, "validation calls", include_str!("../../migrations/postgres/0008_validation_calls.sql")),
    (9, "run progress", include_str!("../../migrations/postgres/0009_run_progress.sql")),
];
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "metadata", include_str!("../../migrations/sqlite/0001_metadata.sql")),
    (2, "openlineage", include_str!("../../migrations/sqlite/0002_openlineage.sql")),
    (3, "heartbeat", include_str!("../../migrations/sqlite/0003_heartbeat.sql")),
    (4, "audit", include_str!("../../migrations/sqlite/0004_audit.sql")),
    (5, "schedule", include_str!("../../migrations/sqlite/0005_schedule.sql")),
    (6, "run control", include_str!("../../migrations/sqlite/0006_run_control.sql")),
    (7, "alerts", include_str!("../../migrations/sqlite/0007_alerts.sql")),
    (8, "validation calls", include_str!("../../migrations/sqlite/0008_validation_calls.sql")),
    (9, "run progress", include_str!("../../migrations/sqlite/0009_run_progress.sql")),
];

fn migrator(files: &'static [(i64, &'static str, &'static str)]) -> Migrator {
    Migrator::with_migrations(
        files
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    (*description).into(),
                    MigrationType::Simple,
                    sqlx::SqlSafeStr::into_sql_str(*sql),
                    false,
                )
            })
            .collect(),
    )
}

impl MetaStore {
    /// Connect to Postgres and apply pending migrations (idempotent).
    pub async fn postgres(url: &str) -> Result<MetaStore, MetaError> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|source| MetaError::Unavailable { backend: "postgres", source })?;
        migrator(POSTGRES_MIGRATIONS).run(&pool).await?;
        Ok(MetaStore::Postgres(pool))
    }

    /// Open (creating) the SQLite file at `path` and apply migrations.
    pub async fn sqlite(path: &Path) -> Result<MetaStore, MetaError> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        // Processes sharing the file (a `serve` and a `workbench run`)
        // open it one at a time: two migrating a fresh file at once get
        // SQLite's immediate "database is locked".
        let opening = path.with_extension("db.open-lock");
        let guard = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&opening)?;
            file.lock()?;
            Ok(file)
        })
        .await
        .ok()
        .and_then(Result::ok);
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|source| MetaError::Unavailable { backend: "sqlite", source })?;
        migrator(SQLITE_MIGRATIONS).run(&pool).await?;
        drop(guard);
        Ok(MetaStore::Sqlite(pool))
    }

    /// Whether the store answers (`SELECT 1`).
    pub async fn ping(&self) -> Result<(), MetaError> {
        on_pool!(self, |pool| sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))
    }

    pub fn backend(&self) -> &'static str {
        match self {
            MetaStore::Postgres(_) => "postgres",
            MetaStore::Sqlite(_) => "sqlite",
        }
    }
}
