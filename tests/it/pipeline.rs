//! Specs and the bronze → silver → gold pipeline, through the real binary
//! (`workbench check`, `workbench run`) and checked over the wire.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::harness::{BIN, Server, ServerOptions};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A lake with the example landing files copied in.
fn example_lake() -> tempfile::TempDir {
    let lake = tempfile::TempDir::new().unwrap();
    copy_dir(&repo().join("lake/landing"), &lake.path().join("landing"));
    lake
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn workbench(args: &[&str], lake: &Path, specs: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--lake")
        .arg(lake)
        .arg("--specs")
        .arg(specs)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run workbench")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn check_accepts_the_examples() {
    let lake = example_lake();
    let out = workbench(&["check"], lake.path(), &repo().join("specs"));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("3 dataset(s), 2 gold model(s): OK"), "{}", text(&out));
}

fn broken(spec: &str) -> String {
    let dir = tempfile::TempDir::new().unwrap();
    std::fs::write(dir.path().join("broken.yaml"), spec).unwrap();
    let lake = example_lake();
    let out = workbench(&["check"], lake.path(), dir.path());
    assert!(!out.status.success(), "check accepted a broken spec:\n{spec}");
    text(&out)
}

#[test]
fn check_rejects_an_unknown_rule_with_its_position() {
    let out = broken(
        "name: x\nsource:\n  format: csv\n  path: landing/gl_entries/*.csv\nsilver:\n  rules:\n    - rename: { a: b }\n    - explode: [a]\n",
    );
    assert!(out.contains("broken.yaml:8:"), "{out}");
    assert!(out.contains("explode"), "{out}");
}

#[test]
fn check_rejects_bad_indentation() {
    let out = broken("name: x\nsource:\n  format: csv\n   path: landing/*.csv\n");
    assert!(out.contains("broken.yaml:4:"), "{out}");
}

#[test]
fn check_rejects_a_column_that_does_not_exist() {
    let out = broken(
        "name: x\nsource:\n  format: csv\n  path: landing/gl_entries/*.csv\n  delimiter: \";\"\n  encoding: latin1\nsilver:\n  rules:\n    - rename: { Cuenta: cuenta }\n    - type_cast: { monto: int }\n",
    );
    assert!(out.contains("broken.yaml:10:"), "{out}");
    assert!(out.contains("column 'monto' does not exist"), "{out}");
}

#[test]
fn check_rejects_cyclic_gold_models() {
    let dir = tempfile::TempDir::new().unwrap();
    std::fs::create_dir_all(dir.path().join("gold")).unwrap();
    std::fs::write(dir.path().join("gold/01_a.sql"), "SELECT * FROM gold.b").unwrap();
    std::fs::write(dir.path().join("gold/02_b.sql"), "SELECT * FROM gold.a").unwrap();
    let lake = example_lake();
    let out = workbench(&["check"], lake.path(), dir.path());
    assert!(!out.status.success());
    let out = text(&out);
    assert!(out.contains("cycle") && out.contains("01_a.sql:1:1"), "{out}");
}

#[tokio::test]
async fn run_all_builds_every_layer_then_is_idempotent_then_full_refresh_rebuilds() {
    let lake = example_lake();
    let specs = repo().join("specs");
    let out = workbench(&["run", "--all"], lake.path(), &specs);
    assert!(out.status.success(), "{}", text(&out));
    for table in [
        "bronze/dipres_ejecucion",
        "silver/dipres_ejecucion",
        "gold/mart_ejecucion_mensual",
        "silver/gl_entries",
        "silver/gl_accounts",
        "gold/fact_ledger_monthly",
    ] {
        assert!(lake.path().join(table).join("_delta_log").is_dir(), "{table} missing:\n{}", text(&out));
    }
    let server = Server::start_in(lake, ServerOptions::default());
    let client = server.connect().await;
    // 2 workbooks × 18 budget lines × 12 months.
    let n: i64 = client.query_one("SELECT count(*) FROM silver.dipres_ejecucion", &[]).await.unwrap().get(0);
    assert_eq!(n, 2 * 18 * 12);
    let row = client
        .query_one(
            "SELECT count(DISTINCT anio), min(mes), max(mes), count(*) FILTER (WHERE devengado IS NULL) FROM silver.dipres_ejecucion",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i32>(1), row.get::<_, i32>(2), row.get::<_, i64>(3)), (2, 1, 12, 0));
    let n: i64 = client.query_one("SELECT count(*) FROM silver.gl_entries", &[]).await.unwrap().get(0);
    assert_eq!(n, 240);
    let n: i64 = client.query_one("SELECT count(*) FROM gold.fact_ledger_monthly", &[]).await.unwrap().get(0);
    assert!(n > 0);
    let before: Vec<String> = silver_fingerprint(&client).await;

    let out = workbench(&["run", "--all"], server.lake.path(), &specs);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("0 new file(s)"), "{}", text(&out));
    assert_eq!(silver_fingerprint(&client).await, before, "a re-run changed silver");
    let bronze: i64 = client.query_one("SELECT count(*) FROM bronze.dipres_ejecucion", &[]).await.unwrap().get(0);
    assert_eq!(bronze, 36, "nothing re-ingested");

    let out = workbench(&["run", "--all", "--full-refresh"], server.lake.path(), &specs);
    assert!(out.status.success(), "{}", text(&out));
    let bronze: i64 = client.query_one("SELECT count(*) FROM bronze.dipres_ejecucion", &[]).await.unwrap().get(0);
    assert_eq!(bronze, 36, "full refresh rebuilds bronze from the files, not on top");
    assert_eq!(silver_fingerprint(&client).await, before);
}

async fn silver_fingerprint(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query(
            "SELECT concat_ws('|', anio, partida, programa, subtitulo, mes, devengado) AS r FROM silver.dipres_ejecucion ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn a_value_that_cannot_be_cast_is_reported_with_row_and_value() {
    let lake = tempfile::TempDir::new().unwrap();
    let landing = lake.path().join("landing/sales");
    std::fs::create_dir_all(&landing).unwrap();
    std::fs::write(landing.join("a.csv"), "id,amount\n1,10\n2,ten\n3,30\n").unwrap();
    let specs = tempfile::TempDir::new().unwrap();
    std::fs::write(
        specs.path().join("sales.yaml"),
        "name: sales\nsource:\n  format: csv\n  path: landing/sales/*.csv\nsilver:\n  rules:\n    - type_cast: { amount: int }\n",
    )
    .unwrap();
    let out = workbench(&["run", "sales"], lake.path(), specs.path());
    assert!(!out.status.success());
    let out = text(&out);
    assert!(out.contains("sales.yaml:7:") && out.contains("amount"), "{out}");
    assert!(out.contains("row 3: 'ten'"), "{out}");
    assert!(!lake.path().join("silver/sales/_delta_log").exists(), "nothing half-written");
}
