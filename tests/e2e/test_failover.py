"""A failover: the primary dies, its replica is promoted and the address clients use (a
virtual IP or DNS name, here a TCP forwarder) moves to it. Workers and publishers recover
without a restart; work published before (and replicated) completes, new work runs, and no
task runs on two workers at once."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from ff_celery.devtools.devserver import DevServer, free_port

from .conftest import Worker, assert_one_run_at_a_time, wait_for


class Forwarder:
    """Forwards a loopback port to a target port; :meth:`switch` moves it and drops every
    connection made so far (what a moved virtual IP does to them)."""

    def __init__(self, target_port: int) -> None:
        self.port, self.target_port = free_port(), target_port
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pump(client: socket.socket, upstream: socket.socket) -> None:
        pair = {client: upstream, upstream: client}
        try:
            while True:
                readable, _, _ = select.select(list(pair), [], [], 1.0)
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    pair[source].sendall(data)
        except OSError:
            return
        finally:
            for end in pair:
                end.close()

    def switch(self, target_port: int) -> None:
        self.target_port = target_port
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.switch(self.target_port)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[DevServer, DevServer, Forwarder, Celery, list[Worker]]]:
    primary, replica = DevServer().start(), DevServer().start()
    redis.Redis(port=replica.port).replicaof("127.0.0.1", primary.port)
    forwarder = Forwarder(primary.port)
    url = f"flowfabric://127.0.0.1:{forwarder.port}/0"
    app = Celery("failover", broker=url, backend=url, set_as_current=False)
    workers: list[Worker] = []
    try:
        workers += [Worker(url, tmp_path, concurrency=1).wait_ready() for _ in range(2)]
        yield primary, replica, forwarder, app, workers
    finally:
        for worker in workers:
            worker.stop()
        app.close()
        forwarder.close()
        primary.stop()
        replica.stop()


def test_workers_and_publishers_follow_a_promoted_replica(pair, tmp_path):
    primary, replica, forwarder, app, workers = pair
    assert app.send_task("ffapp.add", (1, 2)).get(timeout=30) == 3
    replica_client = redis.Redis(port=replica.port)
    assert wait_for(lambda: replica_client.info("replication").get("master_link_status") == "up", timeout=30)
    beats = tmp_path / "beats"
    running = app.send_task("ffapp.beating", (3, str(beats)))
    waiting = [app.send_task("ffapp.add", (n, n)) for n in range(4)]
    assert wait_for(lambda: beats.exists(), timeout=30)
    assert redis.Redis(port=primary.port).wait(1, 5000) == 1  # everything so far is on the replica

    primary.stop()  # the primary dies; the replica is promoted and the address moves to it
    replica_client.replicaof("NO", "ONE")
    forwarder.switch(replica.port)

    assert running.get(timeout=60) == 3
    assert [result.get(timeout=60) for result in waiting] == [0, 2, 4, 6]
    assert app.send_task("ffapp.add", (5, 5)).get(timeout=60) == 10
    assert_one_run_at_a_time(beats)
    assert all(worker.process.poll() is None for worker in workers)  # recovered without a restart
