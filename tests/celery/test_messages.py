"""Mapping a kombu message onto an execution (the retention a message asks for), and an
execution the engine holds back onto Celery's ``inspect scheduled`` entry."""

import base64
import json

import pytest

from ff_celery.engine.policy import KEEP_FOREVER_MS
from ff_celery.messages import PublishError, held_task_entry, submission_for


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


def test_a_held_task_is_listed_with_its_arguments_or_what_the_publisher_showed_of_them():
    body = base64.b64encode(json.dumps([[1, 2], {"z": 3}, {}]).encode()).decode()
    envelope = {
        "body": body,
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": {"task": "app.add", "id": "t-1", "argsrepr": "(1, 2)", "kwargsrepr": "{'z': 3}"},
        "properties": {"body_encoding": "base64", "priority": 4, "delivery_info": {"routing_key": "celery"}},
    }
    entry = held_task_entry(json.dumps(envelope).encode(), 1_700_000_000_000, "w@host")
    assert entry["eta"] == "2023-11-14T22:13:20+00:00"
    assert entry["priority"] == 4
    assert {k: entry["request"][k] for k in ("id", "name", "args", "kwargs", "hostname")} == {
        "id": "t-1", "name": "app.add", "args": [1, 2], "kwargs": {"z": 3}, "hostname": "w@host",
    }  # fmt: skip
    undecodable = {**envelope, "body": "not base64 json"}
    request = held_task_entry(json.dumps(undecodable).encode(), 0, "w@host")["request"]
    assert (request["args"], request["kwargs"]) == ("(1, 2)", "{'z': 3}")


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", json.dumps({"headers": {}, "body": ""}).encode()])
def test_a_held_execution_that_is_no_celery_task_is_not_listed(payload):
    assert held_task_entry(payload, 0, "w@host") is None
