//! Expectations: data quality checks compiled to SQL over a DataFrame, each
//! evaluated with one aggregate (counts) and one sample query. Row-level
//! checks also give the predicate that selects failing rows, which the
//! pipeline uses to drop or quarantine them.

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::error::{DataFusionError, Result};
use datafusion::prelude::{DataFrame, SessionContext};

use crate::spec::Expectation;

/// One concrete check (an expectation on several columns is several checks).
#[derive(Debug, Clone)]
pub struct Check {
    /// e.g. `not_null`.
    pub kind: String,
    pub columns: Vec<String>,
    pub mostly: f64,
    /// SQL predicate true for a failing row (row-level checks).
    pub failing: Option<String>,
    /// Column whose NULLs are counted as missing, and whose values are sampled.
    pub subject: Option<String>,
    /// Table-level checks: an aggregate computing the observed value, and a
    /// predicate over it (named `__value`) saying whether it passes.
    pub table_level: Option<(String, String)>,
    /// Needs a per-key duplicate count (`unique`), named `__wb_dup`.
    pub duplicates_over: Option<Vec<String>>,
    /// Needs a lookup of `column` in `(table, field)` (`relationships`): the
    /// matched value is `__wb_ref` (NULL when there is none).
    pub lookup: Option<(String, String, String)>,
}

impl CheckResult {
    /// This result as `workbench.validations` stores it.
    pub fn record(&self, table: &str, run_id: Option<&str>) -> crate::meta::ValidationRecord {
        crate::meta::ValidationRecord {
            run_id: run_id.map(str::to_string),
            table_name: table.to_string(),
            expectation: self.expectation.clone(),
            columns: self.columns.clone(),
            success: self.success,
            element_count: self.element_count,
            unexpected_count: self.unexpected_count,
            unexpected_percent: self.unexpected_percent,
            missing_count: self.missing_count,
            partial_unexpected_list: serde_json::to_string(&self.partial_unexpected_list).unwrap_or_default(),
            observed_value: self.observed_value.clone(),
            validation_id: None,
            validated_by: None,
        }
    }
}

impl Check {
    pub fn label(&self) -> String {
        if self.columns.is_empty() {
            self.kind.clone()
        } else {
            format!("{}({})", self.kind, self.columns.join(", "))
        }
    }
}

/// What a check found.
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub expectation: String,
    pub columns: String,
    pub success: bool,
    pub element_count: i64,
    pub unexpected_count: i64,
    pub unexpected_percent: f64,
    pub missing_count: i64,
    pub partial_unexpected_list: Vec<String>,
    pub observed_value: Option<String>,
}

fn q(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn literal(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => format!("'{}'", s.replace('\'', "''")),
        serde_json::Value::Null => "NULL".into(),
        other => other.to_string(),
    }
}

fn invalid(message: String) -> DataFusionError {
    DataFusionError::Configuration(message)
}

fn column_arg(kind: &str, args: &serde_json::Value) -> Result<String> {
    args.get("column")
        .and_then(|c| c.as_str())
        .map(str::to_string)
        .ok_or_else(|| invalid(format!("{kind} needs `column`, e.g. {kind}: {{ column: amount, ... }}")))
}

/// Where `row_count_anomaly` receives the row counts of earlier runs.
pub const ANOMALY_HISTORY: &str = "__history";
/// Earlier runs `row_count_anomaly` needs before it judges.
pub const ANOMALY_MIN_HISTORY: usize = 3;

/// `row_count_anomaly`'s `max_deviation` (default 3).
pub fn max_deviation(args: &serde_json::Value) -> f64 {
    args.get("max_deviation").and_then(|v| v.as_f64()).unwrap_or(3.0)
}

/// The row counts a run may have given earlier runs' `history`: the mean
/// plus or minus `max_deviation` sample standard deviations. A perfectly
/// steady history would flag any change, so the spread is at least 5% of
/// the mean (and one row). `None` with fewer than three earlier runs.
pub fn anomaly_bounds(history: &[f64], max_deviation: f64) -> Option<(i64, i64)> {
    if history.len() < ANOMALY_MIN_HISTORY {
        return None;
    }
    let n = history.len() as f64;
    let mean = history.iter().sum::<f64>() / n;
    let variance = history.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let spread = variance.sqrt().max(mean.abs() * 0.05).max(1.0);
    Some(((mean - max_deviation * spread).floor().max(0.0) as i64, (mean + max_deviation * spread).ceil() as i64))
}

