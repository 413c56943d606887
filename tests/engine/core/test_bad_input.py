"""Bad input gets a clear, typed error and loses nothing.

Every case snapshots the whole keyspace (each key with its type, value and whether it has a
TTL) before and after the rejected call and requires the two to be identical: a rejected
call must not leave half a write behind.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from contract.support import keyspace

from ff_celery.engine import functions as fn
from ff_celery.engine.core.engine import Engine
from ff_celery.engine.core.errors import (
    EngineError,
    ErrorClass,
    NotFoundError,
    TransportError,
    ValidationError,
)
from ff_celery.engine.core.ids import ExecutionId, new_uuid
from ff_celery.engine.core.keys import ExecKeys
from ff_celery.engine.core.policy import ExecutionPolicy, RoutingRequirements

LANE = "default"
WORKER = "worker-1"
INSTANCE = "worker-1-instance"
UUID = "550e8400-e29b-41d4-a716-446655440000"


# -- helpers ----------------------------------------------------------------------------------


def raw_fcall(client: redis.Redis, request: fn.Fcall[Any], argv: list[Any] | None = None) -> Any:
    """Send ``request``'s FCALL (optionally with replaced ARGV) and return the raw reply."""
    keys = request.keys()
    return client.fcall(request.function, len(keys), *keys, *(request.argv() if argv is None else argv))


def with_arg(request: fn.Fcall[Any], position: int, value: str) -> list[Any]:
    argv = list(request.argv())
    argv[position] = value
    return argv


def new_execution_id(engine: Engine, lane: str = LANE) -> ExecutionId:
    return ExecutionId.mint(engine.partitions.lane_partition(lane))


def create_request(engine: Engine, **overrides: Any) -> fn.CreateExecution:
    fields: dict[str, Any] = {
        "execution_id": new_execution_id(engine),
        "namespace": engine.namespace,
        "lane_id": LANE,
        "execution_kind": "task",
        "input_payload": b"payload",
    }
    fields.update(overrides)
    return fn.CreateExecution(**fields)


@dataclass
class Claimed:
    execution_id: ExecutionId
    lease: fn.Lease

    @property
    def fence(self) -> fn.Fence:
        return fn.Fence(lease_id=self.lease.lease_id, lease_epoch=self.lease.lease_epoch, attempt_id=self.attempt_id)

    @property
    def attempt_id(self) -> str:
        assert self.lease.attempt_id
        return self.lease.attempt_id


def grant_request(eid: ExecutionId) -> fn.IssueClaimGrant:
    return fn.IssueClaimGrant(execution_id=eid, worker_id=WORKER, worker_instance_id=INSTANCE, lane_id=LANE)


def claim_request(eid: ExecutionId, **overrides: Any) -> fn.ClaimExecution:
    fields: dict[str, Any] = {
        "execution_id": eid,
        "worker_id": WORKER,
        "worker_instance_id": INSTANCE,
        "lane_id": LANE,
        "lease_id": new_uuid(),
        "lease_ttl_ms": 30_000,
        "attempt_id": new_uuid(),
    }
    fields.update(overrides)
    return fn.ClaimExecution(**fields)


def submit(engine: Engine) -> ExecutionId:
    return engine.submit(LANE, b"payload").execution_id


def granted(engine: Engine) -> ExecutionId:
    eid = submit(engine)
    engine.call(grant_request(eid))
    return eid


def claim(engine: Engine) -> Claimed:
    eid = granted(engine)
    return Claimed(eid, engine.call(claim_request(eid)))


def delayed_interrupted(engine: Engine) -> ExecutionId:
    """An execution parked by its worker (attempt_interrupted), promoted and granted again."""
    claimed = claim(engine)
    now = engine.server_time_ms()
    engine.call(
        fn.DelayExecution(
            execution_id=claimed.execution_id,
            fence=claimed.fence,
            lane_id=LANE,
            worker_instance_id=INSTANCE,
            attempt_index=claimed.lease.attempt_index,
            delay_until=now,
        )
    )
    engine.call(fn.PromoteDelayed(execution_id=claimed.execution_id, lane_id=LANE, now_ms=now))
    engine.call(grant_request(claimed.execution_id))
    return claimed.execution_id


def revoked(engine: Engine) -> Claimed:
    """A claimed execution whose lease an operator revoked (reclaimable)."""
    claimed = claim(engine)
    engine.revoke_lease(claimed.execution_id, reason="test")
    return claimed


