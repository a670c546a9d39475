//! Inner joins in the order their estimated sizes call for, not the order the
//! query names the tables in.
//!
//! A chain of inner joins (with the column-only projections and filters
//! between them) is taken apart into its inputs, its equi-join keys and its
//! other conditions, then joined back greedily: each step joins the two
//! connected inputs whose join is estimated smallest ("greedy operator
//! ordering"), with the smaller one on the left, the side DataFusion builds
//! its hash table from. A projection on top restores the original columns.
//! Estimates come from the lake's Delta statistics (`estimates.rs`); where an
//! input has none (not a lake table) the query's own order is kept.

use std::sync::Arc;

use datafusion::common::config::ConfigExtension;
use datafusion::common::extensions_options;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{NullEquality, Result};
use datafusion::logical_expr::utils::{conjunction, split_conjunction_owned};
use datafusion::logical_expr::{Expr, Filter, Join, JoinConstraint, JoinType, LogicalPlan, Projection};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

use super::estimates::{Estimate, Source};

/// The largest chain reordered: greedy ordering estimates every pair at
/// every step (cubic), a few thousand estimates at 16 inputs.
const MOST_INPUTS: usize = 16;

extensions_options! {
    /// Workbench's planner switches, per session (`SET workbench.join_order = off`).
    pub struct PlannerOptions {
        /// Reorder inner joins by estimated sizes.
        pub join_order: bool, default = true
        /// Filter lake rows inside the Parquet reader: auto, on or off
        /// (see `LakeTable::row_filters`).
        pub row_filters: String, default = "auto".to_string()
        /// Apply a hash join's filter to the scans that feed an aggregate
        /// below it (see `join_filters.rs`).
        pub join_filters: bool, default = true
        /// Estimate the filters DataFusion keeps 20% of by their conditions
        /// (see `filter_estimates.rs`).
        pub filter_estimates: bool, default = true
    }
}

impl ConfigExtension for PlannerOptions {
    const PREFIX: &'static str = "workbench";
}

#[derive(Debug)]
pub struct JoinOrder<S> {
    source: S,
}

impl<S: Source> JoinOrder<S> {
    pub fn new(source: S) -> Self {
        JoinOrder { source }
    }
}

impl<S: Source + std::fmt::Debug + Send + Sync> OptimizerRule for JoinOrder<S> {
    fn name(&self) -> &str {
        "workbench_join_order"
    }

    fn rewrite(&self, plan: LogicalPlan, config: &dyn OptimizerConfig) -> Result<Transformed<LogicalPlan>> {
        let on = config
            .options()
            .extensions
            .get::<PlannerOptions>()
            .is_none_or(|o| o.join_order);
        if !on {
            return Ok(Transformed::no(plan));
        }
        self.optimize(plan)
    }
}

/// How a chain's inputs are joined: by input number, left side first.
#[derive(Debug, Clone, PartialEq)]
enum Shape {
    Input(usize),
    Join(Box<Shape>, Box<Shape>),
}

/// A chain of inner joins taken apart.
#[derive(Default)]
struct Chain {
    inputs: Vec<LogicalPlan>,
    on: Vec<(Expr, Expr)>,
    conditions: Vec<Expr>,
}

impl Chain {
    /// Takes `plan` apart, returning the shape it had.
    fn flatten(&mut self, plan: &LogicalPlan) -> Shape {
        match plan {
            LogicalPlan::Join(join) if reorderable(join) => {
                let left = self.flatten(&join.left);
                let right = self.flatten(&join.right);
                self.on.extend(join.on.iter().cloned());
                if let Some(filter) = &join.filter {
                    self.conditions.extend(split_conjunction_owned(filter.clone()));
                }
                Shape::Join(Box::new(left), Box::new(right))
            }
            LogicalPlan::Projection(p) if columns_only(p) && joins_below(&p.input) => self.flatten(&p.input),
            LogicalPlan::Filter(f) if plain(&f.predicate) && joins_below(&f.input) => {
                self.conditions.extend(split_conjunction_owned(f.predicate.clone()));
                self.flatten(&f.input)
            }
            other => {
                self.inputs.push(other.clone());
                Shape::Input(self.inputs.len() - 1)
            }
        }
    }
}