/// Turn declared expectations into checks.
pub fn compile(expectation: &Expectation) -> Result<Vec<Check>> {
    let kind = expectation.kind.as_str();
    let args = &expectation.args;
    let base = |columns: Vec<String>| Check {
        kind: kind.to_string(),
        columns,
        mostly: expectation.mostly,
        failing: None,
        subject: None,
        table_level: None,
        duplicates_over: None,
        lookup: None,
    };
    let names = |v: &serde_json::Value| -> Vec<String> {
        match v {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(items) => items.iter().filter_map(|i| i.as_str().map(str::to_string)).collect(),
            _ => v.get("columns").or_else(|| v.get("column")).map(|c| match c {
                serde_json::Value::String(s) => vec![s.clone()],
                serde_json::Value::Array(items) => items.iter().filter_map(|i| i.as_str().map(str::to_string)).collect(),
                _ => vec![],
            }).unwrap_or_default(),
        }
    };
    // A YAML scalar like `n` or `y` reads as a boolean: say so rather than
    // check nothing.
    let names = |v: &serde_json::Value| -> Result<Vec<String>> {
        let found = names(v);
        if found.is_empty() {
            return Err(invalid(format!(
                "{kind} names no column (got {v}); write the column name in quotes if YAML reads it as a boolean or number, e.g. {kind}: \"n\""
            )));
        }
        Ok(found)
    };
    Ok(match kind {
        "not_null" => names(args)?
            .into_iter()
            .map(|c| Check {
                failing: Some(format!("{} IS NULL", q(&c))),
                subject: Some(c.clone()),
                ..base(vec![c])
            })
            .collect(),
        "unique" => {
            let columns = names(args)?;
            // As in SQL UNIQUE: rows with a NULL in the key are not duplicates.
            let keys_present = columns.iter().map(|c| format!("{} IS NOT NULL", q(c))).collect::<Vec<_>>().join(" AND ");
            vec![Check {
                failing: Some(format!("__wb_dup > 1 AND {keys_present}")),
                subject: (columns.len() == 1).then(|| columns[0].clone()),
                duplicates_over: Some(columns.clone()),
                ..base(columns)
            }]
        }
        "accepted_values" => {
            let column = column_arg(kind, args)?;
            let values = args
                .get("values")
                .and_then(|v| v.as_array())
                .ok_or_else(|| invalid("accepted_values needs `values: [...]`".into()))?;
            let list = values
                .iter()
                .map(|v| match v {
                    serde_json::Value::String(_) => literal(v),
                    other => format!("'{other}'"),
                })
                .collect::<Vec<_>>()
                .join(", ");
            vec![Check {
                failing: Some(format!("{c} IS NOT NULL AND CAST({c} AS TEXT) NOT IN ({list})", c = q(&column))),
                subject: Some(column.clone()),
                ..base(vec![column])
            }]
        }
        "between" => {
            let column = column_arg(kind, args)?;
            let mut conditions = Vec::new();
            if let Some(min) = args.get("min") {
                conditions.push(format!("{} < {}", q(&column), literal(min)));
            }
            if let Some(max) = args.get("max") {
                conditions.push(format!("{} > {}", q(&column), literal(max)));
            }
            if conditions.is_empty() {
                return Err(invalid("between needs `min` and/or `max`".into()));
            }
            vec![Check {
                failing: Some(format!("({})", conditions.join(" OR "))),
                subject: Some(column.clone()),
                ..base(vec![column])
            }]
        }
        "regex" => {
            let column = column_arg(kind, args)?;
            let pattern = args.get("pattern").and_then(|p| p.as_str()).ok_or_else(|| invalid("regex needs `pattern`".into()))?;
            vec![Check {
                failing: Some(format!("{c} IS NOT NULL AND NOT regexp_like(CAST({c} AS TEXT), {p})", c = q(&column), p = literal(&serde_json::json!(pattern)))),
                subject: Some(column.clone()),
                ..base(vec![column])
            }]
        }
        "length_between" => {
            let column = column_arg(kind, args)?;
            let len = format!("character_length(CAST({} AS TEXT))", q(&column));
            let mut conditions = Vec::new();
            if let Some(min) = args.get("min") {
                conditions.push(format!("{len} < {}", literal(min)));
            }
            if let Some(max) = args.get("max") {
                conditions.push(format!("{len} > {}", literal(max)));
            }
            vec![Check {
                failing: Some(format!("({})", conditions.join(" OR "))),
                subject: Some(column.clone()),
                ..base(vec![column])
            }]
        }
        "expression" => {
            let sql = args.as_str().or_else(|| args.get("sql").and_then(|s| s.as_str())).ok_or_else(|| invalid("expression takes a SQL predicate".into()))?;
            vec![Check {
                failing: Some(format!("NOT COALESCE(({sql}), false)")),
                ..base(vec![])
            }]
        }
        "relationships" => {
            let column = column_arg(kind, args)?;
            let to = args.get("to").and_then(|t| t.as_str()).ok_or_else(|| invalid("relationships needs `to: layer.table`".into()))?;
            let field = args.get("field").and_then(|f| f.as_str()).unwrap_or(&column).to_string();
            vec![Check {
                failing: Some(format!("{} IS NOT NULL AND __wb_ref IS NULL", q(&column))),
                subject: Some(column.clone()),
                lookup: Some((column.clone(), to.to_string(), field)),
                ..base(vec![column])
            }]
        }
        "row_count_between" => {
            let mut conditions = vec!["true".to_string()];
            if let Some(min) = args.get("min") {
                conditions.push(format!("__value >= {}", literal(min)));
            }
            if let Some(max) = args.get("max") {
                conditions.push(format!("__value <= {}", literal(max)));
            }
            vec![Check {
                table_level: Some(("count(*)".into(), conditions.join(" AND "))),
                ..base(vec![])
            }]
        }
        "freshness" => {
            let column = column_arg(kind, args)?;
            let max_age = args.get("max_age").and_then(|m| m.as_str()).ok_or_else(|| invalid("freshness needs `max_age`, e.g. '2 days'".into()))?;
            vec![Check {
                table_level: Some((
                    format!("max(CAST({} AS TIMESTAMP))", q(&column)),
                    format!("__value >= CAST(now() AS TIMESTAMP) - INTERVAL {}", literal(&serde_json::json!(max_age))),
                )),
                ..base(vec![column])
            }]
        }
        "row_count_anomaly" => {
            // The pipeline passes the rows of earlier runs in `__history`.
            let history: Vec<f64> = args
                .get(ANOMALY_HISTORY)
                .and_then(|h| h.as_array())
                .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
                .unwrap_or_default();
            let condition = match anomaly_bounds(&history, max_deviation(args)) {
                Some((low, high)) => format!("__value >= {low} AND __value <= {high}"),
                // Too little history to judge: passes, observed value shown.
                None => "true".to_string(),
            };
            vec![Check {
                table_level: Some(("count(*)".into(), condition)),
                ..base(vec![])
            }]
        }
        other => return Err(invalid(format!("unknown expectation '{other}'"))),
    })
}

