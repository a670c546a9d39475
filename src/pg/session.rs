//! One client connection's query handling. We reuse datafusion-postgres for
//! parsing, its hooks (SET/SHOW, transactions, cursors) and Arrow → wire
//! encoding, and add what it lacks: cancellation and `statement_timeout` that
//! cover execution (not only planning), read-only enforcement, Postgres
//! column labels and numeric type modifiers, and panic isolation.

use std::fmt::Debug;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::Schema;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatementKind;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::{DfSessionService, Parser, QueryHook};
use futures::{FutureExt, Sink, Stream};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, SendableRowStream};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, Type};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::data::DataRow;
use pgwire::types::format::FormatOptions;
use tokio::time::Instant;
use tracing::Instrument;

use super::backends::{Backend, QueryGuard};
use crate::engine::panic_message;
use super::readonly::ReadOnlyHook;
use super::settings::Settings;
use super::statements::{SessionStatementHook, apply_to_engine};
use super::{copy, cursor, depth, encode, errors, labels, late_bind, rewrite, search_path};

/// The statement type stored in prepared statements and portals; it must be
/// datafusion-postgres' own so its cursor hook can read our portals.
pub type PreparedStatement = (String, Option<(Statement, LogicalPlan)>);

pub struct Session {
    ctx: Arc<SessionContext>,
    inner: Arc<DfSessionService>,
    hooks: Vec<Arc<dyn QueryHook>>,
    parser: Arc<StatementParser>,
    backend: Arc<Backend>,
    settings: Arc<Settings>,
    uploads: super::upload::Uploads,
}

impl Session {
    pub fn new(ctx: SessionContext, backend: Arc<Backend>, settings: Arc<Settings>) -> Self {
        let ctx = Arc::new(ctx);
        let hooks: Vec<Arc<dyn QueryHook>> = vec![
            Arc::new(ReadOnlyHook),
            Arc::new(SessionStatementHook::new(settings.clone())),
            Arc::new(CursorStatementHook),
            Arc::new(TransactionStatementHook),
        ];
        let inner = Arc::new(DfSessionService::new_with_hooks(ctx.clone(), hooks.clone()));
        let parser = Arc::new(StatementParser {
            compat: Arc::new(PostgresCompatibilityParser::new()),
            ctx: ctx.clone(),
            settings: settings.clone(),
            hooks: hooks.clone(),
            inner: inner.query_parser(),
            backend: backend.clone(),
        });
        Session {
            ctx,
            inner,
            hooks,
            parser,
            backend,
            settings,
            uploads: Default::default(),
        }
    }

    pub(super) fn uploads(&self) -> &super::upload::Uploads {
        &self.uploads
    }

    /// Where uploads go (absent when the server runs without specs).
    pub(super) fn landing(&self) -> Option<Arc<crate::pipeline::Pipeline>> {
        self.ctx.state().config().get_extension::<crate::functions::Landing>().map(|l| l.0.clone())
    }

    /// The connection's user and grants (absent for the server's own sessions).
    pub(super) fn access(&self) -> Option<Arc<crate::governance::Access>> {
        self.ctx.state().config().get_extension::<crate::governance::Access>()
    }

    /// When the statement starting now must end (`statement_timeout`).
    fn deadline<C: ClientInfo + ?Sized>(&self, _client: &C) -> Option<Instant> {
        let ms = self.settings.statement_timeout_ms();
        (ms > 0).then(|| Instant::now() + Duration::from_millis(ms))
    }

