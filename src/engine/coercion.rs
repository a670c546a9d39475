//! Postgres reads a quoted literal compared with a boolean column as a
//! boolean (`indisprimary = 'f'`, `attisdropped = 'false'`); DataFusion
//! refuses to compare Boolean with Utf8. This analyzer rule, run before
//! DataFusion's type coercion, turns such string literals into booleans.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, Result, ScalarValue};
use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, LogicalPlan, Operator};
use datafusion::optimizer::AnalyzerRule;

#[derive(Debug, Default)]
pub struct BooleanLiterals;

impl AnalyzerRule for BooleanLiterals {
    fn name(&self) -> &str {
        "workbench_boolean_literals"
    }

    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            let schema = merged_input_schema(&node);
            node.map_expressions(|expr| expr.transform_up(|e| coerce(e, &schema)))
        })
        .map(|t| t.data)
    }
}

/// The schema expressions of `node` are evaluated against: its inputs'.
fn merged_input_schema(node: &LogicalPlan) -> DFSchema {
    let mut schema = DFSchema::empty();
    for input in node.inputs() {
        schema.merge(input.schema());
    }
    schema
}

fn coerce(expr: Expr, schema: &DFSchema) -> Result<Transformed<Expr>> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) if is_comparison(op) => {
            let (left, right, changed) = match (is_boolean(&left, schema), is_boolean(&right, schema)) {
                (true, false) => match as_boolean(&right) {
                    Some(b) => (left, Box::new(b), true),
                    None => (left, right, false),
                },
                (false, true) => match as_boolean(&left) {
                    Some(b) => (Box::new(b), right, true),
                    None => (left, right, false),
                },
                _ => (left, right, false),
            };
            let expr = Expr::BinaryExpr(BinaryExpr { left, op, right });
            Ok(if changed { Transformed::yes(expr) } else { Transformed::no(expr) })
        }
        Expr::InList(InList { expr, list, negated }) if is_boolean(&expr, schema) => {
            let converted: Option<Vec<Expr>> = list.iter().map(|e| as_boolean(e).or_else(|| Some(e.clone()))).collect();
            Ok(Transformed::yes(Expr::InList(InList {
                expr,
                list: converted.unwrap_or(list),
                negated,
            })))
        }
        other => Ok(Transformed::no(other)),
    }
}

fn is_comparison(op: Operator) -> bool {
    matches!(
        op,
        Operator::Eq | Operator::NotEq | Operator::IsDistinctFrom | Operator::IsNotDistinctFrom
    )
}

fn is_boolean(expr: &Expr, schema: &DFSchema) -> bool {
    !matches!(expr, Expr::Literal(..))
        && expr
            .get_type(schema)
            .is_ok_and(|t| t == datafusion::arrow::datatypes::DataType::Boolean)
}

/// A string literal Postgres accepts as a boolean.
fn as_boolean(expr: &Expr) -> Option<Expr> {
    let Expr::Literal(value, _) = expr else { return None };
    let text = match value {
        ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s)) => s,
        _ => return None,
    };
    let b = match text.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "y" | "yes" | "on" | "1" => true,
        "f" | "false" | "n" | "no" | "off" | "0" => false,
        _ => return None,
    };
    Some(Expr::Literal(ScalarValue::Boolean(Some(b)), None))
}

/// DataFusion's analyzer rules with [`BooleanLiterals`] first.
pub fn analyzer_rules() -> Vec<Arc<dyn AnalyzerRule + Send + Sync>> {
    let mut rules: Vec<Arc<dyn AnalyzerRule + Send + Sync>> = vec![Arc::new(BooleanLiterals)];
    rules.extend(datafusion::optimizer::Analyzer::new().rules);
    // After type coercion: it needs both sides of an operator in one type.
    rules.push(Arc::new(super::arithmetic::CheckedArithmetic::default()));
    rules
}