fn int(batch: &RecordBatch, i: usize) -> i64 {
    cast(batch.column(i), &DataType::Int64)
        .ok()
        .map(|c| {
            let c = c.as_primitive::<Int64Type>();
            if c.is_empty() || c.is_null(0) { 0 } else { c.value(0) }
        })
        .unwrap_or(0)
}

/// The rows of `view` plus the helper columns `checks` need (duplicate
/// counts, lookups), and each check's failing predicate over them.
pub fn augmented_source(view: &str, checks: &[&Check]) -> (String, Vec<String>) {
    let mut windows = Vec::new();
    let mut joins = Vec::new();
    let mut predicates = Vec::new();
    for (i, check) in checks.iter().enumerate() {
        let mut predicate = check.failing.clone().unwrap_or_else(|| "false".into());
        if let Some(over) = &check.duplicates_over {
            // The duplicated keys by a hash aggregate, joined back (rows with
            // a NULL key match nothing, so they are never duplicates).
            let alias = format!("__wb_dup_{i}");
            let keys = over.iter().map(|c| q(c)).collect::<Vec<_>>().join(", ");
            let on = over.iter().map(|c| format!("v.{c} = d{i}.{c}", c = q(c))).collect::<Vec<_>>().join(" AND ");
            joins.push(format!(
                "LEFT JOIN (SELECT {keys}, count(*) AS {alias} FROM {view} GROUP BY {keys} HAVING count(*) > 1) d{i} ON {on}"
            ));
            windows.push(format!("d{i}.{alias}"));
            predicate = predicate.replace("__wb_dup", &alias);
        }
        if let Some((column, table, field)) = &check.lookup {
            let alias = format!("__wb_ref_{i}");
            joins.push(format!(
                "LEFT JOIN (SELECT DISTINCT {f} AS {alias} FROM {table} WHERE {f} IS NOT NULL) r{i} ON v.{c} = r{i}.{alias}",
                f = q(field),
                c = q(column)
            ));
            windows.push(format!("r{i}.{alias}"));
            predicate = predicate.replace("__wb_ref", &alias);
        }
        predicates.push(predicate);
    }
    if windows.is_empty() {
        return (view.to_string(), predicates);
    }
    (format!("(SELECT v.*, {} FROM {view} v {})", windows.join(", "), joins.join(" ")), predicates)
}

