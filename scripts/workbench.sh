#!/usr/bin/env bash
# Runs the workbench binary (e.g. `./scripts/workbench.sh serve`), built in the
# dev profile in the same target directory as ./scripts/test.sh, so the two
# commands of the README share one build.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/workbench/target}"
exec cargo run --quiet --bin workbench -- "$@"
