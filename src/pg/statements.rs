//! Session statements answered by Workbench itself, before anything is
//! planned: `SET`/`RESET`/`SHOW`/`DISCARD` over the connection's
//! [`Settings`], and savepoints (accepted inside a transaction, as a
//! read-only server has nothing to roll back).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::{DFSchema, ParamValues};
use datafusion::logical_expr::{EmptyRelation, LogicalPlan};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{
    DiscardObject, Expr, Ident, ObjectName, Reset, Set, Statement, TransactionIsolationLevel, TransactionMode,
    Value,
};
use datafusion_postgres::QueryHook;
use datafusion_postgres::hooks::HookClient;
use futures::stream;
use pgwire::api::ClientInfo;
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::startup::ParameterStatus;

use super::settings::{SettingError, Settings, canonical};

/// Client metadata keys arrow-pg reads when encoding values.
const FORMAT_KEYS: &[&str] = &["datestyle", "intervalstyle", "bytea_output", "extra_float_digits", "timezone"];

#[derive(Debug)]
pub struct SessionStatementHook {
    settings: Arc<Settings>,
    /// Whether the client's start-up parameters were read into the settings.
    absorbed: AtomicBool,
}

impl SessionStatementHook {
    pub fn new(settings: Arc<Settings>) -> Self {
        SessionStatementHook {
            settings,
            absorbed: AtomicBool::new(false),
        }
    }

    /// Take `TimeZone`, `DateStyle`, `search_path`, `options=-c a=b` ... from
    /// the start-up packet, once.
    pub fn absorb_startup(&self, client: &(dyn ClientInfo + Send + Sync), ctx: &SessionContext) {
        if self.absorbed.swap(true, Ordering::Relaxed) {
            return;
        }
        let metadata = client.metadata().clone();
        if let Some(user) = metadata.get("user") {
            self.settings.set_user(user);
        }
        for (key, value) in &metadata {
            if key == "options" {
                for (name, value) in parse_options(value) {
                    let _ = self.settings.set(&name, &value, false);
                }
            } else if !matches!(key.as_str(), "user" | "database") {
                let _ = self.settings.set(key, value, false);
            }
        }
        apply_to_engine(&self.settings, ctx);
    }

    async fn respond(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        match statement {
            Statement::Set(set) => Some(self.set(set, ctx, client).await),
            Statement::Reset(reset) => Some(self.reset(&reset.reset, ctx, client).await),
            Statement::Discard { object_type } => {
                if matches!(object_type, DiscardObject::ALL) {
                    let changed = self.settings.reset_all();
                    if let Err(e) = self.changed(&changed, ctx, client).await {
                        return Some(Err(e));
                    }
                }
                Some(Ok(Response::Execution(Tag::new(&format!("DISCARD {object_type}")))))
            }
            Statement::ShowVariable { variable } => Some(self.show(variable)),
            Statement::Savepoint { .. } => Some(Ok(Response::Execution(Tag::new("SAVEPOINT")))),
            Statement::ReleaseSavepoint { .. } => Some(Ok(Response::Execution(Tag::new("RELEASE")))),
            Statement::Rollback {
                savepoint: Some(_), ..
            } => Some(Ok(Response::Execution(Tag::new("ROLLBACK")))),
            Statement::StartTransaction { modes, .. } => {
                // Record the isolation level asked for; the transaction itself
                // is datafusion-postgres' hook's business.
                for mode in modes {
                    if let TransactionMode::IsolationLevel(level) = mode {
                        let _ = self.settings.set("transaction_isolation", isolation(level), true);
                    }
                }
                None
            }
            Statement::Commit { .. } | Statement::Rollback { .. } => {
                self.settings.end_transaction();
                None
            }
            _ => None,
        }
    }

