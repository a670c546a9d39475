//! Named arguments of table functions, as PostgreSQL takes them:
//! `lineage('gold.x', direction => 'down')` or `preview(dataset := 'sales',
//! row_limit => 10)`. DataFusion plans positional arguments only, so named
//! ones are put in their place; an optional argument skipped before a named
//! one is passed as NULL, which the functions read as its default.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, FunctionArg, FunctionArgExpr, FunctionArgOperator, Statement, TableFactor, Value, VisitMut, VisitorMut,
};

/// Rewrite every table function call in `statement`; `parameters` gives a
/// function's parameter names in order (None: not a table function of ours).
pub fn positional(statement: &mut Statement, parameters: &dyn Fn(&str) -> Option<Vec<&'static str>>) -> Result<(), String> {
    struct Calls<'a>(&'a dyn Fn(&str) -> Option<Vec<&'static str>>);
    impl VisitorMut for Calls<'_> {
        type Break = String;
        fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<String> {
            if let TableFactor::Table { name, args: Some(args), .. } = factor {
                let function = name.to_string();
                if let Err(err) = reorder(&function, &mut args.args, self.0) {
                    return ControlFlow::Break(err);
                }
            }
            ControlFlow::Continue(())
        }
    }
    match statement.visit(&mut Calls(parameters)) {
        ControlFlow::Break(err) => Err(err),
        ControlFlow::Continue(()) => Ok(()),
    }
}

fn reorder(function: &str, args: &mut Vec<FunctionArg>, parameters: &dyn Fn(&str) -> Option<Vec<&'static str>>) -> Result<(), String> {
    // `name := value` reaches here as an assignment expression.
    for arg in args.iter_mut() {
        if let FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::BinaryOp { left, op: BinaryOperator::Assignment, right })) = arg
            && let Expr::Identifier(name) = left.as_ref()
        {
            *arg = FunctionArg::Named {
                name: name.clone(),
                arg: FunctionArgExpr::Expr(right.as_ref().clone()),
                operator: FunctionArgOperator::Assignment,
            };
        }
    }
    let named = |a: &FunctionArg| matches!(a, FunctionArg::Named { .. } | FunctionArg::ExprNamed { .. });
    if !args.iter().any(named) {
        return Ok(());
    }
    let Some(names) = parameters(function) else {
        return Err(format!("{function}() does not take named arguments; pass them by position"));
    };
    let mut slots: Vec<Option<FunctionArgExpr>> = vec![None; names.len()];
    let mut seen_named = false;
    for (position, arg) in std::mem::take(args).into_iter().enumerate() {
        let (name, value) = match arg {
            FunctionArg::Unnamed(_) if seen_named => {
                return Err(format!("{function}(): positional argument {} follows a named argument", position + 1));
            }
            FunctionArg::Unnamed(value) => {
                if position >= slots.len() {
                    return Err(format!("{function}() takes at most {} arguments ({})", slots.len(), names.join(", ")));
                }
                slots[position] = Some(value);
                continue;
            }
            FunctionArg::Named { name, arg, .. } => (name.value.to_lowercase(), arg),
            FunctionArg::ExprNamed { name, arg, .. } => match name {
                Expr::Identifier(ident) => (ident.value.to_lowercase(), arg),
                other => return Err(format!("{function}(): '{other}' is not an argument name")),
            },
        };
        seen_named = true;
        let Some(index) = names.iter().position(|n| *n == name) else {
            return Err(format!("{function}() has no argument named {name} (its arguments: {})", names.join(", ")));
        };
        if slots[index].is_some() {
            return Err(format!("{function}(): argument {name} is given twice"));
        }
        slots[index] = Some(value);
    }
    let last = slots.iter().rposition(Option::is_some).map_or(0, |i| i + 1);
    for (index, slot) in slots.into_iter().take(last).enumerate() {
        let value = match slot {
            Some(value) => value,
            None if index == 0 => return Err(format!("{function}(): argument {} is required", names[0])),
            None => FunctionArgExpr::Expr(Expr::Value(Value::Null.into())),
        };
        args.push(FunctionArg::Unnamed(value));
    }
    Ok(())
}
