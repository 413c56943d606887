"""Messages a worker cannot run end failed with a readable reason, once; messages the
transport cannot accept are refused at publish with a typed error and create nothing."""

import json
import random
import uuid

import kombu
import pytest
from celery.exceptions import NotRegistered

from ff_celery.engine.core.ids import ExecutionId
from ff_celery.engine.core.keys import PartitionKeys
from ff_celery.mapping.messages import PublishError

from .conftest import wait_for


@pytest.fixture(autouse=True)
def worker(module_worker):
    return module_worker


def engine(ffapp):
    return ffapp.app.backend.engine


def failed_reason(ffapp, eid):
    core = engine(ffapp).read_core(eid, "public_state", "failure_reason")
    return core if core.get("public_state") == "failed" else None


def publish_raw(app_url, body, **kwargs):
    with kombu.Connection(app_url) as connection:
        connection.Producer().publish(body, routing_key="celery", **kwargs)


def lane_execution_ids(ffapp, task_id):
    eid = engine(ffapp).resolve(task_id)
    assert eid is not None
    return eid


def test_an_unknown_task_fails_with_not_registered(ffapp, worker):
    result = ffapp.app.send_task("ffapp.no_such_task", args=[1])
    with pytest.raises(NotRegistered):
        result.get(timeout=15)
    eid = lane_execution_ids(ffapp, result.id)
    assert wait_for(lambda: failed_reason(ffapp, eid))
    assert "unknown task" in failed_reason(ffapp, eid)["failure_reason"]
    assert wait_for(lambda: "ffapp.no_such_task" in worker.text())  # logged by the worker too


def test_an_undecodable_task_message_fails_with_the_decode_error(ffapp, app_url, worker):
    headers = {"task": "ffapp.add", "id": "undecodable-1", "lang": "py"}
    publish_raw(app_url, b"\x00 not json", headers=headers, content_type="application/json", content_encoding="utf-8")
    eid = lane_execution_ids(ffapp, "undecodable-1")
    assert wait_for(lambda: failed_reason(ffapp, eid))
    assert ffapp.app.AsyncResult("undecodable-1").state == "FAILURE"


def test_a_non_celery_message_on_a_task_queue_fails_visibly_once(ffapp, app_url, worker):
    index = PartitionKeys(engine(ffapp).partitions.lane_partition("celery")).all_executions
    before = set(engine(ffapp).redis.smembers(index))
    publish_raw(app_url, {"not": "a task"})

    def new_failed():
        members = set(engine(ffapp).redis.smembers(index)) - before
        reasons = [failed_reason(ffapp, ExecutionId(m.decode())) for m in members]
        return [r for r in reasons if r]

    assert wait_for(new_failed)
    assert new_failed()[0]["failure_reason"] == "not a Celery task message"


def test_an_oversized_message_is_refused_at_publish(ffapp, app_url):
    with (
        kombu.Connection(app_url, transport_options={"max_message_size": 4096}) as connection,
        pytest.raises(PublishError, match="exceeds the 4096-byte limit"),
    ):
        ffapp.add.apply_async(("x" * 10_000, "y"), connection=connection, task_id="too-big-1")
    assert engine(ffapp).resolve("too-big-1") is None


@pytest.mark.parametrize(
    ("options", "complaint"),
    [({"priority": "high"}, "priority must be a finite number"), ({"eta": "next tuesday"}, "eta is not an ISO-8601")],
)
def test_an_invalid_priority_or_eta_is_refused_at_publish(ffapp, options, complaint):
    with pytest.raises(PublishError, match=complaint):
        ffapp.add.apply_async((1, 2), task_id="bad-option-1", **options)
    assert engine(ffapp).resolve("bad-option-1") is None


POISON_PAYLOADS = [
    b"[1, 2]",
    b'"x"',
    b"null",
    b'{"headers": [1]}',
    b'{"properties": 5}',
    b'{"properties": {"delivery_info": "x"}}',
    b'{"body": 7, "headers": {}}',
    b"\xff\xfe not even text",
]


def test_payloads_that_are_not_kombu_messages_fail_once_and_the_worker_goes_on(ffapp, worker):
    poisoned = [engine(ffapp).submit("celery", payload).execution_id for payload in POISON_PAYLOADS]
    good = ffapp.add.delay(20, 22)
    assert good.get(timeout=20) == 42  # the worker kept running, its batch-mates too
    for eid in poisoned:
        assert wait_for(lambda eid=eid: failed_reason(ffapp, eid)), eid
        assert failed_reason(ffapp, eid)["failure_reason"]  # a readable reason
    assert worker.process.poll() is None
    assert ffapp.add.delay(1, 1).get(timeout=20) == 2


def random_json(rng, depth=0):
    kinds = ["int", "str", "null", "bool", "float"] + (["list", "dict"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == "dict":
        keys = ["body", "headers", "properties", "task", "id", "args", "delivery_info", "content-type", "x"]
        return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randrange(4))}
    return {"int": rng.randrange(-5, 5), "str": "".join(rng.choice("ab{}:") for _ in range(3)), "null": None,
            "bool": rng.random() < 0.5, "float": rng.random()}[kind]  # fmt: skip


