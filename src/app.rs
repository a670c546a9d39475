//! `App::build` wires storage → engine → pg from a validated [`Config`]. Both
//! `main` and the integration tests start the server through it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::engine::{Engine, EngineError, EngineOptions};
use crate::pipeline::{Pipeline, PipelineError, RunOptions, RunReport};
use crate::spec::{self, Project};
use crate::pg::{Backends, PgServer, ServerOptions, UserStore};
use crate::cache::Coordinator;
use crate::governance::audit::Auditor;
use crate::meta::MetaStore;
use crate::storage::{Lake, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
    #[error("{} spec error(s):\n{}", .0.len(), .0.join("\n"))]
    Specs(Vec<String>),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Meta(#[from] crate::meta::MetaError),
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    #[error("query failed: {0}")]
    Query(String),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Policy(#[from] crate::governance::PolicyError),
    #[error("masking key: {0}")]
    MaskingKey(String),
    #[error(transparent)]
    Tls(#[from] crate::pg::TlsError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// Roles and users from the config, column tags and masks from the specs.
async fn build_policy(config: &Config, lake: &Lake, project: Option<&Project>) -> Result<crate::governance::Policy, AppError> {
    use crate::governance::{Policy, UserGrants};
    let users = config
        .users
        .iter()
        .map(|u| {
            (
                u.name.clone(),
                UserGrants {
                    roles: u.roles.clone(),
                    attributes: u.attributes.clone(),
                },
            )
        })
        .collect();
    let key = match &config.masking_key {
        Some(key) => key.clone(),
        None if lake.local_root().is_some() => local_masking_key(lake)?,
        None => lake_masking_key(lake).await?,
    };
    let policy = Policy::new(config.roles.clone(), users, key)?;
    Ok(match project {
        Some(project) => policy.with_project(project),
        None => policy,
    })
}

/// The `hash` mask's key on an object-store lake when the config names
/// none: 32 random bytes at `_workbench/mask.key` in the lake, created once
/// (a conditional put: replicas starting together agree on one key), so
/// hashes are the same on every replica and across restarts. Whoever may
/// read the bucket could read the key, and the unmasked data beside it.
async fn lake_masking_key(lake: &Lake) -> Result<Vec<u8>, AppError> {
    const PATH: &str = "_workbench/mask.key";
    let failed = |e: object_store::Error| AppError::MaskingKey(format!("{}{PATH}: {e} (or set masking_key_env in the config)", lake.root()));
    match lake.read_bytes(PATH).await {
        Ok(key) if key.len() >= 16 => return Ok(key.to_vec()),
        Ok(_) => return Err(AppError::MaskingKey(format!("{}{PATH} is shorter than 16 bytes; delete it to create a new key", lake.root()))),
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(failed(e)),
    }
    let key: [u8; 32] = rand::random();
    match lake.put_new(PATH, bytes::Bytes::copy_from_slice(&key)).await {
        Ok(()) => Ok(key.to_vec()),
        // Another replica created it first: use theirs.
        Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
            lake.read_bytes(PATH).await.map(|k| k.to_vec()).map_err(failed)
        }
        Err(e) => Err(failed(e)),
    }
}

/// The `hash` mask's key when the config names none: 32 random bytes kept in
/// `<lake>/_workbench/mask.key` (readable by its owner only), so hashes stay
/// the same across restarts.
fn local_masking_key(lake: &Lake) -> Result<Vec<u8>, AppError> {
    let Some(root) = lake.local_root() else {
        return Err(AppError::MaskingKey(
            "the lake is not on a local disk: set masking_key_env in the config to a variable holding the key".into(),
        ));
    };
    let dir = root.join("_workbench");
    let path = dir.join("mask.key");
    match std::fs::read(&path) {
        Ok(key) if key.len() >= 16 => return Ok(key),
        Ok(_) => return Err(AppError::MaskingKey(format!("{} is shorter than 16 bytes; delete it to create a new key", path.display()))),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(AppError::MaskingKey(format!("cannot read {}: {err}", path.display()))),
    }
    let key: [u8; 32] = rand::random();
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(&dir)?;
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
        file.write_all(&key)?;
        file.sync_all()
    };
    match write() {
        Ok(()) => Ok(key.to_vec()),
        // Another process created it first: use theirs.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::read(&path).map_err(|e| AppError::MaskingKey(format!("cannot read {}: {e}", path.display())))
        }
        Err(err) => Err(AppError::MaskingKey(format!("cannot create {}: {err}", path.display()))),
    }
}

/// The lake, engine and pipeline, without a server.
struct Core {
    lake: Arc<Lake>,
    engine: Arc<Engine>,
    meta: Arc<MetaStore>,
    coordinator: Arc<Coordinator>,
    lock_ttl: std::time::Duration,
}

impl Core {
    async fn build(config: &Config, roles: Vec<String>) -> Result<Core, AppError> {
        crate::engine::set_scan_nice(config.scan_nice);
        let lake = Arc::new(Lake::open(&config.lake, config.storage_options.clone())?);
        let meta = Arc::new(match &config.metadata_url {
            Some(url) => MetaStore::postgres(url).await?,
            None => {
                let dir = match lake.local_root() {
                    Some(root) => root.join("_workbench"),
                    None => {
                        // SQLite cannot live in an object store.
                        let dir = std::path::PathBuf::from(".workbench");
                        tracing::warn!(
                            lake = %lake.root(),
                            sqlite = %dir.join("metadata.db").display(),
                            "the lake is on object storage but run history and ingested files are kept on this machine only; \
                             set metadata.url (DATABASE_URL) to a PostgreSQL database, which every replica must share"
                        );
                        dir
                    }
                };
                MetaStore::sqlite(&dir.join("metadata.db")).await?
            }
        });
        tracing::info!(backend = meta.backend(), "metadata store ready");
        let coordinator = Arc::new(match &config.redis_url {
            Some(url) => Coordinator::redis(url, &config.redis_prefix).await?,
            None => Coordinator::local(lake.local_root().map(|root| root.join("_workbench").join("locks"))),
        });
        tracing::info!(backend = coordinator.backend(), "locks, events and cache ready");
        let engine = Arc::new(
            Engine::new(
                lake.clone(),
                EngineOptions {
                    query_memory_limit: config.query_memory_limit,
                    server_memory_limit: config.server_memory_limit,
                    table_memory_budget: config.table_memory_budget,
                    roles,
                    debug_functions: config.debug_functions,
                    meta: Some(meta.clone()),
                    cluster: config.cluster.clone().map(|c| Arc::new(crate::cluster::Cluster::new(c))),
                },
            )
            .await?,
        );
        Ok(Core {
            lake,
            engine,
            meta,
            coordinator,
            lock_ttl: config.lock_ttl,
        })
    }
}

fn load_project(config: &Config) -> Result<Project, Vec<String>> {
    spec::load_dir(&config.specs).map_err(|errors| errors.iter().map(|e| e.to_string()).collect())
}

/// `workbench check`: every spec error, then rule-planning errors on the
/// landing files present. Empty when everything is valid.
pub async fn check(config: &Config, sync: bool) -> Result<Vec<String>, AppError> {
    let project = match load_project(config) {
        Ok(project) => project,
        Err(errors) => return Ok(errors),
    };
    for warning in inline_secret_warnings(&project) {
        eprintln!("{warning}");
    }
    let core = Core::build(config, vec![]).await?;
    let pipeline = Pipeline::new(core.lake, core.engine, core.meta, core.coordinator, core.lock_ttl, project);
    let mut errors = Vec::new();
    let mut planned = 0;
    for dataset in &pipeline.project().datasets {
        match pipeline.dry_plan(dataset).await {
            Ok(true) => planned += 1,
            Ok(false) => {}
            Err(err) => errors.push(err.to_string()),
        }
    }
    if errors.is_empty() && sync {
        pipeline.sync_datasets().await?;
    }
    if errors.is_empty() {
        println!(
            "{} dataset(s), {} gold model(s): OK ({} planned against landing files)",
            pipeline.project().datasets.len(),
            pipeline.project().gold.len(),
            planned
        );
    }
    Ok(errors)
}

/// A warning for each secret written inline in a spec, with where it is and
/// how to move it out (the secret itself is never printed).
pub fn inline_secret_warnings(project: &crate::spec::Project) -> Vec<String> {
    project
        .datasets
        .iter()
        .flat_map(|dataset| {
            crate::spec::secrets::find_inline(&dataset.text).into_iter().map(move |secret| {
                format!(
                    "{}:{}:{}: warning: {} is written in the spec; put it in an environment variable \
                     and refer to it as `env:NAME` (e.g. `url: env:ERP_DATABASE_URL`). \
                     Workbench shows it as {} over SQL.",
                    dataset.file.display(),
                    secret.line,
                    secret.column,
                    secret.what,
                    crate::spec::secrets::REDACTED
                )
            })
        })
        .collect()
}

/// `workbench run`: run datasets (all when empty) once.
pub async fn run(config: &Config, datasets: &[String], options: &RunOptions) -> Result<RunReport, AppError> {
    let (pipeline, meta) = cli_pipeline(config).await?;
    let started = std::time::Instant::now();
    let at = chrono::Utc::now();
    let result = pipeline.run(datasets, options).await;
    pipeline.flush_alerts().await;
    let succeeded = matches!(&result, Ok(report) if report.error.is_none());
    audit_cli_run(config, &meta, datasets, at, started, succeeded).await;
    Ok(result?)
}

/// `workbench run X --downstream`: X, then what follows it.
pub async fn run_downstream(config: &Config, root: &str, options: &RunOptions, workers: usize) -> Result<Vec<crate::pipeline::DatasetOutcome>, AppError> {
    let (pipeline, meta) = cli_pipeline(config).await?;
    let started = std::time::Instant::now();
    let at = chrono::Utc::now();
    let result = pipeline.run_downstream(root, options, workers).await;
    pipeline.flush_alerts().await;
    let succeeded = matches!(&result, Ok(outcomes) if outcomes.iter().all(|o| o.status == crate::pipeline::RunStatus::Succeeded));
    audit_cli_run(config, &meta, &[format!("{root} --downstream")], at, started, succeeded).await;
    Ok(result?)
}

/// `workbench run X --from --to --step`: a backfill, slice by slice.
#[allow(clippy::too_many_arguments)]
pub async fn backfill(
    config: &Config,
    dataset: &str,
    from: chrono::NaiveDate,
    to: chrono::NaiveDate,
    step: crate::pipeline::Step,
    parallel: usize,
    options: &RunOptions,
    progress: &mut (dyn FnMut(&crate::pipeline::BackfillProgress) + Send),
) -> Result<crate::pipeline::BackfillProgress, AppError> {
    let (pipeline, meta) = cli_pipeline(config).await?;
    let started = std::time::Instant::now();
    let at = chrono::Utc::now();
    let result = pipeline.backfill(dataset, from, to, step, parallel, options, progress).await;
    pipeline.flush_alerts().await;
    let succeeded = matches!(&result, Ok(p) if p.failed == 0);
    audit_cli_run(config, &meta, &[format!("{dataset} --from {from} --to {to} --step")], at, started, succeeded).await;
    Ok(result?)
}

async fn cli_pipeline(config: &Config) -> Result<(Pipeline, Arc<MetaStore>), AppError> {
    let project = load_project(config).map_err(AppError::Specs)?;
    let core = Core::build(config, vec![]).await?;
    let meta = core.meta.clone();
    let pipeline = Pipeline::new(core.lake, core.engine, core.meta, core.coordinator, core.lock_ttl, project);
    pipeline.sync_datasets().await?;
    Ok((pipeline, meta))
}

/// Runs from the CLI are audited as the operating-system user.
async fn audit_cli_run(config: &Config, meta: &MetaStore, datasets: &[String], at: chrono::DateTime<chrono::Utc>, started: std::time::Instant, succeeded: bool) {
    if config.audit_queue.is_some() {
        let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
        let what = if datasets.is_empty() { "--all".to_string() } else { datasets.join(" ") };
        let record = crate::meta::AuditRecord {
            at,
            user_name: user,
            roles: String::new(),
            client_addr: None,
            application_name: Some("workbench run".into()),
            kind: "cli_run".into(),
            statement: Some(format!("workbench run {what}")),
            tables_read: None,
            rows_returned: None,
            duration_ms: Some(started.elapsed().as_millis() as i64),
            sqlstate: Some(if succeeded { "00000".into() } else { "XX000".into() }),
        };
        if let Err(err) = meta.record_audit(&[record]).await {
            tracing::warn!(%err, "cannot audit this run");
        }
    }
}

/// Ask run `run_id` to stop (see `cancel_run()`); returns its status when
/// asked ("running" when it will stop).
pub async fn cancel(config: &Config, run_id: &str) -> Result<String, AppError> {
    let core = Core::build(config, vec![]).await?;
    let by = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "workbench cancel".into());
    match core.meta.request_cancel(run_id, &by).await? {
        Some((status, _)) => Ok(status),
        None => Err(AppError::Pipeline(crate::pipeline::PipelineError::UnknownRun(run_id.to_string()))),
    }
}

