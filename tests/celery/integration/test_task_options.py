"""ff_* options on Celery's own task class, as a URL-only app has them: the task's own and the
call's reach the execution each message creates (published here, no worker needed)."""

import uuid

import pytest
from celery import Celery

from ff_celery.engine.work.budgets import budget_id_for, quota_id_for
from ff_celery.integration.context import engine_for_url


@pytest.fixture
def url(ff_url, ff_redis):
    return ff_url.replace("redis://", "flowfabric://", 1)


def attached(url: str, result) -> dict[str, str]:
    engine = engine_for_url(url)
    return engine.read_core(engine.resolve(result.id), "budget_ids", "quota_policy_id")


def test_a_tasks_own_options_and_the_calls_reach_its_execution(url):
    app = Celery(f"plain-{uuid.uuid4().hex[:6]}", broker=url, backend=url)

    @app.task(ff_budgets="tokens", ff_quota="openai")
    def summarize(doc):
        return doc

    assert attached(url, summarize.delay(1)) == {
        "budget_ids": budget_id_for("tokens"),
        "quota_policy_id": quota_id_for("openai"),
    }
    by_call = summarize.apply_async((1,), ff_budgets=["dollars"], ff_quota="tenant-42")
    assert attached(url, by_call) == {
        "budget_ids": budget_id_for("dollars"),
        "quota_policy_id": quota_id_for("tenant-42"),
    }


def test_the_options_of_a_task_of_an_app_that_is_not_the_current_one_reach_its_execution(url):
    first = Celery(f"first-{uuid.uuid4().hex[:6]}", broker=url, backend=url)

    @first.task(ff_quota="first-quota", shared=False)
    def first_task():
        return 1

    Celery(f"second-{uuid.uuid4().hex[:6]}", broker=url, backend=url)  # now the current app
    assert attached(url, first_task.delay())["quota_policy_id"] == quota_id_for("first-quota")
