//! The filters a hash join derives from its build side, applied to the input
//! of an aggregate below the join.
//!
//! DataFusion pushes such a filter (the build side's keys, known once it is
//! built) into the Parquet scan of the probe side, where, with row filters
//! off (`layer.rs`: off unless a static filter is selective), it only prunes
//! row groups and pages by their statistics. The rows of every page that
//! survives flow up the plan. When an aggregate sits between the scan and
//! the join, it groups every one of them: TPC-H Q17 averages the quantity of
//! all of lineitem per part (6M rows) before joining the 200 parts it asked
//! for, whose keys would keep 0.1% of them. Here the aggregate's input goes
//! through a `FilterExec` with the join's filters, a vectorised lookup per
//! row, so it groups only the rows the join can keep (Q17 0.28–0.31 s →
//! 0.20 s). The filter goes right below the aggregate, after the query's own
//! filters, so it looks at as few rows as they leave (Q20: lineitem's year of
//! shipments, not all of it).
//!
//! Only below aggregates: where a scan feeds the join directly, the join
//! makes the same lookup for each row anyway, and filtering first cost more
//! than it saved (22 TPC-H queries 4.40–4.55 s → 4.74–4.82 s with a filter
//! above every scan that had one, PROFILES.md). Before the build side is built
//! the filter is `true`, and it only ever keeps a superset of the rows the
//! join keeps (DataFusion pushed it to the scan through the operators in
//! between, which it does only where that is safe), so results do not change.
//!
//! Tables served from memory are scanned through [`HeldJoinFilters`], which
//! keeps the filters pushed to it for this rule (a memory scan takes none):
//! Q17 with its tables in memory 0.16 s → 0.07 s.

use std::sync::Arc;

use datafusion::common::Statistics;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::config::ConfigOptions;
use datafusion::datasource::physical_plan::{FileSource, ParquetSource};
use datafusion::datasource::source::{DataSource, DataSourceExec};
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::{Column, DynamicFilterPhysicalExpr};
use datafusion::physical_expr::projection::ProjectionExprs;
use datafusion::physical_expr::{EquivalenceProperties, LexOrdering, PhysicalExpr, conjunction};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::execution_plan::SchedulingType;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::filter_pushdown::FilterPushdownPropagation;
use datafusion::physical_plan::{
    DisplayFormatType, ExecutionPlan, Partitioning, SendableRecordBatchStream, replace_children_if_necessary,
};

#[derive(Debug, Default)]
pub struct JoinFilters;

