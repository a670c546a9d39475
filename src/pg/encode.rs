//! Arrow record batches → Postgres `DataRow`s.
//!
//! Each column is looked at once per batch: its array is downcast and paired
//! with the wire format and type the client was told about. The common types
//! (integers, numerics from the i128, dates, strings, and every fixed-width
//! binary value) know each value's exact width before writing it, so a batch
//! is written column by column, each value straight into its row's place in a
//! buffer shared by many rows (each `DataRow` is a zero-copy slice of it),
//! exactly as PostgreSQL writes it, in text and binary format. Floats in
//! text, numerics in binary and timestamps in text are written one value
//! after another and copied into place; any other column (lists, structs,
//! intervals, timestamps with time zone in text, ...) is encoded by arrow-pg,
//! one column at a time, and spliced in the same way.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Decimal128Array, PrimitiveArray, RecordBatch,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{
    DataType, Field, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Schema, TimeUnit,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType,
};
use futures::{Stream, StreamExt, stream};
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
/// 8,192 lineitem rows) are written into buffers of up to this size, as many
/// whole rows as fit (a larger row gets a buffer of its own): below the
/// allocator's mmap threshold (256 KB, `main.rs`), freed buffers are reused
/// from the heap instead of each batch mapping fresh pages the kernel must
/// zero (21% of the server's `perf` samples while streaming lineitem, 1.7%
/// since).
const OUTPUT_CHUNK_BYTES: usize = 128 << 10;
/// Largest scale whose base-10000 digits fit the u128 arithmetic below.
const MAX_FAST_SCALE: i8 = 32;

/// The rows of a query's encoded batches (`encode_batch`, run by the
/// executor where each batch was made), one `DataRow` at a time.
pub fn rows(
    batches: impl Stream<Item = datafusion::error::Result<PgWireResult<Vec<DataRow>>>> + Send + 'static,
) -> SendableRowStream {
    let rows = batches
        .map(|encoded| match encoded.map_err(|e| PgWireError::ApiError(Box::new(e))).and_then(|rows| rows) {
            Ok(rows) => stream::iter(rows.into_iter().map(Ok)).left_stream(),
            Err(e) => stream::once(async { Err(e) }).right_stream(),
        })
        .flatten();
    Box::pin(rows)
}

/// All rows of one batch.
///
/// Written column by column: each column first adds every row's field width
/// to the row widths, then, per output buffer of rows, writes each of its
/// values straight into its row's place (digits included, without a
/// formatting buffer to copy from), in a loop of its own type. The kinds
/// without a cheap exact width (floats in text, numerics in binary, ...) are
/// first written one value after another, then copied into their rows.
pub fn encode_batch(batch: &RecordBatch, fields: &[FieldInfo]) -> PgWireResult<Vec<DataRow>> {
    if batch.num_columns() != fields.len() {
        return Err(PgWireError::ApiError(
            format!("a batch has {} columns, the result {}", batch.num_columns(), fields.len()).into(),
        ));
    }
    let schema = batch.schema();
    let n = batch.num_rows();
    let mut widths = vec![0usize; n];
    let mut columns = Vec::with_capacity(fields.len());
    for ((array, arrow_field), field) in batch.columns().iter().zip(schema.fields()).zip(fields) {
        let column = Column::new(array, arrow_field, field)?;
        if column.visit(&mut Widths(&mut widths)) {
            columns.push(Laid::Direct(column));
        } else {
            let written = Written::of(&column, n);
            written.add_widths(&mut widths);
            columns.push(Laid::Written(written));
        }
    }
    let field_count = columns.len() as i16;
    let mut rows = Vec::with_capacity(n);
    let mut first = 0;
    while first < n {
        let mut end = first + 1;
        let mut bytes = widths[first];
        while end < n && bytes + widths[end] <= OUTPUT_CHUNK_BYTES {
            bytes += widths[end];
            end += 1;
        }
        let mut chunk = vec![0u8; bytes];
        let mut cursor: Vec<usize> = widths[first..end]
            .iter()
            .scan(0, |at, width| {
                let start = *at;
                *at += width;
                Some(start)
            })
            .collect();
        for column in &columns {
            match column {
                Laid::Direct(column) => {
                    column.visit(&mut Place { first, chunk: &mut chunk, cursor: &mut cursor });
                }
                Laid::Written(written) => written.place(first, &mut chunk, &mut cursor),
            }
        }
        // Each row must end where its width said it would: anything else
        // would shift every later field on the wire.
        let mut expected = 0;
        for (at, width) in cursor.iter().zip(&widths[first..end]) {
            expected += width;
            if *at != expected {
                return Err(PgWireError::ApiError(
                    format!("internal error: a row's encoded width was {at} bytes, its fields took {expected}").into(),
                ));
            }
        }
        split_rows(chunk, &cursor, field_count, &mut rows);
        first = end;
    }
    Ok(rows)
}

