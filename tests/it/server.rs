//! The server over the wire: catalog, queries, protocol features, safety.

use std::time::{Duration, Instant};

use deltalake::protocol::SaveMode;

use crate::harness::{Server, ServerOptions, orders_batch, sqlstate, write_table};

async fn server_with_orders() -> Server {
    let server = Server::start();
    write_table(server.lake(), "silver", "orders", orders_batch(0..300), SaveMode::Overwrite).await;
    server
}

#[tokio::test]
async fn select_with_filter_and_aggregate_over_delta() {
    let server = server_with_orders().await;
    let client = server.connect().await;
    let rows = client
        .query(
            "SELECT region, count(*), sum(amount) FROM silver.orders WHERE id < $1 GROUP BY region ORDER BY region",
            &[&30i64],
        )
        .await
        .expect("query");
    let got: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![("east".into(), 10), ("north".into(), 10), ("south".into(), 10)]
    );
    // Postgres labels the unaliased aggregate `count`, not `count(*)`.
    assert_eq!(rows[0].columns()[1].name(), "count");
    assert_eq!(rows[0].columns()[2].name(), "sum");

    // The same through psql's simple protocol, checking the numbers.
    let out = server.psql_ok(&[
        "SELECT region, count(*), sum(amount) AS total FROM silver.orders WHERE id >= 150 GROUP BY region ORDER BY region",
    ]);
    // ids 150..299 with amount (i*150+25)/100: east = i%3==2.
    let east_total: i64 = (150..300).filter(|i| i % 3 == 2).map(|i| i * 150 + 25).sum();
    let expected = format!("{}.{:02}", east_total / 100, east_total % 100);
    assert!(out.contains(" east   |    50 |"), "{out}");
    assert!(out.contains(&expected), "expected {expected} in\n{out}");
}

#[tokio::test]
async fn psql_catalog_commands() {
    let server = server_with_orders().await;
    let out = server.psql_ok(&["\\dn"]);
    for schema in ["bronze", "silver", "gold"] {
        assert!(out.contains(schema), "\\dn lacks {schema}:\n{out}");
    }
    let out = server.psql_ok(&["\\dt silver.*"]);
    assert!(out.contains("orders"), "\\dt:\n{out}");
    let out = server.psql_ok(&["\\d silver.orders"]);
    assert!(out.contains("amount") && out.contains("numeric(12,2)"), "\\d:\n{out}");
    assert!(out.contains("ordered_on") && out.contains("date"), "\\d:\n{out}");
    let out = server.psql_ok(&["\\d+ silver.orders"]);
    assert!(out.contains("region") && out.contains("Storage"), "\\d+:\n{out}");
    let out = server.psql_ok(&["\\l"]);
    assert!(out.contains("workbench"), "\\l:\n{out}");
    let out = server.psql_ok(&["\\du"]);
    assert!(out.contains("workbench"), "\\du:\n{out}");
    server.psql_ok(&["\\df"]);
    let out = server.psql_ok(&["\\x", "SELECT id, region FROM silver.orders WHERE id = 4"]);
    assert!(out.contains("-[ RECORD 1 ]") && out.contains("region | south"), "\\x:\n{out}");
    let out = server.psql_ok(&["\\copy (SELECT id, region FROM silver.orders WHERE id < 3 ORDER BY id) to stdout"]);
    assert_eq!(out, "0\tnorth\n1\tsouth\n2\teast\n");
}

