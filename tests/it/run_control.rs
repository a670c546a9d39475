//! Retries, timeouts and cancel: a source that comes back is retried and
//! each attempt recorded; a data error is not retried; a run longer than its
//! `timeout` ends `timed_out`; `cancel_run()` and `workbench cancel` stop a
//! run in this server or in another process.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use std::time::{Duration, Instant};

use crate::harness::{BIN, PrivatePostgres, Server, ServerOptions, rows, sqlstate};

/// A spec directory holding one spec file.
fn specs_with(name: &str, yaml: &str) -> tempfile::TempDir {
    let specs = tempfile::TempDir::new().unwrap();
    std::fs::write(specs.path().join(format!("{name}.yaml")), yaml).unwrap();
    specs
}

fn workbench(lake: &Path, specs: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args).arg("--lake").arg(lake).arg("--specs").arg(specs).env("RUST_LOG", "warn,workbench=info");
    command
}

/// A server on the lake, to read what the runs recorded.
fn serve(lake: &Path, specs: &Path) -> Server {
    Server::start_at(lake, ServerOptions { args: vec!["--specs".into(), specs.display().to_string()], ..Default::default() })
}

/// A Postgres source whose query takes `seconds` (on the test machine's Postgres).
fn slow_source(seconds: u32) -> String {
    format!(
        "source:\n  format: postgres\n  url: postgres://postgres@127.0.0.1:5432/postgres\n  \
         query: SELECT n FROM generate_series(1, 3) AS n, (SELECT pg_sleep({seconds})) AS s\n"
    )
}

