//! Workbench table functions, one file each. Arguments are checked when the
//! query is planned (`call_with_args`); the work happens when it runs (`scan`).

mod args;
mod cancel_run;
mod freshness;
mod files;
mod history;
mod lineage;
mod preview;
mod preview_raw;
mod profile;
mod run;
mod schedule_preview;
mod schedules;
mod search;
mod table_at;
mod validate;

use std::sync::Arc;

use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result};
use datafusion::prelude::SessionContext;

use crate::engine::{Engine, FunctionDoc};
use crate::governance::{Access, AccessError, Principal};
use crate::meta::MetaStore;
use crate::pipeline::Pipeline;
use crate::storage::Lake;

/// What the table functions work with.
#[derive(Clone)]
pub struct Services {
    pub lake: Arc<Lake>,
    pub meta: Arc<MetaStore>,
    pub engine: Arc<Engine>,
    /// Absent when the server runs without specs.
    pub pipeline: Option<Arc<Pipeline>>,
    /// Grants, and what the specs say of each table (for `search`).
    pub policy: Arc<crate::governance::Policy>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services").field("lake", &self.lake.root()).finish()
    }
}

/// Who called a table function, from the session it was planned in. The
/// server's own sessions (pipelines, `workbench query`) carry no [`Access`]
/// and see everything; a client's session carries its connection's.
#[derive(Clone)]
pub struct Caller {
    access: Option<Arc<Access>>,
    /// Parses mask expressions and row filters for [`Caller::govern`].
    parser: Option<Arc<datafusion::execution::session_state::SessionState>>,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller").field("user", &self.access.as_ref().map(|a| a.user())).finish()
    }
}

impl Caller {
    pub fn of(session: &dyn datafusion::catalog::Session) -> Caller {
        let access = session.config().get_extension::<Access>();
        let parser = access.as_ref().and_then(|_| {
            session
                .as_any()
                .downcast_ref::<datafusion::execution::session_state::SessionState>()
                .map(|s| Arc::new(s.clone()))
        });
        Caller { access, parser }
    }

    /// `Ok` when the caller may do `what` (42501 otherwise).
    pub fn require(&self, what: impl Into<String>, check: impl FnOnce(&Principal) -> bool) -> Result<()> {
        match &self.access {
            None => Ok(()),
            Some(access) => access.require(what, check).map_err(|e| DataFusionError::External(Box::new(e))),
        }
    }

    /// The connection's user; `None` for the server's own sessions.
    pub fn user(&self) -> Option<String> {
        self.access.as_ref().map(|a| a.user())
    }

    /// Whether the caller may read `schema.table` (the server's own sessions may).
    pub fn can_read(&self, schema: &str, table: &str) -> bool {
        match &self.access {
            None => true,
            Some(access) => access.principal().is_some_and(|p| p.can_read(schema, table)),
        }
    }

    /// `Ok` when the caller may read `layer.table`, else 42501 naming it.
    pub fn require_read(&self, schema: &str, table: &str) -> Result<()> {
        let Some(access) = &self.access else { return Ok(()) };
        match access.principal() {
            Some(p) if p.can_read(schema, table) => Ok(()),
            _ => Err(DataFusionError::External(Box::new(AccessError::Table {
                table: format!("{schema}.{table}"),
                user: access.user(),
            }))),
        }
    }

    /// Whether a row filter hides some rows of `schema.table` from the
    /// caller: then counts of its rows (history's rows added) are not shown.
    pub fn filters_rows(&self, schema: &str, table: &str) -> bool {
        let Some(access) = &self.access else { return false };
        access.principal().is_none_or(|p| p.table_policy(schema, table).row_filters.is_some())
    }

