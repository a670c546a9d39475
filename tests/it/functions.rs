//! Table functions over the wire: history, table_at, lineage, profile.

use std::process::Command;

use crate::harness::{BIN, Server, ServerOptions, rows, sqlstate};

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
    let up = rows(&server, "SELECT depth, from_table, to_table, transform FROM lineage('gold.fact_ledger_monthly', 'up') WHERE from_column IS NULL").await;
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
    // Column level, from the model's logical plan: saldo = debe - haber.
    let saldo = rows(&server, "SELECT from_table, from_column FROM lineage('gold.fact_ledger_monthly', 'up', 1) WHERE to_column = 'saldo' ORDER BY 2").await;
    assert_eq!(saldo, ["silver.gl_entries|debe", "silver.gl_entries|haber"]);
    let named = rows(&server, "SELECT from_table, from_column FROM lineage('gold.fact_ledger_monthly', 'up', 1) WHERE to_column = 'cuenta_nombre'").await;
    assert_eq!(named, ["silver.gl_accounts|nombre"]);
    let down = rows(&server, "SELECT DISTINCT depth, to_table FROM lineage('bronze.gl_entries', 'down') ORDER BY 1").await;
    assert_eq!(down, ["1|silver.gl_entries", "2|gold.fact_ledger_monthly"]);
    let shallow = rows(&server, "SELECT count(*) FROM lineage('gold.fact_ledger_monthly', 'up', 1) WHERE from_column IS NULL").await;
    assert_eq!(shallow, ["2"]);
    // Named arguments, as PostgreSQL takes them; a skipped optional one keeps its default.
    let by_name = rows(&server, "SELECT DISTINCT depth, to_table FROM lineage('bronze.gl_entries', direction => 'down') ORDER BY 1").await;
    assert_eq!(by_name, down);
    let skipped = rows(&server, "SELECT count(*) FROM lineage(table_name := 'gold.fact_ledger_monthly', depth => 1) WHERE from_column IS NULL").await;
    assert_eq!(skipped, shallow);
    let client = server.connect().await;
    let err = client.simple_query("SELECT * FROM lineage('gold.fact_ledger_monthly', 'sideways')").await.unwrap_err();
    assert!(err.as_db_error().unwrap().message().contains("'up', 'down' or 'both'"));
    for (sql, message) in [
        ("SELECT * FROM lineage('gold.fact_ledger_monthly', way => 'up')", "has no argument named way (its arguments: table_name, direction, depth)"),
        ("SELECT * FROM lineage(direction => 'up', 'gold.x')", "positional argument 2 follows a named argument"),
        ("SELECT * FROM lineage(depth => 2)", "argument table_name is required"),
    ] {
        let err = client.simple_query(sql).await.unwrap_err();
        let db = err.as_db_error().unwrap();
        assert_eq!(db.code().code(), "42883", "{sql}");
        assert!(db.message().contains(message), "{sql}: {}", db.message());
    }
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

/// A dataset with planted defects: 10 rows, 2 NULL ids, 1 duplicate id
/// (two rows), 1 amount out of range, 1 bad code, 1 orphan customer.
fn defects(on_fail: Option<&str>) -> (tempfile::TempDir, tempfile::TempDir) {
    let lake = tempfile::TempDir::new().unwrap();
    let specs = tempfile::TempDir::new().unwrap();
    std::fs::create_dir_all(lake.path().join("landing/orders")).unwrap();
    std::fs::write(
        lake.path().join("landing/orders/a.csv"),
        "id,amount,code,customer\n1,10,AB-1,c1\n2,20,AB-2,c1\n,30,AB-3,c2\n4,40,AB-4,c2\n4,45,AB-5,c2\n6,-5,AB-6,c1\n7,70,bad,c1\n,80,AB-8,c2\n9,90,AB-9,c9\n10,100,AB-10,c1\n",
    )
    .unwrap();
    std::fs::create_dir_all(lake.path().join("landing/customers")).unwrap();
    std::fs::write(lake.path().join("landing/customers/a.csv"), "customer\nc1\nc2\n").unwrap();
    std::fs::write(specs.path().join("customers.yaml"), "name: customers\nsource: { format: csv, path: landing/customers/*.csv }\nsilver: { rules: [] }\n").unwrap();
    let action = on_fail.map(|a| format!("\n      on_fail: {a}")).unwrap_or_default();
    std::fs::write(
        specs.path().join("orders.yaml"),
        format!(
            "name: orders\nsource: {{ format: csv, path: landing/orders/*.csv }}\nsilver:\n  rules:\n    - type_cast: {{ id: int, amount: int }}\n  expectations:\n    - not_null: [id]{action}\n    - between: {{ column: amount, min: 0, max: 1000 }}{action}\n"
        ),
    )
    .unwrap();
    (lake, specs)
}

