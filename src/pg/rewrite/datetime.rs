//! Postgres datetime formatting in DataFusion's terms:
//!
//! - `to_timestamp(text, 'YYYY-MM-DD HH24:MI:SS.US')`, `to_date(text, 'DD/MM/YYYY')`
//!   and `to_char(ts, 'YYYY-MM-DD')` take Postgres template patterns
//!   (Superset's time filters, Metabase, hand-written SQL); DataFusion's
//!   functions take chrono patterns, so literal Postgres patterns are
//!   translated. Patterns already in chrono syntax (with `%`) are left alone.
//! - `timestamp 'epoch'` (Superset's epoch conversions) is 1970-01-01, and
//!   `n * interval '1 second'` (a number times a fixed-length interval
//!   literal, which DataFusion cannot multiply) is a duration of n seconds.

use datafusion::sql::sqlparser::ast::{
    DataType, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Value, ValueWithSpan,
};

pub fn patterns(expr: &mut Expr) {
    let Expr::Function(function) = expr else { return };
    let name = function.name.to_string().to_ascii_lowercase();
    let name = name.strip_prefix("pg_catalog.").unwrap_or(&name);
    if !matches!(name, "to_timestamp" | "to_date" | "to_char") {
        return;
    }
    let FunctionArguments::List(list) = &mut function.args else { return };
    if list.args.len() != 2 {
        return;
    }
    if let FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(ValueWithSpan {
        value: Value::SingleQuotedString(pattern),
        ..
    }))) = &mut list.args[1]
        && !pattern.contains('%')
    {
        *pattern = chrono_pattern(pattern);
    }
}

/// Translate a Postgres template pattern into chrono's strftime syntax.
pub fn chrono_pattern(pattern: &str) -> String {
    // Longest tokens first so that e.g. `HH24` is not read as `HH` + `24`.
    const TOKENS: &[(&str, &str)] = &[
        ("YYYY", "%Y"),
        ("HH24", "%H"),
        ("HH12", "%I"),
        ("MONTH", "%B"),
        ("Month", "%B"),
        ("month", "%B"),
        ("DDD", "%j"),
        ("MON", "%b"),
        ("Mon", "%b"),
        ("mon", "%b"),
        ("DAY", "%A"),
        ("Day", "%A"),
        ("day", "%A"),
        ("YY", "%y"),
        ("MM", "%m"),
        ("DD", "%d"),
        ("HH", "%I"),
        ("MI", "%M"),
        ("SS", "%S"),
        ("US", "%6f"),
        ("MS", "%3f"),
        ("AM", "%p"),
        ("PM", "%p"),
        ("am", "%P"),
        ("pm", "%P"),
        ("Dy", "%a"),
        ("DY", "%a"),
        ("TZ", "%Z"),
        ("OF", "%:z"),
        ("FM", ""),
        ("TH", ""),
    ];
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut rest = pattern;
    'outer: while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            // Literal text in double quotes.
            let end = quoted.find('"').unwrap_or(quoted.len());
            out.push_str(&quoted[..end].replace('%', "%%"));
            rest = quoted.get(end + 1..).unwrap_or("");
            continue;
        }
        for (token, replacement) in TOKENS {
            if let Some(after) = rest.strip_prefix(token) {
                out.push_str(replacement);
                rest = after;
                continue 'outer;
            }
        }
        let c = rest.chars().next().expect("rest is not empty");
        if c == '%' {
            out.push_str("%%");
        } else {
            out.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// `'epoch'` as a timestamp or date literal.
pub fn special_literals(expr: &mut Expr) {
    let (data_type, value) = match expr {
        Expr::TypedString(typed) => (&typed.data_type, &mut typed.value.value),
        Expr::Cast {
            data_type,
            expr: inner,
            ..
        } => match inner.as_mut() {
            Expr::Value(v) => (&*data_type, &mut v.value),
            _ => return,
        },
        _ => return,
    };
    let is_datetime = matches!(
        data_type,
        DataType::Timestamp(..) | DataType::Date | DataType::Datetime(_) | DataType::TimestampNtz(_)
    ) || matches!(data_type, DataType::Custom(name, _) if name.to_string().eq_ignore_ascii_case("timestamptz"));
    if let Value::SingleQuotedString(text) = value
        && is_datetime
        && text.trim().eq_ignore_ascii_case("epoch")
    {
        *text = if matches!(data_type, DataType::Date) { "1970-01-01" } else { "1970-01-01 00:00:00" }.into();
    }
}

/// `n * interval 'k unit'` or `interval 'k unit' * n`, for fixed-length
/// units (microseconds to weeks) → a duration in microseconds.
pub fn interval_product(expr: &mut Expr) {
    use datafusion::sql::sqlparser::ast::BinaryOperator;
    let Expr::BinaryOp {
        left,
        op: BinaryOperator::Multiply,
        right,
    } = expr
    else {
        return;
    };
    let (number, micros) = match (interval_micros(left), interval_micros(right)) {
        (None, Some(m)) => (left.as_ref().clone(), m),
        (Some(m), None) => (right.as_ref().clone(), m),
        _ => return,
    };
    let template = format!("arrow_cast(CAST(round(CAST(__n AS DOUBLE) * {micros}) AS BIGINT), 'Duration(Microsecond)')");
    let Some(mut call) = super::parse_expr(&template) else { return };
    // Put the number in place of `__n` (the only identifier of the template).
    struct Fill(Option<Expr>);
    impl datafusion::sql::sqlparser::ast::VisitorMut for Fill {
        type Break = ();
        fn post_visit_expr(&mut self, e: &mut Expr) -> std::ops::ControlFlow<()> {
            if matches!(e, Expr::Identifier(i) if i.value == "__n")
                && let Some(n) = self.0.take()
            {
                *e = Expr::Nested(Box::new(n));
            }
            std::ops::ControlFlow::Continue(())
        }
    }
    let _ = datafusion::sql::sqlparser::ast::VisitMut::visit(&mut call, &mut Fill(Some(number)));
    *expr = call;
}

/// Microseconds in an interval literal of one fixed-length unit (`'1 second'`, `'15 minutes'`).
fn interval_micros(expr: &Expr) -> Option<i64> {
    let Expr::Interval(interval) = expr else { return None };
    if interval.leading_field.is_some() || interval.last_field.is_some() {
        return None;
    }
    let text = super::literal_text(&interval.value)?;
    let mut words = text.split_whitespace();
    let amount: f64 = words.next()?.parse().ok()?;
    let unit = words.next().unwrap_or("second").to_ascii_lowercase();
    if words.next().is_some() {
        return None;
    }
    let per_unit: f64 = match unit.trim_end_matches('s') {
        "microsecond" | "u" => 1.0,
        "millisecond" | "m" => 1_000.0,
        "second" | "sec" => 1_000_000.0,
        "minute" | "min" => 60_000_000.0,
        "hour" | "h" => 3_600_000_000.0,
        "day" | "d" => 86_400_000_000.0,
        "week" | "w" => 604_800_000_000.0,
        _ => return None,
    };
    Some((amount * per_unit).round() as i64)
}
