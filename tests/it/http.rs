//! The HTTP API: `/health`, `/ready` turning false while the metadata store
//! is down and true again after, `/metrics` read by the Prometheus project's
//! own parser and counting what happened over the wire.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{BIN, PrivatePostgres, Server, ServerOptions, rows};

async fn get(server: &Server, path: &str) -> (u16, String, String) {
    let url = format!("http://{}{path}", server.http.expect("the HTTP API listens"));
    let response = reqwest::get(&url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let kind = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    (status, kind, response.text().await.unwrap())
}

/// The samples of an OpenMetrics text, as the prometheus_client parser reads
/// them: `name{labels} value` lines, sorted.
fn parse_metrics(text: &str) -> Vec<String> {
    let script = "import sys, json\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
        out = []\n\
        for family in text_string_to_metric_families(sys.stdin.read()):\n\
        \x20   for s in family.samples:\n\
        \x20       labels = ','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))\n\
        \x20       out.append(f'{s.name}{{{labels}}} {s.value}')\n\
        print('\\n'.join(sorted(out)))\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the Prometheus parser refused /metrics: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(String::from).collect()
}

fn value(samples: &[String], name_and_labels: &str) -> f64 {
    samples
        .iter()
        .find_map(|s| s.strip_prefix(name_and_labels).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.parse().unwrap())
        .unwrap_or_else(|| panic!("no sample {name_and_labels} in {samples:#?}"))
}

#[tokio::test]
async fn health_ready_and_metrics_over_http() {
    let pg = PrivatePostgres::start();
    let lake = tempfile::TempDir::new().unwrap();
    let specs = tempfile::TempDir::new().unwrap();
    std::fs::create_dir_all(lake.path().join("landing/ticks")).unwrap();
    std::fs::write(lake.path().join("landing/ticks/a.csv"), "n\n1\n2\n3\n").unwrap();
    std::fs::write(specs.path().join("ticks.yaml"), "name: ticks\nsource: { format: csv, path: landing/ticks/*.csv }\nsilver:\n  rules:\n    - type_cast: { n: int }\n").unwrap();
    let server = Server::start_at(
        lake.path(),
        ServerOptions {
            args: vec!["--specs".into(), specs.path().display().to_string(), "--database-url".into(), pg.url(), "--no-scheduler".into()],
            ..Default::default()
        },
    );
    let (status, kind, body) = get(&server, "/health").await;
    assert_eq!((status, kind.as_str()), (200, "application/json"), "{body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    let (status, _, body) = get(&server, "/ready").await;
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    for check in ["metadata", "redis", "lake"] {
        assert_eq!(ready["checks"][check]["ok"], true, "{body}");
    }

    // The start-up build runs the dataset; statements succeed and fail.
    let started = Instant::now();
    while rows(&server, "SELECT status FROM workbench.runs").await != ["succeeded"] {
        assert!(started.elapsed() < Duration::from_secs(20), "no start-up build\n{}", server.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = server.connect().await;
    assert!(client.simple_query("SELECT * FROM silver.nope").await.is_err());
    assert_eq!(rows(&server, "SELECT sum(n) FROM silver.ticks").await, vec!["6"]);
    let (status, kind, text) = get(&server, "/metrics").await;
    assert_eq!(status, 200);
    assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
    let samples = parse_metrics(&text);
    assert!(value(&samples, "workbench_statements_total{outcome=ok}") >= 2.0);
    assert!(value(&samples, "workbench_statements_total{outcome=42}") >= 1.0, "the unknown table's 42P01");
    assert!(value(&samples, "workbench_statement_duration_seconds_count{outcome=ok}") >= 2.0);
    assert!(value(&samples, "workbench_statement_duration_seconds_bucket{le=+Inf,outcome=ok}") >= 2.0);
    assert!(value(&samples, "workbench_connections_accepted_total{}") >= 3.0);
    assert!(value(&samples, "workbench_connections{}") >= 1.0, "this test's client is still connected");
    assert!(value(&samples, "workbench_runs_total{status=succeeded}") >= 1.0);
    assert!(value(&samples, "workbench_rows_written_total{layer=silver}") >= 3.0);
    drop(client);

    // The metadata store goes away: not ready (saying which), then ready
    // again once it is back, without a restart.
    pg.down();
    let started = Instant::now();
    let body = loop {
        let (status, _, body) = get(&server, "/ready").await;
        if status == 503 {
            break body;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "still ready with the metadata store down: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let not_ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((not_ready["ready"].as_bool(), not_ready["checks"]["metadata"]["ok"].as_bool()), (Some(false), Some(false)), "{body}");
    assert_eq!(not_ready["checks"]["lake"]["ok"], true, "{body}");
    // Liveness does not depend on it.
    assert_eq!(get(&server, "/health").await.0, 200);
    pg.up();
    let started = Instant::now();
    loop {
        let (status, _, body) = get(&server, "/ready").await;
        if status == 200 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "not ready again after the store came back: {body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // An HTTP address that is taken, when asked for, stops the start.
    let taken = server.http.unwrap().to_string();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--http-listen", &taken, "--lake"])
        .arg(lake.path())
        .arg("--specs")
        .arg(specs.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("cannot listen on {taken}")), "{}", String::from_utf8_lossy(&out.stderr));
}
