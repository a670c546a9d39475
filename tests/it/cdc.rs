//! Change data capture: a private PostgreSQL cluster with wal_level =
//! logical, its table copied into bronze by logical replication and applied
//! to silver (`mode: cdc`), compared with the source row for row while the
//! source changes, Workbench is killed, and the source restarts.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{BIN, PrivatePostgres, Server, ServerOptions, rows};

const TABLE: &str = "CREATE TABLE public.gl (id bigint PRIMARY KEY, account text NOT NULL, amount numeric(12,2), posted date, note text)";
const SEED: &str = "INSERT INTO gl SELECT n, 'acct ' || (n % 7), n * 1.25, DATE '2026-01-01' + (n % 28), NULL FROM generate_series(1, $N) n";

async fn connect(pg: &PrivatePostgres) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await.expect("connect to the source");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A source cluster with table `gl` holding `rows` rows.
async fn source_with(rows: usize) -> (PrivatePostgres, tokio_postgres::Client) {
    let pg = PrivatePostgres::start_logical();
    let client = connect(&pg).await;
    client.batch_execute(TABLE).await.unwrap();
    client.batch_execute(&SEED.replace("$N", &rows.to_string())).await.unwrap();
    (pg, client)
}

/// A CDC dataset on `gl`; `silver` is the YAML under `silver:` after mode and key.
fn spec(name: &str, silver: &str) -> String {
    format!(
        "name: {name}\nsource:\n  format: postgres_cdc\n  url: env:ERP_DATABASE_URL\n  tables: [public.gl]\n  flush_every: 200ms\n\
         silver:\n  mode: cdc\n  key: [id]\n{silver}"
    )
}

fn specs_dir(specs: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::TempDir::new().unwrap();
    for (name, text) in specs {
        std::fs::write(dir.path().join(format!("{name}.yaml")), text).unwrap();
    }
    dir
}

fn serve(lake: &Path, specs: &Path, pg: &PrivatePostgres) -> Server {
    Server::start_at(
        lake,
        ServerOptions {
            args: vec!["--specs".into(), specs.display().to_string()],
            env: vec![("ERP_DATABASE_URL".into(), pg.url())],
            ..Default::default()
        },
    )
}

/// The source's rows as text, in key order.
async fn source_rows(client: &tokio_postgres::Client, columns: &str) -> Vec<String> {
    client
        .simple_query(&format!("SELECT {columns} FROM gl ORDER BY id"))
        .await
        .unwrap()
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).unwrap_or("NULL")).collect::<Vec<_>>().join("|")),
            _ => None,
        })
        .collect()
}

const COLUMNS: &str = "id, account, amount, posted, note";
const SILVER_COLUMNS: &str = "id, account, CAST(amount AS VARCHAR), CAST(posted AS VARCHAR), note";

