//! How many rows a plan produces, and how many distinct values its columns
//! hold, as far as the Delta log tells: the row count of every data file and
//! each column's min/max. The join order rule (`join_order.rs`) compares
//! these estimates, and lake scans ask them whether a filter is selective
//! enough to apply inside the Parquet reader (`layer.rs`); they only ever
//! choose an order or a way to read, never change a result.
//!
//! Without them DataFusion joins in the order the query names its tables and
//! keeps the first-named side as the hash table, so TPC-H Q7 built two hash
//! tables of 1.8M rows where a few thousand would do.

use std::collections::HashMap;

use datafusion::arrow::array::{Array, ArrayRef, Float64Array};
use datafusion::arrow::compute::{cast, max, min};
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, ScalarValue};
use datafusion::logical_expr::expr::{Alias, InList, Like};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, JoinType, LogicalPlan, Operator};
use datafusion::physical_optimizer::pruning::PruningStatistics;
use deltalake::DeltaTable;

/// A column's value range in a table version, from every file's statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Range {
    pub min: f64,
    pub max: f64,
    /// Whole numbers (integers, dates): the range bounds the distinct count.
    pub integral: bool,
}

/// What the Delta log says about one table version.
#[derive(Debug, Clone, Default)]
pub struct TableEstimates {
    pub rows: f64,
    /// By column name; only columns every file has min/max for.
    pub ranges: HashMap<String, Range>,
}

impl TableEstimates {
    /// Row counts and ranges of `table`'s current version. `None` when a file
    /// lacks its row count (written by a tool that keeps no statistics).
    pub fn of(table: &DeltaTable, schema: &Schema) -> Option<TableEstimates> {
        let state = table.snapshot().ok()?;
        let mut rows = 0usize;
        for file in state.log_data().iter() {
            rows += file.num_records()?;
        }
        let log = state.log_data();
        let mut ranges = HashMap::new();
        for field in schema.fields() {
            let column = Column::from_name(field.name());
            let integral = match field.data_type() {
                DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => true,
                DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => true,
                DataType::Date32 | DataType::Date64 => true,
                DataType::Float32 | DataType::Float64 | DataType::Decimal128(..) | DataType::Decimal256(..) => false,
                _ => continue,
            };
            let (Some(lo), Some(hi)) = (
                log.min_values(&column).and_then(|a| numbers(&a)).and_then(|a| min(&a)),
                log.max_values(&column).and_then(|a| numbers(&a)).and_then(|a| max(&a)),
            ) else {
                continue;
            };
            ranges.insert(field.name().clone(), Range { min: lo, max: hi, integral });
        }
        Some(TableEstimates { rows: rows as f64, ranges })
    }

    /// What is known of column `name`: its range, and for whole numbers the
    /// distinct count that range allows.
    fn column(&self, name: &str) -> ColumnEstimate {
        let range = self.ranges.get(name).copied();
        let distinct = range.filter(|r| r.integral).map(|r| (r.max - r.min + 1.0).min(self.rows));
        ColumnEstimate { distinct, range }
    }

    /// The share of rows the most selective condition of `filters` keeps on
    /// its own (1 when there is none), the table's columns being `schema`'s.
    pub fn most_selective(&self, schema: &Schema, filters: &[Expr]) -> f64 {
        let columns = schema.fields().iter().map(|f| (Column::from_name(f.name()), self.column(f.name()))).collect();
        let estimate = Estimate { rows: self.rows, columns };
        filters
            .iter()
            .flat_map(split_conjunction)
            .map(|condition| estimate.selectivity(&unqualified(condition)))
            .fold(1.0, f64::min)
    }
}

/// Per-file min or max values as f64; `None` if any file lacks them.
fn numbers(values: &ArrayRef) -> Option<Float64Array> {
    if values.null_count() > 0 || values.is_empty() {
        return None;
    }
    let values = match values.data_type() {
        DataType::Date32 => cast(values, &DataType::Int32).ok()?,
        DataType::Date64 => cast(values, &DataType::Int64).ok()?,
        _ => values.clone(),
    };
    let floats = cast(&values, &DataType::Float64).ok()?;
    floats.as_any().downcast_ref::<Float64Array>().cloned()
}

