//! Typed server configuration, read once from (lowest to highest precedence)
//! built-in defaults, a YAML file (`--config`), `WORKBENCH_*` environment
//! variables and command-line flags, then validated. Nothing else in the crate
//! reads the environment or the config file.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::spec::yaml;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:5433";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{position}: {message}")]
    Yaml {
        path: PathBuf,
        position: String,
        message: String,
    },
    #[error("invalid {setting} '{value}': {reason}")]
    Invalid {
        setting: &'static str,
        value: String,
        reason: String,
    },
}

/// The settings a user may give in the YAML file; every field is optional so
/// flags and environment variables can fill or override it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    /// The HTTP API's address (health, readiness, metrics); `off` disables it.
    pub http_listen: Option<String>,
    /// The largest landing file an upload may carry (COPY FROM STDIN, HTTP),
    /// e.g. `512MiB` (the default).
    pub upload_max_size: Option<String>,
    pub lake: Option<String>,
    pub specs: Option<PathBuf>,
    pub max_connections: Option<usize>,
    /// e.g. `2GiB`; `0` disables the limit.
    pub query_memory_limit: Option<String>,
    /// What all queries together may use, e.g. `12GiB`; `0` disables the
    /// limit. Default: three quarters of the machine's memory.
    pub server_memory_limit: Option<String>,
    /// What the tables kept in memory (`serve: { memory: true }` in their
    /// specs) may take together, e.g. `8GiB`. Default: a quarter of the
    /// machine's memory.
    pub table_memory_budget: Option<String>,
    /// The nice value (0-19) of the threads that scan lake tables (see
    /// [`DEFAULT_SCAN_NICE`]); 0 gives scans the same CPU priority as
    /// planning and catalog queries.
    pub scan_nice: Option<i32>,
    /// e.g. `30s`; server-wide default for `statement_timeout`.
    pub statement_timeout: Option<String>,
    /// How long a graceful shutdown waits for running queries, e.g. `10s`.
    pub shutdown_timeout: Option<String>,
    /// How long a new connection may take to authenticate, e.g. `10s`.
    pub authentication_timeout: Option<String>,
    /// How many connections may be authenticating at once (they do not count
    /// towards `max_connections` until they have sent their startup message).
    pub max_startup_connections: Option<usize>,
    /// Users allowed to log in with SCRAM-SHA-256. When non-empty, every
    /// connection must authenticate.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// Named roles and their grants; users list the roles they have. Without
    /// `roles:` every user is an administrator.
    #[serde(default)]
    pub roles: BTreeMap<String, RoleConfig>,
    /// TLS on the wire: `{ cert: server.crt, key: server.key, mode: required }`.
    pub tls: Option<TlsFileConfig>,
    /// Serve a non-loopback address without TLS (logged as a warning at
    /// every start). Without it such a listen address needs `tls:`.
    pub allow_plaintext: Option<bool>,
    /// Environment variable holding the key of the `hash` column mask
    /// (default: a random key kept in `<lake>/_workbench/mask.key`).
    pub masking_key_env: Option<String>,
    /// Options passed to object_store / deltalake for `s3://`, `gs://`, `az://` lakes.
    #[serde(default)]
    pub storage_options: BTreeMap<String, String>,
    /// Registers `workbench_debug_panic()`; only for tests of panic isolation.
    pub debug_functions: Option<bool>,
    #[serde(default)]
    pub metadata: MetadataConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub redis: RedisConfig,
    /// How long a dataset's run lock outlives a holder that died, e.g. `30s`.
    pub lock_ttl: Option<String>,
    /// A Ballista cluster (`workbench scheduler` + `workbench executor`s)
    /// that large lake queries are sent to.
    pub cluster: Option<ClusterFileConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFileConfig {
    /// `HOST:PORT` (or `df://HOST:PORT`) of `workbench scheduler`.
    pub scheduler: String,
    /// Lake queries that read fewer bytes than this run on the server, e.g. `64MiB`.
    pub min_scan_bytes: Option<String>,
    /// When the cluster cannot answer: `local` (run the query here) or `error`.
    pub fallback: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://...`; when absent, locks, events and cache are in-process.
    pub url: Option<String>,
    /// Prefix for every key Workbench writes (several deployments on one Redis).
    pub prefix: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFileConfig {
    /// PEM certificate chain, the server's certificate first. A relative
    /// path is relative to the config file.
    pub cert: PathBuf,
    /// PEM private key of that certificate.
    pub key: PathBuf,
    /// `required` (default: plaintext connections are refused) or `optional`.
    pub mode: Option<String>,
}

/// The audit trail (`workbench.audit`): on unless `enabled: false`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    pub enabled: Option<bool>,
    /// Records that may wait for the metadata store before new ones are
    /// dropped (and counted). Default 10000.
    pub queue: Option<usize>,
    /// How long records are kept (`400d`, `1y`); older ones are deleted
    /// hourly. Default: kept forever.
    pub retention: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataConfig {
    /// `postgres://...`; when absent, an embedded SQLite file in `<lake>/_workbench/`.
    pub url: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// Output of `workbench hash-password`; never the password itself.
    pub password_hash: Option<String>,
    /// Name of an environment variable holding the password (for secrets
    /// injected by an orchestrator).
    pub password_env: Option<String>,
    /// Names under `roles:`.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Values row filters refer to as `{{ user.<name> }}`, e.g. `region: norte`.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// One role's grants as the config file writes them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// Tables it reads, as globs over `schema.table`: `gold.*`, `silver.gl_entries`, `workbench.*`.
    #[serde(default)]
    pub read: Vec<String>,
    /// Datasets it may run (`run()`), as globs over dataset names.
    #[serde(default)]
    pub run: Vec<String>,
    /// Datasets whose landing files it may read (`preview`, `preview_raw`).
    #[serde(default)]
    pub landing: Vec<String>,
    /// Datasets it may add landing files to (`COPY landing.<dataset> FROM STDIN`).
    #[serde(default)]
    pub upload: Vec<String>,
    /// Tables it may check against an ad-hoc suite (`validate(t, suite)`).
    #[serde(default)]
    pub validate: Vec<String>,
    /// Column tags it sees in clear (`*`: all).
    #[serde(default)]
    pub unmask: Vec<String>,
    /// `schema.table` (or a glob) → SQL condition the rows it sees must meet,
    /// with `{{ user.<attribute> }}` bound as a value.
    #[serde(default)]
    pub row_filters: BTreeMap<String, String>,
    /// Sees and does everything.
    #[serde(default)]
    pub admin: bool,
    /// Reads `workbench.audit`.
    #[serde(default)]
    pub audit: bool,
}

/// Values from flags and `WORKBENCH_*` variables (clap fills both).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub http_listen: Option<String>,
    pub lake: Option<String>,
    pub specs: Option<PathBuf>,
    pub max_connections: Option<usize>,
    pub query_memory_limit: Option<String>,
    pub statement_timeout: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub authentication_timeout: Option<String>,
    /// `DATABASE_URL`: the metadata store.
    pub metadata_url: Option<String>,
    /// `REDIS_URL`: locks, events, cache.
    pub redis_url: Option<String>,
    pub redis_prefix: Option<String>,
    pub lock_ttl: Option<String>,
}

