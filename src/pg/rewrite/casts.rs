//! Catalog lookups by oid that need the catalog tables and the session's
//! search path, planned as (correlated) subqueries over `pg_catalog`.
//!
//! `pg_table_is_visible(oid)`: true when the relation's schema is on the
//! search path (or is `pg_catalog`), as in Postgres.
//!
//! Reverse oid casts printed as text. Postgres prints a `regtype`,
//! `regclass` or `regproc` value as the object's name; DataFusion keeps oids
//! as integers, so `atttypid::regtype::text` would give `20`, not `bigint`.
//! Forward casts of literals (`'silver.orders'::regclass`) are resolved by
//! datafusion-pg-catalog's parser before these rules run.

use datafusion::sql::sqlparser::ast::{DataType, Expr, ObjectName};

use super::{parse_expr, replace_args};

/// `e::regtype::text` → `format_type(e, NULL)`; `e::regclass::text` → the
/// relation name, schema-qualified unless its schema is on the search path;
/// `e::regproc::text` → the function name.
pub fn reverse_oid_cast(expr: &mut Expr) {
    let Expr::Cast {
        expr: inner,
        data_type: target,
        ..
    } = expr
    else {
        return;
    };
    if !is_text(target) {
        return;
    }
    let Expr::Cast {
        expr: oid,
        data_type: alias,
        ..
    } = inner.as_ref()
    else {
        return;
    };
    let template = match oid_alias(alias).as_deref() {
        Some("regtype") => "format_type(__oid, NULL)",
        Some("regclass") => {
            "(SELECT max(CASE WHEN array_has(current_schemas(true), __wb_n.nspname) THEN __wb_c.relname \
             ELSE __wb_n.nspname || '.' || __wb_c.relname END) \
             FROM pg_catalog.pg_class __wb_c JOIN pg_catalog.pg_namespace __wb_n ON __wb_n.oid = __wb_c.relnamespace \
             WHERE __wb_c.oid = __oid)"
        }
        Some("regproc") => "(SELECT max(__wb_p.proname) FROM pg_catalog.pg_proc __wb_p WHERE __wb_p.oid = __oid)",
        Some("regnamespace") => "(SELECT max(__wb_n.nspname) FROM pg_catalog.pg_namespace __wb_n WHERE __wb_n.oid = __oid)",
        Some("regrole") => "(SELECT max(__wb_r.rolname) FROM pg_catalog.pg_roles __wb_r WHERE __wb_r.oid = __oid)",
        _ => return,
    };
    let Some(mut replacement) = parse_expr(template) else { return };
    substitute(&mut replacement, oid);
    // Keep the column label Postgres would give (the cast target's name).
    *expr = replacement;
}

/// Replace the placeholder identifier `__oid` anywhere in `template` by `value`.
fn substitute(template: &mut Expr, value: &Expr) {
    use datafusion::sql::sqlparser::ast::VisitMut;
    struct Fill<'a>(&'a Expr);
    impl datafusion::sql::sqlparser::ast::VisitorMut for Fill<'_> {
        type Break = ();
        fn post_visit_expr(&mut self, expr: &mut Expr) -> std::ops::ControlFlow<()> {
            if let Expr::Identifier(ident) = expr
                && ident.value == "__oid"
            {
                *expr = Expr::Nested(Box::new(self.0.clone()));
            }
            std::ops::ControlFlow::Continue(())
        }
    }
    if let Expr::Function(_) = template {
        replace_args(template, vec![value.clone(), Expr::Value(datafusion::sql::sqlparser::ast::Value::Null.into())]);
        return;
    }
    let _ = template.visit(&mut Fill(value));
}

/// `v::regtype[]::text[]`, where `v` is an `oidvector` (`pg_proc.proargtypes`,
/// served as text `25 25 23`), and the `COALESCE` of such casts pgcli lists
/// functions with: `COALESCE(proallargtypes::regtype[], proargtypes::regtype[])::text[]`
/// → the array of type names, `{text,text,integer}`.
pub fn type_name_arrays(expr: &mut Expr) {
    let Expr::Cast { expr: inner, data_type, .. } = expr else { return };
    if !array_of(data_type, is_text) {
        return;
    }
    if let Some(names) = names_of(inner) {
        *expr = names;
    }
}

fn array_of(data_type: &DataType, element: fn(&DataType) -> bool) -> bool {
    use datafusion::sql::sqlparser::ast::ArrayElemTypeDef;
    match data_type {
        DataType::Array(ArrayElemTypeDef::SquareBracket(inner, _) | ArrayElemTypeDef::AngleBracket(inner)) => element(inner),
        _ => false,
    }
}

