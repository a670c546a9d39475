//! Run history and lineage in the metadata store, on both back-ends: the
//! embedded SQLite file and a real Postgres (a scratch database per test).

use std::process::Command;

use crate::harness::{BIN, Server, ServerOptions, rows};

/// A scratch Postgres database, dropped when this goes out of scope.
pub struct ScratchDb {
    name: String,
}

impl ScratchDb {
    pub fn create(tag: &str) -> ScratchDb {
        let name = format!("wb_{tag}_{}_{}", std::process::id(), rand_suffix());
        psql("postgres", &format!("CREATE DATABASE {name}"));
        ScratchDb { name }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args(["-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c"])
            .arg(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name))
            .output();
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
}

fn psql(db: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-c", sql])
        .output()
        .expect("psql");
    assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Run a dataset with a gold model, then read the run back over the wire.
async fn run_is_recorded(database_url: Option<String>) {
    let lake = tempfile::TempDir::new().unwrap();
    let specs = tempfile::TempDir::new().unwrap();
    std::fs::create_dir_all(lake.path().join("landing/sales")).unwrap();
    std::fs::write(lake.path().join("landing/sales/jan.csv"), "id,amount\n1,10\n2,20\n").unwrap();
    std::fs::write(
        specs.path().join("sales.yaml"),
        "name: sales\ndescription: Sales lines\nsource: { format: csv, path: landing/sales/*.csv }\nsilver:\n  rules:\n    - type_cast: { id: int, amount: int }\n",
    )
    .unwrap();
    std::fs::create_dir_all(specs.path().join("gold")).unwrap();
    std::fs::write(specs.path().join("gold/20_sales_total.sql"), "SELECT sum(amount) AS total FROM silver.sales").unwrap();
    let mut run = Command::new(BIN);
    run.args(["run", "--all", "--lake"]).arg(lake.path()).arg("--specs").arg(specs.path());
    if let Some(url) = &database_url {
        run.args(["--database-url", url]);
    }
    let out = run.output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let run_id = stdout.lines().next().unwrap().trim_start_matches("run ").trim().to_string();

    let mut args = vec!["--specs".to_string(), specs.path().display().to_string()];
    if let Some(url) = &database_url {
        args.extend(["--database-url".to_string(), url.clone()]);
    }
    let server = Server::start_at(lake.path(), ServerOptions { args, ..Default::default() });
    assert_eq!(
        rows(&server, &format!("SELECT trigger, status, rows_out, error IS NULL, finished_at >= started_at FROM workbench.runs WHERE id = '{run_id}'")).await,
        ["cli|succeeded|5|t|t"]
    );
    assert_eq!(
        rows(&server, &format!("SELECT seq, layer, table_name, rows_in, rows_out, status FROM workbench.run_steps WHERE run_id = '{run_id}' ORDER BY seq")).await,
        ["0|bronze|sales|2|2|ok", "1|silver|sales|2|2|ok", "2|gold|sales_total|0|1|ok"]
    );
    let event = rows(&server, &format!("SELECT openlineage FROM workbench.runs WHERE id = '{run_id}'")).await;
    let event: serde_json::Value = serde_json::from_str(&event[0]).unwrap();
    assert_eq!(event["eventType"], "COMPLETE");
    assert_eq!(event["run"]["runId"], run_id.as_str());
    let outputs: Vec<&str> = event["outputs"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(outputs, ["bronze.sales", "silver.sales", "gold.sales_total"]);
    let files = rows(&server, "SELECT dataset, path, size_bytes, length(content_hash), run_id FROM workbench.files").await;
    assert_eq!(files, [format!("sales|landing/sales/jan.csv|20|64|{run_id}")]);
    assert_eq!(
        rows(&server, "SELECT from_table, to_table, transform FROM workbench.lineage_edges WHERE from_column = '' ORDER BY to_table, from_table").await,
        ["landing:landing/sales/*.csv|bronze.sales|ingest", "silver.sales|gold.sales_total|sql", "bronze.sales|silver.sales|rules: type_cast"]
    );
    assert_eq!(
        rows(&server, "SELECT name, description, status, tables FROM workbench.datasets").await,
        ["sales|Sales lines|active|[\"bronze.sales\",\"silver.sales\"]"]
    );
    assert_eq!(
        rows(&server, "SELECT from_table, from_column, to_column, transform FROM workbench.lineage_edges WHERE from_column <> '' ORDER BY to_table, to_column").await,
        ["silver.sales|amount|total|sql", "bronze.sales|amount|amount|type_cast", "bronze.sales|id|id|type_cast"]
    );
    if let Some(url) = &database_url {
        // The Postgres tables hold the same rows.
        let db = url.rsplit('/').next().unwrap();
        assert_eq!(psql(db, &format!("SELECT status FROM runs WHERE id = '{run_id}'")).trim(), "succeeded");
        assert_eq!(psql(db, &format!("SELECT count(*) FROM run_steps WHERE run_id = '{run_id}'")).trim(), "3");
        assert_eq!(psql(db, "SELECT count(*) FROM lineage_edges").trim(), "6", "3 table-level edges, 3 column-level");
    } else {
        assert!(lake.path().join("_workbench/metadata.db").is_file());
    }
    // A spec that disappears is retired, its history kept.
    std::fs::remove_file(specs.path().join("sales.yaml")).unwrap();
    std::fs::remove_file(specs.path().join("gold/20_sales_total.sql")).unwrap();
    drop(server);
    let mut args = vec!["--specs".to_string(), specs.path().display().to_string()];
    if let Some(url) = &database_url {
        args.extend(["--database-url".to_string(), url.clone()]);
    }
    let server = Server::start_at(lake.path(), ServerOptions { args, ..Default::default() });
    assert_eq!(rows(&server, "SELECT name, status FROM workbench.datasets").await, ["sales|retired"]);
    assert_eq!(rows(&server, "SELECT count(*) FROM workbench.runs").await, ["1"]);
}

#[tokio::test]
async fn runs_steps_files_and_lineage_are_recorded_in_embedded_sqlite() {
    run_is_recorded(None).await;
}

#[tokio::test]
async fn runs_steps_files_and_lineage_are_recorded_in_postgres() {
    let db = ScratchDb::create("meta");
    run_is_recorded(Some(db.url())).await;
}
