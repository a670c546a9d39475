//! Silver for `mode: cdc`: the changes bronze captured (text, in source
//! order), cast to the source's column types, passed through the rules and
//! expectations, applied by key: the latest row per key (SCD1) or every
//! version with `_valid_from` / `_valid_to` / `_is_current` (SCD2), deletes
//! as the spec says. Each commit records the last change it applied, so a
//! replay after a crash starts after it and never applies a change twice.

use datafusion::prelude::{DataFrame, SessionContext};

use super::cdc::CaptureState;
use super::sources::postgres_cdc::SourceColumn;
use super::{Pipeline, PipelineError, rules, scd2, step_error};
use crate::spec::{CdcApply, Deletes, History, Silver, Spec};
use crate::storage::{CommitMetadata, Layer, Matched, MergeClauses, WriteKind};

/// Silver commit metadata: the last change applied and the snapshot the
/// table was built from.
const APPLIED_KEY: &str = "workbench.cdc_applied";
/// The change columns silver reads from bronze besides the source's.
const CHANGE_COLUMNS: [&str; 5] = ["_op", "_lsn", "_change", "_commit_time", "_unchanged"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
struct Position {
    lsn: i64,
    change: i64,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Applied {
    #[serde(flatten)]
    position: Position,
    snapshot_run: String,
}

/// The names this apply registers its intermediate views under: unique, as
/// the sessions share one catalog; dropped from it when the apply ends.
struct Scratch {
    ctx: SessionContext,
    pending: String,
    segment: String,
}

impl Scratch {
    fn new(ctx: &SessionContext) -> Scratch {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Scratch { ctx: ctx.clone(), pending: format!("__cdc_pending_{id}"), segment: format!("__cdc_segment_{id}") }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = self.ctx.deregister_table(self.pending.as_str());
        let _ = self.ctx.deregister_table(self.segment.as_str());
    }
}

/// One segment's changes (registered as `segment`) and where they go.
struct SegmentWrite<'a> {
    ctx: &'a SessionContext,
    segment: &'a str,
    spec: &'a Spec,
    silver: &'a Silver,
    apply: &'a CdcApply,
    step: &'a str,
    /// Silver's data columns (after the rules).
    data: &'a [String],
    /// Silver is written anew (no table yet, or rebuilt from the snapshot).
    first: bool,
    run_id: &'a str,
    metadata: CommitMetadata,
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The SQL that turns bronze's text value of `column` into its source type.
/// Types without an Arrow counterpart stay text.
fn typed(column: &SourceColumn) -> String {
    let c = quote(&column.name);
    let t = column.pg_type.as_str();
    let cast = |to: &str| format!("CAST({c} AS {to})");
    let expr = match t {
        "smallint" => cast("SMALLINT"),
        "integer" => cast("INT"),
        "bigint" => cast("BIGINT"),
        "real" => cast("REAL"),
        "double precision" => cast("DOUBLE"),
        "boolean" => cast("BOOLEAN"),
        "date" => cast("DATE"),
        "numeric" => cast("DECIMAL(38, 10)"),
        _ if t.starts_with("numeric(") => match t.trim_start_matches("numeric(").trim_end_matches(')').split_once(',') {
            Some((p, s)) if p.trim().parse::<u8>().is_ok_and(|p| p <= 38) && s.trim().parse::<i8>().is_ok() => {
                cast(&format!("DECIMAL({}, {})", p.trim(), s.trim()))
            }
            _ => cast("DECIMAL(38, 10)"),
        },
        _ if t.starts_with("timestamp") && t.ends_with("with time zone") && !t.ends_with("without time zone") => {
            format!("arrow_cast({c}, 'Timestamp(Microsecond, Some(\"UTC\"))')")
        }
        _ if t.starts_with("timestamp") => format!("arrow_cast({c}, 'Timestamp(Microsecond, None)')"),
        _ => c.clone(),
    };
    format!("{expr} AS {c}")
}

impl Pipeline {
    /// Apply what bronze holds past silver's last applied change; `rebuild`
    /// (or a silver built from another snapshot) starts silver over from the
    /// capture's snapshot. Returns (changes read, rows written, rejected).
    pub(super) async fn apply_changes(
        &self,
        spec: &Spec,
        state: &CaptureState,
        rebuild: bool,
        run_id: &str,
    ) -> Result<(u64, u64, u64), PipelineError> {
        let (Some(silver), name) = (&spec.silver, &spec.name) else { return Ok((0, 0, 0)) };
        let Some(apply) = &silver.cdc else { return Ok((0, 0, 0)) };
        let step = format!("silver.{name}");
        let _turn = self.write_turn(step.clone()).await;
        let exists = self.lake.table(Layer::Silver, name).await?.is_some();
        let applied: Option<Applied> = self
            .lake
            .commits(Layer::Silver, name, Some(20))
            .await?
            .iter()
            .find_map(|c| c.metadata.get(APPLIED_KEY))
            .and_then(|v| serde_json::from_value(v.clone()).ok());
        let since = match &applied {
            Some(a) if exists && !rebuild && a.snapshot_run == state.snapshot_run => Some(a.position),
            _ => None,
        };
        let filter = match since {
            Some(p) => format!("_op <> 'r' AND (_lsn > {} OR (_lsn = {} AND _change > {}))", p.lsn, p.lsn, p.change),
            None => format!(
                "(_op = 'r' AND _run_id = '{}') OR (_op <> 'r' AND _lsn > {})",
                state.snapshot_run.replace('\'', "''"),
                state.snapshot_lsn as i64
            ),
        };
        let ctx = self.engine.internal_session();
        let projection: Vec<String> = state.columns.iter().map(typed).chain(CHANGE_COLUMNS.iter().map(|c| c.to_string())).collect();
        let changes = ctx
            .sql(&format!("SELECT {} FROM bronze.{} WHERE {filter}", projection.join(", "), quote(name)))
            .await
            .map_err(|e| step_error(&step, e.strip_backtrace()))?;
        let scratch = Scratch::new(&ctx);
        let pending = &scratch.pending;
        ctx.register_table(pending.as_str(), changes.into_view()).map_err(|e| step_error(&step, e))?;
        let bounds = ctx
            .sql(&format!("SELECT _lsn, _change, _op FROM {pending} WHERE _op = 't' UNION ALL SELECT _lsn, _change, 'end' FROM (SELECT _lsn, _change FROM {pending} ORDER BY _lsn DESC, _change DESC LIMIT 1) ORDER BY 1, 2"))
            .await
            .map_err(|e| step_error(&step, e.strip_backtrace()))?
            .collect()
            .await
            .map_err(|e| step_error(&step, e.strip_backtrace()))?;
        let mut marks: Vec<(Position, bool)> = Vec::new();
        for batch in &bounds {
            use datafusion::arrow::array::{AsArray, Int64Array};
            use datafusion::arrow::datatypes::Int64Type;
            let lsn: &Int64Array = batch.column(0).as_primitive::<Int64Type>();
            let change: &Int64Array = batch.column(1).as_primitive::<Int64Type>();
            let op = datafusion::arrow::compute::cast(batch.column(2), &datafusion::arrow::datatypes::DataType::Utf8)
                .map_err(|e| step_error(&step, e))?;
            let op = op.as_string::<i32>();
            for i in 0..batch.num_rows() {
                marks.push((Position { lsn: lsn.value(i), change: change.value(i) }, op.value(i) == "t"));
            }
        }
        let Some(&(last, _)) = marks.iter().max_by_key(|(p, _)| *p) else {
            if since.is_none() && !exists {
                // An empty source table: silver exists, with no rows.
                self.write_segment(&ctx, &scratch, spec, silver, apply, &step, None, None, true, state, Position { lsn: state.snapshot_lsn as i64, change: -1 }, run_id)
                    .await?;
            }
            return Ok((0, 0, 0));
        };
        let rows_in = datafusion::prelude::DataFrame::count(ctx.table(pending.as_str()).await.map_err(|e| step_error(&step, e))?)
            .await
            .map_err(|e| step_error(&step, e))? as u64;
        // Truncates split the changes: what came before one is applied, then
        // the truncate, then what follows.
        let mut first = since.is_none();
        let mut from: Option<Position> = None;
        let (mut rows_out, mut rejected) = (0u64, 0u64);
        for (at, truncate) in marks.into_iter().filter(|(p, t)| *t || *p == last) {
            let (out, bad) = self.write_segment(&ctx, &scratch, spec, silver, apply, &step, from, Some((at, truncate)), first, state, at, run_id).await?;
            rows_out += out;
            rejected += bad;
            first = false;
            from = Some(at);
        }
        Ok((rows_in, rows_out, rejected))
    }

    /// Apply the changes after `from` up to `to` (inclusive unless `to` is a
    /// truncate, which is then applied after them) in one commit each.
    #[allow(clippy::too_many_arguments)]
    async fn write_segment(
        &self,
        ctx: &SessionContext,
        scratch: &Scratch,
        spec: &Spec,
        silver: &Silver,
        apply: &CdcApply,
        step: &str,
        from: Option<Position>,
        to: Option<(Position, bool)>,
        first: bool,
        state: &CaptureState,
        watermark: Position,
        run_id: &str,
    ) -> Result<(u64, u64), PipelineError> {
        let after = |p: Position| format!("(_lsn > {} OR (_lsn = {} AND _change > {}))", p.lsn, p.lsn, p.change);
        let before = |p: Position, inclusive: bool| {
            format!("(_lsn < {} OR (_lsn = {} AND _change {} {}))", p.lsn, p.lsn, if inclusive { "<=" } else { "<" }, p.change)
        };
        let mut conditions = vec!["_op <> 't'".to_string()];
        if let Some(from) = from {
            conditions.push(after(from));
        }
        if let Some((to, truncate)) = to {
            conditions.push(before(to, !truncate));
        }
        if apply.deletes == Deletes::Ignore {
            conditions.push("_op <> 'd'".into());
        }
        let segment = ctx
            .sql(&format!("SELECT * FROM {} WHERE {}", scratch.pending, conditions.join(" AND ")))
            .await
            .map_err(|e| step_error(step, e.strip_backtrace()))?;
        let refined = rules::apply(ctx, segment, &silver.rules).await?;
        let upserts = refined.clone().filter(datafusion::prelude::col("_op").not_eq(datafusion::prelude::lit("d"))).map_err(|e| step_error(step, e))?;
        let deletes = refined.filter(datafusion::prelude::col("_op").eq(datafusion::prelude::lit("d"))).map_err(|e| step_error(step, e))?;
        let (kept, rejected) = self.enforce(ctx, spec, upserts, &silver.expectations, run_id).await?;
        let changes = kept.union(deletes).map_err(|e| step_error(step, e))?;
        let data: Vec<String> = changes
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| !CHANGE_COLUMNS.contains(&n.as_str()) && n != "_run_id")
            .collect();
        for k in &silver.key {
            if !data.contains(k) {
                return Err(step_error(step, format!("silver key column '{k}' is not among the columns after the rules ({})", data.join(", "))));
            }
        }
        ctx.deregister_table(scratch.segment.as_str()).map_err(|e| step_error(step, e))?;
        ctx.register_table(scratch.segment.as_str(), changes.into_view()).map_err(|e| step_error(step, e))?;
        let metadata: CommitMetadata = vec![(
            APPLIED_KEY.to_string(),
            serde_json::to_value(Applied { position: watermark, snapshot_run: state.snapshot_run.clone() }).map_err(|e| step_error(step, e))?,
        )];
        let write = SegmentWrite { ctx, segment: &scratch.segment, spec, silver, apply, step, data: &data, first, run_id, metadata: metadata.clone() };
        let written = match apply.history {
            History::Scd1 => self.apply_scd1(write).await?,
            History::Scd2 => self.apply_scd2(write).await?,
        };
        if let Some((at, true)) = to {
            self.apply_truncate(ctx, &scratch.pending, spec, apply, step, at, run_id, metadata).await?;
        }
        Ok((written, rejected))
    }

    /// Add to silver the columns of `rows` it does not have yet (a source
    /// column added while capturing): an empty append that merges schemas.
    async fn widen_silver(&self, ctx: &SessionContext, name: &str, rows: &DataFrame, step: &str, run_id: &str) -> Result<(), PipelineError> {
        let current = ctx.table(format!("silver.{}", quote(name))).await.map_err(|e| step_error(step, e))?;
        let known: Vec<String> = current.schema().fields().iter().map(|f| f.name().clone()).collect();
        if rows.schema().fields().iter().all(|f| known.contains(f.name())) {
            return Ok(());
        }
        let empty = rows.clone().limit(0, Some(0)).map_err(|e| step_error(step, e))?;
        self.lake.write_frame(Layer::Silver, name, empty, WriteKind::Append, run_id, Vec::new()).await?;
        Ok(())
    }

    /// The latest change per key, merged: a delete removes the row (or marks
    /// it `_deleted`), anything else replaces it, unless silver already has
    /// a later version of the key (by `sequence_by`).
    async fn apply_scd1(&self, w: SegmentWrite<'_>) -> Result<u64, PipelineError> {
        let SegmentWrite { ctx, segment, spec, silver, apply, step, data, first, run_id, metadata } = w;
        let keys = silver.key.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ");
        let sequence = apply.sequence_by.as_deref().map(quote);
        let order = match &sequence {
            Some(s) => format!("{s} DESC NULLS FIRST, _lsn DESC, _change DESC"),
            None => "_lsn DESC, _change DESC".to_string(),
        };
        let soft = apply.deletes == Deletes::Soft;
        let mut target: Vec<(String, String)> = data.iter().map(|c| (quote(c), format!("s.{}", quote(c)))).collect();
        target.push(("_lsn".into(), "s._lsn".into()));
        target.push(("_commit_time".into(), "s._commit_time".into()));
        if soft {
            target.push(("_deleted".into(), "s._op = 'd'".into()));
        }
        target.push(("_run_id".into(), format!("'{run_id}'")));
        let latest = format!(
            "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY {order}) AS __rn FROM {segment}) WHERE __rn = 1"
        );
        let name = &spec.name;
        if first {
            let keep = if soft { "true" } else { "s._op <> 'd'" };
            let select = target.iter().map(|(c, v)| format!("{v} AS {c}")).collect::<Vec<_>>().join(", ");
            let rows = ctx
                .sql(&format!("SELECT {select} FROM ({latest}) s WHERE {keep}"))
                .await
                .map_err(|e| step_error(step, e.strip_backtrace()))?;
            return Ok(self.lake.write_frame(Layer::Silver, name, rows, WriteKind::Overwrite, run_id, metadata).await?.rows_written);
        }
        let source = ctx.sql(&latest).await.map_err(|e| step_error(step, e.strip_backtrace()))?;
        let select = target.iter().map(|(c, v)| format!("{v} AS {c}")).collect::<Vec<_>>().join(", ");
        let shape = ctx.sql(&format!("SELECT {select} FROM ({latest}) s LIMIT 0")).await.map_err(|e| step_error(step, e.strip_backtrace()))?;
        self.widen_silver(ctx, name, &shape, step, run_id).await?;
        let on = silver.key.iter().map(|k| format!("target.{q} = source.{q}", q = quote(k))).collect::<Vec<_>>().join(" AND ");
        let newer = match &sequence {
            Some(s) => format!("(source.{s} IS NULL OR target.{s} IS NULL OR source.{s} >= target.{s})"),
            None => "source._lsn >= target._lsn".to_string(),
        };
        // An unchanged TOASTed value the stream left out keeps silver's value.
        let upsert: Vec<(String, String)> = target
            .iter()
            .map(|(c, v)| match data.iter().find(|d| &quote(d) == c) {
                Some(raw) => (
                    c.clone(),
                    format!("CASE WHEN strpos(COALESCE(source._unchanged, ''), ',{},') > 0 THEN target.{c} ELSE source.{c} END", raw.replace('\'', "''")),
                ),
                None => (c.clone(), v.replacen("s.", "source.", 1)),
            })
            .collect();
        let mut matched = vec![];
        match apply.deletes {
            Deletes::Apply => matched.push(Matched::Delete { when: format!("source._op = 'd' AND {newer}") }),
            Deletes::Soft => matched.push(Matched::Update {
                when: format!("source._op = 'd' AND {newer}"),
                set: vec![
                    ("_deleted".into(), "true".into()),
                    ("_lsn".into(), "source._lsn".into()),
                    ("_commit_time".into(), "source._commit_time".into()),
                    ("_run_id".into(), format!("'{run_id}'")),
                ],
            }),
            Deletes::Ignore => {}
        }
        matched.push(Matched::Update { when: format!("source._op <> 'd' AND {newer}"), set: upsert });
        let insert: Vec<(String, String)> = target.iter().map(|(c, v)| (c.clone(), v.replacen("s.", "source.", 1))).collect();
        let clauses = MergeClauses { on, matched, insert_when: Some("source._op <> 'd'".into()), insert };
        let info = self.lake.merge_changes(Layer::Silver, name, source, clauses, run_id, metadata).await?;
        Ok(info.rows_written + info.rows_updated)
    }

    /// Versions: a key's current version and its changes, in order, cut
    /// into versions where a tracked column changes (or after a delete);
    /// each version ends where the next begins. The versions computed
    /// replace the key's current one (matched by `_valid_from`) or are added.
    async fn apply_scd2(&self, w: SegmentWrite<'_>) -> Result<u64, PipelineError> {
        let SegmentWrite { ctx, segment, spec, silver, apply, step, data, first, run_id, metadata } = w;
        let name = &spec.name;
        let (from, to, current) = (scd2::VALID_FROM, scd2::VALID_TO, scd2::IS_CURRENT);
        let keys = silver.key.iter().map(|k| quote(k)).collect::<Vec<_>>().join(", ");
        let columns = data.iter().map(|c| quote(c)).collect::<Vec<_>>().join(", ");
        let tracked: Vec<&String> = if apply.track_history_on.is_empty() {
            data.iter().filter(|c| !silver.key.contains(c)).collect()
        } else {
            apply.track_history_on.iter().collect()
        };
        for t in &tracked {
            if !data.contains(t) {
                return Err(step_error(step, format!("track_history_on names '{t}', which silver does not have (it has {})", data.join(", "))));
            }
        }
        let order = "__base DESC, _lsn, _change";
        let window = format!("PARTITION BY {keys} ORDER BY {order}");
        let differs = if tracked.is_empty() {
            "false".to_string()
        } else {
            tracked.iter().map(|c| format!("LAG({q}) OVER ({window}) IS DISTINCT FROM {q}", q = quote(c))).collect::<Vec<_>>().join(" OR ")
        };
        let base = if first {
            format!("SELECT {columns}, _op, _lsn, _change, _commit_time, false AS __base, _commit_time AS __from FROM {segment} WHERE false")
        } else {
            let exists = silver.key.iter().map(|k| format!("c.{q} = s.{q}", q = quote(k))).collect::<Vec<_>>().join(" AND ");
            format!(
                "SELECT {cols}, 'c' AS _op, s._lsn, CAST(-1 AS BIGINT) AS _change, s.{from} AS _commit_time, true AS __base, s.{from} AS __from \
                 FROM silver.{table} s WHERE s.{current} AND EXISTS (SELECT 1 FROM {segment} c WHERE {exists})",
                cols = data.iter().map(|c| format!("s.{}", quote(c))).collect::<Vec<_>>().join(", "),
                table = quote(name),
            )
        };
        // A transaction is one step of history: only its last change of a key counts.
        let last_in_transaction = format!(
            "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY {keys}, _lsn ORDER BY _change DESC) AS __in_tx FROM {segment}) WHERE __in_tx = 1"
        );
        let sql = format!(
            "WITH u AS ({base} UNION ALL SELECT {columns}, _op, _lsn, _change, _commit_time, false AS __base, _commit_time AS __from FROM ({last_in_transaction})), \
             a AS (SELECT u.*, LAG(_op) OVER ({window}) AS __prev_op, ({differs}) AS __differs FROM u), \
             b AS (SELECT a.*, SUM(CASE WHEN _op = 'd' OR __prev_op IS NULL OR __prev_op = 'd' OR __differs THEN 1 ELSE 0 END) \
                   OVER ({window} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS __grp FROM a), \
             c AS (SELECT b.*, FIRST_VALUE(_op) OVER (PARTITION BY {keys}, __grp ORDER BY {order}) AS __first_op, \
                   FIRST_VALUE(__from) OVER (PARTITION BY {keys}, __grp ORDER BY {order}) AS __start, \
                   ROW_NUMBER() OVER (PARTITION BY {keys}, __grp ORDER BY __base, _lsn DESC, _change DESC) AS __last FROM b), \
             g AS (SELECT * FROM c WHERE __last = 1), \
             v AS (SELECT g.*, LEAD(__start) OVER (PARTITION BY {keys} ORDER BY __grp) AS __end FROM g) \
             SELECT {columns}, _lsn, __start AS {from}, __end AS {to}, __end IS NULL AS {current}, '{run_id}' AS _run_id \
             FROM v WHERE __first_op <> 'd'"
        );
        let versions = ctx.sql(&sql).await.map_err(|e| step_error(step, e.strip_backtrace()))?;
        if first {
            return Ok(self.lake.write_frame(Layer::Silver, name, versions, WriteKind::Overwrite, run_id, metadata).await?.rows_written);
        }
        self.widen_silver(ctx, name, &versions, step, run_id).await?;
        let on = silver
            .key
            .iter()
            .map(|k| format!("target.{q} = source.{q}", q = quote(k)))
            .chain(std::iter::once(format!("target.{from} = source.{from}")))
            .collect::<Vec<_>>()
            .join(" AND ");
        let all: Vec<(String, String)> = data
            .iter()
            .map(|c| quote(c))
            .chain(["_lsn", from, to, current, "_run_id"].iter().map(|c| c.to_string()))
            .map(|c| (c.clone(), format!("source.{c}")))
            .collect();
        let clauses = MergeClauses {
            on,
            matched: vec![Matched::Update { when: "true".into(), set: all.clone() }],
            insert_when: None,
            insert: all,
        };
        let info = self.lake.merge_changes(Layer::Silver, name, versions, clauses, run_id, metadata).await?;
        Ok(info.rows_written + info.rows_updated)
    }

    /// A truncate of the source: silver empties (`apply`), marks every row
    /// deleted (`soft`), closes every current version (SCD2), or keeps its
    /// rows (`ignore`).
    #[allow(clippy::too_many_arguments)]
    async fn apply_truncate(
        &self,
        ctx: &SessionContext,
        pending: &str,
        spec: &Spec,
        apply: &CdcApply,
        step: &str,
        at: Position,
        run_id: &str,
        metadata: CommitMetadata,
    ) -> Result<(), PipelineError> {
        let name = &spec.name;
        if apply.deletes == Deletes::Ignore || self.lake.table(Layer::Silver, name).await?.is_none() {
            return Ok(());
        }
        let when: DataFrame = ctx
            .sql(&format!("SELECT _commit_time FROM {pending} WHERE _lsn = {} AND _change = {} LIMIT 1", at.lsn, at.change))
            .await
            .map_err(|e| step_error(step, e.strip_backtrace()))?;
        let time = when
            .collect()
            .await
            .map_err(|e| step_error(step, e.strip_backtrace()))?
            .first()
            .filter(|b| b.num_rows() > 0)
            .and_then(|b| datafusion::common::ScalarValue::try_from_array(b.column(0), 0).ok())
            .map(|v| v.to_string())
            .unwrap_or_default();
        let stamp = format!("arrow_cast('{time}', 'Timestamp(Microsecond, Some(\"UTC\"))')");
        let (predicate, set): (Option<String>, Vec<(String, String)>) = match (apply.history, apply.deletes) {
            (History::Scd2, _) => (
                Some(format!("{}", scd2::IS_CURRENT)),
                vec![(scd2::VALID_TO.into(), stamp.clone()), (scd2::IS_CURRENT.into(), "false".into())],
            ),
            (History::Scd1, Deletes::Soft) => (None, vec![("_deleted".into(), "true".into()), ("_commit_time".into(), stamp.clone())]),
            _ => (None, Vec::new()),
        };
        if set.is_empty() {
            self.lake.delete_where(Layer::Silver, name, None, run_id, metadata).await?;
        } else {
            self.lake.update_where(Layer::Silver, name, predicate.as_deref(), &set, run_id, metadata).await?;
        }
        Ok(())
    }
}
