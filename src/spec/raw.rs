//! The YAML shape of a dataset spec, as serde reads it. Nothing here is
//! checked beyond its shape; `validate` turns it into a [`super::Spec`].

use std::collections::BTreeMap;

use serde::Deserialize;

use super::yaml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpec {
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub owner: Option<String>,
    /// Cron: 5 fields, or 6 with seconds first.
    #[serde(default)]
    pub schedule: Option<Spanned<String>>,
    /// IANA zone the schedule is read in (default UTC).
    #[serde(default)]
    pub timezone: Option<Spanned<String>>,
    /// What slots missed while no server ran do: latest (default), all, none.
    #[serde(default)]
    pub catchup: Option<Spanned<String>>,
    /// Run again after a transient failure: `{ max: 3, delay: 30s, backoff: 2 }`.
    #[serde(default)]
    pub retries: Option<Spanned<RawRetries>>,
    /// Datasets whose runs this one follows (besides those its gold SQL and
    /// `relationships` expectations read).
    #[serde(default)]
    pub depends_on: Vec<Spanned<String>>,
    /// How old the last successful run may get: `{ warn_after: 26h, error_after: 48h }`.
    #[serde(default)]
    pub freshness: Option<Spanned<RawFreshness>>,
    /// Webhooks told about failures, expectation failures, anomalies, staleness.
    #[serde(default)]
    pub notify: Vec<Spanned<RawNotify>>,
    /// `on_file`: also run when new landing files arrive (and are complete).
    #[serde(default)]
    pub trigger: Option<Spanned<String>>,
    /// Stop a run that takes longer, e.g. `30m`.
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
    /// Compact and vacuum the dataset's tables on a schedule.
    #[serde(default)]
    pub maintenance: Option<Spanned<RawMaintenance>>,
    /// How the server serves the dataset's tables: `{ memory: true }`.
    #[serde(default)]
    pub serve: Option<Spanned<RawServe>>,
    pub source: Spanned<RawSource>,
    #[serde(default)]
    pub bronze: RawBronze,
    #[serde(default)]
    pub silver: Option<Spanned<RawSilver>>,
    #[serde(default)]
    pub gold: Vec<Spanned<RawGoldModel>>,
    /// Descriptions, tags and masks of the dataset's columns (by their silver name).
    #[serde(default)]
    pub columns: BTreeMap<String, Spanned<RawColumn>>,
}

/// `maintenance: { schedule: "0 3 * * SUN", optimize: true, vacuum: 7d }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMaintenance {
    pub schedule: Spanned<String>,
    #[serde(default)]
    pub optimize: Option<Spanned<bool>>,
    /// Retention: delete files unused for longer.
    #[serde(default)]
    pub vacuum: Option<Spanned<String>>,
}

