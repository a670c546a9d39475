//! A dataset's scheduled table maintenance (`maintenance:` in its spec):
//! OPTIMIZE each of its tables (silver Z-ordered by `cluster_by`), then
//! VACUUM them with the spec's retention, under the dataset's run lock so it
//! never races the dataset's own runs.

use std::time::Duration;

use super::{Pipeline, PipelineError};
use crate::storage::Layer;

/// How long maintenance waits for a run of the dataset to finish.
const LOCK_WAIT: Duration = Duration::from_secs(600);

impl Pipeline {
    /// Maintain every table of `dataset` as its spec says; one line per
    /// table and operation of what was done.
    pub async fn maintain(&self, dataset: &str) -> Result<Vec<String>, PipelineError> {
        let spec = self.project.dataset(dataset).ok_or_else(|| PipelineError::UnknownDataset(dataset.to_string()))?;
        let Some(maintenance) = &spec.maintenance else {
            return Ok(Vec::new());
        };
        let holder = format!("maintenance-{}", uuid::Uuid::now_v7());
        let locks = self.lock(&[dataset.to_string()], &holder, Some(LOCK_WAIT)).await?;
        let mut tables = vec![(Layer::Bronze, dataset.to_string())];
        if spec.silver.is_some() {
            tables.push((Layer::Silver, dataset.to_string()));
            tables.push((Layer::Silver, format!("{dataset}__quarantine")));
        }
        tables.extend(spec.gold.iter().map(|g| (Layer::Gold, g.clone())));
        let cluster_by: Vec<String> = spec
            .silver
            .as_ref()
            .and_then(|s| s.cluster_by.as_ref())
            .map(|c| c.value.clone())
            .unwrap_or_default();
        let done = async {
            let mut done = Vec::new();
            for (layer, table) in tables {
                if self.lake.table(layer, &table).await?.is_none() {
                    continue;
                }
                if maintenance.optimize {
                    let zorder = if layer == Layer::Silver && table == dataset { cluster_by.as_slice() } else { &[] };
                    let o = self.lake.optimize(layer, &table, zorder, None).await?;
                    done.push(format!("optimize {layer}.{table}: {} files → {}", o.files_before, o.files_after));
                }
                if let Some(retain) = maintenance.vacuum {
                    let v = self.lake.vacuum(layer, &table, retain, false).await?;
                    done.push(format!("vacuum {layer}.{table}: {} file(s) deleted", v.files.len()));
                }
            }
            Ok::<_, PipelineError>(done)
        }
        .await;
        super::run::release(locks).await;
        let done = done?;
        tracing::info!(%dataset, done = ?done, "table maintenance done");
        Ok(done)
    }
}
