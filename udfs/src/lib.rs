//! Pure scalar SQL functions for Workbench. Nothing here does I/O or knows
//! about the server: each function maps input arrays to an output array.
//!
//! - [`pg`]: PostgreSQL compatibility functions clients call while browsing
//!   the catalog (`version()`, `pg_function_is_visible(oid)`, ...).
//! - [`tidy`]: helpers the silver rules use (`wb_parse_datetime`, `wb_is_blank`).
//! - [`arith`]: integer arithmetic that raises overflow and float division
//!   that raises division by zero, as PostgreSQL does.
//! - [`mask`]: column masks (keyed hash, partial) the governance layer applies.
//! - [`decimal`]: `wb_parse_decimal`, text to `decimal(p,s)` without a cast's
//!   per-value allocation.

pub mod arith;
pub mod decimal;
pub mod mask;
pub mod pg;
pub mod tidy;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::ScalarUDF;

/// `f` applied to every value of a text array (`Utf8`, `LargeUtf8` or
/// `Utf8View`), collected into the output array; `name` is for the error.
pub(crate) fn map_text<T, O>(name: &str, array: &dyn Array, f: impl Fn(Option<&str>) -> T) -> Result<O>
where
    O: FromIterator<T>,
{
    Ok(match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().iter().map(f).collect(),
        DataType::LargeUtf8 => array.as_string::<i64>().iter().map(f).collect(),
        DataType::Utf8View => array.as_string_view().iter().map(f).collect(),
        other => return exec_err!("{name}: expected text, got {other}"),
    })
}

/// Every function of this crate that needs no configuration.
pub fn all() -> Vec<ScalarUDF> {
    let mut all = pg::all();
    all.push(tidy::parse_datetime_udf());
    all.push(tidy::is_blank_udf());
    all.push(decimal::parse_decimal_udf());
    all.extend(arith::all());
    all
}
