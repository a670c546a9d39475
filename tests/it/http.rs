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
    // The same preview twice: computed, then served from the shared cache.
    for _ in 0..2 {
        assert_eq!(rows(&server, "SELECT count(*) FROM preview('ticks')").await, vec!["3"]);
    }
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
    assert!(value(&samples, "workbench_cache_lookups_total{outcome=miss}") >= 1.0);
    assert!(value(&samples, "workbench_cache_lookups_total{outcome=hit}") >= 1.0, "the second preview");
    assert!(value(&samples, "workbench_run_locks_total{outcome=acquired}") >= 1.0, "the start-up build's lock");
    assert!(value(&samples, "workbench_run_lock_wait_seconds_count{}") >= 1.0);
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

#[tokio::test]
async fn the_json_api_logs_users_in_uploads_previews_runs_and_refuses_what_it_must() {
    let lake = tempfile::TempDir::new().unwrap();
    let specs = tempfile::TempDir::new().unwrap();
    std::fs::create_dir_all(lake.path().join("landing/ledger")).unwrap();
    std::fs::write(
        specs.path().join("ledger.yaml"),
        "name: ledger\nsource: { format: csv, path: landing/ledger/*.csv }\nsilver:\n  rules:\n    - type_cast: { amount: int }\n  \
         expectations:\n    - not_null: \"amount\"\n",
    )
    .unwrap();
    let hash = crate::harness::hash_password("api-secret-1");
    let config = format!(
        "upload_max_size: 1KiB\nusers:\n  - {{ name: loader, password_hash: \"{hash}\", roles: [loader] }}\n  - {{ name: viewer, password_hash: \"{hash}\", roles: [viewer] }}\n\
         roles:\n  loader: {{ read: [\"*\"], run: [ledger], landing: [ledger], upload: [ledger] }}\n  viewer: {{ read: [\"*\"] }}\n"
    );
    // Uploads are spooled to the server's temporary directory while they arrive.
    let spool = tempfile::TempDir::new().unwrap();
    let server = Server::start_at(
        lake.path(),
        ServerOptions {
            config_yaml: config,
            args: vec!["--specs".into(), specs.path().display().to_string(), "--no-scheduler".into()],
            env: vec![("TMPDIR".into(), spool.path().display().to_string())],
            ..Default::default()
        },
    );
    let base = format!("http://{}", server.http.unwrap());
    let http = reqwest::Client::new();
    let as_user = |request: reqwest::RequestBuilder, user: &str| request.basic_auth(user, Some("api-secret-1"));

    // No login, a wrong password: 401 with a Basic challenge.
    let response = http.get(format!("{base}/api/runs")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Basic realm=\"workbench\"");
    let response = http.get(format!("{base}/api/runs")).basic_auth("loader", Some("nope")).send().await.unwrap();
    assert_eq!(response.status(), 401);

    // Upload: stored under the dataset's folder, reported with its hash.
    let csv = "account,amount\n1100,250\n2100,\n3100,12\n";
    let response = as_user(http.put(format!("{base}/api/datasets/ledger/files/jan.csv")), "loader").body(csv).send().await.unwrap();
    assert_eq!(response.status(), 201);
    let stored: serde_json::Value = response.json().await.unwrap();
    assert_eq!(stored["path"], "landing/ledger/jan.csv");
    assert_eq!(stored["rows"], 3);
    assert_eq!(std::fs::read_to_string(lake.path().join("landing/ledger/jan.csv")).unwrap(), csv);
    // The same name again, a path out of the folder, a file too large, the
    // wrong extension, a user without upload rights: refused, nothing stored.
    for (user, name, body, status) in [
        ("loader", "jan.csv", csv.to_string(), 409),
        ("loader", "..%2F..%2Fescape.csv", csv.to_string(), 422),
        ("loader", "big.csv", format!("account,amount\n{}", "1,1\n".repeat(400)), 413),
        ("loader", "jan.xlsx", csv.to_string(), 422),
        ("viewer", "feb.csv", csv.to_string(), 403),
    ] {
        let response = as_user(http.put(format!("{base}/api/datasets/ledger/files/{name}")), user).body(body).send().await.unwrap();
        let got = response.status().as_u16();
        assert_eq!(got, status, "{user} {name}: {}", response.text().await.unwrap());
    }
    let mut files: Vec<String> = std::fs::read_dir(lake.path().join("landing/ledger")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    files.sort();
    assert_eq!(files, ["jan.csv"]);
    assert!(!lake.path().join("escape.csv").exists() && !lake.path().parent().unwrap().join("escape.csv").exists());
    // Stored, refused or too large: no spooled upload is left behind.
    assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0, "spool files left");
    // (And that is where they go: without it, an upload cannot be taken in.)
    std::fs::remove_dir(spool.path()).unwrap();
    let response = as_user(http.put(format!("{base}/api/datasets/ledger/files/mar.csv")), "loader").body(csv).send().await.unwrap();
    assert_eq!(response.status(), 500);
    assert!(response.text().await.unwrap().contains("temporary file"));
    std::fs::create_dir(spool.path()).unwrap();

    // Preview before anything is written: the row failing not_null is marked.
    let response = as_user(http.get(format!("{base}/api/datasets/ledger/preview?file=landing/ledger/jan.csv&limit=10")), "loader").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let preview: serde_json::Value = response.json().await.unwrap();
    let rows = preview["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{preview}");
    let failing: Vec<&serde_json::Value> = rows.iter().filter(|r| r["_expectations_failed"].as_str().is_some_and(|f| f.contains("not_null"))).collect();
    assert_eq!(failing.len(), 1, "{preview}");
    assert_eq!(failing[0]["account"], "2100");

    // Run: the loader may, the viewer may not.
    let response = as_user(http.post(format!("{base}/api/datasets/ledger/runs")), "viewer").send().await.unwrap();
    assert_eq!(response.status(), 403);
    let response = as_user(http.post(format!("{base}/api/datasets/ledger/runs")), "loader").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let run: serde_json::Value = response.json().await.unwrap();
    let run_id = run["steps"][0]["run_id"].as_str().unwrap().to_string();
    // The runs, one run with its steps and validations.
    let runs: serde_json::Value = as_user(http.get(format!("{base}/api/runs?dataset=ledger")), "viewer").send().await.unwrap().json().await.unwrap();
    assert_eq!(runs[0]["id"], run_id.as_str());
    assert_eq!(runs[0]["status"], "succeeded");
    let detail: serde_json::Value = as_user(http.get(format!("{base}/api/runs/{run_id}")), "viewer").send().await.unwrap().json().await.unwrap();
    assert_eq!(detail["steps"].as_array().unwrap().len(), 2, "{detail}");
    assert_eq!(detail["validations"][0]["expectation"], "not_null");
    assert_eq!(detail["validations"][0]["success"], false);
    let missing = as_user(http.get(format!("{base}/api/runs/no-such-run")), "viewer").send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let lineage: serde_json::Value = as_user(http.get(format!("{base}/api/lineage?table=silver.ledger")), "viewer").send().await.unwrap().json().await.unwrap();
    assert!(lineage.as_array().unwrap().iter().any(|e| e["from_table"] == "bronze.ledger"), "{lineage}");
    let events: serde_json::Value =
        as_user(http.get(format!("{base}/api/lineage?table=silver.ledger&format=openlineage")), "viewer").send().await.unwrap().json().await.unwrap();
    let event = &events[0];
    assert_eq!(event["eventType"], "COMPLETE", "{events}");
    assert_eq!(event["run"]["runId"], run_id.as_str());
    assert!(event["outputs"].as_array().unwrap().iter().any(|o| o["name"] == "silver.ledger"), "{event}");
    // validate() over HTTP: one report, readable by id.
    let response = as_user(http.post(format!("{base}/api/tables/silver.ledger/validations")), "viewer").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let validated: serde_json::Value = response.json().await.unwrap();
    let id = validated["validation_id"].as_str().expect("an id").to_string();
    assert_eq!(validated["results"][0]["unexpected_count"], 1, "{validated}");
    let report: serde_json::Value = as_user(http.get(format!("{base}/api/validations/{id}")), "loader").send().await.unwrap().json().await.unwrap();
    assert_eq!(report["results"][0]["validated_by"], "viewer", "{report}");
    assert_eq!(report["results"][0]["success"], false, "{report}");
    let missing = as_user(http.get(format!("{base}/api/validations/no-such-call")), "viewer").send().await.unwrap();
    assert_eq!(missing.status(), 404);
    // The OpenAPI document describes it.
    let openapi: serde_json::Value = http.get(format!("{base}/api/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(openapi["openapi"], "3.0.3");
    for path in [
        "/api/runs",
        "/api/runs/{id}",
        "/api/datasets/{name}/files/{file}",
        "/api/datasets/{name}/preview",
        "/api/tables/{table}/validations",
        "/api/validations/{id}",
        "/ready",
        "/metrics",
    ] {
        assert!(openapi["paths"][path].is_object(), "{path} undocumented");
    }
    assert!(!server.log_text().contains("api-secret-1"));
}

#[tokio::test]
async fn the_console_in_a_real_browser_logs_in_uploads_excel_previews_runs_and_shows_data_docs_and_lineage() {
    let lake = tempfile::TempDir::new().unwrap();
    let specs = tempfile::TempDir::new().unwrap();
    std::fs::create_dir_all(lake.path().join("landing/ledger")).unwrap();
    std::fs::create_dir_all(lake.path().join("landing/personas")).unwrap();
    // A value that looks like markup: the console must show it as text.
    std::fs::write(lake.path().join("landing/ledger/a.csv"), "account,amount\n1100,250\n<b class=injected>x</b>,\n3100,12\n").unwrap();
    std::fs::write(
        specs.path().join("ledger.yaml"),
        "name: ledger\ndescription: General ledger <b class=injected>entries</b>\nsource: { format: csv, path: landing/ledger/*.csv }\n\
         silver:\n  rules:\n    - type_cast: { amount: int }\n  expectations:\n    - not_null: \"amount\"\n    - not_null: \"account\"\n\
         gold:\n  - name: ledger_totals\n    sql: SELECT count(*) AS n, sum(amount) AS total FROM silver.ledger\n",
    )
    .unwrap();
    std::fs::write(
        specs.path().join("personas.yaml"),
        "name: personas\nsource: { format: xlsx, path: landing/personas/*.xlsx, sheet: 1, header_row: 3 }\n\
         silver:\n  rules:\n    - type_cast: { Nacimiento: date, Saldo: \"decimal(10,2)\" }\n  expectations:\n    - not_null: \"Saldo\"\n",
    )
    .unwrap();
    let hash = crate::harness::hash_password("console-secret-1");
    let config = format!(
        "users:\n  - {{ name: loader, password_hash: \"{hash}\", roles: [loader] }}\nroles:\n  \
         loader: {{ read: [\"*\"], run: [\"*\"], landing: [\"*\"], upload: [personas] }}\n"
    );
    let server = Server::start_at(
        lake.path(),
        ServerOptions { config_yaml: config, args: vec!["--specs".into(), specs.path().display().to_string(), "--no-scheduler".into()], ..Default::default() },
    );
    // The start-up build of ledger (personas has no file yet).
    let started = Instant::now();
    loop {
        let client = server.connect_as("loader", Some("console-secret-1")).await.unwrap();
        let done = client.simple_query("SELECT count(*) FROM workbench.runs WHERE status = 'succeeded'").await.unwrap();
        let count = done.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(String::from),
            _ => None,
        });
        if count.is_some_and(|c| c != "0") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "no start-up build\n{}", server.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A validate() call over the wire: its Data Docs are one click from the dataset page.
    let client = server.connect_as("loader", Some("console-secret-1")).await.unwrap();
    let checked = client.simple_query("SELECT validation_id, success FROM validate('silver.ledger')").await.unwrap();
    let ids: std::collections::BTreeSet<String> = checked
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(String::from),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 1, "one id for the call's results: {ids:?}");
    drop(client);
    // Screenshots are kept next to the build, to be looked at.
    let shots = std::path::PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into())).join("console-screenshots");
    let base = format!("http://{}", server.http.unwrap());
    let xlsx = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/personas.xlsx");
    let out = tokio::task::spawn_blocking({
        let shots = shots.clone();
        move || {
            Command::new("python3")
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/console_browser.py"))
                .args([&base, "loader", "console-secret-1", xlsx])
                .arg(&shots)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.log_text()
    );
    for shot in ["login", "datasets", "preview", "data-docs", "dataset", "validation", "lineage", "lineage-columns"] {
        assert!(shots.join(format!("{shot}.png")).metadata().unwrap().len() > 1000, "{shot}.png");
    }
    // The upload is a landing file like any other, and the run ingested it.
    assert!(lake.path().join("landing/personas/personas.xlsx").is_file());
    let client = server.connect_as("loader", Some("console-secret-1")).await.unwrap();
    let saldo = client.simple_query("SELECT count(*) FROM silver.personas").await.unwrap();
    let count = saldo.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(String::from),
        _ => None,
    });
    assert_eq!(count.as_deref(), Some("3"));
    // Forms without the session's CSRF token are refused.
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let login = http
        .post(format!("http://{}/login", server.http.unwrap()))
        .form(&[("user", "loader"), ("password", "console-secret-1")])
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let forged = http
        .post(format!("http://{}/datasets/ledger/run", server.http.unwrap()))
        .header("cookie", &cookie)
        .form(&[("csrf", "not-the-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    // The dataset page shows its tables as the lake holds them (storage()).
    let page = http.get(format!("http://{}/datasets/ledger", server.http.unwrap())).header("cookie", &cookie).send().await.unwrap().text().await.unwrap();
    let storage = page.split("<table id=\"storage\">").nth(1).and_then(|t| t.split("</table>").next()).unwrap_or_else(|| panic!("{page}"));
    for table in ["bronze.ledger", "silver.ledger", "gold.ledger_totals"] {
        assert!(storage.contains(&format!(">{table}</a>")), "{table}: {storage}");
    }
    eprintln!("screenshots in {}", shots.display());
}
