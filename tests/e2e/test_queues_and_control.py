"""Queues as lanes: priorities, durable revoke, purge, and remote control from the CLI."""

import json
import subprocess
import sys
import time

import pytest
from celery import Celery
from celery.exceptions import TaskRevokedError

from ff_celery.engine.core.engine import Engine
from ff_celery.engine.work.lane_shards import shard_lanes

from .conftest import HERE, execution, runs, wait_for


def celery_cli(app_url, *args):
    env = {"FFAPP_URL": app_url, "PYTHONPATH": str(HERE)}
    command = [sys.executable, "-m", "celery", "-A", "ffapp", *args]
    return subprocess.run(command, cwd=HERE, env=env, capture_output=True, text=True, timeout=60)


def publish_in_order(ffapp, labels):
    """One task per (label, priority), each created in a later engine millisecond: equal
    priorities are ordered by creation time, ties within a millisecond by execution id."""
    engine = ffapp.app.backend.engine
    results = []
    for label, priority in labels:
        results.append(ffapp.record_priority.apply_async((label,), priority=priority, queue="prio"))
        created_at = int(engine.read_core(engine.resolve(results[-1].id), "created_at")["created_at"])
        while engine.server_time_ms() <= created_at:
            time.sleep(0.001)
    return results


def test_higher_priority_runs_first_and_equal_priorities_in_order(ffapp, start_worker):
    labels = [("low", 0), ("high-1", 9), ("mid", 5), ("high-2", 9)]
    results = publish_in_order(ffapp, labels)
    start_worker(concurrency=1, queues="prio")
    for result in results:
        result.get(timeout=15)
    started = sorted((runs(ffapp, r.id)[0].rsplit(":", 1)[1], r.get()) for r in results)
    assert [label for _, label in started] == ["high-1", "high-2", "mid", "low"]


def test_a_revoked_queued_task_never_runs_even_on_workers_that_were_offline(ffapp, start_worker):
    result = ffapp.record_run.apply_async(("x",), queue="offline")
    result.revoke()  # no worker is listening for the broadcast
    assert execution(ffapp, result.id).public_state == "cancelled"
    start_worker(concurrency=1, queues="offline")
    with pytest.raises(TaskRevokedError):
        result.get(timeout=10)
    assert runs(ffapp, result.id) == []


def test_celery_control_revoke_from_the_cli_is_durable(ffapp, app_url):
    result = ffapp.record_run.apply_async(("x",), queue="offline-cli")
    output = celery_cli(app_url, "control", "revoke", result.id)
    # No worker is online to acknowledge the broadcast, yet the revoke took effect.
    assert "No nodes replied" in output.stderr
    assert result.state == "REVOKED"
    assert execution(ffapp, result.id).public_state == "cancelled"


def test_celery_purge_cancels_the_waiting_executions(ffapp, app_url):
    results = [ffapp.record_run.apply_async((n,), queue="purgeme") for n in range(3)]
    output = celery_cli(app_url, "purge", "-Q", "purgeme", "-f")
    assert output.returncode == 0, output.stderr
    assert "3 messages" in output.stdout
    assert {execution(ffapp, r.id).public_state for r in results} == {"cancelled"}


def test_inspect_active_stats_and_control_shutdown(ffapp, app_url, start_worker):
    worker = start_worker(concurrency=1, queues="ctl")
    running = ffapp.gated.apply_async(queue="ctl")  # runs until its gate opens, however slow the CLI is
    assert wait_for(lambda: runs(ffapp, running.id))
    active = celery_cli(app_url, "inspect", "active", "-d", worker.name, "-t", "10")
    ffapp.runs().set(f"ffapp:go:{running.id}", 1)
    assert running.id in active.stdout, active.stdout + active.stderr
    assert running.get(timeout=15) == "opened"
    stats = celery_cli(app_url, "inspect", "stats", "-d", worker.name, "-t", "10", "--json")
    worker_stats = json.loads(stats.stdout)[worker.name]
    assert worker_stats["broker"]["transport"] == "flowfabric"
    assert worker_stats["total"] == {"ffapp.gated": 1}
    celery_cli(app_url, "control", "shutdown", "-d", worker.name, "-t", "2")
    assert worker.process.wait(timeout=30) == 0


def test_an_idle_worker_is_woken_on_every_lane_of_a_spread_queue_without_polling(app_url, start_worker):
    """Wake-ups reach the worker on each lane's channel (on a cluster: sharded Pub/Sub, one
    connection per shard): with the fallback poll an hour away, every task still runs."""
    start_worker(queues="woken", env={"FFAPP_QUEUE_SHARDS": "woken=3", "FFAPP_POLL_INTERVAL": "3600"})
    app = Celery("woken-publisher", broker=app_url, backend=app_url, set_as_current=False)
    app.conf.broker_transport_options = {"queue_shards": {"woken": 3}}
    try:
        for n in range(6):  # round-robin over the 3 lanes, each task sent to an idle worker
            assert app.send_task("ffapp.add", (n, n), queue="woken").get(timeout=60) == 2 * n
    finally:
        app.close()


def test_a_queue_spread_over_three_lanes_runs_every_task_once_from_each_lane(app_url, start_worker):
    start_worker(queues="spread", env={"FFAPP_QUEUE_SHARDS": "spread=3"})
    app = Celery("spread-publisher", broker=app_url, backend=app_url, set_as_current=False)
    app.conf.broker_transport_options = {"queue_shards": {"spread": 3}}
    try:
        results = [app.send_task("ffapp.add", (n, n), queue="spread") for n in range(30)]
        assert [result.get(timeout=60) for result in results] == [2 * n for n in range(30)]
    finally:
        app.close()
    engine = Engine.from_url(app_url.replace("flowfabric://", "redis://", 1))
    lanes = shard_lanes("spread", 3, engine.partitions)
    assert [engine.lane_counts(lane)["terminal"] for lane in lanes] == [10, 10, 10]
