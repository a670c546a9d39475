//! Clients read; only pipelines write. This hook refuses every statement that
//! would change data or the catalog, before anything is planned or run.

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{CopySource, CopyTarget, Statement};
use datafusion_postgres::QueryHook;
use datafusion_postgres::hooks::HookClient;
use pgwire::api::ClientInfo;
use pgwire::api::results::Response;
use pgwire::error::{PgWireError, PgWireResult};

use super::errors;

#[derive(Debug)]
pub struct ReadOnlyHook;

/// The command name (as Postgres tags it) of a statement that writes.
pub fn writing_command(statement: &Statement) -> Option<&'static str> {
    Some(match statement {
        Statement::Insert(_) => "INSERT",
        Statement::Update { .. } => "UPDATE",
        Statement::Delete(_) => "DELETE",
        Statement::Merge { .. } => "MERGE",
        Statement::Truncate { .. } => "TRUNCATE",
        Statement::CreateTable(_) => "CREATE TABLE",
        Statement::CreateView { .. } => "CREATE VIEW",
        Statement::CreateSchema { .. } => "CREATE SCHEMA",
        Statement::CreateDatabase { .. } => "CREATE DATABASE",
        Statement::CreateIndex(_) => "CREATE INDEX",
        Statement::CreateFunction(_) => "CREATE FUNCTION",
        Statement::CreateRole { .. } => "CREATE ROLE",
        Statement::CreateSequence { .. } => "CREATE SEQUENCE",
        Statement::CreateType { .. } => "CREATE TYPE",
        Statement::CreateExtension { .. } => "CREATE EXTENSION",
        Statement::CreateTrigger { .. } => "CREATE TRIGGER",
        Statement::CreateProcedure { .. } => "CREATE PROCEDURE",
        Statement::AlterTable { .. } => "ALTER TABLE",
        Statement::AlterView { .. } => "ALTER VIEW",
        Statement::AlterIndex { .. } => "ALTER INDEX",
        Statement::AlterRole { .. } => "ALTER ROLE",
        Statement::AlterSchema(_) => "ALTER SCHEMA",
        Statement::Drop { .. } => "DROP",
        Statement::DropFunction { .. } => "DROP FUNCTION",
        Statement::Grant { .. } => "GRANT",
        Statement::Revoke { .. } => "REVOKE",
        Statement::Comment { .. } => "COMMENT",
        Statement::Copy {
            source: CopySource::Table { .. },
            to: false,
            ..
        } => "COPY FROM",
        Statement::Copy {
            target: CopyTarget::File { .. } | CopyTarget::Program { .. },
            ..
        } => "COPY to a server file",
        _ => return None,
    })
}

fn refuse(command: &str) -> PgWireError {
    errors::user(errors::with_hint(
        errors::error(
            errors::READ_ONLY,
            format!("cannot execute {command}: Workbench is read-only over SQL"),
        ),
        "bronze, silver and gold tables are written only by pipelines: \
         edit the dataset's spec and run `workbench run <dataset>` or SELECT * FROM run('<dataset>')",
    ))
}

#[async_trait]
impl QueryHook for ReadOnlyHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        writing_command(statement).map(|command| Err(refuse(command)))
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        writing_command(statement).map(|command| Err(refuse(command)))
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        writing_command(statement).map(|command| Err(refuse(command)))
    }
}
