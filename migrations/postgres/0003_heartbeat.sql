-- A running run's process writes heartbeat_at while it works; a run whose
-- heartbeat stopped is marked abandoned by the next process that looks.
ALTER TABLE runs ADD COLUMN IF NOT EXISTS heartbeat_at TIMESTAMPTZ;
