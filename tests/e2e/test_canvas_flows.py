"""Canvases as FlowFabric flows, through real prefork workers: every task of a chain, group or
chord (nested too) is a member of one flow, published at once; results pass as Celery passes
them; a failure fails the rest as Celery does (chord errbacks included); revoking any task
cancels the flow; a worker killed at any stage loses nothing and runs nothing twice."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from celery import chain, chord, group
from celery.exceptions import ChordError, TaskRevokedError

import ff_celery
from ff_celery.features import budgets
from ff_celery.features.budgets import BudgetExceeded
from ff_celery.features.signals import suspended_waitpoint
from ff_celery.mapping.messages import FLOW_HEADER

from .conftest import execution, runs, wait_for


def flow_of(ffapp, task_id: str) -> str:
    return execution(ffapp, task_id).core.get("flow_id", "")


def one_flow(ffapp, task_ids: list[str]) -> str:
    """The flow all ``task_ids`` belong to (asserting they share one)."""
    flows = {flow_of(ffapp, task_id) for task_id in task_ids}
    assert len(flows) == 1 and "" not in flows, flows
    return flows.pop()


def message_of(ffapp, task_id: str) -> dict:
    """The kombu message a task's execution carries."""
    engine = ffapp.app.backend.engine
    return json.loads(engine.payload(engine.resolve(task_id)))


def events(ffapp, task_id: str) -> list[str]:
    return [entry.split(":")[0] for entry in runs(ffapp, task_id)]


def chain_ids(result) -> list[str]:
    ids = []
    while result is not None:
        ids.insert(0, result.id)
        result = result.parent
    return ids