#[tokio::test]
async fn version_and_labels_read_like_postgres() {
    let server = Server::start();
    let client = server.connect().await;
    let row = client.query_one("SELECT version()", &[]).await.unwrap();
    let version: String = row.get(0);
    assert!(version.starts_with("PostgreSQL 16."), "{version}");
    assert!(version.contains("Workbench"), "{version}");
    assert_eq!(row.columns()[0].name(), "version");
    let row = client
        .query_one("SELECT 1 + 1, now(), CAST('7' AS int), 'x'::text AS named", &[])
        .await
        .unwrap();
    let names: Vec<&str> = row.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["?column?", "now", "int4", "named"]);
    // A cast of a column ordered by the column (apache/datafusion#13558):
    // labelled like the column, sorted by the column, not by the text.
    let rows = client.query("SELECT CAST(relnatts AS TEXT), relname::varchar FROM pg_catalog.pg_class ORDER BY relnatts", &[]).await.unwrap();
    let names: Vec<&str> = rows[0].columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["relnatts", "relname"]);
    let counts: Vec<i64> = rows.iter().map(|r| r.get::<_, String>(0).parse().unwrap()).collect();
    let mut sorted = counts.clone();
    sorted.sort();
    assert_eq!(counts, sorted, "sorted by the number, not by its text");
    assert!(counts.first() < counts.last() && counts.last() >= Some(&10), "{counts:?}");
    // pg_typeof names, in Postgres' words, the type the wire describes.
    let postgres_name = |wire: &str| match wire {
        "int2" => "smallint".to_string(),
        "int4" => "integer".to_string(),
        "int8" => "bigint".to_string(),
        "float8" => "double precision".to_string(),
        "bool" => "boolean".to_string(),
        "timestamptz" => "timestamp with time zone".to_string(),
        "timestamp" => "timestamp without time zone".to_string(),
        "_int8" => "bigint[]".to_string(),
        other => other.to_string(),
    };
    for expr in ["1", "'a'::text", "now()", "1.5", "CAST(2.50 AS numeric(5, 2))", "ARRAY[1, 2]", "true", "DATE '2026-12-01'"] {
        let row = client.query_one(&format!("SELECT {expr}, pg_typeof({expr})"), &[]).await.unwrap();
        let named: String = row.get(1);
        assert_eq!(named, postgres_name(row.columns()[0].type_().name()), "pg_typeof({expr})");
    }
}

