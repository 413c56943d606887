#!/usr/bin/env bash
# Second command: set up, lint, run the whole test suite (tests start their own servers),
# then Celery's own integration tests on ff_celery (scripts/celery_suite.py).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/pytest "$@"
exec .venv/bin/python scripts/celery_suite.py