/// An inner equi-join with ordinary null semantics.
fn reorderable(join: &Join) -> bool {
    join.join_type == JoinType::Inner
        && join.join_constraint == JoinConstraint::On
        && join.null_equality == NullEquality::NullEqualsNothing
        && !join.null_aware
        && join.filter.as_ref().is_none_or(plain)
}

fn columns_only(projection: &Projection) -> bool {
    projection.expr.iter().all(|e| matches!(e, Expr::Column(_)))
}

/// No subquery, nothing volatile: a condition that may move between joins.
fn plain(expr: &Expr) -> bool {
    !expr.is_volatile()
        && !expr
            .exists(|e| Ok(matches!(e, Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_))))
            .unwrap_or(true)
}

/// `plan` is a reorderable join, maybe under column-only projections/filters.
fn joins_below(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Join(join) => reorderable(join),
        LogicalPlan::Projection(p) => columns_only(p) && joins_below(&p.input),
        LogicalPlan::Filter(f) => plain(&f.predicate) && joins_below(&f.input),
        _ => false,
    }
}

/// Inputs joined so far.
struct Part {
    plan: LogicalPlan,
    estimate: Estimate,
    /// Which chain inputs it holds (bit per input).
    inputs: u64,
    shape: Shape,
}

/// A condition and the inputs whose columns it reads.
struct Condition {
    expr: Expr,
    inputs: u64,
    placed: bool,
}

impl Condition {
    /// Not placed yet, and reads only `inputs`.
    fn fits(&self, inputs: u64) -> bool {
        !self.placed && self.inputs & !inputs == 0
    }
}

/// The conditions that fit `inputs` and are not placed yet, as one
/// predicate, now placed.
fn place(conditions: &mut [Condition], inputs: u64) -> Option<Expr> {
    conjunction(conditions.iter_mut().filter(|c| c.fits(inputs)).map(|c| {
        c.placed = true;
        c.expr.clone()
    }))
}

/// An equi-join key pair and the inputs each side reads.
struct Key {
    left: Expr,
    right: Expr,
    left_inputs: u64,
    right_inputs: u64,
}

impl<S: Source> JoinOrder<S> {
    fn optimize(&self, plan: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
        if let LogicalPlan::Join(join) = &plan
            && let Some(pushed) = self.push_semi_join(join)?
        {
            return Ok(Transformed::yes(self.optimize(pushed)?.data));
        }
        if joins_below(&plan) {
            let mut chain = Chain::default();
            let shape = chain.flatten(&plan);
            // Only a chain whose every input has an estimate is reordered
            // (catalog queries join tables that have none).
            if (2..=MOST_INPUTS).contains(&chain.inputs.len())
                && chain.inputs.iter().all(|i| Estimate::of(i, &self.source).is_some())
            {
                let mut changed = false;
                let inputs = std::mem::take(&mut chain.inputs)
                    .into_iter()
                    .map(|input| {
                        let input = self.optimize(input)?;
                        changed |= input.transformed;
                        Ok(input.data)
                    })
                    .collect::<Result<Vec<_>>>()?;
                chain.inputs = inputs;
                if let Some((ordered, new_shape)) = self.order(chain, &plan)? {
                    if new_shape == shape && !changed {
                        return Ok(Transformed::no(plan));
                    }
                    return Ok(Transformed::yes(ordered));
                }
            }
        }
        plan.map_children(|child| self.optimize(child))?
            .transform_data(|plan| plan.map_subqueries(|sub| self.optimize(sub)))
    }

