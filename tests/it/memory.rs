//! Tables served from memory (`serve: { memory: true }`), through the real
//! binary: TPC-H (scale factor 0.01, loaded by `workbench run`) answers all
//! 22 queries the same from memory as from the files; a new version is
//! visible at once and is then loaded and swapped in; a table over
//! `table_memory_budget` stays on its files and the metrics say so.

use std::path::Path;
use std::time::{Duration, Instant};

use deltalake::arrow::array::{Array, RecordBatch, StringArray};
use deltalake::arrow::compute::cast;
use deltalake::parquet::arrow::ArrowWriter;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::harness::{Server, ServerOptions, TPCH_TABLES, rows, rows_kept_by_join_filters, tpch_lake, tpch_query, workbench_cli};

fn options(specs: &Path, config_yaml: &str) -> ServerOptions {
    ServerOptions { config_yaml: config_yaml.into(), args: vec!["--specs".into(), specs.display().to_string()], ..Default::default() }
}

/// The value of `name{table="..."}` (or `{outcome="..."}`) in `/metrics`.
async fn metric(server: &Server, name: &str, label: &str) -> u64 {
    let url = format!("http://{}/metrics", server.http.expect("the HTTP API"));
    let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
    let prefix = format!("{name}{{{label}}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |v| v.trim().parse().unwrap())
}

async fn wait_until(what: &str, server: &Server, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} never happened; log:\n{}", server.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn plan(server: &Server, sql: &str) -> String {
    rows(server, &format!("EXPLAIN {sql}")).await.join("\n")
}

/// The physical plan reads memory, not Parquet files.
fn reads_memory(plan: &str) -> bool {
    plan.contains("partition_sizes=") && !plan.contains("file_type=parquet")
}

/// The batches per partition of the plan's memory scan (`partition_sizes=[4, 4]`).
fn partition_sizes(plan: &str) -> Vec<usize> {
    let at = plan.find("partition_sizes=[").expect("a memory scan") + "partition_sizes=[".len();
    let end = at + plan[at..].find(']').unwrap();
    plan[at..end].split(',').map(|n| n.trim().parse().unwrap()).collect()
}

/// The build side's first key of every hash join in `plan`
/// (`HashJoinExec: mode=..., on=[(l_orderkey@0, o_orderkey@0)]`).
fn hash_build_keys(plan: &str) -> Vec<String> {
    plan.lines()
        .filter(|l| l.contains("HashJoinExec"))
        .filter_map(|l| {
            let at = l.find("on=[(")? + "on=[(".len();
            Some(l[at..].split(['@', ',']).next()?.trim().to_string())
        })
        .collect()
}

async fn tpch_answers(server: &Server) -> Vec<Vec<String>> {
    let mut answers = Vec::new();
    for n in 1..=22 {
        answers.push(rows(server, &format!("SET search_path = silver; {}", tpch_query(n))).await);
    }
    answers
}

/// Give every region a new comment in the landing file.
fn rewrite_region(lake: &Path, comment: &str) {
    let path = lake.join("landing/tpch/region.parquet");
    let batches: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap())
        .unwrap()
        .build()
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let schema = batches[0].schema();
    let at = schema.index_of("r_comment").unwrap();
    let mut writer = ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema.clone(), None).unwrap();
    for batch in batches {
        let comments = StringArray::from(vec![comment; batch.num_rows()]);
        let mut columns = batch.columns().to_vec();
        columns[at] = cast(&comments, batch.column(at).data_type()).unwrap();
        writer.write(&RecordBatch::try_new(schema.clone(), columns).unwrap()).unwrap();
    }
    writer.close().unwrap();
}

