"""Contract tests: suspension, waitpoints and signals.

Covers ff_suspend_execution, ff_create_pending_waitpoint, ff_buffer_signal_for_pending_waitpoint,
ff_deliver_signal, ff_claim_resumed_execution (the resume path after a signal),
ff_resume_execution, ff_expire_suspension and ff_close_waitpoint against
/work/shared/spec/flowfabric-suspend-budget-stream-flow.md (Errata S1/S2, §0, §1.1, §2, §4.1-§4.10,
§10, §11), on a real server. The HMAC keystore and token checks themselves are pinned in
test_waitpoint_hmac.py; here every test starts with partition 86's keystore seeded (kid ``k1``).

Exact reply shapes are read with a raw FCALL; error codes go through ``Engine.call`` and its
typed errors. State no FCALL here produces (an open suspension on an active execution, a
closed condition of a suspended one, ...) is written with plain HSET/ZADD.

Intentional deviations of ours from FlowFabric's reference, pinned as OUR behaviour (each test
says so): malformed numeric ARGV and a resume_condition_json that is not a JSON object answer
``invalid_input`` before anything is written (the reference raises a Lua error);
ff_expire_suspension on an empty ``timeout_at`` answers ``not_yet_due`` (Errata S1: the
reference raises); an empty ``dedup_ttl_ms`` on deliver/buffer disables dedup.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from ff_celery.engine import functions as fn
from ff_celery.engine.core.engine import Engine
from ff_celery.engine.core.errors import EngineError
from ff_celery.engine.core.ids import ExecutionId, new_uuid
from ff_celery.engine.core.keys import ExecKeys, PartitionKeys

from .support import (
    LANE,
    PARTITION,
    create,
    expect_error,
    fence_of,
    grant_and_claim,
    hash_of,
    keyspace,
    raw,
    server_ms,
    seven,
)

IDX = PartitionKeys(PARTITION)
WORKER, WIID = "worker-a", "worker-a-1"
KID = "k1"
SECRET = "00112233445566778899aabbccddeeff" * 2
NO_TIMEOUT_SCORE = 9999999999999
WEIGHT = 10**12  # eligible score = -(priority * 1e12) + created_at
DUE_IN_MS = 20
DUE_WAIT_S = 0.04
BUFFERED = "buffered_for_pending_waitpoint"
SIGNAL_SUMMARY = '{"total_count":0,"matched_count":0,"signal_names":[]}'

LEASE_OWNER = ("current_lease_id", "current_worker_id", "current_worker_instance_id")
LEASE_TIMING = ("lease_expires_at", "lease_last_renewed_at", "lease_renewal_deadline")

ACTIVE_LEASED = ("active", "leased", "not_applicable", "none", "none", "running_attempt", "active")
SUSPENDED = (
    "suspended",
    "unowned",
    "not_applicable",
    "waiting_for_signal",
    "none",
    "attempt_interrupted",
    "suspended",
)
RESUMED = ("runnable", "unowned", "eligible_now", "waiting_for_worker", "none", "attempt_interrupted", "waiting")
RESUME_DELAYED = (
    "runnable",
    "unowned",
    "not_eligible_until_time",
    "waiting_for_resume_delay",
    "none",
    "attempt_interrupted",
    "delayed",
)
SIGNAL_FIELDS = [
    "signal_id",
    "target_execution_id",
    "target_waitpoint_id",
    "target_scope",
    "signal_name",
    "signal_category",
    "source_type",
    "source_identity",
    "correlation_id",
    "idempotency_key",
    "created_at",
    "accepted_at",
    "matched_waitpoint_id",
    "payload_encoding",
    "observed_effect",
]
STREAM_ENTRY_FIELDS = [
    "signal_id",
    "signal_name",
    "signal_category",
    "source_type",
    "source_identity",
    "matched",
    "accepted_at",
]
DELIVERY_FIELDS = ["signal_id", "execution_id", "waitpoint_id", "source_identity", "effect", "delivered_at_ms"]


# -- helpers ------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def keystore(ff_redis: redis.Redis) -> None:
    """Partition 86's waitpoint HMAC keystore, seeded as FlowFabric's server seeds it."""
    ff_redis.hset(IDX.waitpoint_hmac, mapping={"current_kid": KID, f"secret:{KID}": SECRET})


@dataclass(frozen=True)
class Claimed:
    """An execution under a lease, as its holder knows it."""

    eid: ExecutionId
    fence: fn.Fence
    attempt_index: int

    @property
    def keys(self) -> ExecKeys:
        return ExecKeys(self.eid)


def core(engine: Engine, eid: ExecutionId) -> dict[str, str]:
    return engine.read_core(eid)


def entries(r: redis.Redis, key: str) -> list[dict[str, str]]:
    """Stream entries in order; each dict keeps the field order as written."""
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in r.xrange(key)]


def members(r: redis.Redis, key: str) -> set[str]:
    return {m.decode() for m in r.smembers(key)}


def sign(wp_id: str, wp_key: str, created_at: str | int, secret: str = SECRET, kid: str = KID) -> str:
    """The waitpoint token, computed independently of the Lua (§3.1)."""
    message = f"{wp_id}|{wp_key}|{created_at}".encode()
    return f"{kid}:{hmac.new(bytes.fromhex(secret), message, hashlib.sha1).hexdigest()}"


def grant(engine: Engine, eid: ExecutionId) -> None:
    engine.call(fn.IssueClaimGrant(execution_id=eid, worker_id=WORKER, worker_instance_id=WIID, lane_id=LANE))


def claimed(
    engine: Engine, *, ttl_ms: int = 30_000, attempt_timeout_ms: int | None = None, priority: float = 0
) -> Claimed:
    """A fresh execution claimed by worker-a (attempt 0, epoch 1)."""
    eid = create(engine, priority=priority)
    lease, fence = grant_and_claim(
        engine, eid, lane=LANE, worker=(WORKER, WIID), ttl_ms=ttl_ms, attempt_timeout_ms=attempt_timeout_ms
    )
    return Claimed(eid, fence, lease.attempt_index)


def claim_resumed(engine: Engine, eid: ExecutionId, *, ttl_ms: int = 30_000) -> Claimed:
    """Grant and claim a resumed execution's interrupted attempt again."""
    grant(engine, eid)
    lease = engine.call(
        fn.ClaimResumedExecution(
            execution_id=eid,
            worker_id=WORKER,
            worker_instance_id=WIID,
            lane_id=LANE,
            lease_id=new_uuid(),
            lease_ttl_ms=ttl_ms,
            attempt_index=int(core(engine, eid)["current_attempt_index"]),
        )
    )
    return Claimed(eid, fence_of(lease), lease.attempt_index)


def names(*signal_names: str, match: str = "any", minimum: int = 1) -> str:
    return fn.ResumeCondition(signal_names=signal_names, match=match, minimum=minimum).to_json()  # type: ignore[arg-type]


ANY_SIGNAL = names()


def composite(tree: dict[str, Any], v: int = 1) -> str:
    return json.dumps(
        {
            "v": v,
            "composite": True,
            "timeout_behavior": "fail",
            "allow_operator_override": True,
            "condition_type": "composite",
            "required_signal_names": [],
            "signal_match_mode": "composite",
            "minimum_signal_count": 1,
            "tree": tree,
        }
    )


def single(path: str, key: str, matcher: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"kind": "Single", "path": path, "waitpoint_key": key, "matcher": matcher}


def all_of(path: str, *children: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "AllOf", "path": path, "members": list(children)}


def count(path: str, n: int, keys: list[str], kind: str = "DistinctWaitpoints", matcher: Any = None) -> dict[str, Any]:
    return {"kind": "Count", "path": path, "n": n, "count_kind": kind, "matcher": matcher, "waitpoints": keys}


_KEEP: Any = object()


def suspend_request(
    c: Claimed,
    *,
    waitpoint_id: str | None = None,
    waitpoint_key: str | None = None,
    condition: str = ANY_SIGNAL,
    timeout_at: int | None = None,
    behavior: str = "fail",
    use_pending: bool = False,
    idem: str = "",
    extras: tuple[tuple[str, str], ...] = (),
    reason: str = "waiting_for_signal",
    suspension_id: str | None = None,
    fence: Any = _KEEP,
    attempt_index: int | None = None,
) -> fn.SuspendExecution:
    wp_id = waitpoint_id or new_uuid()
    if waitpoint_key is None:
        waitpoint_key = "" if use_pending else f"wpk:{wp_id}"
    return fn.SuspendExecution(
        execution_id=c.eid,
        fence=c.fence if fence is _KEEP else fence,
        attempt_index=c.attempt_index if attempt_index is None else attempt_index,
        lane_id=LANE,
        worker_instance_id=WIID,
        suspension_id=suspension_id or new_uuid(),
        waitpoint_id=wp_id,
        waitpoint_key=waitpoint_key,
        reason_code=reason,  # type: ignore[arg-type]
        timeout_at=timeout_at,
        resume_condition_json=condition,
        use_pending_waitpoint=use_pending,
        timeout_behavior=behavior,  # type: ignore[arg-type]
        idempotency_key=idem,
        extra_waitpoints=extras,
    )


def suspended(engine: Engine, **kw: Any) -> tuple[Claimed, fn.SuspendExecution, fn.Suspension]:
    """A claimed execution suspended on a fresh waitpoint."""
    c = claimed(engine)
    request = suspend_request(c, **kw)
    return c, request, engine.call(request)


def deliver(
    eid: ExecutionId, ticket: fn.WaitpointTicket | tuple[str, str], name: str = "go", **extra: Any
) -> fn.DeliverSignal:
    """A signal to a waitpoint, with its token (a ticket, or an explicit (id, token))."""
    wp_id, token = (ticket.waitpoint_id, ticket.token) if isinstance(ticket, fn.WaitpointTicket) else ticket
    fields = {"signal_id": new_uuid(), "waitpoint_token": token, **extra}
    return fn.DeliverSignal(execution_id=eid, lane_id=LANE, waitpoint_id=wp_id, signal_name=name, **fields)


def buffer(
    eid: ExecutionId, ticket: fn.WaitpointTicket | tuple[str, str], name: str = "go", **extra: Any
) -> fn.BufferSignal:
    wp_id, token = (ticket.waitpoint_id, ticket.token) if isinstance(ticket, fn.WaitpointTicket) else ticket
    fields = {"signal_id": new_uuid(), "waitpoint_token": token, **extra}
    return fn.BufferSignal(execution_id=eid, waitpoint_id=wp_id, signal_name=name, **fields)


def pending(engine: Engine, c: Claimed, *, expires_in_ms: int = 60_000, key: str | None = None) -> fn.WaitpointTicket:
    wp_id = new_uuid()
    return engine.call(
        fn.CreatePendingWaitpoint(
            execution_id=c.eid,
            attempt_index=c.attempt_index,
            waitpoint_id=wp_id,
            waitpoint_key=key if key is not None else f"wpk:{wp_id}",
            expires_at=engine.server_time_ms() + expires_in_ms,
        )
    )


def resume_request(eid: ExecutionId, waitpoint_id: str, delay_ms: int = 0) -> fn.ResumeExecution:
    return fn.ResumeExecution(execution_id=eid, lane_id=LANE, waitpoint_id=waitpoint_id, resume_delay_ms=delay_ms)


def expire_request(eid: ExecutionId, waitpoint_id: str, attempt_index: int = 0) -> fn.ExpireSuspension:
    return fn.ExpireSuspension(execution_id=eid, lane_id=LANE, waitpoint_id=waitpoint_id, attempt_index=attempt_index)


def due(engine: Engine, r: redis.Redis, behavior: str, **kw: Any) -> tuple[Claimed, fn.Suspension]:
    """A suspension whose timeout (a few tens of ms ahead) has passed."""
    c = claimed(engine, **kw.pop("claim", {}))
    request = suspend_request(c, timeout_at=server_ms(r) + DUE_IN_MS, behavior=behavior, **kw)
    suspension = engine.call(request)
    time.sleep(DUE_WAIT_S)
    return c, suspension


def waitpoint_hash(r: redis.Redis, c: Claimed, wp_id: str) -> dict[str, str]:
    return hash_of(r, c.keys.waitpoint(wp_id))


def condition_hash(r: redis.Redis, c: Claimed, wp_id: str) -> dict[str, str]:
    return hash_of(r, c.keys.waitpoint_condition(wp_id))


# -- ff_suspend_execution: success and record shapes (§4.1, §2) ----------------------------------


def test_suspend_key_and_argv_layout_is_18_plus_3e_keys_and_20_plus_2e_args(ff_engine):
    c = claimed(ff_engine)
    request = suspend_request(
        c, waitpoint_id="wp", waitpoint_key="key", idem="i", extras=(("x1", "xk1"), ("x2", "xk2")), timeout_at=5
    )
    keys = request.keys()
    assert len(keys) == 18 + 3 * 2
    assert keys[:18] == [
        c.keys.core,
        c.keys.attempt(0),
        c.keys.lease_current,
        c.keys.lease_history,
        IDX.lease_expiry,
        IDX.worker_leases(WIID),
        c.keys.suspension_current,
        "ff:wp:{fp:86}:wp",
        "ff:wp:{fp:86}:wp:signals",
        IDX.suspension_timeout,
        IDX.pending_waitpoint_expiry,
        IDX.active(LANE),
        IDX.suspended(LANE),
        c.keys.waitpoints,
        "ff:wp:{fp:86}:wp:condition",
        IDX.attempt_timeout,
        "ff:sec:{fp:86}:waitpoint_hmac",
        f"ff:dedup:suspend:{{fp:86}}:{c.eid}:i",
    ]
    assert keys[18:] == [
        "ff:wp:{fp:86}:x1",
        "ff:wp:{fp:86}:x1:signals",
        "ff:wp:{fp:86}:x1:condition",
        "ff:wp:{fp:86}:x2",
        "ff:wp:{fp:86}:x2:signals",
        "ff:wp:{fp:86}:x2:condition",
    ]
    argv = request.argv()
    assert len(argv) == 20 + 2 * 2
    assert argv[:8] == [c.eid, "0", c.fence.attempt_id, c.fence.lease_id, "1", request.suspension_id, "wp", "key"]
    assert argv[10] == "5" and argv[14] == "" and argv[16:] == ["1000", "i", "60005", "2", "x1", "xk1", "x2", "xk2"]
    assert suspend_request(c).keys()[17] == "ff:noop:{fp:86}"


def test_suspend_replies_ok_with_an_independently_verifiable_token(ff_engine, ff_redis):
    c = claimed(ff_engine)
    request = suspend_request(c, waitpoint_id="wp-1", waitpoint_key="wpk:one")
    reply = raw(ff_redis, request)
    created_at = waitpoint_hash(ff_redis, c, "wp-1")["created_at"]
    assert reply == [1, "OK", request.suspension_id, "wp-1", "wpk:one", sign("wp-1", "wpk:one", created_at), "0"]
    assert created_at == core(ff_engine, c.eid)["last_transition_at"]


def test_suspend_parks_exec_core_and_keeps_the_epoch_and_attempt_id(ff_engine):
    c = claimed(ff_engine)
    before = core(ff_engine, c.eid)
    request = suspend_request(c, waitpoint_id="wp-1")
    ff_engine.call(request)
    state = core(ff_engine, c.eid)
    now = state["last_transition_at"]
    assert seven(state) == SUSPENDED
    assert state["blocking_detail"] == "suspended: waitpoint wp-1 awaiting waiting_for_signal"
    assert state["current_suspension_id"] == request.suspension_id
    assert state["current_waitpoint_id"] == "wp-1"
    for name in (*LEASE_OWNER, *LEASE_TIMING):
        assert state[name] == "", name
    assert (state["current_lease_epoch"], state["current_attempt_id"]) == ("1", c.fence.attempt_id)
    assert state["current_attempt_index"] == "0"
    assert state["lease_acquired_at"] == before["lease_acquired_at"] != ""
    assert state["last_mutation_at"] == now and int(now) >= int(before["last_mutation_at"])


