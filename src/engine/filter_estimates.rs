//! Our estimate of how many rows a filter keeps, for the filters DataFusion
//! cannot estimate itself.
//!
//! DataFusion estimates a `FilterExec` by interval analysis, which only
//! covers comparisons of numbers and dates with constants. Any other
//! condition in the predicate (a text column, a decimal, `IN`, `LIKE`, two
//! columns compared) makes it keep a flat 20% of its input for the whole
//! predicate. `JoinSelection` then compares those 20% with the other side of
//! a join to pick the side its hash table is built from: TPC-H Q12, with its
//! tables in memory, built from all 1.5M orders instead of the ~30K
//! lineitems its five conditions keep.
//!
//! This rule runs right before `JoinSelection` and gives each such filter
//! the share our logical estimates use (`estimates.rs`: conditions
//! multiplied, column ranges and distinct counts from the input's statistics
//! where there are some, the usual defaults elsewhere), rounded up to the
//! whole per cent `FilterExec` takes. It only changes estimates, so it can
//! change which side a join builds from, never a result.
//! `SET workbench.filter_estimates = off` keeps DataFusion's 20%.

use std::sync::Arc;

use datafusion::common::stats::Precision;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{ScalarValue, Statistics};
use datafusion::config::ConfigOptions;
use datafusion::error::Result;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{
    BinaryExpr, CastExpr, Column, InListExpr, IsNotNullExpr, IsNullExpr, LikeExpr, Literal, NotExpr, TryCastExpr,
};
use datafusion::physical_expr::intervals::utils::check_support;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};

use super::estimates::{EQUALITY, NULL, PATTERN, RANGE, Range, UNKNOWN, compared, scalar_number};

#[derive(Debug, Default)]
pub struct FilterEstimates;

impl FilterEstimates {
    /// DataFusion's physical rules with this one right before `JoinSelection`
    /// (the rule that reads the estimates).
    pub fn with_default_rules() -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
        let mut rules = datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules;
        let at = rules.iter().position(|rule| rule.name() == "join_selection").unwrap_or(0);
        rules.insert(at, Arc::new(FilterEstimates));
        rules
    }
}

