//! The query engine: one DataFusion `SessionContext` template holding the
//! `workbench` catalog (schemas `bronze`, `silver`, `gold` over the lake, an
//! empty `public`, `pg_catalog` and `information_schema`) and the functions
//! clients expect. Each client connection gets its own session cloned from it,
//! with its own memory pool, so one query cannot starve the others.

mod arithmetic;
mod catalog_tables;
mod coercion;
mod descriptions;
mod estimates;
mod executor;
mod filter_estimates;
mod governed;
mod information_schema;
mod join_filters;
mod join_order;
mod layer;
mod limits;
mod memory;
mod metadata;
mod pg_catalog;
mod privileges;

use std::sync::Arc;

use datafusion::catalog::{CatalogProvider, MemorySchemaProvider};
use datafusion::common::ScalarValue;
use datafusion::execution::memory_pool::{FairSpillPool, GreedyMemoryPool, MemoryPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::ScalarUDF;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_pg_catalog::pg_catalog::context::{PgCatalogContextProvider, Role};
use datafusion_pg_catalog::pg_catalog::{PgCatalogSchemaProvider, PgCatalogStaticTables, setup_pg_catalog};

use crate::governance::Access;

pub use catalog_tables::SessionSettingsRows;
pub use executor::{execute, off_connection, panic_message, set_scan_nice};
pub use governed::governed_view;
pub use layer::{LakeTable, LayerSchema};
pub use join_order::PlannerOptions;
pub use limits::LimitError;
pub use memory::MemoryTables;
pub use pg_catalog::type_modifier;

use crate::storage::{Lake, Layer};

/// The database name clients connect to and `current_database()` returns.
pub const DATABASE: &str = "workbench";
/// Postgres major.minor we speak; clients gate features on it.
pub const PG_VERSION: &str = "16.6";

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("setting up the SQL engine: {0}")]
    Setup(String),
}

/// What the engine needs from the configuration.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Memory one connection's query may use before it fails with 53200.
    pub query_memory_limit: Option<u64>,
    /// Memory all queries together may use before the next one fails with 53200.
    pub server_memory_limit: Option<u64>,
    /// Role names shown in `pg_roles` / `\du`.
    pub roles: Vec<String>,
    /// Register `workbench_debug_panic()` (tests of panic isolation only).
    pub debug_functions: bool,
    /// The metadata store, served as the `workbench` schema.
    pub meta: Option<Arc<crate::meta::MetaStore>>,
    /// Where large lake queries go (every session holds it).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    /// Memory the tables kept in memory may take, all together.
    pub table_memory_budget: u64,
}

pub struct Engine {
    template: SessionContext,
    /// What every query's reservations also count against.
    server_pool: Arc<GreedyMemoryPool>,
    options: EngineOptions,
    lake: Arc<Lake>,
    /// Functions listed in `pg_proc` beyond the built-ins.
    procs: catalog_tables::ProcEntries,
    catalog_text: pg_catalog::CatalogText,
    /// `pg_catalog`'s fixed tables, shared by every connection's own `pg_catalog`.
    static_tables: Arc<PgCatalogStaticTables>,
    /// Lake tables served from memory.
    memory: Arc<MemoryTables>,
}

/// A function to list in the catalog (`pg_proc`, `\df`, JDBC `getFunctions`).
#[derive(Debug, Clone)]
pub struct FunctionDoc {
    pub name: &'static str,
    /// (name, Postgres type name) of each argument, in order.
    pub args: &'static [(&'static str, &'static str)],
    /// How many trailing arguments may be left out.
    pub optional: usize,
    pub description: &'static str,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("lake", &self.lake.root()).finish()
    }
}

/// `version()` text: SQLAlchemy and Superset parse the `PostgreSQL X.Y` prefix.
pub fn version_string() -> String {
    format!(
        "PostgreSQL {PG_VERSION} on {}-linux-gnu, compiled by rustc (Workbench {})",
        std::env::consts::ARCH,
        env!("CARGO_PKG_VERSION")
    )
}

