"""Soak, in one of two runs.

Crashes: many tasks through three prefork workers while a random worker is ``kill -9``ed and
restarted every few seconds and the server (append-only file, fsync always) is restarted once
mid-run. Reports lost tasks, wrong results, tasks run more than once, Valkey memory before the
run, after it and once the workers' retention trimmer has removed every execution (the app's
``result_expires`` is ``--retention`` seconds), what keys remain, and the slowest call of each
command the engine and the trimmer use (Valkey's latency histogram, since the restart).

    .venv/bin/python bench/soak.py [--count 20000] [--kill-every 3] [--task-ms 5] [--retention 60]

Steady load (``--steady``): ``--rate`` no-op tasks a second for ``--duration`` seconds through
``--workers`` prefork workers, the app and its scanners on their default settings but for
``result_expires`` (``--retention``). Prints the server's memory every 30 s, then how flat it
stayed once the first retention period had passed, and waits for the trimmer to take
everything back.

    .venv/bin/python bench/soak.py --steady [--rate 200] [--duration 600] [--retention 60]
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis

from ff_celery.devtools.devserver import DevServer

HERE = Path(__file__).resolve().parent


def start_worker(env: dict[str, str], name: str, concurrency: int = 2) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "celery", "-A", "soak_app", "worker", "-P", "prefork", "-c", str(concurrency),
               "-n", name, "-l", "error", "--without-gossip", "--without-mingle", "--without-heartbeat"]  # fmt: skip
    return subprocess.Popen(command, cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def used_memory(url: str) -> int:
    time.sleep(0.5)
    return redis.Redis.from_url(url).info("memory")["used_memory"]


def key_census(client: redis.Redis) -> dict[str, int]:
    """How many keys there are per prefix (up to the first ``{`` or third ``:``)."""
    census: dict[str, int] = {}
    for key in client.scan_iter(count=1000):
        prefix = ":".join(key.decode().split("{")[0].split(":")[:3])
        census[prefix] = census.get(prefix, 0) + 1
    return dict(sorted(census.items()))


def slowest_calls(client: redis.Redis) -> dict[str, int]:
    """Per command: the upper bound (µs) of its slowest latency-histogram bucket."""
    histograms = client.execute_command("LATENCY", "HISTOGRAM")
    return {
        name.decode(): max(entry[b"histogram_usec"])
        for name, entry in sorted(histograms.items(), key=lambda item: -max(item[1][b"histogram_usec"]))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between worker kills")
    parser.add_argument("--task-ms", type=float, default=5.0, help="how long each task runs")
    parser.add_argument("--retention", type=float, default=60.0, help="result_expires of the app, seconds")
    parser.add_argument("--steady", action="store_true", help="the steady-load run")
    parser.add_argument("--rate", type=float, default=200.0, help="steady: tasks published per second")
    parser.add_argument("--duration", type=float, default=600.0, help="steady: seconds of publishing")
    parser.add_argument("--workers", type=int, default=3, help="steady: prefork workers")
    parser.add_argument("--concurrency", type=int, default=4, help="steady: processes per worker")
    parser.add_argument("--publishers", type=int, default=4, help="steady: publishing threads")
    args = parser.parse_args()
    if args.steady:
        steady(args)
    else:
        crashes(args)


def steady(args: argparse.Namespace) -> None:
    """The steady-load run (see the module docstring)."""
    with DevServer() as server:
        os.environ.update(SOAK_URL=server.url.replace("redis://", "flowfabric://", 1), SOAK_MODE="steady")
        os.environ["SOAK_RETENTION_S"] = str(args.retention)
        env = {**os.environ, "PYTHONPATH": str(HERE)}
        sys.path.insert(0, str(HERE))
        from soak_app import app, journal, tick

        workers = [start_worker(env, f"steady{n}@%h", args.concurrency) for n in range(args.workers)]
        client = redis.Redis.from_url(server.url)
        try:
            tick.delay(-1).get(timeout=60)  # warm: library, lane, workers
            journal.delete("soak:ticks")
            samples, started, stop = [], time.monotonic(), threading.Event()
            counts = [0] * args.publishers

            def publish(slot: int) -> None:
                """Publish this thread's share of the rate, paced (behind schedule, catch up)."""
                rate = args.rate / args.publishers
                while not stop.is_set():
                    due = int((time.monotonic() - started) * rate) - counts[slot]
                    for _ in range(max(0, min(due, int(rate)))):
                        tick.delay(counts[slot])
                        counts[slot] += 1
                    if due <= 0:
                        time.sleep(0.005)

            def sample() -> None:
                memory, keys = client.info("memory")["used_memory"], client.dbsize()
                moment, ran = time.monotonic() - started, int(journal.get("soak:ticks") or 0)
                samples.append((moment, memory))
                print(f"{moment:6.0f} s  used_memory {memory / 2**20:7.1f} MiB  keys {keys:8d}  "
                      f"published {sum(counts):8d}  ran {ran:8d}", flush=True)  # fmt: skip

            publishers = [threading.Thread(target=publish, args=(n,), daemon=True) for n in range(args.publishers)]
            for thread in publishers:
                thread.start()
            sample()
            while (elapsed := time.monotonic() - started) < args.duration:
                time.sleep(min(30.0 - elapsed % 30.0, args.duration - elapsed))
                if time.monotonic() - started < args.duration:
                    sample()
            stop.set()
            for thread in publishers:
                thread.join()
            published = sum(counts)
            print(f"published {published} tasks in {time.monotonic() - started:.0f} s "
                  f"({published / (time.monotonic() - started):.0f}/s)")  # fmt: skip
            while int(journal.get("soak:ticks") or 0) < published and time.monotonic() - started < args.duration + 300:
                time.sleep(1)
            ran, finished = int(journal.get("soak:ticks") or 0), time.monotonic() - started
            print(f"ran {ran} of them, all done at {finished:.0f} s ({ran / finished:.0f}/s)")
            settled = [memory for moment, memory in samples if moment >= args.retention + 60]
            if settled:
                spread = 100 * (max(settled) - min(settled)) / min(settled)
                print(f"used_memory after the first retention period and a trim: {min(settled) / 2**20:.1f} "
                      f"to {max(settled) / 2**20:.1f} MiB ({spread:.1f}% apart)")  # fmt: skip
            deadline = time.monotonic() + args.retention + 180  # the trimmer takes everything back
            while any(client.scan_iter(match="ff:exec:*:core", count=1000)) and time.monotonic() < deadline:
                time.sleep(1)
            sample()
            print(f"keys left once retention passed: {key_census(client)}")
        finally:
            for process in workers:
                process.terminate()
            for process in workers:
                process.wait(timeout=60)
            app.close()


def crashes(args: argparse.Namespace) -> None:
    """The crash run (see the module docstring)."""
    rng = random.Random(7)
    with DevServer(persistent=True) as server:
        url = server.url.replace("redis://", "flowfabric://", 1)
        os.environ["SOAK_URL"] = url
        os.environ["SOAK_RETENTION_S"] = str(args.retention)
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
        published_results: queue.Queue = queue.Queue()
        outcome = {"wrong": 0, "lost": 0}

        def collect() -> None:
            """One get() each, in publishing order, while publishing goes on (a result is
            trimmed a retention after it completes; riding out the restart is the backend's job)."""
            while (item := published_results.get()) is not None:
                number, result = item
                try:
                    outcome["wrong"] += result.get(timeout=300) != 2 * number
                except Exception as exc:
                    outcome["lost"] += 1
                    print(f"task {number}: {exc!r}")

        collector = threading.Thread(target=collect, daemon=True)
        collector.start()
        for number in range(args.count):
            if number == args.count // 2:
                server.restart()  # AOF: everything published and recorded so far survives
                restarted_at = time.monotonic() - started
            for attempt in range(50):  # a publish during the restart fails visibly: try again
                try:
                    published_results.put((number, work.delay(number, args.task_ms / 1000)))
                    break
                except Exception:
                    if attempt == 49:
                        raise
                    time.sleep(0.2)
        published = time.monotonic() - started
        published_results.put(None)
        collector.join()
        wrong, lost = outcome["wrong"], outcome["lost"]
        stop.set()
        chaos_thread.join()
        elapsed = time.monotonic() - started
        runs = {int(k): int(v) for k, v in journal.hgetall("soak:runs").items() if int(k) >= 0}
        never_ran = args.count - len(runs)
        twice = sum(1 for count in runs.values() if count > 1)
        after_memory = used_memory(server.url)
        journal.delete("soak:runs")
        client = redis.Redis.from_url(server.url)
        deadline = time.monotonic() + args.retention + 300
        while any(client.scan_iter(match="ff:exec:*:core", count=1000)) and time.monotonic() < deadline:
            time.sleep(1)  # the workers' retention trimmer, every 2 s
        trimmed_memory = used_memory(server.url)
        remaining = key_census(client)
        slowest = slowest_calls(client)
        fcall_percentiles = client.info("latencystats").get("latency_percentiles_usec_fcall", {})
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
        print(f"used_memory: {start_memory} before, {after_memory} after the run, {trimmed_memory} once "
              f"retention ({args.retention:g} s) trimmed every execution "
              f"({100 * (trimmed_memory - start_memory) / start_memory:+.1f}%)")  # fmt: skip
        print(f"keys left: {remaining}")
        print("slowest call per command (µs, histogram bucket):", ", ".join(f"{n} {us}" for n, us in slowest.items()))
        print(f"FCALL latency percentiles (µs): {fcall_percentiles}")


if __name__ == "__main__":
    main()
