#!/usr/bin/env bash
# First command: set up, then run the demo on an embedded server it starts and stops itself.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python examples/celery_demo.py "$@"
