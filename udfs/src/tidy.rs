//! Functions the silver rules use to tidy raw text.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, TimestampMicrosecondArray};
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
