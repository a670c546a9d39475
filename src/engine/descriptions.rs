//! Spec descriptions in the catalog. A dataset's `description` and `owner`
//! and its columns' `description` and `tags` reach `obj_description`,
//! `col_description` (psql `\dt+`/`\d+`, SQLAlchemy comments) and
//! `pg_description` (pgjdbc `REMARKS`), for the tables a session may read.
//!
//! Table oids are handed out per session by the `pg_class` it scans, so the
//! descriptions are keyed when `pg_class` is scanned: every query that has a
//! table's oid to ask about got it from that scan first.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, AsArray, Int32Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Int32Type, SchemaRef};
use datafusion::catalog::{CatalogProviderList, SchemaProvider, Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use workbench_udfs::pg::LookupTable;

use super::DATABASE;
use super::catalog_tables::{scan_all, scan_batches};
use crate::governance::Access;
use crate::spec::ColumnPolicy;

/// `pg_class.oid` of `pg_class` itself in PostgreSQL: `pg_description.classoid`
/// of a table's comment when the session's `pg_class` does not list itself.
const PG_CLASS_OID: i32 = 1259;

/// One session's view of the spec descriptions.
#[derive(Debug, Clone)]
pub struct SessionDocs {
    access: Arc<Access>,
    /// Behind this session's `obj_description` and `col_description`.
    lookup: LookupTable,
    /// The session's (governed) catalogs, for column positions.
    catalogs: Arc<dyn CatalogProviderList>,
    /// Oids this session's `pg_class` and `pg_namespace` handed out, for
    /// the privilege functions.
    oids: Arc<RwLock<Oids>>,
}

#[derive(Debug, Default)]
struct Oids {
    relations: HashMap<i32, (String, String)>,
    namespaces: HashMap<i32, String>,
}

impl SessionDocs {
    pub fn new(access: Arc<Access>, lookup: LookupTable, catalogs: Arc<dyn CatalogProviderList>) -> SessionDocs {
        SessionDocs {
            access,
            lookup,
            catalogs,
            oids: Default::default(),
        }
    }

    pub fn principal(&self) -> Option<Arc<crate::governance::Principal>> {
        self.access.principal()
    }

    pub fn same_session(&self, other: &SessionDocs) -> bool {
        Arc::ptr_eq(&self.oids, &other.oids)
    }

    /// (schema, table) of a relation oid this session's `pg_class` handed out.
    pub fn relation(&self, oid: i32) -> Option<(String, String)> {
        self.oids.read().unwrap_or_else(|p| p.into_inner()).relations.get(&oid).cloned()
    }

    /// The oid this session's `pg_class` gave `schema.table`.
    fn relation_oid(&self, schema: &str, table: &str) -> Option<i32> {
        let oids = self.oids.read().unwrap_or_else(|p| p.into_inner());
        oids.relations.iter().find(|(_, (s, t))| s == schema && t == table).map(|(oid, _)| *oid)
    }

    /// The schema of a namespace oid this session's `pg_namespace` handed out.
    pub fn namespace(&self, oid: i32) -> Option<String> {
        self.oids.read().unwrap_or_else(|p| p.into_inner()).namespaces.get(&oid).cloned()
    }

    /// An unqualified table name: the first lake or metadata schema (in
    /// search order) that has it, among the tables this session sees.
    pub fn unqualified(&self, table: &str) -> Option<(String, String)> {
        let catalog = self.catalogs.catalog(DATABASE)?;
        ["silver", "gold", "bronze", "workbench"]
            .into_iter()
            .find(|schema| catalog.schema(schema).is_some_and(|s| s.table_exist(table)))
            .map(|schema| (schema.to_string(), table.to_string()))
    }

    /// `relacl` of the lake and metadata tables in `classes`, as PostgreSQL
    /// prints it: `maria=r/workbench` for every configured user who may
    /// read the table (`=r/workbench`, everyone, when no roles are enforced).
    fn with_acl(&self, classes: RecordBatch) -> Result<RecordBatch> {
        use datafusion::arrow::array::{ListBuilder, StringBuilder};
        let (Some(index), Some(oids), Some(principal)) =
            (classes.schema().index_of("relacl").ok(), int32(&classes, "oid"), self.access.principal())
        else {
            return Ok(classes);
        };
        let policy = principal.policy().clone();
        let readers: Vec<crate::governance::Principal> = policy
            .user_names()
            .into_iter()
            .map(|u| crate::governance::Principal::new(policy.clone(), u))
            .collect();
        let relations = self.oids.read().unwrap_or_else(|p| p.into_inner()).relations.clone();
        let mut acl = ListBuilder::new(StringBuilder::new());
        for i in 0..classes.num_rows() {
            match relations.get(&oids.value(i)) {
                Some((schema, table)) if matches!(schema.as_str(), "bronze" | "silver" | "gold" | "workbench") => {
                    if !policy.enforced() {
                        acl.values().append_value("=r/workbench");
                    }
                    for reader in readers.iter().filter(|r| policy.enforced() && r.can_read(schema, table)) {
                        acl.values().append_value(format!("{}=r/workbench", reader.user));
                    }
                    acl.append(true);
                }
                _ => acl.append(false),
            }
        }
        let mut columns = classes.columns().to_vec();
        let field = classes.schema().field(index).clone();
        columns[index] = datafusion::arrow::compute::cast(&(Arc::new(acl.finish()) as ArrayRef), field.data_type())?;
        Ok(RecordBatch::try_new(classes.schema(), columns)?)
    }

    fn learn_namespaces(&self, namespaces: &HashMap<i32, String>) {
        let mut oids = self.oids.write().unwrap_or_else(|p| p.into_inner());
        oids.namespaces.extend(namespaces.iter().map(|(k, v)| (*k, v.clone())));
    }

    /// `(oid, objsubid, text)` for every described table in `classes` (rows
    /// of this session's `pg_class`) and its described columns; the lookup
    /// behind `obj_description`/`col_description` learns them too.
    async fn describe(&self, classes: &[RecordBatch], pg_catalog: &Arc<dyn SchemaProvider>, session: &dyn Session) -> Result<Vec<(i32, i32, String)>> {
        let namespaces = namespace_names(pg_catalog, session).await?;
        let relations = relation_names(classes, &namespaces);
        {
            self.learn_namespaces(&namespaces);
            let mut oids = self.oids.write().unwrap_or_else(|p| p.into_inner());
            oids.relations.extend(relations.iter().map(|(k, v)| (*k, v.clone())));
        }
        let Some(principal) = self.access.principal() else { return Ok(vec![]) };
        let policy = principal.policy().clone();
        let mut rows = Vec::new();
        for (oid, (schema, table)) in relations {
            if let Some(text) = policy.table_doc(&schema, &table).and_then(|d| d.text()) {
                rows.push((oid, 0, text));
            }
            let columns = policy.columns(&schema, &table);
            if columns.is_empty() {
                continue;
            }
            let Some(provider) = self.table(&schema, &table).await else { continue };
            for (index, field) in provider.schema().fields().iter().enumerate() {
                if let Some(text) = columns.iter().find(|c| &c.name == field.name()).and_then(column_text) {
                    rows.push((oid, index as i32 + 1, text));
                }
            }
        }
        let mut lookup = self.lookup.write().unwrap_or_else(|p| p.into_inner());
        for (oid, sub, text) in &rows {
            let key = if *sub == 0 { vec![*oid as i64] } else { vec![*oid as i64, *sub as i64] };
            lookup.insert(key, text.clone());
        }
        Ok(rows)
    }

    async fn table(&self, schema: &str, table: &str) -> Option<Arc<dyn TableProvider>> {
        self.catalogs.catalog(DATABASE)?.schema(schema)?.table(table).await.ok()?
    }
}

/// A column's comment: its description, then its tags.
pub fn column_text(column: &ColumnPolicy) -> Option<String> {
    let tags = (!column.tags.is_empty()).then(|| format!("tags: {}", column.tags.join(", ")));
    match (&column.description, tags) {
        (Some(d), Some(t)) => Some(format!("{d} ({t})")),
        (Some(d), None) => Some(d.clone()),
        (None, Some(t)) => Some(t),
        (None, None) => None,
    }
}

pub(super) fn int32(batch: &RecordBatch, name: &str) -> Option<Int32Array> {
    let column = batch.column_by_name(name)?;
    let column = datafusion::arrow::compute::cast(column, &DataType::Int32).ok()?;
    Some(column.as_primitive::<Int32Type>().clone())
}

fn text(batch: &RecordBatch, name: &str) -> Option<StringArray> {
    let column = batch.column_by_name(name)?;
    let column = datafusion::arrow::compute::cast(column, &DataType::Utf8).ok()?;
    Some(column.as_string::<i32>().clone())
}

/// `pg_namespace.oid` → `nspname`.
pub async fn namespace_names(pg_catalog: &Arc<dyn SchemaProvider>, session: &dyn Session) -> Result<HashMap<i32, String>> {
    Ok(match pg_catalog.table("pg_namespace").await? {
        Some(ns) => namespaces_in(&scan_all(&ns, session).await?),
        None => HashMap::new(),
    })
}

/// `oid` → `nspname` for the rows of `pg_namespace` in `batches`.
fn namespaces_in(batches: &[RecordBatch]) -> HashMap<i32, String> {
    let mut names = HashMap::new();
    for batch in batches {
        if let (Some(oids), Some(nspnames)) = (int32(batch, "oid"), text(batch, "nspname")) {
            for i in 0..batch.num_rows() {
                names.insert(oids.value(i), nspnames.value(i).to_string());
            }
        }
    }
    names
}

/// `pg_class.oid` → (schema, table) for the rows of `classes`.
pub fn relation_names(classes: &[RecordBatch], namespaces: &HashMap<i32, String>) -> HashMap<i32, (String, String)> {
    let mut relations = HashMap::new();
    for batch in classes {
        let (Some(oids), Some(spaces), Some(names)) = (int32(batch, "oid"), int32(batch, "relnamespace"), text(batch, "relname")) else {
            continue;
        };
        for i in 0..batch.num_rows() {
            if let Some(schema) = namespaces.get(&spaces.value(i)) {
                relations.insert(oids.value(i), (schema.clone(), names.value(i).to_string()));
            }
        }
    }
    relations
}

/// `pg_class`, teaching the session's description lookup as it is scanned.
#[derive(Debug)]
pub struct DescribedClasses {
    pub base: Arc<dyn TableProvider>,
    pub pg_catalog: Arc<dyn SchemaProvider>,
    pub docs: SessionDocs,
}

#[async_trait]
impl TableProvider for DescribedClasses {
    fn schema(&self) -> SchemaRef {
        self.base.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        session: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batches = scan_all(&self.base, session).await?;
        self.docs.describe(&batches, &self.pg_catalog, session).await?;
        let batches = batches.into_iter().map(|b| self.docs.with_acl(b)).collect::<Result<Vec<_>>>()?;
        scan_batches(self.schema(), batches, session, projection, filters, limit).await
    }
}

/// `pg_description`: the static rows (built-in functions) and the spec
/// descriptions of the tables this session sees.
#[derive(Debug)]
pub struct PgDescription {
    pub base: Arc<dyn TableProvider>,
    pub classes: Arc<dyn TableProvider>,
    pub pg_catalog: Arc<dyn SchemaProvider>,
    pub docs: SessionDocs,
}

#[async_trait]
impl TableProvider for PgDescription {
    fn schema(&self) -> SchemaRef {
        self.base.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        session: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut batches = scan_all(&self.base, session).await?;
        let classes = scan_all(&self.classes, session).await?;
        let rows = self.docs.describe(&classes, &self.pg_catalog, session).await?;
        if !rows.is_empty() {
            // `'pg_class'::regclass` in this session (its oids are its own),
            // learnt by `describe` from the same scan.
            let pg_class = self.docs.relation_oid("pg_catalog", "pg_class").unwrap_or(PG_CLASS_OID);
            let schema = self.schema();
            let columns = schema
                .fields()
                .iter()
                .map(|field| {
                    let values: ArrayRef = match field.name().as_str() {
                        "objoid" => Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.0))),
                        "classoid" => Arc::new(Int32Array::from_iter_values(rows.iter().map(|_| pg_class))),
                        "objsubid" => Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.1))),
                        "description" => Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2.as_str()))),
                        _ => datafusion::arrow::array::new_null_array(field.data_type(), rows.len()),
                    };
                    Ok(datafusion::arrow::compute::cast(&values, field.data_type())?)
                })
                .collect::<Result<Vec<_>>>()?;
            batches.push(RecordBatch::try_new(schema, columns)?);
        }
        scan_batches(self.schema(), batches, session, projection, filters, limit).await
    }
}

/// `pg_namespace`, teaching the session its schema oids as it is scanned.
#[derive(Debug)]
pub struct ObservedNamespaces {
    pub base: Arc<dyn TableProvider>,
    pub docs: SessionDocs,
}

#[async_trait]
impl TableProvider for ObservedNamespaces {
    fn schema(&self) -> SchemaRef {
        self.base.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        session: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batches = scan_all(&self.base, session).await?;
        self.docs.learn_namespaces(&namespaces_in(&batches));
        scan_batches(self.schema(), batches, session, projection, filters, limit).await
    }
}
