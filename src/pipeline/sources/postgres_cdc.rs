//! A Postgres table copied by logical replication: the publication and slot
//! it needs (created when missing), the table's columns and replica
//! identity, a snapshot of its rows, and the replication stream after it
//! (pgwire-replication; messages decoded by [`super::pgoutput`]).
//!
//! Values travel as text, in each type's output format, both in the snapshot
//! and in the stream (sessions pinned to UTC and ISO dates), so bronze holds
//! one faithful text copy and silver casts it by the source's column types.
//! This module reads the source only; what is written where is the
//! pipeline's business.

use futures::TryStreamExt;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, SslMode, TlsConfig};
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Row};

use super::SourceError;
// A failed statement is `Unreachable` (worth retrying) as the query source judges it.
use super::postgres::{query_error as sql_error, resolve_url};
use crate::spec::CdcSource;

/// Session settings that make text values the same in the snapshot and in
/// the stream.
const SESSION_SETTINGS: [(&str, &str); 4] =
    [("TimeZone", "UTC"), ("DateStyle", "ISO, YMD"), ("IntervalStyle", "postgres"), ("extra_float_digits", "3")];

fn err(message: impl Into<String>) -> SourceError {
    SourceError::Postgres(message.into())
}

/// A replication failure: the connection dropped or the server is going
/// down (retry), or the server refused (a dropped slot, missing rights).
pub fn stream_error(e: pgwire_replication::PgWireError) -> SourceError {
    use pgwire_replication::PgWireError as E;
    let message = format!("replication stream: {e}");
    match &e {
        E::Io(_) | E::Task(_) => SourceError::Unreachable(message),
        // A slot still held by a session that just died is freed within moments.
        E::Server(text)
            if text.contains("57P0") || text.contains("terminating connection") || text.contains("shutting down") || text.contains("is active for PID") =>
        {
            SourceError::Unreachable(message)
        }
        E::Protocol(text) if text.contains("closed") || text.contains("EOF") || text.contains("eof") => SourceError::Unreachable(message),
        _ => err(message),
    }
}

/// `"16/B374D848"` ⇄ u64.
pub fn parse_lsn(text: &str) -> Result<u64, SourceError> {
    Lsn::parse(text.trim()).map(|l| l.as_u64()).map_err(|e| err(format!("not an LSN '{text}': {e}")))
}

pub fn format_lsn(lsn: u64) -> String {
    Lsn::from_u64(lsn).to_string()
}

/// A source column: its name and type as `format_type` writes it
/// (`numeric(12,2)`, `timestamp with time zone`, ...).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SourceColumn {
    pub name: String,
    pub pg_type: String,
}

/// The source table as the catalog describes it.
#[derive(Debug, Clone)]
pub struct SourceTable {
    pub columns: Vec<SourceColumn>,
    /// `d` default (primary key), `f` full, `i` an index, `n` nothing.
    pub replica_identity: char,
    /// The columns an update's or delete's old row identifies it by.
    pub identity: Vec<String>,
}

/// The slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone)]
pub struct SlotState {
    pub confirmed_flush: u64,
    pub active: bool,
}

