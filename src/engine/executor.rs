//! Where queries run. A query that reads lake tables (bronze, silver, gold)
//! is CPU-bound for as long as it scans; it runs on a runtime of its own, so
//! the connections' runtime stays free for accepting clients, writing
//! results to sockets and answering the small queries BI tools send while
//! browsing (catalog lookups, `SHOW`, `version()`): those never queue behind
//! a scan, and the operating system shares the cores between the two.
//!
//! Results come back through a small bounded channel: scanning and encoding
//! rows for the wire overlap, and a slow client slows the scan instead of
//! piling up batches. Dropping the stream (client gone, query cancelled)
//! stops the query.

use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::RecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::prelude::DataFrame;
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};

use crate::storage::Layer;

/// Batches in flight between the scan and the consumer.
const IN_FLIGHT: usize = 2;

fn scans() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("workbench-scan")
            .enable_all()
            .build()
            .expect("start the query runtime")
    })
}

/// Whether `plan` reads a lake table (directly, in a view or a subquery).
pub fn reads_lake(plan: &LogicalPlan) -> bool {
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

/// Start `frame`: on the scan runtime when it reads the lake, here otherwise.
pub async fn execute(frame: DataFrame) -> Result<SendableRecordBatchStream> {
    if !reads_lake(frame.logical_plan()) {
        return frame.execute_stream().await;
    }
    let schema: SchemaRef = std::sync::Arc::new(frame.schema().as_arrow().clone());
    let (batches_tx, batches) = mpsc::channel(IN_FLIGHT);
    let (started_tx, started) = oneshot::channel();
    let task = scans().spawn(async move {
        let run = AssertUnwindSafe(async {
            let mut stream = match frame.execute_stream().await {
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
                if batches_tx.send(batch).await.is_err() || failed {
                    return; // the consumer is gone, or the query failed
                }
            }
        });
        if let Err(panic) = run.catch_unwind().await {
            let message = panic_message(&panic);
            tracing::error!(panic = %message, "query panicked while scanning");
            // Started or not, the consumer hears about it (planning or rows).
            let _ = batches_tx.send(Err(DataFusionError::Execution(format!("internal error while executing the query ({message}); the query was aborted")))).await;
        }
    });
    let stream = Remote {
        schema,
        batches,
        task: task.abort_handle(),
    };
    match started.await {
        Ok(Ok(())) => Ok(Box::pin(stream)),
        Ok(Err(err)) => Err(err),
        // The task ended before starting the query: it panicked.
        Err(_) => {
            let mut stream = stream;
            match stream.batches.recv().await {
                Some(Err(err)) => Err(err),
                _ => Err(DataFusionError::Execution("the query stopped before it started".into())),
            }
        }
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
struct Remote {
    schema: SchemaRef,
    batches: mpsc::Receiver<Result<RecordBatch>>,
    task: tokio::task::AbortHandle,
}

impl Stream for Remote {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.batches.poll_recv(cx)
    }
}

impl RecordBatchStream for Remote {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.task.abort();
    }
}
