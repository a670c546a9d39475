//! Catalog tables served differently from datafusion-pg-catalog's:
//!
//! - `pg_settings` from the connection's own settings (what `SHOW` prints);
//! - `pg_index` / `pg_constraint` with `int2vector`/`oid[]` columns as real
//!   arrays, so `unnest(indkey)` and `attnum = ANY(conkey)` plan (SQLAlchemy,
//!   pgjdbc); Workbench tables have no indexes or constraints, so they are empty;
//! - `pg_proc` with Workbench's table functions added (`\df`, pgjdbc
//!   `getFunctions`, DBeaver's function browser).

use std::sync::{Arc, RwLock};

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float32Array, Int16Array, Int32Array, RecordBatch, StringArray, new_null_array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

/// Every row of `provider`.
pub async fn scan_all(provider: &Arc<dyn TableProvider>, session: &dyn Session) -> Result<Vec<RecordBatch>> {
    let plan = provider.scan(session, None, &[], None).await?;
    datafusion::physical_plan::collect(plan, session.task_ctx()).await
}

/// `(name, oid)` of every row of a catalog table, from its `name_column` and `oid`.
async fn names_and_oids(
    provider: &Arc<dyn TableProvider>,
    name_column: &str,
    session: &dyn Session,
) -> Result<Vec<(String, i32)>> {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::Int32Type;
    let mut out = Vec::new();
    for batch in scan_all(provider, session).await? {
        let (Some(oids), Some(names)) = (batch.column_by_name("oid"), batch.column_by_name(name_column)) else {
            continue;
        };
        let oids = datafusion::arrow::compute::cast(oids, &DataType::Int32)?;
        let names = datafusion::arrow::compute::cast(names, &DataType::Utf8)?;
        let (oids, names) = (oids.as_primitive::<Int32Type>(), names.as_string::<i32>());
        out.extend((0..batch.num_rows()).filter(|&i| !names.is_null(i)).map(|i| (names.value(i).to_string(), oids.value(i))));
    }
    Ok(out)
}

/// Scan rows computed in memory, with the caller's projection, filters and limit.
pub async fn scan_batches(
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    session: &dyn Session,
    projection: Option<&Vec<usize>>,
    filters: &[Expr],
    limit: Option<usize>,
) -> Result<Arc<dyn ExecutionPlan>> {
    MemTable::try_new(schema, vec![batches])?
        .scan(session, projection, filters, limit)
        .await
}

/// The rows of `pg_settings` for one session: (name, setting, description).
/// Stored as a session-config extension by the connection that owns it.
pub struct SessionSettingsRows(pub Box<dyn Fn() -> Vec<(String, String, String)> + Send + Sync>);

fn pg_settings_schema() -> SchemaRef {
    let text = |n: &str| Field::new(n, DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        text("name"),
        text("setting"),
        text("unit"),
        text("category"),
        text("short_desc"),
        text("extra_desc"),
        text("context"),
        text("vartype"),
        text("source"),
        text("min_val"),
        text("max_val"),
        text("enumvals"),
        text("boot_val"),
        text("reset_val"),
        text("sourcefile"),
        Field::new("sourceline", DataType::Int32, true),
        Field::new("pending_restart", DataType::Boolean, true),
    ]))
}

/// `pg_settings`, read from the session that scans it.
#[derive(Debug)]
pub struct PgSettings;

#[async_trait]
impl TableProvider for PgSettings {
    fn schema(&self) -> SchemaRef {
        pg_settings_schema()
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
        scan_batches(pg_settings_schema(), vec![pg_settings(session)?], session, projection, filters, limit).await
    }
}

fn pg_settings(session: &dyn Session) -> Result<RecordBatch> {
    let schema = pg_settings_schema();
    let rows = session
        .config()
        .get_extension::<SessionSettingsRows>()
        .map(|rows| (rows.0)())
        .unwrap_or_default();
    let n = rows.len();
    let column = |values: Vec<Option<String>>| Arc::new(StringArray::from(values)) as ArrayRef;
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        columns.push(match field.name().as_str() {
            "name" => column(rows.iter().map(|r| Some(r.0.clone())).collect()),
            "setting" | "boot_val" | "reset_val" => column(rows.iter().map(|r| Some(r.1.clone())).collect()),
            "short_desc" => column(rows.iter().map(|r| Some(r.2.clone())).collect()),
            "context" => column(vec![Some("user".to_string()); n]),
            "vartype" => column(vec![Some("string".to_string()); n]),
            "source" => column(vec![Some("session".to_string()); n]),
            "category" => column(vec![Some("Client Connection Defaults".to_string()); n]),
            "pending_restart" => Arc::new(BooleanArray::from(vec![false; n])),
            _ => new_null_array(field.data_type(), n),
        });
    }
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// Postgres' array columns of `pg_index` and `pg_constraint`.
fn array_column(table: &str, column: &str) -> Option<DataType> {
    let int2 = || DataType::List(Arc::new(Field::new_list_field(DataType::Int16, true)));
    let oid = || DataType::List(Arc::new(Field::new_list_field(DataType::Int32, true)));
    Some(match (table, column) {
        ("pg_index", "indkey" | "indoption") => int2(),
        ("pg_index", "indcollation" | "indclass") => oid(),
        ("pg_constraint", "conkey" | "confkey" | "confdelsetcols") => int2(),
        ("pg_constraint", "conpfeqop" | "conppeqop" | "conffeqop" | "conexclop") => oid(),
        _ => return None,
    })
}

