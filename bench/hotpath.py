"""Hot-path micro-benchmark: the Python around each call of a task's life, in one process.

    python bench/hotpath.py [--url redis://...] [--count 2000] [--rounds 3] [--compare REF [--new REF]]

Times, on one lane of an embedded server (or ``--url``): ``engine.submit``; Celery's
``apply_async`` through ``flowfabric://``; a worker's claim + complete (one at a time, with the
completion notice the worker sends); and the result read (``AsyncResult.state`` of the
published, still waiting, tasks). With ``--compare REF`` (a git ref), the ``ff_celery``
package of REF and of the work tree (or of ``--new``) run alternately (REF, new, REF, new,
...) in subprocesses against one server, and the medians are printed side by side; compare
proportions on a busy machine, not absolute rates.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ff_celery.devtools.devserver import DevServer

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("engine submit", "celery apply_async", "claim + complete", "result state read")


def noop_task() -> None:
    """The task published (never run here)."""


def measure(count: int, run: Callable[[], object]) -> tuple[float, float]:
    """Operations per second, and this process's CPU microseconds per operation (its Python
    and its socket calls; less sensitive to the machine's load than the rate)."""
    started, cpu = time.perf_counter(), time.process_time()
    run()
    return count / (time.perf_counter() - started), (time.process_time() - cpu) * 1e6 / count


def one_round(url: str, count: int, lane: str) -> dict[str, tuple[float, float]]:
    """Each step's :func:`measure` on ``lane``."""
    from celery import Celery

    import ff_celery
    from ff_celery.engine.core.engine import Engine
    from ff_celery.engine.work.claimer import Claimer

    engine = Engine.from_url(url)
    engine.bootstrap()
    claimer = Claimer(engine, [lane], worker_id="bench")
    app = Celery(
        "hotpath", broker=url.replace("redis://", "flowfabric://"), backend=url.replace("redis://", "flowfabric://")
    )
    ff_celery.install(app)
    noop = app.task(name="hotpath.noop", queue=lane)(noop_task)
    rates: dict[str, tuple[float, float]] = {}

    def claim_and_complete() -> None:
        for _ in range(count):
            task = claimer.claim_one()
            assert task is not None
            task.notify_channel = "hotpath:done"
            task.complete(b"ok")

    rates["engine submit"] = measure(count, lambda: [engine.submit(lane, b"%d" % n) for n in range(count)])
    rates["claim + complete"] = measure(count, claim_and_complete)
    sent = []
    with app.connection_for_write() as connection, app.producer_or_acquire() as producer:
        connection.ensure_connection()
        rates["celery apply_async"] = measure(
            count, lambda: sent.extend(noop.apply_async(producer=producer) for _ in range(count))
        )
    rates["result state read"] = measure(count, lambda: [result.state for result in sent])
    engine.purge_lane(lane)
    claimer.close()
    engine.close()
    return rates


def run_tree(source: Path | None, url: str, count: int, lane: str) -> dict[str, list[float]]:
    """One round in a subprocess, importing ``ff_celery`` from ``source`` (None: this tree)."""
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = f"{source}{os.pathsep}{env.get('PYTHONPATH', '')}"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--url",
        url,
        "--count",
        str(count),
        "--lane",
        lane,
        "--json",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"round failed ({source or 'work tree'}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def export(ref: str, into: Path) -> Path:
    """The ``ff_celery`` package (and its Lua) of git ``ref`` under ``into``."""
    into.mkdir()
    archive = into / "ref.tar"
    subprocess.run(["git", "archive", "-o", str(archive), ref, "ff_celery", "lua"], cwd=ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="server to use (default: an embedded one)")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", metavar="REF", help="alternate with the ff_celery of this git ref")
    parser.add_argument("--new", metavar="REF", help="with --compare: this git ref instead of the work tree")
    parser.add_argument("--lane", default="hotpath")
    parser.add_argument("--json", action="store_true", help="one round, printed as JSON (used by --compare)")
    args = parser.parse_args()
    if args.json:
        print(json.dumps(one_round(args.url, args.count, args.lane)))
        return

    server = None if args.url else DevServer().start()
    url = args.url or server.url
    try:
        with tempfile.TemporaryDirectory() as scratch:
            trees: dict[str, Path | None] = {"new": None}
            if args.compare:
                old, new = Path(scratch) / "old", Path(scratch) / "new"
                trees = {
                    args.compare: export(args.compare, old),
                    args.new or "new": export(args.new, new) if args.new else None,
                }
            results: dict[str, list[dict[str, list[float]]]] = {name: [] for name in trees}
            for round_number in range(args.rounds):
                for name, source in trees.items():
                    results[name].append(run_tree(source, url, args.count, args.lane))
                print(f"round {round_number + 1}/{args.rounds} done", file=sys.stderr)
        print(f"{args.count} operations per step, medians of {args.rounds} rounds")
        for column, unit in enumerate(("operations/s", "client CPU us/operation")):
            print(f"\n{unit:<26}" + "".join(f"{name:>12}" for name in trees) + ("     new/old" if args.compare else ""))
            for step in STEPS:
                medians = [statistics.median(r[step][column] for r in results[name]) for name in trees]
                ratio = f"{medians[-1] / medians[0]:>11.2f}x" if args.compare else ""
                print(f"{step:<26}" + "".join(f"{m:>12.0f}" for m in medians) + ratio)
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    main()