/// A user's SCRAM credentials: salt, iteration count and the salted password.
#[derive(Clone)]
pub struct ScramSecret {
    pub iterations: usize,
    pub salt: Vec<u8>,
    pub salted_password: Vec<u8>,
}

impl std::fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramSecret(<redacted>)")
    }
}

#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub mode: crate::pg::TlsMode,
}

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub secret: ScramSecret,
    pub roles: Vec<String>,
    pub attributes: BTreeMap<String, String>,
}

/// Where the HTTP API listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpListen {
    /// Not configured: 127.0.0.1:8080, skipped with a warning when taken.
    Default(SocketAddr),
    /// Configured: failing to listen there is an error.
    Explicit(SocketAddr),
    Off,
}

/// The HTTP API's address when none is configured.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";

/// The validated configuration the application runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub http: HttpListen,
    /// Bytes an upload may carry.
    pub upload_max_bytes: usize,
    pub lake: String,
    pub specs: PathBuf,
    pub max_connections: usize,
    pub query_memory_limit: Option<u64>,
    pub server_memory_limit: Option<u64>,
    /// Bytes the tables served from memory may take together.
    pub table_memory_budget: u64,
    /// Nice value of the lake scan threads (0-19).
    pub scan_nice: i32,
    pub statement_timeout: Option<Duration>,
    pub shutdown_timeout: Duration,
    pub authentication_timeout: Duration,
    pub max_startup_connections: usize,
    pub users: Vec<User>,
    pub roles: BTreeMap<String, crate::governance::RoleGrants>,
    /// Key of the `hash` mask, when given through `masking_key_env`.
    pub masking_key: Option<Vec<u8>>,
    pub storage_options: BTreeMap<String, String>,
    pub debug_functions: bool,
    /// Postgres URL of the metadata store; `None` for the embedded SQLite file.
    pub metadata_url: Option<String>,
    /// Capacity of the audit queue; `None` when auditing is off.
    pub audit_queue: Option<usize>,
    /// Audit records older than this are deleted; `None`: kept forever.
    pub audit_retention: Option<Duration>,
    /// TLS certificate, key and mode; loaded when the server starts.
    pub tls: Option<TlsSettings>,
    /// Plaintext on a non-loopback address was explicitly allowed.
    pub allow_plaintext: bool,
    /// Redis URL; `None` for in-process locks, events and cache.
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    pub lock_ttl: Duration,
    /// Where large lake queries go; `None`: every query runs here.
    pub cluster: Option<ClusterSettings>,
}