fn run(lake: &tempfile::TempDir, specs: &tempfile::TempDir) -> std::process::Output {
    Command::new(BIN).args(["run", "--all", "--lake"]).arg(lake.path()).arg("--specs").arg(specs.path()).output().unwrap()
}

#[tokio::test]
async fn validate_reports_exactly_the_planted_defects() {
    let (lake, specs) = defects(None);
    let out = run(&lake, &specs);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let server = Server::start_at(
        lake.path(),
        ServerOptions { args: vec!["--specs".into(), specs.path().display().to_string()], ..Default::default() },
    );
    let declared = rows(&server, "SELECT expectation, columns, success, element_count, unexpected_count, missing_count, partial_unexpected_list FROM validate('silver.orders')").await;
    assert_eq!(declared, ["not_null|id|f|10|2|2|[\"NULL\"]", "between|amount|f|10|1|0|[\"-5\"]"]);
    let suite = "- unique: [id]\n- accepted_values: { column: customer, values: [c1, c2] }\n- regex: { column: code, pattern: '^AB-[0-9]+$' }\n- length_between: { column: code, min: 4, max: 4 }\n- relationships: { column: customer, to: silver.customers, field: customer }\n- row_count_between: { min: 1, max: 5 }\n- expression: \"amount < 100\"\n- not_null: [id]\n  mostly: 0.8\n";
    let adhoc = rows(&server, &format!("SELECT expectation, success, unexpected_count, partial_unexpected_list, observed_value FROM validate('silver.orders', '{}')", suite.replace('\'', "''"))).await;
    assert_eq!(
        adhoc,
        [
            "unique|f|2|[\"4\"]|NULL",
            "accepted_values|f|1|[\"c9\"]|NULL",
            "regex|f|1|[\"bad\"]|NULL",
            "length_between|f|2|[\"AB-10\",\"bad\"]|NULL",
            "relationships|f|1|[\"c9\"]|NULL",
            "row_count_between|f|1|[]|10",
            "expression|f|1|[]|NULL",
            "not_null|t|2|[\"NULL\"]|NULL",
        ]
    );
    let stored = rows(&server, "SELECT count(*) FROM workbench.validations WHERE table_name = 'silver.orders'").await;
    assert_eq!(stored, ["12"], "2 from the run, 2 declared, 8 ad hoc");
    let client = server.connect().await;
    let err = client.simple_query("SELECT * FROM validate('silver.orders', '- maybe: [id]')").await.unwrap_err();
    assert!(err.as_db_error().unwrap().message().contains("unknown expectation 'maybe'"), "{err:?}");
}

#[tokio::test]
async fn on_fail_drop_quarantine_and_fail() {
    // drop: failing rows are gone, nowhere else.
    let (lake, specs) = defects(Some("drop"));
    assert!(run(&lake, &specs).status.success());
    let server = Server::start_at(lake.path(), ServerOptions::default());
    assert_eq!(rows(&server, "SELECT count(*), min(amount) FROM silver.orders").await, ["7|10"]);
    assert!(!lake.path().join("silver/orders__quarantine").exists());
    drop(server);

    // quarantine: failing rows land in silver.orders__quarantine with the reasons.
    let (lake, specs) = defects(Some("quarantine"));
    let out = run(&lake, &specs);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("        3 ok"), "{}", String::from_utf8_lossy(&out.stdout));
    let server = Server::start_at(lake.path(), ServerOptions::default());
    assert_eq!(rows(&server, "SELECT count(*) FROM silver.orders").await, ["7"]);
    assert_eq!(
        rows(&server, "SELECT coalesce(CAST(id AS TEXT), 'NULL'), amount, _failed_expectations, _run_id IS NOT NULL, _quarantined_at IS NOT NULL FROM silver.orders__quarantine ORDER BY amount").await,
        ["6|-5|between(amount)|t|t", "NULL|30|not_null(id)|t|t", "NULL|80|not_null(id)|t|t"]
    );
    drop(server);

    // fail: the run stops before silver's commit.
    let (lake, specs) = defects(Some("fail"));
    let out = run(&lake, &specs);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("orders.yaml:") && stderr.contains("not_null(id) failed: 2 of 10 rows"), "{stderr}");
    assert!(!lake.path().join("silver/orders/_delta_log").exists(), "nothing committed to silver");
    assert!(lake.path().join("bronze/orders/_delta_log").exists(), "bronze keeps the raw rows");
}