#[tokio::test]
async fn table_committed_later_is_visible_without_restart() {
    let server = Server::start();
    let client = server.connect().await;
    // A browser's prepared catalog query, executed before and after the
    // table appears: the session's pg_catalog providers are built once and
    // reused, the rows they list are not.
    let catalog = client
        .prepare(
            "SELECT c.relname::text, c.relkind::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n \
             ON n.oid = c.relnamespace WHERE n.nspname = $1 ORDER BY 1",
        )
        .await
        .unwrap();
    let listed = |rows: Vec<tokio_postgres::Row>| rows.iter().map(|r| format!("{}:{}", r.get::<_, String>(0), r.get::<_, String>(1))).collect::<Vec<_>>();
    assert!(listed(client.query(&catalog, &[&"gold"]).await.unwrap()).is_empty());
    let own = listed(client.query(&catalog, &[&"pg_catalog"]).await.unwrap());
    assert!(own.contains(&"pg_class:v".to_string()) && own.contains(&"pg_am:r".to_string()), "{own:?}");
    let err = client.query("SELECT * FROM gold.late", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "42P01");
    write_table(server.lake(), "gold", "late", orders_batch(0..5), SaveMode::Overwrite).await;
    assert_eq!(listed(client.query(&catalog, &[&"gold"]).await.unwrap()), ["late:r"]);
    assert_eq!(listed(client.query(&catalog, &[&"pg_catalog"]).await.unwrap()), own);
    let n: i64 = client.query_one("SELECT count(*) FROM gold.late", &[]).await.unwrap().get(0);
    assert_eq!(n, 5);
    write_table(server.lake(), "gold", "late", orders_batch(5..12), SaveMode::Append).await;
    let n: i64 = client.query_one("SELECT count(*) FROM gold.late", &[]).await.unwrap().get(0);
    assert_eq!(n, 12);
    let tables: Vec<String> = client
        .query("SELECT table_name FROM information_schema.tables WHERE table_schema = 'gold'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tables, ["late"]);
}

#[tokio::test]
async fn write_statements_are_refused() {
    let server = server_with_orders().await;
    let client = server.connect().await;
    for sql in [
        "INSERT INTO silver.orders (id) VALUES (1)",
        "UPDATE silver.orders SET region = 'x'",
        "DELETE FROM silver.orders",
        "CREATE TABLE silver.evil (a int)",
        "DROP TABLE silver.orders",
        "CREATE VIEW gold.v AS SELECT 1",
    ] {
        let err = client.simple_query(sql).await.unwrap_err();
        assert_eq!(sqlstate(&err), "25006", "{sql}");
        let err = client.execute(sql, &[]).await.unwrap_err();
        assert_eq!(sqlstate(&err), "25006", "{sql} (extended)");
    }
    let n: i64 = client.query_one("SELECT count(*) FROM silver.orders", &[]).await.unwrap().get(0);
    assert_eq!(n, 300, "nothing was written");
}

#[tokio::test]
async fn password_auth_when_users_are_configured() {
    let hash = crate::harness::hash_password("correct horse");
    assert!(hash.starts_with("scram-sha-256$4096$"), "{hash}");
    let server = Server::start_with(ServerOptions {
        config_yaml: format!("users:\n  - name: analyst\n    password_hash: \"{hash}\"\n"),
        ..Default::default()
    });
    let err = server.connect_as("analyst", Some("wrong")).await.unwrap_err();
    assert_eq!(sqlstate(&err), "28P01");
    let err = server.connect_as("nobody", Some("correct horse")).await.unwrap_err();
    assert_eq!(sqlstate(&err), "28P01");
    let client = server.connect_as("analyst", Some("correct horse")).await.expect("login");
    let user: String = client.query_one("SELECT current_user", &[]).await.unwrap().get(0);
    assert_eq!(user, "analyst");
    assert!(!server.log_text().contains("correct horse"), "password leaked into the log");
}

#[tokio::test]
async fn non_loopback_listen_without_users_is_refused_at_startup() {
    let out = std::process::Command::new(crate::harness::BIN)
        .args(["serve", "--listen", "0.0.0.0:0", "--lake"])
        .arg(tempfile::TempDir::new().unwrap().path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("requires password authentication"), "{stderr}");
}

/// A query that runs far longer than any test: cancellable at every batch.
const LONG_QUERY: &str = "SELECT count(*) FROM generate_series(1, 100000000000) AS t(x) WHERE x % 7 = 3";

#[tokio::test]
async fn cancel_request_stops_a_long_query_within_a_second() {
    let server = Server::start();
    let client = server.connect().await;
    let cancel = client.cancel_token();
    let task = tokio::spawn(async move {
        let started = Instant::now();
        let result = client.simple_query(LONG_QUERY).await;
        (result.map(|_| ()), started, client)
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let cancelled_at = Instant::now();
    cancel.cancel_query(tokio_postgres::NoTls).await.expect("send cancel");
    let (result, _, client) = task.await.unwrap();
    let err = result.expect_err("query should be cancelled");
    assert_eq!(sqlstate(&err), "57014");
    assert!(cancelled_at.elapsed() < Duration::from_secs(1), "took {:?}", cancelled_at.elapsed());
    let one: i64 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "connection usable after cancel");
}

#[tokio::test]
async fn pg_cancel_backend_from_another_connection() {
    let server = Server::start();
    let victim = server.connect().await;
    let pid: i32 = victim.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let other = server.connect().await;
    let other_pid: i32 = other.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    assert_ne!(pid, other_pid, "pids are unique per connection");
    let task = tokio::spawn(async move { (victim.query(LONG_QUERY, &[]).await.map(|_| ()), victim) });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let started = Instant::now();
    let ok: bool = other
        .query_one("SELECT pg_cancel_backend($1::int4)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(ok);
    let (result, victim) = task.await.unwrap();
    assert_eq!(sqlstate(&result.unwrap_err()), "57014");
    assert!(started.elapsed() < Duration::from_secs(1));
    victim.query_one("SELECT 1", &[]).await.expect("usable after cancel");
}

#[tokio::test]
async fn statement_timeout_bounds_execution() {
    let server = Server::start();
    let client = server.connect().await;
    client.simple_query("SET statement_timeout = '1s'").await.unwrap();
    let started = Instant::now();
    let err = client.query(LONG_QUERY, &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "57014");
    assert!(err.as_db_error().unwrap().message().contains("statement timeout"));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(3), "took {took:?}");
    client.simple_query("SET statement_timeout = 0").await.unwrap();
    let one: i64 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn a_panic_in_one_query_does_not_take_the_server_down() {
    let server = Server::start();
    let client = server.connect().await;
    let bystander = server.connect().await;
    for sql in ["SELECT workbench_debug_panic()", "SELECT x FROM (SELECT workbench_debug_panic() AS x, 1 AS y) t"] {
        let err = client.simple_query(sql).await.unwrap_err();
        assert_eq!(sqlstate(&err), "XX000", "{sql}");
        let err = client.query(sql, &[]).await.unwrap_err();
        assert_eq!(sqlstate(&err), "XX000", "{sql} (extended)");
    }
    let one: i64 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "same connection still usable");
    let two: i64 = bystander.query_one("SELECT 2", &[]).await.unwrap().get(0);
    assert_eq!(two, 2, "other connections unaffected");
    server.connect().await.query_one("SELECT 3", &[]).await.expect("new connections accepted");
}

#[tokio::test]
async fn too_many_connections_get_a_clean_error() {
    let server = Server::start_with(ServerOptions {
        args: vec!["--max-connections".into(), "2".into()],
        ..Default::default()
    });
    let a = server.connect().await;
    let _b = server.connect().await;
    let err = server.connect_as("workbench", None).await.unwrap_err();
    assert_eq!(sqlstate(&err), "53300");
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.connect().await.query_one("SELECT 1", &[]).await.expect("slot freed");
}

#[tokio::test]
async fn query_memory_limit_gives_a_clean_error() {
    let server = Server::start_with(ServerOptions {
        args: vec!["--query-memory-limit".into(), "8MiB".into()],
        ..Default::default()
    });
    let client = server.connect().await;
    let err = client
        .query(
            "SELECT cardinality(array_agg(x)) FROM generate_series(1, 20000000) AS t(x)",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "53200", "{err:?}");
    let message = err.as_db_error().map(|e| e.message().to_string()).unwrap_or_default();
    assert!(message.contains("(query_memory_limit, 8.0 MiB) is used up; raise query_memory_limit"), "names the setting: {message}");
    client.query_one("SELECT 1", &[]).await.expect("usable after");
}

#[tokio::test]
async fn sigterm_cancels_running_queries_after_the_deadline_and_exits() {
    // A scan that yields at every batch, and a CPU-heavy cross join over no
    // table (it once kept the server from hearing SIGTERM at all).
    for query in [LONG_QUERY, crate::hardening::HEAVY] {
        let mut server = Server::start_with(ServerOptions {
            args: vec!["--shutdown-timeout".into(), "500ms".into()],
            ..Default::default()
        });
        let client = server.connect().await;
        let task = tokio::spawn(async move { client.simple_query(query).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        let status = server.terminate(Duration::from_secs(10)).expect("server exited");
        assert!(status.success(), "{query}: exit status {status:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{query}: shutdown took {:?}", started.elapsed());
        let err = task.await.unwrap().unwrap_err();
        if let Some(db) = err.as_db_error() {
            assert_eq!(db.code().code(), "57P01");
        }
    }
}

#[tokio::test]
async fn copy_to_stdout_in_text_csv_and_binary() {
    use futures::TryStreamExt;
    let server = server_with_orders().await;
    let out = server.psql_ok(&[
        "COPY (SELECT id, region, CASE WHEN id = 1 THEN NULL ELSE 'a,\"b' END AS tricky FROM silver.orders WHERE id < 3 ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)",
    ]);
    assert_eq!(out, "id,region,tricky\n0,north,\"a,\"\"b\"\n1,south,\n2,east,\"a,\"\"b\"\n");
    let out = server.psql_ok(&["COPY silver.orders (id, amount) TO STDOUT"]);
    assert_eq!(out.lines().count(), 300);
    assert!(out.starts_with("0\t0.25\n") || out.contains("\n0\t0.25\n"), "{}", &out[..80]);

    let client = server.connect().await;
    let stream = client
        .copy_out("COPY (SELECT id FROM silver.orders WHERE id < 2 ORDER BY id) TO STDOUT (FORMAT binary)")
        .await
        .expect("binary copy");
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    let data: Vec<u8> = chunks.concat();
    assert!(data.starts_with(b"PGCOPY\n\xff\r\n\0"), "{data:?}");
    // header 19 bytes, then two tuples of (i16 count, i32 len 8, i64), then trailer -1.
    assert_eq!(data.len(), 19 + 2 * (2 + 4 + 8) + 2);
    assert_eq!(&data[data.len() - 2..], &[0xff, 0xff]);
}

#[tokio::test]
async fn set_time_zone_with_a_quoted_name_and_set_role() {
    let server = Server::start();
    let client = server.connect().await;
    for (set, zone) in [
        ("SET TIME ZONE \"Asia/Shanghai\"", "Asia/Shanghai"),
        ("SET TIME ZONE 'America/Santiago'", "America/Santiago"),
        ("SET TIME ZONE LOCAL", "UTC"),
    ] {
        client.simple_query(set).await.unwrap_or_else(|e| panic!("{set}: {e:?}"));
        let row = client.query_one("SELECT current_setting('TimeZone')", &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), zone, "{set}");
    }
    let err = client.simple_query("SET TIME ZONE \"Mars/Olympus\"").await.unwrap_err();
    assert_eq!(sqlstate(&err), "22023", "{err:?}");
    // Privileges come from the config's roles; switching role is refused, not ignored.
    client.simple_query("SET ROLE workbench").await.unwrap();
    client.simple_query("SET ROLE NONE").await.unwrap();
    let err = client.simple_query("SET ROLE analyst").await.unwrap_err();
    assert_eq!(sqlstate(&err), "0A000");
    let err = client.simple_query("SET SESSION AUTHORIZATION maria").await.unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
}
