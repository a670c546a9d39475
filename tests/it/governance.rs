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
    /// The users and roles of the config.
    config: String,
}

impl Governed {
    /// Another server on the same lake, specs and users, with more config.
    fn another(&self, extra: &str) -> Server {
        Server::start_at(
            self._lake.path(),
            ServerOptions {
                config_yaml: format!("{}{extra}", self.config),
                args: vec!["--specs".into(), self._specs.path().display().to_string()],
            ..Default::default()
        },
        )
    }
}

const PASSWORD: &str = "salar de atacama";

fn governed() -> Governed {
    governed_with(|_| String::new())
}

/// The governed server, with more config from `extra(lake)` (written into
/// the lake before the server starts).
fn governed_with(extra: impl FnOnce(&std::path::Path) -> String) -> Governed {
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
            config_yaml: config.clone() + &extra(lake.path()),
            args: vec!["--specs".into(), specs.path().display().to_string()],
            ..Default::default()
        },
    );
    Governed {
        server,
        _lake: lake,
        _specs: specs,
        config,
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
    // Errors as an oracle: a predicate that fails on a hidden row or on the
    // clear value must never run on them.
    let oracles = [
        "SELECT count(*) FROM silver.suppliers WHERE 1 / (CASE WHEN region = 'sur' THEN 0 ELSE 1 END) = 1",
        "SELECT count(*) FROM silver.suppliers WHERE amount / (CASE WHEN region = 'sur' THEN 0 ELSE 1 END) > 0 AND region <> 'x'",
        // Only the hidden row has amount 300; a cheaper column than the filter's.
        "SELECT count(*) FROM silver.suppliers WHERE 1 / (CASE WHEN amount = 300 THEN 0 ELSE 1 END) = 1",
        "SELECT count(*) FROM silver.suppliers WHERE 1 / (amount - 300) <> 7",
        "SELECT count(*) FROM (SELECT * FROM silver.suppliers) s WHERE 1 / (CASE WHEN region = 'sur' THEN 0 ELSE 1 END) = 1",
        "SELECT count(*) FROM silver.suppliers s JOIN silver.suppliers t ON s.name = t.name WHERE 1 / (CASE WHEN s.region = 'sur' THEN 0 ELSE 1 END) = 1",
        "SELECT count(*) FROM silver.suppliers s WHERE EXISTS (SELECT 1 FROM silver.suppliers t WHERE t.name = s.name AND 1 / (CASE WHEN t.region = 'sur' THEN 0 ELSE 1 END) = 1)",
        "SELECT count(*) FROM silver.suppliers WHERE 1 / (CASE WHEN rut = '76.543.210-K' THEN 0 ELSE 1 END) = 1",
        "SELECT count(*) FROM silver.suppliers WHERE 1 / (CASE WHEN email LIKE 'contacto@%' THEN 0 ELSE 1 END) = 1",
    ];
    for sql in oracles {
        match simple(&maria, sql).await {
            Ok(rows) => assert_eq!(rows, vec!["2"], "{sql}"),
            Err(err) => leaks.push(format!("{sql} → error (a hidden value decided it): {err:?}")),
        }
    }
    // Join keys and TopK orderings computed from the row: the runtime filters
    // a join or a TopK pushes down reach inside the seal only over plain columns.
    let runtime = [
        ("SELECT count(*) FROM gold.supplier_totals t JOIN silver.suppliers s ON t.total = CAST(CASE WHEN s.region = 'sur' THEN 'x' ELSE '1' END AS bigint)", "0"),
        ("SELECT count(*) FROM (SELECT name FROM silver.suppliers ORDER BY 1 / (CASE WHEN region = 'sur' THEN 0 ELSE 1 END), name LIMIT 1) x", "1"),
        ("SELECT count(*) FROM silver.suppliers s JOIN gold.supplier_totals t ON s.region = t.region", "2"),
    ];
    for (sql, expected) in runtime {
        match simple(&maria, sql).await {
            Ok(rows) => assert_eq!(rows, vec![expected], "{sql}"),
            Err(err) => leaks.push(format!("{sql} → error (a hidden value decided it): {err:?}")),
        }
    }
    // ... and the plain-column one does reach the scan inside the seal.
    let plan = simple(&maria, "EXPLAIN SELECT s.name FROM gold.supplier_totals t JOIN silver.suppliers s ON t.region = s.region").await.unwrap().join("\n");
    let sealed = plan.split("RowFilterBarrier").nth(1).unwrap_or_default();
    assert!(sealed.contains("DynamicFilter"), "the join's runtime filter stopped at the seal:\n{plan}");
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

/// A role that reads every silver table, previews landing files and
/// validates, without unmask and with a row filter on the dataset: its
/// quarantine table, `history`, `preview` and `validate`'s samples are
/// filtered and masked like the silver table itself.
#[tokio::test]
async fn quarantine_history_preview_and_samples_stay_governed() {
    let lake = tempfile::TempDir::new().unwrap();
    let specs = tempfile::TempDir::new().unwrap();
    let landing = lake.path().join("landing/payments");
    std::fs::create_dir_all(&landing).unwrap();
    // Negative amounts are quarantined: one norte row, one (hidden) sur row.
    std::fs::write(
        landing.join("payments.csv"),
        format!("rut,region,amount\n{SECRET_RUT},norte,-5\n11.111.111-1,norte,700\n{SUR_RUT},sur,-9\n22.222.222-2,sur,100\n"),
    )
    .unwrap();
    std::fs::write(
        specs.path().join("payments.yaml"),
        "name: payments\nsource: { format: csv, path: landing/payments/*.csv }\nsilver:\n  rules:\n    - type_cast: { amount: bigint }\n  expectations:\n    - between: { column: amount, min: 0, max: 100000 }\n      on_fail: quarantine\ncolumns:\n  rut: { tags: [pii], mask: hash }\n",
    )
    .unwrap();
    let out = Command::new(BIN).args(["run", "--all", "--lake"]).arg(lake.path()).arg("--specs").arg(specs.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hash = hash_password(PASSWORD);
    let server = Server::start_at(
        lake.path(),
        ServerOptions {
            config_yaml: format!(
                r#"users:
  - {{ name: rosa, password_hash: "{hash}", roles: [reviewer], attributes: {{ region: norte }} }}
  - {{ name: etl, password_hash: "{hash}", roles: [engineer] }}
roles:
  reviewer:
    read: ["silver.*"]
    landing: ["*"]
    validate: ["*"]
    row_filters: {{ silver.payments: "region = {{{{ user.region }}}}" }}
  engineer: {{ read: ["*"], run: ["*"], landing: ["*"], validate: ["*"], unmask: [pii] }}
"#
            ),
            args: vec!["--specs".into(), specs.path().display().to_string()],
            ..Default::default()
        },
    );
    let rosa = server.connect_as("rosa", Some(PASSWORD)).await.expect("login");
    let etl = server.connect_as("etl", Some(PASSWORD)).await.expect("login");
    // A clear rut anywhere, or a value of the hidden row as a whole field.
    let clear = |text: &str| {
        text.contains(SECRET_RUT)
            || text.contains(SUR_RUT)
            || text.split(['|', '\t', '\n', ' ', '(', ')', '"', ',', '[', ']']).any(|field| field == "sur" || field == "-9")
    };

    // The engineer sees both quarantined rows in clear; rosa only the norte one, hashed.
    let all = simple(&etl, "SELECT rut, region, amount FROM silver.payments__quarantine ORDER BY amount").await.unwrap();
    assert_eq!(all, vec![format!("{SUR_RUT}|sur|-9"), format!("{SECRET_RUT}|norte|-5")]);
    let seen = simple(&rosa, "SELECT rut, region, amount, _failed_expectations FROM silver.payments__quarantine").await.unwrap();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let cols: Vec<&str> = seen[0].split('|').collect();
    assert!(is_hash(cols[0]) && cols[1] == "norte" && cols[2] == "-5", "{seen:?}");
    // The hash is the same in the quarantine table and in silver: they join.
    let silver_hashes = simple(&rosa, "SELECT rut FROM silver.payments").await.unwrap();
    assert_eq!(silver_hashes.len(), 1, "{silver_hashes:?}");
    let joined = simple(&rosa, "SELECT count(*) FROM silver.payments__quarantine q JOIN silver.payments__quarantine r ON q.rut = r.rut").await.unwrap();
    assert_eq!(joined, vec!["1"]);
    let oracle = simple(&rosa, "SELECT count(*) FROM silver.payments__quarantine WHERE 1 / (CASE WHEN region = 'sur' THEN 0 ELSE 1 END) = 1").await;
    assert_eq!(oracle.unwrap(), vec!["1"], "a hidden quarantined row decided the query");

    // history: commits are listed, but row counts (which count hidden rows) are not.
    let history = simple(&rosa, "SELECT version, rows_added IS NULL FROM history('silver.payments') ORDER BY version").await.unwrap();
    assert!(!history.is_empty() && history.iter().all(|r| r.ends_with("|t")), "{history:?}");
    let history = simple(&etl, "SELECT rows_added FROM history('silver.payments') ORDER BY version DESC LIMIT 1").await.unwrap();
    assert_eq!(history, vec!["2"]);

    let mut leaks = Vec::new();
    let probes = [
        // preview of the landing file: the tidy rows as silver would show them.
        "SELECT * FROM preview('payments')".to_string(),
        "SELECT * FROM preview('payments', 'landing/payments/payments.csv')".to_string(),
        // validate's samples of failing values.
        format!(
            "SELECT expectation, unexpected_count, partial_unexpected_list FROM validate('silver.payments', '{}')",
            "- regex: { column: rut, pattern: \"^X\" }\n- accepted_values: { column: region, values: [x] }\n- expression: \"amount > 1000\""
        ),
        format!(
            "SELECT expectation, partial_unexpected_list FROM validate('silver.payments__quarantine', '{}')",
            "- regex: { column: rut, pattern: \"^X\" }\n- accepted_values: { column: region, values: [x] }"
        ),
        "SELECT * FROM profile('silver.payments__quarantine')".to_string(),
        "SELECT * FROM table_at('silver.payments__quarantine', 0)".to_string(),
    ];
    for sql in &probes {
        match simple(&rosa, sql).await {
            Ok(rows) if clear(&rows.join("\n")) => leaks.push(format!("{sql} → {}", rows.join("\n"))),
            Ok(rows) => assert!(!rows.is_empty(), "{sql} returned nothing"),
            Err(err) => leaks.push(format!("{sql} → error {err:?}")),
        }
    }
    use futures::StreamExt;
    let stream = rosa.copy_out("COPY silver.payments__quarantine TO STDOUT").await.unwrap();
    let copied: String = stream.collect::<Vec<_>>().await.into_iter().map(|c| String::from_utf8_lossy(&c.unwrap()).into_owned()).collect();
    assert_eq!(copied.lines().count(), 1, "{copied}");
    if clear(&copied) {
        leaks.push(format!("COPY → {copied}"));
    }
    assert!(leaks.is_empty(), "masked or filtered values came out:\n{}", leaks.join("\n"));
    // validate counts only the rows rosa may see.
    let counted = simple(&rosa, "SELECT element_count, unexpected_count FROM validate('silver.payments', '- accepted_values: { column: region, values: [x] }')").await.unwrap();
    assert_eq!(counted, vec!["1|1"]);
    // preview shows the norte rows only, rut hashed.
    let preview = simple(&rosa, "SELECT rut, region FROM preview('payments')").await.unwrap();
    assert_eq!(preview.len(), 2, "{preview:?}");
    assert!(preview.iter().all(|r| is_hash(r.split('|').next().unwrap()) && r.ends_with("|norte")), "{preview:?}");
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

/// `audit.retention` deletes records older than it when the server starts
/// (then hourly), keeps the rest, and leaves a `pruned` record saying so.
#[tokio::test]
async fn audit_retention_prunes_old_records() {
    let g = governed();
    let maria = client(&g, "maria").await;
    for sql in ["SELECT count(*) FROM silver.suppliers", "SELECT max(amount) FROM silver.suppliers"] {
        simple(&maria, sql).await.unwrap();
    }
    let audra = client(&g, "audra").await;
    eventually(&audra, "SELECT 1 FROM workbench.audit WHERE statement = 'SELECT max(amount) FROM silver.suppliers'").await;
    // Two years pass for the first statement's record.
    let db = g._lake.path().join("_workbench/metadata.db");
    let aged = Command::new("python3")
        .args(["-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); n = c.execute(\"UPDATE audit SET at = '2024-01-02T03:04:05+00:00' WHERE statement = 'SELECT count(*) FROM silver.suppliers'\").rowcount; c.commit(); print(n)"])
        .arg(&db)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&aged.stdout).trim(), "1", "{}", String::from_utf8_lossy(&aged.stderr));

    let pruning = g.another("audit: { retention: 400d }\n");
    let audra = pruning.connect_as("audra", Some(PASSWORD)).await.expect("login");
    let pruned = eventually(&audra, "SELECT user_name, rows_returned, statement FROM workbench.audit WHERE kind = 'pruned'").await;
    assert_eq!(pruned.len(), 1, "{pruned:?}");
    assert!(pruned[0].starts_with("workbench|1|1 audit record(s) older than") && pruned[0].ends_with("(audit.retention 400d)"), "{pruned:?}");
    let left = simple(&audra, "SELECT statement FROM workbench.audit WHERE user_name = 'maria' ORDER BY id").await.unwrap();
    assert_eq!(left, vec!["SELECT max(amount) FROM silver.suppliers"]);

    // A retention without a unit, or shorter than the pruning interval, is refused at start.
    for bad in ["400", "10m"] {
        let lake = tempfile::TempDir::new().unwrap();
        std::fs::write(lake.path().join("bad.yaml"), format!("audit: {{ retention: {bad} }}\n")).unwrap();
        let out = Command::new(BIN).args(["check", "--config"]).arg(lake.path().join("bad.yaml")).arg("--lake").arg(lake.path()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("audit.retention"), "{bad}: {stderr}");
    }
}

#[tokio::test]
async fn privilege_functions_and_views_tell_the_truth() {
    let g = governed();
    let maria = client(&g, "maria").await;
    let ask = |sql: &'static str| {
        let maria = &maria;
        async move { simple(maria, sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}")).join(",") }
    };
    assert_eq!(
        ask("SELECT has_table_privilege('silver.suppliers', 'SELECT'), has_table_privilege('bronze.suppliers', 'SELECT'), \
             has_table_privilege('silver.suppliers', 'INSERT'), has_table_privilege('silver.suppliers', 'select, update'), \
             has_table_privilege('silver.suppliers', 'SELECT WITH GRANT OPTION')").await,
        "t|f|f|t|f"
    );
    // Asked about another user, and by oid as catalog browsers do.
    assert_eq!(
        ask("SELECT has_table_privilege('etl', 'bronze.suppliers', 'SELECT'), has_table_privilege('audra', 'silver.suppliers', 'SELECT')").await,
        "t|f"
    );
    assert_eq!(
        ask("SELECT c.relname, has_table_privilege(c.oid, 'SELECT'), has_any_column_privilege(c.oid, 'SELECT') FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'silver' ORDER BY 1").await,
        "suppliers|t|t"
    );
    assert_eq!(
        ask("SELECT has_schema_privilege('gold', 'USAGE'), has_schema_privilege('silver', 'USAGE'), has_schema_privilege('bronze', 'USAGE'), \
             has_schema_privilege('workbench', 'USAGE'), has_schema_privilege('gold', 'CREATE')").await,
        "t|t|f|f|f"
    );
    assert_eq!(
        ask("SELECT string_agg(nspname, ' ' ORDER BY nspname) FROM pg_catalog.pg_namespace \
             WHERE nspname IN ('bronze','silver','gold','workbench') AND has_schema_privilege(oid, 'USAGE')").await,
        "gold silver"
    );
    let err = simple(&maria, "SELECT has_table_privilege('silver.suppliers', 'READ')").await.unwrap_err();
    assert!(err.as_db_error().is_some_and(|e| e.message().contains("unrecognized privilege type")), "{err:?}");
    assert_eq!(
        ask("SELECT grantee, table_schema, table_name, privilege_type FROM information_schema.table_privileges \
             WHERE table_schema IN ('bronze','silver','gold','workbench') ORDER BY 2, 3").await,
        "maria|gold|supplier_totals|SELECT,maria|silver|suppliers|SELECT"
    );
    let audra = client(&g, "audra").await;
    let audit = simple(&audra, "SELECT has_table_privilege('workbench.audit', 'SELECT'), has_schema_privilege('workbench', 'USAGE')").await.unwrap();
    assert_eq!(audit, vec!["t|t"]);

    // psql \dp lists what maria may read, and the grant.
    let out = Command::new("psql")
        .args(["-X", "-h", "127.0.0.1", "-U", "maria", "-d", "workbench", "-p"])
        .arg(g.server.port().to_string())
        .args(["-c", "\\dp silver.*"])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("suppliers") && stdout.contains("maria=r/workbench"), "{stdout}");
}

