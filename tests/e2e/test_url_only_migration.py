"""A Celery app that changed only its URLs (``plainapp``: no ``import ff_celery``, no
``install()``) behaves as on Redis, publisher and worker alike, whatever its ack mode and
wherever its broker and backend live."""

from __future__ import annotations

import itertools
import json
import uuid

import pytest
import redis

from ff_celery.engine.work.budgets import budget_id_for
from ff_celery.integration.context import engine_for_url

from .conftest import publish, wait_for

pytestmark = pytest.mark.standalone  # plain Celery apps keep results in databases > 0


@pytest.fixture
def split_databases(plainapp_worker) -> dict[str, str]:
    """Broker and result backend on two databases."""
    return plainapp_worker(0, "flowfabric://{base}/1")


def test_the_app_module_never_imports_ff_celery_yet_the_publisher_uses_it(split_databases):
    code = """
    import sys
    before = "ff_celery.integration.transport" in sys.modules
    value = add.delay(2, 3).get(timeout=30)
    from ff_celery.integration.app import STEPS
    print(json.dumps([before, value, app.steps["consumer"] == set(STEPS)]))
    """
    assert publish(split_databases, code) == [False, 5, True]


def test_budget_options_work_on_celerys_own_task_class(split_databases):
    code = """
    from ff_celery.features import budgets
    budgets.create_budget(app, "plain-tokens", hard={"tokens": 100})
    result = add.apply_async((1, 1), ff_budgets=["plain-tokens"])
    result.get(timeout=30)
    engine = app.backend.engine
    print(json.dumps(engine.read_core(engine.resolve(result.id), "budget_ids")["budget_ids"]))
    """
    assert publish(split_databases, code) == budget_id_for("plain-tokens")


def test_a_tasks_own_budget_is_enforced_on_celerys_own_task_class(split_databases):
    code = """
    import time
    from ff_celery.features import budgets
    budgets.create_budget(app, "plainapp-tokens", hard={"tokens": 100})
    spent = [spend_tokens.delay(40).get(timeout=30), spend_tokens.delay(30).get(timeout=30)]
    refused = spend_tokens.delay(50)
    refused.get(timeout=30, propagate=False)
    held = spend_tokens.delay(10)
    deadline = time.monotonic() + 30
    while held.state != "BLOCKED" and time.monotonic() < deadline:
        time.sleep(0.05)
    blocked = [held.state, held.info["reason"]]
    usage = budgets.budget_status(app, "plainapp-tokens").usage
    budgets.reset_budget(app, "plainapp-tokens")
    print(json.dumps([spent, refused.state, type(refused.result).__name__, blocked, usage, held.get(timeout=30)]))
    """
    spent, state, error, blocked, usage, held = publish(split_databases, code)
    assert spent == [40, 30]
    assert (state, error) == ("FAILURE", "BudgetExceeded")  # 70 + 50 would pass the hard limit of 100
    assert blocked == ["BLOCKED", "waiting_for_budget"]  # not run until the budget is reset
    assert usage == {"tokens": 70}
    assert held == 10


def test_report_usage_in_a_task_without_a_budget_says_so(split_databases):
    code = """
    result = reports_without_budget.delay()
    result.get(timeout=30, propagate=False)
    print(json.dumps([result.state, type(result.result).__name__, str(result.result)]))
    """
    state, error, message = publish(split_databases, code)
    assert (state, error) == ("FAILURE", "NoBudgetAttached")
    assert "runs under no budget" in message


def spans(ff_server, key: str) -> list[list[float]]:
    """When each ``one_at_a_time`` run with ``key`` started and ended, in order of start."""
    journal = redis.Redis(port=ff_server.port, db=2)
    return sorted(json.loads(span) for span in journal.lrange(f"span:{key}", 0, -1))


def assert_never_two_at_once(runs: list[list[float]]) -> None:
    for (_, earlier_end), (later_start, _) in itertools.pairwise(runs):
        assert later_start >= earlier_end, runs


def test_a_tasks_own_quota_is_enforced_on_celerys_own_task_class(ff_server, split_databases):
    key = uuid.uuid4().hex
    code = f"""
    from ff_celery.features import budgets
    budgets.create_quota(app, "plainapp-one-at-a-time", max_concurrent=1)
    results = [one_at_a_time.delay("{key}", 0.5) for _ in range(4)]
    print(json.dumps([result.get(timeout=60) for result in results]))
    """
    publish(split_databases, code)  # on a worker running two tasks at once (-c 2)
    runs = spans(ff_server, key)
    assert len(runs) == 4
    assert_never_two_at_once(runs)


