//! Describe result columns as Postgres does: column labels by Postgres' own
//! rules (`count(*)` is labelled `count`, `1 + 1` is `?column?`), and type
//! modifiers carrying `numeric(p, s)` precision and scale.

use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::sql::sqlparser::ast::{Expr, Query, SelectItem, SetExpr, Statement};
use pgwire::api::results::FieldInfo;

/// Prefix the upstream compatibility parser gives aliases it invents.
const UPSTREAM_ALIAS_PREFIX: &str = "__alias_";

/// What a projection item is called in the result.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Label {
    /// Use this name.
    Name(String),
    /// DataFusion's name is already the Postgres one (plain column references).
    Keep,
    /// `*` or `t.*`: expands to an unknown number of columns.
    Wildcard,
}

/// Postgres labels for the result columns of `statement`, or `None` when the
/// statement returns no rows or its shape is not a plain query.
fn labels(statement: &Statement) -> Option<Vec<Label>> {
    match statement {
        Statement::Query(query) => query_labels(query),
        _ => None,
    }
}

fn query_labels(query: &Query) -> Option<Vec<Label>> {
    set_expr_labels(&query.body)
}

fn set_expr_labels(body: &SetExpr) -> Option<Vec<Label>> {
    match body {
        SetExpr::Select(select) => Some(
            select
                .projection
                .iter()
                .map(|item| match item {
                    SelectItem::UnnamedExpr(expr) => match expr_label(expr) {
                        Some(name) => Label::Name(name),
                        None => Label::Keep,
                    },
                    SelectItem::ExprWithAlias { alias, .. } => {
                        match alias.value.strip_prefix(UPSTREAM_ALIAS_PREFIX) {
                            Some(original) => Label::Name(original.to_string()),
                            None => Label::Keep,
                        }
                    }
                    SelectItem::ExprWithAliases { .. } => Label::Keep,
                    SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => Label::Wildcard,
                })
                .collect(),
        ),
        SetExpr::SetOperation { left, .. } => set_expr_labels(left),
        SetExpr::Query(query) => query_labels(query),
        _ => None,
    }
}

/// Postgres' FigureColname: the label of an unaliased select item, or `None`
/// where DataFusion's name already matches (column references).
fn expr_label(expr: &Expr) -> Option<String> {
    Some(match expr {
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) => return None,
        Expr::Nested(inner) => return expr_label(inner).or_else(|| column_name(inner)),
        Expr::Function(f) => last_name_part(&f.name.to_string()),
        Expr::Cast { expr, data_type, .. } => {
            match expr_label(expr).or_else(|| column_name(expr)) {
                Some(name) if name != "?column?" => name,
                _ => type_label(&data_type.to_string()),
            }
        }
        Expr::TypedString(typed) => type_label(&typed.data_type.to_string()),
        Expr::Case { .. } => "case".into(),
        Expr::Exists { .. } => "exists".into(),
        Expr::Array(_) => "array".into(),
        Expr::Subquery(query) => match query_labels(query).as_deref() {
            Some([Label::Name(name), ..]) => name.clone(),
            _ => subquery_first_column(query).unwrap_or_else(|| "?column?".into()),
        },
        Expr::Extract { .. } => "extract".into(),
        Expr::Position { .. } => "position".into(),
        Expr::Substring { .. } => "substring".into(),
        Expr::Trim { .. } => "btrim".into(),
        Expr::Overlay { .. } => "overlay".into(),
        Expr::Ceil { .. } => "ceil".into(),
        Expr::Floor { .. } => "floor".into(),
        Expr::Interval(_) => "interval".into(),
        _ => "?column?".into(),
    })
}

fn column_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(ident) => Some(ident.value.clone()),
        Expr::CompoundIdentifier(parts) => parts.last().map(|p| p.value.clone()),
        _ => None,
    }
}

fn subquery_first_column(query: &Query) -> Option<String> {
    match query.body.as_ref() {
        SetExpr::Select(select) => match select.projection.first()? {
            SelectItem::UnnamedExpr(expr) => expr_label(expr).or_else(|| column_name(expr)),
            SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.clone()),
            _ => None,
        },
        _ => None,
    }
}

