//! `lineage('layer.table' [, direction [, depth]])`: the edges that lead to
//! (direction 'up', the default), from ('down') or both ways around a table,
//! walked up to `depth` hops (default 10) over `workbench.lineage_edges`.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl};
use datafusion::common::plan_err;
use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result};

use super::{Rows, RowsTable, Services, args};
use crate::meta::tables::TABLES;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
    Both,
}

#[derive(Debug)]
pub struct Lineage(pub Services);

impl TableFunctionImpl for Lineage {
    fn call_with_args(&self, a: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let exprs = a.exprs();
        if exprs.is_empty() || exprs.len() > 3 {
            return plan_err!("lineage() takes a table, then optionally 'up' | 'down' | 'both' and a depth: lineage('gold.mart', 'up', 5)");
        }
        let (layer, name) = args::table("lineage", &exprs[0])?;
        super::Caller::of(a.session()).require_read(layer.as_str(), &name)?;
        let direction = match args::optional(exprs, 1).map(|e| args::text("lineage", 2, e)).transpose()?.as_deref() {
            None | Some("up") => Direction::Up,
            Some("down") => Direction::Down,
            Some("both") => Direction::Both,
            Some(other) => return plan_err!("lineage(): direction must be 'up', 'down' or 'both', got '{other}'"),
        };
        let depth = args::optional(exprs, 2).map(|e| args::integer("lineage", 3, e)).transpose()?.unwrap_or(10);
        if depth < 1 {
            return plan_err!("lineage(): depth must be at least 1, got {depth}");
        }
        Ok(Arc::new(RowsTable(LineageTable {
            services: self.0.clone(),
            table: format!("{layer}.{name}"),
            direction,
            depth: depth as usize,
        })))
    }
}

#[derive(Debug)]
struct LineageTable {
    services: Services,
    table: String,
    direction: Direction,
    depth: usize,
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("from_table", DataType::Utf8, false),
        Field::new("from_column", DataType::Utf8, true),
        Field::new("to_table", DataType::Utf8, false),
        Field::new("to_column", DataType::Utf8, true),
        Field::new("transform", DataType::Utf8, true),
        Field::new("run_id", DataType::Utf8, true),
        Field::new("depth", DataType::Int64, false),
    ]))
}

struct Edge {
    from_table: String,
    from_column: String,
    to_table: String,
    to_column: String,
    transform: String,
    run_id: String,
}

#[async_trait]
impl Rows for LineageTable {
    fn schema(&self) -> SchemaRef {
        schema()
    }

    async fn rows(&self) -> Result<RecordBatch> {
        let def = TABLES.iter().find(|t| t.name == "lineage_edges").expect("lineage table");
        let batch = self
            .services
            .meta
            .read_table(def, &[])
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let text = |name: &str| batch.column_by_name(name).expect("column").as_string::<i32>().clone();
        let (ft, fc, tt, tc, tr, ri) = (
            text("from_table"),
            text("from_column"),
            text("to_table"),
            text("to_column"),
            text("transform"),
            text("run_id"),
        );
        let edges: Vec<Edge> = (0..batch.num_rows())
            .map(|i| Edge {
                from_table: ft.value(i).to_string(),
                from_column: fc.value(i).to_string(),
                to_table: tt.value(i).to_string(),
                to_column: tc.value(i).to_string(),
                transform: tr.value(i).to_string(),
                run_id: ri.value(i).to_string(),
            })
            .collect();
        if !edges.iter().any(|e| e.from_table == self.table || e.to_table == self.table) {
            return plan_err!(
                "no lineage recorded for '{}': it is recorded when a run builds the table (check the name, or run its dataset)",
                self.table
            );
        }
        let mut found: Vec<(usize, usize)> = Vec::new(); // (edge index, depth)
        let mut seen_edges: HashSet<usize> = HashSet::new();
        for direction in [Direction::Up, Direction::Down] {
            if self.direction != Direction::Both && self.direction != direction {
                continue;
            }
            let mut queue = VecDeque::from([(self.table.clone(), 0usize)]);
            let mut visited: HashSet<String> = HashSet::from([self.table.clone()]);
            while let Some((table, depth)) = queue.pop_front() {
                if depth >= self.depth {
                    continue;
                }
                for (i, e) in edges.iter().enumerate() {
                    let next = match direction {
                        Direction::Up if e.to_table == table => &e.from_table,
                        Direction::Down if e.from_table == table => &e.to_table,
                        _ => continue,
                    };
                    if seen_edges.insert(i) {
                        found.push((i, depth + 1));
                    }
                    if visited.insert(next.clone()) {
                        queue.push_back((next.clone(), depth + 1));
                    }
                }
            }
        }
        found.sort_by_key(|(i, d)| (*d, edges[*i].from_table.clone(), edges[*i].from_column.clone()));
        let column = |f: &dyn Fn(&Edge) -> String| -> ArrayRef {
            Arc::new(StringArray::from(found.iter().map(|(i, _)| f(&edges[*i])).collect::<Vec<_>>()))
        };
        let nullable = |f: &dyn Fn(&Edge) -> &String| -> ArrayRef {
            Arc::new(StringArray::from(
                found.iter().map(|(i, _)| Some(f(&edges[*i]).clone()).filter(|s| !s.is_empty())).collect::<Vec<_>>(),
            ))
        };
        let columns: Vec<ArrayRef> = vec![
            column(&|e| e.from_table.clone()),
            nullable(&|e| &e.from_column),
            column(&|e| e.to_table.clone()),
            nullable(&|e| &e.to_column),
            nullable(&|e| &e.transform),
            nullable(&|e| &e.run_id),
            Arc::new(Int64Array::from_iter_values(found.iter().map(|(_, d)| *d as i64))),
        ];
        let batch = RecordBatch::try_new(schema(), columns)?;
        Ok(batch)
    }
}