/// A plan's estimated output: rows, and per output column what is known.
#[derive(Debug, Clone, Default)]
pub struct Estimate {
    pub rows: f64,
    pub columns: HashMap<Column, ColumnEstimate>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ColumnEstimate {
    pub distinct: Option<f64>,
    pub range: Option<Range>,
}

/// Where base tables' estimates come from (the lake's tables).
pub trait Source {
    fn table(&self, scan: &datafusion::logical_expr::TableScan) -> Option<std::sync::Arc<TableEstimates>>;
}

/// Selectivity of a predicate nothing is known about (Postgres uses 0.5 for
/// an unknown boolean, 1/3 for a range, 0.005 for equality).
/// The same defaults serve DataFusion's filters in `filter_estimates.rs`.
pub(super) const UNKNOWN: f64 = 0.5;
pub(super) const RANGE: f64 = 1.0 / 3.0;
pub(super) const EQUALITY: f64 = 0.1;
pub(super) const PATTERN: f64 = 0.1;
/// `IS NULL` keeps few rows; `IS NOT NULL` the rest.
pub(super) const NULL: f64 = 0.05;

impl Estimate {
    /// The estimate of `plan`, or `None` where a leaf is not a lake table
    /// with statistics (then the order the query gave is kept).
    pub fn of(plan: &LogicalPlan, source: &dyn Source) -> Option<Estimate> {
        match plan {
            LogicalPlan::TableScan(scan) => {
                let table = source.table(scan)?;
                let mut columns = HashMap::new();
                for (qualifier, field) in scan.projected_schema.iter() {
                    columns.insert(Column::new(qualifier.cloned(), field.name()), table.column(field.name()));
                }
                let mut estimate = Estimate { rows: table.rows, columns };
                for filter in &scan.filters {
                    estimate = estimate.filtered(filter);
                }
                if let Some(fetch) = scan.fetch {
                    estimate.rows = estimate.rows.min(fetch as f64);
                }
                Some(estimate.capped())
            }
            LogicalPlan::Filter(filter) => {
                // A scan that can only prune files keeps the filter above
                // it too ("inexact" pushdown): count each condition once.
                let applied: Vec<Expr> = scan_filters(&filter.input).iter().map(unqualified).collect();
                let mut estimate = Estimate::of(&filter.input, source)?;
                for condition in split_conjunction(&filter.predicate) {
                    if !applied.contains(&unqualified(condition)) {
                        estimate = estimate.filtered(condition);
                    }
                }
                Some(estimate.capped())
            }
            LogicalPlan::Projection(projection) => {
                let input = Estimate::of(&projection.input, source)?;
                let mut columns = HashMap::new();
                for (i, expr) in projection.expr.iter().enumerate() {
                    let (qualifier, field) = projection.schema.qualified_field(i);
                    if let Some(known) = input.column(expr) {
                        columns.insert(Column::new(qualifier.cloned(), field.name()), known);
                    }
                }
                Some(Estimate { rows: input.rows, columns })
            }
            LogicalPlan::SubqueryAlias(alias) => {
                let input = Estimate::of(&alias.input, source)?;
                let columns = input
                    .columns
                    .into_iter()
                    .map(|(c, known)| (Column::new(Some(alias.alias.clone()), c.name), known))
                    .collect();
                Some(Estimate { rows: input.rows, columns })
            }
            LogicalPlan::Aggregate(aggregate) => {
                let input = Estimate::of(&aggregate.input, source)?;
                let mut groups = 1.0f64;
                let mut columns = HashMap::new();
                for (i, expr) in aggregate.group_expr.iter().enumerate() {
                    let known = input.column(expr);
                    groups *= known.and_then(|k| k.distinct).unwrap_or(input.rows);
                    let (qualifier, field) = aggregate.schema.qualified_field(i);
                    if let Some(known) = known {
                        columns.insert(Column::new(qualifier.cloned(), field.name()), known);
                    }
                }
                let rows = if aggregate.group_expr.is_empty() { 1.0 } else { groups.min(input.rows) };
                Some(Estimate { rows, columns }.capped())
            }
            LogicalPlan::Distinct(distinct) => Estimate::of(distinct.input(), source),
            LogicalPlan::Sort(sort) => {
                let mut input = Estimate::of(&sort.input, source)?;
                if let Some(fetch) = sort.fetch {
                    input.rows = input.rows.min(fetch as f64);
                }
                Some(input)
            }
            LogicalPlan::Limit(limit) => {
                let mut input = Estimate::of(&limit.input, source)?;
                if let Ok(datafusion::logical_expr::FetchType::Literal(Some(fetch))) = limit.get_fetch_type() {
                    input.rows = input.rows.min(fetch as f64);
                }
                Some(input.capped())
            }
            LogicalPlan::Window(window) => {
                let input = Estimate::of(&window.input, source)?;
                Some(Estimate { rows: input.rows, columns: input.columns })
            }
            LogicalPlan::Union(union) => {
                let mut rows = 0.0;
                for input in &union.inputs {
                    rows += Estimate::of(input, source)?.rows;
                }
                Some(Estimate { rows, columns: HashMap::new() })
            }
            LogicalPlan::Join(join) => {
                let left = Estimate::of(&join.left, source)?;
                let right = Estimate::of(&join.right, source)?;
                let inner = left.joined(&right, &join.on);
                let rows = match join.join_type {
                    JoinType::Inner => inner.rows,
                    JoinType::Left => inner.rows.max(left.rows),
                    JoinType::Right => inner.rows.max(right.rows),
                    JoinType::Full => inner.rows.max(left.rows).max(right.rows),
                    JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => left.rows * UNKNOWN,
                    JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => right.rows * UNKNOWN,
                };
                let mut joined = Estimate { rows, ..inner };
                if let Some(filter) = &join.filter {
                    joined = joined.filtered(filter);
                }
                Some(joined.capped())
            }
            _ => None,
        }
    }

