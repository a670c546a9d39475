//! `x = 1 OR x = 2 OR ... OR x = n` → `x IN (1, 2, ..., n)`. BI tools write
//! a filter on many values as an OR chain; parsed, it is a tree as deep as
//! the list is long, which DataFusion plans in time that grows faster than
//! the list (a 10,000-value chain took minutes), while an IN list of the
//! same values plans at once. Only chains whose every term compares the
//! same expression with a literal are rewritten, so the meaning is kept
//! (NULL semantics of `=`/OR and IN agree for literals).

use datafusion::sql::sqlparser::ast::{BinaryOperator, Expr};

/// Chains shorter than this are left as written.
const MIN_TERMS: usize = 8;

pub fn or_chain_to_in_list(expr: &mut Expr) {
    if !matches!(expr, Expr::BinaryOp { op: BinaryOperator::Or, .. }) {
        return;
    }
    // Walk the OR tree with a stack (it can be thousands deep).
    let mut terms: Vec<&Expr> = Vec::new();
    let mut pending: Vec<&Expr> = vec![expr];
    while let Some(node) = pending.pop() {
        match node {
            Expr::BinaryOp { left, op: BinaryOperator::Or, right } => {
                pending.push(right);
                pending.push(left);
            }
            Expr::Nested(inner) if matches!(**inner, Expr::BinaryOp { op: BinaryOperator::Or, .. }) => {
                pending.push(inner);
            }
            other => terms.push(other),
        }
    }
    if terms.len() < MIN_TERMS {
        return;
    }
    let mut subject: Option<&Expr> = None;
    let mut values: Vec<Expr> = Vec::with_capacity(terms.len());
    for term in terms {
        let Expr::BinaryOp { left, op: BinaryOperator::Eq, right } = term else {
            return;
        };
        let (column, value) = match (&**left, &**right) {
            (column, value @ Expr::Value(_)) if !matches!(column, Expr::Value(_)) => (column, value),
            (value @ Expr::Value(_), column) if !matches!(column, Expr::Value(_)) => (column, value),
            _ => return,
        };
        if !matches!(column, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) {
            return;
        }
        match subject {
            None => subject = Some(column),
            Some(first) if first == column => {}
            Some(_) => return,
        }
        values.push(value.clone());
    }
    let Some(subject) = subject.cloned() else { return };
    *expr = Expr::InList {
        expr: Box::new(subject),
        list: values,
        negated: false,
    };
}
