//! Governed access: three users with different roles against one server.
//! maria (analyst) reads gold and silver.suppliers, only the `norte` rows,
//! with `rut` hashed and `email` partly hidden; etl (engineer) reads and
//! runs everything in clear; audra (auditor) reads only the metadata.

use std::process::Command;

use tokio_postgres::SimpleQueryMessage;

use crate::harness::{BIN, Server, ServerOptions, hash_password, sqlstate};

const SECRET_RUT: &str = "76.543.210-K";
const SUR_RUT: &str = "99.888.777-1";

struct Governed {
    server: Server,
    _lake: tempfile::TempDir,
    _specs: tempfile::TempDir,
}

const PASSWORD: &str = "salar de atacama";

fn governed() -> Governed {
    let lake = tempfile::TempDir::new().unwrap();
    let specs = tempfile::TempDir::new().unwrap();
    let landing = lake.path().join("landing/suppliers");
    std::fs::create_dir_all(&landing).unwrap();
    std::fs::write(
        landing.join("suppliers.csv"),
        format!(
            "rut,name,email,region,amount\n{SECRET_RUT},Minera Norte,contacto@mineranorte.cl,norte,1500\n\
             11.111.111-1,Pesquera Arica,ventas@pesquera.cl,norte,700\n{SUR_RUT},Forestal Sur,info@forestal.cl,sur,300\n"
        ),
    )
    .unwrap();
    std::fs::write(
        specs.path().join("suppliers.yaml"),
        r#"name: suppliers
description: Proveedores del ERP
owner: finanzas
source: { format: csv, path: landing/suppliers/*.csv }
silver:
  rules:
    - type_cast: { amount: bigint }
columns:
  rut: { description: "RUT del proveedor", tags: [pii], mask: hash }
  email: { tags: [pii], mask: partial(6) }
gold:
  - name: supplier_totals
    sql: SELECT region, sum(amount) AS total FROM silver.suppliers GROUP BY region
"#,
    )
    .unwrap();
    let out = Command::new(BIN).args(["run", "--all", "--lake"]).arg(lake.path()).arg("--specs").arg(specs.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hash = hash_password(PASSWORD);
    let config = format!(
        r#"users:
  - {{ name: maria, password_hash: "{hash}", roles: [analyst], attributes: {{ region: norte }} }}
  - {{ name: etl, password_hash: "{hash}", roles: [engineer] }}
  - {{ name: audra, password_hash: "{hash}", roles: [auditor] }}
roles:
  analyst:
    read: ["gold.*", "silver.suppliers"]
    row_filters: {{ silver.suppliers: "region = {{{{ user.region }}}}" }}
  engineer: {{ read: ["*"], run: ["*"], landing: ["*"], validate: ["*"], unmask: [pii] }}
  auditor: {{ read: ["workbench.*"], audit: true }}
"#
    );
    let server = Server::start_at(
        lake.path(),
        ServerOptions {
            config_yaml: config,
            args: vec!["--specs".into(), specs.path().display().to_string()],
        },
    );
    Governed {
        server,
        _lake: lake,
        _specs: specs,
    }
}

async fn client(g: &Governed, user: &str) -> tokio_postgres::Client {
    g.server.connect_as(user, Some(PASSWORD)).await.expect("login")
}

/// Every row of `sql` (simple protocol) as `a|b|c`.
async fn simple(client: &tokio_postgres::Client, sql: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(client
        .simple_query(sql)
        .await?
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).unwrap_or("NULL")).collect::<Vec<_>>().join("|")),
            _ => None,
        })
        .collect())
}

async fn denied(client: &tokio_postgres::Client, sql: &str) -> String {
    let err = simple(client, sql).await.expect_err(sql);
    assert_eq!(sqlstate(&err), "42501", "{sql}: {err:?}");
    err.as_db_error().unwrap().message().to_string()
}

fn is_hash(value: &str) -> bool {
    value.len() == 32 && value.chars().all(|c| c.is_ascii_hexdigit())
}

#[tokio::test]
async fn grants_hide_and_refuse_tables() {
    let g = governed();
    let maria = client(&g, "maria").await;
    let message = denied(&maria, "SELECT * FROM bronze.suppliers").await;
    assert!(message.contains("bronze.suppliers"), "{message}");
    denied(&maria, "SELECT count(*) FROM workbench.runs").await;
    // Invisible in every listing.
    let listed = simple(&maria, "SELECT schemaname || '.' || tablename FROM pg_catalog.pg_tables WHERE schemaname IN ('bronze','silver','gold') ORDER BY 1").await.unwrap();
    assert_eq!(listed, vec!["gold.supplier_totals", "silver.suppliers"]);
    let listed = simple(&maria, "SELECT table_schema || '.' || table_name FROM information_schema.tables WHERE table_schema IN ('bronze','silver','gold','workbench') ORDER BY 1").await.unwrap();
    assert_eq!(listed, vec!["gold.supplier_totals", "silver.suppliers"]);
    let columns = simple(&maria, "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'bronze'").await.unwrap();
    assert_eq!(columns, vec!["0"]);
    // A table that does not exist is still "not found".
    let err = simple(&maria, "SELECT * FROM silver.nothing_here").await.unwrap_err();
    assert_eq!(sqlstate(&err), "42P01");

    // Table functions need their own grants.
    assert!(denied(&maria, "SELECT * FROM run('suppliers')").await.contains("run() of dataset suppliers"));
    denied(&maria, "SELECT * FROM preview('suppliers')").await;
    denied(&maria, "SELECT * FROM preview_raw('landing/suppliers/suppliers.csv')").await;
    denied(&maria, "SELECT * FROM validate('silver.suppliers', '- not_null: [rut]')").await;
    denied(&maria, "SELECT * FROM history('bronze.suppliers')").await;
    denied(&maria, "SELECT * FROM table_at('bronze.suppliers', 0)").await;
    denied(&maria, "SELECT * FROM profile('bronze.suppliers')").await;
    denied(&maria, "SELECT * FROM lineage('bronze.suppliers')").await;

    // The auditor reads the metadata and nothing else.
    let audra = client(&g, "audra").await;
    assert_eq!(simple(&audra, "SELECT count(*) > 0 FROM workbench.runs").await.unwrap(), vec!["t"]);
    denied(&audra, "SELECT * FROM gold.supplier_totals").await;

    // The engineer sees everything in clear and may run.
    let etl = client(&g, "etl").await;
    let listed = simple(&etl, "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname IN ('bronze','silver','gold')").await.unwrap();
    assert_eq!(listed, vec!["3"]);
    let ruts = simple(&etl, "SELECT rut FROM silver.suppliers ORDER BY rut").await.unwrap();
    assert!(ruts.contains(&SECRET_RUT.to_string()) && ruts.contains(&SUR_RUT.to_string()), "{ruts:?}");
    // Nothing new landed, so the run skips its steps, but it runs.
    let run = simple(&etl, "SELECT DISTINCT status FROM run('suppliers') WHERE layer = 'silver'").await.unwrap();
    assert_eq!(run, vec!["skipped"]);

    // psql's \dt as maria lists only what she reads.
    let out = Command::new("psql")
        .args(["-X", "-h", "127.0.0.1", "-U", "maria", "-d", "workbench", "-p"])
        .arg(g.server.port().to_string())
        .args(["-c", "\\dt bronze.*", "-c", "\\dt silver.*"])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains("bronze | suppliers"), "{stdout}");
    assert!(stdout.contains("silver | suppliers"), "{stdout}");
}

#[tokio::test]
async fn masks_and_row_filters_hold_on_every_path() {
    let g = governed();
    let maria = client(&g, "maria").await;

    // Plain SELECT: only norte rows, rut hashed, email's tail only.
    let rows = simple(&maria, "SELECT rut, email, region, amount FROM silver.suppliers ORDER BY amount").await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in &rows {
        let cols: Vec<&str> = row.split('|').collect();
        assert!(is_hash(cols[0]), "rut not hashed: {row}");
        assert!(cols[1].starts_with("****") && !cols[1].contains('@'), "email not masked: {row}");
        assert_eq!(cols[2], "norte");
    }
    // Hashes are stable: they join and group.
    let joined = simple(&maria, "SELECT count(*) FROM silver.suppliers a JOIN silver.suppliers b ON a.rut = b.rut").await.unwrap();
    assert_eq!(joined, vec!["2"]);

    let mut leaks = Vec::new();
    let probes = [
        "SELECT * FROM silver.suppliers",
        "SELECT min(rut), max(rut), string_agg(rut, ',') FROM silver.suppliers",
        "WITH s AS (SELECT * FROM silver.suppliers) SELECT * FROM s",
        "SELECT * FROM (SELECT rut, upper(rut) AS u, rut::text AS t FROM silver.suppliers) x",
        "SELECT * FROM silver.suppliers WHERE rut LIKE '76%' OR region = 'sur'",
        "SELECT * FROM silver.suppliers UNION ALL SELECT * FROM silver.suppliers",
        "SELECT * FROM table_at('silver.suppliers', 0)",
        "SELECT * FROM profile('silver.suppliers')",
        "SELECT * FROM validate('silver.suppliers')",
        "SELECT * FROM silver.suppliers s JOIN gold.supplier_totals t ON s.region = t.region",
    ];
    for sql in probes {
        match simple(&maria, sql).await {
            Ok(rows) => {
                let text = rows.join("\n");
                if text.contains(SECRET_RUT) || text.contains(SUR_RUT) || text.contains("@") || text.contains("sur") {
                    leaks.push(format!("{sql} → {text}"));
                }
            }
            Err(err) => {
                let text = format!("{err:?}");
                if text.contains(SECRET_RUT) || text.contains(SUR_RUT) {
                    leaks.push(format!("{sql} → error {text}"));
                }
            }
        }
    }
    // Errors that echo values echo the masked one.
    if let Err(err) = simple(&maria, "SELECT rut::int FROM silver.suppliers").await {
        let text = format!("{err:?}");
        assert!(!text.contains(SECRET_RUT), "cast error leaked: {text}");
    }
    // A filter on the clear value finds nothing: no oracle.
    let found = simple(&maria, &format!("SELECT count(*) FROM silver.suppliers WHERE rut = '{SECRET_RUT}'")).await.unwrap();
    assert_eq!(found, vec!["0"]);
    let found = simple(&maria, "SELECT count(*) FROM silver.suppliers WHERE region = 'sur'").await.unwrap();
    assert_eq!(found, vec!["0"]);
    let total = simple(&maria, "SELECT sum(amount) FROM silver.suppliers").await.unwrap();
    assert_eq!(total, vec!["2200"]);

    // Extended protocol, binary results.
    let rows = maria.query("SELECT rut FROM silver.suppliers WHERE amount > $1", &[&0i64]).await.unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        let rut: String = row.get(0);
        assert!(is_hash(&rut), "{rut}");
    }

    // COPY TO STDOUT.
    use futures::StreamExt;
    let stream = maria.copy_out("COPY (SELECT * FROM silver.suppliers) TO STDOUT").await.unwrap();
    let chunks: Vec<_> = stream.collect().await;
    let copied: String = chunks.into_iter().map(|c| String::from_utf8_lossy(&c.unwrap()).into_owned()).collect();
    assert_eq!(copied.lines().count(), 2, "{copied}");
    if copied.contains(SECRET_RUT) || copied.contains('@') {
        leaks.push(format!("COPY → {copied}"));
    }

    // Cursors.
    let fetched = simple(&maria, "BEGIN; DECLARE c CURSOR FOR SELECT rut, email FROM silver.suppliers; FETCH 10 FROM c; CLOSE c; COMMIT").await.unwrap();
    assert_eq!(fetched.len(), 2, "{fetched:?}");
    if fetched.iter().any(|r| r.contains(SECRET_RUT) || r.contains('@')) {
        leaks.push(format!("cursor → {fetched:?}"));
    }
    assert!(leaks.is_empty(), "masked or filtered values came out:\n{}", leaks.join("\n"));

    // The engineer unmasks pii and has no row filter.
    let etl = client(&g, "etl").await;
    let rows = simple(&etl, "SELECT count(*), max(email) FROM silver.suppliers").await.unwrap();
    assert_eq!(rows, vec!["3|ventas@pesquera.cl"]);
    let raw = simple(&etl, "SELECT count(*) FROM preview_raw('landing/suppliers/suppliers.csv')").await.unwrap();
    assert_eq!(raw, vec!["3"]);
}

#[tokio::test]
async fn psycopg2_sees_the_same_masked_view() {
    let g = governed();
    let script = format!(
        r#"
import psycopg2, re, sys
conn = psycopg2.connect(host="127.0.0.1", port={port}, user="maria", password="{PASSWORD}", dbname="workbench")
cur = conn.cursor()
cur.execute("SELECT rut, email, region FROM silver.suppliers WHERE amount > %s ORDER BY amount", (0,))
rows = cur.fetchall()
assert len(rows) == 2, rows
for rut, email, region in rows:
    assert re.fullmatch(r"[0-9a-f]{{32}}", rut), rut
    assert "@" not in email and region == "norte", (email, region)
named = conn.cursor(name="server_side")
named.execute("SELECT rut FROM silver.suppliers")
assert all("{SECRET_RUT}" not in r[0] for r in named.fetchall())
conn.rollback()
try:
    cur.execute("SELECT * FROM bronze.suppliers")
    sys.exit("bronze.suppliers was readable")
except psycopg2.Error as e:
    assert e.pgcode == "42501", e.pgcode
    assert "bronze.suppliers" in str(e), str(e)
print("all checks passed")
"#,
        port = g.server.port()
    );
    let out = Command::new("python3").args(["-c", &script]).output().unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("all checks passed"),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `sql` as `client` until it returns a row (audit records are
/// written in the background), for up to ten seconds.
async fn eventually(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    for _ in 0..100 {
        let rows = simple(client, sql).await.unwrap();
        if !rows.is_empty() {
            return rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no audit record for: {sql}");
}

#[tokio::test]
async fn every_statement_and_failed_login_is_audited() {
    let g = governed();
    let maria = client(&g, "maria").await;
    simple(&maria, "SELECT rut FROM silver.suppliers").await.unwrap();
    denied(&maria, "SELECT * FROM bronze.suppliers /* simple */").await;
    // Extended protocol: refused at Parse, and a query with a bound value
    // (the statement text keeps $1, not the value).
    let err = maria.query("SELECT * FROM bronze.suppliers WHERE amount > $1", &[&1i64]).await.unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    let rows = maria.query("SELECT amount FROM silver.suppliers WHERE amount > $1", &[&800i64]).await.unwrap();
    assert_eq!(rows.len(), 1);
    // A wrong password.
    assert!(g.server.connect_as("maria", Some("not the password")).await.is_err());

    let audra = client(&g, "audra").await;
    let select = eventually(
        &audra,
        "SELECT roles, client_addr, tables_read, rows_returned, sqlstate FROM workbench.audit \
         WHERE user_name = 'maria' AND statement = 'SELECT rut FROM silver.suppliers'",
    )
    .await;
    assert_eq!(select, vec!["analyst|127.0.0.1|silver.suppliers|2|00000"]);
    let refused = eventually(
        &audra,
        "SELECT sqlstate, rows_returned FROM workbench.audit WHERE user_name = 'maria' AND statement LIKE '%simple%'",
    )
    .await;
    assert_eq!(refused, vec!["42501|0"]);
    let refused = eventually(
        &audra,
        "SELECT sqlstate FROM workbench.audit WHERE user_name = 'maria' AND statement LIKE '%bronze.suppliers WHERE amount > $1%'",
    )
    .await;
    assert_eq!(refused, vec!["42501"]);
    let bound = eventually(
        &audra,
        "SELECT statement, rows_returned, sqlstate FROM workbench.audit WHERE user_name = 'maria' AND statement LIKE 'SELECT amount%'",
    )
    .await;
    assert_eq!(bound.len(), 1, "{bound:?}");
    assert!(bound[0].contains("$1") && !bound[0].contains("800") && bound[0].ends_with("|1|00000"), "{bound:?}");
    let failed = eventually(
        &audra,
        "SELECT client_addr, sqlstate FROM workbench.audit WHERE user_name = 'maria' AND kind = 'login_failed'",
    )
    .await;
    assert_eq!(failed, vec!["127.0.0.1|28P01"]);
    // Analysts do not read the audit trail.
    denied(&maria, "SELECT * FROM workbench.audit").await;
}
