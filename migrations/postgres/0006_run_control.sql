-- Retries, cancellation and timeouts. Each attempt of a run is its own row;
-- a retry names the first attempt in retry_of. A cancel request is written
-- here so the replica running the run sees it on its next heartbeat.
ALTER TABLE runs ADD COLUMN IF NOT EXISTS attempt INTEGER NOT NULL DEFAULT 1;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS retry_of TEXT;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS cancel_requested_at TIMESTAMPTZ;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS cancel_requested_by TEXT;
