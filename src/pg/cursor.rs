//! `MOVE`, the cursor statement sqlparser cannot parse (asyncpg's
//! `Cursor.forward(n)`). It reads like the FETCH it mirrors, so the text is
//! parsed as that FETCH; the rows are fetched from the cursor's portal and
//! dropped, and the command tag counts them (`MOVE 5`). DECLARE, FETCH and
//! CLOSE are datafusion-postgres' cursor hook's.

use datafusion::sql::sqlparser::ast::{FetchDirection, Ident, Statement, Value};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion_postgres::hooks::HookClient;
use futures::StreamExt;
use pgwire::api::results::{Response, Tag};
use pgwire::api::store::PortalStore;
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};

/// The cursor and direction of `sql` if it is one `MOVE` statement.
pub fn parse_move(sql: &str) -> Option<PgWireResult<(Ident, FetchDirection)>> {
    let trimmed = sql.trim_start();
    let keyword = trimmed.get(..4)?;
    if !keyword.eq_ignore_ascii_case("move") || trimmed[4..].chars().next().is_some_and(|c| !c.is_whitespace()) {
        return None;
    }
    // Postgres lets `FROM`/`IN` be left out (asyncpg does); sqlparser does not.
    let rest = trimmed[4..].trim().trim_end_matches(';').trim_end();
    let words: Vec<&str> = rest.split_whitespace().collect();
    let has_from = words.iter().any(|w| w.eq_ignore_ascii_case("from") || w.eq_ignore_ascii_case("in"));
    let as_fetch = match words.split_last() {
        Some((cursor, direction)) if !has_from => format!("FETCH {} FROM {cursor}", direction.join(" ")),
        _ => format!("FETCH {rest}"),
    };
    let parsed = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&as_fetch)
        .and_then(|mut p| p.parse_statements());
    Some(match parsed {
        Ok(statements) => match statements.as_slice() {
            [Statement::Fetch { name, direction, .. }] => Ok((name.clone(), direction.clone())),
            _ => Err(error("42601", "MOVE takes one cursor: MOVE [FORWARD] [n | ALL] [FROM] cursor".into())),
        },
        Err(e) => Err(error("42601", format!("syntax error in MOVE: {e}"))),
    })
}

/// Skip rows of cursor `name` as `direction` says.
pub async fn move_cursor(client: &dyn HookClient, name: &Ident, direction: &FetchDirection) -> PgWireResult<Response> {
    let count = match direction {
        FetchDirection::Next | FetchDirection::Forward { limit: None } => Some(1),
        FetchDirection::Forward { limit: Some(v) } | FetchDirection::Count { limit: v } => match &v.value {
            Value::Number(n, _) => Some(n.parse::<usize>().map_err(|_| error("42601", format!("bad MOVE count {n}")))?),
            other => return Err(error("42601", format!("bad MOVE count {other}"))),
        },
        FetchDirection::ForwardAll | FetchDirection::All => None,
        _ => return Err(error("55000", "cursor can only scan forward".into())),
    };
    let entry = client.portal_store().get_portal(&name.value);
    let portal = entry
        .as_ref()
        .and_then(|entry| entry.value().cloned())
        .ok_or_else(|| error("34000", format!("cursor \"{}\" does not exist", name.value)))?;
    let fetched = portal.fetch(count.unwrap_or(0)).await?;
    let mut rows = fetched.response.data_rows;
    let mut moved = 0;
    while let Some(row) = rows.next().await {
        row?;
        moved += 1;
    }
    Ok(Response::Execution(Tag::new("MOVE").with_rows(moved)))
}

fn error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), code.into(), message)))
}
