//! Functions the silver rules use to tidy raw text.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// `wb_parse_datetime(text, pattern)`: text → timestamp using a chrono
/// strftime pattern (`%d/%m/%Y`, `%Y-%m-%d %H:%M`); a date-only pattern
/// gives midnight. NULL when the text does not match: callers decide whether
/// that is an error.
pub fn parse_datetime_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(ParseDatetime {
        signature: Signature::exact(vec![DataType::Utf8, DataType::Utf8], Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ParseDatetime {
    signature: Signature,
}

fn parse(text: &str, pattern: &str) -> Option<i64> {
    let text = text.trim();
    chrono::NaiveDateTime::parse_from_str(text, pattern)
        .ok()
        .or_else(|| {
            chrono::NaiveDate::parse_from_str(text, pattern)
                .ok()
                .map(|d| d.and_time(chrono::NaiveTime::MIN))
        })
        .map(|dt| dt.and_utc().timestamp_micros())
}

impl ScalarUDFImpl for ParseDatetime {
    fn name(&self) -> &str {
        "wb_parse_datetime"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Timestamp(TimeUnit::Microsecond, None))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [text, pattern] = args.args.as_slice() else {
            return exec_err!("wb_parse_datetime(text, pattern) takes two arguments");
        };
        let pattern = match pattern {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(p))) => p.clone(),
            _ => return exec_err!("wb_parse_datetime: the pattern must be a constant text"),
        };
        match text {
            ColumnarValue::Scalar(ScalarValue::Utf8(value)) => Ok(ColumnarValue::Scalar(
                ScalarValue::TimestampMicrosecond(value.as_deref().and_then(|t| parse(t, &pattern)), None),
            )),
            ColumnarValue::Array(array) => {
                let strings = array.as_string::<i32>();
                let out: TimestampMicrosecondArray = (0..strings.len())
                    .map(|i| (!strings.is_null(i)).then(|| parse(strings.value(i), &pattern)).flatten())
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
            }
            other => exec_err!("wb_parse_datetime: unexpected argument {other:?}"),
        }
    }
}

/// `wb_is_blank(text)`: true when the text is empty or only whitespace, NULL
/// for NULL. Reads each value in place, where `btrim(text) = ''` builds a
/// trimmed copy of the column first.
pub fn is_blank_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(IsBlank {
        signature: Signature::uniform(
            1,
            vec![DataType::Utf8View, DataType::Utf8, DataType::LargeUtf8],
            Volatility::Immutable,
        ),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct IsBlank {
    signature: Signature,
}

impl ScalarUDFImpl for IsBlank {
    fn name(&self) -> &str {
        "wb_is_blank"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [text] = args.args.as_slice() else {
            return exec_err!("wb_is_blank(text) takes one argument");
        };
        let blank = |t: Option<&str>| t.map(|t| t.trim().is_empty());
        match text {
            ColumnarValue::Scalar(v) => match v.try_as_str() {
                Some(t) => Ok(ColumnarValue::Scalar(ScalarValue::Boolean(blank(t)))),
                None => exec_err!("wb_is_blank: expected text, got {}", v.data_type()),
            },
            ColumnarValue::Array(a) => {
                let out: BooleanArray = crate::map_text("wb_is_blank", a, blank)?;
                Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
            }
        }
    }
}

/// `wb_guard(value, bad)`: `value`, unchanged, unless `bad` is true on some
/// row: then an error. It lets a check ride along the scan that writes the
/// rows instead of needing a scan of its own; whoever runs the plan turns
/// the error into a report (which rows, which values) with a query of its own.
pub fn guard_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(Guard { signature: Signature::any(2, Volatility::Volatile) })
}

/// The start of [`guard_udf`]'s error message.
pub const GUARD_FAILED: &str = "wb_guard: a row failed a check";

#[derive(Debug, PartialEq, Eq, Hash)]
struct Guard {
    signature: Signature,
}

impl ScalarUDFImpl for Guard {
    fn name(&self) -> &str {
        "wb_guard"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [value, DataType::Boolean | DataType::Null] => Ok(value.clone()),
            _ => datafusion::common::plan_err!("wb_guard(value, bad) takes a value and a boolean"),
        }
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [value, bad] = args.args.as_slice() else {
            return exec_err!("wb_guard(value, bad) takes two arguments");
        };
        let failed = match bad {
            ColumnarValue::Scalar(ScalarValue::Boolean(b)) => b.unwrap_or(false),
            ColumnarValue::Scalar(ScalarValue::Null) => false,
            ColumnarValue::Array(a) => a.as_boolean().true_count() > 0,
            ColumnarValue::Scalar(other) => return exec_err!("wb_guard: expected a boolean, got {}", other.data_type()),
        };
        if failed {
            return exec_err!("{GUARD_FAILED}");
        }
        Ok(value.clone())
    }
}
