//! Real BI and SQL clients against one server build serving a lake with
//! bronze, silver and gold tables: psql, SQLAlchemy 1.4 (inside Superset's
//! virtualenv) and 2.x, Superset itself, pgjdbc, asyncpg, psycopg 3, and the
//! browsing queries of DBeaver, Metabase, pgAdmin, Grafana and pgcli.
//!
//! Each client script runs every one of its checks and prints `ok NAME` or
//! `FAIL NAME: reason`; a test fails with that whole report.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use deltalake::arrow::array::{
    BooleanArray, Date32Array, Decimal128Array, Float64Array, Int16Array, Int32Array, Int64Array, RecordBatch,
    StringArray, TimestampMicrosecondArray,
};
use deltalake::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use deltalake::protocol::SaveMode;

use crate::harness::{Server, orders_batch, write_table};

/// 2024-01-01T00:00:00 in microseconds since the epoch.
const JAN_1_2024_US: i64 = 1_704_067_200_000_000;

/// `silver.events`: 120 hourly events from 2024-01-01, one column per type
/// Workbench emits to clients.
fn events_batch() -> RecordBatch {
    let ids = 0..120i32;
    let kinds = ["click", "search", "view"];
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int32, false),
        Field::new("kind", DataType::Utf8, true),
        Field::new("happened_at", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        Field::new("logged_at", DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), true),
        Field::new("value", DataType::Float64, true),
        Field::new("ok", DataType::Boolean, true),
        Field::new("small", DataType::Int16, true),
        Field::new("day", DataType::Date32, true),
        Field::new("amount", DataType::Decimal128(10, 2), true),
    ]));
    let hour = |i: i32| JAN_1_2024_US + i as i64 * 3_600_000_000;
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int32Array::from_iter_values(ids.clone())),
            Arc::new(StringArray::from_iter_values(ids.clone().map(|i| kinds[(i % 3) as usize]))),
            Arc::new(TimestampMicrosecondArray::from_iter_values(ids.clone().map(hour))),
            Arc::new(TimestampMicrosecondArray::from_iter_values(ids.clone().map(hour)).with_timezone("UTC")),
            Arc::new(Float64Array::from_iter_values(ids.clone().map(|i| i as f64 * 0.5))),
            Arc::new(BooleanArray::from_iter(ids.clone().map(|i| Some(i % 4 == 0)))),
            Arc::new(Int16Array::from_iter_values(ids.clone().map(|i| i as i16))),
            Arc::new(Date32Array::from_iter_values(ids.clone().map(|i| 19_723 + i / 24))),
            Arc::new(
                Decimal128Array::from_iter_values(ids.clone().map(|i| i as i128 * 110))
                    .with_precision_and_scale(10, 2)
                    .expect("decimal"),
            ),
        ],
    )
    .expect("events batch")
}

/// `gold.daily_orders`: orders per region and day.
fn daily_orders_batch() -> RecordBatch {
    let regions = ["east", "north", "south"];
    let schema = Arc::new(Schema::new(vec![
        Field::new("region", DataType::Utf8, false),
        Field::new("day", DataType::Date32, false),
        Field::new("orders", DataType::Int64, false),
    ]));
    let rows = 0..90i32;
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(rows.clone().map(|i| regions[(i / 30) as usize]))),
            Arc::new(Date32Array::from_iter_values(rows.clone().map(|i| 19_000 + i % 30))),
            Arc::new(Int64Array::from_iter_values(rows.clone().map(|i| 3 + (i % 2) as i64))),
        ],
    )
    .expect("daily batch")
}