    /// Plan and start every statement of a simple-protocol query string.
    async fn run_simple<C>(&self, client: &mut C, query: &str, guard: &Arc<QueryGuard>, deadline: Option<Instant>) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let Some(parsed) = cursor::parse_move(query) {
            let (name, direction) = parsed?;
            return Ok(vec![cursor::move_cursor(client, &name, &direction).await?]);
        }
        let statements = self.parser.parse_off_connection(query).await?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut responses = Vec::with_capacity(statements.len());
        'statements: for statement in statements {
            if let Some(upload) = super::upload::parse(&statement) {
                responses.push(self.start_upload(upload?)?);
                // The copy takes the connection until the client ends it.
                break;
            }
            if let Some(copy) = copy::parse(&statement) {
                let copy = copy?;
                let query = Statement::Query(Box::new(copy.query.clone()));
                let (response, _) = self.execute(client, &query, copy.value_format()).await?;
                let names = response.row_schema.iter().map(|f| f.name().to_string()).collect();
                let rows = guarded(response.data_rows, guard.clone(), deadline);
                responses.push(Response::CopyOut(copy::response(&copy, names, rows)));
                continue;
            }
            if let Statement::Declare { stmts } = &statement {
                responses.push(self.declare(client, stmts).await?);
                continue;
            }
            // SQL `DEALLOCATE` also closes statements prepared with the
            // protocol's Parse, as in PostgreSQL (one namespace): psqlODBC
            // deallocates its `_PLAN0x...` statements this way.
            if let Statement::Deallocate { name, .. } = &statement
                && client.portal_store().get_statement(&name.value).is_some()
            {
                client.portal_store().rm_statement(&name.value);
                responses.push(Response::Execution(pgwire::api::results::Tag::new("DEALLOCATE")));
                continue;
            }
            for hook in &self.hooks {
                if let Some(result) = hook.handle_simple_query(&statement, &self.ctx, client).await {
                    let mut response = result?;
                    // `FETCH 25`, as PostgreSQL tags it (psqlODBC's declare/fetch mode reads it).
                    if let (Statement::Fetch { .. }, Response::Query(query)) = (&statement, &mut response) {
                        query.set_command_tag("FETCH");
                    }
                    responses.push(response);
                    continue 'statements;
                }
            }
            let (mut response, _) = self.execute(client, &statement, Format::UnifiedText).await?;
            response.data_rows = guarded(response.data_rows, guard.clone(), deadline);
            responses.push(Response::Query(response));
        }
        Ok(responses)
    }

    /// Plan `statement` and start its execution, encoding values in `format`;
    /// columns are described as Postgres would.
    async fn execute<C: ClientInfo>(
        &self,
        client: &C,
        statement: &Statement,
        format: Format,
    ) -> PgWireResult<(QueryResponse, Arc<Schema>)> {
        let plan = self.parser.plan_statement(statement).await?;
        self.execute_plan(client, plan, statement, format).await
    }

    async fn execute_plan<C: ClientInfo>(
        &self,
        client: &C,
        plan: LogicalPlan,
        statement: &Statement,
        format: Format,
    ) -> PgWireResult<(QueryResponse, Arc<Schema>)> {
        self.backend.note_tables(tables_read(&plan));
        let frame = self
            .ctx
            .execute_logical_plan(plan)
            .await
            .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
        let schema = Arc::new(frame.schema().as_arrow().clone());
        let format_options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        let fields = Arc::new(arrow_pg::datatypes::arrow_schema_to_pg_fields(&schema, &format, Some(format_options))?);
        let encoding = fields.clone();
        let batches = crate::engine::execute(frame, self.settings.placement(), move |batch| encode::encode_batch(&batch, &encoding))
            .await
            .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
        let rows = encode::rows(batches);
        let response = QueryResponse::new(labels::describe_arc(fields, &schema, Some(statement)), rows);
        Ok((response, schema))
    }
}

impl Session {
    /// `DECLARE name CURSOR FOR query`: plan the query as any other (rewrites,
    /// search_path), start it, and keep it as a portal that FETCH, MOVE and
    /// CLOSE use and Describe can describe.
    async fn declare<C>(&self, client: &mut C, stmts: &[datafusion::sql::sqlparser::ast::Declare]) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        use datafusion_postgres::hooks::HookClient;
        use pgwire::api::stmt::StoredStatement;
        for declare in stmts {
            let (Some(name), Some(query)) = (declare.names.first(), &declare.for_query) else {
                return Err(errors::user(errors::error("42601", "DECLARE takes a name and a query: DECLARE c CURSOR FOR SELECT ...")));
            };
            let statement = Statement::Query(query.clone());
            let plan = self.parser.plan_statement(&statement).await?;
            let (response, _) = self.execute_plan(client, plan.clone(), &statement, Format::UnifiedText).await?;
            let stored = Arc::new(StoredStatement::new(
                name.value.clone(),
                (statement.to_string(), Some((statement, plan))),
                vec![],
            ));
            let portal = Portal::new_cursor(name.value.clone(), stored);
            portal.start(response).await;
            HookClient::portal_store(client).put_portal(Arc::new(portal));
        }
        Ok(Response::Execution(pgwire::api::results::Tag::new("DECLARE CURSOR")))
    }
}