impl Engine {
    pub async fn new(lake: Arc<Lake>, options: EngineOptions) -> Result<Engine, EngineError> {
        let mut config = SessionConfig::new()
            .with_default_catalog_and_schema(DATABASE, "public")
            .with_create_default_catalog_and_schema(false)
            // Served by our own `information_schema` schema (Postgres type names).
            .with_information_schema(false)
            .with_option_extension(PlannerOptions::default());
        if let Some(cluster) = &options.cluster {
            config = config.with_extension(cluster.clone());
        }
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_analyzer_rules(coercion::analyzer_rules())
            .with_optimizer_rule(Arc::new(join_order::JoinOrder::new(layer::LakeEstimates)))
            .with_physical_optimizer_rules(filter_estimates::FilterEstimates::with_default_rules())
            .with_physical_optimizer_rule(Arc::new(join_filters::JoinFilters))
            .build();
        let ctx = SessionContext::new_with_state(state);

        let catalog = Arc::new(SortedCatalog::default());
        let setup = |e: datafusion::error::DataFusionError| EngineError::Setup(e.to_string());
        catalog
            .register_schema("public", Arc::new(MemorySchemaProvider::new()))
            .map_err(setup)?;
        let memory = MemoryTables::new(options.table_memory_budget);
        for layer in Layer::ALL {
            catalog
                .register_schema(layer.as_str(), Arc::new(LayerSchema::new(lake.clone(), layer, memory.clone())))
                .map_err(setup)?;
        }
        catalog
            .register_schema(
                "information_schema",
                Arc::new(information_schema::InformationSchema::new(ctx.state().catalog_list().clone())),
            )
            .map_err(setup)?;
        if let Some(meta) = &options.meta {
            catalog
                .register_schema("workbench", Arc::new(metadata::MetadataSchema::new(meta.clone())))
                .map_err(setup)?;
        }
        ctx.register_catalog(DATABASE, catalog);

        setup_pg_catalog(
            &ctx,
            DATABASE,
            Roles {
                names: options.roles.clone(),
            },
        )
        .map_err(|e| EngineError::Setup(e.to_string()))?;
        let catalog = ctx
            .catalog(DATABASE)
            .ok_or_else(|| EngineError::Setup("catalog vanished".into()))?;
        let procs = catalog_tables::ProcEntries::default();
        if let Some(upstream) = catalog.schema("pg_catalog") {
            let overlay =
                pg_catalog::PgCatalogOverlay::new(upstream, ctx.state().catalog_list().clone(), procs.clone());
            catalog
                .register_schema("pg_catalog", Arc::new(overlay))
                .map_err(setup)?;
        }

        let catalog_text = pg_catalog::CatalogText::install(&ctx).await.map_err(setup)?;
        for udf in workbench_udfs::all() {
            ctx.register_udf(udf);
        }
        ctx.register_udf(workbench_udfs::pg::version(version_string()));
        ctx.register_udf(information_schema::PgTypeof::udf());
        if let Some(builtin) = ctx.state().scalar_functions().get("array_to_string").cloned() {
            ctx.register_udf(workbench_udfs::pg::null_tolerant(builtin.as_ref().clone()));
        }
        if let Some(upstream) = ctx.state().scalar_functions().get("format_type").cloned() {
            ctx.register_udf(workbench_udfs::pg::with_pseudo_types(upstream.as_ref().clone()));
        }
        if options.debug_functions {
            ctx.register_udf(debug_panic_udf());
        }
        // Hand out the oids of every schema and table now, in name order:
        // the same lake gets the same oids on every start (clients such as
        // DBeaver and pgAdmin keep them while browsing).
        ctx.sql("SELECT count(*) FROM pg_catalog.pg_class")
            .await
            .map_err(setup)?
            .collect()
            .await
            .map_err(setup)?;

        let server_pool = Arc::new(GreedyMemoryPool::new(
            options.server_memory_limit.map_or(usize::MAX, |limit| limit as usize),
        ));
        let static_tables = Arc::new(PgCatalogStaticTables::try_new().map_err(setup)?);
        Ok(Engine {
            template: ctx,
            server_pool,
            options,
            lake,
            procs,
            catalog_text,
            static_tables,
            memory,
        })
    }

    /// The lake tables served from memory (which, and their budget).
    pub fn memory_tables(&self) -> &Arc<MemoryTables> {
        &self.memory
    }

