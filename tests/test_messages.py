"""Mapping a kombu message onto an execution: the retention a message asks for."""

import pytest

from ff_celery.engine.policy import KEEP_FOREVER_MS
from ff_celery.messages import PublishError, submission_for


def message(headers=None, properties=None) -> dict:
    headers = {"task": "app.add", "id": "t-1", **(headers or {})}
    return {"body": "", "headers": headers, "properties": properties or {}}


def retention_of(**parts) -> int | None:
    return submission_for("celery", message(**parts), now_ms=0, max_size=1 << 20).policy.retention_ms


def test_a_task_or_call_retention_becomes_the_executions_and_the_call_wins():
    assert retention_of() is None
    assert retention_of(headers={"ff_retention": 90}) == 90_000
    assert retention_of(headers={"ff_retention": None}) == KEEP_FOREVER_MS
    assert retention_of(headers={"ff_retention": 90}, properties={"ff_retention": 0.5}) == 500


@pytest.mark.parametrize("value", ["90", -1, True, [1], 1e30])
def test_a_retention_that_is_not_seconds_is_refused_with_its_name(value):
    with pytest.raises(PublishError, match="ff_retention must be seconds"):
        retention_of(headers={"ff_retention": value})
