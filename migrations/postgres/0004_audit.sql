-- Every statement a client sent, every failed login: who, from where, what,
-- which tables it read, how many rows came back, how long it took, SQLSTATE.
CREATE TABLE IF NOT EXISTS audit (
    id               BIGSERIAL PRIMARY KEY,
    at               TIMESTAMPTZ NOT NULL,
    user_name        TEXT NOT NULL,
    roles            TEXT NOT NULL,
    client_addr      TEXT,
    application_name TEXT,
    kind             TEXT NOT NULL,   -- statement | login_failed | cli_run | dropped
    statement        TEXT,
    tables_read      TEXT,
    rows_returned    BIGINT,
    duration_ms      BIGINT,
    sqlstate         TEXT
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
