#!/usr/bin/env bash
# Second command: set up, lint, then run the whole test suite (tests start their own servers).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/pytest "$@"