/// One `DataRow` per row of `chunk`, each a zero-copy slice of it (`ends`:
/// where each row ends).
fn split_rows(chunk: Vec<u8>, ends: &[usize], field_count: i16, rows: &mut Vec<DataRow>) {
    // A buffer made from a `Vec` has one owner, so this never copies.
    let mut chunk = Bytes::from(chunk).try_into_mut().unwrap_or_else(|shared| BytesMut::from(&shared[..]));
    let mut start = 0;
    for &end in ends {
        rows.push(DataRow::new(chunk.split_to(end - start), field_count));
        start = end;
    }
}

/// A column as the batch writer lays it out.
enum Laid<'a> {
    /// Exact widths known per value: written straight into the rows.
    Direct(Column<'a>),
    /// Written one value after another first (`Column::write`), then copied.
    Written(Written),
}

/// Every row's field of one column (length and bytes), one after another.
struct Written {
    fields: Vec<u8>,
    /// Where each row's field ends in `fields`.
    ends: Vec<usize>,
}

impl Written {
    fn of(column: &Column<'_>, rows: usize) -> Self {
        let mut fields = Vec::new();
        let mut ends = Vec::with_capacity(rows);
        for row in 0..rows {
            column.write(row, &mut fields);
            ends.push(fields.len());
        }
        Written { fields, ends }
    }

    fn field(&self, row: usize) -> &[u8] {
        let start = if row == 0 { 0 } else { self.ends[row - 1] };
        &self.fields[start..self.ends[row]]
    }

    fn add_widths(&self, widths: &mut [usize]) {
        for (row, width) in widths.iter_mut().enumerate() {
            *width += self.field(row).len();
        }
    }

    fn place(&self, first: usize, chunk: &mut [u8], cursor: &mut [usize]) {
        for (i, at) in cursor.iter_mut().enumerate() {
            let field = self.field(first + i);
            chunk[*at..*at + field.len()].copy_from_slice(field);
            *at += field.len();
        }
    }
}

/// What the batch writer does with a column whose values' exact widths are
/// known: `width` (the bytes of a non-NULL value) and `put` (write it into
/// exactly that many bytes) are monomorphised into one loop per column type.
trait Pass {
    fn run(&mut self, nulls: Option<&NullBuffer>, width: impl Fn(usize) -> usize, put: impl Fn(usize, &mut [u8]));
}

/// Add each row's field width (its 4-byte length, then its value) to the row widths.
struct Widths<'w>(&'w mut [usize]);

impl Pass for Widths<'_> {
    fn run(&mut self, nulls: Option<&NullBuffer>, width: impl Fn(usize) -> usize, _: impl Fn(usize, &mut [u8])) {
        match nulls {
            None => {
                for (row, total) in self.0.iter_mut().enumerate() {
                    *total += 4 + width(row);
                }
            }
            Some(nulls) => {
                for (row, total) in self.0.iter_mut().enumerate() {
                    *total += 4 + if nulls.is_null(row) { 0 } else { width(row) };
                }
            }
        }
    }
}

/// Write the fields of rows `first..` (one per `cursor` entry) at each row's
/// cursor into `chunk`, and move the cursors past them.
struct Place<'c> {
    first: usize,
    chunk: &'c mut [u8],
    cursor: &'c mut [usize],
}