/// pgjdbc as `user`: the lines GovernanceCheck.java prints.
fn pgjdbc_as(g: &Governed, user: &str) -> Vec<String> {
    let jar = std::env::var("WORKBENCH_PGJDBC_JAR").unwrap_or_else(|_| "/usr/share/java/postgresql.jar".into());
    let out = Command::new("java")
        .args(["-cp", &jar, "GovernanceCheck.java", user, PASSWORD, &g.server.port().to_string()])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients"))
        .output()
        .expect("java");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && stdout.contains("all checks passed"), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout.lines().map(str::to_string).collect()
}

#[tokio::test]
async fn pgjdbc_as_analyst_and_engineer() {
    let g = governed();
    let maria = pgjdbc_as(&g, "maria");
    let tables: Vec<&String> = maria.iter().filter(|l| l.starts_with("table ")).collect();
    assert_eq!(
        tables,
        vec!["table gold.supplier_totals remarks=owner: finanzas", "table silver.suppliers remarks=Proveedores del ERP (owner: finanzas)"],
        "{maria:?}"
    );
    assert!(maria.contains(&"column rut remarks=RUT del proveedor (tags: pii)".to_string()), "{maria:?}");
    assert!(maria.contains(&"column email remarks=tags: pii".to_string()), "{maria:?}");
    // Both passes (text, then server-prepared binary) masked and filtered.
    let rows: Vec<&String> = maria.iter().filter(|l| l.starts_with("row ")).collect();
    assert_eq!(rows.len(), 4, "{maria:?}");
    for row in &rows {
        let fields: Vec<&str> = row.splitn(3, ' ').nth(2).unwrap().split('|').collect();
        assert!(is_hash(fields[0]), "{row}");
        assert!(fields[1].starts_with('*') && !fields[1].contains("contacto"), "{row}");
        assert_eq!(fields[2], "norte", "{row}");
    }
    assert!(maria.iter().any(|l| l.starts_with("bronze refused 42501") && l.contains("bronze.suppliers")), "{maria:?}");

    let etl = pgjdbc_as(&g, "etl");
    assert_eq!(etl.iter().filter(|l| l.starts_with("table ")).count(), 3, "{etl:?}");
    assert!(etl.iter().any(|l| l.starts_with("row 1 ") && l.contains(SECRET_RUT)), "{etl:?}");
    assert!(etl.iter().any(|l| l.contains(SUR_RUT)), "{etl:?}");
    assert!(etl.contains(&"bronze readable".to_string()), "{etl:?}");
}

