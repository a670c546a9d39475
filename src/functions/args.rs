//! Checking table function arguments at planning time.

use datafusion::common::{ScalarValue, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::Expr;

use crate::storage::Layer;

/// A text literal argument.
pub fn text(function: &str, position: usize, expr: &Expr) -> Result<String> {
    match expr {
        Expr::Literal(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s)), _) => {
            Ok(s.clone())
        }
        Expr::Cast(cast) => text(function, position, &cast.expr),
        other => plan_err!("{function}(): argument {position} must be a text literal, got {other}"),
    }
}

/// An integer literal argument.
pub fn integer(function: &str, position: usize, expr: &Expr) -> Result<i64> {
    match expr {
        Expr::Literal(v, _) => match v.clone().cast_to(&datafusion::arrow::datatypes::DataType::Int64) {
            Ok(ScalarValue::Int64(Some(n))) => Ok(n),
            _ => plan_err!("{function}(): argument {position} must be a whole number, got {v}"),
        },
        Expr::Cast(cast) => integer(function, position, &cast.expr),
        other => plan_err!("{function}(): argument {position} must be a whole number, got {other}"),
    }
}

/// `layer.table` (as text) → (layer, table).
pub fn table(function: &str, expr: &Expr) -> Result<(Layer, String)> {
    let name = text(function, 1, expr)?;
    let parts: Vec<&str> = name.split('.').collect();
    let (layer, table) = match parts.as_slice() {
        [layer, table] | [_, layer, table] => (*layer, *table),
        _ => return plan_err!("{function}(): expected 'layer.table' such as 'silver.sales', got '{name}'"),
    };
    match Layer::parse(layer) {
        Some(layer) => Ok((layer, table.to_string())),
        None => plan_err!("{function}(): '{layer}' is not a layer; use bronze, silver or gold (e.g. 'silver.{table}')"),
    }
}

/// Optional argument `index`: absent, or NULL (which a named call such as
/// `lineage('gold.x', depth => 3)` passes for the arguments it skips), means
/// the default.
pub fn optional(exprs: &[Expr], index: usize) -> Option<&Expr> {
    fn is_null(expr: &Expr) -> bool {
        match expr {
            Expr::Literal(value, _) => value.is_null(),
            Expr::Cast(cast) => is_null(&cast.expr),
            Expr::TryCast(cast) => is_null(&cast.expr),
            _ => false,
        }
    }
    exprs.get(index).filter(|e| !is_null(e))
}
