"""What an idle worker costs the server: commands per second, by command.

For each queue count (default 11 and 1): an embedded server, a ``celery worker -P prefork
-c 2`` of ``bench_app`` consuming that many queues and doing nothing (flowfabric://, scanners
on; with ``--redis`` also kombu's redis://, on a server of its own), a warm-up once it is up
(its remote-control subscription seen; for flowfabric:// also the scanners' leader lock and
every lane's wake-up subscription), then ``INFO commandstats`` deltas over ``--window``
seconds (the bench's own INFO taken out) and the server's CPU meanwhile.

    python bench/idle_cost.py [--queues 11 1] [--window 60] [--warmup 5] [--redis] [--chatter]

``--chatter`` keeps Celery's gossip, mingle and heartbeats on (off otherwise, as in
celery_bench.py): kombu's Redis channel carries them on either transport.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

import redis
from celery_bench import HERE, cpu_seconds, start_worker

from ff_celery.devtools.devserver import DevServer
from ff_celery.engine.core.keys import SCANNER_LEADER_KEY, wake_channel

TOP = 10
READY_TIMEOUT_S = 120.0


def command_calls(client: redis.Redis) -> Counter[str]:
    """Calls of each command so far (``INFO commandstats``)."""
    stats = client.info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(fields["calls"]) for name, fields in stats.items()})


def worker_ready(client: redis.Redis, lanes: list[str] | None) -> bool:
    """The worker consumes: its remote-control subscription is there and, for ``lanes``
    (flowfabric://), the scanners lead and every lane's wake-up channel has a subscriber."""
    if not any(c.get("cmd") == "psubscribe" for c in client.client_list()):
        return False
    if lanes is None:
        return True
    subscribed = dict(client.pubsub_numsub(*(wake_channel(lane) for lane in lanes)))
    return bool(client.exists(SCANNER_LEADER_KEY)) and all(subscribed.values())


def measure(label: str, scheme: str, queues: int, window_s: float, warmup_s: float, chatter: bool) -> None:
    """One row: the idle worker's commands per second, total and by command."""
    names = [f"idle{n}" for n in range(queues)]
    with DevServer() as server, redis.Redis(port=server.port, decode_responses=True) as client:
        url = f"{scheme}://127.0.0.1:{server.port}/0"
        env = {**os.environ, "PYTHONPATH": str(HERE), "BENCH_BROKER": url, "BENCH_BACKEND": url}
        if scheme == "redis":
            env["BENCH_BACKEND"] = f"redis://127.0.0.1:{server.port}/1"
        worker = start_worker(env, "-Q", ",".join(names), chatter=chatter)
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not worker_ready(client, names if scheme == "flowfabric" else None):
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{label}: the worker did not come up")
                time.sleep(0.2)
            time.sleep(warmup_s)  # the start-up cycles (every scanner runs once at once)
            cpu_before, before, started = cpu_seconds(server.pid), command_calls(client), time.monotonic()
            time.sleep(window_s)
            calls = command_calls(client) - before
            elapsed = time.monotonic() - started
            cpu_ms = (cpu_seconds(server.pid) - cpu_before) * 1000 / elapsed
        finally:
            worker.terminate()
            worker.wait(timeout=60)
    calls["info"] -= 1  # the bench's first INFO (each is counted once it has answered)
    total = sum(calls.values()) / elapsed
    top = ", ".join(f"{name} {count / elapsed:.1f}" for name, count in calls.most_common(TOP) if count > 0)
    print(f"{label:<28}{total:>12.1f}{cpu_ms:>17.1f}   {top}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queues", type=int, nargs="+", default=[11, 1])
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after the worker is up")
    parser.add_argument("--redis", action="store_true", help="also kombu's redis://")
    parser.add_argument("--chatter", action="store_true", help="with Celery's gossip, mingle and heartbeats")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    chatter = "with" if args.chatter else "without"
    print(f"idle prefork -c 2 worker ({chatter} gossip, mingle, heartbeats); "
          f"{args.window:.0f} s window after {args.warmup:.0f} s warm-up\n")  # fmt: skip
    print(f"{'worker':<28}{'commands/s':>12}{'server CPU ms/s':>17}   top {TOP} commands/s")
    for queues in args.queues:
        schemes = ("flowfabric", "redis") if args.redis else ("flowfabric",)
        for scheme in schemes:
            measure(f"{scheme}:// {queues} queue(s)", scheme, queues, args.window, args.warmup, args.chatter)


if __name__ == "__main__":
    main()