def mutated(rng, envelope):
    """A real kombu envelope with one part replaced, dropped or nested wrongly."""
    message = json.loads(json.dumps(envelope))
    container = rng.choice([message, message.get("headers") or {}, message.get("properties") or {}])
    if container:
        key = rng.choice(sorted(container))
        if rng.random() < 0.5:
            del container[key]
        else:
            container[key] = random_json(rng)
    return json.dumps(message).encode()


def test_fuzzed_payloads_never_stop_a_worker_and_good_tasks_still_complete(ffapp, worker):
    rng = random.Random(20261206)  # fixed: the same payloads every run
    source = ffapp.add.apply_async((1, 2), queue="fuzz-source")  # a real envelope, never consumed
    envelope = json.loads(engine(ffapp).payload(lane_execution_ids(ffapp, source.id)))
    payloads = [bytes(rng.randrange(256) for _ in range(rng.randrange(64))) for _ in range(15)]
    payloads += [json.dumps(random_json(rng)).encode() for _ in range(15)]
    payloads += [mutated(rng, envelope) for _ in range(30)]
    fuzzed = [engine(ffapp).submit("celery", payload).execution_id for payload in payloads]
    good = [ffapp.add.delay(n, n) for n in range(5)]
    assert [result.get(timeout=30) for result in good] == [2 * n for n in range(5)]

    def ended(eid):
        return engine(ffapp).read_core(eid, "lifecycle_phase").get("lifecycle_phase") == "terminal"

    assert wait_for(lambda: all(ended(eid) for eid in fuzzed), timeout=60)  # each ended once, none stuck
    assert worker.process.poll() is None


def flow_step(countdown):
    return {"flow": str(uuid.uuid4()), "after": [], "passes": "", "countdown": countdown}


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"priority": "nan"}, "priority"),
        ({"priority": float("inf")}, "priority"),
        ({"expiration": float("inf")}, "expiration"),
        ({"expiration": -1}, "expiration"),
        ({"countdown": float("inf")}, "countdown"),
        ({"countdown": float("nan")}, "countdown"),
        ({"expires": 1e300}, "expires"),
        ({"time_limit": float("nan")}, "timelimit"),
        ({"soft_time_limit": -5}, "timelimit"),
        ({"retries": -1}, "retries"),
        ({"replaced_task_nesting": "deep"}, "replaced_task_nesting"),
        ({"headers": {"ff_flow": flow_step(1e308)}}, "countdown"),
        ({"headers": {"ff_policy": '{"retry_policy": {"max_retries": -1}}'}}, "max_retries"),
        ({"headers": {"ff_policy": '{"retry_policy": {"backoff": {"type": "fixed", "delay_ms": 1e400}}}'}},
         "delay_ms"),
    ],
)  # fmt: skip
def test_apply_async_with_a_number_out_of_range_raises_publish_error_naming_the_field(ffapp, options, field):
    task_id = f"bad-number-{uuid.uuid4().hex[:8]}"
    with pytest.raises(PublishError, match=field):
        ffapp.add.apply_async((1, 2), task_id=task_id, **options)
    assert engine(ffapp).resolve(task_id) is None


def stored_with(ffapp, change) -> ExecutionId:
    """A real task message, changed by ``change(headers, properties)``, stored as an execution
    on the worker's queue without the publish checks (another client, an older version)."""
    source = ffapp.add.apply_async((1, 2), queue="poison-source")  # never consumed
    envelope = json.loads(engine(ffapp).payload(lane_execution_ids(ffapp, source.id)))
    envelope["headers"]["id"] = f"poison-{uuid.uuid4().hex[:8]}"
    change(envelope["headers"], envelope["properties"])
    return engine(ffapp).submit("celery", json.dumps(envelope).encode()).execution_id


POISON_NUMBERS = {
    "flow countdown 1e308": lambda headers, properties: headers.update(ff_flow=flow_step(1e308)),
    "flow countdown nan": lambda headers, properties: headers.update(ff_flow=flow_step(float("nan"))),
    "timelimit inf": lambda headers, properties: headers.update(timelimit=[float("inf"), None]),
    "timelimit text": lambda headers, properties: headers.update(timelimit=["soon", None]),
    "retries nan": lambda headers, properties: headers.update(retries=float("nan")),
}


@pytest.mark.parametrize("change", POISON_NUMBERS.values(), ids=POISON_NUMBERS.keys())
def test_a_stored_message_with_a_poison_number_fails_once_and_the_worker_serves_the_next_task(ffapp, worker, change):
    poisoned = stored_with(ffapp, change)
    assert ffapp.add.delay(20, 22).get(timeout=20) == 42
    assert wait_for(lambda: failed_reason(ffapp, poisoned))
    reason = failed_reason(ffapp, poisoned)["failure_reason"]
    assert "must be" in reason  # names the field and its range
    assert len(engine(ffapp).snapshot(poisoned).attempts) <= 1  # failed once, not retried
    assert worker.process.poll() is None
    assert ffapp.add.delay(1, 1).get(timeout=20) == 2