#[tokio::test]
async fn tables_in_memory_answer_as_their_files_follow_new_versions_and_respect_the_budget() {
    let dir = tempfile::TempDir::new().unwrap();
    let (lake, specs) = tpch_lake(dir.path());

    // The answers from the files.
    let mut server = Server::start_at(&lake, options(&specs, ""));
    let expected = tpch_answers(&server).await;
    assert!(!reads_memory(&plan(&server, "SELECT count(*) FROM silver.lineitem").await));
    server.terminate(Duration::from_secs(10));

    // The same specs, asking for memory.
    for (table, _) in TPCH_TABLES {
        let spec = specs.join(format!("{table}.yaml"));
        let text = std::fs::read_to_string(&spec).unwrap();
        std::fs::write(&spec, format!("{text}serve:\n  memory: true\n")).unwrap();
    }
    let mut server = Server::start_at(&lake, options(&specs, "table_memory_budget: 256MiB\n"));
    for (table, _) in TPCH_TABLES {
        let label = format!("table=\"silver.{table}\"");
        wait_until(&format!("silver.{table} in memory"), &server, async || metric(&server, "workbench_memory_table_bytes", &label).await > 0).await;
    }
    let lineitem = plan(&server, "SELECT l_returnflag, sum(l_quantity) FROM silver.lineitem GROUP BY 1").await;
    assert!(reads_memory(&lineitem), "{lineitem}");
    // Its rows are dealt out evenly, one partition per core, though its
    // one small file is a single range to the file scan.
    let sizes = partition_sizes(&lineitem);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    assert_eq!(sizes.len(), cores, "{lineitem}");
    assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{lineitem}");
    let answers = tpch_answers(&server).await;
    for (n, (got, want)) in answers.iter().zip(&expected).enumerate() {
        assert!(!want.is_empty() || n + 1 == 18, "q{} returned no rows", n + 1);
        assert_eq!(got, want, "q{} from memory differs from the files", n + 1);
    }
    assert_eq!(metric(&server, "workbench_memory_table_loads_total", "outcome=\"loaded\"").await, 8);
    // Q17's per-part aggregate over lineitem sees only the rows of the parts
    // the join above it keeps: the join's filter reached the memory scan.
    let q17 = rows(&server, &format!("SET search_path = silver; EXPLAIN ANALYZE {}", tpch_query(17))).await.join("\n");
    assert!(reads_memory(&q17), "{q17}");
    let kept = rows_kept_by_join_filters(&q17);
    let lineitem: usize = rows(&server, "SELECT count(*) FROM silver.lineitem").await[0].parse().unwrap();
    assert!(!kept.is_empty() && kept.iter().sum::<usize>() * 10 < lineitem, "the join filter keeps few of {lineitem} rows: {kept:?}\n{q17}");
    // Q12's hash table is built from the lineitems its five conditions keep
    // (our estimate of its filter), not from every order (DataFusion's flat
    // 20% for a filter it cannot analyse).
    let q12 = async |estimates: &str| {
        let sql = format!("SET workbench.filter_estimates = {estimates}; SET search_path = silver; EXPLAIN {}", tpch_query(12));
        rows(&server, &sql).await.join("\n")
    };
    let (ours, theirs) = (q12("on").await, q12("off").await);
    assert!(reads_memory(&ours), "{ours}");
    assert_eq!(hash_build_keys(&ours), vec!["l_orderkey"], "{ours}");
    assert_eq!(hash_build_keys(&theirs), vec!["o_orderkey"], "{theirs}");

    // A new version of region: the next query sees it (from its files),
    // then it is loaded and swapped in.
    rewrite_region(&lake, "kept in memory");
    let out = workbench_cli(&["run", "region", "--full-refresh"], &lake, &specs);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(rows(&server, "SELECT DISTINCT r_comment FROM silver.region").await, vec!["kept in memory"]);
    wait_until("the new version of silver.region in memory", &server, async || {
        metric(&server, "workbench_memory_table_loads_total", "outcome=\"loaded\"").await == 9
    })
    .await;
    let region = plan(&server, "SELECT r_comment FROM silver.region").await;
    assert!(reads_memory(&region), "{region}");
    assert_eq!(rows(&server, "SELECT count(*), min(r_comment), max(r_comment) FROM silver.region").await, vec!["5|kept in memory|kept in memory"]);
    server.terminate(Duration::from_secs(10));

    // Over budget: lineitem stays on its files, the small tables fit.
    let server = Server::start_at(&lake, options(&specs, "table_memory_budget: 1MiB\n"));
    wait_until("lineitem found over budget", &server, async || {
        metric(&server, "workbench_memory_table_over_budget", "table=\"silver.lineitem\"").await == 1
            && metric(&server, "workbench_memory_table_bytes", "table=\"silver.region\"").await > 0
    })
    .await;
    assert_eq!(metric(&server, "workbench_memory_table_bytes", "table=\"silver.lineitem\"").await, 0);
    let lineitem = plan(&server, "SELECT count(*) FROM silver.lineitem WHERE l_quantity > 10").await;
    assert!(!reads_memory(&lineitem), "{lineitem}");
    assert_eq!(rows(&server, &format!("SET search_path = silver; {}", tpch_query(1))).await, expected[0]);
    assert!(server.log_text().contains("silver.lineitem") && server.log_text().contains("raise table_memory_budget"), "{}", server.log_text());
}

#[tokio::test]
async fn a_spec_naming_an_unknown_layer_to_keep_in_memory_is_refused_with_its_position() {
    let dir = tempfile::TempDir::new().unwrap();
    let specs = dir.path().join("specs");
    std::fs::create_dir_all(&specs).unwrap();
    std::fs::write(
        specs.join("orders.yaml"),
        "name: orders\nsource:\n  format: csv\n  path: landing/orders.csv\nserve:\n  memory: [silver, platinum]\n",
    )
    .unwrap();
    let out = workbench_cli(&["check"], &dir.path().join("lake"), &specs);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("orders.yaml:6:11"), "{text}");
    assert!(text.contains("serve.memory names silver, but this dataset has no silver table"), "{text}");
    assert!(text.contains("unknown layer 'platinum'"), "{text}");
}