impl PhysicalOptimizerRule for FilterEstimates {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        if !config.extensions.get::<super::PlannerOptions>().is_none_or(|o| o.filter_estimates) {
            return Ok(plan);
        }
        plan.transform_up(|node| {
            let Some(filter) = node.downcast_ref::<FilterExec>() else {
                return Ok(Transformed::no(node));
            };
            if check_support(filter.predicate(), &filter.input().schema()) {
                // DataFusion's own analysis applies.
                return Ok(Transformed::no(node));
            }
            let input = StatisticsContext::new().compute(filter.input().as_ref(), &StatisticsArgs::new())?;
            let percent = percent(selectivity(filter.predicate(), &input));
            if percent == filter.default_selectivity() {
                return Ok(Transformed::no(node));
            }
            let estimated = FilterExecBuilder::from(filter).with_default_selectivity(percent).build()?;
            Ok(Transformed::yes(Arc::new(estimated) as Arc<dyn ExecutionPlan>))
        })
        .map(|transformed| transformed.data)
    }

    fn name(&self) -> &str {
        "workbench_filter_estimates"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A share of rows as the whole per cent `FilterExec` takes, rounded up and
/// at least 1 (no filter is estimated to keep nothing).
fn percent(share: f64) -> u8 {
    (share * 100.0).ceil().clamp(1.0, 100.0) as u8
}

/// The share of its input's rows `predicate` keeps.
fn selectivity(predicate: &Arc<dyn PhysicalExpr>, input: &Statistics) -> f64 {
    let share = if let Some(binary) = predicate.downcast_ref::<BinaryExpr>() {
        let (left, right) = (binary.left(), binary.right());
        match binary.op() {
            Operator::And => selectivity(left, input) * selectivity(right, input),
            Operator::Or => {
                let (a, b) = (selectivity(left, input), selectivity(right, input));
                a + b - a * b
            }
            Operator::Eq => equality(left, right, input),
            Operator::NotEq => 1.0 - equality(left, right, input),
            op @ (Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq) => comparison(left, *op, right, input),
            _ => UNKNOWN,
        }
    } else if let Some(list) = predicate.downcast_ref::<InListExpr>() {
        let one = equality(list.expr(), list.expr(), input);
        let any = (one * list.list().len() as f64).min(1.0);
        if list.negated() { 1.0 - any } else { any }
    } else if let Some(like) = predicate.downcast_ref::<LikeExpr>() {
        if like.negated() { 1.0 - PATTERN } else { PATTERN }
    } else if let Some(not) = predicate.downcast_ref::<NotExpr>() {
        1.0 - selectivity(not.arg(), input)
    } else if predicate.downcast_ref::<IsNullExpr>().is_some() {
        NULL
    } else if predicate.downcast_ref::<IsNotNullExpr>().is_some() {
        1.0 - NULL
    } else if let Some(literal) = predicate.downcast_ref::<Literal>() {
        match literal.value() {
            ScalarValue::Boolean(Some(true)) => 1.0,
            ScalarValue::Boolean(Some(false)) => 0.0,
            _ => UNKNOWN,
        }
    } else {
        UNKNOWN
    };
    share.clamp(0.0, 1.0)
}

/// `expr` without the casts around it.
fn uncast(expr: &Arc<dyn PhysicalExpr>) -> &Arc<dyn PhysicalExpr> {
    if let Some(cast) = expr.downcast_ref::<CastExpr>() {
        uncast(cast.expr())
    } else if let Some(cast) = expr.downcast_ref::<TryCastExpr>() {
        uncast(cast.expr())
    } else {
        expr
    }
}

/// The input column `expr` reads (through casts).
fn column(expr: &Arc<dyn PhysicalExpr>) -> Option<usize> {
    uncast(expr).downcast_ref::<Column>().map(Column::index)
}

/// A constant as a number on the scale of `Range` (through casts).
fn constant(expr: &Arc<dyn PhysicalExpr>) -> Option<f64> {
    uncast(expr).downcast_ref::<Literal>().and_then(|literal| scalar_number(literal.value()))
}

/// `left = right`: one in the distinct count of the column compared, when
/// the input knows it.
fn equality(left: &Arc<dyn PhysicalExpr>, right: &Arc<dyn PhysicalExpr>, input: &Statistics) -> f64 {
    let distinct = [left, right].into_iter().filter_map(column).find_map(|i| {
        match input.column_statistics.get(i).map(|c| &c.distinct_count) {
            Some(Precision::Exact(d) | Precision::Inexact(d)) if *d > 0 => Some(*d as f64),
            _ => None,
        }
    });
    distinct.map_or(EQUALITY, |d| 1.0 / d)
}

/// A column compared with a constant: the share of the column's range that
/// satisfies it, when the input knows the range.
fn comparison(left: &Arc<dyn PhysicalExpr>, op: Operator, right: &Arc<dyn PhysicalExpr>, input: &Statistics) -> f64 {
    let (at, value, op) = match (column(left), constant(right)) {
        (Some(at), Some(value)) => (at, value, op),
        _ => match (column(right), constant(left), op.swap()) {
            (Some(at), Some(value), Some(op)) => (at, value, op),
            _ => return RANGE,
        },
    };
    let Some(range) = input.column_statistics.get(at).and_then(range) else {
        return RANGE;
    };
    compared(range, op, value)
}

/// A column's range from its statistics, when both ends are known numbers.
fn range(column: &datafusion::common::ColumnStatistics) -> Option<Range> {
    let (Some(min), Some(max)) = (column.min_value.get_value(), column.max_value.get_value()) else {
        return None;
    };
    let integral = min.data_type().is_integer() || matches!(min, ScalarValue::Date32(_) | ScalarValue::Date64(_));
    Some(Range { min: scalar_number(min)?, max: scalar_number(max)?, integral })
}
