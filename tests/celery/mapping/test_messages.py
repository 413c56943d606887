"""Mapping a kombu message onto an execution (the retention a message asks for), and an
execution the engine holds back onto Celery's ``inspect scheduled`` entry."""

import base64
import json
import pickle

import pytest

from ff_celery.engine.core.policy import KEEP_FOREVER_MS
from ff_celery.mapping.messages import PublishError, held_task_entry, submission_for


def message(headers=None, properties=None) -> dict:
    headers = {"task": "app.add", "id": "t-1", **(headers or {})}
    return {"body": "", "headers": headers, "properties": properties or {}}


def retention_of(**parts) -> int | None:
    return submission_for("celery", message(**parts), now_ms=0, max_size=1 << 20).spec.policy.retention_ms


def test_a_task_or_call_retention_becomes_the_executions_and_the_call_wins():
    assert retention_of() is None
    assert retention_of(headers={"ff_retention": 90}) == 90_000
    assert retention_of(headers={"ff_retention": None}) == KEEP_FOREVER_MS
    assert retention_of(headers={"ff_retention": 90}, properties={"ff_retention": 0.5}) == 500


@pytest.mark.parametrize("value", ["90", -1, True, [1], 1e30])
def test_a_retention_that_is_not_seconds_is_refused_with_its_name(value):
    with pytest.raises(PublishError, match="ff_retention must be seconds"):
        retention_of(headers={"ff_retention": value})


JSON_ONLY = {"application/json"}


def held_envelope(body: bytes, content_type: str = "application/json", **headers) -> dict:
    return {
        "body": base64.b64encode(body).decode(),
        "content-type": content_type,
        "content-encoding": "binary" if content_type != "application/json" else "utf-8",
        "headers": {"task": "app.add", "id": "t-1", "argsrepr": "(1, 2)", "kwargsrepr": "{'z': 3}", **headers},
        "properties": {"body_encoding": "base64", "priority": 4, "delivery_info": {"routing_key": "celery"}},
    }


def held(envelope: dict, runnable_at_ms: int = 1_700_000_000_000) -> dict:
    return held_task_entry(json.dumps(envelope).encode(), runnable_at_ms, "w@host", accept=JSON_ONLY)


def test_a_held_task_is_listed_with_its_arguments_or_what_the_publisher_showed_of_them():
    entry = held(held_envelope(json.dumps([[1, 2], {"z": 3}, {}]).encode()))
    assert entry["eta"] == "2023-11-14T22:13:20+00:00"
    assert entry["priority"] == 6  # Celery's timer priority of a task waiting for its ETA
    assert {k: entry["request"][k] for k in ("id", "name", "args", "kwargs", "hostname", "delivery_info")} == {
        "id": "t-1", "name": "app.add", "args": [1, 2], "kwargs": {"z": 3}, "hostname": "w@host",
        "delivery_info": {"exchange": None, "routing_key": "celery", "priority": 4, "redelivered": False},
    }  # fmt: skip
    request = held({**held_envelope(b""), "body": "not base64 json"})["request"]
    assert (request["args"], request["kwargs"]) == ("(1, 2)", "{'z': 3}")


def test_a_held_task_body_outside_the_apps_accept_content_is_not_decoded():
    request = held(held_envelope(pickle.dumps(((1, 2), {"z": 3}, {})), "application/x-python-serialize"))["request"]
    assert (request["args"], request["kwargs"]) == ("(1, 2)", "{'z': 3}")


def test_a_held_task_eta_is_the_messages_own_to_the_microsecond_when_the_engine_holds_it_for_that():
    eta = "2023-11-14T22:13:20.123456+00:00"
    assert held(held_envelope(b"", eta=eta), 1_700_000_000_123)["eta"] == eta
    assert held(held_envelope(b"", eta=eta), 1_700_000_005_000)["eta"] == "2023-11-14T22:13:25+00:00"  # a backoff


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", json.dumps({"headers": {}, "body": ""}).encode()])
def test_a_held_execution_that_is_no_celery_task_is_not_listed(payload):
    assert held_task_entry(payload, 0, "w@host", accept=JSON_ONLY) is None
