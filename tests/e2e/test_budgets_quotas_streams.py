"""Budgets, quotas and streaming output from @app.task code, through real workers: a hard
budget breach stops the task and holds back later executions until a reset; quotas admit by
concurrency and rate; progress and frames are readable while the task runs."""

import uuid

import pytest
from celery import chain

from ff_celery.engine.work.budgets import budget_id_for
from ff_celery.features import budgets, streams
from ff_celery.features.budgets import BudgetExceeded

from .conftest import execution, runs, wait_for


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def starts_and_finishes(ffapp, result):
    events = [entry.split(":") for entry in runs(ffapp, result.id)]
    return {event[0]: float(event[-1]) for event in events}


def test_a_hard_breach_stops_the_task_and_holds_later_executions_until_a_reset(ffapp, start_worker):
    start_worker(concurrency=1)
    name = unique("tokens")
    budgets.create_budget(ffapp.app, name, hard={"tokens": 100})
    spender = ffapp.spend_tokens.apply_async((5, 60), ff_budgets=[name])
    with pytest.raises(BudgetExceeded, match="tokens 60/100"):
        spender.get(timeout=15)
    assert [event.split(":")[0] for event in runs(ffapp, spender.id)] == ["call0"]  # stopped at the 2nd call
    snapshot = execution(ffapp, spender.id)
    assert snapshot.public_state == "failed" and snapshot.core["failure_reason"].startswith("BudgetExceeded")
    assert budgets.budget_status(ffapp.app, name).usage == {"tokens": 60}  # the refused increment applied nothing

    later = ffapp.spend_tokens.apply_async((1, 10), ff_budgets=[name])
    assert wait_for(lambda: execution(ffapp, later.id).core.get("blocking_reason") == "waiting_for_budget")
    assert execution(ffapp, later.id).public_state == "rate_limited"
    assert (later.state, later.info["reason"]) == ("BLOCKED", "waiting_for_budget")
    assert runs(ffapp, later.id) == []
    budgets.reset_budget(ffapp.app, name)
    assert later.get(timeout=15) == 10


def test_raising_a_limit_releases_the_executions_it_held(ffapp, start_worker):
    start_worker(concurrency=1)
    name = unique("tokens")
    budgets.create_budget(ffapp.app, name, hard={"tokens": 50})
    assert ffapp.spend_tokens.apply_async((1, 50), ff_budgets=[name]).get(timeout=15) == 50  # now exactly spent
    held = ffapp.spend_tokens.apply_async((1, 10), ff_budgets=[name])
    assert wait_for(lambda: execution(ffapp, held.id).public_state == "rate_limited")
    budgets.raise_budget(ffapp.app, name, hard={"tokens": 80})
    assert held.get(timeout=15) == 10
    assert budgets.budget_status(ffapp.app, name).usage == {"tokens": 60}


def test_a_soft_breach_warns_and_the_task_goes_on(ffapp, start_worker):
    worker = start_worker(concurrency=1)
    name = unique("tokens")
    budgets.create_budget(ffapp.app, name, hard={"tokens": 1000}, soft={"tokens": 50})
    assert ffapp.spend_tokens.apply_async((3, 30), ff_budgets=[name]).get(timeout=15) == 90
    assert wait_for(lambda: "passed the soft limit" in worker.text())
    assert budgets.budget_status(ffapp.app, name).soft_breach_count == 2


def test_repeated_reports_with_the_same_dedup_key_count_once(ffapp, start_worker):
    start_worker(concurrency=1)
    name = unique("tokens")
    budgets.create_budget(ffapp.app, name, hard={"tokens": 1000})
    first = ffapp.spend_tokens.apply_async((2, 10), ff_budgets=[name], task_id=unique("task"))
    first.get(timeout=15)
    ffapp.app.backend.engine.replay(execution(ffapp, first.id).execution_id)  # the same calls run again
    assert wait_for(lambda: len(runs(ffapp, first.id)) == 4)
    assert wait_for(lambda: execution(ffapp, first.id).public_state == "completed")
    assert budgets.budget_status(ffapp.app, name).usage == {"tokens": 20}


def test_a_canvas_and_the_tasks_it_spawns_run_under_the_scope_budgets(ffapp, start_worker):
    start_worker(concurrency=1)
    name = unique("tokens")
    budgets.create_budget(ffapp.app, name, hard={"tokens": 1000})
    with budgets.budget_scope(name):
        result = chain(ffapp.spend_tokens.si(1, 5), ffapp.spend_tokens.si(1, 7))()
    assert result.get(timeout=15) == 7
    assert result.parent.get(timeout=15) == 5
    assert budgets.budget_status(ffapp.app, name).usage == {"tokens": 12}
    budget_id = budget_id_for(name)
    assert execution(ffapp, result.id).core["budget_ids"] == budget_id


def test_a_concurrency_quota_lets_one_run_at_a_time(ffapp, start_worker):
    start_worker(concurrency=2)
    name = unique("one-at-a-time")
    budgets.create_quota(ffapp.app, name, max_concurrent=1)
    results = [ffapp.quota_sleeper.apply_async((0.8,), ff_quota=name) for _ in range(2)]
    assert [r.get(timeout=20) for r in results] == [0.8, 0.8]
    first, second = sorted((starts_and_finishes(ffapp, r) for r in results), key=lambda t: t["start"])
    assert second["start"] >= first["finish"] - 0.05  # never both running
    # slots are given back when the worker's main process ends its lease handles, just after
    # the outcomes that get() saw were recorded by the pool processes
    assert wait_for(lambda: budgets.quota_status(ffapp.app, name).running == 0)


def test_a_rate_quota_admits_per_window(ffapp, start_worker):
    start_worker(concurrency=2)
    name = unique("two-per-window")
    budgets.create_quota(ffapp.app, name, max_requests_per_window=2, window_seconds=2)
    results = [ffapp.quota_sleeper.apply_async((0,), ff_quota=name) for _ in range(3)]
    for result in results:
        result.get(timeout=20)
    # claimed (engine time) right after admission, unlike the task start which waits on the pool
    claims = sorted(int(execution(ffapp, r.id).core["started_at"]) for r in results)
    assert claims[2] - claims[0] >= 1500  # the third waited for the window to move on


def test_progress_and_frames_are_readable_while_the_task_runs(ffapp, app_url, start_worker):
    start_worker(concurrency=1)
    result = ffapp.streaming_report.delay(4, 0.4)
    metas = []

    def in_progress() -> bool:
        metas.append(ffapp.app.backend.get_task_meta(result.id))  # state and info in one read: it may end between two
        return metas[-1]["status"] == "PROGRESS"

    assert wait_for(in_progress)
    info = metas[-1]["result"]
    assert 0 < info["percent"] <= 100 and info["message"].startswith("step")
    seen = [(frame.frame_type, frame.payload) for _, frame in streams.follow(app_url, result.id, block_s=1)]
    assert result.get(timeout=10) == "retention_limit_exceeded"  # a frame over 64 KiB is refused
    logs = [payload for frame_type, payload in seen if frame_type == "log"]
    assert logs == [f"line {step}" for step in range(1, 5)]
    assert [frame_type for frame_type, _ in seen].count("progress") == 4
    read = streams.read_frames(ffapp.app, result.id)
    assert read.closed and read.closed_reason == "attempt_success"
    assert next(f.fields.get("correlation_id") for f in read.frames if f.frame_type == "log") == "step-1"
    assert execution(ffapp, result.id).core["progress_pct"] == "100"
