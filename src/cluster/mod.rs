//! Queries bigger than one machine, on Apache DataFusion Ballista: the same
//! DataFusion 55 the server plans with, split into stages that executors
//! run in parallel and exchange through shuffles.
//!
//! With `cluster:` in the config, a lake query goes to the cluster when it
//! can ([`ship`]: it reads only lake tables and calls only functions the
//! executors have) and is worth it (it reads at least
//! `cluster.min_scan_bytes`, unless the session says
//! `SET workbench.execution = 'cluster'`). Catalog queries, small queries
//! and what only the server can answer stay here.
//!
//! When the cluster cannot answer (scheduler down, an executor lost beyond
//! what Ballista retries, a plan it refuses), the query runs on the server
//! instead (`cluster.fallback: local`, the default; counted in
//! `workbench_cluster_queries_total{outcome="fallback"}`), or fails with
//! SQLSTATE 58000 (`fallback: error`, or a session that asked for the
//! cluster). Either way the server keeps serving; a scheduler that could
//! not be reached at all is left alone for 10 seconds (`auto` sessions run
//! their lake queries here meanwhile), then the next query connects afresh.

mod codec;
mod nodes;
mod ship;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ballista_core::extension::{SessionConfigExt, SessionStateExt};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SessionState;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{LogicalPlan, ScalarUDF};
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::DataFrame;
use futures::StreamExt;

pub use codec::{LogicalCodec, PhysicalCodec};
pub use nodes::{ExecutorOptions, SchedulerOptions, run_executor, run_scheduler};

use crate::config::ClusterSettings;

/// Where a session's lake queries run (`SET workbench.execution`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// On the cluster when configured and the query is large enough.
    #[default]
    Auto,
    /// Always on the server.
    Local,
    /// On the cluster whatever their size; a failure there is an error.
    Cluster,
}

impl Placement {
    pub fn parse(text: &str) -> Option<Placement> {
        match text.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(Placement::Auto),
            "local" => Some(Placement::Local),
            "cluster" => Some(Placement::Cluster),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The cluster could not answer the query.
    #[error(
        "the Ballista cluster at {scheduler} could not run this query: {reason}; \
         run it on the server with SET workbench.execution = 'local'"
    )]
    Failed { scheduler: String, reason: String },
    /// A scheduler or executor could not start.
    #[error("{0}")]
    Setup(String),
}

/// The functions the server and every executor have alike, beyond
/// DataFusion's own: what a shipped plan may call by name.
pub fn shared_functions() -> Vec<ScalarUDF> {
    let mut functions = workbench_udfs::all();
    functions.push(workbench_udfs::pg::version(crate::engine::version_string()));
    if let Some(builtin) = datafusion::functions_nested::all_default_nested_functions()
        .into_iter()
        .find(|f| f.name() == "array_to_string")
    {
        functions.push(workbench_udfs::pg::null_tolerant(builtin.as_ref().clone()));
    }
    functions
}

/// The cluster a server sends lake queries to; each session holds it as a
/// config extension.
#[derive(Debug)]
pub struct Cluster {
    settings: ClusterSettings,
    /// Functions a shipped plan may call: the executors' (by name) and the
    /// masks (which travel with their parameters).
    functions: HashSet<String>,
    /// Until when `auto` sessions skip a scheduler that could not be
    /// reached, instead of each waiting for its connection to fail.
    unreachable_until: Mutex<Option<Instant>>,
}

/// How long a scheduler that could not be reached is left alone.
const UNREACHABLE_PAUSE: Duration = Duration::from_secs(10);
/// How long the server waits to connect to the scheduler.
const CONNECT_TIMEOUT_SECONDS: &str = "5";

/// Whether a failure was the scheduler not answering at all (rather than a
/// job failing on it).
fn unreachable(err: &DataFusionError) -> bool {
    let text = err.to_string();
    ["transport error", "tcp connect", "Connection refused", "ConnectError", "timed out"]
        .iter()
        .any(|needle| text.contains(needle))
}