/// A server over bronze.raw_orders, silver.orders, silver.events and gold.daily_orders.
async fn bi_server() -> Server {
    let server = Server::start();
    let lake = server.lake();
    write_table(lake, "bronze", "raw_orders", orders_batch(0..300), SaveMode::Overwrite).await;
    write_table(lake, "silver", "orders", orders_batch(0..300), SaveMode::Overwrite).await;
    write_table(lake, "silver", "events", events_batch(), SaveMode::Overwrite).await;
    write_table(lake, "gold", "daily_orders", daily_orders_batch(), SaveMode::Overwrite).await;
    server
}

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Run a client program from tests/clients with the server's port as last
/// argument; panic with its whole report unless every check passed.
fn run_client(what: &str, program: &str, args: &[&str], server: &Server) -> String {
    let out = Command::new(program)
        .args(args)
        .arg(server.port().to_string())
        .current_dir(clients_dir())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {program} ({e}); ./scripts/test.sh installs the clients"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} checks failed:\n{stdout}\n--- stderr (tail) ---\n{}",
        tail(&String::from_utf8_lossy(&out.stderr), 60)
    );
    assert!(stdout.contains("all checks passed"), "{what}: incomplete run:\n{stdout}");
    stdout
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Superset's virtualenv (cached outside the clone by ./scripts/test.sh).
fn superset_python() -> String {
    std::env::var("WORKBENCH_SUPERSET_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").expect("HOME");
        format!("{home}/.cache/workbench/superset-venv/bin/python")
    })
}

#[tokio::test]
async fn sqlalchemy_2_inspector_pandas_and_parameters() {
    let server = bi_server().await;
    let out = run_client("SQLAlchemy 2", "python3", &["sqlalchemy_inspect.py"], &server);
    assert!(out.contains("sqlalchemy 2."), "{out}");
}

#[tokio::test]
async fn sqlalchemy_1_4_inspector_as_superset_uses_it() {
    let server = bi_server().await;
    let out = run_client("SQLAlchemy 1.4", &superset_python(), &["sqlalchemy_inspect.py"], &server);
    assert!(out.contains("sqlalchemy 1.4."), "{out}");
}

#[tokio::test]
async fn superset_adds_database_dataset_and_charts() {
    let server = bi_server().await;
    run_client("Superset", &superset_python(), &["superset_check.py"], &server);
}

#[tokio::test]
async fn pgjdbc_metadata_prepared_cursors_cancel() {
    let server = bi_server().await;
    let jar = std::env::var("WORKBENCH_PGJDBC_JAR").unwrap_or_else(|_| "/usr/share/java/postgresql.jar".into());
    run_client("pgjdbc", "java", &["-cp", &jar, "JdbcCheck.java"], &server);
}

#[tokio::test]
async fn psqlodbc_catalog_parameters_and_declare_fetch() {
    let server = bi_server().await;
    run_client("psqlODBC", "python3", &["odbc_check.py"], &server);
}

#[tokio::test]
async fn asyncpg_codecs_prepared_cursors_copy() {
    let server = bi_server().await;
    run_client("asyncpg", "python3", &["asyncpg_check.py"], &server);
}

#[tokio::test]
async fn psycopg3_binary_cursors_copy() {
    let server = bi_server().await;
    run_client("psycopg 3", "python3", &["psycopg3_check.py"], &server);
}

#[tokio::test]
async fn browsing_queries_of_dbeaver_metabase_pgadmin_grafana_pgcli() {
    let server = bi_server().await;
    run_client("browsing queries", "python3", &["browse_check.py"], &server);
}

#[tokio::test]
async fn oids_are_stable_across_restarts() {
    let lake = tempfile::TempDir::new().unwrap();
    write_table(lake.path(), "silver", "orders", orders_batch(0..10), SaveMode::Overwrite).await;
    write_table(lake.path(), "silver", "events", events_batch(), SaveMode::Overwrite).await;
    write_table(lake.path(), "gold", "daily_orders", daily_orders_batch(), SaveMode::Overwrite).await;
    let sql = "SELECT n.nspname || '.' || c.relname || '=' || c.oid || '/' || n.oid FROM pg_catalog.pg_class c \
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
               WHERE n.nspname IN ('silver', 'gold') ORDER BY 1";
    // No specs: nothing is built at start-up, the set of tables stays the same.
    let specs = tempfile::TempDir::new().unwrap();
    let options = crate::harness::ServerOptions {
        args: vec!["--specs".into(), specs.path().display().to_string()],
        ..Default::default()
    };
    let mut seen = Vec::new();
    for first_query in ["\\dn", "SELECT 1"] {
        // A different first catalog query each time: oids must not depend on it.
        let mut server = Server::start_at(lake.path(), options.clone());
        server.psql_ok(&[first_query]);
        seen.push(crate::harness::rows(&server, sql).await);
        server.terminate(std::time::Duration::from_secs(10));
    }
    assert_eq!(seen[0].len(), 3, "{seen:?}");
    assert_eq!(seen[0], seen[1], "oids changed across a restart");
}

