"""A cluster changing under a running queue, with real workers: the primary serving the
queue's partition is killed mid-run and the cluster promotes its replica, or the partition's
slot is migrated to another primary while tasks flow. Workers and publishers follow the new
slot map without a restart; every task completes, and no task runs on two workers at once."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from ff_celery.devtools.devserver import DevCluster
from ff_celery.engine.core.engine import Engine
from ff_celery.engine.core.ids import ExecutionId

from .conftest import Worker, assert_one_run_at_a_time, wait_for

#: The workers' fallback poll an hour away: what they claim after the change, they were woken for.
WOKEN_ONLY = {"FFAPP_POLL_INTERVAL": "3600"}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[DevCluster, Celery, list[Worker]]]:
    with DevCluster(primaries=3, replicas=1, node_timeout_ms=1000) as nodes:
        url = nodes.url.replace("redis://", "flowfabric://", 1)
        app = Celery("cluster-failover", broker=url, backend=url, set_as_current=False)
        workers: list[Worker] = []
        try:
            workers += [Worker(url, tmp_path, concurrency=1, env=WOKEN_ONLY).wait_ready() for _ in range(2)]
            yield nodes, app, workers
        finally:
            for worker in workers:
                worker.stop()
            app.close()


def test_workers_and_publishers_follow_the_replica_the_cluster_promotes(cluster, tmp_path):
    nodes, app, workers = cluster
    assert app.send_task("ffapp.add", (1, 2)).get(timeout=30) == 3
    partition = Engine.from_url(nodes.url).partitions.lane_partition("celery")
    primary = nodes.primary_of(ExecutionId.mint(partition))
    beats = tmp_path / "beats"
    running = app.send_task("ffapp.beating", (3, str(beats)))
    waiting = [app.send_task("ffapp.add", (n, n)) for n in range(4)]
    assert wait_for(lambda: beats.exists(), timeout=30)
    assert redis.Redis(port=primary.port).wait(1, 5000) == 1  # everything so far is on its replica

    os.kill(primary.pid, signal.SIGKILL)  # the partition's primary dies; the cluster promotes its replica
    assert wait_for(lambda: nodes.primary_of(ExecutionId.mint(partition)) is not primary, timeout=60)

    assert running.get(timeout=90) == 3
    assert [result.get(timeout=90) for result in waiting] == [0, 2, 4, 6]
    assert app.send_task("ffapp.add", (5, 5)).get(timeout=90) == 10
    assert_one_run_at_a_time(beats)
    assert all(worker.process.poll() is None for worker in workers)  # recovered without a restart


def test_tasks_keep_completing_while_their_partitions_slot_moves_to_another_primary(cluster, tmp_path):
    nodes, app, _ = cluster
    partition = Engine.from_url(nodes.url).partitions.lane_partition("celery")
    key = ExecutionId.mint(partition)
    source = nodes.primary_of(key)
    target = next(node for node in nodes.primaries if node is not source)
    beats = tmp_path / "beats"
    running = app.send_task("ffapp.beating", (2, str(beats)))
    results = [app.send_task("ffapp.add", (n, n)) for n in range(20)]
    assert wait_for(lambda: beats.exists(), timeout=30)

    moved = nodes.move_slot(key, target)  # the queue's executions, indexes and leases move
    results += [app.send_task("ffapp.add", (n, n)) for n in range(20, 40)]

    assert moved > 0 and nodes.primary_of(key) is target
    assert running.get(timeout=90) == 2
    assert [result.get(timeout=90) for result in results] == [2 * n for n in range(40)]
    assert_one_run_at_a_time(beats)
