#!/usr/bin/env python3
"""Workbench benchmarks, each case side by side with its anchor in the same
run, reported as ratios in benches/RESULTS.md and benches/results.json.

Usage: benches/run.sh [--sf 1] [--cases tpch,memory,http,optimize,cluster,stream,ingest,preview,validate,concurrency,isolation,cdc]
       benches/run.sh --cases soak [--soak-seconds 600]   (64 clients for 10 minutes)

Everything it needs is prepared here: TPC-H data (tpchgen-cli), the
Workbench binary (bench profile), the lake built by Workbench's own
pipeline, the anchors (DuckDB, the local PostgreSQL, Great Expectations).
Data lives under ~/.cache/workbench/bench (reused between runs).
"""
import argparse
import datetime as dt
import decimal
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHES = ROOT / "benches"
CACHE = Path(os.environ.get("WORKBENCH_BENCH_DIR", Path.home() / ".cache/workbench/bench"))
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/workbench/target"))
QUERIES = Path(os.environ.get("TPCH_QUERIES", ROOT.parent / "shared/bench/tpch/queries"))
PORT = int(os.environ.get("WORKBENCH_BENCH_PORT", "5498"))
PG = dict(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")

TPCH_TABLES = ["region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem"]
# The layout every TPC-H case reads: the tables the queries filter by date are
# written sorted by that date (`cluster_by`); the `layout` case measures the
# same queries on a lake written without it.
LAYOUT = {"lineitem": "l_shipdate", "orders": "o_orderdate"}
LINEITEM_COLUMNS = [
    ("l_orderkey", "bigint"), ("l_partkey", "bigint"), ("l_suppkey", "bigint"), ("l_linenumber", "int"),
    ("l_quantity", "decimal(15,2)"), ("l_extendedprice", "decimal(15,2)"), ("l_discount", "decimal(15,2)"),
    ("l_tax", "decimal(15,2)"), ("l_returnflag", "text"), ("l_linestatus", "text"), ("l_shipdate", "date"),
    ("l_commitdate", "date"), ("l_receiptdate", "date"), ("l_shipinstruct", "text"), ("l_shipmode", "text"),
    ("l_comment", "text"),
]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(cmd, **kw):
    log("$ " + (cmd if isinstance(cmd, str) else " ".join(map(str, cmd))))
    return subprocess.run(cmd, check=True, shell=isinstance(cmd, str), **kw)


# --- preparation ---------------------------------------------------------------------------

def build_workbench():
    # An A/B of two builds: WORKBENCH_BENCH_BINARY names an already built binary.
    if os.environ.get("WORKBENCH_BENCH_BINARY"):
        return Path(os.environ["WORKBENCH_BENCH_BINARY"])
    # Without the `cloud` feature (S3/GCS/Azure back-ends): every lake here is local.
    # --timings: where a cold build's minutes go, per crate (target/cargo-timings/).
    start = time.perf_counter()
    sh(["cargo", "build", "--profile", "bench", "--no-default-features", "--bin", "workbench", "--timings"],
       cwd=ROOT, env=dict(os.environ, CARGO_TARGET_DIR=str(TARGET)))
    log(f"bench build took {(time.perf_counter() - start) / 60:.1f} min "
        f"(per crate: {TARGET / 'cargo-timings' / 'cargo-timing.html'})")
    for sub in ("bench", "release"):
        binary = TARGET / sub / "workbench"
        if binary.exists():
            return binary
    raise SystemExit("bench build produced no binary")


def generate_tpch(sf):
    data = CACHE / f"sf{sf}"
    landing = data / "lake" / "landing" / "tpch"
    done = data / ".generated"
    if not done.exists():
        shutil.rmtree(data, ignore_errors=True)
        landing.mkdir(parents=True)
        sh(["tpchgen-cli", "parquet", "-s", str(sf), "--output-dir", str(landing)])
        sh(["tpchgen-cli", "csv", "-s", str(sf), "--tables", "lineitem", "--output-dir", str(data / "csv")])
        done.write_text("ok")
    return data


def preview_files(data):
    landing = data / "lake" / "landing" / "preview"
    return landing / "sales.csv", landing / "sales.xlsx"


def write_specs(data):
    specs = data / "specs"
    specs.mkdir(exist_ok=True)
    # The preview case's files and specs (the server loads specs when it starts).
    csv, xlsx = preview_files(data)
    if not xlsx.exists():
        csv.parent.mkdir(parents=True, exist_ok=True)
        sh([sys.executable, str(BENCHES / "make_preview_files.py"), str(csv), str(xlsx)])
    for name, fmt, path in (("preview_csv", "csv", csv), ("preview_xlsx", "xlsx", xlsx)):
        (specs / f"{name}.yaml").write_text(
            f"name: {name}\nsource:\n  format: {fmt}\n  path: landing/preview/{path.name}\n"
            "silver:\n  rules:\n    - type_cast:\n        amount: { type: \"decimal(12,2)\" }\n        sold_on: date\n")
    import pyarrow.parquet as pq

    # The TPC-H specs every case reads, and the same without LAYOUT for the
    # `layout` case's comparison.
    unsorted = data / "unsorted-specs"
    unsorted.mkdir(exist_ok=True)
    for table in TPCH_TABLES:
        columns = pq.read_schema(data / "lake" / "landing" / "tpch" / f"{table}.parquet").names
        spec = (
            f"name: {table}\n"
            f"description: TPC-H {table}\n"
            "source:\n"
            "  format: parquet\n"
            f"  path: landing/tpch/{table}.parquet\n"
            "silver:\n"
            "  rules:\n"
            f"    - select: [{', '.join(columns)}]\n"
        )
        (unsorted / f"{table}.yaml").write_text(spec)
        (specs / f"{table}.yaml").write_text(spec + (f"  cluster_by: [{LAYOUT[table]}]\n" if table in LAYOUT else ""))
    # Ingestion case: the CSV, typed in silver.
    casts = "\n".join(f"        {name}: {typ}" for name, typ in LINEITEM_COLUMNS if typ != "text")
    names = ", ".join(name for name, _ in LINEITEM_COLUMNS)
    (data / "ingest-specs").mkdir(exist_ok=True)
    (data / "ingest-specs" / "lineitem_csv.yaml").write_text(
        "name: lineitem_csv\n"
        "description: TPC-H lineitem from CSV, typed in silver\n"
        "source:\n"
        "  format: csv\n"
        "  path: landing/csv/lineitem.csv\n"
        "silver:\n"
        "  rules:\n"
        f"    - select: [{names}]\n"
        "    - type_cast:\n"
        f"{casts}\n"
    )
    return specs


class Server:
    """A `workbench serve` process; peak RSS is read from /proc."""

    def __init__(self, binary, lake, specs, port=PORT, config=None):
        extra = ["--config", str(config)] if config else []
        self.proc = subprocess.Popen(
            [str(binary), "serve", "--listen", f"127.0.0.1:{port}", "--http-listen", "127.0.0.1:0", "--lake", str(lake),
             "--specs", str(specs)] + extra,
            stdout=subprocess.PIPE, stderr=open(lake / "bench-server.log", "a"), text=True,
            env=dict(os.environ, RUST_LOG="warn"))
        # "workbench http on ADDR", then "workbench listening on ADDR".
        self.http = None
        while True:
            line = self.proc.stdout.readline()
            if line.startswith("workbench http on "):
                self.http = line.split()[-1]
            elif "listening" in line:
                break
            else:
                raise SystemExit(f"server did not start: {line!r}")

    def reset_peak(self):
        with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
            f.write("5")

    def peak_rss_mb(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return None

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def wb_connect(port=PORT, user="workbench", **kw):
    import psycopg
    return psycopg.connect(host="127.0.0.1", port=port, user=user, dbname="workbench", autocommit=True, **kw)


# --- comparison ----------------------------------------------------------------------------

def normalize(value):
    if value is None:
        return None
    if isinstance(value, (float, decimal.Decimal)):
        return float(value)
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()[:10] if isinstance(value, dt.date) and not isinstance(value, dt.datetime) else value.isoformat()
    if isinstance(value, str):
        return value.rstrip()
    return value


def same_rows(a, b):
    if len(a) != len(b):
        return False, f"{len(a)} rows vs {len(b)}"
    for i, (ra, rb) in enumerate(zip(a, b)):
        if len(ra) != len(rb):
            return False, f"row {i}: {len(ra)} columns vs {len(rb)}"
        for x, y in zip(map(normalize, ra), map(normalize, rb)):
            if isinstance(x, float) and isinstance(y, (float, int)):
                if abs(x - y) > max(1e-6 * max(abs(x), abs(y)), 1e-2):
                    return False, f"row {i}: {x} vs {y}"
            elif x != y:
                return False, f"row {i}: {x!r} vs {y!r}"
    return True, ""


# --- cases ---------------------------------------------------------------------------------

def case_tpch(ctx):
    import duckdb

    data, binary = ctx["data"], ctx["binary"]
    parquet = data / "lake" / "landing" / "tpch"
    duck = duckdb.connect()
    for table in TPCH_TABLES:
        duck.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{parquet / (table + '.parquet')}')")
    files = sorted(QUERIES.glob("q*.sql"), key=lambda p: int(p.stem[1:]))
    rows = []
    # DataFusion in-process on the same Delta tables (no wire): `workbench query`.
    inproc = json.loads(subprocess.run(
        [str(binary), "query", "--json", "--schema", "silver", "--repeat", "2", "--lake", str(data / "lake"),
         "--specs", str(ctx["specs"])] + sum((["-f", str(f)] for f in files), []),
        check=True, capture_output=True, text=True, env=dict(os.environ, RUST_LOG="error")).stdout)
    inproc = {Path(t["name"]).stem: min(t["seconds"]) for t in inproc}
    ctx["server"].reset_peak()
    with wb_connect() as conn, wb_connect() as written, wb_connect() as flat:
        conn.execute("SET search_path TO silver")
        # The same server joining in the order each query names its tables
        # (the estimated join order switched off for this session).
        written.execute("SET search_path TO silver")
        written.execute("SET workbench.join_order = off")
        # The same server keeping DataFusion's flat 20% for the filters it
        # cannot analyse (our filter estimates switched off).
        flat.execute("SET search_path TO silver")
        flat.execute("SET workbench.filter_estimates = off")
        for f in files:
            sql = f.read_text()
            wb_times, duck_times, written_times = [], [], []
            for _ in range(2):
                start = time.perf_counter()
                wb_rows = conn.execute(sql).fetchall()
                wb_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                written_rows = written.execute(sql).fetchall()
                written_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                duck_rows = duck.execute(sql).fetchall()
                duck_times.append(time.perf_counter() - start)
            ok, why = same_rows(wb_rows, duck_rows)
            written_ok, written_why = same_rows(written_rows, duck_rows)
            if not written_ok:
                ok, why = False, "in the written join order: " + written_why
            estimated, flat_time, flat_rows = alternating_medians(conn, flat, sql)
            flat_ok, flat_why = same_rows(flat_rows, duck_rows)
            if not flat_ok:
                ok, why = False, "with filter estimates off: " + flat_why
            rows.append(dict(query=f.stem, workbench=min(wb_times), duckdb=min(duck_times),
                             datafusion=inproc.get(f.stem), written=min(written_times), estimated=estimated, flat=flat_time,
                             match=ok, why=why))
            log(f"{f.stem}: workbench {min(wb_times):.3f}s (written order {min(written_times):.3f}s; "
                f"filter estimates on/off {estimated:.3f}/{flat_time:.3f}s) "
                f"duckdb {min(duck_times):.3f}s in-process {inproc.get(f.stem, 0):.3f}s {'OK' if ok else 'MISMATCH ' + why}")
    total_wb = sum(r["workbench"] for r in rows)
    total_duck = sum(r["duckdb"] for r in rows)
    total_df = sum(r["datafusion"] or 0 for r in rows)
    total_written = sum(r["written"] for r in rows)
    matched = sum(r["match"] for r in rows)
    worst = max(rows, key=lambda r: r["workbench"] / r["written"])
    best = min(rows, key=lambda r: r["workbench"] / r["written"])
    return [
        dict(case="TPC-H SF%s total, 22 queries over the wire (s)" % ctx["sf"], workbench=total_wb,
             anchor=total_duck, anchor_name="DuckDB in-process on the parquet", ratio=total_wb / total_duck,
             lower_is_better=True, rss_mb=ctx["server"].peak_rss_mb(),
             note=f"{matched}/22 results match DuckDB; lineitem and orders written sorted by date (cluster_by)"),
        dict(case="TPC-H SF%s total, Workbench over the wire vs its engine in-process (s)" % ctx["sf"],
             workbench=total_wb, anchor=total_df, anchor_name="DataFusion in-process on the same Delta tables",
             ratio=total_wb / total_df if total_df else None, lower_is_better=True,
             rss_mb=None, note="isolates the wire"),
        dict(case="TPC-H SF%s total, joins in estimated-size order vs the order each query names its tables (s)" % ctx["sf"],
             workbench=total_wb, anchor=total_written, anchor_name="the same server, SET workbench.join_order = off",
             ratio=total_wb / total_written, lower_is_better=True, rss_mb=None,
             note=f"best {best['query']} {best['workbench']:.2f}s vs {best['written']:.2f}s, "
                  f"worst {worst['query']} {worst['workbench']:.2f}s vs {worst['written']:.2f}s"),
        filter_estimates_row("TPC-H SF%s total, filters estimated from their conditions vs DataFusion's flat 20%% (s)" % ctx["sf"],
                             rows, "query"),
    ], rows


# Rounds per query of the filter estimates comparison: a lever of a few per
# cent needs more than the best of two (one slow run moved a query 2x).
ESTIMATE_ROUNDS = 5


def alternating_medians(on, off, sql, rounds=ESTIMATE_ROUNDS):
    """`sql` on two connections alternately (which goes first alternates too):
    the median seconds of each, and the rows of the last run on `off`."""
    times = {id(on): [], id(off): []}
    rows = None
    for i in range(rounds):
        for conn in ((on, off) if i % 2 == 0 else (off, on)):
            start = time.perf_counter()
            got = conn.execute(sql).fetchall()
            times[id(conn)].append(time.perf_counter() - start)
            if conn is off:
                rows = got
    return statistics.median(times[id(on)]), statistics.median(times[id(off)]), rows


def filter_estimates_row(case, rows, key):
    """The row comparing our filter estimates with DataFusion's 20% (same server, same run)."""
    total, total_flat = sum(r["estimated"] for r in rows), sum(r["flat"] for r in rows)
    moved = sorted(rows, key=lambda r: r["estimated"] - r["flat"])
    best, worst = moved[0], moved[-1]
    return dict(case=case, workbench=total, anchor=total_flat,
                anchor_name="the same server, SET workbench.filter_estimates = off",
                ratio=total / total_flat, lower_is_better=True, rss_mb=None,
                note=f"sums of per-query medians of {ESTIMATE_ROUNDS} alternating runs; "
                     f"best {best[key]} {best['estimated']:.3f}s vs {best['flat']:.3f}s, "
                     f"worst {worst[key]} {worst['estimated']:.3f}s vs {worst['flat']:.3f}s")


def lineitem_select():
    return "SELECT " + ", ".join(n for n, _ in LINEITEM_COLUMNS) + " FROM {}lineitem"


def ensure_pg_lineitem(ctx):
    """The anchor's copy of lineitem in the local PostgreSQL (loaded with COPY, timed)."""
    import psycopg

    csv = ctx["data"] / "csv" / "lineitem.csv"
    with psycopg.connect(**PG, autocommit=True) as pg:
        exists = pg.execute("SELECT to_regclass('bench.lineitem') IS NOT NULL").fetchone()[0]
        if exists and ctx.get("pg_copy_seconds") is None and not ctx["reload_pg"]:
            return None
        pg.execute("CREATE SCHEMA IF NOT EXISTS bench")
        pg.execute("DROP TABLE IF EXISTS bench.lineitem")
        cols = ", ".join(f"{n} {t.replace('decimal', 'numeric')}" for n, t in LINEITEM_COLUMNS)
        pg.execute(f"CREATE TABLE bench.lineitem ({cols})")
        start = time.perf_counter()
        with pg.cursor().copy("COPY bench.lineitem FROM STDIN (FORMAT csv, HEADER)") as copy, open(csv, "rb") as f:
            while chunk := f.read(1 << 20):
                copy.write(chunk)
        seconds = time.perf_counter() - start
        pg.execute("ANALYZE bench.lineitem")
        return seconds


def stream_with_psql(host_args, sql):
    start = time.perf_counter()
    subprocess.run(["psql", "-X", "-q", "-At", *host_args, "-c", sql, "-o", "/dev/null"], check=True)
    return time.perf_counter() - start


def proc_stat(pid):
    """(comm, ppid, own CPU seconds, reaped children's CPU seconds) of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    comm = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    tick = os.sysconf("SC_CLK_TCK")
    # After the comm: state ppid ... utime(14) stime(15) cutime(16) cstime(17) in stat's numbering.
    return comm, int(fields[1]), (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def postgres_cpu_seconds():
    """CPU seconds used by PostgreSQL so far: every live postgres process, plus
    what the postmaster has reaped from backends that exited (a streaming
    backend ends with its psql)."""
    procs = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                procs[int(entry)] = proc_stat(entry)
            except (OSError, ValueError):
                pass
    postgres = {pid: p for pid, p in procs.items() if p[0] == "postgres"}
    total = sum(p[2] for p in postgres.values())
    # The postmaster: a postgres process whose parent is not one.
    total += sum(p[3] for p in postgres.values() if p[1] not in postgres)
    return total


def settled(read, pause=0.2, tries=25):
    """`read()` once two reads `pause` apart agree. A backend that has just
    exited may be gone from /proc before the postmaster has reaped it into its
    children's time, and a read in between misses its CPU seconds entirely
    (seen: PostgreSQL's binary COPY measured as 0.0 s)."""
    last = read()
    for _ in range(tries):
        time.sleep(pause)
        now = read()
        if now == last:
            return now
        last = now
    return last


def server_cpu_seconds(server):
    return proc_stat(server.proc.pid)[2]


# Server CPU per streamed row varies by up to a third from one stream to the
# next on this 2-core VM, for the same binary and for PostgreSQL alike (seen
# 2026-12-05: 0.46-0.68 s per million rows, one binary, twelve streams), so a
# single stream per side decides nothing about a 0.5x target: the two sides
# alternate this many times and the medians are compared.
STREAM_ROUNDS = 3


def streamed_cpu(server, wb_args, pg_args, sql_wb, sql_pg):
    """Median seconds and server CPU seconds of streaming with psql from
    Workbench and from PostgreSQL, alternating, `STREAM_ROUNDS` times each;
    also every round's CPU seconds, per side."""
    rounds = dict(seconds_wb=[], seconds_pg=[], cpu_wb=[], cpu_pg=[])
    for _ in range(STREAM_ROUNDS):
        before = server_cpu_seconds(server)
        rounds["seconds_wb"].append(stream_with_psql(wb_args, sql_wb))
        rounds["cpu_wb"].append(server_cpu_seconds(server) - before)
        before = settled(postgres_cpu_seconds)
        rounds["seconds_pg"].append(stream_with_psql(pg_args, sql_pg))
        rounds["cpu_pg"].append(settled(postgres_cpu_seconds) - before)
    median = {key: statistics.median(values) for key, values in rounds.items()}
    return median["seconds_wb"], median["seconds_pg"], median["cpu_wb"], median["cpu_pg"], rounds


def spread(rounds, rows):
    """Each side's CPU seconds per million rows, round by round, for a note."""
    def per_million(values):
        return "/".join(f"{v * 1e6 / rows:.2f}" for v in values)
    return f"rounds {per_million(rounds['cpu_wb'])} vs {per_million(rounds['cpu_pg'])}"


def case_stream(ctx):
    n_rows = 6_001_215 if str(ctx["sf"]) == "1" else None
    ctx["pg_copy_seconds"] = ensure_pg_lineitem(ctx)
    wb_args = ["-h", "127.0.0.1", "-p", str(PORT), "-U", "workbench", "-d", "workbench"]
    pg_args = ["-h", "127.0.0.1", "-p", "5432", "-U", "postgres", "-d", "postgres"]
    results = []
    copy = "\\copy ({}) to '/dev/null' with (format binary)"
    for label, wrap in (("text", "{}"), ("binary COPY", copy)):
        ctx["server"].reset_peak()
        sql_wb, sql_pg = wrap.format(lineitem_select().format("silver.")), wrap.format(lineitem_select().format("bench."))
        secs_wb, secs_pg, cpu_wb, cpu_pg, rounds = streamed_cpu(ctx["server"], wb_args, pg_args, sql_wb, sql_pg)
        rows = n_rows or 1
        case = "SELECT all of lineitem to psql, text (rows/s)" if label == "text" else "lineitem to psql, binary COPY (rows/s)"
        results.append(dict(case=case, workbench=rows / secs_wb, anchor=rows / secs_pg, anchor_name="PostgreSQL 15, same client",
                            ratio=secs_pg / secs_wb, lower_is_better=False, rss_mb=ctx["server"].peak_rss_mb(),
                            note=f"{secs_wb:.1f}s vs {secs_pg:.1f}s"))
        per_million = 1e6 / rows
        results.append(dict(case=f"server CPU per million rows streamed, {label} (s)", workbench=cpu_wb * per_million,
                            anchor=cpu_pg * per_million, anchor_name="PostgreSQL 15 backend (+ postmaster), same client",
                            ratio=cpu_wb / cpu_pg if cpu_pg else float("nan"), lower_is_better=True,
                            rss_mb=ctx["server"].peak_rss_mb(),
                            note=f"target ≤ 0.5×; from /proc, median of {STREAM_ROUNDS} alternating streams: "
                                 f"{cpu_wb:.1f} vs {cpu_pg:.1f} CPU s for {rows:,} rows ({spread(rounds, rows)})"))
    # The same text stream from lineitem held in memory (serve: { memory:
    # true }): no Parquet decoding, as PostgreSQL reads its cached heap pages.
    server, _, _ = memory_server(ctx, ["lineitem"])
    try:
        hot_args = ["-h", "127.0.0.1", "-p", str(PORT + 1), "-U", "workbench", "-d", "workbench"]
        sql_wb, sql_pg = lineitem_select().format("silver."), lineitem_select().format("bench.")
        _, _, cpu_wb, cpu_pg, rounds = streamed_cpu(server, hot_args, pg_args, sql_wb, sql_pg)
        results.append(dict(case="server CPU per million rows streamed, text, lineitem in memory (s)",
                            workbench=cpu_wb * per_million, anchor=cpu_pg * per_million,
                            anchor_name="PostgreSQL 15 backend (+ postmaster), same client",
                            ratio=cpu_wb / cpu_pg if cpu_pg else float("nan"), lower_is_better=True,
                            rss_mb=server.peak_rss_mb(),
                            note=f"serve: {{ memory: true }}; from /proc, median of {STREAM_ROUNDS} alternating streams: "
                                 f"{cpu_wb:.1f} vs {cpu_pg:.1f} CPU s for {rows:,} rows ({spread(rounds, rows)})"))
    finally:
        server.stop()
    return results, []


def case_ingest(ctx):
    import duckdb

    data, binary = ctx["data"], ctx["binary"]
    lake = data / "ingest-lake"
    shutil.rmtree(lake, ignore_errors=True)
    (lake / "landing" / "csv").mkdir(parents=True)
    os.link(data / "csv" / "lineitem.csv", lake / "landing" / "csv" / "lineitem.csv")
    start = time.perf_counter()
    proc = subprocess.Popen([str(binary), "run", "lineitem_csv", "--lake", str(lake), "--specs", str(data / "ingest-specs")],
                            stdout=subprocess.PIPE, text=True, env=dict(os.environ, RUST_LOG="warn"))
    peak = wait_peak_rss_mb(proc, 0.2)
    wb = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"workbench run failed:\n{proc.stdout.read()}")
    out = data / "duck-lineitem.parquet"
    start = time.perf_counter()
    duckdb.connect().execute(
        f"COPY (SELECT * FROM read_csv('{data / 'csv' / 'lineitem.csv'}')) TO '{out}' (FORMAT parquet)")
    duck = time.perf_counter() - start
    ctx["reload_pg"] = True
    pg = ensure_pg_lineitem(ctx)
    ctx["reload_pg"] = False
    size_mb = (data / "csv" / "lineitem.csv").stat().st_size / 1e6
    return [
        dict(case=f"Ingest lineitem CSV ({size_mb:.0f} MB) → bronze → typed silver (s)", workbench=wb, anchor=duck,
             anchor_name="DuckDB CSV → Parquet", ratio=wb / duck, lower_is_better=True, rss_mb=peak,
             note="Workbench writes two Delta tables (bronze + silver) from one read of the CSV"),
        dict(case=f"Ingest lineitem CSV ({size_mb:.0f} MB) (s)", workbench=wb, anchor=pg,
             anchor_name="PostgreSQL COPY into a typed table", ratio=wb / pg, lower_is_better=True, rss_mb=peak, note=""),
    ], []


def call(function, *args, columns="count(*)"):
    """`SELECT columns FROM function(args)` with the arguments as literals:
    table-function arguments are planned, so they cannot be bound parameters."""
    from psycopg import sql

    return sql.SQL("SELECT {} FROM {}({})").format(
        sql.SQL(columns), sql.SQL(function), sql.SQL(", ").join(sql.Literal(a) for a in args))


def percentile(values, p):
    values = sorted(values)
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def read_head_elsewhere(path, rows):
    """The anchor of a preview: the first `rows` rows of a CSV with DuckDB,
    of an XLSX with pandas; five timings and the anchor's name."""
    import duckdb

    timings = []
    for _ in range(5):
        start = time.perf_counter()
        if path.suffix == ".csv":
            duckdb.connect().execute(f"SELECT * FROM read_csv('{path}') LIMIT {rows}").fetchall()
        else:
            import pandas as pd
            pd.read_excel(path, nrows=rows)
        timings.append(time.perf_counter() - start)
    name = f"DuckDB read_csv LIMIT {rows}" if path.suffix == ".csv" else f"pandas.read_excel(nrows={rows})"
    return timings, name


def case_preview(ctx):
    csv, xlsx = preview_files(ctx["data"])
    results = []
    ctx["server"].reset_peak()
    with wb_connect() as conn:
        for name, path in (("preview_csv", csv), ("preview_xlsx", xlsx)):
            rel = f"landing/preview/{path.name}"
            cold, cached = [], []
            for i in range(20):
                # A new row limit is a new cache key: a cold preview of the file.
                start = time.perf_counter()
                conn.execute(call("preview", name, rel, 1000 + i)).fetchall()
                cold.append(time.perf_counter() - start)
            for _ in range(20):
                start = time.perf_counter()
                conn.execute(call("preview", name, rel, 1000)).fetchall()
                cached.append(time.perf_counter() - start)
            anchor, anchor_name = read_head_elsewhere(path, 1000)
            size = path.stat().st_size / 1e6
            for label, values in (("cold", cold), ("cached", cached)):
                results.append(dict(
                    case=f"preview() of a {size:.1f} MB {path.suffix[1:].upper()}, {label}, p50 (ms)",
                    workbench=percentile(values, 50) * 1000, anchor=statistics.median(anchor) * 1000,
                    anchor_name=anchor_name, ratio=percentile(values, 50) / statistics.median(anchor),
                    lower_is_better=True, rss_mb=ctx["server"].peak_rss_mb(),
                    note=f"p95 {percentile(values, 95) * 1000:.1f} ms"))
    return results, []


def case_http(ctx):
    """The HTTP API: preview of the 5 MB files as JSON (cold and cached), and
    what a Prometheus scrape of /metrics costs next to the cheapest request."""
    import http.client

    csv, xlsx = preview_files(ctx["data"])
    host, port = ctx["server"].http.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=120)

    def get(path):
        start = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        took = time.perf_counter() - start
        if response.status != 200:
            raise SystemExit(f"GET {path}: {response.status} {body[:300]!r}")
        return took, body

    results = []
    ctx["server"].reset_peak()
    with wb_connect() as wire:
        for name, path in (("preview_csv", csv), ("preview_xlsx", xlsx)):
            rel = f"landing/preview/{path.name}"
            timings = {}
            # Limits unlike the preview case's: cold here means not cached by it either.
            for label, limits in (("cold", [2000 + i for i in range(20)]), ("cached", [2000] * 20)):
                timings[label] = [get(f"/api/datasets/{name}/preview?file={rel}&limit={n}")[0] for n in limits]
            rows = len(json.loads(get(f"/api/datasets/{name}/preview?file={rel}&limit=2000")[1])["rows"])
            over_wire = []
            for _ in range(20):
                start = time.perf_counter()
                wire.execute(call("preview", name, rel, 2000)).fetchall()
                over_wire.append(time.perf_counter() - start)
            anchor, anchor_name = read_head_elsewhere(path, 2000)
            size = path.stat().st_size / 1e6
            for label, values in timings.items():
                results.append(dict(
                    case=f"HTTP preview of a {size:.1f} MB {path.suffix[1:].upper()} as JSON ({rows} rows), {label}, p50 (ms)",
                    workbench=percentile(values, 50) * 1000, anchor=statistics.median(anchor) * 1000,
                    anchor_name=anchor_name, ratio=percentile(values, 50) / statistics.median(anchor),
                    lower_is_better=True, rss_mb=ctx["server"].peak_rss_mb(),
                    note=f"p95 {percentile(values, 95) * 1000:.1f} ms; the cached preview over the wire (psycopg): "
                         f"p50 {percentile(over_wire, 50) * 1000:.1f} ms"))
    # A scrape after the traffic above (every family has samples).
    scrapes = [get("/metrics") for _ in range(200)]
    health = [get("/health")[0] for _ in range(200)]
    took = [t for t, _ in scrapes]
    results.append(dict(
        case="GET /metrics (Prometheus scrape), p50 (ms)", workbench=percentile(took, 50) * 1000,
        anchor=percentile(health, 50) * 1000, anchor_name="GET /health on the same connection",
        ratio=percentile(took, 50) / percentile(health, 50), lower_is_better=True, rss_mb=ctx["server"].peak_rss_mb(),
        note=f"p95 {percentile(took, 95) * 1000:.2f} ms; {len(scrapes[-1][1]) / 1024:.1f} KiB a scrape"))
    conn.close()
    return results, []


def free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port, what, log_path, timeout=60):
    import socket
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{what} did not listen on {port}: {Path(log_path).read_text()[-2000:]}")


