"""Starting and stopping a real ``celery -A showcase worker`` for the example scripts."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def worker(url: str, *, concurrency: int = 1, name: str = "showcase") -> Iterator[subprocess.Popen[bytes]]:
    """A prefork worker on ``url``; ready when entered (it answers a remote-control ping),
    stopped on exit (SIGTERM, a warm shutdown, and wait)."""
    from showcase.celery import app

    env = {**os.environ, "SHOWCASE_URL": url, "PYTHONPATH": str(EXAMPLES)}
    command = [sys.executable, "-m", "celery", "-A", "showcase", "worker", "-P", "prefork", "-c", str(concurrency),
               "-n", f"{name}@%h", "-l", "error", "--without-gossip", "--without-mingle"]  # fmt: skip
    process = subprocess.Popen(command, env=env, cwd=EXAMPLES, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        started = time.monotonic()
        while not app.control.ping(destination=[f"{name}@{socket.gethostname()}"], timeout=0.2):
            if process.poll() is not None or time.monotonic() - started > 60:
                raise RuntimeError(f"worker {name} did not start (exit code {process.poll()})")
        print(f"worker {name} up (prefork, -c {concurrency}) in {time.monotonic() - started:.1f} s")
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
