"""Budgets and quotas in the engine: attaching at submit, admission when claiming (blocking
exhausted-budget and over-quota executions), freeing quota slots, unblocking, resets."""

import time

from prometheus_client import REGISTRY

from ff_celery.engine.core.keys import PartitionKeys, QuotaKeys
from ff_celery.engine.core.work_index import read_plan
from ff_celery.engine.duties.scanners import EngineScanners
from ff_celery.engine.work import budgets


def test_submit_attaches_budgets_and_quota_to_the_execution(ff_engine):
    created = ff_engine.submit("llm", b"x", budget_ids=["tokens"], quota_policy_id="openai")
    core = ff_engine.read_core(created.execution_id, "budget_ids", "quota_policy_id")
    assert core == {"budget_ids": budgets.budget_id_for("tokens"), "quota_policy_id": budgets.quota_id_for("openai")}
    assert ff_engine.redis.sismember("ffc:admission:lanes", "llm")


def test_a_duplicate_submission_leaves_no_stray_record(ff_engine):
    first = ff_engine.submit("llm", b"x", idempotency_key="once", budget_ids=["tokens"])
    again = ff_engine.submit("llm", b"x", idempotency_key="once", budget_ids=["tokens"])
    assert again.duplicate and again.execution_id == first.execution_id
    cores = [key for key in ff_engine.redis.scan_iter("ff:exec:*:core")]
    assert len(cores) == 1


def test_a_submission_under_budgets_right_after_the_library_vanished_creates_its_execution(ff_engine):
    ff_engine.redis.function_flush()  # a restarted server: the first call reloads the library
    created = ff_engine.submit("llm", b"x", budget_ids=["tokens"], alias="task-after-restart")
    assert not created.duplicate
    assert ff_engine.read_core(created.execution_id, "public_state")["public_state"] == "waiting"
    assert ff_engine.resolve("task-after-restart") == created.execution_id
    assert len(list(ff_engine.redis.scan_iter("ff:exec:*:core"))) == 1  # no stray record of the first try


def test_an_exhausted_budget_holds_back_claims_even_right_after_other_work(ff_engine, make_claimer):
    worker = make_claimer(["llm"], worker_id="w", lease_ttl_ms=30_000)
    ff_engine.submit("llm", b"warm-up")
    worker.claim_one(timeout_s=10).complete(b"ok")  # the lane had no budgets when probed
    budgets.create_budget(ff_engine, "tokens", hard={"tokens": 10})
    budgets.report_usage(ff_engine, [budgets.budget_id_for("tokens")], {"tokens": 10})
    held = ff_engine.submit("llm", b"x", budget_ids=["tokens"])
    assert worker.claim_one(timeout_s=0.5) is None
    core = ff_engine.read_core(held.execution_id, "public_state", "blocking_reason", "blocking_detail")
    assert core["public_state"] == "rate_limited" and core["blocking_reason"] == "waiting_for_budget"
    assert "tokens 10/10" in core["blocking_detail"]

    budgets.reset_budget(ff_engine, "tokens")
    assert budgets.Admission(ff_engine).unblock_cleared(read_plan(ff_engine, ["llm"])) == 1
    task = worker.claim_one(timeout_s=10)
    assert task is not None and task.execution_id == held.execution_id
    task.complete()


def test_a_refused_report_holds_back_claims_until_the_limit_is_raised(ff_engine, make_claimer):
    budgets.create_budget(ff_engine, "tokens", hard={"tokens": 100})
    budget_id = budgets.budget_id_for("tokens")
    budgets.report_usage(ff_engine, [budget_id], {"tokens": 90})
    refused = budgets.report_usage(ff_engine, [budget_id], {"tokens": 20})[budget_id]
    assert refused.status == "HARD_BREACH"
    assert budgets.budget_status(ff_engine, "tokens").exhausted() == ("tokens", 90, 100)
    held = ff_engine.submit("llm", b"x", budget_ids=["tokens"])
    worker = make_claimer(["llm"], worker_id="w", lease_ttl_ms=30_000)
    assert worker.claim_one(timeout_s=0.5) is None
    budgets.set_budget_limits(ff_engine, "tokens", hard={"tokens": 200})
    assert budgets.budget_status(ff_engine, "tokens").exhausted() is None
    assert budgets.Admission(ff_engine).unblock_cleared(read_plan(ff_engine, ["llm"])) == 1
    assert worker.claim_one(timeout_s=10).execution_id == held.execution_id