impl Cluster {
    pub fn new(settings: ClusterSettings) -> Cluster {
        let mut functions: HashSet<String> = datafusion::functions::all_default_functions()
            .into_iter()
            .chain(datafusion::functions_nested::all_default_nested_functions())
            .map(|f| f.name().to_string())
            .collect();
        functions.extend(shared_functions().iter().map(|f| f.name().to_string()));
        // Aggregates and window functions: DataFusion's, which every node has.
        functions.extend(datafusion::functions_aggregate::all_default_aggregate_functions().iter().map(|f| f.name().to_string()));
        functions.extend(datafusion::functions_window::all_default_window_functions().iter().map(|f| f.name().to_string()));
        functions.extend(["wb_mask_hash".to_string(), "wb_mask_partial".to_string()]);
        Cluster {
            settings,
            functions,
            unreachable_until: Mutex::new(None),
        }
    }

    pub fn scheduler(&self) -> &str {
        &self.settings.scheduler
    }

    /// Run `frame` (which reads the lake) where it belongs.
    pub async fn execute(&self, frame: DataFrame, placement: Placement) -> Result<SendableRecordBatchStream> {
        let (state, plan) = frame.into_parts();
        let threshold = if placement == Placement::Cluster { 0 } else { self.settings.min_scan_bytes };
        let shipment = match ship::route(&state, &plan, &self.functions, threshold)? {
            ship::Route::Local(reason) => {
                tracing::debug!(%reason, "query runs on the server");
                return DataFrame::new(state, plan).execute_stream().await;
            }
            ship::Route::Cluster(shipment) => shipment,
        };
        let paused = self.unreachable_until.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|until| Instant::now() < until);
        if paused && placement == Placement::Auto && self.settings.fallback_local {
            crate::metrics::cluster_query("fallback");
            return DataFrame::new(state, plan).execute_stream().await;
        }
        tracing::info!(files = shipment.files, bytes = shipment.bytes, scheduler = %self.settings.scheduler, "query sent to the cluster");
        let result = self.remote(&state, shipment.plan).await;
        *self.unreachable_until.lock().unwrap_or_else(|p| p.into_inner()) = match &result {
            Err(err) if unreachable(err) => Some(Instant::now() + UNREACHABLE_PAUSE),
            _ => None,
        };
        match result {
            Ok(stream) => {
                crate::metrics::cluster_query("cluster");
                Ok(stream)
            }
            Err(err) if placement == Placement::Auto && self.settings.fallback_local => {
                tracing::warn!(error = %err, scheduler = %self.settings.scheduler, "the cluster failed the query; running it on the server");
                crate::metrics::cluster_query("fallback");
                DataFrame::new(state, plan).execute_stream().await
            }
            Err(err) => {
                crate::metrics::cluster_query("failed");
                Err(DataFusionError::External(Box::new(ClusterError::Failed {
                    scheduler: self.settings.scheduler.clone(),
                    reason: err.to_string(),
                })))
            }
        }
    }

    /// Submit `plan` and wait for its first rows: a job that fails fails
    /// here, before anything reached the client.
    async fn remote(&self, state: &SessionState, plan: LogicalPlan) -> Result<SendableRecordBatchStream> {
        let mut config = state
            .config()
            .clone()
            .upgrade_for_ballista()
            .with_ballista_logical_extension_codec(Arc::new(LogicalCodec::default()))
            .with_ballista_physical_extension_codec(Arc::new(PhysicalCodec::default()));
        config
            .options_mut()
            .set("ballista.client.grpc_connect_timeout_seconds", CONNECT_TIMEOUT_SECONDS)?;
        let state = SessionStateBuilder::new_from_existing(state.clone())
            .with_config(config)
            .build()
            .upgrade_for_ballista(self.settings.scheduler.clone())?;
        let mut stream = DataFrame::new(state, plan).execute_stream().await?;
        let schema = stream.schema();
        match stream.next().await {
            Some(Err(err)) => Err(err),
            Some(Ok(first)) => Ok(Box::pin(RecordBatchStreamAdapter::new(
                schema,
                futures::stream::once(async move { Ok(first) }).chain(stream),
            ))),
            None => Ok(Box::pin(RecordBatchStreamAdapter::new(schema, futures::stream::empty()))),
        }
    }
}
