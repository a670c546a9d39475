#!/usr/bin/env bash
# Reproduce benches/RESULTS.md from nothing: installs the anchors and tools,
# builds Workbench in the (light) bench profile, generates TPC-H, runs every case.
set -euo pipefail
cd "$(dirname "$0")/.."
pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/workbench/target}"
exec python3 benches/run.py "$@"
