"""The hot-path library (``ffcelery``) against the contract calls it replaces, step by step.

Two servers get the same executions and flows; on one the engine sends the contract calls
one by one (as against FlowFabric's own library), on the other ``ffc_claim`` and
``ffc_complete``. After every step the replies, the whole keyspace and every message
published are compared; server time differs between the two, so millisecond timestamps are
compared as ``<ts>``."""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis

from ff_celery.devtools.devserver import DevServer
from ff_celery.engine import functions as fn
from ff_celery.engine.core.engine import Engine
from ff_celery.engine.core.errors import EngineError
from ff_celery.engine.core.flows import FlowRef
from ff_celery.engine.core.ids import ExecutionId
from ff_celery.engine.core.keys import ExecKeys
from ff_celery.engine.core.new_execution import ExecutionSpec
from ff_celery.engine.work.claimed_task import ClaimedTask

from .support import keyspace

pytestmark = pytest.mark.single_node  # two servers of its own

LANE = "hot"
CORE_FIELDS = ("current_attempt_index", "retry_count", "priority", "created_at", "last_transition_at")
TIMESTAMP = re.compile(r"(?<!\d)1\d{12}(?!\d)")


def normalized(value: Any) -> Any:
    """``value`` with bytes decoded and millisecond timestamps (and stream ids) as ``<ts>``."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    if isinstance(value, str):
        return TIMESTAMP.sub("<ts>", value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return normalized(str(int(value)) if float(value).is_integer() else repr(value))
    if isinstance(value, dict):
        return {normalized(key): normalized(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [normalized(item) for item in value]
    if isinstance(value, EngineError):
        return {"error": value.code, "details": normalized(value.details)}
    if hasattr(value, "model_dump"):
        return normalized(value.model_dump())
    return repr(value)


class Side:
    """One server, an engine on it (hot path on or off) and a subscriber to every channel."""

    def __init__(self, server: DevServer, hot_path: bool) -> None:
        self.client = redis.Redis(host="127.0.0.1", port=server.port)
        self.engine = Engine.from_url(server.url)
        self.engine.bootstrap()
        self.engine.hot_path = hot_path
        assert self.engine.hot_path is hot_path
        self.listener = self.client.pubsub()
        self.listener.psubscribe("*")
        self._barriers = itertools.count()

    def published(self) -> list[Any]:
        """Messages published since the last look, sorted (a PING on the subscriber
        connection is the barrier: its reply comes after every earlier message)."""
        token = f"barrier-{next(self._barriers)}"
        self.listener.ping(token)
        messages = []
        while True:
            message = self.listener.get_message(timeout=10)
            assert message is not None, "no reply to the pub/sub barrier"
            if message["type"] == "pong" and message["data"] == token.encode():
                return sorted(messages, key=repr)
            if message["type"] == "pmessage":
                messages.append(normalized([message["channel"], message["data"]]))

    def state(self) -> dict[str, Any]:
        return {normalized(key): normalized(value) for key, value in keyspace(self.client).items()}

    def close(self) -> None:
        self.listener.close()
        self.engine.close()
        self.client.close()


@pytest.fixture
def sides() -> Iterator[tuple[Side, Side]]:
    with DevServer() as contract_server, DevServer() as combined_server:
        pair = Side(contract_server, hot_path=False), Side(combined_server, hot_path=True)
        for side in pair:
            side.published()
        try:
            yield pair
        finally:
            for side in pair:
                side.close()


def fixed_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """Edge ids (minted while a flow is written) the same on both servers."""
    counter = itertools.count()
    monkeypatch.setattr("ff_celery.engine.core.flows.new_uuid", lambda: str(uuid.UUID(int=next(counter))))


def same(contract: Side, combined: Side, step: str, answers: tuple[Any, Any] = (None, None)) -> None:
    """The step left both servers alike: replies, keyspace and messages published."""
    assert normalized(answers[0]) == normalized(answers[1]), f"{step}: replies differ"
    assert contract.published() == combined.published(), f"{step}: published messages differ"
    left, right = contract.state(), combined.state()
    assert left.keys() == right.keys(), f"{step}: keys differ: {left.keys() ^ right.keys()}"
    for key in left:
        assert left[key] == right[key], f"{step}: {key} differs"


def claim(side: Side, eid: ExecutionId, worker: str = "w", suffix: str = "") -> fn.ClaimReads:
    """One candidate's claim round trip as the claimer sends it, with ids fixed by ``eid``."""
    identity = {"execution_id": eid, "worker_id": worker, "worker_instance_id": f"{worker}-1", "lane_id": LANE}
    grant = fn.IssueClaimGrant(**identity)
    request = fn.ClaimExecution(
        **identity, lease_id=f"lease-{eid}{suffix}", lease_ttl_ms=30_000, attempt_id=f"attempt-{eid}{suffix}"
    )
    if side.engine.hot_path:
        return side.engine.call(fn.ClaimWithReads(grant=grant, claim=request, core_fields=CORE_FIELDS))
    batch = side.engine.batch()
    keys = ExecKeys(eid)
    batch.command("hmget", keys.core, CORE_FIELDS)
    batch.fcall(grant)
    batch.fcall(request)
    batch.command("get", keys.payload)
    batch.command("hgetall", keys.tags)
    return fn.ClaimReads(*batch.execute())


