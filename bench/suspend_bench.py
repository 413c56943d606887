"""Suspend -> signal -> resume latency of a Celery task on flowfabric://.

An embedded server and one ``celery worker -P prefork -c 2`` subprocess (bench/suspend_app.py).
N tasks each wait on a signal (``ff_celery.wait_for_signal("go")``); all are submitted and
left SUSPENDED, then, one at a time, each gets its signal with ``ff_celery.send_signal`` and
the script waits for its result. Same host, same clock (``time.time()``), measured from just
before ``send_signal``:

- signal -> task code runs again: the resumed run's first line;
- signal -> wait returns: ``wait_for_signal`` handed the signal to the task code;
- signal -> ``AsyncResult.get()`` returns in the script;
- the ``send_signal`` call itself.

    python bench/suspend_bench.py [--count 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import ff_celery
from ff_celery.devtools.devserver import DevServer
from ff_celery.features.signals import suspended_waitpoint

HERE = Path(__file__).resolve().parent
#: FlowFabric's published p50 for its own suspend -> signal -> resume.
FLOWFABRIC_P50_MS = 9.11
WARM_UP = 10


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_worker(url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SUSPEND_BENCH_URL": url, "PYTHONPATH": str(HERE)}
    command = [sys.executable, "-m", "celery", "-A", "suspend_app", "worker", "-P", "prefork", "-c", "2",
               "-l", "warning", "--without-gossip", "--without-mingle", "--without-heartbeat"]  # fmt: skip
    return subprocess.Popen(command, cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_until_suspended(results: list, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    pending = list(results)
    while pending:
        pending = [r for r in pending if r.state != "SUSPENDED"]
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} tasks not SUSPENDED after {timeout} s: {pending[0].state}")
        time.sleep(0.05)


def run(url: str, count: int) -> tuple[dict[str, list[float]], float]:
    """Submit ``count`` waiting tasks, then signal them one at a time; answers the latencies
    (ms) by measure and how long the first runs took to suspend them all."""
    from suspend_app import wait_for_go

    started = time.perf_counter()
    results = [wait_for_go.delay() for _ in range(count)]
    wait_until_suspended(results)
    suspended_in = time.perf_counter() - started

    measures: dict[str, list[float]] = {"code runs again": [], "wait returns": [], "get() returns": [], "send": []}
    for result in results:
        point = suspended_waitpoint(result)
        sent_at = time.time()
        ff_celery.send_signal(url, point.execution_id, point.waitpoint_id, point.token, "go")
        send_done = time.time()
        stamps = result.get(timeout=30)
        got_at = time.time()
        measures["code runs again"].append((stamps["ran_at"] - sent_at) * 1000)
        measures["wait returns"].append((stamps["resumed_at"] - sent_at) * 1000)
        measures["get() returns"].append((got_at - sent_at) * 1000)
        measures["send"].append((send_done - sent_at) * 1000)
    return measures, suspended_in


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    with DevServer() as server:
        url = server.url.replace("redis://", "flowfabric://")
        os.environ["SUSPEND_BENCH_URL"] = url
        sys.path.insert(0, str(HERE))
        import suspend_app

        print(f"{args.count} tasks; {server.version} on {server.port}; one worker, prefork -c 2\n")
        worker = start_worker(url)
        try:
            run(url, WARM_UP)  # worker start, pool processes, connections: not measured
            measures, suspended_in = run(url, args.count)
        finally:
            worker.terminate()
            worker.wait(timeout=60)
            suspend_app.app.close()

    print(f"first runs: {args.count} tasks submitted and SUSPENDED in {suspended_in:.2f} s "
          f"({args.count / suspended_in:.0f}/s, slots freed as each suspended)\n")  # fmt: skip
    labels = {
        "code runs again": "signal -> task code runs again",
        "wait returns": "signal -> wait_for_signal returns",
        "get() returns": "signal -> AsyncResult.get() returns",
        "send": "send_signal call (deliver + wake)",
    }
    print(f"{'from send_signal (ms)':<38}{'p50':>9}{'p95':>9}{'mean':>9}{'max':>9}")
    for key, label in labels.items():
        values = measures[key]
        print(f"{label:<38}{statistics.median(values):>9.2f}{percentile(values, 0.95):>9.2f}"
              f"{statistics.fmean(values):>9.2f}{max(values):>9.2f}")  # fmt: skip
    print(f"{'FlowFabric, published (its own engine)':<38}{FLOWFABRIC_P50_MS:>9.2f}")


if __name__ == "__main__":
    main()
