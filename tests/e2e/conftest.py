"""Real ``celery worker`` subprocesses on the embedded server."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


class Worker:
    """A ``celery -A ffapp worker`` process; stopped by its pid."""

    def __init__(self, url: str, tmp: Path, *, pool: str = "prefork", concurrency: int = 2,
                 queues: str = "celery", env: dict[str, str] | None = None, events: bool = False,
                 app: str = "ffapp", python: str = sys.executable, extra_args: Sequence[str] = ()) -> None:  # fmt: skip
        self.name = f"w{uuid.uuid4().hex[:6]}@{os.uname().nodename}"
        self.log = tmp / f"{self.name.split('@')[0]}.log"
        command = [
            python, "-m", "celery", "-A", app, "worker", "-P", pool, "-c", str(concurrency),
            "-Q", queues, "-n", self.name, "-l", "info", "--without-gossip", "--without-mingle",
            "--logfile", str(self.log),
        ]  # fmt: skip
        if events:
            command.append("-E")
        command.extend(extra_args)
        environment = {**os.environ, "FFAPP_URL": url, "PYTHONPATH": str(HERE), **(env or {})}
        #: What the worker prints besides its log: Celery's shutdown notices and thread dumps.
        self.console = tmp / f"{self.name.split('@')[0]}.console"
        with self.console.open("wb") as console:
            self.process = subprocess.Popen(
                command, cwd=HERE, env=environment, stdout=console, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float = 30.0) -> Worker:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.text()}")
            if " ready." in self.text():
                return self
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready after {timeout}s:\n{self.text()}")

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self, timeout: float = 30.0) -> None:
        """Warm shutdown (SIGTERM), waiting for running tasks."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=timeout)

    def shut_down(self, timeout: float = 15.0) -> None:
        """Warm shutdown; one that takes longer than ``timeout`` is reported (a warning with
        where each of the worker's threads stood: Celery prints them on SIGUSR1) and killed."""
        try:
            self.stop(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGUSR1)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=2)
            self.kill()
            tail = "\n".join([*self.text().splitlines()[-40:], *self.console.read_text().splitlines()[-80:]])
            warnings.warn(
                f"worker {self.name} still running {timeout:g} s after SIGTERM, killed:\n{tail}", stacklevel=2
            )

    def kill(self) -> None:
        """kill -9 of the main process; its pool children die with it."""
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


@pytest.fixture(scope="session")
def app_url(ff_server) -> str:
    return ff_server.url.replace("redis://", "flowfabric://", 1)


@pytest.fixture(scope="session")
def ffapp(app_url: str):
    os.environ["FFAPP_URL"] = app_url
    sys.path.insert(0, str(HERE))
    import ffapp

    ffapp.app.conf.update(broker_url=app_url, result_backend=app_url)
    return ffapp


@pytest.fixture
def start_worker(app_url: str, tmp_path: Path) -> Iterator:
    """Start workers for one test; all are stopped (killed if need be) afterwards."""
    started: list[Worker] = []

    def start(**options: object) -> Worker:
        started.append(Worker(app_url, tmp_path, **options))
        return started[-1].wait_ready()

    yield start
    for worker in started:
        worker.shut_down()


def layout(ff_server, broker_db: int, backend: str) -> dict[str, str]:
    """``plainapp``'s environment: its broker on database ``broker_db`` of ``ff_server``, its
    result backend at ``backend`` (``{base}`` stands for the server's host:port)."""
    base = f"127.0.0.1:{ff_server.port}"
    return {"PLAINAPP_BROKER": f"flowfabric://{base}/{broker_db}", "PLAINAPP_BACKEND": backend.format(base=base)}


def publish(env: dict[str, str], code: str, timeout: float = 120) -> object:
    """Run ``code`` in a fresh interpreter that imports only ``plainapp`` (configured by
    ``env``); answers what it printed last, as JSON."""
    script = "import json\nfrom plainapp import *\n" + textwrap.dedent(code)
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=HERE,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(HERE), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def plainapp_worker(ff_server, start_worker) -> Callable[..., dict[str, str]]:
    """Starts a worker of the URL-only app (``plainapp``) on a :func:`layout`, with more
    ``PLAINAPP_*`` settings if given; answers the layout's environment, for :func:`publish`."""

    def start(broker_db: int, backend: str, **settings: str) -> dict[str, str]:
        env = layout(ff_server, broker_db, backend)
        start_worker(app="plainapp", env={**env, **settings})
        return env

    return start


@pytest.fixture(scope="module")
def module_worker(app_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """One prefork worker (concurrency 2, events on) shared by a test module."""
    worker = Worker(app_url, tmp_path_factory.mktemp("worker"), events=True).wait_ready()
    yield worker
    worker.shut_down()


def runs(ffapp, task_id: str) -> list[str]:
    """What a task recorded, in order: ``event:host:pid:time``."""
    return [entry.decode() for entry in ffapp.runs().lrange(f"ffapp:runs:{task_id}", 0, -1)]


def execution(ffapp, task_id: str):
    engine = ffapp.app.backend.engine
    return engine.snapshot(engine.resolve(task_id))


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def assert_one_run_at_a_time(beats: Path) -> None:
    """The heartbeats ``ffapp.beating`` wrote (``<pid> <time>`` lines) show each run's
    process between its first and last beat; no two such spans overlap."""
    times: dict[str, list[float]] = {}
    for line in beats.read_text().splitlines():
        pid, moment = line.split()
        times.setdefault(pid, []).append(float(moment))
    spans = sorted((min(moments), max(moments)) for moments in times.values())
    for (_, earlier_end), (later_start, _) in itertools.pairwise(spans):
        assert later_start > earlier_end, spans
