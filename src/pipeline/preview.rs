//! Preview: read one landing file with the dataset's source settings, apply
//! the silver rules and evaluate the expectations, writing nothing. Results
//! are cached (Redis or in-process) by spec hash + file hash + arguments.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::datasource::MemTable;
use sha2::{Digest, Sha256};

use super::{Pipeline, PipelineError, SILVER_METADATA_DROPPED, sources, step_error, with_metadata};
use crate::quality;

/// How long a preview stays cached.
const PREVIEW_TTL: Duration = Duration::from_secs(600);

/// Previews served from the cache / computed, since the process started.
pub static PREVIEW_CACHE_HITS: AtomicU64 = AtomicU64::new(0);
pub static PREVIEW_CACHE_MISSES: AtomicU64 = AtomicU64::new(0);

impl Pipeline {
    /// The tidy rows of `path` (or the newest landing file) for `dataset`,
    /// with `_expectations_failed` naming the expectations each row fails.
    pub async fn preview(&self, dataset: &str, path: Option<&str>, limit: usize) -> Result<Vec<RecordBatch>, PipelineError> {
        let spec = self
            .project
            .dataset(dataset)
            .ok_or_else(|| PipelineError::UnknownDataset(dataset.to_string()))?;
        let step = format!("preview {dataset}");
        let pattern = spec
            .source
            .path
            .as_deref()
            .ok_or_else(|| step_error(&step, "a postgres source has no files to preview; run the dataset instead"))?;
        let path = match path {
            Some(p) => p.trim_start_matches('/').to_string(),
            None => {
                let files = self.landing_files_with_times(pattern).await.map_err(|e| step_error(&step, e))?;
                files
                    .into_iter()
                    .max_by_key(|(p, modified)| (*modified, p.clone()))
                    .map(|(p, _)| p)
                    .ok_or_else(|| step_error(&step, format!("no landing file matches {pattern}")))?
            }
        };
        let bytes = self
            .lake
            .read_bytes(&path)
            .await
            .map_err(|e| step_error(&step, format!("cannot read {path}: {e}; give a path relative to the lake, e.g. {pattern}")))?;
        let file_hash = hex::encode(Sha256::digest(&bytes));
        let key = format!("preview:{}:{file_hash}:{path}:{limit}", spec.hash);
        if let Ok(Some(cached)) = self.coordinator.cache_get(&key).await
            && let Ok(batches) = decode(&cached)
        {
            let hits = PREVIEW_CACHE_HITS.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::info!(dataset, path, hits, "preview served from cache");
            return Ok(batches);
        }
        PREVIEW_CACHE_MISSES.fetch_add(1, Ordering::Relaxed);
        // Row-by-row rules and checks need only the file's first rows: read
        // `limit` of them, more if filters removed some, the whole file when a
        // rule or check looks across rows (dedupe, unique, window functions).
        let mut head = row_local(spec).then_some(limit.max(1));
        let batches = loop {
            let (batches, rows_read) = self.preview_rows(spec, &step, &path, &bytes, &file_hash, limit, head).await?;
            let shown: usize = batches.iter().map(|b| b.num_rows()).sum();
            match head {
                Some(max) if shown < limit && rows_read >= max => head = max.checked_mul(8),
                _ => break batches,
            }
        };
        if let Ok(bytes) = encode(&batches)
            && let Err(err) = self.coordinator.cache_set(&key, &bytes, PREVIEW_TTL).await
        {
            tracing::warn!(%err, "caching a preview failed");
        }
        Ok(batches)
    }

