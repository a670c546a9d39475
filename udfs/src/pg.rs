//! PostgreSQL compatibility functions that upstream crates lack.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray};
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
    .chain(fixed_catalog_functions())
    .chain(text_functions())
    .chain([json_build_object()])
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

/// Shared key → text table behind a [`Lookup`] function; the owner may add
/// entries at any time (e.g. descriptions of datasets).
pub type LookupTable = Arc<std::sync::RwLock<std::collections::HashMap<Vec<i64>, String>>>;

/// A catalog lookup such as `obj_description(oid)`, `col_description(oid,
/// attnum)` or `pg_get_function_result(oid)`: the first `keys` arguments
/// (integers) select a text; further arguments are accepted and ignored (as
/// the catalog name of `obj_description(oid, 'pg_class')`). Unknown keys and
/// NULL keys give NULL, as in Postgres.
pub fn lookup(name: &str, keys: usize, table: LookupTable) -> ScalarUDF {
    ScalarUDF::new_from_impl(Lookup {
        name: name.to_string(),
        keys,
        table: Shared(table),
        signature: Signature::variadic_any(Volatility::Stable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Lookup {
    name: String,
    keys: usize,
    table: TableRef,
    signature: Signature,
}

/// State shared by a function, compared by identity: two lookups (or two
/// row functions) are the same function only if they share one table (body).
#[derive(Clone)]
struct Shared<T: ?Sized>(Arc<T>);

impl<T: ?Sized> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Shared({:p})", Arc::as_ptr(&self.0) as *const ())
    }
}
impl<T: ?Sized> PartialEq for Shared<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl<T: ?Sized> Eq for Shared<T> {}
impl<T: ?Sized> std::hash::Hash for Shared<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as *const () as usize).hash(state)
    }
}

type TableRef = Shared<std::sync::RwLock<std::collections::HashMap<Vec<i64>, String>>>;
type BodyRef = Shared<dyn Fn(&[ScalarValue]) -> Result<ScalarValue> + Send + Sync>;

impl ScalarUDFImpl for Lookup {
    fn name(&self) -> &str {
        &self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use datafusion::arrow::array::{Int64Array, StringArray};
        use datafusion::arrow::compute::cast;
        if args.args.len() < self.keys {
            return exec_err!("{} takes {} key argument(s)", self.name, self.keys);
        }
        let rows = args.number_rows;
        let all_scalar = args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let mut key_columns = Vec::with_capacity(self.keys);
        for arg in &args.args[..self.keys] {
            let array = arg.to_array(rows)?;
            let array = cast(&array, &DataType::Int64)?;
            key_columns.push(
                array
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .expect("cast to Int64 gives Int64Array")
                    .clone(),
            );
        }
        let table = self.entries();
        let out: StringArray = (0..rows)
            .map(|row| {
                let mut key = Vec::with_capacity(self.keys);
                for column in &key_columns {
                    if column.is_null(row) {
                        return None;
                    }
                    key.push(column.value(row));
                }
                table.get(&key).cloned()
            })
            .collect();
        if all_scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
        } else {
            Ok(ColumnarValue::Array(Arc::new(out)))
        }
    }
}

