//! An overlay on datafusion-pg-catalog's `pg_catalog` schema that fills the
//! gaps clients trip over, without forking it:
//!
//! - `pg_class.reloptions` (psql `\d+` reads it; always NULL here);
//! - `pg_attribute.atttypmod` for numeric columns, so `\d`, JDBC and
//!   SQLAlchemy see `numeric(12,2)` rather than a bare `numeric`.
//!
//! Every provider here computes its rows when it is scanned, so each is
//! built once per overlay (per session) and handed out again: building
//! `pg_class` asks every schema for each of its tables' columns and type,
//! the 69 of `pg_catalog` included, and was a third of a catalog query's
//! planning when each of those asks built its provider anew.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int32Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Int16Type, SchemaRef};
use datafusion::catalog::{CatalogProviderList, SchemaProvider, Session};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use super::descriptions::{DescribedClasses, ObservedNamespaces, PgDescription, SessionDocs, int32, namespace_names, relation_names};
use super::catalog_tables::{PgProc, PgSettings, PgType, ProcEntries, empty_with_arrays, scan_all, scan_batches};
use crate::engine::DATABASE;

/// `pg_type.oid` of `numeric`.
const NUMERIC_OID: i32 = 1700;

#[derive(Debug)]
pub struct PgCatalogOverlay {
    inner: Arc<dyn SchemaProvider>,
    catalogs: Arc<dyn CatalogProviderList>,
    procs: ProcEntries,
    /// A client session's spec descriptions (none in the server's own sessions).
    docs: Option<SessionDocs>,
    /// The providers built so far, by table name (see the module comment).
    built: RwLock<HashMap<String, Arc<dyn TableProvider>>>,
}

impl PgCatalogOverlay {
    pub fn new(inner: Arc<dyn SchemaProvider>, catalogs: Arc<dyn CatalogProviderList>, procs: ProcEntries) -> Self {
        PgCatalogOverlay {
            inner,
            catalogs,
            procs,
            docs: None,
            built: Default::default(),
        }
    }

    pub fn with_docs(mut self, docs: SessionDocs) -> Self {
        self.docs = Some(docs);
        self
    }

    /// `pg_class` with `reloptions`, describing tables as it is scanned.
    fn classes(&self, base: Arc<dyn TableProvider>) -> Result<Arc<dyn TableProvider>> {
        let base = if base.schema().field_with_name("reloptions").is_err() || base.schema().field_with_name("relacl").is_err() {
            Arc::new(NullAcls::new(base))
        } else {
            base
        };
        Ok(match &self.docs {
            Some(docs) => Arc::new(DescribedClasses {
                base,
                pg_catalog: self.inner.clone(),
                docs: docs.clone(),
            }),
            None => base,
        })
    }
}

#[async_trait]
impl SchemaProvider for PgCatalogOverlay {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if let Some(built) = self.built.read().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Ok(Some(built.clone()));
        }
        let Some(table) = self.build(name).await? else {
            return Ok(None);
        };
        let mut built = self.built.write().unwrap_or_else(|p| p.into_inner());
        Ok(Some(built.entry(name.to_string()).or_insert(table).clone()))
    }
}

impl PgCatalogOverlay {
    /// The provider of `name`: upstream's, or ours over it.
    async fn build(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let Some(base) = self.inner.table(name).await? else {
            return Ok(None);
        };
        Ok(Some(match name {
            "pg_class" => self.classes(base)?,
            "pg_namespace" => match &self.docs {
                Some(docs) => Arc::new(ObservedNamespaces { base, docs: docs.clone() }),
                None => base,
            },
            "pg_description" => match (&self.docs, self.inner.table("pg_class").await?) {
                (Some(docs), Some(classes)) => Arc::new(PgDescription {
                    base,
                    classes,
                    pg_catalog: self.inner.clone(),
                    docs: docs.clone(),
                }),
                _ => base,
            },
            "pg_attribute" => Arc::new(AttributeTypmods {
                base,
                pg_catalog: self.inner.clone(),
                catalogs: self.catalogs.clone(),
            }),
            "pg_settings" => Arc::new(PgSettings),
            "pg_type" => match self.inner.table("pg_proc").await? {
                Some(procs) => Arc::new(PgType { base, procs }),
                None => base,
            },
            "pg_index" | "pg_constraint" => empty_with_arrays(name, &base)?,
            "pg_proc" => Arc::new(PgProc {
                base,
                entries: self.procs.clone(),
                namespaces: self.inner.table("pg_namespace").await?,
            }),
            _ => base,
        }))
    }
}

/// `pg_class` with the `reloptions` and `relacl` columns it lacks, NULL
/// (a client session's [`DescribedClasses`] fills `relacl`). A view as
/// before, so `pg_class` keeps its `relkind`.
#[derive(Debug)]
struct NullAcls {
    base: Arc<dyn TableProvider>,
    schema: SchemaRef,
}