/// A control connection (an ordinary session) to the source.
pub async fn connect(source: &CdcSource) -> Result<PgConnection, SourceError> {
    let url = resolve_url(&source.url)?;
    let mut conn = PgConnection::connect(&url).await.map_err(|e| sql_error("cannot connect to the source", e))?;
    for (name, value) in SESSION_SETTINGS {
        sqlx::query(sqlx::AssertSqlSafe(format!("SET {name} = '{value}'")))
            .execute(&mut conn)
            .await
            .map_err(|e| sql_error("setting up the session", e))?;
    }
    Ok(conn)
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Check that the server can stream changes and that the table exists; read
/// its columns and replica identity; create the publication if missing (or
/// check that it publishes the table).
pub async fn prepare(conn: &mut PgConnection, source: &CdcSource) -> Result<SourceTable, SourceError> {
    let wal_level: String = sqlx::query_scalar("SELECT current_setting('wal_level')")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| sql_error("reading wal_level", e))?;
    if wal_level != "logical" {
        return Err(err(format!(
            "the source's wal_level is '{wal_level}': change data capture needs wal_level = logical (set it in postgresql.conf and restart the server)"
        )));
    }
    let table = format!("{}.{}", source.schema, source.table);
    let found = sqlx::query(
        "SELECT c.oid::bigint AS oid, c.relreplident::text AS identity FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
    )
    .bind(&source.schema)
    .bind(&source.table)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| sql_error("looking up the source table", e))?;
    let Some(found) = found else {
        return Err(err(format!("table {table} does not exist in the source database; check `tables:` in the spec")));
    };
    let oid: i64 = found.get("oid");
    let identity_kind: String = found.get("identity");
    let columns: Vec<SourceColumn> = sqlx::query(
        "SELECT attname::text AS name, format_type(atttypid, atttypmod) AS pg_type FROM pg_attribute \
         WHERE attrelid = $1::bigint::oid AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
    )
    .bind(oid)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| sql_error("reading the source table's columns", e))?
    .into_iter()
    .map(|row| SourceColumn { name: row.get("name"), pg_type: row.get("pg_type") })
    .collect();
    let replica_identity = identity_kind.chars().next().unwrap_or('d');
    let identity: Vec<String> = match replica_identity {
        'f' => columns.iter().map(|c| c.name.clone()).collect(),
        'n' => Vec::new(),
        kind => {
            let flag = if kind == 'i' { "indisreplident" } else { "indisprimary" };
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = $1::bigint::oid AND i.{flag} ORDER BY a.attnum"
            )))
            .bind(oid)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| sql_error("reading the source table's replica identity", e))?
        }
    };
    let publication: Option<bool> = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3) \
         FROM pg_publication WHERE pubname = $1",
    )
    .bind(&source.publication)
    .bind(&source.schema)
    .bind(&source.table)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| sql_error("looking up the publication", e))?;
    match publication {
        Some(true) => {}
        Some(false) => {
            return Err(err(format!(
                "publication {} does not publish {table}: ALTER PUBLICATION {} ADD TABLE {table} (or name another publication in the spec)",
                source.publication, source.publication
            )));
        }
        None => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE PUBLICATION {} FOR TABLE {}.{}",
                quote(&source.publication),
                quote(&source.schema),
                quote(&source.table)
            )))
            .execute(&mut *conn)
            .await
            .map_err(|e| sql_error(&format!("creating publication {} (create it yourself, or grant the spec's user ownership of {table})", source.publication), e))?;
            tracing::info!(publication = %source.publication, %table, "created the publication");
        }
    }
    Ok(SourceTable { columns, replica_identity, identity })
}

/// The slot, if it exists (and is a pgoutput slot of this database).
pub async fn slot(conn: &mut PgConnection, source: &CdcSource) -> Result<Option<SlotState>, SourceError> {
    let row = sqlx::query(
        "SELECT plugin::text AS plugin, slot_type, database::text AS database, current_database()::text AS here, \
                confirmed_flush_lsn::text AS confirmed, active FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(&source.slot)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| sql_error("looking up the replication slot", e))?;
    let Some(row) = row else { return Ok(None) };
    let (plugin, kind): (Option<String>, String) = (row.get("plugin"), row.get("slot_type"));
    let (database, here): (Option<String>, String) = (row.get("database"), row.get("here"));
    if kind != "logical" || plugin.as_deref() != Some("pgoutput") || database.as_deref() != Some(here.as_str()) {
        return Err(err(format!(
            "replication slot {} exists but is not a pgoutput slot of this database (type {kind}, plugin {}, database {}); name another slot in the spec",
            source.slot,
            plugin.unwrap_or_default(),
            database.unwrap_or_default()
        )));
    }
    let confirmed: Option<String> = row.get("confirmed");
    Ok(Some(SlotState { confirmed_flush: confirmed.as_deref().map(parse_lsn).transpose()?.unwrap_or(0), active: row.get("active") }))
}

/// Create the slot; returns the position its changes start from.
pub async fn create_slot(conn: &mut PgConnection, source: &CdcSource) -> Result<u64, SourceError> {
    let lsn: String = sqlx::query_scalar("SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')")
        .bind(&source.slot)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| sql_error(&format!("creating replication slot {} (the user needs the REPLICATION attribute)", source.slot), e))?;
    tracing::info!(slot = %source.slot, %lsn, "created the replication slot");
    parse_lsn(&lsn)
}