#[tokio::test]
async fn preview_matches_what_a_run_writes_and_is_cached() {
    let lake = tempfile::TempDir::new().unwrap();
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    assert!(Command::new("cp").arg("-r").arg(repo.join("lake/landing")).arg(lake.path()).status().unwrap().success());
    let specs = repo.join("specs");
    let server = Server::start_at(
        lake.path(),
        ServerOptions { args: vec!["--specs".into(), specs.display().to_string()], ..Default::default() },
    );
    // Before anything is written: preview one workbook.
    let columns = "anio, partida, capitulo, programa, subtitulo, item, denominacion, mes, devengado";
    let file = "landing/dipres_ejecucion/ejecucion_2024.xlsx";
    let preview = rows(
        &server,
        &format!("SELECT {columns}, _expectations_failed FROM preview('dipres_ejecucion', '{file}') ORDER BY {columns}"),
    )
    .await;
    assert_eq!(preview.len(), 18 * 12);
    assert!(preview.iter().all(|r| r.ends_with('|')), "no expectation fails: {:?}", &preview[..2]);
    let again = rows(
        &server,
        &format!("SELECT {columns}, _expectations_failed FROM preview('dipres_ejecucion', '{file}') ORDER BY {columns}"),
    )
    .await;
    assert_eq!(again, preview);
    assert!(server.log_text().contains("preview served from cache"), "second call not cached:\n{}", server.log_text());
    // The newest landing file is the default.
    let newest = rows(&server, "SELECT count(*) FROM preview('dipres_ejecucion')").await;
    assert_eq!(newest, ["216"]);
    // A real run writes the same rows to silver.
    let client = server.connect().await;
    let started = std::time::Instant::now();
    while client.query("SELECT 1 FROM silver.dipres_ejecucion LIMIT 1", &[]).await.is_err() {
        assert!(started.elapsed() < std::time::Duration::from_secs(60));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let silver = rows(
        &server,
        &format!("SELECT {columns}, '' FROM silver.dipres_ejecucion WHERE _source_file = '{file}' ORDER BY {columns}"),
    )
    .await;
    assert_eq!(silver, preview);
    let err = client.simple_query("SELECT * FROM preview('nope')").await.unwrap_err();
    assert_eq!(sqlstate(&err), "42704");
    let err = client.simple_query("SELECT * FROM preview('dipres_ejecucion', 'landing/missing.xlsx')").await.unwrap_err();
    assert!(err.as_db_error().unwrap().message().contains("cannot read landing/missing.xlsx"), "{err:?}");
}

#[tokio::test]
async fn preview_raw_shows_a_file_as_read() {
    let (server, lake) = examples();
    std::fs::create_dir_all(lake.path().join("landing/raw")).unwrap();
    std::fs::write(lake.path().join("landing/raw/a.csv"), "id,name\n1,uno\n2,dos\n3,tres\n").unwrap();
    let raw = rows(&server, "SELECT id, name, _row_number FROM preview_raw('landing/raw/a.csv', 2)").await;
    assert_eq!(raw, ["1|uno|2", "2|dos|3"]);
    let sheet = rows(&server, "SELECT count(*) FROM preview_raw('landing/dipres_ejecucion/ejecucion_2023.xlsx')").await;
    assert_eq!(sheet, ["20"], "title rows and all, as read");
    let client = server.connect().await;
    let err = client.simple_query("SELECT * FROM preview_raw('landing/gl_entries/ledger_2024.csv')").await.unwrap_err();
    assert!(err.as_db_error().unwrap().message().contains("not valid UTF-8"), "{err:?}");
    let err = client.simple_query("SELECT * FROM preview_raw('landing/x.doc')").await.unwrap_err();
    assert!(err.as_db_error().unwrap().message().contains("cannot tell the format"), "{err:?}");
}

#[tokio::test]
async fn table_functions_through_psycopg2_with_bound_parameters() {
    let lake = tempfile::TempDir::new().unwrap();
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    assert!(Command::new("cp").arg("-r").arg(repo.join("lake/landing")).arg(lake.path()).status().unwrap().success());
    let specs = repo.join("specs");
    let out = Command::new(BIN).args(["run", "--all", "--lake"]).arg(lake.path()).arg("--specs").arg(&specs).output().unwrap();
    assert!(out.status.success());
    let server = Server::start_at(lake.path(), ServerOptions { args: vec!["--specs".into(), specs.display().to_string()], ..Default::default() });
    let out = Command::new("python3")
        .arg(repo.join("tests/clients/functions_psycopg2.py"))
        .arg(server.port().to_string())
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("preview_rows 216"), "{stdout}");
    assert!(stdout.contains(r#"validate [["between", true], ["not_null", true], ["not_null", true], ["unique", true]]"#), "{stdout}");
    assert!(stdout.contains("profile nombre"), "{stdout}");
    assert!(stdout.contains(r#"history [[0, "WRITE"]]"#), "{stdout}");
    assert!(stdout.contains("error 42P01"), "{stdout}");
    let edges: i64 = stdout.lines().find_map(|l| l.strip_prefix("lineage_edges ")).unwrap().parse().unwrap();
    assert!(edges >= 3, "{stdout}");
}

#[tokio::test]
async fn silver_column_lineage_follows_the_rules_down_to_the_source_file() {
    let (server, _lake) = examples();
    // devengado comes from the twelve month columns (melt), then type_cast.
    let devengado = rows(
        &server,
        "SELECT count(*), min(transform) FROM lineage('silver.dipres_ejecucion', 'up', 1) WHERE to_column = 'devengado'",
    )
    .await;
    assert_eq!(devengado, ["12|melt, type_cast"]);
    let anio = rows(&server, "SELECT from_column FROM lineage('silver.dipres_ejecucion', 'up', 1) WHERE to_column = 'anio'").await;
    assert_eq!(anio, ["_source_file"]);
    let partida = rows(&server, "SELECT from_column, transform FROM lineage('silver.dipres_ejecucion', 'up', 1) WHERE to_column = 'partida'").await;
    assert_eq!(partida, ["Partida|rename"]);
    // From a gold column down to the landing files, hop by hop.
    let path = rows(&server, "SELECT DISTINCT depth, from_table FROM lineage('gold.mart_ejecucion_mensual', 'up') WHERE from_column IS NULL ORDER BY 1").await;
    assert_eq!(
        path,
        ["1|silver.dipres_ejecucion", "2|bronze.dipres_ejecucion", "3|landing:landing/dipres_ejecucion/*.xlsx"]
    );
}

#[tokio::test]
async fn freshness_compares_the_newest_timestamp_with_now() {
    let lake = tempfile::TempDir::new().unwrap();
    let specs = tempfile::TempDir::new().unwrap();
    std::fs::create_dir_all(lake.path().join("landing/events")).unwrap();
    let now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S");
    std::fs::write(lake.path().join("landing/events/a.csv"), format!("id,at\n1,2020-01-01 00:00:00\n2,{now}\n")).unwrap();
    std::fs::write(
        specs.path().join("events.yaml"),
        "name: events\nsource: { format: csv, path: landing/events/*.csv }\nsilver:\n  rules:\n    - type_cast: { at: { type: timestamp, format: \"%Y-%m-%d %H:%M:%S\" } }\n",
    )
    .unwrap();
    let out = Command::new(BIN).args(["run", "--all", "--lake"]).arg(lake.path()).arg("--specs").arg(specs.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let server = Server::start_at(lake.path(), ServerOptions::default());
    let fresh = rows(&server, "SELECT success, observed_value IS NOT NULL FROM validate('silver.events', '- freshness: { column: at, max_age: ''1 day'' }')").await;
    assert_eq!(fresh, ["t|t"]);
    let stale = rows(&server, "SELECT success FROM validate('silver.events', '- freshness: { column: at, max_age: ''1 day'' }\n- expression: \"at > now() - INTERVAL ''1 day''\"')").await;
    assert_eq!(stale, ["t", "f"], "the old row fails the row-level check; the table is still fresh");
}