/// The tables `plan` scans, as `schema.table`, for the audit trail.
fn tables_read(plan: &LogicalPlan) -> Vec<String> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    let mut tables = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            tables.push(scan.table_name.to_string());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    tables
}

/// The outcome of a statement, noted in its audit record.
fn audited<T>(guard: &QueryGuard, result: PgWireResult<T>) -> PgWireResult<T> {
    if let Err(err) = &result {
        guard.failed(&errors::sqlstate(err));
    }
    result
}

/// Run `work` until it finishes, the query is cancelled, or its deadline
/// passes; a panic inside it becomes an error for this query only.
async fn bounded<T>(
    work: impl std::future::Future<Output = PgWireResult<T>>,
    guard: &QueryGuard,
    deadline: Option<Instant>,
    what: &str,
) -> PgWireResult<T> {
    tokio::select! {
        biased;
        _ = guard.token.cancelled() => Err(errors::canceled(guard.stop_reason())),
        _ = until(deadline) => Err(errors::statement_timeout()),
        result = AssertUnwindSafe(work).catch_unwind() => match result {
            Ok(result) => result,
            Err(panic) => {
                tracing::error!(panic = %panic_message(&panic), "query panicked while {what}");
                Err(errors::panicked(what))
            }
        },
    }
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The rows of a running query, stopped by cancel, deadline or a panic in
/// the engine. The query counts as running until this stream is dropped.
///
/// Hand-written rather than a `select!` per row: the cancellation and the
/// deadline are registered once and looked at whenever the rows must wait,
/// and every `ROWS_PER_CHECK` rows while they keep coming, so a large result
/// pays neither an allocation nor a look per row (6% of the server's samples
/// while streaming lineitem, PROFILES.md).
fn guarded(rows: SendableRowStream, guard: Arc<QueryGuard>, deadline: Option<Instant>) -> SendableRowStream {
    Box::pin(Guarded {
        cancelled: Box::pin(guard.token.clone().cancelled_owned()),
        sleep: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
        rows,
        guard,
        // The first poll looks, so a query cancelled before it starts sends nothing.
        unchecked: ROWS_PER_CHECK,
        done: false,
    })
}

/// Rows sent between two looks at the cancellation and the deadline while
/// the rows are ready (a few milliseconds of rows at most).
const ROWS_PER_CHECK: u32 = 1024;

struct Guarded {
    rows: SendableRowStream,
    guard: Arc<QueryGuard>,
    cancelled: std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    unchecked: u32,
    done: bool,
}

impl Guarded {
    /// The error that ends the rows if the query was cancelled or ran out of
    /// time; else both are polled, so either wakes the task.
    fn stopped(&mut self, cx: &mut std::task::Context<'_>) -> Option<PgWireError> {
        use std::future::Future;
        self.unchecked = 0;
        if self.cancelled.as_mut().poll(cx).is_ready() {
            let err = errors::canceled(self.guard.stop_reason());
            self.guard.failed(&errors::sqlstate(&err));
            return Some(err);
        }
        if let Some(sleep) = &mut self.sleep
            && sleep.as_mut().poll(cx).is_ready()
        {
            self.guard.failed(errors::QUERY_CANCELED);
            return Some(errors::statement_timeout());
        }
        None
    }
}

impl Stream for Guarded {
    type Item = PgWireResult<DataRow>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.unchecked >= ROWS_PER_CHECK
            && let Some(err) = this.stopped(cx)
        {
            this.done = true;
            return Poll::Ready(Some(Err(err)));
        }
        let rows = &mut this.rows;
        match std::panic::catch_unwind(AssertUnwindSafe(|| rows.as_mut().poll_next(cx))) {
            Ok(Poll::Ready(Some(Ok(row)))) => {
                this.unchecked += 1;
                this.guard.row();
                Poll::Ready(Some(Ok(row)))
            }
            Ok(Poll::Ready(Some(Err(err)))) => {
                this.done = true;
                this.guard.failed(&errors::sqlstate(&err));
                Poll::Ready(Some(Err(err)))
            }
            Ok(Poll::Ready(None)) => Poll::Ready(None),
            // Waiting for rows: a cancel or the deadline must wake the task.
            Ok(Poll::Pending) => match this.stopped(cx) {
                Some(err) => {
                    this.done = true;
                    Poll::Ready(Some(Err(err)))
                }
                None => Poll::Pending,
            },
            Err(panic) => {
                this.done = true;
                this.guard.failed(errors::INTERNAL);
                tracing::error!(panic = %panic_message(&panic), "query panicked while executing the query");
                Poll::Ready(Some(Err(errors::panicked("executing the query"))))
            }
        }
    }
}

