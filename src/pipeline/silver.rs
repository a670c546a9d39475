//! Silver: the rules applied to what bronze received since silver last ran,
//! the expectations enforced (warn, drop, quarantine, fail), written with the
//! spec's mode; each write consumes its bronze input at most once. Silver
//! reads what bronze committed, or, when that is exactly this run's rows,
//! the rows themselves as bronze writes them.

use datafusion::prelude::{DataFrame, SessionContext, lit};

use super::rules::{self, ident};
use super::{
    BRONZE_VERSION_KEY, Pipeline, PipelineError, RunOptions, SILVER_METADATA_DROPPED, count, edge, rule_lineage, scd2,
    step_error,
};
use crate::meta::LineageEdge;
use crate::spec::{Spec, WriteMode};
use crate::storage::{CommitMetadata, Layer, WriteKind};

impl Pipeline {
    pub(super) async fn refine(
        &self,
        spec: &Spec,
        mode: WriteMode,
        key: &[String],
        rule_list: &[crate::spec::Located<crate::spec::Rule>],
        options: &RunOptions,
        run_id: &str,
    ) -> Result<Option<(u64, u64, u64)>, PipelineError> {
        let step = format!("silver.{}", spec.name);
        let ctx = self.engine.internal_session();
        let Some(bronze_table) = self.lake.table(Layer::Bronze, &spec.name).await? else {
            return Ok(None);
        };
        let bronze_version = bronze_table.version().unwrap_or_default() as i64;
        // Silver records the bronze version it has consumed; everything bronze
        // committed after it (even by a run that died before its silver step)
        // is pending.
        let consumed = self.consumed_bronze_version(&spec.name).await?;
        if !options.full_refresh && consumed == Some(bronze_version) {
            return Ok(None);
        }
        let whole = options.full_refresh || mode == WriteMode::Overwrite || consumed.is_none();
        let bronze = ctx.table(format!("bronze.{}", spec.name)).await.map_err(|e| step_error(&step, e))?;
        let bronze_columns: Vec<String> = bronze.schema().fields().iter().map(|f| f.name().clone()).collect();
        // What this write consumes, committed at most once even by racing
        // runs (see `Lake::write_frame_once`): each bronze run an append
        // takes, or the bronze version a whole rewrite reads.
        let mut consumed_keys: Vec<String> = vec![version_key(&spec.name, bronze_version)];
        let input = if whole {
            bronze
        } else {
            let mut pending: Vec<String> = self
                .lake
                .commits(Layer::Bronze, &spec.name, None)
                .await?
                .into_iter()
                .filter(|c| consumed.is_none_or(|v| c.version > v) && c.version <= bronze_version)
                .filter_map(|c| c.run_id)
                .collect();
            let key_of = |run: &str| run_key(&spec.name, run);
            // A run may already be in silver even past the watermark: commits
            // of runs that raced land in any order.
            let keys: Vec<String> = pending.iter().map(|r| key_of(r)).collect();
            let done = self.lake.committed(Layer::Silver, &spec.name, &keys).await?;
            pending.retain(|r| !done.contains(&key_of(r)));
            if pending.is_empty() {
                return Ok(None);
            }
            consumed_keys = pending.iter().map(|r| key_of(r)).collect();
            bronze
                .filter(ident("_run_id").in_list(pending.into_iter().map(lit).collect(), false))
                .map_err(|e| step_error(&step, e))?
        };
        let rows_in = count(&input).await.map_err(|e| step_error(&step, e))?;
        let target = Target { spec, mode, key, rules: rule_list, whole, keys: consumed_keys, bronze_version };
        let (rows_out, rejected) = self.write_refined(&ctx, &target, input, run_id, true).await?;
        self.record_silver_lineage(spec, &bronze_columns, rule_list, run_id).await;
        Ok(Some((rows_in, rows_out, rejected)))
    }