fn names_of(expr: &Expr) -> Option<Expr> {
    match expr {
        Expr::Nested(inner) => names_of(inner),
        Expr::Cast { expr: vector, data_type, .. }
            if array_of(data_type, |t| oid_alias(t).as_deref() == Some("regtype")) =>
        {
            let mut elements = parse_expr(
                "array_remove_all(string_to_array(trim(regexp_replace(CAST(__vector AS TEXT), '[\\[\\]{},]', ' ', 'g')), ' '), '')",
            )?;
            fill(&mut elements, "__vector", vector);
            let lambda = Expr::Lambda(datafusion::sql::sqlparser::ast::LambdaFunction {
                params: datafusion::sql::sqlparser::ast::OneOrManyWithParens::One(
                    datafusion::sql::sqlparser::ast::LambdaFunctionParameter {
                        name: datafusion::sql::sqlparser::ast::Ident::new("__wb_type"),
                        data_type: None,
                    },
                ),
                body: Box::new(parse_expr("format_type(CAST(__wb_type AS INT), NULL)")?),
                syntax: datafusion::sql::sqlparser::ast::LambdaSyntax::Arrow,
            });
            let mut call = parse_expr("array_transform(__elements, __lambda)")?;
            replace_args(&mut call, vec![elements, lambda]);
            Some(call)
        }
        Expr::Function(f) if f.name.to_string().eq_ignore_ascii_case("coalesce") => {
            use datafusion::sql::sqlparser::ast::{FunctionArg, FunctionArgExpr, FunctionArguments};
            let FunctionArguments::List(list) = &f.args else { return None };
            let mut mapped = Vec::with_capacity(list.args.len());
            for arg in &list.args {
                let FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) = arg else { return None };
                mapped.push(names_of(e)?);
            }
            let mut call = expr.clone();
            replace_args(&mut call, mapped);
            Some(call)
        }
        _ => None,
    }
}

/// Replace the identifier `name` anywhere in `template` by `value`.
fn fill(template: &mut Expr, name: &str, value: &Expr) {
    use datafusion::sql::sqlparser::ast::VisitMut;
    struct Fill<'a>(&'a str, &'a Expr);
    impl datafusion::sql::sqlparser::ast::VisitorMut for Fill<'_> {
        type Break = ();
        fn post_visit_expr(&mut self, expr: &mut Expr) -> std::ops::ControlFlow<()> {
            if let Expr::Identifier(ident) = expr
                && ident.value == self.0
            {
                *expr = Expr::Nested(Box::new(self.1.clone()));
            }
            std::ops::ControlFlow::Continue(())
        }
    }
    let _ = template.visit(&mut Fill(name, value));
}

fn is_text(data_type: &DataType) -> bool {
    match data_type {
        DataType::Text | DataType::Varchar(_) | DataType::CharacterVarying(_) | DataType::String(_) => true,
        DataType::Custom(name, _) => matches!(last(name).as_deref(), Some("text" | "name" | "varchar")),
        _ => false,
    }
}

fn oid_alias(data_type: &DataType) -> Option<String> {
    match data_type {
        DataType::Regclass => Some("regclass".into()),
        DataType::Custom(name, _) => last(name),
        _ => None,
    }
}

fn last(name: &ObjectName) -> Option<String> {
    name.0
        .last()
        .and_then(|part| part.as_ident())
        .map(|ident| ident.value.to_ascii_lowercase())
}

/// `pg_table_is_visible(e)` → whether relation `e`'s schema is on the path.
pub fn table_visibility(expr: &mut Expr) {
    use datafusion::sql::sqlparser::ast::{FunctionArg, FunctionArgExpr, FunctionArguments};
    let Expr::Function(function) = expr else { return };
    let name = function.name.0.last().and_then(|p| p.as_ident()).map(|i| i.value.to_ascii_lowercase());
    if name.as_deref() != Some("pg_table_is_visible") {
        return;
    }
    let FunctionArguments::List(list) = &function.args else { return };
    let [FunctionArg::Unnamed(FunctionArgExpr::Expr(oid))] = list.args.as_slice() else {
        return;
    };
    let template = "(SELECT bool_or(array_has(current_schemas(true), __wb_n.nspname)) \
         FROM pg_catalog.pg_class __wb_c JOIN pg_catalog.pg_namespace __wb_n ON __wb_n.oid = __wb_c.relnamespace \
         WHERE __wb_c.oid = __oid)";
    let Some(mut replacement) = parse_expr(template) else { return };
    let oid = oid.clone();
    substitute(&mut replacement, &oid);
    *expr = replacement;
}