#[async_trait]
impl SimpleQueryHandler for Session {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let guard = Arc::new(self.backend.begin_query(query));
        let deadline = self.deadline(client);
        let span = tracing::info_span!("query", pid = self.backend.pid, protocol = "simple");
        tracing::debug!(parent: &span, sql = %query, "query");
        let work = self.run_simple(client, query, &guard, deadline);
        let result = bounded(work, &guard, deadline, "planning the query").instrument(span).await;
        audited(&guard, result)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Session {
    type Statement = PreparedStatement;
    type QueryParser = StatementParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_describe_portal<C>(
        &self,
        _client: &mut C,
        target: &Portal<Self::Statement>,
    ) -> PgWireResult<pgwire::api::results::DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (sql, parsed) = &target.statement.statement;
        let fields = match (parsed, self.parser.late_bound(sql)) {
            (None, Some(mut statement)) => {
                late_bind::bind(&mut statement, target)?;
                let plan = self.parser.plan_statement(&statement).await?;
                let planned = (sql.clone(), Some((statement, plan)));
                self.parser.get_result_schema(&planned, Some(&target.result_column_format))?
            }
            _ => self
                .parser
                .get_result_schema(&target.statement.statement, Some(&target.result_column_format))?,
        };
        Ok(pgwire::api::results::DescribePortalResponse::new(fields))
    }

    async fn do_query<C>(&self, client: &mut C, portal: &Portal<Self::Statement>, max_rows: usize) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let guard = Arc::new(self.backend.begin_query(&portal.statement.statement.0));
        let result = self.run_portal(client, portal, max_rows, guard.clone()).await;
        audited(&guard, result)
    }
}