/// The Ballista cluster lake queries may be sent to.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// `http://HOST:PORT` of the scheduler's gRPC endpoint.
    pub scheduler: String,
    /// Queries over fewer bytes of lake files stay on the server.
    pub min_scan_bytes: u64,
    /// Whether a query the cluster failed is answered here instead.
    pub fallback_local: bool,
}

/// The nice value of the threads that scan lake tables when none is
/// configured. Planning, catalog queries and statements that read no lake
/// table run on threads of the ordinary priority; under load the operating
/// system gives them the cores first and scans take the rest, so a BI tool's
/// catalog queries stay quick while other clients scan. Alone, a scan still
/// has every core (nice only matters when threads compete). 16 clients on 2
/// cores (benches/PROFILES.md, pgbench): catalog p99 31-33 ms at 0, ~15 ms
/// at 10, with the same point-query throughput.
pub const DEFAULT_SCAN_NICE: i32 = 10;

/// Scan size under which a query stays on the server when none is configured.
pub const DEFAULT_MIN_SCAN_BYTES: u64 = 64 * 1024 * 1024;

impl Default for Config {
    fn default() -> Self {
        Config::build(FileConfig::default(), Overrides::default())
            .expect("the built-in defaults are valid")
    }
}

impl Config {
    /// Load the optional YAML file and apply overrides on top of it.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<Config, ConfigError> {
        let file_config = match file {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                let mut parsed = yaml::from_str::<FileConfig>(&text).map_err(|err| ConfigError::Yaml {
                    path: path.to_path_buf(),
                    position: err.position.map(|p| p.to_string()).unwrap_or_else(|| "1:1".into()),
                    message: err.message,
                })?;
                if let (Some(tls), Some(dir)) = (&mut parsed.tls, path.parent()) {
                    tls.cert = dir.join(&tls.cert);
                    tls.key = dir.join(&tls.key);
                }
                parsed
            }
        };
        Config::build(file_config, overrides)
    }

    pub fn build(file: FileConfig, o: Overrides) -> Result<Config, ConfigError> {
        let listen_text = o.listen.or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen = resolve_listen(&listen_text)?;
        let http = match o.http_listen.or(file.http_listen.clone()) {
            None => HttpListen::Default(DEFAULT_HTTP_LISTEN.parse().expect("a valid address")),
            Some(text) if text.trim().eq_ignore_ascii_case("off") => HttpListen::Off,
            Some(text) => HttpListen::Explicit(resolve_listen(&text).map_err(|e| match e {
                ConfigError::Invalid { value, reason, .. } => ConfigError::Invalid { setting: "http_listen", value, reason },
                other => other,
            })?),
        };
        let lake = o.lake.or(file.lake).unwrap_or_else(|| "./lake".into());
        let specs = o.specs.or(file.specs).unwrap_or_else(|| PathBuf::from("./specs"));
        let max_connections = at_least_one("max_connections", o.max_connections.or(file.max_connections).unwrap_or(100))?;
        let query_memory_limit = match o.query_memory_limit.or(file.query_memory_limit) {
            None => Some(2 * 1024 * 1024 * 1024),
            Some(text) => parse_size("query_memory_limit", &text)?,
        };
        let upload_max_bytes = match &file.upload_max_size {
            None => 512 * 1024 * 1024,
            Some(text) => match parse_size("upload_max_size", text)? {
                Some(n) => n as usize,
                None => {
                    return Err(ConfigError::Invalid {
                        setting: "upload_max_size",
                        value: text.clone(),
                        reason: "an upload limit cannot be 0; write e.g. 512MiB".into(),
                    });
                }
            },
        };
        let server_memory_limit = match file.server_memory_limit {
            None => physical_memory().map(|total| total / 4 * 3),
            Some(text) => parse_size("server_memory_limit", &text)?,
        };
        let table_memory_budget = match file.table_memory_budget {
            None => physical_memory().map_or(1 << 30, |total| total / 4),
            Some(text) => parse_size("table_memory_budget", &text)?.unwrap_or(0),
        };
        let scan_nice = file.scan_nice.unwrap_or(DEFAULT_SCAN_NICE);
        if !(0..=19).contains(&scan_nice) {
            return Err(ConfigError::Invalid {
                setting: "scan_nice",
                value: scan_nice.to_string(),
                reason: "expected 0 (scans at the priority of every other statement) to 19 (scans yield the most); \
                         Workbench only lowers its scans' priority, it never raises its own"
                    .into(),
            });
        }
        let statement_timeout =
            duration("statement_timeout", o.statement_timeout.or(file.statement_timeout))?.filter(|d| !d.is_zero());
        let shutdown_timeout =
            duration("shutdown_timeout", o.shutdown_timeout.or(file.shutdown_timeout))?.unwrap_or(Duration::from_secs(10));
        let authentication_timeout =
            duration("authentication_timeout", o.authentication_timeout.or(file.authentication_timeout))?
                .unwrap_or(Duration::from_secs(10));
        if authentication_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                setting: "authentication_timeout",
                value: "0".into(),
                reason: "must be positive, e.g. 10s".into(),
            });
        }
        let max_startup_connections = at_least_one("max_startup_connections", file.max_startup_connections.unwrap_or(64))?;

        let mut users = Vec::with_capacity(file.users.len());
        for user in file.users {
            users.push(resolve_user(user)?);
        }
        if !listen.ip().is_loopback() && users.is_empty() {
            return Err(ConfigError::Invalid {
                setting: "listen",
                value: listen_text,
                reason: "listening on a non-loopback address requires password authentication; \
                         add `users:` to the config file (create hashes with `workbench hash-password`)"
                    .into(),
            });
        }
        if let HttpListen::Explicit(at) = http
            && !at.ip().is_loopback()
            && users.is_empty()
        {
            return Err(ConfigError::Invalid {
                setting: "http_listen",
                value: at.to_string(),
                reason: "the HTTP API on a non-loopback address requires password authentication; add `users:` to the config file".into(),
            });
        }
        let tls = match file.tls {
            None => None,
            Some(tls) => Some(TlsSettings {
                cert: tls.cert,
                key: tls.key,
                mode: match tls.mode.as_deref() {
                    None | Some("required") => crate::pg::TlsMode::Required,
                    Some("optional") => crate::pg::TlsMode::Optional,
                    Some(other) => {
                        return Err(ConfigError::Invalid {
                            setting: "tls.mode",
                            value: other.into(),
                            reason: "expected `required` (plaintext refused) or `optional`".into(),
                        });
                    }
                },
            }),
        };
        let allow_plaintext = file.allow_plaintext.unwrap_or(false);
        if let HttpListen::Explicit(at) = http
            && !at.ip().is_loopback()
            && tls.is_none()
            && !allow_plaintext
        {
            return Err(ConfigError::Invalid {
                setting: "http_listen",
                value: at.to_string(),
                reason: "the HTTP API on a non-loopback address would send passwords and rows in clear: add \
                         `tls: { cert: server.crt, key: server.key }` to the config file (the API then speaks HTTPS), or set \
                         `allow_plaintext: true` if a proxy or private network already encrypts the traffic"
                    .into(),
            });
        }
        if !listen.ip().is_loopback() && tls.is_none() && !allow_plaintext {
            return Err(ConfigError::Invalid {
                setting: "listen",
                value: listen_text,
                reason: "listening on a non-loopback address sends query results in clear: add \
                         `tls: { cert: server.crt, key: server.key }` to the config file, or set \
                         `allow_plaintext: true` if a proxy or private network already encrypts the traffic"
                    .into(),
            });
        }
        let mut roles = BTreeMap::new();
        for (name, role) in file.roles {
            roles.insert(name.clone(), resolve_role(&name, role)?);
        }
        for user in &users {
            for role in &user.roles {
                if !roles.contains_key(role) {
                    return Err(ConfigError::Invalid {
                        setting: "users.roles",
                        value: format!("{role} (user {})", user.name),
                        reason: "no such role under `roles:`".into(),
                    });
                }
            }
        }
        if !roles.is_empty() && users.is_empty() {
            return Err(ConfigError::Invalid {
                setting: "roles",
                value: roles.keys().cloned().collect::<Vec<_>>().join(", "),
                reason: "roles are given to users: add `users:` with their `roles:` (without users, everyone connects as the local administrator)".into(),
            });
        }
        let masking_key = match file.masking_key_env {
            None => None,
            Some(var) => match std::env::var(&var) {
                Ok(key) if key.len() >= 16 => Some(key.into_bytes()),
                _ => {
                    return Err(ConfigError::Invalid {
                        setting: "masking_key_env",
                        value: var,
                        reason: "the environment variable must hold a key of at least 16 characters".into(),
                    });
                }
            },
        };
        Ok(Config {
            listen,
            http,
            upload_max_bytes,
            lake,
            specs,
            max_connections,
            query_memory_limit,
            server_memory_limit,
            table_memory_budget,
            scan_nice,
            statement_timeout,
            shutdown_timeout,
            authentication_timeout,
            max_startup_connections,
            users,
            roles,
            masking_key,
            storage_options: file.storage_options,
            debug_functions: file.debug_functions.unwrap_or(false),
            metadata_url: o.metadata_url.or(file.metadata.url).filter(|u| !u.is_empty()),
            tls,
            allow_plaintext,
            audit_queue: match file.audit.enabled {
                Some(false) => None,
                _ => Some(at_least_one("audit.queue", file.audit.queue.unwrap_or(10_000))?),
            },
            audit_retention: file.audit.retention.as_deref().map(audit_retention).transpose()?,
            redis_url: o.redis_url.or(file.redis.url).filter(|u| !u.is_empty()),
            redis_prefix: o.redis_prefix.or(file.redis.prefix).unwrap_or_default(),
            lock_ttl: duration("lock_ttl", o.lock_ttl.or(file.lock_ttl))?.unwrap_or(Duration::from_secs(30)),
            cluster: file.cluster.map(cluster_settings).transpose()?,
        })
    }

    /// Whether clients must authenticate with a password.
    pub fn requires_password(&self) -> bool {
        !self.users.is_empty()
    }
}