def holder(claimed: Claimed, **overrides: Any) -> dict[str, Any]:
    fields = {
        "execution_id": claimed.execution_id,
        "fence": claimed.fence,
        "lane_id": LANE,
        "worker_instance_id": INSTANCE,
        "attempt_index": claimed.lease.attempt_index,
    }
    fields.update(overrides)
    return fields


@pytest.fixture
def engine(ff_engine: Engine) -> Engine:
    # The lane registry is written by submit before the FCALL; register it up front so the
    # keyspace comparisons see only what the rejected FCALL itself would write.
    ff_engine.register_lane(LANE)
    return ff_engine


# -- malformed execution ids (Python layer) ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("x", "{fp:"),
        ("", "{fp:"),
        (UUID, "{fp:"),
        (f"fp:7}}:{UUID}", "{fp:"),
        (f"{{FP:7}}:{UUID}", "{fp:"),
        (f"{{fp:x}}:{UUID}", "partition"),
        (f"{{fp:}}:{UUID}", "partition"),
        (f"{{fp:-1}}:{UUID}", "partition"),
        (f"{{fp:65536}}:{UUID}", "partition"),
        (f"{{fp:99999999999999999999}}:{UUID}", "partition"),
        (f"{{fp:07}}:{UUID}", "partition"),
        ("{fp:7}", "partition"),
        (f"{{fp:7}}{UUID}", "partition"),
        ("{fp:7}:", "uuid"),
        ("{fp:7}:not-a-uuid", "uuid"),
        ("{fp:7}:550E8400-E29B-41D4-A716-446655440000", "uuid"),
        ("{fp:7}:550e8400e29b41d4a716446655440000", "uuid"),
        (f"{{fp:7}}:{{{UUID}}}", "uuid"),
        (f"{{fp:7}}:urn:uuid:{UUID}", "uuid"),
        (f"{{fp:7}}:{UUID} ", "uuid"),
    ],
)
def test_malformed_execution_id_raises_a_validation_error_naming_the_problem(text, problem):
    with pytest.raises(ValidationError) as raised:
        ExecutionId(text)
    error = raised.value
    assert error.code == "invalid_input"
    assert error.error_class is ErrorClass.TERMINAL
    message = str(error)
    assert problem.lower() in message.lower()
    assert repr(text) in message or text in message


@pytest.mark.parametrize("partition", [0, 7, 255, 65535])
def test_canonical_execution_id_parses_and_keeps_its_partition(partition):
    eid = ExecutionId(f"{{fp:{partition}}}:{UUID}")
    assert eid.partition == partition
    assert eid.uuid == UUID
    assert str(eid) == f"{{fp:{partition}}}:{UUID}"


def test_fcall_model_with_a_malformed_execution_id_is_rejected_before_anything_is_sent(engine, ff_redis):
    before = keyspace(ff_redis)
    with pytest.raises(ValidationError) as raised:
        fn.CreateExecution(execution_id="{fp:86}:NOT-A-UUID", namespace="default", lane_id=LANE, execution_kind="t")
    assert raised.value.code == "invalid_input"
    assert "NOT-A-UUID" in str(raised.value)
    assert keyspace(ff_redis) == before


# -- non-numeric numeric arguments --------------------------------------------------------------

Setup = Callable[[Engine], Any]
Build = Callable[[Engine, Any], fn.Fcall[Any]]


@dataclass
class NumericCase:
    setup: Setup
    build: Build
    position: int  # 0-based ARGV position
    name: str


def _nothing(engine: Engine) -> None:
    return None


def _resume_request(engine: Engine, eid: ExecutionId) -> fn.ClaimResumedExecution:
    return fn.ClaimResumedExecution(
        execution_id=eid,
        worker_id=WORKER,
        worker_instance_id=INSTANCE,
        lane_id=LANE,
        lease_id=new_uuid(),
        lease_ttl_ms=30_000,
        attempt_index=0,
        remaining_attempt_timeout_ms=1000,
    )


def _grant_and_claim(engine: Engine, eid: ExecutionId) -> fn.IssueGrantAndClaim:
    return fn.IssueGrantAndClaim(
        execution_id=eid,
        worker_id="operator",
        worker_instance_id="operator",
        lane_id=LANE,
        lease_id=new_uuid(),
        lease_ttl_ms=30_000,
        attempt_id=new_uuid(),
        attempt_timeout_ms=1000,
        execution_deadline_at=engine.server_time_ms() + 60_000,
    )