    async fn set(&self, set: &Set, ctx: &SessionContext, client: &mut dyn HookClient) -> PgWireResult<Response> {
        let mut changed = Vec::new();
        match set {
            Set::SingleAssignment {
                scope,
                variable,
                values,
                ..
            } => {
                let local = scope.as_ref().is_some_and(|s| s.to_string().eq_ignore_ascii_case("LOCAL"));
                let name = object_name(variable);
                let value = values.iter().map(value_text).collect::<Vec<_>>().join(", ");
                if value.eq_ignore_ascii_case("default") {
                    changed.push(self.settings.reset(&name).map_err(setting_error)?);
                } else {
                    changed.push(self.settings.set(&name, &value, local).map_err(setting_error)?);
                }
            }
            Set::SetTimeZone { local, value } => {
                // `SET TIME ZONE "Asia/Shanghai"`: a quoted name, not a quoted identifier list.
                let zone = match value {
                    Expr::Identifier(ident) => ident.value.clone(),
                    other => value_text(other),
                };
                changed.push(self.settings.set("TimeZone", &zone, *local).map_err(setting_error)?);
            }
            Set::SetNames { charset_name, .. } => {
                changed.push(self.settings.set("client_encoding", &charset_name.value, false).map_err(setting_error)?);
            }
            Set::SetNamesDefault {} => changed.push(self.settings.reset("client_encoding").map_err(setting_error)?),
            Set::SetTransaction { modes, session, .. } => {
                let prefix = if *session { "default_" } else { "" };
                for mode in modes {
                    match mode {
                        TransactionMode::IsolationLevel(level) => {
                            let name = format!("{prefix}transaction_isolation");
                            self.settings.set(&name, isolation(level), !session).map_err(setting_error)?;
                        }
                        TransactionMode::AccessMode(mode) => {
                            let read_only = mode.to_string().eq_ignore_ascii_case("READ ONLY");
                            let name = format!("{prefix}transaction_read_only");
                            let value = if read_only { "on" } else { "off" };
                            self.settings.set(&name, value, !session).map_err(setting_error)?;
                        }
                    }
                }
            }
            Set::SetRole { role_name, .. } => {
                // A user's privileges are the union of their configured roles;
                // switching to another role or user is not offered.
                let user = ctx.state().config().get_extension::<crate::governance::Access>().map(|a| a.user());
                if let Some(role) = role_name
                    && Some(&role.value) != user.as_ref()
                    && !role.value.eq_ignore_ascii_case("none")
                {
                    return Err(with_hint(
                        "0A000",
                        format!("SET ROLE {} is not supported", role.value),
                        "a user's privileges are the union of the roles the config gives them; connect as another user instead",
                    ));
                }
            }
            Set::SetSessionAuthorization(param) => {
                let user = ctx.state().config().get_extension::<crate::governance::Access>().map(|a| a.user());
                if let datafusion::sql::sqlparser::ast::SetSessionAuthorizationParamKind::User(name) = &param.kind
                    && Some(&name.value) != user.as_ref()
                {
                    return Err(with_hint(
                        "42501",
                        format!("permission denied to set session authorization to {}", name.value),
                        "connect as that user instead",
                    ));
                }
            }
            Set::MultipleAssignments { assignments } => {
                for assignment in assignments {
                    let name = object_name(&assignment.name);
                    changed.push(self.settings.set(&name, &value_text(&assignment.value), false).map_err(setting_error)?);
                }
            }
            other => {
                return Err(user_error("0A000", format!("{other} is not supported by Workbench")));
            }
        }
        self.changed(&changed, ctx, client).await?;
        Ok(Response::Execution(Tag::new("SET")))
    }

    async fn reset(&self, reset: &Reset, ctx: &SessionContext, client: &mut dyn HookClient) -> PgWireResult<Response> {
        let changed = match reset {
            Reset::ALL => self.settings.reset_all(),
            Reset::ConfigurationParameter(name) => {
                vec![self.settings.reset(&object_name(name)).map_err(setting_error)?]
            }
        };
        self.changed(&changed, ctx, client).await?;
        Ok(Response::Execution(Tag::new("RESET")))
    }

    /// After settings changed: tell the engine, the encoder and the client.
    async fn changed(&self, names: &[String], ctx: &SessionContext, client: &mut dyn HookClient) -> PgWireResult<()> {
        apply_to_engine(&self.settings, ctx);
        for key in FORMAT_KEYS {
            if let Some(value) = self.settings.get(key) {
                client.metadata_mut().insert(key.to_string(), value);
            }
        }
        for name in names {
            if Settings::reported(name)
                && let Some(value) = self.settings.get(name)
            {
                client
                    .send_message(PgWireBackendMessage::ParameterStatus(ParameterStatus::new(name.clone(), value)))
                    .await?;
            }
        }
        Ok(())
    }

    fn show(&self, variable: &[Ident]) -> PgWireResult<Response> {
        let name = variable.iter().map(|i| i.value.as_str()).collect::<Vec<_>>().join(" ");
        if name.eq_ignore_ascii_case("all") {
            let fields = Arc::new(vec![text_field("name"), text_field("setting"), text_field("description")]);
            let rows: Vec<Vec<String>> = self
                .settings
                .all()
                .into_iter()
                .map(|(n, v, d)| vec![n, v, d.to_string()])
                .collect();
            return Ok(Response::Query(text_rows(fields, rows)));
        }
        let value = self
            .settings
            .get(&name)
            .ok_or_else(|| setting_error(SettingError::Unknown(canonical(&name))))?;
        let label = canonical(&name);
        Ok(Response::Query(text_rows(Arc::new(vec![text_field(&label)]), vec![vec![value]])))
    }