    /// What is known of the column `expr` names (through casts and aliases).
    pub fn column(&self, expr: &Expr) -> Option<ColumnEstimate> {
        match expr {
            Expr::Column(c) => self.columns.get(c).copied().or_else(|| {
                // An unqualified reference: the one column of that name.
                let mut named = self.columns.iter().filter(|(k, _)| k.name == c.name);
                match (c.relation.is_none(), named.next(), named.next()) {
                    (true, Some((_, known)), None) => Some(*known),
                    _ => None,
                }
            }),
            Expr::Alias(Alias { expr, .. }) => self.column(expr),
            Expr::Cast(c) => self.column(&c.expr),
            Expr::TryCast(c) => self.column(&c.expr),
            _ => None,
        }
    }

    /// Distinct values of `expr`: known, or at most the rows.
    pub fn distinct(&self, expr: &Expr) -> f64 {
        self.column(expr)
            .and_then(|k| k.distinct)
            .unwrap_or(self.rows)
            .clamp(1.0, self.rows.max(1.0))
    }

    /// The estimate after keeping the rows `predicate` holds for.
    pub fn filtered(mut self, predicate: &Expr) -> Estimate {
        self.rows *= self.selectivity(predicate);
        self
    }

    /// Rows at least one, distinct counts at most the rows.
    fn capped(mut self) -> Estimate {
        self.rows = self.rows.max(1.0);
        for known in self.columns.values_mut() {
            known.distinct = known.distinct.map(|d| d.min(self.rows).max(1.0));
        }
        self
    }

    /// The inner join of `self` and `other` on the `(self, other)` key pairs:
    /// each pair keeps 1 / max(distinct) of the cross product (the keys of the
    /// side with fewer distinct values all find a match); the most selective
    /// pair decides, as further pairs are mostly the same key.
    pub fn joined(&self, other: &Estimate, on: &[(Expr, Expr)]) -> Estimate {
        let mut rows = self.rows * other.rows;
        let mut columns = self.columns.clone();
        columns.extend(other.columns.iter().map(|(c, k)| (c.clone(), *k)));
        if let Some(widest) = on
            .iter()
            .map(|(l, r)| self.distinct(l).max(other.distinct(r)))
            .max_by(|a, b| a.total_cmp(b))
        {
            rows /= widest;
        }
        for (l, r) in on {
            let both = self.distinct(l).min(other.distinct(r));
            for side in [l, r] {
                if let Expr::Column(c) = side
                    && let Some(known) = columns.get_mut(c)
                {
                    known.distinct = Some(both);
                }
            }
        }
        Estimate { rows, columns }.capped()
    }

