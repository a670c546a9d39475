//! Dataset specs: YAML files → raw serde types ([`raw`]) → validated
//! [`Spec`]s. Every error names the file, line and column and says what to
//! do. This is the only module that names the YAML crate (in `yaml.rs`).

pub mod raw;
mod schedule;
pub mod secrets;
mod validate;
pub mod yaml;

use std::fmt;
use std::path::{Path, PathBuf};

use datafusion::arrow::datatypes::DataType;

pub use schedule::{Catchup, Schedule};
pub use validate::{load_dir, load_file, parse_expectations};

/// Where something is in a spec file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: u32,
    pub column: u32,
}

impl Location {
    pub fn new(file: &Path, position: yaml::Position) -> Self {
        Location {
            file: file.to_path_buf(),
            line: position.line.max(1),
            column: position.column.max(1),
        }
    }

    pub fn start_of(file: &Path) -> Self {
        Location {
            file: file.to_path_buf(),
            line: 1,
            column: 1,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// A problem in a spec: what, where, and what to do about it.
#[derive(Debug, Clone)]
pub struct SpecError {
    pub location: Location,
    pub message: String,
    pub hint: Option<String>,
}

impl SpecError {
    pub fn new(location: Location, message: impl Into<String>) -> Self {
        SpecError {
            location,
            message: message.into(),
            hint: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: error: {}", self.location, self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecError {}

/// Every spec in a directory plus the gold models, in dependency order.
#[derive(Debug, Clone, Default)]
pub struct Project {
    pub datasets: Vec<Spec>,
    /// Gold models from every spec and from `gold/*.sql`, ordered so that
    /// each comes after the tables it reads.
    pub gold: Vec<GoldModel>,
}

impl Project {
    pub fn dataset(&self, name: &str) -> Option<&Spec> {
        self.datasets.iter().find(|d| d.name == name)
    }

    /// The datasets `name` follows: its `depends_on`, the datasets whose
    /// tables its gold models read, and those its `relationships`
    /// expectations look values up in. Sorted, without `name`.
    pub fn upstream(&self, name: &str) -> Vec<String> {
        let Some(spec) = self.dataset(name) else { return vec![] };
        let mut names: Vec<String> = spec.depends_on.iter().map(|d| d.value.clone()).collect();
        let mut owner_of = |table: &str| {
            let bare = table.rsplit('.').next().unwrap_or(table);
            let bare = bare.strip_suffix(QUARANTINE_SUFFIX).unwrap_or(bare);
            if self.dataset(bare).is_some() {
                names.push(bare.to_string());
            }
        };
        for model in self.gold.iter().filter(|m| m.dataset.as_deref() == Some(name)) {
            for table in &model.reads {
                if table.split('.').rev().nth(1).is_some_and(|layer| layer != "gold") {
                    owner_of(table);
                }
            }
        }
        for expectation in spec.silver.iter().flat_map(|s| &s.expectations) {
            if expectation.value.kind == "relationships"
                && let Some(to) = expectation.value.args.get("to").and_then(|t| t.as_str())
            {
                owner_of(to);
            }
        }
        names.sort();
        names.dedup();
        names.retain(|n| n != name);
        names
    }

    /// `root` and every dataset that follows it, directly or not, each after
    /// all of its upstream datasets (a topological order).
    pub fn downstream_of(&self, root: &str) -> Vec<String> {
        let mut members: std::collections::BTreeSet<String> = [root.to_string()].into();
        loop {
            let before = members.len();
            for d in &self.datasets {
                if !members.contains(&d.name) && self.upstream(&d.name).iter().any(|u| members.contains(u)) {
                    members.insert(d.name.clone());
                }
            }
            if members.len() == before {
                break;
            }
        }
        let mut ordered: Vec<String> = Vec::with_capacity(members.len());
        while ordered.len() < members.len() {
            let ready: Vec<String> = members
                .iter()
                .filter(|m| !ordered.contains(m))
                .filter(|m| self.upstream(m).iter().all(|u| !members.contains(u) || ordered.contains(u)))
                .cloned()
                .collect();
            if ready.is_empty() {
                // A cycle (refused when specs load); keep the rest in name order.
                ordered.extend(members.iter().filter(|m| !ordered.contains(m)).cloned().collect::<Vec<_>>());
                break;
            }
            ordered.extend(ready);
        }
        ordered
    }
}

/// One dataset, validated.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub description: Option<String>,
    pub owner: Option<String>,
    pub schedule: Option<Schedule>,
    /// Transient failures retried, how long a run may take.
    pub policy: RunPolicy,
    /// How stale the dataset may get before it warns / errors.
    pub freshness: Option<Freshness>,
    /// Webhooks to alert.
    pub notify: Vec<Notify>,
    /// `trigger: on_file`: run when new landing files arrive.
    pub on_file: bool,
    /// `maintenance:`: compact and vacuum the dataset's tables on a schedule.
    pub maintenance: Option<Maintenance>,
    /// `serve: { memory: ... }`: which of its layers' tables the server
    /// keeps in memory.
    pub memory: InMemory,
    /// Datasets named in `depends_on:`.
    pub depends_on: Vec<Located<String>>,
    pub file: PathBuf,
    /// The spec file's text and its SHA-256 (hex).
    pub text: String,
    pub hash: String,
    pub source: Source,
    pub silver: Option<Silver>,
    /// Names of the gold models this spec declares.
    pub gold: Vec<String>,
    /// Descriptions, tags and masks of its columns; they apply to the
    /// dataset's bronze, silver and quarantine tables.
    pub columns: Vec<ColumnPolicy>,
}

/// The layers whose tables of a dataset are served from memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InMemory {
    pub bronze: bool,
    pub silver: bool,
    /// The gold models the spec declares.
    pub gold: bool,
}

/// Table maintenance on a schedule (the scheduler runs it like a slot of the
/// dataset, once across replicas): OPTIMIZE each table of the dataset
/// (silver Z-ordered by `cluster_by`), then VACUUM with the retention.
#[derive(Debug, Clone)]
pub struct Maintenance {
    pub schedule: Schedule,
    pub optimize: bool,
    pub vacuum: Option<std::time::Duration>,
}

/// A webhook and the events it is told about.
#[derive(Debug, Clone, PartialEq)]
pub struct Notify {
    /// The environment variable holding the URL (URLs carry their secret).
    pub webhook_env: String,
    pub on: Vec<AlertEvent>,
    pub location: Location,
}

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertEvent {
    /// A run failed or timed out (after its retries).
    Failure,
    Success,
    /// An expectation failed in a run (whatever its on_fail).
    ExpectationFailure,
    /// A `row_count_anomaly` failed in a run.
    Anomaly,
    /// The dataset's freshness turned warn or error.
    Freshness,
}

impl AlertEvent {
    pub const ALL: [AlertEvent; 5] =
        [AlertEvent::Failure, AlertEvent::Success, AlertEvent::ExpectationFailure, AlertEvent::Anomaly, AlertEvent::Freshness];

    pub fn as_str(&self) -> &'static str {
        match self {
            AlertEvent::Failure => "failure",
            AlertEvent::Success => "success",
            AlertEvent::ExpectationFailure => "expectation_failure",
            AlertEvent::Anomaly => "anomaly",
            AlertEvent::Freshness => "freshness",
        }
    }

    pub fn parse(text: &str) -> Option<AlertEvent> {
        AlertEvent::ALL.into_iter().find(|e| e.as_str() == text)
    }
}

/// How long after its last successful run a dataset is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    pub warn_after: Option<std::time::Duration>,
    pub error_after: Option<std::time::Duration>,
}

/// A dataset's freshness state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreshnessState {
    Fresh,
    Warn,
    Error,
    /// It has never run successfully.
    Never,
}

impl FreshnessState {
    pub fn as_str(&self) -> &'static str {
        match self {
            FreshnessState::Fresh => "fresh",
            FreshnessState::Warn => "warn",
            FreshnessState::Error => "error",
            FreshnessState::Never => "never",
        }
    }
}

