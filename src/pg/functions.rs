//! Per-connection SQL functions that act on the server's backends:
//! `pg_backend_pid()`, `pg_cancel_backend(pid)`, `pg_terminate_backend(pid)`
//! and `session_user` / `current_user`.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use datafusion::arrow::datatypes::{DataType, Int32Type};
use datafusion::common::{ScalarValue, exec_err};
use datafusion::error::Result;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use datafusion::prelude::SessionContext;

use super::backends::{Backend, Backends, StopReason};
use crate::engine::constant_udf;

/// Register the functions that depend on who is connected.
pub fn register(ctx: &SessionContext, backend: &Arc<Backend>, backends: &Arc<Backends>) {
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
