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
