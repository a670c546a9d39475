//! The one place that turns errors into Postgres `ErrorResponse`s with a
//! SQLSTATE, a message and, where we can tell, a hint saying what to do.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use pgwire::error::{ErrorInfo, PgWireError};

use super::backends::StopReason;

pub const QUERY_CANCELED: &str = "57014";
pub const ADMIN_SHUTDOWN: &str = "57P01";
pub const READ_ONLY: &str = "25006";
pub const TOO_MANY_CONNECTIONS: &str = "53300";
pub const OUT_OF_MEMORY: &str = "53200";
pub const INTERNAL: &str = "XX000";
pub const STACK_DEPTH: &str = "54001";
pub const PROGRAM_LIMIT: &str = "54000";
pub const NUMERIC_OUT_OF_RANGE: &str = "22003";
pub const DIVISION_BY_ZERO: &str = "22012";
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
pub const IO_ERROR: &str = "58030";

pub fn error(code: &str, message: impl Into<String>) -> ErrorInfo {
    ErrorInfo::new("ERROR".into(), code.into(), message.into())
}

pub fn fatal(code: &str, message: impl Into<String>) -> ErrorInfo {
    ErrorInfo::new("FATAL".into(), code.into(), message.into())
}

pub fn with_hint(mut info: ErrorInfo, hint: impl Into<String>) -> ErrorInfo {
    info.hint = Some(hint.into());
    info
}

pub fn user(info: ErrorInfo) -> PgWireError {
    PgWireError::UserError(Box::new(info))
}

pub fn canceled(reason: StopReason) -> PgWireError {
    match reason {
        StopReason::UserRequest => user(error(QUERY_CANCELED, "canceling statement due to user request")),
        StopReason::Terminated => user(fatal(
            ADMIN_SHUTDOWN,
            "terminating connection due to administrator command",
        )),
    }
}

pub fn statement_timeout() -> PgWireError {
    user(error(QUERY_CANCELED, "canceling statement due to statement timeout"))
}

pub fn panicked(what: &str) -> PgWireError {
    user(with_hint(
        error(INTERNAL, format!("internal error while {what}; the query was aborted")),
        "this is a bug in Workbench: the server and your connection are still usable; \
         please report the query",
    ))
}

/// Rewrite `err` in place into a `UserError` with the right SQLSTATE.
pub fn normalize(err: &mut PgWireError) {
    let replacement = match err {
        PgWireError::ApiError(inner) => Some(from_api_error(inner.as_ref())),
        PgWireError::QueryCanceled => Some(error(QUERY_CANCELED, "canceling statement due to user request")),
        PgWireError::InvalidPassword(user_name) => Some(fatal(
            "28P01",
            format!("password authentication failed for user \"{user_name}\""),
        )),
        _ => None,
    };
    if let Some(info) = replacement {
        *err = user(info);
    }
}

/// The SQLSTATE `err` reaches the client with (for the audit trail).
pub fn sqlstate(err: &PgWireError) -> String {
    match err {
        PgWireError::UserError(info) => info.code.clone(),
        PgWireError::ApiError(inner) => from_api_error(inner.as_ref()).code,
        PgWireError::QueryCanceled => QUERY_CANCELED.into(),
        PgWireError::InvalidPassword(_) => "28P01".into(),
        _ => "08P01".into(),
    }
}

