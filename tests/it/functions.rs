//! Table functions over the wire: history, table_at, lineage, profile.

use std::process::Command;

use crate::harness::{BIN, Server, ServerOptions, sqlstate};

async fn rows(server: &Server, sql: &str) -> Vec<String> {
    let client = server.connect().await;
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).unwrap_or("NULL")).collect::<Vec<_>>().join("|"))
            }
            _ => None,
        })
        .collect()
}

/// The examples built by `workbench run --all`, served.
fn examples() -> (Server, tempfile::TempDir) {
    let lake = tempfile::TempDir::new().unwrap();
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new("cp").arg("-r").arg(repo.join("lake/landing")).arg(lake.path()).status().unwrap();
    assert!(status.success());
    let specs = repo.join("specs");
    let out = Command::new(BIN).args(["run", "--all", "--lake"]).arg(lake.path()).arg("--specs").arg(&specs).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let server = Server::start_at(lake.path(), ServerOptions::default());
    (server, lake)
}

#[tokio::test]
async fn history_and_time_travel() {
    let (server, lake) = examples();
    let history = rows(&server, "SELECT version, operation, rows_added, run_trigger, run_status, run_id IS NOT NULL FROM history('silver.gl_entries')").await;
    assert_eq!(history, ["0|WRITE|240|cli|succeeded|t"]);
    // A second file changes one entry: the merge is version 1, the old version stays readable.
    std::fs::write(
        lake.path().join("landing/gl_entries/fix.csv"),
        encoding_rs::WINDOWS_1252.encode("Asiento;Fecha;Cuenta;Glosa;Debe;Haber\n1;01/01/2024;1101;Corrección;999,00;\n").0,
    )
    .unwrap();
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(BIN).args(["run", "gl_entries", "--lake"]).arg(lake.path()).arg("--specs").arg(repo.join("specs")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let history = rows(&server, "SELECT version, operation, rows_added, rows_updated FROM history('silver.gl_entries')").await;
    assert_eq!(history, ["1|MERGE|0|1", "0|WRITE|240|NULL"]);
    assert_eq!(rows(&server, "SELECT debe FROM silver.gl_entries WHERE asiento = 1").await, ["999.00"]);
    let before = rows(&server, "SELECT debe FROM table_at('silver.gl_entries', 0) WHERE asiento = 1").await;
    assert_ne!(before, ["999.00"]);
    assert_eq!(rows(&server, "SELECT count(*) FROM table_at('silver.gl_entries', 0)").await, ["240"]);

    let client = server.connect().await;
    let err = client.simple_query("SELECT * FROM history('silver.nope')").await.unwrap_err();
    assert_eq!(sqlstate(&err), "42P01");
    let err = client.simple_query("SELECT * FROM table_at('silver.gl_entries', 99)").await.unwrap_err();
    assert_eq!(sqlstate(&err), "22023", "{err:?}");
    let err = client.simple_query("SELECT * FROM history('platinum.x')").await.unwrap_err();
    assert!(err.as_db_error().unwrap().message().contains("bronze, silver or gold"), "{err:?}");
}

#[tokio::test]
async fn lineage_reaches_bronze_and_the_sources() {
    let (server, _lake) = examples();
    let up = rows(&server, "SELECT depth, from_table, to_table, transform FROM lineage('gold.fact_ledger_monthly', 'up')").await;
    assert_eq!(
        up,
        [
            "1|silver.gl_accounts|gold.fact_ledger_monthly|sql",
            "1|silver.gl_entries|gold.fact_ledger_monthly|sql",
            "2|bronze.gl_accounts|silver.gl_accounts|rules: normalize",
            "2|bronze.gl_entries|silver.gl_entries|rules: rename, trim, type_cast, derive",
            "3|landing:landing/gl_entries/*.csv|bronze.gl_entries|ingest",
            "3|postgres:query|bronze.gl_accounts|ingest",
        ]
    );
    let down = rows(&server, "SELECT depth, to_table FROM lineage('bronze.gl_entries', 'down')").await;
    assert_eq!(down, ["1|silver.gl_entries", "2|gold.fact_ledger_monthly"]);
    let shallow = rows(&server, "SELECT count(*) FROM lineage('gold.fact_ledger_monthly', 'up', 1)").await;
    assert_eq!(shallow, ["2"]);
    let client = server.connect().await;
    let err = client.simple_query("SELECT * FROM lineage('gold.fact_ledger_monthly', 'sideways')").await.unwrap_err();
    assert!(err.as_db_error().unwrap().message().contains("'up', 'down' or 'both'"));
}

#[tokio::test]
async fn profile_describes_every_column() {
    let (server, _lake) = examples();
    let profile = rows(
        &server,
        "SELECT column_name, row_count, null_count, distinct_count, min, max, top_values FROM profile('silver.gl_accounts') WHERE column_name IN ('cuenta', 'tipo') ORDER BY 1",
    )
    .await;
    assert_eq!(
        profile,
        [
            "cuenta|6|0|6|1101|5102|1101 (1), 1102 (1), 2101 (1), 4101 (1), 5101 (1)",
            "tipo|6|0|4|activo|pasivo|activo (2), gasto (2), ingreso (1), pasivo (1)",
        ]
    );
    let numbers = rows(
        &server,
        "SELECT null_count, round(mean::numeric, 2), stddev IS NOT NULL FROM profile('silver.gl_entries') WHERE column_name = 'haber'",
    )
    .await;
    assert_eq!(numbers.len(), 1);
    assert!(numbers[0].starts_with("120|"), "{numbers:?}");
}