impl Lookup {
    fn entries(&self) -> std::sync::RwLockReadGuard<'_, std::collections::HashMap<Vec<i64>, String>> {
        self.table.0.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The per-row body of a [`RowFunction`]: argument values in, one value out.
pub type RowBody = Arc<dyn Fn(&[ScalarValue]) -> Result<ScalarValue> + Send + Sync>;

/// A function computed row by row from scalar values, for catalog and
/// session functions whose cost is in the lookup, not the arithmetic
/// (`current_setting`, `pg_get_serial_sequence`, regclass names, ...).
/// Scalar arguments give a scalar result; any array argument gives an array.
pub fn row_function(
    name: &str,
    arities: &[usize],
    return_type: DataType,
    volatility: Volatility,
    body: RowBody,
) -> ScalarUDF {
    let signature = Signature::one_of(
        arities
            .iter()
            .map(|n| datafusion::logical_expr::TypeSignature::Any(*n))
            .collect(),
        volatility,
    );
    let signature = if arities == [0] {
        Signature::exact(vec![], volatility)
    } else {
        signature
    };
    ScalarUDF::new_from_impl(RowFunction {
        name: name.to_string(),
        signature,
        return_type,
        body: Shared(body),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct RowFunction {
    name: String,
    signature: Signature,
    return_type: DataType,
    body: BodyRef,
}

impl ScalarUDFImpl for RowFunction {
    fn name(&self) -> &str {
        &self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(self.return_type.clone())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let all_scalar = args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        if all_scalar {
            let values: Vec<ScalarValue> = args
                .args
                .iter()
                .map(|a| match a {
                    ColumnarValue::Scalar(s) => s.clone(),
                    ColumnarValue::Array(_) => unreachable!("all arguments are scalar"),
                })
                .collect();
            let out = (self.body.0)(&values)?;
            return Ok(ColumnarValue::Scalar(out.cast_to(&self.return_type)?));
        }
        let rows = args.number_rows;
        let arrays: Vec<ArrayRef> = args
            .args
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<Result<_>>()?;
        let mut out = Vec::with_capacity(rows);
        for row in 0..rows {
            let values: Vec<ScalarValue> = arrays
                .iter()
                .map(|a| ScalarValue::try_from_array(a, row))
                .collect::<Result<_>>()?;
            out.push((self.body.0)(&values)?.cast_to(&self.return_type)?);
        }
        if out.is_empty() {
            return Ok(ColumnarValue::Array(datafusion::arrow::array::new_empty_array(&self.return_type)));
        }
        Ok(ColumnarValue::Array(ScalarValue::iter_to_array(out)?))
    }
}

/// The text of a scalar (strings as they are, other values displayed); None for NULL.
pub fn scalar_text(value: &ScalarValue) -> Option<String> {
    if value.is_null() {
        return None;
    }
    Some(match value {
        ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => s.clone(),
        other => other.to_string(),
    })
}

/// An integer scalar as i64 (None for NULL or non-integers).
pub fn scalar_i64(value: &ScalarValue) -> Option<i64> {
    if value.is_null() {
        return None;
    }
    value.cast_to(&DataType::Int64).ok().and_then(|v| match v {
        ScalarValue::Int64(v) => v,
        _ => None,
    })
}

/// `pg_expandarray_list(arr)`: the list of `(x, n)` structs of
/// `information_schema._pg_expandarray(arr)`, for use under `unnest`.
pub fn expandarray() -> ScalarUDF {
    ScalarUDF::new_from_impl(ExpandArray {
        signature: Signature::any(1, Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ExpandArray {
    signature: Signature,
}

fn expand_fields(element: &DataType) -> datafusion::arrow::datatypes::Fields {
    use datafusion::arrow::datatypes::Field;
    vec![
        Field::new("x", element.clone(), true),
        Field::new("n", DataType::Int32, false),
    ]
    .into()
}

impl ScalarUDFImpl for ExpandArray {
    fn name(&self) -> &str {
        "pg_expandarray_list"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        use datafusion::arrow::datatypes::Field;
        let element = match arg_types.first() {
            Some(DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _)) => f.data_type().clone(),
            Some(DataType::Null) | None => DataType::Null,
            Some(other) => return exec_err!("_pg_expandarray expects an array, got {other}"),
        };
        Ok(DataType::List(Arc::new(Field::new_list_field(
            DataType::Struct(expand_fields(&element)),
            true,
        ))))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use datafusion::arrow::array::{Int32Array, ListArray, StructArray};
        use datafusion::arrow::buffer::OffsetBuffer;
        use datafusion::arrow::compute::cast;
        use datafusion::arrow::datatypes::Field;
        let rows = args.number_rows;
        let input = args.args[0].to_array(rows)?;
        let list = cast(&input, &DataType::List(Arc::new(Field::new_list_field(
            match input.data_type() {
                DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => f.data_type().clone(),
                _ => DataType::Null,
            },
            true,
        ))))?;
        let list = list
            .as_any()
            .downcast_ref::<ListArray>()
            .expect("cast to List gives ListArray");
        let element = list.values().data_type().clone();
        let mut positions = Vec::with_capacity(list.values().len());
        for row in 0..list.len() {
            let (start, end) = (list.value_offsets()[row], list.value_offsets()[row + 1]);
            positions.extend((1..=(end - start)).map(|n| n as i32));
        }
        let structs = StructArray::try_new(
            expand_fields(&element),
            vec![list.values().clone(), Arc::new(Int32Array::from(positions))],
            None,
        )?;
        let out = ListArray::try_new(
            Arc::new(Field::new_list_field(DataType::Struct(expand_fields(&element)), true)),
            OffsetBuffer::new(list.offsets().inner().clone()),
            Arc::new(structs),
            list.nulls().cloned(),
        )?;
        let out: ArrayRef = Arc::new(out);
        if matches!(args.args[0], ColumnarValue::Scalar(_)) {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?))
        } else {
            Ok(ColumnarValue::Array(out))
        }
    }
}

/// Catalog functions whose answer is fixed for Workbench tables, which have
/// no sequences, indexes or other encodings.
pub fn fixed_catalog_functions() -> Vec<ScalarUDF> {
    let null_text: RowBody = Arc::new(|_| Ok(ScalarValue::Utf8(None)));
    vec![
        // No column is backed by a sequence.
        row_function("pg_get_serial_sequence", &[2], DataType::Utf8, Volatility::Stable, null_text.clone()),
        // No indexes exist.
        row_function("pg_get_indexdef", &[1, 3], DataType::Utf8, Volatility::Stable, null_text),
        row_function(
            "pg_encoding_to_char",
            &[1],
            DataType::Utf8,
            Volatility::Immutable,
            Arc::new(|args| {
                Ok(ScalarValue::Utf8(scalar_i64(&args[0]).map(|code| {
                    match code {
                        0 => "SQL_ASCII",
                        6 => "UTF8",
                        8 => "LATIN1",
                        _ => "",
                    }
                    .to_string()
                })))
            }),
        ),
        // Sizes are not tracked per relation oid: unknown, as for a foreign table.
        row_function("pg_table_size", &[1], DataType::Int64, Volatility::Stable, Arc::new(|_| Ok(ScalarValue::Int64(None)))),
        row_function(
            "pg_size_pretty",
            &[1],
            DataType::Utf8,
            Volatility::Immutable,
            Arc::new(|args| Ok(ScalarValue::Utf8(scalar_i64(&args[0]).map(size_pretty)))),
        ),
        expandarray(),
    ]
}

/// `pg_size_pretty(bigint)` as PostgreSQL prints it: bytes below 10 kB,
/// then the largest unit that keeps the number under 20480, half rounded up.
fn size_pretty(bytes: i64) -> String {
    const LIMIT: i64 = 10 * 1024;
    if bytes.abs() < LIMIT {
        return format!("{bytes} bytes");
    }
    let half_rounded = |x: i64| (x + if x < 0 { -1 } else { 1 }) / 2;
    // One extra bit kept for rounding.
    let mut size = bytes >> 9;
    for unit in ["kB", "MB", "GB", "TB"] {
        if size.abs() < LIMIT * 2 - 1 || unit == "TB" {
            return format!("{} {unit}", half_rounded(size));
        }
        size >>= 10;
    }
    unreachable!("the loop returns at TB")
}

/// Postgres' quoting and formatting of text: `quote_literal`,
/// `quote_nullable` and `format` with `%s`, `%I`, `%L` and `%%`.
pub fn text_functions() -> Vec<ScalarUDF> {
    vec![
        row_function(
            "quote_literal",
            &[1],
            DataType::Utf8,
            Volatility::Immutable,
            Arc::new(|args| Ok(ScalarValue::Utf8(scalar_text(&args[0]).map(|t| quote_literal(&t))))),
        ),
        row_function(
            "quote_nullable",
            &[1],
            DataType::Utf8,
            Volatility::Immutable,
            Arc::new(|args| {
                Ok(ScalarValue::Utf8(Some(
                    scalar_text(&args[0]).map(|t| quote_literal(&t)).unwrap_or_else(|| "NULL".into()),
                )))
            }),
        ),
        ScalarUDF::new_from_impl(RowFunction {
            name: "format".into(),
            signature: Signature::variadic_any(Volatility::Stable),
            return_type: DataType::Utf8,
            body: Shared(Arc::new(|args: &[ScalarValue]| {
                let Some(template) = args.first().and_then(scalar_text) else {
                    return Ok(ScalarValue::Utf8(None));
                };
                format_text(&template, &args[1..]).map(|s| ScalarValue::Utf8(Some(s)))
            })),
        }),
    ]
}

fn quote_literal(text: &str) -> String {
    let body = text.replace('\'', "''");
    if text.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}

fn quote_ident(name: &str) -> String {
    let plain = !name.is_empty()
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain { name.to_string() } else { format!("\"{}\"", name.replace('"', "\"\"")) }
}

fn format_text(template: &str, args: &[ScalarValue]) -> Result<String> {
    let mut out = String::with_capacity(template.len() + 16);
    let mut next = args.iter();
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let spec = chars.next();
        if spec == Some('%') {
            out.push('%');
            continue;
        }
        let Some(value) = next.next() else {
            return exec_err!("format(): too few arguments for the format string");
        };
        let text = scalar_text(value);
        match (spec, text) {
            (Some('s'), text) => out.push_str(&text.unwrap_or_default()),
            (Some('I'), Some(text)) => out.push_str(&quote_ident(&text)),
            (Some('I'), None) => return exec_err!("format(): NULL cannot be formatted as an identifier"),
            (Some('L'), Some(text)) => out.push_str(&quote_literal(&text)),
            (Some('L'), None) => out.push_str("NULL"),
            (other, _) => return exec_err!("format(): unrecognized conversion type specifier {other:?}"),
        }
    }
    Ok(out)
}

/// `json_build_object(k1, v1, ...)` as JSON text.
pub fn json_build_object() -> ScalarUDF {
    ScalarUDF::new_from_impl(RowFunction {
        name: "json_build_object".into(),
        signature: Signature::variadic_any(Volatility::Immutable),
        return_type: DataType::Utf8,
        body: Shared(Arc::new(|args: &[ScalarValue]| {
            if args.len() % 2 != 0 {
                return exec_err!("json_build_object(): argument list must have even number of elements");
            }
            let mut out = String::from("{");
            for (i, pair) in args.chunks(2).enumerate() {
                let Some(key) = scalar_text(&pair[0]) else {
                    return exec_err!("json_build_object(): argument {} must not be null", i * 2 + 1);
                };
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&json_string(&key));
                out.push_str(" : ");
                out.push_str(&json_value(&pair[1]));
            }
            out.push('}');
            Ok(ScalarValue::Utf8(Some(out)))
        })),
    })
}

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_value(value: &ScalarValue) -> String {
    if value.is_null() {
        return "null".into();
    }
    match value {
        ScalarValue::Boolean(Some(b)) => b.to_string(),
        v if v.data_type().is_numeric() => v.to_string(),
        v => json_string(&scalar_text(v).unwrap_or_default()),
    }
}

/// `inner` (an array function such as `array_to_string`) that answers NULL
/// when its array argument is an untyped NULL. DataFusion's optimizer turns
/// an `ARRAY(SELECT ...)` over an empty catalog table (psql `\dp` reads
/// `pg_policy`) into a bare NULL after types were checked, which the
/// built-in rejects at run time ("expects list as first argument").
pub fn null_tolerant(inner: ScalarUDF) -> ScalarUDF {
    ScalarUDF::new_from_impl(NullTolerant { inner: Shared(Arc::new(inner)) })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct NullTolerant {
    inner: Shared<ScalarUDF>,
}

impl ScalarUDFImpl for NullTolerant {
    fn name(&self) -> &str {
        self.inner.0.name()
    }
    /// The same aliases, so no name still reaches the built-in (a session
    /// rebuilt from this one re-registers every function under all its names).
    fn aliases(&self) -> &[String] {
        self.inner.0.aliases()
    }
    fn signature(&self) -> &Signature {
        self.inner.0.signature()
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.0.coerce_types(arg_types)
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.0.return_type(arg_types)
    }
    fn return_field_from_args(&self, args: datafusion::logical_expr::ReturnFieldArgs) -> Result<datafusion::arrow::datatypes::FieldRef> {
        self.inner.0.return_field_from_args(args)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if args.args.first().is_some_and(|a| a.data_type() == DataType::Null) {
            let null = ScalarValue::try_from(args.return_field.data_type())?;
            return Ok(ColumnarValue::Scalar(null));
        }
        self.inner.0.invoke_with_args(args)
    }
}

/// `format_type` (`inner`) that also names the pseudo-types a function
/// returns or takes (`record`, `void`, `trigger`, ...), which the static
/// `pg_type` lacks and `inner` prints as `oid(2249)`.
pub fn with_pseudo_types(inner: ScalarUDF) -> ScalarUDF {
    ScalarUDF::new_from_impl(PseudoTypes { inner: Shared(Arc::new(inner)) })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct PseudoTypes {
    inner: Shared<ScalarUDF>,
}

fn pseudo_type(oid: i64) -> Option<&'static str> {
    Some(match oid {
        705 => "unknown",
        2249 => "record",
        2275 => "cstring",
        2276 => "\"any\"",
        2277 => "anyarray",
        2278 => "void",
        2279 => "trigger",
        2281 => "internal",
        2283 => "anyelement",
        2287 => "record[]",
        3838 => "event_trigger",
        _ => return None,
    })
}

impl ScalarUDFImpl for PseudoTypes {
    fn name(&self) -> &str {
        self.inner.0.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.0.aliases()
    }
    fn signature(&self) -> &Signature {
        self.inner.0.signature()
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.0.coerce_types(arg_types)
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.0.return_type(arg_types)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use datafusion::arrow::array::{AsArray, StringArray};
        let rows = args.number_rows;
        let all_scalar = args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let oids = args.args.first().map(|a| a.to_array(rows)).transpose()?;
        let named = self.inner.0.invoke_with_args(args)?;
        let Some(oids) = oids else { return Ok(named) };
        let oids = datafusion::arrow::compute::cast(&oids, &DataType::Int64)?;
        let oids = oids.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        let names = named.to_array(rows)?;
        let names = datafusion::arrow::compute::cast(&names, &DataType::Utf8)?;
        let names = names.as_string::<i32>();
        let fixed: StringArray = (0..rows)
            .map(|i| {
                let pseudo = (!oids.is_null(i)).then(|| pseudo_type(oids.value(i))).flatten();
                match pseudo {
                    Some(name) if names.is_null(i) || names.value(i).starts_with("oid(") || names.value(i) == "???" => {
                        Some(name.to_string())
                    }
                    _ => (!names.is_null(i)).then(|| names.value(i).to_string()),
                }
            })
            .collect();
        let fixed: ArrayRef = Arc::new(fixed);
        if all_scalar {
            return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&fixed, 0)?));
        }
        Ok(ColumnarValue::Array(fixed))
    }
}
