//! Pure scalar SQL functions for Workbench. Nothing here does I/O or knows
//! about the server: each function maps input arrays to an output array.
//!
//! - [`pg`]: PostgreSQL compatibility functions clients call while browsing
//!   the catalog (`version()`, `pg_function_is_visible(oid)`, ...).
//! - [`tidy`]: parsing helpers the silver rules use (`wb_parse_datetime`).

pub mod pg;
pub mod tidy;

use datafusion::logical_expr::ScalarUDF;

/// Every function of this crate that needs no configuration.
pub fn all() -> Vec<ScalarUDF> {
    let mut all = pg::all();
    all.push(tidy::parse_datetime_udf());
    all
}