    /// The share of rows `predicate` keeps, from column ranges where a
    /// comparison with a constant has one, else the usual defaults.
    pub fn selectivity(&self, predicate: &Expr) -> f64 {
        let s = match predicate {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
                Operator::And => self.selectivity(left) * self.selectivity(right),
                Operator::Or => {
                    let (a, b) = (self.selectivity(left), self.selectivity(right));
                    a + b - a * b
                }
                Operator::Eq => self.equality(left, right),
                Operator::NotEq => 1.0 - self.equality(left, right),
                Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq => self.comparison(left, *op, right),
                _ => UNKNOWN,
            },
            Expr::Not(inner) => 1.0 - self.selectivity(inner),
            Expr::Between(Between { expr, negated, low, high }) => {
                let inside = match (self.column(expr).and_then(|k| k.range), number(low), number(high)) {
                    (Some(r), Some(lo), Some(hi)) => fraction(r, lo, hi),
                    _ => RANGE * RANGE,
                };
                if *negated { 1.0 - inside } else { inside }
            }
            Expr::InList(InList { expr, list, negated }) => {
                let one = self.equality(expr, &Expr::Literal(ScalarValue::Null, None));
                let any = (one * list.len() as f64).min(1.0);
                if *negated { 1.0 - any } else { any }
            }
            Expr::Like(Like { negated, .. }) | Expr::SimilarTo(Like { negated, .. }) => {
                if *negated { 1.0 - PATTERN } else { PATTERN }
            }
            Expr::IsNull(_) => NULL,
            Expr::IsNotNull(_) => 1.0 - NULL,
            Expr::Literal(ScalarValue::Boolean(Some(b)), _) => {
                if *b { 1.0 } else { 0.0 }
            }
            _ => UNKNOWN,
        };
        s.clamp(0.0, 1.0)
    }

    fn equality(&self, left: &Expr, right: &Expr) -> f64 {
        let known = self.column(left).or_else(|| self.column(right));
        match known.and_then(|k| k.distinct) {
            Some(d) => 1.0 / d.max(1.0),
            None => EQUALITY,
        }
    }

    fn comparison(&self, left: &Expr, op: Operator, right: &Expr) -> f64 {
        let (range, value, op) = match (self.column(left).and_then(|k| k.range), number(right)) {
            (Some(r), Some(v)) => (r, v, op),
            _ => match (self.column(right).and_then(|k| k.range), number(left), op.swap()) {
                (Some(r), Some(v), Some(op)) => (r, v, op),
                _ => return RANGE,
            },
        };
        compared(range, op, value)
    }
}

/// The share of `range` that `column op value` keeps (`op` a comparison,
/// the column on its left).
pub(super) fn compared(range: Range, op: Operator, value: f64) -> f64 {
    match op {
        Operator::Lt | Operator::LtEq => fraction(range, range.min, value),
        _ => fraction(range, value, range.max),
    }
}

/// The filters pushed into the scan under `plan` (through renames).
fn scan_filters(plan: &LogicalPlan) -> &[Expr] {
    match plan {
        LogicalPlan::TableScan(scan) => &scan.filters,
        LogicalPlan::SubqueryAlias(alias) => scan_filters(&alias.input),
        LogicalPlan::Projection(projection) => scan_filters(&projection.input),
        _ => &[],
    }
}

/// `expr` with its columns' qualifiers dropped (`n1.n_name` is `nation.n_name`).
fn unqualified(expr: &Expr) -> Expr {
    expr.clone()
        .transform_up(|e| {
            Ok(match e {
                Expr::Column(c) if c.relation.is_some() => Transformed::yes(Expr::Column(Column::from_name(c.name))),
                other => Transformed::no(other),
            })
        })
        .map(|t| t.data)
        .unwrap_or_else(|_| expr.clone())
}

/// The share of `range` that `[lo, hi]` covers.
fn fraction(range: Range, lo: f64, hi: f64) -> f64 {
    let width = range.max - range.min;
    if width <= 0.0 {
        return if lo <= range.min && range.max <= hi { 1.0 } else { 0.0 };
    }
    ((hi.min(range.max) - lo.max(range.min)) / width).clamp(0.0, 1.0)
}

/// A constant as a number on the same scale as `Range` (dates in days).
fn number(expr: &Expr) -> Option<f64> {
    match expr {
        Expr::Literal(value, _) => scalar_number(value),
        Expr::Cast(c) => number(&c.expr),
        Expr::TryCast(c) => number(&c.expr),
        _ => None,
    }
}

/// A value as a number on the same scale as `Range` (dates in days).
pub(super) fn scalar_number(value: &ScalarValue) -> Option<f64> {
    match value {
        ScalarValue::Date32(Some(d)) => Some(*d as f64),
        ScalarValue::Date64(Some(ms)) => Some(*ms as f64),
        ScalarValue::Decimal128(Some(v), _, scale) => Some(*v as f64 / 10f64.powi(*scale as i32)),
        other => match other.cast_to(&DataType::Float64).ok()? {
            ScalarValue::Float64(Some(f)) => Some(f),
            _ => None,
        },
    }
}