/// `serve: { memory: true }` (silver and gold) or `{ memory: [silver] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServe {
    #[serde(default)]
    pub memory: Option<Spanned<RawMemory>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawMemory {
    All(bool),
    Layers(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    /// `env:NAME`: the variable holding the webhook URL.
    pub webhook: Spanned<String>,
    /// Events: failure, success, expectation_failure, anomaly, freshness.
    #[serde(default)]
    pub on: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFreshness {
    #[serde(default)]
    pub warn_after: Option<Spanned<String>>,
    #[serde(default)]
    pub error_after: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetries {
    /// Attempts after the first.
    pub max: Spanned<u32>,
    /// Wait before the first retry, e.g. `30s` (default 30s).
    #[serde(default)]
    pub delay: Option<Spanned<String>>,
    /// Each later wait is the previous one times this (default 2).
    #[serde(default)]
    pub backoff: Option<Spanned<f64>>,
}

/// What a spec says about one column.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawColumn {
    #[serde(default)]
    pub description: Option<String>,
    /// e.g. `[pii]`; roles `unmask` tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// `hash`, `redact`, `partial(4)`, `null`, or a SQL expression over the row.
    #[serde(default)]
    pub mask: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub format: Spanned<String>,
    /// Glob relative to the lake, or an absolute path / URL.
    #[serde(default)]
    pub path: Option<Spanned<String>>,
    // Spreadsheets
    #[serde(default)]
    pub sheet: Option<SheetRef>,
    /// 1-based row holding the column names (rows above are titles and notes).
    #[serde(default)]
    pub header_row: Option<Spanned<u32>>,
    // CSV
    #[serde(default)]
    pub delimiter: Option<Spanned<String>>,
    #[serde(default)]
    pub quote: Option<Spanned<String>>,
    #[serde(default)]
    pub encoding: Option<Spanned<String>>,
    #[serde(default)]
    pub null_values: Option<Vec<String>>,
    // Postgres
    /// `postgres://...` or `env:VARIABLE` naming a variable that holds the URL.
    #[serde(default)]
    pub url: Option<Spanned<String>>,
    #[serde(default)]
    pub query: Option<Spanned<String>>,
    #[serde(default)]
    pub batch_size: Option<usize>,
    // Postgres change data capture (postgres_cdc)
    /// The one source table (`schema.table`) this dataset copies.
    #[serde(default)]
    pub tables: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub publication: Option<Spanned<String>>,
    #[serde(default)]
    pub slot: Option<Spanned<String>>,
    /// `5s` (a duration) or `10000` (a number of changes).
    #[serde(default)]
    pub flush_every: Option<Spanned<serde_json::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SheetRef {
    Index(u32),
    Name(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBronze {
    #[serde(default)]
    pub mode: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSilver {
    #[serde(default)]
    pub mode: Option<Spanned<String>>,
    #[serde(default)]
    pub key: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub rules: Vec<Spanned<RawRule>>,
    #[serde(default)]
    pub expectations: Vec<Spanned<RawExpectation>>,
    /// Columns each write sorts its rows by, so file statistics prune.
    #[serde(default)]
    pub cluster_by: Option<Spanned<Vec<String>>>,
    // mode: cdc
    /// `_lsn` (the default) or a source column ordering a key's changes.
    #[serde(default)]
    pub sequence_by: Option<Spanned<String>>,
    /// `scd1` (latest row per key) or `scd2` (every version).
    #[serde(default)]
    pub history: Option<Spanned<String>>,
    #[serde(default)]
    pub track_history_on: Option<Spanned<Vec<String>>>,
    /// `apply`, `soft` or `ignore`.
    #[serde(default)]
    pub deletes: Option<Spanned<String>>,
}

/// One tidy-up step; the YAML key names the rule.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RawRule {
    Rename(BTreeMap<String, String>),
    Select(Vec<String>),
    Drop(Vec<String>),
    Trim(ColumnsOrAll),
    Normalize(RawNormalize),
    TypeCast(BTreeMap<String, RawCast>),
    MapCategories(RawMapCategories),
    Melt(RawMelt),
    Filter(String),
    Derive(BTreeMap<String, String>),
    Dedupe(RawDedupe),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ColumnsOrAll {
    Columns(Vec<String>),
    All(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNormalize {
    pub columns: ColumnsOrAll,
    /// lower | upper
    #[serde(default)]
    pub case: Option<String>,
    /// Collapse runs of white space into one space.
    #[serde(default)]
    pub collapse_spaces: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawCast {
    Type(String),
    Detailed(RawCastDetail),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCastDetail {
    #[serde(rename = "type")]
    pub data_type: String,
    /// Numbers: `es` (1.234,5), `en` (1,234.5); dates: a strftime pattern.
    #[serde(default)]
    pub format: Option<String>,
    /// `fail` (default) or `null`: what an unparseable value becomes.
    #[serde(default, deserialize_with = "null_means_null")]
    pub on_error: Option<String>,
    /// Booleans: the texts meaning true / false.
    #[serde(default)]
    pub true_values: Option<Vec<String>>,
    #[serde(default)]
    pub false_values: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMapCategories {
    pub column: String,
    pub mapping: BTreeMap<String, serde_json::Value>,
    #[serde(default, deserialize_with = "null_means_null")]
    pub unmapped: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMelt {
    pub id: Vec<String>,
    /// Explicit value columns...
    #[serde(default)]
    pub values: Option<Vec<String>>,
    /// ...or a regular expression selecting them.
    #[serde(default)]
    pub pattern: Option<String>,
    pub variable: String,
    pub value: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDedupe {
    pub key: Vec<String>,
    /// first | last (by ingestion order)
    #[serde(default)]
    pub keep: Option<String>,
}

/// An expectation: one rule key plus optional `on_fail` and `mostly`.
#[derive(Debug, Deserialize)]
pub struct RawExpectation {
    #[serde(flatten)]
    pub check: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGoldModel {
    pub name: String,
    pub sql: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub columns: BTreeMap<String, Spanned<RawColumn>>,
}

/// For policies whose choices include `null`: a YAML `null` there is the
/// word "null", not an absent value (absent keys take the serde default).
fn null_means_null<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let value: Option<String> = Option::deserialize(deserializer)?;
    Ok(Some(value.unwrap_or_else(|| "null".to_string())))
}