/// The lookup datafusion-pg-catalog plans for `'name'::regclass` looks an
/// unqualified name up in `current_schema()` only; PostgreSQL searches
/// `pg_catalog` first, so `'pg_class'::regclass` (pgjdbc's join to
/// `pg_description`) must find the catalog table. Search both, the catalog
/// first, as PostgreSQL does.
pub fn regclass_search_path(query: &mut datafusion::sql::sqlparser::ast::Query) {
    const UNQUALIFIED: &str = "n.nspname = current_schema()";
    let text = query.to_string();
    if query.order_by.is_some()
        || query.limit_clause.is_some()
        || !text.starts_with("SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n")
        || !text.contains("parse_ident(")
        || !text.contains(UNQUALIFIED)
    {
        return;
    }
    let fixed = format!(
        "{} ORDER BY n.nspname = 'pg_catalog' DESC LIMIT 1",
        text.replace(UNQUALIFIED, "n.nspname IN ('pg_catalog', current_schema())")
    );
    if let Ok(parsed) = datafusion::sql::sqlparser::parser::Parser::new(&datafusion::sql::sqlparser::dialect::PostgreSqlDialect {})
        .try_with_sql(&fixed)
        .and_then(|mut p| p.parse_query())
    {
        *query = *parsed;
    }
}

/// In `ORDER BY`, where DataFusion cannot run subqueries, order
/// `e::regclass::text` (and the other lookups) by the oid `e` itself.
pub fn order_by_oid(query: &mut datafusion::sql::sqlparser::ast::Query) {
    use datafusion::sql::sqlparser::ast::{OrderByKind, VisitMut, VisitorMut};
    struct Strip;
    impl VisitorMut for Strip {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &mut Expr) -> std::ops::ControlFlow<()> {
            if let Expr::Cast { expr: inner, data_type, .. } = expr
                && is_text(data_type)
                && let Expr::Cast { expr: oid, data_type: alias, .. } = inner.as_ref()
                && oid_alias(alias).is_some_and(|a| a.starts_with("reg"))
            {
                // `oid + 0`: the same order, under a name of its own (a bare
                // `c.oid` would clash with a selected `c.oid::regclass`).
                *expr = Expr::BinaryOp {
                    left: Box::new(Expr::Nested(oid.clone())),
                    op: datafusion::sql::sqlparser::ast::BinaryOperator::Plus,
                    right: Box::new(Expr::Value(datafusion::sql::sqlparser::ast::Value::Number("0".into(), false).into())),
                };
            }
            std::ops::ControlFlow::Continue(())
        }
    }
    if let Some(order_by) = &mut query.order_by
        && let OrderByKind::Expressions(exprs) = &mut order_by.kind
    {
        for e in exprs {
            let _ = e.expr.visit(&mut Strip);
        }
    }
}

/// Casts of plain columns in the select list that DataFusion would label
/// wrongly or cannot plan get an internal alias (`__alias_<column>`, which
/// the result's description shows as `<column>`, as Postgres labels them):
/// - reverse oid casts (`c.oid::regclass`), always: Postgres labels them
///   `oid`, and they are rewritten into lookups that would lose the label;
/// - any cast of a column in a query with ORDER BY: DataFusion names the
///   cast like the column the sort adds beside it and refuses the projection
///   (`SELECT CAST(c AS text) ... ORDER BY c`, apache/datafusion#13558); with
///   the alias, ORDER BY `c` still sorts by the column.
pub fn label_column_casts(query: &mut datafusion::sql::sqlparser::ast::Query) {
    use datafusion::sql::sqlparser::ast::{SelectItem, SetExpr};
    let ordered = query.order_by.is_some();
    let SetExpr::Select(select) = query.body.as_mut() else { return };
    for item in &mut select.projection {
        let SelectItem::UnnamedExpr(expr) = item else { continue };
        let Expr::Cast { expr: inner, data_type, .. } = &*expr else { continue };
        if !ordered && !oid_alias(data_type).is_some_and(|a| a.starts_with("reg")) {
            continue;
        }
        let label = match inner.as_ref() {
            Expr::Identifier(i) => i.clone(),
            Expr::CompoundIdentifier(parts) => match parts.last() {
                Some(last) => last.clone(),
                None => continue,
            },
            _ => continue,
        };
        *item = SelectItem::ExprWithAlias {
            expr: expr.clone(),
            alias: datafusion::sql::sqlparser::ast::Ident::new(format!("__alias_{}", label.value)),
        };
    }
}