/// Evaluate `check` over the table or view named `view`.
pub async fn evaluate(ctx: &SessionContext, view: &str, check: &Check) -> Result<CheckResult> {
    if let Some((observed, passes)) = &check.table_level {
        let batches = ctx
            .sql(&format!(
                "SELECT __elements, CAST(__value AS TEXT) AS __observed, COALESCE({passes}, false) AS __passes \
                 FROM (SELECT count(*) AS __elements, {observed} AS __value FROM {view})"
            ))
            .await?
            .collect()
            .await?;
        let batch = &batches[0];
        let observed = cast(batch.column(1), &DataType::Utf8)?;
        let observed = observed.as_string::<i32>();
        let success = batch.column(2).as_boolean().value(0);
        return Ok(CheckResult {
            expectation: check.kind.clone(),
            columns: check.columns.join(", "),
            success,
            element_count: int(batch, 0),
            unexpected_count: if success { 0 } else { 1 },
            unexpected_percent: if success { 0.0 } else { 100.0 },
            missing_count: 0,
            partial_unexpected_list: vec![],
            observed_value: (!observed.is_null(0)).then(|| observed.value(0).to_string()),
        });
    }
    if let (Some(over), None) = (&check.duplicates_over, &check.lookup) {
        return unique_result(ctx, view, check, over).await;
    }
    let (source, predicates) = augmented_source(view, &[check]);
    let failing = predicates[0].as_str();
    let missing = match &check.subject {
        Some(c) => format!("count(*) FILTER (WHERE {} IS NULL) AS __missing", q(c)),
        None => "0 AS __missing".into(),
    };
    let counts = format!("SELECT count(*) AS __elements, count(*) FILTER (WHERE {failing}) AS __unexpected, {missing} FROM {source} AS t");
    counted(ctx, check, &counts, &source, failing).await
}

/// Run `counts` (one row: elements, unexpected, missing) and make the
/// row-level result, sampling the rows of `source` where `failing` holds.
async fn counted(ctx: &SessionContext, check: &Check, counts: &str, source: &str, failing: &str) -> Result<CheckResult> {
    let batches = ctx
        .sql(counts)
        .await
        .map_err(|e| DataFusionError::Plan(format!("{}: {}", check.label(), e.strip_backtrace())))?
        .collect()
        .await?;
    let batch = &batches[0];
    let (elements, unexpected, missing) = (int(batch, 0), int(batch, 1), int(batch, 2));
    row_result(ctx, check, source, failing, elements, unexpected, missing).await
}

/// `unique`: one hash aggregate per key finds the duplicated keys; the rows
/// they cover are the unexpected ones, the keys themselves the samples.
async fn unique_result(ctx: &SessionContext, view: &str, check: &Check, over: &[String]) -> Result<CheckResult> {
    let keys = over.iter().map(|c| q(c)).collect::<Vec<_>>().join(", ");
    let present = over.iter().map(|c| format!("{} IS NOT NULL", q(c))).collect::<Vec<_>>().join(" AND ");
    let missing = match &check.subject {
        Some(c) => format!("(SELECT count(*) FILTER (WHERE {} IS NULL) FROM {view})", q(c)),
        None => "0".into(),
    };
    let groups = format!("SELECT {keys}, count(*) AS __rows FROM {view} WHERE {present} GROUP BY {keys}");
    let counts = format!(
        "SELECT (SELECT count(*) FROM {view}) AS __elements, \
                (SELECT coalesce(sum(__rows), 0) FROM ({groups}) WHERE __rows > 1) AS __unexpected, \
                {missing} AS __missing"
    );
    let duplicated = format!("(SELECT {keys} FROM ({groups}) WHERE __rows > 1)");
    counted(ctx, check, &counts, &duplicated, "true").await
}

