//! Change data capture from Postgres: a `postgres_cdc` dataset's run takes a
//! snapshot of the source table once, then reads its changes from a logical
//! replication slot and commits them to bronze in small batches, each batch
//! applied to silver (`mode: cdc`, [`super::cdc_silver`]) before the slot is
//! told it may forget them. A crash at any point replays from the last
//! bronze commit: the slot's confirmed position never passes it, and bronze
//! skips transactions it already holds, so nothing is lost or doubled.
//!
//! A run either catches up (stops once it holds every change committed
//! before it started: `workbench run`) or runs until stopped (`serve` keeps
//! one per dataset, visible in `workbench.runs` with its lag and throughput).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use pgwire_replication::{Lsn, ReplicationEvent};

use super::sources::pgoutput::{self, Message, OldRow, Relation, Value};
use super::sources::postgres_cdc::{self, SourceColumn, SourceTable, Visibility};
use super::sources::SourceError;
use super::{Pipeline, PipelineError, RunOptions, StepReport, StepStatus, step_error};
use crate::spec::{CdcSource, Spec};
use crate::storage::{Layer, WriteKind};

/// Bronze commit metadata: where the capture stands (a [`CaptureState`]).
pub(super) const STATE_KEY: &str = "workbench.cdc";
/// Snapshot rows are read this many at a time.
const SNAPSHOT_CHUNK: usize = 50_000;
/// Microseconds from 1970-01-01 to 2000-01-01 (Postgres' epoch).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Where a dataset's capture stands, kept in every bronze commit it makes so
/// that it commits atomically with the changes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct CaptureState {
    /// The end of the last transaction bronze holds (the stream resumes here).
    pub end_lsn: u64,
    /// The snapshot's rows are `_op = 'r'` rows of this run, at this LSN.
    pub snapshot_lsn: u64,
    pub snapshot_run: String,
    /// The transactions the snapshot saw (skipped when the stream replays them).
    pub visibility: Visibility,
    /// The source's columns as bronze has them (it only gains columns).
    pub columns: Vec<SourceColumn>,
}

/// One row change of a transaction.
struct Change {
    op: &'static str,
    values: Vec<Option<String>>,
    before: Option<String>,
    unchanged: Option<String>,
}

/// A committed transaction's changes to the source table.
struct Committed {
    lsn: u64,
    xid: Option<u32>,
    commit_micros: i64,
    changes: Vec<Change>,
}

/// What a capture did, for the run's steps and progress.
#[derive(Debug, Default)]
struct Tally {
    snapshot_rows: u64,
    changes: u64,
    flushes: u64,
    silver_in: u64,
    silver_out: u64,
    rejected: u64,
    /// The source's WAL end as last heard (for the lag).
    wal_end: u64,
    last_commit_micros: Option<i64>,
}

impl Pipeline {
    /// The datasets whose source is a database's change stream.
    pub fn captured_datasets(&self) -> Vec<String> {
        self.project
            .datasets
            .iter()
            .filter(|d| matches!(d.source.format, crate::spec::SourceFormat::PostgresCdc(_)))
            .map(|d| d.name.clone())
            .collect()
    }