def _reclaim(engine: Engine, claimed: Claimed) -> fn.ReclaimExecution:
    return fn.ReclaimExecution(
        execution_id=claimed.execution_id,
        worker_id=WORKER,
        worker_instance_id="another-instance",
        lane_id=LANE,
        lease_id=new_uuid(),
        lease_ttl_ms=30_000,
        attempt_id=new_uuid(),
        current_attempt_index=claimed.lease.attempt_index,
    )


def _reclaim_grant(engine: Engine, claimed: Claimed) -> fn.IssueReclaimGrant:
    return fn.IssueReclaimGrant(
        execution_id=claimed.execution_id, worker_id=WORKER, worker_instance_id=INSTANCE, lane_id=LANE
    )


def _renew(engine: Engine, claimed: Claimed) -> fn.RenewLease:
    return fn.RenewLease(execution_id=claimed.execution_id, attempt_index=0, fence=claimed.fence, lease_ttl_ms=30_000)


def _delay(engine: Engine, claimed: Claimed) -> fn.DelayExecution:
    return fn.DelayExecution(**holder(claimed), delay_until=engine.server_time_ms() + 60_000)


def _register(engine: Engine, _: Any) -> fn.RegisterWorker:
    return fn.RegisterWorker(
        namespace=engine.namespace,
        worker_instance_id=INSTANCE,
        worker_id=WORKER,
        lanes=(LANE,),
        ttl_ms=10_000,
        now_ms=engine.server_time_ms(),
    )


def _heartbeat(engine: Engine, _: Any) -> fn.HeartbeatWorker:
    return fn.HeartbeatWorker(namespace=engine.namespace, worker_instance_id=INSTANCE, now_ms=1)


def _registered(engine: Engine) -> None:
    engine.call(_register(engine, None))


NUMERIC_CASES = {
    "create priority": NumericCase(_nothing, lambda e, _: create_request(e), 4, "priority"),
    "create delay_until": NumericCase(_nothing, lambda e, _: create_request(e), 8, "delay_until"),
    "create execution_deadline_at": NumericCase(_nothing, lambda e, _: create_request(e), 11, "execution_deadline_at"),
    "grant grant_ttl_ms": NumericCase(submit, lambda e, eid: grant_request(eid), 5, "grant_ttl_ms"),
    "claim lease_ttl_ms": NumericCase(granted, lambda e, eid: claim_request(eid), 6, "lease_ttl_ms"),
    "claim renew_before_ms": NumericCase(granted, lambda e, eid: claim_request(eid), 7, "renew_before_ms"),
    "claim attempt_timeout_ms": NumericCase(granted, lambda e, eid: claim_request(eid), 10, "attempt_timeout_ms"),
    "claim execution_deadline_at": NumericCase(granted, lambda e, eid: claim_request(eid), 11, "execution_deadline_at"),
    "claim_resumed lease_ttl_ms": NumericCase(delayed_interrupted, _resume_request, 6, "lease_ttl_ms"),
    "claim_resumed remaining_attempt_timeout_ms": NumericCase(
        delayed_interrupted, _resume_request, 7, "remaining_attempt_timeout_ms"
    ),
    "grant_and_claim lease_ttl_ms": NumericCase(submit, _grant_and_claim, 6, "lease_ttl_ms"),
    "grant_and_claim attempt_timeout_ms": NumericCase(submit, _grant_and_claim, 9, "attempt_timeout_ms"),
    "grant_and_claim execution_deadline_at": NumericCase(submit, _grant_and_claim, 10, "execution_deadline_at"),
    "renew lease_ttl_ms": NumericCase(claim, _renew, 5, "lease_ttl_ms"),
    "renew lease_history_grace_ms": NumericCase(claim, _renew, 6, "lease_history_grace_ms"),
    "delay delay_until": NumericCase(claim, _delay, 4, "delay_until"),
    "promote now_ms": NumericCase(
        submit, lambda e, eid: fn.PromoteDelayed(execution_id=eid, lane_id=LANE, now_ms=1), 1, "now_ms"
    ),
    "change_priority new_priority": NumericCase(
        submit, lambda e, eid: fn.ChangePriority(execution_id=eid, lane_id=LANE, new_priority=5), 1, "new_priority"
    ),
    "reclaim_grant grant_ttl_ms": NumericCase(revoked, _reclaim_grant, 5, "grant_ttl_ms"),
    "reclaim lease_ttl_ms": NumericCase(revoked, _reclaim, 5, "lease_ttl_ms"),
    "reclaim default_max_reclaim_count (ARGV 9)": NumericCase(revoked, _reclaim, 8, "default_max_reclaim_count"),
    "register_worker ttl_ms": NumericCase(_nothing, _register, 4, "ttl_ms"),
    "register_worker now_ms": NumericCase(_nothing, _register, 5, "now_ms"),
    "heartbeat_worker now_ms": NumericCase(_registered, _heartbeat, 0, "now_ms"),
}


