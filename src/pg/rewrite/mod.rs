//! Rewrites of Postgres constructs DataFusion cannot plan, applied to the
//! statements datafusion-postgres' compatibility parser produced. Every rule
//! keeps the statement's meaning; statements no rule matches are untouched.
//!
//! - `x LIKE 'pg/_%' ESCAPE '/'`: DataFusion only knows the backslash
//!   escape, so the pattern is re-escaped with backslashes (SQLAlchemy).
//! - `ARRAY(SELECT f(x) FROM unnest(arr) x)` → `array_transform(arr, x -> f(x))`
//!   and `ARRAY(SELECT e FROM ... [ORDER BY o])` →
//!   `(SELECT array_agg(e ORDER BY o) FROM ...)` (psql `\d+`, `\du`).
//! - reverse oid casts to text (`atttypid::regtype::text`, `attrelid::regclass::text`)
//!   → the type, relation or function name, and casts of columns in a query
//!   with ORDER BY given an internal alias ([`casts`]);
//! - set-returning catalog functions in the select list
//!   (`information_schema._pg_expandarray`, `generate_subscripts`) → `unnest` ([`srf`]);
//! - correlated scalar subqueries of one row → aggregated ([`subquery`]);
//! - Postgres datetime format patterns in `to_timestamp`/`to_date`/`to_char`
//!   and the `'epoch'` literal ([`datetime`]);
//! - long `x = 1 OR x = 2 OR ...` chains → `x IN (1, 2, ...)` ([`or_list`]).

mod casts;
mod datetime;
mod named_args;
mod or_list;
mod srf;
mod subquery;

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, FunctionArg, FunctionArgExpr, FunctionArgumentClause, FunctionArguments,
    Ident, LambdaFunction, LambdaFunctionParameter, LambdaSyntax, OneOrManyWithParens, OrderByKind,
    Query, SelectItem, SetExpr, Statement, TableFactor, Value, ValueWithSpan, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

pub use named_args::positional;

/// Apply every rule to `statement` in place.
pub fn rewrite(statement: &mut Statement) {
    let _ = statement.visit(&mut Rules);
}

struct Rules;

impl VisitorMut for Rules {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        casts::regclass_search_path(query);
        casts::order_by_oid(query);
        casts::label_column_casts(query);
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        or_list::or_chain_to_in_list(expr);
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        like_escape(expr);
        array_constructor(expr);
        casts::type_name_arrays(expr);
        casts::reverse_oid_cast(expr);
        casts::table_visibility(expr);
        datetime::interval_product(expr);
        srf::set_returning(expr);
        srf::field_access(expr);
        subquery::empty_catalog_lookup(expr);
        subquery::aggregate_scalar(expr);
        datetime::patterns(expr);
        datetime::special_literals(expr);
        ControlFlow::Continue(())
    }
}

fn like_escape(expr: &mut Expr) {
    if let Expr::Like { pattern, escape_char, .. } | Expr::ILike { pattern, escape_char, .. } = expr
        && let Some(ValueWithSpan {
            value: Value::SingleQuotedString(escape),
            ..
        }) = escape_char
        && escape != "\\"
        && let Some(text) = literal_text(pattern)
        && let Some(rewritten) = reescape(&text, escape)
    {
        **pattern = Expr::Value(Value::SingleQuotedString(rewritten).into());
        *escape_char = None;
    }
}

/// The text of a string literal, or of a `||` chain of string literals
/// (SQLAlchemy sends `'pg/_' || '%'`).
pub(super) fn literal_text(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Value(ValueWithSpan {
            value: Value::SingleQuotedString(text),
            ..
        }) => Some(text.clone()),
        Expr::Nested(inner) => literal_text(inner),
        Expr::BinaryOp {
            left,
            op: BinaryOperator::StringConcat,
            right,
        } => Some(literal_text(left)? + &literal_text(right)?),
        _ => None,
    }
}