impl Session {
    /// Execute a bound portal of the extended protocol.
    async fn run_portal<C>(&self, client: &mut C, portal: &Portal<PreparedStatement>, max_rows: usize, guard: Arc<QueryGuard>) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PreparedStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (sql, parsed) = &portal.statement.statement;
        let deadline = self.deadline(client);
        if let Some((statement, plan)) = parsed
            && let Some(copy) = copy::parse(statement)
        {
            let copy = copy?;
            let query = Statement::Query(Box::new(copy.query.clone()));
            let plan = current_tables(&self.ctx, plan).await?;
            let work = self.execute_plan(client, plan, &query, copy.value_format());
            let (response, _) = bounded(work, &guard, deadline, "planning the query").await?;
            let names = response.row_schema.iter().map(|f| f.name().to_string()).collect();
            let rows = guarded(response.data_rows, guard, deadline);
            return Ok(Response::CopyOut(copy::response(&copy, names, rows)));
        }
        if let Some((Statement::Declare { stmts }, _)) = parsed {
            return self.declare(client, stmts).await;
        }
        if parsed.is_none()
            && let Some(mut statement) = self.parser.late_bound(sql)
        {
            late_bind::bind(&mut statement, portal)?;
            let work = self.execute(client, &statement, portal.result_column_format.clone());
            let (mut response, _) = bounded(work, &guard, deadline, "planning the query").await?;
            response.data_rows = guarded(response.data_rows, guard, deadline);
            return Ok(Response::Query(response));
        }
        let span = tracing::info_span!("query", pid = self.backend.pid, protocol = "extended");
        tracing::debug!(parent: &span, sql = %sql, "query");
        if let Some((statement @ Statement::Query(_), plan)) = parsed {
            // Queries run as in the simple protocol (our encoder, lake scans on
            // their runtime) with the bound values in place of `$n`; the hooks
            // still see them first, as they would upstream.
            let values = self.parser.bind(&portal.statement.statement, plan, portal)?;
            for hook in &self.hooks {
                if let Some(result) = hook.handle_extended_query(statement, plan, &values, &self.ctx, client).await {
                    return result;
                }
            }
            let plan = current_tables(&self.ctx, plan).await?;
            let plan = if portal.parameter_len() == 0 {
                plan
            } else {
                plan.replace_params_with_values(&values).map_err(|e| PgWireError::ApiError(Box::new(e)))?
            };
            let work = self.execute_plan(client, plan, statement, portal.result_column_format.clone());
            let (mut response, _) = bounded(work, &guard, deadline, "planning the query").instrument(span).await?;
            response.data_rows = guarded(response.data_rows, guard, deadline);
            return Ok(Response::Query(response));
        }
        let work = ExtendedQueryHandler::do_query(self.inner.as_ref(), client, portal, max_rows);
        let response = bounded(work, &guard, deadline, "planning the query")
            .instrument(span)
            .await?;
        Ok(match response {
            Response::Query(mut query) => {
                if let Some((statement, plan)) = parsed {
                    query.row_schema =
                        labels::describe_arc(query.row_schema, plan.schema().as_arrow(), Some(statement));
                }
                query.data_rows = guarded(query.data_rows, guard, deadline);
                Response::Query(query)
            }
            other => other,
        })
    }
}

/// `plan` (prepared earlier) reading the tables as they are now: each scan's
/// table is looked up again, so a statement prepared before a run committed
/// sees what the run wrote, as in PostgreSQL (the plan otherwise holds the
/// Delta version it was planned on; pgjdbc and psycopg prepare a statement
/// after its fifth execution). A table whose columns changed since is
/// 0A000, as PostgreSQL's "cached plan must not change result type"; names
/// the catalog does not know (table functions) keep their provider.
async fn current_tables(ctx: &SessionContext, plan: &LogicalPlan) -> PgWireResult<LogicalPlan> {
    use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
    let mut names = Vec::new();
    plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            names.push(scan.table_name.clone());
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    if names.is_empty() {
        return Ok(plan.clone());
    }
    let mut fresh = std::collections::HashMap::new();
    for name in names {
        if let Ok(provider) = ctx.table_provider(name.clone()).await {
            fresh.insert(name, provider);
        }
    }
    plan.clone()
        .transform_up(|node| match node {
            LogicalPlan::TableScan(mut scan) => match fresh.get(&scan.table_name) {
                Some(provider) if provider.schema() == scan.source.schema() => {
                    scan.source = datafusion::datasource::provider_as_source(provider.clone());
                    Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
                }
                Some(_) => Err(datafusion::error::DataFusionError::Plan(format!(
                    "cached plan must not change result type: the columns of {} changed since the statement was prepared; prepare it again",
                    scan.table_name
                ))),
                None => Ok(Transformed::no(LogicalPlan::TableScan(scan))),
            },
            other => Ok(Transformed::no(other)),
        })
        .map(|t| t.data)
        .map_err(|e| match e {
            datafusion::error::DataFusionError::Plan(message) if message.starts_with("cached plan") => PgWireError::UserError(Box::new(
                pgwire::error::ErrorInfo::new("ERROR".into(), "0A000".into(), message),
            )),
            other => PgWireError::ApiError(Box::new(other)),
        })
}

