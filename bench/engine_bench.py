"""Engine benchmark: submit -> claim -> complete through the Python engine client, side by side
with a raw redis-py LPUSH/BRPOP loop on the same server, in one run.

    python bench/engine_bench.py [--url redis://...] [--count 5000]

Without --url it starts an embedded server. Prints ops/s for each loop and the ratio.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import redis

from ff_celery.devtools.devserver import DevServer
from ff_celery.engine.core.engine import Engine
from ff_celery.engine.work.claimer import Claimer


def timed(label: str, count: int, run: Callable[[], None]) -> float:
    started = time.perf_counter()
    run()
    elapsed = time.perf_counter() - started
    rate = count / elapsed
    print(f"{label:<58} {count:>6} in {elapsed:6.2f} s = {rate:8.0f} ops/s")
    return rate


def engine_one_by_one(engine: Engine, claimer: Claimer, count: int) -> None:
    for n in range(count):
        engine.submit("bench", b"%d" % n)
        task = claimer.claim_one()
        assert task is not None
        task.complete(b"ok")


def engine_batched(engine: Engine, claimer: Claimer, count: int, batch: int) -> None:
    for n in range(count):
        engine.submit("bench", b"%d" % n)
    done = 0
    while done < count:
        tasks = claimer.claim(max_tasks=batch)
        for task in tasks:
            task.complete(b"ok")
        done += len(tasks)


def raw_one_by_one(client: redis.Redis, count: int) -> None:
    for n in range(count):
        client.lpush("bench:raw", b"%d" % n)
        assert client.brpop(["bench:raw"], timeout=1) is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="server to use (default: an embedded one)")
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    server = None if args.url else DevServer().start()
    url = args.url or server.url
    try:
        engine = Engine.from_url(url)
        engine.bootstrap()
        client = redis.Redis.from_url(url)
        claimer = Claimer(engine, ["bench"], worker_id="bench")
        print(f"server {url}  ({client.info('server')['redis_version']}), {args.count} items per loop\n")
        raw = timed("raw redis-py LPUSH + BRPOP (one by one)", args.count, lambda: raw_one_by_one(client, args.count))
        single = timed(
            "ff_celery submit -> claim -> complete (one by one)",
            args.count,
            lambda: engine_one_by_one(engine, claimer, args.count),
        )
        batched = timed(
            f"ff_celery submit all, then claim {args.batch} at a time + complete",
            args.count,
            lambda: engine_batched(engine, claimer, args.count, args.batch),
        )
        print(f"\nratio raw/ff_celery: one by one {raw / single:.1f}x, batched claims {raw / batched:.1f}x")
        claimer.close()
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    main()
