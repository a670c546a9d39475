//! The two processes of a cluster, embedding Ballista's own scheduler and
//! executor: `workbench scheduler` plans each query into stages and hands
//! their tasks out; `workbench executor` runs them and serves their results.
//! Both know Workbench's functions and codecs and, for a lake on object
//! storage, how to reach its bucket (from the same config file as `serve`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ballista_core::extension::SessionConfigExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::utils::default_session_builder;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use object_store::ObjectStore;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::codec::{LogicalCodec, PhysicalCodec};
use super::{ClusterError, shared_functions};
use crate::storage::Lake;

/// `workbench scheduler`.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    pub listen: SocketAddr,
    /// The host name executors and servers reach it by.
    pub external_host: Option<String>,
    /// An executor silent this long is dead: its tasks run elsewhere.
    pub executor_timeout: Duration,
}

/// `workbench executor`.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// `HOST:PORT` of `workbench scheduler`.
    pub scheduler: String,
    /// Address of its Arrow Flight service (results and shuffles).
    pub listen: SocketAddr,
    /// Port of its gRPC service (tasks from the scheduler).
    pub grpc_port: u16,
    /// The host name the scheduler and servers reach it by.
    pub external_host: Option<String>,
    /// Tasks it runs at once [default: cores].
    pub concurrency: usize,
    /// Where shuffle files go [default: a temporary directory].
    pub work_dir: Option<PathBuf>,
    /// How often it tells the scheduler it is alive.
    pub heartbeat: Duration,
    /// Memory its tasks may use together before spilling (bytes).
    pub memory_limit: Option<u64>,
}

/// The lake's bucket, for the runtimes that read its files.
fn bucket(lake: &Lake) -> Result<Option<(Url, Arc<dyn ObjectStore>)>, ClusterError> {
    lake.bucket_store().map_err(|e| ClusterError::Setup(e.to_string()))
}

fn session_config() -> SessionConfig {
    SessionConfig::new_with_ballista()
        .with_ballista_logical_extension_codec(Arc::new(LogicalCodec::default()))
        .with_ballista_physical_extension_codec(Arc::new(PhysicalCodec::default()))
}

/// Run a scheduler until `shutdown`.
pub async fn run_scheduler(lake: &Lake, options: SchedulerOptions, shutdown: CancellationToken) -> Result<(), ClusterError> {
    let bucket = bucket(lake)?;
    let session_builder: ballista_scheduler::scheduler_server::SessionBuilder = Arc::new(move |config: SessionConfig| {
        let state = default_session_builder(config)?;
        if let Some((url, store)) = &bucket {
            state.runtime_env().register_object_store(url, store.clone());
        }
        let ctx = SessionContext::new_with_state(state);
        for udf in shared_functions() {
            ctx.register_udf(udf);
        }
        Ok(ctx.state())
    });
    let timeout = options.executor_timeout.as_secs().max(2);
    let config = SchedulerConfig {
        bind_host: options.listen.ip().to_string(),
        bind_port: options.listen.port(),
        external_host: options.external_host.clone().unwrap_or_else(|| options.listen.ip().to_string()),
        executor_timeout_seconds: timeout,
        expire_dead_executor_interval_seconds: (timeout / 3).max(1),
        no_executors_grace_period_seconds: timeout,
        override_session_builder: Some(session_builder),
        override_config_producer: Some(Arc::new(session_config)),
        override_logical_codec: Some(Arc::new(LogicalCodec::default())),
        override_physical_codec: Some(Arc::new(PhysicalCodec::default())),
        ..SchedulerConfig::default()
    };
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| ClusterError::Setup(e.to_string()))?;
    tracing::info!(listen = %options.listen, "Ballista scheduler starting");
    tokio::select! {
        served = ballista_scheduler::scheduler_process::start_server(cluster, options.listen, Arc::new(config)) => {
            served.map_err(|e| ClusterError::Setup(format!("the scheduler on {}: {e}", options.listen)))
        }
        _ = shutdown.cancelled() => Ok(()),
    }
}

/// Run an executor until `shutdown` (or the scheduler tells it to stop).
pub async fn run_executor(lake: &Lake, options: ExecutorOptions, shutdown: CancellationToken) -> Result<(), ClusterError> {
    let bucket = bucket(lake)?;
    let (scheduler_host, scheduler_port) = options
        .scheduler
        .trim_start_matches("df://")
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host.to_string(), port.parse::<u16>().ok()?)))
        .ok_or_else(|| ClusterError::Setup(format!("--scheduler {}: expected HOST:PORT", options.scheduler)))?;
    let work_dir = options.work_dir.clone();
    let runtime: ballista_core::RuntimeProducer = Arc::new(move |_config: &SessionConfig| {
        let mut builder = RuntimeEnvBuilder::new();
        if let Some(dir) = &work_dir {
            builder = builder.with_temp_file_path(dir.clone());
        }
        let runtime = builder.build()?;
        if let Some((url, store)) = &bucket {
            runtime.register_object_store(url, store.clone());
        }
        Ok(Arc::new(runtime))
    });
    let mut functions = BallistaFunctionRegistry::default();
    for udf in shared_functions() {
        functions.scalar_functions.insert(udf.name().to_string(), Arc::new(udf));
    }
    let config = ExecutorProcessConfig {
        bind_host: options.listen.ip().to_string(),
        port: options.listen.port(),
        grpc_port: options.grpc_port,
        external_host: options.external_host.clone(),
        scheduler_host,
        scheduler_port,
        // Started before the scheduler (or while it restarts): keep trying.
        scheduler_connect_timeout_seconds: 60,
        vcores: options.concurrency,
        work_dir: options.work_dir.as_ref().map(|d| d.display().to_string()),
        executor_heartbeat_interval_seconds: options.heartbeat.as_secs().max(1),
        memory_pool_size: options.memory_limit,
        print_thread_info: false,
        override_function_registry: Some(Arc::new(functions)),
        override_runtime_producer: Some(runtime),
        override_config_producer: Some(Arc::new(session_config)),
        override_logical_codec: Some(Arc::new(LogicalCodec::default())),
        override_physical_codec: Some(Arc::new(PhysicalCodec::default())),
        ..ExecutorProcessConfig::default()
    };
    tracing::info!(listen = %options.listen, grpc_port = options.grpc_port, scheduler = %options.scheduler, "Ballista executor starting");
    tokio::select! {
        ran = start_executor_process(Arc::new(config)) => {
            ran.map_err(|e| ClusterError::Setup(format!("the executor on {}: {e}", options.listen)))
        }
        _ = shutdown.cancelled() => Ok(()),
    }
}