/// Translate a LIKE pattern using escape character `escape` (empty: none)
/// into the same pattern using backslash escapes.
fn reescape(pattern: &str, escape: &str) -> Option<String> {
    let mut escape_chars = escape.chars();
    let escape = match (escape_chars.next(), escape_chars.next()) {
        (None, _) => None,
        (Some(c), None) => Some(c),
        _ => return None, // invalid escape: let the engine report it
    };
    let mut out = String::with_capacity(pattern.len() + 4);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if Some(c) == escape {
            out.push('\\');
            out.push(chars.next()?);
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    Some(out)
}

fn array_constructor(expr: &mut Expr) {
    let Expr::Function(function) = expr else { return };
    if !function.name.to_string().eq_ignore_ascii_case("array") {
        return;
    }
    let FunctionArguments::Subquery(query) = &function.args else { return };
    if let Some(mapped) = map_over_unnest(query) {
        *expr = mapped;
    } else if let Some(aggregated) = aggregate_into_array(query) {
        *expr = aggregated;
    }
}

/// `ARRAY(SELECT body FROM unnest(arr) AS x)` → `array_transform(arr, x -> body)`.
fn map_over_unnest(query: &Query) -> Option<Expr> {
    if query.with.is_some() || query.order_by.is_some() || query.limit_clause.is_some() {
        return None;
    }
    let SetExpr::Select(select) = query.body.as_ref() else { return None };
    if select.distinct.is_some()
        || select.selection.is_some()
        || select.having.is_some()
        || select.from.len() != 1
        || !select.from[0].joins.is_empty()
        || select.projection.len() != 1
    {
        return None;
    }
    let body = match &select.projection[0] {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e.clone(),
        _ => return None,
    };
    let TableFactor::Table {
        name,
        alias: Some(alias),
        args: Some(args),
        ..
    } = &select.from[0].relation
    else {
        return None;
    };
    if !name.to_string().to_ascii_lowercase().ends_with("unnest") || args.args.len() != 1 {
        return None;
    }
    let FunctionArg::Unnamed(FunctionArgExpr::Expr(array)) = &args.args[0] else {
        return None;
    };
    let param = match alias.columns.as_slice() {
        [] => alias.name.clone(),
        [column] => column.name.clone(),
        _ => return None,
    };
    let lambda = Expr::Lambda(LambdaFunction {
        params: OneOrManyWithParens::One(LambdaFunctionParameter {
            name: param,
            data_type: None,
        }),
        body: Box::new(body),
        syntax: LambdaSyntax::Arrow,
    });
    let mut call = parse_expr("array_transform(__array, __lambda)")?;
    replace_args(&mut call, vec![array.clone(), lambda]);
    Some(call)
}

/// `ARRAY(SELECT e FROM ... WHERE ... [ORDER BY o])` →
/// `(SELECT array_agg(e ORDER BY o) FROM ... WHERE ...)`. Correlated
/// references keep working because the subquery keeps its FROM and WHERE.
fn aggregate_into_array(query: &Query) -> Option<Expr> {
    if query.limit_clause.is_some() || query.fetch.is_some() {
        return None;
    }
    let SetExpr::Select(select) = query.body.as_ref() else { return None };
    if select.distinct.is_some()
        || select.having.is_some()
        || select.projection.len() != 1
        || !matches!(select.group_by, datafusion::sql::sqlparser::ast::GroupByExpr::Expressions(ref e, _) if e.is_empty())
    {
        return None;
    }
    let element = match &select.projection[0] {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e.clone(),
        _ => return None,
    };
    let mut array_agg = parse_expr("array_agg(__element)")?;
    replace_args(&mut array_agg, vec![element]);
    if let Some(order_by) = &query.order_by {
        let OrderByKind::Expressions(exprs) = &order_by.kind else { return None };
        if let Expr::Function(f) = &mut array_agg
            && let FunctionArguments::List(list) = &mut f.args
        {
            list.clauses.push(FunctionArgumentClause::OrderBy(exprs.clone()));
        }
    }
    let mut aggregated = query.clone();
    aggregated.order_by = None;
    if let SetExpr::Select(select) = aggregated.body.as_mut() {
        select.projection = vec![SelectItem::ExprWithAlias {
            expr: array_agg,
            alias: Ident::new("array"),
        }];
    }
    Some(Expr::Subquery(Box::new(aggregated)))
}

pub(super) fn parse_expr(sql: &str) -> Option<Expr> {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .ok()?
        .parse_expr()
        .ok()
}

pub(super) fn replace_args(call: &mut Expr, values: Vec<Expr>) {
    if let Expr::Function(f) = call
        && let FunctionArguments::List(list) = &mut f.args
    {
        list.args = values
            .into_iter()
            .map(|v| FunctionArg::Unnamed(FunctionArgExpr::Expr(v)))
            .collect();
    }
}