    /// Keep `dataset`'s capture running until `shutdown` (`serve` runs one
    /// per dataset): a run that ends is started again, after a pause that
    /// grows while it keeps failing (up to 30 s for a source or lock not
    /// available, 10 min for an error someone has to fix). With several
    /// replicas, the run lock lets one capture while the others wait to
    /// take over.
    pub async fn keep_capturing(self: Arc<Self>, dataset: String, shutdown: tokio_util::sync::CancellationToken) {
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            let run_id = super::new_run_id();
            let options = RunOptions { trigger: "cdc".into(), continuous: true, run_id: Some(run_id.clone()), ..Default::default() };
            let started = Instant::now();
            let run = self.run(std::slice::from_ref(&dataset), &options);
            tokio::pin!(run);
            let outcome = tokio::select! {
                outcome = &mut run => outcome,
                _ = shutdown.cancelled() => {
                    // Stop the run where it stands (it records how it ended).
                    let _ = self.cancel(&run_id, "shutdown").await;
                    let _ = tokio::time::timeout(Duration::from_secs(10), &mut run).await;
                    return;
                }
            };
            let transient = match &outcome {
                Ok(report) if report.status == super::RunStatus::Failed => {
                    tracing::warn!(%dataset, run_id = %report.run_id, error = report.error.as_deref().unwrap_or(""), "the capture stopped");
                    report.transient
                }
                Ok(_) => true,
                Err(err) => {
                    tracing::warn!(%dataset, %err, "the capture could not start");
                    err.is_transient()
                }
            };
            // A run that worked a while before failing starts the count over.
            failures = if started.elapsed() > Duration::from_secs(60) { 1 } else { failures + 1 };
            let cap = if transient { 30 } else { 600 };
            let pause = Duration::from_secs((1u64 << failures.min(10)).min(cap));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Capture `spec`'s source into bronze and apply it to silver: catch up,
    /// or (`options.continuous`) go on until the run is stopped.
    pub(super) async fn capture(
        &self,
        spec: &Spec,
        source: &CdcSource,
        options: &RunOptions,
        run_id: &str,
        report: &mut super::RunReport,
    ) -> Result<(), PipelineError> {
        let started = Instant::now();
        let mut tally = Tally::default();
        let outcome = self.capture_inner(spec, source, options, run_id, &mut tally).await;
        let mut bronze = StepReport::new(run_id, &spec.name, Layer::Bronze, &spec.name);
        bronze.rows_in = tally.snapshot_rows + tally.changes;
        bronze.rows_out = bronze.rows_in;
        bronze.duration_ms = started.elapsed().as_millis() as u64;
        bronze.message = Some(format!("{} snapshot row(s), {} change(s) in {} commit(s)", tally.snapshot_rows, tally.changes, tally.flushes));
        if bronze.rows_in == 0 {
            bronze.status = StepStatus::Skipped;
        }
        if let Err(err) = &outcome {
            bronze.status = StepStatus::Failed;
            bronze.message = Some(err.to_string());
        }
        report.push(bronze);
        if spec.silver.is_some() && outcome.is_ok() {
            let mut silver = StepReport::new(run_id, &spec.name, Layer::Silver, &spec.name);
            silver.rows_in = tally.silver_in;
            silver.rows_out = tally.silver_out;
            silver.rows_rejected = tally.rejected;
            silver.duration_ms = started.elapsed().as_millis() as u64;
            if tally.silver_in == 0 {
                silver.status = StepStatus::Skipped;
                silver.message = Some("no changes to apply".into());
            }
            report.push(silver);
        }
        outcome
    }

    async fn capture_inner(
        &self,
        spec: &Spec,
        source: &CdcSource,
        options: &RunOptions,
        run_id: &str,
        tally: &mut Tally,
    ) -> Result<(), PipelineError> {
        let step = format!("bronze.{}", spec.name);
        let mut control = postgres_cdc::connect(source).await?;
        let table = postgres_cdc::prepare(&mut control, source).await?;
        self.check_identity(spec, source, &table)?;
        let mut state = self.capture_state(&spec.name).await?;
        let slot = postgres_cdc::slot(&mut control, source).await?;
        let slot_start = match (&state, slot) {
            (Some(known), None) if !options.full_refresh => {
                return Err(step_error(
                    &step,
                    format!(
                        "replication slot {} no longer exists: the changes after {} can no longer be read. Run `workbench run --full-refresh {}` to take a new snapshot (silver is rebuilt from it)",
                        source.slot,
                        postgres_cdc::format_lsn(known.end_lsn),
                        spec.name
                    ),
                ));
            }
            (_, None) => postgres_cdc::create_slot(&mut control, source).await?,
            (_, Some(slot)) if slot.active => {
                return Err(SourceError::Unreachable(format!(
                    "replication slot {} is in use by another session (another Workbench process, or one that just died: PostgreSQL frees it within wal_sender_timeout)",
                    source.slot
                ))
                .into());
            }
            (_, Some(slot)) => slot.confirmed_flush,
        };
        if state.is_none() || options.full_refresh {
            let at = slot_start.max(state.as_ref().map_or(0, |s| s.end_lsn));
            let known = state.as_ref().map(|s| s.columns.clone()).unwrap_or_default();
            state = Some(self.snapshot(spec, source, &mut control, &table, known, at, run_id, tally).await?);
        }
        let mut state = state.expect("a snapshot was taken");
        self.widen_columns(&mut state, &table, &step)?;
        // Silver may be behind bronze (a run stopped between the two).
        self.apply_pending(spec, &state, options.full_refresh, run_id, tally).await?;
        let client = postgres_cdc::stream(source, state.end_lsn, &format!("workbench {}", spec.name)).await?;
        let mut stream = Stream {
            pipeline: self,
            spec,
            source,
            run_id,
            continuous: options.continuous,
            step,
            client,
            control,
            pending_end: state.end_lsn,
            state,
            relations: HashMap::new(),
            open: None,
            pending: Vec::new(),
            pending_changes: 0,
            oldest: None,
            started: Instant::now(),
            tally,
        };
        stream.progress().await;
        stream.run().await
    }

    /// Apply to silver what bronze holds past it, counting it in `tally`.
    async fn apply_pending(&self, spec: &Spec, state: &CaptureState, rebuild: bool, run_id: &str, tally: &mut Tally) -> Result<(), PipelineError> {
        let (rows_in, rows_out, rejected) = self.apply_changes(spec, state, rebuild, run_id).await?;
        tally.silver_in += rows_in;
        tally.silver_out += rows_out;
        tally.rejected += rejected;
        Ok(())
    }

    /// Columns the catalog shows that bronze does not have yet (added while
    /// no capture ran).
    fn widen_columns(&self, state: &mut CaptureState, table: &SourceTable, _step: &str) -> Result<(), PipelineError> {
        for column in &table.columns {
            match state.columns.iter_mut().find(|c| c.name == column.name) {
                Some(known) => known.pg_type = column.pg_type.clone(),
                None => state.columns.push(column.clone()),
            }
        }
        Ok(())
    }

    /// A delete must name its row by silver's key: the table's replica
    /// identity has to cover the key.
    fn check_identity(&self, spec: &Spec, source: &CdcSource, table: &SourceTable) -> Result<(), PipelineError> {
        let Some(silver) = &spec.silver else { return Ok(()) };
        let missing: Vec<&String> = silver.key.iter().filter(|k| !table.identity.contains(k)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
        let absent: Vec<&&String> = missing.iter().filter(|k| !names.contains(&k.as_str())).collect();
        let message = if !absent.is_empty() {
            format!(
                "silver key column(s) {} are not columns of {}.{} (it has {})",
                absent.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                source.schema,
                source.table,
                names.join(", ")
            )
        } else {
            format!(
                "{}.{}'s replica identity ({}) does not include the silver key ({}): its updates and deletes would not name the row. \
                 Make the key the table's primary key, or run ALTER TABLE {}.{} REPLICA IDENTITY FULL",
                source.schema,
                source.table,
                if table.identity.is_empty() { "nothing".to_string() } else { table.identity.join(", ") },
                silver.key.join(", "),
                source.schema,
                source.table
            )
        };
        Err(step_error(&format!("bronze.{}", spec.name), message))
    }

    /// The capture state of `dataset`'s newest bronze commit that has one.
    async fn capture_state(&self, dataset: &str) -> Result<Option<CaptureState>, PipelineError> {
        let commits = self.lake.commits(Layer::Bronze, dataset, Some(20)).await?;
        Ok(commits
            .iter()
            .find_map(|c| c.metadata.get(STATE_KEY))
            .and_then(|v| serde_json::from_value::<CaptureState>(v.clone()).ok()))
    }

    /// Read the whole table into bronze as `_op = 'r'` rows (one commit),
    /// recording which transactions the snapshot saw.
    #[allow(clippy::too_many_arguments)]
    async fn snapshot(
        &self,
        spec: &Spec,
        source: &CdcSource,
        control: &mut sqlx::postgres::PgConnection,
        table: &SourceTable,
        known: Vec<SourceColumn>,
        at: u64,
        run_id: &str,
        tally: &mut Tally,
    ) -> Result<CaptureState, PipelineError> {
        let step = format!("bronze.{}", spec.name);
        // Bronze keeps every column it ever had, in its order.
        let mut columns = known;
        for column in &table.columns {
            if !columns.iter().any(|c| c.name == column.name) {
                columns.push(column.clone());
            }
        }
        let (mut transaction, visibility) = postgres_cdc::begin_snapshot(control).await?;
        let state = CaptureState { end_lsn: at, snapshot_lsn: at, snapshot_run: run_id.to_string(), visibility, columns };
        let schema = bronze_schema(&state.columns);
        // The read hands its rows over in chunks; the Delta write turns each
        // into a batch as it comes, so the table is never held in memory.
        let (sink, chunks) = tokio::sync::mpsc::channel::<postgres_cdc::Chunk>(2);
        let positions: Vec<usize> = table
            .columns
            .iter()
            .map(|c| state.columns.iter().position(|k| k.name == c.name).expect("every source column is in bronze"))
            .collect();
        let (width, run, now, batch_schema) = (state.columns.len(), run_id.to_string(), chrono::Utc::now().timestamp_micros(), schema.clone());
        let batches = futures::stream::unfold(Some(chunks), move |chunks| {
            let (positions, run, batch_schema) = (positions.clone(), run.clone(), batch_schema.clone());
            async move {
                let mut chunks = chunks?;
                match chunks.recv().await {
                    Some(postgres_cdc::Chunk::Rows(rows)) => {
                        let changes: Vec<Change> = rows
                            .into_iter()
                            .map(|row| {
                                let mut values = vec![None; width];
                                for (at, value) in positions.iter().zip(row) {
                                    values[*at] = value;
                                }
                                Change { op: "r", values, before: None, unchanged: None }
                            })
                            .collect();
                        let committed = Committed { lsn: at, xid: None, commit_micros: now, changes };
                        Some((changes_batch(&batch_schema, width, std::slice::from_ref(&committed), &run, true), Some(chunks)))
                    }
                    Some(postgres_cdc::Chunk::Done) => None,
                    // The read stopped before its end: the write must fail, not commit part of the table.
                    None => Some((Err(datafusion::error::DataFusionError::Execution("the snapshot read stopped before the table's end".into())), None)),
                }
            }
        });
        let stream = Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema.clone(), batches));
        let ctx = self.engine.internal_session();
        let frame = super::scan_once(&ctx, stream, "the snapshot rows").map_err(|e| step_error(&step, e))?;
        let metadata = vec![(STATE_KEY.to_string(), serde_json::to_value(&state).map_err(|e| step_error(&step, e))?)];
        let read = postgres_cdc::read_snapshot(&mut transaction, source, &table.columns, SNAPSHOT_CHUNK, sink);
        let write = self.lake.write_frame(Layer::Bronze, &spec.name, frame, WriteKind::Append, run_id, metadata);
        let (read, written) = tokio::join!(read, write);
        let rows = read?;
        written?;
        drop(transaction);
        tally.snapshot_rows = rows;
        tracing::info!(dataset = %spec.name, rows, at = %postgres_cdc::format_lsn(at), "snapshot committed to bronze");
        Ok(state)
    }
}

