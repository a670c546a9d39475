//! The lake on object storage: a local S3 (moto's server) holds the landing
//! files and every Delta table; the server, `workbench run` and two replicas
//! work on it as on a local disk.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{BIN, Moto, Server, ServerOptions, replica_args, rows};
use crate::metadata::ScratchDb;

const LAKE: &str = "s3://lake/wb";

/// The config of a process on the moto lake: its S3 and short retries, so
/// an outage is an error in seconds rather than minutes.
fn config(moto: &Moto, dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("workbench-s3.yaml");
    std::fs::write(&path, format!("{}  max_retries: \"2\"\n  retry_timeout: 3s\n", moto.config_yaml())).unwrap();
    path
}

fn ledger_specs() -> tempfile::TempDir {
    let specs = tempfile::TempDir::new().unwrap();
    std::fs::write(
        specs.path().join("ledger.yaml"),
        "name: ledger\nsource: { format: csv, path: landing/ledger/*.csv }\nsilver:\n  mode: append\n  rules:\n    - type_cast: { amount: int }\n  \
         expectations:\n    - not_null: [amount]\n      on_fail: quarantine\n\
         gold:\n  - name: ledger_total\n    sql: SELECT count(*) AS n, sum(amount) AS total FROM silver.ledger\n",
    )
    .unwrap();
    specs
}

/// `run(dataset)` on `server` once no other run (the start-up build) holds it.
async fn run_when_free(server: &Server, dataset: &str) {
    let started = Instant::now();
    loop {
        match server.connect().await.simple_query(&format!("SELECT count(*) FROM run('{dataset}')")).await {
            Ok(_) => return,
            Err(e) if e.as_db_error().is_some_and(|d| d.message().contains("already being run by")) && started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("run('{dataset}'): {:?}\n{}", e.as_db_error(), server.log_text()),
        }
    }
}

fn serve(moto: &Moto, dir: &std::path::Path, args: Vec<String>) -> Server {
    let config = std::fs::read_to_string(config(moto, dir)).unwrap();
    Server::start_at(dir, ServerOptions { config_yaml: config, args, lake_url: Some(LAKE.into()), ..Default::default() })
}

