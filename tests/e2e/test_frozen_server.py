"""A Valkey frozen (SIGSTOP) for longer than a lease, then resumed: the workers recover
without a restart, the task completes with its result, and it never runs on two workers at
once (a worker that cannot renew stops the task before the lease can expire)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from ff_celery.devtools.devserver import DevServer

from .conftest import Worker, assert_one_run_at_a_time, wait_for

LEASE_TTL_MS = 2000


@pytest.fixture
def frozen_setup(tmp_path: Path) -> Iterator[tuple[DevServer, Celery, list[Worker]]]:
    server = DevServer().start()
    url = server.url.replace("redis://", "flowfabric://", 1)
    app = Celery("frozen", broker=url, backend=url, set_as_current=False)
    environment = {"FFAPP_LEASE_TTL_MS": str(LEASE_TTL_MS)}
    workers = [Worker(url, tmp_path, concurrency=1, env=environment).wait_ready() for _ in range(2)]
    try:
        yield server, app, workers
    finally:
        os.kill(server.pid, signal.SIGCONT)
        for worker in workers:
            worker.stop()
        server.stop()
        app.close()


def test_a_task_outlives_a_server_frozen_longer_than_its_lease_and_never_runs_twice_at_once(frozen_setup, tmp_path):
    server, app, workers = frozen_setup
    beats = tmp_path / "beats"
    result = app.send_task("ffapp.beating", (6, str(beats)))
    assert wait_for(lambda: beats.exists(), timeout=30)
    os.kill(server.pid, signal.SIGSTOP)
    time.sleep(2.5 * LEASE_TTL_MS / 1000)  # the deliberate outage: longer than the lease
    os.kill(server.pid, signal.SIGCONT)

    assert result.get(timeout=60) == 6
    assert_one_run_at_a_time(beats)
    assert all(worker.process.poll() is None for worker in workers)
    assert app.send_task("ffapp.add", (2, 3)).get(timeout=30) == 5  # both recovered without a restart