#[tokio::test]
async fn descriptions_reach_psql_sqlalchemy_and_search() {
    let g = governed();
    let psql = |user: &str, command: &str| {
        let out = Command::new("psql")
            .args(["-X", "-h", "127.0.0.1", "-U", user, "-d", "workbench", "-p"])
            .arg(g.server.port().to_string())
            .args(["-c", command])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap();
        assert!(out.status.success(), "{command}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let tables = psql("maria", "\\dt+ silver.*");
    assert!(tables.contains("Proveedores del ERP (owner: finanzas)"), "{tables}");
    let sizes = psql("maria", "SELECT pg_size_pretty(1024::bigint), pg_size_pretty(123456789::bigint), 'pg_class'::regclass = 'pg_catalog.pg_class'::regclass");
    assert!(sizes.contains("1024 bytes") && sizes.contains("118 MB") && sizes.contains("| t"), "{sizes}");
    let columns = psql("maria", "\\d+ silver.suppliers");
    assert!(columns.contains("RUT del proveedor (tags: pii)"), "{columns}");

    let maria = client(&g, "maria").await;
    let described = simple(
        &maria,
        "SELECT obj_description(c.oid, 'pg_class'), col_description(c.oid, 1) FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'silver' AND c.relname = 'suppliers'",
    )
    .await
    .unwrap();
    assert_eq!(described, vec!["Proveedores del ERP (owner: finanzas)|RUT del proveedor (tags: pii)"]);

    // SQLAlchemy's inspector (what Superset's dataset editor reads).
    let script = format!(
        "import sqlalchemy as sa\n\
         e = sa.create_engine('postgresql+psycopg2://maria:{PASSWORD}@127.0.0.1:{}/workbench')\n\
         i = sa.inspect(e)\n\
         print('table', i.get_table_comment('suppliers', schema='silver')['text'])\n\
         for c in i.get_columns('suppliers', schema='silver'):\n    print('column', c['name'], c.get('comment'))\n",
        g.server.port()
    );
    let out = Command::new("python3").args(["-c", &script]).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains("table Proveedores del ERP (owner: finanzas)"), "{report}");
    assert!(report.contains("column rut RUT del proveedor (tags: pii)"), "{report}");
    assert!(report.contains("column name None"), "{report}");

    // search() finds by description, tag and name, only among readable tables.
    let found = simple(&maria, "SELECT kind, table_name, coalesce(column_name, '-'), matched FROM search('pii') ORDER BY 2, 3").await.unwrap();
    assert_eq!(found, vec!["column|silver.suppliers|email|tags", "column|silver.suppliers|rut|tags"]);
    let found = simple(&maria, "SELECT table_name, coalesce(column_name, '-') FROM search('PROVEEDOR') ORDER BY 1, 2").await.unwrap();
    assert_eq!(found, vec!["silver.suppliers|-", "silver.suppliers|rut"]);
    let etl = client(&g, "etl").await;
    let found = simple(&etl, "SELECT DISTINCT table_name FROM search('rut') ORDER BY 1").await.unwrap();
    assert_eq!(found, vec!["bronze.suppliers", "silver.suppliers"]);
    let found = simple(&etl, "SELECT count(*) FROM search('finanzas')").await.unwrap();
    assert_eq!(found, vec!["3"], "bronze, silver and gold tables of the dataset owned by finanzas");
    let err = simple(&etl, "SELECT * FROM search('  ')").await.unwrap_err();
    assert!(err.as_db_error().is_some_and(|e| e.message().contains("empty")), "{err:?}");
}

// --- TLS -------------------------------------------------------------------

/// A CA and a server certificate for `localhost` and 127.0.0.1 signed by it,
/// made with openssl in `<lake>/certs`. Returns the CA file.
fn make_certificates(lake: &std::path::Path) -> std::path::PathBuf {
    let dir = lake.join("certs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    for args in [
        [&["req", "-x509"][..], &ec, &["-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=Workbench test CA"]].concat(),
        [&["req"][..], &ec, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"]].concat(),
        vec![
            "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out",
            "server.crt", "-days", "2", "-extfile", "server.ext",
        ],
    ] {
        let out = Command::new("openssl").args(&args).current_dir(&dir).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    dir.join("ca.crt")
}

/// psql as `user` with a libpq connection string's TLS settings.
fn psql_tls(g: &Governed, user: &str, ssl: &str, sql: &str) -> std::process::Output {
    Command::new("psql")
        .arg("-X")
        .arg(format!("host=localhost port={} dbname=workbench user={user} {ssl}", g.server.port()))
        .args(["-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLCERT", "/nonexistent")
        .output()
        .expect("psql")
}

fn tls_server(mode: &str) -> (Governed, std::path::PathBuf) {
    let mut ca = None;
    let g = governed_with(|lake| {
        ca = Some(make_certificates(lake));
        // Relative paths: resolved against the config file's directory.
        format!("tls: {{ cert: certs/server.crt, key: certs/server.key, mode: {mode} }}\n")
    });
    (g, ca.unwrap())
}

#[tokio::test]
async fn tls_required_verify_full_for_psql_psycopg_asyncpg_pgjdbc() {
    let (g, ca) = tls_server("required");
    let ca_arg = format!("sslrootcert={}", ca.display());

    let ok = psql_tls(&g, "etl", &format!("sslmode=verify-full {ca_arg}"), "SELECT count(*) FROM silver.suppliers");
    assert!(ok.status.success(), "psql verify-full: {}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "3");
    let info = psql_tls(&g, "etl", &format!("sslmode=verify-full {ca_arg}"), "\\conninfo");
    let info_text = String::from_utf8_lossy(&info.stdout);
    assert!(info_text.contains("SSL connection (protocol: TLSv1."), "{info_text}");

    // Plaintext is refused with a message that says what to do.
    let plain = psql_tls(&g, "etl", "sslmode=disable", "SELECT 1");
    assert!(!plain.status.success());
    let err = String::from_utf8_lossy(&plain.stderr);
    assert!(err.contains("accepts only TLS") && err.contains("sslmode=require"), "{err}");
    // A client that does not trust the CA stops before sending anything.
    let untrusted = psql_tls(&g, "etl", "sslmode=verify-full sslrootcert=/etc/ssl/certs/ca-certificates.crt", "SELECT 1");
    assert!(!untrusted.status.success());
    assert!(String::from_utf8_lossy(&untrusted.stderr).contains("certificate verify failed"));
    // Under TLS the password and the grants work as before.
    let refused = psql_tls(&g, "maria", &format!("sslmode=verify-full {ca_arg}"), "SELECT * FROM bronze.suppliers");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("permission denied"), "{refused:?}");
    let wrong = Command::new("psql")
        .arg("-X")
        .arg(format!("host=localhost port={} dbname=workbench user=etl sslmode=verify-full {ca_arg}", g.server.port()))
        .args(["-c", "SELECT 1"])
        .env("PGPASSWORD", "not the password")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("password authentication failed"));

    let python = Command::new("python3")
        .arg("tls_check.py")
        .arg(&ca)
        .args(["etl", PASSWORD, &g.server.port().to_string()])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients"))
        .output()
        .expect("python3");
    let report = String::from_utf8_lossy(&python.stdout);
    assert!(python.status.success() && report.contains("all checks passed"), "{report}\n{}", String::from_utf8_lossy(&python.stderr));

    let jar = std::env::var("WORKBENCH_PGJDBC_JAR").unwrap_or_else(|_| "/usr/share/java/postgresql.jar".into());
    let java = Command::new("java")
        .args(["-cp", &jar, "TlsCheck.java"])
        .arg(&ca)
        .args(["etl", PASSWORD, &g.server.port().to_string()])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients"))
        .output()
        .expect("java");
    let report = String::from_utf8_lossy(&java.stdout);
    assert!(java.status.success() && report.contains("all checks passed"), "{report}\n{}", String::from_utf8_lossy(&java.stderr));

    // Neither the key nor the password reached the log.
    let log = g.server.log_text();
    let key = std::fs::read_to_string(g.server.lake().join("certs/server.key")).unwrap();
    let key_body = key.lines().nth(1).unwrap();
    assert!(!log.contains(key_body) && !log.contains(PASSWORD), "{log}");
}

#[tokio::test]
async fn tls_optional_serves_both_and_beyond_loopback_needs_tls() {
    let (g, ca) = tls_server("optional");
    for ssl in ["sslmode=disable".to_string(), format!("sslmode=verify-full sslrootcert={}", ca.display())] {
        let out = psql_tls(&g, "etl", &ssl, "SELECT count(*) FROM silver.suppliers");
        assert!(out.status.success(), "{ssl}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3", "{ssl}");
    }
    let plain_info = psql_tls(&g, "etl", "sslmode=disable", "\\conninfo");
    assert!(!String::from_utf8_lossy(&plain_info.stdout).contains("SSL connection"));

    // A non-loopback address without TLS is refused at startup, naming the fix.
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("workbench.yaml");
    std::fs::write(&config, format!("users:\n  - {{ name: etl, password_hash: \"{}\" }}\n", hash_password(PASSWORD))).unwrap();
    // `serve` with `listen` flags on this config: it must refuse to start.
    let refused = |listen: &[&str]| {
        let out = Command::new(BIN).arg("serve").args(listen).arg("--lake").arg(dir.path()).arg("--config").arg(&config).output().unwrap();
        assert!(!out.status.success(), "{listen:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused(&["--listen", "0.0.0.0:0"]);
    assert!(err.contains("tls:") && err.contains("allow_plaintext"), "{err}");
    // So is an HTTP API beyond loopback without TLS.
    let err = refused(&["--listen", "127.0.0.1:0", "--http-listen", "0.0.0.0:0"]);
    assert!(err.contains("http_listen") && err.contains("tls:") && err.contains("allow_plaintext"), "{err}");
    // A bad certificate path is a startup error that names the file.
    std::fs::write(&config, "tls: { cert: missing.crt, key: missing.key }\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--lake"])
        .arg(dir.path())
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls.cert") && err.contains("missing.crt"), "{err}");
}

/// curl against the HTTP API with `args`; returns (succeeded, stdout, stderr).
fn curl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("curl").args(["-sS", "--max-time", "10"]).args(args).output().expect("curl");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn the_http_api_speaks_https_with_the_wire_certificate() {
    let (g, ca) = tls_server("required");
    let port = g.server.http.expect("the HTTP API listens").port();
    let ca = ca.display().to_string();
    let base = format!("https://localhost:{port}");

    let (ok, body, err) = curl(&["--cacert", &ca, &format!("{base}/health")]);
    assert!(ok && body.contains("\"status\":\"ok\""), "{body}{err}");
    // Plain HTTP on the same port gets no answer; an untrusting client stops at the handshake.
    let (ok, body, _) = curl(&[&format!("http://127.0.0.1:{port}/health")]);
    assert!(!ok && body.is_empty(), "plaintext answered: {body}");
    let (ok, _, err) = curl(&["--cacert", "/etc/ssl/certs/ca-certificates.crt", &format!("{base}/health")]);
    assert!(!ok && err.to_lowercase().contains("certificate"), "{err}");

    // Users and grants as on the wire: Basic auth over TLS.
    let (ok, body, err) = curl(&["--cacert", &ca, "-u", &format!("etl:{PASSWORD}"), &format!("{base}/api/datasets/suppliers/preview?limit=5")]);
    assert!(ok && body.contains("\"rows\""), "{body}{err}");
    let (_, code, _) = curl(&["--cacert", &ca, "-o", "/dev/null", "-w", "%{http_code}", "-u", "etl:wrong", &format!("{base}/api/runs")]);
    assert_eq!(code, "401");

    // The console's session cookie is only ever sent back over TLS.
    let (ok, headers, err) = curl(&["--cacert", &ca, "-D", "-", "-o", "/dev/null", "-d", "user=etl", "-d", &format!("password={PASSWORD}"), &format!("{base}/login")]);
    let cookie = headers.lines().find(|l| l.to_lowercase().starts_with("set-cookie:")).unwrap_or_default();
    assert!(ok && cookie.contains("wb_session=") && cookie.contains("; Secure") && cookie.contains("HttpOnly"), "{headers}{err}");
}

/// A row filter's `{{ user.<attribute> }}` and `{{ user.name }}` are bound
/// as values (the same attribute twice is the same value); a template that
/// names something else, or is not SQL, is refused when the config is
/// checked, saying which role and table.
#[tokio::test]
async fn row_filter_templates_bind_user_values_or_are_refused() {
    let g = governed();
    let hash = hash_password(PASSWORD);
    let roles = |filter: &str| {
        format!(
            r#"users:
  - {{ name: maria, password_hash: "{hash}", roles: [analyst], attributes: {{ region: norte }} }}
  - {{ name: "Forestal Sur", password_hash: "{hash}", roles: [analyst], attributes: {{ region: norte }} }}
roles:
  analyst:
    read: ["silver.suppliers"]
    row_filters: {{ silver.suppliers: "{filter}" }}
"#
        )
    };
    let filter = "region = {{ user.region }} OR name = {{user.name}} OR region || '' = {{ user.region }}";
    let server = Server::start_at(
        g._lake.path(),
        ServerOptions {
            config_yaml: roles(filter),
            args: vec!["--specs".into(), g._specs.path().display().to_string()],
            ..Default::default()
        },
    );
    let sql = "SELECT name FROM silver.suppliers ORDER BY name";
    let maria = server.connect_as("maria", Some(PASSWORD)).await.expect("login");
    assert_eq!(simple(&maria, sql).await.unwrap(), vec!["Minera Norte", "Pesquera Arica"]);
    let forestal = server.connect_as("Forestal Sur", Some(PASSWORD)).await.expect("login");
    assert_eq!(simple(&forestal, sql).await.unwrap(), vec!["Forestal Sur", "Minera Norte", "Pesquera Arica"]);

    for (filter, says) in [
        ("region = {{ region }}", "must be {{ user.name }} or {{ user.<attribute> }}"),
        ("region = {{ user.region", "without a closing"),
        ("region = = 1", "row filter"),
    ] {
        let dir = tempfile::TempDir::new().unwrap();
        let config = dir.path().join("workbench.yaml");
        std::fs::write(&config, roles(filter)).unwrap();
        let out = Command::new(BIN).args(["check", "--config"]).arg(&config).arg("--lake").arg(dir.path()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{filter}: accepted\n{stderr}");
        assert!(stderr.contains("analyst") && stderr.contains("silver.suppliers") && stderr.contains(says), "{filter}: {stderr}");
    }
}
