"""A Valkey/Redis outage: publishing fails with kombu's OperationalError once its
``publish_retry_timeout`` has passed, instead of hanging or dropping the message silently;
a worker rides out a server restart (reloading the lost function library) and runs what is
published afterwards; a publisher reads results again."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from celery import Celery
from kombu.exceptions import OperationalError

from ff_celery.devtools.devserver import DevServer

from .conftest import Worker, wait_for


@dataclass
class Outage:
    """A server of the test's own, a publishing app and a worker on it."""

    server: DevServer
    app: Celery
    worker: Worker


@pytest.fixture
def outage(tmp_path: Path) -> Iterator[Outage]:
    server = DevServer().start()
    url = server.url.replace("redis://", "flowfabric://", 1)
    app = Celery("outage", broker=url, backend=url, set_as_current=False)
    app.conf.broker_transport_options = {"poll_interval": 0.2, "publish_retry_timeout": 2}
    setup = Outage(server, app, Worker(url, tmp_path, concurrency=1).wait_ready())
    try:
        yield setup
    finally:
        setup.worker.stop()
        setup.server.stop()
        app.close()


def test_publishing_to_a_dead_server_raises_operational_error_and_a_worker_survives_a_restart(outage):
    app = outage.app
    assert app.send_task("ffapp.add", (1, 2)).get(timeout=15) == 3
    outage.server.stop()
    with pytest.raises(OperationalError, match="onnect"):
        app.send_task("ffapp.add", (2, 2))

    outage.server.start()  # the same port, empty: no library, no executions
    assert app.send_task("ffapp.add", (3, 4)).get(timeout=30) == 7
    assert outage.worker.process.poll() is None


def test_a_publisher_reads_results_again_after_a_server_restart_without_reconnecting_by_hand(outage):
    app = outage.app
    assert app.send_task("ffapp.add", (1, 2)).get(timeout=15) == 3  # keeps its connections
    outage.server.restart()  # every connection of the publisher is now dead
    assert app.send_task("ffapp.add", (3, 4)).get(timeout=30) == 7
    assert app.send_task("ffapp.add", (5, 6)).get(timeout=30) == 11


def test_a_running_task_whose_execution_vanished_finishes_instead_of_being_killed(outage):
    journal = redis.Redis(port=outage.server.port)
    result = outage.app.send_task("ffapp.tracked_sleep", (4,))
    assert wait_for(lambda: journal.llen(f"ffapp:runs:{result.id}") == 1)  # started
    outage.server.restart()  # no persistence: the execution, its lease and the journal are gone
    journal = redis.Redis(port=outage.server.port)
    assert wait_for(lambda: journal.exists(f"ffapp:runs:{result.id}"), timeout=30)
    assert journal.lrange(f"ffapp:runs:{result.id}", 0, -1)[0].startswith(b"finish")  # ran to its end
    assert wait_for(lambda: "vanished from the server" in outage.worker.text())
    assert outage.worker.process.poll() is None