    /// The bronze version silver's last commit consumed (None: no silver yet).
    async fn consumed_bronze_version(&self, dataset: &str) -> Result<Option<i64>, PipelineError> {
        Ok(self
            .lake
            .commits(Layer::Silver, dataset, Some(1))
            .await?
            .first()
            .and_then(|c| c.metadata.get(BRONZE_VERSION_KEY))
            .and_then(|v| v.as_i64()))
    }

    /// Whether this run's silver can be written from the rows bronze is
    /// writing, as they are parsed, instead of from bronze once it is
    /// committed: when what silver would read back is exactly those rows
    /// (silver caught up with bronze and appending, or neither table there
    /// yet), and the silver step reads them once (no expectations, which
    /// query the rows before the write; no rule that queries them or reads
    /// them twice; not SCD2 or a merge, which read silver too). A full
    /// refresh rebuilds silver from bronze as stored.
    pub(super) async fn silver_alongside<'a>(&self, spec: &'a Spec, options: &RunOptions, run_id: &str) -> Result<Option<Alongside<'a>>, PipelineError> {
        let Some(silver) = &spec.silver else { return Ok(None) };
        if options.full_refresh
            || !silver.expectations.is_empty()
            || !matches!(silver.mode, WriteMode::Append | WriteMode::Overwrite | WriteMode::Merge)
            || !rules::one_pass(&silver.rules)
        {
            return Ok(None);
        }
        let bronze = self.lake.table(Layer::Bronze, &spec.name).await?;
        let has_silver = self.lake.table(Layer::Silver, &spec.name).await?.is_some();
        let target = |whole: bool, bronze_version: i64, keys: Vec<String>| Target {
            spec,
            mode: silver.mode,
            key: &silver.key,
            rules: &silver.rules,
            whole,
            keys,
            bronze_version,
        };
        match (bronze, has_silver) {
            (None, false) => Ok(Some(Alongside {
                target: target(true, 0, vec![version_key(&spec.name, 0)]),
                columns: None,
            })),
            (Some(bronze), true) if silver.mode == WriteMode::Append => {
                let current = bronze.version().unwrap_or_default() as i64;
                if self.consumed_bronze_version(&spec.name).await? != Some(current) {
                    return Ok(None);
                }
                let ctx = self.engine.internal_session();
                let stored = ctx
                    .table(format!("bronze.{}", spec.name))
                    .await
                    .map_err(|e| step_error(&format!("silver.{}", spec.name), e))?;
                Ok(Some(Alongside {
                    target: target(false, current + 1, vec![run_key(&spec.name, run_id)]),
                    columns: Some(stored.schema().inner().clone()),
                }))
            }
            _ => Ok(None),
        }
    }

    /// Write silver alongside bronze (see [`silver_alongside`](Self::silver_alongside))
    /// from `rows`, the batches bronze is writing; the stream ends only once
    /// bronze committed at `plan`'s expected version. Returns the rows written.
    pub(super) async fn refine_alongside(
        &self,
        plan: &Alongside<'_>,
        rows: datafusion::execution::SendableRecordBatchStream,
        run_id: &str,
    ) -> Result<u64, PipelineError> {
        let spec = plan.target.spec;
        let step = format!("silver.{}", spec.name);
        let ctx = self.engine.internal_session();
        let incoming = rows.schema();
        let mut input = super::scan_once(&ctx, rows, "the landing rows bronze is writing").map_err(|e| step_error(&step, e))?;
        // Appending: the rules see the columns as a read of bronze gives them.
        if let Some(stored) = &plan.columns {
            let same = stored.fields().len() == incoming.fields().len()
                && stored.fields().iter().zip(incoming.fields()).all(|(s, i)| s.name() == i.name());
            if !same {
                return Err(step_error(&step, "this run's files add or reorder bronze's columns; silver reads them from bronze"));
            }
            let typed = stored
                .fields()
                .iter()
                .map(|f| datafusion::logical_expr::cast(ident(f.name()), f.data_type().clone()).alias(f.name()))
                .collect::<Vec<_>>();
            input = input.select(typed).map_err(|e| step_error(&step, e))?;
        }
        let bronze_columns: Vec<String> = incoming.fields().iter().map(|f| f.name().clone()).collect();
        let (rows_out, _) = self.write_refined(&ctx, &plan.target, input, run_id, false).await?;
        self.record_silver_lineage(spec, &bronze_columns, plan.target.rules, run_id).await;
        Ok(rows_out)
    }

    /// Apply the rules to `input` (bronze rows), enforce the expectations
    /// and write silver as `target` says, in one commit that records the
    /// bronze version consumed. Returns the rows written and rejected. When
    /// reading the rules' result fails and `explain` is set, a rejected value
    /// is reported as the rule's own check would have reported it (that
    /// reads `input` again).
    async fn write_refined(
        &self,
        ctx: &SessionContext,
        target: &Target<'_>,
        input: DataFrame,
        run_id: &str,
        explain: bool,
    ) -> Result<(u64, u64), PipelineError> {
        let Target { spec, mode, key, rules: rule_list, whole, .. } = *target;
        let step = format!("silver.{}", spec.name);
        let watermark: CommitMetadata = vec![(BRONZE_VERSION_KEY.to_string(), serde_json::json!(target.bronze_version))];
        let consumed_keys = &target.keys;
        let expectations = spec.silver.as_ref().map(|s| s.expectations.clone()).unwrap_or_default();
        // The casts' data checks ride along the silver write (one scan of
        // bronze instead of two), unless a quarantine table is written first:
        // its rows must have passed them, so then they run before anything.
        let quarantines = expectations.iter().any(|e| e.value.on_fail == crate::spec::OnFail::Quarantine);
        let (refined, deferred) = if quarantines {
            (rules::apply(ctx, input, rule_list).await?, rules::Deferred::default())
        } else {
            rules::apply_deferred(ctx, input, rule_list).await?
        };
        let written: Result<(u64, u64), PipelineError> = async {
            let drop: Vec<&str> = SILVER_METADATA_DROPPED
                .iter()
                .copied()
                .filter(|c| refined.schema().field_with_unqualified_name(c).is_ok())
                .collect();
            let refined = refined.drop_columns(&drop).map_err(|e| step_error(&step, e))?;
            let refined = refined
                .with_column("_run_id", lit(run_id.to_string()))
                .map_err(|e| step_error(&step, e))?;
            let (refined, rejected) = self.enforce(ctx, spec, refined, &expectations, run_id).await?;
            let refined = match spec.silver.as_ref().and_then(|s| s.cluster_by.as_ref()) {
                Some(cluster) => cluster_sorted(refined, cluster, &step).await?,
                None => refined,
            };
            let rows_out = match (mode, whole) {
                (WriteMode::Merge, false) => {
                    let info = self.lake.merge(Layer::Silver, &spec.name, refined, key, run_id, watermark).await?;
                    info.rows_written + info.rows_updated
                }
                (WriteMode::Scd2, _) => {
                    let current = if whole {
                        None
                    } else {
                        match self.lake.table(Layer::Silver, &spec.name).await? {
                            Some(_) => Some(ctx.table(format!("silver.{}", spec.name)).await.map_err(|e| step_error(&step, e))?),
                            None => None,
                        }
                    };
                    let now = chrono::Utc::now().timestamp_micros();
                    let state = scd2::next_state(ctx, current, refined, key, now)
                        .await
                        .map_err(|e| step_error(&step, e.strip_backtrace()))?;
                    let batches = state.collect().await.map_err(|e| step_error(&step, e.strip_backtrace()))?;
                    self.lake.write(Layer::Silver, &spec.name, batches, WriteKind::Overwrite, run_id, watermark).await?.rows_written
                }
                (WriteMode::Append, false) => {
                    self.lake
                        .write_frame_once(Layer::Silver, &spec.name, refined, WriteKind::Append, run_id, watermark, consumed_keys)
                        .await?
                        .rows_written
                }
                _ => {
                    self.lake
                        .write_frame_once(Layer::Silver, &spec.name, refined, WriteKind::Overwrite, run_id, watermark, consumed_keys)
                        .await?
                        .rows_written
                }
            };
            Ok((rows_out, rejected))
        }
        .await;
        match written {
            Ok(written) => Ok(written),
            // Reading the rules' result failed: a rejected value, reported as
            // the rule's own check would have, or the failure as it came.
            Err(err) if explain => Err(deferred.explain(ctx).await.map_or(err, PipelineError::from)),
            Err(err) => Err(err),
        }
    }

    /// Silver's table and column lineage from bronze.
    async fn record_silver_lineage(&self, spec: &Spec, bronze_columns: &[String], rule_list: &[crate::spec::Located<crate::spec::Rule>], run_id: &str) {
        let rule_names: Vec<&str> = rule_list.iter().map(|r| r.value.name()).collect();
        let transform = if rule_names.is_empty() { "copy".to_string() } else { format!("rules: {}", rule_names.join(", ")) };
        let (bronze_table, silver_table) = (format!("bronze.{}", spec.name), format!("silver.{}", spec.name));
        let mut edges = vec![edge(&bronze_table, &silver_table, &transform)];
        for (column, (sources, how)) in rule_lineage::column_sources(bronze_columns, rule_list) {
            if column.starts_with('_') {
                continue;
            }
            let transform = if how.is_empty() { "copy".to_string() } else { how.join(", ") };
            for source in sources {
                edges.push(LineageEdge {
                    from_table: bronze_table.clone(),
                    from_column: source,
                    to_table: silver_table.clone(),
                    to_column: column.clone(),
                    transform: transform.clone(),
                });
            }
        }
        self.record_lineage(&edges, run_id).await;
    }

    /// Evaluate the silver expectations on `refined` and apply each one's
    /// `on_fail`: warn (record only), drop or quarantine the failing rows
    /// (quarantine: into `silver.<table>__quarantine` with the reasons), or
    /// fail the run before anything is committed. Returns the rows to write
    /// and how many were rejected.
    pub(super) async fn enforce(
        &self,
        ctx: &SessionContext,
        spec: &Spec,
        refined: DataFrame,
        expectations: &[crate::spec::Located<crate::spec::Expectation>],
        run_id: &str,
    ) -> Result<(DataFrame, u64), PipelineError> {
        use crate::quality;
        use crate::spec::OnFail;
        if expectations.is_empty() {
            return Ok((refined, 0));
        }
        let step = format!("silver.{}", spec.name);
        let columns: Vec<String> = refined.schema().fields().iter().map(|f| f.name().clone()).collect();
        let view = quality::register_view(ctx, refined.clone()).map_err(|e| step_error(&step, e))?;
        let mut rejecting: Vec<(quality::Check, OnFail)> = Vec::new();
        for expectation in expectations {
            // A volume check compares this run with the rows earlier runs wrote.
            let mut declared = expectation.value.clone();
            let mut bounds = None;
            if declared.kind == "row_count_anomaly" {
                let lookback = declared.args.get("lookback").and_then(|v| v.as_u64()).unwrap_or(14) as u32;
                let history = self.meta.silver_rows_history(&spec.name, lookback).await?;
                let history: Vec<f64> = history.into_iter().map(|n| n as f64).collect();
                bounds = Some((quality::anomaly_bounds(&history, quality::max_deviation(&declared.args)), history.len()));
                if let Some(args) = declared.args.as_object_mut() {
                    args.insert(quality::ANOMALY_HISTORY.into(), serde_json::json!(history));
                } else {
                    declared.args = serde_json::json!({ quality::ANOMALY_HISTORY: history });
                }
            }
            let checks = quality::compile(&declared)
                .map_err(|e| step_error(&step, format!("{}: {}", expectation.location, e.strip_backtrace())))?;
            for check in checks {
                let result = quality::evaluate(ctx, &view, &check)
                    .await
                    .map_err(|e| step_error(&step, format!("{}: {}", expectation.location, e.strip_backtrace())))?;
                crate::metrics::expectation(result.success);
                let record = result.record(&step, Some(run_id));
                if let Err(err) = self.meta.record_validation(&record).await {
                    tracing::warn!(%err, "storing a validation result failed");
                }
                match expectation.value.on_fail {
                    OnFail::Warn => {
                        if !result.success {
                            tracing::warn!(expectation = %check.label(), unexpected = result.unexpected_count, "expectation failed (warn)");
                        }
                    }
                    OnFail::Fail if !result.success && check.table_level.is_some() => {
                        let expected = match bounds {
                            Some((Some((low, high)), runs)) => format!(" (expected {low} to {high} from the last {runs} successful runs)"),
                            _ => String::new(),
                        };
                        return Err(step_error(
                            &step,
                            format!(
                                "{}: expectation {} failed: observed {}{expected}; nothing was written",
                                expectation.location,
                                check.label(),
                                result.observed_value.as_deref().unwrap_or("nothing"),
                            ),
                        ));
                    }
                    OnFail::Fail if !result.success => {
                        return Err(step_error(
                            &step,
                            format!(
                                "{}: expectation {} failed: {} of {} rows ({:.2}%) unexpected, e.g. {}; nothing was written",
                                expectation.location,
                                check.label(),
                                result.unexpected_count,
                                result.element_count,
                                result.unexpected_percent,
                                result.partial_unexpected_list.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
                            ),
                        ));
                    }
                    OnFail::Fail => {}
                    action @ (OnFail::Drop | OnFail::Quarantine) => {
                        if check.failing.is_none() {
                            return Err(step_error(&step, format!("{}: {} is a table-level check: use on_fail: warn or fail", expectation.location, check.label())));
                        }
                        rejecting.push((check, action));
                    }
                }
            }
        }
        if rejecting.is_empty() {
            return Ok((refined, 0));
        }
        let refs: Vec<&quality::Check> = rejecting.iter().map(|(c, _)| c).collect();
        let (source, predicates) = quality::augmented_source(&view, &refs);
        let rejecting: Vec<(String, String, OnFail)> = rejecting
            .iter()
            .zip(predicates)
            .map(|((check, action), predicate)| (check.label(), predicate, *action))
            .collect();
        let quoted: Vec<String> = columns.iter().map(|c| format!("\"{c}\"")).collect();
        let any_bad = rejecting.iter().map(|(_, p, _)| format!("COALESCE(({p}), false)")).collect::<Vec<_>>().join(" OR ");
        let kept = ctx
            .sql(&format!("SELECT {} FROM {source} AS t WHERE NOT ({any_bad})", quoted.join(", ")))
            .await
            .map_err(|e| step_error(&step, e.strip_backtrace()))?;
        let quarantine: Vec<&(String, String, OnFail)> = rejecting.iter().filter(|(_, _, a)| *a == OnFail::Quarantine).collect();
        if !quarantine.is_empty() {
            let reasons = quarantine
                .iter()
                .map(|(label, p, _)| format!("CASE WHEN COALESCE(({p}), false) THEN '{}' END", label.replace('\'', "''")))
                .collect::<Vec<_>>()
                .join(", ");
            let any_quarantined = quarantine.iter().map(|(_, p, _)| format!("COALESCE(({p}), false)")).collect::<Vec<_>>().join(" OR ");
            let business: Vec<&String> = quoted.iter().filter(|c| c.as_str() != "\"_run_id\"").collect();
            let rows = ctx
                .sql(&format!(
                    "SELECT {}, concat_ws(', ', {reasons}) AS _failed_expectations, '{run_id}' AS _run_id, now() AS _quarantined_at \
                     FROM {source} AS t WHERE {any_quarantined}",
                    business.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")
                ))
                .await
                .map_err(|e| step_error(&step, e.strip_backtrace()))?
                .collect()
                .await
                .map_err(|e| step_error(&step, e.strip_backtrace()))?;
            if rows.iter().any(|b| b.num_rows() > 0) {
                self.lake
                    .write(Layer::Silver, &crate::spec::quarantine_table(&spec.name), rows, WriteKind::Append, run_id, vec![])
                    .await?;
            }
        }
        let total = count(&refined).await.map_err(|e| step_error(&step, e))?;
        let kept_rows = count(&kept).await.map_err(|e| step_error(&step, e))?;
        Ok((kept, total - kept_rows))
    }
}

