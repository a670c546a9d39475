//! Test harness: runs the real `workbench` binary on port 0 against a
//! temporary lake, and writes Delta tables into that lake from this (other)
//! process, exactly as a pipeline on another machine would.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::DeltaTable;
use deltalake::arrow::array::RecordBatch;
use deltalake::protocol::SaveMode;
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_workbench");

/// Options for a test server.
#[derive(Default, Clone)]
pub struct ServerOptions {
    /// Extra YAML appended to the config file.
    pub config_yaml: String,
    /// Extra command-line flags.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Serve this lake (e.g. `s3://bucket/lake`) instead of the directory
    /// the config and the log go in.
    pub lake_url: Option<String>,
}

pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The HTTP API's address.
    pub http: Option<SocketAddr>,
    lake: PathBuf,
    _lake_owner: Option<TempDir>,
    pub log: PathBuf,
}

impl Server {
    /// Start with trust auth on loopback and `debug_functions` on.
    pub fn start() -> Server {
        Server::start_with(ServerOptions::default())
    }

    pub fn start_with(options: ServerOptions) -> Server {
        let lake = TempDir::new().expect("temp lake");
        Server::start_in(lake, options)
    }

    /// Start on a lake this server owns (tables may already be there).
    pub fn start_in(lake: TempDir, options: ServerOptions) -> Server {
        let path = lake.path().to_path_buf();
        let mut server = Server::start_at(&path, options);
        server._lake_owner = Some(lake);
        server
    }

    /// Start on a lake directory owned by someone else.
    pub fn start_at(lake: &Path, options: ServerOptions) -> Server {
        let config = lake.join("workbench-test.yaml");
        std::fs::write(
            &config,
            format!("debug_functions: true\n{}", options.config_yaml),
        )
        .expect("write config");
        let log = lake.join("server.log");
        let mut child = Command::new(BIN)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
            .arg("--lake")
            .arg(options.lake_url.clone().unwrap_or_else(|| lake.display().to_string()))
            .arg("--config")
            .arg(&config)
            .args(&options.args)
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "warn,workbench=info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("server log"))
            .spawn()
            .expect("spawn workbench serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut http = None;
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("workbench http on ") {
                        http = Some(addr.trim().parse().expect("http address"));
                    }
                    if let Some(addr) = line.strip_prefix("workbench listening on ") {
                        break addr.trim().parse().expect("listen address");
                    }
                }
                _ => panic!(
                    "server exited before listening; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            }
        };
        Server {
            child: Some(child),
            addr,
            http,
            lake: lake.to_path_buf(),
            _lake_owner: None,
            log,
        }
    }

    pub fn lake(&self) -> &Path {
        &self.lake
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }


    pub async fn connect(&self) -> tokio_postgres::Client {
        self.connect_as("workbench", None).await.expect("connect")
    }

