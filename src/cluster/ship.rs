//! Which queries go to the cluster, and the plan they go as.
//!
//! A query goes when everything it reads is a lake table the cluster can
//! read as the server would, and everything it calls is a function the
//! executors have. What stays on the server: catalog queries
//! (`pg_catalog`, `information_schema`, `workbench.*`), table functions,
//! time travel, tables under a row filter (their barrier is a server-side
//! plan node), session functions (`current_user`, privileges, comments),
//! Delta tables with partitions or reader features our writer never uses,
//! and — unless the session asks for the cluster — queries that read less
//! than `cluster.min_scan_bytes` of files.
//!
//! The plan is the query as the server analysed it (views inlined,
//! masks applied, types coerced), with each lake table replaced by a
//! Parquet listing of exactly the files of the Delta version the server
//! resolved: the executors read the same snapshot without reading the
//! Delta log, and a commit landing meanwhile changes nothing.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::datasource::{TableProvider, provider_as_source, source_as_provider};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Expr, LogicalPlan};

use crate::engine::LakeTable;

/// Where a query runs.
#[derive(Debug)]
pub enum Route {
    /// On the server, and why.
    Local(String),
    /// On the cluster, as this plan.
    Cluster(Shipment),
}

#[derive(Debug)]
pub struct Shipment {
    pub plan: LogicalPlan,
    /// Bytes of lake files the query may read.
    pub bytes: u64,
    pub files: usize,
}

/// Decide where `plan` runs; `min_bytes` is the threshold (0 when the
/// session asked for the cluster).
pub fn route(state: &SessionState, plan: &LogicalPlan, functions: &HashSet<String>, min_bytes: u64) -> Result<Route> {
    let analyzed = state.analyzer().execute_and_check(plan.clone(), state.config_options(), |_, _| {})?;
    let mut refusal: Option<String> = None;
    let mut bytes = 0u64;
    let mut files = 0usize;
    analyzed.apply_with_subqueries(|node| {
        let verdict = check_node(node, functions, &mut bytes, &mut files)?;
        if let Some(reason) = verdict {
            refusal = Some(reason);
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if let Some(reason) = refusal {
        return Ok(Route::Local(reason));
    }
    if bytes < min_bytes {
        return Ok(Route::Local(format!("reads {bytes} bytes, under cluster.min_scan_bytes ({min_bytes})")));
    }
    let plan = analyzed
        .transform_up_with_subqueries(|node| match node {
            LogicalPlan::TableScan(mut scan) => {
                let provider = source_as_provider(&scan.source).ok();
                let Some(lake) = provider.as_ref().and_then(|p| p.downcast_ref::<LakeTable>()) else {
                    return Ok(Transformed::no(LogicalPlan::TableScan(scan)));
                };
                let listing = listing(lake, state)?;
                scan.source = provider_as_source(Arc::new(listing));
                Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
            }
            other => Ok(Transformed::no(other)),
        })?
        .data;
    Ok(Route::Cluster(Shipment { plan, bytes, files }))
}

/// `None` when the cluster can run `node`; otherwise why not.
fn check_node(node: &LogicalPlan, functions: &HashSet<String>, bytes: &mut u64, files: &mut usize) -> Result<Option<String>> {
    match node {
        LogicalPlan::TableScan(scan) => {
            let provider = source_as_provider(&scan.source).ok();
            let Some(lake) = provider.as_ref().and_then(|p| p.downcast_ref::<LakeTable>()) else {
                return Ok(Some(format!("reads {}, which only the server can read", scan.table_name)));
            };
            if lake.in_memory() {
                return Ok(Some(format!("reads {}, which this server holds in memory", scan.table_name)));
            }
            match lake_files(lake) {
                Ok((count, size)) => {
                    *files += count;
                    *bytes += size;
                }
                Err(reason) => return Ok(Some(reason)),
            }
        }
        LogicalPlan::Extension(_)
        | LogicalPlan::Dml(_)
        | LogicalPlan::Ddl(_)
        | LogicalPlan::Copy(_)
        | LogicalPlan::Statement(_)
        | LogicalPlan::Explain(_)
        | LogicalPlan::Analyze(_)
        | LogicalPlan::DescribeTable(_)
        | LogicalPlan::RecursiveQuery(_) => {
            return Ok(Some(format!("{} runs on the server", node.display())));
        }
        _ => {}
    }
    let mut unknown = None;
    node.apply_expressions(|expr| {
        expr.apply(|e| {
            let name = match e {
                Expr::ScalarFunction(call) => call.func.name(),
                Expr::AggregateFunction(call) => call.func.name(),
                Expr::WindowFunction(call) => call.fun.name(),
                _ => return Ok(TreeNodeRecursion::Continue),
            };
            if functions.contains(name) {
                return Ok(TreeNodeRecursion::Continue);
            }
            unknown = Some(name.to_string());
            Ok(TreeNodeRecursion::Stop)
        })
    })?;
    Ok(unknown.map(|name| format!("calls {name}(), which only the server has")))
}

/// Files and bytes of the version `lake` reads, or why the cluster cannot
/// read it as Delta would.
fn lake_files(lake: &LakeTable) -> std::result::Result<(usize, u64), String> {
    let name = format!("{}.{}", lake.layer(), lake.name());
    let state = lake.delta().snapshot().map_err(|e| format!("{name}: {e}"))?;
    if !state.metadata().partition_columns().is_empty() {
        return Err(format!("{name} is partitioned"));
    }
    if state.protocol().min_reader_version() > 1
        && state.protocol().reader_features().is_some_and(|features| !features.is_empty())
    {
        return Err(format!("{name} uses Delta reader features (deletion vectors, column mapping)"));
    }
    let log = state.log_data();
    if log.num_files() == 0 {
        return Err(format!("{name} has no files"));
    }
    let size = log.iter().map(|f| f.size() as u64).sum();
    Ok((log.num_files(), size))
}

/// A Parquet listing of exactly the files of the version `lake` reads.
fn listing(lake: &LakeTable, state: &SessionState) -> Result<ListingTable> {
    let delta = lake.delta();
    let snapshot = delta.snapshot().map_err(|e| DataFusionError::External(Box::new(e)))?;
    let root = delta.table_url().clone();
    let mut root = root;
    if !root.path().ends_with('/') {
        root.set_path(&format!("{}/", root.path()));
    }
    let urls = snapshot
        .log_data()
        .iter()
        .map(|file| {
            let url = root
                .join(file.path().as_ref())
                .map_err(|e| DataFusionError::Plan(format!("file {} of {}: {e}", file.path(), lake.name())))?;
            ListingTableUrl::parse(url.as_str())
        })
        .collect::<Result<Vec<_>>>()?;
    let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
    let options = ListingOptions::new(Arc::new(format)).with_file_extension(".parquet");
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .with_schema(lake.schema());
    ListingTable::try_new(config)
}