def standalone_if_worker_registry(name: str, value: object) -> object:
    """FlowFabric's worker registry calls are cross-slot (spec §1.5): standalone servers only."""
    return pytest.param(value, id=name, marks=[pytest.mark.standalone] if "_worker " in name else [])


@pytest.mark.parametrize("bad", ["12ms", "soon", "1,000"])
@pytest.mark.parametrize("case", [standalone_if_worker_registry(name, case) for name, case in NUMERIC_CASES.items()])
def test_non_numeric_argument_is_rejected_as_invalid_input_and_writes_nothing(engine, ff_redis, case, bad):
    state = case.setup(engine)
    request = case.build(engine, state)
    before = keyspace(ff_redis)

    reply = raw_fcall(ff_redis, request, with_arg(request, case.position, bad))

    assert keyspace(ff_redis) == before
    assert reply == [0, b"invalid_input", f"{case.name} must be a number, got: {bad}".encode()]
    with pytest.raises(ValidationError) as raised:
        request.interpret(reply)
    assert raised.value.code == "invalid_input"
    assert raised.value.details == [f"{case.name} must be a number, got: {bad}"]
    assert raised.value.function == request.function
    assert case.name in str(raised.value)


#: Required numbers: an empty string is as bad as a non-numeric one (optional numbers, where
#: empty means "absent", and reclaim's defaulted ARGV 9 are left out).
REQUIRED_NUMBERS = [
    "create priority",
    "grant grant_ttl_ms",
    "claim lease_ttl_ms",
    "claim renew_before_ms",
    "claim_resumed lease_ttl_ms",
    "grant_and_claim lease_ttl_ms",
    "renew lease_ttl_ms",
    "renew lease_history_grace_ms",
    "delay delay_until",
    "promote now_ms",
    "change_priority new_priority",
    "reclaim_grant grant_ttl_ms",
    "reclaim lease_ttl_ms",
    "register_worker ttl_ms",
    "register_worker now_ms",
    "heartbeat_worker now_ms",
]


@pytest.mark.parametrize("name", [standalone_if_worker_registry(name, name) for name in REQUIRED_NUMBERS])
def test_empty_required_number_is_rejected_as_invalid_input_and_writes_nothing(engine, ff_redis, name):
    case = NUMERIC_CASES[name]
    request = case.build(engine, case.setup(engine))
    before = keyspace(ff_redis)

    reply = raw_fcall(ff_redis, request, with_arg(request, case.position, ""))

    assert reply == [0, b"invalid_input", f"{case.name} must be a number, got: ".encode()]
    assert keyspace(ff_redis) == before


NON_FINITE_CASES = {
    name: NUMERIC_CASES[name]
    for name in (
        "create priority",
        "create execution_deadline_at",
        "grant grant_ttl_ms",
        "claim lease_ttl_ms",
        "renew lease_ttl_ms",
        "delay delay_until",
        "change_priority new_priority",
    )
}


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("case", NON_FINITE_CASES.values(), ids=NON_FINITE_CASES.keys())
def test_non_finite_number_is_rejected_as_invalid_input_without_a_partial_write(engine, ff_redis, case, bad):
    """Lua's tonumber accepts "nan" and "inf"; they must still be refused before any write."""
    request = case.build(engine, case.setup(engine))
    before = keyspace(ff_redis)

    try:
        reply: Any = raw_fcall(ff_redis, request, with_arg(request, case.position, bad))
    except redis.ResponseError as exc:
        reply = exc

    assert keyspace(ff_redis) == before
    assert isinstance(reply, list), f"a Lua runtime error instead of an error code: {reply}"
    assert reply == [0, b"invalid_input", f"{case.name} must be a number, got: {bad}".encode()]