@pytest.mark.parametrize(
    ("reason", "blocking"),
    [
        ("waiting_for_signal", "waiting_for_signal"),
        ("waiting_for_approval", "waiting_for_approval"),
        ("waiting_for_callback", "waiting_for_callback"),
        ("waiting_for_tool_result", "waiting_for_tool_result"),
        ("waiting_for_operator_review", "paused_by_operator"),
        ("paused_by_policy", "paused_by_policy"),
        ("paused_by_budget", "waiting_for_budget"),
        ("step_boundary", "waiting_for_signal"),
        ("manual_pause", "paused_by_operator"),
        ("something_else", "waiting_for_signal"),
    ],
)
def test_suspend_maps_the_reason_code_to_the_blocking_reason(ff_engine, ff_redis, reason, blocking):
    c = claimed(ff_engine)
    request = suspend_request(c, waitpoint_id="wp-1")
    argv = request.argv()
    argv[8] = reason
    assert raw(ff_redis, request, argv)[:2] == [1, "OK"]
    state = core(ff_engine, c.eid)
    assert state["blocking_reason"] == blocking
    assert state["blocking_detail"] == f"suspended: waitpoint wp-1 awaiting {reason}"
    assert hash_of(ff_redis, c.keys.suspension_current)["reason_code"] == reason


def test_suspend_writes_a_fresh_active_waitpoint_hash(ff_engine, ff_redis):
    c = claimed(ff_engine)
    timeout_at = server_ms(ff_redis) + 60_000
    request = suspend_request(c, waitpoint_id="wp-1", waitpoint_key="wpk:one", timeout_at=timeout_at)
    suspension = ff_engine.call(request)
    now = core(ff_engine, c.eid)["last_transition_at"]
    assert waitpoint_hash(ff_redis, c, "wp-1") == {
        "waitpoint_id": "wp-1",
        "execution_id": c.eid,
        "attempt_index": "0",
        "suspension_id": request.suspension_id,
        "waitpoint_key": "wpk:one",
        "waitpoint_token": suspension.waitpoint.token,
        "state": "active",
        "created_at": now,
        "activated_at": now,
        "expires_at": str(timeout_at),
        "signal_count": "0",
        "matched_signal_count": "0",
        "last_signal_at": "",
    }
    assert members(ff_redis, c.keys.waitpoints) == {"wp-1"}


def test_suspend_without_a_timeout_leaves_the_waitpoint_expiry_empty(ff_engine, ff_redis):
    c, _, _ = suspended(ff_engine, waitpoint_id="wp-1")
    assert waitpoint_hash(ff_redis, c, "wp-1")["expires_at"] == ""


def test_suspend_writes_the_matcher_condition_hash(ff_engine, ff_redis):
    c, _, _ = suspended(ff_engine, waitpoint_id="wp-1", condition=names("a", "b", match="all"))
    now = core(ff_engine, c.eid)["last_transition_at"]
    assert condition_hash(ff_redis, c, "wp-1") == {
        "condition_type": "signal_set",
        "match_mode": "all",
        "minimum_signal_count": "1",
        "total_matchers": "2",
        "satisfied_count": "0",
        "closed": "0",
        "updated_at": now,
        "matcher:0:name": "a",
        "matcher:0:satisfied": "0",
        "matcher:0:signal_id": "",
        "matcher:1:name": "b",
        "matcher:1:satisfied": "0",
        "matcher:1:signal_id": "",
    }


def test_suspend_with_no_signal_names_writes_one_wildcard_matcher(ff_engine, ff_redis):
    c, _, _ = suspended(ff_engine, waitpoint_id="wp-1", condition=ANY_SIGNAL)
    condition = condition_hash(ff_redis, c, "wp-1")
    assert condition["total_matchers"] == "1"
    assert (condition["matcher:0:name"], condition["matcher:0:satisfied"]) == ("", "0")
    assert "matcher:1:name" not in condition


def test_suspend_condition_defaults_to_signal_set_any_minimum_one(ff_engine, ff_redis):
    c, _, _ = suspended(ff_engine, waitpoint_id="wp-1", condition="{}")
    condition = condition_hash(ff_redis, c, "wp-1")
    assert (condition["condition_type"], condition["match_mode"], condition["minimum_signal_count"]) == (
        "signal_set",
        "any",
        "1",
    )
    assert (condition["total_matchers"], condition["matcher:0:name"]) == ("1", "")


def test_suspend_keeps_duplicate_signal_names_as_separate_matchers(ff_engine, ff_redis):
    c, _, _ = suspended(ff_engine, waitpoint_id="wp-1", condition=names("x", "x", match="all"))
    condition = condition_hash(ff_redis, c, "wp-1")
    assert condition["total_matchers"] == "2"
    assert condition["matcher:0:name"] == condition["matcher:1:name"] == "x"


def test_suspend_writes_the_suspension_record(ff_engine, ff_redis):
    c = claimed(ff_engine)
    timeout_at = server_ms(ff_redis) + 60_000
    request = suspend_request(
        c, waitpoint_id="wp-1", waitpoint_key="wpk:one", timeout_at=timeout_at, behavior="auto_resume"
    )
    request = request.model_copy(update={"continuation_metadata_pointer": "cont://1", "requested_by": "operator"})
    ff_engine.call(request)
    now = core(ff_engine, c.eid)["last_transition_at"]
    assert hash_of(ff_redis, c.keys.suspension_current) == {
        "suspension_id": request.suspension_id,
        "execution_id": c.eid,
        "attempt_index": "0",
        "waitpoint_id": "wp-1",
        "waitpoint_key": "wpk:one",
        "additional_waitpoints_json": "[]",
        "reason_code": "waiting_for_signal",
        "requested_by": "operator",
        "created_at": now,
        "timeout_at": str(timeout_at),
        "timeout_behavior": "auto_resume",
        "resume_condition_json": ANY_SIGNAL,
        "resume_policy_json": request.resume_policy_json,
        "continuation_metadata_pointer": "cont://1",
        "buffered_signal_summary_json": SIGNAL_SUMMARY,
        "last_signal_at": "",
        "satisfied_at": "",
        "closed_at": "",
        "close_reason": "",
    }


def test_suspend_marks_the_attempt_suspended(ff_engine, ff_redis):
    c, request, _ = suspended(ff_engine)
    attempt = hash_of(ff_redis, c.keys.attempt(0))
    now = core(ff_engine, c.eid)["last_transition_at"]
    assert (attempt["attempt_state"], attempt["suspended_at"], attempt["suspension_id"]) == (
        "suspended",
        now,
        request.suspension_id,
    )


def test_suspend_releases_the_lease_and_indexes_the_suspension(ff_engine, ff_redis):
    c = claimed(ff_engine, attempt_timeout_ms=60_000)
    assert ff_redis.zscore(IDX.attempt_timeout, c.eid) is not None
    timeout_at = server_ms(ff_redis) + 60_000
    ff_engine.call(suspend_request(c, timeout_at=timeout_at))
    assert ff_redis.exists(c.keys.lease_current) == 0
    for key in (IDX.lease_expiry, IDX.active(LANE), IDX.attempt_timeout):
        assert ff_redis.zscore(key, c.eid) is None, key
    assert not ff_redis.sismember(IDX.worker_leases(WIID), c.eid)
    assert ff_redis.zscore(IDX.suspended(LANE), c.eid) == timeout_at
    assert ff_redis.zscore(IDX.suspension_timeout, c.eid) == timeout_at
    now = core(ff_engine, c.eid)["last_transition_at"]
    event = entries(ff_redis, c.keys.lease_history)[-1]
    assert event == {
        "event": "released",
        "lease_id": c.fence.lease_id,
        "lease_epoch": "1",
        "attempt_index": "0",
        "attempt_id": c.fence.attempt_id,
        "reason": "suspend",
        "ts": now,
    }
    assert list(event) == ["event", "lease_id", "lease_epoch", "attempt_index", "attempt_id", "reason", "ts"]


def test_suspend_without_a_timeout_scores_the_suspended_set_9999999999999(ff_engine, ff_redis):
    c, _, _ = suspended(ff_engine)
    assert ff_redis.zscore(IDX.suspended(LANE), c.eid) == NO_TIMEOUT_SCORE
    assert ff_redis.zscore(IDX.suspension_timeout, c.eid) is None


def test_suspend_with_extra_waitpoints_mints_a_token_for_each_with_the_same_created_at(ff_engine, ff_redis):
    c = claimed(ff_engine)
    request = suspend_request(
        c, waitpoint_id="wp-a", waitpoint_key="key-a", extras=(("wp-b", "key-b"), ("wp-c", "key-c"))
    )
    reply = raw(ff_redis, request)
    now = core(ff_engine, c.eid)["last_transition_at"]
    assert reply == [
        1,
        "OK",
        request.suspension_id,
        "wp-a",
        "key-a",
        sign("wp-a", "key-a", now),
        "2",
        "wp-b",
        "key-b",
        sign("wp-b", "key-b", now),
        "wp-c",
        "key-c",
        sign("wp-c", "key-c", now),
    ]
    for wp_id, key in (("wp-b", "key-b"), ("wp-c", "key-c")):
        hash_ = waitpoint_hash(ff_redis, c, wp_id)
        assert hash_ == {
            "waitpoint_id": wp_id,
            "execution_id": c.eid,
            "attempt_index": "0",
            "suspension_id": request.suspension_id,
            "waitpoint_key": key,
            "waitpoint_token": sign(wp_id, key, now),
            "state": "active",
            "created_at": now,
            "activated_at": now,
            "expires_at": "",
            "signal_count": "0",
            "matched_signal_count": "0",
            "last_signal_at": "",
        }
        assert condition_hash(ff_redis, c, wp_id)["total_matchers"] == "1"
    assert members(ff_redis, c.keys.waitpoints) == {"wp-a", "wp-b", "wp-c"}
    record = hash_of(ff_redis, c.keys.suspension_current)
    assert json.loads(record["additional_waitpoints_json"]) == [
        {"waitpoint_id": "wp-b", "waitpoint_key": "key-b"},
        {"waitpoint_id": "wp-c", "waitpoint_key": "key-c"},
    ]


def test_suspend_reply_parses_into_a_suspension_with_extra_tickets(ff_engine):
    c = claimed(ff_engine)
    suspension = ff_engine.call(suspend_request(c, waitpoint_id="wp-a", extras=(("wp-b", "key-b"),)))
    assert suspension.waitpoint.waitpoint_id == "wp-a" and not suspension.already_satisfied
    assert [t.waitpoint_id for t in suspension.extra_waitpoints] == ["wp-b"]
    assert suspension.extra_waitpoints[0].token.startswith("k1:")


def test_suspend_with_a_composite_condition_writes_the_composite_hash_and_member_map(ff_engine, ff_redis):
    tree = all_of("", single("members[0]", "key-a"), count("members[1]", 1, ["key-b", "key-a"]))
    c, _, _ = suspended(
        ff_engine, waitpoint_id="wp-a", waitpoint_key="key-a", condition=composite(tree), extras=(("wp-b", "key-b"),)
    )
    now = core(ff_engine, c.eid)["last_transition_at"]
    for wp_id in ("wp-a", "wp-b"):
        condition = condition_hash(ff_redis, c, wp_id)
        assert json.loads(condition.pop("tree_json")) == tree
        assert condition == {
            "condition_type": "composite",
            "composite": "1",
            "match_mode": "composite",
            "minimum_signal_count": "1",
            "total_matchers": "0",
            "satisfied_count": "0",
            "closed": "0",
            "updated_at": now,
        }
    assert hash_of(ff_redis, c.keys.member_map) == {
        "wp:key-a:members[0]": "members[0]",
        "wp:key-a:members[1]": "members[1]",
        "wp:key-b:members[1]": "members[1]",
    }


# -- ff_suspend_execution: errors in check order (§4.1 steps 1-7) ------------------------------------


@pytest.mark.parametrize("extra", [("", "key-b"), ("wp-b", "")])
def test_suspend_with_an_empty_extra_id_or_key_answers_additional_waitpoint_binding_malformed(
    ff_engine, ff_redis, extra
):
    c = claimed(ff_engine)
    before = keyspace(ff_redis)
    expect_error(ff_engine, suspend_request(c, extras=(extra,)), "additional_waitpoint_binding_malformed", [])
    assert keyspace(ff_redis) == before


def test_a_malformed_extra_is_checked_before_the_execution_exists(ff_engine):
    c = Claimed(ExecutionId.mint(PARTITION), fn.Fence(lease_id="l", lease_epoch=1, attempt_id="a"), 0)
    expect_error(ff_engine, suspend_request(c, extras=(("", "k"),)), "additional_waitpoint_binding_malformed")


def test_a_malformed_extra_is_checked_before_the_dedup_replay(ff_engine):
    c = claimed(ff_engine)
    request = suspend_request(c, idem="once")
    ff_engine.call(request)
    malformed = request.model_copy(update={"extra_waitpoints": (("wp-x", ""),)})
    expect_error(ff_engine, malformed, "additional_waitpoint_binding_malformed")


def test_suspend_of_a_missing_execution_answers_execution_not_found(ff_engine):
    c = Claimed(ExecutionId.mint(PARTITION), fn.Fence(lease_id="l", lease_epoch=1, attempt_id="a"), 0)
    expect_error(ff_engine, suspend_request(c), "execution_not_found", [])


def test_suspend_without_a_fence_answers_fence_required(ff_engine, ff_redis):
    c = claimed(ff_engine)
    request = suspend_request(c)
    argv = request.argv()
    argv[2:5] = ["", "", ""]
    assert raw(ff_redis, request, argv) == [0, "fence_required"]
    assert seven(core(ff_engine, c.eid)) == ACTIVE_LEASED


@pytest.mark.parametrize(
    "given",
    [
        (True, False, False),
        (False, True, False),
        (False, False, True),
        (True, True, False),
        (True, False, True),
        (False, True, True),
    ],
)
def test_suspend_with_part_of_the_fence_answers_partial_fence_triple(ff_engine, ff_redis, given):
    c = claimed(ff_engine)
    request = suspend_request(c)
    argv = request.argv()
    for position, keep in zip((3, 4, 2), given):  # lease_id, lease_epoch, attempt_id
        if not keep:
            argv[position] = ""
    assert raw(ff_redis, request, argv) == [0, "partial_fence_triple"]
    assert seven(core(ff_engine, c.eid)) == ACTIVE_LEASED


def test_the_fence_is_checked_before_the_lifecycle_phase(ff_engine, ff_redis):
    _, request, _ = suspended(ff_engine)
    argv = request.argv()
    argv[2:5] = ["", "", ""]
    assert raw(ff_redis, request, argv) == [0, "fence_required"]


def test_suspend_after_complete_answers_execution_not_active_with_four_details(ff_engine):
    c = claimed(ff_engine)
    ff_engine.call(
        fn.CompleteExecution(
            execution_id=c.eid, fence=c.fence, lane_id=LANE, worker_instance_id=WIID, attempt_index=0, source=""
        )
    )
    expect_error(
        ff_engine, suspend_request(c), "execution_not_active", ["success", "1", "terminal", c.fence.attempt_id]
    )


def test_suspend_of_a_suspended_execution_answers_execution_not_active(ff_engine):
    c, _, _ = suspended(ff_engine)
    expect_error(ff_engine, suspend_request(c), "execution_not_active", ["none", "1", "suspended", c.fence.attempt_id])


def test_suspend_of_a_revoked_lease_answers_lease_revoked(ff_engine):
    c = claimed(ff_engine)
    ff_engine.revoke_lease(c.eid)
    expect_error(ff_engine, suspend_request(c), "lease_revoked", [])


def test_suspend_of_an_expired_lease_marks_it_expired_and_answers_lease_expired(ff_engine, ff_redis):
    c = claimed(ff_engine, ttl_ms=40)
    meta = c.keys.stream_meta(0)
    ff_redis.hset(meta, mapping={"created_at": "1"})
    time.sleep(0.07)
    expect_error(ff_engine, suspend_request(c), "lease_expired", [])
    state = core(ff_engine, c.eid)
    assert state["ownership_state"] == "lease_expired_reclaimable"
    assert state["lease_expired_at"] != ""
    assert entries(ff_redis, c.keys.lease_history)[-1]["event"] == "expired"
    assert hash_of(ff_redis, meta)["closed_reason"] == "lease_expired"
    assert ff_redis.exists(c.keys.suspension_current) == 0


@pytest.mark.parametrize("part", ["lease_id", "lease_epoch", "attempt_id"])
def test_suspend_with_a_stale_fence_component_answers_stale_lease(ff_engine, part):
    c = claimed(ff_engine)
    wrong = {"lease_id": new_uuid(), "lease_epoch": 2, "attempt_id": new_uuid()}[part]
    expect_error(ff_engine, suspend_request(c, fence=c.fence.model_copy(update={part: wrong})), "stale_lease", [])
    assert seven(core(ff_engine, c.eid)) == ACTIVE_LEASED


