//! Column-level lineage of a SQL model, read off its DataFusion logical plan
//! (not from the SQL text): for every output column, the table columns it is
//! computed from, traced through projections, aggregates, joins and aliases.

use std::collections::BTreeSet;

use datafusion::common::Column;
use datafusion::logical_expr::{Expr, LogicalPlan};

/// `(output column, {(table, column)})` for every column `plan` produces.
pub fn column_sources(plan: &LogicalPlan) -> Vec<(String, BTreeSet<(String, String)>)> {
    plan.schema()
        .columns()
        .iter()
        .map(|c| (c.name.clone(), trace(plan, c)))
        .collect()
}

fn from_exprs(exprs: &[&Expr], input: &LogicalPlan) -> BTreeSet<(String, String)> {
    exprs
        .iter()
        .flat_map(|e| e.column_refs())
        .flat_map(|c| trace(input, c))
        .collect()
}

fn trace(plan: &LogicalPlan, column: &Column) -> BTreeSet<(String, String)> {
    match plan {
        LogicalPlan::TableScan(scan) => {
            let table = scan.table_name.to_string();
            let table = table.split('.').rev().take(2).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join(".");
            BTreeSet::from([(table, column.name.clone())])
        }
        LogicalPlan::Projection(p) => match p.schema.index_of_column(column) {
            Ok(i) => from_exprs(&[&p.expr[i]], &p.input),
            Err(_) => BTreeSet::new(),
        },
        LogicalPlan::Aggregate(a) => match a.schema.index_of_column(column) {
            Ok(i) => {
                let exprs: Vec<&Expr> = a.group_expr.iter().chain(a.aggr_expr.iter()).collect();
                match exprs.get(i) {
                    Some(e) => from_exprs(&[e], &a.input),
                    None => BTreeSet::new(),
                }
            }
            Err(_) => BTreeSet::new(),
        },
        LogicalPlan::SubqueryAlias(s) => match s.schema.index_of_column(column) {
            Ok(i) => {
                let (qualifier, field) = s.input.schema().qualified_field(i);
                trace(&s.input, &Column::new(qualifier.cloned(), field.name()))
            }
            Err(_) => BTreeSet::new(),
        },
        LogicalPlan::Window(w) => {
            if w.input.schema().has_column(column) {
                trace(&w.input, column)
            } else {
                match w.schema.index_of_column(column) {
                    Ok(i) => {
                        let offset = w.input.schema().fields().len();
                        match w.window_expr.get(i.saturating_sub(offset)) {
                            Some(e) => from_exprs(&[e], &w.input),
                            None => BTreeSet::new(),
                        }
                    }
                    Err(_) => BTreeSet::new(),
                }
            }
        }
        other => other
            .inputs()
            .into_iter()
            .filter(|input| input.schema().has_column(column) || input.schema().has_column_with_unqualified_name(&column.name))
            .flat_map(|input| {
                if input.schema().has_column(column) {
                    trace(input, column)
                } else {
                    trace(input, &Column::from_name(column.name.clone()))
                }
            })
            .collect(),
    }
}
