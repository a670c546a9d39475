//! A dataset's `schedule:`: a cron expression read in a time zone, and what
//! the slots missed while no server ran should do.

use std::str::FromStr;

use chrono::{DateTime, SubsecRound, Utc};
use chrono_tz::Tz;

/// What slots missed while no server was running do when one starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Catchup {
    /// Run the most recent missed slot once.
    Latest,
    /// Run every missed slot, oldest first.
    All,
    /// Skip them; wait for the next slot.
    None,
}

impl Catchup {
    pub fn as_str(&self) -> &'static str {
        match self {
            Catchup::Latest => "latest",
            Catchup::All => "all",
            Catchup::None => "none",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Schedule {
    /// The expression as written.
    pub cron: String,
    pub timezone: Tz,
    pub catchup: Catchup,
    parsed: croner::Cron,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.cron == other.cron && self.timezone == other.timezone && self.catchup == other.catchup
    }
}

impl Schedule {
    /// `cron` has 5 fields (minute first) or 6 (second first).
    pub fn parse(cron: &str, timezone: Tz, catchup: Catchup) -> Result<Schedule, String> {
        let fields = cron.split_whitespace().count();
        if !(fields == 5 || fields == 6) && !cron.trim_start().starts_with('@') {
            return Err(format!("it has {fields} fields"));
        }
        let parsed = croner::Cron::from_str(cron).map_err(|e| e.to_string())?;
        // A pattern that never fires (31 February) is an error too.
        let now = Utc::now().with_timezone(&timezone);
        parsed
            .find_next_occurrence(&now, false)
            .map_err(|_| "it never matches a date".to_string())?;
        Ok(Schedule {
            cron: cron.to_string(),
            timezone,
            catchup,
            parsed,
        })
    }

    /// The first slot strictly after `after`. A wall-clock time skipped by a
    /// daylight-saving change fires once after the change; one that occurs
    /// twice fires once.
    /// Slots are whole seconds, so every replica names a slot alike.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let after = after.trunc_subsecs(0);
        self.parsed
            .find_next_occurrence(&after.with_timezone(&self.timezone), false)
            .ok()
            .map(|t| t.with_timezone(&Utc).trunc_subsecs(0))
    }

    /// The next `n` slots after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        std::iter::successors(self.next_after(after), |slot| self.next_after(*slot)).take(n).collect()
    }

    /// The slots in `(after, until]`, oldest first, at most `limit` (the
    /// most recent ones when there are more).
    pub fn slots_between(&self, after: DateTime<Utc>, until: DateTime<Utc>, limit: usize) -> Vec<DateTime<Utc>> {
        let mut slots = std::collections::VecDeque::new();
        let mut cursor = after;
        while let Some(slot) = self.next_after(cursor) {
            if slot > until {
                break;
            }
            if slots.len() == limit {
                slots.pop_front();
            }
            slots.push_back(slot);
            cursor = slot;
        }
        slots.into()
    }

    /// How `workbench.datasets` shows it: `0 6 * * 1-5 (America/Santiago)`.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.cron, self.timezone.name())
    }
}
