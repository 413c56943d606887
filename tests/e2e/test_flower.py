"""Flower, Celery's monitoring web UI, run against a flowfabric:// broker: it lists the
workers and the tasks with their states, as it does on Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest

from ff_celery.devtools.devserver import free_port
from ff_celery.features import budgets

from .conftest import HERE, wait_for


def api(port: int, path: str) -> object | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/{path}", timeout=5) as response:
            return json.loads(response.read())
    except OSError:
        return None


@pytest.fixture
def flower(app_url: str, tmp_path: Path):
    port = free_port()
    environment = {**os.environ, "FFAPP_URL": app_url, "PYTHONPATH": str(HERE), "FLOWER_UNAUTHENTICATED_API": "1"}
    with (tmp_path / "flower.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "ffapp", "flower", f"--port={port}", "--address=127.0.0.1"],
            cwd=HERE, env=environment, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        assert wait_for(lambda: api(port, "workers") is not None, timeout=30), (tmp_path / "flower.log").read_text()
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_flower_lists_the_worker_and_the_tasks_with_their_states(ffapp, start_worker, flower):
    worker = start_worker(events=True)
    succeeded, failed = ffapp.add.delay(2, 3), ffapp.boom.delay()
    assert succeeded.get(timeout=30) == 5
    failed.get(timeout=30, propagate=False)

    def listed() -> dict:
        return api(flower, "tasks") or {}

    assert wait_for(lambda: {succeeded.id, failed.id} <= set(listed()), timeout=60)
    assert wait_for(lambda: listed()[failed.id]["state"] == "FAILURE", timeout=30)
    tasks = listed()
    assert (tasks[succeeded.id]["name"], tasks[succeeded.id]["state"], tasks[succeeded.id]["result"]) == (
        "ffapp.add",
        "SUCCESS",
        "5",
    )
    assert "KeyError" in tasks[failed.id]["exception"]
    assert wait_for(lambda: worker.name in (api(flower, "workers?refresh=1") or {}), timeout=60)


def test_flower_shows_suspended_and_budget_blocked_tasks(ffapp, start_worker, flower):
    start_worker(events=True)
    suspended = ffapp.await_approval.delay()
    name = f"tokens-{uuid.uuid4().hex[:8]}"
    budgets.create_budget(ffapp.app, name, hard={"tokens": 10})
    assert ffapp.spend_tokens.apply_async((1, 10), ff_budgets=[name]).get(timeout=30) == 10  # now exactly spent
    blocked = ffapp.spend_tokens.apply_async((1, 10), ff_budgets=[name])

    def state(task_id: str) -> str | None:
        return ((api(flower, "tasks") or {}).get(task_id) or {}).get("state")

    assert wait_for(lambda: state(suspended.id) == "SUSPENDED", timeout=60)
    assert wait_for(lambda: state(blocked.id) == "BLOCKED", timeout=60)
    assert (api(flower, "tasks") or {})[blocked.id]["name"] == "ffapp.spend_tokens"
    suspended.revoke()
    blocked.revoke()
