//! The catalog one client connection sees: the engine's catalog filtered and
//! masked by the connection's [`Access`]. Tables it may not read are absent
//! from every listing (`pg_class`, `information_schema`, `\dt`, JDBC
//! metadata) and naming one is refused with 42501; tables it reads with masks
//! or row filters are replaced, where they are scanned, by a view that
//! filters the rows and masks the columns, so every path a query can take
//! (joins, aggregates, COPY, cursors, binary results) sees only that view.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{CatalogProvider, CatalogProviderList, SchemaProvider, Session};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema, ScalarValue, TableReference};
use datafusion::datasource::{TableProvider, TableType, provider_as_source};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, ScalarUDF, cast, lit, when};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{Column as PhysicalColumn, DynamicFilterPhysicalExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter_pushdown::{ChildFilterDescription, FilterDescription, FilterPushdownPhase};

use super::DATABASE;
use crate::governance::{Access, AccessError, BoundFilter, Principal, TablePolicy};
use crate::spec::Mask;

/// Schemas whose tables are governed by read grants.
const GOVERNED_SCHEMAS: &[&str] = &["bronze", "silver", "gold", "workbench"];

/// This connection's own `pg_catalog` and `information_schema`, computed
/// over the tables it may see.
#[derive(Debug, Clone)]
pub struct SystemSchemas {
    pub pg_catalog: Arc<dyn SchemaProvider>,
    pub information_schema: Arc<dyn SchemaProvider>,
}

/// The engine's catalog list as one connection sees it.
#[derive(Debug)]
pub struct GovernedList {
    inner: Arc<dyn CatalogProviderList>,
    access: Arc<Access>,
    system: Option<SystemSchemas>,
    /// Parses mask expressions and row filters.
    parser: Arc<SessionState>,
}

impl GovernedList {
    pub fn new(
        inner: Arc<dyn CatalogProviderList>,
        access: Arc<Access>,
        system: Option<SystemSchemas>,
        parser: Arc<SessionState>,
    ) -> Self {
        GovernedList {
            inner,
            access,
            system,
            parser,
        }
    }
}

impl CatalogProviderList for GovernedList {
    fn register_catalog(&self, name: String, catalog: Arc<dyn CatalogProvider>) -> Option<Arc<dyn CatalogProvider>> {
        self.inner.register_catalog(name, catalog)
    }

    fn catalog_names(&self) -> Vec<String> {
        self.inner.catalog_names()
    }

    fn catalog(&self, name: &str) -> Option<Arc<dyn CatalogProvider>> {
        let inner = self.inner.catalog(name)?;
        if name != DATABASE {
            return Some(inner);
        }
        Some(Arc::new(GovernedCatalog {
            inner,
            access: self.access.clone(),
            system: self.system.clone(),
            parser: self.parser.clone(),
        }))
    }
}

#[derive(Debug)]
struct GovernedCatalog {
    inner: Arc<dyn CatalogProvider>,
    access: Arc<Access>,
    system: Option<SystemSchemas>,
    parser: Arc<SessionState>,
}

impl CatalogProvider for GovernedCatalog {
    fn schema_names(&self) -> Vec<String> {
        self.inner.schema_names()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if let Some(system) = &self.system {
            match name {
                "pg_catalog" => return Some(system.pg_catalog.clone()),
                "information_schema" => return Some(system.information_schema.clone()),
                _ => {}
            }
        }
        let inner = self.inner.schema(name)?;
        if !GOVERNED_SCHEMAS.contains(&name) {
            return Some(inner);
        }
        Some(Arc::new(GovernedSchema {
            name: name.to_string(),
            inner,
            access: self.access.clone(),
            parser: self.parser.clone(),
        }))
    }

    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> Result<Option<Arc<dyn SchemaProvider>>> {
        self.inner.register_schema(name, schema)
    }
}

#[derive(Debug)]
struct GovernedSchema {
    name: String,
    inner: Arc<dyn SchemaProvider>,
    access: Arc<Access>,
    parser: Arc<SessionState>,
}

impl GovernedSchema {
    fn readable(&self, table: &str) -> Option<Arc<Principal>> {
        self.access.principal().filter(|p| p.can_read(&self.name, table))
    }
}

#[async_trait]
impl SchemaProvider for GovernedSchema {
    fn table_names(&self) -> Vec<String> {
        let Some(principal) = self.access.principal() else {
            return vec![];
        };
        let mut names = self.inner.table_names();
        names.retain(|t| principal.can_read(&self.name, t));
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(principal) = self.readable(name) else {
            // As PostgreSQL: a table that exists but is not granted is named
            // in a 42501; one that does not exist stays "not found".
            return match self.inner.table(name).await? {
                Some(_) => Err(DataFusionError::External(Box::new(AccessError::Table {
                    table: format!("{}.{name}", self.name),
                    user: self.access.user(),
                }))),
                None => Ok(None),
            };
        };
        let Some(table) = self.inner.table(name).await? else {
            return Ok(None);
        };
        let policy = principal.table_policy(&self.name, name);
        if policy.is_clear() {
            return Ok(Some(table));
        }
        governed_view(table, &self.name, name, &policy, principal.policy().mask_key(), &self.parser).map(Some)
    }

    async fn table_type(&self, name: &str) -> Result<Option<TableType>> {
        if self.readable(name).is_none() {
            return Ok(None);
        }
        self.inner.table_type(name).await
    }

    fn table_exist(&self, name: &str) -> bool {
        self.readable(name).is_some() && self.inner.table_exist(name)
    }

    fn register_table(&self, name: String, table: Arc<dyn TableProvider>) -> Result<Option<Arc<dyn TableProvider>>> {
        self.inner.register_table(name, table)
    }

    fn deregister_table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        self.inner.deregister_table(name)
    }
}