/// Split `sql` into statements, apply our rewrites, and refuse expressions
/// nested deeper than the planner can take.
fn parse_with(compat: &PostgresCompatibilityParser, sql: &str) -> PgWireResult<Vec<Statement>> {
    let mut statements = compat.parse(sql).map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    for statement in &mut statements {
        rewrite::positional(statement, &crate::functions::parameter_names)
            .map_err(|message| PgWireError::UserError(Box::new(pgwire::error::ErrorInfo::new("ERROR".into(), "42883".into(), message))))?;
        rewrite::rewrite(statement);
        depth::check(statement)?;
    }
    Ok(statements)
}

/// Parses with datafusion-postgres' compatibility parser, applies our
/// rewrites, then plans (hooks first, as datafusion-postgres does); column
/// descriptions follow Postgres.
pub struct StatementParser {
    compat: Arc<PostgresCompatibilityParser>,
    ctx: Arc<SessionContext>,
    settings: Arc<Settings>,
    hooks: Vec<Arc<dyn QueryHook>>,
    /// datafusion-postgres' parser, for parameter and result types of a plan.
    inner: Arc<Parser>,
    /// Statements refused at Parse are audited here; the rest where they run.
    backend: Arc<Backend>,
}

impl StatementParser {
    /// The statement of `sql` if it is planned only once its parameters are bound.
    fn late_bound(&self, sql: &str) -> Option<Statement> {
        let statement = self.parse(sql).ok()?.into_iter().next()?;
        late_bind::needs_values(&statement).then_some(statement)
    }

    /// Split `sql` into rewritten statements.
    pub fn parse(&self, sql: &str) -> PgWireResult<Vec<Statement>> {
        parse_with(&self.compat, sql)
    }

    /// `parse` on the query runtime, whose deep stacks take SQL nested as
    /// deep as `depth` allows.
    pub async fn parse_off_connection(&self, sql: &str) -> PgWireResult<Vec<Statement>> {
        let compat = self.compat.clone();
        let sql = sql.to_string();
        crate::engine::off_connection("parsing the query", async move { Ok(parse_with(&compat, &sql)) })
            .await
            .map_err(|e| PgWireError::ApiError(Box::new(e)))?
    }

    async fn plan<C>(&self, client: &C, sql: &str) -> PgWireResult<Option<PreparedStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut statements = self.parse_off_connection(sql).await?;
        if statements.is_empty() {
            return Ok(None);
        }
        if statements.len() > 1 {
            // As PostgreSQL: running only the first would silently drop the rest.
            return Err(errors::user(errors::with_hint(
                errors::error("42601", "cannot insert multiple commands into a prepared statement"),
                "send one statement per Parse message, or use the simple query protocol",
            )));
        }
        let statement = statements.remove(0);
        let text = statement.to_string();
        if let Some(copy) = copy::parse(&statement) {
            // Plan the query being copied; execution frames it as COPY data.
            let query = Statement::Query(Box::new(copy?.query));
            let plan = self.plan_statement(&query).await?;
            return Ok(Some((text, Some((statement, plan)))));
        }
        for hook in &self.hooks {
            if let Some(plan) = hook.handle_extended_parse_query(&statement, &self.ctx, client).await {
                return Ok(Some((text, Some((statement, plan?)))));
            }
        }
        if late_bind::needs_values(&statement) {
            return Ok(Some((text, None))); // planned with its parameter values
        }
        let plan = self.plan_statement(&statement).await?;
        Ok(Some((text, Some((statement, plan)))))
    }

    /// Plan on the query runtime: planning folds constants and rewrites
    /// expression trees, which can take long and recurse deep.
    async fn plan_statement(&self, statement: &Statement) -> PgWireResult<LogicalPlan> {
        let ctx = self.ctx.clone();
        let settings = self.settings.clone();
        let mut statement = statement.clone();
        crate::engine::off_connection("planning the query", async move {
            // Follow the session's settings (search_path, TimeZone) as they are now.
            apply_to_engine(&settings, &ctx);
            search_path::qualify(&mut statement, &settings, &ctx);
            ctx.state()
                .statement_to_plan(DfStatementKind::Statement(Box::new(statement)))
                .await
        })
        .await
        .map_err(|e| PgWireError::ApiError(Box::new(e)))
    }
}