def case_cluster(ctx):
    """TPC-H over the wire, the server alone vs the same server sending every
    query to 1 scheduler + 2 executors (Ballista) on this same machine."""
    data, binary, lake = ctx["data"], ctx["binary"], ctx["data"] / "lake"
    work = data / "cluster"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    env = dict(os.environ, RUST_LOG="warn")
    scheduler_port = free_port()
    nodes = [subprocess.Popen([str(binary), "scheduler", "--listen", f"127.0.0.1:{scheduler_port}", "--lake", str(lake)],
                              stdout=subprocess.DEVNULL, stderr=open(work / "scheduler.log", "w"), env=env)]
    server = None
    try:
        wait_port(scheduler_port, "the scheduler", work / "scheduler.log")
        for i in range(2):
            flight, grpc = free_port(), free_port()
            (work / f"executor-{i}").mkdir()
            nodes.append(subprocess.Popen(
                [str(binary), "executor", "--scheduler", f"127.0.0.1:{scheduler_port}", "--listen", f"127.0.0.1:{flight}",
                 "--grpc-port", str(grpc), "--work-dir", str(work / f"executor-{i}"), "--lake", str(lake)],
                stdout=subprocess.DEVNULL, stderr=open(work / f"executor-{i}.log", "w"), env=env))
            wait_port(flight, "an executor", work / f"executor-{i}.log")
        config = work / "cluster.yaml"
        config.write_text(f"cluster:\n  scheduler: 127.0.0.1:{scheduler_port}\n")
        server = Server(binary, lake, ctx["specs"], port=PORT + 1, config=config)
        files = sorted(QUERIES.glob("q*.sql"), key=lambda p: int(p.stem[1:]))
        rows = []
        with wb_connect(PORT + 1) as conn:
            conn.execute("SET search_path TO silver")
            for f in files:
                sql = f.read_text()
                times, results = {}, {}
                for where in ("local", "cluster"):
                    conn.execute(f"SET workbench.execution = '{where}'")
                    runs = []
                    for _ in range(2):
                        start = time.perf_counter()
                        results[where] = conn.execute(sql).fetchall()
                        runs.append(time.perf_counter() - start)
                    times[where] = min(runs)
                ok, why = same_rows(results["cluster"], results["local"])
                rows.append(dict(cluster_query=f.stem, local=times["local"], cluster=times["cluster"], match=ok, why=why))
                log(f"{f.stem}: server alone {times['local']:.3f}s, cluster {times['cluster']:.3f}s "
                    f"{'OK' if ok else 'MISMATCH ' + why}")
        total_local = sum(r["local"] for r in rows)
        total_cluster = sum(r["cluster"] for r in rows)
        matched = sum(r["match"] for r in rows)
        return [dict(case="TPC-H SF%s total, 22 queries on 1 scheduler + 2 executors on this machine (s)" % ctx["sf"],
                     workbench=total_cluster, anchor=total_local, anchor_name="the same server executing alone",
                     ratio=total_cluster / total_local, lower_is_better=True, rss_mb=None,
                     note=f"{matched}/22 results equal; every query through Ballista's stages and shuffles "
                          "on the same 2 cores: the ratio is the distribution's overhead, not a speed-up")], rows
    finally:
        if server:
            server.stop()
        for node in nodes:
            node.terminate()
        for node in nodes:
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node.kill()


