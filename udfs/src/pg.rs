//! PostgreSQL compatibility functions that upstream crates lack.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// All configuration-free functions of this module.
pub fn all() -> Vec<ScalarUDF> {
    [
        "pg_function_is_visible",
        "pg_type_is_visible",
        "pg_operator_is_visible",
        "pg_opclass_is_visible",
        "pg_collation_is_visible",
        "pg_conversion_is_visible",
        "pg_statistics_obj_is_visible",
        "pg_ts_config_is_visible",
        "pg_ts_dict_is_visible",
        "pg_ts_parser_is_visible",
        "pg_ts_template_is_visible",
    ]
    .into_iter()
    .map(|name| ScalarUDF::new_from_impl(IsVisible::new(name)))
    .collect()
}

/// `version()` answering `text`, e.g. `PostgreSQL 16.6 on x86_64-pc-linux-gnu
/// (Workbench 0.1.0)`. SQLAlchemy parses the leading `PostgreSQL <major>.<minor>`.
pub fn version(text: impl Into<String>) -> ScalarUDF {
    ScalarUDF::new_from_impl(Constant {
        name: "version".into(),
        value: ScalarValue::Utf8(Some(text.into())),
        signature: Signature::exact(vec![], Volatility::Stable),
    })
}

/// A zero-argument function returning a fixed value (per session or server).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Constant {
    name: String,
    value: ScalarValue,
    signature: Signature,
}

impl Constant {
    pub fn new(name: impl Into<String>, value: ScalarValue) -> Self {
        Constant {
            name: name.into(),
            value,
            signature: Signature::exact(vec![], Volatility::Stable),
        }
    }
}

impl ScalarUDFImpl for Constant {
    fn name(&self) -> &str {
        &self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.value.data_type())
    }
    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(self.value.clone()))
    }
}

/// `pg_*_is_visible(oid)`: Workbench has no per-schema shadowing of
/// functions, types or operators, so every existing object is visible. NULL
/// in gives NULL out, as in Postgres.
#[derive(Debug, PartialEq, Eq, Hash)]
struct IsVisible {
    name: &'static str,
    signature: Signature,
}

impl IsVisible {
    fn new(name: &'static str) -> Self {
        IsVisible {
            name,
            signature: Signature::any(1, Volatility::Stable),
        }
    }
}

impl ScalarUDFImpl for IsVisible {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return exec_err!("{}(oid) takes one argument", self.name);
        };
        Ok(match arg {
            ColumnarValue::Scalar(v) => {
                ColumnarValue::Scalar(ScalarValue::Boolean((!v.is_null()).then_some(true)))
            }
            ColumnarValue::Array(a) => {
                let out: BooleanArray = (0..a.len())
                    .map(|i| (!a.is_null(i)).then_some(true))
                    .collect();
                ColumnarValue::Array(Arc::new(out) as ArrayRef)
            }
        })
    }
}
