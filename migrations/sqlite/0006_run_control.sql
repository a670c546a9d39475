-- Retries, cancellation and timeouts. Each attempt of a run is its own row;
-- a retry names the first attempt in retry_of. A cancel request is written
-- here so the process running the run sees it on its next heartbeat.
ALTER TABLE runs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;
ALTER TABLE runs ADD COLUMN retry_of TEXT;
ALTER TABLE runs ADD COLUMN cancel_requested_at TEXT;
ALTER TABLE runs ADD COLUMN cancel_requested_by TEXT;
