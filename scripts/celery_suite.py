"""Run Celery's own integration tests (``t/integration/test_tasks.py`` from the celery sdist
matching the installed Celery) on ff_celery: unchanged, URL-only, broker on database 0 and
backend on database 1 of an embedded server this script starts and stops; then the tests
Celery runs only with its Redis result backend, with ``flowfabric://`` broker and that backend.
With ``--canvas``, ``t/integration/test_canvas.py`` instead, with ``flowfabric://`` broker (on
database 1) and ``redis://`` backend (database 0): canvases on Celery's own mechanism (too
long for CI, run by hand).

    .venv/bin/python scripts/celery_suite.py [--canvas] [pytest arguments]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import celery

from ff_celery.devtools.devserver import DevServer

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "celery-suite"
SUITE = "t/integration/test_tasks.py"
CANVAS_SUITE = "t/integration/test_canvas.py"
#: Pytest plugins the suite relies on (``flaky`` reruns, ordering), pinned as Celery's
#: requirements/test.txt pins them.
PLUGINS = ("pytest-rerunfailures", "pytest-order")
#: Celery tests left out, each with its reason (see the README's compatibility list).
EXCUSED = {
    # caplog timing: the worker's "received" record races the test; flaky on redis:// too
    "t/integration/test_tasks.py::test_trace_log_arguments::test_task_success",
    "t/integration/test_tasks.py::test_trace_log_arguments::test_task_failed",
    # republishes every message with its task id, expecting each task to run twice (RabbitMQ's
    # duplication); a task id runs once while its execution lives; expected to fail on redis://
    # too ("Redis broker does not duplicate the task")
    "t/integration/test_canvas.py::test_chain::test_chord_header_id_duplicated_on_rabbitmq_msg_duplication",
}


def celery_tests() -> Path:
    """Celery's test package ``t/`` and its pytest settings from the sdist of the installed
    Celery (downloaded from PyPI once), without the sdist's ``celery/``: the tests import the
    installed Celery."""
    tests = CACHE / f"celery-{celery.__version__}-tests"
    if (tests / SUITE).exists():
        return tests
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--no-binary", ":all:", f"celery=={celery.__version__}", "-d", str(CACHE)],
        check=True,
    )  # fmt: skip
    prefix = f"celery-{celery.__version__}/"
    with tarfile.open(CACHE / f"celery-{celery.__version__}.tar.gz") as archive:
        wanted = (prefix + "t/", prefix + "pyproject.toml", prefix + "requirements/test.txt")
        members = [m for m in archive.getmembers() if m.name.startswith(wanted)]
        for member in members:
            member.name = member.name[len(prefix) :]
        archive.extractall(tests, members=members, filter="data")
    return tests


def install_plugins(tests: Path) -> None:
    pins = [
        line.strip()
        for line in (tests / "requirements" / "test.txt").read_text().splitlines()
        if line.split("==")[0].strip() in PLUGINS
    ]
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pins], check=True
    )


#: The tests Celery runs only with a ``redis://`` result backend: run again with our broker
#: and Celery's Redis backend (the layout of an app that keeps its result backend).
REDIS_BACKEND_ONLY = "test_task_redis_result_backend or test_replaced_task_nesting_level_1 or nesting_chain"


def run_suite(
    tests: Path, server: DevServer, backend: str, pytest_args: list[str], suite: str = SUITE, broker_db: int = 0
) -> int:
    """Celery's ``suite`` with broker ``flowfabric://…/<broker_db>`` and ``backend`` on ``server``."""
    broker = f"flowfabric://127.0.0.1:{server.port}/{broker_db}"
    env = {
        **os.environ,
        "TEST_BROKER": broker,
        "TEST_BACKEND": backend,
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": str(server.port),
    }
    deselected = [f"--deselect={test}" for test in sorted(EXCUSED)]
    command = [sys.executable, "-m", "pytest", suite, "-p", "no:cacheprovider", "-q", *deselected, *pytest_args]
    print(f"celery {celery.__version__}: {' '.join(command[2:])} (broker {broker}, backend {backend})", flush=True)
    return subprocess.run(command, cwd=tests, env=env).returncode


def main(pytest_args: list[str]) -> int:
    tests = celery_tests()
    install_plugins(tests)
    with DevServer() as server:
        if pytest_args[:1] == ["--canvas"]:
            # the backend on database 0, where the suite's own Redis client reads its keys
            backend = f"redis://127.0.0.1:{server.port}/0"
            return run_suite(tests, server, backend, pytest_args[1:], suite=CANVAS_SUITE, broker_db=1)
        redis_backend = f"redis://127.0.0.1:{server.port}/1"
        failed = run_suite(tests, server, f"flowfabric://127.0.0.1:{server.port}/1", pytest_args)
        return failed or run_suite(tests, server, redis_backend, ["-k", REDIS_BACKEND_ONLY, *pytest_args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