/// `cluster:`: the scheduler's address checked, the threshold and the
/// fallback read.
fn cluster_settings(file: ClusterFileConfig) -> Result<ClusterSettings, ConfigError> {
    let address = file.scheduler.trim();
    let host_port = address.strip_prefix("df://").unwrap_or(address);
    let valid = host_port
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !valid {
        return Err(ConfigError::Invalid {
            setting: "cluster.scheduler",
            value: file.scheduler.clone(),
            reason: "expected HOST:PORT of `workbench scheduler`, e.g. 10.0.0.5:50050".into(),
        });
    }
    let min_scan_bytes = match file.min_scan_bytes {
        None => DEFAULT_MIN_SCAN_BYTES,
        Some(text) => parse_size("cluster.min_scan_bytes", &text)?.unwrap_or(0),
    };
    let fallback_local = match file.fallback.as_deref().map(str::trim) {
        None | Some("local") => true,
        Some("error") => false,
        Some(other) => {
            return Err(ConfigError::Invalid {
                setting: "cluster.fallback",
                value: other.into(),
                reason: "expected `local` (answer on the server when the cluster fails) or `error`".into(),
            });
        }
    };
    Ok(ClusterSettings {
        scheduler: format!("http://{host_port}"),
        min_scan_bytes,
        fallback_local,
    })
}

