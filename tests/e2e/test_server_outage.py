"""A Valkey/Redis outage: publishing fails with kombu's OperationalError instead of hanging
or dropping the message silently; a worker rides out a server restart (reloading the lost
function library) and runs what is published afterwards."""

import pytest
from celery import Celery
from kombu.exceptions import OperationalError

from ff_celery.devserver import DevServer

from .conftest import Worker


def test_publishing_to_a_dead_server_raises_operational_error_and_a_worker_survives_a_restart(tmp_path):
    server = DevServer().start()
    url = server.url.replace("redis://", "flowfabric://", 1)
    app = Celery("outage", broker=url, backend=url, set_as_current=False)
    app.conf.broker_transport_options = {"poll_interval": 0.2}
    worker = Worker(url, tmp_path, concurrency=1).wait_ready()
    try:
        assert app.send_task("ffapp.add", (1, 2)).get(timeout=15) == 3
        server.stop()
        with pytest.raises(OperationalError, match="onnect"):
            app.send_task("ffapp.add", (2, 2))

        server = DevServer(port=server.port).start()  # empty: no library, no executions
        assert app.send_task("ffapp.add", (3, 4)).get(timeout=30) == 7
        assert worker.process.poll() is None
    finally:
        worker.stop()
        server.stop()
        app.close()


def test_a_publisher_reads_results_again_after_a_server_restart_without_reconnecting_by_hand(tmp_path):
    server = DevServer().start()
    url = server.url.replace("redis://", "flowfabric://", 1)
    app = Celery("restarted", broker=url, backend=url, set_as_current=False)
    app.conf.broker_transport_options = {"poll_interval": 0.2}
    worker = Worker(url, tmp_path, concurrency=1).wait_ready()
    try:
        assert app.send_task("ffapp.add", (1, 2)).get(timeout=15) == 3  # keeps its connections
        server.restart()  # every connection of the publisher is now dead
        assert app.send_task("ffapp.add", (3, 4)).get(timeout=30) == 7
        assert app.send_task("ffapp.add", (5, 6)).get(timeout=30) == 11
    finally:
        worker.stop()
        server.stop()
        app.close()
