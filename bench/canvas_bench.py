"""Canvases on flowfabric:// (as flows) vs redis:// and amqp:// (Celery's own chains and
chords), one harness, one run.

Two workloads, FlowFabric's flow benchmark and a wide chord:

- ``dag``: ``--flows`` linear 10-task chains (``inc`` nine times, then ``finished``), all published
  at once: flows per second (first publish to last completion) and each chain's completion
  time (its publish to its last task's end), p50 / p95;
- ``chord``: ``--chords`` chords of 100 no-op header tasks and a body, published one after
  the other: the same two figures per chord.

Each broker has a ``celery worker -P prefork -c 2`` with the same "safe" settings
(acks_late, prefetch 1); results in the FlowFabric backend for flowfabric:// and in a Redis
backend for the others. Every configuration runs once per round, in turn, for ``--rounds``
rounds; the medians are reported.

    python bench/canvas_bench.py [--flows 100] [--chords 10] [--rounds 3] [--amqp amqp://guest:guest@127.0.0.1:5672//]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from celery import chain, chord

from ff_celery.devtools.devserver import DevServer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from celery_bench import contract_only_server, percentile, rabbitmq_reachable, start_worker  # noqa: E402

CHAIN_LENGTH, CHORD_WIDTH = 10, 100
COLUMNS = ("flows/s", "p50 ms", "p95 ms")


def load_app(broker: str, backend: str):
    os.environ.update(BENCH_BROKER=broker, BENCH_BACKEND=backend, BENCH_SETTINGS="safe", BENCH_QUEUE_SHARDS="1")
    sys.modules.pop("bench_app", None)
    import bench_app

    return bench_app


def rate_and_latency(published: list[tuple[float, object]], started: float) -> dict[str, float]:
    done = [(sent, result.get(timeout=600)) for sent, result in published]
    latencies = [(finished - sent) * 1000 for sent, finished in done]
    return {
        "flows/s": len(done) / (max(finished for _, finished in done) - started),
        "p50 ms": percentile(latencies, 0.5),
        "p95 ms": percentile(latencies, 0.95),
    }


def measure(broker: str, backend: str, flows: int, chords: int) -> dict[str, dict[str, float]]:
    app_module = load_app(broker, backend)
    app = app_module.app
    app.control.purge()
    worker = start_worker({**os.environ, "PYTHONPATH": str(HERE)})
    try:
        assert app_module.inc.delay(1).get(timeout=120) == 2  # the worker is up
        steps = [app_module.inc.s(0), *(app_module.inc.s() for _ in range(CHAIN_LENGTH - 2)), app_module.finished.s()]
        started = time.time()
        dag = [(time.time(), chain(*steps).apply_async()) for _ in range(flows)]
        rows = {"dag": rate_and_latency(dag, started)}
        header = [app_module.noop.si() for _ in range(CHORD_WIDTH)]
        started = time.time()
        wide = [(time.time(), chord(header, app_module.finished.s()).apply_async()) for _ in range(chords)]
        rows["chord"] = rate_and_latency(wide, started)
        return rows
    finally:
        worker.terminate()
        worker.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flows", type=int, default=100, help="10-task chains per measurement")
    parser.add_argument("--chords", type=int, default=10, help="100-task chords per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672//")
    args = parser.parse_args()
    plain = contract_only_server()  # flowfabric:// without the hot-path library
    with DevServer() as server:
        port = server.port
        configurations = {
            "flowfabric://": (f"flowfabric://127.0.0.1:{port}/0", f"flowfabric://127.0.0.1:{port}/0"),
            " contract calls": (f"flowfabric://127.0.0.1:{plain.port}/0", f"flowfabric://127.0.0.1:{plain.port}/0"),
            "redis://": (f"redis://127.0.0.1:{port}/1", f"redis://127.0.0.1:{port}/2"),
        }
        if rabbitmq_reachable(args.amqp):
            configurations["amqp://"] = (args.amqp, f"redis://127.0.0.1:{port}/3")
        else:
            print(f"amqp:// not measured: RabbitMQ not reachable at {args.amqp}")
        print(f"{args.flows} chains of {CHAIN_LENGTH}, {args.chords} chords of {CHORD_WIDTH}; "
              f"{server.version} on {port}; prefork -c 2")  # fmt: skip
        rows: dict[str, list[dict[str, dict[str, float]]]] = {label: [] for label in configurations}
        for round_number in range(1, args.rounds + 1):
            for label, (broker, backend) in configurations.items():
                measured = measure(broker, backend, args.flows, args.chords)
                rows[label].append(measured)
                for workload, values in measured.items():
                    print(f"round {round_number} {label:<14} {workload:<6}"
                          + "".join(f"{values[c]:>12.2f}" for c in COLUMNS))  # fmt: skip
        print(f"\nmedians of {args.rounds} rounds")
        print(f"{'broker':<14} {'canvas':<6}" + "".join(f"{c:>12}" for c in COLUMNS))
        for label, measured in rows.items():
            for workload in ("dag", "chord"):
                medians = [statistics.median(m[workload][c] for m in measured) for c in COLUMNS]
                print(f"{label:<14} {workload:<6}" + "".join(f"{value:>12.2f}" for value in medians))
    plain.stop()


if __name__ == "__main__":
    main()