def test_suspend_of_another_attempt_index_answers_invalid_lease_for_suspend(ff_engine, ff_redis):
    c = claimed(ff_engine)
    before = keyspace(ff_redis)
    expect_error(ff_engine, suspend_request(c, attempt_index=1), "invalid_lease_for_suspend", [])
    assert keyspace(ff_redis) == before


def test_suspend_with_an_open_suspension_answers_already_suspended(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ff_redis.hset(
        c.keys.suspension_current, mapping={"suspension_id": "old", "waitpoint_id": "wp-old", "closed_at": ""}
    )
    expect_error(ff_engine, suspend_request(c), "already_suspended", [])
    assert hash_of(ff_redis, c.keys.suspension_current)["suspension_id"] == "old"
    assert seven(core(ff_engine, c.eid)) == ACTIVE_LEASED


def test_a_stale_lease_is_reported_before_a_wrong_attempt_index(ff_engine):
    c = claimed(ff_engine)
    stale = c.fence.model_copy(update={"lease_id": new_uuid()})
    expect_error(ff_engine, suspend_request(c, fence=stale, attempt_index=1), "stale_lease")


def test_a_wrong_attempt_index_is_reported_before_an_open_suspension(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ff_redis.hset(c.keys.suspension_current, mapping={"suspension_id": "old", "closed_at": ""})
    expect_error(ff_engine, suspend_request(c, attempt_index=1), "invalid_lease_for_suspend")


def test_suspend_archives_a_closed_suspension_before_writing_the_new_one(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ff_redis.hset(
        c.keys.suspension_current,
        mapping={"suspension_id": "old", "waitpoint_id": "wp-old", "closed_at": "1", "stale_marker": "x"},
    )
    request = suspend_request(c, waitpoint_id="wp-new")
    ff_engine.call(request)
    record = hash_of(ff_redis, c.keys.suspension_current)
    assert record["suspension_id"] == request.suspension_id
    assert "stale_marker" not in record
    assert members(ff_redis, c.keys.waitpoints) == {"wp-old", "wp-new"}


def test_a_failure_after_archiving_leaves_the_old_suspension_deleted(ff_engine, ff_redis):
    # §11 pitfall 22: no rollback of step 7
    c = claimed(ff_engine)
    ff_redis.hset(
        c.keys.suspension_current, mapping={"suspension_id": "old", "waitpoint_id": "wp-old", "closed_at": "1"}
    )
    expect_error(ff_engine, suspend_request(c, use_pending=True), "waitpoint_not_found")
    assert ff_redis.exists(c.keys.suspension_current) == 0
    assert members(ff_redis, c.keys.waitpoints) == {"wp-old"}


def test_a_second_suspension_after_a_resume_replaces_the_closed_record(ff_engine, ff_redis):
    c, _, first = suspended(ff_engine, waitpoint_id="wp-1")
    ff_engine.call(deliver(c.eid, first.waitpoint))
    again = claim_resumed(ff_engine, c.eid)
    request = suspend_request(again, waitpoint_id="wp-2")
    ff_engine.call(request)
    record = hash_of(ff_redis, c.keys.suspension_current)
    assert (record["suspension_id"], record["waitpoint_id"], record["close_reason"]) == (
        request.suspension_id,
        "wp-2",
        "",
    )
    assert members(ff_redis, c.keys.waitpoints) == {"wp-1", "wp-2"}
    assert seven(core(ff_engine, c.eid)) == SUSPENDED
    assert core(ff_engine, c.eid)["current_lease_epoch"] == "2"


# -- ff_suspend_execution: numeric ARGV and the condition JSON (our deviations) -----------------------


@pytest.mark.parametrize(
    ("position", "value", "detail"),
    [
        (10, "soon", "timeout_at must be a number, got: soon"),
        (16, "long", "lease_history_maxlen must be a number, got: long"),
        (18, "ttl", "dedup_ttl_ms must be a number, got: ttl"),
        (19, "two", "num_extra_waitpoints must be a number, got: two"),
        (19, "1.5", "num_extra_waitpoints must be an integer, got: 1.5"),
    ],
)
def test_suspend_with_malformed_numeric_argv_answers_invalid_input_before_writing(
    ff_engine, ff_redis, position, value, detail
):
    # deliberate deviation: the reference raises a Lua error for these
    c = claimed(ff_engine)
    request = suspend_request(c)
    argv = request.argv()
    argv[position] = value
    before = keyspace(ff_redis)
    assert raw(ff_redis, request, argv) == [0, "invalid_input", detail]
    assert keyspace(ff_redis) == before


@pytest.mark.parametrize(
    ("condition", "detail"),
    [
        ("not json", "resume_condition_json must be a JSON object"),
        ('"text"', "resume_condition_json must be a JSON object"),
        ("42", "resume_condition_json must be a JSON object"),
        ("null", "resume_condition_json must be a JSON object"),
        ('{"required_signal_names":"a"}', "required_signal_names must be an array"),
        ('{"minimum_signal_count":"two"}', "minimum_signal_count must be a number"),
    ],
)
def test_suspend_with_an_unusable_condition_answers_invalid_input_before_writing(
    ff_engine, ff_redis, condition, detail
):
    # deliberate deviation: the reference raises a Lua error for these
    c = claimed(ff_engine)
    before = keyspace(ff_redis)
    expect_error(ff_engine, suspend_request(c, condition=condition), "invalid_input", [detail])
    assert keyspace(ff_redis) == before


def test_suspend_treats_a_json_array_condition_like_an_empty_object(ff_engine, ff_redis):
    # cjson decodes an array to a Lua table; none of the fields read are present (§4.10.1)
    c, _, _ = suspended(ff_engine, waitpoint_id="wp-1", condition="[1,2]")
    condition = condition_hash(ff_redis, c, "wp-1")
    assert (condition["match_mode"], condition["total_matchers"], condition["matcher:0:name"]) == ("any", "1", "")


# -- ff_suspend_execution: idempotency (§4.1 steps 2 and 17, §4.9, §11.15) ------------------------------


def test_suspend_with_an_idempotency_key_stores_the_tab_joined_outcome(ff_engine, ff_redis):
    c = claimed(ff_engine)
    request = suspend_request(c, waitpoint_id="wp-a", waitpoint_key="key-a", idem="once", extras=(("wp-b", "key-b"),))
    suspension = ff_engine.call(request)
    dedup = c.keys.suspend_dedup("once")
    assert hash_of(ff_redis, dedup) == {
        "outcome": "\t".join(
            [
                "OK",
                request.suspension_id,
                "wp-a",
                "key-a",
                suspension.waitpoint.token,
                "1",
                "wp-b",
                "key-b",
                suspension.extra_waitpoints[0].token,
            ]
        )
    }
    ttl = ff_redis.pttl(dedup)
    assert 0 < ttl <= request.dedup_ttl_ms() == 604_800_000


def test_suspend_dedup_ttl_follows_argv_19(ff_engine, ff_redis):
    c = claimed(ff_engine)
    request = suspend_request(c, idem="once")
    argv = request.argv()
    argv[18] = "5000"
    raw(ff_redis, request, argv)
    assert 0 < ff_redis.pttl(c.keys.suspend_dedup("once")) <= 5000


def test_suspend_dedup_with_a_zero_ttl_never_expires(ff_engine, ff_redis):
    c = claimed(ff_engine)
    request = suspend_request(c, idem="once")
    argv = request.argv()
    argv[18] = "0"
    raw(ff_redis, request, argv)
    assert ff_redis.pttl(c.keys.suspend_dedup("once")) == -1


def test_a_replayed_suspend_returns_the_stored_outcome_verbatim_and_changes_nothing(ff_engine, ff_redis):
    c = claimed(ff_engine)
    request = suspend_request(c, idem="once", extras=(("wp-b", "key-b"),))
    first = raw(ff_redis, request)
    before = keyspace(ff_redis)
    assert raw(ff_redis, request) == first
    assert keyspace(ff_redis) == before


def test_a_replayed_suspend_with_other_arguments_still_returns_the_first_outcome(ff_engine, ff_redis):
    c = claimed(ff_engine)
    request = suspend_request(c, idem="once", waitpoint_id="wp-1")
    first = raw(ff_redis, request)
    other = request.model_copy(update={"waitpoint_id": "wp-2", "suspension_id": "another"})
    assert raw(ff_redis, other) == first
    assert ff_redis.exists(c.keys.waitpoint("wp-2")) == 0


def test_the_dedup_replay_comes_before_the_execution_lookup(ff_engine, ff_redis):
    eid = ExecutionId.mint(PARTITION)
    c = Claimed(eid, fn.Fence(lease_id="l", lease_epoch=1, attempt_id="a"), 0)
    request = suspend_request(c, idem="once")
    ff_redis.hset(ExecKeys(eid).suspend_dedup("once"), "outcome", "OK\tsid\twp\tkey\ttok\t0")
    assert raw(ff_redis, request) == [1, "OK", "sid", "wp", "key", "tok", "0"]


def test_a_stored_outcome_keeps_its_empty_fields(ff_engine, ff_redis):
    c = claimed(ff_engine)
    request = suspend_request(c, idem="once")
    ff_redis.hset(c.keys.suspend_dedup("once"), "outcome", "OK\tsid\t\t\t\t0")
    assert raw(ff_redis, request) == [1, "OK", "sid", "", "", "", "0"]
    assert seven(core(ff_engine, c.eid)) == ACTIVE_LEASED


def test_a_stored_already_satisfied_outcome_replays_with_that_status(ff_engine, ff_redis):
    c = claimed(ff_engine)
    request = suspend_request(c, idem="once")
    ff_redis.hset(c.keys.suspend_dedup("once"), "outcome", "ALREADY_SATISFIED\tsid\twp\tkey\ttok\t0")
    assert raw(ff_redis, request) == [1, "ALREADY_SATISFIED", "sid", "wp", "key", "tok", "0"]
    assert ff_engine.call(request).already_satisfied


def test_a_stored_outcome_with_extras_replays_them(ff_engine, ff_redis):
    c = claimed(ff_engine)
    request = suspend_request(c, idem="once")
    ff_redis.hset(c.keys.suspend_dedup("once"), "outcome", "OK\tsid\twp\tkey\ttok\t1\tx\txk\txt")
    assert raw(ff_redis, request) == [1, "OK", "sid", "wp", "key", "tok", "1", "x", "xk", "xt"]


def test_a_stored_outcome_with_fewer_than_five_parts_is_a_miss(ff_engine, ff_redis):
    c = claimed(ff_engine)
    request = suspend_request(c, idem="once", waitpoint_id="wp-1")
    ff_redis.hset(c.keys.suspend_dedup("once"), "outcome", "OK\tsid\twp")
    reply = raw(ff_redis, request)
    assert reply[:5] == [1, "OK", request.suspension_id, "wp-1", request.waitpoint_key]
    assert hash_of(ff_redis, c.keys.suspend_dedup("once"))["outcome"].startswith(f"OK\t{request.suspension_id}\t")
    assert seven(core(ff_engine, c.eid)) == SUSPENDED


def test_suspend_without_an_idempotency_key_writes_no_dedup_record(ff_engine, ff_redis):
    _, request, _ = suspended(ff_engine)
    assert request.keys()[17] == IDX.noop
    assert ff_redis.exists(IDX.noop) == 0
    assert ff_redis.keys("ff:dedup:*") == []


# -- ff_create_pending_waitpoint (§4.2) ------------------------------------------------------------


def test_create_pending_waitpoint_replies_with_its_token_and_writes_the_pending_hash(ff_engine, ff_redis):
    c = claimed(ff_engine)
    before = core(ff_engine, c.eid)
    expires_at = server_ms(ff_redis) + 60_000
    request = fn.CreatePendingWaitpoint(
        execution_id=c.eid, attempt_index=0, waitpoint_id="wp-p", waitpoint_key="key-p", expires_at=expires_at
    )
    assert request.keys() == [c.keys.core, c.keys.waitpoint("wp-p"), IDX.pending_waitpoint_expiry, IDX.waitpoint_hmac]
    assert request.argv() == [c.eid, "0", "wp-p", "key-p", str(expires_at)]
    reply = raw(ff_redis, request)
    now = waitpoint_hash(ff_redis, c, "wp-p")["created_at"]
    assert reply == [1, "OK", "wp-p", "key-p", sign("wp-p", "key-p", now)]
    assert waitpoint_hash(ff_redis, c, "wp-p") == {
        "waitpoint_id": "wp-p",
        "execution_id": c.eid,
        "attempt_index": "0",
        "suspension_id": "",
        "waitpoint_key": "key-p",
        "waitpoint_token": reply[4],
        "state": "pending",
        "created_at": now,
        "activated_at": "",
        "satisfied_at": "",
        "closed_at": "",
        "expires_at": str(expires_at),
        "close_reason": "",
        "signal_count": "0",
        "matched_signal_count": "0",
        "last_signal_at": "",
    }
    assert ff_redis.zscore(IDX.pending_waitpoint_expiry, "wp-p") == expires_at
    assert core(ff_engine, c.eid) == before
    assert ff_redis.exists(c.keys.waitpoint_condition("wp-p")) == 0


def test_create_pending_of_a_missing_execution_answers_execution_not_found(ff_engine):
    request = fn.CreatePendingWaitpoint(
        execution_id=ExecutionId.mint(PARTITION), attempt_index=0, waitpoint_id="w", waitpoint_key="k", expires_at=1
    )
    expect_error(ff_engine, request, "execution_not_found", [])


def test_create_pending_of_a_suspended_execution_answers_execution_not_active(ff_engine):
    c, _, _ = suspended(ff_engine)
    request = fn.CreatePendingWaitpoint(
        execution_id=c.eid, attempt_index=0, waitpoint_id="w", waitpoint_key="k", expires_at=1
    )
    expect_error(ff_engine, request, "execution_not_active", ["none", "1", "suspended", c.fence.attempt_id])


def test_create_pending_without_a_lease_answers_no_active_lease(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ff_engine.revoke_lease(c.eid)
    request = fn.CreatePendingWaitpoint(
        execution_id=c.eid, attempt_index=0, waitpoint_id="w", waitpoint_key="k", expires_at=1
    )
    expect_error(ff_engine, request, "no_active_lease", [])
    assert ff_redis.exists(c.keys.waitpoint("w")) == 0


def test_create_pending_for_another_attempt_answers_stale_lease(ff_engine):
    c = claimed(ff_engine)
    request = fn.CreatePendingWaitpoint(
        execution_id=c.eid, attempt_index=1, waitpoint_id="w", waitpoint_key="k", expires_at=1
    )
    expect_error(ff_engine, request, "stale_lease", [])


def test_create_pending_does_not_check_the_lease_expiry(ff_engine):
    c = claimed(ff_engine, ttl_ms=30)
    time.sleep(0.05)
    ticket = pending(ff_engine, c)
    assert ticket.token.startswith("k1:")


@pytest.mark.parametrize("state", ["pending", "active"])
def test_create_pending_over_an_open_waitpoint_answers_waitpoint_already_exists(ff_engine, ff_redis, state):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    ff_redis.hset(c.keys.waitpoint(ticket.waitpoint_id), "state", state)
    before = keyspace(ff_redis)
    request = fn.CreatePendingWaitpoint(
        execution_id=c.eid, attempt_index=0, waitpoint_id=ticket.waitpoint_id, waitpoint_key="other", expires_at=1
    )
    expect_error(ff_engine, request, "waitpoint_already_exists", [])
    assert keyspace(ff_redis) == before


def test_create_pending_over_a_closed_waitpoint_overwrites_it(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    ff_engine.call(fn.CloseWaitpoint(execution_id=c.eid, waitpoint_id=ticket.waitpoint_id))
    time.sleep(0.002)
    again = ff_engine.call(
        fn.CreatePendingWaitpoint(
            execution_id=c.eid, attempt_index=0, waitpoint_id=ticket.waitpoint_id, waitpoint_key="new", expires_at=7
        )
    )
    hash_ = waitpoint_hash(ff_redis, c, ticket.waitpoint_id)
    assert (hash_["state"], hash_["waitpoint_key"], hash_["closed_at"], hash_["close_reason"]) == (
        "pending",
        "new",
        "",
        "",
    )
    assert again.token == sign(ticket.waitpoint_id, "new", hash_["created_at"])


def test_create_pending_checks_the_lease_before_the_attempt_and_the_attempt_before_the_waitpoint(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    request = fn.CreatePendingWaitpoint(
        execution_id=c.eid, attempt_index=1, waitpoint_id=ticket.waitpoint_id, waitpoint_key="k", expires_at=1
    )
    expect_error(ff_engine, request, "stale_lease")
    ff_redis.delete(IDX.waitpoint_hmac)
    expect_error(ff_engine, request.model_copy(update={"attempt_index": 0}), "waitpoint_already_exists")
    ff_engine.revoke_lease(c.eid)
    expect_error(ff_engine, request, "no_active_lease")


@pytest.mark.parametrize("value", ["later", ""])
def test_create_pending_with_a_non_numeric_expiry_answers_invalid_input_before_writing(ff_engine, ff_redis, value):
    # deliberate deviation: the reference raises a Lua error
    c = claimed(ff_engine)
    request = fn.CreatePendingWaitpoint(
        execution_id=c.eid, attempt_index=0, waitpoint_id="w", waitpoint_key="k", expires_at=1
    )
    argv = request.argv()
    argv[4] = value
    before = keyspace(ff_redis)
    assert raw(ff_redis, request, argv) == [0, "invalid_input", f"expires_at must be a number, got: {value}"]
    assert keyspace(ff_redis) == before


# -- ff_suspend_execution on a pending waitpoint (§4.1 step 8) -----------------------------------------


def test_suspend_on_a_pending_waitpoint_activates_it_and_keeps_its_token(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c, key="key-p")
    created_at = waitpoint_hash(ff_redis, c, ticket.waitpoint_id)["created_at"]
    time.sleep(0.002)
    timeout_at = server_ms(ff_redis) + 60_000
    request = suspend_request(c, waitpoint_id=ticket.waitpoint_id, use_pending=True, timeout_at=timeout_at)
    assert request.argv()[7] == "" and request.argv()[14] == "1"
    reply = raw(ff_redis, request)
    assert reply == [1, "OK", request.suspension_id, ticket.waitpoint_id, "key-p", ticket.token, "0"]
    hash_ = waitpoint_hash(ff_redis, c, ticket.waitpoint_id)
    now = core(ff_engine, c.eid)["last_transition_at"]
    assert (hash_["state"], hash_["suspension_id"], hash_["activated_at"], hash_["expires_at"]) == (
        "active",
        request.suspension_id,
        now,
        str(timeout_at),
    )
    assert (hash_["created_at"], hash_["waitpoint_token"]) == (created_at, ticket.token)
    assert ff_redis.zscore(IDX.pending_waitpoint_expiry, ticket.waitpoint_id) is None
    assert seven(core(ff_engine, c.eid)) == SUSPENDED
    record = hash_of(ff_redis, c.keys.suspension_current)
    assert (record["waitpoint_id"], record["waitpoint_key"]) == (ticket.waitpoint_id, "key-p")
    assert members(ff_redis, c.keys.waitpoints) == {ticket.waitpoint_id}
    assert condition_hash(ff_redis, c, ticket.waitpoint_id)["total_matchers"] == "1"


def test_suspend_on_a_pending_waitpoint_without_a_timeout_clears_its_expiry(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    ff_engine.call(suspend_request(c, waitpoint_id=ticket.waitpoint_id, use_pending=True))
    assert waitpoint_hash(ff_redis, c, ticket.waitpoint_id)["expires_at"] == ""


@pytest.mark.standalone
def test_suspend_on_a_pending_waitpoint_mints_nothing_and_needs_no_keystore_key(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    request = suspend_request(c, waitpoint_id=ticket.waitpoint_id, use_pending=True)
    keys = request.keys()
    keys[16] = ""
    assert raw(ff_redis, request, keys=keys)[:2] == [1, "OK"]


def test_suspend_on_a_missing_pending_waitpoint_answers_waitpoint_not_found(ff_engine):
    c = claimed(ff_engine)
    expect_error(ff_engine, suspend_request(c, use_pending=True), "waitpoint_not_found", [])
    assert seven(core(ff_engine, c.eid)) == ACTIVE_LEASED


def test_suspend_on_a_closed_pending_waitpoint_answers_waitpoint_not_pending(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    ff_engine.call(fn.CloseWaitpoint(execution_id=c.eid, waitpoint_id=ticket.waitpoint_id))
    ff_redis.hset(c.keys.waitpoint(ticket.waitpoint_id), "execution_id", "someone-else")
    request = suspend_request(c, waitpoint_id=ticket.waitpoint_id, use_pending=True)
    expect_error(ff_engine, request, "waitpoint_not_pending", [])


def test_suspend_on_another_executions_pending_waitpoint_answers_invalid_waitpoint_for_execution(ff_engine):
    owner = claimed(ff_engine)
    ticket = pending(ff_engine, owner)
    other = claimed(ff_engine)
    request = suspend_request(other, waitpoint_id=ticket.waitpoint_id, use_pending=True)
    expect_error(ff_engine, request, "invalid_waitpoint_for_execution", [])


def test_suspend_on_a_pending_waitpoint_of_another_attempt_answers_invalid_waitpoint_for_execution(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    ff_redis.hset(c.keys.waitpoint(ticket.waitpoint_id), "attempt_index", "3")
    request = suspend_request(c, waitpoint_id=ticket.waitpoint_id, use_pending=True)
    expect_error(ff_engine, request, "invalid_waitpoint_for_execution", [])


def test_suspend_on_an_expired_pending_waitpoint_answers_pending_waitpoint_expired(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c, expires_in_ms=-1000)
    request = suspend_request(c, waitpoint_id=ticket.waitpoint_id, use_pending=True)
    expect_error(ff_engine, request, "pending_waitpoint_expired", [])
    assert waitpoint_hash(ff_redis, c, ticket.waitpoint_id)["state"] == "pending"


def test_suspend_on_a_pending_waitpoint_without_a_token_answers_waitpoint_not_token_bound(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    ff_redis.hset(c.keys.waitpoint(ticket.waitpoint_id), "waitpoint_token", "")
    request = suspend_request(c, waitpoint_id=ticket.waitpoint_id, use_pending=True)
    expect_error(ff_engine, request, "waitpoint_not_token_bound", [])


@pytest.mark.parametrize(
    ("damage", "code"),
    [
        (
            {"state": "closed", "execution_id": "other", "expires_at": "1", "waitpoint_token": ""},
            "waitpoint_not_pending",
        ),
        ({"execution_id": "other", "expires_at": "1", "waitpoint_token": ""}, "invalid_waitpoint_for_execution"),
        ({"expires_at": "1", "waitpoint_token": ""}, "pending_waitpoint_expired"),
    ],
)
def test_pending_waitpoint_checks_run_in_the_spec_order(ff_engine, ff_redis, damage, code):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    ff_redis.hset(c.keys.waitpoint(ticket.waitpoint_id), mapping=damage)
    expect_error(ff_engine, suspend_request(c, waitpoint_id=ticket.waitpoint_id, use_pending=True), code, [])


def test_suspend_on_a_pending_waitpoint_takes_the_key_from_its_hash(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c, key="key-p")
    request = suspend_request(c, waitpoint_id=ticket.waitpoint_id, use_pending=True, waitpoint_key="ignored")
    assert raw(ff_redis, request)[4] == "key-p"
    assert hash_of(ff_redis, c.keys.suspension_current)["waitpoint_key"] == "key-p"


def test_use_pending_with_extras_answers_unsupported_after_activating_the_waitpoint(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    request = suspend_request(c, waitpoint_id=ticket.waitpoint_id, use_pending=True, extras=(("wp-x", "key-x"),))
    expect_error(ff_engine, request, "use_pending_with_extras_unsupported", [])
    # the activation writes are not rolled back (§4.1 step 8)
    assert waitpoint_hash(ff_redis, c, ticket.waitpoint_id)["state"] == "active"
    assert ff_redis.zscore(IDX.pending_waitpoint_expiry, ticket.waitpoint_id) is None
    assert condition_hash(ff_redis, c, ticket.waitpoint_id)["closed"] == "0"
    assert seven(core(ff_engine, c.eid)) == ACTIVE_LEASED
    assert ff_redis.exists(c.keys.waitpoint("wp-x")) == 0


def test_buffered_signals_that_satisfy_the_condition_answer_already_satisfied_and_keep_the_lease(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c, key="key-p")
    signal = buffer(c.eid, ticket, "approve")
    ff_engine.call(signal)
    before_core = core(ff_engine, c.eid)
    request = suspend_request(
        c, waitpoint_id=ticket.waitpoint_id, use_pending=True, condition=names("approve"), idem="once"
    )
    reply = raw(ff_redis, request)
    assert reply == [1, "ALREADY_SATISFIED", request.suspension_id, ticket.waitpoint_id, "key-p", ticket.token, "0"]
    hash_ = waitpoint_hash(ff_redis, c, ticket.waitpoint_id)
    now = hash_["activated_at"]
    assert (hash_["state"], hash_["satisfied_at"], hash_["closed_at"], hash_["close_reason"]) == (
        "closed",
        now,
        now,
        "resumed",
    )
    condition = condition_hash(ff_redis, c, ticket.waitpoint_id)
    assert (condition["matcher:0:satisfied"], condition["matcher:0:signal_id"]) == ("1", signal.signal_id)
    assert (condition["satisfied_count"], condition["closed"]) == ("1", "0")  # §11.6: left open
    assert core(ff_engine, c.eid) == before_core
    assert ff_redis.exists(c.keys.lease_current) == 1
    assert ff_redis.exists(c.keys.suspension_current) == 0
    assert ff_redis.zscore(IDX.suspended(LANE), c.eid) is None
    assert ff_redis.zscore(IDX.pending_waitpoint_expiry, ticket.waitpoint_id) is None
    assert hash_of(ff_redis, c.keys.suspend_dedup("once")) == {
        "outcome": "\t".join(["ALREADY_SATISFIED", request.suspension_id, ticket.waitpoint_id, "key-p", ticket.token])
        + "\t0"
    }
    assert raw(ff_redis, request) == reply
    assert ff_engine.call(request).already_satisfied


def test_buffered_signals_that_do_not_satisfy_the_condition_are_counted_at_suspend(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    first = buffer(c.eid, ticket, "a")
    ff_engine.call(first)
    ff_engine.call(buffer(c.eid, ticket, "unrelated"))
    ff_engine.call(
        suspend_request(c, waitpoint_id=ticket.waitpoint_id, use_pending=True, condition=names("a", "b", match="all"))
    )
    condition = condition_hash(ff_redis, c, ticket.waitpoint_id)
    assert condition["satisfied_count"] == "1"
    assert (condition["matcher:0:satisfied"], condition["matcher:0:signal_id"]) == ("1", first.signal_id)
    assert (condition["matcher:1:satisfied"], condition["matcher:1:signal_id"]) == ("0", "")
    assert seven(core(ff_engine, c.eid)) == SUSPENDED
    outcome = ff_engine.call(deliver(c.eid, ticket, "b"))
    assert outcome.effect == "resume_condition_satisfied"
    assert seven(core(ff_engine, c.eid)) == RESUMED


def test_a_composite_condition_is_never_satisfied_by_buffered_signals(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c, key="key-p")
    ff_engine.call(buffer(c.eid, ticket, "go"))
    request = suspend_request(
        c, waitpoint_id=ticket.waitpoint_id, use_pending=True, condition=composite(single("", "key-p"))
    )
    assert raw(ff_redis, request)[1] == "OK"
    assert seven(core(ff_engine, c.eid)) == SUSPENDED
    assert condition_hash(ff_redis, c, ticket.waitpoint_id)["composite"] == "1"


def test_a_pending_waitpoint_without_buffered_signals_suspends_normally(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    request = suspend_request(c, waitpoint_id=ticket.waitpoint_id, use_pending=True, condition=names("go"))
    assert raw(ff_redis, request)[1] == "OK"
    assert condition_hash(ff_redis, c, ticket.waitpoint_id)["satisfied_count"] == "0"


# -- ff_deliver_signal: recording and evaluation (§4.4, §2.4-§2.6) -------------------------------------


def test_deliver_signal_keys_are_the_15_of_the_spec(ff_engine):
    eid = ExecutionId.mint(PARTITION)
    x = ExecKeys(eid)
    request = deliver(eid, ("wp", "t"), idempotency_key="idem", signal_id="sig")
    assert request.keys() == [
        x.core,
        x.waitpoint_condition("wp"),
        x.waitpoint_signals("wp"),
        x.signals,
        x.signal("sig"),
        x.signal_payload("sig"),
        "ff:sigdedup:{fp:86}:wp:idem",
        x.waitpoint("wp"),
        x.suspension_current,
        IDX.eligible(LANE),
        IDX.suspended(LANE),
        IDX.delayed(LANE),
        IDX.suspension_timeout,
        IDX.waitpoint_hmac,
        "ff:part:{fp:86}:signal_delivery",
    ]
    assert len(request.argv()) == 18
    assert deliver(eid, ("wp", "t")).keys()[6] == "ff:noop:{fp:86}"


def test_a_satisfying_signal_replies_ok_and_records_the_signal(ff_engine, ff_redis):
    c, _, suspension = suspended(ff_engine, waitpoint_id="wp-1")
    request = deliver(
        c.eid,
        suspension.waitpoint,
        "approve",
        signal_category="approval",
        source_type="operator",
        source_identity="alice",
        correlation_id="corr-1",
        payload=b'{"ok":true}',
        created_at=123,
    )
    assert raw(ff_redis, request) == [1, "OK", request.signal_id, "resume_condition_satisfied"]
    signal = hash_of(ff_redis, c.keys.signal(request.signal_id))
    now = signal["accepted_at"]
    assert signal == {
        "signal_id": request.signal_id,
        "target_execution_id": c.eid,
        "target_waitpoint_id": "wp-1",
        "target_scope": "waitpoint",
        "signal_name": "approve",
        "signal_category": "approval",
        "source_type": "operator",
        "source_identity": "alice",
        "correlation_id": "corr-1",
        "idempotency_key": "",
        "created_at": "123",
        "accepted_at": now,
        "matched_waitpoint_id": "wp-1",
        "payload_encoding": "json",
        "observed_effect": "resume_condition_satisfied",
    }
    assert sorted(signal) == sorted(SIGNAL_FIELDS)
    assert ff_redis.get(c.keys.signal_payload(request.signal_id)) == b'{"ok":true}'
    (entry,) = entries(ff_redis, c.keys.waitpoint_signals("wp-1"))
    assert list(entry) == STREAM_ENTRY_FIELDS
    assert entry == {
        "signal_id": request.signal_id,
        "signal_name": "approve",
        "signal_category": "approval",
        "source_type": "operator",
        "source_identity": "alice",
        "matched": "0",
        "accepted_at": now,
    }
    assert ff_redis.zscore(c.keys.signals, request.signal_id) == int(now)
    (delivery,) = entries(ff_redis, IDX.signal_delivery)
    assert list(delivery) == DELIVERY_FIELDS
    assert delivery == {
        "signal_id": request.signal_id,
        "execution_id": c.eid,
        "waitpoint_id": "wp-1",
        "source_identity": "alice",
        "effect": "resume_condition_satisfied",
        "delivered_at_ms": now,
    }


def test_a_signal_without_created_at_or_payload_uses_now_and_stores_no_payload(ff_engine, ff_redis):
    c, _, suspension = suspended(ff_engine)
    request = deliver(c.eid, suspension.waitpoint, target_scope="execution", idempotency_key="k1")
    ff_engine.call(request)
    signal = hash_of(ff_redis, c.keys.signal(request.signal_id))
    assert signal["created_at"] == signal["accepted_at"] != ""
    assert (signal["target_scope"], signal["idempotency_key"]) == ("execution", "k1")
    assert ff_redis.exists(c.keys.signal_payload(request.signal_id)) == 0


def test_a_satisfying_signal_resumes_the_execution_on_the_same_attempt(ff_engine, ff_redis):
    c = claimed(ff_engine, priority=5)
    timeout_at = server_ms(ff_redis) + 60_000
    suspension = ff_engine.call(suspend_request(c, waitpoint_id="wp-1", timeout_at=timeout_at))
    request = deliver(c.eid, suspension.waitpoint)
    ff_engine.call(request)
    state = core(ff_engine, c.eid)
    now = hash_of(ff_redis, c.keys.signal(request.signal_id))["accepted_at"]
    assert seven(state) == RESUMED
    assert state["blocking_detail"] == ""
    assert (state["current_suspension_id"], state["current_waitpoint_id"]) == ("", "")
    assert state["last_transition_at"] == state["last_mutation_at"] == now
    assert (state["current_attempt_index"], state["current_attempt_id"]) == ("0", c.fence.attempt_id)
    assert ff_redis.zscore(IDX.eligible(LANE), c.eid) == -5 * WEIGHT + int(state["created_at"])
    assert ff_redis.zscore(IDX.suspended(LANE), c.eid) is None
    assert ff_redis.zscore(IDX.suspension_timeout, c.eid) is None


def test_a_satisfying_signal_closes_the_condition_waitpoint_and_suspension(ff_engine, ff_redis):
    c, _, suspension = suspended(ff_engine, waitpoint_id="wp-1")
    request = deliver(c.eid, suspension.waitpoint)
    ff_engine.call(request)
    now = hash_of(ff_redis, c.keys.signal(request.signal_id))["accepted_at"]
    condition = condition_hash(ff_redis, c, "wp-1")
    assert (condition["closed"], condition["closed_at"], condition["closed_reason"]) == ("1", now, "satisfied")
    assert (condition["matcher:0:satisfied"], condition["matcher:0:signal_id"], condition["satisfied_count"]) == (
        "1",
        request.signal_id,
        "1",
    )
    waitpoint = waitpoint_hash(ff_redis, c, "wp-1")
    assert (waitpoint["state"], waitpoint["satisfied_at"], waitpoint["closed_at"], waitpoint["close_reason"]) == (
        "closed",
        now,
        now,
        "resumed",
    )
    assert (waitpoint["signal_count"], waitpoint["matched_signal_count"], waitpoint["last_signal_at"]) == (
        "1",
        "1",
        now,
    )
    record = hash_of(ff_redis, c.keys.suspension_current)
    assert (record["satisfied_at"], record["closed_at"], record["close_reason"], record["last_signal_at"]) == (
        now,
        now,
        "resumed",
        now,
    )
    assert "closer_signal_id" not in record and "all_satisfier_signals" not in record


def test_a_resume_delay_parks_the_resumed_execution_in_delayed(ff_engine, ff_redis):
    c, _, suspension = suspended(ff_engine)
    request = deliver(c.eid, suspension.waitpoint, "wake", resume_delay_ms=5000)
    ff_engine.call(request)
    state = core(ff_engine, c.eid)
    now = int(hash_of(ff_redis, c.keys.signal(request.signal_id))["accepted_at"])
    assert seven(state) == RESUME_DELAYED
    assert state["blocking_detail"] == "resume delay 5000ms after signal wake"
    assert ff_redis.zscore(IDX.delayed(LANE), c.eid) == now + 5000
    assert ff_redis.zscore(IDX.eligible(LANE), c.eid) is None
    assert ff_redis.zscore(IDX.suspended(LANE), c.eid) is None


def test_an_any_condition_resumes_on_the_first_named_signal(ff_engine):
    c, _, suspension = suspended(ff_engine, condition=names("a", "b"))
    assert ff_engine.call(deliver(c.eid, suspension.waitpoint, "b")).effect == "resume_condition_satisfied"


def test_an_all_condition_needs_every_matcher(ff_engine, ff_redis):
    c, _, suspension = suspended(ff_engine, waitpoint_id="wp-1", condition=names("a", "b", match="all"))
    first = deliver(c.eid, suspension.waitpoint, "a")
    assert raw(ff_redis, first) == [1, "OK", first.signal_id, "appended_to_waitpoint"]
    assert seven(core(ff_engine, c.eid)) == SUSPENDED
    record = hash_of(ff_redis, c.keys.suspension_current)
    assert record["last_signal_at"] != "" and record["closed_at"] == ""
    assert condition_hash(ff_redis, c, "wp-1")["closed"] == "0"
    assert ff_engine.call(deliver(c.eid, suspension.waitpoint, "a")).effect == "no_op"
    assert ff_engine.call(deliver(c.eid, suspension.waitpoint, "b")).effect == "resume_condition_satisfied"
    waitpoint = waitpoint_hash(ff_redis, c, "wp-1")
    assert (waitpoint["signal_count"], waitpoint["matched_signal_count"]) == ("3", "2")


def test_a_signal_matching_no_matcher_is_recorded_as_no_op(ff_engine, ff_redis):
    c, _, suspension = suspended(ff_engine, waitpoint_id="wp-1", condition=names("a"))
    request = deliver(c.eid, suspension.waitpoint, "zzz")
    assert raw(ff_redis, request) == [1, "OK", request.signal_id, "no_op"]
    assert hash_of(ff_redis, c.keys.signal(request.signal_id))["observed_effect"] == "no_op"
    waitpoint = waitpoint_hash(ff_redis, c, "wp-1")
    assert (waitpoint["signal_count"], waitpoint["matched_signal_count"]) == ("1", "0")
    assert condition_hash(ff_redis, c, "wp-1")["satisfied_count"] == "0"
    assert entries(ff_redis, IDX.signal_delivery)[-1]["effect"] == "no_op"


def test_a_count_mode_condition_resumes_at_the_minimum(ff_engine):
    condition = json.dumps(
        {"required_signal_names": ["x", "x", "x"], "signal_match_mode": "count", "minimum_signal_count": 2}
    )
    c, _, suspension = suspended(ff_engine, condition=condition)
    assert ff_engine.call(deliver(c.eid, suspension.waitpoint, "x")).effect == "appended_to_waitpoint"
    assert ff_engine.call(deliver(c.eid, suspension.waitpoint, "x")).effect == "resume_condition_satisfied"


def test_an_any_condition_with_a_minimum_of_two_needs_two_matches(ff_engine):
    c, _, suspension = suspended(ff_engine, condition=names("a", "b", "c", minimum=2))
    assert ff_engine.call(deliver(c.eid, suspension.waitpoint, "c")).effect == "appended_to_waitpoint"
    assert ff_engine.call(deliver(c.eid, suspension.waitpoint, "a")).effect == "resume_condition_satisfied"


def test_a_wildcard_matcher_accepts_any_name_and_the_first_open_matcher_wins(ff_engine, ff_redis):
    condition = json.dumps({"required_signal_names": ["", "a"], "signal_match_mode": "all"})
    c, _, suspension = suspended(ff_engine, waitpoint_id="wp-1", condition=condition)
    first = deliver(c.eid, suspension.waitpoint, "a")
    assert ff_engine.call(first).effect == "appended_to_waitpoint"
    condition_state = condition_hash(ff_redis, c, "wp-1")
    assert (condition_state["matcher:0:signal_id"], condition_state["matcher:1:signal_id"]) == (first.signal_id, "")
    assert ff_engine.call(deliver(c.eid, suspension.waitpoint, "other")).effect == "no_op"
    assert ff_engine.call(deliver(c.eid, suspension.waitpoint, "a")).effect == "resume_condition_satisfied"


def test_a_signal_on_an_extra_waitpoint_of_a_matcher_condition_closes_only_that_waitpoint(ff_engine, ff_redis):
    c, _, suspension = suspended(ff_engine, waitpoint_id="wp-a", extras=(("wp-b", "key-b"),))
    extra = suspension.extra_waitpoints[0]
    assert ff_engine.call(deliver(c.eid, extra)).effect == "resume_condition_satisfied"
    assert seven(core(ff_engine, c.eid)) == RESUMED
    assert waitpoint_hash(ff_redis, c, "wp-b")["state"] == "closed"
    assert condition_hash(ff_redis, c, "wp-b")["closed"] == "1"
    assert waitpoint_hash(ff_redis, c, "wp-a")["state"] == "active"
    assert condition_hash(ff_redis, c, "wp-a")["closed"] == "0"
    assert hash_of(ff_redis, c.keys.suspension_current)["close_reason"] == "resumed"


# -- ff_deliver_signal: errors in check order (§4.4 steps 1-6, Errata S2) -------------------------------


def test_deliver_to_a_missing_execution_answers_execution_not_found_before_authenticating(ff_engine, ff_redis):
    eid = ExecutionId.mint(PARTITION)
    before = keyspace(ff_redis)
    expect_error(ff_engine, deliver(eid, ("wp", "garbage")), "execution_not_found", [])
    assert keyspace(ff_redis) == before


def test_deliver_to_a_missing_waitpoint_answers_invalid_token_and_writes_nothing(ff_engine, ff_redis):
    # §4.4 step 2: a missing waitpoint is collapsed into invalid_token before token validation
    # runs; the failure stamp of §3.4 belongs to the validation itself
    c, _, suspension = suspended(ff_engine)
    request = deliver(c.eid, ("no-such-wp", suspension.waitpoint.token))
    before = keyspace(ff_redis)
    expect_error(ff_engine, request, "invalid_token", [])
    assert keyspace(ff_redis) == before


def test_deliver_to_a_waitpoint_without_created_at_answers_invalid_token(ff_engine, ff_redis):
    c, _, suspension = suspended(ff_engine, waitpoint_id="wp-1")
    ff_redis.hdel(c.keys.waitpoint("wp-1"), "created_at")
    expect_error(ff_engine, deliver(c.eid, suspension.waitpoint), "invalid_token", [])


def test_deliver_to_a_terminal_execution_answers_target_not_signalable(ff_engine, ff_redis):
    c, _, suspension = suspended(ff_engine)
    ff_engine.cancel(c.eid, "stop")
    before = keyspace(ff_redis)
    expect_error(ff_engine, deliver(c.eid, suspension.waitpoint), "target_not_signalable", [])
    assert keyspace(ff_redis) == before


def test_deliver_authenticates_before_revealing_that_the_execution_is_terminal(ff_engine):
    c, _, suspension = suspended(ff_engine)
    ff_engine.cancel(c.eid, "stop")
    wrong = suspension.waitpoint.token[:-1] + ("0" if suspension.waitpoint.token[-1] != "0" else "1")
    expect_error(ff_engine, deliver(c.eid, (suspension.waitpoint.waitpoint_id, wrong)), "invalid_token")


def test_deliver_to_a_pending_waitpoint_of_an_active_execution_answers_use_buffer_script(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    before = keyspace(ff_redis)
    expect_error(ff_engine, deliver(c.eid, ticket), "waitpoint_pending_use_buffer_script", [])
    assert keyspace(ff_redis) == before


def test_deliver_to_a_pending_waitpoint_of_a_runnable_execution_answers_use_buffer_script(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    ff_redis.hset(c.keys.core, "lifecycle_phase", "runnable")
    expect_error(ff_engine, deliver(c.eid, ticket), "waitpoint_pending_use_buffer_script")


def test_deliver_to_a_closed_waitpoint_of_an_active_execution_answers_target_not_signalable(ff_engine):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    ff_engine.call(fn.CloseWaitpoint(execution_id=c.eid, waitpoint_id=ticket.waitpoint_id))
    expect_error(ff_engine, deliver(c.eid, ticket), "target_not_signalable", [])


def test_a_retried_signal_after_the_resume_answers_target_not_signalable(ff_engine, ff_redis):
    # Errata S2: the execution is runnable and the waitpoint closed, with or without the same key
    c, _, suspension = suspended(ff_engine)
    first = deliver(c.eid, suspension.waitpoint, idempotency_key="once")
    ff_engine.call(first)
    retry = first.model_copy(update={"signal_id": new_uuid()})
    expect_error(ff_engine, retry, "target_not_signalable", [])
    expect_error(ff_engine, deliver(c.eid, suspension.waitpoint), "target_not_signalable", [])


def test_a_signal_to_a_closed_waitpoint_of_a_suspended_execution_still_resumes_it(ff_engine, ff_redis):
    # §4.4 step 3 skips the waitpoint state for suspended executions; §4.8
    c, _, suspension = suspended(ff_engine, waitpoint_id="wp-1")
    ff_engine.call(fn.CloseWaitpoint(execution_id=c.eid, waitpoint_id="wp-1"))
    assert ff_engine.call(deliver(c.eid, suspension.waitpoint)).effect == "resume_condition_satisfied"
    assert seven(core(ff_engine, c.eid)) == RESUMED


def test_a_terminal_execution_is_reported_before_its_pending_waitpoint(ff_engine):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    ff_engine.cancel(c.eid, "stop")
    expect_error(ff_engine, deliver(c.eid, ticket), "target_not_signalable", [])


def test_a_closed_condition_is_reported_before_the_signal_cap(ff_engine, ff_redis):
    c, _, suspension = suspended(ff_engine, waitpoint_id="wp-1", condition=names("never"))
    ff_engine.call(deliver(c.eid, suspension.waitpoint))
    ff_redis.hset(c.keys.waitpoint_condition("wp-1"), "closed", "1")
    expect_error(ff_engine, deliver(c.eid, suspension.waitpoint, max_signals_per_execution=1), "waitpoint_closed")


def test_deliver_without_a_condition_hash_answers_waitpoint_not_found(ff_engine, ff_redis):
    c, _, suspension = suspended(ff_engine, waitpoint_id="wp-1")
    ff_redis.delete(c.keys.waitpoint_condition("wp-1"))
    expect_error(ff_engine, deliver(c.eid, suspension.waitpoint), "waitpoint_not_found", [])


def test_deliver_to_a_closed_condition_answers_waitpoint_closed_before_the_dedup_check(ff_engine, ff_redis):
    c, _, suspension = suspended(ff_engine, waitpoint_id="wp-1", condition=names("a", "b", match="all"))
    first = deliver(c.eid, suspension.waitpoint, "a", idempotency_key="once")
    ff_engine.call(first)
    ff_redis.hset(c.keys.waitpoint_condition("wp-1"), "closed", "1")
    before = keyspace(ff_redis)
    expect_error(ff_engine, first.model_copy(update={"signal_id": new_uuid()}), "waitpoint_closed", [])
    assert keyspace(ff_redis) == before


def test_deliver_past_the_per_execution_signal_cap_answers_signal_limit_exceeded(ff_engine, ff_redis):
    c, _, suspension = suspended(ff_engine, condition=names("never"))
    ff_engine.call(deliver(c.eid, suspension.waitpoint, max_signals_per_execution=2))
    ff_engine.call(deliver(c.eid, suspension.waitpoint, max_signals_per_execution=2))
    before = keyspace(ff_redis)
    expect_error(
        ff_engine, deliver(c.eid, suspension.waitpoint, max_signals_per_execution=2), "signal_limit_exceeded", []
    )
    assert keyspace(ff_redis) == before


def test_the_signal_cap_is_checked_before_the_dedup_key(ff_engine):
    c, _, suspension = suspended(ff_engine, condition=names("never"))
    first = deliver(c.eid, suspension.waitpoint, idempotency_key="once", max_signals_per_execution=1)
    ff_engine.call(first)
    expect_error(ff_engine, first.model_copy(update={"signal_id": new_uuid()}), "signal_limit_exceeded")


def test_a_signal_cap_of_zero_disables_the_limit(ff_engine, ff_redis):
    c, _, suspension = suspended(ff_engine, condition=names("never"))
    ff_redis.zadd(c.keys.signals, {f"old-{i}": i for i in range(5)})
    assert ff_engine.call(deliver(c.eid, suspension.waitpoint, max_signals_per_execution=0)).effect == "no_op"


def test_a_repeated_idempotency_key_answers_duplicate_with_the_first_signal_id(ff_engine, ff_redis):
    c, _, suspension = suspended(ff_engine, waitpoint_id="wp-1", condition=names("never"))
    first = deliver(c.eid, suspension.waitpoint, idempotency_key="once", dedup_ttl_ms=60_000)
    ff_engine.call(first)
    dedup = ExecKeys(c.eid).signal_dedup("wp-1", "once")
    assert ff_redis.get(dedup) == first.signal_id.encode()
    assert 0 < ff_redis.pttl(dedup) <= 60_000
    before = keyspace(ff_redis)
    retry = first.model_copy(update={"signal_id": new_uuid()})
    assert raw(ff_redis, retry) == [1, "DUPLICATE", first.signal_id]
    assert keyspace(ff_redis) == before
    outcome = ff_engine.call(retry)
    assert (outcome.signal_id, outcome.duplicate, outcome.effect) == (first.signal_id, True, None)


def test_a_zero_dedup_ttl_disables_idempotency(ff_engine, ff_redis):
    c, _, suspension = suspended(ff_engine, waitpoint_id="wp-1", condition=names("never"))
    first = deliver(c.eid, suspension.waitpoint, idempotency_key="once", dedup_ttl_ms=0)
    ff_engine.call(first)
    retry = first.model_copy(update={"signal_id": new_uuid()})
    assert ff_engine.call(retry).effect == "no_op"
    assert ff_redis.exists(ExecKeys(c.eid).signal_dedup("wp-1", "once")) == 0


def test_an_empty_dedup_ttl_disables_idempotency(ff_engine, ff_redis):
    # deliberate deviation: the reference's tonumber("") leaves the TTL nil
    c, _, suspension = suspended(ff_engine, waitpoint_id="wp-1", condition=names("never"))
    first = deliver(c.eid, suspension.waitpoint, idempotency_key="once")
    argv = first.argv()
    argv[13] = ""
    assert raw(ff_redis, first, argv)[3] == "no_op"
    retry = first.model_copy(update={"signal_id": new_uuid()})
    argv = retry.argv()
    argv[13] = ""
    assert raw(ff_redis, retry, argv) == [1, "OK", retry.signal_id, "no_op"]
    assert ff_redis.exists(ExecKeys(c.eid).signal_dedup("wp-1", "once")) == 0


@pytest.mark.parametrize(
    ("position", "name", "value"),
    [
        (13, "dedup_ttl_ms", "lots"),  # an empty one disables dedup (pinned below)
        (14, "resume_delay_ms", "lots"),
        (14, "resume_delay_ms", ""),
        (15, "signal_maxlen", "lots"),
        (15, "signal_maxlen", ""),
        (16, "max_signals_per_execution", "lots"),
        (16, "max_signals_per_execution", ""),
    ],
)
def test_deliver_with_malformed_numeric_argv_answers_invalid_input_before_writing(
    ff_engine, ff_redis, position, name, value
):
    # deliberate deviation: the reference raises a Lua error
    c, _, suspension = suspended(ff_engine)
    request = deliver(c.eid, suspension.waitpoint)
    argv = request.argv()
    argv[position] = value
    before = keyspace(ff_redis)
    assert raw(ff_redis, request, argv) == [0, "invalid_input", f"{name} must be a number, got: {value}"]
    assert keyspace(ff_redis) == before


# -- ff_deliver_signal: composite conditions (§4.10.2-§4.10.3, §11.6, §11.9) ----------------------------


def composite_suspension(
    engine: Engine, tree: dict[str, Any], *, extras: tuple[tuple[str, str], ...] = (("wp-b", "key-b"),), **kw: Any
) -> tuple[Claimed, fn.Suspension]:
    c, _, suspension = suspended(
        engine, waitpoint_id="wp-a", waitpoint_key="key-a", condition=composite(tree), extras=extras, **kw
    )
    return c, suspension


def tickets(suspension: fn.Suspension) -> dict[str, fn.WaitpointTicket]:
    return {t.waitpoint_id: t for t in (suspension.waitpoint, *suspension.extra_waitpoints)}


def test_an_all_of_condition_resumes_when_every_leaf_has_a_signal(ff_engine, ff_redis):
    tree = all_of("", single("members[0]", "key-a"), single("members[1]", "key-b"))
    c, suspension = composite_suspension(ff_engine, tree)
    wp = tickets(suspension)
    first = deliver(c.eid, wp["wp-a"], "one")
    assert raw(ff_redis, first) == [1, "OK", first.signal_id, "appended_to_waitpoint"]
    assert members(ff_redis, c.keys.satisfied_set) == {"leaf:members[0]"}
    assert members(ff_redis, c.keys.satisfied_signals) == {first.signal_id}
    record = hash_of(ff_redis, c.keys.suspension_current)
    assert record["last_signal_at"] != ""
    second = deliver(c.eid, wp["wp-b"], "two")
    assert raw(ff_redis, second) == [1, "OK", second.signal_id, "resume_condition_satisfied"]
    assert seven(core(ff_engine, c.eid)) == RESUMED
    record = hash_of(ff_redis, c.keys.suspension_current)
    now = hash_of(ff_redis, c.keys.signal(second.signal_id))["accepted_at"]
    assert (record["satisfied_at"], record["closed_at"], record["close_reason"]) == (now, now, "resumed")
    assert record["closer_signal_id"] == second.signal_id
    assert set(json.loads(record["all_satisfier_signals"])) == {first.signal_id, second.signal_id}
    for key in (c.keys.satisfied_set, c.keys.satisfied_signals, c.keys.member_map):
        assert ff_redis.exists(key) == 0, key


def test_a_composite_resume_through_an_extra_leaves_the_primary_open(ff_engine, ff_redis):
    # §11.6 [verified]: only the extras listed in additional_waitpoints_json are closed
    tree = all_of("", single("members[0]", "key-a"), single("members[1]", "key-b"))
    c, suspension = composite_suspension(ff_engine, tree)
    wp = tickets(suspension)
    ff_engine.call(deliver(c.eid, wp["wp-a"]))
    second = deliver(c.eid, wp["wp-b"])
    ff_engine.call(second)
    now = hash_of(ff_redis, c.keys.signal(second.signal_id))["accepted_at"]
    extra = waitpoint_hash(ff_redis, c, "wp-b")
    assert (extra["state"], extra["satisfied_at"], extra["closed_at"], extra["close_reason"]) == (
        "closed",
        now,
        now,
        "resumed",
    )
    extra_condition = condition_hash(ff_redis, c, "wp-b")
    assert (extra_condition["closed"], extra_condition["closed_at"], extra_condition["closed_reason"]) == (
        "1",
        now,
        "satisfied",
    )
    assert waitpoint_hash(ff_redis, c, "wp-a")["state"] == "active"
    assert condition_hash(ff_redis, c, "wp-a")["closed"] == "0"


def test_a_composite_resume_through_the_primary_closes_the_extras(ff_engine, ff_redis):
    tree = all_of("", single("members[0]", "key-a"), single("members[1]", "key-b"))
    c, suspension = composite_suspension(ff_engine, tree)
    wp = tickets(suspension)
    ff_engine.call(deliver(c.eid, wp["wp-b"]))
    ff_engine.call(deliver(c.eid, wp["wp-a"]))
    for wp_id in ("wp-a", "wp-b"):
        assert waitpoint_hash(ff_redis, c, wp_id)["close_reason"] == "resumed"
        assert condition_hash(ff_redis, c, wp_id)["closed_reason"] == "satisfied"


def test_a_composite_satisfying_signal_does_not_touch_the_suspensions_last_signal_at(ff_engine, ff_redis):
    c, suspension = composite_suspension(ff_engine, single("", "key-a"), extras=())
    request = deliver(c.eid, suspension.waitpoint)
    assert ff_engine.call(request).effect == "resume_condition_satisfied"
    record = hash_of(ff_redis, c.keys.suspension_current)
    assert record["last_signal_at"] == ""
    assert record["closer_signal_id"] == request.signal_id
    assert json.loads(record["all_satisfier_signals"]) == [request.signal_id]
    waitpoint = waitpoint_hash(ff_redis, c, "wp-a")
    assert waitpoint["last_signal_at"] != "" and waitpoint["matched_signal_count"] == "1"


def test_a_count_of_distinct_waitpoints_counts_waitpoint_ids_not_repeat_signals(ff_engine, ff_redis):
    c, suspension = composite_suspension(ff_engine, count("", 2, ["key-a", "key-b"]))
    wp = tickets(suspension)
    assert ff_engine.call(deliver(c.eid, wp["wp-a"])).effect == "appended_to_waitpoint"
    assert members(ff_redis, c.keys.satisfied_set) == {"wp:wp-a"}  # the id, not the key (§11.9)
    repeat = deliver(c.eid, wp["wp-a"])
    assert ff_engine.call(repeat).effect == "appended_to_waitpoint_duplicate"
    assert repeat.signal_id not in members(ff_redis, c.keys.satisfied_signals)
    assert waitpoint_hash(ff_redis, c, "wp-a")["matched_signal_count"] == "2"  # a duplicate counts as matched
    assert ff_engine.call(deliver(c.eid, wp["wp-b"])).effect == "resume_condition_satisfied"


def test_a_count_of_distinct_signals_counts_each_signal(ff_engine):
    c, suspension = composite_suspension(ff_engine, count("", 2, ["key-a"], "DistinctSignals"), extras=())
    assert ff_engine.call(deliver(c.eid, suspension.waitpoint)).effect == "appended_to_waitpoint"
    assert ff_engine.call(deliver(c.eid, suspension.waitpoint)).effect == "resume_condition_satisfied"


def test_a_count_of_distinct_sources_counts_source_type_and_identity(ff_engine, ff_redis):
    c, suspension = composite_suspension(ff_engine, count("", 2, ["key-a"], "DistinctSources"), extras=())
    alice = {"source_type": "user", "source_identity": "alice"}
    assert ff_engine.call(deliver(c.eid, suspension.waitpoint, **alice)).effect == "appended_to_waitpoint"
    assert members(ff_redis, c.keys.satisfied_set) == {"src:user:alice"}
    again = ff_engine.call(deliver(c.eid, suspension.waitpoint, **alice))
    assert again.effect == "appended_to_waitpoint_duplicate"
    bob = {"source_type": "user", "source_identity": "bob"}
    assert ff_engine.call(deliver(c.eid, suspension.waitpoint, **bob)).effect == "resume_condition_satisfied"


def test_count_nodes_count_tokens_across_the_whole_set(ff_engine):
    # §11.9: two signals on key-a satisfy the Count over key-b as well
    tree = all_of(
        "",
        count("members[0]", 2, ["key-a"], "DistinctSignals"),
        count("members[1]", 2, ["key-b"], "DistinctSignals"),
    )
    c, suspension = composite_suspension(ff_engine, tree)
    wp = tickets(suspension)
    assert ff_engine.call(deliver(c.eid, wp["wp-a"])).effect == "appended_to_waitpoint"
    assert ff_engine.call(deliver(c.eid, wp["wp-a"])).effect == "resume_condition_satisfied"


def test_an_all_of_with_a_count_child_propagates_node_tokens(ff_engine, ff_redis):
    tree = all_of("", single("members[0]", "key-a"), count("members[1]", 1, ["key-b"]))
    c, suspension = composite_suspension(ff_engine, tree)
    wp = tickets(suspension)
    assert ff_engine.call(deliver(c.eid, wp["wp-b"])).effect == "appended_to_waitpoint"
    assert members(ff_redis, c.keys.satisfied_set) == {"wp:wp-b", "node:members[1]"}
    assert ff_engine.call(deliver(c.eid, wp["wp-a"])).effect == "resume_condition_satisfied"


def test_a_nested_all_of_of_leaves_resumes_when_every_leaf_is_set(ff_engine, ff_redis):
    tree = all_of(
        "",
        all_of("members[0]", single("members[0].members[0]", "key-a"), single("members[0].members[1]", "key-b")),
        single("members[1]", "key-c"),
    )
    c, suspension = composite_suspension(ff_engine, tree, extras=(("wp-b", "key-b"), ("wp-c", "key-c")))
    wp = tickets(suspension)
    assert ff_engine.call(deliver(c.eid, wp["wp-c"])).effect == "appended_to_waitpoint"
    assert ff_engine.call(deliver(c.eid, wp["wp-a"])).effect == "appended_to_waitpoint"
    assert ff_engine.call(deliver(c.eid, wp["wp-b"])).effect == "resume_condition_satisfied"
    assert hash_of(ff_redis, c.keys.suspension_current)["close_reason"] == "resumed"
    for wp_id in ("wp-b", "wp-c"):
        assert waitpoint_hash(ff_redis, c, wp_id)["state"] == "closed"


def test_a_matcher_that_rejects_the_name_answers_signal_ignored_matcher_failed(ff_engine, ff_redis):
    c, suspension = composite_suspension(
        ff_engine, single("", "key-a", {"kind": "ByName", "name": "approve"}), extras=()
    )
    request = deliver(c.eid, suspension.waitpoint, "reject")
    assert raw(ff_redis, request) == [1, "OK", request.signal_id, "signal_ignored_matcher_failed"]
    waitpoint = waitpoint_hash(ff_redis, c, "wp-a")
    assert (waitpoint["signal_count"], waitpoint["matched_signal_count"]) == ("1", "0")
    assert ff_redis.exists(c.keys.satisfied_set) == 0
    assert ff_engine.call(deliver(c.eid, suspension.waitpoint, "approve")).effect == "resume_condition_satisfied"


@pytest.mark.parametrize("matcher", [{"kind": "Wildcard"}, None, {"name": "ignored-without-kind"}])
def test_wildcard_null_and_kindless_matchers_accept_any_signal(ff_engine, matcher):
    c, suspension = composite_suspension(ff_engine, single("", "key-a", matcher), extras=())
    assert ff_engine.call(deliver(c.eid, suspension.waitpoint, "anything")).effect == "resume_condition_satisfied"


def test_a_signal_on_a_waitpoint_the_tree_does_not_name_is_ignored(ff_engine, ff_redis):
    c, suspension = composite_suspension(ff_engine, single("", "key-b"))
    request = deliver(c.eid, suspension.waitpoint)
    assert raw(ff_redis, request) == [1, "OK", request.signal_id, "signal_ignored_not_in_condition"]
    assert waitpoint_hash(ff_redis, c, "wp-a")["matched_signal_count"] == "0"
    assert seven(core(ff_engine, c.eid)) == SUSPENDED


def test_a_never_by_signal_member_keeps_an_all_of_unsatisfied(ff_engine):
    tree = all_of("", single("members[0]", "key-a"), {"kind": "NeverBySignal", "path": "members[1]"})
    c, suspension = composite_suspension(ff_engine, tree, extras=())
    assert ff_engine.call(deliver(c.eid, suspension.waitpoint)).effect == "appended_to_waitpoint"
    assert ff_engine.call(deliver(c.eid, suspension.waitpoint)).effect == "appended_to_waitpoint_duplicate"
    assert seven(core(ff_engine, c.eid)) == SUSPENDED


def test_a_timeout_token_satisfies_a_count_node(ff_engine, ff_redis):
    c, suspension = composite_suspension(ff_engine, count("", 5, ["key-a"], "DistinctSignals"), extras=())
    ff_redis.sadd(c.keys.satisfied_set, "timeout:*")
    assert ff_engine.call(deliver(c.eid, suspension.waitpoint)).effect == "resume_condition_satisfied"


def test_a_composite_of_an_unknown_version_is_never_satisfied(ff_engine):
    c, _, suspension = suspended(
        ff_engine, waitpoint_id="wp-a", waitpoint_key="key-a", condition=composite(single("", "key-a"), v=2)
    )
    assert ff_engine.call(deliver(c.eid, suspension.waitpoint)).effect == "signal_ignored_not_in_condition"
    assert seven(core(ff_engine, c.eid)) == SUSPENDED


# -- ff_buffer_signal_for_pending_waitpoint (§4.3) --------------------------------------------------


def test_buffer_keys_are_the_first_8_of_deliver_plus_the_keystore(ff_engine):
    eid = ExecutionId.mint(PARTITION)
    request = buffer(eid, ("wp", "t"), signal_id="sig")
    assert request.keys() == [*deliver(eid, ("wp", "t"), signal_id="sig").keys()[:8], IDX.waitpoint_hmac]


def test_buffer_records_the_signal_without_evaluating_it(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    request = buffer(c.eid, ticket, "early", source_identity="svc", payload=b"data", correlation_id="c1")
    assert raw(ff_redis, request) == [1, "OK", request.signal_id, BUFFERED]
    signal = hash_of(ff_redis, c.keys.signal(request.signal_id))
    now = signal["accepted_at"]
    assert signal == {
        "signal_id": request.signal_id,
        "target_execution_id": c.eid,
        "target_waitpoint_id": ticket.waitpoint_id,
        "target_scope": "waitpoint",
        "signal_name": "early",
        "signal_category": "signal",
        "source_type": "external",
        "source_identity": "svc",
        "correlation_id": "c1",
        "idempotency_key": "",
        "created_at": now,
        "accepted_at": now,
        "matched_waitpoint_id": ticket.waitpoint_id,
        "payload_encoding": "json",
        "observed_effect": BUFFERED,
    }
    assert ff_redis.get(c.keys.signal_payload(request.signal_id)) == b"data"
    (entry,) = entries(ff_redis, c.keys.waitpoint_signals(ticket.waitpoint_id))
    assert list(entry) == STREAM_ENTRY_FIELDS
    assert (entry["signal_id"], entry["signal_name"], entry["matched"], entry["accepted_at"]) == (
        request.signal_id,
        "early",
        "0",
        now,
    )
    assert ff_redis.zscore(c.keys.signals, request.signal_id) == int(now)
    assert ff_redis.exists(IDX.signal_delivery) == 0
    waitpoint = waitpoint_hash(ff_redis, c, ticket.waitpoint_id)
    assert (waitpoint["state"], waitpoint["signal_count"], waitpoint["last_signal_at"]) == ("pending", "0", "")
    assert seven(core(ff_engine, c.eid)) == ACTIVE_LEASED


def test_buffer_to_a_missing_execution_answers_execution_not_found(ff_engine):
    expect_error(ff_engine, buffer(ExecutionId.mint(PARTITION), ("wp", "t")), "execution_not_found", [])


def test_buffer_to_a_missing_waitpoint_answers_waitpoint_not_found(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    expect_error(ff_engine, buffer(c.eid, ("other", ticket.token)), "waitpoint_not_found", [])
    assert "last_hmac_validation_failed_at" not in core(ff_engine, c.eid)


def test_buffer_to_a_waitpoint_without_created_at_answers_waitpoint_not_found(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    ff_redis.hdel(c.keys.waitpoint(ticket.waitpoint_id), "created_at")
    expect_error(ff_engine, buffer(c.eid, ticket), "waitpoint_not_found", [])


@pytest.mark.parametrize("state", ["closed", "expired"])
def test_buffer_to_a_closed_waitpoint_answers_waitpoint_closed(ff_engine, ff_redis, state):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    ff_redis.hset(c.keys.waitpoint(ticket.waitpoint_id), "state", state)
    before = keyspace(ff_redis)
    expect_error(ff_engine, buffer(c.eid, ticket), "waitpoint_closed", [])
    assert keyspace(ff_redis) == before


def test_buffer_authenticates_before_checking_the_waitpoint_state(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    ff_redis.hset(c.keys.waitpoint(ticket.waitpoint_id), "state", "closed")
    expect_error(ff_engine, buffer(c.eid, (ticket.waitpoint_id, "k1:" + "0" * 40)), "invalid_token", [])
    assert core(ff_engine, c.eid)["last_hmac_validation_failed_at"] != ""


def test_buffer_reports_a_closed_waitpoint_before_the_signal_cap(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    ff_engine.call(buffer(c.eid, ticket))
    ff_redis.hset(c.keys.waitpoint(ticket.waitpoint_id), "state", "closed")
    expect_error(ff_engine, buffer(c.eid, ticket, max_signals_per_execution=1), "waitpoint_closed")


def test_buffer_past_the_signal_cap_answers_signal_limit_exceeded(ff_engine):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    ff_engine.call(buffer(c.eid, ticket, max_signals_per_execution=1))
    expect_error(ff_engine, buffer(c.eid, ticket, max_signals_per_execution=1), "signal_limit_exceeded", [])


def test_a_signal_the_wait_cannot_use_keeps_no_payload(ff_engine, ff_redis):
    # deliberate deviation (a token must not let its holder fill the server): FlowFabric keeps it
    c, _, suspension = suspended(ff_engine, waitpoint_id="wp-1", condition=names("a"))
    ignored = deliver(c.eid, suspension.waitpoint, "zzz", payload=b"x" * 1000)
    assert ff_engine.call(ignored).effect == "no_op"
    assert not ff_redis.exists(c.keys.signal_payload(ignored.signal_id))
    assert hash_of(ff_redis, c.keys.signal(ignored.signal_id))["observed_effect"] == "no_op"
    used = deliver(c.eid, suspension.waitpoint, "a", payload=b"y" * 10)
    assert ff_engine.call(used).effect == "resume_condition_satisfied"
    assert ff_redis.get(c.keys.signal_payload(used.signal_id)) == b"y" * 10


def test_a_waitpoint_takes_at_most_1000_signals_and_4_mib_of_payload(ff_engine, ff_redis):
    # deliberate deviation: FlowFabric only caps signals per execution (10 000, any size)
    c = claimed(ff_engine)
    by_bytes = pending(ff_engine, c)
    for _ in range(16):
        ff_engine.call(buffer(c.eid, by_bytes, payload=b"p" * (256 * 1024)))
    before = keyspace(ff_redis)
    expect_error(ff_engine, buffer(c.eid, by_bytes, payload=b"p"), "signal_limit_exceeded", [])
    assert keyspace(ff_redis) == before
    by_count = pending(ff_engine, c)
    requests = [buffer(c.eid, by_count) for _ in range(1000)]
    assert all(reply.effect == BUFFERED for reply in ff_engine.call_many(requests))
    expect_error(ff_engine, buffer(c.eid, by_count), "signal_limit_exceeded", [])
    assert ff_engine.call(buffer(c.eid, pending(ff_engine, c))).effect == BUFFERED  # another waitpoint


def test_buffer_with_a_repeated_idempotency_key_answers_duplicate(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    first = buffer(c.eid, ticket, idempotency_key="once")
    ff_engine.call(first)
    assert ff_redis.get(ExecKeys(c.eid).signal_dedup(ticket.waitpoint_id, "once")) == first.signal_id.encode()
    before = keyspace(ff_redis)
    retry = first.model_copy(update={"signal_id": new_uuid()})
    assert raw(ff_redis, retry) == [1, "DUPLICATE", first.signal_id]
    assert keyspace(ff_redis) == before


def test_buffer_accepts_an_active_waitpoint_without_evaluating_the_signal(ff_engine, ff_redis):
    c, _, suspension = suspended(ff_engine, waitpoint_id="wp-1")
    request = buffer(c.eid, suspension.waitpoint)
    assert ff_engine.call(request).effect == BUFFERED
    assert seven(core(ff_engine, c.eid)) == SUSPENDED
    assert condition_hash(ff_redis, c, "wp-1")["satisfied_count"] == "0"


def test_buffer_ignores_argv_15(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    request = buffer(c.eid, ticket)
    argv = request.argv()
    argv[14] = "not-a-number"
    assert raw(ff_redis, request, argv) == [1, "OK", request.signal_id, BUFFERED]


@pytest.mark.parametrize(
    ("position", "name"), [(13, "dedup_ttl_ms"), (15, "signal_maxlen"), (16, "max_signals_per_execution")]
)
def test_buffer_with_malformed_numeric_argv_answers_invalid_input_before_writing(ff_engine, ff_redis, position, name):
    # deliberate deviation: the reference raises a Lua error
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    request = buffer(c.eid, ticket)
    argv = request.argv()
    argv[position] = "x"
    before = keyspace(ff_redis)
    assert raw(ff_redis, request, argv) == [0, "invalid_input", f"{name} must be a number, got: x"]
    assert keyspace(ff_redis) == before


def test_buffer_with_an_empty_dedup_ttl_disables_dedup(ff_engine, ff_redis):
    # deliberate deviation (§0.5: the reference crashes on an empty ARGV 14)
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    request = buffer(c.eid, ticket, idempotency_key="once")
    argv = request.argv()
    argv[13] = ""
    assert raw(ff_redis, request, argv)[1] == "OK"
    assert ff_redis.exists(ExecKeys(c.eid).signal_dedup(ticket.waitpoint_id, "once")) == 0


# -- the resume path: ff_claim_resumed_execution after a signal (§4.5) ------------------------------------


def test_a_signal_resumed_execution_is_claimed_again_on_the_same_attempt_with_the_next_epoch(ff_engine, ff_redis):
    c, _, suspension = suspended(ff_engine)
    ff_engine.call(deliver(c.eid, suspension.waitpoint))
    state = core(ff_engine, c.eid)
    assert (state["lifecycle_phase"], state["attempt_state"]) == ("runnable", "attempt_interrupted")
    grant(ff_engine, c.eid)
    with pytest.raises(EngineError) as fresh:
        ff_engine.call(
            fn.ClaimExecution(
                execution_id=c.eid,
                worker_id=WORKER,
                worker_instance_id=WIID,
                lane_id=LANE,
                lease_id=new_uuid(),
                lease_ttl_ms=30_000,
                attempt_id=new_uuid(),
            )
        )
    assert fresh.value.code == "use_claim_resumed_execution"
    request = fn.ClaimResumedExecution(
        execution_id=c.eid,
        worker_id=WORKER,
        worker_instance_id=WIID,
        lane_id=LANE,
        lease_id=new_uuid(),
        lease_ttl_ms=30_000,
        attempt_index=0,
    )
    reply = raw(ff_redis, request)
    assert reply[:2] == [1, "OK"] and len(reply) == 8
    assert (reply[2], reply[3], reply[5], reply[6], reply[7]) == (
        request.lease_id,
        "2",
        c.fence.attempt_id,
        "0",
        "resumed",
    )
    state = core(ff_engine, c.eid)
    now = state["lease_acquired_at"]
    assert int(reply[4]) == int(now) + 30_000
    assert seven(state) == ACTIVE_LEASED
    assert (state["current_attempt_index"], state["total_attempt_count"], state["current_lease_epoch"]) == (
        "0",
        "1",
        "2",
    )
    attempt = hash_of(ff_redis, c.keys.attempt(0))
    assert (attempt["attempt_state"], attempt["resumed_at"], attempt["lease_id"], attempt["lease_epoch"]) == (
        "started",
        now,
        request.lease_id,
        "2",
    )
    assert (attempt["suspended_at"], attempt["suspension_id"]) == ("", "")
    assert ff_redis.exists(c.keys.attempt(1)) == 0
    assert ff_redis.zscore(IDX.eligible(LANE), c.eid) is None
    event = entries(ff_redis, c.keys.lease_history)[-1]
    assert (event["event"], event["reason"], event["lease_epoch"], event["attempt_index"]) == (
        "acquired",
        "claim_resumed",
        "2",
        "0",
    )


def test_a_resume_delayed_execution_is_claimable_after_promotion(ff_engine, ff_redis):
    # §9: "delayed_promoter ... promotes resume-delayed executions" (core §5.12 row 12). The resume
    # transition never writes exec_core.delay_until, which stays "" from creation, and
    # ff_promote_delayed compares tonumber("") with now: a Lua error instead of "promoted".
    c, _, suspension = suspended(ff_engine)
    ff_engine.call(deliver(c.eid, suspension.waitpoint, resume_delay_ms=10))
    due_at = int(ff_redis.zscore(IDX.delayed(LANE), c.eid))
    assert ff_engine.call(fn.PromoteDelayed(execution_id=c.eid, lane_id=LANE, now_ms=due_at)) == "promoted"
    again = claim_resumed(ff_engine, c.eid)
    assert (again.attempt_index, again.fence.lease_epoch, again.fence.attempt_id) == (0, 2, c.fence.attempt_id)


# -- ff_resume_execution (§4.6) ---------------------------------------------------------------------


def test_resume_replies_waiting_and_makes_the_execution_eligible(ff_engine, ff_redis):
    c = claimed(ff_engine, priority=3)
    timeout_at = server_ms(ff_redis) + 60_000
    ff_engine.call(suspend_request(c, waitpoint_id="wp-1", timeout_at=timeout_at))
    request = resume_request(c.eid, "wp-1")
    assert request.keys() == [
        c.keys.core,
        c.keys.suspension_current,
        c.keys.waitpoint("wp-1"),
        c.keys.waitpoint_signals("wp-1"),
        IDX.suspension_timeout,
        IDX.eligible(LANE),
        IDX.delayed(LANE),
        IDX.suspended(LANE),
    ]
    assert request.argv() == [c.eid, "operator", "0"]
    assert raw(ff_redis, request) == [1, "OK", "waiting"]
    state = core(ff_engine, c.eid)
    now = state["last_transition_at"]
    assert seven(state) == RESUMED
    assert (state["blocking_detail"], state["current_suspension_id"], state["current_waitpoint_id"]) == ("", "", "")
    assert state["last_mutation_at"] == now
    assert ff_redis.zscore(IDX.eligible(LANE), c.eid) == -3 * WEIGHT + int(state["created_at"])
    for key in (IDX.suspended(LANE), IDX.suspension_timeout):
        assert ff_redis.zscore(key, c.eid) is None, key
    waitpoint = waitpoint_hash(ff_redis, c, "wp-1")
    assert (waitpoint["state"], waitpoint["satisfied_at"], waitpoint["closed_at"], waitpoint["close_reason"]) == (
        "closed",
        now,
        now,
        "resumed",
    )
    record = hash_of(ff_redis, c.keys.suspension_current)
    assert (record["satisfied_at"], record["closed_at"], record["close_reason"]) == (now, now, "resumed")
    assert condition_hash(ff_redis, c, "wp-1")["closed"] == "0"  # §4.6: the primary condition stays open
    again = claim_resumed(ff_engine, c.eid)
    assert (again.attempt_index, again.fence.lease_epoch) == (0, 2)


def test_resume_with_a_delay_replies_delayed(ff_engine, ff_redis):
    c, _, _ = suspended(ff_engine, waitpoint_id="wp-1")
    assert raw(ff_redis, resume_request(c.eid, "wp-1", delay_ms=250)) == [1, "OK", "delayed"]
    state = core(ff_engine, c.eid)
    assert seven(state) == RESUME_DELAYED
    assert state["blocking_detail"] == "resume delay 250ms"
    assert ff_redis.zscore(IDX.delayed(LANE), c.eid) == int(state["last_transition_at"]) + 250
    assert ff_redis.zscore(IDX.eligible(LANE), c.eid) is None


def test_resume_ignores_the_trigger_type(ff_engine, ff_redis):
    c, _, _ = suspended(ff_engine, waitpoint_id="wp-1")
    request = resume_request(c.eid, "wp-1")
    assert raw(ff_redis, request, [c.eid, "anything", "0"]) == [1, "OK", "waiting"]


def test_resume_closes_composite_state_and_the_extra_waitpoints(ff_engine, ff_redis):
    tree = all_of("", single("members[0]", "key-a"), single("members[1]", "key-b"))
    c, suspension = composite_suspension(ff_engine, tree)
    ff_engine.call(deliver(c.eid, tickets(suspension)["wp-a"]))
    ff_engine.call(resume_request(c.eid, "wp-a"))
    for key in (c.keys.satisfied_set, c.keys.satisfied_signals, c.keys.member_map):
        assert ff_redis.exists(key) == 0, key
    extra = waitpoint_hash(ff_redis, c, "wp-b")
    now = core(ff_engine, c.eid)["last_transition_at"]
    assert (extra["state"], extra["closed_at"], extra["close_reason"]) == ("closed", now, "resumed")
    extra_condition = condition_hash(ff_redis, c, "wp-b")
    assert (extra_condition["closed"], extra_condition["closed_at"], extra_condition["closed_reason"]) == (
        "1",
        now,
        "resumed",
    )
    assert condition_hash(ff_redis, c, "wp-a")["closed"] == "0"
    assert "closer_signal_id" not in hash_of(ff_redis, c.keys.suspension_current)


def test_resume_of_a_missing_execution_answers_execution_not_found(ff_engine):
    expect_error(ff_engine, resume_request(ExecutionId.mint(PARTITION), "wp"), "execution_not_found", [])


def test_resume_of_an_active_execution_answers_execution_not_suspended(ff_engine, ff_redis):
    c = claimed(ff_engine)
    before = keyspace(ff_redis)
    expect_error(ff_engine, resume_request(c.eid, "wp"), "execution_not_suspended", [])
    assert keyspace(ff_redis) == before


@pytest.mark.parametrize("damage", ["missing", "closed", "no_id"])
def test_resume_without_an_open_suspension_answers_execution_not_suspended(ff_engine, ff_redis, damage):
    c, _, _ = suspended(ff_engine, waitpoint_id="wp-1")
    if damage == "missing":
        ff_redis.delete(c.keys.suspension_current)
    elif damage == "closed":
        ff_redis.hset(c.keys.suspension_current, "closed_at", "1")
    else:
        ff_redis.hset(c.keys.suspension_current, "suspension_id", "")
    expect_error(ff_engine, resume_request(c.eid, "wp-1"), "execution_not_suspended", [])
    assert seven(core(ff_engine, c.eid)) == SUSPENDED


def test_resume_twice_answers_execution_not_suspended(ff_engine):
    c, _, _ = suspended(ff_engine, waitpoint_id="wp-1")
    ff_engine.call(resume_request(c.eid, "wp-1"))
    expect_error(ff_engine, resume_request(c.eid, "wp-1"), "execution_not_suspended")


@pytest.mark.parametrize("value", ["soon", ""])
def test_resume_with_a_malformed_delay_answers_invalid_input_before_writing(ff_engine, ff_redis, value):
    # deliberate deviation: the reference raises a Lua error
    c, _, _ = suspended(ff_engine, waitpoint_id="wp-1")
    before = keyspace(ff_redis)
    reply = raw(ff_redis, resume_request(c.eid, "wp-1"), [c.eid, "operator", value])
    assert reply == [0, "invalid_input", f"resume_delay_ms must be a number, got: {value}"]
    assert keyspace(ff_redis) == before


# -- ff_expire_suspension (§4.7, Errata S1) ---------------------------------------------------------------


def test_expire_suspension_keys_follow_the_spec(ff_engine):
    eid = ExecutionId.mint(PARTITION)
    x = ExecKeys(eid)
    assert expire_request(eid, "wp", attempt_index=2).keys() == [
        x.core,
        x.suspension_current,
        x.waitpoint("wp"),
        x.waitpoint_condition("wp"),
        x.attempt(2),
        x.stream_meta(2),
        IDX.suspension_timeout,
        IDX.suspended(LANE),
        IDX.terminal(LANE),
        IDX.eligible(LANE),
        IDX.delayed(LANE),
        x.lease_history,
    ]


@pytest.mark.parametrize(
    ("behavior", "outcome", "attempt_state", "close_reason"),
    [
        ("fail", "failed", "ended_failure", "timed_out_fail"),
        ("cancel", "cancelled", "ended_cancelled", "timed_out_cancel"),
        ("expire", "expired", "ended_failure", "timed_out_expire"),
    ],
)
def test_a_due_suspension_with_a_terminal_behaviour_ends_the_execution(
    ff_engine, ff_redis, behavior, outcome, attempt_state, close_reason
):
    c, suspension = due(ff_engine, ff_redis, behavior, waitpoint_id="wp-1")
    meta = c.keys.stream_meta(0)
    ff_redis.hset(meta, mapping={"created_at": "1"})
    assert raw(ff_redis, expire_request(c.eid, "wp-1")) == [1, "OK", behavior, outcome]
    state = core(ff_engine, c.eid)
    now = state["completed_at"]
    assert seven(state) == ("terminal", "unowned", "not_applicable", "none", outcome, "attempt_terminal", outcome)
    assert state["failure_reason"] == f"suspension_timeout:{behavior}"
    attempt = hash_of(ff_redis, c.keys.attempt(0))
    assert (
        attempt["attempt_state"],
        attempt["ended_at"],
        attempt["failure_reason"],
        attempt["suspended_at"],
        attempt["suspension_id"],
    ) == (attempt_state, now, f"suspension_timeout:{behavior}", "", "")
    assert hash_of(ff_redis, meta)["closed_reason"] == "suspension_timeout"
    waitpoint = waitpoint_hash(ff_redis, c, "wp-1")
    assert (waitpoint["state"], waitpoint["closed_at"], waitpoint["close_reason"]) == ("closed", now, close_reason)
    condition = condition_hash(ff_redis, c, "wp-1")
    assert (condition["closed"], condition["closed_at"], condition["closed_reason"]) == ("1", now, close_reason)
    record = hash_of(ff_redis, c.keys.suspension_current)
    assert (record["closed_at"], record["close_reason"]) == (now, close_reason)
    assert ff_redis.zscore(IDX.suspension_timeout, c.eid) is None
    assert ff_redis.zscore(IDX.suspended(LANE), c.eid) is None
    assert ff_redis.zscore(IDX.terminal(LANE), c.eid) == int(now)
    assert suspension.waitpoint.waitpoint_id == "wp-1"


def test_an_unknown_timeout_behaviour_fails_the_execution(ff_engine, ff_redis):
    c = claimed(ff_engine)
    request = suspend_request(c, waitpoint_id="wp-1", timeout_at=server_ms(ff_redis) + DUE_IN_MS)
    argv = request.argv()
    argv[15] = "shrug"
    raw(ff_redis, request, argv)
    time.sleep(DUE_WAIT_S)
    assert raw(ff_redis, expire_request(c.eid, "wp-1")) == [1, "OK", "shrug", "failed"]
    state = core(ff_engine, c.eid)
    assert (state["terminal_outcome"], state["failure_reason"]) == ("failed", "suspension_timeout:shrug")
    assert waitpoint_hash(ff_redis, c, "wp-1")["close_reason"] == "timed_out_fail"


def test_a_terminal_suspension_timeout_without_stream_meta_creates_none(ff_engine, ff_redis):
    c, _ = due(ff_engine, ff_redis, "fail", waitpoint_id="wp-1")
    ff_engine.call(expire_request(c.eid, "wp-1"))
    assert ff_redis.exists(c.keys.stream_meta(0)) == 0


def test_a_terminal_suspension_timeout_of_a_flow_member_publishes_its_completion(ff_engine, ff_redis):
    c, _ = due(ff_engine, ff_redis, "cancel", waitpoint_id="wp-1")
    ff_redis.hset(c.keys.core, "flow_id", "flow-1")
    pubsub = ff_redis.pubsub()
    pubsub.subscribe("ff:dag:completions")
    try:
        # the server confirms the subscription before anything is published to it
        confirmed = pubsub.get_message(timeout=10)
        assert confirmed is not None and confirmed["type"] == "subscribe"
        ff_engine.call(expire_request(c.eid, "wp-1"))
        message = pubsub.get_message(timeout=10)
    finally:
        pubsub.close()
    assert message is not None and message["type"] == "message"
    assert json.loads(message["data"]) == {"execution_id": c.eid, "flow_id": "flow-1", "outcome": "cancelled"}


@pytest.mark.parametrize("behavior", ["auto_resume", "auto_resume_with_timeout_signal"])
def test_a_due_auto_resume_suspension_resumes_the_execution(ff_engine, ff_redis, behavior):
    c, _ = due(ff_engine, ff_redis, behavior, waitpoint_id="wp-1", claim={"priority": 2})
    assert raw(ff_redis, expire_request(c.eid, "wp-1")) == [1, "OK", "auto_resume", "waiting"]
    state = core(ff_engine, c.eid)
    now = state["last_transition_at"]
    assert seven(state) == RESUMED
    assert (state["current_suspension_id"], state["current_waitpoint_id"], state["blocking_detail"]) == ("", "", "")
    assert ff_redis.zscore(IDX.eligible(LANE), c.eid) == -2 * WEIGHT + int(state["created_at"])
    for key in (IDX.suspended(LANE), IDX.suspension_timeout):
        assert ff_redis.zscore(key, c.eid) is None, key
    assert waitpoint_hash(ff_redis, c, "wp-1")["close_reason"] == "timed_out_auto_resume"
    condition = condition_hash(ff_redis, c, "wp-1")
    assert (condition["closed"], condition["closed_reason"]) == ("1", "timed_out_auto_resume")
    record = hash_of(ff_redis, c.keys.suspension_current)
    assert (record["closed_at"], record["close_reason"]) == (now, "timed_out_auto_resume")
    # no synthetic timeout signal is injected (§11.7)
    assert ff_redis.exists(c.keys.signals) == 0
    again = claim_resumed(ff_engine, c.eid)
    assert (again.attempt_index, again.fence.lease_epoch) == (0, 2)


def test_a_due_escalate_suspension_stays_suspended_for_an_operator(ff_engine, ff_redis):
    c, _ = due(ff_engine, ff_redis, "escalate", waitpoint_id="wp-1")
    timeout_at = hash_of(ff_redis, c.keys.suspension_current)["timeout_at"]
    assert raw(ff_redis, expire_request(c.eid, "wp-1")) == [1, "OK", "escalate", "suspended"]
    state = core(ff_engine, c.eid)
    assert (state["lifecycle_phase"], state["public_state"], state["blocking_reason"]) == (
        "suspended",
        "suspended",
        "paused_by_operator",
    )
    assert state["blocking_detail"] == f"suspension escalated: timeout at {timeout_at}"
    record = hash_of(ff_redis, c.keys.suspension_current)
    assert (record["reason_code"], record["timeout_at"], record["timeout_behavior"], record["closed_at"]) == (
        "waiting_for_operator_review",
        "",
        "",
        "",
    )
    assert ff_redis.zscore(IDX.suspension_timeout, c.eid) is None
    assert ff_redis.zscore(IDX.suspended(LANE), c.eid) == int(timeout_at)
    assert waitpoint_hash(ff_redis, c, "wp-1")["state"] == "active"
    # the escalated suspension has an empty timeout_at; ours answers not_yet_due (Errata S1: the
    # reference raises a Lua error here)
    assert raw(ff_redis, expire_request(c.eid, "wp-1")) == [1, "OK", "not_yet_due"]
    assert ff_engine.call(resume_request(c.eid, "wp-1")) == "waiting"


def test_a_suspension_not_yet_due_is_left_alone(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ff_engine.call(suspend_request(c, waitpoint_id="wp-1", timeout_at=server_ms(ff_redis) + 60_000))
    before = keyspace(ff_redis)
    assert raw(ff_redis, expire_request(c.eid, "wp-1")) == [1, "OK", "not_yet_due"]
    assert keyspace(ff_redis) == before
    assert ff_engine.call(expire_request(c.eid, "wp-1")) == ("not_yet_due", None)


def test_a_suspension_with_a_zero_timeout_is_never_due(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ff_engine.call(suspend_request(c, waitpoint_id="wp-1", timeout_at=0))
    assert ff_redis.zscore(IDX.suspension_timeout, c.eid) == 0
    assert raw(ff_redis, expire_request(c.eid, "wp-1")) == [1, "OK", "not_yet_due"]
    assert seven(core(ff_engine, c.eid)) == SUSPENDED


def test_a_suspension_without_a_timeout_field_is_never_due(ff_engine, ff_redis):
    c, _, _ = suspended(ff_engine, waitpoint_id="wp-1")
    ff_redis.hdel(c.keys.suspension_current, "timeout_at")
    assert raw(ff_redis, expire_request(c.eid, "wp-1")) == [1, "OK", "not_yet_due"]


def test_a_suspension_with_an_empty_timeout_answers_not_yet_due(ff_engine, ff_redis):
    # deliberate deviation (Errata S1): the reference raises a Lua error for an empty timeout_at
    c, _, _ = suspended(ff_engine, waitpoint_id="wp-1")
    assert hash_of(ff_redis, c.keys.suspension_current)["timeout_at"] == ""
    assert raw(ff_redis, expire_request(c.eid, "wp-1")) == [1, "OK", "not_yet_due"]
    assert seven(core(ff_engine, c.eid)) == SUSPENDED


def test_expire_suspension_of_a_missing_execution_cleans_the_timeout_index(ff_engine, ff_redis):
    eid = ExecutionId.mint(PARTITION)
    ff_redis.zadd(IDX.suspension_timeout, {eid: 1})
    assert raw(ff_redis, expire_request(eid, "wp")) == [1, "OK", "not_found_cleaned"]
    assert ff_redis.zscore(IDX.suspension_timeout, eid) is None


def test_expire_suspension_of_a_resumed_execution_cleans_the_timeout_index(ff_engine, ff_redis):
    c, _ = due(ff_engine, ff_redis, "fail", waitpoint_id="wp-1")
    ff_engine.call(resume_request(c.eid, "wp-1"))
    ff_redis.zadd(IDX.suspension_timeout, {c.eid: 1})
    assert raw(ff_redis, expire_request(c.eid, "wp-1")) == [1, "OK", "not_suspended_cleaned"]
    assert ff_redis.zscore(IDX.suspension_timeout, c.eid) is None
    assert seven(core(ff_engine, c.eid)) == RESUMED
    assert ff_engine.call(expire_request(c.eid, "wp-1")) == ("not_suspended_cleaned", None)


@pytest.mark.parametrize("damage", ["missing", "closed"])
def test_expire_suspension_without_an_open_suspension_cleans_the_timeout_index(ff_engine, ff_redis, damage):
    c, _ = due(ff_engine, ff_redis, "fail", waitpoint_id="wp-1")
    if damage == "missing":
        ff_redis.delete(c.keys.suspension_current)
    else:
        ff_redis.hset(c.keys.suspension_current, "closed_at", "1")
    assert raw(ff_redis, expire_request(c.eid, "wp-1")) == [1, "OK", "no_active_suspension_cleaned"]
    assert ff_redis.zscore(IDX.suspension_timeout, c.eid) is None
    assert seven(core(ff_engine, c.eid)) == SUSPENDED


def test_a_due_composite_suspension_drops_its_composite_state_and_closes_the_extras(ff_engine, ff_redis):
    tree = all_of("", single("members[0]", "key-a"), single("members[1]", "key-b"))
    c, suspension = due(
        ff_engine,
        ff_redis,
        "expire",
        waitpoint_id="wp-a",
        waitpoint_key="key-a",
        condition=composite(tree),
        extras=(("wp-b", "key-b"),),
    )
    ff_engine.call(deliver(c.eid, suspension.waitpoint))
    assert ff_redis.exists(c.keys.satisfied_set) == 1
    ff_engine.call(expire_request(c.eid, "wp-a"))
    for key in (c.keys.satisfied_set, c.keys.satisfied_signals, c.keys.member_map):
        assert ff_redis.exists(key) == 0, key
    now = core(ff_engine, c.eid)["completed_at"]
    extra = waitpoint_hash(ff_redis, c, "wp-b")
    assert (extra["state"], extra["closed_at"], extra["close_reason"]) == ("closed", now, "timed_out_expire")
    extra_condition = condition_hash(ff_redis, c, "wp-b")
    assert (extra_condition["closed"], extra_condition["closed_reason"]) == ("1", "timed_out_expire")


# -- ff_close_waitpoint (§4.8) ------------------------------------------------------------------------


def test_close_waitpoint_closes_a_pending_waitpoint_and_drops_its_expiry(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    request = fn.CloseWaitpoint(execution_id=c.eid, waitpoint_id=ticket.waitpoint_id, reason="never_committed")
    assert request.keys() == [c.keys.core, c.keys.waitpoint(ticket.waitpoint_id), IDX.pending_waitpoint_expiry]
    assert raw(ff_redis, request) == [1, "OK"]
    waitpoint = waitpoint_hash(ff_redis, c, ticket.waitpoint_id)
    assert (waitpoint["state"], waitpoint["close_reason"], waitpoint["satisfied_at"]) == (
        "closed",
        "never_committed",
        "",
    )
    assert int(waitpoint["closed_at"]) >= int(waitpoint["created_at"])
    assert ff_redis.zscore(IDX.pending_waitpoint_expiry, ticket.waitpoint_id) is None
    assert ff_engine.call(request) is False  # already closed


def test_close_waitpoint_without_a_reason_uses_proactive_close(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    request = fn.CloseWaitpoint(execution_id=c.eid, waitpoint_id=ticket.waitpoint_id)
    assert raw(ff_redis, request, [ticket.waitpoint_id]) == [1, "OK"]
    assert waitpoint_hash(ff_redis, c, ticket.waitpoint_id)["close_reason"] == "proactive_close"


def test_close_waitpoint_of_an_active_waitpoint_leaves_condition_and_suspension_alone(ff_engine, ff_redis):
    c, _, _ = suspended(ff_engine, waitpoint_id="wp-1")
    assert ff_engine.call(fn.CloseWaitpoint(execution_id=c.eid, waitpoint_id="wp-1")) is True
    assert condition_hash(ff_redis, c, "wp-1")["closed"] == "0"
    assert hash_of(ff_redis, c.keys.suspension_current)["closed_at"] == ""
    assert seven(core(ff_engine, c.eid)) == SUSPENDED


@pytest.mark.parametrize("state", ["closed", "expired"])
def test_close_waitpoint_of_a_closed_waitpoint_answers_already_closed(ff_engine, ff_redis, state):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    ff_redis.hset(c.keys.waitpoint(ticket.waitpoint_id), "state", state)
    before = keyspace(ff_redis)
    request = fn.CloseWaitpoint(execution_id=c.eid, waitpoint_id=ticket.waitpoint_id)
    assert raw(ff_redis, request) == [1, "OK", "already_closed"]
    assert keyspace(ff_redis) == before


def test_close_waitpoint_of_a_missing_waitpoint_answers_waitpoint_not_found(ff_engine):
    request = fn.CloseWaitpoint(execution_id=ExecutionId.mint(PARTITION), waitpoint_id="nope")
    expect_error(ff_engine, request, "waitpoint_not_found", [])


def test_close_waitpoint_in_an_unknown_state_answers_waitpoint_not_open(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ticket = pending(ff_engine, c)
    ff_redis.hset(c.keys.waitpoint(ticket.waitpoint_id), "state", "weird")
    expect_error(
        ff_engine, fn.CloseWaitpoint(execution_id=c.eid, waitpoint_id=ticket.waitpoint_id), "waitpoint_not_open", []
    )