#[tokio::test]
async fn the_pipeline_and_the_server_work_on_an_s3_lake() {
    let moto = Moto::start();
    let meta = ScratchDb::create("s3");
    let dir = tempfile::TempDir::new().unwrap();
    let specs = ledger_specs();
    let server = serve(&moto, dir.path(), vec!["--specs".into(), specs.path().display().to_string(), "--database-url".into(), meta.url(), "--no-scheduler".into()]);

    // A landing file arrives over the wire and is stored in the bucket.
    let jan = dir.path().join("jan.csv");
    std::fs::write(&jan, "account,amount\n1100,250\n2100,\n3100,12\n").unwrap();
    server.psql_ok(&[&format!("\\copy landing.ledger from '{}' csv header", jan.display())]);
    assert!(moto.keys("wb/landing/ledger/").iter().any(|k| k.ends_with(".csv")), "{:?}", moto.keys("wb/"));

    // Preview, then run: bronze, silver, quarantine and gold are Delta tables in S3.
    assert_eq!(rows(&server, "SELECT count(*) FROM preview('ledger')").await, vec!["3"]);
    run_when_free(&server, "ledger").await;
    // (The start-up build may have been the one to find the file.)
    let steps = rows(&server, "SELECT layer, status FROM workbench.run_steps WHERE status IN ('ok', 'failed') ORDER BY seq").await;
    assert!(steps.iter().any(|s| s == "silver|ok"), "{steps:?}\n{}", server.log_text());
    assert_eq!(rows(&server, "SELECT count(*), sum(amount) FROM silver.ledger").await, vec!["2|262"]);
    assert_eq!(rows(&server, "SELECT count(*) FROM silver.ledger__quarantine").await, vec!["1"]);
    assert_eq!(rows(&server, "SELECT n, total FROM gold.ledger_total").await, vec!["2|262"]);
    for table in ["bronze/ledger", "silver/ledger", "silver/ledger__quarantine", "gold/ledger_total"] {
        assert!(moto.keys(&format!("wb/{table}/_delta_log/")).iter().any(|k| k.ends_with(".json")), "{table} has no Delta log in S3");
    }
    // Nothing went to the local directory but the config and the log.
    assert!(!dir.path().join("silver").exists() && !dir.path().join("landing").exists());

    // A second file: an append; the first version stays readable.
    let feb = dir.path().join("feb.csv");
    std::fs::write(&feb, "account,amount\n1100,100\n").unwrap();
    server.psql_ok(&[&format!("\\copy landing.ledger from '{}' csv header", feb.display())]);
    run_when_free(&server, "ledger").await;
    assert_eq!(rows(&server, "SELECT count(*), sum(amount) FROM silver.ledger").await, vec!["3|362"]);
    let history = rows(&server, "SELECT count(*) FROM history('silver.ledger')").await;
    assert!(history[0].parse::<i64>().unwrap() >= 2, "{history:?}");
    assert_eq!(rows(&server, "SELECT count(*) FROM table_at('silver.ledger', 0)").await, vec!["2"]);
    assert_eq!(rows(&server, "SELECT count(*) FROM workbench.files").await, vec!["2"]);

    // The table functions read the bucket like a disk.
    assert_eq!(rows(&server, "SELECT expectation, success FROM validate('silver.ledger')").await, vec!["not_null|t"]);
    let profiled = rows(&server, "SELECT count(*) FROM profile('silver.ledger')").await;
    assert_ne!(profiled, vec!["0"]);
    let lineage = rows(&server, "SELECT DISTINCT from_table FROM lineage('silver.ledger', 'up') ORDER BY 1").await;
    assert!(lineage.contains(&"bronze.ledger".to_string()), "{lineage:?}");
    assert_eq!(rows(&server, "SELECT files FROM storage() WHERE table_name = 'silver.ledger'").await, vec!["2"]);
    // Maintenance on S3: two appends compacted into one file, same answers;
    // a dry-run vacuum inside the retention lists nothing.
    let cli = |args: &[&str]| {
        Command::new(BIN).args(args).args(["--lake", LAKE, "--config"]).arg(config(&moto, dir.path())).env("RUST_LOG", "warn").output().unwrap()
    };
    let out = cli(&["optimize", "silver.ledger"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("2 files → 1"), "{out:?}");
    assert_eq!(rows(&server, "SELECT count(*), sum(amount) FROM silver.ledger").await, vec!["3|362"]);
    assert_eq!(rows(&server, "SELECT files FROM storage() WHERE table_name = 'silver.ledger'").await, vec!["1"]);
    let out = cli(&["vacuum", "silver.ledger", "--dry-run"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stderr).contains("would delete 0 file(s)"), "{out:?}");
    assert_eq!(rows(&server, "SELECT count(*) FROM table_at('silver.ledger', 0)").await, vec!["2"]);

    // The lake goes away: not ready (the lake check says so), a query on a
    // table fails with a clear error, the server keeps answering the rest.
    let http = server.http.unwrap();
    let ready = |path: &'static str| {
        let out = Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://{http}{path}")]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(ready("/ready"), "200");
    let mut moto = moto;
    moto.stop();
    // Past the lake's cache of open tables (a second without a commit).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(ready("/ready"), "503");
    let client = server.connect().await;
    let started = Instant::now();
    let err = client.simple_query("SELECT count(*) FROM silver.ledger WHERE amount > 0").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(30), "the error took {:?}", started.elapsed());
    let db = err.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "58030", "{db:?}");
    assert!(db.message().starts_with("the lake did not answer") && db.message().contains("s3://lake/wb/silver/ledger"), "{db:?}");
    assert_eq!(rows(&server, "SELECT 1").await, vec!["1"]);
    assert!(!server.log_text().contains("moto-secret-key"), "the secret key reached the log");
}