def case_optimize(ctx):
    """Queries on a silver table of 200 small appends (one per run), before and
    after `workbench optimize`: what small files cost and compaction wins back."""
    binary = ctx["binary"]
    work = ctx["data"] / "optimize"
    shutil.rmtree(work, ignore_errors=True)
    lake, specs = work / "lake", work / "specs"
    landing = lake / "landing" / "appends"
    landing.mkdir(parents=True)
    specs.mkdir(parents=True)
    (specs / "appends.yaml").write_text(
        "name: appends\nsource: { format: csv, path: landing/appends/*.csv }\n"
        "silver:\n  mode: append\n  rules:\n    - type_cast: { id: bigint, amount: int, day: date }\n")
    start = time.perf_counter()
    for i in range(200):
        rows = "\n".join(f"{i * 5000 + j},{(i * 5000 + j) % 997},2024-{j % 12 + 1:02d}-{j % 28 + 1:02d}" for j in range(5000))
        (landing / f"{i:03d}.csv").write_text("id,amount,day\n" + rows + "\n")
        subprocess.run([str(binary), "run", "appends", "--lake", str(lake), "--specs", str(specs)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, RUST_LOG="warn"))
    log(f"200 runs of 5000 rows in {time.perf_counter() - start:.1f}s")
    queries = [
        "SELECT count(*), sum(amount) FROM silver.appends",
        "SELECT day, count(*), sum(amount) FROM silver.appends WHERE day = DATE '2024-03-03' GROUP BY day",
        "SELECT count(DISTINCT id), max(amount) FROM silver.appends WHERE amount > 900",
    ]
    server = Server(binary, lake, specs, port=PORT + 1)
    try:
        def measure():
            with wb_connect(port=PORT + 1) as conn:
                files = conn.execute("SELECT files FROM storage() WHERE table_name = 'silver.appends'").fetchone()[0]
                answers, total = [], 0.0
                for sql in queries:
                    timings = []
                    for _ in range(5):
                        begin = time.perf_counter()
                        answer = conn.execute(sql).fetchall()
                        timings.append(time.perf_counter() - begin)
                    answers.append(answer)
                    total += statistics.median(timings)
                return files, answers, total
        files_before, answers_before, before = measure()
        begin = time.perf_counter()
        sh([str(binary), "optimize", "silver.appends", "--lake", str(lake), "--specs", str(specs)], env=dict(os.environ, RUST_LOG="warn"))
        took = time.perf_counter() - begin
        files_after, answers_after, after = measure()
        peak = server.peak_rss_mb()
    finally:
        server.stop()
    same = "same answers" if answers_before == answers_after else "ANSWERS DIFFER"
    return [dict(
        case=f"3 queries on a silver table of 200 appends (1M rows), after workbench optimize (s)", workbench=after,
        anchor=before, anchor_name=f"the same table before optimize ({files_before} files)", ratio=after / before,
        lower_is_better=True, rss_mb=peak,
        note=f"{files_before} files → {files_after}; optimize took {took:.1f}s; {same}; median of 5 per query")], []