/// Positions (0-based) of the untyped parameters that are a `LIMIT` or
/// `OFFSET` anywhere in `plan`, subqueries included.
fn limit_parameters(plan: &LogicalPlan) -> Vec<usize> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    use datafusion::logical_expr::Expr;
    let mut found = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::Limit(limit) = node {
            for expr in [&limit.skip, &limit.fetch].into_iter().flatten() {
                if let Expr::Placeholder(p) = expr.as_ref()
                    && p.field.is_none()
                    && let Ok(n) = p.id.trim_start_matches('$').parse::<usize>()
                    && n > 0
                {
                    found.push(n - 1);
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

impl StatementParser {
    /// The values bound to `portal`, decoded with the types the client was
    /// told (or sent) and converted to the types the plan expects.
    fn bind(
        &self,
        stmt: &PreparedStatement,
        plan: &LogicalPlan,
        portal: &Portal<PreparedStatement>,
    ) -> PgWireResult<datafusion::common::ParamValues> {
        if portal.parameter_len() == 0 {
            return Ok(datafusion::common::ParamValues::List(vec![]));
        }
        let wire = self.get_parameter_types(stmt)?;
        let mut expected: Vec<(String, Option<datafusion::arrow::datatypes::DataType>)> = plan
            .get_parameter_types()
            .map_err(|e| PgWireError::ApiError(Box::new(e)))?
            .into_iter()
            .collect();
        expected.sort_by_key(|(id, _)| id.trim_start_matches('$').parse::<u32>().unwrap_or(u32::MAX));
        let expected: Vec<_> = expected.iter().map(|(_, t)| t.as_ref()).collect();
        let wire: Vec<_> = wire.iter().map(Some).collect();
        arrow_pg::datatypes::df::deserialize_parameters_with_server_types(portal, &expected, &wire)
    }
}

#[async_trait]
impl QueryParser for StatementParser {
    type Statement = PreparedStatement;

    async fn parse_sql<C>(&self, client: &C, sql: &str, _types: &[Option<Type>]) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let result = match AssertUnwindSafe(self.plan(client, sql)).catch_unwind().await {
            Ok(result) => result,
            Err(_) => Err(errors::panicked("planning the query")),
        };
        if let Err(err) = &result {
            self.backend.begin_query(sql).failed(&errors::sqlstate(err));
        }
        result
    }

    fn get_parameter_types(&self, stmt: &Self::Statement) -> PgWireResult<Vec<Type>> {
        if stmt.1.is_none()
            && let Some(statement) = self.late_bound(&stmt.0)
        {
            return Ok(vec![Type::UNKNOWN; late_bind::parameter_count(&statement)]);
        }
        let mut types = self.inner.get_parameter_types(stmt)?;
        if let Some((_, plan)) = &stmt.1 {
            // DataFusion leaves `LIMIT $1` / `OFFSET $1` untyped (and the
            // client would be told text): they are bigint, as in PostgreSQL.
            for index in limit_parameters(plan) {
                if let Some(t) = types.get_mut(index)
                    && (*t == Type::TEXT || *t == Type::UNKNOWN || *t == Type::VARCHAR)
                {
                    *t = Type::INT8;
                }
            }
        }
        Ok(types)
    }

    fn get_result_schema(&self, stmt: &Self::Statement, column_format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        if let Some((statement, _)) = &stmt.1
            && copy::parse(statement).is_some()
        {
            return Ok(vec![]); // COPY describes itself in CopyOutResponse
        }
        let fields = self.inner.get_result_schema(stmt, column_format)?;
        Ok(match &stmt.1 {
            Some((statement, plan)) => labels::describe(fields, plan.schema().as_arrow(), Some(statement)),
            None => fields,
        })
    }
}