/// `workbench run` on the moto lake, sharing `meta`, with `extra` flags.
fn spawn_run(moto: &Moto, dir: &std::path::Path, specs: &std::path::Path, meta: &str, extra: &[&str]) -> std::process::Child {
    Command::new(BIN)
        .args(["run", "big", "--lake", LAKE, "--specs"])
        .arg(specs)
        .arg("--config")
        .arg(config(moto, dir))
        .args(["--database-url", meta])
        .args(extra)
        .env("RUST_LOG", "warn,workbench=info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start workbench run")
}

/// A landing file of the rows `ns` put straight into the bucket.
fn put_big_file(moto: &Moto, name: &str, ns: std::ops::Range<usize>) {
    let mut body = String::from("n,label\n");
    for n in ns {
        body.push_str(&format!("{n},label {n}\n"));
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), body).unwrap();
    let out = Command::new("curl")
        .args(["-sf", "-T"])
        .arg(file.path())
        .arg(format!("{}/lake/wb/landing/big/{name}", moto.endpoint()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn big_specs() -> tempfile::TempDir {
    let specs = tempfile::TempDir::new().unwrap();
    std::fs::write(
        specs.path().join("big.yaml"),
        "name: big\nsource: { format: csv, path: landing/big/*.csv }\nsilver:\n  mode: append\n  rules:\n    - type_cast: { n: bigint }\n",
    )
    .unwrap();
    specs
}

#[tokio::test]
async fn two_writers_racing_on_one_s3_table_commit_each_file_once() {
    // No common lock (two Redis prefixes): the Delta log's conditional put on
    // S3 (If-None-Match) is all that keeps the two commits apart.
    let moto = Moto::start();
    let meta = ScratchDb::create("s3race");
    let dir = tempfile::TempDir::new().unwrap();
    let specs = big_specs();
    put_big_file(&moto, "a.csv", 0..100_000);
    let redis = |p: &str| ["--redis-url".to_string(), "redis://127.0.0.1:6379".into(), "--redis-prefix".into(), format!("wbtest:s3:{}:{p}:", std::process::id())];
    let (ra, rb) = (redis("a"), redis("b"));
    let a = spawn_run(&moto, dir.path(), specs.path(), &meta.url(), &ra.iter().map(String::as_str).collect::<Vec<_>>());
    let b = spawn_run(&moto, dir.path(), specs.path(), &meta.url(), &rb.iter().map(String::as_str).collect::<Vec<_>>());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let logs = format!("{}\n---\n{}", String::from_utf8_lossy(&a.stderr), String::from_utf8_lossy(&b.stderr));
    assert!(a.status.success() && b.status.success(), "{logs}");
    let server = serve(&moto, dir.path(), vec!["--database-url".into(), meta.url(), "--no-scheduler".into()]);
    assert_eq!(rows(&server, "SELECT count(*), count(DISTINCT n) FROM bronze.big").await, vec!["100000|100000"], "{logs}");
    assert_eq!(rows(&server, "SELECT count(*), count(DISTINCT n) FROM silver.big").await, vec!["100000|100000"], "{logs}");
}

#[tokio::test]
async fn two_replicas_on_one_s3_lake_see_each_others_commits_and_take_turns() {
    let moto = Moto::start();
    let meta = ScratchDb::create("s3replicas");
    let specs = ledger_specs();
    std::fs::write(specs.path().join("big.yaml"), std::fs::read_to_string(big_specs().path().join("big.yaml")).unwrap()).unwrap();
    let prefix = format!("wbtest:s3replicas:{}:", std::process::id());
    let (dir_a, dir_b) = (tempfile::TempDir::new().unwrap(), tempfile::TempDir::new().unwrap());
    let mut args = replica_args(specs.path(), &meta.url(), &prefix);
    args.extend(["--no-scheduler".into(), "--lock-ttl".into(), "3s".into()]);
    let a = serve(&moto, dir_a.path(), args.clone());
    let b = serve(&moto, dir_b.path(), args);

    // Uploaded and run on A; read on B at its next statement.
    let jan = dir_a.path().join("jan.csv");
    std::fs::write(&jan, "account,amount\n1100,250\n3100,12\n").unwrap();
    a.psql_ok(&[&format!("\\copy landing.ledger from '{}' csv header", jan.display())]);
    run_when_free(&a, "ledger").await;
    assert_eq!(rows(&b, "SELECT count(*), sum(amount) FROM silver.ledger").await, vec!["2|262"]);

    // The same dataset from both at once: one runs, the other names it;
    // different datasets run side by side.
    put_big_file(&moto, "a.csv", 0..200_000);
    let started = Instant::now();
    while rows(&a, "SELECT count(*) FROM workbench.runs WHERE status = 'running'").await != vec!["0"] {
        assert!(started.elapsed() < Duration::from_secs(30), "the start-up builds never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ca, cb) = (a.connect().await, b.connect().await);
    let (ra, rb) = tokio::join!(ca.simple_query("SELECT count(*) FROM run('big')"), cb.simple_query("SELECT count(*) FROM run('big')"));
    let message = |e: tokio_postgres::Error| e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string());
    let outcomes = [ra.map(|_| ()).map_err(message), rb.map(|_| ()).map_err(message)];
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1, "{outcomes:?}");
    assert!(outcomes.iter().any(|o| o.as_ref().is_err_and(|e| e.contains("already being run by"))), "{outcomes:?}");
    assert_eq!(rows(&a, "SELECT count(*), count(DISTINCT n) FROM silver.big").await, vec!["200000|200000"]);
    // Different datasets at once, one on each replica: neither waits for the other.
    let feb = dir_b.path().join("feb.csv");
    std::fs::write(&feb, "account,amount\n1100,100\n").unwrap();
    b.psql_ok(&[&format!("\\copy landing.ledger from '{}' csv header", feb.display())]);
    put_big_file(&moto, "c.csv", 400_000..450_000);
    let (ra, rb) = tokio::join!(ca.simple_query("SELECT count(*) FROM run('big')"), cb.simple_query("SELECT count(*) FROM run('ledger')"));
    assert!(ra.is_ok() && rb.is_ok(), "{:?} {:?}", ra.err().map(message), rb.err().map(message));
    assert_eq!(rows(&b, "SELECT count(*) FROM silver.big").await, vec!["250000"]);
    assert_eq!(rows(&a, "SELECT count(*), sum(amount) FROM silver.ledger").await, vec!["3|362"]);

    // A replica killed in the middle of a run leaves nothing half-written:
    // B reads the tables whole, and once the lock expires runs what is left.
    put_big_file(&moto, "b.csv", 450_000..650_000);
    let mut a = a;
    let killer = a.connect().await;
    let run = tokio::spawn(async move { killer.simple_query("SELECT count(*) FROM run('big')").await.map(|_| ()) });
    let started = Instant::now();
    while rows(&b, "SELECT count(*) FROM workbench.runs WHERE status = 'running'").await != vec!["1"] {
        assert!(started.elapsed() < Duration::from_secs(20), "the run never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.kill();
    let _ = run.await;
    let silver = rows(&b, "SELECT count(*), count(DISTINCT n) FROM silver.big").await;
    assert!(silver == vec!["250000|250000"] || silver == vec!["450000|450000"], "whole commits only: {silver:?}");
    let started = Instant::now();
    loop {
        let done = b.connect().await.simple_query("SELECT count(*) FROM run('big')").await;
        match done {
            Ok(_) => break,
            Err(e) if e.as_db_error().is_some_and(|d| d.message().contains("already being run by")) && started.elapsed() < Duration::from_secs(60) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("{e}\n{}", b.log_text()),
        }
    }
    let runs = rows(&b, "SELECT id, status, error FROM workbench.runs ORDER BY started_at").await;
    let files = rows(&b, "SELECT * FROM workbench.files").await;
    assert_eq!(rows(&b, "SELECT count(*) FROM bronze.big").await, vec!["450000"], "each file once\n{runs:#?}\n{files:#?}\n{}", b.log_text());
    assert_eq!(rows(&b, "SELECT count(*) FROM silver.big").await, vec!["450000"]);
}