/// An empty `table` with its array columns typed as arrays.
pub fn empty_with_arrays(table: &str, base: &Arc<dyn TableProvider>) -> Result<Arc<dyn TableProvider>> {
    let fields: Vec<Field> = base
        .schema()
        .fields()
        .iter()
        .map(|f| match array_column(table, f.name()) {
            Some(data_type) => Field::new(f.name(), data_type, true),
            None => f.as_ref().clone(),
        })
        .collect();
    let schema = Arc::new(Schema::new(fields));
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![]])?))
}

/// One function (one overload) shown in `pg_proc`.
#[derive(Debug, Clone)]
pub struct ProcEntry {
    pub oid: i32,
    pub name: String,
    /// (argument name, type oid)
    pub args: Vec<(String, i32)>,
}

/// Functions added to `pg_proc` (Workbench's table functions).
pub type ProcEntries = Arc<RwLock<Vec<ProcEntry>>>;

/// First oid of Workbench's own functions (above Postgres' built-ins).
pub const FIRST_PROC_OID: i32 = 90_000;
/// `pg_namespace.oid` of `public` in Postgres (used if the catalog has no `public`).
const PUBLIC_OID: i32 = 2200;
/// `pg_type.oid` of `record`.
const RECORD_OID: i32 = 2249;

/// `pg_proc` = the upstream rows + one row per entry.
#[derive(Debug)]
pub struct PgProc {
    pub base: Arc<dyn TableProvider>,
    pub entries: ProcEntries,
    /// To find the oid of `public`, where the table functions live.
    pub namespaces: Option<Arc<dyn TableProvider>>,
}

#[async_trait]
impl TableProvider for PgProc {
    fn schema(&self) -> SchemaRef {
        proc_schema(&self.base.schema())
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
        let public = match &self.namespaces {
            Some(namespaces) => namespace_oid(namespaces, "public", session).await?,
            None => None,
        };
        let batches = pg_proc(&self.base, &self.entries, public.unwrap_or(PUBLIC_OID), session).await?;
        scan_batches(self.schema(), batches, session, projection, filters, limit).await
    }
}

/// `pg_proc` as served: every column nullable, `proargnames` a `text[]`
/// (pgcli zips it with the argument types; pgjdbc reads it with getArray).
fn proc_schema(base: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        nullable(base)
            .fields()
            .iter()
            .map(|f| match f.name().as_str() {
                "proargnames" => Field::new("proargnames", text_array_type(), true),
                _ => f.as_ref().clone(),
            })
            .collect::<Vec<_>>(),
    ))
}

fn text_array_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
}

/// `{a,b}` (how the static catalog stores a `text[]`) → `["a", "b"]`.
fn text_arrays<'a>(values: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    use datafusion::arrow::array::{ListBuilder, StringBuilder};
    let mut builder = ListBuilder::new(StringBuilder::new());
    for value in values {
        match value {
            None => builder.append(false),
            Some(text) => {
                let inner = text.trim().trim_start_matches('{').trim_end_matches('}');
                for item in inner.split(',').filter(|i| !i.is_empty()) {
                    builder.values().append_value(item.trim().trim_matches('"'));
                }
                builder.append(true);
            }
        }
    }
    Arc::new(builder.finish())
}

fn nullable(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ))
}

async fn namespace_oid(namespaces: &Arc<dyn TableProvider>, name: &str, session: &dyn Session) -> Result<Option<i32>> {
    let found = names_and_oids(namespaces, "nspname", session).await?;
    Ok(found.into_iter().find(|(n, _)| n == name).map(|(_, oid)| oid))
}