impl PhysicalOptimizerRule for JoinFilters {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        if !config.extensions.get::<super::PlannerOptions>().is_none_or(|o| o.join_filters) {
            return Ok(plan);
        }
        plan.transform_down(|node| {
            let Some(aggregate) = node.downcast_ref::<AggregateExec>() else {
                return Ok(Transformed::no(node));
            };
            if !matches!(aggregate.mode(), AggregateMode::Partial | AggregateMode::Single | AggregateMode::SinglePartitioned) {
                return Ok(Transformed::no(node));
            }
            let input = aggregate.input().clone();
            let mut filters = Vec::new();
            if !join_filters_below(&input, &mut filters) || filters.is_empty() {
                return Ok(Transformed::no(node));
            }
            let Some(filter) = over_columns_of(filters, &input) else {
                return Ok(Transformed::no(node));
            };
            let filtered = Arc::new(FilterExec::try_new(filter, input)?) as Arc<dyn ExecutionPlan>;
            Ok(Transformed::yes(replace_children_if_necessary(node, vec![filtered])?))
        })
        .map(|transformed| transformed.data)
    }

    fn name(&self) -> &str {
        "workbench_join_filters"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The operators an aggregate's input may pass through, from its scans up,
/// for their join filters to apply to it unchanged: they keep or drop rows
/// and keep the scan's column names.
const PASS_THROUGH: &[&str] = &[
    "FilterExec",
    "RepartitionExec",
    "CoalesceBatchesExec",
    "CoalescePartitionsExec",
    "CooperativeExec",
    "DeltaScanExec",
];

/// Collect the join filters pushed into the scans under `plan` (Parquet
/// scans and hot tables' [`HeldJoinFilters`]) into `filters`; false if
/// something other than [`PASS_THROUGH`] operators lies between `plan` and a
/// scan, or a scan is of another kind.
fn join_filters_below(plan: &Arc<dyn ExecutionPlan>, filters: &mut Vec<Arc<dyn PhysicalExpr>>) -> bool {
    if let Some(exec) = plan.downcast_ref::<DataSourceExec>() {
        if let Some(held) = exec.data_source().downcast_ref::<HeldJoinFilters>() {
            filters.extend(held.filters.iter().cloned());
            return true;
        }
        let Some((_, parquet)) = exec.downcast_to_file_source::<ParquetSource>() else {
            return false;
        };
        // Row filters on: the reader applies them already.
        if parquet.table_parquet_options().global.pushdown_filters {
            return true;
        }
        if let Some(predicate) = parquet.filter() {
            collect_join_filters(&predicate, filters);
        }
        return true;
    }
    PASS_THROUGH.contains(&plan.name()) && plan.children().into_iter().all(|child| join_filters_below(child, filters))
}

/// The join filters (dynamic filters) inside `predicate`, added to `filters`
/// unless already there.
fn collect_join_filters(predicate: &Arc<dyn PhysicalExpr>, filters: &mut Vec<Arc<dyn PhysicalExpr>>) {
    let _ = predicate.apply(|expr| {
        if expr.downcast_ref::<DynamicFilterPhysicalExpr>().is_some() {
            if !filters.iter().any(|known| Arc::ptr_eq(known, expr)) {
                filters.push(expr.clone());
            }
            return Ok(TreeNodeRecursion::Jump);
        }
        Ok(TreeNodeRecursion::Continue)
    });
}

/// `filters` (over the scans' columns) as one filter over `input`'s columns,
/// found by name; `None` if one reads a column `input` does not output.
fn over_columns_of(filters: Vec<Arc<dyn PhysicalExpr>>, input: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn PhysicalExpr>> {
    let schema = input.schema();
    let remapped = filters
        .into_iter()
        .map(|filter| {
            filter
                .transform_down(|expr| match expr.downcast_ref::<Column>() {
                    Some(column) => {
                        let index = schema.index_of(column.name())?;
                        Ok(Transformed::yes(Arc::new(Column::new(column.name(), index)) as Arc<dyn PhysicalExpr>))
                    }
                    None => Ok(Transformed::no(expr)),
                })
                .map(|t| t.data)
        })
        .collect::<Result<Vec<_>>>()
        .ok()?;
    Some(conjunction(remapped))
}

/// A scan of a hot table (`memory.rs`) that keeps the join filters
/// DataFusion pushes to it, for [`JoinFilters`] to apply below an aggregate.
///
/// A memory scan takes no filter itself (every one stays with the operator
/// above, as before), so without this DataFusion's pushdown of a join's
/// filter ended at the scan and was lost: Q17 over lineitem in memory still
/// grouped all 6M rows. The filters are held, not applied here (applying
/// them at every scan is what cost more than it saved, see above), and not
/// reported as the scan's expressions, so a join computes its filter only
/// when [`JoinFilters`] placed it somewhere.
#[derive(Debug, Clone)]
pub struct HeldJoinFilters {
    inner: Arc<dyn DataSource>,
    filters: Vec<Arc<dyn PhysicalExpr>>,
}

impl HeldJoinFilters {
    /// A scan of `source` that holds the join filters pushed to it.
    pub fn scan(source: impl DataSource + 'static) -> Arc<dyn ExecutionPlan> {
        Arc::new(DataSourceExec::new(Arc::new(HeldJoinFilters { inner: Arc::new(source), filters: Vec::new() })))
    }

    fn around(&self, inner: Arc<dyn DataSource>) -> Arc<dyn DataSource> {
        Arc::new(HeldJoinFilters { inner, filters: self.filters.clone() })
    }
}

impl DataSource for HeldJoinFilters {
    fn open(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        self.inner.open(partition, context)
    }

    fn fmt_as(&self, t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        self.inner.fmt_as(t, f)
    }

    fn repartitioned(
        &self,
        target_partitions: usize,
        repartition_file_min_size: usize,
        output_ordering: Option<LexOrdering>,
    ) -> Result<Option<Arc<dyn DataSource>>> {
        let inner = self.inner.repartitioned(target_partitions, repartition_file_min_size, output_ordering)?;
        Ok(inner.map(|inner| self.around(inner)))
    }

    fn output_partitioning(&self) -> Partitioning {
        self.inner.output_partitioning()
    }

    fn eq_properties(&self) -> EquivalenceProperties {
        self.inner.eq_properties()
    }

    fn scheduling_type(&self) -> SchedulingType {
        self.inner.scheduling_type()
    }

    fn partition_statistics(&self, partition: Option<usize>) -> Result<Arc<Statistics>> {
        self.inner.partition_statistics(partition)
    }

    fn with_fetch(&self, limit: Option<usize>) -> Option<Arc<dyn DataSource>> {
        self.inner.with_fetch(limit).map(|inner| self.around(inner))
    }

    fn fetch(&self) -> Option<usize> {
        self.inner.fetch()
    }

    fn try_swapping_with_projection(&self, projection: &ProjectionExprs) -> Result<Option<Arc<dyn DataSource>>> {
        Ok(self.inner.try_swapping_with_projection(projection)?.map(|inner| self.around(inner)))
    }

    fn try_pushdown_filters(
        &self,
        filters: Vec<Arc<dyn PhysicalExpr>>,
        config: &ConfigOptions,
    ) -> Result<FilterPushdownPropagation<Arc<dyn DataSource>>> {
        let mut held = self.filters.clone();
        for filter in &filters {
            collect_join_filters(filter, &mut held);
        }
        let pushed = self.inner.try_pushdown_filters(filters, config)?;
        let inner = pushed.updated_node.unwrap_or_else(|| self.inner.clone());
        let updated = (held.len() != self.filters.len() || !Arc::ptr_eq(&inner, &self.inner))
            .then(|| Arc::new(HeldJoinFilters { inner, filters: held }) as Arc<dyn DataSource>);
        Ok(FilterPushdownPropagation { filters: pushed.filters, updated_node: updated })
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.inner.apply_expressions(f)
    }
}