/// `layer.table` as the maintenance commands name a table.
fn lake_table(name: &str) -> Result<(crate::storage::Layer, String), AppError> {
    let usage = || AppError::Usage(format!("'{name}' is not a table: name it layer.table, e.g. silver.gl_entries (layers: bronze, silver, gold)"));
    let (layer, table) = name.split_once('.').ok_or_else(usage)?;
    let layer = crate::storage::Layer::parse(layer).ok_or_else(usage)?;
    Ok((layer, table.to_string()))
}

/// `workbench optimize`: compact one table's files (Z-ordered by `zorder`
/// when given) in one commit; then a checkpoint.
pub async fn optimize(config: &Config, table: &str, zorder: &[String], target_bytes: Option<u64>) -> Result<crate::storage::Optimized, AppError> {
    let (layer, name) = lake_table(table)?;
    let lake = Lake::open(&config.lake, config.storage_options.clone())?;
    // A silver table whose spec says cluster_by is Z-ordered by it.
    let clustered: Vec<String> = match (zorder.is_empty(), layer) {
        (true, crate::storage::Layer::Silver) => load_project(config)
            .ok()
            .and_then(|project| project.dataset(&name).and_then(|d| d.silver.as_ref()).and_then(|s| s.cluster_by.clone()))
            .map(|c| c.value)
            .unwrap_or_default(),
        _ => zorder.to_vec(),
    };
    Ok(lake.optimize(layer, &name, &clustered, target_bytes).await?)
}