def test_submit_with_a_nan_priority_raises_a_validation_error_and_creates_nothing(engine, ff_redis):
    before = keyspace(ff_redis)
    with pytest.raises(ValidationError) as raised:
        engine.submit(LANE, b"payload", priority=float("nan"))
    assert raised.value.code == "invalid_input"
    assert keyspace(ff_redis) == before


def test_change_priority_to_nan_raises_a_validation_error_and_keeps_the_priority(engine, ff_redis):
    eid = submit(engine)
    before = keyspace(ff_redis)
    with pytest.raises(ValidationError) as raised:
        engine.change_priority(eid, float("nan"))
    assert raised.value.code == "invalid_input"
    assert keyspace(ff_redis) == before


FRACTIONAL_TTL_CASES = {
    name: NUMERIC_CASES[name]
    for name in (
        "grant grant_ttl_ms",
        "reclaim_grant grant_ttl_ms",
        "grant_and_claim lease_ttl_ms",
        "renew lease_ttl_ms",
        "renew lease_history_grace_ms",
    )
}


@pytest.mark.parametrize("case", FRACTIONAL_TTL_CASES.values(), ids=FRACTIONAL_TTL_CASES.keys())
def test_fractional_ttl_is_either_applied_or_rejected_but_never_half_written(engine, ff_redis, case):
    """A TTL of 1.5 ms cannot become a key expiry (PEXPIRE needs an integer). Failing on it
    after the grant or lease hash was written would leave a grant that never expires (every
    later grant answers grant_already_exists) or a lease without its expiry."""
    request = case.build(engine, case.setup(engine))
    before = keyspace(ff_redis)

    try:
        reply: Any = raw_fcall(ff_redis, request, with_arg(request, case.position, "1.5"))
    except redis.ResponseError as exc:
        reply = exc

    applied = isinstance(reply, list) and reply[0] == 1
    if not applied:
        assert keyspace(ff_redis) == before, f"rejected ({reply}) after a partial write"
        assert isinstance(reply, list), f"a Lua runtime error instead of an error code: {reply}"
        assert reply[:2] == [0, b"invalid_input"]


# -- create: dedup TTL, policy JSON and capability lists ------------------------------------------


@pytest.mark.parametrize("ttl", ["1.5", "86400000.25", "abc"])
def test_create_with_a_non_integer_dedup_ttl_is_rejected_and_writes_nothing(engine, ff_redis, ttl):
    request = create_request(engine, idempotency_key="order-17")
    before = keyspace(ff_redis)

    reply = raw_fcall(ff_redis, request, with_arg(request, 9, ttl))

    assert keyspace(ff_redis) == before
    assert reply[:2] == [0, b"invalid_input"]
    with pytest.raises(ValidationError) as raised:
        request.interpret(reply)
    assert "dedup_ttl_ms" in raised.value.details[0]
    assert ttl in raised.value.details[0]


