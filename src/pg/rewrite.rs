//! SQL rewrites for Postgres constructs DataFusion cannot plan, applied
//! before datafusion-postgres' own compatibility parser.

use std::borrow::Cow;

/// Rewrite `sql` into a form DataFusion can plan, or return it unchanged.
pub fn rewrite_sql(sql: &str) -> Cow<'_, str> {
    Cow::Borrowed(sql)
}
