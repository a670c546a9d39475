//! Raw spec → validated [`Spec`]: names, formats, rule arguments, SQL that
//! parses, gold references that resolve, no dependency cycles. Checks that
//! need data (columns that exist) happen when the rules are planned.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::sql::parser::DFParser;
use datafusion::sql::resolve::resolve_table_references;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use sha2::{Digest, Sha256};

use super::raw::{self, ColumnsOrAll, RawCast, RawRule, RawSpec, SheetRef};
use super::yaml::{self, Spanned, position_of};
use super::*;
use crate::storage::is_identifier;

/// `retries.max`, at most.
const MAX_RETRIES: u32 = 20;

/// Load every `*.yaml` / `*.yml` spec in `dir` and every `gold/*.sql` model.
/// All errors are collected, not just the first.
pub fn load_dir(dir: &Path) -> Result<Project, Vec<SpecError>> {
    let mut errors = Vec::new();
    let mut datasets = Vec::new();
    let mut models = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) => {
            return Err(vec![SpecError::new(
                Location::start_of(dir),
                format!("cannot read the specs directory: {err}"),
            )
            .hint("create it or pass --specs DIR")]);
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    for file in files {
        match load_file(&file) {
            Ok((spec, gold)) => {
                datasets.push(spec);
                models.extend(gold);
            }
            Err(mut errs) => errors.append(&mut errs),
        }
    }
    let gold_dir = dir.join("gold");
    if gold_dir.is_dir() {
        match load_sql_models(&gold_dir) {
            Ok(mut sql_models) => models.append(&mut sql_models),
            Err(mut errs) => errors.append(&mut errs),
        }
    }
    let mut seen: HashMap<&str, &Path> = HashMap::new();
    for spec in &datasets {
        if let Some(first) = seen.insert(&spec.name, &spec.file) {
            errors.push(
                SpecError::new(Location::start_of(&spec.file), format!("dataset '{}' is also defined in {}", spec.name, first.display()))
                    .hint("dataset names must be unique; rename one of them"),
            );
        }
    }
    let gold = match order_gold(&datasets, models) {
        Ok(gold) => gold,
        Err(mut errs) => {
            errors.append(&mut errs);
            Vec::new()
        }
    };
    let project = Project { datasets, gold };
    errors.extend(check_dependencies(&project));
    if errors.is_empty() {
        Ok(project)
    } else {
        Err(errors)
    }
}

/// `depends_on` names datasets that exist, and no dataset follows itself.
fn check_dependencies(project: &Project) -> Vec<SpecError> {
    let mut errors = Vec::new();
    for spec in &project.datasets {
        for dependency in &spec.depends_on {
            if dependency.value == spec.name {
                errors.push(SpecError::new(dependency.location.clone(), format!("dataset '{}' depends on itself", spec.name)).hint("remove it from depends_on"));
            } else if project.dataset(&dependency.value).is_none() {
                let known: Vec<&str> = project.datasets.iter().map(|d| d.name.as_str()).collect();
                errors.push(
                    SpecError::new(dependency.location.clone(), format!("depends_on names unknown dataset '{}'", dependency.value))
                        .hint(format!("datasets: {}", known.join(", "))),
                );
            }
        }
    }
    if !errors.is_empty() {
        return errors;
    }
    // A cycle: following upstream edges from a dataset comes back to it.
    for spec in &project.datasets {
        let mut path = vec![spec.name.clone()];
        let mut frontier = project.upstream(&spec.name);
        let mut seen = std::collections::HashSet::new();
        while let Some(next) = frontier.pop() {
            if next == spec.name {
                path.push(next);
                let location = spec.depends_on.first().map(|d| d.location.clone()).unwrap_or_else(|| Location::start_of(&spec.file));
                errors.push(
                    SpecError::new(location, format!("dataset '{}' depends on itself through other datasets ({})", spec.name, path.join(" → ")))
                        .hint("datasets must form a graph without cycles: remove one of the dependencies (depends_on, gold SQL reads or relationships)"),
                );
                return errors;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                frontier.extend(project.upstream(&next));
            }
        }
    }
    errors
}

/// Load and validate one spec file; returns the spec and its gold models.
pub fn load_file(file: &Path) -> Result<(Spec, Vec<GoldModel>), Vec<SpecError>> {
    let text = std::fs::read_to_string(file).map_err(|err| {
        vec![SpecError::new(Location::start_of(file), format!("cannot read spec: {err}"))]
    })?;
    let raw: RawSpec = yaml::from_str(&text).map_err(|err| {
        let location = Location::new(file, err.position.unwrap_or_default());
        vec![SpecError::new(location, err.message).hint(
            "check the indentation and the key names against the spec reference in README.md",
        )]
    })?;
    let mut v = Validator {
        file: file.to_path_buf(),
        errors: Vec::new(),
    };
    let spec = v.spec(raw, &text);
    if v.errors.is_empty() {
        Ok(spec.expect("no errors means a spec"))
    } else {
        Err(v.errors)
    }
}

struct Validator {
    file: PathBuf,
    errors: Vec<SpecError>,
}

impl Validator {
    fn at<T>(&self, value: &Spanned<T>) -> Location {
        Location::new(&self.file, position_of(value))
    }

    fn error(&mut self, location: Location, message: impl Into<String>, hint: impl Into<String>) {
        self.errors.push(SpecError::new(location, message).hint(hint));
    }