#[tokio::test]
async fn a_source_that_comes_back_is_retried_and_each_attempt_is_recorded() {
    let pg = PrivatePostgres::start();
    let (client, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute("CREATE TABLE ledger (n int); INSERT INTO ledger VALUES (1), (2), (3)").await.unwrap();
    drop(client);
    pg.down();
    let lake = tempfile::TempDir::new().unwrap();
    let specs = specs_with(
        "ledger",
        &format!(
            "name: ledger\nsource: {{ format: postgres, url: \"{}\", query: SELECT n FROM ledger }}\n\
             retries: {{ max: 20, delay: 500ms, backoff: 1 }}\n",
            pg.url()
        ),
    );
    let run = workbench(lake.path(), specs.path(), &["run", "ledger"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // The source is down for the first attempts, then comes back.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    pg.up();
    let out: Output = run.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("(attempt "), "the report says it took several attempts: {stdout}");
    assert!(stderr.contains("bronze.ledger: started") && stderr.contains("bronze.ledger: ok in "), "steps are shown as they go: {stderr}");
    assert!(stderr.contains("transient"), "each retry is logged: {stderr}");
    let server = serve(lake.path(), specs.path());
    let attempts = rows(
        &server,
        "SELECT attempt, status, retry_of IS NULL, error LIKE '%unreachable%' FROM workbench.runs WHERE trigger = 'cli' ORDER BY attempt",
    )
    .await;
    assert!(attempts.len() >= 3, "several attempts: {attempts:#?}");
    assert_eq!(attempts[0], "1|failed|t|t");
    for (i, attempt) in attempts.iter().enumerate().skip(1) {
        let expected = if i + 1 < attempts.len() { "failed|f|t" } else { "succeeded|f|NULL" };
        assert_eq!(attempt, &format!("{}|{expected}", i + 1), "{attempts:#?}");
    }
    // Every retry names the first attempt.
    let first = rows(&server, "SELECT id FROM workbench.runs WHERE trigger = 'cli' AND attempt = 1").await;
    let retries = rows(&server, &format!("SELECT count(*) FROM workbench.runs WHERE retry_of = '{}'", first[0])).await;
    assert_eq!(retries, vec![(attempts.len() - 1).to_string()]);
    assert_eq!(rows(&server, "SELECT count(*) FROM bronze.ledger").await, vec!["3"]);
}

#[tokio::test]
async fn a_bad_cast_fails_at_once_without_retries() {
    let lake = tempfile::TempDir::new().unwrap();
    std::fs::create_dir_all(lake.path().join("landing/casts")).unwrap();
    std::fs::write(lake.path().join("landing/casts/a.csv"), "n\n1\nabc\n").unwrap();
    let specs = specs_with(
        "casts",
        "name: casts\nsource: { format: csv, path: landing/casts/*.csv }\nretries: { max: 3, delay: 200ms }\n\
         silver:\n  rules:\n    - type_cast: { n: int }\n",
    );
    let started = Instant::now();
    let out = workbench(lake.path(), specs.path(), &["run", "casts"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("abc"), "the error names the value: {stderr}");
    assert!(!stderr.contains("retrying"), "a data error is not retried: {stderr}");
    // Well past the retry delays: still one attempt.
    tokio::time::sleep(Duration::from_millis(800).saturating_sub(started.elapsed())).await;
    let server = serve(lake.path(), specs.path());
    let runs = rows(&server, "SELECT count(*), max(attempt), min(status) FROM workbench.runs WHERE trigger = 'cli'").await;
    assert_eq!(runs, vec!["1|1|failed"]);
}

#[tokio::test]
async fn a_run_longer_than_its_timeout_ends_timed_out_with_nothing_written() {
    let lake = tempfile::TempDir::new().unwrap();
    let specs = specs_with("slow", &format!("name: slow\n{}timeout: 2s\n", slow_source(60)));
    let started = Instant::now();
    let out = workbench(lake.path(), specs.path(), &["run", "slow"]).output().unwrap();
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("timed out after 2s"), "{stderr}");
    assert!(elapsed < Duration::from_secs(30), "stopped at its timeout, not when the query ended: {elapsed:?}");
    assert!(!lake.path().join("bronze/slow/_delta_log").exists(), "nothing was committed");
    let server = serve(lake.path(), specs.path());
    let runs = rows(&server, "SELECT status, error LIKE '%timeout%' FROM workbench.runs WHERE trigger = 'cli'").await;
    assert_eq!(runs, vec!["timed_out|t"]);
}

#[tokio::test]
async fn cancel_run_from_sql_and_workbench_cancel_stop_runs_here_and_in_other_processes() {
    let lake = tempfile::TempDir::new().unwrap();
    let specs = specs_with("slow", &format!("name: slow\n{}", slow_source(60)));
    // The server starts building the unbuilt dataset by itself: that run
    // is in this process, and cancel_run() stops it.
    let server = Server::start_at(
        lake.path(),
        ServerOptions { args: vec!["--specs".into(), specs.path().display().to_string()], ..Default::default() },
    );
    let running = wait_for_running(&server, "startup").await;
    let cancelled = rows(&server, &format!("SELECT status FROM cancel_run('{running}')")).await;
    assert_eq!(cancelled, vec!["cancelling"]);
    wait_for_status(&server, &running, "cancelled").await;
    // Cancelling it again says it is not running.
    let again = rows(&server, &format!("SELECT status, message FROM cancel_run('{running}')")).await;
    assert!(again[0].starts_with("cancelled|the run is not running"), "{again:?}");
    let client = server.connect().await;
    let unknown = client.simple_query("SELECT * FROM cancel_run('no-such-run')").await.unwrap_err();
    assert_eq!(sqlstate(&unknown), "42704");

    // A run of this server's SQL client, cancelled from the command line:
    // the client gets 57014 (query_canceled).
    let runner = server.connect().await;
    let run = tokio::spawn(async move { runner.simple_query("SELECT * FROM run('slow')").await });
    let running = wait_for_running(&server, "sql").await;
    let out = Command::new(BIN).args(["cancel", &running, "--lake"]).arg(lake.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let started = Instant::now();
    let err = run.await.unwrap().expect_err("a cancelled run() fails");
    assert_eq!(sqlstate(&err), "57014", "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "stopped at its next heartbeat: {:?}", started.elapsed());
    wait_for_status(&server, &running, "cancelled").await;
    let by = rows(&server, &format!("SELECT cancel_requested_by IS NOT NULL, finished_at IS NOT NULL FROM workbench.runs WHERE id = '{running}'")).await;
    assert_eq!(by, vec!["t|t"]);
    assert!(!lake.path().join("bronze/slow/_delta_log").exists(), "nothing was committed");
    // `workbench cancel` of a run that is not running fails and says so.
    let out = Command::new(BIN).args(["cancel", &running, "--lake"]).arg(lake.path()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
}

/// The id of the run started by `trigger` once it is running.
async fn wait_for_running(server: &Server, trigger: &str) -> String {
    let started = Instant::now();
    loop {
        let running = rows(server, &format!("SELECT id FROM workbench.runs WHERE status = 'running' AND trigger = '{trigger}'")).await;
        if let Some(id) = running.first() {
            return id.clone();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no {trigger} run running\n{}", server.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_status(server: &Server, run_id: &str, status: &str) {
    let started = Instant::now();
    loop {
        let now = rows(server, &format!("SELECT status FROM workbench.runs WHERE id = '{run_id}'")).await;
        if now == [status] {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "run {run_id} is {now:?}, not {status}\n{}", server.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn run_downstream_follows_dependencies_runs_branches_in_parallel_and_skips_after_a_failure() {
    let lake = tempfile::TempDir::new().unwrap();
    let specs = tempfile::TempDir::new().unwrap();
    let csv = |name: &str, body: &str, extra: &str| {
        std::fs::create_dir_all(lake.path().join(format!("landing/{name}"))).unwrap();
        std::fs::write(lake.path().join(format!("landing/{name}/a.csv")), body).unwrap();
        std::fs::write(
            specs.path().join(format!("{name}.yaml")),
            format!("name: {name}\nsource: {{ format: csv, path: landing/{name}/*.csv }}\n{extra}silver:\n  rules:\n    - type_cast: {{ n: int }}\n"),
        )
        .unwrap();
    };
    csv("root", "n\n1\n", "");
    // Two slow branches after root, one that fails, and what follows them.
    for branch in ["left", "right"] {
        std::fs::write(specs.path().join(format!("{branch}.yaml")), format!("name: {branch}\ndepends_on: [root]\n{}", slow_source(2))).unwrap();
    }
    csv("joined", "n\n1\n", "depends_on: [left, right]\n");
    csv("broken", "n\nnot a number\n", "depends_on: [root]\n");
    csv("after_broken", "n\n1\n", "depends_on: [broken]\n");
    csv("unrelated", "n\n1\n", "");
    let out = workbench(lake.path(), specs.path(), &["run", "root", "--downstream", "--parallel", "2"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a dataset failed: {stdout}");
    let status_of = |dataset: &str| {
        stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(dataset))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("absent")
            .to_string()
    };
    for (dataset, status) in [
        ("root", "succeeded"),
        ("left", "succeeded"),
        ("right", "succeeded"),
        ("joined", "succeeded"),
        ("broken", "failed"),
        ("after_broken", "skipped"),
        ("unrelated", "absent"),
    ] {
        assert_eq!(status_of(dataset), status, "{dataset}: {stdout}");
    }
    let server = serve(lake.path(), specs.path());
    let times = rows(
        &server,
        "SELECT CAST(datasets AS TEXT), status, trigger, CAST(date_part('epoch', started_at) * 1000 AS BIGINT), \
         CAST(date_part('epoch', finished_at) * 1000 AS BIGINT), error FROM workbench.runs WHERE trigger IN ('cli', 'downstream') ORDER BY started_at",
    )
    .await;
    let find = |dataset: &str| -> (i64, i64) {
        let row = times.iter().find(|r| r.starts_with(&format!("[\"{dataset}\"]|"))).unwrap_or_else(|| panic!("{dataset}: {times:#?}"));
        let cells: Vec<&str> = row.split('|').collect();
        (cells[3].parse().unwrap(), cells[4].parse().unwrap())
    };
    let (root, left, right, joined) = (find("root"), find("left"), find("right"), find("joined"));
    assert!(root.1 <= left.0 && root.1 <= right.0, "branches start after root: {times:#?}");
    assert!(left.0 < right.1 && right.0 < left.1, "the two branches overlap: {times:#?}");
    assert!(joined.0 >= left.1 && joined.0 >= right.1, "joined starts after both branches: {times:#?}");
    let skipped = times.iter().find(|r| r.starts_with("[\"after_broken\"]|")).unwrap();
    assert!(skipped.contains("|skipped|downstream|") && skipped.ends_with("skipped: upstream dataset broken failed"), "{skipped}");
}

#[tokio::test]
async fn check_refuses_unknown_and_circular_dependencies_with_their_location() {
    let specs = tempfile::TempDir::new().unwrap();
    let spec = |name: &str, deps: &str| {
        std::fs::write(specs.path().join(format!("{name}.yaml")), format!("name: {name}\nsource: {{ format: csv, path: landing/{name}/*.csv }}\ndepends_on: [{deps}]\n")).unwrap();
    };
    spec("a", "nowhere");
    let lake = tempfile::TempDir::new().unwrap();
    let out = workbench(lake.path(), specs.path(), &["check"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("a.yaml:3:") && stderr.contains("unknown dataset 'nowhere'"), "{stderr}");
    spec("a", "b");
    spec("b", "a");
    let out = workbench(lake.path(), specs.path(), &["check"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("a.yaml:3:") && stderr.contains("depends on itself through other datasets"), "{stderr}");
}

#[tokio::test]
async fn a_backfill_runs_one_slice_per_month_and_a_rerun_resumes_only_what_did_not_succeed() {
    let source = crate::metadata::ScratchDb::create("backfill");
    let (client, connection) = tokio_postgres::connect(&source.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE TABLE events (d date, amount text); \
             INSERT INTO events SELECT make_date(2024, m, day), CASE WHEN m = 5 AND day = 9 THEN 'bad' ELSE '10' END \
             FROM generate_series(1, 6) AS m, (VALUES (2), (9)) AS days(day)",
        )
        .await
        .unwrap();
    let lake = tempfile::TempDir::new().unwrap();
    let specs = specs_with(
        "events",
        &format!(
            "name: events\nsource:\n  format: postgres\n  url: {}\n  \
             query: SELECT d, CAST(amount AS int) AS amount FROM events WHERE d BETWEEN {{{{ start_date }}}} AND {{{{ end_date }}}}\n\
             silver:\n  mode: append\n",
            source.url()
        ),
    );
    let backfill = |to: &str| {
        workbench(lake.path(), specs.path(), &["run", "events", "--from", "2024-01-01", "--to", to, "--step", "1mo", "--parallel", "2"])
            .output()
            .unwrap()
    };
    // The first quarter.
    let out = backfill("2024-03-31");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("slice 2024-02-01..2024-02-29 succeeded run "), "one progress line per slice: {stderr}");
    assert!(stdout.contains("3 slices: 3 succeeded now, 0 already done before, 0 failed"), "{stdout}");
    // The half year: the quarter is not run again; May's query fails on a
    // bad value at the source.
    let out = backfill("2024-06-30");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success());
    assert!(stdout.contains("6 slices: 2 succeeded now, 3 already done before, 1 failed"), "{stdout}{stderr}");
    assert!(stderr.contains("slice 2024-05-01..2024-05-31 failed") && stderr.contains("\"bad\""), "{stderr}");
    // Fixed at the source, the same command runs only May.
    client.batch_execute("UPDATE events SET amount = '20' WHERE amount = 'bad'").await.unwrap();
    let out = backfill("2024-06-30");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("6 slices: 1 succeeded now, 5 already done before, 0 failed"), "{stdout}");
    let server = serve(lake.path(), specs.path());
    assert_eq!(rows(&server, "SELECT count(*), sum(amount) FROM silver.events").await, vec!["12|130"]);
    let windows = rows(
        &server,
        "SELECT status, count(*) FROM workbench.runs WHERE trigger = 'backfill' GROUP BY status ORDER BY status",
    )
    .await;
    assert_eq!(windows, vec!["failed|1", "succeeded|6"]);
    // Files have no date window to slice.
    let lake_files = tempfile::TempDir::new().unwrap();
    let file_specs = specs_with("files", "name: files\nsource: { format: csv, path: landing/files/*.csv }\n");
    let out = workbench(lake_files.path(), file_specs.path(), &["run", "files", "--from", "2024-01-01", "--to", "2024-02-01", "--step", "1w"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no date window to slice"), "{}", String::from_utf8_lossy(&out.stderr));
}
