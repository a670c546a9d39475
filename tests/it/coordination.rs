//! Run locks and run events: in-process (embedded) and Redis + Postgres
//! shared by two server processes.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{BIN, PrivatePostgres, Server, ServerOptions, replica_args};
use crate::metadata::ScratchDb;

fn prefix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("wbtest:{}:{nanos}:", std::process::id())
}

fn redis_cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli").args(["-h", "127.0.0.1", "-p", "6379"]).args(args).output().expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A lake + specs with one dataset big enough that a run lasts a while.
fn big_dataset() -> (tempfile::TempDir, tempfile::TempDir) {
    let lake = tempfile::TempDir::new().unwrap();
    let specs = tempfile::TempDir::new().unwrap();
    std::fs::create_dir_all(lake.path().join("landing/big")).unwrap();
    let mut rows = String::from("n,label\n");
    for n in 0..150_000 {
        rows.push_str(&format!("{n},label {n}\n"));
    }
    std::fs::write(lake.path().join("landing/big/a.csv"), rows).unwrap();
    std::fs::write(
        specs.path().join("big.yaml"),
        "name: big\nsource: { format: csv, path: landing/big/*.csv }\nsilver:\n  mode: append\n  rules:\n    - type_cast: { n: bigint }\n",
    )
    .unwrap();
    (lake, specs)
}

/// Fire `calls` concurrent `run('big')` queries spread over `servers`;
/// returns (successes, lock errors).
async fn race(servers: &[&Server], calls: usize) -> (usize, Vec<String>) {
    let mut clients = Vec::new();
    for i in 0..calls {
        clients.push(servers[i % servers.len()].connect().await);
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(calls));
    let mut tasks = Vec::new();
    for client in clients {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            client.simple_query("SELECT status FROM run('big')").await.map(|_| ())
        }));
    }
    let mut ok = 0;
    let mut locked = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => ok += 1,
            Err(err) => {
                let db = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
                assert_eq!(db.code().code(), "55P03", "{}", db.message());
                locked.push(db.message().to_string());
            }
        }
    }
    (ok, locked)
}

#[tokio::test]
async fn ten_concurrent_runs_one_runs_the_others_name_the_holder_embedded() {
    let (lake, specs) = big_dataset();
    // Build once so the start-up build is out of the way.
    let out = Command::new(BIN).args(["run", "big", "--lake"]).arg(lake.path()).arg("--specs").arg(specs.path()).output().unwrap();
    assert!(out.status.success());
    std::fs::write(lake.path().join("landing/big/b.csv"), "n,label\n1,x\n").unwrap();
    let server = Server::start_at(
        lake.path(),
        ServerOptions { args: vec!["--specs".into(), specs.path().display().to_string()], ..Default::default() },
    );
    let (ok, locked) = race(&[&server], 10).await;
    assert_eq!(ok, 1, "exactly one run; lock errors: {locked:?}");
    assert_eq!(locked.len(), 9);
    assert!(locked[0].contains("already being run by run "), "{}", locked[0]);
    let client = server.connect().await;
    let n: i64 = client.query_one("SELECT count(*) FROM silver.big", &[]).await.unwrap().get(0);
    assert_eq!(n, 150_001, "no duplicate rows");
}

#[tokio::test]
async fn ten_concurrent_runs_across_two_servers_sharing_redis_and_postgres() {
    let (lake, specs) = big_dataset();
    let db = ScratchDb::create("locks");
    let prefix = prefix();
    let args = replica_args(specs.path(), &db.url(), &prefix);
    let a = Server::start_at(lake.path(), ServerOptions { args: args.clone(), ..Default::default() });
    // Wait for the start-up build (server a may be building; b sees it locked).
    let client = a.connect().await;
    let started = Instant::now();
    while client.query("SELECT 1 FROM silver.big LIMIT 1", &[]).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(90), "start-up build never finished\n{}", a.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let b = Server::start_at(lake.path(), ServerOptions { args, ..Default::default() });
    std::fs::write(lake.path().join("landing/big/b.csv"), "n,label\n1,x\n").unwrap();
    let (ok, locked) = race(&[&a, &b], 10).await;
    assert_eq!(ok, 1, "exactly one run across both servers; lock errors: {locked:?}");
    assert_eq!(locked.len(), 9);
    let n: i64 = client.query_one("SELECT count(*) FROM silver.big", &[]).await.unwrap().get(0);
    assert_eq!(n, 150_001, "no duplicate rows");
    let bronze: i64 = client.query_one("SELECT count(*) FROM bronze.big", &[]).await.unwrap().get(0);
    assert_eq!(bronze, 150_001);
    // Both servers read the same history from Postgres.
    let runs_a: i64 = client.query_one("SELECT count(*) FROM workbench.runs", &[]).await.unwrap().get(0);
    let runs_b: i64 = b.connect().await.query_one("SELECT count(*) FROM workbench.runs", &[]).await.unwrap().get(0);
    assert_eq!(runs_a, runs_b);
    // Events of every run are on the stream.
    let events = redis_cli(&["XRANGE", &format!("{prefix}workbench:runs"), "-", "+"]);
    assert!(events.contains("run_started") && events.contains("run_finished") && events.contains("step"), "{events}");
}