    fn spec(&mut self, raw: RawSpec, text: &str) -> Option<(Spec, Vec<GoldModel>)> {
        let name = raw.name.value.clone();
        if !is_identifier(&name) {
            self.error(
                self.at(&raw.name),
                format!("dataset name '{name}' is not a valid table name"),
                "use lower-case letters, digits and underscores, starting with a letter (e.g. sales_orders)",
            );
        }
        let mut source = self.source(&raw.source);
        if let Some(Source { format: SourceFormat::PostgresCdc(cdc), .. }) = &mut source {
            for name_of in [&mut cdc.publication, &mut cdc.slot] {
                if name_of.is_empty() {
                    *name_of = format!("workbench_{name}");
                }
            }
        }
        if let Some(mode) = &raw.bronze.mode
            && mode.value != "append"
        {
            self.error(
                self.at(mode),
                format!("unknown bronze mode '{}'", mode.value),
                "bronze is an append-only raw copy: use `mode: append` or leave it out",
            );
        }
        let silver = raw.silver.as_ref().and_then(|s| self.silver(s));
        if let (Some(source), Some(silver), Some(raw_silver)) = (&source, &silver, &raw.silver) {
            let cdc_source = matches!(source.format, SourceFormat::PostgresCdc(_));
            if cdc_source != (silver.mode == WriteMode::Cdc) {
                let (message, hint) = if cdc_source {
                    ("a postgres_cdc source's silver applies its changes by key", "use silver mode: cdc with key: [..]")
                } else {
                    ("silver mode cdc applies changes captured from a database", "use source format: postgres_cdc, or another silver mode")
                };
                self.error(self.at(raw_silver), message, hint);
            }
        }
        let schedule = self.schedule(&raw);
        if let (Some(Source { format: SourceFormat::PostgresCdc(_), .. }), Some(at)) = (&source, raw.schedule.as_ref()) {
            self.error(
                self.at(at),
                "a postgres_cdc dataset needs no schedule: `serve` captures its changes continuously",
                "remove `schedule` (`workbench run` catches up on demand)",
            );
        }
        let policy = self.policy(&raw);
        let freshness = raw.freshness.as_ref().and_then(|f| self.freshness(f));
        let notify = raw.notify.iter().filter_map(|n| self.notify(n)).collect();
        let maintenance = raw.maintenance.as_ref().and_then(|m| self.maintenance(m, &raw));
        let memory = raw.serve.as_ref().map(|s| self.in_memory(s, &raw)).unwrap_or_default();
        let on_file = match &raw.trigger {
            None => false,
            Some(t) if t.value == "on_file" => {
                if raw.source.value.path.is_none() {
                    self.error(self.at(t), "trigger: on_file needs a file source", "a postgres source has no landing files: give it a schedule instead");
                }
                true
            }
            Some(t) => {
                self.error(self.at(t), format!("unknown trigger '{}'", t.value), "use trigger: on_file (run when new landing files arrive), or schedule: for times");
                false
            }
        };
        let mut gold = Vec::new();
        for model in &raw.gold {
            if let Some(m) = self.gold_model(model, &name) {
                gold.push(m);
            }
        }
        let hash = hex::encode(Sha256::digest(text.as_bytes()));
        Some((
            Spec {
                name,
                description: raw.description,
                owner: raw.owner,
                schedule,
                policy,
                freshness,
                notify,
                on_file,
                maintenance,
                memory,
                depends_on: raw.depends_on.iter().map(|d| Located { value: d.value.clone(), location: self.at(d) }).collect(),
                file: self.file.clone(),
                text: text.to_string(),
                hash,
                source: source?,
                silver,
                gold: gold.iter().map(|m| m.name.clone()).collect(),
                columns: self.columns(&raw.columns),
            },
            gold,
        ))
    }

    fn source(&mut self, raw: &Spanned<raw::RawSource>) -> Option<Source> {
        let location = self.at(raw);
        let s = &raw.value;
        let header_row = s.header_row.as_ref().map(|h| h.value).unwrap_or(1);
        if header_row == 0 {
            self.error(self.at(s.header_row.as_ref().expect("checked")), "header_row is 1-based", "the first row is header_row: 1");
        }
        let null_values = s.null_values.clone().unwrap_or_else(|| vec![String::new()]);
        let format = match s.format.value.to_ascii_lowercase().as_str() {
            "csv" | "tsv" => {
                let default_delimiter = if s.format.value.eq_ignore_ascii_case("tsv") { b'\t' } else { b',' };
                let delimiter = self.single_byte(s.delimiter.as_ref(), default_delimiter, "delimiter");
                let quote = self.single_byte(s.quote.as_ref(), b'"', "quote");
                let encoding = match &s.encoding {
                    None => encoding_rs::UTF_8,
                    Some(label) => match encoding_rs::Encoding::for_label(label.value.as_bytes()) {
                        Some(e) => e,
                        None => {
                            self.error(self.at(label), format!("unknown encoding '{}'", label.value), "use utf-8, latin1 or windows-1252");
                            encoding_rs::UTF_8
                        }
                    },
                };
                SourceFormat::Csv(CsvOptions { delimiter, quote, encoding, null_values, header_row })
            }
            "xlsx" | "xls" | "xlsm" | "xlsb" | "ods" | "excel" => SourceFormat::Excel(ExcelOptions {
                sheet: s.sheet.as_ref().map(|sheet| match sheet {
                    SheetRef::Index(i) => Sheet::Index(*i as usize),
                    SheetRef::Name(n) => Sheet::Name(n.clone()),
                }),
                header_row,
                null_values,
            }),
            "parquet" => SourceFormat::Parquet,
            "json" => SourceFormat::Json,
            "ndjson" | "jsonl" => SourceFormat::Ndjson,
            "postgres" | "postgresql" => {
                let url = s.url.as_ref().map(|u| u.value.clone());
                let query = s.query.as_ref().map(|q| q.value.clone());
                match (url, query) {
                    (Some(url), Some(query)) => SourceFormat::Postgres(PostgresOptions {
                        url,
                        query,
                        batch_size: s.batch_size.unwrap_or(8192).max(1),
                    }),
                    _ => {
                        self.error(location.clone(), "a postgres source needs `url` and `query`", "url: env:SALES_DB_URL (or postgres://user@host/db) and query: SELECT ...");
                        return None;
                    }
                }
            }
            "postgres_cdc" => SourceFormat::PostgresCdc(self.cdc_source(raw)?),
            other => {
                self.error(
                    self.at(&s.format),
                    format!("unknown source format '{other}'"),
                    "use one of csv, tsv, xlsx, xls, ods, parquet, json, ndjson, postgres, postgres_cdc",
                );
                return None;
            }
        };
        let is_file = !matches!(format, SourceFormat::Postgres(_) | SourceFormat::PostgresCdc(_));
        if is_file && s.path.is_none() {
            self.error(location.clone(), format!("a {} source needs `path`", format.name()), "path: landing/<dataset>/*.csv (a glob relative to the lake)");
            return None;
        }
        if let (false, Some(path)) = (is_file, &s.path) {
            self.error(self.at(path), format!("a {} source reads a database, not `path`", format.name()), "remove `path`");
        }
        if !matches!(format, SourceFormat::PostgresCdc(_)) {
            for (field, set) in [("tables", s.tables.is_some()), ("publication", s.publication.is_some()), ("slot", s.slot.is_some()), ("flush_every", s.flush_every.is_some())] {
                if set {
                    self.error(location.clone(), format!("`{field}` applies to a postgres_cdc source only"), format!("remove `{field}`, or use format: postgres_cdc"));
                }
            }
        }
        if let Some(path) = &s.path
            && glob::Pattern::new(&path.value).is_err()
        {
            self.error(self.at(path), format!("invalid glob '{}'", path.value), "use * and ** wildcards, e.g. landing/sales/*.csv");
        }
        Some(Source { format, path: s.path.as_ref().map(|p| p.value.clone()), location })
    }