impl NullAcls {
    fn new(base: Arc<dyn TableProvider>) -> NullAcls {
        let text_array = DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)));
        let mut fields: Vec<Field> = base.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        for missing in ["reloptions", "relacl"] {
            if base.schema().field_with_name(missing).is_err() {
                fields.push(Field::new(missing, text_array.clone(), true));
            }
        }
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
        NullAcls { base, schema }
    }
}

#[async_trait]
impl TableProvider for NullAcls {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Unsupported; filters.len()])
    }

    async fn scan(
        &self,
        session: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batches = scan_all(&self.base, session)
            .await?
            .into_iter()
            .map(|batch| {
                let mut columns = batch.columns().to_vec();
                for field in &self.schema.fields()[columns.len()..] {
                    columns.push(datafusion::arrow::array::new_null_array(field.data_type(), batch.num_rows()));
                }
                Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
            })
            .collect::<Result<Vec<_>>>()?;
        scan_batches(self.schema.clone(), batches, session, projection, filters, limit).await
    }
}

/// `pg_attribute` with `atttypmod` computed from each column's Arrow type.
#[derive(Debug)]
struct AttributeTypmods {
    base: Arc<dyn TableProvider>,
    pg_catalog: Arc<dyn SchemaProvider>,
    catalogs: Arc<dyn CatalogProviderList>,
}

impl AttributeTypmods {
    /// (table oid) → (schema, table) from pg_class and pg_namespace.
    async fn relations(&self, session: &dyn Session) -> Result<HashMap<i32, (String, String)>> {
        let namespaces = namespace_names(&self.pg_catalog, session).await?;
        let classes = match self.pg_catalog.table("pg_class").await? {
            Some(classes) => scan_all(&classes, session).await?,
            None => vec![],
        };
        Ok(relation_names(&classes, &namespaces))
    }

    async fn column_type(&self, schema: &str, table: &str, attnum: i16) -> Option<DataType> {
        let catalog = self.catalogs.catalog(DATABASE)?;
        let provider = catalog.schema(schema)?.table(table).await.ok()??;
        let index = usize::try_from(attnum).ok()?.checked_sub(1)?;
        provider.schema().fields().get(index).map(|f| f.data_type().clone())
    }
}

#[async_trait]
impl TableProvider for AttributeTypmods {
    /// The base schema with `attacl` as an array, as psql's `\dp` reads it.
    fn schema(&self) -> SchemaRef {
        let base = self.base.schema();
        let fields: Vec<Field> = base
            .fields()
            .iter()
            .map(|f| match f.name().as_str() {
                "attacl" => Field::new("attacl", DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))), true),
                _ => f.as_ref().clone(),
            })
            .collect();
        Arc::new(datafusion::arrow::datatypes::Schema::new(fields))
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Unsupported; filters.len()])
    }

    async fn scan(
        &self,
        session: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batches = scan_all(&self.base, session).await?;
        let needs_typmod = batches.iter().any(|b| {
            int32(b, "atttypid").is_some_and(|t| t.iter().any(|v| v == Some(NUMERIC_OID)))
        });
        let mut fixed = Vec::with_capacity(batches.len());
        if needs_typmod {
            let relations = self.relations(session).await?;
            let mut types: HashMap<(i32, i16), Option<DataType>> = HashMap::new();
            for batch in batches {
                let (Some(relids), Some(typids), Some(typmods)) = (
                    int32(&batch, "attrelid"),
                    int32(&batch, "atttypid"),
                    int32(&batch, "atttypmod"),
                ) else {
                    fixed.push(batch);
                    continue;
                };
                let Some(attnums) = batch
                    .column_by_name("attnum")
                    .filter(|c| c.data_type() == &DataType::Int16)
                    .map(|c| c.as_primitive::<Int16Type>().clone())
                else {
                    fixed.push(batch);
                    continue;
                };
                let mut out = Vec::with_capacity(batch.num_rows());
                for i in 0..batch.num_rows() {
                    let mut typmod = typmods.value(i);
                    if typids.value(i) == NUMERIC_OID && !relids.is_null(i) {
                        let key = (relids.value(i), attnums.value(i));
                        if !types.contains_key(&key) {
                            let data_type = match relations.get(&key.0) {
                                Some((schema, table)) => self.column_type(schema, table, key.1).await,
                                None => None,
                            };
                            types.insert(key, data_type);
                        }
                        if let Some(Some(data_type)) = types.get(&key) {
                            let computed = type_modifier(data_type);
                            if computed != -1 {
                                typmod = computed;
                            }
                        }
                    }
                    out.push(typmod);
                }
                let index = batch.schema().index_of("atttypmod")?;
                let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
                columns[index] = Arc::new(Int32Array::from(out));
                fixed.push(RecordBatch::try_new(batch.schema(), columns)?);
            }
        } else {
            fixed = batches;
        }
        // No column carries its own grants: every `attacl` is NULL.
        let schema = self.schema();
        let fixed = fixed
            .into_iter()
            .map(|batch| {
                let columns = schema
                    .fields()
                    .iter()
                    .zip(batch.columns())
                    .map(|(field, column)| match field.name().as_str() {
                        "attacl" => datafusion::arrow::array::new_null_array(field.data_type(), batch.num_rows()),
                        _ => column.clone(),
                    })
                    .collect();
                Ok(RecordBatch::try_new(schema.clone(), columns)?)
            })
            .collect::<Result<Vec<_>>>()?;
        scan_batches(schema, fixed, session, projection, filters, limit).await
    }
}

