"""The main demo: a Celery project (examples/proj) on FlowFabric, with a real worker.

Starts an embedded Valkey/Redis, a ``celery -A proj worker`` subprocess, and shows: a chain,
a chord, a task that retries, a countdown held by the engine, and a worker killed with -9
while it runs a task that another worker then finishes. Stops everything it started.

    python examples/celery_demo.py
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ff_celery.devtools.devserver import DevServer

HERE = Path(__file__).resolve().parent


def start_worker(url: str, name: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PROJ_URL": url, "PYTHONPATH": str(HERE)}
    command = [sys.executable, "-m", "celery", "-A", "proj", "worker", "-P", "prefork", "-c", "2",
               "-n", f"{name}@%h", "-l", "warning", "--without-gossip", "--without-mingle"]  # fmt: skip
    return subprocess.Popen(command, env=env, cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    with DevServer() as server:
        url = server.url.replace("redis://", "flowfabric://")
        os.environ["PROJ_URL"] = url
        sys.path.insert(0, str(HERE))
        from celery import chain, chord
        from proj.celery import app
        from proj.tasks import add, fetch_price, mul, slow_report, xsum

        print(f"embedded server {server.url} (pid {server.pid})")
        first = start_worker(url, "first")
        try:
            result = chain(add.s(2, 3), mul.s(10), add.s(1))()
            print(f"chain add(2,3) | mul(10) | add(1)        -> {result.get(timeout=30)}")
            total = chord(add.s(i, i) for i in range(10))(xsum.s())
            print(f"chord xsum(add(i, i) for i in 0..9)     -> {total.get(timeout=30)}")
            price = fetch_price.delay("ACME")
            print(f"fetch_price retried twice by the engine -> {price.get(timeout=30)}")
            snapshot = app.backend.engine.snapshot(app.backend.engine.resolve(price.id))
            attempts = [(a.attempt_type, a.attempt_state) for a in snapshot.attempts]
            print(f"   one execution, attempts: {attempts}")

            started = time.monotonic()
            later = add.apply_async((40, 2), countdown=2)
            state = app.backend.engine.snapshot(app.backend.engine.resolve(later.id)).public_state
            print(f"countdown=2 s: the engine holds it ({state}) -> {later.get(timeout=30)} after "
                  f"{time.monotonic() - started:.1f} s")  # fmt: skip

            report = slow_report.delay(3)
            time.sleep(1.0)
            print("kill -9 the worker while slow_report runs ...")
            first.send_signal(signal.SIGKILL)
            first.wait()
            second = start_worker(url, "second")
            try:
                print(f"   another worker finishes it once the lease lapses -> {report.get(timeout=60)}")
                snapshot = app.backend.engine.snapshot(app.backend.engine.resolve(report.id))
                print(f"   attempts: {[(a.attempt_type, a.attempt_state) for a in snapshot.attempts]}")
            finally:
                second.terminate()
                second.wait(timeout=30)
        finally:
            if first.poll() is None:
                first.terminate()
                first.wait(timeout=30)
    print("done: server and workers stopped")


if __name__ == "__main__":
    main()