/// The bronze schema of a CDC dataset: the source's columns as text, then
/// [`CDC_METADATA`].
fn bronze_schema(columns: &[SourceColumn]) -> Arc<Schema> {
    let mut fields: Vec<Field> = columns.iter().map(|c| Field::new(&c.name, DataType::Utf8, true)).collect();
    fields.extend([
        Field::new("_op", DataType::Utf8, false),
        Field::new("_lsn", DataType::Int64, false),
        Field::new("_change", DataType::Int64, false),
        Field::new("_xid", DataType::Int64, true),
        Field::new("_commit_time", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
        Field::new("_before", DataType::Utf8, true),
        Field::new("_unchanged", DataType::Utf8, true),
        Field::new("_run_id", DataType::Utf8, true),
    ]);
    Arc::new(Schema::new(fields))
}

/// `transactions` as one bronze batch. `snapshot`: every row gets
/// `_change = -1` (snapshot rows sort before any change at their LSN).
fn changes_batch(
    schema: &Arc<Schema>,
    width: usize,
    transactions: &[Committed],
    run_id: &str,
    snapshot: bool,
) -> datafusion::error::Result<RecordBatch> {
    let rows: usize = transactions.iter().map(|t| t.changes.len()).sum();
    let mut columns: Vec<Vec<Option<&str>>> = (0..width).map(|_| Vec::with_capacity(rows)).collect();
    let (mut op, mut lsn, mut change, mut xid, mut time, mut before, mut unchanged) = (
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
        Vec::with_capacity(rows),
    );
    for tx in transactions {
        for (i, c) in tx.changes.iter().enumerate() {
            for (column, value) in columns.iter_mut().zip(c.values.iter().chain(std::iter::repeat(&None))) {
                column.push(value.as_deref());
            }
            op.push(c.op);
            lsn.push(tx.lsn as i64);
            change.push(if snapshot { -1 } else { i as i64 });
            xid.push(tx.xid.map(|x| x as i64));
            time.push(Some(tx.commit_micros));
            before.push(c.before.as_deref());
            unchanged.push(c.unchanged.as_deref());
        }
    }
    let mut arrays: Vec<ArrayRef> = columns.into_iter().map(|c| Arc::new(StringArray::from(c)) as ArrayRef).collect();
    arrays.push(Arc::new(StringArray::from(op)));
    arrays.push(Arc::new(Int64Array::from(lsn)));
    arrays.push(Arc::new(Int64Array::from(change)));
    arrays.push(Arc::new(Int64Array::from(xid)));
    arrays.push(Arc::new(TimestampMicrosecondArray::from(time).with_timezone("UTC")));
    arrays.push(Arc::new(StringArray::from(before)));
    arrays.push(Arc::new(StringArray::from(unchanged)));
    arrays.push(Arc::new(StringArray::from(vec![Some(run_id); rows])));
    Ok(RecordBatch::try_new(schema.clone(), arrays)?)
}

/// A change of relation `r` to bronze's column order. An unchanged TOASTed
/// value is taken from the old row when the table sends it whole (REPLICA
/// IDENTITY FULL); otherwise it is left NULL and named in `_unchanged`
/// (silver keeps its current value).
fn change_of(op: &'static str, r: &Relation, state: &CaptureState, new: &[Value], old: Option<&OldRow>) -> Change {
    let mut values = vec![None; state.columns.len()];
    let mut unchanged: Vec<&str> = Vec::new();
    for (i, (column, value)) in r.columns.iter().zip(new).enumerate() {
        let Some(at) = state.columns.iter().position(|c| c.name == column.name) else { continue };
        values[at] = match value {
            Value::Null => None,
            Value::Text(text) => Some(text.clone()),
            Value::Unchanged => match old {
                Some(OldRow::Full(old)) => match old.get(i) {
                    Some(Value::Text(text)) => Some(text.clone()),
                    _ => None,
                },
                _ => {
                    unchanged.push(&column.name);
                    None
                }
            },
        };
    }
    let before = old.map(|old| {
        let object: serde_json::Map<String, serde_json::Value> = r
            .columns
            .iter()
            .zip(old.values())
            .filter_map(|(c, v)| match v {
                Value::Text(t) => Some((c.name.clone(), serde_json::Value::String(t.clone()))),
                Value::Null => Some((c.name.clone(), serde_json::Value::Null)),
                Value::Unchanged => None,
            })
            .collect();
        serde_json::Value::Object(object).to_string()
    });
    Change {
        op,
        values,
        before,
        unchanged: (!unchanged.is_empty()).then(|| format!(",{},", unchanged.join(","))),
    }
}

/// A capture's replication stream and what it holds that bronze does not
/// have yet.
struct Stream<'a> {
    pipeline: &'a Pipeline,
    spec: &'a Spec,
    source: &'a CdcSource,
    run_id: &'a str,
    continuous: bool,
    step: String,
    client: pgwire_replication::ReplicationClient,
    /// An ordinary session to the source (type names, WAL position, markers).
    control: sqlx::postgres::PgConnection,
    state: CaptureState,
    relations: HashMap<u32, Relation>,
    /// The transaction being received: its xid and changes so far.
    open: Option<(u32, Vec<Change>)>,
    /// Committed transactions not in bronze yet.
    pending: Vec<Committed>,
    pending_changes: usize,
    /// The end of the last transaction received (ours or not).
    pending_end: u64,
    /// When the oldest pending change arrived.
    oldest: Option<Instant>,
    started: Instant,
    tally: &'a mut Tally,
}