/// `workbench vacuum`: delete the files one table stopped using more than
/// `retain` ago (or, with `dry_run`, list them).
pub async fn vacuum(config: &Config, table: &str, retain: std::time::Duration, dry_run: bool) -> Result<crate::storage::Vacuumed, AppError> {
    let (layer, name) = lake_table(table)?;
    let lake = Lake::open(&config.lake, config.storage_options.clone())?;
    Ok(lake.vacuum(layer, &name, retain, dry_run).await?)
}

/// `workbench scheduler`: a Ballista scheduler for this lake, until `shutdown`.
pub async fn scheduler(config: &Config, options: crate::cluster::SchedulerOptions, shutdown: CancellationToken) -> Result<(), AppError> {
    let lake = Lake::open(&config.lake, config.storage_options.clone())?;
    Ok(crate::cluster::run_scheduler(&lake, options, shutdown).await?)
}

/// `workbench executor`: a Ballista executor for this lake, until `shutdown`.
pub async fn executor(config: &Config, options: crate::cluster::ExecutorOptions, shutdown: CancellationToken) -> Result<(), AppError> {
    let lake = Lake::open(&config.lake, config.storage_options.clone())?;
    Ok(crate::cluster::run_executor(&lake, options, shutdown).await?)
}

/// How `workbench query` runs its statements.
pub struct QueryOptions {
    /// Schema for unqualified names.
    pub schema: String,
    pub repeat: usize,
    /// Print each result as a table.
    pub print: bool,
}

