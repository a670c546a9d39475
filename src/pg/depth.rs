//! How deep a statement's expressions may nest. BI tools generate long
//! filter lists (`a <> 1 AND a <> 2 AND ...`, `x = 1 OR x = 2 OR ...`) that
//! parse into trees as deep as the list is long, and the planner walks them
//! recursively. Statements are planned on threads with deep stacks (see
//! `engine::executor`); past `MAX_EXPRESSION_DEPTH` a statement is refused
//! with PostgreSQL's `54001 stack depth limit exceeded` instead of risking
//! the process.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{Expr, Statement, Visit, Visitor};
use pgwire::error::PgWireResult;

use super::errors;

/// The deepest expression nesting a statement may have: a 10,000-term
/// OR list, as BI filters produce, plans and runs.
pub const MAX_EXPRESSION_DEPTH: usize = 12_000;

/// Refuse `statement` if its expressions nest deeper than the limit.
pub fn check(statement: &Statement) -> PgWireResult<()> {
    let mut depth = Depth { current: 0 };
    match statement.visit(&mut depth) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(too_deep()),
    }
}

pub fn too_deep() -> pgwire::error::PgWireError {
    errors::user(errors::with_hint(
        errors::error(
            errors::STACK_DEPTH,
            format!("stack depth limit exceeded: expressions nest more than {MAX_EXPRESSION_DEPTH} levels deep"),
        ),
        "write long lists of values as IN (...) or join a table of them instead of chaining OR/AND/+ terms",
    ))
}

struct Depth {
    current: usize,
}

impl Visitor for Depth {
    type Break = ();

    fn pre_visit_expr(&mut self, _expr: &Expr) -> ControlFlow<()> {
        self.current += 1;
        if self.current > MAX_EXPRESSION_DEPTH {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, _expr: &Expr) -> ControlFlow<()> {
        self.current -= 1;
        ControlFlow::Continue(())
    }
}
