//! Arithmetic with PostgreSQL's errors instead of wrong numbers. After type
//! coercion (so both sides have one type), this analyzer rule rewrites
//! integer `+`, `-`, `*` into the overflow-checked functions of
//! `workbench_udfs::arith` (SQLSTATE 22003 on overflow, where DataFusion
//! wraps around) and floating-point `/`, `%` into ones that raise division
//! by zero (22012, where DataFusion returns `inf`/`NaN`). Column names stay
//! as written (`?column?`, `a + b`).

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, Result};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, LogicalPlan, Operator, ScalarUDF};
use datafusion::optimizer::AnalyzerRule;
use workbench_udfs::arith::{CheckedOp, checked_udf};

#[derive(Debug)]
pub struct CheckedArithmetic {
    add: Arc<ScalarUDF>,
    sub: Arc<ScalarUDF>,
    mul: Arc<ScalarUDF>,
    div: Arc<ScalarUDF>,
    rem: Arc<ScalarUDF>,
}

impl Default for CheckedArithmetic {
    fn default() -> Self {
        CheckedArithmetic {
            add: Arc::new(checked_udf(CheckedOp::Add)),
            sub: Arc::new(checked_udf(CheckedOp::Sub)),
            mul: Arc::new(checked_udf(CheckedOp::Mul)),
            div: Arc::new(checked_udf(CheckedOp::Div)),
            rem: Arc::new(checked_udf(CheckedOp::Rem)),
        }
    }
}

impl AnalyzerRule for CheckedArithmetic {
    fn name(&self) -> &str {
        "workbench_checked_arithmetic"
    }

    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            let mut schema = DFSchema::empty();
            for input in node.inputs() {
                schema.merge(input.schema());
            }
            let names = NamePreserver::new(&node);
            node.map_expressions(|expr| {
                let name = names.save(&expr);
                expr.transform_down(|e| self.rewrite(e, &schema))
                    .map(|t| t.update_data(|e| name.restore(e)))
            })?
            .map_data(|node| node.recompute_schema())
        })
        .map(|t| t.data)
    }
}

impl CheckedArithmetic {
    fn rewrite(&self, expr: Expr, schema: &DFSchema) -> Result<Transformed<Expr>> {
        let Expr::BinaryExpr(BinaryExpr { left, op, right }) = expr else {
            return Ok(Transformed::no(expr));
        };
        match self.checked(op, &left, &right, schema) {
            Some(function) => Ok(Transformed::yes(Expr::ScalarFunction(ScalarFunction::new_udf(
                function.clone(),
                vec![*left, *right],
            )))),
            None => Ok(Transformed::no(Expr::BinaryExpr(BinaryExpr { left, op, right }))),
        }
    }

    /// The checked function for `left op right`, if it needs one.
    fn checked(&self, op: Operator, left: &Expr, right: &Expr, schema: &DFSchema) -> Option<&Arc<ScalarUDF>> {
        let (Ok(l), Ok(r)) = (left.get_type(schema), right.get_type(schema)) else {
            return None;
        };
        if l != r {
            return None;
        }
        let float = matches!(l, DataType::Float16 | DataType::Float32 | DataType::Float64);
        match op {
            Operator::Plus if l.is_integer() => Some(&self.add),
            Operator::Minus if l.is_integer() => Some(&self.sub),
            Operator::Multiply if l.is_integer() => Some(&self.mul),
            Operator::Divide if float => Some(&self.div),
            Operator::Modulo if float => Some(&self.rem),
            _ => None,
        }
    }
}
