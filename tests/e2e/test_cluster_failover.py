"""A cluster's failover as its clients see it: the primary serving the queue's partition is
killed (kill -9) and the cluster promotes its replica. A process that waited on results
before, publishers and workers notice nothing but a delay: a result is read from the new
primary, a publish made while no primary serves the slot is retried until one does, and a
worker whose tasks ended says nothing of lost leases."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from celery.result import AsyncResult

from ff_celery.devserver import DevCluster, DevServer
from ff_celery.engine.client import Engine
from ff_celery.engine.ids import ExecutionId
from ff_celery.engine.keys import done_channel
from ff_celery.messages import NAMESPACE

from .conftest import Worker, wait_for

#: Longer than the failover: a lease renewed before it is still valid after it.
LEASE_TTL = {"FFAPP_LEASE_TTL_MS": "30000"}


class Failover:
    """A 3+3 cluster, an app on it and the primary of the queue's partition (the node the test kills)."""

    def __init__(self, nodes: DevCluster, app: Celery) -> None:
        self.nodes, self.app = nodes, app
        partition = Engine.from_url(nodes.url).partitions.lane_partition("celery")
        self.execution_key = str(ExecutionId.mint(partition))
        self.primary = nodes.primary_of(self.execution_key)
        self.replica = next(node for node in nodes.replicas if _role(node) == ["slave", "127.0.0.1", self.primary.port])

    def task_id(self, *, on_primary: bool) -> str:
        """A task id whose completion channel the doomed primary serves (or another does)."""
        while True:
            task_id = str(uuid.uuid4())
            if (self.nodes.primary_of(done_channel(NAMESPACE, task_id)) is self.primary) == on_primary:
                return task_id

    def replicated(self) -> None:
        """Everything written so far is on the replica."""
        assert redis.Redis(port=self.primary.port).wait(1, 5000) == 1

    def kill_primary(self) -> None:
        os.kill(self.primary.pid, signal.SIGKILL)

    def promoted(self) -> bool:
        """The replica reports itself master and the cluster ok."""
        with redis.Redis(port=self.replica.port, decode_responses=True) as client:
            return _role(self.replica)[0] == "master" and client.cluster("info")["cluster_state"] == "ok"


def _role(node: DevServer) -> list:
    with redis.Redis(port=node.port, decode_responses=True) as client:
        return client.execute_command("ROLE")[:3]


@pytest.fixture
def failover(tmp_path: Path) -> Iterator[Failover]:
    with DevCluster(primaries=3, replicas=1, node_timeout_ms=1000) as nodes:
        url = nodes.url.replace("redis://", "flowfabric://", 1)
        app = Celery("cluster-failover", broker=url, backend=url, set_as_current=False)
        try:
            yield Failover(nodes, app)
        finally:
            app.close()


@pytest.fixture
def worker(failover: Failover, tmp_path: Path) -> Iterator[Worker]:
    url = failover.nodes.url.replace("redis://", "flowfabric://", 1)
    started = Worker(url, tmp_path, concurrency=2, env=LEASE_TTL).wait_ready()
    yield started
    try:
        started.stop()
    except subprocess.TimeoutExpired:
        started.kill()


def test_an_idle_processs_first_get_after_a_failover_returns_the_result(failover, worker):
    app = failover.app
    warm_up = app.send_task("ffapp.add", (1, 2), task_id=failover.task_id(on_primary=False))
    assert warm_up.get(timeout=30) == 3  # this process knew the cluster before, and listened elsewhere
    done = app.send_task("ffapp.add", (2, 3), task_id=failover.task_id(on_primary=True))
    observer = Celery("observer", broker=app.conf.broker_url, backend=app.conf.result_backend, set_as_current=False)
    assert wait_for(lambda: observer.AsyncResult(done.id).state == "SUCCESS", timeout=30)
    failover.replicated()

    failover.kill_primary()
    assert wait_for(failover.promoted, timeout=60)

    assert app.AsyncResult(done.id).get(timeout=20) == 5


def test_a_publish_during_a_failover_is_retried_until_the_promoted_replica_takes_it(failover, worker):
    """The failover lasts 20 s (the replica is promoted by hand): longer than a publish rode
    out before, shorter than the default ``publish_retry_timeout``."""
    app = failover.app
    assert app.send_task("ffapp.add", (1, 2)).get(timeout=30) == 3
    failover.replicated()
    redis.Redis(port=failover.replica.port).config_set("cluster-replica-no-failover", "yes")
    outcome: list[object] = []

    failover.kill_primary()  # no primary serves the queue's partition until the replica takes over
    publisher = threading.Thread(target=lambda: outcome.append(_publish(app, "ffapp.add", (4, 5))))
    publisher.start()
    publisher.join(timeout=20)
    assert publisher.is_alive(), outcome  # still retrying
    redis.Redis(port=failover.replica.port).cluster("failover", "takeover")
    assert wait_for(failover.promoted, timeout=60)
    publisher.join(timeout=60)

    assert not publisher.is_alive() and isinstance(outcome[0], AsyncResult), outcome
    assert outcome[0].get(timeout=60) == 9


def _publish(app: Celery, name: str, args: tuple) -> AsyncResult | Exception:
    try:
        return app.send_task(name, args)
    except Exception as exc:
        return exc


def test_a_worker_whose_tasks_ended_across_a_failover_reports_no_lost_lease(failover, worker):
    app = failover.app
    gated = [app.send_task("ffapp.gated") for _ in range(2)]
    runs = redis.RedisCluster(host="127.0.0.1", port=failover.replica.port)
    assert wait_for(lambda: all(runs.exists(f"ffapp:runs:{task.id}") for task in gated), timeout=30)
    failover.replicated()

    failover.kill_primary()
    assert wait_for(failover.promoted, timeout=60)
    for task in gated:
        runs.set(f"ffapp:go:{task.id}", 1)

    assert [task.get(timeout=60) for task in gated] == ["opened", "opened"]
    worker.stop()
    log = worker.text()
    assert "lease lost" not in log and " lost:" not in log and "dropped without a terminal operation" not in log, log