VALIDATE_SUITE = """
- not_null: [l_orderkey, l_partkey, l_suppkey, l_shipdate]
- unique: [l_orderkey, l_linenumber]
- between: { column: l_quantity, min: 1, max: 50 }
- between: { column: l_discount, min: 0, max: 0.1 }
- accepted_values: { column: l_returnflag, values: ['A', 'N', 'R'] }
- accepted_values: { column: l_shipmode, values: [AIR, FOB, MAIL, RAIL, REG AIR, SHIP, TRUCK] }
- regex: { column: l_shipinstruct, pattern: '^[A-Z ]+$' }
- length_between: { column: l_comment, min: 1, max: 44 }
- expression: "l_receiptdate >= l_shipdate"
- row_count_between: { min: 1, max: 100000000 }
"""


def case_validate(ctx):
    ctx["server"].reset_peak()
    # Three calls, the median reported: Great Expectations' time is measured on
    # data already in memory, so the first call's disk reads are left out too
    # (shown in the note).
    times = []
    with wb_connect() as conn:
        for _ in range(3):
            start = time.perf_counter()
            results = conn.execute(call("validate", "silver.lineitem", VALIDATE_SUITE, columns="expectation, success")).fetchall()
            times.append(time.perf_counter() - start)
    wb = statistics.median(times)
    log(f"validate: {len(results)} expectations in {[round(t, 2) for t in times]}s: {results}")
    rss = ctx["server"].peak_rss_mb()
    ge = subprocess.run([sys.executable, str(BENCHES / "ge_validate.py"),
                         str(ctx["data"] / "lake" / "landing" / "tpch" / "lineitem.parquet")],
                        capture_output=True, text=True)
    if ge.returncode != 0:
        return [dict(case="validate(): 10 expectations on lineitem (s)", workbench=wb, anchor=None,
                     anchor_name="Great Expectations (pandas)", ratio=None, lower_is_better=True, rss_mb=rss,
                     note="anchor failed: " + ge.stderr.strip().splitlines()[-1][:120])], []
    ge_seconds = json.loads(ge.stdout.strip().splitlines()[-1])["seconds"]
    return [dict(case="validate(): 10 expectations on lineitem (s)", workbench=wb, anchor=ge_seconds,
                 anchor_name="Great Expectations (pandas), same 10 expectations", ratio=wb / ge_seconds,
                 lower_is_better=True, rss_mb=rss,
                 note=f"median of 3 (first call {times[0]:.2f}s); GE time excludes loading the data into pandas")], []


def hammer(connect, queries, seconds, clients):
    """`clients` threads each running its prepared queries round-robin."""
    latencies = [[] for _ in range(clients)]
    errors = []
    stop = time.perf_counter() + seconds

    def worker(i):
        try:
            with connect() as conn:
                k = i
                while time.perf_counter() < stop:
                    sql, params = queries[k % len(queries)](k)
                    start = time.perf_counter()
                    conn.execute(sql, params, prepare=True).fetchall()
                    latencies[i].append((k % len(queries), time.perf_counter() - start))
                    k += 1
        except Exception as err:  # noqa: BLE001
            errors.append(repr(err))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [x for per in latencies for x in per]
    return flat, errors


def case_concurrency(ctx):
    import psycopg

    point = lambda k: ("SELECT * FROM silver.orders WHERE o_orderkey = %s", ((k * 7919) % 1_500_000 * 4 + 1,))
    catalog = lambda k: ("SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                         "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind IN ('r', 'v') ORDER BY 1",
                         ("silver",))
    pg_point = lambda k: ("SELECT * FROM bench.orders WHERE o_orderkey = %s", ((k * 7919) % 1_500_000 * 4 + 1,))
    pg_catalog = lambda k: (catalog(k)[0], ("bench",))
    with psycopg.connect(**PG, autocommit=True) as pg:
        if not pg.execute("SELECT to_regclass('bench.orders') IS NOT NULL").fetchone()[0]:
            import duckdb
            parquet = ctx["data"] / "lake" / "landing" / "tpch" / "orders.parquet"
            csv = ctx["data"] / "orders.csv"
            duckdb.connect().execute(f"COPY (SELECT * FROM read_parquet('{parquet}')) TO '{csv}' (HEADER)")
            pg.execute("CREATE SCHEMA IF NOT EXISTS bench")
            pg.execute("CREATE TABLE bench.orders (o_orderkey bigint, o_custkey bigint, o_orderstatus text, "
                       "o_totalprice numeric(15,2), o_orderdate date, o_orderpriority text, o_clerk text, "
                       "o_shippriority int, o_comment text)")
            with pg.cursor().copy("COPY bench.orders FROM STDIN (FORMAT csv, HEADER)") as copy, open(csv, "rb") as f:
                while chunk := f.read(1 << 20):
                    copy.write(chunk)
            pg.execute("ANALYZE bench.orders")
    results = []
    pg_connect = lambda: psycopg.connect(**PG, autocommit=True)
    ctx["server"].reset_peak()
    wb_lat, wb_err = hammer(wb_connect, [point, catalog], ctx["seconds"], 16)
    rss = ctx["server"].peak_rss_mb()
    pg_lat, pg_err = hammer(pg_connect, [pg_point, pg_catalog], ctx["seconds"], 16)
    for kind, label in ((0, "point query (indexless on both)"), (1, "catalog query")):
        wb = [s for k, s in wb_lat if k == kind]
        pgv = [s for k, s in pg_lat if k == kind]
        results.append(dict(case=f"16 clients, prepared {label}: queries/s", workbench=len(wb) / ctx["seconds"],
                            anchor=len(pgv) / ctx["seconds"], anchor_name="PostgreSQL 15",
                            ratio=(len(wb) / len(pgv)) if pgv else None, lower_is_better=False, rss_mb=rss,
                            note=f"p99 {percentile(wb, 99) * 1000:.1f} ms vs {percentile(pgv, 99) * 1000:.1f} ms"
                                 + (f"; errors: {wb_err[:1]}" if wb_err else "")))
    return results, []