class TestWithOneWorker:
    @pytest.fixture(autouse=True)
    def worker(self, module_worker):
        return module_worker

    def test_a_chain_is_one_flow_each_step_receiving_the_result_before_it(self, ffapp):
        result = chain(ffapp.add.s(1, 1), ffapp.add.s(10), ffapp.collect.s("x"), ffapp.collect.si("fixed"))()
        assert result.get(timeout=30) == ["fixed"]
        assert result.parent.get(timeout=5) == [12, "x"]
        ids = chain_ids(result)
        assert len(ids) == 4
        one_flow(ffapp, ids)
        # no step carries the rest of the chain: the engine releases each step
        for task_id in ids:
            message = message_of(ffapp, task_id)
            assert FLOW_HEADER in message["headers"]

    def test_a_groups_tasks_share_a_flow_and_its_results_keep_their_order(self, ffapp):
        result = group(ffapp.add.s(i, i) for i in range(5))()
        assert result.get(timeout=30) == [0, 2, 4, 6, 8]
        one_flow(ffapp, [r.id for r in result.results])

    def test_a_chord_body_receives_the_header_results_in_header_order(self, ffapp):
        result = chord([ffapp.add.s(i, i) for i in range(5)], ffapp.collect.s("tail"))()
        assert result.get(timeout=30) == [[0, 2, 4, 6, 8], "tail"]
        one_flow(ffapp, [result.id, *(r.id for r in result.parent.results)])

    def test_a_countdown_on_a_chord_header_task_delays_that_task(self, ffapp):
        started = time.time()
        header = [ffapp.record_run.si(1).set(countdown=2), ffapp.record_run.si(2)]
        result = chord(header, ffapp.xsum.s())()
        assert result.get(timeout=30) == 3
        delayed = result.parent.results[0]
        assert float(runs(ffapp, delayed.id)[0].rsplit(":", 1)[1]) - started >= 1.9

    def test_a_countdown_on_a_chained_step_counts_from_when_the_step_may_run(self, ffapp):
        result = chain(ffapp.tracked_sleep.si(1), ffapp.record_run.si("late").set(countdown=2))()
        assert result.get(timeout=30) == "late"
        first_done = float(runs(ffapp, result.parent.id)[-1].rsplit(":", 1)[1])
        assert float(runs(ffapp, result.id)[0].rsplit(":", 1)[1]) - first_done >= 1.9

    @pytest.mark.parametrize(
        ("build", "expected"),
        [
            # a group followed by a task is a chord (Celery upgrades it)
            (lambda f: chain(f.add.s(1, 1), group(f.add.s(1), f.add.s(2)), f.xsum.s()), 7),
            (lambda f: chord([chain(f.add.s(1, 1), f.add.s(1)), f.add.s(2, 2)], f.xsum.s()), 7),
            (lambda f: group(chain(f.add.s(1, 1), f.add.s(1)), chain(f.add.s(2, 2), f.add.s(2))), [3, 6]),
            (lambda f: chain(chord([f.add.s(1, 1), f.add.s(2, 2)], f.xsum.s()), f.add.s(10)), 16),
            (lambda f: chain(f.add.s(1, 1), chord([f.add.s(1), f.add.s(2)], f.xsum.s()), f.add.s(100)), 107),
        ],
        ids=["chain-group-task", "chord-of-chains", "group-of-chains", "chain-of-chord", "chord-inside-chain"],
    )
    def test_nested_canvases_run_as_one_flow(self, ffapp, build, expected):
        result = build(ffapp).apply_async()
        assert result.get(timeout=30) == expected
        flows = set()
        pending = [result]
        while pending:
            current = pending.pop()
            if current is None:
                continue
            children = getattr(current, "results", None)
            if children is not None:
                pending += children
            else:
                flows.add(flow_of(ffapp, current.id))
            pending.append(current.parent)
        assert len(flows) == 1 and "" not in flows

    @pytest.mark.parametrize(
        ("first", "expected"),
        [("replaced_by_add", 13), ("replaced_by_chain", 22)],
        ids=["by-a-task", "by-a-chain"],
    )
    def test_a_step_that_replaces_itself_is_waited_for_until_its_replacement_ends(self, ffapp, first, expected):
        replacing = getattr(ffapp, first)
        args = (1, 2) if first == "replaced_by_add" else (1,)
        result = chain(replacing.s(*args), ffapp.add.s(10))()
        assert result.get(timeout=30) == expected
        assert result.parent.get(timeout=5) == expected - 10  # the replacement's result, under the step's id
        assert flow_of(ffapp, result.id) == flow_of(ffapp, result.parent.id)  # the replacement joined the flow

    def test_a_failed_step_fails_the_rest_of_the_chain_with_its_exception(self, ffapp):
        result = chain(ffapp.add.s(1, 1), ffapp.boom.si(), ffapp.record_run.si("never"))()
        with pytest.raises(KeyError):
            result.get(timeout=30)
        assert result.state == "FAILURE"
        assert execution(ffapp, result.id).public_state == "skipped"
        assert runs(ffapp, result.id) == []

    def test_a_failed_chord_header_task_fails_the_body_with_a_chord_error_and_calls_its_errbacks_once(self, ffapp):
        ffapp.runs().delete("ffapp:errbacks")
        body = ffapp.xsum.s().on_error(ffapp.note_error.s())
        result = chord([ffapp.boom.si(), ffapp.boom.si(), ffapp.add.s(1, 1)], body)()
        # get() raises the body's error, or the header's if it sees that first (as Celery's does)
        with pytest.raises((ChordError, KeyError)):
            result.get(timeout=30)
        assert wait_for(lambda: result.state == "FAILURE")
        assert isinstance(result.result, ChordError)
        header = result.parent.results
        assert wait_for(lambda: [r.state for r in header] == ["FAILURE", "FAILURE", "SUCCESS"])
        (errback,) = [entry.decode() for entry in ffapp.runs().lrange("ffapp:errbacks", 0, -1)]
        assert errback.startswith(f"{result.id} ChordError Dependency ")
        assert "KeyError" in errback

    def test_revoking_a_chain_mid_way_cancels_everything_after(self, ffapp):
        result = chain(ffapp.gated.si(), ffapp.record_run.si("after"), ffapp.record_run.si("last"))()
        first = result.parent.parent
        assert wait_for(lambda: events(ffapp, first.id) == ["start"])
        result.revoke()
        assert wait_for(lambda: [r.state for r in (first, result.parent, result)] == ["REVOKED"] * 3)
        ffapp.runs().set(f"ffapp:go:{first.id}", 1)  # had it kept running, its outcome is fenced out
        with pytest.raises(TaskRevokedError):
            result.get(timeout=10)
        assert runs(ffapp, result.parent.id) == [] and runs(ffapp, result.id) == []
        assert execution(ffapp, result.id).public_state == "cancelled"

    def test_a_task_of_a_chain_waits_for_a_signal_and_the_chain_goes_on(self, ffapp, app_url):
        result = chain(ffapp.add.s(1, 1), ffapp.await_approval.si(), ffapp.collect.s("after"))()
        waiting = result.parent
        assert wait_for(lambda: waiting.state == "SUSPENDED")
        assert result.state == "PENDING"
        point = suspended_waitpoint(waiting)
        ff_celery.send_signal(app_url, point.execution_id, point.waitpoint_id, point.token, "approve", {"ok": 1})
        assert result.get(timeout=30) == [{"signals": [["approve", {"ok": 1}, ""]]}, "after"]

    def test_a_budget_stops_a_task_of_a_chain_and_the_rest_is_skipped(self, ffapp):
        name = f"chain-{uuid.uuid4().hex[:8]}"
        budgets.create_budget(ffapp.app, name, hard={"tokens": 100})
        spender = ffapp.spend_tokens.si(5, 60).set(ff_budgets=[name])
        result = chain(ffapp.add.s(1, 1), spender, ffapp.record_run.si("never"))()
        with pytest.raises(BudgetExceeded):
            result.get(timeout=30)
        assert execution(ffapp, result.id).public_state == "skipped"
        assert runs(ffapp, result.id) == []


class TestKilledWorkers:
    def test_a_chain_survives_kill_9_of_its_worker_at_every_step(self, ffapp, start_worker):
        result = chain(ffapp.tracked_sleep.si(1.5), ffapp.tracked_sleep.si(1.5), ffapp.tracked_sleep.si(1.5))()
        steps = chain_ids(result)
        for step in steps:
            doomed = start_worker(concurrency=1)
            assert wait_for(lambda step=step: "start" in events(ffapp, step), timeout=30)
            doomed.kill()  # mid-step
        start_worker(concurrency=2)
        assert result.get(timeout=60) == 1.5
        for step in steps:
            assert events(ffapp, step).count("finish") == 1  # every step completed exactly once
        one_flow(ffapp, steps)

    def test_a_chord_survives_kill_9_of_its_worker_in_the_header_and_in_the_body(self, ffapp, start_worker):
        header = [ffapp.tracked_sleep.si(1.5) for _ in range(3)]
        result = chord(header, ffapp.tracked_sleep.si(1.5))()
        parts = [r.id for r in result.parent.results]
        doomed = start_worker(concurrency=2)
        assert wait_for(lambda: any("start" in events(ffapp, part) for part in parts), timeout=30)
        doomed.kill()
        doomed = start_worker(concurrency=2)
        assert wait_for(lambda: "start" in events(ffapp, result.id), timeout=60)
        doomed.kill()
        start_worker(concurrency=2)
        assert result.get(timeout=60) == 1.5
        for task_id in [*parts, result.id]:
            assert events(ffapp, task_id).count("finish") == 1