    pub async fn connect_as(
        &self,
        user: &str,
        password: Option<&str>,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port())
            .user(user)
            .dbname("workbench")
            .connect_timeout(Duration::from_secs(10));
        if let Some(password) = password {
            config.password(password);
        }
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Run psql with `args` against this server (no ~/.psqlrc, stop on error).
    pub fn psql(&self, args: &[&str]) -> Output {
        Command::new("psql")
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "workbench", "-d", "workbench"])
            .arg("-p")
            .arg(self.port().to_string())
            .args(args)
            .env_remove("PGPASSWORD")
            .output()
            .expect("run psql")
    }

    /// psql `-c` commands; panics with psql's stderr on failure.
    pub fn psql_ok(&self, commands: &[&str]) -> String {
        let mut args = Vec::new();
        for c in commands {
            args.push("-c");
            args.push(c);
        }
        let out = self.psql(&args);
        assert!(
            out.status.success(),
            "psql {commands:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).expect("utf8")
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("a running server")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send SIGTERM and wait for the process; returns its exit status.
    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn terminate(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        unsafe_kill(child.id(), "TERM");
        let start = Instant::now();
        while start.elapsed() < wait {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

}

fn unsafe_kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `workbench hash-password` of `password`, as a config file takes it.
pub fn hash_password(password: &str) -> String {
    use std::io::Write;
    let out = Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().expect("stdin").write_all(format!("{password}\n").as_bytes())?;
            child.wait_with_output()
        })
        .expect("hash-password");
    String::from_utf8(out.stdout).expect("utf8").trim().to_string()
}

/// Write `batch` to `<lake>/<layer>/<table>` as a Delta commit.
pub async fn write_table(lake: &Path, layer: &str, table: &str, batch: RecordBatch, mode: SaveMode) {
    let dir = lake.join(layer).join(table);
    std::fs::create_dir_all(&dir).expect("table dir");
    let url = url::Url::from_directory_path(&dir).expect("table url");
    let table = DeltaTable::try_from_url(url).await.expect("open delta table");
    table
        .write(vec![batch])
        .with_save_mode(mode)
        .await
        .expect("write delta table");
}

/// A small silver table of orders: id, region, amount numeric(12,2), ordered_on date.
pub fn orders_batch(ids: std::ops::Range<i64>) -> RecordBatch {
    use deltalake::arrow::array::{Date32Array, Decimal128Array, Int64Array, StringArray};
    use deltalake::arrow::datatypes::{DataType, Field, Schema};
    let regions = ["north", "south", "east"];
    let n = ids.clone().count();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("region", DataType::Utf8, true),
        Field::new("amount", DataType::Decimal128(12, 2), true),
        Field::new("ordered_on", DataType::Date32, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(ids.clone())),
            Arc::new(StringArray::from_iter_values(
                ids.clone().map(|i| regions[(i % 3) as usize]),
            )),
            Arc::new(
                Decimal128Array::from_iter_values(ids.clone().map(|i| (i * 150 + 25) as i128))
                    .with_precision_and_scale(12, 2)
                    .expect("decimal"),
            ),
            Arc::new(Date32Array::from_iter_values(
                ids.clone().map(|i| 19_000 + (i % 30) as i32),
            )),
        ],
    )
    .map(|b| {
        assert_eq!(b.num_rows(), n);
        b
    })
    .expect("orders batch")
}

/// The SQLSTATE of a tokio-postgres error, or a panic with the error.
pub fn sqlstate(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => db.code().code().to_string(),
        None => panic!("expected a server error, got {err:?}"),
    }
}

/// Every row of `sql` (simple protocol) as `a|b|c` text, NULL as "NULL".
pub async fn rows(server: &Server, sql: &str) -> Vec<String> {
    let client = server.connect().await;
    client
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", e.as_db_error().map(|d| d.message().to_string()).unwrap_or(e.to_string())))
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).unwrap_or("NULL")).collect::<Vec<_>>().join("|"))
            }
            _ => None,
        })
        .collect()
}

/// `serve` flags of a replica that shares its metadata (the Postgres at
/// `database_url`) and its locks and events (the local Redis, under
/// `redis_prefix`) with the other replicas given the same.
pub fn replica_args(specs: &Path, database_url: &str, redis_prefix: &str) -> Vec<String> {
    [
        "--specs",
        &specs.display().to_string(),
        "--database-url",
        database_url,
        "--redis-url",
        "redis://127.0.0.1:6379",
        "--redis-prefix",
        redis_prefix,
    ]
    .map(String::from)
    .to_vec()
}