    /// List `functions` in `pg_proc` (one row per arity) with their
    /// descriptions, result and argument texts.
    pub fn document_functions(&self, functions: &[FunctionDoc]) {
        let mut procs = self.procs.write().unwrap_or_else(|p| p.into_inner());
        for function in functions {
            for dropped in 0..=function.optional {
                let args = &function.args[..function.args.len() - dropped];
                let oid = catalog_tables::FIRST_PROC_OID + procs.len() as i32;
                procs.push(catalog_tables::ProcEntry {
                    oid,
                    name: function.name.to_string(),
                    args: args.iter().map(|(n, t)| (n.to_string(), type_oid(t))).collect(),
                });
                let key = vec![oid as i64];
                let text = args.iter().map(|(n, t)| format!("{n} {t}")).collect::<Vec<_>>().join(", ");
                for (table, value) in [
                    (&self.catalog_text.descriptions, function.description.to_string()),
                    (&self.catalog_text.function_results, "SETOF record".to_string()),
                    (&self.catalog_text.function_arguments, text),
                ] {
                    table.write().unwrap_or_else(|p| p.into_inner()).insert(key.clone(), value);
                }
            }
        }
    }

    pub fn lake(&self) -> &Arc<Lake> {
        &self.lake
    }

    /// A session for one client connection: [`Engine::session`] whose
    /// catalog (and `pg_catalog`, `information_schema` over it) shows what
    /// `access` may see, as it may see it. `access` is also the session's
    /// config extension, for table functions to check their grants.
    pub fn client_session(&self, access: Arc<Access>) -> Result<SessionContext, EngineError> {
        let setup = |e: datafusion::error::DataFusionError| EngineError::Setup(e.to_string());
        let ctx = self.session();
        let parser = Arc::new(self.template.state());
        let shared = self.template.state().catalog_list().clone();
        let view: Arc<dyn datafusion::catalog::CatalogProviderList> =
            Arc::new(governed::GovernedList::new(shared.clone(), access.clone(), None, parser.clone()));
        let upstream = PgCatalogSchemaProvider::try_new(
            view.clone(),
            self.static_tables.clone(),
            Roles {
                names: self.options.roles.clone(),
            },
        )
        .map_err(setup)?;
        // This session's `obj_description`/`col_description`: the functions'
        // descriptions, then its tables' as its `pg_class` hands out their oids.
        let descriptions: workbench_udfs::pg::LookupTable = Arc::new(std::sync::RwLock::new(
            self.catalog_text.descriptions.read().unwrap_or_else(|p| p.into_inner()).clone(),
        ));
        let docs = descriptions::SessionDocs::new(access.clone(), descriptions.clone(), view.clone());
        let privilege_functions = privileges::functions(&docs);
        let system = governed::SystemSchemas {
            pg_catalog: Arc::new(
                pg_catalog::PgCatalogOverlay::new(Arc::new(upstream), view.clone(), self.procs.clone()).with_docs(docs),
            ),
            information_schema: Arc::new(information_schema::InformationSchema::new(view)),
        };
        let list = Arc::new(governed::GovernedList::new(shared, access.clone(), Some(system), parser));
        let state = SessionStateBuilder::new_from_existing(ctx.state())
            .with_catalog_list(list)
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.state_ref().write().config_mut().set_extension(access);
        ctx.register_udf(workbench_udfs::pg::lookup("obj_description", 1, descriptions.clone()));
        ctx.register_udf(workbench_udfs::pg::lookup("col_description", 2, descriptions));
        for udf in privilege_functions {
            ctx.register_udf(udf);
        }
        Ok(ctx)
    }

    /// A fresh session with the whole catalog: same catalog and functions,
    /// its own memory pool and settings.
    pub fn session(&self) -> SessionContext {
        self.session_with(GreedyMemoryPool::new(self.query_limit()))
    }

    /// `query_memory_limit` in bytes (no limit: the whole address space).
    fn query_limit(&self) -> usize {
        self.options.query_memory_limit.map_or(usize::MAX, |l| l as usize)
    }

