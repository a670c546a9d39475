//! Table-function arguments are read when a query is planned (the result
//! of `preview('sales', 'landing/x.csv')` has the file's columns), so a
//! statement such as `SELECT * FROM preview($1, $2)` cannot be planned at
//! Parse time like other statements. It is planned once its parameters are
//! known — at Describe Portal or Execute — with the bound values in place of
//! the placeholders. psycopg 3, asyncpg and JDBC bind parameters this way.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, FunctionArg, FunctionArgExpr, Statement, TableFactor, Value, Visit, VisitMut, Visitor, VisitorMut,
};
use pgwire::api::Type;
use pgwire::api::portal::Portal;
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};

/// Whether a table function of `statement` takes a `$n` argument.
pub fn needs_values(statement: &Statement) -> bool {
    struct Find(bool);
    impl Visitor for Find {
        type Break = ();
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            if let TableFactor::Table { args: Some(args), .. } = factor {
                for arg in &args.args {
                    if let FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) = arg
                        && contains_placeholder(e)
                    {
                        self.0 = true;
                        return ControlFlow::Break(());
                    }
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut find = Find(false);
    let _ = statement.visit(&mut find);
    find.0
}

fn contains_placeholder(expr: &Expr) -> bool {
    struct Find;
    impl Visitor for Find {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            match expr {
                Expr::Value(v) if matches!(v.value, Value::Placeholder(_)) => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            }
        }
    }
    expr.visit(&mut Find).is_break()
}

/// How many parameters (`$1` .. `$n`) `statement` takes.
pub fn parameter_count(statement: &Statement) -> usize {
    struct Max(usize);
    impl Visitor for Max {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            if let Expr::Value(v) = expr
                && let Value::Placeholder(p) = &v.value
                && let Some(n) = p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok())
            {
                self.0 = self.0.max(n);
            }
            ControlFlow::Continue(())
        }
    }
    let mut max = Max(0);
    let _ = statement.visit(&mut max);
    max.0
}

/// Put the portal's parameter values in place of `$n`, as literals of their
/// declared types (text when undeclared).
pub fn bind<S: Clone>(statement: &mut Statement, portal: &Portal<S>) -> PgWireResult<()> {
    let types = &portal.statement.parameter_types;
    let mut values = Vec::with_capacity(portal.parameter_len());
    for i in 0..portal.parameter_len() {
        let declared = types.get(i).cloned().flatten().unwrap_or(Type::UNKNOWN);
        let value = match declared {
            Type::INT2 | Type::INT4 | Type::INT8 => portal
                .parameter::<i64>(i, &declared)?
                .map(|n| Value::Number(n.to_string(), false)),
            Type::FLOAT4 | Type::FLOAT8 => portal
                .parameter::<f64>(i, &declared)?
                .map(|n| Value::Number(n.to_string(), false)),
            Type::BOOL => portal.parameter::<bool>(i, &declared)?.map(Value::Boolean),
            _ => portal
                .parameter::<String>(i, &Type::TEXT)?
                .map(Value::SingleQuotedString),
        };
        values.push(value.unwrap_or(Value::Null));
    }
    struct Fill<'a>(&'a [Value], Option<usize>);
    impl VisitorMut for Fill<'_> {
        type Break = ();
        fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
            if let Expr::Value(v) = expr
                && let Value::Placeholder(p) = &v.value
            {
                let index = p.strip_prefix('$').and_then(|n| n.parse::<usize>().ok());
                match index.and_then(|n| self.0.get(n.wrapping_sub(1))) {
                    Some(value) => *expr = Expr::Value(value.clone().into()),
                    None => {
                        self.1 = index;
                        return ControlFlow::Break(());
                    }
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut fill = Fill(&values, None);
    if statement.visit(&mut fill).is_break() {
        return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
            "ERROR".into(),
            "08P01".into(),
            format!(
                "bind message supplies {} parameters, but the statement uses ${}",
                values.len(),
                fill.1.unwrap_or_default()
            ),
        ))));
    }
    Ok(())
}
