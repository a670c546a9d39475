//! Uploads over the wire: psql's `\copy landing.<dataset> from 'file' csv
//! header` stores a new landing file (atomically, named for the dataset's
//! glob, reported with its hash); a file cut short, a binary COPY, a copy
//! without its header, a client killed mid-copy and a user without upload
//! rights store nothing.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest;

use crate::harness::{Server, ServerOptions, hash_password};

const PASSWORD: &str = "upload-secret-1";

fn psql_as(server: &Server, user: &str, args: &[&str]) -> Output {
    Command::new("psql")
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-d", "workbench", "-U", user, "-p"])
        .arg(server.port().to_string())
        .args(args)
        .env("PGPASSWORD", PASSWORD)
        .output()
        .expect("psql")
}

fn landing_files(lake: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(lake.join("landing/ledger"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn psql_copy_uploads_a_landing_file_and_refuses_what_it_cannot_store_whole() {
    let lake = tempfile::TempDir::new().unwrap();
    let specs = tempfile::TempDir::new().unwrap();
    std::fs::create_dir_all(lake.path().join("landing/ledger")).unwrap();
    std::fs::write(
        specs.path().join("ledger.yaml"),
        "name: ledger\nsource: { format: csv, path: landing/ledger/*.csv }\nsilver:\n  rules:\n    - type_cast: { amount: int }\n",
    )
    .unwrap();
    let hash = hash_password(PASSWORD);
    let config = format!(
        "users:\n  - {{ name: loader, password_hash: \"{hash}\", roles: [loader] }}\n  - {{ name: viewer, password_hash: \"{hash}\", roles: [viewer] }}\n\
         roles:\n  loader: {{ read: [\"*\"], run: [ledger], upload: [ledger] }}\n  viewer: {{ read: [\"*\"] }}\n"
    );
    let server = Server::start_at(
        lake.path(),
        ServerOptions { config_yaml: config, args: vec!["--specs".into(), specs.path().display().to_string()], ..Default::default() },
    );
    let files = tempfile::TempDir::new().unwrap();
    let good = files.path().join("ledger.csv");
    let content = "account,amount\n1100,250\n2100,-75\n3100,12\n";
    std::fs::write(&good, content).unwrap();

    // A good file: stored whole, reported with its hash, ingested by a run.
    let copy = format!("\\copy landing.ledger from '{}' csv header", good.display());
    let out = psql_as(&server, "loader", &["-c", &copy]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(stdout.trim(), "COPY 3");
    let sha = hex::encode(sha2::Sha256::digest(content.as_bytes()));
    assert!(stderr.contains("NOTICE:  stored landing/ledger/upload-") && stderr.contains(&format!("sha256 {sha}")), "{stderr}");
    let stored = landing_files(lake.path());
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(stored[0].starts_with("upload-") && stored[0].ends_with(".csv"), "{stored:?}");
    assert_eq!(std::fs::read_to_string(lake.path().join("landing/ledger").join(&stored[0])).unwrap(), content);
    let out = psql_as(&server, "loader", &["-At", "-c", "SELECT rows_out FROM run('ledger') WHERE layer = 'silver'", "-c", "SELECT sum(amount) FROM silver.ledger"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "3\n187\n", "{}", String::from_utf8_lossy(&out.stderr));

    // Refused, with nothing stored: a file cut short mid-row, a binary
    // COPY, a copy without its header, a user without upload rights.
    let cut = files.path().join("cut.csv");
    std::fs::write(&cut, "account,amount\n4100,5\n5100").unwrap();
    let quoted = files.path().join("quoted.csv");
    std::fs::write(&quoted, "account,amount\n4100,\"5").unwrap();
    let cases: [(&str, String, &str); 5] = [
        ("loader", format!("\\copy landing.ledger from '{}' csv header", cut.display()), "line 3 has 1 field(s) where the first has 2"),
        ("loader", format!("\\copy landing.ledger from '{}' csv header", quoted.display()), "cut short"),
        ("loader", "COPY landing.ledger FROM STDIN (FORMAT binary)".to_string(), "not FORMAT binary"),
        ("loader", format!("\\copy landing.ledger from '{}' csv", good.display()), "header row"),
        ("viewer", copy.clone(), "may not upload landing files of dataset ledger"),
    ];
    for (user, command, says) in cases {
        let out = psql_as(&server, user, &["-c", &command]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command} succeeded");
        assert!(stderr.contains(says), "{command}: {stderr}");
        assert_eq!(landing_files(lake.path()).len(), 1, "{command} stored something");
    }
    // Into a lake table, or from a file on the server: refused.
    for (command, says) in [
        ("COPY silver.ledger FROM STDIN (FORMAT csv)", "written by pipelines"),
        ("COPY landing.ledger FROM '/etc/passwd' (FORMAT csv)", "not allowed"),
    ] {
        let out = psql_as(&server, "loader", &["-c", command]);
        assert!(String::from_utf8_lossy(&out.stderr).contains(says), "{command}: {}", String::from_utf8_lossy(&out.stderr));
    }

    // A client killed mid-copy (reading a pipe that is still being written)
    // leaves nothing.
    let fifo = files.path().join("slow.csv");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let mut psql = Command::new("psql")
        .args(["-X", "-h", "127.0.0.1", "-d", "workbench", "-U", "loader", "-p"])
        .arg(server.port().to_string())
        .arg("-c")
        .arg(format!("\\copy landing.ledger from '{}' csv header", fifo.display()))
        .env("PGPASSWORD", PASSWORD)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let writer = std::thread::spawn({
        let fifo = fifo.clone();
        move || {
            use std::io::Write;
            let Ok(mut pipe) = std::fs::OpenOptions::new().write(true).open(&fifo) else { return };
            let _ = pipe.write_all(b"account,amount\n");
            for i in 0..200 {
                if pipe.write_all(format!("{i},1\n").as_bytes()).is_err() {
                    return;
                }
                let _ = pipe.flush();
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    psql.kill().unwrap();
    let _ = psql.wait();
    let _ = writer.join();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        assert_eq!(landing_files(lake.path()).len(), 1, "a killed copy stored something");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The server is fine.
    let out = psql_as(&server, "viewer", &["-At", "-c", "SELECT count(*) FROM silver.ledger"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "3\n");
}