@pytest.mark.parametrize(
    ("policy_json", "code", "detail"),
    [
        ("{not json", "invalid_policy_json", "malformed"),
        ('{"retry_policy": {"max_retries": 3}', "invalid_policy_json", "malformed"),
        ("{'single': 'quotes'}", "invalid_policy_json", "malformed"),
        ('{"routing_requirements": null}', "invalid_policy_json", "routing_requirements:not_object"),
        ('{"routing_requirements": "gpu"}', "invalid_policy_json", "routing_requirements:not_object"),
        ('{"routing_requirements": 1}', "invalid_policy_json", "routing_requirements:not_object"),
        ('{"routing_requirements": true}', "invalid_policy_json", "routing_requirements:not_object"),
        ('{"routing_requirements": {"required_capabilities": "gpu"}}', "invalid_capabilities", "required:not_array"),
        ('{"routing_requirements": {"required_capabilities": null}}', "invalid_capabilities", "required:not_array"),
        ('{"routing_requirements": {"required_capabilities": 7}}', "invalid_capabilities", "required:not_array"),
        (
            '{"routing_requirements": {"required_capabilities": ["gpu", 7]}}',
            "invalid_capabilities",
            "required:non_string_token",
        ),
        (
            '{"routing_requirements": {"required_capabilities": [["gpu"]]}}',
            "invalid_capabilities",
            "required:non_string_token",
        ),
        (
            '{"routing_requirements": {"required_capabilities": ["gpu", ""]}}',
            "invalid_capabilities",
            "required:empty_token",
        ),
        (
            '{"routing_requirements": {"required_capabilities": ["gpu,cuda"]}}',
            "invalid_capabilities",
            "required:comma_in_token",
        ),
        (
            '{"routing_requirements": {"required_capabilities": ["gpu cuda"]}}',
            "invalid_capabilities",
            "required:control_or_whitespace",
        ),
        (
            '{"routing_requirements": {"required_capabilities": ["gpu\\tcuda"]}}',
            "invalid_capabilities",
            "required:control_or_whitespace",
        ),
        (
            '{"routing_requirements": {"required_capabilities": ["gpu\\u007f"]}}',
            "invalid_capabilities",
            "required:control_or_whitespace",
        ),
        (
            '{"routing_requirements": {"required_capabilities": ["\\u0001gpu"]}}',
            "invalid_capabilities",
            "required:control_or_whitespace",
        ),
    ],
)
def test_create_with_invalid_policy_json_is_rejected_and_writes_nothing(engine, ff_redis, policy_json, code, detail):
    request = create_request(engine, policy_json=policy_json, idempotency_key="k-1", tags={"app.owner": "me"})
    before = keyspace(ff_redis)

    with pytest.raises(ValidationError) as raised:
        engine.call(request)

    assert raised.value.code == code
    assert raised.value.details == [detail]
    assert raised.value.function == "ff_create_execution"
    assert detail in str(raised.value)
    assert keyspace(ff_redis) == before


@pytest.mark.parametrize(
    ("capabilities", "detail"),
    [
        ([f"cap-{i:03d}" for i in range(257)], "required:too_many_tokens"),
        ([f"c{i}" for i in range(1000)], "required:too_many_tokens"),
        (["x" * 4097], "required:too_many_bytes"),
        ([f"capability-{i:03d}-{'y' * 20}" for i in range(200)], "required:too_many_bytes"),
        (["gpu", "a,b"], "required:comma_in_token"),
        (["gpu", "has space"], "required:control_or_whitespace"),
        (["gpu", ""], "required:empty_token"),
    ],
    ids=["257-tokens", "1000-tokens", "one-4097-byte-token", "200-tokens-over-4096-bytes", "comma", "space", "empty"],
)
def test_submit_with_oversized_or_invalid_capabilities_is_rejected_and_writes_nothing(
    engine, ff_redis, capabilities, detail
):
    policy = ExecutionPolicy(routing_requirements=RoutingRequirements(required_capabilities=capabilities))
    before = keyspace(ff_redis)

    with pytest.raises(ValidationError) as raised:
        engine.submit(LANE, b"payload", policy=policy, idempotency_key="caps-1")

    assert raised.value.code == "invalid_capabilities"
    assert raised.value.details == [detail]
    assert keyspace(ff_redis) == before


def test_rejected_submit_leaves_no_alias_pointing_at_a_missing_execution(engine, ff_redis):
    policy = ExecutionPolicy(routing_requirements=RoutingRequirements(required_capabilities=["gpu,cuda"]))
    before = keyspace(ff_redis)

    with pytest.raises(ValidationError):
        engine.submit(LANE, b"payload", policy=policy, alias="celery-task-1")

    assert engine.resolve("celery-task-1") is None
    assert keyspace(ff_redis) == before


@pytest.mark.parametrize(
    "capabilities",
    [[f"cap-{i:03d}" for i in range(256)], ["x" * 4096]],
    ids=["exactly-256-tokens", "exactly-4096-bytes"],
)
def test_capability_lists_at_the_limits_are_accepted(engine, capabilities):
    policy = ExecutionPolicy(routing_requirements=RoutingRequirements(required_capabilities=capabilities))
    created = engine.submit(LANE, b"payload", policy=policy)
    stored = engine.read_core(created.execution_id, "required_capabilities")["required_capabilities"]
    assert stored == ",".join(sorted(capabilities))


# -- tags -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", ["Celery.task", "celery", "celery.", "celery..task", "1celery.task", "celery-app.task", "_x.y", ""]
)
def test_set_tags_with_a_key_outside_the_namespace_rule_is_rejected_and_writes_nothing(engine, ff_redis, key):
    eid = engine.submit(LANE, b"payload", tags={"app.owner": "alice"}).execution_id
    before = keyspace(ff_redis)

    with pytest.raises(ValidationError) as raised:
        engine.set_tags(eid, {"app.valid": "1", key: "value"})

    assert raised.value.code == "invalid_tag_key"
    assert raised.value.details == [key]
    assert keyspace(ff_redis) == before
    assert engine.snapshot(eid).tags == {"app.owner": "alice"}