    /// The preview's rows computed from the first `head` data rows of the
    /// file (all with `None`), and how many rows were read.
    #[allow(clippy::too_many_arguments)]
    async fn preview_rows(
        &self,
        spec: &crate::spec::Spec,
        step: &str,
        path: &str,
        bytes: &[u8],
        file_hash: &str,
        limit: usize,
        head: Option<usize>,
    ) -> Result<(Vec<RecordBatch>, usize), PipelineError> {
        let raw: Vec<RecordBatch> = sources::read_file_head(&spec.source.format, path, bytes, head)?
            .into_iter()
            .map(|b| with_metadata(b, "preview", path, file_hash, chrono::Utc::now().timestamp_micros()))
            .collect::<Result<_, _>>()
            .map_err(|e| step_error(step, e))?;
        let rows_read = raw.iter().map(|b| b.num_rows()).sum();
        let Some(schema) = raw.first().map(|b| b.schema()) else {
            return Ok((Vec::new(), rows_read));
        };
        let ctx = self.engine.internal_session();
        let table = MemTable::try_new(schema, vec![raw]).map_err(|e| step_error(step, e))?;
        let mut df = ctx.read_table(Arc::new(table)).map_err(|e| step_error(step, e))?;
        if let Some(silver) = &spec.silver {
            df = super::rules::apply(&ctx, df, &silver.rules).await?;
        }
        let drop: Vec<&str> = SILVER_METADATA_DROPPED
            .iter()
            .copied()
            .chain(["_run_id"])
            .filter(|c| df.schema().field_with_unqualified_name(c).is_ok())
            .collect();
        let df = df.drop_columns(&drop).map_err(|e| step_error(step, e))?;
        let columns: Vec<String> = df.schema().fields().iter().map(|f| format!("\"{}\"", f.name())).collect();
        let view = quality::register_view(&ctx, df).map_err(|e| step_error(step, e))?;
        let mut checks = Vec::new();
        for expectation in spec.silver.iter().flat_map(|s| s.expectations.iter()) {
            checks.extend(quality::compile(&expectation.value).map_err(|e| step_error(step, e))?.into_iter().filter(|c| c.failing.is_some()));
        }
        let refs: Vec<&quality::Check> = checks.iter().collect();
        let (source, predicates) = quality::augmented_source(&view, &refs);
        let failed = if checks.is_empty() {
            "CAST('' AS TEXT)".to_string()
        } else {
            format!(
                "concat_ws(', ', {})",
                checks
                    .iter()
                    .zip(&predicates)
                    .map(|(c, p)| format!("CASE WHEN COALESCE(({p}), false) THEN '{}' END", c.label().replace('\'', "''")))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let sql = format!(
            "SELECT {}, {failed} AS _expectations_failed FROM {source} AS t LIMIT {limit}",
            columns.join(", ")
        );
        let batches = ctx
            .sql(&sql)
            .await
            .map_err(|e| step_error(step, e.strip_backtrace()))?
            .collect()
            .await
            .map_err(|e| step_error(step, e.strip_backtrace()))?;
        Ok((batches, rows_read))
    }
}

/// Whether every rule and check of `spec` works row by row (a row's result
/// does not depend on other rows), so a preview may read only the first rows.
fn row_local(spec: &crate::spec::Spec) -> bool {
    use crate::spec::Rule;
    let Some(silver) = &spec.silver else { return true };
    let rules = silver.rules.iter().all(|rule| match &rule.value {
        Rule::Dedupe { .. } => false,
        Rule::Derive(columns) => !columns.iter().any(|(_, sql)| sql.to_ascii_lowercase().contains(" over")),
        Rule::Filter(sql) => !sql.to_ascii_lowercase().contains(" over"),
        _ => true,
    });
    let checks = silver.expectations.iter().all(|e| {
        quality::compile(&e.value).is_ok_and(|checks| checks.iter().all(|c| c.duplicates_over.is_none()))
    });
    rules && checks
}

fn encode(batches: &[RecordBatch]) -> Result<Vec<u8>, datafusion::arrow::error::ArrowError> {
    let mut out = Vec::new();
    if let Some(first) = batches.first() {
        let mut writer = StreamWriter::try_new(&mut out, &first.schema())?;
        for b in batches {
            writer.write(b)?;
        }
        writer.finish()?;
    }
    Ok(out)
}

fn decode(bytes: &[u8]) -> Result<Vec<RecordBatch>, datafusion::arrow::error::ArrowError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    StreamReader::try_new(std::io::Cursor::new(bytes), None)?.collect()
}