impl Pass for Place<'_> {
    fn run(&mut self, nulls: Option<&NullBuffer>, width: impl Fn(usize) -> usize, put: impl Fn(usize, &mut [u8])) {
        for (i, at) in self.cursor.iter_mut().enumerate() {
            let row = self.first + i;
            if nulls.is_some_and(|nulls| nulls.is_null(row)) {
                self.chunk[*at..*at + 4].copy_from_slice(&(-1i32).to_be_bytes());
                *at += 4;
                continue;
            }
            let width = width(row);
            let field = &mut self.chunk[*at..*at + 4 + width];
            field[..4].copy_from_slice(&(width as i32).to_be_bytes());
            put(row, &mut field[4..]);
            *at += 4 + width;
        }
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

    /// Run `pass` with this column's exact value widths and writer; false
    /// (and nothing run) for the kinds whose width is only known once
    /// written (floats in text, numerics in binary, timestamps in text, and
    /// what arrow-pg encodes).
    fn visit(&self, pass: &mut impl Pass) -> bool {
        use FieldFormat::{Binary, Text};
        let nulls = self.array().and_then(|a| a.nulls());
        match self {
            Column::Bool(a, Text) => pass.run(nulls, |_| 1, |row, out| out[0] = if a.value(row) { b't' } else { b'f' }),
            Column::Bool(a, Binary) => pass.run(nulls, |_| 1, |row, out| out[0] = a.value(row) as u8),
            Column::Int16(a, Text) => pass.run(nulls, |row| int_width(a.value(row).into()), |row, out| put_int(out, a.value(row).into())),
            Column::Int16(a, Binary) => pass.run(nulls, |_| 2, |row, out| out.copy_from_slice(&a.value(row).to_be_bytes())),
            Column::Int32(a, Text) => pass.run(nulls, |row| int_width(a.value(row).into()), |row, out| put_int(out, a.value(row).into())),
            Column::Int32(a, Binary) => pass.run(nulls, |_| 4, |row, out| out.copy_from_slice(&a.value(row).to_be_bytes())),
            Column::Int64(a, Text) => pass.run(nulls, |row| int_width(a.value(row)), |row, out| put_int(out, a.value(row))),
            Column::Int64(a, Binary) => pass.run(nulls, |_| 8, |row, out| out.copy_from_slice(&a.value(row).to_be_bytes())),
            Column::Float32(a, Binary, _) => pass.run(nulls, |_| 4, |row, out| out.copy_from_slice(&a.value(row).to_be_bytes())),
            Column::Float64(a, Binary, _) => pass.run(nulls, |_| 8, |row, out| out.copy_from_slice(&a.value(row).to_be_bytes())),
            Column::Decimal(a, scale, Text) => {
                let scale = *scale;
                pass.run(nulls, |row| numeric_width(a.value(row), scale), |row, out| put_numeric(out, a.value(row), scale))
            }
            Column::Utf8(Strings::Utf8(a)) => {
                pass.run(nulls, |row| a.value(row).len(), |row, out| out.copy_from_slice(a.value(row).as_bytes()))
            }
            Column::Utf8(Strings::Large(a)) => {
                pass.run(nulls, |row| a.value(row).len(), |row, out| out.copy_from_slice(a.value(row).as_bytes()))
            }
            Column::Utf8(Strings::View(a)) => {
                pass.run(nulls, |row| a.value(row).len(), |row, out| out.copy_from_slice(a.value(row).as_bytes()))
            }
            Column::Date(a, Text) => pass.run(nulls, |row| date_width(a.value(row)), |row, out| put_date(out, a.value(row))),
            Column::Date(a, Binary) => pass.run(
                nulls,
                |_| 4,
                |row, out| out.copy_from_slice(&a.value(row).saturating_sub(PG_EPOCH_DAYS).to_be_bytes()),
            ),
            Column::Timestamp(t, Binary) => pass.run(
                nulls,
                |_| 8,
                |row, out| out.copy_from_slice(&t.micros(row).saturating_sub(PG_EPOCH_MICROS).to_be_bytes()),
            ),
            _ => return false,
        }
        true
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
        use FieldFormat::Text;
        match self {
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
            Column::Float64(a, Text, options) if options.extra_float_digits > 0 => {
                sized(buf, |b| float_text(b, a.value(row), format_args!("{:e}", a.value(row)), 15))
            }
            Column::Float64(a, Text, options) => sized(buf, |b| {
                let mut text = BytesMut::new();
                let _ = a.value(row).to_sql_text(&Type::FLOAT8, &mut text, options);
                b.extend_from_slice(&text);
            }),
            Column::Decimal(a, scale, FieldFormat::Binary) => sized(buf, |b| numeric_binary(b, a.value(row), *scale)),
            Column::Timestamp(t, Text) => sized(buf, |b| timestamp_text(b, t.micros(row))),
            // The kinds `visit` writes: one row of them.
            _ => {
                self.visit(&mut Append { row, buf });
            }
        }
    }
}

