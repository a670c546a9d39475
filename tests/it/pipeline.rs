//! Specs and the bronze → silver → gold pipeline, through the real binary
//! (`workbench check`, `workbench run`) and checked over the wire.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::harness::{BIN, Server, ServerOptions, parquet_codecs, parquet_files};

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

    let out = workbench(&["run", "--all"], server.lake(), &specs);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("0 new file(s)"), "{}", text(&out));
    assert_eq!(silver_fingerprint(&client).await, before, "a re-run changed silver");
    let bronze: i64 = client.query_one("SELECT count(*) FROM bronze.dipres_ejecucion", &[]).await.unwrap().get(0);
    assert_eq!(bronze, 36, "nothing re-ingested");

    let out = workbench(&["run", "--all", "--full-refresh"], server.lake(), &specs);
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

/// Run `sales` (row 3 holds `ten`) with `rules`, which start with a
/// `type_cast` of amount on line 7: it must fail there, naming the row and
/// value, and leave silver uncommitted.
fn assert_cast_fails_at_row_3(rules: &str) {
    let lake = tempfile::TempDir::new().unwrap();
    let landing = lake.path().join("landing/sales");
    std::fs::create_dir_all(&landing).unwrap();
    std::fs::write(landing.join("a.csv"), "id,amount\n1,10\n2,ten\n3,30\n").unwrap();
    let specs = tempfile::TempDir::new().unwrap();
    std::fs::write(
        specs.path().join("sales.yaml"),
        format!("name: sales\nsource:\n  format: csv\n  path: landing/sales/*.csv\nsilver:\n  rules:\n{rules}"),
    )
    .unwrap();
    let out = workbench(&["run", "sales"], lake.path(), specs.path());
    let failed = !out.status.success();
    let out = text(&out);
    assert!(failed, "{out}");
    assert!(out.contains("sales.yaml:7:") && out.contains("amount"), "{out}");
    assert!(out.contains("row 3: 'ten'"), "{out}");
    assert!(!lake.path().join("silver/sales/_delta_log").exists(), "nothing half-written");
}

#[tokio::test]
async fn a_value_that_cannot_be_cast_is_reported_with_row_and_value() {
    assert_cast_fails_at_row_3("    - type_cast: { amount: int }\n");
}

#[tokio::test]
async fn a_cast_checks_every_row_even_when_a_later_rule_filters_it_out() {
    assert_cast_fails_at_row_3("    - type_cast: { amount: int }\n    - filter: \"id <> '2'\"\n");
}

/// A lake and a specs directory for one test.
struct Workspace {
    lake: tempfile::TempDir,
    specs: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Self {
        Workspace {
            lake: tempfile::TempDir::new().unwrap(),
            specs: tempfile::TempDir::new().unwrap(),
        }
    }

    fn spec(&self, name: &str, yaml: &str) -> &Self {
        std::fs::write(self.specs.path().join(format!("{name}.yaml")), yaml).unwrap();
        self
    }

    fn landing(&self, path: &str, bytes: &[u8]) -> &Self {
        let path = self.lake.path().join("landing").join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
        self
    }

    fn run(&self, args: &[&str]) -> String {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        let out = workbench(&all, self.lake.path(), self.specs.path());
        assert!(out.status.success(), "workbench {all:?} failed:\n{}", text(&out));
        text(&out)
    }

    async fn rows(&self, server: &Server, sql: &str) -> Vec<String> {
        crate::harness::rows(server, sql).await
    }
}

