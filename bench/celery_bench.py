"""Celery on flowfabric:// vs redis:// vs amqp:// (RabbitMQ), one harness, one run.

For each broker: a ``celery worker -P prefork -c 2`` subprocess with the same settings
(acks_late, prefetch multiplier 1); results in the FlowFabric backend for flowfabric:// and
in a Redis backend for the others. Measures publish rate (no worker running), end-to-end
no-op throughput (publish N with the worker running, until the last result), publish->start
latency at a paced rate, and the ``delay().get()`` round trip.

    python bench/celery_bench.py [--count 3000] [--amqp amqp://guest:guest@127.0.0.1:5672//]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import kombu

from ff_celery.devserver import DevServer

HERE = Path(__file__).resolve().parent


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "celery", "-A", "bench_app", "worker", "-P", "prefork", "-c", "2",
               "-l", "warning", "--without-gossip", "--without-mingle", "--without-heartbeat"]  # fmt: skip
    return subprocess.Popen(command, cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure(label: str, broker: str, backend: str, count: int) -> dict[str, float]:
    env = {**os.environ, "BENCH_BROKER": broker, "BENCH_BACKEND": backend, "PYTHONPATH": str(HERE)}
    os.environ.update(BENCH_BROKER=broker, BENCH_BACKEND=backend)
    sys.path.insert(0, str(HERE))
    for name in [m for m in sys.modules if m == "bench_app"]:
        del sys.modules[name]
    import bench_app

    app = bench_app.app
    with app.connection_for_write() as connection:
        connection.default_channel.queue_purge("celery")

    # publish rate: nothing consumes yet
    started = time.perf_counter()
    published = [bench_app.noop.delay() for _ in range(count)]
    publish_rate = count / (time.perf_counter() - started)
    worker = start_worker(env)
    try:
        published[-1].get(timeout=300)  # the queue drains once the worker is up
        for result in published:
            result.get(timeout=300)

        # end-to-end throughput with the worker running
        started = time.perf_counter()
        results = [bench_app.noop.delay() for _ in range(count)]
        for result in results:
            result.get(timeout=300)
        throughput = count / (time.perf_counter() - started)

        # publish -> start latency at a paced 50 tasks/s
        paced = []
        for _ in range(200):
            paced.append(bench_app.started_after.delay(time.time()))
            time.sleep(0.02)
        latencies = [r.get(timeout=60) * 1000 for r in paced]

        # .get() round trip, one at a time
        round_trips = []
        for _ in range(200):
            t = time.perf_counter()
            bench_app.noop.delay().get(timeout=30)
            round_trips.append((time.perf_counter() - t) * 1000)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        app.close()
    row = {
        "publish/s": publish_rate,
        "e2e/s": throughput,
        "start p50 ms": percentile(latencies, 0.5),
        "start p95 ms": percentile(latencies, 0.95),
        "get p50 ms": statistics.median(round_trips),
        "get p95 ms": percentile(round_trips, 0.95),
    }
    print(f"{label:<14}" + "".join(f"{value:>14.1f}" for value in row.values()), flush=True)
    return row


def rabbitmq_reachable(url: str) -> bool:
    try:
        with kombu.Connection(url, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=1)
        return True
    except Exception:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672//")
    args = parser.parse_args()
    with DevServer() as server:
        port = server.port
        print(f"{args.count} tasks per measurement; {server.version} on {port}; prefork -c 2\n")
        print(f"{'broker':<14}" + "".join(f"{h:>14}" for h in
              ("publish/s", "e2e/s", "start p50 ms", "start p95 ms", "get p50 ms", "get p95 ms")))  # fmt: skip
        measure("flowfabric://", f"flowfabric://127.0.0.1:{port}/0", f"flowfabric://127.0.0.1:{port}/0", args.count)
        measure("redis://", f"redis://127.0.0.1:{port}/1", f"redis://127.0.0.1:{port}/2", args.count)
        if rabbitmq_reachable(args.amqp):
            measure("amqp://", args.amqp, f"redis://127.0.0.1:{port}/3", args.count)
        else:
            print(f"amqp://        not measured: RabbitMQ not reachable at {args.amqp}")


if __name__ == "__main__":
    main()
