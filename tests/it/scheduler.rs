//! Scheduled runs with a real clock and a seconds-level cron: two replicas
//! sharing Postgres and Redis run each slot exactly once; slots missed while
//! no server ran are caught up as `catchup:` says; bad schedules are refused
//! at `check` with file:line:col.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{BIN, Server, ServerOptions, replica_args, rows};
use crate::metadata::ScratchDb;

/// A lake with one small CSV dataset and its spec, with `schedule` lines.
fn scheduled(schedule: &str) -> (tempfile::TempDir, tempfile::TempDir) {
    let lake = tempfile::TempDir::new().unwrap();
    let specs = tempfile::TempDir::new().unwrap();
    std::fs::create_dir_all(lake.path().join("landing/ticks")).unwrap();
    std::fs::write(lake.path().join("landing/ticks/a.csv"), "n,label\n1,uno\n2,dos\n").unwrap();
    std::fs::write(
        specs.path().join("ticks.yaml"),
        format!("name: ticks\nsource: {{ format: csv, path: landing/ticks/*.csv }}\n{schedule}silver:\n  rules:\n    - type_cast: {{ n: int }}\n"),
    )
    .unwrap();
    (lake, specs)
}

#[tokio::test]
async fn two_replicas_run_each_slot_exactly_once() {
    let (lake, specs) = scheduled("schedule: \"* * * * * *\"\n");
    let db = ScratchDb::create("sched");
    let args = replica_args(specs.path(), &db.url(), &format!("wbtest{}:", std::process::id()));
    let a = Server::start_at(lake.path(), ServerOptions { args: args.clone(), ..Default::default() });
    let b = Server::start_at(lake.path(), ServerOptions { args: args.clone(), ..Default::default() });
    // A third replica that only serves queries.
    let mut quiet = args;
    quiet.push("--no-scheduler".into());
    let c = Server::start_at(lake.path(), ServerOptions { args: quiet, ..Default::default() });
    // Sixteen consecutive slots from the first one, all finished.
    let started = Instant::now();
    let window = loop {
        let slots = rows(&a, "SELECT CAST(date_part('epoch', slot) AS BIGINT), status, run_id, claimed_by FROM workbench.schedule_slots ORDER BY slot").await;
        let first: Option<i64> = slots.first().map(|s| s.split('|').next().unwrap().parse().unwrap());
        let window: Vec<String> = slots
            .into_iter()
            .filter(|s| first.is_some_and(|f| s.split('|').next().unwrap().parse::<i64>().unwrap() <= f + 15))
            .collect();
        if window.len() >= 16 && window.iter().all(|s| !s.contains("|running|")) {
            break window;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "slots so far: {window:#?}\n{}", a.log_text());
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Every second is there once (the slot key is unique), and each slot
    // ran, once, successfully.
    let seconds: Vec<i64> = window.iter().map(|s| s.split('|').next().unwrap().parse().unwrap()).collect();
    assert_eq!(seconds, (seconds[0]..seconds[0] + 16).collect::<Vec<_>>(), "{window:#?}");
    assert!(window.iter().all(|s| s.split('|').nth(1) == Some("succeeded")), "{window:#?}\n{}", a.log_text());
    for slot in &window {
        let run_id = slot.split('|').nth(2).unwrap();
        let runs = rows(&a, &format!("SELECT status, trigger, parameters LIKE '%\"slot\":\"%' FROM workbench.runs WHERE id = '{run_id}'")).await;
        assert_eq!(runs, vec!["succeeded|schedule|t"], "the run of {slot}");
    }
    // No scheduled run without a claimed slot.
    let orphans = rows(
        &a,
        "SELECT count(*) FROM workbench.runs r WHERE r.trigger = 'schedule' \
         AND NOT EXISTS (SELECT 1 FROM workbench.schedule_slots s WHERE s.run_id = r.id)",
    )
    .await;
    assert_eq!(orphans, vec!["0"]);
    let replicas: std::collections::BTreeSet<&str> = window.iter().map(|s| s.split('|').nth(3).unwrap()).collect();
    eprintln!("16 slots claimed by {replicas:?}");
    let by_quiet = rows(&c, &format!("SELECT count(*) FROM workbench.schedule_slots WHERE claimed_by LIKE '%:{}'", c.pid())).await;
    assert_eq!(by_quiet, vec!["0"], "a --no-scheduler replica claimed slots");
    // workbench.schedules: the next slots and how the last claimed one went.
    let schedules = rows(
        &b,
        "SELECT dataset, schedule, timezone, catchup, next_slot > now(), following_slots IS NOT NULL, last_status IN ('running', 'succeeded') \
         FROM workbench.schedules",
    )
    .await;
    assert_eq!(schedules, vec!["ticks|* * * * * *|UTC|latest|t|t|t"]);
    drop(b);
}

#[tokio::test]
async fn a_replica_killed_mid_run_leaves_its_slot_abandoned_and_the_next_slot_runs_on_the_other() {
    let (lake, specs) = scheduled("schedule: \"*/4 * * * * *\"\n");
    // Big enough that a run takes seconds.
    let mut csv = String::from("n,label\n");
    for i in 0..400_000 {
        csv.push_str(&format!("{i},row number {i}\n"));
    }
    std::fs::write(lake.path().join("landing/ticks/a.csv"), csv).unwrap();
    let db = ScratchDb::create("schedkill");
    let mut args = replica_args(specs.path(), &db.url(), &format!("wbkill{}:", std::process::id()));
    args.extend(["--lock-ttl".into(), "3s".into()]);
    let mut replicas = vec![
        Some(Server::start_at(lake.path(), ServerOptions { args: args.clone(), ..Default::default() })),
        Some(Server::start_at(lake.path(), ServerOptions { args, ..Default::default() })),
    ];
    let watcher = replicas[0].as_ref().unwrap().connect().await;
    let text = |row: &tokio_postgres::Row, i: usize| row.get::<_, String>(i);
    // A scheduled run in progress: kill the replica that runs it.
    let started = Instant::now();
    let (killed_slot, survivor) = loop {
        let running = watcher
            .query("SELECT CAST(slot AS TEXT) AS slot_text, claimed_by FROM workbench.schedule_slots WHERE status = 'running' ORDER BY slot LIMIT 1", &[])
            .await
            .unwrap();
        if let Some(row) = running.first() {
            let holder = text(row, 1);
            let index = replicas.iter().position(|r| r.as_ref().is_some_and(|s| holder.ends_with(&format!(":{}", s.pid()))));
            if let Some(index) = index {
                drop(replicas[index].take());
                break (text(row, 0), 1 - index);
            }
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no scheduled run seen running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let survivor = replicas[survivor].as_ref().unwrap();
    let client = survivor.connect().await;
    // The killed slot ends as abandoned (not run again), and a later slot
    // runs on the survivor.
    let started = Instant::now();
    loop {
        let killed = client
            .query_one("SELECT status FROM workbench.schedule_slots WHERE CAST(slot AS TEXT) = $1", &[&killed_slot])
            .await
            .unwrap();
        let later: i64 = client
            .query_one(
                "SELECT count(*) FROM workbench.schedule_slots WHERE CAST(slot AS TEXT) > $1 AND status = 'succeeded' AND claimed_by LIKE $2",
                &[&killed_slot, &format!("%:{}", survivor.pid())],
            )
            .await
            .unwrap()
            .get(0);
        if text(&killed, 0) == "abandoned" && later >= 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "killed slot {killed_slot} is {}, {later} later slots succeeded\n{}",
            text(&killed, 0),
            survivor.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let runs: i64 = client
        .query_one("SELECT count(*) FROM workbench.schedule_slots WHERE CAST(slot AS TEXT) = $1", &[&killed_slot])
        .await
        .unwrap()
        .get(0);
    assert_eq!(runs, 1, "the killed slot is not claimed again");
}

#[tokio::test]
async fn missed_slots_are_caught_up_as_catchup_says() {
    let (lake, specs) = scheduled("schedule: \"*/2 * * * * *\"\ncatchup: all\n");
    let args = vec!["--specs".to_string(), specs.path().display().to_string()];
    let server = Server::start_at(lake.path(), ServerOptions { args: args.clone(), ..Default::default() });
    let started = Instant::now();
    while rows(&server, "SELECT count(*) FROM workbench.schedule_slots WHERE status = 'succeeded'").await != vec!["2".to_string()] {
        assert!(started.elapsed() < Duration::from_secs(30), "no scheduled run\n{}", server.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(server);
    let stopped = chrono::Utc::now();
    tokio::time::sleep(Duration::from_secs(7)).await;
    let server = Server::start_at(lake.path(), ServerOptions { args, ..Default::default() });
    // The slots of the 7 s without a server (three or four) ran after it came back.
    let started = Instant::now();
    loop {
        let missed = rows(
            &server,
            &format!(
                "SELECT count(*) FROM workbench.schedule_slots WHERE date_part('epoch', slot) > {} \
                 AND date_part('epoch', claimed_at) - date_part('epoch', slot) > 1 AND status = 'succeeded'",
                stopped.timestamp()
            ),
        )
        .await;
        if missed.first().is_some_and(|n| n.parse::<i64>().unwrap() >= 3) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "missed slots not caught up: {missed:?}\n{}", server.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // `workbench status` prints the schedule, its next slot and the last outcome.
    let out = Command::new(BIN).args(["status", "--lake"]).arg(lake.path()).arg("--specs").arg(specs.path()).output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = printed.lines().find(|l| l.contains("| ticks")).unwrap_or_else(|| panic!("{printed}"));
    for expected in ["*/2 * * * * *", "| UTC", "| all"] {
        assert!(line.contains(expected), "{expected} in {printed}");
    }
    assert!(line.contains("| succeeded") || line.contains("| running"), "{printed}");
}

#[test]
fn bad_schedules_are_refused_at_check_with_their_place() {
    for (lines, expected) in [
        ("schedule: \"0 6 * *\"\n", "ticks.yaml:3:11: error: invalid schedule '0 6 * *'"),
        ("schedule: \"0 61 * * *\"\n", "ticks.yaml:3:11: error: invalid schedule '0 61 * * *'"),
        ("schedule: \"0 6 * * *\"\ntimezone: America/Santiagoo\n", "ticks.yaml:4:11: error: unknown time zone 'America/Santiagoo'"),
        ("schedule: \"0 6 * * *\"\ncatchup: sometimes\n", "ticks.yaml:4:10: error: unknown catchup 'sometimes'"),
        ("timezone: UTC\n", "ticks.yaml:3:11: error: timezone without a schedule"),
    ] {
        let (lake, specs) = scheduled(lines);
        let out = Command::new(BIN).args(["check", "--lake"]).arg(lake.path()).arg("--specs").arg(specs.path()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(expected), "{lines}: {stderr}");
    }
    // A valid one with a zone and seconds passes.
    let (lake, specs) = scheduled("schedule: \"30 0 6 1-3 * 1-5\"\ntimezone: America/Santiago\ncatchup: none\n");
    let out = Command::new(BIN).args(["check", "--lake"]).arg(lake.path()).arg("--specs").arg(specs.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

async fn file_runs(server: &Server) -> Vec<String> {
    rows(server, "SELECT status, parameters FROM workbench.runs WHERE trigger = 'file' ORDER BY started_at").await
}

#[tokio::test]
async fn new_landing_files_start_a_run_once_complete_and_a_slowly_written_file_waits_until_it_settles() {
    let lake = tempfile::TempDir::new().unwrap();
    let specs = tempfile::TempDir::new().unwrap();
    std::fs::create_dir_all(lake.path().join("landing/arrivals")).unwrap();
    std::fs::write(
        specs.path().join("arrivals.yaml"),
        "name: arrivals\nsource: { format: csv, path: landing/arrivals/*.csv }\ntrigger: on_file\nsilver:\n  mode: append\n  rules:\n    - type_cast: { n: int }\n",
    )
    .unwrap();
    // A file there before the server starts is built at start-up, and
    // the watcher does not run it again.
    std::fs::write(lake.path().join("landing/arrivals/0.csv"), "n\n0\n").unwrap();
    let server = Server::start_at(
        lake.path(),
        ServerOptions { args: vec!["--specs".into(), specs.path().display().to_string()], ..Default::default() },
    );
    let started = Instant::now();
    while rows(&server, "SELECT status FROM workbench.runs WHERE trigger = 'startup'").await != ["succeeded"] {
        assert!(started.elapsed() < Duration::from_secs(15), "no start-up build\n{}", server.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(file_runs(&server).await, Vec::<String>::new(), "a file already ingested started a run");
    // A file dropped in whole: a run within seconds.
    std::fs::write(lake.path().join("landing/arrivals/a.csv"), "n\n1\n2\n3\n").unwrap();
    let arrived = Instant::now();
    loop {
        let runs = file_runs(&server).await;
        if runs.iter().any(|r| r.starts_with("succeeded|")) {
            assert_eq!(runs.len(), 1, "{runs:?}");
            assert!(runs[0].contains("landing/arrivals/a.csv"), "{runs:?}");
            break;
        }
        assert!(arrived.elapsed() < Duration::from_secs(15), "no run for a.csv: {runs:?}\n{}", server.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("a.csv ingested {:?} after it arrived", arrived.elapsed());
    assert_eq!(rows(&server, "SELECT count(*) FROM silver.arrivals").await, vec!["4"]);
    // A file written slowly, a chunk every 600 ms for 4 s: nothing reads it
    // while it grows; once complete, all of it is ingested.
    let path = lake.path().join("landing/arrivals/b.csv");
    let mut writer = std::fs::File::create(&path).unwrap();
    use std::io::Write;
    writer.write_all(b"n\n").unwrap();
    let mut last_write = Instant::now();
    for chunk in 0..7 {
        for i in 0..100 {
            writeln!(writer, "{}", 1000 + chunk * 100 + i).unwrap();
        }
        writer.flush().unwrap();
        last_write = Instant::now();
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(file_runs(&server).await.len(), 1, "a run started while b.csv was being written");
    }
    drop(writer);
    let finished = Instant::now();
    loop {
        let runs = file_runs(&server).await;
        if runs.len() == 2 && runs[1].starts_with("succeeded|") {
            assert!(runs[1].contains("landing/arrivals/b.csv") && !runs[1].contains("a.csv"), "{runs:?}");
            break;
        }
        assert!(finished.elapsed() < Duration::from_secs(15), "no run for b.csv: {runs:?}\n{}", server.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(last_write.elapsed() >= Duration::from_secs(2), "read before it settled: {:?} after the last write", last_write.elapsed());
    assert_eq!(rows(&server, "SELECT count(*) FROM silver.arrivals").await, vec!["704"]);
    // Nothing new: no more runs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(file_runs(&server).await.len(), 2);
}

#[tokio::test]
async fn schedule_preview_shows_slots_across_daylight_saving_changes_once_each() {
    let (lake, specs) = scheduled("schedule: \"30 2 * * *\"\ntimezone: Europe/Berlin\n");
    let server = Server::start_at(
        lake.path(),
        ServerOptions { args: vec!["--specs".into(), specs.path().display().to_string(), "--no-scheduler".into()], ..Default::default() },
    );
    // Spring: 02:30 does not exist on 2027-03-28 (02:00 → 03:00); it runs
    // once, after the jump, and the UTC offset changes from +1 to +2.
    let spring = rows(&server, "SELECT CAST(slot AS TEXT), local_time FROM schedule_preview('ticks', '2027-03-26', 4)").await;
    eprintln!("{spring:#?}");
    assert_eq!(spring.len(), 4);
    assert_eq!(spring[0], "2027-03-26T01:30:00Z|2027-03-26 02:30:00 CET");
    assert_eq!(spring[1], "2027-03-27T01:30:00Z|2027-03-27 02:30:00 CET");
    assert!(spring[2].starts_with("2027-03-28T01:") && spring[2].contains("2027-03-28 03:"), "once on the day of the change: {spring:#?}");
    assert_eq!(spring[3], "2027-03-29T00:30:00Z|2027-03-29 02:30:00 CEST");
    // Autumn: 02:30 happens twice on 2027-10-31; it runs once.
    let autumn = rows(&server, "SELECT CAST(slot AS TEXT), local_time FROM schedule_preview('ticks', '2027-10-30', 3)").await;
    eprintln!("{autumn:#?}");
    assert_eq!(autumn[0], "2027-10-30T00:30:00Z|2027-10-30 02:30:00 CEST");
    assert!(autumn[1].starts_with("2027-10-31T0") && autumn[1].contains("2027-10-31 02:30:00"), "{autumn:#?}");
    assert_eq!(autumn[2], "2027-11-01T01:30:00Z|2027-11-01 02:30:00 CET");
    // Bad arguments are refused clearly.
    let client = server.connect().await;
    for (sql, says) in [
        ("SELECT * FROM schedule_preview('ticks', 'soon')", "is not a timestamp"),
        ("SELECT * FROM schedule_preview('ticks', '2027-01-01', 0)", "between 1 and 1000"),
        ("SELECT * FROM schedule_preview('nope')", "unknown dataset"),
    ] {
        let err = client.simple_query(sql).await.unwrap_err();
        assert!(err.as_db_error().unwrap().message().contains(says), "{sql}: {err:?}");
    }
}