    /// `table` (rows of `schema.name`, or rows shaped like them) as the
    /// caller may see it: filtered and masked as a query would see it.
    pub fn govern(&self, table: Arc<dyn TableProvider>, schema: &str, name: &str) -> Result<Arc<dyn TableProvider>> {
        let (Some(access), Some(parser)) = (&self.access, &self.parser) else {
            return Ok(table);
        };
        let Some(principal) = access.principal() else {
            return Err(DataFusionError::External(Box::new(AccessError::Table {
                table: format!("{schema}.{name}"),
                user: String::new(),
            })));
        };
        let policy = principal.table_policy(schema, name);
        if policy.is_clear() {
            return Ok(table);
        }
        crate::engine::governed_view(table, schema, name, &policy, principal.policy().mask_key(), parser)
    }

    /// A frame over `layer.name` as the caller may see it, in `ctx` (an
    /// internal session).
    pub async fn frame(&self, ctx: &SessionContext, layer: crate::storage::Layer, name: &str) -> Result<datafusion::dataframe::DataFrame> {
        let schema = layer.as_str();
        let Some(table) = ctx.table_provider(format!("{schema}.{name}").as_str()).await.ok() else {
            return ctx.table(format!("{schema}.{name}").as_str()).await;
        };
        ctx.read_table(self.govern(table, schema, name)?)
    }
}

/// A table function result with a fixed schema whose rows are computed
/// when the query runs.
#[async_trait::async_trait]
pub trait Rows: std::fmt::Debug + Send + Sync + 'static {
    fn schema(&self) -> datafusion::arrow::datatypes::SchemaRef;
    async fn rows(&self) -> datafusion::error::Result<datafusion::arrow::array::RecordBatch>;
}

/// The `TableProvider` for any [`Rows`].
#[derive(Debug)]
pub struct RowsTable<R: Rows>(pub R);

#[async_trait::async_trait]
impl<R: Rows> datafusion::datasource::TableProvider for RowsTable<R> {
    fn schema(&self) -> datafusion::arrow::datatypes::SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> datafusion::datasource::TableType {
        datafusion::datasource::TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        _filters: &[datafusion::logical_expr::Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let batch = self.0.rows().await?;
        Ok(datafusion::datasource::memory::MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.0.schema(),
            projection.cloned(),
        )?)
    }
}

/// The parameter names of table function `name`, in order (for calls with
/// named arguments: `lineage('gold.x', direction => 'down')`).
pub fn parameter_names(name: &str) -> Option<Vec<&'static str>> {
    DOCS.iter().find(|d| d.name.eq_ignore_ascii_case(name)).map(|d| d.args.iter().map(|(n, _)| *n).collect())
}

/// How the table functions appear in `pg_proc` (`\df`, JDBC `getFunctions`).
const DOCS: &[FunctionDoc] = &[
    FunctionDoc {
        name: "run",
        args: &[("dataset", "text")],
        optional: 0,
        description: "Run the pipeline of a dataset now; one row per step.",
    },
    FunctionDoc {
        name: "cancel_run",
        args: &[("run_id", "text")],
        optional: 0,
        description: "Stop a running run (on any replica); it ends cancelled, tables keep their last committed version.",
    },
    FunctionDoc {
        name: "schedule_preview",
        args: &[("dataset", "text"), ("from", "text"), ("n", "bigint")],
        optional: 2,
        description: "The next slots of a dataset's schedule after a time, in UTC and in its zone (DST changes shown).",
    },
    FunctionDoc {
        name: "preview",
        args: &[("dataset", "text"), ("path", "text"), ("row_limit", "bigint")],
        optional: 2,
        description: "The tidy rows a run would write for one landing file, with failed expectations; writes nothing.",
    },
    FunctionDoc {
        name: "preview_raw",
        args: &[("path", "text"), ("row_limit", "bigint")],
        optional: 1,
        description: "The raw rows of a landing file as the reader sees them.",
    },
    FunctionDoc {
        name: "validate",
        args: &[("table_name", "text"), ("suite", "text")],
        optional: 1,
        description: "Check a table against its expectations (or a YAML suite); one row per expectation.",
    },
    FunctionDoc {
        name: "lineage",
        args: &[("table_name", "text"), ("direction", "text"), ("depth", "integer")],
        optional: 2,
        description: "Table and column lineage edges up and/or down from a table.",
    },
    FunctionDoc {
        name: "profile",
        args: &[("table_name", "text")],
        optional: 0,
        description: "Per-column statistics of a table.",
    },
    FunctionDoc {
        name: "history",
        args: &[("table_name", "text")],
        optional: 0,
        description: "The Delta commits of a table joined with the runs that made them.",
    },
    FunctionDoc {
        name: "files",
        args: &[("table_name", "text")],
        optional: 0,
        description: "The data files of a table's current version: path, bytes, rows, modified, small.",
    },
    FunctionDoc {
        name: "storage",
        args: &[],
        optional: 0,
        description: "Per readable table: version, files, bytes, rows and small files (candidates for workbench optimize).",
    },
    FunctionDoc {
        name: "search",
        args: &[("text", "text")],
        optional: 0,
        description: "Tables and columns whose name, description, tags or owner contain a text (only what you may read).",
    },
    FunctionDoc {
        name: "table_at",
        args: &[("table_name", "text"), ("version_or_time", "text")],
        optional: 0,
        description: "A table as of a Delta version or a timestamp.",
    },
];