    /// A semi or anti join (`IN`, `EXISTS`, `NOT EXISTS`) above a chain of
    /// inner joins whose left side reads one input of the chain only: that
    /// input filtered first, when it holds no more rows than the chain's
    /// output (TPC-H Q18 keeps 57 of 1.5M orders before joining lineitem,
    /// instead of 6M joined rows after). `None` where it does not apply.
    fn push_semi_join(&self, join: &Join) -> Result<Option<LogicalPlan>> {
        if !matches!(join.join_type, JoinType::LeftSemi | JoinType::LeftAnti)
            || join.null_aware
            || join.on.is_empty()
            || !joins_below(&join.left)
        {
            return Ok(None);
        }
        let mut chain = Chain::default();
        chain.flatten(&join.left);
        let left = join.left.schema();
        let mut reads: Vec<&datafusion::common::Column> = join.on.iter().flat_map(|(l, _)| l.column_refs()).collect();
        if let Some(filter) = &join.filter {
            reads.extend(filter.column_refs().into_iter().filter(|c| left.has_column(c)));
        }
        let Some(owner) = chain.inputs.iter().position(|i| reads.iter().all(|c| i.schema().has_column(c))) else {
            return Ok(None);
        };
        let (Some(input), Some(output)) = (
            Estimate::of(&chain.inputs[owner], &self.source),
            Estimate::of(&join.left, &self.source),
        ) else {
            return Ok(None);
        };
        if input.rows > output.rows {
            return Ok(None);
        }
        let filtered = LogicalPlan::Join(Join::try_new(
            Arc::new(chain.inputs[owner].clone()),
            join.right.clone(),
            join.on.clone(),
            join.filter.clone(),
            join.join_type,
            join.join_constraint,
            join.null_equality,
            join.null_aware,
        )?);
        let mut next = 0;
        replace_input(&join.left, &mut next, owner, &mut Some(filtered)).map(Some)
    }

    /// The chain joined in estimated-size order under a projection giving
    /// `original`'s columns; `None` if an input has no estimate.
    fn order(&self, chain: Chain, original: &LogicalPlan) -> Result<Option<(LogicalPlan, Shape)>> {
        let Chain { inputs, on, conditions } = chain;
        let Some(estimates) = inputs
            .iter()
            .map(|i| Estimate::of(i, &self.source))
            .collect::<Option<Vec<_>>>()
        else {
            return Ok(None);
        };
        let reads = |expr: &Expr| -> Option<u64> {
            let mut mask = 0u64;
            for column in expr.column_refs() {
                let owner = inputs.iter().position(|i| i.schema().has_column(column))?;
                mask |= 1 << owner;
            }
            Some(mask)
        };
        let mut keys = Vec::new();
        let Some(mut conditions) = conditions
            .into_iter()
            .map(|expr| Some(Condition { inputs: reads(&expr)?, expr, placed: false }))
            .collect::<Option<Vec<_>>>()
        else {
            return Ok(None);
        };
        for (left, right) in on {
            let (Some(l), Some(r)) = (reads(&left), reads(&right)) else {
                return Ok(None);
            };
            if l == 0 || r == 0 || l & r != 0 {
                conditions.push(Condition { expr: left.eq(right), inputs: l | r, placed: false });
            } else {
                keys.push(Key { left, right, left_inputs: l, right_inputs: r });
            }
        }
        let mut parts: Vec<Part> = Vec::new();
        for (i, (plan, estimate)) in inputs.into_iter().zip(estimates).enumerate() {
            let mut part = Part { plan, estimate, inputs: 1 << i, shape: Shape::Input(i) };
            // A condition on one input alone (rare: pushdown puts them in the scan).
            if let Some(predicate) = place(&mut conditions, part.inputs) {
                part.estimate = part.estimate.filtered(&predicate);
                part.plan = LogicalPlan::Filter(Filter::try_new(predicate, Arc::new(part.plan))?);
            }
            parts.push(part);
        }

        while parts.len() > 1 {
            // The connected pair with the smallest estimated join; if none is
            // connected (a cross join in the query), the two smallest parts.
            let mut best: Option<(f64, usize, usize)> = None;
            for i in 0..parts.len() {
                for j in i + 1..parts.len() {
                    let pairs = connecting(&keys, &parts[i], &parts[j]);
                    if pairs.is_empty() {
                        continue;
                    }
                    let rows = joined(&parts[i], &parts[j], &pairs, &conditions).rows;
                    if best.is_none_or(|(r, _, _)| rows < r) {
                        best = Some((rows, i, j));
                    }
                }
            }
            let (i, j) = match best {
                Some((_, i, j)) => (i, j),
                None => {
                    let mut by_size: Vec<usize> = (0..parts.len()).collect();
                    by_size.sort_by(|a, b| parts[*a].estimate.rows.total_cmp(&parts[*b].estimate.rows));
                    (by_size[0].min(by_size[1]), by_size[0].max(by_size[1]))
                }
            };
            let b = parts.remove(j);
            let a = parts.remove(i);
            // The smaller side on the left: the one hashed.
            let (build, probe) = if b.estimate.rows < a.estimate.rows { (b, a) } else { (a, b) };
            let pairs = connecting(&keys, &build, &probe);
            let estimate = joined(&build, &probe, &pairs, &conditions);
            let both = build.inputs | probe.inputs;
            let filter = place(&mut conditions, both);
            let join = Join::try_new(
                Arc::new(build.plan),
                Arc::new(probe.plan),
                pairs,
                filter,
                JoinType::Inner,
                JoinConstraint::On,
                NullEquality::NullEqualsNothing,
                false,
            )?;
            parts.push(Part {
                plan: LogicalPlan::Join(join),
                estimate,
                inputs: both,
                shape: Shape::Join(Box::new(build.shape), Box::new(probe.shape)),
            });
        }
        // The last join holds every input: every condition is placed.
        let Part { plan, shape, .. } = parts.pop().expect("a chain has inputs");
        let columns = original.schema().columns().into_iter().map(Expr::Column).collect();
        let plan = LogicalPlan::Projection(Projection::try_new(columns, Arc::new(plan))?);
        Ok(Some((plan, shape)))
    }
}