/// `table` as `policy` shows it: rows filtered, then columns masked. Also
/// used by table functions that read a table another way (`table_at`).
pub fn governed_view(
    table: Arc<dyn TableProvider>,
    schema: &str,
    name: &str,
    policy: &TablePolicy,
    mask_key: &[u8],
    parser: &SessionState,
) -> Result<Arc<dyn TableProvider>> {
    let reference = TableReference::partial(schema, name);
    let stored = table.schema();
    let scan = LogicalPlanBuilder::scan(reference.clone(), provider_as_source(table), None)?.build()?;
    let df_schema = scan.schema().clone();
    let mut visible: Option<Expr> = None;
    for filter in policy.row_filters.iter().flatten() {
        let condition = bind(parser.create_logical_expr(&filter.sql, &df_schema)?, filter)?;
        visible = Some(match visible {
            None => condition,
            Some(other) => other.or(condition),
        });
    }
    let mut masked = Vec::with_capacity(policy.masks.len());
    let mut columns = Vec::new();
    if !policy.masks.is_empty() {
        for field in stored.fields() {
            let column = Expr::Column(Column::new(Some(reference.clone()), field.name()));
            columns.push(match policy.masks.iter().find(|(c, _)| c == field.name()) {
                None => column,
                Some((column_name, mask)) => {
                    masked.push(column_name.clone());
                    mask_expr(mask, column, field.data_type(), mask_key, parser, &df_schema)?.alias(field.name())
                }
            });
        }
    }
    let view = View {
        scan,
        // NULL (an attribute the user lacks) hides the row, as in SQL; a
        // filter list that binds nothing hides every row.
        visible: match (&policy.row_filters, visible) {
            (None, _) => None,
            (Some(_), Some(visible)) => Some(visible),
            (Some(_), None) => Some(lit(false)),
        },
        masks: (!columns.is_empty()).then_some(columns),
    };
    let plan = view.plan(&[])?;
    Ok(Arc::new(GovernedTable {
        schema: Arc::new(plan.schema().as_arrow().clone()),
        plan,
        view,
        masked,
    }))
}

/// The parts of a governed table's plan: the scan of the stored table, the
/// row filter over it, the masks over that.
#[derive(Debug)]
struct View {
    scan: LogicalPlan,
    visible: Option<Expr>,
    masks: Option<Vec<Expr>>,
}

impl View {
    /// The view, with `first` (predicates that cannot fail) checked ahead of
    /// the row filter in the same conjunction: the Parquet reader evaluates
    /// a conjunction in order, so a selective key predicate narrows the rows
    /// before the filter's columns are decoded.
    fn plan(&self, first: &[Expr]) -> Result<LogicalPlan> {
        let mut builder = LogicalPlanBuilder::from(self.scan.clone());
        let predicate = first.iter().cloned().chain(self.visible.clone()).reduce(Expr::and);
        if let Some(predicate) = predicate {
            builder = builder.filter(predicate)?;
        }
        if let Some(masks) = &self.masks {
            builder = builder.project(masks.clone())?;
        }
        builder.build()
    }
}