impl Freshness {
    /// The state of a dataset whose last success is `age` old (`None`: never).
    pub fn state(&self, age: Option<std::time::Duration>) -> FreshnessState {
        let Some(age) = age else { return FreshnessState::Never };
        if self.error_after.is_some_and(|e| age > e) {
            FreshnessState::Error
        } else if self.warn_after.is_some_and(|w| age > w) {
            FreshnessState::Warn
        } else {
            FreshnessState::Fresh
        }
    }
}

/// How a dataset's runs recover and how long they may take.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunPolicy {
    pub retries: Retries,
    /// A run still working after this long is stopped (`timed_out`).
    pub timeout: Option<std::time::Duration>,
}

/// Runs that fail for a transient reason (a source or store unreachable, a
/// lock not free in time) start again, up to `max` more times.
#[derive(Debug, Clone, PartialEq)]
pub struct Retries {
    pub max: u32,
    pub delay: std::time::Duration,
    pub backoff: f64,
}

impl Default for Retries {
    fn default() -> Self {
        Retries { max: 0, delay: std::time::Duration::from_secs(30), backoff: 2.0 }
    }
}

impl Retries {
    /// The wait before attempt `attempt` (2 = the first retry).
    pub fn delay_before(&self, attempt: u32) -> std::time::Duration {
        let factor = self.backoff.powi(attempt.saturating_sub(2).min(30) as i32);
        self.delay.mul_f64(factor).min(std::time::Duration::from_secs(24 * 3600))
    }
}

