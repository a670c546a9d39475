//! Writing metadata: datasets synced from specs, runs and their steps,
//! ingested files, lineage edges.

use chrono::{DateTime, Utc};
use sqlx::types::Json;

use super::{MetaError, MetaStore, on_pool};

#[derive(Debug, Clone)]
pub struct DatasetRecord {
    pub name: String,
    pub description: Option<String>,
    pub owner: Option<String>,
    pub spec_hash: String,
    pub spec_text: String,
    pub spec_file: String,
    /// `layer.table` names the dataset produces.
    pub tables: Vec<String>,
    pub schedule: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RunRecord {
    pub id: String,
    pub datasets: Vec<String>,
    pub trigger: String,
    pub parameters: serde_json::Value,
    pub started_at: DateTime<Utc>,
    /// 1 for a first attempt; retries count on.
    pub attempt: u32,
    /// A retry's first attempt.
    pub retry_of: Option<String>,
}

#[derive(Debug, Clone)]
pub struct StepRecord {
    pub run_id: String,
    pub seq: i32,
    pub dataset: String,
    pub layer: String,
    pub table_name: String,
    pub rows_in: i64,
    pub rows_out: i64,
    pub rows_rejected: i64,
    pub status: String,
    pub duration_ms: i64,
    pub message: Option<String>,
}

#[derive(Debug, Clone)]
pub struct FileRecord {
    pub dataset: String,
    pub path: String,
    pub content_hash: String,
    pub size_bytes: i64,
    pub run_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LineageEdge {
    pub from_table: String,
    /// Empty for a table-level edge.
    pub from_column: String,
    pub to_table: String,
    pub to_column: String,
    pub transform: String,
}

/// An alert about to be sent.
#[derive(Debug, Clone)]
pub struct AlertRecord {
    pub id: String,
    /// The same alert noticed twice (by two replicas) has the same key.
    pub dedupe_key: String,
    pub dataset: String,
    pub event: String,
    pub run_id: Option<String>,
    /// Where it goes, without secrets.
    pub target: String,
    pub payload: serde_json::Value,
}

/// One expectation's result, as `workbench.validations` stores it.
#[derive(Debug, Clone)]
pub struct ValidationRecord {
    pub run_id: Option<String>,
    pub table_name: String,
    pub expectation: String,
    pub columns: String,
    pub success: bool,
    pub element_count: i64,
    pub unexpected_count: i64,
    pub unexpected_percent: f64,
    pub missing_count: i64,
    /// JSON array of up to 20 sample values.
    pub partial_unexpected_list: String,
    pub observed_value: Option<String>,
    /// The validate() call these results came from (one report).
    pub validation_id: Option<String>,
    /// Who called validate().
    pub validated_by: Option<String>,
}

impl MetaStore {
    /// Insert audit records in one transaction.
    pub async fn record_audit(&self, records: &[AuditRecord]) -> Result<(), MetaError> {
        // One multi-row INSERT per chunk, in one transaction: the audit writer
        // hands over batches of up to hundreds of records. 11 values a row
        // stays far below both stores' limits on bound parameters.
        const ROWS_PER_INSERT: usize = 200;
        macro_rules! insert_all {
            ($pool:expr) => {
                async {
                    let mut tx = $pool.begin().await?;
                    for chunk in records.chunks(ROWS_PER_INSERT) {
                        let mut insert = sqlx::QueryBuilder::new(
                            "INSERT INTO audit (at, user_name, roles, client_addr, application_name, kind, statement, \
                             tables_read, rows_returned, duration_ms, sqlstate) ",
                        );
                        insert.push_values(chunk, |mut row, r| {
                            row.push_bind(r.at)
                                .push_bind(&r.user_name)
                                .push_bind(&r.roles)
                                .push_bind(&r.client_addr)
                                .push_bind(&r.application_name)
                                .push_bind(&r.kind)
                                .push_bind(&r.statement)
                                .push_bind(&r.tables_read)
                                .push_bind(r.rows_returned)
                                .push_bind(r.duration_ms)
                                .push_bind(&r.sqlstate);
                        });
                        insert.build().execute(&mut *tx).await?;
                    }
                    tx.commit().await
                }
            };
        }
        if records.is_empty() {
            return Ok(());
        }
        on_pool!(self, |pool| insert_all!(pool).await)?;
        Ok(())
    }