#[tokio::test]
async fn psql_meta_commands() {
    let server = bi_server().await;
    let checks: &[(&str, &[&str])] = &[
        ("\\l", &["workbench"]),
        ("\\dn", &["bronze", "silver", "gold", "workbench"]),
        ("\\dt silver.*", &["events", "orders"]),
        // The metadata views are visible: `"$user"` (workbench) is on the path.
        ("\\dv", &["workbench | runs", "| view |"]),
        ("\\d silver.events", &["happened_at", "timestamp without time zone", "timestamp with time zone", "numeric(10,2)", "smallint"]),
        ("\\d+ silver.orders", &["numeric(12,2)", "Storage"]),
        ("\\df validate", &["validate", "SETOF record", "table_name text"]),
        ("\\du", &["workbench"]),
        // No roles configured: everyone reads every table.
        ("\\dp silver.*", &["orders", "=r/workbench"]),
        ("\\dt+ silver.*", &["orders", "Description"]),
        ("\\dT", &["List of data types"]),
        ("\\conninfo", &["You are connected to database \"workbench\" as user \"workbench\""]),
    ];
    let mut failures = Vec::new();
    for (command, wanted) in checks {
        let out = server.psql(&["-c", command]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || wanted.iter().any(|w| !stdout.contains(w)) {
            failures.push(format!("{command}: wanted {wanted:?} in\n{stdout}"));
        }
    }
    assert!(failures.is_empty(), "psql meta-commands failed:\n{}", failures.join("\n"));
}

#[tokio::test]
async fn psql_script_with_gdesc_prepare_copy_and_errors() {
    let server = bi_server().await;
    let script = server.lake().join("script.sql");
    std::fs::write(
        &script,
        r#"\x on
SELECT id, kind FROM silver.events WHERE id = 4;
\x off
SELECT id, happened_at, amount FROM silver.events \gdesc
PREPARE by_kind(text) AS SELECT count(*) FROM silver.events WHERE kind = $1;
EXECUTE by_kind('view');
SELECT * FROM silver.missing;
SELECT 'still alive' AS status;
\copy (SELECT id, region FROM silver.orders WHERE id < 3 ORDER BY id) to stdout with csv header
DEALLOCATE by_kind;
BEGIN;
DECLARE ev CURSOR FOR SELECT id * 10 AS tenfold FROM silver.events ORDER BY id;
FETCH 3 FROM ev;
MOVE 2 FROM ev;
FETCH 1 FROM ev;
CLOSE ev;
COMMIT;
"#,
    )
    .unwrap();
    // No ON_ERROR_STOP: the error must not end the session.
    let out = Command::new("psql")
        .args(["-X", "-h", "127.0.0.1", "-U", "workbench", "-d", "workbench", "-p"])
        .arg(server.port().to_string())
        .arg("-f")
        .arg(&script)
        .output()
        .expect("psql");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for wanted in [
        "-[ RECORD 1 ]",
        "kind | search",
        "happened_at | timestamp without time zone",
        "amount      | numeric(10,2)",
        "    40",
        "still alive",
        "id,region\n0,north\n1,south\n2,east\n",
        " tenfold \n---------\n       0\n      10\n      20\n(3 rows)",
        "MOVE 2",
        " tenfold \n---------\n      50\n(1 row)",
    ] {
        assert!(stdout.contains(wanted), "missing {wanted:?} in\n{stdout}\n{stderr}");
    }
    assert!(stderr.contains("silver.missing") && stderr.contains("does not exist"), "{stderr}");
    assert_eq!(stderr.matches("ERROR").count(), 1, "exactly one error expected:\n{stderr}");
}

