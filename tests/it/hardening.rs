//! One client can never hurt the others (issue 14): each test is a failure
//! a hostile or careless client once caused, replayed over a real socket.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::{Server, ServerOptions, sqlstate};

/// Computes for hours without reading any lake table (10^10 rows).
pub const HEAVY: &str = "SELECT count(*) FROM generate_series(1, 100000) a(x) CROSS JOIN generate_series(1, 100000) b(y) WHERE a.x + b.y = 7";

/// The SQLSTATE of a simple-protocol `sql`, which must fail.
async fn fails_with(client: &tokio_postgres::Client, sql: &str) -> (String, String) {
    let err = client
        .simple_query(sql)
        .await
        .map(|_| ())
        .expect_err(&format!("{sql} should fail"));
    let db = err.as_db_error().unwrap_or_else(|| panic!("{sql}: not a server error: {err:?}"));
    (db.code().code().to_string(), db.message().to_string())
}

async fn one_value(client: &tokio_postgres::Client, sql: &str) -> String {
    let messages = client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_string()),
            _ => None,
        })
        .expect("a row")
}

#[tokio::test]
async fn a_cpu_heavy_query_without_lake_tables_neither_stalls_others_nor_outlives_cancel_or_timeout() {
    let server = Server::start();
    let heavy = server.connect().await;
    let cancel = heavy.cancel_token();
    let running = tokio::spawn(async move { heavy.simple_query(HEAVY).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Before: every other client waited 45 s or more for `select 1`.
    let other = server.connect().await;
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let started = Instant::now();
        assert_eq!(one_value(&other, "SELECT 1").await, "1");
        one_value(&other, "SELECT count(*) FROM pg_catalog.pg_class").await;
        slowest = slowest.max(started.elapsed());
    }
    assert!(slowest < Duration::from_secs(5), "select 1 + a catalog query took {slowest:?} while a heavy query ran");

    let cancelled_at = Instant::now();
    cancel.cancel_query(tokio_postgres::NoTls).await.expect("send cancel");
    let err = running.await.unwrap().expect_err("cancelled");
    assert_eq!(sqlstate(&err), "57014");
    assert!(cancelled_at.elapsed() < Duration::from_secs(3), "cancel took {:?}", cancelled_at.elapsed());

    // statement_timeout fires on time for the same query.
    other.simple_query("SET statement_timeout = '1s'").await.unwrap();
    let started = Instant::now();
    let (code, _) = fails_with(&other, HEAVY).await;
    assert_eq!(code, "57014");
    assert!(started.elapsed() < Duration::from_secs(4), "timeout fired after {:?}", started.elapsed());
    other.simple_query("SET statement_timeout = 0").await.unwrap();
    assert_eq!(one_value(&other, "SELECT 2").await, "2");
}

#[tokio::test]
async fn functions_refuse_values_over_the_field_limit_and_the_query_budget() {
    let server = Server::start_with(ServerOptions {
        args: vec!["--query-memory-limit".into(), "64MiB".into()],
        ..Default::default()
    });
    let client = server.connect().await;
    // Each of these once grew the server to gigabytes or killed it.
    for sql in [
        "SELECT length(repeat('x', 2000000000))",
        "SELECT length(lpad('x', 2147483647))",
        "SELECT length(rpad('x', 2147483647, 'ab'))",
        "SELECT cardinality(array_repeat(1, 2000000000))",
        "SELECT cardinality(range(1, 1000000000000))",
    ] {
        let (code, message) = fails_with(&client, sql).await;
        assert_eq!(code, "54000", "{sql}: {message}");
        assert!(message.contains("requested length too large"), "{sql}: {message}");
    }
    // Under the field limit but over this connection's 64 MiB budget.
    let (code, message) = fails_with(&client, "SELECT length(repeat('x', 100000000))").await;
    assert_eq!(code, "53200", "{message}");
    // Per row of a column, too.
    let (code, message) = fails_with(&client, "SELECT max(length(repeat('ab', x * 1000000))) FROM generate_series(1, 40) t(x)").await;
    assert_eq!(code, "53200", "{message}");
    // Ordinary sizes still work.
    assert_eq!(one_value(&client, "SELECT length(repeat('ab', 1000000))").await, "2000000");
    assert_eq!(one_value(&client, "SELECT lpad('7', 3, '0')").await, "007");
    assert_eq!(one_value(&client, "SELECT cardinality(array_repeat('a', 1000))").await, "1000");
}

/// `a op a op ... a` with `n` terms.
fn chain(term: &str, op: &str, n: usize) -> String {
    vec![term; n].join(op)
}

#[tokio::test]
async fn deep_generated_expressions_run_and_deeper_ones_get_54001() {
    let server = Server::start();
    let client = server.connect().await;
    // Each of these once overflowed a thread's stack and aborted the process.
    assert_eq!(one_value(&client, &format!("SELECT {}", chain("1", "+", 1000))).await, "1000");
    let text = one_value(&client, &format!("SELECT length({})", chain("'a'", "||", 1000))).await;
    assert_eq!(text, "1000");
    let filter = (1..=300).map(|n| format!("x <> {n}")).collect::<Vec<_>>().join(" AND ");
    let kept = one_value(&client, &format!("SELECT count(*) FROM generate_series(1, 1000) t(x) WHERE {filter}")).await;
    assert_eq!(kept, "700");
    // A BI filter of 10,000 values, as an OR list and as IN.
    let or_list = (1..=10_000).map(|n| format!("x = {n}")).collect::<Vec<_>>().join(" OR ");
    let hits = one_value(&client, &format!("SELECT count(*) FROM generate_series(1, 20000) t(x) WHERE {or_list}")).await;
    assert_eq!(hits, "10000");
    let or_list = (1..=20_000).map(|n| format!("x = {n}")).collect::<Vec<_>>().join(" OR ");
    let hits = one_value(&client, &format!("SELECT count(*) FROM generate_series(1, 30000) t(x) WHERE {or_list}")).await;
    assert_eq!(hits, "20000");
    let in_list = (1..=10_000).map(|n| n.to_string()).collect::<Vec<_>>().join(", ");
    let hits = one_value(&client, &format!("SELECT count(*) FROM generate_series(1, 20000) t(x) WHERE x IN ({in_list})")).await;
    assert_eq!(hits, "10000");
    // Past the documented depth: a clean error, and the server lives on.
    let (code, message) = fails_with(&client, &format!("SELECT {}", chain("1", "+", 20_000))).await;
    assert_eq!(code, "54001", "{message}");
    let nested = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
    let (code, message) = fails_with(&client, &nested).await;
    assert_eq!(code, "54001", "{message}");
    assert_eq!(one_value(&client, "SELECT 3").await, "3");
}

#[tokio::test]
async fn arithmetic_errors_as_postgres_instead_of_wrong_numbers() {
    let server = Server::start();
    let client = server.connect().await;
    for (sql, code) in [
        ("SELECT 9223372036854775807 + 1", "22003"),
        ("SELECT -9223372036854775807 - 10", "22003"),
        ("SELECT 4611686018427387904 * 4", "22003"),
        ("SELECT 2147483647::int4 + 1::int4", "22003"),
        ("SELECT max(x) * 9223372036854775807 FROM generate_series(1, 3) t(x)", "22003"),
        ("SELECT 1 / 0", "22012"),
        ("SELECT 1.0 / 0", "22012"),
        ("SELECT 1.5::float8 / 0::float8", "22012"),
        ("SELECT x / (x - 2)::float8 FROM generate_series(1, 3) t(x)", "22012"),
    ] {
        let (got, message) = fails_with(&client, sql).await;
        assert_eq!(got, code, "{sql}: {message}");
    }
    // Results and labels of ordinary arithmetic are unchanged.
    let rows = client.query("SELECT 2 + 3, 7 * 6 AS answer, 10 - 4, 7.5::float8 / 2.5::float8", &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 5);
    assert_eq!(rows[0].get::<_, i64>(1), 42);
    assert_eq!(rows[0].get::<_, i64>(2), 6);
    assert_eq!(rows[0].get::<_, f64>(3), 3.0);
    assert_eq!(rows[0].columns()[0].name(), "?column?");
    assert_eq!(rows[0].columns()[1].name(), "answer");
    assert_eq!(
        one_value(&client, "SELECT sum(x * 2 + 1) FROM generate_series(1, 100) t(x) WHERE x % 2 = 0").await,
        "5150"
    );
}

#[tokio::test]
async fn table_at_a_version_far_past_the_latest_fails_at_once() {
    let server = Server::start();
    crate::harness::write_table(
        server.lake(),
        "silver",
        "orders",
        crate::harness::orders_batch(0..10),
        deltalake::protocol::SaveMode::Overwrite,
    )
    .await;
    let client = server.connect().await;
    client.simple_query("SET statement_timeout = '10s'").await.unwrap();
    let started = Instant::now();
    let (code, message) = fails_with(&client, "SELECT * FROM table_at('silver.orders', 4611686018427387904)").await;
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_ne!(code, "57014", "ran into the timeout: {message}");
    assert!(message.contains("versions are 0 to 0"), "{message}");
    assert_eq!(one_value(&client, "SELECT count(*) FROM table_at('silver.orders', 0)").await, "10");
}

/// The nice value of each of the server's threads named `prefix...`.
fn thread_nice(pid: u32, prefix: &str) -> Vec<i64> {
    let mut nice = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("the server's threads") {
        let dir = task.unwrap().path();
        let (Ok(comm), Ok(stat)) = (std::fs::read_to_string(dir.join("comm")), std::fs::read_to_string(dir.join("stat"))) else {
            continue; // the thread ended meanwhile
        };
        if comm.trim().starts_with(prefix) {
            // After "(comm) ", the fields from the third on; nice is the 19th.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            nice.push(rest.split(' ').nth(16).unwrap().parse().unwrap());
        }
    }
    nice
}

#[tokio::test]
async fn lake_scans_run_at_the_configured_lower_priority_and_statements_do_not() {
    let options = ServerOptions { config_yaml: "scan_nice: 7\n".into(), ..Default::default() };
    let server = Server::start_with(options);
    crate::harness::write_table(server.lake(), "silver", "orders", crate::harness::orders_batch(0..1000), deltalake::protocol::SaveMode::Overwrite)
        .await;
    let client = server.connect().await;
    assert_eq!(one_value(&client, "SELECT count(*) FROM silver.orders WHERE id >= 0").await, "1000");
    assert!(one_value(&client, "SELECT count(*) FROM pg_catalog.pg_class").await.parse::<i64>().unwrap() > 0);
    let scans = thread_nice(server.pid(), "workbench-scan");
    assert!(!scans.is_empty(), "no scan thread after a lake query");
    assert!(scans.iter().all(|n| *n == 7), "scan threads' nice values: {scans:?}");
    let statements = thread_nice(server.pid(), "workbench-stat");
    assert!(!statements.is_empty() && statements.iter().all(|n| *n == 0), "statement threads' nice values: {statements:?}");

    // Out of range: the server does not start, and says what to write.
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("bad.yaml");
    std::fs::write(&config, "scan_nice: 25\n").unwrap();
    let out = std::process::Command::new(crate::harness::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--http-listen", "off", "--lake"])
        .arg(dir.path())
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with scan_nice 25");
    assert!(stderr.contains("invalid scan_nice '25'") && stderr.contains("0 (scans at the priority"), "{stderr}");
}

// --- the wire protocol ------------------------------------------------------

/// A raw protocol connection, for messages no well-behaved client sends.
struct Raw {
    socket: TcpStream,
}

impl Raw {
    fn connect(server: &Server) -> Raw {
        let socket = TcpStream::connect(server.addr).expect("connect");
        socket.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        Raw { socket }
    }

    fn startup(&mut self, user: &str) {
        let mut body = Vec::new();
        body.extend_from_slice(&196608i32.to_be_bytes());
        for (k, v) in [("user", user), ("database", "workbench")] {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        packet.extend_from_slice(&body);
        self.socket.write_all(&packet).unwrap();
    }

    fn send(&mut self, tag: u8, body: &[u8]) {
        let mut packet = vec![tag];
        packet.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        packet.extend_from_slice(body);
        self.socket.write_all(&packet).unwrap();
    }

    /// The next message (tag, body), or None at end of stream.
    fn next(&mut self) -> Option<(u8, Vec<u8>)> {
        let mut header = [0u8; 5];
        self.socket.read_exact(&mut header).ok()?;
        let len = i32::from_be_bytes(header[1..5].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len - 4];
        self.socket.read_exact(&mut body).ok()?;
        Some((header[0], body))
    }

    /// Every message until the server closes the connection.
    fn until_closed(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut all = Vec::new();
        while let Some(message) = self.next() {
            all.push(message);
        }
        all
    }

    fn until_ready(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut all = Vec::new();
        while let Some(message) = self.next() {
            let ready = message.0 == b'Z';
            all.push(message);
            if ready {
                break;
            }
        }
        all
    }
}

/// The (severity, code, message) of an ErrorResponse body.
fn error_fields(body: &[u8]) -> (String, String, String) {
    let mut fields = std::collections::HashMap::new();
    for field in body.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        fields.insert(field[0], String::from_utf8_lossy(&field[1..]).to_string());
    }
    (fields[&b'S'].clone(), fields[&b'C'].clone(), fields[&b'M'].clone())
}

#[tokio::test]
async fn several_statements_in_one_parse_are_refused() {
    let server = Server::start();
    let client = server.connect().await;
    let err = client.prepare("SELECT 1; SELECT 2").await.expect_err("two statements in one Parse");
    assert_eq!(sqlstate(&err), "42601");
    assert!(err.as_db_error().unwrap().message().contains("multiple commands"), "{err:?}");
    let one: i32 = client.query_one("SELECT 1::int4", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn malformed_messages_get_08p01_and_close_only_that_connection() {
    let server = Server::start();
    // A Bind whose body ends in the middle of its parameter formats.
    let mut raw = Raw::connect(&server);
    raw.startup("workbench");
    raw.until_ready();
    raw.send(b'P', b"\0SELECT $1::int4\0\0\0");
    raw.send(b'B', b"\0\0\0\x05\0");
    raw.send(b'S', b"");
    let messages = raw.until_closed();
    let errors: Vec<_> = messages.iter().filter(|(t, _)| *t == b'E').map(|(_, b)| error_fields(b)).collect();
    assert!(errors.iter().any(|(s, c, _)| s == "FATAL" && c == "08P01"), "{errors:?}");
    // A message type that does not exist, and a length no message has.
    for bytes in [&[b'y', 0, 0, 0, 4][..], &[b'Q', 0x7f, 0xff, 0xff, 0xff][..]] {
        let mut raw = Raw::connect(&server);
        raw.startup("workbench");
        raw.until_ready();
        raw.socket.write_all(bytes).unwrap();
        let messages = raw.until_closed();
        assert!(
            messages.iter().any(|(t, b)| *t == b'E' && error_fields(b).1 == "08P01"),
            "{bytes:?}: {messages:?}"
        );
    }
    // The server and other clients carry on.
    let client = server.connect().await;
    assert_eq!(one_value(&client, "SELECT 42").await, "42");
    assert!(server.log_text().contains("protocol violation"), "{}", server.log_text());
}

#[tokio::test]
async fn a_fatal_error_at_startup_is_the_last_message() {
    let server = Server::start_with(ServerOptions {
        args: vec!["--max-connections".into(), "1".into()],
        ..Default::default()
    });
    let _holder = server.connect().await;
    let mut raw = Raw::connect(&server);
    raw.startup("workbench");
    let messages = raw.until_closed();
    let tags: Vec<char> = messages.iter().map(|(t, _)| *t as char).collect();
    assert_eq!(tags, vec!['E'], "{messages:?}");
    let (severity, code, _) = error_fields(&messages[0].1);
    assert_eq!((severity.as_str(), code.as_str()), ("FATAL", "53300"));
}

#[tokio::test]
async fn wrong_password_names_the_user_and_empty_passwords_never_count() {
    let password_env = "WB_TEST_EMPTY_PASSWORD";
    // A variable set to "" is refused at startup, whatever the listen address.
    let lake = tempfile::TempDir::new().unwrap();
    let config = lake.path().join("config.yaml");
    std::fs::write(&config, format!("users:\n  - name: etl\n    password_env: {password_env}\n")).unwrap();
    let out = std::process::Command::new(crate::harness::BIN)
        .args(["serve", "--listen", "0.0.0.0:0", "--lake"])
        .arg(lake.path())
        .arg("--config")
        .arg(&config)
        .env(password_env, "")
        .output()
        .unwrap();
    assert!(!out.status.success(), "a server started with an empty password");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(password_env) && stderr.contains("empty"), "{stderr}");

    let hash = crate::harness::hash_password("pampa del tamarugal");
    let server = Server::start_with(ServerOptions {
        config_yaml: format!("users:\n  - name: maria\n    password_hash: \"{hash}\"\n"),
        ..Default::default()
    });
    let err = server.connect_as("maria", Some("atacama")).await.unwrap_err();
    assert_eq!(sqlstate(&err), "28P01");
    let message = err.as_db_error().unwrap().message().to_string();
    assert!(message.contains("\"maria\""), "{message}");
    let err = server.connect_as("maria", Some("")).await.unwrap_err();
    assert_eq!(sqlstate(&err), "28P01");
    server.connect_as("maria", Some("pampa del tamarugal")).await.expect("the right password logs in");
}

#[tokio::test]
async fn silent_sockets_take_no_connection_slot_and_are_closed_after_the_timeout() {
    let server = Server::start_with(ServerOptions {
        args: vec![
            "--max-connections".into(),
            "2".into(),
            "--authentication-timeout".into(),
            "1s".into(),
        ],
        ..Default::default()
    });
    let mut silent: Vec<TcpStream> = (0..30).map(|_| TcpStream::connect(server.addr).unwrap()).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Before: 100 silent sockets locked everyone out for a minute.
    let a = server.connect().await;
    let b = server.connect().await;
    assert_eq!(one_value(&a, "SELECT 1").await, "1");
    assert_eq!(one_value(&b, "SELECT 2").await, "2");
    let started = Instant::now();
    for socket in &mut silent {
        socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 256];
        // Closed by the server (0 bytes) after the authentication timeout.
        loop {
            match socket.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            }
        }
    }
    assert!(started.elapsed() < Duration::from_secs(6), "silent sockets closed after {:?}", started.elapsed());
}

#[tokio::test]
async fn secrets_written_in_a_spec_are_never_served_and_check_points_to_env() {
    let specs = tempfile::TempDir::new().unwrap();
    let spec = "name: erp_accounts\n\
                source:\n  \
                  format: postgres\n  \
                  url: postgres://postgres:hunter2@127.0.0.1:5432/postgres?sslmode=disable\n  \
                  query: SELECT 1 AS id\n";
    std::fs::write(specs.path().join("erp_accounts.yaml"), spec).unwrap();
    let lake = tempfile::TempDir::new().unwrap();
    let out = std::process::Command::new(crate::harness::BIN)
        .arg("check")
        .arg("--lake")
        .arg(lake.path())
        .arg("--specs")
        .arg(specs.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "an inline secret is a warning, not an error: {stderr}");
    let file = specs.path().join("erp_accounts.yaml");
    let expected = format!("{}:4:28: warning: a password in a URL", file.display());
    assert!(stderr.contains(&expected), "expected {expected} in:\n{stderr}");
    assert!(stderr.contains("env:"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");

    let server = Server::start_in(
        lake,
        ServerOptions {
            args: vec!["--specs".into(), specs.path().display().to_string()],
            ..Default::default()
        },
    );
    let client = server.connect().await;
    let text = one_value(&client, "SELECT spec_text FROM workbench.datasets WHERE name = 'erp_accounts'").await;
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("postgres://postgres:********@127.0.0.1:5432/postgres?sslmode=disable"), "{text}");
    assert!(!server.log_text().contains("hunter2"), "{}", server.log_text());
}

#[tokio::test]
async fn a_run_whose_process_was_killed_is_marked_abandoned() {
    let lake = tempfile::TempDir::new().unwrap();
    let specs = tempfile::TempDir::new().unwrap();
    // A source that takes long enough to kill the run in the middle of it.
    std::fs::write(
        specs.path().join("slow.yaml"),
        "name: slow\nsource:\n  format: postgres\n  url: postgres://postgres@127.0.0.1:5432/postgres\n  query: SELECT 1 AS id FROM pg_sleep(60)\n",
    )
    .unwrap();
    let mut run = std::process::Command::new(crate::harness::BIN)
        .args(["run", "slow", "--lock-ttl", "1s", "--lake"])
        .arg(lake.path())
        .arg("--specs")
        .arg(specs.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start workbench run");
    tokio::time::sleep(Duration::from_secs(3)).await;
    run.kill().expect("kill the run");
    run.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let server = Server::start_in(
        lake,
        ServerOptions {
            args: vec!["--specs".into(), specs.path().display().to_string(), "--lock-ttl".into(), "1s".into()],
            ..Default::default()
        },
    );
    let client = server.connect().await;
    let row = one_value(
        &client,
        "SELECT status || ': ' || error FROM workbench.runs WHERE trigger = 'cli' ORDER BY started_at LIMIT 1",
    )
    .await;
    assert!(row.starts_with("abandoned: abandoned: the process running it stopped"), "{row}");
}

#[tokio::test]
async fn dates_and_timestamps_no_client_type_can_hold_are_errors_not_nulls() {
    let server = Server::start();
    let client = server.connect().await;
    for sql in [
        "SELECT arrow_cast(9223372036854775807, 'Timestamp(Second, None)')",
        "SELECT arrow_cast(9223372036854775807, 'Timestamp(Second, Some(\"UTC\"))')",
        "SELECT arrow_cast(-9223372036854775807, 'Timestamp(Millisecond, Some(\"UTC\"))')",
        "SELECT arrow_cast(9223372036854775807, 'Date64')",
        "SELECT arrow_cast(2147483647, 'Date32')",
        "SELECT arrow_cast(86400000000000, 'Time64(Nanosecond)')",
    ] {
        let (code, message) = fails_with(&client, sql).await;
        assert_eq!(code, "22008", "{sql}: {message}");
    }
    // The same types in range are values, in text and in binary.
    assert_eq!(
        one_value(&client, "SELECT arrow_cast(86399, 'Timestamp(Second, None)')").await,
        "1970-01-01 23:59:59"
    );
    let row = client
        .query_one("SELECT arrow_cast(1700000000, 'Timestamp(Second, None)') AS t", &[])
        .await
        .unwrap();
    let t: std::time::SystemTime = row.get(0);
    assert_eq!(t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(), 1_700_000_000);
    assert_ne!(one_value(&client, "SELECT arrow_cast(43200000000000, 'Time64(Nanosecond)')").await, "NULL");
}

/// A small deterministic generator, so a failing case can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Valid frontend messages to mutate.
fn message_templates() -> Vec<Vec<u8>> {
    let framed = |tag: u8, body: &[u8]| {
        let mut m = vec![tag];
        m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        m.extend_from_slice(body);
        m
    };
    vec![
        framed(b'Q', b"SELECT 1\0"),
        framed(b'P', b"s1\0SELECT $1::int4 + 1\0\0\x01\0\0\0\x17"),
        framed(b'B', b"\0s1\0\0\x01\0\x01\0\x01\0\0\0\x04\0\0\0\x07\0\x01\0\x01"),
        framed(b'D', b"Ss1\0"),
        framed(b'E', b"\0\0\0\0\0"),
        framed(b'C', b"Ss1\0"),
        framed(b'H', b""),
        framed(b'S', b""),
        framed(b'd', b"1\t2\n"),
        framed(b'c', b""),
        framed(b'f', b"oops\0"),
        framed(b'F', b"\0\0\0\x01\0\x01\0\x01\0\0\0\x04\0\0\0\x01\0\x01"),
    ]
}

#[tokio::test]
async fn fuzzed_protocol_messages_never_take_the_server_down() {
    let server = Server::start();
    let templates = message_templates();
    let mut rng = Lcg(0x5eed_2026);
    let started = Instant::now();
    let mut cases = 0;
    while cases < 300 && started.elapsed() < Duration::from_secs(30) {
        cases += 1;
        let mut raw = Raw::connect(&server);
        raw.socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        raw.startup("workbench");
        raw.until_ready();
        // A few messages, each valid, mutated, truncated or random.
        let mut bytes = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let mut message = templates[rng.below(templates.len())].clone();
            match rng.below(5) {
                0 => {}
                1 => {
                    for _ in 0..1 + rng.below(4) {
                        let at = rng.below(message.len());
                        message[at] = rng.next() as u8;
                    }
                }
                2 => message.truncate(rng.below(message.len())),
                3 => {
                    let at = 1 + rng.below(4);
                    message[at] = rng.next() as u8;
                }
                _ => message = (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
            }
            bytes.extend_from_slice(&message);
        }
        let _ = raw.socket.write_all(&bytes);
        let _ = raw.socket.write_all(b"S\0\0\0\x04Q\0\0\0\x0dSELECT 1\0");
        // Whatever comes back must be well-framed messages until the server
        // answers, closes the connection, or waits for bytes we never send.
        let mut header = [0u8; 5];
        while raw.socket.read_exact(&mut header).is_ok() {
            let len = i32::from_be_bytes(header[1..5].try_into().unwrap());
            assert!((4..1 << 20).contains(&len), "case {cases}: a malformed reply {header:?} to {bytes:?}");
            let mut body = vec![0u8; len as usize - 4];
            if raw.socket.read_exact(&mut body).is_err() {
                break;
            }
        }
    }
    // The server is still here, and serves a normal client.
    let client = server.connect().await;
    assert_eq!(one_value(&client, "SELECT 7").await, "7", "after {cases} fuzzed connections");
}

#[tokio::test]
async fn a_run_error_that_echoes_a_connection_string_is_redacted_everywhere() {
    let specs = tempfile::TempDir::new().unwrap();
    std::fs::write(
        specs.path().join("leaky.yaml"),
        "name: leaky\nsource:\n  format: postgres\n  url: postgres://postgres@127.0.0.1:5432/postgres\n  \
         query: \"SELECT 'postgres://etl:hunter2@erp.internal/gl'::int AS id\"\n",
    )
    .unwrap();
    let server = Server::start_with(ServerOptions {
        args: vec!["--specs".into(), specs.path().display().to_string()],
        ..Default::default()
    });
    let client = server.connect().await;
    // The server first builds the dataset itself (and fails): wait for that run.
    let started = Instant::now();
    while one_value(&client, "SELECT count(*) FROM workbench.runs WHERE status = 'failed'").await == "0" {
        assert!(started.elapsed() < Duration::from_secs(30), "{}", server.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A failed run answers with its steps, the failure in `message`.
    let message = one_value(&client, "SELECT string_agg(coalesce(message, ''), ' ') FROM run('leaky')").await;
    assert!(message.contains("postgres://etl:********@erp.internal/gl"), "{message}");
    let recorded = one_value(&client, "SELECT string_agg(error, ' | ') FROM workbench.runs").await;
    assert!(recorded.contains("********") && !recorded.contains("hunter2"), "{recorded}");
    assert!(!server.log_text().contains("hunter2"), "{}", server.log_text());
}

#[tokio::test]
async fn sockets_logging_in_are_capped_and_all_queries_share_the_server_budget() {
    let server = Server::start_with(ServerOptions {
        config_yaml: "max_startup_connections: 3\nauthentication_timeout: 1s\nserver_memory_limit: 64MiB\n".into(),
        ..Default::default()
    });
    let silent: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(server.addr).unwrap()).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A fourth socket that has not logged in is closed at once.
    let mut extra = TcpStream::connect(server.addr).unwrap();
    extra.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    assert_eq!(extra.read(&mut [0u8; 16]).unwrap_or(0), 0);
    assert!(started.elapsed() < Duration::from_millis(900), "closed after {:?}", started.elapsed());
    // Once the silent ones time out, clients log in again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(silent);
    let client = server.connect().await;
    // The per-query limit (2 GiB by default) allows it; the server's 64 MiB does not.
    let (code, message) = fails_with(&client, "SELECT length(repeat('x', 100000000))").await;
    assert_eq!(code, "53200", "{message}");
    assert!(message.contains("server_memory_limit"), "{message}");
    assert_eq!(one_value(&client, "SELECT length(repeat('x', 1000))").await, "1000");
}
