"""``docker-compose.cluster.yml`` without Docker: its six nodes run with the file's own server
settings (ports, directories and the bind address made local), its ``cluster`` service's
command forms them into a cluster, and the example project's worker runs a task on it."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml
from celery import Celery

from ff_celery.devtools.devserver import DevServer, free_port

from .conftest import Worker, wait_for

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())
NODES = sorted(name for name in COMPOSE["services"] if name.startswith("valkey-"))


class ComposeNode(DevServer):
    """A node started with the compose file's command, on loopback ports of its own."""

    def __init__(self, command: list[str]) -> None:
        super().__init__()
        self.settings = command[1:]  # the compose file's binary is the one the image ships

    def start(self, timeout_s: float = 10.0) -> ComposeNode:
        self.bus_port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="ff-celery-compose-"))
        local = [
            "--port", str(self.port), "--cluster-port", str(self.bus_port), "--bind", "127.0.0.1",
            "--dir", str(self.directory), "--logfile", str(self.directory / "server.log"), "--daemonize", "no",
        ]  # fmt: skip
        self.process = subprocess.Popen([self.binary, *self.settings, *local], stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        try:
            assert wait_for(lambda: answers(client), timeout_s), f"node on {self.port} did not answer"
        finally:
            client.close()
        return self


def answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def nodes() -> Iterator[dict[str, ComposeNode]]:
    started = {name: ComposeNode(COMPOSE["services"][name]["command"]) for name in NODES}
    try:
        for node in started.values():
            node.start()
        yield started
    finally:
        for node in started.values():
            node.stop()


def form_cluster(nodes: dict[str, ComposeNode]) -> subprocess.CompletedProcess[str]:
    """The ``cluster`` service's command, its node names pointing at the local nodes."""
    local = {f"{name}:6379": f"127.0.0.1:{node.port}" for name, node in nodes.items()}
    ff_celery, *arguments = COMPOSE["services"]["cluster"]["command"]
    assert ff_celery == "ff-celery"
    command = [sys.executable, "-m", "ff_celery.cli", *(local.get(argument, argument) for argument in arguments)]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)


def test_the_compose_cluster_forms_once_and_runs_the_example_project(nodes, tmp_path):
    formed = form_cluster(nodes)
    assert formed.returncode == 0, formed.stderr
    assert formed.stdout.strip() == "cluster formed: 3 primaries, 3 replicas"
    again = form_cluster(nodes)  # `docker compose up` again: the cluster is kept as it is
    assert (again.returncode, again.stdout.strip()) == (0, "cluster already formed: 3 primaries, 3 replicas")

    service_url = COMPOSE["services"]["worker"]["environment"]["PROJ_URL"]
    url = service_url.replace("valkey-1:6379", f"127.0.0.1:{nodes['valkey-1'].port}")
    environment = {"PYTHONPATH": str(ROOT / "examples"), "PROJ_URL": url}  # the image's working directory
    worker = Worker(url, tmp_path, app="proj", concurrency=1, env=environment)
    app = Celery("compose-publisher", broker=url, backend=url, set_as_current=False)
    try:
        worker.wait_ready(timeout=60)
        assert app.send_task("proj.tasks.add", (2, 3)).get(timeout=60) == 5
    finally:
        app.close()
        worker.stop()