    /// `format: postgres_cdc`: one table, a publication and a slot (named
    /// after the dataset unless given), how often bronze commits.
    fn cdc_source(&mut self, raw: &Spanned<raw::RawSource>) -> Option<CdcSource> {
        let s = &raw.value;
        let location = self.at(raw);
        let (Some(url), Some(tables)) = (&s.url, &s.tables) else {
            self.error(location, "a postgres_cdc source needs `url` and `tables`", "url: env:ERP_DATABASE_URL and tables: [public.account_move_line]");
            return None;
        };
        if s.query.is_some() {
            self.error(self.at(s.query.as_ref().expect("set")), "a postgres_cdc source copies a table, not a query", "remove `query` (use format: postgres for a query)");
        }
        let [table] = tables.value.as_slice() else {
            self.error(
                self.at(tables),
                format!("a postgres_cdc dataset copies one table, got {}", tables.value.len()),
                "write one dataset per source table (they may share a publication; each needs its own slot)",
            );
            return None;
        };
        let (schema, name) = table.split_once('.').unwrap_or(("public", table.as_str()));
        let plain = |n: &str| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !plain(schema) || !plain(name) {
            self.error(self.at(tables), format!("'{table}' is not a schema.table name"), "e.g. tables: [public.account_move_line] (letters, digits and underscores)");
            return None;
        }
        // Unnamed: `workbench_<dataset>`, filled in once the name is known.
        let mut named = |value: &Option<Spanned<String>>, what: &str| -> String {
            match value {
                Some(v) if is_identifier(&v.value) => v.value.clone(),
                Some(v) => {
                    self.error(self.at(v), format!("{what} name '{}' is not a plain name", v.value), "lower-case letters, digits and underscores, e.g. workbench_gl");
                    String::new()
                }
                None => String::new(),
            }
        };
        let publication = named(&s.publication, "publication");
        let slot = named(&s.slot, "slot");
        let (mut flush_interval, mut flush_changes) = (std::time::Duration::from_secs(5), 50_000usize);
        if let Some(every) = &s.flush_every {
            match &every.value {
                serde_json::Value::Number(n) if n.as_u64().is_some_and(|n| n > 0) => flush_changes = n.as_u64().unwrap_or(1) as usize,
                serde_json::Value::String(text) => match humantime::parse_duration(text.trim()) {
                    Ok(d) if d >= std::time::Duration::from_millis(100) => flush_interval = d,
                    _ => self.error(self.at(every), format!("flush_every: '{text}' is not a duration of at least 100ms"), "e.g. flush_every: 5s, or a number of changes: flush_every: 10000"),
                },
                other => self.error(self.at(every), format!("flush_every: {other} is neither a duration nor a number of changes"), "e.g. flush_every: 5s, or flush_every: 10000"),
            }
        }
        Some(CdcSource {
            url: url.value.clone(),
            schema: schema.to_string(),
            table: name.to_string(),
            publication,
            slot,
            flush_interval,
            flush_changes,
        })
    }

    fn maintenance(&mut self, raw: &Spanned<raw::RawMaintenance>, spec: &RawSpec) -> Option<Maintenance> {
        let m = &raw.value;
        let timezone = spec.timezone.as_ref().and_then(|tz| tz.value.parse::<chrono_tz::Tz>().ok()).unwrap_or(chrono_tz::UTC);
        let schedule = match Schedule::parse(&m.schedule.value, timezone, Catchup::Latest) {
            Ok(schedule) => Some(schedule),
            Err(err) => {
                self.error(self.at(&m.schedule), format!("maintenance.schedule: {err}"), "a cron expression, e.g. \"0 3 * * SUN\" (Sundays at 03:00)");
                None
            }
        };
        let optimize = m.optimize.as_ref().is_none_or(|o| o.value);
        let vacuum = match &m.vacuum {
            None => None,
            Some(v) => match humantime::parse_duration(v.value.trim()) {
                Ok(retain) if retain >= std::time::Duration::from_secs(3600) => Some(retain),
                Ok(_) => {
                    self.error(self.at(v), "maintenance.vacuum keeps less than an hour", "a retention shorter than the longest query or table_at you rely on breaks them: e.g. vacuum: 7d");
                    None
                }
                Err(err) => {
                    self.error(self.at(v), format!("maintenance.vacuum: {err}"), "a retention such as 7d or 30d");
                    None
                }
            },
        };
        if !optimize && m.vacuum.is_none() {
            self.error(self.at(raw), "maintenance does nothing: optimize is false and there is no vacuum", "set optimize: true, vacuum: 7d, or both");
            return None;
        }
        Some(Maintenance { schedule: schedule?, optimize, vacuum })
    }

