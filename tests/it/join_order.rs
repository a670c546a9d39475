//! Joins in the order the tables' estimated sizes call for (`workbench.join_order`,
//! on by default), through the real binary over a real socket: the smallest
//! tables are joined first whatever order the query names them in, `SET
//! workbench.join_order = off` gives the written order back, and all 22
//! TPC-H queries (scale factor 0.01) answer the same either way. `SET
//! datafusion.*` passes DataFusion's own options to the session's engine.
//! Lake scans filter rows inside the Parquet reader for selective filters
//! (`workbench.row_filters`), with the same answers either way.

use std::path::Path;

use crate::harness::{Server, ServerOptions, rows, rows_kept_by_join_filters, tpch_lake, tpch_query};

fn options(specs: &Path) -> ServerOptions {
    ServerOptions { args: vec!["--specs".into(), specs.display().to_string()], ..Default::default() }
}

/// The logical plan `EXPLAIN` prints for `sql` under `setting`.
async fn logical_plan(server: &Server, setting: &str, sql: &str) -> String {
    let lines = rows(server, &format!("{setting}; EXPLAIN {sql}")).await;
    lines
        .iter()
        .find_map(|l| l.strip_prefix("logical_plan|"))
        .unwrap_or_else(|| panic!("no logical plan in {lines:?}"))
        .to_string()
}

/// The most deeply nested join of a plan: the one executed first.
fn first_join(plan: &str) -> &str {
    plan.lines()
        .filter(|l| l.trim_start().starts_with("Inner Join:"))
        .max_by_key(|l| l.len() - l.trim_start().len())
        .unwrap_or_else(|| panic!("no join in\n{plan}"))
        .trim()
}

#[tokio::test]
async fn joins_start_from_the_smallest_tables_and_answer_as_written() {
    let dir = tempfile::TempDir::new().unwrap();
    let (lake, specs) = tpch_lake(dir.path());
    let server = Server::start_at(&lake, options(&specs));

    // Named largest first: lineitem (60K rows), orders (15K), customer
    // (1.5K), nation (25, of which one is kept).
    let sql = "SELECT count(*) FROM silver.lineitem l \
               JOIN silver.orders o ON l.l_orderkey = o.o_orderkey \
               JOIN silver.customer c ON o.o_custkey = c.c_custkey \
               JOIN silver.nation n ON c.c_nationkey = n.n_nationkey \
               WHERE n.n_name = 'FRANCE'";
    let ordered = logical_plan(&server, "SET workbench.join_order = on", sql).await;
    let first = first_join(&ordered);
    assert!(first.contains("n_nationkey") && first.contains("c_nationkey"), "joins nation and customer first:\n{ordered}");
    // The smaller side on the left (the hash table): nation.
    assert!(first.starts_with("Inner Join: n.n_nationkey = c.c_nationkey"), "{ordered}");
    let written = logical_plan(&server, "SET workbench.join_order = off", sql).await;
    assert!(first_join(&written).contains("l.l_orderkey = o.o_orderkey"), "the written order:\n{written}");
    let count = |setting: &'static str| {
        let server = &server;
        async move { rows(server, &format!("{setting}; {sql}")).await }
    };
    let on = count("SET workbench.join_order = on").await;
    assert_eq!(on, count("SET workbench.join_order = off").await);
    assert_ne!(on, vec!["0".to_string()], "the query finds rows");

    // A bad value is refused with Postgres' code for it.
    let client = server.connect().await;
    let err = client.simple_query("SET workbench.join_order = sometimes").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22023"), "{err:?}");

    // DataFusion's own options reach the engine; RESET gives its value back.
    let kinds = |lines: Vec<String>| lines.iter().map(|l| l.split('|').next().unwrap().to_string()).collect::<Vec<_>>();
    let only = "SET datafusion.explain.physical_plan_only = on";
    assert_eq!(kinds(rows(&server, &format!("{only}; EXPLAIN SELECT 1")).await), ["physical_plan"]);
    let reset = kinds(rows(&server, &format!("{only}; RESET datafusion.explain.physical_plan_only; EXPLAIN SELECT 1")).await);
    assert!(reset.contains(&"logical_plan".to_string()), "{reset:?}");
    let err = client.simple_query("SET datafusion.execution.no_such_option = 1").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42704"), "{err:?}");
    let err = client.simple_query("SET datafusion.execution.batch_size = lots").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22023"), "{err:?}");

    // All of TPC-H: the same answers in either order.
    for n in 1..=22 {
        let query = tpch_query(n);
        let mut on = rows(&server, &format!("SET search_path = silver; {query}")).await;
        let mut off = rows(&server, &format!("SET workbench.join_order = off; SET search_path = silver; {query}")).await;
        assert!(!on.is_empty() || n == 18, "q{n} returned no rows");
        // Rows tied in ORDER BY may come in either order.
        on.sort();
        off.sort();
        assert_eq!(on, off, "q{n} answers differently with the estimated join order");
    }
}