/// Silver's rows (matching `filter`) as text, in key order; empty while the
/// table does not exist yet.
async fn silver_rows(server: &Server, table: &str, columns: &str, filter: &str) -> Vec<String> {
    let client = server.connect().await;
    match client.simple_query(&format!("SELECT {columns} FROM silver.{table} WHERE {filter} ORDER BY id")).await {
        Ok(messages) => messages
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).unwrap_or("NULL")).collect::<Vec<_>>().join("|")),
                _ => None,
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Wait (up to 90 s) until silver `table` holds exactly the source's rows.
async fn wait_equal(server: &Server, client: &tokio_postgres::Client, table: &str, source_columns: &str, silver_columns: &str, filter: &str) {
    let start = Instant::now();
    loop {
        let expected = source_rows(client, source_columns).await;
        let got = silver_rows(server, table, silver_columns, filter).await;
        if got == expected {
            return;
        }
        if start.elapsed() > Duration::from_secs(90) {
            let missing: Vec<&String> = expected.iter().filter(|r| !got.contains(r)).take(5).collect();
            let extra: Vec<&String> = got.iter().filter(|r| !expected.contains(r)).take(5).collect();
            panic!(
                "silver.{table} never matched the source ({} rows vs {}): missing {missing:?}, extra {extra:?}\nlog:\n{}",
                got.len(),
                expected.len(),
                server.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn snapshot_then_inserts_updates_deletes_reach_scd1_scd2_and_soft_delete_silver_row_for_row() {
    let (pg, client) = source_with(200).await;
    let specs = specs_dir(&[
        ("gl_current", spec("gl_current", "")),
        ("gl_history", spec("gl_history", "  history: scd2\n  track_history_on: [amount]\n")),
        ("gl_soft", spec("gl_soft", "  deletes: soft\n")),
    ]);
    let lake = tempfile::TempDir::new().unwrap();
    let server = serve(lake.path(), specs.path(), &pg);
    wait_equal(&server, &client, "gl_current", COLUMNS, SILVER_COLUMNS, "true").await;
    // A dashboard's prepared statement, planned now and executed after the
    // changes arrive, must see them (not the version it was planned on).
    let dashboard = server.connect().await;
    let prepared = dashboard.prepare("SELECT count(*), sum(amount)::text FROM silver.gl_current").await.unwrap();
    assert_eq!(dashboard.query_one(&prepared, &[]).await.unwrap().get::<_, i64>(0), 200);

    client.batch_execute("UPDATE gl SET amount = amount + 1 WHERE id <= 10").await.unwrap();
    client.batch_execute("UPDATE gl SET note = 'reviewed' WHERE id = 11").await.unwrap();
    client.batch_execute("DELETE FROM gl WHERE id BETWEEN 20 AND 24").await.unwrap();
    client.batch_execute("INSERT INTO gl SELECT n, 'new', n, DATE '2026-02-01', 'inserted' FROM generate_series(201, 210) n").await.unwrap();
    // Several changes of one key in one transaction, a delete and re-insert.
    client
        .batch_execute(
            "BEGIN; UPDATE gl SET amount = 500 WHERE id = 1; UPDATE gl SET amount = 600 WHERE id = 1; \
             DELETE FROM gl WHERE id = 2; INSERT INTO gl VALUES (2, 'again', 2.50, DATE '2026-03-01', NULL); COMMIT",
        )
        .await
        .unwrap();
    // A rolled-back transaction never reaches the stream.
    client.batch_execute("BEGIN; UPDATE gl SET amount = 0; ROLLBACK").await.unwrap();

    wait_equal(&server, &client, "gl_current", COLUMNS, SILVER_COLUMNS, "true").await;
    wait_equal(&server, &client, "gl_history", COLUMNS, SILVER_COLUMNS, "_is_current").await;
    wait_equal(&server, &client, "gl_soft", COLUMNS, SILVER_COLUMNS, "NOT _deleted").await;
    let now = dashboard.query_one(&prepared, &[]).await.unwrap();
    let source_now = client.query_one("SELECT count(*), sum(amount)::text FROM gl", &[]).await.unwrap();
    assert_eq!((now.get::<_, i64>(0), now.get::<_, String>(1)), (source_now.get::<_, i64>(0), source_now.get::<_, String>(1)));

    // SCD2: versions only where amount changed; a note change updates the
    // current version in place; deleted keys keep closed versions.
    let versions = rows(&server, "SELECT id, count(*), sum(CASE WHEN _is_current THEN 1 ELSE 0 END) FROM silver.gl_history WHERE id IN (1, 3, 11, 20, 30) GROUP BY id ORDER BY id").await;
    // 1: snapshot, +1, then 600 (the last of its transaction); 3: snapshot, +1;
    // 11: a note change, in place; 20: deleted; 30: untouched.
    assert_eq!(versions, vec!["1|3|1", "3|2|1", "11|1|1", "20|1|0", "30|1|1"]);
    let closed = rows(&server, "SELECT count(*) FROM silver.gl_history WHERE id = 1 AND _valid_to IS NOT NULL AND _valid_to > _valid_from").await;
    assert_eq!(closed, vec!["2"]);
    // Soft deletes keep the rows, flagged.
    let soft = rows(&server, "SELECT count(*) FROM silver.gl_soft WHERE _deleted AND id BETWEEN 20 AND 24").await;
    assert_eq!(soft, vec!["5"]);
    // Bronze has every change once: the snapshot, then one row per change.
    let ops = rows(&server, "SELECT _op, count(*) FROM bronze.gl_current GROUP BY _op ORDER BY _op").await;
    assert_eq!(ops, vec!["c|11", "d|6", "r|200", "u|13"]);
    // The long-lived run says where it is.
    let run = rows(
        &server,
        "SELECT status, trigger, progress IS NOT NULL AND progress LIKE '%\"last_lsn\"%' FROM workbench.runs WHERE datasets LIKE '%gl_current%' AND status = 'running'",
    )
    .await;
    assert_eq!(run, vec!["running|cdc|t"], "{}", server.log_text());
    let metrics = reqwest_metrics(&server).await;
    assert!(metrics.contains("workbench_cdc_lag_bytes{dataset=\"gl_current\"}"), "{metrics}");
}

async fn reqwest_metrics(server: &Server) -> String {
    let addr = server.http.expect("the HTTP API");
    let out = Command::new("curl").args(["-s", &format!("http://{addr}/metrics")]).output().expect("curl");
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test]
async fn killed_three_times_mid_stream_silver_still_equals_the_source_without_duplicates() {
    let (pg, client) = source_with(100_000).await;
    let specs = specs_dir(&[("gl", spec("gl", ""))]);
    let lake = tempfile::TempDir::new().unwrap();
    // Killed during the snapshot (or just after it).
    let mut server = serve(lake.path(), specs.path(), &pg);
    tokio::time::sleep(Duration::from_millis(400)).await;
    server.kill();
    let mut server = serve(lake.path(), specs.path(), &pg);
    // A steady stream of small transactions while the server is killed twice more.
    let load = {
        let writer = connect(&pg).await;
        tokio::spawn(async move {
            for i in 0..1500i64 {
                let id = (i * 7919) % 100_000 + 1;
                let sql = match i % 5 {
                    0 => format!("DELETE FROM gl WHERE id = {id}"),
                    1 => format!("INSERT INTO gl VALUES ({}, 'late', {i}, NULL, 'load') ON CONFLICT (id) DO UPDATE SET note = 'again'", 100_000 + i),
                    _ => format!("UPDATE gl SET amount = amount + 1, note = 'tx {i}' WHERE id = {id}"),
                };
                writer.batch_execute(&sql).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    for pause in [1500, 2500] {
        tokio::time::sleep(Duration::from_millis(pause)).await;
        server.kill();
        server = serve(lake.path(), specs.path(), &pg);
    }
    load.await.unwrap();
    wait_equal(&server, &client, "gl", COLUMNS, SILVER_COLUMNS, "true").await;
    let doubled = rows(&server, "SELECT count(*) FROM (SELECT _lsn, _change FROM bronze.gl WHERE _op <> 'r' GROUP BY _lsn, _change HAVING count(*) > 1)").await;
    assert_eq!(doubled, vec!["0"], "a change reached bronze twice");
    let keys = rows(&server, "SELECT count(*) - count(DISTINCT id) FROM silver.gl").await;
    assert_eq!(keys, vec!["0"]);
}

#[tokio::test]
async fn a_source_restart_is_ridden_out_and_an_added_column_reaches_silver() {
    let (pg, client) = source_with(50).await;
    let specs = specs_dir(&[("gl", spec("gl", ""))]);
    let lake = tempfile::TempDir::new().unwrap();
    let server = serve(lake.path(), specs.path(), &pg);
    wait_equal(&server, &client, "gl", COLUMNS, SILVER_COLUMNS, "true").await;
    drop(client);
    pg.down();
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.up();
    let client = connect(&pg).await;
    client.batch_execute("UPDATE gl SET amount = 99.99 WHERE id = 5").await.unwrap();
    wait_equal(&server, &client, "gl", COLUMNS, SILVER_COLUMNS, "true").await;
    client.batch_execute("ALTER TABLE gl ADD COLUMN currency text").await.unwrap();
    client.batch_execute("INSERT INTO gl VALUES (51, 'fx', 10, NULL, NULL, 'USD')").await.unwrap();
    client.batch_execute("UPDATE gl SET currency = 'CLP' WHERE id = 3").await.unwrap();
    let with_currency = format!("{COLUMNS}, currency");
    let silver_with_currency = format!("{SILVER_COLUMNS}, currency");
    wait_equal(&server, &client, "gl", &with_currency, &silver_with_currency, "true").await;
    // The capture that lost its source ended failed; a new one took over.
    let runs = rows(&server, "SELECT count(*) FILTER (WHERE status = 'failed') > 0, count(*) FILTER (WHERE status = 'running') FROM workbench.runs WHERE trigger = 'cdc'").await;
    assert_eq!(runs, vec!["t|1"], "{}", server.log_text());
}

fn run_cli(lake: &Path, specs: &Path, pg: &PrivatePostgres, extra: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["run", "gl", "--lake"])
        .arg(lake)
        .arg("--specs")
        .arg(specs)
        .args(extra)
        .env("ERP_DATABASE_URL", pg.url())
        .env("RUST_LOG", "warn")
        .output()
        .expect("workbench run")
}

#[tokio::test]
async fn workbench_run_catches_up_and_stops_and_a_dropped_slot_needs_a_full_refresh() {
    let (pg, client) = source_with(40).await;
    let specs = specs_dir(&[("gl", spec("gl", ""))]);
    let lake = tempfile::TempDir::new().unwrap();
    let first = run_cli(lake.path(), specs.path(), &pg, &[]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    client.batch_execute("UPDATE gl SET note = 'closed' WHERE id < 10; DELETE FROM gl WHERE id > 35").await.unwrap();
    let second = run_cli(lake.path(), specs.path(), &pg, &[]);
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));

    // Read the lake with a server that captures nothing.
    let empty = specs_dir(&[]);
    let reader = Server::start_at(lake.path(), ServerOptions { args: vec!["--specs".into(), empty.path().display().to_string()], ..Default::default() });
    wait_equal(&reader, &client, "gl", COLUMNS, SILVER_COLUMNS, "true").await;
    drop(reader);

    client.batch_execute("SELECT pg_drop_replication_slot('workbench_gl')").await.unwrap();
    client.batch_execute("UPDATE gl SET amount = 1 WHERE id = 1").await.unwrap();
    let lost = run_cli(lake.path(), specs.path(), &pg, &[]);
    let stderr = String::from_utf8_lossy(&lost.stderr);
    assert!(!lost.status.success() && stderr.contains("no longer exists") && stderr.contains("--full-refresh"), "{stderr}");
    let rebuilt = run_cli(lake.path(), specs.path(), &pg, &["--full-refresh"]);
    assert!(rebuilt.status.success(), "{}", String::from_utf8_lossy(&rebuilt.stderr));
    let reader = Server::start_at(lake.path(), ServerOptions { args: vec!["--specs".into(), empty.path().display().to_string()], ..Default::default() });
    wait_equal(&reader, &client, "gl", COLUMNS, SILVER_COLUMNS, "true").await;
}