    fn in_memory(&mut self, raw: &Spanned<raw::RawServe>, spec: &RawSpec) -> InMemory {
        let Some(memory) = &raw.value.memory else { return InMemory::default() };
        let has_silver = spec.silver.is_some();
        let has_gold = !spec.gold.is_empty();
        let layers = match &memory.value {
            raw::RawMemory::All(false) => return InMemory::default(),
            raw::RawMemory::All(true) => {
                if !has_silver && !has_gold {
                    self.error(self.at(memory), "serve.memory: this dataset has no silver table or gold model", "list the layers to keep in memory, e.g. memory: [bronze]");
                }
                return InMemory { bronze: false, silver: has_silver, gold: has_gold };
            }
            raw::RawMemory::Layers(layers) => layers,
        };
        let mut kept = InMemory::default();
        for layer in layers {
            match layer.as_str() {
                "bronze" => kept.bronze = true,
                "silver" if has_silver => kept.silver = true,
                "gold" if has_gold => kept.gold = true,
                "silver" | "gold" => {
                    self.error(self.at(memory), format!("serve.memory names {layer}, but this dataset has no {layer} table"), "name only layers the spec writes: bronze, silver (with a silver: section), gold (with gold models)")
                }
                other => self.error(self.at(memory), format!("serve.memory: unknown layer '{other}'"), "use true, or a list of bronze, silver, gold"),
            }
        }
        kept
    }

    fn schedule(&mut self, raw: &RawSpec) -> Option<Schedule> {
        let timezone = match &raw.timezone {
            None => chrono_tz::UTC,
            Some(tz) => match tz.value.parse::<chrono_tz::Tz>() {
                Ok(zone) => zone,
                Err(_) => {
                    self.error(self.at(tz), format!("unknown time zone '{}'", tz.value), "use an IANA name such as America/Santiago or UTC");
                    chrono_tz::UTC
                }
            },
        };
        let catchup = match raw.catchup.as_ref().map(|c| (c, c.value.as_str())) {
            None => Catchup::Latest,
            Some((_, "latest")) => Catchup::Latest,
            Some((_, "all")) => Catchup::All,
            Some((_, "none")) => Catchup::None,
            Some((c, other)) => {
                self.error(self.at(c), format!("unknown catchup '{other}'"), "use latest (run the last missed slot), all (every missed slot) or none");
                Catchup::Latest
            }
        };
        let Some(cron) = &raw.schedule else {
            for (field, name) in [(raw.timezone.as_ref(), "timezone"), (raw.catchup.as_ref(), "catchup")] {
                if let Some(f) = field {
                    self.error(self.at(f), format!("{name} without a schedule"), "add `schedule: \"0 6 * * *\"` (cron) or remove it");
                }
            }
            return None;
        };
        match Schedule::parse(&cron.value, timezone, catchup) {
            Ok(schedule) => Some(schedule),
            Err(message) => {
                self.error(
                    self.at(cron),
                    format!("invalid schedule '{}': {message}", cron.value),
                    "write cron with 5 fields (minute hour day-of-month month day-of-week, e.g. \"0 6 1-3 * 1-5\") or 6 with seconds first",
                );
                None
            }
        }
    }

    fn policy(&mut self, raw: &RawSpec) -> RunPolicy {
        let mut policy = RunPolicy::default();
        if let Some(retries) = &raw.retries {
            let r = &retries.value;
            if r.max.value > MAX_RETRIES {
                self.error(self.at(&r.max), format!("retries.max is {}, at most {MAX_RETRIES}", r.max.value), "a run that fails this often needs a person; alerts tell them");
            }
            policy.retries.max = r.max.value.min(MAX_RETRIES);
            if let Some(delay) = &r.delay {
                match humantime::parse_duration(delay.value.trim()) {
                    Ok(d) => policy.retries.delay = d,
                    Err(e) => self.error(self.at(delay), format!("invalid retries.delay '{}': {e}", delay.value), "write a duration with its unit, e.g. 30s or 5m"),
                }
            }
            if let Some(backoff) = &r.backoff {
                if !(1.0..=10.0).contains(&backoff.value) {
                    self.error(self.at(backoff), format!("retries.backoff is {}, must be between 1 and 10", backoff.value), "1 waits the same delay each time, 2 doubles it");
                } else {
                    policy.retries.backoff = backoff.value;
                }
            }
        }
        if let Some(timeout) = &raw.timeout {
            match humantime::parse_duration(timeout.value.trim()) {
                Ok(d) if !d.is_zero() => policy.timeout = Some(d),
                Ok(_) => self.error(self.at(timeout), "timeout is zero", "write how long a run may take, e.g. 30m, or remove it"),
                Err(e) => self.error(self.at(timeout), format!("invalid timeout '{}': {e}", timeout.value), "write a duration with its unit, e.g. 30m or 2h"),
            }
        }
        policy
    }

    fn notify(&mut self, raw: &Spanned<raw::RawNotify>) -> Option<Notify> {
        let webhook = &raw.value.webhook;
        let Some(variable) = webhook.value.strip_prefix("env:").map(str::trim).filter(|v| !v.is_empty()) else {
            self.error(
                self.at(webhook),
                "a webhook is given as env:NAME, not inline",
                "webhook URLs carry their secret (Slack, Teams, PagerDuty): put it in an environment variable and write webhook: env:ALERTS_URL",
            );
            return None;
        };
        let mut on = Vec::new();
        for event in raw.value.on.iter().flatten() {
            match AlertEvent::parse(&event.value) {
                Some(e) => on.push(e),
                None => {
                    let known: Vec<&str> = AlertEvent::ALL.iter().map(|e| e.as_str()).collect();
                    self.error(self.at(event), format!("unknown alert event '{}'", event.value), format!("use {}", known.join(", ")));
                }
            }
        }
        if raw.value.on.is_none() {
            on.push(AlertEvent::Failure);
        }
        Some(Notify { webhook_env: variable.to_string(), on, location: self.at(raw) })
    }

