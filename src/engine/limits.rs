//! Memory limits that cover what functions allocate, not only what
//! DataFusion's operators reserve.
//!
//! - Every query draws on two budgets at once: its connection's
//!   (`query_memory_limit`) and the server's (`server_memory_limit`), so
//!   many modest queries together cannot exhaust the machine either. Running
//!   out of either fails the query with 53200.
//! - The functions whose result can be far larger than their arguments
//!   (`repeat`, `lpad`, `rpad`, `array_repeat`, `range`, `generate_series`
//!   over arrays) compute the size of their result before allocating it: a
//!   value over PostgreSQL's 1 GB field limit is refused with 54000, and the
//!   whole batch's result is reserved from the query's budget first.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

/// PostgreSQL's largest field value (1 GB - 1).
pub const MAX_FIELD_BYTES: u64 = (1 << 30) - 1;

/// A function's result would break a limit before it is computed.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// One value over PostgreSQL's field limit (SQLSTATE 54000).
    #[error("requested length too large: {function}() would return {bytes} bytes; a value may take at most 1 GB")]
    FieldTooLarge { function: String, bytes: u64 },
}

/// A query's share of memory: what it reserves counts against its own limit
/// and the server's at once.
#[derive(Debug)]
pub struct BudgetPool {
    query: Arc<dyn MemoryPool>,
    server: Arc<GreedyMemoryPool>,
}

impl BudgetPool {
    pub fn new(query: Arc<dyn MemoryPool>, server: Arc<GreedyMemoryPool>) -> Self {
        BudgetPool { query, server }
    }
}

impl MemoryPool for BudgetPool {
    fn name(&self) -> &str {
        "workbench_budget"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.query.register(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.query.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.server.grow(reservation, additional);
        self.query.grow(reservation, additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.query.shrink(reservation, shrink);
        self.server.shrink(reservation, shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        self.server.try_grow(reservation, additional).map_err(|e| {
            DataFusionError::ResourcesExhausted(format!(
                "the server's memory budget (server_memory_limit) is in use by other queries: {}",
                e.strip_backtrace()
            ))
        })?;
        if let Err(err) = self.query.try_grow(reservation, additional) {
            self.server.shrink(reservation, additional);
            return Err(match (err, self.query.memory_limit()) {
                (DataFusionError::ResourcesExhausted(detail), MemoryLimit::Finite(limit)) => {
                    DataFusionError::ResourcesExhausted(format!(
                        "the memory one query or pipeline step may use (query_memory_limit, {}) is used up; \
                         raise query_memory_limit in the config file (`workbench serve` also takes \
                         --query-memory-limit), or make the work smaller. {detail}",
                        bytesize::ByteSize(limit as u64)
                    ))
                }
                (err, _) => err,
            });
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.query.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.query.memory_limit()
    }
}

impl std::fmt::Display for BudgetPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "query budget ({}) within the server's ({})", self.query, self.server)
    }
}

/// Functions whose result size depends on an argument's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Amplifier {
    /// `repeat(text, n)`: len(text) × n bytes.
    Repeat,
    /// `lpad`/`rpad(text, n [, fill])`: n characters of up to 4 bytes.
    Pad,
    /// `array_repeat(value, n)`: n elements.
    ArrayRepeat,
    /// `range`/`generate_series(start, stop [, step])` as array functions.
    Range,
}

const GUARDED: &[(&str, Amplifier)] = &[
    ("repeat", Amplifier::Repeat),
    ("lpad", Amplifier::Pad),
    ("rpad", Amplifier::Pad),
    ("array_repeat", Amplifier::ArrayRepeat),
    ("range", Amplifier::Range),
    ("generate_series", Amplifier::Range),
];

/// `functions` (the session's registered scalar functions) with the
/// amplifying ones wrapped to check their result size against `pool`.
pub fn guarded_functions(
    lookup: impl Fn(&str) -> Option<Arc<ScalarUDF>>,
    pool: &Arc<dyn MemoryPool>,
) -> Vec<ScalarUDF> {
    GUARDED
        .iter()
        .filter_map(|(name, kind)| {
            let inner = lookup(name)?;
            Some(ScalarUDF::new_from_impl(SizeChecked {
                inner,
                kind: *kind,
                pool: Pool(pool.clone()),
            }))
        })
        .collect()
}

#[derive(Debug)]
struct SizeChecked {
    inner: Arc<ScalarUDF>,
    kind: Amplifier,
    pool: Pool,
}

/// The query's pool, compared by identity.
#[derive(Debug, Clone)]
struct Pool(Arc<dyn MemoryPool>);

impl PartialEq for SizeChecked {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner && self.kind == other.kind && Arc::ptr_eq(&self.pool.0, &other.pool.0)
    }
}
impl Eq for SizeChecked {}
impl std::hash::Hash for SizeChecked {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
        self.kind.hash(state);
    }
}

