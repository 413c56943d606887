"""Valkey memory per completed no-op Celery task, and what the retention trimmer gives back.

Starts an embedded server and a real ``celery worker`` (bench_app, prefork -c 2), runs
``--count`` no-op tasks through ``flowfabric://`` (broker and backend), then reports
``used_memory`` and keys per retained execution, trims them all (the trimmer with the default
scanner settings, as of two days on) reporting its deletions per second, and reports again;
then the same per task queued (on a queue no worker consumes).

    .venv/bin/python bench/footprint.py [--count 2000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from celery import group

from ff_celery.devtools.devserver import DevServer
from ff_celery.engine.core.engine import Engine
from ff_celery.engine.duties.scanners import EngineScanners

HERE = Path(__file__).resolve().parent
DAY_MS = 86_400_000


def memory(engine: Engine) -> tuple[int, int]:
    """(used_memory, keys) of the server, after a moment for lazy frees."""
    time.sleep(0.5)
    return engine.redis.info("memory")["used_memory"], engine.redis.dbsize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    with DevServer() as server:
        url = server.url.replace("redis://", "flowfabric://", 1)
        os.environ.update(BENCH_BROKER=url, BENCH_BACKEND=url)
        sys.path.insert(0, str(HERE))
        from bench_app import app, noop
        from celery_bench import start_worker

        worker = start_worker({**os.environ, "PYTHONPATH": str(HERE)})
        try:
            noop.delay().get(timeout=60)  # warm: library, lanes, keystore, worker
            engine = Engine.from_url(server.url)
            before_bytes, before_keys = memory(engine)
            for start in range(0, args.count, 500):
                group(noop.s() for _ in range(min(500, args.count - start)))().get(timeout=300)
            after_bytes, after_keys = memory(engine)
            per_bytes = (after_bytes - before_bytes) / args.count
            per_keys = (after_keys - before_keys) / args.count
            grown = f"+{after_bytes - before_bytes} bytes used_memory, +{after_keys - before_keys} keys"
            print(f"{args.count} completed no-op tasks: {grown} -> {per_bytes:.0f} bytes, {per_keys:.1f} keys per task")
            # as of two days on: past the app's result_expires, which every task carries
            trimmer = EngineScanners(engine).trimmer  # the default scanner settings
            started, trimmed, later = time.perf_counter(), 0, engine.server_time_ms() + 2 * DAY_MS
            trimmed += trimmer.trim(later)
            while trimmer.behind:  # one run works a second at most; the scanners run it again at once
                trimmed += trimmer.trim(later)
            elapsed = time.perf_counter() - started
            trimmed_bytes, trimmed_keys = memory(engine)
            print(f"retention trimmer (default settings): {trimmed} executions in {elapsed:.2f} s "
                  f"({trimmed / elapsed:.0f} deleted/s); "
                  f"used_memory {trimmed_bytes - before_bytes:+d} bytes, keys {trimmed_keys - before_keys:+d} "
                  f"vs before the run")  # fmt: skip
            for _ in range(args.count):  # a queue no worker consumes: queued, never run
                noop.apply_async(queue="parked")
            queued_bytes, queued_keys = memory(engine)
            print(f"{args.count} queued no-op tasks: {(queued_bytes - trimmed_bytes) / args.count:.0f} bytes, "
                  f"{(queued_keys - trimmed_keys) / args.count:.1f} keys per task")  # fmt: skip
        finally:
            worker.terminate()
            worker.wait(timeout=30)
            app.close()


if __name__ == "__main__":
    main()
