//! The process's Prometheus metrics, served at `GET /metrics` (OpenMetrics
//! text). Every layer records into one registry: the wire (connections,
//! statements by outcome and their durations), the pipeline (runs by status,
//! rows written, expectation results), the scheduler (how late a slot
//! started), the alerts (deliveries by outcome), the shared cache (hits and
//! misses), the run locks (how long runs waited for them, refusals) and the
//! queries sent to the Ballista cluster, and change data capture (changes
//! captured, how far each dataset's slot is behind the source), and the
//! tables kept in memory (bytes held, over budget, loads).

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    /// `ok`, or the SQLSTATE class of the error (`42` for 42501, ...).
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Status {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Layer {
    layer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Dataset {
    dataset: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Table {
    table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Success {
    success: String,
}

fn duration_buckets() -> Histogram {
    // 1 ms .. ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

struct Metrics {
    registry: Registry,
    connections: Gauge,
    connections_total: Counter,
    statements: Family<Outcome, Counter>,
    statement_seconds: Family<Outcome, Histogram, fn() -> Histogram>,
    runs: Family<Status, Counter>,
    rows_written: Family<Layer, Counter>,
    expectations: Family<Success, Counter>,
    schedule_lag: Histogram,
    alerts: Family<Status, Counter>,
    cache: Family<Outcome, Counter>,
    locks: Family<Outcome, Counter>,
    lock_wait: Histogram,
    cluster: Family<Outcome, Counter>,
    cdc_changes: Family<Dataset, Counter>,
    cdc_lag_bytes: Family<Dataset, Gauge>,
    memory_table_bytes: Family<Table, Gauge>,
    memory_table_over_budget: Family<Table, Gauge>,
    memory_table_loads: Family<Outcome, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("workbench");
    let connections = Gauge::default();
    registry.register("connections", "Client connections open now", connections.clone());
    let connections_total = Counter::default();
    registry.register("connections_accepted", "Client connections accepted", connections_total.clone());
    let statements = Family::<Outcome, Counter>::default();
    registry.register("statements", "Statements by outcome (ok, or the SQLSTATE class)", statements.clone());
    let statement_seconds = Family::<Outcome, Histogram, fn() -> Histogram>::new_with_constructor(duration_buckets);
    registry.register("statement_duration_seconds", "Statement durations, until the last row was sent", statement_seconds.clone());
    let runs = Family::<Status, Counter>::default();
    registry.register("runs", "Pipeline runs (attempts) by how they ended", runs.clone());
    let rows_written = Family::<Layer, Counter>::default();
    registry.register("rows_written", "Rows written by runs, by layer", rows_written.clone());
    let expectations = Family::<Success, Counter>::default();
    registry.register("expectation_results", "Expectation checks in runs, by success", expectations.clone());
    let schedule_lag = duration_buckets();
    registry.register("schedule_lag_seconds", "How long after its slot a scheduled run started", schedule_lag.clone());
    let alerts = Family::<Status, Counter>::default();
    registry.register("alerts", "Alert deliveries by outcome (sent, failed)", alerts.clone());
    let cache = Family::<Outcome, Counter>::default();
    registry.register("cache_lookups", "Shared cache lookups (previews) by outcome (hit, miss, error)", cache.clone());
    let locks = Family::<Outcome, Counter>::default();
    registry.register("run_locks", "Run lock requests by outcome (acquired, or refused: another run held it)", locks.clone());
    let lock_wait = duration_buckets();
    registry.register("run_lock_wait_seconds", "How long runs waited for their datasets' locks", lock_wait.clone());
    let cluster = Family::<Outcome, Counter>::default();
    registry.register(
        "cluster_queries",
        "Lake queries sent to the Ballista cluster, by outcome (cluster: answered there; fallback: failed there, answered here; failed)",
        cluster.clone(),
    );
    let cdc_changes = Family::<Dataset, Counter>::default();
    registry.register("cdc_changes", "Changes captured from a source database into bronze, by dataset", cdc_changes.clone());
    let cdc_lag_bytes = Family::<Dataset, Gauge>::default();
    registry.register(
        "cdc_lag_bytes",
        "How far a dataset's replication slot is behind the source's WAL (bytes not yet committed to bronze)",
        cdc_lag_bytes.clone(),
    );
    let memory_table_bytes = Family::<Table, Gauge>::default();
    registry.register(
        "memory_table_bytes",
        "Bytes of Arrow memory holding a table kept in memory (serve: memory), 0 while its queries read its files",
        memory_table_bytes.clone(),
    );
    let memory_table_over_budget = Family::<Table, Gauge>::default();
    registry.register(
        "memory_table_over_budget",
        "1 while a table asked to be kept in memory does not fit table_memory_budget (its queries read its files)",
        memory_table_over_budget.clone(),
    );
    let memory_table_loads = Family::<Outcome, Counter>::default();
    registry.register(
        "memory_table_loads",
        "Table versions read into memory, by outcome (loaded, over_budget, failed)",
        memory_table_loads.clone(),
    );
    Metrics {
        registry,
        memory_table_bytes,
        memory_table_over_budget,
        memory_table_loads,
        cdc_changes,
        cdc_lag_bytes,
        connections,
        connections_total,
        statements,
        statement_seconds,
        runs,
        rows_written,
        expectations,
        schedule_lag,
        alerts,
        cache,
        locks,
        lock_wait,
        cluster,
    }
});

/// A client connected; the returned guard counts it until dropped.
pub fn connection() -> ConnectionGuard {
    METRICS.connections.inc();
    METRICS.connections_total.inc();
    ConnectionGuard(())
}

pub struct ConnectionGuard(());

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        METRICS.connections.dec();
    }
}

/// A statement ended: `sqlstate` `None` when it succeeded.
pub fn statement(sqlstate: Option<&str>, took: Duration) {
    let outcome = Outcome { outcome: sqlstate.map(|s| s.chars().take(2).collect()).unwrap_or_else(|| "ok".into()) };
    METRICS.statements.get_or_create(&outcome).inc();
    METRICS.statement_seconds.get_or_create(&outcome).observe(took.as_secs_f64());
}

/// A run attempt ended with `status`.
pub fn run(status: &str) {
    METRICS.runs.get_or_create(&Status { status: status.to_string() }).inc();
}

pub fn rows_written(layer: &str, rows: u64) {
    METRICS.rows_written.get_or_create(&Layer { layer: layer.to_string() }).inc_by(rows);
}

pub fn expectation(success: bool) {
    METRICS.expectations.get_or_create(&Success { success: success.to_string() }).inc();
}

pub fn schedule_lag(lag: Duration) {
    METRICS.schedule_lag.observe(lag.as_secs_f64());
}

pub fn alert(status: &str) {
    METRICS.alerts.get_or_create(&Status { status: status.to_string() }).inc();
}

/// A shared-cache lookup ended: `hit`, `miss` or `error`.
pub fn cache_lookup(outcome: &str) {
    METRICS.cache.get_or_create(&Outcome { outcome: outcome.to_string() }).inc();
}

/// A run asked for its locks and, after `waited`, got them (`acquired`) or
/// gave up (`refused`).
pub fn run_lock(acquired: bool, waited: Duration) {
    let outcome = if acquired { "acquired" } else { "refused" };
    METRICS.locks.get_or_create(&Outcome { outcome: outcome.to_string() }).inc();
    METRICS.lock_wait.observe(waited.as_secs_f64());
}

/// A lake query went to the Ballista cluster and ended `outcome`
/// (`cluster`, `fallback` or `failed`).
pub fn cluster_query(outcome: &str) {
    METRICS.cluster.get_or_create(&Outcome { outcome: outcome.to_string() }).inc();
}

/// `changes` changes of `dataset` were committed to bronze; its slot is now
/// `lag_bytes` behind the source.
pub fn cdc_flush(dataset: &str, changes: u64, lag_bytes: u64) {
    let label = Dataset { dataset: dataset.to_string() };
    METRICS.cdc_changes.get_or_create(&label).inc_by(changes);
    METRICS.cdc_lag_bytes.get_or_create(&label).set(lag_bytes.min(i64::MAX as u64) as i64);
}

/// `table` (`layer.name`) now holds `bytes` in memory; `over_budget` when it
/// was asked to but does not fit.
pub fn memory_table(table: &str, bytes: u64, over_budget: bool) {
    let label = Table { table: table.to_string() };
    METRICS.memory_table_bytes.get_or_create(&label).set(bytes.min(i64::MAX as u64) as i64);
    METRICS.memory_table_over_budget.get_or_create(&label).set(over_budget as i64);
}

/// A table version's load into memory ended `outcome`.
pub fn memory_table_load(outcome: &str) {
    METRICS.memory_table_loads.get_or_create(&Outcome { outcome: outcome.to_string() }).inc();
}

/// Everything, in the OpenMetrics text format.
pub fn render() -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &METRICS.registry).expect("writing to a String");
    out
}