def test_set_tags_with_no_pairs_is_rejected_as_invalid_input(engine, ff_redis):
    eid = submit(engine)
    before = keyspace(ff_redis)
    with pytest.raises(ValidationError) as raised:
        engine.set_tags(eid, {})
    assert raised.value.code == "invalid_input"
    assert raised.value.details == ["tags must be non-empty even-length key/value pairs"]
    assert keyspace(ff_redis) == before


def test_set_tags_with_an_odd_argument_list_is_rejected_as_invalid_input(engine, ff_redis):
    eid = submit(engine)
    request = fn.SetExecutionTags(execution_id=eid, tags={"app.a": "1"})
    before = keyspace(ff_redis)

    reply = raw_fcall(ff_redis, request, ["app.a", "1", "app.b"])

    assert reply == [0, b"invalid_input", b"tags must be non-empty even-length key/value pairs"]
    assert keyspace(ff_redis) == before
    with pytest.raises(ValidationError):
        request.interpret(reply)


def test_set_tags_on_a_missing_execution_is_not_found_and_writes_nothing(engine, ff_redis):
    before = keyspace(ff_redis)
    with pytest.raises(NotFoundError) as raised:
        engine.set_tags(new_execution_id(engine), {"app.a": "1"})
    assert raised.value.code == "execution_not_found"
    assert raised.value.entity == "execution"
    assert keyspace(ff_redis) == before


# -- fail with a retry policy that cannot be evaluated --------------------------------------------


@pytest.mark.parametrize(
    ("retry_policy_json", "detail"),
    [
        ('{"max_retries": "many"}', "retry_policy.max_retries must be a number"),
        ('{"max_retries": null}', "retry_policy.max_retries must be a number"),
        ('{"max_retries": [3]}', "retry_policy.max_retries must be a number"),
        ('{"max_retries": {"n": 3}}', "retry_policy.max_retries must be a number"),
        ('{"max_retries": 3, "backoff": 500}', "retry_policy.backoff must be an object"),
        ('{"max_retries": 3, "backoff": true}', "retry_policy.backoff must be an object"),
        ('{"max_retries": 3, "backoff": null}', "retry_policy.backoff must be an object"),
    ],
)
def test_fail_with_an_unevaluable_retry_policy_is_rejected_and_the_lease_survives(
    engine, ff_redis, retry_policy_json, detail
):
    claimed = claim(engine)
    keys = ExecKeys(claimed.execution_id)
    core_before = ff_redis.hgetall(keys.core)
    attempt_before = ff_redis.hgetall(keys.attempt(claimed.lease.attempt_index))
    before = keyspace(ff_redis)

    with pytest.raises(ValidationError) as raised:
        engine.call(fn.FailExecution(**holder(claimed), failure_reason="boom", retry_policy_json=retry_policy_json))

    assert raised.value.code == "invalid_input"
    assert raised.value.details == [detail]
    assert ff_redis.hgetall(keys.core) == core_before
    assert ff_redis.hgetall(keys.attempt(claimed.lease.attempt_index)) == attempt_before
    assert keyspace(ff_redis) == before
    core = engine.read_core(claimed.execution_id, "lifecycle_phase", "ownership_state", "current_lease_id")
    assert core == {
        "lifecycle_phase": "active",
        "ownership_state": "leased",
        "current_lease_id": claimed.lease.lease_id,
    }

    # nothing was lost: the same lease can still end the attempt
    engine.call(fn.CompleteExecution(**holder(claimed), result_payload=b"done"))
    assert engine.snapshot(claimed.execution_id).public_state == "completed"


# -- claim with a bad attempt policy ----------------------------------------------------------