/// Rows and wall time of one statement of `workbench query`.
#[derive(Debug, serde::Serialize)]
pub struct QueryTiming {
    pub name: String,
    pub rows: usize,
    pub seconds: Vec<f64>,
}

/// `workbench query`: run `statements` (name, SQL) in-process, with the
/// server's engine and settings, and time them.
/// `workbench status`: the scheduled datasets, their next slots and how
/// their last claimed slot went, as a table.
pub async fn status(config: &Config) -> Result<String, AppError> {
    let project = load_project(config).map_err(AppError::Specs)?;
    if project.datasets.iter().all(|d| d.schedule.is_none()) {
        return Ok(format!("no dataset in {} has a schedule\n", config.specs.display()));
    }
    let core = Core::build(config, vec![]).await?;
    let (engine, meta) = (core.engine.clone(), core.meta.clone());
    let pipeline = Arc::new(Pipeline::new(core.lake, core.engine, core.meta, core.coordinator, core.lock_ttl, project));
    let ctx = engine.session();
    crate::functions::register_schedules(&ctx, pipeline, meta).map_err(|e| AppError::Query(e.to_string()))?;
    let batches = ctx
        .sql(
            "SELECT dataset, schedule, timezone, catchup, next_slot, last_slot, last_status, last_run_id, last_error \
             FROM workbench.schedules ORDER BY dataset",
        )
        .await
        .map_err(|e| AppError::Query(e.to_string()))?
        .collect()
        .await
        .map_err(|e| AppError::Query(e.to_string()))?;
    let table = datafusion::arrow::util::pretty::pretty_format_batches(&batches).map_err(|e| AppError::Query(e.to_string()))?;
    Ok(format!("{table}\n"))
}