/// The server's current WAL position.
pub async fn current_lsn(conn: &mut PgConnection) -> Result<u64, SourceError> {
    let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| sql_error("reading the WAL position", e))?;
    parse_lsn(&lsn)
}

/// Write a non-transactional marker into the WAL: the stream delivers it
/// after every transaction that committed before it (a catch-up knows then
/// that it has everything up to now).
pub async fn emit_marker(conn: &mut PgConnection, prefix: &str) -> Result<u64, SourceError> {
    let lsn: String = sqlx::query_scalar("SELECT pg_logical_emit_message(false, $1, '')::text")
        .bind(prefix)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| sql_error("writing a catch-up marker", e))?;
    parse_lsn(&lsn)
}

/// Which transactions a snapshot saw: `pg_current_snapshot()` taken with it.
/// The stream replays every transaction that committed after the slot's
/// start; those the snapshot already saw are skipped, the others applied,
/// so nothing is lost or doubled between the snapshot and the stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Visibility {
    pub xmin: u64,
    pub xmax: u64,
    pub xip: Vec<u64>,
}

impl Visibility {
    pub fn parse(text: &str) -> Result<Visibility, SourceError> {
        let bad = || err(format!("unexpected pg_current_snapshot() '{text}'"));
        let mut parts = text.split(':');
        let xmin = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let xmax = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let xip = match parts.next() {
            Some("") | None => Vec::new(),
            Some(list) => list.split(',').map(|x| x.parse().map_err(|_| bad())).collect::<Result<_, _>>()?,
        };
        Ok(Visibility { xmin, xmax, xip })
    }

    /// Whether the snapshot saw (committed) transaction `xid` — a 32-bit xid
    /// from the stream, placed in the snapshot's epoch.
    pub fn saw(&self, xid: u32) -> bool {
        let epoch = self.xmax & !0xFFFF_FFFF;
        let mut full = epoch | xid as u64;
        if full > self.xmax + (1 << 31) {
            full = full.saturating_sub(1 << 32);
        }
        full < self.xmin || (full < self.xmax && !self.xip.contains(&full))
    }
}

/// What a snapshot read hands over: rows, then `Done` once the table's end
/// was reached (a channel that closes without it means the read failed).
#[derive(Debug)]
pub enum Chunk {
    Rows(Vec<Vec<Option<String>>>),
    Done,
}

/// Start a snapshot: a REPEATABLE READ, READ ONLY transaction and the
/// transactions it sees.
pub async fn begin_snapshot(conn: &mut PgConnection) -> Result<(sqlx::Transaction<'_, sqlx::Postgres>, Visibility), SourceError> {
    let mut tx = conn.begin().await.map_err(|e| sql_error("starting the snapshot", e))?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(|e| sql_error("starting the snapshot", e))?;
    let seen: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text")
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| sql_error("starting the snapshot", e))?;
    let visibility = Visibility::parse(&seen)?;
    Ok((tx, visibility))
}