# A JSON array decodes to a Lua table and is flattened like an object, as FlowFabric does.
@pytest.mark.parametrize("attempt_policy_json", ["{not json", '"text"', "42", "true", "null"])
def test_claim_with_a_non_object_attempt_policy_is_rejected_and_leaves_grant_and_execution_untouched(
    engine, ff_redis, attempt_policy_json
):
    eid = granted(engine)
    keys = ExecKeys(eid)
    before = keyspace(ff_redis)

    with pytest.raises(ValidationError) as raised:
        engine.call(claim_request(eid, attempt_policy_json=attempt_policy_json))

    assert raised.value.code == "invalid_input"
    assert raised.value.details == ["attempt_policy_json must be a JSON object"]
    assert keyspace(ff_redis) == before
    assert ff_redis.hget(keys.claim_grant, "worker_id") == WORKER.encode()
    assert engine.read_core(eid, "public_state", "total_attempt_count") == {
        "public_state": "waiting",
        "total_attempt_count": "0",
    }

    # the untouched grant still works for a well-formed claim
    lease = engine.call(claim_request(eid, attempt_policy_json='{"model": "small"}'))
    assert lease.attempt_type == "initial"
    assert ff_redis.hgetall(keys.attempt_policy(0)) == {b"model": b"small"}


# -- replies outside the contract and Lua runtime errors ----------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        [0, b"no_such_code", b"index drift"],
        [0, b"no_such_code:7c9e6679-7425-40de-944b-e07fc1f90ae7"],
    ],
)
def test_unknown_error_code_in_a_reply_is_a_non_retryable_transport_error(raw):
    with pytest.raises(TransportError) as raised:
        fn.decode_reply(raw, "ff_create_execution", f"{{fp:86}}:{UUID}")
    error = raised.value
    assert error.retryable is False
    assert error.is_retryable is False
    assert error.error_class is ErrorClass.TERMINAL
    assert error.function == "ff_create_execution"
    assert raw[1].decode().partition(":")[0] in str(error)


@pytest.mark.parametrize("raw", [b"OK", None, [], [1], [b"1", b"OK"], "34", 1])
def test_reply_that_is_not_a_status_array_is_a_non_retryable_transport_error(raw):
    with pytest.raises(TransportError) as raised:
        fn.decode_reply(raw, "ff_complete_execution")
    assert raised.value.retryable is False
    assert raised.value.error_class is ErrorClass.TERMINAL
    assert "unexpected reply" in str(raised.value)


def test_known_error_code_is_not_reported_as_a_transport_error():
    with pytest.raises(EngineError) as raised:
        fn.decode_reply([0, b"invalid_input", b"priority must be a number, got: x"], "ff_create_execution")
    assert type(raised.value) is ValidationError


def test_lua_runtime_error_on_a_corrupt_lease_surfaces_as_a_terminal_transport_error(engine, ff_redis):
    """An active execution whose lease_expires_at is empty makes complete raise a Lua error
    (spec §4); it must reach the caller as a clear, non-retryable error and write nothing."""
    claimed = claim(engine)
    ff_redis.hset(ExecKeys(claimed.execution_id).core, "lease_expires_at", "")
    before = keyspace(ff_redis)

    with pytest.raises(TransportError) as raised:
        engine.call(fn.CompleteExecution(**holder(claimed), result_payload=b"done"))

    error = raised.value
    assert error.retryable is False
    assert error.error_class is ErrorClass.TERMINAL
    assert error.function == "ff_complete_execution"
    assert "ff_complete_execution" in str(error)
    assert "user_function" in str(error)
    assert keyspace(ff_redis) == before


def test_complete_of_a_missing_execution_is_not_found_and_writes_nothing(engine, ff_redis):
    claimed = claim(engine)
    ghost = Claimed(new_execution_id(engine), claimed.lease)
    before = keyspace(ff_redis)
    with pytest.raises(NotFoundError) as raised:
        engine.call(fn.CompleteExecution(**holder(ghost)))
    assert raised.value.code == "execution_not_found"
    assert keyspace(ff_redis) == before


def test_keyspace_helper_sees_every_kind_of_change(ff_redis):
    """Guard for the helper itself: it must notice value, type and TTL changes."""
    ff_redis.hset("h", "f", "1")
    ff_redis.zadd("z", {"m": 1})
    ff_redis.xadd("s", {"e": "1"})
    base = keyspace(ff_redis)
    for mutate in (
        lambda: ff_redis.hset("h", "f", "2"),
        lambda: ff_redis.zadd("z", {"m": 2}),
        lambda: ff_redis.xadd("s", {"e": "2"}),
        lambda: ff_redis.pexpire("h", 60_000),
        lambda: ff_redis.set("new", json.dumps({})),
    ):
        mutate()
        assert keyspace(ff_redis) != base
        base = keyspace(ff_redis)
