"""An LLM-style fan-out under a token budget: a hard limit stops the call that would pass it,
holds back the calls not started yet, and a reset lets them run.

``showcase.tasks.llm_call`` simulates an LLM call that reports the tokens of each chunk it
"generates" with ``ff_celery.report_usage(tokens=..., dedup_key=...)``. This script starts an
embedded Valkey/Redis and a real ``celery -A showcase worker -c 2``, creates the budget
``llm-tokens`` (hard limit 3 000 tokens), and publishes a group of 8 calls inside
``budget_scope("llm-tokens")``. It shows:

- usage growing as the calls report (``budget_status``);
- the call whose report would pass the hard limit stopping at once with ``BudgetExceeded``
  (its execution fails, no retry; the refused tokens are not counted);
- the calls not started yet waiting instead of running: public state ``rate_limited``,
  blocked ``waiting_for_budget``, no worker slot held;
- ``reset_budget`` unblocking them at once: they run and finish.

Stops everything it started.

    .venv/bin/python examples/token_budget_fanout.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from ff_celery.devtools.devserver import DevServer

HERE = Path(__file__).resolve().parent
BUDGET = "llm-tokens"
CALLS = 8


def main() -> None:
    with DevServer() as server:
        url = server.url.replace("redis://", "flowfabric://")
        os.environ["SHOWCASE_URL"] = url
        sys.path.insert(0, str(HERE))
        from celery import group
        from showcase import launch
        from showcase.celery import app
        from showcase.tasks import llm_call

        from ff_celery.features.budgets import BudgetExceeded, budget_scope, budget_status, create_budget, reset_budget

        engine = app.backend.engine

        def public_state(result) -> str:
            snapshot = engine.snapshot(engine.resolve(result.id))
            blocked = snapshot.core.get("blocking_reason")
            return f"{snapshot.public_state} ({blocked})" if blocked else snapshot.public_state

        def usage() -> str:
            status = budget_status(app, BUDGET)
            return f"{status.usage.get('tokens', 0)}/{status.hard_limits['tokens']} tokens"

        def show(results) -> None:
            for n, result in enumerate(results):
                if result.state == "SUCCESS":
                    line = f"SUCCESS  {result.result['tokens']} tokens -> {result.result['answer']}"
                elif result.state == "FAILURE":
                    line = f"FAILURE  {type(result.result).__name__}: {result.result}"
                else:
                    line = f"{result.state:<8} execution {public_state(result)}"
                print(f"   call {n}: {line}")

        print(f"embedded server {server.url} (pid {server.pid})")
        create_budget(app, BUDGET, hard={"tokens": 3000}, soft={"tokens": 2000})
        print(f"budget {BUDGET!r}: hard limit 3000 tokens, soft limit 2000")
        with launch.worker(url, concurrency=2, name="llm"):
            with budget_scope(BUDGET):  # every task published in here is under the budget
                fanout = group(llm_call.s(f"summarise chapter {n}") for n in range(CALLS)).apply_async()
            calls = fanout.results
            print(f"\n{CALLS} llm_call tasks published as a group under the budget; 2 run at a time")

            deadline = time.monotonic() + 30
            last = None
            while budget_status(app, BUDGET).breach_count == 0 and time.monotonic() < deadline:
                if usage() != last:
                    last = usage()
                    print(f"   usage {last}")
                time.sleep(0.05)
            status = budget_status(app, BUDGET)
            print(f"hard limit hit: a report of {status.last_breach_dim} was refused at {usage()}")

            # the calls still running stop at their next report; the rest are never started
            def settled() -> bool:
                states = [public_state(r) for r in calls if not r.ready()]
                return bool(states) and all(s.startswith("rate_limited") for s in states)

            while not settled() and time.monotonic() < deadline:
                time.sleep(0.05)
            show(calls)
            stopped = [r for r in calls if r.state == "FAILURE" and isinstance(r.result, BudgetExceeded)]
            waiting = [r for r in calls if not r.ready()]
            print(f"{len(stopped)} call(s) stopped with BudgetExceeded, {len(waiting)} wait without running")

            time.sleep(1.0)
            still = sum(1 for r in waiting if public_state(r).startswith("rate_limited"))
            print(f"one second later: {still} still rate_limited, usage still {usage()}")

            reset_budget(app, BUDGET)
            print(f"\nreset_budget({BUDGET!r}) -> usage {usage()}; the waiting calls run now")
            for result in waiting:
                result.get(timeout=30)
            show(calls)
            status = budget_status(app, BUDGET)
            print(f"{len(waiting)} blocked calls finished after the reset; usage {usage()}")
            print(f"budget counters: {status.breach_count} hard breach(es); the soft limit was passed "
                  f"{status.soft_breach_count} time(s) (a warning in the worker log and an event each)")  # fmt: skip
    print("\ndone: worker and server stopped")


if __name__ == "__main__":
    main()
