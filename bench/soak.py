"""Soak: many tasks through three prefork workers while a random worker is ``kill -9``ed and
restarted every few seconds and the server (append-only file, fsync always) is restarted once
mid-run. Reports lost tasks, wrong results, tasks run more than once, and Valkey memory before
the run, after it and after the retention trimmer.

    .venv/bin/python bench/soak.py [--count 20000] [--kill-every 3] [--task-ms 5]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis

from ff_celery.devserver import DevServer
from ff_celery.engine.client import Engine
from ff_celery.engine.scanners import EngineScanners, ScannerSettings

HERE = Path(__file__).resolve().parent


def start_worker(env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "celery", "-A", "soak_app", "worker", "-P", "prefork", "-c", "2", "-n", name,
               "-l", "error", "--without-gossip", "--without-mingle", "--without-heartbeat"]  # fmt: skip
    return subprocess.Popen(command, cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def used_memory(url: str) -> int:
    time.sleep(0.5)
    return redis.Redis.from_url(url).info("memory")["used_memory"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between worker kills")
    parser.add_argument("--task-ms", type=float, default=5.0, help="how long each task runs")
    args = parser.parse_args()
    rng = random.Random(7)
    with DevServer(persistent=True) as server:
        url = server.url.replace("redis://", "flowfabric://", 1)
        os.environ["SOAK_URL"] = url
        env = {**os.environ, "PYTHONPATH": str(HERE)}
        sys.path.insert(0, str(HERE))
        from soak_app import app, journal, work

        workers = [start_worker(env, f"soak{n}@%h") for n in range(3)]
        work.delay(-1, 0).get(timeout=60)  # warm: library, lane, workers
        start_memory = used_memory(server.url)
        kills, stop = [], threading.Event()

        def chaos() -> None:
            while not stop.wait(args.kill_every):
                slot = rng.randrange(len(workers))
                os.kill(workers[slot].pid, signal.SIGKILL)
                workers[slot].wait()
                kills.append(time.monotonic())
                workers[slot] = start_worker(env, f"soak{slot}-{len(kills)}@%h")

        started = time.monotonic()
        chaos_thread = threading.Thread(target=chaos, daemon=True)
        chaos_thread.start()
        results = []
        for number in range(args.count):
            if number == args.count // 2:
                server.restart()  # AOF: everything published and recorded so far survives
                restarted_at = time.monotonic() - started
            for attempt in range(50):  # a publish during the restart fails visibly: try again
                try:
                    results.append((number, work.delay(number, args.task_ms / 1000)))
                    break
                except Exception:
                    if attempt == 49:
                        raise
                    time.sleep(0.2)
        published = time.monotonic() - started
        wrong, lost = 0, 0
        for number, result in results:
            try:  # one get() each: riding out the restart is the result backend's job
                wrong += result.get(timeout=300) != 2 * number
            except Exception as exc:
                lost += 1
                print(f"task {number}: {exc!r}")
        stop.set()
        chaos_thread.join()
        elapsed = time.monotonic() - started
        runs = {int(k): int(v) for k, v in journal.hgetall("soak:runs").items() if int(k) >= 0}
        never_ran = args.count - len(runs)
        twice = sum(1 for count in runs.values() if count > 1)
        after_memory = used_memory(server.url)
        engine = Engine.from_url(server.url)
        scanners = EngineScanners(engine, settings=ScannerSettings(retention_s=0, batch_size=500))
        while scanners.trim_retained():
            pass
        journal.delete("soak:runs")
        trimmed_memory = used_memory(server.url)
        for process in workers:
            process.terminate()
        for process in workers:
            process.wait(timeout=60)
        app.close()
        print(
            f"{args.count} tasks, 3 prefork workers (-c 2), {len(kills)} kill -9 of a worker "
            f"(every {args.kill_every} s), server restarted once at {restarted_at:.1f} s (AOF, fsync always)"
        )
        print(f"published in {published:.1f} s, all results in {elapsed:.1f} s")
        print(
            f"lost: {lost}, wrong results: {wrong}, never ran: {never_ran}, ran more than once: {twice} "
            f"(only tasks running at a kill can run again: at most 2 per kill, {2 * len(kills)})"
        )
        print(f"used_memory: {start_memory} before, {after_memory} after the run, {trimmed_memory} after the "
              f"retention trimmer ({100 * (trimmed_memory - start_memory) / start_memory:+.1f}%; task-id "
              f"aliases and idempotency records expire by TTL)")  # fmt: skip


if __name__ == "__main__":
    main()