def complete(side: Side, eid: ExecutionId, lease: fn.Lease, flow: FlowRef | None = None) -> Any:
    """A worker's successful completion (with its result waiter's notice) and, on the
    contract side, the cascade the Celery layer runs after it for a flow member."""
    task = ClaimedTask(
        side.engine,
        execution_id=eid,
        lane_id=LANE,
        worker_id="w",
        worker_instance_id="w-1",
        lease=lease,
        lease_ttl_ms=30_000,
    )
    task.notify_channel = f"done:{eid}"
    try:
        task.complete(b"result of " + eid.encode())
    except EngineError as exc:
        return exc
    if flow is not None and not task.edges_resolved:
        side.engine.flows.cascade(eid, flow.flow_id)
    return "completed"


def test_claims_and_completions_leave_what_the_contract_calls_leave(sides, monkeypatch):
    contract, combined = sides
    partition = contract.engine.partitions.lane_partition(LANE)
    flow = FlowRef(str(uuid.UUID(int=7)), partition)
    solo = ExecutionId.mint(partition)
    first, left, right, join = (ExecutionId.mint(partition) for _ in range(4))

    for side in sides:  # a solo task, and a flow: first -> left, first -> right, both -> join
        fixed_ids(monkeypatch)
        engine = side.engine
        engine.submit(LANE, b"solo", execution_id=solo, tags={"celery.task": "add"})
        members = [
            engine.new_execution(ExecutionSpec(LANE, b"step-" + eid.encode()), eid)
            for eid in (first, left, right, join)
        ]
        upstream = {left: (first,), right: (first,), join: (left, right)}
        engine.submit_flow(flow, [replace(m, upstream=upstream.get(m.request.execution_id, ())) for m in members])
    same(contract, combined, "created")

    answers = tuple(claim(side, solo) for side in sides)
    same(contract, combined, "solo claimed", answers)
    lease = answers[0].lease
    assert isinstance(lease, fn.Lease) and answers[0].payload == b"solo"
    same(contract, combined, "solo completed", tuple(complete(side, solo, lease) for side in sides))

    answers = tuple(claim(side, first) for side in sides)
    same(contract, combined, "first member claimed", answers)
    results = tuple(complete(side, first, answers[0].lease, flow) for side in sides)
    same(contract, combined, "first member completed: left and right eligible, woken", results)

    answers = tuple(claim(side, left) for side in sides)
    same(contract, combined, "left claimed", answers)
    same(contract, combined, "left completed", tuple(complete(side, left, answers[0].lease, flow) for side in sides))

    answers = tuple(claim(side, right) for side in sides)
    same(contract, combined, "right claimed", answers)
    stale = replace_lease(answers[0].lease, "not-the-lease")
    results = tuple(complete(side, right, stale, flow) for side in sides)
    assert all(isinstance(result, EngineError) for result in results)
    same(contract, combined, "right completed under a stale lease: refused, nothing resolved", results)
    results = tuple(complete(side, right, answers[0].lease, flow) for side in sides)
    same(contract, combined, "right completed: join eligible", results)

    answers = tuple(claim(side, join, worker="other") for side in sides)
    same(contract, combined, "join claimed by another worker", answers)
    answers = tuple(claim(side, join, suffix="-again") for side in sides)
    assert all(isinstance(answer.lease, EngineError) for answer in answers)
    same(contract, combined, "join claimed again: refused", answers)


def replace_lease(lease: fn.Lease, lease_id: str) -> fn.Lease:
    return lease.model_copy(update={"lease_id": lease_id})


def test_a_malformed_combined_call_is_refused_with_invalid_input_and_writes_nothing(sides):
    _, combined = sides
    before = combined.state()
    for function, argv in (("ffc_claim", ["x", "0", "0", "0"]), ("ffc_complete", ["-1"]), ("ffc_complete", ["2"])):
        reply = combined.client.fcall(function, 0, *argv)
        assert reply[:2] == [0, b"invalid_input"], (function, argv, reply)
    assert combined.state() == before
