//! Arrow record batches → Postgres `DataRow`s.
//!
//! Each column is looked at once per batch: its array is downcast and paired
//! with the wire format and type the client was told about, then every row is
//! written straight into one buffer shared by the whole batch (each `DataRow`
//! is a zero-copy slice of it). The common types are written by hand (integers
//! with itoa, numerics from the i128, dates and timestamps without a format
//! interpreter, strings copied as they are) in both text and binary format,
//! exactly as PostgreSQL writes them; any other column (lists, structs,
//! intervals, timestamps with time zone in text, ...) is encoded by arrow-pg,
//! one column at a time, and spliced in.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Decimal128Array, PrimitiveArray, RecordBatch,
};
use datafusion::arrow::datatypes::{
    DataType, Field, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Schema, TimeUnit,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::{StreamExt, stream};
use pgwire::api::Type;
use pgwire::api::results::{FieldFormat, FieldInfo, SendableRowStream};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::types::ToSqlText;
use pgwire::types::format::FormatOptions;

/// Days from 1970-01-01 (Arrow's epoch) to 2000-01-01 (Postgres').
const PG_EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
const MICROS_PER_DAY: i64 = 86_400_000_000;
/// The most one output buffer holds. A batch's rows (~1.2 MB of text for
/// 8,192 lineitem rows) are written into buffers of this size, one after
/// another (a fresh one when the next row may not fit): below the
/// allocator's mmap threshold (256 KB, `main.rs`), freed buffers are reused
/// from the heap instead of each batch mapping fresh pages the kernel must
/// zero (21% of the server's `perf` samples while streaming lineitem, 1.7%
/// since).
const OUTPUT_CHUNK_BYTES: usize = 128 << 10;
/// Largest scale whose base-10000 digits fit the u128 arithmetic below.
const MAX_FAST_SCALE: i8 = 32;

/// The rows of `batches`, encoded for `fields` (one per column, with the
/// type and format the client was given in RowDescription).
pub fn rows(batches: SendableRecordBatchStream, fields: Arc<Vec<FieldInfo>>) -> SendableRowStream {
    let rows = batches
        .map(move |batch| {
            let encoded = batch
                .map_err(|e| PgWireError::ApiError(Box::new(e)))
                .and_then(|batch| encode_batch(&batch, &fields));
            match encoded {
                Ok(rows) => stream::iter(rows.into_iter().map(Ok)).left_stream(),
                Err(e) => stream::once(async { Err(e) }).right_stream(),
            }
        })
        .flatten();
    Box::pin(rows)
}

/// All rows of one batch.
pub fn encode_batch(batch: &RecordBatch, fields: &[FieldInfo]) -> PgWireResult<Vec<DataRow>> {
    if batch.num_columns() != fields.len() {
        return Err(PgWireError::ApiError(
            format!("a batch has {} columns, the result {}", batch.num_columns(), fields.len()).into(),
        ));
    }
    let schema = batch.schema();
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .zip(fields)
        .map(|((array, arrow_field), field)| Column::new(array, arrow_field, field))
        .collect::<PgWireResult<Vec<_>>>()?;
    let n = batch.num_rows();
    let row_bytes: usize = columns.iter().map(Column::width_hint).sum::<usize>() + 4 * columns.len();
    let chunk_bytes = row_bytes.saturating_mul(n).min(OUTPUT_CHUNK_BYTES);
    let mut chunk = Vec::with_capacity(chunk_bytes);
    let mut ends = Vec::new();
    let mut rows = Vec::with_capacity(n);
    let field_count = columns.len() as i16;
    for row in 0..n {
        for column in &columns {
            column.write(row, &mut chunk);
        }
        ends.push(chunk.len());
        if row + 1 == n {
            split_rows(std::mem::take(&mut chunk), &mut ends, field_count, &mut rows);
        } else if chunk.len() + row_bytes > chunk.capacity() {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(chunk_bytes));
            split_rows(full, &mut ends, field_count, &mut rows);
        }
    }
    Ok(rows)
}

