//! `information_schema` as Postgres shapes it. DataFusion's own provider
//! serves every view, except `columns`, whose `data_type` it fills with
//! Arrow type names (`Int64`, `Timestamp(µs)`) and which lacks `udt_name`:
//! Grafana, Metabase and hand-written BI queries read those, so `columns`
//! is computed here with Postgres type names.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray, new_null_array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::information_schema::InformationSchemaProvider;
use datafusion::catalog::{CatalogProviderList, SchemaProvider, Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use super::DATABASE;

#[derive(Debug)]
pub struct InformationSchema {
    inner: InformationSchemaProvider,
    catalogs: Arc<dyn CatalogProviderList>,
}

impl InformationSchema {
    pub fn new(catalogs: Arc<dyn CatalogProviderList>) -> Self {
        InformationSchema {
            inner: InformationSchemaProvider::new(catalogs.clone()),
            catalogs,
        }
    }
}

#[async_trait]
impl SchemaProvider for InformationSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.inner.table_names();
        names.extend(PRIVILEGE_VIEWS.iter().map(|v| v.to_string()));
        names
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name) || PRIVILEGE_VIEWS.iter().any(|v| v.eq_ignore_ascii_case(name))
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if name.eq_ignore_ascii_case("columns") {
            return Ok(Some(Arc::new(Columns {
                catalogs: self.catalogs.clone(),
            })));
        }
        if PRIVILEGE_VIEWS.iter().any(|v| v.eq_ignore_ascii_case(name)) {
            return Ok(Some(Arc::new(TablePrivileges {
                catalogs: self.catalogs.clone(),
            })));
        }
        self.inner.table(name).await
    }
}

/// `table_privileges` and `role_table_grants`: the `SELECT` the session's
/// user holds on every table it sees (it sees exactly what it may read).
const PRIVILEGE_VIEWS: [&str; 2] = ["table_privileges", "role_table_grants"];

#[derive(Debug)]
struct TablePrivileges {
    catalogs: Arc<dyn CatalogProviderList>,
}

fn privileges_schema() -> SchemaRef {
    let text = |n: &str| Field::new(n, DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        text("grantor"),
        text("grantee"),
        text("table_catalog"),
        text("table_schema"),
        text("table_name"),
        text("privilege_type"),
        text("is_grantable"),
        text("with_hierarchy"),
    ]))
}

#[async_trait]
impl TableProvider for TablePrivileges {
    fn schema(&self) -> SchemaRef {
        privileges_schema()
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
        let grantee = session
            .config()
            .get_extension::<crate::governance::Access>()
            .map(|a| a.user())
            .unwrap_or_else(|| "workbench".into());
        let mut tables = Vec::new();
        if let Some(catalog) = self.catalogs.catalog(DATABASE) {
            for schema_name in catalog.schema_names() {
                if matches!(schema_name.as_str(), "pg_catalog" | "information_schema") {
                    continue;
                }
                let Some(schema) = catalog.schema(&schema_name) else { continue };
                tables.extend(schema.table_names().into_iter().map(|t| (schema_name.clone(), t)));
            }
        }
        tables.sort();
        let n = tables.len();
        let constant = |v: &str| Arc::new(StringArray::from(vec![v; n])) as ArrayRef;
        let columns = vec![
            constant("workbench"),
            constant(&grantee),
            constant(DATABASE),
            Arc::new(StringArray::from_iter_values(tables.iter().map(|t| t.0.as_str()))) as ArrayRef,
            Arc::new(StringArray::from_iter_values(tables.iter().map(|t| t.1.as_str()))) as ArrayRef,
            constant("SELECT"),
            constant("NO"),
            constant("YES"),
        ];
        let batch = RecordBatch::try_new(privileges_schema(), columns)?;
        super::catalog_tables::scan_batches(privileges_schema(), vec![batch], session, projection, filters, limit).await
    }
}

#[derive(Debug)]
struct Columns {
    catalogs: Arc<dyn CatalogProviderList>,
}

fn columns_schema() -> SchemaRef {
    let text = |n: &str| Field::new(n, DataType::Utf8, true);
    let int = |n: &str| Field::new(n, DataType::Int32, true);
    Arc::new(Schema::new(vec![
        text("table_catalog"),
        text("table_schema"),
        text("table_name"),
        text("column_name"),
        int("ordinal_position"),
        text("column_default"),
        text("is_nullable"),
        text("data_type"),
        int("character_maximum_length"),
        int("character_octet_length"),
        int("numeric_precision"),
        int("numeric_precision_radix"),
        int("numeric_scale"),
        int("datetime_precision"),
        text("interval_type"),
        int("interval_precision"),
        text("udt_catalog"),
        text("udt_schema"),
        text("udt_name"),
        text("is_identity"),
        text("is_generated"),
        text("is_updatable"),
    ]))
}

/// One row of `information_schema.columns`.
#[derive(Default)]
struct Row {
    schema: String,
    table: String,
    column: String,
    position: i32,
    nullable: bool,
    data_type: String,
    udt_name: String,
    precision: Option<i32>,
    radix: Option<i32>,
    scale: Option<i32>,
    datetime_precision: Option<i32>,
}