    /// A session whose queries draw from `pool` (reporting its three largest
    /// consumers when it runs out), within the server's budget.
    fn session_with(&self, pool: impl MemoryPool + 'static) -> SessionContext {
        let query_pool: Arc<dyn MemoryPool> =
            Arc::new(TrackConsumersPool::new(pool, std::num::NonZeroUsize::new(3).expect("3 is non-zero")));
        let template = self.template.state();
        let base = template.runtime_env();
        let memory_pool: Arc<dyn MemoryPool> =
            Arc::new(limits::BudgetPool::new(query_pool, self.server_pool.clone()));
        let runtime = Arc::new(RuntimeEnv {
            memory_pool: memory_pool.clone(),
            disk_manager: base.disk_manager.clone(),
            cache_manager: base.cache_manager.clone(),
            object_store_registry: base.object_store_registry.clone(),
        });
        let guarded = limits::guarded_functions(|name| template.scalar_functions().get(name).cloned(), &memory_pool);
        let state = SessionStateBuilder::new_from_existing(template)
            .with_runtime_env(runtime)
            .build();
        let ctx = SessionContext::new_with_state(state);
        for udf in guarded {
            ctx.register_udf(udf);
        }
        ctx
    }

    /// Add functions (table functions that need the pipeline, say) to every
    /// session created from now on.
    pub fn with_template(&self, register: impl FnOnce(&SessionContext)) {
        register(&self.template);
    }

    /// A session for internal use (pipelines, table functions). Its pool
    /// shares the limit fairly among operators that can spill: a `cluster_by`
    /// sort runs one sorter per core, and under a first-come pool one of them
    /// took 1.7 of 2 GB without spilling while the other's merge, which
    /// cannot spill, failed (TPC-H SF1 lineitem sorted by date).
    pub fn internal_session(&self) -> SessionContext {
        self.session_with(FairSpillPool::new(self.query_limit()))
    }
}

/// The oid of the few Postgres types table-function arguments use.
fn type_oid(name: &str) -> i32 {
    match name {
        "integer" => 23,
        "bigint" => 20,
        "boolean" => 16,
        "timestamp with time zone" => 1184,
        _ => 25, // text
    }
}

/// A function returning a fixed value, for per-session facts such as
/// `pg_backend_pid()`.
pub fn constant_udf(name: &str, value: ScalarValue) -> ScalarUDF {
    ScalarUDF::new_from_impl(workbench_udfs::pg::Constant::new(name, value))
}

#[derive(Debug, Clone)]
struct Roles {
    names: Vec<String>,
}

#[async_trait::async_trait]
impl PgCatalogContextProvider for Roles {
    async fn roles(&self) -> Vec<String> {
        self.names.clone()
    }

    async fn role(&self, name: &str) -> Option<Role> {
        self.names.iter().find(|n| *n == name).map(|n| Role {
            name: n.clone(),
            is_superuser: false,
            can_login: true,
            can_create_db: false,
            can_create_role: false,
            can_create_user: false,
            can_replication: false,
            grants: vec![],
            inherited_roles: vec![],
        })
    }
}

fn debug_panic_udf() -> ScalarUDF {
    use datafusion::arrow::datatypes::DataType;
    use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
    create_udf(
        "workbench_debug_panic",
        vec![],
        DataType::Int64,
        Volatility::Volatile,
        Arc::new(|_args: &[ColumnarValue]| -> datafusion::error::Result<ColumnarValue> {
            panic!("workbench_debug_panic() called: deliberate panic for isolation tests")
        }),
    )
}

/// The `workbench` catalog: schemas kept in name order, so that catalog
/// scans (and the oids datafusion-pg-catalog hands out in scan order) are
/// the same on every start over the same lake.
#[derive(Debug, Default)]
struct SortedCatalog {
    schemas: std::sync::RwLock<std::collections::BTreeMap<String, Arc<dyn datafusion::catalog::SchemaProvider>>>,
}

impl CatalogProvider for SortedCatalog {
    fn schema_names(&self) -> Vec<String> {
        self.schemas.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn datafusion::catalog::SchemaProvider>> {
        self.schemas.read().unwrap_or_else(|p| p.into_inner()).get(name).cloned()
    }

    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn datafusion::catalog::SchemaProvider>,
    ) -> datafusion::error::Result<Option<Arc<dyn datafusion::catalog::SchemaProvider>>> {
        Ok(self
            .schemas
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), schema))
    }
}