/// Add `workbench.schedules` (the scheduled datasets of `pipeline`) and
/// `workbench.freshness` to `ctx`'s catalog.
pub fn register_schedules(ctx: &SessionContext, pipeline: Arc<Pipeline>, meta: Arc<MetaStore>) -> datafusion::error::Result<()> {
    ctx.register_table("workbench.freshness", Arc::new(RowsTable(freshness::FreshnessTable { pipeline: pipeline.clone() })))?;
    ctx.register_table("workbench.schedules", Arc::new(RowsTable(schedules::Schedules { pipeline, meta })))
        .map(|_| ())
}

/// Where `COPY landing.<dataset> FROM STDIN` stores files: the pipeline,
/// carried by every session made from the template (a config extension).
#[derive(Debug)]
pub struct Landing(pub Arc<Pipeline>);

/// Register every table function on `ctx`.
pub fn register(ctx: &SessionContext, services: Services) {
    let documented: Vec<FunctionDoc> = DOCS
        .iter()
        .filter(|d| services.pipeline.is_some() || !matches!(d.name, "run" | "preview" | "cancel_run" | "schedule_preview"))
        .cloned()
        .collect();
    services.engine.document_functions(&documented);
    if let Some(pipeline) = &services.pipeline {
        if let Err(err) = register_schedules(ctx, pipeline.clone(), services.meta.clone()) {
            tracing::warn!(%err, "workbench.schedules is not available");
        }
        ctx.state_ref().write().config_mut().set_extension(Arc::new(Landing(pipeline.clone())));
        ctx.register_udtf("run", Arc::new(run::RunFunction::new(pipeline.clone())));
        ctx.register_udtf("cancel_run", Arc::new(cancel_run::CancelRun(pipeline.clone())));
        ctx.register_udtf("schedule_preview", Arc::new(schedule_preview::SchedulePreview(pipeline.clone())));
        ctx.register_udtf("preview", Arc::new(preview::Preview(services.clone())));
    }
    ctx.register_udtf("preview_raw", Arc::new(preview_raw::PreviewRaw(services.clone())));
    ctx.register_udtf("history", Arc::new(history::History(services.clone())));
    ctx.register_udtf("files", Arc::new(files::Files(services.clone())));
    ctx.register_udtf("storage", Arc::new(files::Storage(services.clone())));
    ctx.register_udtf("table_at", Arc::new(table_at::TableAt(services.clone())));
    ctx.register_udtf("lineage", Arc::new(lineage::Lineage(services.clone())));
    ctx.register_udtf("validate", Arc::new(validate::Validate(services.clone())));
    ctx.register_udtf("search", Arc::new(search::Search(services.clone())));
    ctx.register_udtf("profile", Arc::new(profile::Profile(services)));
}