/// `atttypmod` for an Arrow type, as Postgres encodes it.
pub fn type_modifier(data_type: &DataType) -> i32 {
    match data_type {
        DataType::Decimal32(p, s)
        | DataType::Decimal64(p, s)
        | DataType::Decimal128(p, s)
        | DataType::Decimal256(p, s) => {
            let scale = (*s).max(0) as i32;
            (((*p as i32) << 16) | scale) + 4
        }
        _ => -1,
    }
}

/// Text the catalog functions return: descriptions and function signatures.
#[derive(Debug, Clone, Default)]
pub struct CatalogText {
    /// `obj_description(oid)` keyed by `[oid]`; `col_description(oid, n)` by `[oid, n]`.
    pub descriptions: workbench_udfs::pg::LookupTable,
    pub function_results: workbench_udfs::pg::LookupTable,
    pub function_arguments: workbench_udfs::pg::LookupTable,
}

impl CatalogText {
    /// Register `obj_description`, `col_description`, `shobj_description`,
    /// `pg_get_function_result`, `pg_get_function_arguments` and
    /// `pg_get_function_identity_arguments`, filled from the static catalog.
    pub async fn install(ctx: &datafusion::prelude::SessionContext) -> Result<CatalogText> {
        use workbench_udfs::pg::lookup;
        let text = CatalogText::default();
        let types: HashMap<i64, String> = rows(ctx, "SELECT oid, format_type(oid, NULL) FROM pg_catalog.pg_type")
            .await?
            .into_iter()
            .filter_map(|r| Some((r[0].as_ref()?.parse().ok()?, r[1].clone()?)))
            .collect();
        let type_name = |oid: &str| {
            oid.parse::<i64>()
                .ok()
                .and_then(|o| types.get(&o).cloned())
                .unwrap_or_else(|| oid.to_string())
        };
        {
            let mut results = text.function_results.write().expect("fresh lock");
            let mut arguments = text.function_arguments.write().expect("fresh lock");
            for r in rows(ctx, "SELECT oid, proretset, prorettype, proargtypes, proargnames FROM pg_catalog.pg_proc").await? {
                let Some(oid) = r[0].as_ref().and_then(|o| o.parse::<i64>().ok()) else { continue };
                let setof = if r[1].as_deref() == Some("true") { "SETOF " } else { "" };
                if let Some(ret) = &r[2] {
                    results.insert(vec![oid], format!("{setof}{}", type_name(ret)));
                }
                let names: Vec<&str> = r[4]
                    .as_deref()
                    .map(|n| n.trim_matches(|c| matches!(c, '{' | '}' | '[' | ']')).split(',').map(str::trim).collect())
                    .unwrap_or_default();
                let args: Vec<String> = r[3]
                    .as_deref()
                    .unwrap_or_default()
                    .split_whitespace()
                    .enumerate()
                    .map(|(i, t)| match names.get(i).filter(|n| !n.is_empty()) {
                        Some(name) => format!("{name} {}", type_name(t)),
                        None => type_name(t),
                    })
                    .collect();
                arguments.insert(vec![oid], args.join(", "));
            }
            let mut descriptions = text.descriptions.write().expect("fresh lock");
            for r in rows(ctx, "SELECT objoid, objsubid, description FROM pg_catalog.pg_description").await? {
                let (Some(oid), Some(sub), Some(description)) = (
                    r[0].as_ref().and_then(|o| o.parse::<i64>().ok()),
                    r[1].as_ref().and_then(|o| o.parse::<i64>().ok()),
                    r[2].clone(),
                ) else {
                    continue;
                };
                let key = if sub == 0 { vec![oid] } else { vec![oid, sub] };
                descriptions.insert(key, description);
            }
        }
        ctx.register_udf(lookup("obj_description", 1, text.descriptions.clone()));
        ctx.register_udf(lookup("col_description", 2, text.descriptions.clone()));
        ctx.register_udf(lookup("shobj_description", 1, Default::default()));
        ctx.register_udf(lookup("pg_get_function_result", 1, text.function_results.clone()));
        ctx.register_udf(lookup("pg_get_function_arguments", 1, text.function_arguments.clone()));
        ctx.register_udf(lookup(
            "pg_get_function_identity_arguments",
            1,
            text.function_arguments.clone(),
        ));
        Ok(text)
    }
}

/// All rows of `sql` with every value as text (NULL as `None`).
async fn rows(ctx: &datafusion::prelude::SessionContext, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    let batches = ctx.sql(sql).await?.collect().await?;
    let mut out = Vec::new();
    let options = FormatOptions::default();
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            out.push(
                batch
                    .columns()
                    .iter()
                    .zip(&formatters)
                    .map(|(c, f)| (!c.is_null(row)).then(|| f.value(row).to_string()))
                    .collect(),
            );
        }
    }
    Ok(out)
}