#[tokio::test]
async fn a_killed_holder_blocks_the_next_run_no_longer_than_the_lock_ttl() {
    let (lake, specs) = big_dataset();
    let prefix = prefix();
    let common = |cmd: &mut Command| {
        cmd.arg("--lake")
            .arg(lake.path())
            .arg("--specs")
            .arg(specs.path())
            .args(["--redis-url", "redis://127.0.0.1:6379", "--redis-prefix", &prefix, "--lock-ttl", "3s"]);
    };
    let mut first = Command::new(BIN);
    first.args(["run", "big"]);
    common(&mut first);
    let mut child = first.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let key = format!("{prefix}lock:dataset:big");
    let started = Instant::now();
    while redis_cli(&["EXISTS", &key]).trim() != "1" {
        assert!(started.elapsed() < Duration::from_secs(30), "the run never took its lock");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let killed_at = Instant::now();
    let mut refused = 0;
    let unlocked_after = loop {
        let attempt = killed_at.elapsed();
        let mut again = Command::new(BIN);
        again.args(["run", "big"]);
        common(&mut again);
        let out = again.output().unwrap();
        if out.status.success() {
            break attempt;
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("already being run by run"), "{stderr}");
        refused += 1;
        assert!(killed_at.elapsed() < Duration::from_secs(8), "still locked after the TTL");
        std::thread::sleep(Duration::from_millis(200));
    };
    // The lock TTL is 3 s; allow for process start-up of each attempt.
    assert!(unlocked_after < Duration::from_millis(4500), "lock outlived its TTL: {unlocked_after:?}");
    assert!(refused >= 1, "the dead holder's lock should have been seen at least once");
}

/// A private redis-server on a free port, so stopping it disturbs no other test.
struct PrivateRedis {
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    fn start(port: u16) -> PrivateRedis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        PrivateRedis { child: Some(child) }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn when_redis_goes_away_queries_work_runs_fail_clearly_and_recover_when_it_returns() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut redis = PrivateRedis::start(port);
    let lake = tempfile::TempDir::new().unwrap();
    let specs = tempfile::TempDir::new().unwrap();
    std::fs::create_dir_all(lake.path().join("landing/t")).unwrap();
    std::fs::write(lake.path().join("landing/t/a.csv"), "a\n1\n").unwrap();
    std::fs::write(specs.path().join("t.yaml"), "name: t\nsource: { format: csv, path: landing/t/*.csv }\nsilver: { rules: [] }\n").unwrap();
    let server = Server::start_at(
        lake.path(),
        ServerOptions {
            args: vec![
                "--specs".into(),
                specs.path().display().to_string(),
                "--redis-url".into(),
                format!("redis://127.0.0.1:{port}"),
            ],
            ..Default::default()
        },
    );
    let client = server.connect().await;
    let started = Instant::now();
    while client.query("SELECT 1 FROM silver.t", &[]).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "{}", server.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    redis.stop();
    let n: i64 = client.query_one("SELECT count(*) FROM silver.t", &[]).await.unwrap().get(0);
    assert_eq!(n, 1, "lake queries do not need Redis");
    let err = client.simple_query("SELECT * FROM run('t')").await.unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "08006", "{}", db.message());
    assert!(db.message().contains("lock"), "{}", db.message());
    let _redis = PrivateRedis::start(port);
    let started = Instant::now();
    loop {
        match client.simple_query("SELECT * FROM run('t')").await {
            Ok(_) => break,
            Err(err) if started.elapsed() < Duration::from_secs(20) => {
                let _ = err;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(err) => panic!("no recovery after Redis came back: {err}"),
        }
    }
}

/// A private PostgreSQL cluster on a free port (initdb + pg_ctl as the
/// `postgres` user), so stopping it disturbs no other test.
#[tokio::test]
async fn when_postgres_goes_away_queries_work_runs_fail_clearly_and_recover_when_it_returns() {
    let pg = PrivatePostgres::start();
    let lake = tempfile::TempDir::new().unwrap();
    let specs = tempfile::TempDir::new().unwrap();
    std::fs::create_dir_all(lake.path().join("landing/t")).unwrap();
    std::fs::write(lake.path().join("landing/t/a.csv"), "a\n1\n").unwrap();
    std::fs::write(specs.path().join("t.yaml"), "name: t\nsource: { format: csv, path: landing/t/*.csv }\nsilver: { rules: [] }\n").unwrap();
    let server = Server::start_at(
        lake.path(),
        ServerOptions {
            args: vec!["--specs".into(), specs.path().display().to_string(), "--database-url".into(), pg.url()],
            ..Default::default()
        },
    );
    let client = server.connect().await;
    let started = Instant::now();
    while client.query("SELECT 1 FROM silver.t", &[]).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "{}", server.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pg.down();
    let n: i64 = client.query_one("SELECT count(*) FROM silver.t", &[]).await.unwrap().get(0);
    assert_eq!(n, 1, "lake queries do not need the metadata store");
    let err = client.simple_query("SELECT * FROM run('t')").await.unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "08006", "{}", db.message());
    assert!(db.message().contains("metadata store"), "{}", db.message());
    pg.up();
    let started = Instant::now();
    loop {
        match client.simple_query("SELECT * FROM run('t')").await {
            Ok(_) => break,
            Err(err) if started.elapsed() < Duration::from_secs(20) => {
                let _ = err;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(err) => panic!("no recovery after Postgres came back: {err}"),
        }
    }
    let runs: i64 = client.query_one("SELECT count(*) FROM workbench.runs", &[]).await.unwrap().get(0);
    assert!(runs >= 2);
}

/// Start `workbench run big` on `lake` with `extra` flags; returns the child.
fn spawn_run(lake: &std::path::Path, specs: &std::path::Path, extra: &[&str]) -> std::process::Child {
    Command::new(BIN)
        .args(["run", "big", "--lake"])
        .arg(lake)
        .arg("--specs")
        .arg(specs)
        .args(extra)
        .env("RUST_LOG", "warn,workbench=info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start workbench run")
}

/// Rows and distinct `n` of bronze.big and silver.big, read by a server on `lake`.
async fn bronze_and_silver_counts(lake: tempfile::TempDir) -> (String, String) {
    let server = Server::start_in(lake, ServerOptions::default());
    let rows = crate::harness::rows(&server, "SELECT count(*), count(DISTINCT n) FROM bronze.big").await;
    let silver = crate::harness::rows(&server, "SELECT count(*), count(DISTINCT n) FROM silver.big").await;
    (rows[0].clone(), silver[0].clone())
}

#[tokio::test]
async fn two_processes_without_redis_never_ingest_a_file_twice() {
    let (lake, specs) = big_dataset();
    // Before: both processes ingested the new file (bronze held it twice).
    let a = spawn_run(lake.path(), specs.path(), &[]);
    let b = spawn_run(lake.path(), specs.path(), &[]);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let outcomes: Vec<String> = [&a, &b].iter().map(|o| String::from_utf8_lossy(&o.stderr).to_string()).collect();
    assert!(a.status.success() || b.status.success(), "{outcomes:?}");
    for (out, stderr) in [&a, &b].iter().zip(&outcomes) {
        // The one that did not run names the run holding the dataset.
        assert!(out.status.success() || stderr.contains("already being run by"), "{stderr}");
    }
    assert_eq!(bronze_and_silver_counts(lake).await, ("150000|150000".into(), "150000|150000".into()));
}

#[tokio::test]
async fn runs_that_race_without_a_common_lock_commit_each_file_once() {
    // Two different Redis prefixes share no lock: exactly what happens when
    // Redis restarts in the middle of a run and a second run takes the lock.
    let (lake, specs) = big_dataset();
    let (p1, p2) = (prefix(), prefix() + "other:");
    let a = spawn_run(lake.path(), specs.path(), &["--redis-url", "redis://127.0.0.1:6379", "--redis-prefix", &p1]);
    let b = spawn_run(lake.path(), specs.path(), &["--redis-url", "redis://127.0.0.1:6379", "--redis-prefix", &p2]);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let logs = format!("{}\n---\n{}", String::from_utf8_lossy(&a.stderr), String::from_utf8_lossy(&b.stderr));
    // Both succeed: the one that loses the race re-reads what is new (nothing).
    assert!(a.status.success() && b.status.success(), "{logs}");
    assert_eq!(bronze_and_silver_counts(lake).await, ("150000|150000".into(), "150000|150000".into()), "{logs}");
}

#[tokio::test]
async fn a_redis_restart_that_drops_the_lock_mid_run_does_not_double_ingest() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut redis = PrivateRedis::start(port);
    let (lake, specs) = big_dataset();
    let url = format!("redis://127.0.0.1:{port}");
    let a = spawn_run(lake.path(), specs.path(), &["--redis-url", &url]);
    // Once the first run holds its lock, Redis restarts empty: the lock is gone.
    let started = Instant::now();
    loop {
        let out = Command::new("redis-cli").args(["-p", &port.to_string(), "--scan", "--pattern", "*lock*"]).output().unwrap();
        if !out.stdout.is_empty() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the first run never took its lock");
        std::thread::sleep(Duration::from_millis(5));
    }
    redis.stop();
    let _redis = PrivateRedis::start(port);
    // A second run takes the (now free) lock while the first still runs.
    let b = spawn_run(lake.path(), specs.path(), &["--redis-url", &url]);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let logs = format!("{}\n---\n{}", String::from_utf8_lossy(&a.stderr), String::from_utf8_lossy(&b.stderr));
    assert!(b.status.success(), "{logs}");
    assert_eq!(bronze_and_silver_counts(lake).await, ("150000|150000".into(), "150000|150000".into()), "{logs}");
}