fn from_api_error(err: &(dyn std::error::Error + Send + Sync + 'static)) -> ErrorInfo {
    if let Some(df) = err.downcast_ref::<DataFusionError>() {
        return from_datafusion(df);
    }
    if let Some(parse) = err.downcast_ref::<datafusion::sql::sqlparser::parser::ParserError>() {
        return from_parser(parse);
    }
    if let Some(pg) = err.downcast_ref::<PgWireError>()
        && let PgWireError::UserError(info) = pg
    {
        let mut copy = ErrorInfo::new(info.severity.clone(), info.code.clone(), info.message.clone());
        copy.detail = info.detail.clone();
        copy.hint = info.hint.clone();
        return copy;
    }
    error(INTERNAL, err.to_string())
}

/// A lake error: an unreachable object store is an I/O error (58030) that
/// says so, the rest internal.
fn storage_error(err: &crate::storage::StorageError) -> ErrorInfo {
    if err.is_unreachable() {
        return with_hint(
            error(IO_ERROR, format!("the lake did not answer: {err}")),
            "check that the object store (or disk) is up and reachable from the server; the statement can be retried",
        );
    }
    error(INTERNAL, err.to_string())
}

/// A pipeline error's SQLSTATE, from its kind.
pub fn pipeline(err: &crate::pipeline::PipelineError) -> ErrorInfo {
    use crate::pipeline::PipelineError;
    if let PipelineError::Storage(storage) = err
        && storage.is_unreachable()
    {
        return storage_error(storage);
    }
    let code = match err {
        PipelineError::Locked { .. } => "55P03",
        PipelineError::UnknownDataset(_) | PipelineError::UnknownRun(_) => "42704",
        PipelineError::Meta(_) | PipelineError::Coordination(_) => "08006",
        PipelineError::Cancelled { .. } | PipelineError::TimedOut { .. } => QUERY_CANCELED,
        PipelineError::Upload { .. } => "22P04",
        _ => INTERNAL,
    };
    error(code, err.to_string())
}

/// A NOTICE carrying `message`.
pub fn notice(message: &str) -> ErrorInfo {
    ErrorInfo::new("NOTICE".to_string(), "00000".to_string(), message.to_string())
}

/// Map a DataFusion error to a SQLSTATE by what went wrong, not by message
/// text where the error kind tells us.
pub fn from_datafusion(err: &DataFusionError) -> ErrorInfo {
    match err {
        DataFusionError::Context(_, inner) => from_datafusion(inner),
        DataFusionError::Diagnostic(_, inner) => from_datafusion(inner),
        DataFusionError::Shared(inner) => from_datafusion(inner),
        DataFusionError::Collection(errs) if !errs.is_empty() => from_datafusion(&errs[0]),
        DataFusionError::SQL(parse, _) => from_parser(parse),
        DataFusionError::SchemaError(schema, _) => {
            use datafusion::common::SchemaError;
            match schema.as_ref() {
                SchemaError::FieldNotFound { .. } => error("42703", strip(err)),
                SchemaError::AmbiguousReference { .. } => error("42702", strip(err)),
                SchemaError::DuplicateQualifiedField { .. }
                | SchemaError::DuplicateUnqualifiedField { .. } => error("42701", strip(err)),
            }
        }
        DataFusionError::NotImplemented(msg) => {
            with_hint(error("0A000", format!("not supported: {msg}")), "rewrite the query without this feature")
        }
        DataFusionError::ResourcesExhausted(msg) => with_hint(
            error(OUT_OF_MEMORY, format!("query exceeded its memory limit: {msg}")),
            "add filters or aggregate earlier, or raise the limit the message names in the server config",
        ),
        DataFusionError::ArrowError(arrow, _) => from_arrow(arrow),
        DataFusionError::External(inner) => {
            if let Some(failed) = inner.downcast_ref::<crate::pipeline::PipelineError>() {
                pipeline(failed)
            } else if let Some(denied) = inner.downcast_ref::<crate::governance::AccessError>() {
                with_hint(error(INSUFFICIENT_PRIVILEGE, denied.to_string()), denied.hint())
            } else if let Some(storage) = inner.downcast_ref::<crate::storage::StorageError>() {
                storage_error(storage)
            } else if let Some(cluster) = inner.downcast_ref::<crate::cluster::ClusterError>() {
                // system_error: the query was fine, the cluster failed it.
                error("58000", cluster.to_string())
            } else if let Some(limit) = inner.downcast_ref::<crate::engine::LimitError>() {
                with_hint(error(PROGRAM_LIMIT, limit.to_string()), "ask for a smaller value, or compute it in pieces")
            } else if let Some(df) = inner.downcast_ref::<DataFusionError>() {
                from_datafusion(df)
            } else if let Some(arrow) = inner.downcast_ref::<ArrowError>() {
                from_arrow(arrow)
            } else {
                error(INTERNAL, inner.to_string())
            }
        }
        DataFusionError::Plan(msg) => from_plan_message(msg, err),
        DataFusionError::Execution(_) if msg_is_cast(err) => error("22P02", strip(err)),
        DataFusionError::Execution(msg) if msg.contains("Divide by zero") || msg.contains("division by zero") => {
            error(DIVISION_BY_ZERO, "division by zero")
        }
        DataFusionError::Configuration(_) => error("22023", strip(err)),
        _ => error(INTERNAL, strip(err)),
    }
}

fn from_parser(err: &datafusion::sql::sqlparser::parser::ParserError) -> ErrorInfo {
    use datafusion::sql::sqlparser::parser::ParserError;
    match err {
        ParserError::RecursionLimitExceeded => with_hint(
            error(STACK_DEPTH, "stack depth limit exceeded: the statement nests too deeply"),
            "nest fewer parentheses or subqueries",
        ),
        other => error("42601", format!("syntax error: {other}")),
    }
}

fn msg_is_cast(err: &DataFusionError) -> bool {
    let text = err.to_string();
    text.contains("Cannot cast") || text.contains("Cast error")
}

fn from_arrow(err: &ArrowError) -> ErrorInfo {
    match err {
        ArrowError::DivideByZero => error(DIVISION_BY_ZERO, "division by zero"),
        ArrowError::CastError(msg) | ArrowError::ParseError(msg) => {
            error("22P02", format!("invalid input value: {msg}"))
        }
        ArrowError::ArithmeticOverflow(msg) => error(NUMERIC_OUT_OF_RANGE, format!("value out of range: {msg}")),
        ArrowError::ExternalError(inner) => match inner.downcast_ref::<DataFusionError>() {
            Some(df) => from_datafusion(df),
            None => error(INTERNAL, inner.to_string()),
        },
        _ => error(INTERNAL, err.to_string()),
    }
}

fn from_plan_message(msg: &str, err: &DataFusionError) -> ErrorInfo {
    let lower = msg.to_ascii_lowercase();
    if lower.contains("table") && lower.contains("not found") {
        let name = msg
            .split('\'')
            .nth(1)
            .map(str::to_string)
            .unwrap_or_else(|| msg.to_string());
        return with_hint(
            error("42P01", format!("relation \"{name}\" does not exist")),
            "tables live in the schemas bronze, silver and gold (e.g. silver.<table>); \
             list them with \\dt *.* or SELECT * FROM information_schema.tables",
        );
    }
    if lower.contains("unknown dataset") {
        return error("42704", strip(err));
    }
    if lower.contains("invalid function") || lower.contains("function") && lower.contains("not found") {
        return error("42883", strip(err));
    }
    if lower.contains("no field named") || lower.contains("column") && lower.contains("not found") {
        return error("42703", strip(err));
    }
    if lower.contains("cannot be cast") || lower.contains("coercion") || lower.contains("no function matches") {
        return error("42804", strip(err));
    }
    error("42601", strip(err))
}

/// DataFusion prefixes messages with the error kind ("Error during planning: ");
/// Postgres clients show the message after "ERROR:", so keep only the text.
fn strip(err: &DataFusionError) -> String {
    let text = err.strip_backtrace();
    for prefix in [
        "Error during planning: ",
        "Execution error: ",
        "Schema error: ",
        "Invalid or Unsupported Configuration: ",
        "Arrow error: ",
    ] {
        if let Some(rest) = text.strip_prefix(prefix) {
            return rest.to_string();
        }
    }
    text
}