/// One `DataRow` per row of `chunk`, each a zero-copy slice of it (`ends`:
/// where each row ends; emptied).
///
/// Rows are written into a plain `Vec` and only then handed over as
/// `BytesMut`: `BytesMut`'s `BufMut::put_slice` is not inlinable across
/// crates, and a call per field (length and value) took 18% of the server's
/// samples while streaming lineitem (PROFILES.md, streaming).
fn split_rows(chunk: Vec<u8>, ends: &mut Vec<usize>, field_count: i16, rows: &mut Vec<DataRow>) {
    // A buffer made from a `Vec` has one owner, so this never copies.
    let mut chunk = Bytes::from(chunk).try_into_mut().unwrap_or_else(|shared| BytesMut::from(&shared[..]));
    let mut start = 0;
    for end in ends.drain(..) {
        rows.push(DataRow::new(chunk.split_to(end - start), field_count));
        start = end;
    }
}

/// One column of a batch, ready to write any of its values.
enum Column<'a> {
    Bool(&'a BooleanArray, FieldFormat),
    Int16(&'a PrimitiveArray<Int16Type>, FieldFormat),
    Int32(&'a PrimitiveArray<Int32Type>, FieldFormat),
    Int64(&'a PrimitiveArray<Int64Type>, FieldFormat),
    Float32(&'a PrimitiveArray<Float32Type>, FieldFormat, &'a FormatOptions),
    Float64(&'a PrimitiveArray<Float64Type>, FieldFormat, &'a FormatOptions),
    Decimal(&'a Decimal128Array, u8, FieldFormat),
    Utf8(Strings<'a>),
    Date(&'a Date32Array, FieldFormat),
    /// Microseconds since 1970 (converted from the array's unit per value).
    Timestamp(Timestamps<'a>, FieldFormat),
    /// Encoded elsewhere: each row's field (length and bytes) as one DataRow.
    Encoded(Vec<DataRow>),
}

enum Strings<'a> {
    Utf8(&'a datafusion::arrow::array::StringArray),
    Large(&'a datafusion::arrow::array::LargeStringArray),
    View(&'a datafusion::arrow::array::StringViewArray),
}

enum Timestamps<'a> {
    Second(&'a PrimitiveArray<TimestampSecondType>),
    Milli(&'a PrimitiveArray<TimestampMillisecondType>),
    Micro(&'a PrimitiveArray<TimestampMicrosecondType>),
    Nano(&'a PrimitiveArray<TimestampNanosecondType>),
}

impl Timestamps<'_> {
    fn micros(&self, row: usize) -> i64 {
        match self {
            Timestamps::Second(a) => a.value(row).saturating_mul(1_000_000),
            Timestamps::Milli(a) => a.value(row).saturating_mul(1_000),
            Timestamps::Micro(a) => a.value(row),
            Timestamps::Nano(a) => a.value(row).div_euclid(1_000),
        }
    }

    fn array(&self) -> &dyn Array {
        match self {
            Timestamps::Second(a) => *a,
            Timestamps::Milli(a) => *a,
            Timestamps::Micro(a) => *a,
            Timestamps::Nano(a) => *a,
        }
    }
}

impl<'a> Column<'a> {
    fn new(array: &'a ArrayRef, arrow_field: &Arc<Field>, field: &'a FieldInfo) -> PgWireResult<Self> {
        check_temporal_range(array)?;
        let format = field.format();
        let text = format == FieldFormat::Text;
        let options = field.format_options().as_ref();
        let iso = options.date_style.trim_start().get(..3).is_some_and(|s| s.eq_ignore_ascii_case("ISO"));
        let ty = field.datatype();
        Ok(match (array.data_type(), ty) {
            (DataType::Boolean, &Type::BOOL) => Column::Bool(array.as_boolean(), format),
            (DataType::Int16, &Type::INT2) => Column::Int16(array.as_primitive(), format),
            (DataType::Int32, &Type::INT4) => Column::Int32(array.as_primitive(), format),
            (DataType::Int64, &Type::INT8) => Column::Int64(array.as_primitive(), format),
            (DataType::Float32, &Type::FLOAT4) => Column::Float32(array.as_primitive(), format, options),
            (DataType::Float64, &Type::FLOAT8) => Column::Float64(array.as_primitive(), format, options),
            (DataType::Decimal128(_, scale), &Type::NUMERIC) if (0..=MAX_FAST_SCALE).contains(scale) => {
                Column::Decimal(array.as_primitive(), *scale as u8, format)
            }
            (DataType::Utf8, &Type::TEXT | &Type::VARCHAR | &Type::BPCHAR | &Type::NAME) => {
                Column::Utf8(Strings::Utf8(array.as_string()))
            }
            (DataType::LargeUtf8, &Type::TEXT | &Type::VARCHAR | &Type::BPCHAR | &Type::NAME) => {
                Column::Utf8(Strings::Large(array.as_string()))
            }
            (DataType::Utf8View, &Type::TEXT | &Type::VARCHAR | &Type::BPCHAR | &Type::NAME) => {
                Column::Utf8(Strings::View(array.as_string_view()))
            }
            (DataType::Date32, &Type::DATE) if iso || !text => Column::Date(array.as_primitive(), format),
            (DataType::Timestamp(unit, tz), _)
                if (tz.is_none() && *ty == Type::TIMESTAMP && (iso || !text))
                    || (tz.is_some() && *ty == Type::TIMESTAMPTZ && !text) =>
            {
                let values = match unit {
                    TimeUnit::Second => Timestamps::Second(array.as_primitive()),
                    TimeUnit::Millisecond => Timestamps::Milli(array.as_primitive()),
                    TimeUnit::Microsecond => Timestamps::Micro(array.as_primitive()),
                    TimeUnit::Nanosecond => Timestamps::Nano(array.as_primitive()),
                };
                Column::Timestamp(values, format)
            }
            _ => Column::Encoded(encoded_by_arrow_pg(array, arrow_field, field)?),
        })
    }

    /// A guess of the bytes a value takes, to size the batch buffer.
    fn width_hint(&self) -> usize {
        match self {
            Column::Bool(..) => 1,
            Column::Int16(..) | Column::Int32(..) | Column::Date(..) => 8,
            Column::Int64(..) | Column::Float32(..) | Column::Float64(..) | Column::Decimal(..) => 12,
            Column::Timestamp(..) => 20,
            Column::Utf8(_) => 24,
            Column::Encoded(rows) => rows.first().map_or(8, |r| r.data.len()),
        }
    }

    fn array(&self) -> Option<&dyn Array> {
        Some(match self {
            Column::Bool(a, _) => *a,
            Column::Int16(a, _) => *a,
            Column::Int32(a, _) => *a,
            Column::Int64(a, _) => *a,
            Column::Float32(a, ..) => *a,
            Column::Float64(a, ..) => *a,
            Column::Decimal(a, ..) => *a,
            Column::Utf8(Strings::Utf8(a)) => *a,
            Column::Utf8(Strings::Large(a)) => *a,
            Column::Utf8(Strings::View(a)) => *a,
            Column::Date(a, _) => *a,
            Column::Timestamp(t, _) => t.array(),
            Column::Encoded(_) => return None,
        })
    }

    /// Append row `row`'s field: its length (-1 for NULL), then its bytes.
    fn write(&self, row: usize, buf: &mut Vec<u8>) {
        if let Column::Encoded(rows) = self {
            buf.put_slice(&rows[row].data);
            return;
        }
        if self.array().is_some_and(|a| a.is_null(row)) {
            buf.put_i32(-1);
            return;
        }
        use FieldFormat::{Binary, Text};
        match self {
            Column::Bool(a, Text) => sized(buf, |b| b.put_u8(if a.value(row) { b't' } else { b'f' })),
            Column::Bool(a, Binary) => sized(buf, |b| b.put_u8(a.value(row) as u8)),
            Column::Int16(a, Text) => sized(buf, |b| integer(b, a.value(row))),
            Column::Int16(a, Binary) => sized(buf, |b| b.put_i16(a.value(row))),
            Column::Int32(a, Text) => sized(buf, |b| integer(b, a.value(row))),
            Column::Int32(a, Binary) => sized(buf, |b| b.put_i32(a.value(row))),
            Column::Int64(a, Text) => sized(buf, |b| integer(b, a.value(row))),
            Column::Int64(a, Binary) => sized(buf, |b| b.put_i64(a.value(row))),
            Column::Float32(a, Text, options) if options.extra_float_digits > 0 => {
                sized(buf, |b| float_text(b, a.value(row) as f64, format_args!("{:e}", a.value(row)), 6))
            }
            // `extra_float_digits` <= 0 (not the default): pgwire's rounding,
            // through a small buffer per value, as its writer takes a `BytesMut`.
            Column::Float32(a, Text, options) => sized(buf, |b| {
                let mut text = BytesMut::new();
                let _ = a.value(row).to_sql_text(&Type::FLOAT4, &mut text, options);
                b.extend_from_slice(&text);
            }),
            Column::Float32(a, Binary, _) => sized(buf, |b| b.put_f32(a.value(row))),
            Column::Float64(a, Text, options) if options.extra_float_digits > 0 => {
                sized(buf, |b| float_text(b, a.value(row), format_args!("{:e}", a.value(row)), 15))
            }
            Column::Float64(a, Text, options) => sized(buf, |b| {
                let mut text = BytesMut::new();
                let _ = a.value(row).to_sql_text(&Type::FLOAT8, &mut text, options);
                b.extend_from_slice(&text);
            }),
            Column::Float64(a, Binary, _) => sized(buf, |b| b.put_f64(a.value(row))),
            Column::Decimal(a, scale, Text) => sized(buf, |b| numeric_text(b, a.value(row), *scale)),
            Column::Decimal(a, scale, Binary) => sized(buf, |b| numeric_binary(b, a.value(row), *scale)),
            Column::Utf8(strings) => {
                let value = match strings {
                    Strings::Utf8(a) => a.value(row),
                    Strings::Large(a) => a.value(row),
                    Strings::View(a) => a.value(row),
                };
                buf.put_i32(value.len() as i32);
                buf.put_slice(value.as_bytes());
            }
            Column::Date(a, Text) => sized(buf, |b| date_text(b, a.value(row))),
            Column::Date(a, Binary) => sized(buf, |b| b.put_i32(a.value(row).saturating_sub(PG_EPOCH_DAYS))),
            Column::Timestamp(t, Text) => sized(buf, |b| timestamp_text(b, t.micros(row))),
            Column::Timestamp(t, Binary) => sized(buf, |b| b.put_i64(t.micros(row).saturating_sub(PG_EPOCH_MICROS))),
            Column::Encoded(_) => unreachable!("handled above"),
        }
    }
}

/// Write a field's length, then what `value` writes.
#[inline]
fn sized(buf: &mut Vec<u8>, value: impl FnOnce(&mut Vec<u8>)) {
    let at = buf.len();
    buf.put_i32(0);
    value(buf);
    let len = (buf.len() - at - 4) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

#[inline]
fn integer(buf: &mut Vec<u8>, value: impl itoa::Integer) {
    buf.put_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// An unsigned magnitude the numeric encoders work in: `u64` whenever the
/// value fits (its division is an instruction; `u128`'s is a call to
/// `__udivti3`, 2-3% of the server's samples while streaming lineitem's
/// decimals as `u128`), else `u128`.
trait Magnitude:
    Copy + PartialEq + itoa::Integer + std::ops::Div<Output = Self> + std::ops::Rem<Output = Self> + std::ops::Mul<Output = Self>
{
    const ZERO: Self;
    const TEN_THOUSAND: Self;
    fn ten_to(power: u32) -> Self;
    /// The value of a number below 10,000.
    fn digit(self) -> i16;
}

macro_rules! magnitude {
    ($($t:ty),*) => {$(
        impl Magnitude for $t {
            const ZERO: Self = 0;
            const TEN_THOUSAND: Self = 10_000;
            fn ten_to(power: u32) -> Self {
                (10 as $t).pow(power)
            }
            fn digit(self) -> i16 {
                self as i16
            }
        }
    )*};
}

magnitude!(u64, u128);

/// `value` × 10^-scale as Postgres prints a numeric: every digit of the scale.
fn numeric_text(buf: &mut Vec<u8>, value: i128, scale: u8) {
    if value < 0 {
        buf.put_u8(b'-');
    }
    let magnitude = value.unsigned_abs();
    // 10^19 is the largest power of ten a u64 holds.
    match u64::try_from(magnitude) {
        Ok(small) if scale <= 19 => fixed_point(buf, small, scale),
        _ => fixed_point(buf, magnitude, scale),
    }
}

fn fixed_point<M: Magnitude>(buf: &mut Vec<u8>, magnitude: M, scale: u8) {
    if scale == 0 {
        integer(buf, magnitude);
        return;
    }
    let unit = M::ten_to(scale as u32);
    integer(buf, magnitude / unit);
    buf.put_u8(b'.');
    let mut itoa = itoa::Buffer::new();
    let fraction = itoa.format(magnitude % unit);
    for _ in fraction.len()..scale as usize {
        buf.put_u8(b'0');
    }
    buf.put_slice(fraction.as_bytes());
}

/// `value` × 10^-scale in Postgres' binary numeric format: digit count,
/// weight of the first base-10000 digit, sign, display scale, then the
/// base-10000 digits without leading or trailing zero digits.
fn numeric_binary(buf: &mut Vec<u8>, value: i128, scale: u8) {
    let magnitude = value.unsigned_abs();
    // The fraction is padded to whole base-10000 digits (up to 3 more decimal
    // digits), which must fit too: 10^19 is the most a u64 holds.
    let digits = match u64::try_from(magnitude) {
        Ok(small) if scale <= 16 => base_10000(small, scale),
        _ => base_10000(magnitude, scale),
    };
    let Digits { digits, whole_digits, count } = digits;
    let mut weight = whole_digits as i16 - 1;
    let mut first = 0;
    while first < count && digits[first] == 0 {
        first += 1;
        weight -= 1;
    }
    let mut last = count;
    while last > first && digits[last - 1] == 0 {
        last -= 1;
    }
    if first == last {
        // Zero: no digits, weight 0, positive.
        buf.put_i16(0);
        buf.put_i16(0);
        buf.put_u16(0);
        buf.put_i16(scale as i16);
        return;
    }
    buf.put_i16((last - first) as i16);
    buf.put_i16(weight);
    buf.put_u16(if value < 0 { 0x4000 } else { 0 });
    buf.put_i16(scale as i16);
    for digit in &digits[first..last] {
        buf.put_i16(*digit);
    }
}

/// A magnitude's base-10000 digits, most significant first: the whole part's,
/// then the fraction's padded on the right to whole digits.
struct Digits {
    digits: [i16; 20],
    whole_digits: usize,
    count: usize,
}

fn base_10000<M: Magnitude>(magnitude: M, scale: u8) -> Digits {
    let unit = M::ten_to(scale as u32);
    let (mut whole, fraction) = (magnitude / unit, magnitude % unit);
    let fraction_digits = (scale as u32).div_ceil(4);
    let mut fraction = fraction * M::ten_to(fraction_digits * 4 - scale as u32);
    let mut digits = [0i16; 20];
    let mut whole_digits = 0usize;
    let mut integer_part = [0i16; 10];
    while whole != M::ZERO {
        integer_part[whole_digits] = (whole % M::TEN_THOUSAND).digit();
        whole = whole / M::TEN_THOUSAND;
        whole_digits += 1;
    }
    let mut count = 0;
    for i in (0..whole_digits).rev() {
        digits[count] = integer_part[i];
        count += 1;
    }
    let mut tail = [0i16; 10];
    for i in (0..fraction_digits as usize).rev() {
        tail[i] = (fraction % M::TEN_THOUSAND).digit();
        fraction = fraction / M::TEN_THOUSAND;
    }
    digits[count..count + fraction_digits as usize].copy_from_slice(&tail[..fraction_digits as usize]);
    count += fraction_digits as usize;
    Digits { digits, whole_digits, count }
}

/// A float as Postgres prints it with `extra_float_digits` > 0 (the default):
/// the shortest digits that read back as the same value (`shortest`, Rust's
/// `{:e}`), in fixed notation for decimal exponents from -4 to `digits` - 1,
/// else as `1.5e+20` with at least two exponent digits.
fn float_text(buf: &mut Vec<u8>, value: f64, shortest: std::fmt::Arguments<'_>, digits: i32) {
    if value.is_nan() {
        buf.put_slice(b"NaN");
        return;
    }
    if value.is_infinite() {
        buf.put_slice(if value > 0.0 { b"Infinity" } else { b"-Infinity" });
        return;
    }
    // `{:e}` of an f64 is at most 24 bytes (17 digits, sign, point, e-324).
    let mut text = Scratch::default();
    let _ = std::fmt::Write::write_fmt(&mut text, shortest);
    let text = text.as_str();
    let (mantissa, exponent) = text.split_once('e').unwrap_or((text, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let mut raw = [0u8; 24];
    let mut count = 0;
    for b in mantissa.bytes().filter(u8::is_ascii_digit) {
        raw[count] = b;
        count += 1;
    }
    let figures = &raw[..count];
    if negative {
        buf.put_u8(b'-');
    }
    if value == 0.0 {
        buf.put_u8(b'0');
        return;
    }
    if (-4..digits).contains(&exponent) {
        if exponent < 0 {
            buf.put_slice(b"0.");
            for _ in 0..(-exponent - 1) {
                buf.put_u8(b'0');
            }
            buf.put_slice(figures);
        } else {
            let whole = exponent as usize + 1;
            if figures.len() <= whole {
                buf.put_slice(figures);
                for _ in figures.len()..whole {
                    buf.put_u8(b'0');
                }
            } else {
                buf.put_slice(&figures[..whole]);
                buf.put_u8(b'.');
                buf.put_slice(&figures[whole..]);
            }
        }
        return;
    }
    buf.put_u8(figures[0]);
    if figures.len() > 1 {
        buf.put_u8(b'.');
        buf.put_slice(&figures[1..]);
    }
    buf.put_u8(b'e');
    buf.put_u8(if exponent < 0 { b'-' } else { b'+' });
    let magnitude = exponent.unsigned_abs();
    if magnitude < 10 {
        buf.put_u8(b'0');
    }
    integer(buf, magnitude);
}

/// A small stack buffer to format one number into.
#[derive(Default)]
struct Scratch {
    bytes: [u8; 32],
    len: usize,
}

impl Scratch {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

impl std::fmt::Write for Scratch {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

fn two_digits(buf: &mut Vec<u8>, value: u32) {
    buf.put_u8(b'0' + (value / 10) as u8);
    buf.put_u8(b'0' + (value % 10) as u8);
}

/// The date `days` after 1970-01-01 as `YYYY-MM-DD` (ISO), with Postgres' ` BC` for years before 1.
fn date_text(buf: &mut Vec<u8>, days: i32) {
    let (year, month, day) = civil(days as i64);
    date_parts(buf, year, month, day);
    if year <= 0 {
        buf.put_slice(b" BC");
    }
}

/// Year, month and day of the proleptic Gregorian date `days` after
/// 1970-01-01, for any day count (Howard Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn date_parts(buf: &mut Vec<u8>, year: i64, month: u32, day: u32) {
    // Postgres shows year 0 as 1 BC, -1 as 2 BC, ...
    let shown = if year <= 0 { 1 - year } else { year } as u64;
    let mut itoa = itoa::Buffer::new();
    let digits = itoa.format(shown);
    for _ in digits.len()..4 {
        buf.put_u8(b'0');
    }
    buf.put_slice(digits.as_bytes());
    buf.put_u8(b'-');
    two_digits(buf, month);
    buf.put_u8(b'-');
    two_digits(buf, day);
}

/// `micros` after 1970-01-01 00:00 as Postgres prints a timestamp in ISO
/// style: fractional seconds only when there are any, without trailing zeros.
fn timestamp_text(buf: &mut Vec<u8>, micros: i64) {
    let (year, month, day) = civil(micros.div_euclid(MICROS_PER_DAY));
    let in_day = micros.rem_euclid(MICROS_PER_DAY);
    date_parts(buf, year, month, day);
    let seconds = (in_day / 1_000_000) as u32;
    buf.put_u8(b' ');
    two_digits(buf, seconds / 3600);
    buf.put_u8(b':');
    two_digits(buf, seconds / 60 % 60);
    buf.put_u8(b':');
    two_digits(buf, seconds % 60);
    let mut fraction = (in_day % 1_000_000) as u32;
    if fraction > 0 {
        let mut width = 6;
        while fraction % 10 == 0 {
            fraction /= 10;
            width -= 1;
        }
        buf.put_u8(b'.');
        let mut itoa = itoa::Buffer::new();
        let digits = itoa.format(fraction);
        for _ in digits.len()..width {
            buf.put_u8(b'0');
        }
        buf.put_slice(digits.as_bytes());
    }
    if year <= 0 {
        buf.put_slice(b" BC");
    }
}

/// Refuse a date, time or timestamp column holding a value no client type
/// can represent (before, such values reached the client as NULL or as a
/// wrong timestamp): every value is written correctly, or the query fails
/// with PostgreSQL's `22008 ... out of range`. The bounds are those of
/// chrono's calendar (years -262143 to 262142), inside PostgreSQL's own
/// (4713 BC to 294276 AD); times run from 00:00 to before 24:00.
fn check_temporal_range(array: &ArrayRef) -> PgWireResult<()> {
    use datafusion::arrow::compute::{max, min};
    use datafusion::arrow::datatypes::{
        Date64Type, Time32MillisecondType, Time32SecondType, Time64MicrosecondType, Time64NanosecondType,
    };
    fn bounds<T: datafusion::arrow::datatypes::ArrowPrimitiveType<Native = N>, N: Copy>(array: &ArrayRef) -> Option<(N, N)> {
        let values = array.as_primitive::<T>();
        Some((min(values)?, max(values)?))
    }
    let (lowest_micros, highest_micros) = (
        chrono::DateTime::<chrono::Utc>::MIN_UTC.timestamp_micros(),
        chrono::DateTime::<chrono::Utc>::MAX_UTC.timestamp_micros(),
    );
    let day_micros: i64 = 86_400_000_000;
    let out_of_range = |what: &str| {
        Err(super::errors::user(super::errors::with_hint(
            super::errors::error("22008", format!("{what} out of range for the client")),
            "values are served for years -262143 to 262142 (times from 00:00 to before 24:00); filter or convert the value",
        )))
    };
    // Each column's lowest and highest value, as microseconds (since the
    // Unix epoch, or since midnight for times); None when all are NULL.
    let (what, range) = match array.data_type() {
        DataType::Timestamp(unit, _) => {
            let (lo, hi) = match unit {
                TimeUnit::Second => bounds::<TimestampSecondType, i64>(array).map(|(a, b)| (a.checked_mul(1_000_000), b.checked_mul(1_000_000))),
                TimeUnit::Millisecond => bounds::<TimestampMillisecondType, i64>(array).map(|(a, b)| (a.checked_mul(1_000), b.checked_mul(1_000))),
                TimeUnit::Microsecond => bounds::<TimestampMicrosecondType, i64>(array).map(|(a, b)| (Some(a), Some(b))),
                TimeUnit::Nanosecond => bounds::<TimestampNanosecondType, i64>(array).map(|(a, b)| (Some(a.div_euclid(1_000)), Some(b.div_euclid(1_000)))),
            }
            .unwrap_or((Some(0), Some(0)));
            ("timestamp", lo.zip(hi).filter(|(lo, hi)| *lo >= lowest_micros && *hi <= highest_micros))
        }
        DataType::Date32 => {
            let (lo, hi) = bounds::<datafusion::arrow::datatypes::Date32Type, i32>(array).unwrap_or((0, 0));
            let range = (lo as i64).checked_mul(day_micros).zip((hi as i64).checked_mul(day_micros));
            ("date", range.filter(|(lo, hi)| *lo >= lowest_micros && *hi <= highest_micros))
        }
        DataType::Date64 => {
            let (lo, hi) = bounds::<Date64Type, i64>(array).unwrap_or((0, 0));
            let range = lo.checked_mul(1_000).zip(hi.checked_mul(1_000));
            ("date", range.filter(|(lo, hi)| *lo >= lowest_micros && *hi <= highest_micros))
        }
        DataType::Time32(unit) => {
            let (lo, hi) = match unit {
                TimeUnit::Second => bounds::<Time32SecondType, i32>(array).map(|(a, b)| (a as i64 * 1_000_000, b as i64 * 1_000_000)),
                _ => bounds::<Time32MillisecondType, i32>(array).map(|(a, b)| (a as i64 * 1_000, b as i64 * 1_000)),
            }
            .unwrap_or((0, 0));
            ("time", Some((lo, hi)).filter(|(lo, hi)| *lo >= 0 && *hi < day_micros))
        }
        DataType::Time64(unit) => {
            let (lo, hi) = match unit {
                TimeUnit::Nanosecond => bounds::<Time64NanosecondType, i64>(array).map(|(a, b)| (a.div_euclid(1_000), b.div_euclid(1_000))),
                _ => bounds::<Time64MicrosecondType, i64>(array),
            }
            .unwrap_or((0, 0));
            ("time", Some((lo, hi)).filter(|(lo, hi)| *lo >= 0 && *hi < day_micros))
        }
        _ => return Ok(()),
    };
    match range {
        Some(_) => Ok(()),
        None => out_of_range(what),
    }
}

/// Each row's field of a column of a type written by arrow-pg.
fn encoded_by_arrow_pg(array: &ArrayRef, arrow_field: &Arc<Field>, field: &FieldInfo) -> PgWireResult<Vec<DataRow>> {
    let schema = Arc::new(Schema::new(vec![arrow_field.as_ref().clone()]));
    let batch = RecordBatch::try_new(schema, vec![array.clone()]).map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    arrow_pg::datatypes::encode_recordbatch(Arc::new(vec![field.clone()]), batch).collect()
}