/// Put the user's attribute values where the filter has `$n`.
fn bind(expr: Expr, filter: &BoundFilter) -> Result<Expr> {
    expr.transform(|e| match e {
        Expr::Placeholder(p) => {
            let index: usize = p.id.trim_start_matches('$').parse().map_err(|_| {
                DataFusionError::Plan(format!("row filter placeholder {} is not $n", p.id))
            })?;
            let value = filter.values.get(index.wrapping_sub(1)).cloned().flatten();
            Ok(Transformed::yes(lit(ScalarValue::Utf8(value))))
        }
        other => Ok(Transformed::no(other)),
    })
    .map(|t| t.data)
}

fn mask_expr(
    mask: &Mask,
    column: Expr,
    data_type: &DataType,
    key: &[u8],
    parser: &SessionState,
    df_schema: &DFSchema,
) -> Result<Expr> {
    let text = || cast(column.clone(), DataType::Utf8);
    Ok(match mask {
        Mask::Hash => ScalarUDF::new_from_impl(workbench_udfs::mask::KeyedHash::new(key.to_vec())).call(vec![text()]),
        Mask::Redact => when(column.clone().is_not_null(), lit("********")).otherwise(lit(ScalarValue::Utf8(None)))?,
        Mask::Null => cast(lit(ScalarValue::Null), data_type.clone()),
        Mask::Partial(shown) => {
            ScalarUDF::new_from_impl(workbench_udfs::mask::Partial::new(*shown)).call(vec![text()])
        }
        Mask::Expression(sql) => parser.create_logical_expr(sql, df_schema)?,
    })
}

/// A masked or filtered table, listed as the base table it stands for.
///
/// A masked-only table is a view the planner inlines: a query's filters
/// that move below the mask are rewritten over the masked expressions.
/// A row-filtered one is not inlined, and its plan is sealed by a
/// [`RowFilterBarrier`]: the optimizers would otherwise merge the query's
/// predicates with the row filter or push them into the scan below it,
/// where a predicate that fails (a division by zero on a hidden row) tells
/// the caller that the row exists.
#[derive(Debug)]
struct GovernedTable {
    /// The whole view (what a masked-only table is inlined as).
    plan: LogicalPlan,
    view: View,
    schema: SchemaRef,
    /// Masked columns: a query's predicate on them is never pushed down.
    masked: Vec<String>,
}

impl GovernedTable {
    fn filtered(&self) -> bool {
        self.view.visible.is_some()
    }
}

/// Whether `expr` can be evaluated on any row without failing and without
/// touching a masked column: comparisons, `IN`, `BETWEEN`, `LIKE`, `IS NULL`
/// of plain columns and constants, and `AND`/`OR`/`NOT` of those. Such a
/// predicate may run below a row filter (and prune Parquet row groups): on a
/// hidden row it only yields a value the row filter then discards.
fn infallible(expr: &Expr, masked: &[String]) -> bool {
    use datafusion::logical_expr::{Between, BinaryExpr, Like, Operator};
    let operand = |e: &Expr| match e {
        Expr::Column(c) => !masked.iter().any(|m| m == &c.name),
        Expr::Literal(..) => true,
        Expr::Cast(c) => matches!(c.expr.as_ref(), Expr::Literal(..)),
        Expr::TryCast(c) => matches!(c.expr.as_ref(), Expr::Literal(..)),
        _ => false,
    };
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And | Operator::Or => infallible(left, masked) && infallible(right, masked),
            Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq
            | Operator::IsDistinctFrom
            | Operator::IsNotDistinctFrom => operand(left) && operand(right),
            _ => false,
        },
        Expr::Not(inner) => infallible(inner, masked),
        Expr::IsNull(e) | Expr::IsNotNull(e) => operand(e),
        Expr::InList(list) => operand(&list.expr) && list.list.iter().all(|e| matches!(e, Expr::Literal(..))),
        Expr::Between(Between { expr, low, high, .. }) => operand(expr) && operand(low) && operand(high),
        Expr::Like(Like { expr, pattern, .. }) => operand(expr) && matches!(pattern.as_ref(), Expr::Literal(..)),
        _ => false,
    }
}