/// The machine's memory (or the cgroup's limit, when lower), in bytes.
fn physical_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let total = total_kib * 1024;
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok());
    Some(cgroup.map_or(total, |c| c.min(total)))
}

fn resolve_listen(text: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 5433));
    }
    text.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| ConfigError::Invalid {
            setting: "listen",
            value: text.into(),
            reason: "expected HOST:PORT such as 127.0.0.1:5433".into(),
        })
}

/// A duration setting, when given.
fn duration(setting: &'static str, text: Option<String>) -> Result<Option<Duration>, ConfigError> {
    text.map(|t| parse_duration(setting, &t)).transpose()
}

/// A count that must be at least 1.
fn at_least_one(setting: &'static str, n: usize) -> Result<usize, ConfigError> {
    if n == 0 {
        return Err(ConfigError::Invalid {
            setting,
            value: "0".into(),
            reason: "must be at least 1".into(),
        });
    }
    Ok(n)
}

/// `audit.retention`: a duration with its unit, at least an hour (a bare
/// number would be milliseconds, and would empty the trail).
fn audit_retention(text: &str) -> Result<Duration, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        setting: "audit.retention",
        value: text.into(),
        reason,
    };
    let retention = humantime::parse_duration(text.trim()).map_err(|err| invalid(format!("{err}; write e.g. 400d or 1y")))?;
    if retention < Duration::from_secs(3600) {
        return Err(invalid("must be at least 1h: audit records are pruned hourly".into()));
    }
    Ok(retention)
}