pub async fn query(config: &Config, statements: &[(String, String)], options: &QueryOptions) -> Result<Vec<QueryTiming>, AppError> {
    use futures::StreamExt;
    let core = Core::build(config, vec![]).await?;
    let ctx = core.engine.session();
    ctx.state_ref().write().config_mut().options_mut().catalog.default_schema = options.schema.clone();
    let mut timings = Vec::with_capacity(statements.len());
    for (name, sql) in statements {
        let mut timing = QueryTiming {
            name: name.clone(),
            rows: 0,
            seconds: Vec::with_capacity(options.repeat),
        };
        for run in 0..options.repeat {
            let started = std::time::Instant::now();
            let frame = ctx.sql(sql).await.map_err(|e| AppError::Query(format!("{name}: {e}")))?;
            let mut rows = 0;
            if options.print && run == 0 {
                let batches = frame.collect().await.map_err(|e| AppError::Query(format!("{name}: {e}")))?;
                rows = batches.iter().map(|b| b.num_rows()).sum();
                let table = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
                    .map_err(|e| AppError::Query(format!("{name}: {e}")))?;
                println!("{table}\n({rows} rows)");
            } else {
                let mut stream = frame.execute_stream().await.map_err(|e| AppError::Query(format!("{name}: {e}")))?;
                while let Some(batch) = stream.next().await {
                    rows += batch.map_err(|e| AppError::Query(format!("{name}: {e}")))?.num_rows();
                }
            }
            timing.seconds.push(started.elapsed().as_secs_f64());
            timing.rows = rows;
        }
        timings.push(timing);
    }
    Ok(timings)
}

/// A run report as a table for the terminal.
pub fn format_report(report: &RunReport) -> String {
    let mut out = match report.attempts {
        1 => format!("run {}\n", report.run_id),
        n => format!("run {} (attempt {n}: earlier attempts failed for a transient reason)\n", report.run_id),
    };
    out.push_str(&format!(
        "{:<8} {:<32} {:>10} {:>10} {:>9} {:<8} {:>8}  {}\n",
        "layer", "table", "rows_in", "rows_out", "rejected", "status", "ms", "note"
    ));
    for s in &report.steps {
        out.push_str(&format!(
            "{:<8} {:<32} {:>10} {:>10} {:>9} {:<8} {:>8}  {}\n",
            s.layer.as_str(),
            s.table,
            s.rows_in,
            s.rows_out,
            s.rows_rejected,
            s.status.as_str(),
            s.duration_ms,
            s.message.as_deref().unwrap_or("")
        ));
    }
    out
}