    fn freshness(&mut self, raw: &Spanned<raw::RawFreshness>) -> Option<Freshness> {
        let mut duration = |value: &Option<Spanned<String>>, name: &str| -> Option<std::time::Duration> {
            let v = value.as_ref()?;
            match humantime::parse_duration(v.value.trim()) {
                Ok(d) if !d.is_zero() => Some(d),
                Ok(_) => {
                    self.error(self.at(v), format!("freshness.{name} is zero"), "write how old the last successful run may get, e.g. 26h");
                    None
                }
                Err(e) => {
                    self.error(self.at(v), format!("invalid freshness.{name} '{}': {e}", v.value), "write a duration with its unit, e.g. 26h or 2d");
                    None
                }
            }
        };
        let warn_after = duration(&raw.value.warn_after, "warn_after");
        let error_after = duration(&raw.value.error_after, "error_after");
        if raw.value.warn_after.is_none() && raw.value.error_after.is_none() {
            self.error(self.at(raw), "freshness needs warn_after, error_after or both", "e.g. freshness: { warn_after: 26h, error_after: 48h }");
            return None;
        }
        if let (Some(w), Some(e)) = (warn_after, error_after)
            && e < w
        {
            self.error(self.at(raw), "freshness.error_after is shorter than warn_after", "a dataset warns first, then errors: error_after >= warn_after");
        }
        (warn_after.is_some() || error_after.is_some()).then_some(Freshness { warn_after, error_after })
    }

    fn single_byte(&mut self, value: Option<&Spanned<String>>, default: u8, what: &str) -> u8 {
        match value {
            None => default,
            Some(v) => {
                let text = v.value.replace("\\t", "\t");
                if text.len() == 1 {
                    text.as_bytes()[0]
                } else {
                    self.error(self.at(v), format!("{what} must be a single character, got '{}'", v.value), format!("e.g. {what}: \";\""));
                    default
                }
            }
        }
    }

    fn silver(&mut self, raw: &Spanned<raw::RawSilver>) -> Option<Silver> {
        let s = &raw.value;
        let mode = match s.mode.as_ref().map(|m| m.value.as_str()).unwrap_or("overwrite") {
            "overwrite" => WriteMode::Overwrite,
            "append" => WriteMode::Append,
            "merge" => WriteMode::Merge,
            "scd2" => WriteMode::Scd2,
            "cdc" => WriteMode::Cdc,
            other => {
                self.error(self.at(s.mode.as_ref().expect("set")), format!("unknown silver mode '{other}'"), "use overwrite, append, merge, scd2 or cdc");
                WriteMode::Overwrite
            }
        };
        let key = s.key.as_ref().map(|k| k.value.clone()).unwrap_or_default();
        if matches!(mode, WriteMode::Merge | WriteMode::Scd2 | WriteMode::Cdc) && key.is_empty() {
            self.error(self.at(raw), format!("silver mode {} needs a `key`", mode.as_str()), "key: [column, ...] identifies a row across runs");
        }
        let mut rules = Vec::new();
        for rule in &s.rules {
            let location = self.at(rule);
            if let Some(value) = self.rule(&rule.value, &location) {
                rules.push(Located { value, location });
            }
        }
        let mut expectations = Vec::new();
        for e in &s.expectations {
            let location = self.at(e);
            if let Some(value) = self.expectation(&e.value, &location) {
                expectations.push(Located { value, location });
            }
        }
        let cluster_by = s.cluster_by.as_ref().and_then(|c| {
            if c.value.is_empty() {
                self.error(self.at(c), "cluster_by lists no columns", "e.g. cluster_by: [posting_date]");
                return None;
            }
            if matches!(mode, WriteMode::Merge | WriteMode::Scd2 | WriteMode::Cdc) {
                self.error(
                    self.at(c),
                    format!("cluster_by does not apply to silver mode {} (it rewrites only the rows it matches)", mode.as_str()),
                    "use mode append or overwrite, or Z-order the table with workbench optimize --zorder",
                );
                return None;
            }
            Some(Located { value: c.value.clone(), location: self.at(c) })
        });
        let cdc = self.cdc_apply(s, mode);
        Some(Silver { mode, key, rules, expectations, cluster_by, cdc })
    }

    /// The `mode: cdc` options; each one is an error under another mode.
    fn cdc_apply(&mut self, s: &raw::RawSilver, mode: WriteMode) -> Option<CdcApply> {
        if mode != WriteMode::Cdc {
            let fields = [
                ("sequence_by", s.sequence_by.as_ref().map(|v| self.at(v))),
                ("history", s.history.as_ref().map(|v| self.at(v))),
                ("track_history_on", s.track_history_on.as_ref().map(|v| self.at(v))),
                ("deletes", s.deletes.as_ref().map(|v| self.at(v))),
            ];
            for (field, at) in fields {
                if let Some(at) = at {
                    self.error(at, format!("`{field}` applies to silver mode cdc only"), format!("remove `{field}`, or use mode: cdc with a postgres_cdc source"));
                }
            }
            return None;
        }
        let history = match s.history.as_ref().map(|h| h.value.as_str()) {
            None | Some("scd1") => History::Scd1,
            Some("scd2") => History::Scd2,
            Some(other) => {
                self.error(self.at(s.history.as_ref().expect("set")), format!("unknown history '{other}'"), "use scd1 (latest row per key) or scd2 (every version)");
                History::Scd1
            }
        };
        let deletes = match s.deletes.as_ref().map(|d| d.value.as_str()) {
            None | Some("apply") => Deletes::Apply,
            Some("soft") => Deletes::Soft,
            Some("ignore") => Deletes::Ignore,
            Some(other) => {
                self.error(self.at(s.deletes.as_ref().expect("set")), format!("unknown deletes policy '{other}'"), "use apply (remove the row), soft (keep it with _deleted = true) or ignore");
                Deletes::Apply
            }
        };
        let track_history_on = match &s.track_history_on {
            Some(t) if history != History::Scd2 => {
                self.error(self.at(t), "track_history_on applies to history: scd2", "add history: scd2, or remove track_history_on");
                Vec::new()
            }
            Some(t) => t.value.clone(),
            None => Vec::new(),
        };
        let sequence_by = s.sequence_by.as_ref().map(|q| q.value.clone()).filter(|q| q != "_lsn");
        Some(CdcApply { sequence_by, history, track_history_on, deletes })
    }

