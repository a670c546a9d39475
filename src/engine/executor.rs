//! Where statements run. Every statement a client sends is planned and
//! executed on the query runtime, never on the runtime that serves the
//! connections: that one only reads messages and writes results, so a
//! CPU-heavy query (over the lake or not) cannot keep other clients from
//! being answered, nor a shutdown from being heard.
//!
//! There are two query runtimes, both with deep-stacked threads (generated
//! SQL with expressions thousands of terms deep plans and runs; deeper is
//! refused before planning, see `pg::depth`):
//! - the statements runtime parses and plans every statement and runs those
//!   that read no lake table (catalog queries, `SELECT 1`, generated series).
//!   It has more worker threads than cores: a statement that computes for a
//!   long time without yielding holds one worker, the others still take new
//!   statements, and the operating system shares the cores between them;
//! - the lake runtime runs the plans that scan bronze, silver or gold, with
//!   one worker per core: their partitions keep the cores busy without
//!   threads contending for them (8 workers on 2 cores made TPC-H ~10% slower
//!   over the wire), and a long scan never delays a catalog query. Its
//!   threads run at a lower CPU priority (`scan_nice`, 10 unless configured):
//!   when both runtimes want the cores, planning and catalog queries get
//!   them first; alone, a scan still has all of them.
//!
//! Results come back, already encoded for the wire by the query's task,
//! through a small bounded channel: sending rows and scanning the next ones
//! overlap, and a slow client slows the scan instead of piling up batches.
//! Dropping the stream (client gone, query cancelled, timeout, shutdown)
//! aborts the query's task.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, Ordering};
use std::task::{Context, Poll};

use datafusion::arrow::array::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::DataFrame;
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};

use crate::cluster::{Cluster, Placement};
use crate::storage::Layer;

/// Batches in flight between the scan and the consumer.
const IN_FLIGHT: usize = 2;

/// Stack of each query thread. Only the pages a statement touches are
/// committed; the reservation lets DataFusion's recursive rewrites plan
/// deep expression trees.
pub const QUERY_STACK_BYTES: usize = 256 << 20;

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn runtime(name: &str, workers: usize, nice: i32) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.worker_threads(workers).thread_stack_size(QUERY_STACK_BYTES).thread_name(name).enable_all();
    if nice != 0 {
        // Every thread of the runtime, its workers and its blocking pool.
        builder.on_thread_start(move || lower_priority(nice));
    }
    builder.build().expect("start a query runtime")
}

/// The nice value the lake runtime's threads take; read when the runtime
/// starts (the first lake query).
static SCAN_NICE: AtomicI32 = AtomicI32::new(0);

/// Run lake scans at nice `nice` (0-19, `scan_nice` in the config); called
/// when the server starts, before its first query.
pub fn set_scan_nice(nice: i32) {
    SCAN_NICE.store(nice, Ordering::Relaxed);
}

/// Give the calling thread the nice value `nice` (Linux keeps one per
/// thread). Raising a nice value needs no privilege, so this only fails on a
/// system without per-thread priorities, which is said once.
fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    let failed = {
        // SAFETY: gettid and setpriority take and return plain integers.
        let tid = unsafe { libc::gettid() };
        (unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) } != 0).then(std::io::Error::last_os_error)
    };
    #[cfg(not(target_os = "linux"))]
    let failed = Some(std::io::Error::new(std::io::ErrorKind::Unsupported, "per-thread priorities are Linux-only"));
    if let Some(err) = failed {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| tracing::warn!(nice, error = %err, "lake scans run at the ordinary priority: scan_nice could not be applied"));
    }
}

/// Parsing, planning, and statements that read no lake table.
fn statements() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| runtime("workbench-statement", (4 * cores()).max(8), 0))
}

/// Plans that scan lake tables.
fn lake() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| runtime("workbench-scan", cores(), SCAN_NICE.load(Ordering::Relaxed)))
}

