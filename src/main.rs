//! `workbench` command line: clap → Config → telemetry → App. The only place
//! that uses `anyhow`.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use workbench::app::App;
use workbench::config::{Config, Overrides, SCRAM_ITERATIONS, ScramSecret};

#[derive(Parser)]
#[command(name = "workbench", version, about = "Bronze → silver → gold lakehouse on Delta Lake, served over the PostgreSQL wire protocol")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the lake over the Postgres wire protocol.
    Serve(ServeArgs),
    /// Validate every spec (and plan its rules on the landing files present);
    /// exits non-zero on any error.
    Check(CheckArgs),
    /// Run datasets: landing → bronze → silver → gold.
    Run(RunArgs),
    /// Run SQL in-process against the lake (no server): prints the results,
    /// or with --json the row count and time of each statement.
    Query(QueryArgs),
    /// Print each scheduled dataset: its next slots and how its last slot
    /// went (what `workbench.schedules` shows).
    Status(CommonArgs),
    /// Cancel a running run (on whichever server or process runs it); it
    /// stops within seconds and ends `cancelled`.
    Cancel(CancelArgs),
    /// Compact a table's small files into large ones (OPTIMIZE), optionally
    /// Z-ordered by columns that queries filter on; old files stay for time
    /// travel until `vacuum`.
    Optimize(OptimizeArgs),
    /// Delete the files a table stopped using more than --retain ago
    /// (VACUUM); every version within the retention stays readable.
    Vacuum(VacuumArgs),
    /// Run a Ballista scheduler for the lake: servers with `cluster:` in
    /// their config send large lake queries to it.
    Scheduler(SchedulerArgs),
    /// Run a Ballista executor: it registers with the scheduler and runs
    /// the tasks of distributed queries.
    Executor(ExecutorArgs),
    /// Print a password hash for the `users:` section of the config file
    /// (reads the password from standard input).
    HashPassword,
}

