-- Workbench metadata: datasets, runs, steps, ingested files, lineage, validations.
CREATE TABLE IF NOT EXISTS datasets (
    name         TEXT PRIMARY KEY,
    description  TEXT,
    owner        TEXT,
    spec_hash    TEXT NOT NULL,
    spec_text    TEXT NOT NULL,
    spec_file    TEXT NOT NULL,
    tables       JSONB NOT NULL,
    schedule     TEXT,
    status       TEXT NOT NULL DEFAULT 'active',   -- active | retired
    synced_at    TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS runs (
    id           TEXT PRIMARY KEY,                  -- UUIDv7 text: sorts by start time
    datasets     JSONB NOT NULL,
    trigger      TEXT NOT NULL,                     -- cli | sql | schedule | api | startup
    parameters   JSONB NOT NULL,
    status       TEXT NOT NULL,                     -- running | succeeded | failed
    started_at   TIMESTAMPTZ NOT NULL,
    finished_at  TIMESTAMPTZ,
    error        TEXT,
    rows_in      BIGINT NOT NULL DEFAULT 0,
    rows_out     BIGINT NOT NULL DEFAULT 0,
    rows_rejected BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_started_at ON runs (started_at);

CREATE TABLE IF NOT EXISTS run_steps (
    run_id        TEXT NOT NULL REFERENCES runs (id),
    seq           INTEGER NOT NULL,
    dataset       TEXT NOT NULL,
    layer         TEXT NOT NULL,
    table_name    TEXT NOT NULL,
    rows_in       BIGINT NOT NULL,
    rows_out      BIGINT NOT NULL,
    rows_rejected BIGINT NOT NULL,
    status        TEXT NOT NULL,
    duration_ms   BIGINT NOT NULL,
    message       TEXT,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE IF NOT EXISTS files (
    dataset      TEXT NOT NULL,
    path         TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    size_bytes   BIGINT NOT NULL,
    run_id       TEXT NOT NULL,
    ingested_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (dataset, content_hash)
);

CREATE TABLE IF NOT EXISTS lineage_edges (
    from_table   TEXT NOT NULL,
    from_column  TEXT NOT NULL,                     -- '' for a table-level edge
    to_table     TEXT NOT NULL,
    to_column    TEXT NOT NULL,
    transform    TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (from_table, from_column, to_table, to_column)
);

CREATE TABLE IF NOT EXISTS validations (
    run_id            TEXT,
    table_name        TEXT NOT NULL,
    expectation       TEXT NOT NULL,
    columns           TEXT NOT NULL,
    success           BOOLEAN NOT NULL,
    element_count     BIGINT NOT NULL,
    unexpected_count  BIGINT NOT NULL,
    unexpected_percent DOUBLE PRECISION NOT NULL,
    missing_count     BIGINT NOT NULL,
    partial_unexpected_list TEXT NOT NULL,
    observed_value    TEXT,
    validated_at      TIMESTAMPTZ NOT NULL
);