/// The key of a silver write that consumed all of bronze at `version`.
fn version_key(dataset: &str, version: i64) -> String {
    format!("silver.{dataset}:bronze version {version}")
}

/// The key of a silver write that consumed bronze run `run`'s rows.
fn run_key(dataset: &str, run: &str) -> String {
    format!("silver.{dataset}:bronze run {run}")
}

/// What a silver write consumes and how it writes.
pub(super) struct Target<'a> {
    spec: &'a Spec,
    mode: WriteMode,
    key: &'a [String],
    rules: &'a [crate::spec::Located<crate::spec::Rule>],
    /// Silver is rewritten from all of bronze (else the input is appended or merged).
    whole: bool,
    /// The keys the commit records, so it lands at most once.
    keys: Vec<String>,
    /// The bronze version consumed, recorded as silver's watermark.
    bronze_version: i64,
}

/// A silver write planned to run alongside bronze's, from the same parsed rows.
pub(super) struct Alongside<'a> {
    target: Target<'a>,
    /// Bronze's columns as a read of the table gives them (None: no bronze yet).
    columns: Option<datafusion::arrow::datatypes::SchemaRef>,
}

impl Alongside<'_> {
    /// The bronze version silver records; bronze's commit must land there.
    pub(super) fn bronze_version(&self) -> i64 {
        self.target.bronze_version
    }
}

