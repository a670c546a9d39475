#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: makes sure PostgreSQL and Redis
# are up, installs the client tools the tests drive (psql, Python clients),
# then builds in the dev profile and runs the one integration test binary.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

# --- services the tests use -------------------------------------------------
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  log "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
  for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  log "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi

# --- client tools -----------------------------------------------------------
if ! command -v psql >/dev/null; then
  log "installing psql"
  apt-get update -qq && apt-get install -y -qq postgresql-client >/dev/null
fi
if ! command -v openssl >/dev/null; then
  log "installing openssl (the TLS tests make their own certificates)"
  apt-get update -qq && apt-get install -y -qq openssl >/dev/null
fi
if ! command -v odbcinst >/dev/null || ! odbcinst -q -d -n "PostgreSQL Unicode" >/dev/null 2>&1; then
  log "installing psqlODBC (odbc-postgresql) and unixODBC"
  apt-get update -qq && apt-get install -y -qq odbc-postgresql unixodbc unixodbc-dev >/dev/null
fi
if ! command -v curl >/dev/null; then
  log "installing curl (the HTTP and S3 tests use it)"
  apt-get update -qq && apt-get install -y -qq curl >/dev/null
fi
if ! python3 -c 'import sqlalchemy, psycopg2, psycopg, asyncpg, pandas, pyodbc, prometheus_client, selenium, moto' 2>/dev/null \
  || ! command -v moto_server >/dev/null || ! command -v tpchgen-cli >/dev/null; then
  log "installing Python client libraries"
  python3 -m pip install -q -r tests/clients/requirements.txt
fi
# Superset (SQLAlchemy 1.4) lives in its own virtualenv outside the clone,
# rebuilt only when its requirements change.
SUPERSET_VENV="${WORKBENCH_SUPERSET_VENV:-$HOME/.cache/workbench/superset-venv}"
if ! cmp -s tests/clients/superset-requirements.txt "$SUPERSET_VENV/requirements.txt"; then
  log "installing Superset into $SUPERSET_VENV (first run only, ~3 min)"
  rm -rf "$SUPERSET_VENV"
  python3 -m venv "$SUPERSET_VENV"
  "$SUPERSET_VENV/bin/pip" install -q -r tests/clients/superset-requirements.txt
  cp tests/clients/superset-requirements.txt "$SUPERSET_VENV/requirements.txt"
fi
export WORKBENCH_SUPERSET_PYTHON="$SUPERSET_VENV/bin/python"
if ! command -v java >/dev/null || [ ! -f /usr/share/java/postgresql.jar ]; then
  log "installing Java and pgjdbc"
  apt-get update -qq && apt-get install -y -qq default-jdk-headless libpostgresql-jdbc-java >/dev/null
fi
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  log "installing chromium and chromium-driver (the web console's browser test)"
  apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

# --- build and test (dev profile, persistent target dir) --------------------
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/workbench/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
log "building and testing in $CARGO_TARGET_DIR"
cargo nextest run --workspace --no-fail-fast "$@"
