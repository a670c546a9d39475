//! Table maintenance through the real binary: a table of 200 small appends
//! compacted by `workbench optimize` (same answers, a handful of files),
//! `workbench vacuum` keeping every version inside its retention readable,
//! and `files()` / `storage()` showing what a table is made of.

use std::process::Command;
use std::time::Duration;

use deltalake::protocol::SaveMode;

use crate::harness::{BIN, Server, ServerOptions, orders_batch, parquet_codecs, parquet_files, rows, write_table};

fn workbench(lake: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).arg("--lake").arg(lake).env("RUST_LOG", "warn").output().unwrap()
}

#[tokio::test]
async fn optimize_compacts_200_appends_and_vacuum_keeps_time_travel_inside_retention() {
    let lake = tempfile::TempDir::new().unwrap();
    for i in 0..200 {
        write_table(lake.path(), "silver", "orders", orders_batch(i * 50..(i + 1) * 50), SaveMode::Append).await;
    }
    let table_dir = lake.path().join("silver/orders");
    assert_eq!(parquet_files(&table_dir).len(), 200);
    let server = Server::start_at(lake.path(), ServerOptions::default());
    const ANSWERS: &str = "SELECT count(*), count(DISTINCT id), sum(amount), min(ordered_on), max(ordered_on) FROM silver.orders";
    const FILTERED: &str = "SELECT region, count(*), sum(amount) FROM silver.orders WHERE ordered_on = DATE '2022-01-10' GROUP BY region ORDER BY region";
    let (before, filtered_before) = (rows(&server, ANSWERS).await, rows(&server, FILTERED).await);
    assert_eq!(rows(&server, "SELECT files, small_files, rows FROM storage() WHERE table_name = 'silver.orders'").await, vec!["200|200|10000"]);
    assert_eq!(rows(&server, "SELECT count(*), sum(rows), bool_and(small) FROM files('silver.orders')").await, vec!["200|10000|t"]);

    // Compact, Z-ordered by what the filter uses.
    let out = workbench(lake.path(), &["optimize", "silver.orders", "--zorder", "ordered_on,region"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("200 files → 1 ") && stdout.contains("Z-ordered by ordered_on, region") && stdout.contains("version 200"), "{stdout}");
    // The running server answers the same from the new files.
    assert_eq!(rows(&server, ANSWERS).await, before);
    assert_eq!(rows(&server, FILTERED).await, filtered_before);
    assert_eq!(rows(&server, "SELECT version, files, rows FROM storage() WHERE table_name = 'silver.orders'").await, vec!["200|1|10000"]);
    let history = rows(&server, "SELECT operation FROM history('silver.orders') ORDER BY version DESC LIMIT 1").await;
    assert_eq!(history, vec!["OPTIMIZE"]);
    // Nothing to do a second time.
    let again = workbench(lake.path(), &["optimize", "silver.orders"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to compact (1 files, version 200)"), "{again:?}");

    // Vacuum inside the retention deletes nothing: every version still reads.
    let out = workbench(lake.path(), &["vacuum", "silver.orders", "--retain", "1h"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stderr).contains("deleted 0 file(s)"), "{out:?}");
    assert_eq!(rows(&server, "SELECT count(*) FROM table_at('silver.orders', 100)").await, vec!["5050"]);
    assert_eq!(parquet_files(&table_dir).len(), 201);

    // Once the small files have been unused longer than the retention, a dry
    // run lists them and deletes nothing; the real one deletes exactly those.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let dry = workbench(lake.path(), &["vacuum", "silver.orders", "--retain", "2s", "--dry-run"]);
    assert_eq!(String::from_utf8_lossy(&dry.stdout).lines().count(), 200, "{dry:?}");
    assert!(String::from_utf8_lossy(&dry.stderr).contains("would delete 200 file(s)"));
    assert_eq!(parquet_files(&table_dir).len(), 201);
    let out = workbench(lake.path(), &["vacuum", "silver.orders", "--retain", "2s"]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stderr).contains("deleted 200 file(s)"), "{out:?}");
    assert_eq!(parquet_files(&table_dir).len(), 1);
    // The compacted file is written as the pipeline writes silver, whatever
    // wrote the small files.
    assert_eq!(parquet_codecs(&table_dir), ["LZ4_RAW".to_string()].into());
    assert_eq!(rows(&server, ANSWERS).await, before);
    assert_eq!(rows(&server, "SELECT count(*) FROM table_at('silver.orders', 200)").await, vec!["10000"]);
    // A version from before the retention has lost its files: reading its
    // rows is an error, not wrong answers (a count alone comes from the log).
    let client = server.connect().await;
    let gone = client.simple_query("SELECT sum(amount) FROM table_at('silver.orders', 100)").await;
    assert!(gone.is_err(), "{gone:?}");

    // Bad names are refused saying how to name a table.
    let out = workbench(lake.path(), &["optimize", "orders"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("name it layer.table"), "{out:?}");
    let out = workbench(lake.path(), &["vacuum", "silver.nope"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("silver.nope"), "{out:?}");
}

#[tokio::test]
async fn cluster_by_writes_silver_sorted_and_optimize_z_orders_by_it() {
    let lake = tempfile::TempDir::new().unwrap();
    let specs = tempfile::TempDir::new().unwrap();
    std::fs::create_dir_all(lake.path().join("landing/gl")).unwrap();
    // Dates in no order at all.
    let mut csv = String::from("entry,posting_date,amount\n");
    for i in 0..3000 {
        csv.push_str(&format!("{i},2024-{:02}-{:02},{}\n", (i * 7) % 12 + 1, (i * 13) % 28 + 1, i % 97));
    }
    std::fs::write(lake.path().join("landing/gl/a.csv"), csv).unwrap();
    let spec = |cluster: &str| {
        format!(
            "name: gl\nsource: {{ format: csv, path: landing/gl/*.csv }}\nsilver:\n  mode: append\n  rules:\n    - type_cast: {{ posting_date: date, amount: int }}\n  cluster_by: [{cluster}]\n"
        )
    };
    let run = |args: &[&str]| {
        Command::new(BIN).args(args).arg("--lake").arg(lake.path()).arg("--specs").arg(specs.path()).env("RUST_LOG", "warn").output().unwrap()
    };

    // A column silver does not have: the run fails naming the spec line.
    std::fs::write(specs.path().join("gl.yaml"), spec("posted")).unwrap();
    let out = run(&["run", "gl"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("gl.yaml:7:") && stderr.contains("cluster_by column 'posted' is not a silver column"), "{stderr}");
    // Merge mode cannot keep it: check says so.
    std::fs::write(specs.path().join("gl.yaml"), spec("posting_date").replace("mode: append", "mode: merge\n  key: [entry]")).unwrap();
    let out = run(&["check"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("cluster_by does not apply to silver mode merge"), "{out:?}");

    std::fs::write(specs.path().join("gl.yaml"), spec("posting_date")).unwrap();
    let out = run(&["run", "gl"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The parquet file silver wrote holds the rows by posting_date.
    let dir = lake.path().join("silver/gl");
    let file = parquet_files(&dir).into_iter().next().unwrap();
    let reader = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&file).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let mut dates = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let column = batch.column_by_name("posting_date").unwrap();
        let column = column.as_any().downcast_ref::<datafusion::arrow::array::Date32Array>().unwrap();
        dates.extend(column.iter().map(|d| d.unwrap()));
    }
    assert_eq!(dates.len(), 3000);
    assert!(dates.windows(2).all(|w| w[0] <= w[1]), "silver is not sorted by posting_date");
    // Silver, which queries read, is LZ4; bronze, which runs read, snappy.
    assert_eq!(parquet_codecs(&dir), ["LZ4_RAW".to_string()].into());
    assert_eq!(parquet_codecs(&lake.path().join("bronze/gl")), ["SNAPPY".to_string()].into());

    // A second file is a second silver file; optimize without --zorder
    // Z-orders them by the spec's cluster_by.
    std::fs::write(lake.path().join("landing/gl/b.csv"), "entry,posting_date,amount\n9000,2024-03-03,5\n9001,2024-01-01,6\n").unwrap();
    let out = run(&["run", "gl"]);
    assert!(out.status.success());
    let out = run(&["optimize", "silver.gl"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("2 files → 1 ") && stdout.contains("Z-ordered by posting_date"), "{stdout}{out:?}");
}

/// A `cluster_by` sort larger than the memory a query may use spills
/// instead of failing: one sorter per core shares the limit with the other.
#[tokio::test]
async fn cluster_by_sorts_more_rows_than_the_memory_limit_holds() {
    let lake = tempfile::TempDir::new().unwrap();
    let specs = tempfile::TempDir::new().unwrap();
    std::fs::create_dir_all(lake.path().join("landing/gl")).unwrap();
    const ROWS: usize = 1_200_000;
    let mut csv = String::with_capacity(ROWS * 48);
    csv.push_str("entry,posting_date,amount,memo\n");
    for i in 0..ROWS {
        let day = (i * 7919) % 3650;
        csv.push_str(&format!("{i},{},{},memo number {i} of the ledger\n", 18000 + day, i % 997));
    }
    std::fs::write(lake.path().join("landing/gl/a.csv"), csv).unwrap();
    std::fs::write(
        specs.path().join("gl.yaml"),
        "name: gl\nsource: { format: csv, path: landing/gl/*.csv }\nsilver:\n  mode: append\n  rules:\n    - type_cast: { posting_date: int, amount: int }\n  cluster_by: [posting_date]\n",
    )
    .unwrap();
    let config_dir = tempfile::TempDir::new().unwrap();
    let config = config_dir.path().join("workbench.yaml");
    std::fs::write(&config, "query_memory_limit: 128MiB\n").unwrap();
    let out = Command::new(BIN)
        .args(["run", "gl", "--config"])
        .arg(&config)
        .arg("--lake")
        .arg(lake.path())
        .arg("--specs")
        .arg(specs.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let server = Server::start_at(lake.path(), ServerOptions::default());
    let answers = rows(&server, "SELECT count(*), count(DISTINCT entry), sum(amount), min(posting_date), max(posting_date) FROM silver.gl").await;
    let sum: usize = (0..ROWS).map(|i| i % 997).sum();
    assert_eq!(answers, [format!("{ROWS}|{ROWS}|{sum}|18000|21649")]);
    // Each file holds its rows by posting_date.
    for entry in std::fs::read_dir(lake.path().join("silver/gl")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "parquet") {
            continue;
        }
        let reader = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let mut last = i64::MIN;
        for batch in reader {
            let batch = batch.unwrap();
            let column = datafusion::arrow::compute::cast(batch.column_by_name("posting_date").unwrap(), &datafusion::arrow::datatypes::DataType::Int64).unwrap();
            let column = column.as_any().downcast_ref::<datafusion::arrow::array::Int64Array>().unwrap();
            for value in column.iter().map(|d| d.unwrap()) {
                assert!(last <= value, "{} is not sorted by posting_date", path.display());
                last = value;
            }
        }
    }
}

#[tokio::test]
async fn maintenance_on_a_schedule_compacts_every_table_of_the_dataset() {
    let lake = tempfile::TempDir::new().unwrap();
    let specs = tempfile::TempDir::new().unwrap();
    std::fs::create_dir_all(lake.path().join("landing/gl")).unwrap();
    let spec = |maintenance: &str| {
        format!(
            "name: gl\nsource: {{ format: csv, path: landing/gl/*.csv }}\nmaintenance: {maintenance}\n\
             silver:\n  mode: append\n  rules:\n    - type_cast: {{ amount: int }}\n"
        )
    };
    let workbench = |args: &[&str]| {
        Command::new(BIN).args(args).arg("--lake").arg(lake.path()).arg("--specs").arg(specs.path()).env("RUST_LOG", "warn").output().unwrap()
    };
    // Check refuses what would hurt or do nothing, with the spec's line.
    std::fs::write(specs.path().join("gl.yaml"), spec("{ schedule: \"0 3 * * SUN\", vacuum: 10m }")).unwrap();
    let out = workbench(&["check"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("gl.yaml:3:") && String::from_utf8_lossy(&out.stderr).contains("keeps less than an hour"), "{out:?}");
    std::fs::write(specs.path().join("gl.yaml"), spec("{ schedule: \"0 3 * * SUN\", optimize: false }")).unwrap();
    let out = workbench(&["check"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("maintenance does nothing"), "{out:?}");

    // Three runs, three files: three small files in bronze and in silver.
    std::fs::write(specs.path().join("gl.yaml"), spec("{ schedule: \"0 3 * * SUN\", vacuum: 7d }")).unwrap();
    for i in 0..3 {
        std::fs::write(lake.path().join(format!("landing/gl/{i}.csv")), format!("account,amount\n{i},{}\n", i * 10)).unwrap();
        assert!(workbench(&["run", "gl"]).status.success());
    }
    assert_eq!(parquet_files(&lake.path().join("silver/gl")).len(), 3);
    // Every second: the scheduler compacts both tables (once across its slots).
    std::fs::write(specs.path().join("gl.yaml"), spec("{ schedule: \"* * * * * *\", vacuum: 7d }")).unwrap();
    let server = Server::start_at(lake.path(), ServerOptions { args: vec!["--specs".into(), specs.path().display().to_string()], ..Default::default() });
    let started = std::time::Instant::now();
    // The files are compacted as soon as optimize commits; the slot is
    // marked succeeded once vacuum after it is done too.
    loop {
        let storage = rows(&server, "SELECT table_name, files FROM storage() ORDER BY table_name").await;
        let slots = rows(&server, "SELECT count(*) FROM workbench.schedule_slots WHERE dataset = 'gl:maintenance' AND status = 'succeeded'").await;
        if storage == vec!["bronze.gl|1", "silver.gl|1"] && slots[0].parse::<i64>().unwrap() >= 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{storage:?} {slots:?}\n{}", server.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(rows(&server, "SELECT count(*), sum(amount) FROM silver.gl").await, vec!["3|30"]);
    // Vacuum kept the compacted-away files (inside 7 days): time travel still reads.
    assert_eq!(rows(&server, "SELECT count(*) FROM table_at('silver.gl', 0)").await, vec!["1"]);
}