def test_a_slot_given_back_admits_the_next_task_without_the_unblock_scanner(ff_server, plainapp_worker):
    # the unblock scanner runs when the worker starts, then not for an hour
    hourly = json.dumps({"unblock_interval_s": 3600})
    env = plainapp_worker(12, "flowfabric://{base}/13", PLAINAPP_SCANNER_SETTINGS=hourly)
    key = uuid.uuid4().hex
    code = f"""
    from ff_celery.features import budgets
    budgets.create_quota(app, "{key}", max_concurrent=1)
    results = [one_at_a_time.apply_async(("{key}", 0.2), ff_quota="{key}") for _ in range(4)]
    print(json.dumps([result.get(timeout=60) for result in results]))
    """
    publish(env, code)  # each waited for the slot of the one before, given back as it ended
    runs = spans(ff_server, key)
    assert len(runs) == 4
    assert_never_two_at_once(runs)


def test_broker_and_backend_on_different_databases(ff_server, split_databases):
    task_id = publish(split_databases, "r = add.delay(20, 22); r.get(timeout=30); print(json.dumps(r.id))")
    broker = engine_for_url(split_databases["PLAINAPP_BROKER"])
    assert broker.resolve(task_id) is not None  # the execution lives with the broker
    assert not redis.Redis(port=ff_server.port, db=1).keys("ff:exec:*")  # and not with the backend


def test_an_early_acked_task_outlives_its_lease_and_reports_its_real_result(ff_server, split_databases):
    # acks_late=False acknowledges when the task starts; the task runs for over two lease TTLs
    code = """
    import time
    result = early_acked.delay(3.5, "real")
    journal = globals()["journal"]()
    deadline = time.monotonic() + 30
    while not journal.exists(f"ran:{result.id}") and time.monotonic() < deadline:
        time.sleep(0.05)
    state_while_running = result.state
    print(json.dumps([state_while_running, result.get(timeout=30), result.id]))
    """
    state_while_running, value, task_id = publish(split_databases, code)
    assert state_while_running != "SUCCESS" and value == "real"
    journal = redis.Redis(port=ff_server.port, db=2)
    assert journal.llen(f"ran:{task_id}") == 1  # not reclaimed and run again meanwhile
    broker = engine_for_url(split_databases["PLAINAPP_BROKER"])
    # the result lands in the separate backend before the execution completes on the broker
    assert wait_for(lambda: broker.snapshot(broker.resolve(task_id)).public_state == "completed")


def test_a_class_based_task_and_a_self_retry_run_as_on_redis(split_databases):
    code = """
    from celery import current_app
    doubled = current_app.tasks["plainapp.doubler"].delay(21).get(timeout=30)
    print(json.dumps([doubled, retried_once.delay(7).get(timeout=30)]))
    """
    assert publish(split_databases, code) == [42, [7, 1]]


def test_a_retry_with_new_arguments_runs_them_in_the_next_attempt_of_the_same_execution(split_databases):
    code = """
    result = retried_with_new_arguments.delay("old", by="call")
    value = result.get(timeout=30)
    engine = app.backend.engine
    print(json.dumps([value, len(engine.snapshot(engine.resolve(result.id)).attempts)]))
    """
    assert publish(split_databases, code) == [[["new"], {"by": "retry"}, 1], 2]


def test_a_redis_result_backend_with_the_flowfabric_broker(ff_server, plainapp_worker):
    env = plainapp_worker(3, "redis://{base}/4")
    code = """
    import time
    from ff_celery.integration.context import engine_for_url
    failed = fails.delay("bad")
    failed.get(timeout=30, propagate=False)
    engine = engine_for_url(app.conf.broker_url)
    state = lambda: engine.snapshot(engine.resolve(failed.id)).public_state
    deadline = time.monotonic() + 30  # the engine hears of it just after the redis backend
    while state() == "active" and time.monotonic() < deadline:
        time.sleep(0.05)
    print(json.dumps([add.delay(1, 2).get(timeout=30), retried_once.delay(5).get(timeout=30), failed.state, state()]))
    """
    # the engine sees each outcome too: a retry is the next attempt, a failure fails the execution
    assert publish(env, code) == [3, [5, 1], "FAILURE", "failed"]
    assert wait_for(lambda: redis.Redis(port=ff_server.port, db=4).keys("celery-task-meta-*"))


def test_the_flowfabric_backend_with_a_redis_broker(ff_server, start_worker):
    base = f"127.0.0.1:{ff_server.port}"
    env = {"PLAINAPP_BROKER": f"redis://{base}/7", "PLAINAPP_BACKEND": f"flowfabric://{base}/8"}
    start_worker(app="plainapp", env=env)
    code = "print(json.dumps([add.delay(1, 2).get(timeout=30), retried_once.delay(5).get(timeout=30)]))"
    assert publish(env, code) == [3, [5, 1]]