#[derive(Args)]
struct QueryArgs {
    /// SQL to run (repeatable)
    #[arg(short = 'c', long = "command")]
    commands: Vec<String>,
    /// Files of SQL to run, one statement each (repeatable)
    #[arg(short = 'f', long = "file")]
    files: Vec<PathBuf>,
    /// Schema for unqualified table names
    #[arg(long, default_value = "public")]
    schema: String,
    /// Run each statement this many times (timings of every run are reported)
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Print {name, rows, seconds} per statement as JSON instead of the rows
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
struct CommonArgs {
    /// Lake root: a path or file://, s3://, gs://, az:// URL [default: ./lake]
    #[arg(long, env = "WORKBENCH_LAKE")]
    lake: Option<String>,
    /// Directory of dataset specs [default: ./specs]
    #[arg(long, env = "WORKBENCH_SPECS")]
    specs: Option<PathBuf>,
    /// YAML config file; flags and WORKBENCH_* variables override it
    #[arg(long, env = "WORKBENCH_CONFIG")]
    config: Option<PathBuf>,
    /// Metadata store: a postgres:// URL [default: SQLite file in <lake>/_workbench/]
    #[arg(long = "database-url", env = "DATABASE_URL")]
    database_url: Option<String>,
    /// Redis for run locks, run events and cache [default: in-process]
    #[arg(long = "redis-url", env = "REDIS_URL")]
    redis_url: Option<String>,
    /// Prefix for every Redis key Workbench writes
    #[arg(long, env = "WORKBENCH_REDIS_PREFIX")]
    redis_prefix: Option<String>,
    /// How long a dead holder's run lock lasts, e.g. 30s
    #[arg(long, env = "WORKBENCH_LOCK_TTL")]
    lock_ttl: Option<String>,
}

impl CommonArgs {
    fn config(self) -> anyhow::Result<Config> {
        let overrides = Overrides {
            lake: self.lake,
            specs: self.specs,
            metadata_url: self.database_url,
            redis_url: self.redis_url,
            redis_prefix: self.redis_prefix,
            lock_ttl: self.lock_ttl,
            ..Default::default()
        };
        Ok(Config::load(self.config.as_deref(), overrides)?)
    }
}

#[derive(Args)]
struct CancelArgs {
    /// The run's id (workbench.runs.id, printed by `workbench run`)
    run_id: String,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
struct OptimizeArgs {
    /// The table, as layer.table (e.g. silver.gl_entries)
    table: String,
    /// Z-order the rows by these columns (comma-separated) so files prune on them
    #[arg(long, value_delimiter = ',')]
    zorder: Vec<String>,
    /// Size of the files to write, e.g. 128MiB [default: 128MiB]
    #[arg(long)]
    target_size: Option<bytesize::ByteSize>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
struct VacuumArgs {
    /// The table, as layer.table (e.g. silver.gl_entries)
    table: String,
    /// Keep files removed less than this long ago, e.g. 7d, 24h
    #[arg(long, default_value = "7d")]
    retain: humantime::Duration,
    /// List what would be deleted, delete nothing
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
struct SchedulerArgs {
    /// Address to listen on (gRPC, for servers and executors)
    #[arg(long, default_value = "127.0.0.1:50050")]
    listen: std::net::SocketAddr,
    /// The host name servers and executors reach it by [default: the listen address]
    #[arg(long)]
    external_host: Option<String>,
    /// An executor silent this long is dead and its tasks run elsewhere
    #[arg(long, default_value = "30s")]
    executor_timeout: humantime::Duration,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
struct ExecutorArgs {
    /// HOST:PORT of `workbench scheduler`
    #[arg(long, default_value = "127.0.0.1:50050")]
    scheduler: String,
    /// Address of its Arrow Flight service (results and shuffles)
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: std::net::SocketAddr,
    /// Port of its gRPC service (tasks from the scheduler)
    #[arg(long, default_value_t = 50052)]
    grpc_port: u16,
    /// The host name the scheduler and servers reach it by [default: localhost]
    #[arg(long)]
    external_host: Option<String>,
    /// Tasks it runs at once [default: number of cores]
    #[arg(long, default_value_t = 0)]
    concurrency: usize,
    /// Directory for shuffle files [default: a temporary directory]
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// How often it tells the scheduler it is alive
    #[arg(long, default_value = "10s")]
    heartbeat: humantime::Duration,
    /// Memory its tasks may use together before spilling, e.g. 4GiB [default: 80% of the machine's]
    #[arg(long)]
    memory_limit: Option<bytesize::ByteSize>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
struct CheckArgs {
    /// Also record the specs in the metadata store (workbench.datasets)
    #[arg(long)]
    sync: bool,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
struct RunArgs {
    /// Datasets to run (see --all)
    datasets: Vec<String>,
    /// Run every dataset
    #[arg(long, conflicts_with = "datasets")]
    all: bool,
    /// Re-ingest every landing file and rebuild silver and gold
    #[arg(long)]
    full_refresh: bool,
    /// First day of the window for {{ start_date }} in postgres sources (YYYY-MM-DD)
    #[arg(long)]
    from: Option<chrono::NaiveDate>,
    /// Last day of the window for {{ end_date }} (YYYY-MM-DD)
    #[arg(long)]
    to: Option<chrono::NaiveDate>,
    /// Then run every dataset downstream of the named one, in dependency
    /// order (independent ones in parallel)
    #[arg(long)]
    downstream: bool,
    /// Datasets run at the same time with --downstream (default 4), slices
    /// with --step (default 1)
    #[arg(long)]
    parallel: Option<usize>,
    /// Backfill: one run per slice of --from..--to this long (1d, 1w, 1mo,
    /// 1y); slices that already succeeded are skipped
    #[arg(long, requires = "from", requires = "to")]
    step: Option<String>,
    /// If another run of a dataset is in progress, wait up to this long (e.g. 10m)
    #[arg(long)]
    wait: Option<humantime::Duration>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:5433]
    #[arg(long, env = "WORKBENCH_LISTEN")]
    listen: Option<String>,
    /// Address of the HTTP API (health, readiness, metrics), or `off`
    /// [default: 127.0.0.1:8080, skipped with a warning when taken]
    #[arg(long, env = "WORKBENCH_HTTP_LISTEN")]
    http_listen: Option<String>,
    #[command(flatten)]
    common: CommonArgs,
    /// Maximum concurrent client connections [default: 100]
    #[arg(long, env = "WORKBENCH_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Memory one query may use, e.g. 512MiB; 0 for no limit [default: 2GiB]
    #[arg(long, env = "WORKBENCH_QUERY_MEMORY_LIMIT")]
    query_memory_limit: Option<String>,
    /// Default statement_timeout, e.g. 30s; 0 for none [default: none]
    #[arg(long, env = "WORKBENCH_STATEMENT_TIMEOUT")]
    statement_timeout: Option<String>,
    /// How long shutdown waits for running queries [default: 10s]
    #[arg(long, env = "WORKBENCH_SHUTDOWN_TIMEOUT")]
    shutdown_timeout: Option<String>,
    /// How long a new connection may take to log in [default: 10s]
    #[arg(long, env = "WORKBENCH_AUTHENTICATION_TIMEOUT")]
    authentication_timeout: Option<String>,
    /// Do not run scheduled datasets on this replica (others still do)
    #[arg(long)]
    no_scheduler: bool,
}

impl ServeArgs {
    fn config(self) -> anyhow::Result<Config> {
        let overrides = Overrides {
            listen: self.listen,
            http_listen: self.http_listen,
            lake: self.common.lake,
            specs: self.common.specs,
            max_connections: self.max_connections,
            query_memory_limit: self.query_memory_limit,
            statement_timeout: self.statement_timeout,
            shutdown_timeout: self.shutdown_timeout,
            authentication_timeout: self.authentication_timeout,
            metadata_url: self.common.database_url,
            redis_url: self.common.redis_url,
            redis_prefix: self.common.redis_prefix,
            lock_ttl: self.common.lock_ttl,
        };
        Ok(Config::load(self.common.config.as_deref(), overrides)?)
    }
}

fn init_telemetry() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // Our own events at info; dependencies (delta-kernel logs snapshot
        // dumps at info) only when something is wrong.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,workbench=info"))
        // delta-kernel logs an ERROR when probing a table that has no commit
        // yet, which is how every new table starts.
        .add_directive("buoyant_kernel::snapshot::builder=off".parse().expect("valid directive"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Fires on SIGINT or SIGTERM.
fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
        trigger.cancel();
    });
    token
}

/// Stack of the threads that serve connections: they hold and drop the
/// parsed statements, whose expression trees can be thousands deep.
const CONNECTION_STACK_BYTES: usize = 64 << 20;

/// glibc's malloc raises its mmap threshold each time a large block is freed
/// (up to 32 MB), after which Arrow's column buffers come from the heap
/// arenas and stay mapped once freed: an ingest of a 200 MB CSV held 338 MB,
/// ~140 MB of it freed buffers. A fixed threshold keeps blocks over 256 KB
/// in their own mappings, handed back when freed (198 MB, as fast).
/// mimalloc instead measured 327 MB.
///
/// Fixing the threshold also fixes the trim threshold, at glibc's 128 KB:
/// every free that left more than that at the top of a heap handed it back
/// to the kernel, and the next batch faulted it in again as zeroed pages
/// (10% of the server's CPU streaming a table as text). Heaps keep up to
/// 8 MB free at their top instead: streaming lineitem as text took
/// 0.59–0.60 CPU s per million rows against 0.63–0.66 at 128 KB, the
/// 3.1 GB ingest under a 1 GiB cap peaked at 387 MB (PROFILES.md).
///
/// glibc's own `MALLOC_MMAP_THRESHOLD_` and `MALLOC_TRIM_THRESHOLD_` in the
/// environment, when set, are left to decide.
fn bounded_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (variable, parameter, bytes) in [
        ("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
        ("MALLOC_TRIM_THRESHOLD_", libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
    ] {
        if std::env::var_os(variable).is_none() {
            // SAFETY: mallopt only changes the allocator's parameters; it is
            // called before any other thread exists.
            unsafe {
                libc::mallopt(parameter, bytes);
            }
        }
    }
}

const MMAP_THRESHOLD_BYTES: i32 = 256 << 10;
const TRIM_THRESHOLD_BYTES: i32 = 8 << 20;

fn main() -> anyhow::Result<()> {
    bounded_malloc();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(CONNECTION_STACK_BYTES)
        .thread_name("workbench")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let result = runtime.block_on(run());
    // Work still running (a parse of a landing file, say) does not hold
    // the exit up: the server has already drained what it had to.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let scheduler = !args.no_scheduler;
            let config = args.config()?;
            init_telemetry();
            let app = App::build(config).await?;
            let app = if scheduler { app } else { app.without_scheduler() };
            // Machine-readable lines scripts and tests can wait for.
            if let Some(http) = app.http_addr() {
                println!("workbench http on {http}");
            }
            println!("workbench listening on {}", app.addr());
            app.run(shutdown_signal()).await?;
        }
        Command::Check(args) => {
            let config = args.common.config()?;
            init_telemetry();
            let errors = workbench::app::check(&config, args.sync).await?;
            if !errors.is_empty() {
                for error in &errors {
                    eprintln!("{error}");
                }
                eprintln!("{} error(s) in {}", errors.len(), config.specs.display());
                std::process::exit(1);
            }
        }
        Command::Status(common) => {
            let config = common.config()?;
            init_telemetry();
            print!("{}", workbench::app::status(&config).await?);
        }
        Command::Optimize(args) => {
            let config = args.common.config()?;
            init_telemetry();
            let done = workbench::app::optimize(&config, &args.table, &args.zorder, args.target_size.map(|s| s.as_u64())).await?;
            if done.files_added == 0 {
                println!("{}: nothing to compact ({} files, version {})", args.table, done.files_before, done.version);
            } else {
                println!(
                    "{}: {} files → {} (removed {}, wrote {}){}; version {}",
                    args.table,
                    done.files_before,
                    done.files_after,
                    done.files_removed,
                    done.files_added,
                    if done.zorder.is_empty() { String::new() } else { format!(", Z-ordered by {}", done.zorder.join(", ")) },
                    done.version
                );
            }
        }
        Command::Vacuum(args) => {
            let config = args.common.config()?;
            init_telemetry();
            let done = workbench::app::vacuum(&config, &args.table, args.retain.into(), args.dry_run).await?;
            for file in &done.files {
                println!("{file}");
            }
            let verb = if done.dry_run { "would delete" } else { "deleted" };
            eprintln!("{}: {verb} {} file(s) unused for more than {}", args.table, done.files.len(), args.retain);
        }
        Command::Scheduler(args) => {
            let config = args.common.config()?;
            init_telemetry();
            let options = workbench::cluster::SchedulerOptions {
                listen: args.listen,
                external_host: args.external_host,
                executor_timeout: args.executor_timeout.into(),
            };
            println!("workbench scheduler on {}", args.listen);
            workbench::app::scheduler(&config, options, shutdown_signal()).await?;
        }
        Command::Executor(args) => {
            let config = args.common.config()?;
            init_telemetry();
            let options = workbench::cluster::ExecutorOptions {
                scheduler: args.scheduler,
                listen: args.listen,
                grpc_port: args.grpc_port,
                external_host: args.external_host,
                concurrency: args.concurrency,
                work_dir: args.work_dir,
                heartbeat: args.heartbeat.into(),
                memory_limit: args.memory_limit.map(|m| m.as_u64()),
            };
            println!("workbench executor on {}", args.listen);
            workbench::app::executor(&config, options, shutdown_signal()).await?;
        }
        Command::Cancel(args) => {
            let config = args.common.config()?;
            init_telemetry();
            let status = workbench::app::cancel(&config, &args.run_id).await?;
            match status.as_str() {
                "running" => println!("run {} is being cancelled; it stops within seconds", args.run_id),
                other => {
                    eprintln!("run {} is not running (it {other}); nothing to cancel", args.run_id);
                    std::process::exit(1);
                }
            }
        }
        Command::Query(args) => {
            let config = args.common.config()?;
            init_telemetry();
            let mut statements: Vec<(String, String)> = args
                .commands
                .iter()
                .enumerate()
                .map(|(i, sql)| (format!("command {}", i + 1), sql.clone()))
                .collect();
            for file in &args.files {
                let sql = std::fs::read_to_string(file)
                    .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
                statements.push((file.display().to_string(), sql));
            }
            let options = workbench::app::QueryOptions {
                schema: args.schema,
                repeat: args.repeat.max(1),
                print: !args.json,
            };
            let timings = workbench::app::query(&config, &statements, &options).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&timings)?);
            }
        }
        Command::Run(args) => {
            anyhow::ensure!(args.all || !args.datasets.is_empty(), "name the datasets to run, or pass --all");
            let config = args.common.config()?;
            init_telemetry();
            let options = workbench::pipeline::RunOptions {
                full_refresh: args.full_refresh,
                window: workbench::pipeline::DateWindow { start: args.from, end: args.to },
                trigger: "cli".into(),
                wait: args.wait.map(Into::into),
                progress: step_lines(),
                ..Default::default()
            };
            if let Some(step) = &args.step {
                let [dataset] = args.datasets.as_slice() else {
                    anyhow::bail!("--step backfills one dataset: name exactly one");
                };
                let step = workbench::pipeline::Step::parse(step).map_err(|e| anyhow::anyhow!("--step: {e}"))?;
                let (from, to) = (args.from.expect("required by clap"), args.to.expect("required by clap"));
                let mut bar = Progress::new();
                let done = workbench::app::backfill(&config, dataset, from, to, step, args.parallel.unwrap_or(1), &options, &mut |p| bar.show(p)).await?;
                bar.finish(&done);
                if done.failed > 0 {
                    std::process::exit(1);
                }
                return Ok(());
            }
            if args.downstream {
                let [root] = args.datasets.as_slice() else {
                    anyhow::bail!("--downstream runs one dataset and what follows it: name exactly one dataset");
                };
                let outcomes = workbench::app::run_downstream(&config, root, &options, args.parallel.unwrap_or(4)).await?;
                let mut failed = false;
                for outcome in &outcomes {
                    if let Some(report) = &outcome.report {
                        print!("{}", workbench::app::format_report(report));
                    }
                    failed |= outcome.status != workbench::pipeline::RunStatus::Succeeded;
                }
                println!("{:<24} {:<10} {:<36}  {}", "dataset", "status", "run", "error");
                for o in &outcomes {
                    println!("{:<24} {:<10} {:<36}  {}", o.dataset, o.status.as_str(), o.run_id, o.error.as_deref().unwrap_or(""));
                }
                if failed {
                    std::process::exit(1);
                }
                return Ok(());
            }
            let report = workbench::app::run(&config, &args.datasets, &options).await?;
            print!("{}", workbench::app::format_report(&report));
            if let Some(error) = &report.error {
                eprintln!("run {} failed: {error}", report.run_id);
                std::process::exit(1);
            }
        }
        Command::HashPassword => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            let password = line.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!password.is_empty(), "empty password on standard input");
            println!("{}", ScramSecret::derive(password, SCRAM_ITERATIONS).encode());
        }
    }
    Ok(())
}

