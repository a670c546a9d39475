//! Set-returning catalog functions used in select lists, which DataFusion
//! plans through `unnest`:
//!
//! - `information_schema._pg_expandarray(arr)` (pgjdbc's key queries) →
//!   `unnest(pg_expandarray_list(arr))`, rows of `(x, n)`;
//! - `generate_subscripts(arr, dim)` (SQLAlchemy's index queries) →
//!   `unnest(generate_series(1, array_length(arr, dim)))`.

use datafusion::sql::sqlparser::ast::{Expr, FunctionArg, FunctionArgExpr, FunctionArguments};

use super::{parse_expr, replace_args};

pub fn set_returning(expr: &mut Expr) {
    let Expr::Function(function) = expr else { return };
    let name = function
        .name
        .0
        .last()
        .and_then(|p| p.as_ident())
        .map(|i| i.value.to_ascii_lowercase())
        .unwrap_or_default();
    let FunctionArguments::List(list) = &function.args else { return };
    let args: Vec<Expr> = list
        .args
        .iter()
        .filter_map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
            _ => None,
        })
        .collect();
    let replacement = match (name.as_str(), args.as_slice()) {
        ("_pg_expandarray", [array]) => {
            let mut call = parse_expr("unnest(pg_expandarray_list(__a))");
            if let Some(Expr::Function(outer)) = &mut call
                && let FunctionArguments::List(list) = &mut outer.args
                && let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(inner))) = list.args.first_mut()
            {
                replace_args(inner, vec![array.clone()]);
            }
            call
        }
        ("generate_subscripts", [array, dim]) => {
            let template = "unnest(generate_series(1, array_length(__a, __d)))";
            let mut call = parse_expr(template);
            if let Some(Expr::Function(outer)) = &mut call
                && let FunctionArguments::List(list) = &mut outer.args
                && let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(series))) = list.args.first_mut()
                && let Expr::Function(series_fn) = series
                && let FunctionArguments::List(series_args) = &mut series_fn.args
                && let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(length))) = series_args.args.get_mut(1)
            {
                replace_args(length, vec![array.clone(), dim.clone()]);
            }
            call
        }
        _ => None,
    };
    if let Some(replacement) = replacement {
        *expr = replacement;
    }
}

/// `(record).field` → `get_field(record, 'field')`; DataFusion's planner
/// only resolves dotted access on plain columns.
pub fn field_access(expr: &mut Expr) {
    use datafusion::sql::sqlparser::ast::{AccessExpr, Value};
    let Expr::CompoundFieldAccess { root, access_chain } = expr else {
        return;
    };
    if !matches!(root.as_ref(), Expr::Nested(_)) {
        return; // `a.b.c` on plain names: the planner resolves those
    }
    let mut current = (**root).clone();
    for access in access_chain.iter() {
        let AccessExpr::Dot(Expr::Identifier(field)) = access else { return };
        let Some(mut call) = parse_expr("get_field(__r, __f)") else { return };
        replace_args(
            &mut call,
            vec![current, Expr::Value(Value::SingleQuotedString(field.value.clone()).into())],
        );
        current = call;
    }
    *expr = current;
}