    fn rule(&mut self, raw: &RawRule, at: &Location) -> Option<Rule> {
        Some(match raw {
            RawRule::Rename(map) => Rule::Rename(map.iter().map(|(a, b)| (a.clone(), b.clone())).collect()),
            RawRule::Select(cols) => Rule::Select(cols.clone()),
            RawRule::Drop(cols) => Rule::Drop(cols.clone()),
            RawRule::Trim(cols) => Rule::Trim(self.columns_or_all(cols, at)?),
            RawRule::Normalize(n) => Rule::Normalize {
                columns: self.columns_or_all(&n.columns, at)?,
                case: match n.case.as_deref() {
                    None => None,
                    Some("lower") => Some(TextCase::Lower),
                    Some("upper") => Some(TextCase::Upper),
                    Some(other) => {
                        self.error(at.clone(), format!("unknown case '{other}'"), "use lower or upper");
                        return None;
                    }
                },
                collapse_spaces: n.collapse_spaces.unwrap_or(true),
            },
            RawRule::TypeCast(map) => {
                let mut casts = Vec::new();
                for (column, cast) in map {
                    casts.push(self.cast(column, cast, at)?);
                }
                Rule::TypeCast(casts)
            }
            RawRule::MapCategories(m) => Rule::MapCategories {
                column: m.column.clone(),
                mapping: m
                    .mapping
                    .iter()
                    .map(|(k, v)| {
                        let text = match v {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        (k.clone(), text)
                    })
                    .collect(),
                unmapped: match m.unmapped.as_deref().unwrap_or("fail") {
                    "keep" => Unmapped::Keep,
                    "null" => Unmapped::Null,
                    "fail" => Unmapped::Fail,
                    other => {
                        self.error(at.clone(), format!("unknown unmapped policy '{other}'"), "use keep, null or fail");
                        return None;
                    }
                },
            },
            RawRule::Melt(m) => {
                let values = match (&m.values, &m.pattern) {
                    (Some(v), None) => MeltValues::Columns(v.clone()),
                    (None, Some(p)) => {
                        if let Err(err) = regex::Regex::new(p) {
                            self.error(at.clone(), format!("invalid melt pattern: {err}"), "a regular expression matching the value columns, e.g. '^(Enero|Febrero)$'");
                            return None;
                        }
                        MeltValues::Pattern(p.clone())
                    }
                    _ => {
                        self.error(at.clone(), "melt needs exactly one of `values` or `pattern`", "values: [col, ...] or pattern: '<regex>'");
                        return None;
                    }
                };
                Rule::Melt { id: m.id.clone(), values, variable: m.variable.clone(), value: m.value.clone() }
            }
            RawRule::Filter(sql) => {
                self.sql_expr(sql, at)?;
                Rule::Filter(sql.clone())
            }
            RawRule::Derive(map) => {
                let mut derived = Vec::new();
                for (name, sql) in map {
                    self.sql_expr(sql, at)?;
                    derived.push((name.clone(), sql.clone()));
                }
                Rule::Derive(derived)
            }
            RawRule::Dedupe(d) => Rule::Dedupe {
                key: d.key.clone(),
                keep: match d.keep.as_deref().unwrap_or("last") {
                    "first" => Keep::First,
                    "last" => Keep::Last,
                    other => {
                        self.error(at.clone(), format!("unknown keep '{other}'"), "use first or last");
                        return None;
                    }
                },
            },
        })
    }

    fn columns_or_all(&mut self, cols: &ColumnsOrAll, at: &Location) -> Option<Option<Vec<String>>> {
        match cols {
            ColumnsOrAll::Columns(c) => Some(Some(c.clone())),
            ColumnsOrAll::All(all) if all == "all" => Some(None),
            ColumnsOrAll::All(other) => {
                self.error(at.clone(), format!("expected a list of columns or `all`, got '{other}'"), "e.g. trim: all or trim: [name, city]");
                None
            }
        }
    }

    fn cast(&mut self, column: &str, raw: &RawCast, at: &Location) -> Option<Cast> {
        let (type_name, format, on_error, true_values, false_values) = match raw {
            RawCast::Type(t) => (t.clone(), None, None, None, None),
            RawCast::Detailed(d) => (
                d.data_type.clone(),
                d.format.clone(),
                d.on_error.clone(),
                d.true_values.clone(),
                d.false_values.clone(),
            ),
        };
        let Some(to) = parse_type(&type_name) else {
            self.error(
                at.clone(),
                format!("unknown type '{type_name}' for column {column}"),
                "use text, int, bigint, smallint, double, real, decimal(p,s), bool, date or timestamp",
            );
            return None;
        };
        let format = match format.as_deref() {
            None => None,
            Some("es" | "de" | "fr" | "it" | "pt" | "decimal_comma") => Some(CastFormat::DecimalComma),
            Some("en" | "us" | "decimal_point") => Some(CastFormat::DecimalPoint),
            Some(pattern) if pattern.contains('%') => Some(CastFormat::Pattern(pattern.to_string())),
            Some(other) => {
                self.error(at.clone(), format!("unknown format '{other}' for column {column}"), "numbers: es (1.234,5) or en (1,234.5); dates: a pattern such as %d/%m/%Y");
                return None;
            }
        };
        let null_on_error = match on_error.as_deref().unwrap_or("fail") {
            "fail" => false,
            "null" => true,
            other => {
                self.error(at.clone(), format!("unknown on_error '{other}' for column {column}"), "use fail (report the bad value) or null");
                return None;
            }
        };
        Some(Cast {
            column: column.to_string(),
            to,
            type_name,
            format,
            null_on_error,
            true_values: true_values.unwrap_or_else(|| ["true", "t", "yes", "y", "sí", "si", "s", "1"].map(String::from).to_vec()),
            false_values: false_values.unwrap_or_else(|| ["false", "f", "no", "n", "0"].map(String::from).to_vec()),
        })
    }

    fn sql_expr(&mut self, sql: &str, at: &Location) -> Option<()> {
        let parsed = Parser::new(&PostgreSqlDialect {})
            .try_with_sql(sql)
            .and_then(|mut p| p.parse_expr());
        match parsed {
            Ok(_) => Some(()),
            Err(err) => {
                self.error(at.clone(), format!("invalid SQL expression '{sql}': {err}"), "write a SQL expression over the columns, e.g. amount > 0");
                None
            }
        }
    }

    fn expectation(&mut self, raw: &raw::RawExpectation, at: &Location) -> Option<Expectation> {
        let mut on_fail = OnFail::Warn;
        let mut mostly = 1.0;
        let mut kind = None;
        for (key, value) in &raw.check {
            match key.as_str() {
                "on_fail" => {
                    on_fail = match value.as_str() {
                        Some("warn") => OnFail::Warn,
                        Some("drop") => OnFail::Drop,
                        Some("quarantine") => OnFail::Quarantine,
                        Some("fail") => OnFail::Fail,
                        _ => {
                            self.error(at.clone(), format!("unknown on_fail {value}"), "use warn, drop, quarantine or fail");
                            return None;
                        }
                    }
                }
                "mostly" => match value.as_f64() {
                    Some(m) if (0.0..=1.0).contains(&m) => mostly = m,
                    _ => {
                        self.error(at.clone(), format!("mostly must be a fraction between 0 and 1, got {value}"), "e.g. mostly: 0.99");
                        return None;
                    }
                },
                k if EXPECTATION_KINDS.contains(&k) => {
                    if kind.replace((k.to_string(), value.clone())).is_some() {
                        self.error(at.clone(), "one expectation per list item", "split it into two `- ...` items");
                        return None;
                    }
                }
                other => {
                    self.error(at.clone(), format!("unknown expectation '{other}'"), format!("use one of {}", EXPECTATION_KINDS.join(", ")));
                    return None;
                }
            }
        }
        let Some((kind, args)) = kind else {
            self.error(at.clone(), "expectation without a check", format!("use one of {}", EXPECTATION_KINDS.join(", ")));
            return None;
        };
        if kind == "row_count_anomaly" {
            let lookback = args.get("lookback").map(|v| v.as_u64());
            if let Some(None | Some(0..=2)) | Some(Some(1001..)) = lookback {
                self.error(at.clone(), "row_count_anomaly.lookback must be a whole number of runs between 3 and 1000", "e.g. row_count_anomaly: { lookback: 14, max_deviation: 3 }");
                return None;
            }
            if args.get("max_deviation").is_some_and(|v| v.as_f64().is_none_or(|d| d <= 0.0)) {
                self.error(at.clone(), "row_count_anomaly.max_deviation must be a positive number (of standard deviations)", "e.g. max_deviation: 3");
                return None;
            }
            if let Some(extra) = args.as_object().and_then(|o| o.keys().find(|k| !matches!(k.as_str(), "lookback" | "max_deviation"))) {
                self.error(at.clone(), format!("row_count_anomaly has no option '{extra}'"), "it takes lookback and max_deviation");
                return None;
            }
            if matches!(on_fail, OnFail::Drop | OnFail::Quarantine) {
                self.error(at.clone(), "row_count_anomaly checks the run's row count, not rows: it cannot drop or quarantine", "use on_fail: warn or fail");
                return None;
            }
        }
        Some(Expectation { kind, args, on_fail, mostly })
    }

    fn columns(&mut self, raw: &std::collections::BTreeMap<String, Spanned<raw::RawColumn>>) -> Vec<ColumnPolicy> {
        let mut columns = Vec::with_capacity(raw.len());
        for (name, column) in raw {
            let mask = column.value.mask.as_ref().and_then(|mask| match Mask::parse(&mask.value) {
                Ok(parsed) => Some(parsed),
                Err(message) => {
                    self.error(
                        self.at(mask),
                        format!("column {name}: {message}"),
                        "write mask: hash (joinable), redact, partial(4), null, or a SQL expression such as \"left(rut, 2) || '***'\"",
                    );
                    None
                }
            });
            for tag in &column.value.tags {
                if !is_identifier(tag) {
                    self.error(self.at(column), format!("column {name}: tag '{tag}' is not a plain name"), "use lower-case letters, digits and underscores, e.g. tags: [pii]");
                }
            }
            columns.push(ColumnPolicy {
                name: name.clone(),
                description: column.value.description.clone(),
                tags: column.value.tags.clone(),
                mask,
            });
        }
        columns
    }

    fn gold_model(&mut self, raw: &Spanned<raw::RawGoldModel>, dataset: &str) -> Option<GoldModel> {
        let location = self.at(raw);
        let m = &raw.value;
        if !is_identifier(&m.name) {
            self.error(location.clone(), format!("gold model name '{}' is not a valid table name", m.name), "use lower-case letters, digits and underscores");
            return None;
        }
        match model_reads(&m.sql) {
            Ok(reads) => Some(GoldModel {
                name: m.name.clone(),
                sql: m.sql.clone(),
                description: m.description.clone(),
                dataset: Some(dataset.to_string()),
                location,
                reads,
                columns: self.columns(&m.columns),
            }),
            Err(message) => {
                self.error(location, format!("gold model {}: {message}", m.name), "the sql must be one SELECT reading bronze./silver./gold. tables");
                None
            }
        }
    }
}

/// Parse an ad-hoc expectation suite: the same list syntax as a spec's
/// `expectations:` (YAML, or JSON which is YAML too).
pub fn parse_expectations(text: &str) -> Result<Vec<Expectation>, String> {
    let raw: Vec<raw::RawExpectation> =
        yaml::from_str(text).map_err(|e| format!("expectation suite: {}{}", e.message, e.position.map(|p| format!(" at {p}")).unwrap_or_default()))?;
    let mut v = Validator {
        file: PathBuf::from("<suite>"),
        errors: Vec::new(),
    };
    let at = Location::start_of(Path::new("<suite>"));
    let parsed: Vec<Expectation> = raw.iter().filter_map(|e| v.expectation(e, &at)).collect();
    match v.errors.first() {
        Some(err) => Err(format!("expectation suite: {}{}", err.message, err.hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())),
        None => Ok(parsed),
    }
}

/// `layer.table` names a model's SQL reads; errors if it does not parse.
fn model_reads(sql: &str) -> Result<Vec<String>, String> {
    let mut statements = DFParser::parse_sql_with_dialect(sql, &PostgreSqlDialect {}).map_err(|e| format!("SQL does not parse: {e}"))?;
    if statements.len() != 1 {
        return Err(format!("expected one SELECT statement, found {}", statements.len()));
    }
    let statement = statements.pop_front().expect("one statement");
    let (tables, _ctes) = resolve_table_references(&statement, true).map_err(|e| e.to_string())?;
    let mut reads: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
    reads.sort();
    reads.dedup();
    Ok(reads)
}

fn load_sql_models(dir: &Path) -> Result<Vec<GoldModel>, Vec<SpecError>> {
    let mut errors = Vec::new();
    let mut models = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|e| e.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().and_then(|e| e.to_str()) == Some("sql"));
    files.sort();
    for file in files {
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        // `20_fact_sales.sql` → `fact_sales`: the number orders the DWH convention.
        let name = match stem.split_once('_') {
            Some((number, rest)) if number.chars().all(|c| c.is_ascii_digit()) => rest,
            _ => stem,
        }
        .to_string();
        let location = Location::start_of(&file);
        if !is_identifier(&name) {
            errors.push(SpecError::new(location, format!("model name '{name}' (from the file name) is not a valid table name")).hint("name files like 20_fact_sales.sql"));
            continue;
        }
        let sql = match std::fs::read_to_string(&file) {
            Ok(sql) => sql,
            Err(err) => {
                errors.push(SpecError::new(location, format!("cannot read: {err}")));
                continue;
            }
        };
        match model_reads(&sql) {
            Ok(reads) => models.push(GoldModel { name, sql, description: None, dataset: None, location, reads, columns: vec![] }),
            Err(message) => errors.push(SpecError::new(location, message).hint("the file must hold one SELECT reading bronze./silver./gold. tables")),
        }
    }
    if errors.is_empty() { Ok(models) } else { Err(errors) }
}

