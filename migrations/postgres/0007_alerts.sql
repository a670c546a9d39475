-- Every alert Workbench sends (webhooks): what it was about, where it went
-- (the URL without its path or query, which carry secrets), and how
-- delivery went. dedupe_key makes an alert go out once however many
-- replicas notice it.
CREATE TABLE IF NOT EXISTS alerts (
    id          TEXT PRIMARY KEY,
    dedupe_key  TEXT NOT NULL UNIQUE,
    dataset     TEXT NOT NULL,
    event       TEXT NOT NULL,   -- failure | success | expectation_failure | anomaly | freshness
    run_id      TEXT,
    target      TEXT NOT NULL,
    status      TEXT NOT NULL,   -- sending | sent | failed
    attempts    INTEGER NOT NULL,
    last_error  TEXT,
    payload     JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_created_at ON alerts (created_at);