fn parse_duration(setting: &'static str, text: &str) -> Result<Duration, ConfigError> {
    let trimmed = text.trim();
    if let Ok(ms) = trimmed.parse::<u64>() {
        return Ok(Duration::from_millis(ms));
    }
    humantime::parse_duration(trimmed).map_err(|err| ConfigError::Invalid {
        setting,
        value: text.into(),
        reason: format!("{err}; write e.g. 500ms, 30s or 5m"),
    })
}

fn parse_size(setting: &'static str, text: &str) -> Result<Option<u64>, ConfigError> {
    let size: bytesize::ByteSize = text.trim().parse().map_err(|err| ConfigError::Invalid {
        setting,
        value: text.into(),
        reason: format!("{err}; write e.g. 512MiB or 2GiB (0 disables the limit)"),
    })?;
    Ok(Some(size.as_u64()).filter(|b| *b > 0))
}

fn resolve_user(user: UserConfig) -> Result<User, ConfigError> {
    let secret = match (&user.password_hash, &user.password_env) {
        (Some(hash), None) => parse_password_hash(hash).map_err(|reason| ConfigError::Invalid {
            setting: "users.password_hash",
            value: format!("(for user {})", user.name),
            reason,
        })?,
        (None, Some(var)) => {
            let password = std::env::var(var).map_err(|_| ConfigError::Invalid {
                setting: "users.password_env",
                value: var.clone(),
                reason: format!("environment variable is not set (user {})", user.name),
            })?;
            if password.is_empty() {
                // An empty password would let anyone in who knows the name.
                return Err(ConfigError::Invalid {
                    setting: "users.password_env",
                    value: var.clone(),
                    reason: format!("environment variable is empty (user {}); set it to the user's password", user.name),
                });
            }
            ScramSecret::derive(&password, SCRAM_ITERATIONS)
        }
        _ => {
            return Err(ConfigError::Invalid {
                setting: "users",
                value: user.name,
                reason: "give exactly one of password_hash or password_env".into(),
            });
        }
    };
    Ok(User {
        name: user.name,
        secret,
        roles: user.roles,
        attributes: user.attributes,
    })
}