fn last_name_part(name: &str) -> String {
    name.rsplit('.')
        .next()
        .unwrap_or(name)
        .trim_matches('"')
        .to_ascii_lowercase()
}

/// The label Postgres gives a cast of an unnamed value: its type's internal name.
fn type_label(sql_type: &str) -> String {
    let lower = sql_type.to_ascii_lowercase();
    let base = lower.split('(').next().unwrap_or(&lower).trim();
    match base {
        "int" | "integer" | "int4" => "int4",
        "bigint" | "int8" => "int8",
        "smallint" | "int2" => "int2",
        "real" | "float4" => "float4",
        "double precision" | "double" | "float8" | "float" => "float8",
        "boolean" | "bool" => "bool",
        "decimal" | "numeric" => "numeric",
        "character varying" | "varchar" => "varchar",
        "character" | "char" => "bpchar",
        "timestamp with time zone" | "timestamptz" => "timestamptz",
        "timestamp" | "timestamp without time zone" => "timestamp",
        "time" | "time without time zone" => "time",
        other => return last_name_part(other),
    }
    .to_string()
}

/// Rename and annotate `fields` (as arrow-pg built them from `schema`) the
/// way Postgres would describe the result of `statement`.
pub fn describe(
    fields: Vec<FieldInfo>,
    schema: &Schema,
    statement: Option<&Statement>,
) -> Vec<FieldInfo> {
    let names = statement
        .and_then(labels)
        .map(|labels| align(&labels, fields.len()))
        .unwrap_or_else(|| vec![None; fields.len()]);
    fields
        .into_iter()
        .zip(names)
        .enumerate()
        .map(|(i, (field, name))| {
            let typmod = schema
                .fields()
                .get(i)
                .map(|f| crate::engine::type_modifier(f.data_type()))
                .unwrap_or(-1);
            rebuild(field, name, typmod)
        })
        .collect()
}

pub fn describe_arc(
    fields: Arc<Vec<FieldInfo>>,
    schema: &Schema,
    statement: Option<&Statement>,
) -> Arc<Vec<FieldInfo>> {
    Arc::new(describe(
        Arc::try_unwrap(fields).unwrap_or_else(|shared| (*shared).clone()),
        schema,
        statement,
    ))
}

/// Map projection labels onto `width` output columns. Items before a single
/// wildcard align from the left, items after it from the right.
fn align(labels: &[Label], width: usize) -> Vec<Option<String>> {
    let name = |label: &Label| match label {
        Label::Name(n) => Some(n.clone()),
        _ => None,
    };
    let wildcards = labels.iter().filter(|l| **l == Label::Wildcard).count();
    let mut out = vec![None; width];
    match wildcards {
        0 if labels.len() == width => {
            for (slot, label) in out.iter_mut().zip(labels) {
                *slot = name(label);
            }
        }
        1 => {
            let w = labels
                .iter()
                .position(|l| *l == Label::Wildcard)
                .expect("one wildcard");
            let after = &labels[w + 1..];
            if w + after.len() <= width {
                for (slot, label) in out.iter_mut().zip(&labels[..w]) {
                    *slot = name(label);
                }
                for (slot, label) in out[width - after.len()..].iter_mut().zip(after) {
                    *slot = name(label);
                }
            }
        }
        _ => {}
    }
    out
}

fn rebuild(field: FieldInfo, name: Option<String>, typmod: i32) -> FieldInfo {
    let typmod = if typmod == -1 { field.type_modifier() } else { typmod };
    if name.is_none() && typmod == field.type_modifier() {
        return field;
    }
    FieldInfo::new(
        name.unwrap_or_else(|| field.name().to_string()),
        field.table_id(),
        field.column_id(),
        field.datatype().clone(),
        field.format(),
    )
    .with_format_options(field.format_options().clone())
    .with_type_size(field.type_size())
    .with_type_modifier(typmod)
}