/// The values of metric `name` in an `EXPLAIN ANALYZE` output, one per scan.
fn metric<'a>(lines: &'a [String], name: &str) -> Vec<&'a str> {
    let key = format!("{name}=");
    let mut values = Vec::new();
    for line in lines {
        for (at, _) in line.match_indices(&key) {
            values.push(line[at + key.len()..].split([',', ']']).next().unwrap().trim());
        }
    }
    values
}

/// Whether the lake scans of `sql` filtered rows inside the Parquet reader.
async fn filters_rows_in_the_reader(server: &Server, settings: &str, sql: &str) -> bool {
    let plan = rows(server, &format!("{settings}; EXPLAIN ANALYZE {sql}")).await;
    let matched = metric(&plan, "pushdown_rows_matched");
    assert!(!matched.is_empty(), "the scan reports its row-filter metrics:\n{}", plan.join("\n"));
    matched.iter().any(|m| *m != "0")
}

#[tokio::test]
async fn lake_scans_filter_rows_in_the_reader_for_selective_filters_or_when_asked() {
    let dir = tempfile::TempDir::new().unwrap();
    let (lake, specs) = tpch_lake(dir.path());
    let server = Server::start_at(&lake, options(&specs));
    // Keeps ~8% of lineitem (quantities 1 to 50): decoded whole, filtered after.
    let broad = "SELECT count(*), sum(l_extendedprice) FROM silver.lineitem WHERE l_quantity < 5";
    // One order's lines: a lookup by key, filtered in the reader.
    let lookup = "SELECT count(*), sum(l_extendedprice) FROM silver.lineitem WHERE l_orderkey = 32";
    assert!(!filters_rows_in_the_reader(&server, "SET workbench.row_filters = auto", broad).await);
    assert!(filters_rows_in_the_reader(&server, "SET workbench.row_filters = auto", lookup).await);
    assert!(filters_rows_in_the_reader(&server, "SET workbench.row_filters = on", broad).await);
    assert!(!filters_rows_in_the_reader(&server, "SET workbench.row_filters = off", lookup).await);
    // DataFusion's own switch still turns them on.
    let pushdown = "SET datafusion.execution.parquet.pushdown_filters = true";
    assert!(filters_rows_in_the_reader(&server, pushdown, broad).await);

    // The same answers every way, and the same as no filter to push at all.
    for (sql, condition) in [(broad, "l_quantity < 5"), (lookup, "l_orderkey = 32")] {
        let answer = rows(&server, sql).await;
        for setting in ["SET workbench.row_filters = on", "SET workbench.row_filters = off", pushdown] {
            assert_eq!(answer, rows(&server, &format!("{setting}; {sql}")).await, "{setting}; {sql}");
        }
        let unfiltered = rows(
            &server,
            &format!(
                "SELECT sum(CASE WHEN {condition} THEN 1 ELSE 0 END), \
                 sum(CASE WHEN {condition} THEN l_extendedprice END) FROM silver.lineitem"
            ),
        )
        .await;
        assert_eq!(answer, unfiltered, "{sql}");
        assert_ne!(answer[0].split('|').next(), Some("0"), "the filter keeps some rows: {answer:?}");
    }
    let client = server.connect().await;
    let err = client.simple_query("SET workbench.row_filters = sometimes").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22023"), "{err:?}");
}

#[tokio::test]
async fn an_aggregate_below_a_join_sees_only_the_rows_the_join_can_keep() {
    let dir = tempfile::TempDir::new().unwrap();
    let (lake, specs) = tpch_lake(dir.path());
    let server = Server::start_at(&lake, options(&specs));
    // TPC-H Q17 averages the quantity per part over all of lineitem, then
    // joins the few parts of one brand and container.
    let q17 = tpch_query(17);
    let on = rows(&server, &format!("SET search_path = silver; {q17}")).await;
    let off = rows(&server, &format!("SET workbench.join_filters = off; SET search_path = silver; {q17}")).await;
    assert_eq!(on, off, "the same answer with the join's filter below the aggregate");
    assert_ne!(on, vec![String::new()], "q17 finds rows: {on:?}");

    let lineitem: usize = rows(&server, "SELECT count(*) FROM silver.lineitem").await[0].parse().unwrap();
    let plan = |setting: &'static str| {
        let server = &server;
        let q17 = q17.clone();
        async move { rows(server, &format!("{setting}; SET search_path = silver; EXPLAIN ANALYZE {q17}")).await.join("\n") }
    };
    // The rows the scans of lineitem hand to the per-part aggregate.
    let filtered = plan("SET workbench.join_filters = on").await;
    let kept = rows_kept_by_join_filters(&filtered);
    assert!(!kept.is_empty(), "a join filter above the scan feeding the aggregate:\n{filtered}");
    assert!(kept.iter().sum::<usize>() * 10 < lineitem, "it keeps few of {lineitem} rows: {kept:?}\n{filtered}");
    let unfiltered = plan("SET workbench.join_filters = off").await;
    assert!(!unfiltered.contains("FilterExec: DynamicFilter"), "off, no such filter:\n{unfiltered}");

    let client = server.connect().await;
    let err = client.simple_query("SET workbench.join_filters = sometimes").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("22023"), "{err:?}");
}
