//! Per-connection run-time settings, as Postgres' GUCs behave for a client:
//! `SET`, `SET LOCAL`, `RESET`, `SHOW`, `SHOW ALL`, `DISCARD ALL`,
//! `current_setting()`, `set_config()` and `pg_settings` all read and write
//! one table per connection, initialised from Postgres' defaults and the
//! client's start-up parameters. `search_path` really changes how unqualified
//! names resolve (see [`Settings::search_path`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use datafusion::config::ConfigOptions;

use crate::engine::PG_VERSION;

/// One setting: canonical name (as `SHOW` labels it), default, reported to
/// the client with ParameterStatus when it changes (GUC_REPORT).
struct Known {
    name: &'static str,
    default: &'static str,
    report: bool,
    description: &'static str,
}

const fn known(name: &'static str, default: &'static str, report: bool, description: &'static str) -> Known {
    Known {
        name,
        default,
        report,
        description,
    }
}

/// The settings clients read, with Postgres 16's defaults.
const KNOWN: &[Known] = &[
    known("application_name", "", true, "Sets the application name to be reported in statistics and logs."),
    known("bytea_output", "hex", false, "Sets the output format for bytea."),
    known("client_encoding", "UTF8", true, "Sets the client's character set encoding."),
    known("client_min_messages", "notice", false, "Sets the message levels that are sent to the client."),
    known("DateStyle", "ISO, MDY", true, "Sets the display format for date and time values."),
    known("default_transaction_isolation", "read committed", false, "Sets the transaction isolation level of each new transaction."),
    known("default_transaction_read_only", "off", false, "Sets the default read-only status of new transactions."),
    known("extra_float_digits", "1", false, "Sets the number of digits displayed for floating-point values."),
    known("idle_in_transaction_session_timeout", "0", false, "Sets the maximum allowed idle time between queries, when in a transaction."),
    known("integer_datetimes", "on", true, "Shows whether datetimes are integer based."),
    known("IntervalStyle", "postgres", true, "Sets the display format for interval values."),
    known("is_superuser", "off", true, "Shows whether the current user is a superuser."),
    known("lc_collate", "C.UTF-8", false, "Shows the collation order locale."),
    known("lc_ctype", "C.UTF-8", false, "Shows the character classification and case conversion locale."),
    known("lc_messages", "C.UTF-8", false, "Sets the language in which messages are displayed."),
    known("lc_monetary", "C.UTF-8", false, "Sets the locale for formatting monetary amounts."),
    known("lc_numeric", "C.UTF-8", false, "Sets the locale for formatting numbers."),
    known("lc_time", "C.UTF-8", false, "Sets the locale for formatting date and time values."),
    known("lock_timeout", "0", false, "Sets the maximum allowed duration of any wait for a lock."),
    known("max_identifier_length", "63", false, "Shows the maximum identifier length."),
    known("max_index_keys", "32", false, "Shows the maximum number of index keys."),
    known("row_security", "on", false, "Enable row security."),
    known("search_path", "\"$user\", public", false, "Sets the schema search order for names that are not schema-qualified."),
    known("server_encoding", "UTF8", true, "Shows the server (database) character set encoding."),
    known("server_version", PG_VERSION, true, "Shows the server version."),
    known("server_version_num", "160006", false, "Shows the server version as an integer."),
    known("session_authorization", "", true, "Sets the session user name."),
    known("standard_conforming_strings", "on", true, "Causes '...' strings to treat backslashes literally."),
    known("statement_timeout", "0", false, "Sets the maximum allowed duration of any statement."),
    known("TimeZone", "UTC", true, "Sets the time zone for displaying and interpreting time stamps."),
    known("transaction_isolation", "read committed", false, "Sets the current transaction's isolation level."),
    known("transaction_read_only", "off", false, "Sets the current transaction's read-only status."),
    known("work_mem", "4MB", false, "Sets the maximum memory to be used for query workspaces."),
    known("workbench.execution", "auto", false, "Where lake queries run: auto (large ones on the Ballista cluster, when configured), local (on this server), cluster (on the cluster whatever their size)."),
    known("workbench.join_order", "on", false, "Join a query's tables in the order their estimated sizes call for (from the Delta log's statistics): on, or off for the order the query names them in."),
    known("workbench.join_filters", "on", false, "Filter the rows a scan feeds to an aggregate below a hash join by the join's keys, once its build side is known: on, or off."),
    known("workbench.filter_estimates", "on", false, "Estimate the rows a filter keeps from its conditions (column ranges and distinct counts where known), where DataFusion would assume 20%; it decides which side of a join is hashed: on, or off."),
    known("workbench.row_filters", "auto", false, "Filter lake rows inside the Parquet reader: auto (when one of a scan's filters is estimated to keep at most 1% of the table's rows), on, or off."),
];