/// A PostgreSQL cluster of a test's own (initdb in a temp dir, on a free
/// port), for tests that stop and start it.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    port: u16,
    bin: std::path::PathBuf,
    /// `-c name=value` server settings.
    settings: String,
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        PrivatePostgres::start_with(&[])
    }

    /// A cluster that can stream changes (wal_level = logical).
    pub fn start_logical() -> PrivatePostgres {
        PrivatePostgres::start_with(&["wal_level=logical", "max_wal_senders=10", "max_replication_slots=10"])
    }

    pub fn start_with(settings: &[&str]) -> PrivatePostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries in /usr/lib/postgresql")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .find(|p| p.join("initdb").is_file())
            .expect("initdb");
        let dir = tempfile::TempDir::new().unwrap();
        std::process::Command::new("chown").arg("postgres").arg(dir.path()).status().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let out = as_postgres(&bin.join("initdb"), &["-D", &dir.path().join("data").display().to_string(), "-U", "postgres", "--auth=trust"]);
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let settings = settings.iter().map(|s| format!(" -c {s}")).collect();
        let pg = PrivatePostgres { dir, port, bin, settings };
        pg.up();
        pg
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        let data = self.dir.path().join("data").display().to_string();
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1{}", self.port, self.dir.path().display(), self.settings);
        let mut all = vec!["-D", &data, "-o", &options, "-w"];
        all.extend_from_slice(args);
        as_postgres(&self.bin.join("pg_ctl"), &all)
    }

    pub fn up(&self) {
        let out = self.ctl(&["-l", &self.dir.path().join("log").display().to_string(), "start"]);
        assert!(out.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn down(&self) {
        let _ = self.ctl(&["-m", "immediate", "stop"]);
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

fn as_postgres(program: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new("runuser").args(["-u", "postgres", "--"]).arg(program).args(args).output().expect("runuser")
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.down();
    }
}

/// A local HTTP server standing in for a webhook: records each request
/// (path, the status it answered, body) and answers the first
/// `fail_first` with 500, the rest with 200.
pub struct Hook {
    pub url: String,
    received: std::sync::Arc<std::sync::Mutex<Vec<(String, u16, String)>>>,
}

impl Hook {
    pub async fn start(fail_first: usize) -> Hook {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received: std::sync::Arc<std::sync::Mutex<Vec<(String, u16, String)>>> = Default::default();
        let log = received.clone();
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else { return };
                let log = log.clone();
                tokio::spawn(async move {
                    let mut reader = tokio::io::BufReader::new(socket);
                    loop {
                        let mut request_line = String::new();
                        if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let path = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
                        let mut length = 0usize;
                        loop {
                            let mut header = String::new();
                            if reader.read_line(&mut header).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if header == "\r\n" {
                                break;
                            }
                            if let Some((name, value)) = header.split_once(':')
                                && name.eq_ignore_ascii_case("content-length")
                            {
                                length = value.trim().parse().unwrap_or(0);
                            }
                        }
                        let mut body = vec![0u8; length];
                        if reader.read_exact(&mut body).await.is_err() {
                            return;
                        }
                        let status = {
                            let mut log = log.lock().unwrap();
                            let status = if log.len() < fail_first { 500 } else { 200 };
                            log.push((path, status, String::from_utf8_lossy(&body).into_owned()));
                            status
                        };
                        let reason = if status == 200 { "OK" } else { "Internal Server Error" };
                        let response = format!("HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\n\r\n");
                        if reader.get_mut().write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Hook { url, received }
    }

    /// What it received so far: (path, status answered, body as JSON).
    pub fn received(&self) -> Vec<(String, u16, serde_json::Value)> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|(p, s, b)| (p.clone(), *s, serde_json::from_str(b).unwrap_or(serde_json::Value::Null)))
            .collect()
    }
}

/// A local S3 (moto's server, from PyPI) on a free port with one bucket,
/// `lake`. Stopped when dropped; it keeps everything in memory.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server (pip install 'moto[server]')");
        let moto = Moto { child, port };
        let started = Instant::now();
        loop {
            // CreateBucket: a PUT on the bucket's path.
            let out = Command::new("curl")
                .args(["-sf", "-X", "PUT", &format!("{}/lake", moto.endpoint())])
                .output()
                .expect("curl");
            if out.status.success() {
                return moto;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "moto_server did not start on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The config's `storage_options:` for this S3.
    pub fn config_yaml(&self) -> String {
        format!(
            "storage_options:\n  AWS_ENDPOINT_URL: {}\n  AWS_ACCESS_KEY_ID: test\n  AWS_SECRET_ACCESS_KEY: moto-secret-key\n  \
             AWS_REGION: us-east-1\n  AWS_ALLOW_HTTP: \"true\"\n",
            self.endpoint()
        )
    }

    /// The object keys under `prefix` in the bucket.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let out = Command::new("curl")
            .args(["-sf", &format!("{}/lake?list-type=2&prefix={prefix}", self.endpoint())])
            .output()
            .expect("curl");
        let listing = String::from_utf8_lossy(&out.stdout).to_string();
        listing.split("<Key>").skip(1).filter_map(|k| k.split("</Key>").next()).map(String::from).collect()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.stop();
    }
}
// --- TPC-H -------------------------------------------------------------------

pub const TPCH_TABLES: &[(&str, &str)] = &[
    ("region", "r_regionkey, r_name, r_comment"),
    ("nation", "n_nationkey, n_name, n_regionkey, n_comment"),
    ("supplier", "s_suppkey, s_name, s_address, s_nationkey, s_phone, s_acctbal, s_comment"),
    ("customer", "c_custkey, c_name, c_address, c_nationkey, c_phone, c_acctbal, c_mktsegment, c_comment"),
    ("part", "p_partkey, p_name, p_mfgr, p_brand, p_type, p_size, p_container, p_retailprice, p_comment"),
    ("partsupp", "ps_partkey, ps_suppkey, ps_availqty, ps_supplycost, ps_comment"),
    (
        "orders",
        "o_orderkey, o_custkey, o_orderstatus, o_totalprice, o_orderdate, o_orderpriority, o_clerk, o_shippriority, o_comment",
    ),
    (
        "lineitem",
        "l_orderkey, l_partkey, l_suppkey, l_linenumber, l_quantity, l_extendedprice, l_discount, l_tax, \
         l_returnflag, l_linestatus, l_shipdate, l_commitdate, l_receiptdate, l_shipinstruct, l_shipmode, l_comment",
    ),
];

/// A TPC-H lake at scale factor 0.01, built by Workbench's own pipeline.
pub fn tpch_lake(dir: &Path) -> (PathBuf, PathBuf) {
    let lake = dir.join("lake");
    let specs = dir.join("specs");
    let landing = lake.join("landing/tpch");
    std::fs::create_dir_all(&landing).unwrap();
    std::fs::create_dir_all(&specs).unwrap();
    let out = Command::new("tpchgen-cli")
        .args(["parquet", "-s", "0.01", "--output-dir"])
        .arg(&landing)
        .output()
        .expect("tpchgen-cli (pip install tpchgen-cli; scripts/test.sh installs it)");
    assert!(out.status.success(), "tpchgen-cli: {}", String::from_utf8_lossy(&out.stderr));
    for (table, columns) in TPCH_TABLES {
        // Masks travel to the executors with their parameters (the key).
        let masks = match *table {
            "supplier" => "columns:\n  s_phone: { tags: [pii], mask: hash }\n  s_address: { tags: [pii], mask: partial(4) }\n",
            _ => "",
        };
        std::fs::write(
            specs.join(format!("{table}.yaml")),
            format!(
                "name: {table}\nsource:\n  format: parquet\n  path: landing/tpch/{table}.parquet\n{masks}silver:\n  rules:\n    - select: [{columns}]\n"
            ),
        )
        .unwrap();
    }
    let out = workbench_cli(&["run", "--all"], &lake, &specs);
    assert!(out.status.success(), "workbench run --all: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (lake, specs)
}

/// The rows each join filter placed below an aggregate let through, from
/// an `EXPLAIN ANALYZE` (`FilterExec: DynamicFilter [...], metrics=[output_rows=N, ...]`).
pub fn rows_kept_by_join_filters(plan: &str) -> Vec<usize> {
    plan.lines()
        .filter(|l| l.trim_start().starts_with("FilterExec: DynamicFilter"))
        .filter_map(|l| {
            let at = l.find("output_rows=")? + "output_rows=".len();
            l[at..].split([',', ']']).next()?.trim().parse().ok()
        })
        .collect()
}

/// `workbench <args> --lake <lake> --specs <specs>`, logging warnings only.
pub fn workbench_cli(args: &[&str], lake: &Path, specs: &Path) -> Output {
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

/// TPC-H query `n` as the tests run it.
pub fn tpch_query(n: usize) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/it/tpch/q{n}.sql"));
    std::fs::read_to_string(path).unwrap()
}

/// The parquet files directly in `dir` (a table's data files, without its log).
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "parquet")).collect();
    files.sort();
    files
}

/// The compression of every column chunk of `dir`'s parquet files.
pub fn parquet_codecs(dir: &Path) -> std::collections::BTreeSet<String> {
    use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
    let mut codecs = std::collections::BTreeSet::new();
    for path in parquet_files(dir) {
        let reader = SerializedFileReader::new(std::fs::File::open(&path).unwrap()).unwrap();
        for group in reader.metadata().row_groups() {
            codecs.extend(group.columns().iter().map(|c| format!("{:?}", c.compression())));
        }
    }
    codecs
}
