"""A cluster's failover as its clients see it: a primary is killed (kill -9) and the cluster
promotes its replica. Processes that used the cluster before notice nothing but a delay: a
result is read from the new primary, a publish made while no primary serves its slot is
retried until one does, and a worker reconnects and says nothing of lost leases for tasks
that ended. The apps name a node that survives (a URL names one node to start from)."""

from __future__ import annotations

import os
import re
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery
from celery.result import AsyncResult

from ff_celery.devtools.devserver import DevCluster, DevServer
from ff_celery.engine.core.engine import Engine
from ff_celery.engine.core.ids import ExecutionId
from ff_celery.engine.core.keys import done_channel
from ff_celery.integration.transport import KOMBU_HASH_TAG
from ff_celery.mapping.messages import NAMESPACE

from .conftest import Worker, wait_for

#: Longer than the failover: a lease renewed before it is still valid after it.
LEASE_TTL = {"FFAPP_LEASE_TTL_MS": "30000"}
#: What a worker logs for a lease it lost, for a lease handle it forgot to end, or for an
#: error it did not expect.
NOT_A_DELAY = re.compile(r"lease of \S+ lost|dropped without a terminal operation|failed unexpectedly")


class Failover:
    """A 3+3 cluster, the primary serving ``doomed_key`` (the node the test kills), its
    replica, and an app (and a worker) reaching the cluster through another node."""

    def __init__(self, nodes: DevCluster, doomed_key: str, tmp_path: Path) -> None:
        self.nodes, self.tmp_path = nodes, tmp_path
        self.primary = nodes.primary_of(doomed_key)
        self.replica = next(node for node in nodes.replicas if _role(node) == ["slave", "127.0.0.1", self.primary.port])
        seed = next(node for node in nodes.primaries if node is not self.primary)
        self.url = seed.url.replace("redis://", "flowfabric://", 1)
        self.app = Celery("cluster-failover", broker=self.url, backend=self.url, set_as_current=False)
        self.worker = Worker(self.url, tmp_path, concurrency=2, env=LEASE_TTL).wait_ready()

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

    def close(self) -> None:
        self.worker.shut_down(timeout=30)
        self.app.close()


def _role(node: DevServer) -> list:
    with redis.Redis(port=node.port, decode_responses=True) as client:
        return client.execute_command("ROLE")[:3]


def _failover(tmp_path: Path, doomed_key: Callable[[DevCluster], str]) -> Iterator[Failover]:
    with DevCluster(primaries=3, replicas=1, node_timeout_ms=1000) as nodes:
        failover = Failover(nodes, doomed_key(nodes), tmp_path)
        try:
            yield failover
        finally:
            failover.close()


@pytest.fixture
def partition_failover(tmp_path: Path) -> Iterator[Failover]:
    """The primary to kill serves the queue's partition (its executions, leases, indexes)."""

    def partition_key(nodes: DevCluster) -> str:
        return str(ExecutionId.mint(Engine.from_url(nodes.url).partitions.lane_partition("celery")))

    yield from _failover(tmp_path, partition_key)


@pytest.fixture
def kombu_failover(tmp_path: Path) -> Iterator[Failover]:
    """The primary to kill serves kombu's keys: the worker's consumer loses its connection."""
    yield from _failover(tmp_path, lambda nodes: KOMBU_HASH_TAG)


def test_an_idle_processs_first_get_after_a_failover_returns_the_result(partition_failover):
    failover = partition_failover
    app = failover.app
    warm_up = app.send_task("ffapp.add", (1, 2), task_id=failover.task_id(on_primary=False))
    assert warm_up.get(timeout=30) == 3  # this process knew the cluster before, and listened elsewhere
    done = app.send_task("ffapp.add", (2, 3), task_id=failover.task_id(on_primary=True))
    observer = Celery("observer", broker=failover.url, backend=failover.url, set_as_current=False)
    assert wait_for(lambda: observer.AsyncResult(done.id).state == "SUCCESS", timeout=30)
    failover.replicated()

    failover.kill_primary()  # it served the task's execution and its completion channel
    assert wait_for(failover.promoted, timeout=60)

    assert app.AsyncResult(done.id).get(timeout=20) == 5


def test_a_publish_during_a_failover_is_retried_until_the_promoted_replica_takes_it(partition_failover):
    """The failover lasts 20 s (the replica is promoted by hand): longer than a publish rode
    out before, shorter than the default ``publish_retry_timeout``."""
    failover = partition_failover
    app = failover.app
    assert app.send_task("ffapp.add", (1, 2)).get(timeout=30) == 3
    failover.replicated()
    redis.Redis(port=failover.replica.port).config_set("cluster-replica-no-failover", "yes")
    outcome: list[AsyncResult | Exception] = []

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


def test_a_worker_reconnects_after_a_failover_and_reports_no_lost_lease_for_tasks_that_ended(kombu_failover):
    """Tasks acknowledged when they start (Celery's own task class) run across the failover
    and end after it: their leases, held by the channel the reconnect closed, end with them.
    The flow completion listener, subscribed on the dead node, moves without an error."""
    failover = kombu_failover
    app = failover.app
    running = [app.send_task("ffapp.gated_early_acked") for _ in range(2)]
    runs = redis.RedisCluster(host="127.0.0.1", port=failover.replica.port)
    assert wait_for(lambda: all(runs.exists(f"ffapp:runs:{task.id}") for task in running), timeout=30)
    failover.replicated()

    failover.kill_primary()  # the worker's consumer loses its connection
    assert wait_for(failover.promoted, timeout=60)
    for task in running:
        runs.set(f"ffapp:go:{task.id}", 1)

    assert [task.get(timeout=60) for task in running] == ["opened", "opened"]
    assert app.send_task("ffapp.add", (2, 2)).get(timeout=60) == 4  # consumed again
    failover.worker.stop()
    assert not NOT_A_DELAY.search(failover.worker.text()), failover.worker.text()