pub struct App {
    server: PgServer,
    addr: SocketAddr,
    lake: Arc<Lake>,
    engine: Arc<Engine>,
    pipeline: Option<Arc<Pipeline>>,
    /// Runs scheduled datasets; `None` without specs, without schedules or
    /// with `--no-scheduler`.
    scheduler: Option<crate::scheduler::Scheduler>,
    /// The HTTP API, when it listens.
    http: Option<(tokio::net::TcpListener, SocketAddr, crate::http::HttpState, Option<tokio_rustls::TlsAcceptor>)>,
}

impl App {
    pub async fn build(config: Config) -> Result<App, AppError> {
        let users = Arc::new(UserStore::new(
            config.users.iter().map(|u| (u.name.clone(), u.secret.clone())),
        ));
        // With trust auth anyone may connect; show the conventional role.
        let roles = if users.is_empty() { vec!["workbench".into()] } else { users.names() };
        let Core { lake, engine, meta, coordinator, lock_ttl } = Core::build(&config, roles).await?;
        let pipeline = if config.specs.is_dir() {
            match load_project(&config) {
                Ok(project) => {
                    for warning in inline_secret_warnings(&project) {
                        tracing::warn!("{warning}");
                    }
                    let pipeline = Arc::new(
                        Pipeline::new(lake.clone(), engine.clone(), meta.clone(), coordinator.clone(), lock_ttl, project)
                            .with_upload_limit(config.upload_max_bytes),
                    );
                    pipeline.sync_datasets().await?;
                    // Runs whose process died are marked abandoned at start
                    // and from then on, every lock_ttl.
                    let sweeper = pipeline.clone();
                    tokio::spawn(async move {
                        loop {
                            sweeper.abandon_silent_runs().await;
                            tokio::time::sleep(lock_ttl.max(std::time::Duration::from_secs(1))).await;
                        }
                    });
                    Some(pipeline)
                }
                Err(errors) => {
                    for error in &errors {
                        tracing::error!("{error}");
                    }
                    tracing::error!("specs not loaded; fix them (workbench check) and restart");
                    None
                }
            }
        } else {
            None
        };
        let policy = Arc::new(build_policy(&config, &lake, pipeline.as_ref().map(|p| p.project())).await?);
        let http_policy = policy.clone();
        let services = crate::functions::Services {
            lake: lake.clone(),
            meta: meta.clone(),
            engine: engine.clone(),
            pipeline: pipeline.clone(),
            policy: policy.clone(),
        };
        engine.with_template(|ctx| crate::functions::register(ctx, services));
        let auditor = config.audit_queue.map(|capacity| Auditor::start(meta.clone(), capacity, config.audit_retention));
        let tls = match &config.tls {
            Some(settings) => Some(crate::pg::Tls::load(&settings.cert, &settings.key, settings.mode)?),
            None => None,
        };
        // The HTTP API speaks only HTTPS when the wire has a certificate.
        let http_tls = match &config.tls {
            Some(settings) => Some(crate::http::tls::acceptor(&settings.cert, &settings.key)?),
            None => None,
        };
        // Config::build refuses this combination unless allow_plaintext is set.
        if config.allow_plaintext && tls.is_none() && !config.listen.ip().is_loopback() {
            tracing::warn!(addr = %config.listen, "allow_plaintext: serving a non-loopback address WITHOUT TLS; query results and metadata cross the network in clear");
        }
        let server = PgServer::bind(
            config.listen,
            engine.clone(),
            users,
            policy,
            auditor,
            ServerOptions {
                max_connections: config.max_connections,
                statement_timeout: config.statement_timeout,
                shutdown_timeout: config.shutdown_timeout,
                authentication_timeout: config.authentication_timeout,
                max_startup_connections: config.max_startup_connections,
                tls,
            },
        )
        .await
        .map_err(|source| AppError::Listen {
            addr: config.listen,
            source,
        })?;
        let addr = server.local_addr().map_err(AppError::Serve)?;
        let http_state = crate::http::HttpState {
            meta: meta.clone(),
            coordinator: coordinator.clone(),
            lake: lake.clone(),
            engine: engine.clone(),
            policy: http_policy,
            users: Arc::new(config.users.clone()),
            pipeline: pipeline.clone(),
            upload_limit: config.upload_max_bytes,
            https: http_tls.is_some(),
            sessions: Default::default(),
        };
        let http = match config.http {
            crate::config::HttpListen::Off => None,
            crate::config::HttpListen::Explicit(at) => {
                let listener = crate::http::bind(at).await.map_err(|source| AppError::Listen { addr: at, source })?;
                let bound = listener.local_addr().map_err(AppError::Serve)?;
                Some((listener, bound, http_state, http_tls))
            }
            crate::config::HttpListen::Default(at) => match crate::http::bind(at).await {
                Ok(listener) => {
                    let bound = listener.local_addr().map_err(AppError::Serve)?;
                    Some((listener, bound, http_state, http_tls))
                }
                Err(err) => {
                    tracing::warn!(%at, %err, "the HTTP API (health, readiness, metrics) is not served: its default address is taken; set --http-listen ADDR (or off)");
                    None
                }
            },
        };
        let scheduler = pipeline
            .clone()
            .and_then(|pipeline| crate::scheduler::Scheduler::new(pipeline, meta.clone()));
        Ok(App {
            server,
            addr,
            lake,
            engine,
            pipeline,
            scheduler,
            http,
        })
    }

