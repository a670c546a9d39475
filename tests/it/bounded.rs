//! Bounded memory: a landing CSV larger than the memory the
//! process may use ingests into bronze and typed silver. The run goes
//! through the real binary inside a memory cgroup (v1 or v2) of its own; the
//! kernel kills it if it ever holds more than the cap.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::harness::{BIN, Server, ServerOptions, rows};

/// What the run may hold (the dev binary's own pages count too): the file
/// below is larger. Before the streaming work a 200 MB file took 476 MB.
const CAP_BYTES: u64 = 256 << 20;
const ROWS: u64 = 3_000_000;

/// A memory cgroup capped at `limit` bytes, removed when dropped.
struct Cap {
    dir: PathBuf,
    /// The file whose `oom_kill N` line counts the kills in the group.
    events: PathBuf,
}

impl Cap {
    fn new(limit: u64) -> Cap {
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let (root, limit_file, events) = if v1.join("memory.limit_in_bytes").exists() {
            (v1, "memory.limit_in_bytes", "memory.oom_control")
        } else {
            (Path::new("/sys/fs/cgroup"), "memory.max", "memory.events")
        };
        let dir = root.join(format!("workbench-it-bounded-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| {
            panic!("this test needs a memory cgroup it can create (as root): {}: {e}", dir.display())
        });
        std::fs::write(dir.join(limit_file), limit.to_string()).expect("set the cgroup's memory limit");
        if root != v1 {
            // No swapping around the cap.
            let _ = std::fs::write(dir.join("memory.swap.max"), "0");
        }
        Cap { events: dir.join(events), dir }
    }

    fn oom_kills(&self) -> u64 {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .map_or(0, |n| n.trim().parse().unwrap())
    }

    /// `workbench <args>`, moved into the group before it starts.
    fn run(&self, args: &[&str]) -> Output {
        let procs = self.dir.join("cgroup.procs");
        Command::new("sh")
            .arg("-c")
            .arg(format!("echo $$ > '{}' && exec \"$@\"", procs.display()))
            .arg("capped")
            .arg(BIN)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run workbench in the cgroup")
    }
}

impl Drop for Cap {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// `rows` lines of id, amount, day, code, comment: about 125 bytes a row.
fn write_csv(path: &Path, rows: u64) {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    out.write_all(b"id,amount,day,code,comment\n").unwrap();
    let filler = "the quick brown fox jumps over the lazy dog, says \"the clerk\"";
    let mut line = Vec::with_capacity(256);
    for id in 0..rows {
        line.clear();
        write!(
            line,
            "{id},{}.{:02},2026-{:02}-{:02},C{:05},\"{} #{id}\"\n",
            id % 100_000,
            id % 100,
            id % 12 + 1,
            id % 28 + 1,
            id % 50_000,
            &filler[..30 + (id % 30) as usize],
        )
        .unwrap();
        out.write_all(&line).unwrap();
    }
    out.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_csv_larger_than_the_memory_cap_ingests_into_bronze_and_typed_silver() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let specs = dir.path().join("specs");
    std::fs::create_dir_all(lake.join("landing")).unwrap();
    std::fs::create_dir_all(&specs).unwrap();
    let csv = lake.join("landing/big.csv");
    write_csv(&csv, ROWS);
    let size = std::fs::metadata(&csv).unwrap().len();
    assert!(size > CAP_BYTES, "the file ({size} bytes) is larger than the cap");
    std::fs::write(
        specs.join("big.yaml"),
        "name: big\nsource:\n  format: csv\n  path: landing/big.csv\nsilver:\n  rules:\n    - type_cast:\n        id: bigint\n        amount: \"decimal(12,2)\"\n        day: date\n",
    )
    .unwrap();

    let cap = Cap::new(CAP_BYTES);
    let lake_arg = lake.display().to_string();
    let specs_arg = specs.display().to_string();
    let out = cap.run(&["run", "big", "--lake", &lake_arg, "--specs", &specs_arg]);
    assert_eq!(cap.oom_kills(), 0, "the run was OOM-killed under a {} MiB cap", CAP_BYTES >> 20);
    assert!(
        out.status.success(),
        "workbench run under a {} MiB cap: {:?}\n{}{}",
        CAP_BYTES >> 20,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every row arrived, typed, in both layers.
    let server = Server::start_at(&lake, ServerOptions { args: vec!["--specs".into(), specs_arg.clone()], ..Default::default() });
    let bronze = rows(&server, "SELECT count(*), count(DISTINCT id) FROM bronze.big").await;
    assert_eq!(bronze, vec![format!("{ROWS}|{ROWS}")]);
    let silver = rows(&server, "SELECT count(*), sum(id), max(day), sum(amount) FROM silver.big").await;
    let amounts: u64 = (0..ROWS).map(|id| (id % 100_000) * 100 + id % 100).sum();
    assert_eq!(
        silver,
        vec![format!(
            "{ROWS}|{}|2026-12-28|{}.{:02}",
            ROWS * (ROWS - 1) / 2,
            amounts / 100,
            amounts % 100
        )]
    );
}
