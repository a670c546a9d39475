//! Backfills: a dataset run once per slice of a date range (`workbench run X
//! --from 2024-01-01 --to 2024-12-31 --step 1mo --parallel 2`), each slice
//! its own run with `{{ start_date }}` / `{{ end_date }}` set to the slice's
//! first and last day. A slice that already succeeded (a run of the dataset
//! with the same window) is skipped, so a backfill stopped half-way or with
//! failed slices is resumed by running the same command again.

use chrono::{Days, Months, NaiveDate};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use super::{Pipeline, PipelineError, RunOptions, RunStatus, sources::DateWindow};
use crate::spec::SourceFormat;

/// The length of a slice: days, weeks, months or years.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Days(u32),
    Months(u32),
}

impl Step {
    /// `7d`, `2w`, `1mo`, `1y`.
    pub fn parse(text: &str) -> Result<Step, String> {
        let text = text.trim();
        let digits = text.chars().take_while(|c| c.is_ascii_digit()).count();
        let (number, unit) = text.split_at(digits);
        let n: u32 = number.parse().map_err(|_| format!("step '{text}' does not start with a number; write e.g. 1d, 1w, 1mo or 1y"))?;
        if n == 0 {
            return Err(format!("step '{text}' is zero"));
        }
        match unit {
            "d" | "day" | "days" => Ok(Step::Days(n)),
            "w" | "week" | "weeks" => Ok(Step::Days(n * 7)),
            "mo" | "month" | "months" => Ok(Step::Months(n)),
            "y" | "year" | "years" => Ok(Step::Months(n * 12)),
            other => Err(format!("unknown step unit '{other}' in '{text}'; use d (days), w (weeks), mo (months) or y (years)")),
        }
    }

    fn after(&self, day: NaiveDate) -> Option<NaiveDate> {
        match self {
            Step::Days(n) => day.checked_add_days(Days::new(*n as u64)),
            Step::Months(n) => day.checked_add_months(Months::new(*n)),
        }
    }
}

/// The slices of `from..=to`, each `step` long (the last one shorter), as
/// inclusive windows.
pub fn slices(from: NaiveDate, to: NaiveDate, step: Step) -> Vec<DateWindow> {
    let mut out = Vec::new();
    let mut start = from;
    while start <= to {
        let next = step.after(start).unwrap_or(to + Days::new(1));
        let end = (next - Days::new(1)).min(to);
        out.push(DateWindow { start: Some(start), end: Some(end) });
        start = next;
    }
    out
}

/// Where a backfill is.
#[derive(Debug, Clone)]
pub struct BackfillProgress {
    pub total: usize,
    /// Slices skipped because an earlier backfill ran them.
    pub already_done: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub running: usize,
    /// The slice that just finished, with its status and run id.
    pub last: Option<(DateWindow, RunStatus, String, Option<String>)>,
}

impl Pipeline {
    /// Run `dataset` once per slice of `from..=to`, `parallel` slices at a
    /// time, skipping slices that already succeeded. `progress` hears of
    /// each slice that starts or finishes.
    pub async fn backfill(
        &self,
        dataset: &str,
        from: NaiveDate,
        to: NaiveDate,
        step: Step,
        parallel: usize,
        options: &RunOptions,
        progress: &mut (dyn FnMut(&BackfillProgress) + Send),
    ) -> Result<BackfillProgress, PipelineError> {
        let spec = self.project.dataset(dataset).ok_or_else(|| PipelineError::UnknownDataset(dataset.to_string()))?;
        match &spec.source.format {
            SourceFormat::Postgres(pg) if pg.query.contains("start_date") || pg.query.contains("end_date") => {}
            SourceFormat::Postgres(_) => {
                return Err(PipelineError::Backfill(format!(
                    "the query of {dataset} uses neither {{{{ start_date }}}} nor {{{{ end_date }}}}: every slice would read the same rows; add them to its WHERE clause"
                )));
            }
            SourceFormat::PostgresCdc(_) => {
                return Err(PipelineError::Backfill(format!(
                    "{dataset} copies its table change by change: there is no date window to backfill; `workbench run --full-refresh {dataset}` takes a new snapshot"
                )));
            }
            other => {
                return Err(PipelineError::Backfill(format!(
                    "{dataset} reads {} landing files, which have no date window to slice; run it without --step (it ingests every new file)",
                    other.name()
                )));
            }
        }
        if from > to {
            return Err(PipelineError::Backfill(format!("--from {from} is after --to {to}")));
        }
        let all = slices(from, to, step);
        let done = self.meta.succeeded_windows(dataset).await?;
        let pending: Vec<DateWindow> = all
            .iter()
            .filter(|w| !done.contains(&(w.start.map(|d| d.to_string()), w.end.map(|d| d.to_string()))))
            .copied()
            .collect();
        let mut state = BackfillProgress {
            total: all.len(),
            already_done: all.len() - pending.len(),
            succeeded: 0,
            failed: 0,
            running: 0,
            last: None,
        };
        progress(&state);
        // One lock for the whole backfill: its slices run side by side, and
        // no other run of the dataset gets between them.
        let backfill_id = super::new_run_id();
        let locks = self.lock(&[dataset.to_string()], &backfill_id, options.wait).await?;
        let mut queue = pending.into_iter();
        let mut running = FuturesUnordered::new();
        loop {
            while running.len() < parallel.max(1) {
                let Some(window) = queue.next() else { break };
                let options = RunOptions { window, trigger: "backfill".into(), run_id: None, slot: None, files: None, lock_held: super::LockHeld(true), progress: Default::default(), ..options.clone() };
                running.push(async move {
                    let result = self.run(&[dataset.to_string()], &options).await;
                    (window, result)
                });
            }
            state.running = running.len();
            let Some((window, result)) = running.next().await else { break };
            let (status, run_id, error) = match result {
                Ok(report) => (report.status, report.run_id, report.error),
                Err(err) => (RunStatus::of(&err), String::new(), Some(err.to_string())),
            };
            if status == RunStatus::Succeeded {
                state.succeeded += 1;
            } else {
                state.failed += 1;
            }
            state.running = running.len();
            state.last = Some((window, status, run_id, error));
            progress(&state);
        }
        super::run::release(locks).await;
        Ok(state)
    }
}