/// A run's steps as they start and end, on standard error (the report
/// with every step follows on standard output when the run ends).
fn step_lines() -> workbench::pipeline::ProgressSink {
    use workbench::pipeline::{ProgressSink, RunProgress};
    ProgressSink::new(|event| match event {
        RunProgress::StepStarted { layer, table, .. } => eprintln!("{layer}.{table}: started"),
        RunProgress::StepFinished(step) => eprintln!(
            "{}.{}: {} in {:.1}s, {} rows in, {} out{}{}",
            step.layer,
            step.table,
            step.status.as_str(),
            step.duration_ms as f64 / 1000.0,
            step.rows_in,
            step.rows_out,
            if step.rows_rejected > 0 { format!(", {} rejected", step.rows_rejected) } else { String::new() },
            step.message.as_ref().filter(|m| !m.is_empty()).map(|m| format!(" ({m})")).unwrap_or_default(),
        ),
    })
}

/// Backfill progress: a bar redrawn in place on a terminal, one line per
/// finished slice otherwise (logs, CI).
struct Progress {
    terminal: bool,
}

impl Progress {
    fn new() -> Progress {
        use std::io::IsTerminal;
        Progress { terminal: std::io::stderr().is_terminal() }
    }

    fn show(&mut self, p: &workbench::pipeline::BackfillProgress) {
        let finished = p.already_done + p.succeeded + p.failed;
        if let Some((window, status, run_id, error)) = &p.last {
            let slice = format!("{}..{}", window.start.map(|d| d.to_string()).unwrap_or_default(), window.end.map(|d| d.to_string()).unwrap_or_default());
            let line = format!("slice {slice} {} run {run_id} ({finished}/{}){}", status.as_str(), p.total, error.as_ref().map(|e| format!(": {e}")).unwrap_or_default());
            if self.terminal {
                eprint!("\r\x1b[K{line}\n");
            } else {
                eprintln!("{line}");
            }
        } else if !self.terminal {
            eprintln!("backfill: {} slices, {} already done, {} to run", p.total, p.already_done, p.total - p.already_done);
        }
        if self.terminal {
            let width = 30;
            let filled = (finished * width).checked_div(p.total).unwrap_or(width);
            eprint!(
                "\r\x1b[K[{}{}] {finished}/{} slices · {} running · {} failed",
                "#".repeat(filled),
                ".".repeat(width - filled),
                p.total,
                p.running,
                p.failed
            );
        }
    }

    fn finish(&mut self, p: &workbench::pipeline::BackfillProgress) {
        if self.terminal {
            eprintln!();
        }
        println!(
            "backfill: {} slices: {} succeeded now, {} already done before, {} failed{}",
            p.total,
            p.succeeded,
            p.already_done,
            p.failed,
            if p.failed > 0 { " (run the same command again to retry only those)" } else { "" }
        );
    }
}