    /// Claim `dataset`'s `slot` for `run_id` on replica `by`: `true` when this
    /// call took it, `false` when someone already had (the slot's key is
    /// unique, so of replicas racing for a slot exactly one wins).
    pub async fn claim_slot(&self, dataset: &str, slot: DateTime<Utc>, by: &str, run_id: &str) -> Result<bool, MetaError> {
        let taken = on_pool!(self, |pool| sqlx::query(
            "INSERT INTO schedule_slots (dataset, slot, claimed_by, claimed_at, run_id, status, heartbeat_at) \
             VALUES ($1, $2, $3, $4, $5, 'running', $4) ON CONFLICT (dataset, slot) DO NOTHING"
        )
        .bind(dataset)
        .bind(slot)
        .bind(by)
        .bind(Utc::now())
        .bind(run_id)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(taken == 1)
    }

    /// The replica that claimed the slot still waits for or runs its run.
    pub async fn slot_heartbeat(&self, dataset: &str, slot: DateTime<Utc>) -> Result<(), MetaError> {
        on_pool!(self, |pool| sqlx::query("UPDATE schedule_slots SET heartbeat_at = $3 WHERE dataset = $1 AND slot = $2")
            .bind(dataset)
            .bind(slot)
            .bind(Utc::now())
            .execute(pool)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// Mark slots whose replica stopped writing their heartbeat `silent_for`
    /// ago as abandoned: the replica died waiting for or running the run.
    /// They are not run again. Returns how many.
    pub async fn abandon_silent_slots(&self, silent_for: std::time::Duration) -> Result<u64, MetaError> {
        let now = Utc::now();
        let cutoff = now - chrono::Duration::from_std(silent_for).unwrap_or(chrono::Duration::seconds(30));
        let done = on_pool!(self, |pool| sqlx::query(
            "UPDATE schedule_slots SET status = 'abandoned', finished_at = $2, \
             error = 'the replica that claimed it stopped (no heartbeat); the slot is not run again' \
             WHERE status = 'running' AND heartbeat_at < $1"
        )
        .bind(cutoff)
        .bind(now)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(done)
    }

    /// Record how a claimed slot ended: succeeded, failed or skipped.
    pub async fn finish_slot(&self, dataset: &str, slot: DateTime<Utc>, status: &str, error: Option<&str>) -> Result<(), MetaError> {
        on_pool!(self, |pool| sqlx::query(
            "UPDATE schedule_slots SET status = $3, error = $4, finished_at = $5 WHERE dataset = $1 AND slot = $2"
        )
        .bind(dataset)
        .bind(slot)
        .bind(status)
        .bind(error)
        .bind(Utc::now())
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// The latest slot of `dataset` any replica claimed.
    pub async fn last_slot(&self, dataset: &str) -> Result<Option<DateTime<Utc>>, MetaError> {
        Ok(self.last_slot_record(dataset).await?.map(|r| r.slot))
    }

    /// The latest claimed slot of `dataset` and how it went.
    pub async fn last_slot_record(&self, dataset: &str) -> Result<Option<SlotRecord>, MetaError> {
        let row = on_pool!(self, |pool| sqlx::query_as::<_, (DateTime<Utc>, String, String, Option<String>)>(
            "SELECT slot, status, run_id, error FROM schedule_slots WHERE dataset = $1 ORDER BY slot DESC LIMIT 1"
        )
        .bind(dataset)
        .fetch_optional(pool)
        .await)?;
        Ok(row.map(|(slot, status, run_id, error)| SlotRecord { slot, status, run_id, error }))
    }

    /// Delete audit records older than `cutoff`; returns how many.
    pub async fn prune_audit(&self, cutoff: chrono::DateTime<Utc>) -> Result<u64, MetaError> {
        let done = on_pool!(self, |pool| sqlx::query("DELETE FROM audit WHERE at < $1")
            .bind(cutoff)
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(done)
    }

    pub async fn record_validation(&self, v: &ValidationRecord) -> Result<(), MetaError> {
        on_pool!(self, |pool| sqlx::query(
            "INSERT INTO validations (run_id, table_name, expectation, columns, success, element_count, unexpected_count, \
             unexpected_percent, missing_count, partial_unexpected_list, observed_value, validated_at, validation_id, validated_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        )
        .bind(&v.run_id)
        .bind(&v.table_name)
        .bind(&v.expectation)
        .bind(&v.columns)
        .bind(v.success)
        .bind(v.element_count)
        .bind(v.unexpected_count)
        .bind(v.unexpected_percent)
        .bind(v.missing_count)
        .bind(&v.partial_unexpected_list)
        .bind(&v.observed_value)
        .bind(Utc::now())
        .bind(&v.validation_id)
        .bind(&v.validated_by)
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// Upsert `datasets` as active and mark every other known dataset
    /// retired (its history is kept).
    pub async fn sync_datasets(&self, datasets: &[DatasetRecord]) -> Result<(), MetaError> {
        let now = Utc::now();
        for d in datasets {
            let sql = "INSERT INTO datasets (name, description, owner, spec_hash, spec_text, spec_file, tables, schedule, status, synced_at) \
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'active', $9) \
                       ON CONFLICT (name) DO UPDATE SET description = excluded.description, owner = excluded.owner, \
                       spec_hash = excluded.spec_hash, spec_text = excluded.spec_text, spec_file = excluded.spec_file, \
                       tables = excluded.tables, schedule = excluded.schedule, status = 'active', synced_at = excluded.synced_at";
            on_pool!(self, |pool| sqlx::query(sql)
                .bind(&d.name)
                .bind(&d.description)
                .bind(&d.owner)
                .bind(&d.spec_hash)
                .bind(&d.spec_text)
                .bind(&d.spec_file)
                .bind(Json(&d.tables))
                .bind(&d.schedule)
                .bind(now)
                .execute(pool)
                .await
                .map(|_| ()))?;
        }
        let names: Vec<String> = on_pool!(self, |pool| sqlx::query_scalar::<_, String>(
            "SELECT name FROM datasets WHERE status = 'active'"
        )
        .fetch_all(pool)
        .await)?;
        for name in names.iter().filter(|n| !datasets.iter().any(|d| &d.name == *n)) {
            on_pool!(self, |pool| sqlx::query("UPDATE datasets SET status = 'retired', synced_at = $2 WHERE name = $1")
                .bind(name)
                .bind(now)
                .execute(pool)
                .await
                .map(|_| ()))?;
        }
        Ok(())
    }

    pub async fn start_run(&self, run: &RunRecord) -> Result<(), MetaError> {
        on_pool!(self, |pool| sqlx::query(
            "INSERT INTO runs (id, datasets, trigger, parameters, status, started_at, heartbeat_at, attempt, retry_of) \
             VALUES ($1, $2, $3, $4, 'running', $5, $5, $6, $7)"
        )
        .bind(&run.id)
        .bind(Json(&run.datasets))
        .bind(&run.trigger)
        .bind(Json(&run.parameters))
        .bind(run.started_at)
        .bind(run.attempt as i32)
        .bind(&run.retry_of)
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// Say that run `id` is still being worked on; `true` when someone asked
    /// for it to be cancelled.
    pub async fn heartbeat(&self, id: &str) -> Result<bool, MetaError> {
        let cancel: Option<Option<DateTime<Utc>>> = on_pool!(self, |pool| sqlx::query_scalar(
            "UPDATE runs SET heartbeat_at = $2 WHERE id = $1 AND status = 'running' RETURNING cancel_requested_at"
        )
        .bind(id)
        .bind(Utc::now())
        .fetch_optional(pool)
        .await)?;
        Ok(matches!(cancel, Some(Some(_))))
    }

    /// Ask for run `id` to be cancelled (the process running it stops it on
    /// its next heartbeat). Returns the run's status and datasets, `None`
    /// when there is no such run.
    pub async fn request_cancel(&self, id: &str, by: &str) -> Result<Option<(String, Vec<String>)>, MetaError> {
        on_pool!(self, |pool| sqlx::query(
            "UPDATE runs SET cancel_requested_at = COALESCE(cancel_requested_at, $2), cancel_requested_by = COALESCE(cancel_requested_by, $3) \
             WHERE id = $1 AND status = 'running'"
        )
        .bind(id)
        .bind(Utc::now())
        .bind(by)
        .execute(pool)
        .await
        .map(|_| ()))?;
        self.run_status(id).await
    }

    /// Record `alert` as being sent: `false` when an alert with its key
    /// exists (someone else sends it).
    pub async fn claim_alert(&self, alert: &AlertRecord) -> Result<bool, MetaError> {
        let now = Utc::now();
        let inserted = on_pool!(self, |pool| sqlx::query(
            "INSERT INTO alerts (id, dedupe_key, dataset, event, run_id, target, status, attempts, payload, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'sending', 0, $7, $8, $8) ON CONFLICT (dedupe_key) DO NOTHING"
        )
        .bind(&alert.id)
        .bind(&alert.dedupe_key)
        .bind(&alert.dataset)
        .bind(&alert.event)
        .bind(&alert.run_id)
        .bind(&alert.target)
        .bind(Json(&alert.payload))
        .bind(now)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(inserted == 1)
    }

    /// How delivery of alert `id` went after `attempts` attempts.
    pub async fn alert_attempted(&self, id: &str, status: &str, attempts: u32, error: Option<&str>) -> Result<(), MetaError> {
        on_pool!(self, |pool| sqlx::query("UPDATE alerts SET status = $2, attempts = $3, last_error = $4, updated_at = $5 WHERE id = $1")
            .bind(id)
            .bind(status)
            .bind(attempts as i32)
            .bind(error)
            .bind(Utc::now())
            .execute(pool)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// The expectations that failed in run `run_id`: (table, expectation,
    /// columns, unexpected count, observed value).
    pub async fn failed_validations(&self, run_id: &str) -> Result<Vec<(String, String, String, i64, Option<String>)>, MetaError> {
        let rows = on_pool!(self, |pool| sqlx::query_as(
            "SELECT table_name, expectation, columns, CAST(unexpected_count AS BIGINT), observed_value FROM validations \
             WHERE run_id = $1 AND success = false ORDER BY validated_at"
        )
        .bind(run_id)
        .fetch_all(pool)
        .await)?;
        Ok(rows)
    }

    /// The landing files of `dataset` ingested so far, with their sizes.
    pub async fn ingested_sizes(&self, dataset: &str) -> Result<std::collections::HashMap<String, i64>, MetaError> {
        let rows: Vec<(String, i64)> = on_pool!(self, |pool| sqlx::query_as("SELECT path, CAST(size_bytes AS BIGINT) FROM files WHERE dataset = $1")
            .bind(dataset)
            .fetch_all(pool)
            .await)?;
        Ok(rows.into_iter().collect())
    }

    /// The date windows (from, to) of the successful runs of `dataset`.
    pub async fn succeeded_windows(&self, dataset: &str) -> Result<std::collections::HashSet<(Option<String>, Option<String>)>, MetaError> {
        let rows: Vec<(Json<Vec<String>>, Json<serde_json::Value>)> =
            on_pool!(self, |pool| sqlx::query_as("SELECT datasets, parameters FROM runs WHERE status = 'succeeded'")
                .fetch_all(pool)
                .await)?;
        let text = |v: &serde_json::Value, key: &str| v.get(key).and_then(|d| d.as_str()).map(str::to_string);
        Ok(rows
            .into_iter()
            .filter(|(datasets, _)| datasets.0.len() == 1 && datasets.0[0] == dataset)
            .map(|(_, parameters)| (text(&parameters.0, "from"), text(&parameters.0, "to")))
            .filter(|(from, to)| from.is_some() || to.is_some())
            .collect())
    }

    /// When the last successful run of `dataset` finished.
    pub async fn last_success(&self, dataset: &str) -> Result<Option<DateTime<Utc>>, MetaError> {
        let pattern = format!("%\"{}\"%", dataset.replace('\\', "\\\\").replace('_', "\\_").replace('%', "\\%"));
        let last: Option<Option<DateTime<Utc>>> = on_pool!(self, |pool| sqlx::query_scalar(
            "SELECT finished_at FROM runs WHERE status = 'succeeded' AND CAST(datasets AS TEXT) LIKE $1 ESCAPE '\\' \
             ORDER BY finished_at DESC LIMIT 1"
        )
        .bind(&pattern)
        .fetch_optional(pool)
        .await)?;
        Ok(last.flatten())
    }

    /// The rows the last `limit` successful runs wrote to silver `table`, newest first.
    pub async fn silver_rows_history(&self, table: &str, limit: u32) -> Result<Vec<i64>, MetaError> {
        let counts: Vec<i64> = on_pool!(self, |pool| sqlx::query_scalar(
            "SELECT CAST(s.rows_out AS BIGINT) FROM run_steps s JOIN runs r ON r.id = s.run_id \
             WHERE s.layer = 'silver' AND s.table_name = $1 AND s.status = 'ok' AND r.status = 'succeeded' \
             ORDER BY r.started_at DESC LIMIT $2"
        )
        .bind(table)
        .bind(limit as i64)
        .fetch_all(pool)
        .await)?;
        Ok(counts)
    }

    /// Run `id`'s status and datasets.
    pub async fn run_status(&self, id: &str) -> Result<Option<(String, Vec<String>)>, MetaError> {
        let row: Option<(String, Json<Vec<String>>)> = on_pool!(self, |pool| sqlx::query_as("SELECT status, datasets FROM runs WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await)?;
        Ok(row.map(|(status, datasets)| (status, datasets.0)))
    }

    /// Mark runs still `running` whose heartbeat is older than `silent_for`
    /// as `abandoned`: the process running them died (killed, crashed, lost
    /// its machine). Returns how many were marked.
    pub async fn abandon_silent_runs(&self, silent_for: std::time::Duration) -> Result<u64, MetaError> {
        let now = Utc::now();
        let cutoff = now - chrono::Duration::from_std(silent_for).unwrap_or(chrono::Duration::seconds(30));
        let error = format!(
            "abandoned: the process running it stopped without finishing (no heartbeat for {}s); \
             tables keep their last committed version, run it again",
            silent_for.as_secs()
        );
        let done = on_pool!(self, |pool| sqlx::query(
            "UPDATE runs SET status = 'abandoned', finished_at = $2, error = $3 \
             WHERE status = 'running' AND COALESCE(heartbeat_at, started_at) < $1"
        )
        .bind(cutoff)
        .bind(now)
        .bind(&error)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(done)
    }

    /// What run `id` has done so far: its row counts and `progress` (a
    /// long-lived run's position, lag and throughput).
    pub async fn run_progress(&self, id: &str, rows_in: i64, rows_out: i64, progress: &serde_json::Value) -> Result<(), MetaError> {
        on_pool!(self, |pool| sqlx::query("UPDATE runs SET rows_in = $2, rows_out = $3, progress = $4 WHERE id = $1")
            .bind(id)
            .bind(rows_in)
            .bind(rows_out)
            .bind(Json(progress))
            .execute(pool)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    pub async fn record_step(&self, step: &StepRecord) -> Result<(), MetaError> {
        on_pool!(self, |pool| sqlx::query(
            "INSERT INTO run_steps (run_id, seq, dataset, layer, table_name, rows_in, rows_out, rows_rejected, status, duration_ms, message) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        )
        .bind(&step.run_id)
        .bind(step.seq)
        .bind(&step.dataset)
        .bind(&step.layer)
        .bind(&step.table_name)
        .bind(step.rows_in)
        .bind(step.rows_out)
        .bind(step.rows_rejected)
        .bind(&step.status)
        .bind(step.duration_ms)
        .bind(&step.message)
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn finish_run(
        &self,
        id: &str,
        status: &str,
        error: Option<&str>,
        rows_in: i64,
        rows_out: i64,
        rows_rejected: i64,
        openlineage: &serde_json::Value,
    ) -> Result<(), MetaError> {
        on_pool!(self, |pool| sqlx::query(
            "UPDATE runs SET status = $2, finished_at = $3, error = $4, rows_in = $5, rows_out = $6, rows_rejected = $7, openlineage = $8 WHERE id = $1"
        )
        .bind(id)
        .bind(status)
        .bind(Utc::now())
        .bind(error)
        .bind(rows_in)
        .bind(rows_out)
        .bind(rows_rejected)
        .bind(Json(openlineage))
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    pub async fn record_file(&self, file: &FileRecord) -> Result<(), MetaError> {
        on_pool!(self, |pool| sqlx::query(
            "INSERT INTO files (dataset, path, content_hash, size_bytes, run_id, ingested_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (dataset, content_hash) DO UPDATE SET path = excluded.path, run_id = excluded.run_id, ingested_at = excluded.ingested_at"
        )
        .bind(&file.dataset)
        .bind(&file.path)
        .bind(&file.content_hash)
        .bind(file.size_bytes)
        .bind(&file.run_id)
        .bind(Utc::now())
        .execute(pool)
        .await
        .map(|_| ()))?;
        Ok(())
    }

    /// Insert or re-confirm `edges`, recording `run_id` as the run that last saw each.
    pub async fn upsert_lineage(&self, edges: &[LineageEdge], run_id: &str) -> Result<(), MetaError> {
        let now = Utc::now();
        for e in edges {
            on_pool!(self, |pool| sqlx::query(
                "INSERT INTO lineage_edges (from_table, from_column, to_table, to_column, transform, run_id, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (from_table, from_column, to_table, to_column) DO UPDATE SET transform = excluded.transform, \
                 run_id = excluded.run_id, updated_at = excluded.updated_at"
            )
            .bind(&e.from_table)
            .bind(&e.from_column)
            .bind(&e.to_table)
            .bind(&e.to_column)
            .bind(&e.transform)
            .bind(run_id)
            .bind(now)
            .execute(pool)
            .await
            .map(|_| ()))?;
        }
        Ok(())
    }
}

/// One audited event: a statement, a failed login, or a count of records
/// the audit queue had to drop.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub at: DateTime<Utc>,
    pub user_name: String,
    pub roles: String,
    pub client_addr: Option<String>,
    pub application_name: Option<String>,
    /// `statement`, `login_failed`, `cli_run` or `dropped`.
    pub kind: String,
    pub statement: Option<String>,
    pub tables_read: Option<String>,
    pub rows_returned: Option<i64>,
    pub duration_ms: Option<i64>,
    pub sqlstate: Option<String>,
}

/// A claimed scheduled slot.
#[derive(Debug, Clone)]
pub struct SlotRecord {
    pub slot: DateTime<Utc>,
    pub status: String,
    pub run_id: String,
    pub error: Option<String>,
}
