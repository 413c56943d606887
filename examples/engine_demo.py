"""The FlowFabric execution model from Python, on an embedded server: leased claims with
background renewal, engine retries with backoff, a delayed execution, and a crashed worker's
execution requeued and finished by another worker.

    python examples/engine_demo.py [--url redis://...]
"""

from __future__ import annotations

import argparse
import time

from ff_celery.devtools.devserver import DevServer
from ff_celery.engine import (
    Claimer,
    Engine,
    EngineScanners,
    ExecutionPolicy,
    ExponentialBackoff,
    RetryPolicy,
    ScannerSettings,
)

LANE = "demo"


def run(url: str) -> None:
    engine = Engine.from_url(url)
    print(f"library: {engine.bootstrap()}")
    scanners = EngineScanners(engine, settings=ScannerSettings(promote_interval_s=0.1, lease_expiry_interval_s=0.2))
    scanners.start()
    worker = Claimer(engine, [LANE], worker_id="demo-worker", lease_ttl_ms=1_500)
    try:
        retrying = ExecutionPolicy(
            retry_policy=RetryPolicy(max_retries=2, backoff=ExponentialBackoff(initial_delay_ms=200, multiplier=2))
        )
        ok = engine.submit(LANE, b"add 2 3").execution_id
        flaky = engine.submit(LANE, b"flaky", policy=retrying).execution_id
        later = engine.submit(LANE, b"later", delay_until=engine.now_ms() + 1_500).execution_id
        crash = engine.submit(LANE, b"crash").execution_id
        print(f"submitted: ok={ok} flaky={flaky} later={later} crash={crash}")

        crashed_once = False
        finished: set[str] = set()
        deadline = time.monotonic() + 20
        while len(finished) < 4 and time.monotonic() < deadline:
            for task in worker.claim(max_tasks=4, timeout_s=1):
                body = task.payload.decode()
                label = f"{body!r} attempt {task.attempt_index} ({task.attempt_type}, epoch {task.lease_epoch})"
                if body == "flaky" and task.retry_count < 2:
                    outcome = task.fail(f"transient failure #{task.retry_count + 1}")
                    print(f"  {label}: failed -> retry scheduled in {outcome.delay_until - engine.now_ms():.0f} ms")
                elif body == "crash" and not crashed_once:
                    crashed_once = True
                    task.release()  # stop renewing, as a killed worker would
                    print(f"  {label}: worker 'crashed'; its lease will lapse and be requeued")
                else:
                    task.complete(f"done: {body}".encode())
                    finished.add(str(task.execution_id))
                    print(f"  {label}: completed")
        for eid in (ok, flaky, later, crash):
            snapshot = engine.snapshot(eid)
            attempts = ", ".join(f"{a.attempt_type}:{a.attempt_state}" for a in snapshot.attempts)
            print(f"{eid}: {snapshot.public_state}, result={engine.result(eid)!r}, attempts=[{attempts}]")
        if len(finished) < 4:
            raise SystemExit("demo did not finish in time")
    finally:
        worker.close()
        scanners.stop()
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", help="use this server instead of starting an embedded one")
    args = parser.parse_args()
    if args.url:
        run(args.url)
        return
    with DevServer() as server:
        print(f"embedded server {server.url} (pid {server.pid})")
        run(server.url)


if __name__ == "__main__":
    main()