/// The silver table that holds a dataset's quarantined rows is named
/// `<dataset>` + this suffix.
pub const QUARANTINE_SUFFIX: &str = "__quarantine";

/// The name of `dataset`'s quarantine table (in the silver layer).
pub fn quarantine_table(dataset: &str) -> String {
    format!("{dataset}{QUARANTINE_SUFFIX}")
}

/// What a spec declares about one column: documentation and governance.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnPolicy {
    pub name: String,
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub mask: Option<Mask>,
}

/// How a column is shown to roles that may not see it in clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mask {
    /// A keyed hash of the value (hex): stable, so masked columns still join.
    Hash,
    /// `********` in place of every non-NULL value.
    Redact,
    /// Only the last `n` characters, the rest as `*`.
    Partial(usize),
    /// NULL, with the column's type.
    Null,
    /// A SQL expression over the row, e.g. `left(rut, 2) || '***'`.
    Expression(String),
}

impl Mask {
    /// Parse what a spec writes after `mask:`.
    pub fn parse(text: &str) -> Result<Mask, String> {
        let trimmed = text.trim();
        let lower = trimmed.to_ascii_lowercase();
        match lower.as_str() {
            "hash" => return Ok(Mask::Hash),
            "redact" => return Ok(Mask::Redact),
            "null" => return Ok(Mask::Null),
            "" => return Err("empty mask".into()),
            _ => {}
        }
        if let Some(inner) = lower.strip_prefix("partial(").and_then(|r| r.strip_suffix(')')) {
            return inner
                .trim()
                .parse::<usize>()
                .map(Mask::Partial)
                .map_err(|_| format!("partial(n) takes the number of trailing characters to show, got '{trimmed}'"));
        }
        use datafusion::sql::sqlparser::{dialect::PostgreSqlDialect, parser::Parser};
        Parser::new(&PostgreSqlDialect {})
            .try_with_sql(trimmed)
            .and_then(|mut p| p.parse_expr())
            .map(|_| Mask::Expression(trimmed.to_string()))
            .map_err(|e| format!("'{trimmed}' is neither hash, redact, partial(n), null nor a SQL expression: {e}"))
    }
}