async fn pg_proc(
    base: &Arc<dyn TableProvider>,
    entries: &ProcEntries,
    namespace: i32,
    session: &dyn Session,
) -> Result<Vec<RecordBatch>> {
    let mut batches = scan_all(base, session).await?;
    let schema = proc_schema(&base.schema());
    batches = batches
        .into_iter()
        .map(|b| {
            let columns = schema
                .fields()
                .iter()
                .zip(b.columns())
                .map(|(field, column)| match field.name().as_str() {
                    "proargnames" if column.data_type() != field.data_type() => {
                        let text = datafusion::arrow::compute::cast(column, &DataType::Utf8)?;
                        Ok(text_arrays(datafusion::arrow::array::AsArray::as_string::<i32>(&text).iter()))
                    }
                    _ => Ok(column.clone()),
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(RecordBatch::try_new(schema.clone(), columns)?)
        })
        .collect::<Result<_>>()?;
    let entries = entries.read().unwrap_or_else(|p| p.into_inner()).clone();
    if !entries.is_empty() {
        batches.push(proc_batch(&schema, &entries, namespace)?);
    }
    Ok(batches)
}

fn proc_batch(schema: &SchemaRef, rows: &[ProcEntry], namespace: i32) -> Result<RecordBatch> {
    let n = rows.len();
    let text = |f: &dyn Fn(&ProcEntry) -> Option<String>| {
        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>())) as ArrayRef
    };
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let column: ArrayRef = match field.name().as_str() {
            "oid" => Arc::new(Int32Array::from_iter_values(rows.iter().map(|e| e.oid))),
            "proname" => text(&|e| Some(e.name.clone())),
            "pronamespace" => Arc::new(Int32Array::from(vec![namespace; n])),
            "proowner" => Arc::new(Int32Array::from(vec![10; n])),
            "prolang" => Arc::new(Int32Array::from(vec![12; n])), // internal
            "procost" => Arc::new(Float32Array::from(vec![1.0; n])),
            "prorows" => Arc::new(Float32Array::from(vec![1000.0; n])),
            "provariadic" => Arc::new(Int32Array::from(vec![0; n])),
            "prosupport" => text(&|_| Some("-".into())),
            "prokind" => text(&|_| Some("f".into())),
            "prosecdef" | "proleakproof" | "proisstrict" => Arc::new(BooleanArray::from(vec![false; n])),
            "proretset" => Arc::new(BooleanArray::from(vec![true; n])),
            "provolatile" => text(&|_| Some("v".into())),
            "proparallel" => text(&|_| Some("u".into())),
            "pronargs" => Arc::new(Int16Array::from_iter_values(rows.iter().map(|e| e.args.len() as i16))),
            "pronargdefaults" => Arc::new(Int16Array::from(vec![0; n])),
            "prorettype" => Arc::new(Int32Array::from(vec![RECORD_OID; n])),
            "proargtypes" => text(&|e| Some(e.args.iter().map(|(_, t)| t.to_string()).collect::<Vec<_>>().join(" "))),
            "proargnames" => {
                let names: Vec<Option<String>> = rows
                    .iter()
                    .map(|e| {
                        (!e.args.is_empty())
                            .then(|| format!("{{{}}}", e.args.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(",")))
                    })
                    .collect();
                text_arrays(names.iter().map(|n| n.as_deref()))
            }
            "prosrc" => text(&|e| Some(e.name.clone())),
            _ => new_null_array(field.data_type(), n),
        };
        let column = if column.data_type() != field.data_type() {
            datafusion::arrow::compute::cast(&column, field.data_type())?
        } else {
            column
        };
        columns.push(column);
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// `pg_type` with its `regproc` columns (`typinput`, `typoutput`, ...) as
/// function oids, as in Postgres, so `typinput = 'array_in'::regproc`
/// (pgjdbc's type cache) compares oids with oids. Upstream stores names.
#[derive(Debug)]
pub struct PgType {
    pub base: Arc<dyn TableProvider>,
    pub procs: Arc<dyn TableProvider>,
}

const REGPROC_COLUMNS: &[&str] = &[
    "typinput", "typoutput", "typreceive", "typsend", "typmodin", "typmodout", "typanalyze", "typsubscript",
];

impl PgType {
    fn retyped(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.base
                .schema()
                .fields()
                .iter()
                .map(|f| {
                    if REGPROC_COLUMNS.contains(&f.name().as_str()) {
                        Field::new(f.name(), DataType::Int32, f.is_nullable())
                    } else {
                        f.as_ref().clone()
                    }
                })
                .collect::<Vec<_>>(),
        ))
    }
}

#[async_trait]
impl TableProvider for PgType {
    fn schema(&self) -> SchemaRef {
        self.retyped()
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
        use datafusion::arrow::array::{Array, AsArray};
        use std::collections::HashMap;
        // proname → lowest oid (the base function of overloads).
        let mut oids: HashMap<String, i32> = HashMap::new();
        for (name, oid) in names_and_oids(&self.procs, "proname", session).await? {
            let entry = oids.entry(name).or_insert(oid);
            *entry = (*entry).min(oid);
        }
        let schema = self.retyped();
        let mut batches = Vec::new();
        for batch in scan_all(&self.base, session).await? {
            let columns: Vec<ArrayRef> = batch
                .columns()
                .iter()
                .zip(batch.schema().fields())
                .map(|(column, field)| -> Result<ArrayRef> {
                    if !REGPROC_COLUMNS.contains(&field.name().as_str()) {
                        return Ok(column.clone());
                    }
                    let names = datafusion::arrow::compute::cast(column, &DataType::Utf8)?;
                    let names = names.as_string::<i32>();
                    Ok(Arc::new(Int32Array::from_iter((0..names.len()).map(|i| {
                        if names.is_null(i) {
                            return Some(0);
                        }
                        let name = names.value(i);
                        let name = name.strip_prefix("pg_catalog.").unwrap_or(name);
                        Some(oids.get(name).copied().unwrap_or(0))
                    }))))
                })
                .collect::<Result<_>>()?;
            batches.push(RecordBatch::try_new(schema.clone(), columns)?);
        }
        scan_batches(schema, batches, session, projection, filters, limit).await
    }
}
