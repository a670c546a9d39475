-- One row per scheduled slot a server claimed: the primary key makes each
-- slot of each dataset run once, however many replicas race for it.
CREATE TABLE IF NOT EXISTS schedule_slots (
    dataset     TEXT NOT NULL,
    slot        TEXT NOT NULL,
    claimed_by  TEXT NOT NULL,
    claimed_at  TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    status      TEXT NOT NULL,   -- running | succeeded | failed | missed
    finished_at TEXT,
    error       TEXT,
    PRIMARY KEY (dataset, slot)
);
