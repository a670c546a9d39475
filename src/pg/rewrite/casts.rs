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