#[tokio::test]
async fn every_rule_over_a_windows_1252_csv_with_title_rows() {
    let ws = Workspace::new();
    let csv = "Reporte de ventas\r\nCodigo;Nombre;Región;Monto;Fecha;Activo;Mes;Nota\r\n\
               1;  ana   perez ;Norte;1.234,50;05/01/2024;Sí;Ene;x\r\n\
               2;Luis;Sur;NA;06/01/2024;No;Feb;\"a;b\"\r\n\
               2;Luis;Sur;2.000,00;07/01/2024;No;Feb;second\r\n\
               3;Eva;Este;10,00;08/01/2024;Sí;Mar;y\r\n\
               4;Max;Oeste;5,00;09/01/2024;No;Zzz;drop me\r\n";
    let (bytes, _, _) = encoding_rs::WINDOWS_1252.encode(csv);
    ws.landing("ventas/enero.csv", &bytes).spec(
        "ventas",
        r#"name: ventas
source: { format: csv, path: landing/ventas/*.csv, delimiter: ";", encoding: windows-1252, header_row: 2, null_values: ["", "NA"] }
silver:
  mode: overwrite
  rules:
    - rename: { Codigo: codigo, Nombre: nombre, "Región": region, Monto: monto, Fecha: fecha, Activo: activo, Mes: mes, Nota: nota }
    - normalize: { columns: [nombre], case: upper }
    - type_cast:
        codigo: int
        monto: { type: "decimal(12,2)", format: es }
        fecha: { type: date, format: "%d/%m/%Y" }
        activo: bool
    - map_categories: { column: mes, mapping: { Ene: 1, Feb: 2, Mar: 3 }, unmapped: null }
    - filter: "mes IS NOT NULL"
    - derive: { monto_doble: "monto * 2" }
    - dedupe: { key: [codigo], keep: last }
    - drop: [nota]
    - select: [codigo, nombre, region, monto, fecha, activo, mes, monto_doble]
"#,
    );
    ws.run(&["ventas"]);
    let server = Server::start_at(ws.lake.path(), ServerOptions::default());
    let rows = ws
        .rows(&server, "SELECT codigo, nombre, region, monto, fecha, activo, mes, monto_doble FROM silver.ventas ORDER BY codigo")
        .await;
    assert_eq!(
        rows,
        [
            "1|ANA PEREZ|Norte|1234.50|2024-01-05|t|1|2469.00",
            "2|LUIS|Sur|2000.00|2024-01-07|f|2|4000.00",
            "3|EVA|Este|10.00|2024-01-08|t|3|20.00",
        ]
    );
    let bronze = ws.rows(&server, "SELECT count(*), min(_row_number), max(_row_number) FROM bronze.ventas").await;
    assert_eq!(bronze, ["5|3|7"], "bronze keeps every raw row with its line number");
}


#[tokio::test]
async fn a_large_csv_is_parsed_in_parallel_without_losing_or_splitting_a_row() {
    // ~10 MB (parsed in pieces): every row has a quoted value spanning lines,
    // with doubled quotes and the delimiter inside, so any cut that ignored
    // quoting would split a row; a blank row follows every 1000th.
    let mut csv = String::from("id,note,amount\n");
    let rows = 200_000;
    for i in 0..rows {
        csv.push_str(&format!("{i},\"line one\n\"\"quoted\"\", x\nline {i}\",{}.{:02}\n", i * 3, i % 100));
        if i % 1000 == 999 {
            csv.push_str(" , , \n");
        }
    }
    assert!(csv.len() > 9 << 20);
    let ws = Workspace::new();
    ws.landing("big/big.csv", csv.as_bytes())
        .spec("big", "name: big\nsource: { format: csv, path: landing/big/*.csv }\nsilver: { rules: [] }\n");
    ws.run(&["big"]);
    let server = Server::start_at(ws.lake.path(), ServerOptions::default());
    let counts = ws
        .rows(&server, "SELECT count(*), count(DISTINCT id), min(_row_number), max(_row_number) FROM bronze.big")
        .await;
    let last_line = 2 + (rows - 1) + (rows - 1) / 1000;
    assert_eq!(counts, [format!("{rows}|{rows}|2|{last_line}")]);
    // Each row keeps its own line number (header is 1; blank rows count).
    let misnumbered = ws
        .rows(&server, "SELECT count(*) FROM bronze.big WHERE _row_number <> CAST(id AS BIGINT) + 2 + CAST(id AS BIGINT) / 1000")
        .await;
    assert_eq!(misnumbered, ["0"]);
    let one = ws.rows(&server, "SELECT note, amount FROM bronze.big WHERE id = '164321'").await;
    assert_eq!(one, ["line one\n\"quoted\", x\nline 164321|492963.21"]);
}

#[tokio::test]
async fn a_landing_file_that_breaks_part_way_commits_nothing_to_bronze() {
    // Rows stream into the bronze write as they are parsed; a bad row near
    // the end of a large file must fail the run before anything is committed.
    let ws = Workspace::new();
    ws.landing("feed/a.csv", b"id,amount\n1,10\n2,20\n")
        .spec("feed", "name: feed\nsource: { format: csv, path: landing/feed/*.csv }\nsilver: { rules: [] }\n");
    ws.run(&["feed"]);
    let mut big = String::from("id,amount\n");
    let rows = 900_000;
    for i in 0..rows {
        big.push_str(&format!("{i:07},{}.25\n", i % 977));
    }
    big.push_str("0900000,1,surplus\n");
    assert!(big.len() > 9 << 20);
    ws.landing("feed/b.csv", big.as_bytes());
    let out = workbench(&["run", "feed"], ws.lake.path(), ws.specs.path());
    assert!(!out.status.success());
    let out = text(&out);
    let bad_line = rows + 2;
    assert!(out.contains("landing/feed/b.csv") && out.contains(&format!("row {bad_line} has 3 fields but the header has 2")), "{out}");
    let server = Server::start_at(ws.lake.path(), ServerOptions::default());
    let bronze = ws.rows(&server, "SELECT count(*), count(DISTINCT _source_file) FROM bronze.feed").await;
    assert_eq!(bronze, ["2|1"], "bronze stays at its last commit");
}

#[tokio::test]
async fn melt_by_pattern_and_unmapped_categories_fail_with_examples() {
    let ws = Workspace::new();
    ws.landing("wide/a.csv", b"id,m_1,m_2,m_3\nA,1,2,3\nB,4,5,x\n").spec(
        "wide",
        "name: wide\nsource: { format: csv, path: landing/wide/*.csv }\nsilver:\n  rules:\n    - melt: { id: [id], pattern: '^m_', variable: month, value: amount }\n    - map_categories: { column: month, mapping: { m_1: jan, m_2: feb }, unmapped: fail }\n",
    );
    let out = workbench(&["run", "wide"], ws.lake.path(), ws.specs.path());
    assert!(!out.status.success());
    let out = text(&out);
    assert!(out.contains("wide.yaml:6:") && out.contains("2 value(s) have no mapping") && out.contains("'m_3'"), "{out}");
}

#[tokio::test]
async fn parquet_json_and_ndjson_sources() {
    use deltalake::arrow::array::{Float64Array, Int32Array, RecordBatch};
    use deltalake::arrow::datatypes::{DataType, Field, Schema};
    let ws = Workspace::new();
    let batch = RecordBatch::try_new(
        std::sync::Arc::new(Schema::new(vec![Field::new("k", DataType::Int32, false), Field::new("v", DataType::Float64, true)])),
        vec![std::sync::Arc::new(Int32Array::from(vec![1, 2, 3])), std::sync::Arc::new(Float64Array::from(vec![Some(0.5), None, Some(2.5)]))],
    )
    .unwrap();
    let mut parquet = Vec::new();
    let mut writer = deltalake::parquet::arrow::ArrowWriter::try_new(&mut parquet, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    ws.landing("p/x.parquet", &parquet)
        .landing("j/x.json", br#"[{"k": 1, "name": "uno"}, {"k": 2, "name": "dos"}]"#)
        .landing("n/x.ndjson", b"{\"k\": 1, \"ok\": true}\n{\"k\": 2, \"ok\": false}\n{\"k\": 3, \"ok\": null}\n")
        .spec("p", "name: p\nsource: { format: parquet, path: landing/p/*.parquet }\nsilver: { rules: [] }\n")
        .spec("j", "name: j\nsource: { format: json, path: landing/j/*.json }\nsilver: { rules: [] }\n")
        .spec("n", "name: n\nsource: { format: ndjson, path: landing/n/*.ndjson }\nsilver: { rules: [] }\n");
    ws.run(&["--all"]);
    let server = Server::start_at(ws.lake.path(), ServerOptions::default());
    assert_eq!(ws.rows(&server, "SELECT k, v FROM silver.p ORDER BY k").await, ["1|0.5", "2|NULL", "3|2.5"]);
    assert_eq!(ws.rows(&server, "SELECT k, name FROM silver.j ORDER BY k").await, ["1|uno", "2|dos"]);
    assert_eq!(ws.rows(&server, "SELECT k, ok FROM silver.n ORDER BY k").await, ["1|t", "2|f", "3|NULL"]);
}

#[tokio::test]
async fn postgres_source_with_a_date_window() {
    let table = format!("wb_orders_{}", std::process::id());
    let url = "postgres://postgres@127.0.0.1:5432/test";
    let setup = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", url, "-c"])
        .arg(format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int, day date, amount numeric(10,2), note text); \
             INSERT INTO {table} VALUES (1, '2024-01-01', 10.50, 'a'), (2, '2024-01-15', 20.25, NULL), (3, '2024-02-01', 30, 'c');"
        ))
        .output()
        .unwrap();
    assert!(setup.status.success(), "{}", text(&setup));
    let ws = Workspace::new();
    ws.spec(
        "orders",
        &format!("name: orders\nsource:\n  format: postgres\n  url: env:WB_TEST_PG_URL\n  query: SELECT id, day, amount, note FROM {table} WHERE day BETWEEN {{{{ start_date }}}} AND {{{{ end_date }}}}\nsilver: {{ rules: [] }}\n"),
    );
    let out = Command::new(BIN)
        .args(["run", "orders", "--from", "2024-01-01", "--to", "2024-01-31", "--lake"])
        .arg(ws.lake.path())
        .arg("--specs")
        .arg(ws.specs.path())
        .env("WB_TEST_PG_URL", url)
        .output()
        .unwrap();
    let _ = Command::new("psql").args(["-X", "-q", url, "-c"]).arg(format!("DROP TABLE {table}")).output();
    assert!(out.status.success(), "{}", text(&out));
    let server = Server::start_at(ws.lake.path(), ServerOptions::default());
    assert_eq!(
        ws.rows(&server, "SELECT id, day, amount, note FROM silver.orders ORDER BY id").await,
        ["1|2024-01-01|10.50|a", "2|2024-01-15|20.25|NULL"]
    );
}

#[tokio::test]
async fn append_merge_and_scd2_write_modes() {
    let ws = Workspace::new();
    for mode in ["append", "merge", "scd2"] {
        ws.spec(
            &format!("c_{mode}"),
            &format!("name: c_{mode}\nsource: {{ format: csv, path: landing/customers/*.csv }}\nsilver:\n  mode: {mode}\n  key: [id]\n  rules:\n    - type_cast: {{ id: int }}\n"),
        );
    }
    ws.landing("customers/1.csv", b"id,city\n1,Lima\n2,Quito\n");
    ws.run(&["--all"]);
    ws.landing("customers/2.csv", b"id,city\n2,Cuenca\n3,Bogota\n");
    ws.run(&["--all"]);
    let server = Server::start_at(ws.lake.path(), ServerOptions::default());
    assert_eq!(
        ws.rows(&server, "SELECT id, city FROM silver.c_append ORDER BY id, city").await,
        ["1|Lima", "2|Cuenca", "2|Quito", "3|Bogota"]
    );
    assert_eq!(
        ws.rows(&server, "SELECT id, city FROM silver.c_merge ORDER BY id").await,
        ["1|Lima", "2|Cuenca", "3|Bogota"]
    );
    assert_eq!(
        ws.rows(&server, "SELECT id, city, _is_current, _valid_to IS NULL FROM silver.c_scd2 ORDER BY id, _valid_from").await,
        ["1|Lima|t|t", "2|Quito|f|f", "2|Cuenca|t|t", "3|Bogota|t|t"]
    );
    // The files a merge rewrote are written like every silver file.
    for mode in ["append", "merge", "scd2"] {
        let dir = ws.lake.path().join(format!("silver/c_{mode}"));
        assert_eq!(parquet_codecs(&dir), ["LZ4_RAW".to_string()].into(), "{mode}");
    }
    // Nothing new: every silver table is left alone.
    let out = ws.run(&["--all"]);
    let report_lines = out.lines().filter(|l| l.starts_with("silver ") && l.ends_with("bronze has nothing silver has not seen"));
    assert_eq!(report_lines.count(), 3, "{out}");
}

#[tokio::test]
async fn commits_carry_the_run_id() {
    let ws = Workspace::new();
    ws.landing("t/a.csv", b"a\n1\n").spec("t", "name: t\nsource: { format: csv, path: landing/t/*.csv }\nsilver: { rules: [] }\n");
    let out = ws.run(&["t"]);
    let run_id = out.lines().next().unwrap().trim_start_matches("run ").trim().to_string();
    for layer in ["bronze", "silver"] {
        let log = std::fs::read_to_string(ws.lake.path().join(layer).join("t/_delta_log/00000000000000000000.json")).unwrap();
        assert!(log.contains(&format!("\"workbench.run_id\":\"{run_id}\"")), "{layer}: {log}");
    }
}

#[tokio::test]
async fn sigkill_during_a_silver_write_leaves_the_previous_version_and_the_next_run_succeeds() {
    let ws = Workspace::new();
    ws.spec(
        "big",
        "name: big\nsource: { format: csv, path: landing/big/*.csv }\nsilver:\n  mode: append\n  rules:\n    - type_cast: { n: bigint }\n    - derive: { square: \"n * n\", label: \"concat('row-', n)\" }\n",
    );
    ws.landing("big/0.csv", b"n\n1\n2\n3\n");
    ws.run(&["big"]);
    let mut rows = String::from("n\n");
    for n in 0..400_000 {
        rows.push_str(&format!("{n}\n"));
    }
    ws.landing("big/1.csv", rows.as_bytes());
    let silver = ws.lake.path().join("silver/big");
    let parquet_count = || parquet_files(&silver).len();
    let before = parquet_count();
    let mut child = Command::new(BIN)
        .args(["run", "big", "--lake"])
        .arg(ws.lake.path())
        .arg("--specs")
        .arg(ws.specs.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill as soon as silver starts writing a data file (before its commit).
    let started = std::time::Instant::now();
    while parquet_count() == before && started.elapsed() < std::time::Duration::from_secs(60) {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let _ = child.kill();
    let _ = child.wait();
    let server = Server::start_at(ws.lake.path(), ServerOptions::default());
    let count = ws.rows(&server, "SELECT count(*) FROM silver.big").await;
    assert!(count == ["3"] || count == ["400003"], "silver must be at a committed version, got {count:?}");
    ws.run(&["big"]);
    assert_eq!(ws.rows(&server, "SELECT count(*), sum(square) FILTER (WHERE n = 399999) FROM silver.big").await, ["400003|159999200001"]);
}

#[tokio::test]
async fn serve_builds_datasets_whose_tables_do_not_exist() {
    let lake = example_lake();
    let server = Server::start_in(
        lake,
        ServerOptions {
            args: vec!["--specs".into(), repo().join("specs").display().to_string()],
            ..Default::default()
        },
    );
    let client = server.connect().await;
    let started = std::time::Instant::now();
    loop {
        match client.query_one("SELECT count(*) FROM gold.mart_ejecucion_mensual", &[]).await {
            Ok(row) => {
                assert!(row.get::<_, i64>(0) > 0);
                break;
            }
            Err(_) if started.elapsed() < std::time::Duration::from_secs(60) => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await
            }
            Err(err) => panic!("gold never appeared: {err}\n{}", server.log_text()),
        }
    }
}

#[tokio::test]
async fn run_from_sql_returns_one_row_per_step() {
    let ws = Workspace::new();
    ws.landing("t/a.csv", b"a\n1\n2\n").spec("t", "name: t\nsource: { format: csv, path: landing/t/*.csv }\nsilver: { rules: [] }\n");
    let server = Server::start_at(
        ws.lake.path(),
        ServerOptions {
            args: vec!["--specs".into(), ws.specs.path().display().to_string()],
            ..Default::default()
        },
    );
    // Let the start-up build finish, then add a file and run from SQL.
    let client = server.connect().await;
    for _ in 0..300 {
        if client.query("SELECT 1 FROM silver.t", &[]).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    ws.landing("t/b.csv", b"a\n3\n");
    let rows = ws
        .rows(&server, "SELECT layer, \"table\", rows_in, rows_out, status FROM run('t') ORDER BY layer")
        .await;
    // Silver defaults to overwrite: it is recomputed from all of bronze.
    assert_eq!(rows, ["bronze|t|1|1|ok", "silver|t|3|3|ok"]);
    let client = server.connect().await;
    let err = client.simple_query("SELECT * FROM run('nope')").await.unwrap_err();
    assert!(err.as_db_error().unwrap().message().contains("unknown dataset 'nope'"), "{err}");
}

#[tokio::test]
async fn spreadsheets_xlsx_xls_and_ods_with_sheet_index_title_rows_and_dates() {
    let ws = Workspace::new();
    for ext in ["xlsx", "xls", "ods"] {
        let bytes = std::fs::read(repo().join(format!("tests/fixtures/personas.{ext}"))).unwrap();
        ws.landing(&format!("p_{ext}/personas.{ext}"), &bytes).spec(
            &format!("p_{ext}"),
            &format!(
                "name: p_{ext}\nsource: {{ format: {ext}, path: landing/p_{ext}/*.{ext}, sheet: 1, header_row: 3 }}\n\
                 silver:\n  rules:\n    - type_cast: {{ Nacimiento: date, Saldo: \"decimal(10,2)\" }}\n"
            ),
        );
    }
    ws.run(&["--all"]);
    let server = Server::start_at(ws.lake.path(), ServerOptions::default());
    for ext in ["xlsx", "xls", "ods"] {
        let rows = ws
            .rows(&server, &format!("SELECT \"Nombre\", \"Nacimiento\", \"Saldo\", _source_file FROM silver.p_{ext} ORDER BY 1"))
            .await;
        assert_eq!(
            rows,
            [
                format!("Ana|1990-05-17|1500.50|landing/p_{ext}/personas.{ext}"),
                format!("Bruno|1985-12-01|NULL|landing/p_{ext}/personas.{ext}"),
                format!("Carla|2001-02-28|990.00|landing/p_{ext}/personas.{ext}"),
            ],
            "{ext}"
        );
        // Bronze keeps the sheet's own row numbers (header on row 3).
        let numbers = ws.rows(&server, &format!("SELECT _row_number FROM bronze.p_{ext} ORDER BY 1")).await;
        assert_eq!(numbers, ["4", "5", "7"], "{ext}");
    }
}

/// Silver written alongside bronze, from the rows bronze parses (a first run,
/// then an append), holds exactly what silver rebuilt from the stored bronze
/// holds: same rows, same column types. A value a cast rejects still fails
/// silver with the rule's own report, bronze keeping the file.
#[tokio::test]
async fn silver_written_alongside_bronze_equals_silver_rebuilt_from_bronze() {
    let ws = Workspace::new();
    ws.spec(
        "orders",
        "name: orders\nsource: { format: csv, path: landing/orders/*.csv }\nsilver:\n  mode: append\n  rules:\n    \
         - rename: { Customer: customer }\n    - trim: [customer]\n    - filter: \"customer <> 'void'\"\n    \
         - derive: { shouting: \"upper(customer)\" }\n    \
         - type_cast: { id: bigint, amount: \"decimal(12,2)\", day: date }\n",
    );
    ws.landing("orders/1.csv", b"id,Customer,amount,day\n1, ana ,10.5,2026-01-02\n2,void,3,2026-01-03\n3,bo,7.25,2026-02-01\n");
    let out = ws.run(&["orders"]);
    assert!(out.contains("written alongside bronze"), "{out}");
    ws.landing("orders/2.csv", b"id,Customer,amount,day\n4,cy,1.005,2026-03-04\n5, dee,,2026-03-05\n");
    let out = ws.run(&["orders"]);
    assert!(out.contains("written alongside bronze"), "the append reads once too:\n{out}");
    let server = Server::start_at(ws.lake.path(), ServerOptions::default());
    let rows = "SELECT id, customer, amount, day, shouting, _source_file FROM silver.orders ORDER BY id";
    let types = "SELECT column_name, data_type FROM information_schema.columns \
                 WHERE table_schema = 'silver' AND table_name = 'orders' ORDER BY ordinal_position";
    let (alongside, alongside_types) = (ws.rows(&server, rows).await, ws.rows(&server, types).await);
    assert_eq!(
        alongside,
        [
            "1|ana|10.50|2026-01-02|ANA|landing/orders/1.csv",
            "3|bo|7.25|2026-02-01|BO|landing/orders/1.csv",
            "4|cy|1.01|2026-03-04|CY|landing/orders/2.csv",
            "5|dee|NULL|2026-03-05|DEE|landing/orders/2.csv"
        ]
    );
    let out = ws.run(&["orders", "--full-refresh"]);
    assert!(!out.contains("written alongside bronze"), "a full refresh reads the stored bronze:\n{out}");
    assert_eq!(ws.rows(&server, rows).await, alongside);
    assert_eq!(ws.rows(&server, types).await, alongside_types);

    ws.landing("orders/3.csv", b"id,Customer,amount,day\n6,eve,12,2026-04-01\n7,fay,twelve,2026-04-02\n");
    let out = workbench(&["run", "orders"], ws.lake.path(), ws.specs.path());
    let (failed, out) = (!out.status.success(), text(&out));
    assert!(failed && out.contains("orders.yaml:10:") && out.contains("row 3: 'twelve'"), "{out}");
    assert_eq!(ws.rows(&server, "SELECT count(*) FROM bronze.orders").await, ["7"], "bronze keeps the file");
    assert_eq!(ws.rows(&server, "SELECT count(*) FROM silver.orders").await, ["4"], "silver keeps its last version");
}

#[test]
fn a_step_over_the_memory_limit_names_the_setting_and_keeps_earlier_layers() {
    let ws = Workspace::new();
    let mut csv = String::from("entry,memo\n");
    for i in 0..300_000 {
        csv.push_str(&format!("{i},memo number {i} of the ledger\n"));
    }
    ws.landing("gl/a.csv", csv.as_bytes());
    ws.spec("gl", "name: gl\nsource: { format: csv, path: landing/gl/*.csv }\nsilver:\n  rules:\n    - type_cast: { entry: bigint }\n");
    std::fs::create_dir_all(ws.specs.path().join("gold")).unwrap();
    std::fs::write(ws.specs.path().join("gold/memos.sql"), "SELECT array_agg(memo) AS memos FROM silver.gl").unwrap();
    let config = ws.lake.path().join("workbench.yaml");
    std::fs::write(&config, "query_memory_limit: 4MiB\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "--all", "--config"])
        .arg(&config)
        .arg("--lake")
        .arg(ws.lake.path())
        .arg("--specs")
        .arg(ws.specs.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let (failed, out) = (!out.status.success(), text(&out));
    assert!(failed, "{out}");
    assert!(
        out.contains("gold.memos") && out.contains("(query_memory_limit, 4.0 MiB) is used up; raise query_memory_limit"),
        "the failed step and the setting to raise:\n{out}"
    );
    // Bronze and silver, within the limit, are committed; gold is not.
    assert!(ws.lake.path().join("silver/gl/_delta_log/00000000000000000000.json").exists(), "{out}");
    assert!(!ws.lake.path().join("gold/memos/_delta_log/00000000000000000000.json").exists(), "{out}");
}
