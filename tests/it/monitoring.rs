//! Watching datasets: `workbench.freshness` states as the last success ages,
//! the `row_count_anomaly` volume check against earlier runs.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{BIN, Server, ServerOptions, rows};

fn run(lake: &Path, specs: &Path, dataset: &str) -> std::process::Output {
    Command::new(BIN)
        .args(["run", dataset, "--lake"])
        .arg(lake)
        .arg("--specs")
        .arg(specs)
        .output()
        .unwrap()
}

async fn states(server: &Server) -> Vec<String> {
    rows(server, "SELECT dataset, state, age_seconds IS NOT NULL, warn_after, error_after FROM workbench.freshness ORDER BY dataset").await
}

#[tokio::test]
async fn freshness_goes_from_never_to_fresh_to_warn_to_error() {
    let lake = tempfile::TempDir::new().unwrap();
    let specs = tempfile::TempDir::new().unwrap();
    for (name, csv) in [("good", "n\n1\n"), ("broken", "n\nnot a number\n"), ("plain", "n\n1\n")] {
        std::fs::create_dir_all(lake.path().join(format!("landing/{name}"))).unwrap();
        std::fs::write(lake.path().join(format!("landing/{name}/a.csv")), csv).unwrap();
        let freshness = if name == "plain" { "" } else { "freshness: { warn_after: 3s, error_after: 6s }\n" };
        std::fs::write(
            specs.path().join(format!("{name}.yaml")),
            format!("name: {name}\nsource: {{ format: csv, path: landing/{name}/*.csv }}\n{freshness}silver:\n  rules:\n    - type_cast: {{ n: int }}\n"),
        )
        .unwrap();
    }
    assert!(run(lake.path(), specs.path(), "plain").status.success());
    assert!(run(lake.path(), specs.path(), "good").status.success());
    assert!(!run(lake.path(), specs.path(), "broken").status.success());
    let ran = Instant::now();
    let server = Server::start_at(
        lake.path(),
        ServerOptions { args: vec!["--specs".into(), specs.path().display().to_string(), "--no-scheduler".into()], ..Default::default() },
    );
    assert_eq!(
        states(&server).await,
        vec!["broken|never|f|3s|6s", "good|fresh|t|3s|6s", "plain|unmonitored|t|NULL|NULL"],
        "right after the runs ({:?})",
        ran.elapsed()
    );
    for (after, state) in [(Duration::from_millis(3500), "warn"), (Duration::from_millis(6500), "error")] {
        tokio::time::sleep(after.saturating_sub(ran.elapsed())).await;
        let now = states(&server).await;
        assert!(now.contains(&format!("good|{state}|t|3s|6s")), "{:?} after the run: {now:?}", ran.elapsed());
    }
    // A new success makes it fresh again.
    assert!(run(lake.path(), specs.path(), "good").status.success());
    assert!(states(&server).await.contains(&"good|fresh|t|3s|6s".to_string()));
}