/// Read every row of the table (text values, in `columns`' order) in the
/// snapshot's transaction, `chunk` rows at a time into `sink`; returns how
/// many rows there were.
pub async fn read_snapshot(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    source: &CdcSource,
    columns: &[SourceColumn],
    chunk: usize,
    sink: tokio::sync::mpsc::Sender<Chunk>,
) -> Result<u64, SourceError> {
    let select = columns.iter().map(|c| format!("{}::text", quote(&c.name))).collect::<Vec<_>>().join(", ");
    let sql = format!("SELECT {select} FROM {}.{}", quote(&source.schema), quote(&source.table));
    let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch(&mut **tx);
    let mut batch: Vec<Vec<Option<String>>> = Vec::with_capacity(chunk);
    let mut total = 0u64;
    let stopped = || err("the snapshot's writer stopped");
    while let Some(row) = rows.try_next().await.map_err(|e| sql_error("reading the snapshot", e))? {
        batch.push((0..columns.len()).map(|i| row.get::<Option<String>, _>(i)).collect());
        total += 1;
        if batch.len() >= chunk {
            sink.send(Chunk::Rows(std::mem::replace(&mut batch, Vec::with_capacity(chunk)))).await.map_err(|_| stopped())?;
        }
    }
    if !batch.is_empty() {
        sink.send(Chunk::Rows(batch)).await.map_err(|_| stopped())?;
    }
    sink.send(Chunk::Done).await.map_err(|_| stopped())?;
    Ok(total)
}

/// Open the replication stream of the slot from `start` (the last position
/// bronze holds); the slot is told `start` is applied until the caller says
/// more with `update_applied_lsn`.
pub async fn stream(source: &CdcSource, start: u64, application: &str) -> Result<ReplicationClient, SourceError> {
    let url = resolve_url(&source.url)?;
    let parsed = url::Url::parse(&url).map_err(|e| err(format!("the source url is not a URL: {e}")))?;
    let decode = |s: &str| percent_decode(s);
    let query: std::collections::HashMap<String, String> = parsed.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let host = query.get("host").cloned().or_else(|| parsed.host_str().map(str::to_string)).unwrap_or_else(|| "localhost".into());
    let mut config = ReplicationConfig::new(
        host.trim_start_matches('[').trim_end_matches(']'),
        match parsed.username() {
            "" => std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into()),
            user => decode(user),
        },
        parsed.password().map(decode).or_else(|| std::env::var("PGPASSWORD").ok()).unwrap_or_default(),
        match parsed.path().trim_start_matches('/') {
            "" => "postgres".to_string(),
            database => decode(database),
        },
        source.slot.clone(),
        source.publication.clone(),
    )
    .with_port(query.get("port").and_then(|p| p.parse().ok()).or(parsed.port()).unwrap_or(5432))
    .with_start_lsn(Lsn::from_u64(start))
    .with_status_interval(std::time::Duration::from_secs(1))
    .with_wakeup_interval(std::time::Duration::from_secs(5))
    .with_options(SESSION_SETTINGS.iter().map(|(k, v)| format!("-c {k}={}", v.replace(' ', "\\ "))).collect::<Vec<_>>().join(" "));
    config.application_name = Some(application.to_string());
    config.tls = match query.get("sslmode").map(String::as_str).unwrap_or("prefer") {
        "disable" | "allow" => TlsConfig::disabled(),
        "prefer" => TlsConfig { mode: SslMode::Prefer, ..TlsConfig::default() },
        "require" => TlsConfig::require(),
        "verify-ca" => TlsConfig::verify_ca(query.get("sslrootcert").map(Into::into)),
        "verify-full" => TlsConfig::verify_full(query.get("sslrootcert").map(Into::into)),
        other => return Err(err(format!("sslmode={other} in the source url: use disable, prefer, require, verify-ca or verify-full"))),
    };
    let mut client = ReplicationClient::connect(config).await.map_err(stream_error)?;
    client.wait_started().await.map_err(stream_error)?;
    Ok(client)
}

fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| text.to_string())
}