/// Settings passed on to the query engine as they are (`datafusion.execution.batch_size`).
const DATAFUSION: &str = "datafusion.";

fn find(name: &str) -> Option<&'static Known> {
    KNOWN.iter().find(|k| k.name.eq_ignore_ascii_case(name))
}

/// A setting name as `SHOW` labels it: canonical for known names, lower case otherwise.
pub fn canonical(name: &str) -> String {
    match name.to_ascii_lowercase().as_str() {
        "timezone" | "time zone" => "TimeZone".into(),
        "transaction isolation level" => "transaction_isolation".into(),
        other => find(other).map(|k| k.name.to_string()).unwrap_or_else(|| other.to_string()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingError {
    #[error("unrecognized configuration parameter \"{0}\"")]
    Unknown(String),
    #[error("parameter \"{0}\" cannot be changed")]
    ReadOnly(String),
    #[error("invalid value for parameter \"{name}\": \"{value}\" ({hint})")]
    Invalid { name: String, value: String, hint: &'static str },
}

impl SettingError {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            SettingError::Unknown(_) => "42704",
            SettingError::ReadOnly(_) => "55P02",
            SettingError::Invalid { .. } => "22023",
        }
    }
}

/// Settings that only report facts about the server.
const FIXED: &[&str] = &[
    "server_version",
    "server_version_num",
    "server_encoding",
    "integer_datetimes",
    "max_identifier_length",
    "max_index_keys",
    "lc_collate",
    "lc_ctype",
    "is_superuser",
];

#[derive(Debug, Default)]
struct State {
    /// Session values that differ from the defaults, keyed by canonical name.
    session: BTreeMap<String, String>,
    /// `SET LOCAL` values, dropped at the end of the transaction.
    local: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
pub struct Settings {
    /// The session user (known once start-up completed).
    user: Mutex<String>,
    /// Defaults of this server that differ from Postgres' (from the config).
    defaults: BTreeMap<String, String>,
    state: Mutex<State>,
    /// `datafusion.*` options this session changed, with the engine's value
    /// before the change (put back on RESET).
    engine_originals: Mutex<BTreeMap<String, Option<String>>>,
}

impl Settings {
    /// Settings with Postgres' defaults, except `defaults` (canonical names).
    pub fn new(defaults: impl IntoIterator<Item = (String, String)>) -> Arc<Settings> {
        Arc::new(Settings {
            defaults: defaults.into_iter().map(|(n, v)| (canonical(&n), v)).collect(),
            ..Settings::default()
        })
    }

    pub fn set_user(&self, user: &str) {
        *self.user.lock().unwrap_or_else(|p| p.into_inner()) = user.to_string();
    }

    pub fn user(&self) -> String {
        self.user.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value `SHOW name` prints, or None for an unknown name.
    pub fn get(&self, name: &str) -> Option<String> {
        let name = canonical(name);
        let state = self.state();
        if let Some(v) = state.local.get(&name).or_else(|| state.session.get(&name)) {
            return Some(v.clone());
        }
        if name == "session_authorization" {
            return Some(self.user());
        }
        if let Some(v) = self.defaults.get(&name) {
            return Some(v.clone());
        }
        find(&name).map(|k| k.default.to_string())
    }

    /// `SET [LOCAL] name = value`; returns the canonical name.
    pub fn set(&self, name: &str, value: &str, local: bool) -> Result<String, SettingError> {
        let name = canonical(name);
        if find(&name).is_none() && !name.contains('.') {
            return Err(SettingError::Unknown(name));
        }
        if name.starts_with(DATAFUSION) && !ConfigOptions::new().entries().iter().any(|e| e.key == name) {
            return Err(SettingError::Unknown(name));
        }
        if FIXED.contains(&name.as_str()) {
            return Err(SettingError::ReadOnly(name));
        }
        let value = normalize(&name, value)?;
        let mut state = self.state();
        if local {
            state.local.insert(name.clone(), value);
        } else {
            state.local.remove(&name);
            state.session.insert(name.clone(), value);
        }
        Ok(name)
    }

    /// `RESET name`.
    pub fn reset(&self, name: &str) -> Result<String, SettingError> {
        let name = canonical(name);
        if find(&name).is_none() && !name.contains('.') {
            return Err(SettingError::Unknown(name));
        }
        let mut state = self.state();
        state.session.remove(&name);
        state.local.remove(&name);
        Ok(name)
    }

    /// `RESET ALL` / `DISCARD ALL`: every changed setting, to report again.
    pub fn reset_all(&self) -> Vec<String> {
        let mut state = self.state();
        let changed: Vec<String> = state.session.keys().chain(state.local.keys()).cloned().collect();
        state.session.clear();
        state.local.clear();
        changed
    }

    /// End of a transaction: `SET LOCAL` values go away.
    pub fn end_transaction(&self) {
        self.state().local.clear();
    }

    /// Every known setting with its value and description (`SHOW ALL`, `pg_settings`).
    pub fn all(&self) -> Vec<(String, String, &'static str)> {
        let mut out: Vec<(String, String, &'static str)> = KNOWN
            .iter()
            .map(|k| (k.name.to_string(), self.get(k.name).unwrap_or_default(), k.description))
            .collect();
        let state = self.state();
        for (name, value) in state.session.iter().chain(state.local.iter()) {
            if find(name).is_none() {
                out.push((name.clone(), value.clone(), "Custom setting."));
            }
        }
        out.sort_by(|a, b| a.0.to_ascii_lowercase().cmp(&b.0.to_ascii_lowercase()));
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }

    /// Whether a change of `name` is reported to the client (ParameterStatus).
    pub fn reported(name: &str) -> bool {
        find(name).is_some_and(|k| k.report)
    }

    /// The schemas of `search_path`, in order, `$user` replaced by the user
    /// name (whether or not such a schema exists: callers filter).
    pub fn search_path(&self) -> Vec<String> {
        let path = self.get("search_path").unwrap_or_default();
        split_list(&path)
            .into_iter()
            .map(|s| if s == "$user" { self.user() } else { s })
            .collect()
    }

    /// `statement_timeout` in milliseconds (0: none).
    /// Where this session's lake queries run (`workbench.execution`).
    pub fn placement(&self) -> crate::cluster::Placement {
        self.get("workbench.execution")
            .and_then(|v| crate::cluster::Placement::parse(&v))
            .unwrap_or_default()
    }

    /// Give the engine this session's `datafusion.*` settings, and put back
    /// the engine's own value of those reset since.
    pub fn apply_engine_options(&self, options: &mut ConfigOptions) {
        let wanted: BTreeMap<String, String> = {
            let state = self.state();
            // SET LOCAL after SET: the local value wins.
            state
                .session
                .iter()
                .chain(state.local.iter())
                .filter(|(name, _)| name.starts_with(DATAFUSION))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect()
        };
        let mut originals = self.engine_originals.lock().unwrap_or_else(|p| p.into_inner());
        let reset: Vec<String> = originals.keys().filter(|k| !wanted.contains_key(*k)).cloned().collect();
        for name in reset {
            if let Some(Some(value)) = originals.remove(&name) {
                let _ = options.set(&name, &value);
            }
        }
        for (name, value) in wanted {
            if !originals.contains_key(&name) {
                let original = options.entries().into_iter().find(|e| e.key == name).and_then(|e| e.value);
                originals.insert(name.clone(), original);
            }
            // Checked when it was SET.
            let _ = options.set(&name, &value);
        }
    }

    /// `workbench.join_order`: reorder joins by estimated sizes.
    pub fn join_order(&self) -> bool {
        self.get("workbench.join_order").is_none_or(|v| v != "off")
    }

    /// `workbench.join_filters`: filter an aggregate's input by a join's keys.
    pub fn join_filters(&self) -> bool {
        self.get("workbench.join_filters").is_none_or(|v| v != "off")
    }

    /// `workbench.filter_estimates`: our estimate for filters DataFusion assumes 20% of.
    pub fn filter_estimates(&self) -> bool {
        self.get("workbench.filter_estimates").is_none_or(|v| v != "off")
    }

    /// `workbench.row_filters`: auto, on or off.
    pub fn row_filters(&self) -> String {
        self.get("workbench.row_filters").unwrap_or_else(|| "auto".into())
    }

    pub fn statement_timeout_ms(&self) -> u64 {
        self.get("statement_timeout")
            .and_then(|v| parse_duration_ms(&v))
            .unwrap_or(0)
    }
}

/// Split a list setting such as `search_path` into its unquoted items.
pub fn split_list(value: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                current.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => items.push(std::mem::take(&mut current)),
            c if c.is_whitespace() && !quoted => {}
            c => current.push(if quoted { c } else { c.to_ascii_lowercase() }),
        }
    }
    items.push(current);
    items.into_iter().filter(|s| !s.is_empty()).collect()
}

/// A boolean as Postgres accepts it, spelled `on` or `off`.
fn on_off(value: &str) -> Option<&'static str> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Some("on"),
        "off" | "false" | "no" | "0" => Some("off"),
        _ => None,
    }
}

/// Check and canonicalise a value, as Postgres would print it back.
fn normalize(name: &str, value: &str) -> Result<String, SettingError> {
    let invalid = |hint| SettingError::Invalid {
        name: name.to_string(),
        value: value.to_string(),
        hint,
    };
    Ok(match name {
        "statement_timeout" | "lock_timeout" | "idle_in_transaction_session_timeout" => {
            let ms = parse_duration_ms(value).ok_or_else(|| invalid("use milliseconds or a unit: 500ms, 5s, 1min"))?;
            if ms == 0 {
                "0".into()
            } else if ms % 60_000 == 0 {
                format!("{}min", ms / 60_000)
            } else if ms % 1000 == 0 {
                format!("{}s", ms / 1000)
            } else {
                format!("{ms}ms")
            }
        }
        "TimeZone" => {
            let tz = value.trim();
            if tz.eq_ignore_ascii_case("utc") || tz.eq_ignore_ascii_case("z") || tz.eq_ignore_ascii_case("gmt") {
                "UTC".into()
            } else if tz.parse::<chrono_tz::Tz>().is_ok() || parse_offset(tz).is_some() {
                tz.to_string()
            } else if tz.eq_ignore_ascii_case("local") || tz.eq_ignore_ascii_case("default") {
                "UTC".into()
            } else {
                return Err(invalid("use an IANA zone name such as Europe/Madrid, or an offset such as +02:00"));
            }
        }
        "transaction_isolation" | "default_transaction_isolation" => {
            let v = value.trim().to_ascii_lowercase().replace('_', " ");
            match v.as_str() {
                "read uncommitted" | "read committed" | "repeatable read" | "serializable" => v,
                _ => return Err(invalid("one of read committed, repeatable read, serializable")),
            }
        }
        "client_encoding" => {
            let v = value.trim().to_ascii_uppercase().replace(['-', '_'], "");
            if v == "UTF8" || v == "UNICODE" {
                "UTF8".into()
            } else {
                return Err(invalid("Workbench speaks UTF8 only"));
            }
        }
        "search_path" => value.to_string(),
        n if n.starts_with(DATAFUSION) => {
            // `SET x = off` arrives as Postgres spells booleans.
            let value = match value.trim() {
                v if v.eq_ignore_ascii_case("on") => "true",
                v if v.eq_ignore_ascii_case("off") => "false",
                v => v,
            };
            ConfigOptions::new()
                .set(n, value)
                .map_err(|_| invalid("a value of the option's type, as DataFusion's configuration reference lists it"))?;
            value.to_string()
        }
        "workbench.join_order" | "workbench.join_filters" | "workbench.filter_estimates" => on_off(value).ok_or_else(|| invalid("on or off"))?.into(),
        "workbench.row_filters" => match value.trim() {
            v if v.eq_ignore_ascii_case("auto") => "auto".into(),
            v => on_off(v).ok_or_else(|| invalid("auto, on or off"))?.into(),
        },
        "workbench.execution" => match crate::cluster::Placement::parse(value) {
            Some(_) => value.trim().to_ascii_lowercase(),
            None => return Err(invalid("one of auto, local, cluster")),
        },
        "DateStyle" => {
            let v = value.to_ascii_uppercase();
            let style = if v.contains("ISO") { "ISO" } else if v.contains("GERMAN") { "German" } else if v.contains("SQL") { "SQL" } else if v.contains("POSTGRES") { "Postgres" } else { "ISO" };
            let order = if v.contains("DMY") || v.contains("EURO") { "DMY" } else if v.contains("YMD") { "YMD" } else { "MDY" };
            format!("{style}, {order}")
        }
        _ => value.to_string(),
    })
}

/// A Postgres duration (`500`, `500ms`, `5s`, `1min`, `2h`) in milliseconds.
pub fn parse_duration_ms(value: &str) -> Option<u64> {
    let v = value.trim().trim_matches('\'').to_ascii_lowercase();
    let split = v.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match unit.trim() {
        "" | "ms" => 1.0,
        "s" => 1000.0,
        "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        "us" => 0.001,
        _ => return None,
    };
    Some((number * factor).round() as u64)
}

fn parse_offset(tz: &str) -> Option<i32> {
    let (sign, rest) = match tz.as_bytes().first()? {
        b'+' => (1, &tz[1..]),
        b'-' => (-1, &tz[1..]),
        _ => return None,
    };
    let mut parts = rest.split(':');
    let hours: i32 = parts.next()?.parse().ok()?;
    let minutes: i32 = parts.next().map(|m| m.parse().ok()).unwrap_or(Some(0))?;
    (hours <= 15 && minutes < 60).then_some(sign * (hours * 60 + minutes))
}
