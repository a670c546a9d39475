//! Arithmetic that fails as PostgreSQL's does instead of giving a wrong
//! number: integer `+`, `-`, `*` that overflow raise an overflow error
//! (DataFusion's operators wrap around: `9223372036854775807 + 1` is
//! negative), and floating-point `/` and `%` by zero raise a division by
//! zero (DataFusion returns `inf` or `NaN`). The engine rewrites those
//! operators into these functions after type coercion; their arguments
//! already have one common type, which is also the result's.

use datafusion::arrow::array::{Array, AsArray, Datum, Scalar};
use datafusion::arrow::compute::kernels::numeric;
use datafusion::arrow::datatypes::{DataType, Float16Type, Float32Type, Float64Type};
use datafusion::arrow::error::ArrowError;
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};

/// The operation a checked function performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckedOp {
    /// Integer `+`.
    Add,
    /// Integer `-`.
    Sub,
    /// Integer `*`.
    Mul,
    /// Floating-point `/`.
    Div,
    /// Floating-point `%`.
    Rem,
}

impl CheckedOp {
    pub fn function_name(self) -> &'static str {
        match self {
            CheckedOp::Add => "wb_checked_add",
            CheckedOp::Sub => "wb_checked_sub",
            CheckedOp::Mul => "wb_checked_mul",
            CheckedOp::Div => "wb_checked_div",
            CheckedOp::Rem => "wb_checked_mod",
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Checked {
    op: CheckedOp,
    signature: Signature,
}

/// The function for `op`.
pub fn checked_udf(op: CheckedOp) -> ScalarUDF {
    ScalarUDF::new_from_impl(Checked {
        op,
        signature: Signature::any(2, Volatility::Immutable),
    })
}

/// All five checked functions.
pub fn all() -> Vec<ScalarUDF> {
    [CheckedOp::Add, CheckedOp::Sub, CheckedOp::Mul, CheckedOp::Div, CheckedOp::Rem]
        .into_iter()
        .map(checked_udf)
        .collect()
}

impl ScalarUDFImpl for Checked {
    fn name(&self) -> &str {
        self.op.function_name()
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [left, right] if left == right => Ok(left.clone()),
            _ => exec_err!("{} takes two values of one numeric type, got {arg_types:?}", self.name()),
        }
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [left, right] = args.args.as_slice() else {
            return exec_err!("{} takes two arguments", self.name());
        };
        let scalar = matches!((left, right), (ColumnarValue::Scalar(_), ColumnarValue::Scalar(_)));
        let l = datum(left)?;
        let r = datum(right)?;
        if matches!(self.op, CheckedOp::Div | CheckedOp::Rem) && has_zero(r.get().0)? {
            return Err(ArrowError::DivideByZero.into());
        }
        let result = match self.op {
            CheckedOp::Add => numeric::add(&l, &r)?,
            CheckedOp::Sub => numeric::sub(&l, &r)?,
            CheckedOp::Mul => numeric::mul(&l, &r)?,
            CheckedOp::Div => numeric::div(&l, &r)?,
            CheckedOp::Rem => numeric::rem(&l, &r)?,
        };
        if scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&result, 0)?))
        } else {
            Ok(ColumnarValue::Array(result))
        }
    }
}

/// A scalar as a one-value `Scalar` datum, an array as itself.
fn datum(value: &ColumnarValue) -> Result<Box<dyn DatumRef>> {
    Ok(match value {
        ColumnarValue::Scalar(s) => Box::new(Scalar::new(s.to_array()?)),
        ColumnarValue::Array(a) => Box::new(a.clone()),
    })
}

/// `Datum` for both the boxed scalar and array cases.
trait DatumRef: Datum + Send + Sync {}
impl<T: Datum + Send + Sync> DatumRef for T {}

impl Datum for Box<dyn DatumRef> {
    fn get(&self) -> (&dyn Array, bool) {
        self.as_ref().get()
    }
}

/// Whether any non-null value of a floating-point divisor is zero.
fn has_zero(divisor: &dyn Array) -> Result<bool> {
    fn any_zero<T: datafusion::arrow::datatypes::ArrowPrimitiveType>(array: &dyn Array) -> bool
    where
        T::Native: PartialEq + Default,
    {
        let values = array.as_primitive::<T>();
        let zero = T::Native::default();
        values.iter().any(|v| v == Some(zero))
    }
    Ok(match divisor.data_type() {
        DataType::Float64 => any_zero::<Float64Type>(divisor),
        DataType::Float32 => any_zero::<Float32Type>(divisor),
        DataType::Float16 => any_zero::<Float16Type>(divisor),
        _ => false,
    })
}