/// Append one row's field to a buffer.
struct Append<'b> {
    row: usize,
    buf: &'b mut Vec<u8>,
}

impl Pass for Append<'_> {
    fn run(&mut self, _: Option<&NullBuffer>, width: impl Fn(usize) -> usize, put: impl Fn(usize, &mut [u8])) {
        let width = width(self.row);
        self.buf.put_i32(width as i32);
        let at = self.buf.len();
        self.buf.resize(at + width, 0);
        put(self.row, &mut self.buf[at..]);
    }
}

/// Two ASCII digits per value below 100.
const DIGIT_PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819202122232425262728293031323334353637383940414243444546474849\
5051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899";

/// Decimal digits of `value`.
fn digit_count(value: u64) -> usize {
    value.checked_ilog10().map_or(1, |log| log as usize + 1)
}

fn wide_digit_count(value: u128) -> usize {
    value.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// `value` in exactly `out.len()` decimal digits, zero-padded on the left.
fn put_digits(out: &mut [u8], mut value: u64) {
    let mut end = out.len();
    while end >= 2 {
        let pair = (value % 100) as usize * 2;
        value /= 100;
        out[end - 2..end].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
        end -= 2;
    }
    if end == 1 {
        out[0] = b'0' + (value % 10) as u8;
    }
}

/// `put_digits` for a `u128`: 19 digits at a time through `u64`s (a `u128`
/// division is a call; a `u64`'s an instruction).
fn put_wide_digits(out: &mut [u8], value: u128) {
    const TEN_TO_19: u128 = 10_000_000_000_000_000_000;
    match u64::try_from(value) {
        Ok(small) => put_digits(out, small),
        Err(_) => {
            let split = out.len().saturating_sub(19);
            put_digits(&mut out[split..], (value % TEN_TO_19) as u64);
            put_wide_digits(&mut out[..split], value / TEN_TO_19);
        }
    }
}

fn int_width(value: i64) -> usize {
    usize::from(value < 0) + digit_count(value.unsigned_abs())
}

fn put_int(out: &mut [u8], value: i64) {
    if value < 0 {
        out[0] = b'-';
        put_digits(&mut out[1..], value.unsigned_abs());
    } else {
        put_digits(out, value as u64);
    }
}

/// The width of `value` × 10^-scale as Postgres prints a numeric: sign,
/// whole digits (at least one), then a point and every digit of the scale.
fn numeric_width(value: i128, scale: u8) -> usize {
    let scale = scale as usize;
    let magnitude = value.unsigned_abs();
    let digits = u64::try_from(magnitude).map_or_else(|_| wide_digit_count(magnitude), digit_count);
    let whole = digits.saturating_sub(scale).max(1);
    usize::from(value < 0) + whole + if scale > 0 { 1 + scale } else { 0 }
}

fn put_numeric(out: &mut [u8], value: i128, scale: u8) {
    let out = if value < 0 {
        out[0] = b'-';
        &mut out[1..]
    } else {
        out
    };
    let magnitude = value.unsigned_abs();
    if scale == 0 {
        put_wide_digits(out, magnitude);
        return;
    }
    let fraction_at = out.len() - scale as usize;
    // 10^19 is the largest power of ten a u64 holds.
    let (whole, fraction) = match u64::try_from(magnitude) {
        Ok(small) if scale <= 19 => {
            let unit = 10u64.pow(scale as u32);
            ((small / unit) as u128, (small % unit) as u128)
        }
        _ => {
            let unit = 10u128.pow(scale as u32);
            (magnitude / unit, magnitude % unit)
        }
    };
    put_wide_digits(&mut out[..fraction_at - 1], whole);
    out[fraction_at - 1] = b'.';
    put_wide_digits(&mut out[fraction_at..], fraction);
}

/// Days from 1970-01-01 to 1000-01-01 and to 9999-12-31: the dates whose
/// year has exactly four digits, `YYYY-MM-DD`.
const FOUR_DIGIT_YEARS: std::ops::RangeInclusive<i32> = -354_285..=2_932_896;

/// The width of the date `days` after 1970-01-01 in ISO style, with
/// Postgres' ` BC` for years before 1.
fn date_width(days: i32) -> usize {
    if FOUR_DIGIT_YEARS.contains(&days) {
        return 10;
    }
    let (year, ..) = civil(days as i64);
    let shown = if year <= 0 { 1 - year } else { year } as u64;
    digit_count(shown).max(4) + 6 + if year <= 0 { 3 } else { 0 }
}

/// `civil` for the days of `FOUR_DIGIT_YEARS`, in 32-bit multiplications
/// and shifts instead of 64-bit divisions (Neri and Schneider's Euclidean
/// affine functions, 2021; checked against Python's calendar on every day of
/// the range): `civil` was 8% of the server's CPU streaming lineitem's three
/// dates per row.
fn four_digit_civil(days: i32) -> (u32, u32, u32) {
    // Shift the day count so that every day of the range is positive and
    // centuries start on March 1st of a year divisible by 400.
    const ERAS: u32 = 82;
    const SHIFT: u32 = 719_468 + 146_097 * ERAS;
    let n = days.wrapping_add(SHIFT as i32) as u32;
    let century_days = 4 * n + 3;
    let century = century_days / 146_097;
    let day_of_century = century_days % 146_097 / 4;
    let year_days = 2_939_745u64 * (4 * day_of_century + 3) as u64;
    let year_of_century = (year_days >> 32) as u32;
    let day_of_year = (year_days & 0xffff_ffff) as u32 / 2_939_745 / 4;
    let month_days = 2_141 * day_of_year + 197_913;
    let (month, day) = (month_days >> 16, (month_days & 0xffff) / 2_141 + 1);
    // Months ran from March: January and February belong to the next year.
    let january = day_of_year >= 306;
    let year = 100 * century + year_of_century - 400 * ERAS + u32::from(january);
    (year, if january { month - 12 } else { month }, day)
}

fn put_date(out: &mut [u8], days: i32) {
    if FOUR_DIGIT_YEARS.contains(&days) {
        let (year, month, day) = four_digit_civil(days);
        put_digits(&mut out[..4], year as u64);
        out[4] = b'-';
        put_digits(&mut out[5..7], month as u64);
        out[7] = b'-';
        put_digits(&mut out[8..10], day as u64);
        return;
    }
    let (year, month, day) = civil(days as i64);
    // Postgres shows year 0 as 1 BC, -1 as 2 BC, ...
    let bc = year <= 0;
    let shown = if bc { 1 - year } else { year } as u64;
    let year_end = out.len() - 6 - if bc { 3 } else { 0 };
    put_digits(&mut out[..year_end], shown);
    out[year_end] = b'-';
    put_digits(&mut out[year_end + 1..year_end + 3], month as u64);
    out[year_end + 3] = b'-';
    put_digits(&mut out[year_end + 4..year_end + 6], day as u64);
    if bc {
        out[year_end + 6..].copy_from_slice(b" BC");
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

/// `micros` after 1970-01-01 00:00 as Postgres prints a timestamp in ISO
/// style: fractional seconds only when there are any, without trailing zeros.
fn timestamp_text(buf: &mut Vec<u8>, micros: i64) {
    // `check_temporal_range` keeps timestamps within years -262143 to
    // 262142, whose day counts fit an i32.
    let days = micros.div_euclid(MICROS_PER_DAY) as i32;
    let in_day = micros.rem_euclid(MICROS_PER_DAY);
    let at = buf.len();
    buf.resize(at + date_width(days), 0);
    put_date(&mut buf[at..], days);
    // Postgres puts ` BC` after the time.
    let bc = buf.ends_with(b" BC");
    if bc {
        buf.truncate(buf.len() - 3);
    }
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
    if bc {
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
