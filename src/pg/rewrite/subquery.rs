//! Correlated scalar subqueries that return one row by construction, such
//! as `(SELECT c.relkind = 'c' FROM pg_class c WHERE c.oid = t.typrelid)`
//! (psql `\dT`, pgjdbc `getTypeInfo`). Postgres checks at run time that at
//! most one row comes back; DataFusion only plans correlated scalar
//! subqueries that aggregate. Wrapping the single output in `max()` keeps the
//! answer for zero or one row (NULL or the value), which is what these
//! catalog lookups produce.

use datafusion::sql::sqlparser::ast::{Expr, GroupByExpr, SelectItem, SetExpr};

use super::{parse_expr, replace_args};

const AGGREGATES: &[&str] = &[
    "count", "sum", "min", "max", "avg", "array_agg", "string_agg", "bool_and", "bool_or", "every", "json_agg",
    "jsonb_agg",
];

/// Whether `expr` calls an aggregate anywhere (not inside a nested subquery).
fn contains_aggregate(expr: &Expr) -> bool {
    use datafusion::sql::sqlparser::ast::{Visit, Visitor};
    use std::ops::ControlFlow;
    struct Find;
    impl Visitor for Find {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            match expr {
                Expr::Function(f)
                    if AGGREGATES.contains(
                        &f.name.0.last().and_then(|p| p.as_ident()).map(|i| i.value.to_ascii_lowercase()).unwrap_or_default().as_str(),
                    ) =>
                {
                    ControlFlow::Break(())
                }
                _ => ControlFlow::Continue(()),
            }
        }
        fn pre_visit_query(&mut self, _query: &datafusion::sql::sqlparser::ast::Query) -> ControlFlow<()> {
            ControlFlow::Continue(())
        }
    }
    expr.visit(&mut Find).is_break()
}

pub fn aggregate_scalar(expr: &mut Expr) {
    let Expr::Subquery(query) = expr else { return };
    if query.with.is_some() || query.fetch.is_some() || query.order_by.is_some() {
        return;
    }
    let SetExpr::Select(select) = query.body.as_mut() else { return };
    if select.selection.is_none()
        || select.from.is_empty()
        || select.distinct.is_some()
        || select.having.is_some()
        || select.projection.len() != 1
        || !matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty())
    {
        return;
    }
    let (inner, alias) = match &select.projection[0] {
        SelectItem::UnnamedExpr(e) => (e.clone(), None),
        SelectItem::ExprWithAlias { expr, alias } => (expr.clone(), Some(alias.clone())),
        _ => return,
    };
    if contains_aggregate(&inner) {
        return; // already one row (`0.2 * avg(x)`, TPC-H Q17)
    }
    let Some(mut max) = parse_expr("max(__value)") else { return };
    replace_args(&mut max, vec![inner]);
    select.projection[0] = match alias {
        Some(alias) => SelectItem::ExprWithAlias { expr: max, alias },
        None => SelectItem::UnnamedExpr(max),
    };
    // `LIMIT 1` added upstream is redundant with the aggregate and blocks decorrelation.
    query.limit_clause = None;
}

/// Catalog tables that hold no rows for Workbench: lake tables have no
/// defaults, sequences, indexes, constraints, triggers, inheritance,
/// partitions, policies or extended statistics.
const EMPTY_CATALOG_TABLES: &[&str] = &[
    "pg_attrdef",
    "pg_sequence",
    "pg_index",
    "pg_constraint",
    "pg_trigger",
    "pg_inherits",
    "pg_partitioned_table",
    "pg_policy",
    "pg_statistic_ext",
    "pg_foreign_table",
];

/// A scalar subquery that reads one of [`EMPTY_CATALOG_TABLES`] in its
/// inner-joined FROM returns no row, i.e. NULL (SQLAlchemy's column
/// defaults and identity options). Folding it keeps DataFusion from having
/// to decorrelate subqueries it cannot, with the same answer.
pub fn empty_catalog_lookup(expr: &mut Expr) {
    use datafusion::sql::sqlparser::ast::{JoinOperator, TableFactor, Value};
    let Expr::Subquery(query) = expr else { return };
    let SetExpr::Select(select) = query.body.as_ref() else { return };
    if !matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty()) || select.projection.len() != 1 {
        return;
    }
    if let SelectItem::UnnamedExpr(Expr::Function(f)) | SelectItem::ExprWithAlias { expr: Expr::Function(f), .. } =
        &select.projection[0]
        && f.name.to_string().eq_ignore_ascii_case("count")
    {
        return; // count over no rows is 0, not NULL
    }
    let is_empty = |factor: &TableFactor| match factor {
        TableFactor::Table { name, args: None, .. } => name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .is_some_and(|i| EMPTY_CATALOG_TABLES.contains(&i.value.to_ascii_lowercase().as_str())),
        _ => false,
    };
    let reads_empty = select.from.iter().any(|table| {
        is_empty(&table.relation)
            || table.joins.iter().any(|join| {
                matches!(join.join_operator, JoinOperator::Inner(_) | JoinOperator::Join(_)) && is_empty(&join.relation)
            })
    });
    if reads_empty {
        *expr = Expr::Value(Value::Null.into());
    }
}