/// (SQL-standard `data_type`, `udt_name`, numeric precision, radix, scale,
/// datetime precision) of an Arrow type as Workbench presents it.
fn describe(data_type: &DataType) -> (String, String, Option<i32>, Option<i32>, Option<i32>, Option<i32>) {
    let udt = arrow_pg::datatypes::into_pg_type(data_type)
        .map(|t| t.name().to_string())
        .unwrap_or_else(|_| "text".into());
    let (sql, precision, radix, scale, dt) = match udt.as_str() {
        "int2" => ("smallint".into(), Some(16), Some(2), Some(0), None),
        "int4" => ("integer".into(), Some(32), Some(2), Some(0), None),
        "int8" => ("bigint".into(), Some(64), Some(2), Some(0), None),
        "float4" => ("real".into(), Some(24), Some(2), None, None),
        "float8" => ("double precision".into(), Some(53), Some(2), None, None),
        "numeric" => match data_type {
            DataType::Decimal32(p, s) | DataType::Decimal64(p, s) | DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => {
                ("numeric".into(), Some(*p as i32), Some(10), Some(*s as i32), None)
            }
            _ => ("numeric".into(), None, Some(10), None, None),
        },
        "bool" => ("boolean".into(), None, None, None, None),
        "varchar" => ("character varying".into(), None, None, None, None),
        "bpchar" => ("character".into(), None, None, None, None),
        "date" => ("date".into(), None, None, None, Some(0)),
        "timestamp" => ("timestamp without time zone".into(), None, None, None, Some(6)),
        "timestamptz" => ("timestamp with time zone".into(), None, None, None, Some(6)),
        "time" => ("time without time zone".into(), None, None, None, Some(6)),
        "interval" => ("interval".into(), None, None, None, Some(6)),
        name if name.starts_with('_') => ("ARRAY".into(), None, None, None, None),
        name => (name.to_string(), None, None, None, None),
    };
    (sql, udt, precision, radix, scale, dt)
}

/// The name `pg_typeof` shows for a value of `data_type`, as Postgres'
/// regtype output: `integer`, `text`, `numeric`, `timestamp with time zone`,
/// `integer[]`.
fn type_display_name(data_type: &DataType) -> String {
    match data_type {
        DataType::List(f) | DataType::LargeList(f) | DataType::ListView(f) | DataType::FixedSizeList(f, _) => {
            format!("{}[]", type_display_name(f.data_type()))
        }
        DataType::Null => "unknown".into(),
        other => describe(other).0,
    }
}

/// `pg_typeof(any)`: the type of its argument by Postgres' name for it.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PgTypeof {
    signature: datafusion::logical_expr::Signature,
}

impl PgTypeof {
    pub fn udf() -> datafusion::logical_expr::ScalarUDF {
        datafusion::logical_expr::ScalarUDF::new_from_impl(PgTypeof {
            signature: datafusion::logical_expr::Signature::any(1, datafusion::logical_expr::Volatility::Immutable),
        })
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for PgTypeof {
    fn name(&self) -> &str {
        "pg_typeof"
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: datafusion::logical_expr::ScalarFunctionArgs) -> Result<datafusion::logical_expr::ColumnarValue> {
        let name = args.arg_fields.first().map(|f| type_display_name(f.data_type())).unwrap_or_else(|| "unknown".into());
        Ok(datafusion::logical_expr::ColumnarValue::Scalar(datafusion::common::ScalarValue::Utf8(Some(name))))
    }
}

impl Columns {
    async fn rows(&self) -> Result<Vec<Row>> {
        let mut rows = Vec::new();
        let Some(catalog) = self.catalogs.catalog(DATABASE) else {
            return Ok(rows);
        };
        let mut schemas = catalog.schema_names();
        schemas.sort();
        for schema_name in schemas {
            let Some(schema) = catalog.schema(&schema_name) else { continue };
            let mut tables = schema.table_names();
            tables.sort();
            for table_name in tables {
                let Ok(Some(table)) = schema.table(&table_name).await else { continue };
                for (i, field) in table.schema().fields().iter().enumerate() {
                    let (data_type, udt_name, precision, radix, scale, datetime_precision) = describe(field.data_type());
                    rows.push(Row {
                        schema: schema_name.clone(),
                        table: table_name.clone(),
                        column: field.name().clone(),
                        position: i as i32 + 1,
                        nullable: field.is_nullable(),
                        data_type,
                        udt_name,
                        precision,
                        radix,
                        scale,
                        datetime_precision,
                    });
                }
            }
        }
        Ok(rows)
    }
}

#[async_trait]
impl TableProvider for Columns {
    fn schema(&self) -> SchemaRef {
        columns_schema()
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
        let rows = self.rows().await?;
        let schema = columns_schema();
        let n = rows.len();
        let text = |f: &dyn Fn(&Row) -> Option<String>| Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>())) as ArrayRef;
        let int = |f: &dyn Fn(&Row) -> Option<i32>| Arc::new(Int32Array::from(rows.iter().map(f).collect::<Vec<_>>())) as ArrayRef;
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|field| match field.name().as_str() {
                "table_catalog" | "udt_catalog" => text(&|_| Some(DATABASE.to_string())),
                "table_schema" => text(&|r| Some(r.schema.clone())),
                "table_name" => text(&|r| Some(r.table.clone())),
                "column_name" => text(&|r| Some(r.column.clone())),
                "ordinal_position" => int(&|r| Some(r.position)),
                "is_nullable" => text(&|r| Some(if r.nullable { "YES" } else { "NO" }.to_string())),
                "data_type" => text(&|r| Some(r.data_type.clone())),
                "numeric_precision" => int(&|r| r.precision),
                "numeric_precision_radix" => int(&|r| r.radix),
                "numeric_scale" => int(&|r| r.scale),
                "datetime_precision" => int(&|r| r.datetime_precision),
                "udt_schema" => text(&|_| Some("pg_catalog".to_string())),
                "udt_name" => text(&|r| Some(r.udt_name.clone())),
                "is_identity" | "is_updatable" => text(&|_| Some("NO".to_string())),
                "is_generated" => text(&|_| Some("NEVER".to_string())),
                _ => new_null_array(field.data_type(), n),
            })
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        super::catalog_tables::scan_batches(schema, vec![batch], session, projection, filters, limit).await
    }
}
