//! Column-level lineage of silver from its rules: which bronze columns each
//! silver column is computed from, followed rule by rule (renames, melts,
//! derived expressions, selections).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{Expr, Visit, Visitor};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::spec::{Located, MeltValues, Rule};

/// For each column after the rules: the input columns it comes from and the
/// rules that shaped it. `input` are the bronze columns.
pub fn column_sources(input: &[String], rules: &[Located<Rule>]) -> BTreeMap<String, (BTreeSet<String>, Vec<&'static str>)> {
    let mut columns: BTreeMap<String, (BTreeSet<String>, Vec<&'static str>)> =
        input.iter().map(|c| (c.clone(), (BTreeSet::from([c.clone()]), Vec::new()))).collect();
    for rule in rules {
        let name = rule.value.name();
        match &rule.value {
            Rule::Rename(pairs) => {
                for (from, to) in pairs {
                    if let Some((sources, mut how)) = columns.remove(from) {
                        how.push(name);
                        columns.insert(to.clone(), (sources, how));
                    }
                }
            }
            Rule::Select(keep) => columns.retain(|c, _| keep.contains(c) || c.starts_with('_')),
            Rule::Drop(drop) => columns.retain(|c, _| !drop.contains(c)),
            Rule::Trim(cols) | Rule::Normalize { columns: cols, .. } => {
                for (column, (_, how)) in columns.iter_mut() {
                    if cols.as_ref().is_none_or(|c| c.contains(column)) && !column.starts_with('_') {
                        how.push(name);
                    }
                }
            }
            Rule::TypeCast(casts) => {
                for cast in casts {
                    if let Some((_, how)) = columns.get_mut(&cast.column) {
                        how.push(name);
                    }
                }
            }
            Rule::MapCategories { column, .. } => {
                if let Some((_, how)) = columns.get_mut(column) {
                    how.push(name);
                }
            }
            Rule::Melt { id, values, variable, value } => {
                let value_columns: Vec<String> = match values {
                    MeltValues::Columns(c) => c.clone(),
                    MeltValues::Pattern(p) => match regex::Regex::new(p) {
                        Ok(re) => columns.keys().filter(|c| !id.contains(c) && re.is_match(c)).cloned().collect(),
                        Err(_) => Vec::new(),
                    },
                };
                let mut melted = BTreeSet::new();
                for v in &value_columns {
                    if let Some((sources, _)) = columns.remove(v) {
                        melted.extend(sources);
                    }
                }
                columns.insert(value.clone(), (melted, vec![name]));
                // The variable holds the value columns' names, not their data.
                columns.insert(variable.clone(), (BTreeSet::new(), vec![name]));
            }
            Rule::Derive(derived) => {
                for (new, sql) in derived {
                    let mut sources = BTreeSet::new();
                    for referenced in referenced_columns(sql) {
                        if let Some((s, _)) = columns.get(&referenced) {
                            sources.extend(s.iter().cloned());
                        }
                    }
                    columns.insert(new.clone(), (sources, vec![name]));
                }
            }
            Rule::Filter(_) | Rule::Dedupe { .. } => {}
        }
    }
    columns
}

/// Column names an SQL expression refers to.
fn referenced_columns(sql: &str) -> BTreeSet<String> {
    struct Names(BTreeSet<String>);
    impl Visitor for Names {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            match expr {
                Expr::Identifier(ident) => {
                    self.0.insert(ident.value.clone());
                }
                Expr::CompoundIdentifier(parts) => {
                    if let Some(last) = parts.last() {
                        self.0.insert(last.value.clone());
                    }
                }
                _ => {}
            }
            ControlFlow::Continue(())
        }
    }
    let Ok(expr) = Parser::new(&PostgreSqlDialect {}).try_with_sql(sql).and_then(|mut p| p.parse_expr()) else {
        return BTreeSet::new();
    };
    let mut names = Names(BTreeSet::new());
    let _ = expr.visit(&mut names);
    names.0
}