#[tokio::test]
async fn row_count_anomaly_fails_a_run_far_from_the_history_of_earlier_runs() {
    let lake = tempfile::TempDir::new().unwrap();
    let specs = tempfile::TempDir::new().unwrap();
    std::fs::create_dir_all(lake.path().join("landing/volume")).unwrap();
    std::fs::write(
        specs.path().join("volume.yaml"),
        "name: volume\nsource: { format: csv, path: landing/volume/*.csv }\nsilver:\n  mode: append\n  rules:\n    - type_cast: { n: int }\n  \
         expectations:\n    - row_count_anomaly: { lookback: 5, max_deviation: 3 }\n      on_fail: fail\n",
    )
    .unwrap();
    let file = |i: usize, rows: usize| {
        let body: String = (0..rows).map(|r| format!("{}\n", i * 1000 + r)).collect();
        std::fs::write(lake.path().join(format!("landing/volume/{i:02}.csv")), format!("n\n{body}")).unwrap();
    };
    // Four ordinary days: the first ones have too little history to judge.
    for (i, rows) in [100, 104, 97, 101].into_iter().enumerate() {
        file(i, rows);
        let out = run(lake.path(), specs.path(), "volume");
        assert!(out.status.success(), "day {i}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // A day with a tenth of the rows fails, and writes nothing to silver.
    file(4, 10);
    let out = run(lake.path(), specs.path(), "volume");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("row_count_anomaly failed: observed 10 (expected"), "{stderr}");
    assert!(stderr.contains("from the last 4 successful runs"), "{stderr}");
    assert!(stderr.contains("volume.yaml:"), "the error names the spec line: {stderr}");
    let server = Server::start_at(
        lake.path(),
        ServerOptions { args: vec!["--specs".into(), specs.path().display().to_string(), "--no-scheduler".into()], ..Default::default() },
    );
    assert_eq!(rows(&server, "SELECT count(*) FROM silver.volume").await, vec!["402"]);
    let checks = rows(&server, "SELECT success, observed_value FROM workbench.validations WHERE expectation = 'row_count_anomaly' ORDER BY validated_at").await;
    assert_eq!(checks, vec!["t|100", "t|104", "t|97", "t|101", "f|10"]);
}

#[tokio::test]
async fn webhooks_hear_of_failures_failed_expectations_and_staleness_once_with_retries_and_no_secrets() {
    let hook = crate::harness::Hook::start(1).await;
    let secret_url = format!("{}/services/T000/SECRET123", hook.url);
    let lake = tempfile::TempDir::new().unwrap();
    let specs = tempfile::TempDir::new().unwrap();
    let notify = "notify:\n  - { webhook: \"env:WB_TEST_HOOK\", on: [failure, expectation_failure, freshness] }\n";
    for (name, csv, extra) in [
        ("ledger", "n,x\n1,a\n,b\n", "freshness: { warn_after: 1s }\n"),
        ("broken", "n\nnot a number\n", ""),
    ] {
        std::fs::create_dir_all(lake.path().join(format!("landing/{name}"))).unwrap();
        std::fs::write(lake.path().join(format!("landing/{name}/a.csv")), csv).unwrap();
        std::fs::write(
            specs.path().join(format!("{name}.yaml")),
            format!(
                "name: {name}\nsource: {{ format: csv, path: landing/{name}/*.csv }}\n{notify}{extra}silver:\n  rules:\n    - type_cast: {{ n: int }}\n  \
                 expectations:\n    - not_null: \"n\"\n"
            ),
        )
        .unwrap();
    }
    let cli = |dataset: &'static str| {
        let (lake, specs, url) = (lake.path().to_path_buf(), specs.path().to_path_buf(), secret_url.clone());
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .args(["run", dataset, "--lake"])
                .arg(&lake)
                .arg("--specs")
                .arg(&specs)
                .env("WB_TEST_HOOK", url)
                .env("RUST_LOG", "info")
                .output()
                .unwrap()
        })
    };
    // A run that succeeds with a failed (warn) expectation: the first
    // delivery gets a 500, the retry gets through before the command exits.
    let out = cli("ledger").await.unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{log}");
    // A run that fails.
    let out = cli("broken").await.unwrap();
    let log = format!("{log}{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success());
    assert!(log.contains("alert delivery failed; retrying") && log.contains("alert sent"), "{log}");
    assert!(!log.contains("SECRET123"), "the webhook's secret is not logged: {log}");
    let received = hook.received();
    assert_eq!(received.iter().map(|(path, status, _)| (path.as_str(), *status)).collect::<Vec<_>>(), [
        ("/services/T000/SECRET123", 500),
        ("/services/T000/SECRET123", 200),
        ("/services/T000/SECRET123", 200),
    ], "{log}");
    let (first, failure) = (&received[1].2, &received[2].2);
    assert_eq!(received[0].2, *first, "a retry sends the same alert");
    assert_eq!((first["event"].as_str(), first["dataset"].as_str(), first["status"].as_str()), (Some("expectation_failure"), Some("ledger"), Some("succeeded")));
    assert_eq!(first["failed_expectations"][0]["expectation"], "not_null");
    assert_eq!(first["failed_expectations"][0]["unexpected_count"], 1);
    assert_eq!((failure["event"].as_str(), failure["dataset"].as_str(), failure["status"].as_str()), (Some("failure"), Some("broken"), Some("failed")));
    assert!(failure["error"].as_str().unwrap().contains("not a number"), "{failure}");
    let run_id = failure["run_id"].as_str().unwrap().to_string();

    // Two replicas watching freshness (ledger goes stale after 1s) send
    // its alert once, and publish it on the Redis event stream.
    let db = crate::metadata::ScratchDb::create("alerts");
    let prefix = format!("wbalerts{}:", std::process::id());
    let mut args = crate::harness::replica_args(specs.path(), &db.url(), &prefix);
    let env = vec![("WB_TEST_HOOK".to_string(), secret_url.clone())];
    // The replicas share a metadata store of their own: give it the runs.
    let out = Command::new(BIN).args(["run", "ledger", "--lake"]).arg(lake.path()).args(&args).env("WB_TEST_HOOK", &secret_url).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let delivered_before = hook.received().len();
    args.push("--no-scheduler".into());
    let quiet = Server::start_at(lake.path(), ServerOptions { args: args.clone(), env: env.clone(), ..Default::default() });
    args.pop();
    let a = Server::start_at(lake.path(), ServerOptions { args: args.clone(), env: env.clone(), ..Default::default() });
    let b = Server::start_at(lake.path(), ServerOptions { args, env, ..Default::default() });
    let started = Instant::now();
    let stale = loop {
        let stale: Vec<serde_json::Value> =
            hook.received().into_iter().skip(delivered_before).map(|(_, _, body)| body).filter(|b| b["event"] == "freshness").collect();
        if !stale.is_empty() {
            break stale;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no freshness alert: {:#?}\n{}", hook.received(), a.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Both replicas have looked several times since.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let stale_now: Vec<_> = hook.received().into_iter().skip(delivered_before).filter(|(_, _, b)| b["event"] == "freshness").collect();
    assert_eq!(stale_now.len(), 1, "one alert across replicas: {stale_now:#?}");
    assert_eq!((stale[0]["dataset"].as_str(), stale[0]["state"].as_str()), (Some("ledger"), Some("warn")));
    let recorded = rows(&quiet, "SELECT dataset, event, status, attempts, target FROM workbench.alerts WHERE event = 'freshness'").await;
    let target = format!("env:WB_TEST_HOOK ({}/…)", hook.url);
    assert_eq!(recorded, vec![format!("ledger|freshness|sent|1|{target}")]);
    let leaked = rows(&quiet, "SELECT count(*) FROM workbench.alerts WHERE CAST(payload AS TEXT) LIKE '%SECRET%' OR target LIKE '%SECRET%'").await;
    assert_eq!(leaked, vec!["0"]);
    for server in [&a, &b, &quiet] {
        assert!(!server.log_text().contains("SECRET123"));
    }
    let events = Command::new("redis-cli").args(["-h", "127.0.0.1", "XRANGE", &format!("{prefix}workbench:runs"), "-", "+"]).output().unwrap();
    let events = String::from_utf8_lossy(&events.stdout);
    assert!(events.contains("alert") && events.contains("freshness"), "{events}");
    // The lake's own store kept the CLI runs' alerts.
    drop((a, b, quiet));
    let server = Server::start_at(
        lake.path(),
        ServerOptions { args: vec!["--specs".into(), specs.path().display().to_string(), "--no-scheduler".into()], ..Default::default() },
    );
    let recorded = rows(&server, "SELECT dataset, event, status, attempts, run_id FROM workbench.alerts ORDER BY created_at").await;
    assert_eq!(recorded[0].rsplit_once('|').unwrap().0, "ledger|expectation_failure|sent|2");
    assert_eq!(recorded[1], format!("broken|failure|sent|1|{run_id}"));
}