/// The result of a row-level check from its counts, with up to 20 distinct
/// failing values as samples.
async fn row_result(
    ctx: &SessionContext,
    check: &Check,
    source: &str,
    failing: &str,
    elements: i64,
    unexpected: i64,
    missing: i64,
) -> Result<CheckResult> {
    let sample_column = match (&check.subject, &check.duplicates_over) {
        (Some(c), _) => format!("CAST({} AS TEXT)", q(c)),
        (None, Some(columns)) => format!(
            "concat_ws(', ', {})",
            columns.iter().map(|c| format!("CAST({} AS TEXT)", q(c))).collect::<Vec<_>>().join(", ")
        ),
        _ => "NULL".into(),
    };
    let mut samples = Vec::new();
    if unexpected > 0 && sample_column != "NULL" {
        for batch in ctx
            .sql(&format!("SELECT DISTINCT {sample_column} AS v FROM {source} AS t WHERE {failing} ORDER BY 1 LIMIT 20"))
            .await?
            .collect()
            .await?
        {
            let values = cast(batch.column(0), &DataType::Utf8)?;
            let values = values.as_string::<i32>();
            for i in 0..values.len() {
                samples.push(if values.is_null(i) { "NULL".into() } else { values.value(i).to_string() });
            }
        }
    }
    let percent = if elements == 0 { 0.0 } else { unexpected as f64 * 100.0 / elements as f64 };
    Ok(CheckResult {
        expectation: check.kind.clone(),
        columns: check.columns.join(", "),
        success: percent <= (1.0 - check.mostly) * 100.0 + 1e-9,
        element_count: elements,
        unexpected_count: unexpected,
        unexpected_percent: percent,
        missing_count: missing,
        partial_unexpected_list: samples,
        observed_value: None,
    })
}

/// Evaluate `checks` over `view`, the plain row-level ones together in one
/// scan (one `count(*) FILTER (WHERE ...)` per check); checks that need a
/// window (`unique`), a lookup (`relationships`) or a table-level aggregate
/// run on their own. Results come back in the order of `checks`.
pub async fn evaluate_all(ctx: &SessionContext, view: &str, checks: &[Check]) -> Result<Vec<CheckResult>> {
    let simple: Vec<usize> = (0..checks.len())
        .filter(|&i| {
            let c = &checks[i];
            c.failing.is_some() && c.table_level.is_none() && c.duplicates_over.is_none() && c.lookup.is_none()
        })
        .collect();
    let mut counts: std::collections::HashMap<usize, (i64, i64, i64)> = std::collections::HashMap::new();
    if simple.len() > 1 {
        let mut columns = vec!["count(*) AS __elements".to_string()];
        for (n, &i) in simple.iter().enumerate() {
            let check = &checks[i];
            columns.push(format!(
                "count(*) FILTER (WHERE {}) AS __unexpected_{n}",
                check.failing.as_deref().unwrap_or("false")
            ));
            columns.push(match &check.subject {
                Some(c) => format!("count(*) FILTER (WHERE {} IS NULL) AS __missing_{n}", q(c)),
                None => format!("0 AS __missing_{n}"),
            });
        }
        // If the combined query cannot be planned, each check runs on its own
        // below and reports its own error.
        if let Ok(frame) = ctx.sql(&format!("SELECT {} FROM {view} AS t", columns.join(", "))).await {
            let batches = frame.collect().await?;
            let batch = &batches[0];
            let elements = int(batch, 0);
            for (n, &i) in simple.iter().enumerate() {
                counts.insert(i, (elements, int(batch, 1 + 2 * n), int(batch, 2 + 2 * n)));
            }
        }
    }
    let mut results = Vec::with_capacity(checks.len());
    for (i, check) in checks.iter().enumerate() {
        results.push(match counts.get(&i) {
            Some(&(elements, unexpected, missing)) => {
                let failing = check.failing.as_deref().unwrap_or("false");
                row_result(ctx, check, view, failing, elements, unexpected, missing).await?
            }
            None => evaluate(ctx, view, check).await?,
        });
    }
    Ok(results)
}

/// Register `df` under a private name for checks; returns the name.
pub fn register_view(ctx: &SessionContext, df: DataFrame) -> Result<String> {
    let name = format!("__wb_check_{}", uuid::Uuid::new_v4().simple());
    ctx.register_table(name.as_str(), df.into_view())?;
    Ok(name)
}