def case_governance(ctx):
    """The same lake served with governance off (no users, audit off) and on
    (a password login, a role with read grants, a hashed column in q2's
    output, a row filter on orders, every statement audited), and on with a
    second row filter, on lineitem, the fact table: TPC-H on the three
    servers side by side, the 16-client case on the first two."""
    data, binary, lake = ctx["data"], ctx["binary"], ctx["data"] / "lake"
    # The masked column is declared in a copy of the specs.
    governed_specs = data / "governed-specs"
    shutil.rmtree(governed_specs, ignore_errors=True)
    shutil.copytree(ctx["specs"], governed_specs)
    supplier = governed_specs / "supplier.yaml"
    supplier.write_text(supplier.read_text() + "columns:\n  s_phone: { tags: [pii], mask: hash }\n")
    password = "bench governance"
    hashed = subprocess.run([str(binary), "hash-password"], input=password + "\n", capture_output=True, text=True,
                            check=True).stdout.strip()
    off = data / "governance-off.yaml"
    off.write_text("audit: { enabled: false }\n")

    def governed_config(path, filters):
        path.write_text(
            "users:\n"
            f"  - {{ name: analyst, password_hash: \"{hashed}\", roles: [analyst], "
            "attributes: { hidden_mode: NONE, hidden_status: X } }\n"
            "roles:\n"
            "  analyst:\n"
            "    read: [\"silver.*\", \"gold.*\"]\n"
            "    row_filters:\n" + "".join(f"      {table}: \"{sql}\"\n" for table, sql in filters))
        return path

    orders_filter = ("silver.orders", "o_orderstatus <> {{ user.hidden_status }}")
    lineitem_filter = ("silver.lineitem", "l_shipmode <> {{ user.hidden_mode }}")
    on = governed_config(data / "governance-on.yaml", [orders_filter])
    on_fact = governed_config(data / "governance-on-lineitem.yaml", [orders_filter, lineitem_filter])
    files = sorted(QUERIES.glob("q*.sql"), key=lambda p: int(p.stem[1:]))
    point = lambda k: ("SELECT * FROM silver.orders WHERE o_orderkey = %s", ((k * 7919) % 1_500_000 * 4 + 1,))
    catalog = lambda k: ("SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                         "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind IN ('r', 'v') ORDER BY 1",
                         ("silver",))
    # The servers run side by side and the TPC-H queries rotate between them
    # (best of three each), so drift of the machine hits all alike.
    ctx["server"].stop()
    analyst = dict(user="analyst", password=password)
    setups = {
        "off": (off, ctx["specs"], dict(port=PORT + 1)),
        "on": (on, governed_specs, dict(port=PORT + 2, **analyst)),
        "on_fact": (on_fact, governed_specs, dict(port=PORT + 3, **analyst)),
    }
    servers = {}
    measured = {label: dict(times={}) for label in setups}
    try:
        for label, (config, specs, login) in setups.items():
            servers[label] = Server(binary, lake, specs, port=login["port"], config=config)
        conns = {label: wb_connect(**login) for label, (_, _, login) in setups.items()}
        for conn in conns.values():
            conn.execute("SET search_path TO silver")
        for f in files:
            sql = f.read_text()
            for _ in range(3):
                for label, conn in conns.items():
                    start = time.perf_counter()
                    conn.execute(sql).fetchall()
                    took = time.perf_counter() - start
                    best = measured[label]["times"].get(f.stem)
                    measured[label]["times"][f.stem] = took if best is None else min(best, took)
        for conn in conns.values():
            conn.close()
        # The 16 clients alternate between the two servers in three rounds.
        hammered = {"off": ([], []), "on": ([], [])}
        for label in hammered:
            servers[label].reset_peak()
        for _ in range(3):
            for label, (lat, err) in hammered.items():
                login = setups[label][2]
                more_lat, more_err = hammer(lambda: wb_connect(**login), [point, catalog], ctx["seconds"] / 3, 16)
                lat.extend(more_lat)
                err.extend(more_err)
        for label, (lat, err) in hammered.items():
            measured[label].update(qps=len(lat) / ctx["seconds"], p99=percentile([s for _, s in lat], 99),
                                   errors=err, rss=servers[label].peak_rss_mb())
            log(f"governance {label}: TPC-H {sum(measured[label]['times'].values()):.2f}s, "
                f"16 clients {len(lat) / ctx['seconds']:.0f} q/s" + (f", errors {err[:1]}" if err else ""))
        log(f"governance on_fact: TPC-H {sum(measured['on_fact']['times'].values()):.2f}s")
    finally:
        for server in servers.values():
            server.stop()
    audited = audit_rows(binary, lake, "analyst")
    note_audit = f"; {audited} audit rows written by the governed servers (all runs so far)" if audited is not None else ""
    ctx["server"] = Server(binary, lake, ctx["specs"])
    off_times = measured["off"]["times"]
    total_off = sum(off_times.values())

    def tpch_row(label, what):
        times = measured[label]["times"]
        slowest = max(files, key=lambda f: times[f.stem] / off_times[f.stem]).stem
        return dict(case=f"TPC-H SF{ctx['sf']} total, governance on: {what} (s)", workbench=sum(times.values()),
                    anchor=total_off, anchor_name="the same lake, governance off",
                    ratio=sum(times.values()) / total_off, lower_is_better=True, rss_mb=measured["on"].get("rss"),
                    note=f"most affected {slowest} ({times[slowest]:.2f}s vs {off_times[slowest]:.2f}s){note_audit}")

    on_m, off_m = measured["on"], measured["off"]
    return [
        tpch_row("on", "grants + hashed s_phone + row filter on orders + audit"),
        tpch_row("on_fact", "the same + a row filter on lineitem"),
        dict(case="16 clients with governance on: queries/s", workbench=on_m["qps"], anchor=off_m["qps"],
             anchor_name="the same lake, governance off", ratio=on_m["qps"] / off_m["qps"], lower_is_better=False,
             rss_mb=on_m["rss"], note=f"point queries on the row-filtered orders + catalog queries; "
                                      f"p99 {on_m['p99'] * 1000:.1f} ms vs {off_m['p99'] * 1000:.1f} ms"
                                      + (f"; errors: {on_m['errors'][:1]}" if on_m["errors"] else "")),
    ], []


def audit_rows(binary, lake, user):
    """The audit rows `user` left, read in-process with the CLI."""
    out = subprocess.run([str(binary), "query", "--lake", str(lake), "-c",
                          f"SELECT count(*) AS n FROM workbench.audit WHERE user_name = '{user}'"],
                         capture_output=True, text=True, env=dict(os.environ, RUST_LOG="error"))
    numbers = [w for w in out.stdout.split() if w.isdigit()]
    return int(numbers[-1]) if out.returncode == 0 and numbers else None


# A query that computes for hours without reading a table (10^10 rows).
HEAVY = ("SELECT count(*) FROM generate_series(1, 100000) a(x) CROSS JOIN generate_series(1, 100000) b(y) "
         "WHERE a.x + b.y = 7")


def stop_latency(connect, how):
    """Seconds from cancel (or from the statement_timeout) until the heavy query's error arrives."""
    import psycopg
    with connect() as conn:
        if how == "timeout":
            conn.execute("SET statement_timeout = '1s'")
            start = time.perf_counter()
            try:
                conn.execute(HEAVY).fetchall()
            except psycopg.errors.QueryCanceled:
                pass
            return time.perf_counter() - start - 1.0
        done = {}

        def run():
            try:
                conn.execute(HEAVY).fetchall()
            except psycopg.errors.QueryCanceled:
                done["at"] = time.perf_counter()

        thread = threading.Thread(target=run)
        thread.start()
        time.sleep(1.0)
        cancelled = time.perf_counter()
        conn.cancel()
        thread.join(timeout=60)
        return done.get("at", float("inf")) - cancelled


def case_isolation(ctx):
    """While one client runs a CPU-heavy query, 8 others run `SELECT 1` and a catalog query;
    then how long cancel and statement_timeout take to stop the heavy query."""
    import psycopg

    seconds = min(ctx["seconds"], 30)
    one = lambda k: ("SELECT 1", ())
    catalog = lambda k: ("SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                         "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind IN ('r', 'v') ORDER BY 1",
                         ("pg_catalog",))
    pg_connect = lambda: psycopg.connect(**PG, autocommit=True)
    measured = {}
    for name, connect in (("workbench", wb_connect), ("postgres", pg_connect)):
        def heavy_loop():
            with connect() as conn:
                conn.execute(f"SET statement_timeout = '{seconds + 5}s'")
                try:
                    conn.execute(HEAVY).fetchall()
                except psycopg.errors.QueryCanceled:
                    pass

        heavy = threading.Thread(target=heavy_loop)
        heavy.start()
        time.sleep(1.0)
        if name == "workbench":
            ctx["server"].reset_peak()
        lat, err = hammer(connect, [one, catalog], seconds, 8)
        heavy.join()
        measured[name] = dict(
            one=[s for k, s in lat if k == 0], catalog=[s for k, s in lat if k == 1], errors=err,
            cancel=stop_latency(connect, "cancel"), timeout=stop_latency(connect, "timeout"))
    wb, pg = measured["workbench"], measured["postgres"]
    rss = ctx["server"].peak_rss_mb()
    results = []
    for key, label in (("one", "SELECT 1"), ("catalog", "catalog query")):
        w, p = percentile(wb[key], 99) * 1000, percentile(pg[key], 99) * 1000
        results.append(dict(case=f"8 clients' {label} while one CPU-heavy query runs: p99 ms", workbench=w, anchor=p,
                            anchor_name="PostgreSQL 15", ratio=w / p, lower_is_better=True, rss_mb=rss,
                            note=f"target < 50 ms; {len(wb[key])} vs {len(pg[key])} queries in {seconds}s"
                                 + (f"; errors: {wb['errors'][:1]}" if wb["errors"] else "")))
    for key, label in (("cancel", "cancel"), ("timeout", "statement_timeout")):
        results.append(dict(case=f"{label} stops a CPU-heavy query: seconds", workbench=wb[key], anchor=pg[key],
                            anchor_name="PostgreSQL 15", ratio=wb[key] / pg[key] if pg[key] > 0 else None,
                            lower_is_better=True, rss_mb=rss, note="target < 1 s; from the cancel request (or the timeout) to the error"))
    return results, []