    /// Where the HTTP API listens, when it does.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|(_, addr, _, _)| *addr)
    }

    /// The address the server listens on (resolves port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn lake(&self) -> &Arc<Lake> {
        &self.lake
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn backends(&self) -> Arc<Backends> {
        self.server.backends()
    }

    /// Serve without running scheduled datasets (`serve --no-scheduler`).
    pub fn without_scheduler(mut self) -> App {
        self.scheduler = None;
        self
    }

    /// Serve until `shutdown` fires, then shut down gracefully.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), AppError> {
        tracing::info!(addr = %self.addr, lake = %self.lake.root(), "workbench listening");
        if let Some(scheduler) = self.scheduler.take() {
            tokio::spawn(scheduler.run(shutdown.clone()));
        }
        if let Some((listener, addr, state, tls)) = self.http.take() {
            let scheme = if tls.is_some() { "https" } else { "http" };
            tracing::info!(%addr, scheme, "HTTP API listening (/health, /ready, /metrics, /api, console)");
            let stop = shutdown.clone();
            tokio::spawn(async move {
                if let Err(err) = crate::http::serve(listener, state, tls, stop).await {
                    tracing::error!(%err, "the HTTP API stopped");
                }
            });
        }
        let mut captures = Vec::new();
        if let Some(pipeline) = &self.pipeline {
            // Tables served from memory: loaded now, and again at each new version.
            let memory = self.engine.memory_tables().clone();
            memory.keep(pipeline.tables_in_memory());
            let (lake, stop) = (self.lake.clone(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    memory.refresh(&lake).await;
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    }
                }
            });
        }
        if let Some(pipeline) = self.pipeline.clone() {
            // Datasets copied from a database's change stream: one capture
            // each, running as long as the server does.
            for dataset in pipeline.captured_datasets() {
                tracing::info!(%dataset, "starting change data capture");
                captures.push(tokio::spawn(pipeline.clone().keep_capturing(dataset, shutdown.clone())));
            }
            // First start on a fresh lake: build what is missing, in the background.
            tokio::spawn(async move {
                let captured = pipeline.captured_datasets();
                let missing: Vec<String> = pipeline.unbuilt().await.into_iter().filter(|d| !captured.contains(d)).collect();
                if missing.is_empty() {
                    return;
                }
                tracing::info!(datasets = ?missing, "building datasets whose tables do not exist yet");
                let options = RunOptions {
                    trigger: "startup".into(),
                    ..Default::default()
                };
                match pipeline.run(&missing, &options).await {
                    Ok(report) => match &report.error {
                        None => tracing::info!(run_id = %report.run_id, "initial build done"),
                        Some(error) => tracing::error!(run_id = %report.run_id, %error, "initial build failed"),
                    },
                    Err(err) => tracing::error!(%err, "initial build failed"),
                }
            });
        }
        let served = self.server.run(shutdown).await.map_err(AppError::Serve);
        for capture in captures {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(15), capture).await;
        }
        served
    }
}