def test_a_concurrency_quota_admits_one_and_frees_the_slot_when_the_attempt_ends(ff_engine, make_claimer):
    quota_id = budgets.create_quota(ff_engine, "solo", max_concurrent=1)
    hits_before = REGISTRY.get_sample_value("ff_quota_hit_total", {"reason": "concurrency"}) or 0
    first = ff_engine.submit("llm", b"1", quota_policy_id="solo")
    second = ff_engine.submit("llm", b"2", quota_policy_id="solo")
    worker = make_claimer(["llm"], worker_id="w", lease_ttl_ms=30_000)
    tasks = worker.claim(max_tasks=2, timeout_s=10)
    # both were created in the same millisecond or not: which one runs first is not ordered
    assert len(tasks) == 1 and tasks[0].execution_id in (first.execution_id, second.execution_id)
    held = second if tasks[0].execution_id == first.execution_id else first
    core = ff_engine.read_core(held.execution_id, "public_state", "blocking_reason")
    assert core == {"public_state": "rate_limited", "blocking_reason": "waiting_for_quota"}
    assert REGISTRY.get_sample_value("ff_quota_hit_total", {"reason": "concurrency"}) == hits_before + 1
    assert budgets.Admission(ff_engine).unblock_cleared(read_plan(ff_engine, ["llm"])) == 0  # still running
    tasks[0].complete()
    assert budgets.quota_policies(ff_engine, [quota_id])[quota_id].running == 0
    # no unblock scanner runs here: the end of the attempt released the one waiting
    assert ff_engine.read_core(held.execution_id, "public_state")["public_state"] == "waiting"
    assert worker.claim_one(timeout_s=10).execution_id == held.execution_id


def test_the_end_of_an_attempt_admits_the_oldest_waiting_execution_at_once_as_many_as_there_is_room(
    ff_engine, make_claimer
):
    budgets.create_quota(ff_engine, "one-by-one", max_concurrent=1)
    worker = make_claimer(["llm"], worker_id="w", lease_ttl_ms=30_000)
    running = None
    for payload in (b"1", b"2", b"3"):
        ff_engine.submit("llm", payload, quota_policy_id="one-by-one")
        running = running or next(iter(worker.try_claim(1)), None)  # admitted, or blocked
    assert worker.claim_one(timeout_s=0) is None

    def waiting() -> list[str]:
        return [
            m.decode()
            for m in ff_engine.redis.zrange(
                PartitionKeys(running.execution_id.partition).blocked("llm", "quota"), 0, -1
            )
        ]

    first_waiting, second_waiting = waiting()
    running.complete()  # no unblock scanner runs here
    assert waiting() == [second_waiting]  # the slot admits one, the oldest
    running = worker.claim_one(timeout_s=10)
    assert running.execution_id == first_waiting
    running.fail("boom", "permanent", retry_policy=None)  # any end of the attempt
    assert waiting() == []
    assert worker.claim_one(timeout_s=10).execution_id == second_waiting


def test_the_reconciler_frees_slots_of_admissions_whose_guard_lapsed(ff_engine):
    quota_id = budgets.create_quota(ff_engine, "short", max_concurrent=1, window_seconds=1)
    keys = QuotaKeys(quota_id, ff_engine.partitions.quota_partition(quota_id))
    # a worker that died holding an admission: counted, in the admitted set, guard gone
    ff_engine.redis.set(keys.concurrency, 1)
    ff_engine.redis.sadd(keys.admitted_set, "{fp:1}:00000000-0000-0000-0000-000000000001")
    assert budgets.quota_policies(ff_engine, [quota_id])[quota_id].running == 1
    assert EngineScanners(ff_engine).reconcile_quotas() == 1
    assert budgets.quota_policies(ff_engine, [quota_id])[quota_id].running == 0


def test_scheduled_budget_resets_zero_the_usage(ff_engine):
    budgets.create_budget(ff_engine, "daily", hard={"tokens": 10}, reset_interval_s=0.05)
    budget_id = budgets.budget_id_for("daily")
    budgets.report_usage(ff_engine, [budget_id], {"tokens": 10})
    time.sleep(0.1)
    assert EngineScanners(ff_engine).reset_due_budgets() == 1
    assert budgets.budget_status(ff_engine, "daily").usage == {"tokens": 0}