def case_soak(ctx):
    """64 clients for --soak-seconds: point, catalog, SELECT 1 and a small aggregate; errors and RSS over time."""
    seconds = ctx["soak_seconds"]
    queries = [
        lambda k: ("SELECT * FROM silver.orders WHERE o_orderkey = %s", ((k * 7919) % 1_500_000 * 4 + 1,)),
        lambda k: ("SELECT c.relname FROM pg_catalog.pg_class c WHERE c.relnamespace = %s::oid", (k % 5,)),
        lambda k: ("SELECT 1", ()),
        lambda k: ("SELECT o_orderstatus, count(*) FROM silver.orders WHERE o_orderkey < %s GROUP BY 1",
                   ((k % 100) * 1000 + 100,)),
    ]
    samples = []
    done = threading.Event()

    def sample():
        while not done.wait(10):
            for line in open(f"/proc/{ctx['server'].proc.pid}/status"):
                if line.startswith("VmRSS:"):
                    samples.append(int(line.split()[1]) / 1024)

    sampler = threading.Thread(target=sample)
    sampler.start()
    lat, err = hammer(wb_connect, queries, seconds, 64)
    done.set()
    sampler.join()
    third = max(len(samples) // 3, 1)
    first, last = statistics.mean(samples[:third]), statistics.mean(samples[-third:])
    return [dict(case=f"soak: 64 clients x {seconds // 60} min, queries/s", workbench=len(lat) / seconds, anchor=None,
                 anchor_name="–", ratio=None, lower_is_better=False, rss_mb=max(samples),
                 note=f"{len(err)} errors{(': ' + err[0]) if err else ''}; p99 {percentile([s for _, s in lat], 99) * 1000:.1f} ms; "
                      f"RSS first third {first:.0f} MB, last third {last:.0f} MB ({len(samples)} samples)")], []


class LogicalPostgres:
    """A PostgreSQL cluster of the bench's own with wal_level = logical (the
    local one runs with replica): initdb in a temp dir, on `port`."""

    def __init__(self, port):
        import tempfile
        self.bin = next(p for p in sorted(Path("/usr/lib/postgresql").glob("*/bin")) if (p / "initdb").exists())
        self.dir = Path(tempfile.mkdtemp(prefix="wb-cdc-"))
        self.port = port
        shutil.chown(self.dir, "postgres")
        self.as_postgres([self.bin / "initdb", "-D", self.dir / "data", "-U", "postgres", "--auth=trust"])
        # The source's own durability is not what is measured: commits return before the WAL flush.
        options = (f"-p {port} -k {self.dir} -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_wal_senders=10 "
                   "-c max_replication_slots=10 -c synchronous_commit=off -c shared_buffers=256MB -c max_wal_size=4GB")
        self.as_postgres([self.bin / "pg_ctl", "-D", self.dir / "data", "-o", options, "-w", "-l", self.dir / "log", "start"])
        self.url = f"postgres://postgres@127.0.0.1:{port}/postgres"

    @staticmethod
    def as_postgres(args):
        subprocess.run(["runuser", "-u", "postgres", "--"] + [str(a) for a in args], check=True, stdout=subprocess.DEVNULL)

    def connect(self, dbname="postgres"):
        import psycopg
        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=dbname, autocommit=True)

    def pgbench(self, *args):
        sh([str(self.bin / "pgbench"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-n", *args, "postgres"],
           stdout=subprocess.DEVNULL)

    def stop(self):
        self.as_postgres([self.bin / "pg_ctl", "-D", self.dir / "data", "-m", "fast", "stop"])
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_for(what, check, timeout=300, every=0.2):
    start, last = time.perf_counter(), None
    while True:
        try:
            if check():
                return time.perf_counter() - start
        except Exception as error:  # a table that does not exist yet
            last = error
        if time.perf_counter() - start > timeout:
            raise SystemExit(f"timed out waiting for {what} (last error: {last})")
        time.sleep(every)


def case_cdc(ctx):
    """Change data capture from Postgres (pgbench-style single-row updates):
    how fast a backlog of changes reaches silver, against PostgreSQL's own
    logical replication (a subscription in a second database of the same
    cluster) catching up on the same backlog; then commit-to-visible latency
    under a steady update load with flush_every: 1s."""
    rows, backlog = 100_000, 200_000
    ctx["server"].stop()  # this case runs servers of its own, on its own lake
    pg = LogicalPostgres(free_port())
    lake = CACHE / "cdc-lake"
    shutil.rmtree(lake, ignore_errors=True)
    lake.mkdir(parents=True)
    specs = CACHE / "cdc-specs"
    shutil.rmtree(specs, ignore_errors=True)
    specs.mkdir(parents=True)
    (specs / "accounts.yaml").write_text(
        "name: accounts\nsource:\n  format: postgres_cdc\n"
        f"  url: {pg.url}\n  tables: [public.accounts]\n  flush_every: 1s\n"
        "silver:\n  mode: cdc\n  key: [aid]\n")
    script = CACHE / "cdc-update.sql"
    script.write_text(f"\\set aid random(1, {rows})\nUPDATE accounts SET abalance = abalance + 1 WHERE aid = :aid;\n")
    server = None
    try:
        with pg.connect() as source:
            source.execute("CREATE TABLE accounts (aid int PRIMARY KEY, bid int, abalance int NOT NULL, filler char(84))")
            source.execute(f"INSERT INTO accounts SELECT n, n % 10, 0, '' FROM generate_series(0, {rows}) n")
            source.execute("CREATE PUBLICATION anchor_pub FOR TABLE accounts")
            source.execute("SELECT pg_create_logical_replication_slot('anchor_slot', 'pgoutput')")
            source.execute("CREATE DATABASE replica")
        with pg.connect("replica") as replica:
            replica.execute("CREATE TABLE accounts (aid int PRIMARY KEY, bid int, abalance int NOT NULL, filler char(84))")
            replica.execute(f"CREATE SUBSCRIPTION anchor CONNECTION 'host=127.0.0.1 port={pg.port} dbname=postgres user=postgres' "
                            "PUBLICATION anchor_pub WITH (create_slot = false, slot_name = 'anchor_slot')")
        replica = pg.connect("replica")
        source = pg.connect()
        total = lambda conn, table: conn.execute(f"SELECT count(*), sum(abalance) FROM {table}").fetchone()
        expected = lambda: tuple(int(v) for v in total(source, "accounts"))
        wait_for("the subscription's initial copy", lambda: tuple(int(v or 0) for v in total(replica, "accounts")) == expected())
        # Snapshot into bronze and silver.
        server = Server(ctx["binary"], lake, specs)

        def silver_total():
            with wb_connect() as wb:
                return tuple(int(v or 0) for v in total(wb, "silver.accounts"))

        snapshot = wait_for("the snapshot in silver", lambda: silver_total() == expected())
        log(f"snapshot of {rows + 1} rows in silver after {snapshot:.1f}s")
        # The backlog accumulates while neither reader runs.
        server.stop()
        server = None
        replica.execute("ALTER SUBSCRIPTION anchor DISABLE")
        start = time.perf_counter()
        pg.pgbench("-c", "4", "-j", "2", "-t", str(backlog // 4), "-f", str(script))
        log(f"{backlog} single-row update transactions in {time.perf_counter() - start:.1f}s")
        want = expected()
        server = Server(ctx["binary"], lake, specs)
        server.reset_peak()
        wb_seconds = wait_for("silver to catch up", lambda: silver_total() == want, every=0.05)
        wb_rate = backlog / wb_seconds
        catch_up_rss = server.peak_rss_mb()
        replica.execute("ALTER SUBSCRIPTION anchor ENABLE")
        pg_seconds = wait_for("the subscription to catch up", lambda: tuple(int(v or 0) for v in total(replica, "accounts")) == want, every=0.05)
        pg_rate = backlog / pg_seconds
        log(f"backlog of {backlog}: Workbench {wb_seconds:.1f}s ({wb_rate:,.0f}/s), PostgreSQL subscription {pg_seconds:.1f}s ({pg_rate:,.0f}/s)")
        replica.execute("ALTER SUBSCRIPTION anchor DISABLE")
        # Latency under a steady load: a probe row's new value, committed at
        # a known time, until a query on silver returns it.
        latencies, stop = [], threading.Event()

        def probe():
            writer, reader = pg.connect(), wb_connect()
            value = 0
            while not stop.is_set():
                value += 1
                writer.execute("UPDATE accounts SET abalance = %s WHERE aid = 0", (value,))
                committed = time.perf_counter()
                while reader.execute("SELECT abalance FROM silver.accounts WHERE aid = 0").fetchone()[0] < value:
                    time.sleep(0.02)
                    if time.perf_counter() - committed > 60:
                        raise SystemExit("a change took over a minute to reach silver")
                latencies.append(time.perf_counter() - committed)
                time.sleep(0.1)

        prober = threading.Thread(target=probe)
        server.reset_peak()
        prober.start()
        pg.pgbench("-c", "2", "-j", "1", "-R", "2000", "-T", "30", "-f", str(script))
        stop.set()
        prober.join()
        load_rss = server.peak_rss_mb()
        p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
        log(f"commit-to-visible under 2,000 updates/s: p50 {p50:.2f}s, p99 {p99:.2f}s ({len(latencies)} probes)")
        return [
            dict(case="cdc: backlog of single-row updates into silver (changes/s)", workbench=wb_rate, anchor=pg_rate,
                 anchor_name="PostgreSQL logical replication subscription", ratio=wb_rate / pg_rate, lower_is_better=False,
                 rss_mb=catch_up_rss,
                 note=f"{backlog:,} transactions on {rows:,} rows; Workbench {wb_seconds:.1f}s, subscription {pg_seconds:.1f}s; "
                      f"target ≥ 20,000/s"),
            dict(case="cdc: commit-to-visible latency p99 (s), 2,000 updates/s, flush_every 1s", workbench=p99, anchor=None,
                 anchor_name="target 5 s", ratio=p99 / 5.0, lower_is_better=True, rss_mb=load_rss,
                 note=f"p50 {p50:.2f}s over {len(latencies)} probes; ratio is p99 ÷ the 5 s target"),
        ], []
    finally:
        if server:
            server.stop()
        pg.stop()


def metrics_text(server):
    import urllib.request
    with urllib.request.urlopen(f"http://{server.http}/metrics", timeout=10) as response:
        return response.read().decode()


def memory_server(ctx, tables):
    """A second server on the bench lake whose `tables` are held in memory
    (serve: { memory: true }), once all of them are loaded: the server, the
    seconds the load took and the bytes they hold."""
    data = ctx["data"]
    specs = data / "memory-specs"
    shutil.rmtree(specs, ignore_errors=True)
    specs.mkdir()
    for table in tables:
        (specs / f"{table}.yaml").write_text((ctx["specs"] / f"{table}.yaml").read_text() + "serve:\n  memory: true\n")
    config = data / "memory.yaml"
    config.write_text("table_memory_budget: 12GiB\n")
    server = Server(ctx["binary"], data / "lake", specs, port=PORT + 1, config=config)

    def held():
        sizes = {}
        for line in metrics_text(server).splitlines():
            if line.startswith('workbench_memory_table_bytes{table="silver.'):
                sizes[line.split('"')[1]] = int(line.split()[-1])
        return sizes if len(sizes) == len(tables) and all(sizes.values()) else None
    try:
        load_seconds = wait_for("the tables in memory", held, timeout=900)
        return server, load_seconds, sum(held().values())
    except BaseException:
        server.stop()
        raise


def case_memory(ctx):
    """TPC-H with the tables held in memory (serve: { memory: true }) against
    DuckDB with the same tables in its own in-memory storage."""
    import duckdb

    data = ctx["data"]
    parquet = data / "lake" / "landing" / "tpch"
    duck = duckdb.connect()
    for table in TPCH_TABLES:
        duck.execute(f"CREATE TABLE {table} AS SELECT * FROM read_parquet('{parquet / (table + '.parquet')}')")
    server, load_seconds, held_bytes = memory_server(ctx, TPCH_TABLES)
    try:
        held_gib = held_bytes / 2**30
        files = sorted(QUERIES.glob("q*.sql"), key=lambda p: int(p.stem[1:]))
        rows = []
        with wb_connect(port=PORT + 1) as conn, wb_connect(port=PORT + 1) as flat:
            conn.execute("SET search_path TO silver")
            flat.execute("SET search_path TO silver")
            flat.execute("SET workbench.filter_estimates = off")
            for f in files:
                sql = f.read_text()
                wb_times, duck_times = [], []
                for _ in range(2):
                    start = time.perf_counter()
                    wb_rows = conn.execute(sql).fetchall()
                    wb_times.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    duck_rows = duck.execute(sql).fetchall()
                    duck_times.append(time.perf_counter() - start)
                ok, why = same_rows(wb_rows, duck_rows)
                estimated, flat_time, flat_rows = alternating_medians(conn, flat, sql)
                flat_ok, flat_why = same_rows(flat_rows, duck_rows)
                if not flat_ok:
                    ok, why = False, "with filter estimates off: " + flat_why
                rows.append(dict(memory_query=f.stem, workbench=min(wb_times), duckdb=min(duck_times), estimated=estimated,
                                 flat=flat_time, match=ok, why=why))
                log(f"{f.stem} in memory: workbench {min(wb_times):.3f}s (filter estimates on/off {estimated:.3f}/{flat_time:.3f}s) "
                    f"duckdb {min(duck_times):.3f}s {'OK' if ok else 'MISMATCH ' + why}")
        rss = server.peak_rss_mb()
    finally:
        server.stop()
    total_wb = sum(r["workbench"] for r in rows)
    total_duck = sum(r["duckdb"] for r in rows)
    matched = sum(r["match"] for r in rows)
    return [dict(case="TPC-H SF%s total, 22 queries over the wire, tables in memory (s)" % ctx["sf"], workbench=total_wb,
                 anchor=total_duck, anchor_name="DuckDB in-process, tables in its own memory", ratio=total_wb / total_duck,
                 lower_is_better=True, rss_mb=rss,
                 note=f"{matched}/22 results match DuckDB; the 8 tables took {held_gib:.2f} GiB, in memory {load_seconds:.0f}s after start"),
            filter_estimates_row("TPC-H SF%s total, tables in memory, filters estimated from their conditions vs DataFusion's flat 20%% (s)" % ctx["sf"],
                                 rows, "memory_query")], rows

def tpch_times(conn, files, settings=()):
    """Each TPC-H query twice on `conn` (the faster run counts), with its rows."""
    times, answers = {}, {}
    conn.execute("SET search_path TO silver")
    for setting in settings:
        conn.execute(setting)
    for f in files:
        sql = f.read_text()
        best = None
        for _ in range(2):
            start = time.perf_counter()
            answers[f.stem] = conn.execute(sql).fetchall()
            took = time.perf_counter() - start
            best = took if best is None else min(best, took)
        times[f.stem] = best
    return times, answers


def case_layout(ctx):
    """Layout and statistics: the 22 queries on the bench lake, whose lineitem
    and orders the pipeline wrote sorted by their dates (`cluster_by`, as
    every TPC-H case reads them), against a second lake written from the same
    landing files without `cluster_by`, per query; then the sorted lake with
    DataFusion's Parquet filter pushdown (row filters on decoded pages)
    switched on for the session."""
    data, binary = ctx["data"], ctx["binary"]
    specs = data / "unsorted-specs"  # written beside the bench specs by write_specs
    lake = data / "unsorted-lake"
    build_seconds = None
    if not (lake / "silver" / "lineitem").exists():
        shutil.rmtree(lake, ignore_errors=True)
        lake.mkdir(parents=True)
        (lake / "landing").symlink_to(data / "lake" / "landing")
        start = time.perf_counter()
        sh([str(binary), "run", *TPCH_TABLES, "--lake", str(lake), "--specs", str(specs)], env=dict(os.environ, RUST_LOG="warn"))
        build_seconds = time.perf_counter() - start
        log(f"unsorted TPC-H lake built by the pipeline in {build_seconds:.1f}s")
    files = sorted(QUERIES.glob("q*.sql"), key=lambda p: int(p.stem[1:]))
    with wb_connect() as conn:
        sorted_times, sorted_rows = tpch_times(conn, files)
    with wb_connect() as conn:
        try:
            pushdown, pushdown_rows = tpch_times(conn, files, ["SET datafusion.execution.parquet.pushdown_filters = true"])
        except Exception as error:  # the setting is refused: say so, do not invent a number
            log(f"pushdown_filters could not be set: {error}")
            pushdown, pushdown_rows = None, None
    rss = ctx["server"].peak_rss_mb()
    ctx["server"].stop()
    server = Server(binary, lake, specs, port=PORT + 2)
    try:
        with wb_connect(port=PORT + 2) as conn:
            plain, plain_rows = tpch_times(conn, files)
    finally:
        server.stop()
    rows = []
    for f in files:
        q = f.stem
        ok, why = same_rows(sorted_rows[q], plain_rows[q])
        if ok and pushdown is not None:
            ok, why = same_rows(pushdown_rows[q], plain_rows[q])
        rows.append(dict(layout_query=q, plain=plain[q], sorted=sorted_times[q],
                         pushdown=pushdown[q] if pushdown else None, match=ok, why=why))
        log(f"{q}: unsorted {plain[q]:.3f}s sorted {sorted_times[q]:.3f}s"
            + (f" sorted+pushdown {pushdown[q]:.3f}s" if pushdown else "") + ("" if ok else " MISMATCH " + why))
    total_plain = sum(plain.values())
    total_sorted = sum(sorted_times.values())
    matched = sum(r["match"] for r in rows)
    built = f"; the unsorted lake took {build_seconds:.0f}s to build" if build_seconds else ""
    results = [dict(case="TPC-H SF%s total, lineitem and orders written sorted by date (cluster_by) (s)" % ctx["sf"],
                    workbench=total_sorted, anchor=total_plain, anchor_name="the same tables unsorted",
                    ratio=total_sorted / total_plain, lower_is_better=True, rss_mb=rss,
                    note=f"{matched}/22 answers equal; the sorted lake is the one every TPC-H case reads{built}")]
    if pushdown:
        total_push = sum(pushdown.values())
        results.append(dict(case="TPC-H SF%s total, sorted tables + parquet pushdown_filters (s)" % ctx["sf"],
                            workbench=total_push, anchor=total_plain, anchor_name="the same tables unsorted, no pushdown",
                            ratio=total_push / total_plain, lower_is_better=True, rss_mb=rss,
                            note="SET datafusion.execution.parquet.pushdown_filters = true"))
    return results, rows

def memory_cap(limit_bytes):
    """A memory cgroup limited to `limit_bytes` (cgroup v1 or v2): its
    directory and how to read how many OOM kills it has seen."""
    v1 = Path("/sys/fs/cgroup/memory")
    group = (v1 if v1.is_dir() else Path("/sys/fs/cgroup")) / "workbench-bench-cap"
    group.mkdir(exist_ok=True)
    if v1.is_dir():
        (group / "memory.limit_in_bytes").write_text(str(limit_bytes))
        events = group / "memory.oom_control"
    else:
        (group / "memory.max").write_text(str(limit_bytes))
        (group / "memory.swap.max").write_text("0")
        events = group / "memory.events"
    kills = lambda: int(next((l.split()[1] for l in events.read_text().splitlines() if l.startswith("oom_kill ")), 0))
    return group, kills


def wait_peak_rss_mb(proc, every):
    """Wait for `proc`, sampling its peak RSS (VmHWM) every `every` seconds; MB."""
    peak = 0.0
    while proc.poll() is None:
        try:
            for line in open(f"/proc/{proc.pid}/status"):
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except (FileNotFoundError, ProcessLookupError):
            pass
        time.sleep(every)
    return peak


def run_capped(group, kills, argv, cwd=None):
    """Run `argv` inside the cgroup: (seconds, peak RSS MB, exit code, killed by the OOM killer)."""
    before = kills()
    start = time.perf_counter()
    proc = subprocess.Popen(["sh", "-c", f'echo $$ > {group / "cgroup.procs"} && exec "$@"', "capped", *map(str, argv)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=cwd,
                            env=dict(os.environ, RUST_LOG="warn"))
    peak = wait_peak_rss_mb(proc, 0.05)
    return time.perf_counter() - start, peak, proc.returncode, kills() > before


CAP_SF = 4
CAP_BYTES = 2**30


def case_bounded(ctx):
    """Bounded memory: a lineitem CSV about three times the memory the
    process may use (a 1 GiB memory cgroup), ingested into bronze and typed
    silver; DuckDB's CSV → Parquet under the same cap as the anchor."""
    data, binary = ctx["data"], ctx["binary"]
    big = CACHE / f"csv-sf{CAP_SF}"
    csv = big / "lineitem.csv"
    if not (big / ".generated").exists():
        shutil.rmtree(big, ignore_errors=True)
        sh(["tpchgen-cli", "csv", "-s", str(CAP_SF), "--tables", "lineitem", "--output-dir", str(big)])
        (big / ".generated").write_text("ok")
    size_gb = csv.stat().st_size / 1e9
    lake = CACHE / "bounded-lake"
    shutil.rmtree(lake, ignore_errors=True)
    (lake / "landing" / "csv").mkdir(parents=True)
    os.link(csv, lake / "landing" / "csv" / "lineitem.csv")
    group, kills = memory_cap(CAP_BYTES)
    wb_s, wb_peak, wb_code, wb_killed = run_capped(
        group, kills, [binary, "run", "lineitem_csv", "--lake", lake, "--specs", data / "ingest-specs"])
    out = CACHE / "bounded-duck.parquet"
    duck_s, duck_peak, duck_code, duck_killed = run_capped(
        group, kills, [sys.executable, "-c",
                       "import duckdb, sys; duckdb.connect().execute(f\"COPY (SELECT * FROM read_csv('{sys.argv[1]}')) "
                       "TO '{sys.argv[2]}' (FORMAT parquet)\")", csv, out])
    shutil.rmtree(lake, ignore_errors=True)
    out.unlink(missing_ok=True)
    outcome = lambda code, killed, peak: ("ok" if code == 0 else ("OOM-killed" if killed else f"exit {code}")) + f", peak RSS {peak:,.0f} MB"
    log(f"under a {CAP_BYTES / 2**30:.0f} GiB cap, {size_gb:.1f} GB CSV: Workbench {wb_s:.1f}s ({outcome(wb_code, wb_killed, wb_peak)}), "
        f"DuckDB {duck_s:.1f}s ({outcome(duck_code, duck_killed, duck_peak)})")
    done = wb_code == 0
    return [dict(case=f"Ingest a {size_gb:.1f} GB lineitem CSV under a {CAP_BYTES / 2**30:.0f} GiB memory cap → bronze → typed silver (s)",
                 workbench=wb_s if done else None, anchor=duck_s if duck_code == 0 else None,
                 anchor_name="DuckDB CSV → Parquet under the same cap",
                 ratio=wb_s / duck_s if done and duck_code == 0 else None, lower_is_better=True, rss_mb=wb_peak,
                 note=f"Workbench: {outcome(wb_code, wb_killed, wb_peak)} after {wb_s:.1f}s; DuckDB: {outcome(duck_code, duck_killed, duck_peak)}")], []


CASES = {
    "tpch": case_tpch,
    "memory": case_memory,
    "layout": case_layout,
    "http": case_http,
    "optimize": case_optimize,
    "cluster": case_cluster,
    "governance": case_governance,
    "stream": case_stream,
    "ingest": case_ingest,
    "bounded": case_bounded,
    "preview": case_preview,
    "validate": case_validate,
    "concurrency": case_concurrency,
    "isolation": case_isolation,
    "soak": case_soak,
    "cdc": case_cdc,
}
# Cases that need the TPC-H data and lake (all but cdc).
NEEDS_TPCH = set(CASES) - {"cdc"}
# The soak runs for minutes: only when asked for (--cases soak).
DEFAULT_CASES = [name for name in CASES if name != "soak"]


def machine():
    cpus = os.cpu_count()
    mem = next((int(l.split()[1]) // 1024 // 1024 for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    return f"{platform.machine()}, {cpus} cores, {mem} GiB, {platform.system()} {platform.release()}"


def merged_with_previous(results, details, sf):
    """A run of some cases keeps the other cases of the previous run (same SF)."""
    path = BENCHES / "results.json"
    if not path.exists():
        return results, details
    previous = json.loads(path.read_text())
    if str(previous.get("sf")) != str(sf):
        return results, details
    fresh = {r["case"]: r for r in results}
    merged = [fresh.pop(r["case"], r) for r in previous["results"]] + list(fresh.values())
    # Per-query tables: this run's where it ran them, the previous run's otherwise.
    tpch = [d for d in details if "query" in d] or previous.get("tpch", [])
    cluster = [d for d in details if "cluster_query" in d] or previous.get("cluster", [])
    memory = [d for d in details if "memory_query" in d] or previous.get("memory", [])
    layout = [d for d in details if "layout_query" in d] or previous.get("layout", [])
    return merged, tpch + cluster + memory + layout


def write_results(results, details, sf, started):
    results, details = merged_with_previous(results, details, sf)
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    mach = machine()
    lines = [
        "# Workbench benchmarks",
        "",
        f"Machine: {mach}. Date: {when}. TPC-H scale factor {sf}. "
        f"Reproduce with `benches/run.sh` (the last run took {(time.time() - started) / 60:.1f} min; "
        "a run of some cases keeps the others' rows from the previous run).",
        "Ratios are Workbench ÷ anchor for times (lower is better) and anchor ÷ Workbench "
        "turned into Workbench ÷ anchor for rates (higher is better) — see the last column.",
        "",
        "| Case | Workbench | Anchor | Anchor is | Ratio | Better is | Server peak RSS (MB) | Note |",
        "|---|---:|---:|---|---:|---|---:|---|",
    ]
    for r in results:
        fmt = lambda v: "–" if v is None else (f"{v:,.3f}" if v < 100 else f"{v:,.0f}")
        lines.append(
            f"| {r['case']} | {fmt(r['workbench'])} | {fmt(r['anchor'])} | {r['anchor_name']} | "
            f"{'–' if r['ratio'] is None else format(r['ratio'], '.2f') + '×'} | "
            f"{'lower' if r['lower_is_better'] else 'higher'} | {fmt(r['rss_mb'])} | {r['note']} |")
    tpch = [d for d in details if "query" in d]
    if tpch:
        lines += ["", "## TPC-H per query (seconds)", "",
                  "| Query | Workbench (wire) | Written join order (wire) | Filter estimates on / off, medians (wire) | DataFusion in-process | DuckDB | Ratio vs DuckDB | Result |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for d in tpch:
            written = f"{d['written']:.3f}" if d.get("written") else "–"
            flat = f"{d['estimated']:.3f} / {d['flat']:.3f}" if d.get("estimated") and d.get("flat") else "–"
            lines.append(f"| {d['query']} | {d['workbench']:.3f} | {written} | {flat} | {(d['datafusion'] or 0):.3f} | {d['duckdb']:.3f} | "
                         f"{d['workbench'] / d['duckdb']:.2f}× | {'matches DuckDB' if d['match'] else 'MISMATCH: ' + d['why']} |")
    cluster = [d for d in details if "cluster_query" in d]
    if cluster:
        lines += ["", "## TPC-H per query: the server alone vs a Ballista cluster on the same machine (seconds)", "",
                  "| Query | Server alone | 1 scheduler + 2 executors | Ratio | Result |",
                  "|---|---:|---:|---:|---|"]
        for d in cluster:
            lines.append(f"| {d['cluster_query']} | {d['local']:.3f} | {d['cluster']:.3f} | {d['cluster'] / d['local']:.2f}× | "
                         f"{'equal' if d['match'] else 'MISMATCH: ' + d['why']} |")
    memory = [d for d in details if "memory_query" in d]
    if memory:
        lines += ["", "## TPC-H per query, tables in memory: Workbench vs DuckDB's own tables (seconds)", "",
                  "| Query | Workbench (wire), tables in memory | Filter estimates on / off, medians | DuckDB, tables in memory | Ratio | Result |",
                  "|---|---:|---:|---:|---:|---|"]
        for d in memory:
            flat = f"{d['estimated']:.3f} / {d['flat']:.3f}" if d.get("estimated") and d.get("flat") else "–"
            lines.append(f"| {d['memory_query']} | {d['workbench']:.3f} | {flat} | {d['duckdb']:.3f} | {d['workbench'] / d['duckdb']:.2f}× | "
                         f"{'matches DuckDB' if d['match'] else 'MISMATCH: ' + d['why']} |")
    layout = [d for d in details if "layout_query" in d]
    if layout:
        lines += ["", "## TPC-H per query, layout: lineitem and orders sorted by date (cluster_by) vs unsorted (seconds)", "",
                  "| Query | Unsorted | Sorted | Ratio | Sorted + pushdown_filters | Ratio | Result |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for d in layout:
            push = d["pushdown"]
            lines.append(f"| {d['layout_query']} | {d['plain']:.3f} | {d['sorted']:.3f} | {d['sorted'] / d['plain']:.2f}× | "
                         + (f"{push:.3f} | {push / d['plain']:.2f}× | " if push else "– | – | ")
                         + ("equal" if d["match"] else "MISMATCH: " + d["why"]) + " |")
    (BENCHES / "RESULTS.md").write_text("\n".join(lines) + "\n")
    (BENCHES / "results.json").write_text(json.dumps(
        dict(machine=mach, date=when, sf=sf, results=results, tpch=tpch, cluster=cluster, memory=memory, layout=layout),
        indent=2, default=str) + "\n")
    log(f"wrote {BENCHES / 'RESULTS.md'}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sf", default="1")
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES))
    parser.add_argument("--seconds", type=int, default=30, help="duration of the concurrency and isolation cases")
    parser.add_argument("--soak-seconds", type=int, default=600, help="duration of the soak case")
    args = parser.parse_args()
    if {"tpch", "cluster"} & set(args.cases.split(",")) and len(list(QUERIES.glob("q*.sql"))) != 22:
        raise SystemExit(f"the 22 TPC-H queries (q1.sql ... q22.sql) are not in {QUERIES}: "
                         "run from a checkout next to ../shared, or set TPCH_QUERIES to their directory")
    started = time.time()
    # The anchors' install and the data generation run while cargo builds (the build is
    # the long pole of a run from nothing; these are mostly network and disk).
    prepared = {}

    tpch_needed = bool(NEEDS_TPCH & set(args.cases.split(",")))

    def prepare():
        try:
            sh([sys.executable, "-m", "pip", "install", "-q", "-r", str(BENCHES / "requirements.txt")])
            prepared["data"] = generate_tpch(args.sf) if tpch_needed else None
        except BaseException as error:  # re-raised on the main thread
            prepared["error"] = error

    preparation = threading.Thread(target=prepare)
    preparation.start()
    binary = build_workbench()
    preparation.join()
    if "error" in prepared:
        raise prepared["error"]
    data = prepared["data"]
    specs = write_specs(data) if tpch_needed else CACHE / "no-specs"
    lake = data / "lake" if tpch_needed else CACHE / "no-lake"
    for empty in ((specs, lake) if not tpch_needed else ()):
        empty.mkdir(parents=True, exist_ok=True)
    # A lake written with another layout (an older run's) is written again.
    layout_mark = lake / "layout.json"
    layout = json.dumps(LAYOUT, sort_keys=True)
    built = (lake / "silver" / "lineitem").exists() and layout_mark.exists() and layout_mark.read_text() == layout
    if tpch_needed and not built:
        for written in ("bronze", "silver", "gold", "_workbench"):
            shutil.rmtree(lake / written, ignore_errors=True)
        start = time.perf_counter()
        sh([str(binary), "run", *TPCH_TABLES, "--lake", str(lake), "--specs", str(specs)], env=dict(os.environ, RUST_LOG="warn"))
        layout_mark.write_text(layout)
        log(f"TPC-H lake built by the pipeline in {time.perf_counter() - start:.1f}s")
    ctx = dict(sf=args.sf, data=data, specs=specs, binary=binary, reload_pg=False, seconds=args.seconds,
               soak_seconds=args.soak_seconds)
    results, details = [], []
    for name in args.cases.split(","):
        ctx["server"] = Server(binary, lake, specs)
        try:
            log(f"case {name}")
            r, d = CASES[name](ctx)
            results += r
            details += d
        finally:
            ctx["server"].stop()
        write_results(results, details, args.sf, started)


if __name__ == "__main__":
    main()
