//! Silver rules as DataFusion DataFrame operations: each rule adds logical
//! plan nodes, so the whole chain stays vectorized and streams. Rules that
//! can reject data (type casts, category maps) check it with a query of their
//! own and report column, row and value.

use std::collections::HashSet;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::Column;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::{Expr, ExprFunctionExt, SortExpr, col as _col, when};
use datafusion::prelude::{DataFrame, SessionContext, lit, try_cast};

use crate::spec::{Cast, CastFormat, Keep, Located, MeltValues, Rule, TextCase, Unmapped};
use crate::spec::Location;

#[derive(Debug, thiserror::Error)]
#[error("{location}: {rule}: {message}")]
pub struct RuleError {
    pub location: Location,
    pub rule: &'static str,
    pub message: String,
}

/// A column by exact name (no SQL identifier parsing: names may have
/// accents, capitals and spaces, as spreadsheet headers do).
pub fn ident(name: &str) -> Expr {
    Expr::Column(Column::from_name(name))
}

struct Applier<'a> {
    ctx: &'a SessionContext,
    location: &'a Location,
    rule: &'static str,
    /// Leave data checks to the reader of the result (see [`apply_deferred`]).
    defer: bool,
}

impl Applier<'_> {
    fn fail(&self, message: impl Into<String>) -> RuleError {
        RuleError {
            location: self.location.clone(),
            rule: self.rule,
            message: message.into(),
        }
    }

    fn df(&self, result: datafusion::error::Result<DataFrame>) -> Result<DataFrame, RuleError> {
        result.map_err(|e| self.fail(e.strip_backtrace()))
    }

    fn require(&self, df: &DataFrame, columns: &[&String]) -> Result<(), RuleError> {
        let present: HashSet<&str> = df.schema().fields().iter().map(|f| f.name().as_str()).collect();
        for c in columns {
            if !present.contains(c.as_str()) {
                let mut available: Vec<&str> = present.iter().copied().filter(|n| !n.starts_with('_')).collect();
                available.sort();
                return Err(self.fail(format!(
                    "column '{c}' does not exist at this point; available columns: {}",
                    available.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Where a row came from, for messages: `row N` (and file) when known.
    fn row_reference(df: &DataFrame) -> Vec<Expr> {
        let mut exprs = Vec::new();
        for (name, data_type) in [("_row_number", DataType::Int64), ("_source_file", DataType::Utf8)] {
            if df.schema().field_with_unqualified_name(name).is_ok() {
                exprs.push(datafusion::logical_expr::cast(ident(name), data_type).alias(name));
            }
        }
        exprs
    }

    /// How many rows match each of `conditions`, counted in one scan.
    async fn count_each(&self, df: &DataFrame, conditions: Vec<Expr>) -> Result<Vec<i64>, RuleError> {
        if conditions.is_empty() {
            return Ok(vec![]);
        }
        let counts: Vec<Expr> = conditions
            .into_iter()
            .enumerate()
            .map(|(i, condition)| {
                count(lit(1))
                    .filter(condition)
                    .build()
                    .map(|e| e.alias(format!("__wb_n{i}")))
            })
            .collect::<datafusion::error::Result<_>>()
            .map_err(|e| self.fail(e.strip_backtrace()))?;
        let width = counts.len();
        let counted = self.df(df.clone().aggregate(vec![], counts))?;
        let batches = counted.collect().await.map_err(|e| self.fail(e.strip_backtrace()))?;
        let row = batches.iter().find(|b| b.num_rows() > 0);
        Ok((0..width)
            .map(|i| row.map_or(0, |b| b.column(i).as_primitive::<Int64Type>().value(0)))
            .collect())
    }

    /// Fail with column, count and examples at the first cast in `checked`
    /// (cast, condition of a rejected value) that rejects a value of `df`,
    /// all counted in one scan.
    async fn check_casts(&self, df: &DataFrame, checked: Vec<(&Cast, Expr)>) -> Result<(), RuleError> {
        let counts = self.count_each(df, checked.iter().map(|(_, bad)| bad.clone()).collect()).await?;
        let Some(((cast, bad), _)) = checked.into_iter().zip(counts).find(|(_, n)| *n > 0) else {
            return Ok(());
        };
        let (n, examples) = self.examples(df, bad, ident(&cast.column)).await?;
        Err(self.fail(format!(
            "column {}: {n} value(s) cannot be read as {}{}: {}; fix the data, set a `format`, or add `on_error: null` to turn them into NULL",
            cast.column,
            cast.type_name,
            match &cast.format {
                Some(CastFormat::DecimalComma) => " (format es: 1.234,56)",
                Some(CastFormat::DecimalPoint) => " (format en: 1,234.56)",
                Some(CastFormat::Pattern(_)) => " (with the given date pattern)",
                None => "",
            },
            examples.join(", ")
        )))
    }

    /// Count rows matching `bad` and describe the first few using `value`.
    async fn examples(&self, df: &DataFrame, bad: Expr, value: Expr) -> Result<(i64, Vec<String>), RuleError> {
        let counted = self.df(df.clone().filter(bad.clone()).and_then(|d| d.aggregate(vec![], vec![count(lit(1)).alias("n")])))?;
        let batches = counted.collect().await.map_err(|e| self.fail(e.strip_backtrace()))?;
        let n = batches
            .first()
            .filter(|b| b.num_rows() > 0)
            .map(|b| b.column(0).as_primitive::<Int64Type>().value(0))
            .unwrap_or(0);
        if n == 0 {
            return Ok((0, vec![]));
        }
        let mut select = vec![datafusion::logical_expr::cast(value, DataType::Utf8).alias("__value")];
        select.extend(Self::row_reference(df));
        let sample = self.df(df.clone().filter(bad).and_then(|d| d.select(select)).and_then(|d| d.limit(0, Some(5))))?;
        let batches = sample.collect().await.map_err(|e| self.fail(e.strip_backtrace()))?;
        let mut out = Vec::new();
        for batch in batches {
            let values = batch.column(0).as_string::<i32>();
            let rows = batch.column_by_name("_row_number").map(|c| c.as_primitive::<Int64Type>().clone());
            let files = batch.column_by_name("_source_file").map(|c| c.as_string::<i32>().clone());
            for i in 0..batch.num_rows() {
                let mut place = String::new();
                if let Some(files) = &files {
                    place.push_str(&format!("{} ", files.value(i)));
                }
                if let Some(rows) = &rows {
                    place.push_str(&format!("row {}", rows.value(i)));
                }
                let place = if place.is_empty() { "a row".to_string() } else { place.trim().to_string() };
                out.push(format!("{place}: '{}'", values.value(i)));
            }
        }
        Ok((n, out))
    }
}

/// Apply `rules` in order. Rules that can reject data check it now, each
/// with a query of its own.
pub async fn apply(ctx: &SessionContext, df: DataFrame, rules: &[Located<Rule>]) -> Result<DataFrame, RuleError> {
    Ok(apply_all(ctx, df, rules, false).await?.0)
}

/// Apply `rules` in order, with the data checks of `type_cast` riding along
/// whatever reads the result (the silver write) instead of a scan of their
/// own before it, when no later rule removes rows or columns or queries the
/// data (those checks run now). Reading the result fails at the first value
/// a cast rejects; [`Deferred::explain`] then says which rule, column and values.
pub async fn apply_deferred(
    ctx: &SessionContext,
    df: DataFrame,
    rules: &[Located<Rule>],
) -> Result<(DataFrame, Deferred), RuleError> {
    let (df, pending) = apply_all(ctx, df, rules, true).await?;
    Ok((df, Deferred { pending }))
}

/// The data checks [`apply_deferred`] left to the reader of its result
/// (none by default).
#[derive(Default)]
pub struct Deferred {
    pending: Vec<PendingCasts>,
}

/// One `type_cast` rule's checks: its input and, per checked cast, the
/// condition of a rejected value.
struct PendingCasts {
    location: Location,
    rule: &'static str,
    input: DataFrame,
    casts: Vec<(Cast, Expr)>,
}

impl Deferred {
    /// After reading the rules' result failed: the first rule whose checks
    /// reject values, reported as [`apply`] would have reported it, or None
    /// when every check passes (the failure came from elsewhere).
    pub async fn explain(&self, ctx: &SessionContext) -> Option<RuleError> {
        for p in &self.pending {
            let a = Applier { ctx, location: &p.location, rule: p.rule, defer: false };
            let checked = p.casts.iter().map(|(c, bad)| (c, bad.clone())).collect();
            if let Err(err) = a.check_casts(&p.input, checked).await {
                return Some(err);
            }
        }
        None
    }
}

async fn apply_all(
    ctx: &SessionContext,
    mut df: DataFrame,
    rules: &[Located<Rule>],
    defer: bool,
) -> Result<(DataFrame, Vec<PendingCasts>), RuleError> {
    let mut pending = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let a = Applier {
            ctx,
            location: &rule.location,
            rule: rule.value.name(),
            // A check rides along the write only when every row and column it
            // checks reaches the write and no later rule reads the data itself;
            // otherwise it runs now, as in `apply`.
            defer: defer && rules[i + 1..].iter().all(|later| keeps_rows_and_columns(&later.value)),
        };
        df = apply_one(&a, df, &rule.value, &mut pending).await?;
    }
    Ok((df, pending))
}

/// Whether [`apply_deferred`] plans `rules` as one pass over its input that
/// only the reader of the result runs: no rule checks or queries the data
/// before (a `type_cast` a later rule filters or narrows, a `map_categories`
/// that fails on unmapped values) and none reads the input twice (`melt`
/// unions one read per value column).
pub fn one_pass(rules: &[Located<Rule>]) -> bool {
    rules.iter().enumerate().all(|(i, rule)| match &rule.value {
        Rule::TypeCast(_) => rules[i + 1..].iter().all(|later| keeps_rows_and_columns(&later.value)),
        Rule::MapCategories { mapping, unmapped, .. } => !(*unmapped == Unmapped::Fail && !mapping.is_empty()),
        Rule::Melt { .. } => false,
        _ => true,
    })
}

/// Whether `rule` passes every row and column on (renamed, trimmed or
/// recomputed from them) without running a query of its own.
fn keeps_rows_and_columns(rule: &Rule) -> bool {
    match rule {
        Rule::Rename(_) | Rule::Trim(_) | Rule::Normalize { .. } | Rule::TypeCast(_) | Rule::Derive(_) => true,
        Rule::Select(_)
        | Rule::Drop(_)
        | Rule::MapCategories { .. }
        | Rule::Melt { .. }
        | Rule::Filter(_)
        | Rule::Dedupe { .. } => false,
    }
}

fn text_columns(df: &DataFrame, columns: &Option<Vec<String>>) -> Vec<String> {
    match columns {
        Some(c) => c.clone(),
        None => df
            .schema()
            .fields()
            .iter()
            .filter(|f| matches!(f.data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View))
            .filter(|f| !f.name().starts_with('_'))
            .map(|f| f.name().clone())
            .collect(),
    }
}

async fn apply_one(
    a: &Applier<'_>,
    df: DataFrame,
    rule: &Rule,
    pending: &mut Vec<PendingCasts>,
) -> Result<DataFrame, RuleError> {
    use datafusion::functions::expr_fn::{btrim, lower, regexp_replace, upper};
    let _ = a.ctx;
    match rule {
        Rule::Rename(pairs) => {
            a.require(&df, &pairs.iter().map(|(from, _)| from).collect::<Vec<_>>())?;
            let projection: Vec<Expr> = df
                .schema()
                .fields()
                .iter()
                .map(|f| match pairs.iter().find(|(from, _)| from == f.name()) {
                    Some((from, to)) => ident(from).alias(to),
                    None => ident(f.name()),
                })
                .collect();
            a.df(df.select(projection))
        }
        Rule::Select(columns) => {
            a.require(&df, &columns.iter().collect::<Vec<_>>())?;
            let mut keep: Vec<Expr> = columns.iter().map(|c| ident(c)).collect();
            // Ingest metadata travels with the rows (lineage, dedupe order).
            for f in df.schema().fields() {
                if f.name().starts_with('_') && !columns.contains(f.name()) {
                    keep.push(ident(f.name()));
                }
            }
            a.df(df.select(keep))
        }
        Rule::Drop(columns) => {
            a.require(&df, &columns.iter().collect::<Vec<_>>())?;
            let names: Vec<&str> = columns.iter().map(|c| c.as_str()).collect();
            a.df(df.drop_columns(&names))
        }
        Rule::Trim(columns) => {
            let columns = text_columns(&df, columns);
            a.require(&df, &columns.iter().collect::<Vec<_>>())?;
            let mut df = df;
            for c in &columns {
                df = a.df(df.with_column(c, btrim(vec![ident(c)])))?;
            }
            Ok(df)
        }
        Rule::Normalize { columns, case, collapse_spaces } => {
            let columns = text_columns(&df, columns);
            a.require(&df, &columns.iter().collect::<Vec<_>>())?;
            let mut df = df;
            for c in &columns {
                let mut e = btrim(vec![ident(c)]);
                if *collapse_spaces {
                    e = regexp_replace(e, lit(r"\s+"), lit(" "), Some(lit("g")));
                }
                e = match case {
                    Some(TextCase::Lower) => lower(e),
                    Some(TextCase::Upper) => upper(e),
                    None => e,
                };
                df = a.df(df.with_column(c, e))?;
            }
            Ok(df)
        }
        Rule::TypeCast(casts) => {
            a.require(&df, &casts.iter().map(|c| &c.column).collect::<Vec<_>>())?;
            // Every cast reads its column as it was before this rule, so one
            // scan counts the values that fail each of them: before the rows
            // are written, or as they are written when deferred.
            let mut converted = Vec::with_capacity(casts.len());
            let mut checked = Vec::new();
            for cast in casts {
                let source_type = df
                    .schema()
                    .field_with_unqualified_name(&cast.column)
                    .map(|f| f.data_type().clone())
                    .map_err(|e| a.fail(e.to_string()))?;
                let mut expr = cast_expr(cast, &source_type);
                if !cast.null_on_error {
                    let original = ident(&cast.column);
                    let mut bad = original.clone().is_not_null().and(expr.clone().is_null());
                    if matches!(source_type, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
                        // blank text becomes NULL without being an error
                        bad = bad.and(!workbench_udfs::tidy::is_blank_udf().call(vec![original]));
                    }
                    if a.defer {
                        expr = workbench_udfs::tidy::guard_udf().call(vec![expr, bad.clone()]);
                    }
                    checked.push((cast, bad));
                }
                converted.push((cast, expr));
            }
            if !a.defer {
                a.check_casts(&df, checked).await?;
            } else if !checked.is_empty() {
                pending.push(PendingCasts {
                    location: a.location.clone(),
                    rule: a.rule,
                    input: df.clone(),
                    casts: checked.into_iter().map(|(c, bad)| (c.clone(), bad)).collect(),
                });
            }
            let mut df = df;
            for (cast, expr) in converted {
                df = a.df(df.with_column(&cast.column, expr))?;
            }
            Ok(df)
        }
        Rule::MapCategories { column, mapping, unmapped } => {
            a.require(&df, &[column])?;
            let source = datafusion::logical_expr::cast(ident(column), DataType::Utf8);
            let known: Vec<Expr> = mapping.iter().map(|(k, _)| lit(k.clone())).collect();
            if *unmapped == Unmapped::Fail && !mapping.is_empty() {
                let bad = source.clone().is_not_null().and(source.clone().in_list(known.clone(), true));
                let (n, examples) = a.examples(&df, bad, source.clone()).await?;
                if n > 0 {
                    return Err(a.fail(format!(
                        "column {column}: {n} value(s) have no mapping: {}; add them to `mapping` or set `unmapped: keep` / `unmapped: null`",
                        examples.join(", ")
                    )));
                }
            }
            let otherwise = match unmapped {
                Unmapped::Keep | Unmapped::Fail => source.clone(),
                Unmapped::Null => lit(datafusion::common::ScalarValue::Utf8(None)),
            };
            let mapped = if mapping.is_empty() {
                otherwise
            } else {
                Expr::Case(datafusion::logical_expr::expr::Case {
                    expr: None,
                    when_then_expr: mapping
                        .iter()
                        .map(|(from, to)| (Box::new(source.clone().eq(lit(from.clone()))), Box::new(lit(to.clone()))))
                        .collect(),
                    else_expr: Some(Box::new(otherwise)),
                })
            };
            a.df(df.with_column(column, mapped))
        }
        Rule::Melt { id, values, variable, value } => {
            let names: Vec<String> = df.schema().fields().iter().map(|f| f.name().clone()).collect();
            let value_columns: Vec<String> = match values {
                MeltValues::Columns(c) => c.clone(),
                MeltValues::Pattern(p) => {
                    let re = regex::Regex::new(p).map_err(|e| a.fail(e.to_string()))?;
                    names.iter().filter(|n| !id.contains(n) && re.is_match(n)).cloned().collect()
                }
            };
            if value_columns.is_empty() {
                return Err(a.fail("no value columns to melt; check `values` or `pattern` against the columns"));
            }
            a.require(&df, &id.iter().chain(value_columns.iter()).collect::<Vec<_>>())?;
            let meta: Vec<&String> = names.iter().filter(|n| n.starts_with('_') && !id.contains(n)).collect();
            let mut melted: Option<DataFrame> = None;
            for v in &value_columns {
                let mut select: Vec<Expr> = id.iter().map(|c| ident(c)).collect();
                select.push(lit(v.clone()).alias(variable));
                select.push(datafusion::logical_expr::cast(ident(v), DataType::Utf8).alias(value));
                select.extend(meta.iter().map(|m| ident(m)));
                let part = a.df(df.clone().select(select))?;
                melted = Some(match melted {
                    None => part,
                    Some(m) => a.df(m.union(part))?,
                });
            }
            Ok(melted.expect("at least one value column"))
        }
        Rule::Filter(sql) => {
            let predicate = df.parse_sql_expr(sql).map_err(|e| a.fail(format!("{sql}: {}", e.strip_backtrace())))?;
            a.df(df.filter(predicate))
        }
        Rule::Derive(columns) => {
            let mut df = df;
            for (name, sql) in columns {
                let expr = df.parse_sql_expr(sql).map_err(|e| a.fail(format!("{name} = {sql}: {}", e.strip_backtrace())))?;
                df = a.df(df.with_column(name, expr))?;
            }
            Ok(df)
        }
        Rule::Dedupe { key, keep } => {
            a.require(&df, &key.iter().collect::<Vec<_>>())?;
            let descending = *keep == Keep::Last;
            let mut order: Vec<SortExpr> = Vec::new();
            for name in ["_ingested_at", "_source_file", "_row_number"] {
                if df.schema().field_with_unqualified_name(name).is_ok() {
                    order.push(ident(name).sort(!descending, false));
                }
            }
            let rank = row_number()
                .partition_by(key.iter().map(|k| ident(k)).collect())
                .order_by(order)
                .build()
                .map_err(|e| a.fail(e.to_string()))?;
            let ranked = a.df(df.with_column("__wb_rank", rank))?;
            let kept = a.df(ranked.filter(_col("__wb_rank").eq(lit(1u64))))?;
            a.df(kept.drop_columns(&["__wb_rank"]))
        }
    }
}

/// The expression converting a column per `cast`; NULL where a value cannot
/// be converted (checked separately unless `on_error: null`).
fn cast_expr(cast: &Cast, source_type: &DataType) -> Expr {
    use datafusion::functions::expr_fn::{btrim, lower, regexp_replace, replace};
    let column = ident(&cast.column);
    let is_text = matches!(source_type, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
    if !is_text {
        return try_cast(column, cast.to.clone());
    }
    if let DataType::Decimal128(precision, scale @ 0..) = cast.to {
        // one pass per value, no trimmed copy of the column, no String per value
        let style = match cast.format {
            Some(CastFormat::DecimalComma) => "es",
            Some(CastFormat::DecimalPoint) => "en",
            _ => "plain",
        };
        return workbench_udfs::decimal::parse_decimal_udf().call(vec![
            column,
            lit(i64::from(precision)),
            lit(i64::from(scale)),
            lit(style),
        ]);
    }
    let trimmed = btrim(vec![column]);
    match (&cast.to, &cast.format) {
        (DataType::Boolean, _) => {
            let t = lower(trimmed);
            when(t.clone().in_list(cast.true_values.iter().map(|v| lit(v.to_lowercase())).collect(), false), lit(true))
                .when(t.in_list(cast.false_values.iter().map(|v| lit(v.to_lowercase())).collect(), false), lit(false))
                .otherwise(lit(datafusion::common::ScalarValue::Boolean(None)))
                .expect("a CASE with branches")
        }
        (DataType::Date32 | DataType::Timestamp(..), Some(CastFormat::Pattern(p))) => {
            let parsed = workbench_udfs::tidy::parse_datetime_udf().call(vec![trimmed, lit(p.clone())]);
            try_cast(parsed, cast.to.clone())
        }
        (_, Some(CastFormat::DecimalComma)) => {
            let digits = regexp_replace(trimmed, lit(r"[.\s\x{00A0}]"), lit(""), Some(lit("g")));
            try_cast(replace(digits, lit(","), lit(".")), cast.to.clone())
        }
        (_, Some(CastFormat::DecimalPoint)) => {
            let digits = regexp_replace(trimmed, lit(r"[,\s\x{00A0}]"), lit(""), Some(lit("g")));
            try_cast(digits, cast.to.clone())
        }
        _ => try_cast(trimmed, cast.to.clone()),
    }
}