/// The key pairs joining `a` to `b`, each as (a's side, b's side).
fn connecting(keys: &[Key], a: &Part, b: &Part) -> Vec<(Expr, Expr)> {
    let within = |mask: u64, part: &Part| mask & !part.inputs == 0;
    keys.iter()
        .filter_map(|k| {
            if within(k.left_inputs, a) && within(k.right_inputs, b) {
                Some((k.left.clone(), k.right.clone()))
            } else if within(k.right_inputs, a) && within(k.left_inputs, b) {
                Some((k.right.clone(), k.left.clone()))
            } else {
                None
            }
        })
        .collect()
}

/// The estimate of joining `a` and `b`, with the conditions that join places.
fn joined(a: &Part, b: &Part, pairs: &[(Expr, Expr)], conditions: &[Condition]) -> Estimate {
    let both = a.inputs | b.inputs;
    let mut estimate = a.estimate.joined(&b.estimate, pairs);
    for c in conditions.iter().filter(|c| c.fits(both)) {
        estimate = estimate.filtered(&c.expr);
    }
    estimate
}

/// `plan` with its chain input number `target` (counted as `Chain::flatten`
/// counts) replaced by `with`; the schema stays the same.
fn replace_input(plan: &LogicalPlan, next: &mut usize, target: usize, with: &mut Option<LogicalPlan>) -> Result<LogicalPlan> {
    Ok(match plan {
        LogicalPlan::Join(join) if reorderable(join) => {
            let left = replace_input(&join.left, next, target, with)?;
            let right = replace_input(&join.right, next, target, with)?;
            LogicalPlan::Join(Join { left: Arc::new(left), right: Arc::new(right), ..join.clone() })
        }
        LogicalPlan::Projection(p) if columns_only(p) && joins_below(&p.input) => {
            let input = replace_input(&p.input, next, target, with)?;
            LogicalPlan::Projection(Projection::try_new_with_schema(p.expr.clone(), Arc::new(input), p.schema.clone())?)
        }
        LogicalPlan::Filter(f) if plain(&f.predicate) && joins_below(&f.input) => {
            let input = replace_input(&f.input, next, target, with)?;
            LogicalPlan::Filter(Filter::try_new(f.predicate.clone(), Arc::new(input))?)
        }
        other => {
            *next += 1;
            match (*next - 1 == target).then(|| with.take()).flatten() {
                Some(replacement) => replacement,
                None => other.clone(),
            }
        }
    })
}