fn resolve_role(name: &str, role: RoleConfig) -> Result<crate::governance::RoleGrants, ConfigError> {
    use crate::governance::{Grant, RoleGrants, RowFilter};
    let invalid = |reason: String| ConfigError::Invalid {
        setting: "roles",
        value: name.to_string(),
        reason,
    };
    let mut row_filters = Vec::with_capacity(role.row_filters.len());
    for (table, sql) in &role.row_filters {
        row_filters.push(RowFilter::parse(table, sql).map_err(invalid)?);
    }
    Ok(RoleGrants {
        read: Grant::parse(&role.read).map_err(invalid)?,
        run: Grant::parse(&role.run).map_err(invalid)?,
        landing: Grant::parse(&role.landing).map_err(invalid)?,
        upload: Grant::parse(&role.upload).map_err(invalid)?,
        validate: Grant::parse(&role.validate).map_err(invalid)?,
        unmask: role.unmask,
        row_filters,
        admin: role.admin,
        audit: role.audit,
    })
}

pub const SCRAM_ITERATIONS: usize = 4096;
const HASH_PREFIX: &str = "scram-sha-256";

impl ScramSecret {
    /// Derive the SCRAM salted password for `password` with a fresh random salt.
    pub fn derive(password: &str, iterations: usize) -> ScramSecret {
        let salt: [u8; 16] = rand::random();
        let salted_password =
            pgwire::api::auth::sasl::scram::gen_salted_password(password, &salt, iterations);
        ScramSecret {
            iterations,
            salt: salt.to_vec(),
            salted_password,
        }
    }

    /// Whether `password` is the one this secret was derived from.
    pub fn verify(&self, password: &str) -> bool {
        let derived = pgwire::api::auth::sasl::scram::gen_salted_password(password, &self.salt, self.iterations);
        derived.len() == self.salted_password.len()
            && derived.iter().zip(&self.salted_password).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// `scram-sha-256$<iterations>$<salt>$<salted password>` (base64), the
    /// format `workbench hash-password` prints and the config file takes.
    pub fn encode(&self) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        format!(
            "{HASH_PREFIX}${}${}${}",
            self.iterations,
            b64.encode(&self.salt),
            b64.encode(&self.salted_password)
        )
    }
}

fn parse_password_hash(text: &str) -> Result<ScramSecret, String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let parts: Vec<&str> = text.trim().split('$').collect();
    let expected = "expected the output of `workbench hash-password` \
                    (scram-sha-256$<iterations>$<salt>$<key>)";
    let [prefix, iterations, salt, key] = parts.as_slice() else {
        return Err(expected.into());
    };
    if *prefix != HASH_PREFIX {
        return Err(expected.into());
    }
    let iterations: usize = iterations.parse().map_err(|_| expected.to_string())?;
    if iterations != SCRAM_ITERATIONS {
        return Err(format!(
            "iteration count must be {SCRAM_ITERATIONS}; re-create the hash with `workbench hash-password`"
        ));
    }
    Ok(ScramSecret {
        iterations,
        salt: b64.decode(salt).map_err(|_| expected.to_string())?,
        salted_password: b64.decode(key).map_err(|_| expected.to_string())?,
    })
}
