//! `search('text')`: the tables and columns whose name, description, tags
//! or owner contain `text` (case-insensitive), among the tables the caller
//! may read. A data catalog's search box, over what the specs declare.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl};
use datafusion::common::plan_err;
use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result};

use super::{Caller, Rows, RowsTable, Services, args};
use crate::engine::DATABASE;
use crate::storage::Layer;

#[derive(Debug)]
pub struct Search(pub Services);

impl TableFunctionImpl for Search {
    fn call_with_args(&self, a: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let [text] = a.exprs() else {
            return plan_err!("search() takes one text: search('proveedor')");
        };
        let text = args::text("search", 1, text)?;
        if text.trim().is_empty() {
            return plan_err!("search(): the text is empty; give a word to look for, e.g. search('rut')");
        }
        Ok(Arc::new(RowsTable(SearchTable {
            services: self.0.clone(),
            caller: Caller::of(a.session()),
            needle: text.trim().to_lowercase(),
        })))
    }
}

#[derive(Debug)]
struct SearchTable {
    services: Services,
    caller: Caller,
    needle: String,
}

fn schema() -> SchemaRef {
    let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
    Arc::new(Schema::new(vec![
        text("kind", false),
        text("table_name", false),
        text("column_name", true),
        text("data_type", true),
        text("description", true),
        text("tags", true),
        text("owner", true),
        text("matched", false),
    ]))
}

/// One result row.
struct Hit {
    kind: &'static str,
    table: String,
    column: Option<String>,
    data_type: Option<String>,
    description: Option<String>,
    tags: Option<String>,
    owner: Option<String>,
    matched: &'static str,
}

impl SearchTable {
    /// Which of `fields` (name, text) contains the needle first.
    fn matched(&self, fields: &[(&'static str, Option<&str>)]) -> Option<&'static str> {
        fields
            .iter()
            .find(|(_, value)| value.is_some_and(|v| v.to_lowercase().contains(&self.needle)))
            .map(|(what, _)| *what)
    }
}

#[async_trait]
impl Rows for SearchTable {
    fn schema(&self) -> SchemaRef {
        schema()
    }

    async fn rows(&self) -> Result<RecordBatch> {
        let policy = &self.services.policy;
        let session = self.services.engine.internal_session();
        let catalog = session
            .catalog(DATABASE)
            .ok_or_else(|| DataFusionError::Internal("the lake catalog is not registered".into()))?;
        let mut hits = Vec::new();
        for layer in Layer::ALL {
            let schema_name = layer.as_str();
            let Some(schema) = catalog.schema(schema_name) else { continue };
            let mut names = schema.table_names();
            names.sort();
            for name in names {
                if !self.caller.can_read(schema_name, &name) {
                    continue;
                }
                let full = format!("{schema_name}.{name}");
                let doc = policy.table_doc(schema_name, &name);
                let description = doc.and_then(|d| d.description.clone());
                let owner = doc.and_then(|d| d.owner.clone());
                if let Some(matched) = self.matched(&[
                    ("table name", Some(&full)),
                    ("description", description.as_deref()),
                    ("owner", owner.as_deref()),
                ]) {
                    hits.push(Hit {
                        kind: "table",
                        table: full.clone(),
                        column: None,
                        data_type: None,
                        description: description.clone(),
                        tags: None,
                        owner: owner.clone(),
                        matched,
                    });
                }
                let Ok(Some(provider)) = schema.table(&name).await else { continue };
                let columns = policy.columns(schema_name, &name);
                for field in provider.schema().fields() {
                    let declared = columns.iter().find(|c| &c.name == field.name());
                    let tags = declared.filter(|c| !c.tags.is_empty()).map(|c| c.tags.join(", "));
                    let column_description = declared.and_then(|c| c.description.clone());
                    if let Some(matched) = self.matched(&[
                        ("column name", Some(field.name())),
                        ("description", column_description.as_deref()),
                        ("tags", tags.as_deref()),
                    ]) {
                        hits.push(Hit {
                            kind: "column",
                            table: full.clone(),
                            column: Some(field.name().clone()),
                            data_type: Some(
                                arrow_pg::datatypes::into_pg_type(field.data_type())
                                    .map(|t| t.name().to_string())
                                    .unwrap_or_else(|_| "text".into()),
                            ),
                            description: column_description,
                            tags,
                            owner: owner.clone(),
                            matched,
                        });
                    }
                }
            }
        }
        let text = |f: &dyn Fn(&Hit) -> Option<String>| -> ArrayRef { Arc::new(StringArray::from(hits.iter().map(f).collect::<Vec<_>>())) };
        Ok(RecordBatch::try_new(
            schema(),
            vec![
                text(&|h| Some(h.kind.to_string())),
                text(&|h| Some(h.table.clone())),
                text(&|h| h.column.clone()),
                text(&|h| h.data_type.clone()),
                text(&|h| h.description.clone()),
                text(&|h| h.tags.clone()),
                text(&|h| h.owner.clone()),
                text(&|h| Some(h.matched.to_string())),
            ],
        )?)
    }
}
