//! Table maintenance: compacting the small files daily appends leave
//! (OPTIMIZE, optionally Z-ordered), removing files no version within the
//! retention still reads (VACUUM), checkpoints, and what a table's files
//! look like. Each is delta-rs' own operation; this module names them in
//! our terms and reports what they did.

use std::num::NonZeroU64;
use std::time::Duration;

use deltalake::operations::optimize::OptimizeType;

use super::{Lake, Layer, StorageError, table_error};

/// A file smaller than this counts as small (a quarter of the 128 MiB
/// files OPTIMIZE aims for by default).
pub const SMALL_FILE_BYTES: i64 = 32 * 1024 * 1024;

/// What OPTIMIZE did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Optimized {
    pub files_before: usize,
    pub files_removed: u64,
    pub files_added: u64,
    pub files_after: usize,
    /// The version it committed (the same as before when there was nothing to do).
    pub version: i64,
    /// The columns the rows were Z-ordered by (none: compacted only).
    pub zorder: Vec<String>,
}

/// What VACUUM removed (or, in a dry run, would remove).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vacuumed {
    pub dry_run: bool,
    pub files: Vec<String>,
}

/// One data file of a table's current version.
#[derive(Debug, Clone)]
pub struct DataFile {
    pub path: String,
    pub bytes: i64,
    pub rows: Option<i64>,
    pub modified_ms: i64,
}

impl Lake {
    /// Compact `layer.table`'s files into files of about `target_bytes`
    /// (128 MiB when `None`), sorted along a Z-order curve of `zorder` when
    /// it names columns. Readers keep reading the version before until the
    /// commit lands; the old files stay for time travel until a vacuum.
    pub async fn optimize(
        &self,
        layer: Layer,
        table: &str,
        zorder: &[String],
        target_bytes: Option<u64>,
    ) -> Result<Optimized, StorageError> {
        let delta = self.table(layer, table).await?.ok_or_else(|| StorageError::Missing {
            layer,
            table: table.to_string(),
        })?;
        let files_before = self.files(layer, table).await?.len();
        let kind = if zorder.is_empty() { OptimizeType::Compact } else { OptimizeType::ZOrder(zorder.to_vec()) };
        let properties = super::table_writer_properties(layer, table, &delta)?;
        let mut builder = delta.optimize().with_type(kind).with_writer_properties(properties);
        if let Some(target) = target_bytes.and_then(NonZeroU64::new) {
            builder = builder.with_target_size(target);
        }
        let (optimized, metrics) = builder.await.map_err(table_error(layer, table))?;
        // A checkpoint after a rewrite: readers replay fewer log files.
        if metrics.num_files_added > 0 {
            deltalake::checkpoints::create_checkpoint(&optimized, None)
                .await
                .map_err(table_error(layer, table))?;
        }
        Ok(Optimized {
            files_before,
            files_removed: metrics.num_files_removed,
            files_added: metrics.num_files_added,
            files_after: self.files(layer, table).await?.len(),
            version: optimized.version().unwrap_or_default() as i64,
            zorder: zorder.to_vec(),
        })
    }

    /// Delete the files `layer.table` stopped using more than `retain` ago.
    /// Every version committed within `retain` stays readable (`table_at`):
    /// its files were either current or removed less than `retain` ago.
    pub async fn vacuum(&self, layer: Layer, table: &str, retain: Duration, dry_run: bool) -> Result<Vacuumed, StorageError> {
        let delta = self.table(layer, table).await?.ok_or_else(|| StorageError::Missing {
            layer,
            table: table.to_string(),
        })?;
        let retention = chrono::Duration::from_std(retain).map_err(|e| {
            table_error(layer, table)(deltalake::DeltaTableError::Generic(format!("retention {retain:?}: {e}")))
        })?;
        let (_, metrics) = delta
            .vacuum()
            .with_retention_period(retention)
            // The caller chose the retention; the table's default minimum
            // (7 days) only applies when none is given.
            .with_enforce_retention_duration(false)
            .with_dry_run(dry_run)
            .await
            .map_err(table_error(layer, table))?;
        Ok(Vacuumed { dry_run, files: metrics.files_deleted })
    }

    /// The data files of `layer.table`'s current version, by path.
    pub async fn files(&self, layer: Layer, table: &str) -> Result<Vec<DataFile>, StorageError> {
        let delta = self.table(layer, table).await?.ok_or_else(|| StorageError::Missing {
            layer,
            table: table.to_string(),
        })?;
        let state = delta.snapshot().map_err(table_error(layer, table))?;
        let mut files: Vec<DataFile> = state
            .log_data()
            .iter()
            .map(|f| DataFile {
                path: f.path().to_string(),
                bytes: f.size(),
                rows: f.num_records().map(|n| n as i64),
                modified_ms: f.modification_time(),
            })
            .collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }
}