/// Whether `plan` reads a lake table (directly, in a view or a subquery).
fn reads_lake(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && scan
                .table_name
                .schema()
                .is_some_and(|schema| Layer::ALL.iter().any(|layer| layer.as_str() == schema))
        {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// Run `work` (parsing, planning) on the statements runtime and wait for it. Dropping the returned
/// future aborts the work at its next await point; a panic in it becomes an
/// error of this statement only.
pub async fn off_connection<T: Send + 'static>(
    what: &'static str,
    work: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    run_on(statements(), what, work).await
}

/// Run `work` (a background read of lake tables, such as loading a table
/// into memory) on the lake runtime, beside the queries' scans and never on
/// the connections' threads, and wait for it; a panic in it is an error.
pub async fn on_lake<T: Send + 'static>(what: &'static str, work: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
    run_on(lake(), what, work).await
}

async fn run_on<T: Send + 'static>(
    runtime: &'static tokio::runtime::Runtime,
    what: &'static str,
    work: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    let task = runtime.spawn(AssertUnwindSafe(work).catch_unwind());
    let _abort = AbortOnDrop(task.abort_handle());
    match task.await {
        Ok(Ok(result)) => result,
        Ok(Err(panic)) => {
            let message = panic_message(&panic);
            tracing::error!(panic = %message, "query panicked while {what}");
            Err(DataFusionError::Execution(format!(
                "internal error while {what} ({message}); the query was aborted"
            )))
        }
        Err(err) => Err(DataFusionError::Execution(format!("the query stopped while {what}: {err}"))),
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Start `frame` on its query runtime (or, for a lake query, on the
/// session's cluster when `placement` allows); each batch is turned into a
/// `T` by `finish` in the query's own task, where the batch was just made
/// (still in that core's cache: encoding rows for the wire there instead of
/// on the connection's thread costs ~6% less CPU per row streamed,
/// PROFILES.md), and arrives through the stream. A panic in `finish` ends the
/// query with an error, as one in the plan does.
pub async fn execute<T: Send + 'static>(
    frame: DataFrame,
    placement: Placement,
    finish: impl Fn(RecordBatch) -> T + Send + Sync + 'static,
) -> Result<Remote<T>> {
    let reads_lake = reads_lake(frame.logical_plan());
    let runtime = if reads_lake { lake() } else { statements() };
    let cluster = (reads_lake && placement != Placement::Local)
        .then(|| frame.task_ctx().session_config().get_extension::<Cluster>())
        .flatten();
    let (results_tx, results) = mpsc::channel(IN_FLIGHT);
    let (started_tx, started) = oneshot::channel();
    let task = runtime.spawn(async move {
        let run = AssertUnwindSafe(async {
            let started = match cluster {
                Some(cluster) => cluster.execute(frame, placement).await,
                None => frame.execute_stream().await,
            };
            let mut stream = match started {
                Ok(stream) => {
                    let _ = started_tx.send(Ok(()));
                    stream
                }
                Err(err) => {
                    let _ = started_tx.send(Err(err));
                    return;
                }
            };
            while let Some(batch) = stream.next().await {
                let failed = batch.is_err();
                if results_tx.send(batch.map(&finish)).await.is_err() || failed {
                    return; // the consumer is gone, or the query failed
                }
            }
        });
        if let Err(panic) = run.catch_unwind().await {
            let message = panic_message(&panic);
            tracing::error!(panic = %message, "query panicked while scanning");
            // Started or not, the consumer hears about it (planning or rows).
            let _ = results_tx.send(Err(DataFusionError::Execution(format!("internal error while executing the query ({message}); the query was aborted")))).await;
        }
    });
    let mut stream = Remote { results, task: task.abort_handle() };
    match started.await {
        Ok(Ok(())) => Ok(stream),
        Ok(Err(err)) => Err(err),
        // The task ended before starting the query: it panicked.
        Err(_) => match stream.results.recv().await {
            Some(Err(err)) => Err(err),
            _ => Err(DataFusionError::Execution("the query stopped before it started".into())),
        },
    }
}

/// What a caught panic said.
pub fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// The batches of a query running on the scan runtime.
/// The results of a query running on its runtime; dropping it aborts the query.
pub struct Remote<T> {
    results: mpsc::Receiver<Result<T>>,
    task: tokio::task::AbortHandle,
}

impl<T> Stream for Remote<T> {
    type Item = Result<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.results.poll_recv(cx)
    }
}

impl<T> Drop for Remote<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}