impl ScalarUDFImpl for SizeChecked {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let total = result_bytes(self.kind, self.inner.name(), &args.args, args.number_rows)?;
        // Reserve the result before computing it; released once computed
        // (from then on it is a batch like any other).
        let reservation = MemoryConsumer::new(format!("{}()", self.inner.name())).register(&self.pool.0);
        reservation.try_grow(total as usize)?;
        let result = self.inner.invoke_with_args(args);
        drop(reservation);
        result
    }
}

/// The bytes the result of `kind` over `args` will take, refusing any single
/// value over the field limit.
fn result_bytes(kind: Amplifier, name: &str, args: &[ColumnarValue], rows: usize) -> Result<u64> {
    let rows = if args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) { 1 } else { rows };
    let ints = |i: usize| -> Result<Option<ArrayRef>> {
        match args.get(i) {
            Some(arg) => Ok(Some(cast(&arg.to_array(rows)?, &DataType::Int64)?)),
            None => Ok(None),
        }
    };
    let mut total: u64 = 0;
    match kind {
        Amplifier::Repeat | Amplifier::Pad | Amplifier::ArrayRepeat => {
            let Some(count) = ints(1)? else { return Ok(0) };
            let count = count.as_primitive::<Int64Type>();
            let unit = unit_bytes(kind, args, rows)?;
            for row in 0..rows {
                if count.is_null(row) {
                    continue;
                }
                let n = count.value(row).max(0) as u64;
                let bytes = n.saturating_mul(unit[row.min(unit.len() - 1)]);
                check_field(name, bytes)?;
                total = total.saturating_add(bytes);
            }
        }
        Amplifier::Range => {
            // range(stop) counts from 0.
            let (first, second) = match (ints(0)?, ints(1)?) {
                (Some(stop), None) => (cast(&ScalarValue::Int64(Some(0)).to_array_of_size(rows)?, &DataType::Int64)?, stop),
                (Some(first), Some(second)) => (first, second),
                _ => return Ok(0),
            };
            let step = ints(2)?;
            let first = first.as_primitive::<Int64Type>();
            let second = second.as_primitive::<Int64Type>();
            for row in 0..rows {
                if first.is_null(row) || second.is_null(row) {
                    continue;
                }
                let step = step
                    .as_ref()
                    .map(|s| s.as_primitive::<Int64Type>())
                    .filter(|s| !s.is_null(row))
                    .map_or(1, |s| s.value(row));
                let span = (second.value(row) as i128 - first.value(row) as i128).unsigned_abs();
                let elements = if step == 0 { 0 } else { span / step.unsigned_abs() as u128 + 1 };
                let bytes = u64::try_from(elements.saturating_mul(8)).unwrap_or(u64::MAX);
                check_field(name, bytes)?;
                total = total.saturating_add(bytes);
            }
        }
    }
    Ok(total)
}

/// Bytes per repetition, per row (one entry when the argument is constant).
fn unit_bytes(kind: Amplifier, args: &[ColumnarValue], rows: usize) -> Result<Vec<u64>> {
    let first = &args[0];
    Ok(match kind {
        Amplifier::Repeat => text_lengths(first, rows)?,
        Amplifier::Pad => {
            // Up to 4 bytes a character, less when the fill is known to be ASCII.
            let ascii = match args.get(2) {
                Some(ColumnarValue::Scalar(fill)) => scalar_text(fill).is_some_and(|f| f.is_ascii()),
                Some(_) => false,
                None => true,
            };
            let source_ascii = match first {
                ColumnarValue::Scalar(text) => scalar_text(text).is_none_or(|t| t.is_ascii()),
                ColumnarValue::Array(_) => false,
            };
            vec![if ascii && source_ascii { 1 } else { 4 }]
        }
        Amplifier::ArrayRepeat => {
            let data_type = first.data_type();
            let width = data_type.primitive_width().unwrap_or(0) as u64;
            if width > 0 {
                vec![width]
            } else if matches!(data_type, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
                text_lengths(first, rows)?.into_iter().map(|l| l + 8).collect()
            } else {
                // Nested or other values: at least an offset each.
                vec![16]
            }
        }
        Amplifier::Range => vec![8],
    })
}

fn scalar_text(value: &ScalarValue) -> Option<&str> {
    match value {
        ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => Some(s),
        _ => None,
    }
}

/// Byte length of each text value (0 for NULL).
fn text_lengths(value: &ColumnarValue, rows: usize) -> Result<Vec<u64>> {
    Ok(match value {
        ColumnarValue::Scalar(scalar) => vec![scalar_text(scalar).map_or(0, |s| s.len() as u64)],
        ColumnarValue::Array(_) => {
            let array = cast(&value.to_array(rows)?, &DataType::LargeUtf8)?;
            let text = array.as_string::<i64>();
            (0..text.len())
                .map(|i| if text.is_null(i) { 0 } else { text.value(i).len() as u64 })
                .collect()
        }
    })
}

fn check_field(name: &str, bytes: u64) -> Result<()> {
    if bytes > MAX_FIELD_BYTES {
        return Err(DataFusionError::External(Box::new(LimitError::FieldTooLarge {
            function: name.to_string(),
            bytes,
        })));
    }
    Ok(())
}
