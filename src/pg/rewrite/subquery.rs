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
    if let Expr::Function(f) = &inner
        && AGGREGATES.contains(&f.name.to_string().to_ascii_lowercase().as_str())
    {
        return;
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