/// `frame` sorted by the `cluster_by` columns (nulls last): each file of the
/// write then covers a narrow range of them. A column silver does not have
/// is an error naming the spec line.
///
/// The sort runs as the root of its own plan and the write scans its output
/// stream: under the write, the optimizer would drop a sort nothing above
/// requires. Without round-robin repartitioning the stream reaches the
/// writer in order.
async fn cluster_sorted(frame: DataFrame, cluster: &crate::spec::Located<Vec<String>>, step: &str) -> Result<DataFrame, PipelineError> {
    let columns: Vec<String> = frame.schema().fields().iter().map(|f| f.name().clone()).collect();
    let mut order = Vec::with_capacity(cluster.value.len());
    for column in &cluster.value {
        if !columns.contains(column) {
            return Err(step_error(
                step,
                format!("{}: cluster_by column '{column}' is not a silver column (silver has {})", cluster.location, columns.join(", ")),
            ));
        }
        order.push(ident(column).sort(true, false));
    }
    let sorted = frame.sort(order).map_err(|e| step_error(step, e))?;
    let (state, plan) = sorted.into_parts();
    let mut config = state.config().clone();
    config.options_mut().optimizer.enable_round_robin_repartition = false;
    let state = datafusion::execution::session_state::SessionStateBuilder::new_from_existing(state).with_config(config).build();
    let sorted = DataFrame::new(state.clone(), plan);
    let stream = sorted.execute_stream().await.map_err(|e| step_error(step, e))?;
    super::scan_once(&SessionContext::new_with_state(state), stream, "the sorted silver rows").map_err(|e| step_error(step, e))
}