impl Stream<'_> {
    async fn run(&mut self) -> Result<(), PipelineError> {
        let marker = format!("workbench.catch_up.{}", self.run_id);
        if !self.continuous {
            postgres_cdc::emit_marker(&mut self.control, &marker).await?;
        }
        loop {
            let deadline = self.oldest.map(|t| tokio::time::Instant::from_std(t + self.source.flush_interval));
            let event = tokio::select! {
                event = self.client.recv() => event,
                _ = sleep_until(deadline), if deadline.is_some() => {
                    self.flush().await?;
                    continue;
                }
            };
            let event = match event {
                Ok(Some(event)) => event,
                Ok(None) => return Err(SourceError::Unreachable("the replication stream ended".into()).into()),
                Err(e) => return Err(postgres_cdc::stream_error(e).into()),
            };
            match event {
                ReplicationEvent::Begin { xid, .. } => self.open = Some((xid, Vec::new())),
                ReplicationEvent::XLogData { data, .. } => {
                    let message = pgoutput::decode(&data).map_err(|e| step_error(&self.step, e))?;
                    self.on_message(message).await?;
                }
                ReplicationEvent::Commit { lsn, end_lsn, commit_time_micros } => {
                    self.on_commit(lsn.as_u64(), end_lsn.as_u64(), commit_time_micros + PG_EPOCH_MICROS).await?;
                }
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    self.tally.wal_end = self.tally.wal_end.max(wal_end.as_u64());
                    if self.pending.is_empty() && self.open.is_none() && wal_end.as_u64() > self.pending_end {
                        // Nothing of ours is in flight: the slot may move on.
                        self.pending_end = wal_end.as_u64();
                        self.client.update_applied_lsn(wal_end);
                    }
                }
                ReplicationEvent::Message { prefix, lsn, .. } => {
                    if prefix == marker {
                        // Every transaction committed before the run started is here.
                        self.pending_end = self.pending_end.max(lsn.as_u64());
                        self.flush().await?;
                        let _ = self.client.shutdown().await;
                        return Ok(());
                    }
                }
                ReplicationEvent::StoppedAt { .. } => {
                    self.flush().await?;
                    return Ok(());
                }
            }
        }
    }

    /// One pgoutput message inside (or, for a relation, before) a transaction.
    async fn on_message(&mut self, message: Message) -> Result<(), PipelineError> {
        let (schema, table) = (&self.source.schema, &self.source.table);
        let ours = |relations: &HashMap<u32, Relation>, id: u32| relations.get(&id).filter(|r| &r.schema == schema && &r.name == table).cloned();
        let change = match message {
            Message::Relation(relation) => {
                if &relation.schema == schema && &relation.name == table {
                    evolve(&mut self.state, &relation, &mut self.control, &self.step).await?;
                }
                self.relations.insert(relation.id, relation);
                None
            }
            Message::Insert { relation, new } => ours(&self.relations, relation).map(|r| change_of("c", &r, &self.state, &new, None)),
            Message::Update { relation, old, new } => {
                ours(&self.relations, relation).map(|r| change_of("u", &r, &self.state, &new, old.as_ref()))
            }
            Message::Delete { relation, old } => ours(&self.relations, relation).map(|r| {
                let mut change = change_of("d", &r, &self.state, old.values(), None);
                change.before = None;
                change
            }),
            Message::Truncate { relations } => relations
                .iter()
                .any(|id| ours(&self.relations, *id).is_some())
                .then(|| Change { op: "t", values: vec![None; self.state.columns.len()], before: None, unchanged: None }),
            Message::Begin { xid, .. } => {
                self.open = Some((xid, Vec::new()));
                None
            }
            Message::Commit { commit_lsn, end_lsn, commit_micros } => {
                self.on_commit(commit_lsn, end_lsn, commit_micros + PG_EPOCH_MICROS).await?;
                None
            }
            Message::Ignored(_) => None,
        };
        if let (Some(change), Some((_, changes))) = (change, &mut self.open) {
            changes.push(change);
        }
        Ok(())
    }

    async fn on_commit(&mut self, lsn: u64, end: u64, commit_micros: i64) -> Result<(), PipelineError> {
        let (xid, changes) = self.open.take().unwrap_or((0, Vec::new()));
        self.tally.wal_end = self.tally.wal_end.max(end);
        // Bronze already holds it, or the snapshot saw it.
        if end <= self.state.end_lsn || self.state.visibility.saw(xid) {
            self.pending_end = self.pending_end.max(end);
            return Ok(());
        }
        self.pending_end = end;
        if changes.is_empty() {
            if self.pending.is_empty() {
                // Only other tables' changes: nothing to keep.
                self.client.update_applied_lsn(Lsn::from_u64(end));
            }
            return Ok(());
        }
        self.pending_changes += changes.len();
        self.oldest.get_or_insert_with(Instant::now);
        self.pending.push(Committed { lsn, xid: Some(xid), commit_micros, changes });
        if self.pending_changes >= self.source.flush_changes {
            self.flush().await?;
        }
        Ok(())
    }

    /// Commit the pending transactions to bronze (one commit carrying the
    /// new capture state), apply them to silver, then tell the slot.
    async fn flush(&mut self) -> Result<(), PipelineError> {
        self.oldest = None;
        if self.pending.is_empty() {
            if self.pending_end > self.state.end_lsn {
                self.client.update_applied_lsn(Lsn::from_u64(self.pending_end));
            }
            return Ok(());
        }
        let name = &self.spec.name;
        let schema = bronze_schema(&self.state.columns);
        let batch = changes_batch(&schema, self.state.columns.len(), &self.pending, self.run_id, false).map_err(|e| step_error(&self.step, e))?;
        let mut next = self.state.clone();
        next.end_lsn = self.pending_end;
        let metadata = vec![(STATE_KEY.to_string(), serde_json::to_value(&next).map_err(|e| step_error(&self.step, e))?)];
        self.pipeline.lake.write(Layer::Bronze, name, vec![batch], WriteKind::Append, self.run_id, metadata).await?;
        self.state = next;
        let changes = std::mem::take(&mut self.pending_changes) as u64;
        self.tally.changes += changes;
        self.tally.flushes += 1;
        self.tally.last_commit_micros = self.pending.last().map(|t| t.commit_micros);
        self.pending.clear();
        self.pipeline.apply_pending(self.spec, &self.state, false, self.run_id, self.tally).await?;
        self.client.update_applied_lsn(Lsn::from_u64(self.state.end_lsn));
        self.progress().await;
        crate::metrics::cdc_flush(name, changes, self.tally.wal_end.saturating_sub(self.state.end_lsn));
        Ok(())
    }

    /// Say where the capture stands in the run's row of `workbench.runs`.
    async fn progress(&mut self) {
        if let Ok(current) = postgres_cdc::current_lsn(&mut self.control).await {
            self.tally.wal_end = self.tally.wal_end.max(current);
        }
        let seconds = self.started.elapsed().as_secs_f64().max(0.001);
        let now = chrono::Utc::now().timestamp_micros();
        let progress = serde_json::json!({
            "mode": if self.continuous { "continuous" } else { "catch_up" },
            "slot": self.source.slot,
            "last_lsn": postgres_cdc::format_lsn(self.state.end_lsn),
            "lag_bytes": self.tally.wal_end.saturating_sub(self.state.end_lsn),
            "commit_lag_seconds": self.tally.last_commit_micros.map(|c| (now - c) as f64 / 1e6),
            "snapshot_rows": self.tally.snapshot_rows,
            "changes": self.tally.changes,
            "commits": self.tally.flushes,
            "changes_per_second": (self.tally.changes as f64 / seconds * 10.0).round() / 10.0,
            "updated_at": chrono::Utc::now().to_rfc3339(),
        });
        let rows_in = (self.tally.snapshot_rows + self.tally.changes) as i64;
        if let Err(err) = self.pipeline.meta.run_progress(self.run_id, rows_in, self.tally.silver_out as i64, &progress).await {
            tracing::warn!(%err, "recording the capture's progress failed");
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The source table's shape changed (pgoutput resends its relation): a
/// new column joins bronze (and silver); a column whose type changed
/// keeps bronze's text and is cast to the new type from now on.
async fn evolve(
    state: &mut CaptureState,
    relation: &Relation,
    control: &mut sqlx::postgres::PgConnection,
    step: &str,
) -> Result<(), PipelineError> {
    for column in &relation.columns {
        let pg_type: String = sqlx::query_scalar("SELECT format_type($1::bigint::oid, $2)")
            .bind(column.type_oid as i64)
            .bind(column.type_modifier)
            .fetch_one(&mut *control)
            .await
            .map_err(|e| step_error(step, format!("reading the type of column {}: {e}", column.name)))?;
        match state.columns.iter_mut().find(|c| c.name == column.name) {
            Some(known) if known.pg_type != pg_type => {
                tracing::info!(column = %column.name, from = %known.pg_type, to = %pg_type, "a source column changed type");
                known.pg_type = pg_type;
            }
            Some(_) => {}
            None => {
                tracing::info!(column = %column.name, %pg_type, "a source column was added");
                state.columns.push(SourceColumn { name: column.name.clone(), pg_type });
            }
        }
    }
    Ok(())
}