#[derive(Debug, Clone)]
pub struct Source {
    pub format: SourceFormat,
    /// Glob over the landing zone (relative to the lake) for file formats.
    pub path: Option<String>,
    pub location: Location,
}

#[derive(Debug, Clone)]
pub enum SourceFormat {
    Csv(CsvOptions),
    Excel(ExcelOptions),
    Parquet,
    Json,
    Ndjson,
    Postgres(PostgresOptions),
    PostgresCdc(CdcSource),
}

impl SourceFormat {
    pub fn name(&self) -> &'static str {
        match self {
            SourceFormat::Csv(_) => "csv",
            SourceFormat::Excel(_) => "excel",
            SourceFormat::Parquet => "parquet",
            SourceFormat::Json => "json",
            SourceFormat::Ndjson => "ndjson",
            SourceFormat::Postgres(_) => "postgres",
            SourceFormat::PostgresCdc(_) => "postgres_cdc",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CsvOptions {
    pub delimiter: u8,
    pub quote: u8,
    pub encoding: &'static encoding_rs::Encoding,
    pub null_values: Vec<String>,
    /// 1-based row of the header.
    pub header_row: u32,
}

#[derive(Debug, Clone)]
pub enum Sheet {
    /// 0-based position.
    Index(usize),
    Name(String),
}

#[derive(Debug, Clone)]
pub struct ExcelOptions {
    pub sheet: Option<Sheet>,
    pub header_row: u32,
    pub null_values: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// A `postgres://` URL, or `env:NAME`.
    pub url: String,
    /// SQL with optional `{{ start_date }}` / `{{ end_date }}` parameters.
    pub query: String,
    pub batch_size: usize,
}

/// A table of a Postgres database copied change by change through logical
/// replication (pgoutput): an initial snapshot, then every insert, update,
/// delete and truncate.
#[derive(Debug, Clone)]
pub struct CdcSource {
    /// A `postgres://` URL, or `env:NAME`.
    pub url: String,
    pub schema: String,
    pub table: String,
    /// Created (`FOR TABLE` the source table) when missing.
    pub publication: String,
    /// Created when missing; its confirmed position advances only after the
    /// Delta commit holding the changes before it.
    pub slot: String,
    /// Commit bronze at least this often while changes arrive...
    pub flush_interval: std::time::Duration,
    /// ...or as soon as this many changes are waiting.
    pub flush_changes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    Overwrite,
    Append,
    Merge,
    Scd2,
    /// Changes captured from a database applied by key (see [`CdcApply`]).
    Cdc,
}

/// How `mode: cdc` applies changes to silver.
#[derive(Debug, Clone, PartialEq)]
pub struct CdcApply {
    /// A source column that orders a key's changes; `None`: the change's
    /// position in the source's log (commit LSN, then order in the
    /// transaction).
    pub sequence_by: Option<String>,
    pub history: History,
    /// SCD2: a new version only when one of these changes (all columns when empty).
    pub track_history_on: Vec<String>,
    pub deletes: Deletes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum History {
    /// The latest row per key.
    Scd1,
    /// Every version, with `_valid_from`, `_valid_to` and `_is_current`.
    Scd2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletes {
    /// The row leaves silver (SCD2: its current version is closed).
    Apply,
    /// The row stays, with `_deleted` true.
    Soft,
    /// Deletes are not applied.
    Ignore,
}

impl WriteMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WriteMode::Overwrite => "overwrite",
            WriteMode::Append => "append",
            WriteMode::Merge => "merge",
            WriteMode::Scd2 => "scd2",
            WriteMode::Cdc => "cdc",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Silver {
    pub mode: WriteMode,
    pub key: Vec<String>,
    pub rules: Vec<Located<Rule>>,
    pub expectations: Vec<Located<Expectation>>,
    /// `cluster_by:` columns: every write sorts its rows by them (so each
    /// file's min/max prune queries filtering on them), and `workbench
    /// optimize` Z-orders by them unless told otherwise.
    pub cluster_by: Option<Located<Vec<String>>>,
    /// Set for `mode: cdc`.
    pub cdc: Option<CdcApply>,
}

/// A value with the place in the spec it came from.
#[derive(Debug, Clone)]
pub struct Located<T> {
    pub value: T,
    pub location: Location,
}

#[derive(Debug, Clone)]
pub enum Rule {
    Rename(Vec<(String, String)>),
    Select(Vec<String>),
    Drop(Vec<String>),
    /// `None`: every text column.
    Trim(Option<Vec<String>>),
    Normalize {
        columns: Option<Vec<String>>,
        case: Option<TextCase>,
        collapse_spaces: bool,
    },
    TypeCast(Vec<Cast>),
    MapCategories {
        column: String,
        mapping: Vec<(String, String)>,
        unmapped: Unmapped,
    },
    Melt {
        id: Vec<String>,
        values: MeltValues,
        variable: String,
        value: String,
    },
    Filter(String),
    Derive(Vec<(String, String)>),
    Dedupe {
        key: Vec<String>,
        keep: Keep,
    },
}

impl Rule {
    pub fn name(&self) -> &'static str {
        match self {
            Rule::Rename(_) => "rename",
            Rule::Select(_) => "select",
            Rule::Drop(_) => "drop",
            Rule::Trim(_) => "trim",
            Rule::Normalize { .. } => "normalize",
            Rule::TypeCast(_) => "type_cast",
            Rule::MapCategories { .. } => "map_categories",
            Rule::Melt { .. } => "melt",
            Rule::Filter(_) => "filter",
            Rule::Derive(_) => "derive",
            Rule::Dedupe { .. } => "dedupe",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextCase {
    Lower,
    Upper,
}

#[derive(Debug, Clone)]
pub enum MeltValues {
    Columns(Vec<String>),
    Pattern(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmapped {
    Keep,
    Null,
    Fail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    First,
    Last,
}

#[derive(Debug, Clone)]
pub struct Cast {
    pub column: String,
    pub to: DataType,
    /// The type as written, for messages.
    pub type_name: String,
    pub format: Option<CastFormat>,
    /// Whether an unparseable value becomes NULL (else the run fails).
    pub null_on_error: bool,
    pub true_values: Vec<String>,
    pub false_values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CastFormat {
    /// Decimal comma, dot (or space) thousands: `1.234.567,89`.
    DecimalComma,
    /// Decimal point, comma thousands: `1,234,567.89`.
    DecimalPoint,
    /// A chrono strftime pattern for dates and timestamps.
    Pattern(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFail {
    Warn,
    Drop,
    Quarantine,
    Fail,
}

/// A data quality expectation, kept as declared for the validation engine.
#[derive(Debug, Clone)]
pub struct Expectation {
    /// e.g. `not_null`, `unique`, `between`.
    pub kind: String,
    /// The rule's arguments as written.
    pub args: serde_json::Value,
    pub on_fail: OnFail,
    pub mostly: f64,
}

pub const EXPECTATION_KINDS: &[&str] = &[
    "not_null",
    "unique",
    "accepted_values",
    "between",
    "regex",
    "length_between",
    "row_count_between",
    "relationships",
    "freshness",
    "expression",
    "row_count_anomaly",
];

/// A gold model: a SQL query materialized as `gold.<name>`.
#[derive(Debug, Clone)]
pub struct GoldModel {
    pub name: String,
    pub sql: String,
    pub description: Option<String>,
    /// The dataset whose spec declares it, if any (else a `gold/*.sql` file).
    pub dataset: Option<String>,
    pub location: Location,
    /// Tables it reads, as `layer.table`.
    pub reads: Vec<String>,
    /// Descriptions, tags and masks of its output columns.
    pub columns: Vec<ColumnPolicy>,
}