/// Check every read resolves, then order models so each follows what it reads.
fn order_gold(datasets: &[Spec], models: Vec<GoldModel>) -> Result<Vec<GoldModel>, Vec<SpecError>> {
    let mut errors = Vec::new();
    let mut known: HashSet<String> = HashSet::new();
    for d in datasets {
        known.insert(format!("bronze.{}", d.name));
        if d.silver.is_some() {
            known.insert(format!("silver.{}", d.name));
        }
    }
    let mut by_name: BTreeMap<String, &GoldModel> = BTreeMap::new();
    for m in &models {
        if let Some(previous) = by_name.insert(m.name.clone(), m) {
            errors.push(SpecError::new(m.location.clone(), format!("gold model '{}' is also defined at {}", m.name, previous.location)).hint("gold model names must be unique"));
        }
        known.insert(format!("gold.{}", m.name));
    }
    for m in &models {
        for read in &m.reads {
            let parts: Vec<&str> = read.split('.').collect();
            let qualified = match parts.as_slice() {
                [_, layer, table] | [layer, table] => format!("{layer}.{table}"),
                _ => {
                    errors.push(SpecError::new(m.location.clone(), format!("gold model {} reads '{read}' without a layer", m.name)).hint(format!("qualify it: silver.{read} or gold.{read}")));
                    continue;
                }
            };
            if !known.contains(&qualified) {
                errors.push(SpecError::new(m.location.clone(), format!("gold model {} reads {qualified}, which no spec produces", m.name)).hint("check the name, or add the dataset's spec (silver.<dataset>, gold.<model>)"));
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // Depth-first topological order; ties keep file/declaration order.
    let mut ordered: Vec<GoldModel> = Vec::new();
    let mut state: HashMap<String, u8> = HashMap::new(); // 1 visiting, 2 done
    fn visit(
        name: &str,
        by_name: &BTreeMap<String, &GoldModel>,
        state: &mut HashMap<String, u8>,
        stack: &mut Vec<String>,
        ordered: &mut Vec<GoldModel>,
    ) -> Result<(), SpecError> {
        match state.get(name) {
            Some(2) => return Ok(()),
            Some(1) => {
                let model = by_name[name];
                let start = stack.iter().position(|s| s == name).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(name.to_string());
                return Err(SpecError::new(model.location.clone(), format!("gold models form a cycle: {}", cycle.join(" → ")))
                    .hint("a model cannot read itself, directly or through other models"));
            }
            _ => {}
        }
        state.insert(name.to_string(), 1);
        stack.push(name.to_string());
        let model = by_name[name];
        for read in &model.reads {
            if let Some(dep) = read.strip_prefix("gold.").or_else(|| read.split_once(".gold.").map(|(_, t)| t))
                && by_name.contains_key(dep)
            {
                visit(dep, by_name, state, stack, ordered)?;
            }
        }
        stack.pop();
        state.insert(name.to_string(), 2);
        ordered.push((*model).clone());
        Ok(())
    }
    for m in &models {
        let mut stack = Vec::new();
        if let Err(err) = visit(&m.name, &by_name, &mut state, &mut stack, &mut ordered) {
            return Err(vec![err]);
        }
    }
    Ok(ordered)
}

/// A spec type name → Arrow type.
pub fn parse_type(name: &str) -> Option<DataType> {
    let lower = name.trim().to_ascii_lowercase();
    let (base, args) = match lower.split_once('(') {
        Some((b, rest)) => (b.trim().to_string(), Some(rest.trim_end_matches(')').to_string())),
        None => (lower.clone(), None),
    };
    Some(match (base.as_str(), args) {
        ("text" | "string" | "varchar" | "char", _) => DataType::Utf8,
        ("int" | "integer" | "int4", None) => DataType::Int32,
        ("bigint" | "int8" | "long", None) => DataType::Int64,
        ("smallint" | "int2", None) => DataType::Int16,
        ("double" | "float8" | "float" | "double precision", None) => DataType::Float64,
        ("real" | "float4", None) => DataType::Float32,
        ("bool" | "boolean", None) => DataType::Boolean,
        ("date", None) => DataType::Date32,
        ("timestamp", None) => DataType::Timestamp(TimeUnit::Microsecond, None),
        ("timestamptz", None) => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ("decimal" | "numeric", None) => DataType::Decimal128(38, 10),
        ("decimal" | "numeric", Some(args)) => {
            let mut parts = args.split(',').map(|p| p.trim().parse::<i64>());
            let precision = parts.next()?.ok()?;
            let scale = parts.next().unwrap_or(Ok(0)).ok()?;
            if !(1..=38).contains(&precision) || scale < 0 || scale > precision {
                return None;
            }
            DataType::Decimal128(precision as u8, scale as i8)
        }
        _ => return None,
    })
}