#[async_trait]
impl TableProvider for GovernedTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn get_logical_plan(&self) -> Option<std::borrow::Cow<'_, LogicalPlan>> {
        (!self.filtered()).then_some(std::borrow::Cow::Borrowed(&self.plan))
    }

    /// Only predicates that cannot fail go inside the sealed view (where they
    /// may reach the Parquet scan); the rest run above the barrier.
    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<datafusion::logical_expr::TableProviderFilterPushDown>> {
        use datafusion::logical_expr::TableProviderFilterPushDown::{Exact, Unsupported};
        // The sealed view applies them itself, so they need no second pass above it.
        Ok(filters
            .iter()
            .map(|f| if self.filtered() && infallible(f, &self.masked) { Exact } else { Unsupported })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !self.filtered() {
            let view = datafusion::datasource::ViewTable::new(self.plan.clone(), None);
            return view.scan(state, projection, filters, limit).await;
        }
        // `filters` are only the infallible ones (supports_filters_pushdown).
        let view = datafusion::datasource::ViewTable::new(self.view.plan(filters)?, None);
        let plan = view.scan(state, projection, &[], limit).await?;
        Ok(Arc::new(RowFilterBarrier::new(plan)))
    }
}

/// A join's or TopK's runtime filter whose inputs are plain columns.
fn runtime_filter_on_columns(filter: &Arc<dyn PhysicalExpr>) -> bool {
    filter.downcast_ref::<DynamicFilterPhysicalExpr>().is_some()
        && filter.children().iter().all(|c| c.is::<PhysicalColumn>())
}

/// Passes its input through unchanged and takes no filter from above, so
/// no predicate of the query runs on a row the row filter has not passed.
#[derive(Debug)]
struct RowFilterBarrier {
    input: Arc<dyn ExecutionPlan>,
}

impl RowFilterBarrier {
    fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        RowFilterBarrier { input }
    }
}

impl datafusion::physical_plan::DisplayAs for RowFilterBarrier {
    fn fmt_as(&self, _: datafusion::physical_plan::DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "RowFilterBarrier")
    }
}

impl ExecutionPlan for RowFilterBarrier {
    fn name(&self) -> &str {
        "RowFilterBarrier"
    }

    fn properties(&self) -> &Arc<datafusion::physical_plan::PlanProperties> {
        self.input.properties()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_plan::PhysicalExpr>,
        ) -> Result<datafusion::common::tree_node::TreeNodeRecursion>,
    ) -> Result<datafusion::common::tree_node::TreeNodeRecursion> {
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    /// No filter of the query's passes, with one exception: the filters a
    /// hash join or a TopK computes while running (bounds and hash lookups
    /// of the other side's keys) over plain columns. They compare values and
    /// cannot fail, so on a hidden row they only yield a result the row
    /// filter discards, and they let a join skip most of a fact table.
    fn gather_filters_for_pushdown(
        &self,
        phase: FilterPushdownPhase,
        parent_filters: Vec<Arc<dyn PhysicalExpr>>,
        _config: &datafusion::config::ConfigOptions,
    ) -> Result<FilterDescription> {
        if phase != FilterPushdownPhase::Post {
            return Ok(FilterDescription::all_unsupported(&parent_filters, &self.children()));
        }
        // What is not offered is replaced by a stand-in the child cannot
        // take (its column is not in the child's schema): it stays "not
        // pushed" in its place, as the optimizer matches results by position.
        let sealed: Arc<dyn PhysicalExpr> = Arc::new(PhysicalColumn::new("workbench: sealed by the row filter", usize::MAX));
        let offered: Vec<Arc<dyn PhysicalExpr>> = parent_filters
            .iter()
            .map(|f| if runtime_filter_on_columns(f) { f.clone() } else { sealed.clone() })
            .collect();
        Ok(FilterDescription::new().with_child(ChildFilterDescription::from_child(&offered, &self.input)?))
    }

    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        match children.pop() {
            Some(input) if children.is_empty() => Ok(Arc::new(RowFilterBarrier::new(input))),
            _ => Err(DataFusionError::Internal("RowFilterBarrier takes one input".into())),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<datafusion::execution::TaskContext>,
    ) -> Result<datafusion::execution::SendableRecordBatchStream> {
        self.input.execute(partition, context)
    }
}