    /// The result schema of a statement this hook answers, for Describe.
    fn plan(&self, statement: &Statement) -> Option<PgWireResult<LogicalPlan>> {
        let columns: Vec<String> = match statement {
            Statement::ShowVariable { variable } => {
                let name = variable.iter().map(|i| i.value.as_str()).collect::<Vec<_>>().join(" ");
                if name.eq_ignore_ascii_case("all") {
                    vec!["name".into(), "setting".into(), "description".into()]
                } else {
                    vec![canonical(&name)]
                }
            }
            Statement::Set(_)
            | Statement::Reset(_)
            | Statement::Discard { .. }
            | Statement::Savepoint { .. }
            | Statement::ReleaseSavepoint { .. }
            | Statement::Rollback { savepoint: Some(_), .. } => vec![],
            _ => return None,
        };
        let fields: Vec<Field> = columns.iter().map(|c| Field::new(c, DataType::Utf8, true)).collect();
        Some(
            DFSchema::try_from(Schema::new(fields))
                .map(|schema| {
                    LogicalPlan::EmptyRelation(EmptyRelation {
                        produce_one_row: false,
                        schema: Arc::new(schema),
                    })
                })
                .map_err(|e| PgWireError::ApiError(Box::new(e))),
        )
    }
}

#[async_trait]
impl QueryHook for SessionStatementHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        self.absorb_startup(&*client, ctx);
        self.respond(statement, ctx, client).await
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        self.absorb_startup(client, ctx);
        self.plan(statement)
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        self.respond(statement, ctx, client).await
    }
}

/// Make the engine follow the settings: default schema (first schema of
/// `search_path` that exists), time zone, join order and the session's
/// `datafusion.*` options.
pub fn apply_to_engine(settings: &Settings, ctx: &SessionContext) {
    let schema = ctx
        .catalog(crate::engine::DATABASE)
        .and_then(|catalog| super::search_path::current_schema(settings, catalog.as_ref()));
    let time_zone = settings.get("TimeZone").unwrap_or_else(|| "UTC".into());
    let state = ctx.state_ref();
    let mut state = state.write();
    let options = state.config_mut().options_mut();
    // DataFusion's own options first: the settings below are ours to keep.
    settings.apply_engine_options(options);
    options.catalog.default_schema = schema.unwrap_or_else(|| "public".into());
    options.execution.time_zone = Some(time_zone);
    if let Some(planner) = options.extensions.get_mut::<crate::engine::PlannerOptions>() {
        planner.join_order = settings.join_order();
        planner.row_filters = settings.row_filters();
        planner.join_filters = settings.join_filters();
        planner.filter_estimates = settings.filter_estimates();
    }
}

fn isolation(level: &TransactionIsolationLevel) -> &'static str {
    match level {
        TransactionIsolationLevel::ReadUncommitted => "read uncommitted",
        TransactionIsolationLevel::ReadCommitted => "read committed",
        TransactionIsolationLevel::RepeatableRead => "repeatable read",
        TransactionIsolationLevel::Serializable | TransactionIsolationLevel::Snapshot => "serializable",
    }
}

fn object_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|part| part.as_ident().map(|i| i.value.clone()).unwrap_or_else(|| part.to_string()))
        .collect::<Vec<_>>()
        .join(".")
}

/// A SET value as Postgres stores it: strings unquoted, identifiers as written.
fn value_text(expr: &Expr) -> String {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
            Value::Boolean(b) => if *b { "on" } else { "off" }.into(),
            other => other.to_string(),
        },
        Expr::Identifier(ident) if ident.quote_style == Some('"') => format!("\"{}\"", ident.value),
        Expr::Identifier(ident) => ident.value.clone(),
        other => other.to_string(),
    }
}

/// `-c name=value --name=value` pairs of the `options` start-up parameter.
fn parse_options(options: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut words = options.split_whitespace();
    while let Some(word) = words.next() {
        let pair = if word == "-c" {
            words.next()
        } else {
            word.strip_prefix("-c").or_else(|| word.strip_prefix("--"))
        };
        if let Some((name, value)) = pair.and_then(|p| p.split_once('=')) {
            out.push((name.replace('-', "_"), value.to_string()));
        }
    }
    out
}

fn text_field(name: &str) -> FieldInfo {
    FieldInfo::new(name.to_string(), None, None, pgwire::api::Type::TEXT, FieldFormat::Text)
}

fn text_rows(fields: Arc<Vec<FieldInfo>>, rows: Vec<Vec<String>>) -> QueryResponse {
    let encoded: Vec<PgWireResult<_>> = rows
        .into_iter()
        .map(|row| {
            let mut encoder = DataRowEncoder::new(fields.clone());
            for value in row {
                encoder.encode_field(&Some(value))?;
            }
            Ok(encoder.take_row())
        })
        .collect();
    QueryResponse::new(fields, Box::pin(stream::iter(encoded)))
}

fn setting_error(err: SettingError) -> PgWireError {
    user_error(err.sqlstate(), err.to_string())
}

fn with_hint(code: &str, message: String, hint: &str) -> PgWireError {
    let mut info = ErrorInfo::new("ERROR".into(), code.into(), message);
    info.hint = Some(hint.into());
    PgWireError::UserError(Box::new(info))
}

fn user_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), code.into(), message)))
}
