//! Per-connection SQL functions that act on the server's backends:
//! `pg_backend_pid()`, `pg_cancel_backend(pid)`, `pg_terminate_backend(pid)`
//! `session_user` / `current_user`, and the settings functions
//! `current_setting`, `set_config`, `current_schema`, `current_schemas`.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use datafusion::arrow::datatypes::{DataType, Int32Type};
use datafusion::common::{ScalarValue, exec_err};
use datafusion::error::Result;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use datafusion::prelude::SessionContext;

use super::backends::{Backend, Backends, StopReason};
use super::search_path;
use super::settings::Settings;
use crate::engine::{DATABASE, constant_udf};
use workbench_udfs::pg::{row_function, scalar_text};

/// Register the functions that depend on who is connected.
pub fn register(ctx: &SessionContext, backend: &Arc<Backend>, backends: &Arc<Backends>, settings: &Arc<Settings>) {
    register_settings(ctx, settings);
    ctx.register_udf(constant_udf("pg_backend_pid", ScalarValue::Int32(Some(backend.pid))));
    ctx.register_udf(signal_udf("pg_cancel_backend", backends.clone(), |b| {
        b.cancel(StopReason::UserRequest)
    }));
    ctx.register_udf(signal_udf("pg_terminate_backend", backends.clone(), |b| {
        b.terminate();
        true
    }));
    let me = backend.clone();
    ctx.register_udf(create_udf(
        "session_user",
        vec![],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |_args: &[ColumnarValue]| -> Result<ColumnarValue> {
            Ok(ColumnarValue::Scalar(ScalarValue::Utf8(me.user())))
        }),
    ));
}

/// A function `name(pid int) -> bool` that applies `signal` to backend `pid`;
/// false when there is no such backend (as in Postgres, with a warning).
fn signal_udf(
    name: &'static str,
    backends: Arc<Backends>,
    signal: fn(&Backend) -> bool,
) -> ScalarUDF {
    create_udf(
        name,
        vec![DataType::Int32],
        DataType::Boolean,
        Volatility::Volatile,
        Arc::new(move |args: &[ColumnarValue]| -> Result<ColumnarValue> {
            let [arg] = args else {
                return exec_err!("{name}(pid) takes one argument");
            };
            let pids: ArrayRef = arg.to_array(1)?;
            let pids = pids.as_primitive::<Int32Type>();
            let out: BooleanArray = (0..pids.len())
                .map(|i| {
                    (!pids.is_null(i)).then(|| {
                        let pid = pids.value(i);
                        match backends.get(pid) {
                            Some(backend) => signal(&backend),
                            None => {
                                tracing::warn!(pid, "{name}: PID {pid} is not a Workbench backend");
                                false
                            }
                        }
                    })
                })
                .collect();
            Ok(match arg {
                ColumnarValue::Scalar(_) => {
                    ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?)
                }
                ColumnarValue::Array(_) => ColumnarValue::Array(Arc::new(out)),
            })
        }),
    )
}

fn register_settings(ctx: &SessionContext, settings: &Arc<Settings>) {
    use datafusion::arrow::datatypes::Field;
    let Some(catalog) = ctx.catalog(DATABASE) else { return };
    let s = settings.clone();
    ctx.register_udf(row_function(
        "current_setting",
        &[1, 2],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |args| {
            let Some(name) = scalar_text(&args[0]) else {
                return Ok(ScalarValue::Utf8(None));
            };
            let missing_ok = matches!(args.get(1), Some(ScalarValue::Boolean(Some(true))));
            match s.get(&name) {
                Some(value) => Ok(ScalarValue::Utf8(Some(value))),
                None if missing_ok => Ok(ScalarValue::Utf8(None)),
                None => exec_err!("unrecognized configuration parameter \"{name}\""),
            }
        }),
    ));
    let s = settings.clone();
    ctx.register_udf(row_function(
        "set_config",
        &[3],
        DataType::Utf8,
        Volatility::Volatile,
        Arc::new(move |args| {
            let (Some(name), value) = (scalar_text(&args[0]), scalar_text(&args[1]).unwrap_or_default()) else {
                return exec_err!("set_config: the setting name must not be NULL");
            };
            let local = matches!(args[2], ScalarValue::Boolean(Some(true)));
            s.set(&name, &value, local)
                .map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))?;
            Ok(ScalarValue::Utf8(s.get(&name)))
        }),
    ));
    let (s, c) = (settings.clone(), catalog.clone());
    ctx.register_udf(row_function(
        "current_schema",
        &[0],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |_| Ok(ScalarValue::Utf8(search_path::current_schema(&s, c.as_ref())))),
    ));
    let (s, c) = (settings.clone(), catalog);
    let item = Arc::new(Field::new_list_field(DataType::Utf8, true));
    ctx.register_udf(row_function(
        "current_schemas",
        &[1],
        DataType::List(item),
        Volatility::Stable,
        Arc::new(move |args| {
            let implicit = matches!(args[0], ScalarValue::Boolean(Some(true)));
            let mut schemas: Vec<ScalarValue> = Vec::new();
            if implicit {
                schemas.push(ScalarValue::Utf8(Some("pg_catalog".into())));
            }
            schemas.extend(
                search_path::existing_schemas(&s, c.as_ref())
                    .into_iter()
                    .map(|n| ScalarValue::Utf8(Some(n))),
            );
            Ok(ScalarValue::List(ScalarValue::new_list_nullable(&schemas, &DataType::Utf8)))
        }),
    ));
}
