"""Contract tests: lease renewal, outcomes and lease recovery.

Covers ff_renew_lease, ff_complete_execution, ff_fail_execution, ff_cancel_execution,
ff_delay_execution, ff_move_to_waiting_children, ff_mark_lease_expired_if_due,
ff_revoke_lease, ff_issue_reclaim_grant, ff_reclaim_execution, ff_expire_execution and
ff_update_progress against /work/shared/spec/flowfabric-core.md (Errata E1/E2, §3.1-§3.6,
§4, §5.7-§5.17, §5.20, §6.2, §6.3, §7), on a real server.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from ff_celery.engine import functions as fn
from ff_celery.engine.core.engine import Engine
from ff_celery.engine.core.errors import ExecutionNotActiveError
from ff_celery.engine.core.ids import ExecutionId, new_uuid
from ff_celery.engine.core.keys import ExecKeys, PartitionKeys

from .support import LANE, PARTITION, create, expect_error, hash_of, history, raw, seven

IDX = PartitionKeys(PARTITION)
WORKER, WIID = "worker-a", "worker-a-1"
OTHER_WORKER, OTHER_WIID = "worker-b", "worker-b-1"
FAR_MS = 4_102_444_800_000  # 2100-01-01, an absolute delay_until far ahead
SHORT_TTL_MS = 100
EXPIRY_WAIT_S = 0.15

LEASE_OWNER = ("current_lease_id", "current_worker_id", "current_worker_instance_id")
LEASE_TIMING = ("lease_expires_at", "lease_last_renewed_at", "lease_renewal_deadline")
LEASE_MARKERS = ("lease_expired_at", "lease_revoked_at", "lease_revoke_reason")
#: fields fail, cancel and delay leave alone (Errata E2: no function clears lease_acquired_at)
UNTOUCHED_BY_RELEASE = (*LEASE_MARKERS, "lease_acquired_at")

ACTIVE_LEASED = ("active", "leased", "not_applicable", "none", "none", "running_attempt", "active")
COMPLETED = ("terminal", "unowned", "not_applicable", "none", "success", "attempt_terminal", "completed")
RETRY_SCHEDULED = (
    "runnable",
    "unowned",
    "not_eligible_until_time",
    "waiting_for_retry_backoff",
    "none",
    "pending_retry_attempt",
    "delayed",
)
FAILED = ("terminal", "unowned", "not_applicable", "none", "failed", "attempt_terminal", "failed")
SELF_DELAYED = (
    "runnable",
    "unowned",
    "not_eligible_until_time",
    "waiting_for_delay",
    "none",
    "attempt_interrupted",
    "delayed",
)
WAITING_CHILDREN = (
    "runnable",
    "unowned",
    "blocked_by_dependencies",
    "waiting_for_children",
    "none",
    "attempt_interrupted",
    "waiting_children",
)
LEASE_EXPIRED = (
    "active",
    "lease_expired_reclaimable",
    "not_applicable",
    "waiting_for_worker",
    "none",
    "attempt_interrupted",
    "active",
)
LEASE_REVOKED = (
    "active",
    "lease_revoked",
    "not_applicable",
    "waiting_for_worker",
    "none",
    "attempt_interrupted",
    "active",
)

HOLDER_OPS = ("complete", "fail", "delay", "wait_children")


# -- helpers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    """An execution under a lease, as its holder knows it."""

    eid: ExecutionId
    fence: fn.Fence
    attempt_index: int
    expires_at: int
    worker_id: str = WORKER
    wiid: str = WIID

    @property
    def keys(self) -> ExecKeys:
        return ExecKeys(self.eid)


def core(engine: Engine, eid: ExecutionId) -> dict[str, str]:
    return engine.read_core(eid)


def score(r: redis.Redis, key: str, eid: ExecutionId) -> float | None:
    return r.zscore(key, eid)


def pexpiretime(r: redis.Redis, key: str) -> int:
    return int(r.execute_command("PEXPIRETIME", key))


def grant(engine: Engine, eid: ExecutionId, *, worker_id: str = WORKER, wiid: str = WIID) -> None:
    engine.call(fn.IssueClaimGrant(execution_id=eid, worker_id=worker_id, worker_instance_id=wiid, lane_id=LANE))


def claim(
    engine: Engine,
    eid: ExecutionId,
    *,
    ttl_ms: int = 30_000,
    worker_id: str = WORKER,
    wiid: str = WIID,
    attempt_timeout_ms: int | None = None,
    deadline_at: int | None = None,
) -> Claimed:
    grant(engine, eid, worker_id=worker_id, wiid=wiid)
    lease = engine.call(
        fn.ClaimExecution(
            execution_id=eid,
            worker_id=worker_id,
            worker_instance_id=wiid,
            lane_id=LANE,
            lease_id=new_uuid(),
            lease_ttl_ms=ttl_ms,
            attempt_id=new_uuid(),
            next_attempt_index=int(core(engine, eid)["total_attempt_count"]),
            attempt_timeout_ms=attempt_timeout_ms,
            execution_deadline_at=deadline_at,
        )
    )
    fence = fn.Fence(lease_id=lease.lease_id, lease_epoch=lease.lease_epoch, attempt_id=lease.attempt_id)
    return Claimed(eid, fence, lease.attempt_index, lease.expires_at, worker_id, wiid)


def claimed(
    engine: Engine,
    *,
    ttl_ms: int = 30_000,
    policy_json: str = "{}",
    attempt_timeout_ms: int | None = None,
    deadline_at: int | None = None,
) -> Claimed:
    """A fresh execution claimed by worker-a (attempt 0, epoch 1)."""
    eid = create(engine, policy_json=policy_json, execution_deadline_at=deadline_at)
    return claim(engine, eid, ttl_ms=ttl_ms, attempt_timeout_ms=attempt_timeout_ms, deadline_at=deadline_at)


def expired(engine: Engine) -> Claimed:
    """A claimed execution whose short lease has run out (not yet marked)."""
    c = claimed(engine, ttl_ms=SHORT_TTL_MS)
    time.sleep(EXPIRY_WAIT_S)
    return c


def promote(engine: Engine, eid: ExecutionId) -> None:
    due = math.ceil(float(core(engine, eid)["delay_until"]))
    assert engine.call(fn.PromoteDelayed(execution_id=eid, lane_id=LANE, now_ms=due)) == "promoted"


def resume(engine: Engine, eid: ExecutionId, *, ttl_ms: int = 30_000) -> Claimed:
    """Promote a self-delayed execution and claim its interrupted attempt again."""
    promote(engine, eid)
    grant(engine, eid)
    state = core(engine, eid)
    lease = engine.call(
        fn.ClaimResumedExecution(
            execution_id=eid,
            worker_id=WORKER,
            worker_instance_id=WIID,
            lane_id=LANE,
            lease_id=new_uuid(),
            lease_ttl_ms=ttl_ms,
            attempt_index=int(state["current_attempt_index"]),
        )
    )
    fence = fn.Fence(lease_id=lease.lease_id, lease_epoch=lease.lease_epoch, attempt_id=lease.attempt_id)
    return Claimed(eid, fence, lease.attempt_index, lease.expires_at)


_KEEP: Any = object()


def holder(op: str, c: Claimed, *, fence: Any = _KEEP, source: str = "", **extra: Any) -> fn.Fcall[Any]:
    """The lease-holder call ``op`` on ``c``, with its own fence unless another is given."""
    common = {
        "execution_id": c.eid,
        "fence": c.fence if fence is _KEEP else fence,
        "lane_id": LANE,
        "worker_instance_id": c.wiid,
        "attempt_index": c.attempt_index,
        "source": source,
    }
    if op == "complete":
        return fn.CompleteExecution(**common, **extra)
    if op == "fail":
        return fn.FailExecution(**{"failure_reason": "boom", **common, **extra})
    if op == "delay":
        return fn.DelayExecution(**{"delay_until": FAR_MS, **common, **extra})
    if op == "wait_children":
        return fn.MoveToWaitingChildren(**common, **extra)
    raise AssertionError(op)


def renew(c: Claimed, *, ttl_ms: int = 30_000, grace_ms: int = 5000, fence: fn.Fence | None = None) -> fn.RenewLease:
    return fn.RenewLease(
        execution_id=c.eid,
        attempt_index=c.attempt_index,
        fence=fence or c.fence,
        lease_ttl_ms=ttl_ms,
        lease_history_grace_ms=grace_ms,
    )


def fail_request(c: Claimed, policy: str = "", reason: str = "boom", category: str = "transient") -> fn.FailExecution:
    return holder("fail", c, failure_reason=reason, failure_category=category, retry_policy_json=policy)


def exponential(initial: float, multiplier: float, max_retries: int = 3, max_delay: int = 60_000) -> str:
    return (
        f'{{"max_retries":{max_retries},"backoff":{{"type":"exponential","initial_delay_ms":{initial},'
        f'"max_delay_ms":{max_delay},"multiplier":{multiplier},"jitter":false}}}}'
    )


def cancel_request(
    engine: Engine, eid: ExecutionId, *, source: str, lease_id: str = "", lease_epoch: int | None = None
) -> fn.CancelExecution:
    state = core(engine, eid)
    return fn.CancelExecution(
        execution_id=eid,
        reason="stop",
        source=source,
        lease_id=lease_id,
        lease_epoch=lease_epoch,
        lane_id=state["lane_id"],
        attempt_index=int(state["current_attempt_index"]) if state["current_attempt_index"] else None,
        waitpoint_id=state.get("current_waitpoint_id") or None,
        worker_instance_id=state["current_worker_instance_id"],
    )


def mark_expired(engine: Engine, eid: ExecutionId) -> fn.Settled:
    return engine.call(fn.MarkLeaseExpiredIfDue(execution_id=eid))


def reclaim_grant(engine: Engine, eid: ExecutionId, *, worker_id: str = OTHER_WORKER, wiid: str = OTHER_WIID) -> int:
    return engine.call(
        fn.IssueReclaimGrant(execution_id=eid, worker_id=worker_id, worker_instance_id=wiid, lane_id=LANE)
    )


def reclaim_request(
    engine: Engine,
    eid: ExecutionId,
    *,
    worker_id: str = OTHER_WORKER,
    wiid: str = OTHER_WIID,
    ttl_ms: int = 30_000,
    default_cap: int = 100,
) -> fn.ReclaimExecution:
    state = core(engine, eid)
    return fn.ReclaimExecution(
        execution_id=eid,
        worker_id=worker_id,
        worker_instance_id=wiid,
        lane_id=LANE,
        lease_id=new_uuid(),
        lease_ttl_ms=ttl_ms,
        attempt_id=new_uuid(),
        current_attempt_index=int(state["current_attempt_index"]),
        next_attempt_index=int(state["total_attempt_count"]),
        default_max_reclaim_count=default_cap,
    )


def replayed_with_old_lease_markers(engine: Engine) -> Claimed:
    """A live lease whose exec_core still carries lease_expired_at, lease_revoked_at and
    lease_revoke_reason from earlier leases (a fresh claim does not clear them)."""
    c = expired(engine)
    assert mark_expired(engine, c.eid).reason == "marked_expired"
    engine.cancel(c.eid, "again")
    engine.replay(c.eid)
    claim(engine, c.eid)
    engine.revoke_lease(c.eid, reason="ops")
    engine.cancel(c.eid, "again")
    engine.replay(c.eid)
    fresh = claim(engine, c.eid)
    state = core(engine, c.eid)
    assert state["ownership_state"] == "leased"
    assert all(state[name] for name in LEASE_MARKERS)
    return fresh


def with_stream_meta(r: redis.Redis, c: Claimed, **fields: str) -> str:
    key = c.keys.stream_meta(c.attempt_index)
    r.hset(key, mapping={"created_at": "1", **fields})
    return key


def stale(c: Claimed, part: str) -> fn.Fence:
    """The holder's fence with one component wrong."""
    if part == "lease_id":
        return c.fence.model_copy(update={"lease_id": new_uuid()})
    if part == "lease_epoch":
        return c.fence.model_copy(update={"lease_epoch": c.fence.lease_epoch + 1})
    return c.fence.model_copy(update={"attempt_id": new_uuid()})


def with_partial_fence(model: fn.Fcall[Any], c: Claimed, given: tuple[bool, bool, bool]) -> list[Any]:
    """``model``'s ARGV (lease_id, lease_epoch, attempt_id at positions 2-4) with only some given."""
    argv = list(model.argv())
    values = c.fence.argv()
    argv[1:4] = [value if keep else "" for value, keep in zip(values, given)]
    return argv


PARTIAL_TRIPLES = [
    (True, False, False),
    (False, True, False),
    (False, False, True),
    (True, True, False),
    (True, False, True),
    (False, True, True),
]


# -- ff_renew_lease (§5.7, row 6) ----------------------------------------------------------------


def test_renew_argv_order_is_eid_index_attempt_id_lease_id_epoch_ttl_grace(ff_engine):
    c = claimed(ff_engine)
    assert renew(c, ttl_ms=60_000, grace_ms=7000).argv() == [
        c.eid,
        "0",
        c.fence.attempt_id,
        c.fence.lease_id,
        "1",
        "60000",
        "7000",
    ]


def test_renew_extends_the_lease_in_core_lease_hash_and_lease_expiry(ff_engine, ff_redis):
    c = claimed(ff_engine, ttl_ms=30_000)
    before = core(ff_engine, c.eid)
    reply = raw(ff_redis, renew(c, ttl_ms=60_000, grace_ms=5000))
    assert reply[:2] == [1, "OK"] and len(reply) == 3
    expires_at = int(reply[2])
    after = core(ff_engine, c.eid)
    now = int(after["lease_last_renewed_at"])
    assert expires_at == now + 60_000
    assert after["lease_expires_at"] == str(expires_at)
    assert after["lease_renewal_deadline"] == str(now + 40_000)
    assert after["last_mutation_at"] == str(now)
    assert seven(after) == seven(before) == ACTIVE_LEASED
    lease = hash_of(ff_redis, c.keys.lease_current)
    assert lease["expires_at"] == str(expires_at)
    assert lease["last_renewed_at"] == str(now)
    assert lease["renewal_deadline"] == str(now + 40_000)
    assert lease["acquired_at"] == before["lease_acquired_at"]
    assert pexpiretime(ff_redis, c.keys.lease_current) == expires_at + 5000
    assert score(ff_redis, IDX.lease_expiry, c.eid) == expires_at


def test_renew_does_not_rescore_the_lane_active_index(ff_engine, ff_redis):
    c = claimed(ff_engine, ttl_ms=30_000)
    assert score(ff_redis, IDX.active(LANE), c.eid) == c.expires_at
    new_expiry = ff_engine.call(renew(c, ttl_ms=90_000))
    assert new_expiry > c.expires_at
    assert score(ff_redis, IDX.active(LANE), c.eid) == c.expires_at
    assert score(ff_redis, IDX.lease_expiry, c.eid) == new_expiry


def test_renew_writes_no_lease_history_event(ff_engine, ff_redis):
    c = claimed(ff_engine)
    events_before = history(ff_redis, c.eid)
    ff_engine.call(renew(c))
    assert history(ff_redis, c.eid) == events_before


def test_renew_with_the_terminal_op_argv_order_answers_stale_lease(ff_engine, ff_redis):
    c = claimed(ff_engine)
    model = renew(c)
    swapped = [c.eid, "0", c.fence.lease_id, c.fence.attempt_id, "1", "30000", "5000"]
    assert raw(ff_redis, model, swapped) == [0, "stale_lease"]


@pytest.mark.parametrize("position", [5, 6], ids=["lease_ttl_ms", "lease_history_grace_ms"])
def test_renew_with_a_non_numeric_ttl_or_grace_answers_invalid_input_before_reading_the_core(
    ff_engine, ff_redis, position
):
    c = Claimed(ExecutionId.mint(PARTITION), fn.Fence(lease_id=new_uuid(), lease_epoch=1, attempt_id=new_uuid()), 0, 0)
    argv = renew(c).argv()
    argv[position] = "soon"
    name = "lease_ttl_ms" if position == 5 else "lease_history_grace_ms"
    assert raw(ff_redis, renew(c), argv) == [0, "invalid_input", f"{name} must be a number, got: soon"]


def test_renew_of_a_missing_execution_answers_execution_not_found(ff_engine, ff_redis):
    c = Claimed(ExecutionId.mint(PARTITION), fn.Fence(lease_id=new_uuid(), lease_epoch=1, attempt_id=new_uuid()), 0, 0)
    expect_error(ff_engine, renew(c), "execution_not_found", [])
    argv = renew(c).argv()
    argv[2:5] = ["", "", ""]
    assert raw(ff_redis, renew(c), argv) == [0, "execution_not_found"]


def test_renew_with_an_empty_fence_answers_fence_required(ff_engine, ff_redis):
    c = claimed(ff_engine)
    argv = renew(c).argv()
    argv[2:5] = ["", "", ""]
    assert raw(ff_redis, renew(c), argv) == [0, "fence_required"]


@pytest.mark.parametrize("given", PARTIAL_TRIPLES)
def test_renew_with_a_partial_fence_answers_partial_fence_triple(ff_engine, ff_redis, given):
    c = claimed(ff_engine)
    argv = renew(c).argv()
    attempt_id, lease_id, epoch = argv[2:5]
    keep_lease, keep_epoch, keep_attempt = given
    argv[2:5] = [attempt_id if keep_attempt else "", lease_id if keep_lease else "", epoch if keep_epoch else ""]
    assert raw(ff_redis, renew(c), argv) == [0, "partial_fence_triple"]


def test_renew_checks_the_fence_shape_before_the_lifecycle_phase(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ff_engine.call(holder("complete", c))
    argv = renew(c).argv()
    argv[2:5] = ["", "", ""]
    assert raw(ff_redis, renew(c), argv) == [0, "fence_required"]
    argv[3] = c.fence.lease_id
    assert raw(ff_redis, renew(c), argv) == [0, "partial_fence_triple"]


def test_renew_after_complete_answers_execution_not_active_with_four_slots(ff_engine):
    c = claimed(ff_engine)
    ff_engine.call(holder("complete", c))
    error = expect_error(ff_engine, renew(c), "execution_not_active")
    assert error.details == ["success", "1", "terminal", c.fence.attempt_id]


def test_renew_after_revoke_answers_lease_revoked(ff_engine):
    c = claimed(ff_engine)
    ff_engine.revoke_lease(c.eid)
    expect_error(ff_engine, renew(c), "lease_revoked", [])


def test_renew_of_a_revoked_lease_past_its_expiry_answers_lease_revoked_without_marking(ff_engine, ff_redis):
    c = claimed(ff_engine, ttl_ms=SHORT_TTL_MS)
    ff_engine.revoke_lease(c.eid)
    time.sleep(EXPIRY_WAIT_S)
    expect_error(ff_engine, renew(c), "lease_revoked")
    state = core(ff_engine, c.eid)
    assert state["ownership_state"] == "lease_revoked"
    assert state["lease_expired_at"] == ""
    assert [e["event"] for e in history(ff_redis, c.eid)] == ["acquired", "revoked"]


def test_renew_answers_lease_revoked_when_only_lease_revoked_at_is_set(ff_engine):
    # revoke, cancel, replay and a fresh claim leave lease_revoked_at behind (§5.7 step 5)
    c = replayed_with_old_lease_markers(ff_engine)
    expect_error(ff_engine, renew(c), "lease_revoked")
    assert core(ff_engine, c.eid)["ownership_state"] == "leased"


def test_renew_of_an_expired_lease_marks_it_expired_and_answers_lease_expired(ff_engine, ff_redis):
    c = expired(ff_engine)
    expect_error(ff_engine, renew(c), "lease_expired", [])
    state = core(ff_engine, c.eid)
    assert seven(state) == LEASE_EXPIRED
    assert state["lease_expired_at"] == state["last_mutation_at"]
    assert state["blocking_detail"] == "lease expired, awaiting reclaim"
    assert history(ff_redis, c.eid)[-1]["event"] == "expired"
    assert score(ff_redis, IDX.lease_expiry, c.eid) == c.expires_at


def test_renew_with_a_stale_fence_on_an_expired_lease_answers_lease_expired(ff_engine):
    c = expired(ff_engine)
    expect_error(ff_engine, renew(c, fence=stale(c, "lease_id")), "lease_expired")
    assert core(ff_engine, c.eid)["ownership_state"] == "lease_expired_reclaimable"


@pytest.mark.parametrize("part", ["lease_id", "lease_epoch", "attempt_id"])
def test_renew_with_a_stale_fence_component_answers_stale_lease(ff_engine, part):
    c = claimed(ff_engine)
    expect_error(ff_engine, renew(c, fence=stale(c, part)), "stale_lease", [])
    assert core(ff_engine, c.eid)["lease_expires_at"] == str(c.expires_at)


def test_renew_with_a_stale_attempt_index_answers_stale_lease(ff_engine):
    c = claimed(ff_engine)
    model = fn.RenewLease(execution_id=c.eid, attempt_index=1, fence=c.fence, lease_ttl_ms=30_000)
    expect_error(ff_engine, model, "stale_lease")


def test_renew_with_a_stale_epoch_after_reclaim_answers_stale_lease(ff_engine):
    c = claimed(ff_engine)
    ff_engine.revoke_lease(c.eid)
    reclaim_grant(ff_engine, c.eid, worker_id=WORKER, wiid=WIID)
    lease = ff_engine.call(reclaim_request(ff_engine, c.eid, worker_id=WORKER, wiid=WIID))
    assert lease.lease_epoch == 2
    expect_error(ff_engine, renew(c), "stale_lease")


# -- lease-holder calls: shared fence and lease checks (§5.8-§5.11, §7.1) --------------------------


@pytest.mark.parametrize("op", HOLDER_OPS)
def test_holder_call_on_a_missing_execution_answers_execution_not_found(ff_engine, ff_redis, op):
    c = Claimed(ExecutionId.mint(PARTITION), fn.Fence(lease_id=new_uuid(), lease_epoch=1, attempt_id=new_uuid()), 0, 0)
    expect_error(ff_engine, holder(op, c), "execution_not_found", [])
    assert raw(ff_redis, holder(op, c, fence=None)) == [0, "execution_not_found"]


@pytest.mark.parametrize("op", HOLDER_OPS)
@pytest.mark.parametrize("source", ["", "worker", "lease_holder"])
def test_holder_call_with_an_empty_fence_and_no_override_answers_fence_required(ff_engine, op, source):
    c = claimed(ff_engine)
    expect_error(ff_engine, holder(op, c, fence=None, source=source), "fence_required", [])
    assert seven(core(ff_engine, c.eid)) == ACTIVE_LEASED


@pytest.mark.parametrize("op", HOLDER_OPS)
@pytest.mark.parametrize("given", PARTIAL_TRIPLES)
def test_holder_call_with_a_partial_fence_answers_partial_fence_triple(ff_engine, ff_redis, op, given):
    c = claimed(ff_engine)
    model = holder(op, c, source="operator_override")
    assert raw(ff_redis, model, with_partial_fence(model, c, given)) == [0, "partial_fence_triple"]
    assert seven(core(ff_engine, c.eid)) == ACTIVE_LEASED


@pytest.mark.parametrize("op", HOLDER_OPS)
def test_holder_call_checks_the_fence_shape_before_the_lifecycle_phase(ff_engine, ff_redis, op):
    c = claimed(ff_engine)
    ff_engine.call(holder("complete", c))
    expect_error(ff_engine, holder(op, c, fence=None), "fence_required")
    model = holder(op, c)
    assert raw(ff_redis, model, with_partial_fence(model, c, (True, True, False))) == [0, "partial_fence_triple"]


@pytest.mark.parametrize("op", HOLDER_OPS)
def test_holder_call_after_complete_answers_execution_not_active_with_four_slots(ff_engine, op):
    c = claimed(ff_engine)
    ff_engine.call(holder("complete", c))
    error = expect_error(ff_engine, holder(op, c), "execution_not_active")
    assert isinstance(error, ExecutionNotActiveError)
    assert (error.terminal_outcome, error.lease_epoch, error.lifecycle_phase, error.attempt_id) == (
        "success",
        "1",
        "terminal",
        c.fence.attempt_id,
    )


@pytest.mark.parametrize("op", HOLDER_OPS)
@pytest.mark.parametrize("source", ["", "operator_override"])
def test_holder_call_on_a_revoked_lease_answers_lease_revoked(ff_engine, op, source):
    c = claimed(ff_engine)
    ff_engine.revoke_lease(c.eid)
    fence = None if source else c.fence
    expect_error(ff_engine, holder(op, c, fence=fence, source=source), "lease_revoked", [])
    assert seven(core(ff_engine, c.eid)) == LEASE_REVOKED


@pytest.mark.parametrize("op", HOLDER_OPS)
@pytest.mark.parametrize("source", ["", "operator_override"])
def test_holder_call_on_an_expired_lease_marks_it_expired_and_answers_lease_expired(ff_engine, ff_redis, op, source):
    c = expired(ff_engine)
    fence = None if source else c.fence
    expect_error(ff_engine, holder(op, c, fence=fence, source=source), "lease_expired", [])
    state = core(ff_engine, c.eid)
    assert seven(state) == LEASE_EXPIRED
    assert state["lease_expired_at"] != ""
    assert state["current_lease_id"] == c.fence.lease_id
    events = history(ff_redis, c.eid)
    assert [e["event"] for e in events] == ["acquired", "expired"]
    assert ff_redis.exists(c.keys.lease_current) == 1
    assert score(ff_redis, IDX.lease_expiry, c.eid) == c.expires_at


@pytest.mark.parametrize("op", HOLDER_OPS)
def test_holder_call_on_an_already_marked_expired_lease_answers_lease_expired_without_a_second_event(
    ff_engine, ff_redis, op
):
    c = expired(ff_engine)
    mark_expired(ff_engine, c.eid)
    expect_error(ff_engine, holder(op, c), "lease_expired")
    assert [e["event"] for e in history(ff_redis, c.eid)] == ["acquired", "expired"]


@pytest.mark.parametrize("op", HOLDER_OPS)
def test_holder_call_with_a_stale_fence_on_an_expired_lease_answers_lease_expired(ff_engine, op):
    c = expired(ff_engine)
    expect_error(ff_engine, holder(op, c, fence=stale(c, "lease_epoch")), "lease_expired")


@pytest.mark.parametrize("op", HOLDER_OPS)
@pytest.mark.parametrize("part", ["lease_id", "lease_epoch", "attempt_id"])
def test_holder_call_with_a_stale_fence_component_answers_stale_lease(ff_engine, ff_redis, op, part):
    c = claimed(ff_engine)
    expect_error(ff_engine, holder(op, c, fence=stale(c, part)), "stale_lease", [])
    assert seven(core(ff_engine, c.eid)) == ACTIVE_LEASED
    assert ff_redis.exists(c.keys.lease_current) == 1


@pytest.mark.parametrize("op", HOLDER_OPS)
def test_holder_call_validates_a_full_fence_even_with_operator_override(ff_engine, op):
    c = claimed(ff_engine)
    expect_error(ff_engine, holder(op, c, fence=stale(c, "lease_id"), source="operator_override"), "stale_lease")


@pytest.mark.parametrize("op", HOLDER_OPS)
def test_holder_call_with_operator_override_and_an_empty_fence_uses_the_current_lease(ff_engine, ff_redis, op):
    c = claimed(ff_engine)
    reply = raw(ff_redis, holder(op, c, fence=None, source="operator_override"))
    assert reply[:2] == [1, "OK"]
    assert core(ff_engine, c.eid)["ownership_state"] == "unowned"
    released = history(ff_redis, c.eid)[-1]
    assert released["event"] == "released"
    assert released["lease_id"] == c.fence.lease_id


def test_old_holder_fence_after_reclaim_answers_stale_lease(ff_engine):
    c = claimed(ff_engine)
    ff_engine.revoke_lease(c.eid)
    reclaim_grant(ff_engine, c.eid)
    ff_engine.call(reclaim_request(ff_engine, c.eid))
    expect_error(ff_engine, holder("complete", c), "stale_lease")


# -- ff_complete_execution (§5.8, row 7) ------------------------------------------------------------


def test_complete_answers_completed_and_makes_the_execution_terminal_success(ff_engine, ff_redis):
    c = claimed(ff_engine, attempt_timeout_ms=60_000, deadline_at=FAR_MS)
    before = core(ff_engine, c.eid)
    reply = raw(ff_redis, holder("complete", c, result_payload=b"result-bytes"))
    assert reply == [1, "OK", "completed"]
    state = core(ff_engine, c.eid)
    now = state["completed_at"]
    assert seven(state) == COMPLETED
    assert state["blocking_detail"] == ""
    assert state["last_transition_at"] == now == state["last_mutation_at"]
    assert state["current_attempt_id"] == c.fence.attempt_id
    assert state["current_attempt_index"] == "0"
    assert state["current_lease_epoch"] == "1"
    assert state["lease_acquired_at"] == before["lease_acquired_at"] != ""
    assert ff_redis.get(c.keys.result) == b"result-bytes"
    attempt = hash_of(ff_redis, c.keys.attempt(0))
    assert attempt["attempt_state"] == "ended_success"
    assert attempt["ended_at"] == now


def test_complete_clears_all_nine_lease_fields(ff_engine):
    c = replayed_with_old_lease_markers(ff_engine)
    ff_engine.call(holder("complete", c))
    state = core(ff_engine, c.eid)
    for name in (*LEASE_OWNER, *LEASE_TIMING, *LEASE_MARKERS):
        assert state[name] == "", name
    assert state["lease_acquired_at"] != ""


def test_complete_removes_the_lease_and_every_live_index_entry_and_adds_terminal(ff_engine, ff_redis):
    c = claimed(ff_engine, attempt_timeout_ms=60_000, deadline_at=FAR_MS)
    assert score(ff_redis, IDX.attempt_timeout, c.eid) is not None
    assert score(ff_redis, IDX.execution_deadline, c.eid) == FAR_MS
    ff_engine.call(holder("complete", c))
    now = int(core(ff_engine, c.eid)["completed_at"])
    assert ff_redis.exists(c.keys.lease_current) == 0
    for key in (IDX.lease_expiry, IDX.active(LANE), IDX.attempt_timeout, IDX.execution_deadline):
        assert score(ff_redis, key, c.eid) is None, key
    assert not ff_redis.sismember(IDX.worker_leases(WIID), c.eid)
    assert score(ff_redis, IDX.terminal(LANE), c.eid) == now


def test_complete_writes_a_released_event_with_reason_completed(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ff_engine.call(holder("complete", c))
    event = history(ff_redis, c.eid)[-1]
    assert list(event) == ["event", "lease_id", "lease_epoch", "attempt_index", "reason", "ts"]
    assert event == {
        "event": "released",
        "lease_id": c.fence.lease_id,
        "lease_epoch": "1",
        "attempt_index": "0",
        "reason": "completed",
        "ts": core(ff_engine, c.eid)["completed_at"],
    }


def test_complete_closes_an_existing_stream_meta_with_attempt_success(ff_engine, ff_redis):
    c = claimed(ff_engine)
    meta = with_stream_meta(ff_redis, c, closed_at="5", closed_reason="earlier")
    ff_engine.call(holder("complete", c))
    fields = hash_of(ff_redis, meta)
    assert fields["closed_reason"] == "attempt_success"
    assert fields["closed_at"] == core(ff_engine, c.eid)["completed_at"]


def test_complete_does_not_create_a_missing_stream_meta_or_an_empty_result(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ff_engine.call(holder("complete", c))
    assert ff_redis.exists(c.keys.stream_meta(0)) == 0
    assert ff_redis.exists(c.keys.result) == 0


def test_complete_with_operator_override_and_an_empty_fence_completes_the_current_attempt(ff_engine, ff_redis):
    c = claimed(ff_engine)
    assert raw(ff_redis, holder("complete", c, fence=None, source="operator_override")) == [1, "OK", "completed"]
    state = core(ff_engine, c.eid)
    assert seven(state) == COMPLETED
    assert state["current_attempt_id"] == c.fence.attempt_id
    assert hash_of(ff_redis, c.keys.attempt(0))["attempt_state"] == "ended_success"


def test_complete_worker_path_sends_five_argv_and_a_missing_source_counts_as_empty(ff_engine, ff_redis):
    c = claimed(ff_engine)
    model = holder("complete", c, fence=None)
    assert raw(ff_redis, model, model.argv()[:5]) == [0, "fence_required"]
    model = holder("complete", c)
    assert raw(ff_redis, model, model.argv()[:5]) == [1, "OK", "completed"]


def test_repeated_complete_answers_execution_not_active_with_the_success_reconciliation_slots(ff_engine):
    c = claimed(ff_engine)
    ff_engine.call(holder("complete", c))
    error = expect_error(ff_engine, holder("complete", c), "execution_not_active")
    assert error.details == ["success", str(c.fence.lease_epoch), "terminal", c.fence.attempt_id]


# -- ff_fail_execution (§5.9, §6.2, rows 8-9) -------------------------------------------------------


def test_fail_with_retries_left_schedules_a_retry(ff_engine, ff_redis):
    c = claimed(ff_engine, attempt_timeout_ms=60_000, deadline_at=FAR_MS)
    reply = raw(ff_redis, fail_request(c, exponential(100, 1.5), reason="flaky", category="timeout"))
    state = core(ff_engine, c.eid)
    now = int(state["last_transition_at"])
    assert reply == [1, "OK", "retry_scheduled", str(now + 100)]
    assert seven(state) == RETRY_SCHEDULED
    assert state["blocking_detail"] == f"retry backoff until {now + 100} (attempt 0 failed: flaky)"
    assert state["delay_until"] == str(now + 100)
    assert state["failure_reason"] == "flaky"
    assert state["pending_retry_reason"] == "flaky"
    assert state["pending_previous_attempt_index"] == "0"
    assert state["retry_count"] == "1"
    assert state["current_attempt_index"] == "0"
    assert state["current_attempt_id"] == ""
    assert state["current_lease_epoch"] == "1"
    assert state["completed_at"] == ""
    for name in (*LEASE_OWNER, *LEASE_TIMING):
        assert state[name] == "", name
    attempt = hash_of(ff_redis, c.keys.attempt(0))
    assert attempt["attempt_state"] == "ended_failure"
    assert attempt["ended_at"] == str(now)
    assert attempt["failure_reason"] == "flaky"
    assert attempt["failure_category"] == "timeout"


def test_fail_retry_moves_the_execution_from_the_lease_indexes_to_delayed_and_keeps_the_deadline(ff_engine, ff_redis):
    c = claimed(ff_engine, attempt_timeout_ms=60_000, deadline_at=FAR_MS)
    outcome = ff_engine.call(fail_request(c, exponential(100, 1.5)))
    assert outcome.retry_scheduled
    assert ff_redis.exists(c.keys.lease_current) == 0
    for key in (IDX.lease_expiry, IDX.active(LANE), IDX.attempt_timeout, IDX.terminal(LANE)):
        assert score(ff_redis, key, c.eid) is None, key
    assert not ff_redis.sismember(IDX.worker_leases(WIID), c.eid)
    assert score(ff_redis, IDX.delayed(LANE), c.eid) == outcome.delay_until
    assert score(ff_redis, IDX.execution_deadline, c.eid) == FAR_MS


def test_fail_retry_writes_a_released_event_and_closes_stream_meta_with_attempt_failure(ff_engine, ff_redis):
    c = claimed(ff_engine)
    meta = with_stream_meta(ff_redis, c)
    ff_engine.call(fail_request(c, exponential(100, 1.5)))
    now = core(ff_engine, c.eid)["last_transition_at"]
    event = history(ff_redis, c.eid)[-1]
    assert list(event) == ["event", "lease_id", "lease_epoch", "attempt_index", "reason", "ts"]
    assert event == {
        "event": "released",
        "lease_id": c.fence.lease_id,
        "lease_epoch": "1",
        "attempt_index": "0",
        "reason": "failed_retry_scheduled",
        "ts": now,
    }
    assert hash_of(ff_redis, meta)["closed_reason"] == "attempt_failure"
    assert hash_of(ff_redis, meta)["closed_at"] == now


def test_fail_does_not_touch_the_lease_marker_fields(ff_engine):
    c = replayed_with_old_lease_markers(ff_engine)
    markers = {name: core(ff_engine, c.eid)[name] for name in UNTOUCHED_BY_RELEASE}
    ff_engine.call(fail_request(c))
    state = core(ff_engine, c.eid)
    assert seven(state) == FAILED
    assert {name: state[name] for name in UNTOUCHED_BY_RELEASE} == markers


def test_fail_exponential_backoff_of_100_ms_times_1_5_gives_100_150_225_then_terminal(ff_engine, ff_redis):
    policy = exponential(100, 1.5, max_retries=3)
    c = claimed(ff_engine)
    delays = []
    for expected_index in (1, 2, 3):
        outcome = ff_engine.call(fail_request(c, policy, reason=f"try-{c.attempt_index}"))
        assert outcome.retry_scheduled
        now = int(core(ff_engine, c.eid)["last_transition_at"])
        delays.append(outcome.delay_until - now)
        promote(ff_engine, c.eid)
        c = claim(ff_engine, c.eid)
        assert c.attempt_index == expected_index
        attempt = hash_of(ff_redis, c.keys.attempt(expected_index))
        assert attempt["attempt_type"] == "retry"
        assert attempt["retry_reason"] == f"try-{expected_index - 1}"
        assert attempt["previous_attempt_index"] == str(expected_index - 1)
    assert delays == [100, 150, 225]
    assert core(ff_engine, c.eid)["retry_count"] == "3"
    assert not ff_engine.call(fail_request(c, policy)).retry_scheduled
    assert seven(core(ff_engine, c.eid)) == FAILED


def test_fail_with_a_fractional_backoff_returns_and_stores_the_fraction(ff_engine, ff_redis):
    policy = exponential(101, 1.5)
    c = claimed(ff_engine)
    ff_engine.call(fail_request(c, policy))  # retry 0: 101 ms
    promote(ff_engine, c.eid)
    c = claim(ff_engine, c.eid)
    reply = raw(ff_redis, fail_request(c, policy))  # retry 1: 101 * 1.5 = 151.5 ms
    state = core(ff_engine, c.eid)
    exact = int(state["last_transition_at"]) + 151.5
    text = format(exact, ".14g")
    assert text.endswith(".5")
    assert reply == [1, "OK", "retry_scheduled", text]
    assert state["delay_until"] == text
    assert state["blocking_detail"] == f"retry backoff until {text} (attempt 1 failed: boom)"
    assert score(ff_redis, IDX.delayed(LANE), c.eid) == exact


def test_fail_delay_until_is_rounded_to_14_significant_digits_while_the_zset_keeps_the_exact_value(ff_engine, ff_redis):
    # Errata E1: backoffs 101, 151.5, 227.25 ms; now + 227.25 has 15 significant digits
    policy = exponential(101, 1.5)
    c = claimed(ff_engine)
    for _ in range(2):
        ff_engine.call(fail_request(c, policy))
        promote(ff_engine, c.eid)
        c = claim(ff_engine, c.eid)
    reply = raw(ff_redis, fail_request(c, policy))
    state = core(ff_engine, c.eid)
    exact = int(state["last_transition_at"]) + 227.25
    rounded = format(exact, ".14g")
    assert rounded.endswith(".2") and float(rounded) != exact
    assert reply == [1, "OK", "retry_scheduled", rounded]
    assert state["delay_until"] == rounded
    assert state["blocking_detail"] == f"retry backoff until {rounded} (attempt 2 failed: boom)"
    assert score(ff_redis, IDX.delayed(LANE), c.eid) == exact


@pytest.mark.parametrize(
    ("backoff", "expected_ms"),
    [
        ('{"type":"fixed","delay_ms":250}', 250),
        ('{"type":"fixed"}', 1000),
        ('{"type":"exponential","initial_delay_ms":5000,"max_delay_ms":3000,"multiplier":2}', 3000),
        ('{"type":"exponential"}', 1000),
        ('{"type":"linear","delay_ms":7}', 1000),
        (None, 1000),
    ],
    ids=["fixed", "fixed-default", "exponential-capped", "exponential-defaults", "unknown-type", "no-backoff"],
)
def test_fail_backoff_variants(ff_engine, backoff, expected_ms):
    policy = '{"max_retries":2' + (f',"backoff":{backoff}' if backoff else "") + "}"
    c = claimed(ff_engine)
    outcome = ff_engine.call(fail_request(c, policy))
    now = int(core(ff_engine, c.eid)["last_transition_at"])
    assert outcome.retry_scheduled
    assert outcome.delay_until == now + expected_ms


def test_fail_ignores_retryable_categories_and_jitter(ff_engine):
    policy = (
        '{"max_retries":1,"retryable_categories":["transient"],"backoff":{"type":"fixed","delay_ms":300,"jitter":true}}'
    )
    c = claimed(ff_engine)
    outcome = ff_engine.call(fail_request(c, policy, category="permanent"))
    assert outcome.retry_scheduled
    assert outcome.delay_until == int(core(ff_engine, c.eid)["last_transition_at"]) + 300


@pytest.mark.parametrize("policy", ["", "{}", '{"backoff":{"type":"fixed","delay_ms":10}}', "not json", "[1,2]"])
def test_fail_without_a_usable_retry_policy_fails_terminally(ff_engine, ff_redis, policy):
    c = claimed(ff_engine)
    assert raw(ff_redis, fail_request(c, policy)) == [1, "OK", "terminal_failed"]
    assert seven(core(ff_engine, c.eid)) == FAILED


def test_fail_with_retries_exhausted_fails_terminally(ff_engine):
    policy = exponential(100, 1.5, max_retries=1)
    c = claimed(ff_engine)
    assert ff_engine.call(fail_request(c, policy)).retry_scheduled
    promote(ff_engine, c.eid)
    c = claim(ff_engine, c.eid)
    assert not ff_engine.call(fail_request(c, policy)).retry_scheduled
    state = core(ff_engine, c.eid)
    assert seven(state) == FAILED
    assert state["retry_count"] == "1"


def test_fail_terminal_makes_the_execution_failed_and_keeps_the_attempt_id(ff_engine, ff_redis):
    c = claimed(ff_engine, attempt_timeout_ms=60_000, deadline_at=FAR_MS)
    meta = with_stream_meta(ff_redis, c)
    assert raw(ff_redis, fail_request(c, "", reason="fatal", category="permanent")) == [1, "OK", "terminal_failed"]
    state = core(ff_engine, c.eid)
    now = state["completed_at"]
    assert seven(state) == FAILED
    assert state["failure_reason"] == "fatal"
    assert state["last_transition_at"] == now != ""
    assert state["blocking_detail"] == ""
    assert state["current_attempt_id"] == c.fence.attempt_id
    assert state["current_attempt_index"] == "0"
    assert state["retry_count"] == "0"
    assert state["delay_until"] == ""
    for name in (*LEASE_OWNER, *LEASE_TIMING):
        assert state[name] == "", name
    attempt = hash_of(ff_redis, c.keys.attempt(0))
    assert (attempt["attempt_state"], attempt["failure_reason"], attempt["failure_category"]) == (
        "ended_failure",
        "fatal",
        "permanent",
    )
    assert hash_of(ff_redis, meta)["closed_reason"] == "attempt_failure"
    assert ff_redis.exists(c.keys.lease_current) == 0
    for key in (IDX.lease_expiry, IDX.active(LANE), IDX.attempt_timeout, IDX.execution_deadline, IDX.delayed(LANE)):
        assert score(ff_redis, key, c.eid) is None, key
    assert not ff_redis.sismember(IDX.worker_leases(WIID), c.eid)
    assert score(ff_redis, IDX.terminal(LANE), c.eid) == int(now)
    event = history(ff_redis, c.eid)[-1]
    assert list(event) == ["event", "lease_id", "lease_epoch", "attempt_index", "reason", "ts"]
    assert (event["event"], event["reason"], event["ts"]) == ("released", "failed_terminal", now)


def test_repeated_fail_after_a_retry_answers_execution_not_active_with_runnable_and_no_attempt_id(ff_engine):
    c = claimed(ff_engine)
    ff_engine.call(fail_request(c, exponential(100, 1.5)))
    error = expect_error(ff_engine, fail_request(c, exponential(100, 1.5)), "execution_not_active")
    assert error.details == ["none", str(c.fence.lease_epoch), "runnable", ""]


def test_repeated_fail_after_a_terminal_failure_answers_execution_not_active_with_failed(ff_engine):
    c = claimed(ff_engine)
    ff_engine.call(fail_request(c))
    error = expect_error(ff_engine, fail_request(c), "execution_not_active")
    assert error.details == ["failed", "1", "terminal", c.fence.attempt_id]


@pytest.mark.parametrize(
    ("policy", "detail"),
    [
        ('{"max_retries":"many"}', "retry_policy.max_retries must be a number"),
        ('{"max_retries":2,"backoff":5}', "retry_policy.backoff must be an object"),
        ('{"max_retries":2,"backoff":true}', "retry_policy.backoff must be an object"),
        ('{"max_retries":2,"backoff":null}', "retry_policy.backoff must be an object"),
    ],
    ids=["max_retries-text", "backoff-number", "backoff-bool", "backoff-null"],
)
def test_fail_with_an_unevaluable_retry_policy_answers_invalid_input_before_reading_the_core(ff_engine, policy, detail):
    # intentional deviation: FlowFabric raises a Lua error here
    c = claimed(ff_engine)
    expect_error(ff_engine, fail_request(c, policy), "invalid_input", [detail])
    assert seven(core(ff_engine, c.eid)) == ACTIVE_LEASED
    missing = Claimed(ExecutionId.mint(PARTITION), c.fence, 0, 0)
    expect_error(ff_engine, fail_request(missing, policy), "invalid_input", [detail])


# -- ff_cancel_execution (§5.10, row 17) ------------------------------------------------------------


def test_cancel_of_a_runnable_execution_answers_cancelled_runnable(ff_engine, ff_redis):
    eid = create(ff_engine)
    assert score(ff_redis, IDX.eligible(LANE), eid) is not None
    assert raw(ff_redis, cancel_request(ff_engine, eid, source="operator_override")) == [
        1,
        "OK",
        "cancelled",
        "runnable",
    ]
    state = core(ff_engine, eid)
    now = state["completed_at"]
    assert seven(state) == (
        "terminal",
        "unowned",
        "not_applicable",
        "none",
        "cancelled",
        "pending_first_attempt",
        "cancelled",
    )
    assert state["cancellation_reason"] == "stop"
    assert state["cancelled_by"] == "operator_override"
    assert state["last_transition_at"] == now != ""
    assert score(ff_redis, IDX.eligible(LANE), eid) is None
    assert score(ff_redis, IDX.terminal(LANE), eid) == int(now)
    assert history(ff_redis, eid) == []


def test_cancel_of_a_delayed_execution_removes_it_from_delayed(ff_engine, ff_redis):
    eid = create(ff_engine, delay_until=FAR_MS)
    assert score(ff_redis, IDX.delayed(LANE), eid) == FAR_MS
    assert ff_engine.cancel(eid, "stop") == "runnable"
    assert score(ff_redis, IDX.delayed(LANE), eid) is None
    assert core(ff_engine, eid)["terminal_outcome"] == "cancelled"


def test_cancel_after_a_retry_was_scheduled_marks_the_attempt_state_terminal(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ff_engine.call(fail_request(c, exponential(100, 1.5)))
    assert ff_engine.cancel(c.eid, "stop") == "runnable"
    state = core(ff_engine, c.eid)
    assert state["attempt_state"] == "attempt_terminal"
    assert score(ff_redis, IDX.delayed(LANE), c.eid) is None
    assert hash_of(ff_redis, c.keys.attempt(0))["attempt_state"] == "ended_failure"


def test_cancel_of_an_active_execution_ends_the_attempt_and_releases_the_lease(ff_engine, ff_redis):
    c = claimed(ff_engine, attempt_timeout_ms=60_000, deadline_at=FAR_MS)
    meta = with_stream_meta(ff_redis, c)
    reply = raw(ff_redis, cancel_request(ff_engine, c.eid, source="operator_override"))
    assert reply == [1, "OK", "cancelled", "active"]
    state = core(ff_engine, c.eid)
    now = state["completed_at"]
    assert seven(state) == (
        "terminal",
        "unowned",
        "not_applicable",
        "none",
        "cancelled",
        "attempt_terminal",
        "cancelled",
    )
    assert state["blocking_detail"] == ""
    assert state["current_attempt_id"] == c.fence.attempt_id
    assert state["current_lease_epoch"] == "1"
    for name in (*LEASE_OWNER, *LEASE_TIMING, "current_suspension_id", "current_waitpoint_id"):
        assert state[name] == "", name
    attempt = hash_of(ff_redis, c.keys.attempt(0))
    assert (attempt["attempt_state"], attempt["ended_at"], attempt["failure_reason"]) == (
        "ended_cancelled",
        now,
        "cancelled: stop",
    )
    assert hash_of(ff_redis, meta)["closed_reason"] == "attempt_cancelled"
    assert ff_redis.exists(c.keys.lease_current) == 0
    event = history(ff_redis, c.eid)[-1]
    assert list(event) == ["event", "lease_id", "lease_epoch", "attempt_index", "reason", "ts"]
    assert (event["event"], event["lease_id"], event["reason"], event["ts"]) == (
        "released",
        c.fence.lease_id,
        "cancelled",
        now,
    )


def test_cancel_removes_the_execution_from_all_thirteen_indexes_and_the_worker_set(ff_engine, ff_redis):
    c = claimed(ff_engine)
    zsets = [
        IDX.eligible(LANE),
        IDX.delayed(LANE),
        IDX.active(LANE),
        IDX.suspended(LANE),
        *(IDX.blocked(LANE, reason) for reason in ("dependencies", "budget", "quota", "route", "operator")),
        IDX.lease_expiry,
        IDX.suspension_timeout,
        IDX.attempt_timeout,
        IDX.execution_deadline,
    ]
    assert len(zsets) == 13
    for key in zsets:
        ff_redis.zadd(key, {c.eid: 1})
    assert ff_redis.sismember(IDX.worker_leases(WIID), c.eid)
    ff_engine.cancel(c.eid, "stop")
    for key in zsets:
        assert score(ff_redis, key, c.eid) is None, key
    assert not ff_redis.sismember(IDX.worker_leases(WIID), c.eid)
    assert score(ff_redis, IDX.terminal(LANE), c.eid) == int(core(ff_engine, c.eid)["completed_at"])


def test_cancel_does_not_touch_the_lease_marker_fields(ff_engine):
    c = replayed_with_old_lease_markers(ff_engine)
    markers = {name: core(ff_engine, c.eid)[name] for name in UNTOUCHED_BY_RELEASE}
    ff_engine.cancel(c.eid, "stop")
    state = core(ff_engine, c.eid)
    assert {name: state[name] for name in UNTOUCHED_BY_RELEASE} == markers


@pytest.mark.parametrize("source", ["operator_override", "worker", "flow_cascade", "my-custom-source"])
def test_cancel_records_the_source_as_cancelled_by(ff_engine, source):
    eid = create(ff_engine)
    ff_engine.call(cancel_request(ff_engine, eid, source=source))
    assert core(ff_engine, eid)["cancelled_by"] == source


def test_cancel_with_an_empty_source_records_the_execution_id_as_cancelled_by(ff_engine):
    eid = create(ff_engine)
    ff_engine.call(cancel_request(ff_engine, eid, source=""))
    assert core(ff_engine, eid)["cancelled_by"] == eid


@pytest.mark.parametrize("source", ["worker", "lease_holder", ""])
def test_cancel_by_a_non_override_source_without_a_lease_id_skips_the_fence_check(ff_engine, source):
    c = claimed(ff_engine)
    assert ff_engine.call(cancel_request(ff_engine, c.eid, source=source)) == "active"
    assert core(ff_engine, c.eid)["terminal_outcome"] == "cancelled"


def test_cancel_by_the_lease_holder_with_its_lease_succeeds(ff_engine):
    c = claimed(ff_engine)
    assert ff_engine.cancel(c.eid, "stop", source="worker", fence=c.fence) == "active"


@pytest.mark.parametrize(
    ("lease_id", "lease_epoch"),
    [("other", 1), ("own", 2), ("own", None)],
    ids=["stale-lease-id", "stale-epoch", "missing-epoch"],
)
def test_cancel_by_a_non_override_source_with_a_stale_lease_answers_stale_lease(ff_engine, lease_id, lease_epoch):
    c = claimed(ff_engine)
    given = c.fence.lease_id if lease_id == "own" else new_uuid()
    model = cancel_request(ff_engine, c.eid, source="worker", lease_id=given, lease_epoch=lease_epoch)
    expect_error(ff_engine, model, "stale_lease", [])
    assert seven(core(ff_engine, c.eid)) == ACTIVE_LEASED


def test_cancel_with_operator_override_ignores_a_stale_lease(ff_engine):
    c = claimed(ff_engine)
    model = cancel_request(ff_engine, c.eid, source="operator_override", lease_id=new_uuid(), lease_epoch=9)
    assert ff_engine.call(model) == "active"


def test_cancel_of_a_revoked_lease_by_a_non_override_source_answers_lease_revoked(ff_engine):
    c = claimed(ff_engine)
    ff_engine.revoke_lease(c.eid)
    expect_error(ff_engine, cancel_request(ff_engine, c.eid, source="worker"), "lease_revoked", [])
    assert ff_engine.call(cancel_request(ff_engine, c.eid, source="operator_override")) == "active"
    assert core(ff_engine, c.eid)["terminal_outcome"] == "cancelled"


def test_cancel_of_an_expired_lease_succeeds_without_a_lease_check(ff_engine):
    c = expired(ff_engine)
    assert ff_engine.cancel(c.eid, "stop", source="worker", fence=c.fence) == "active"


def test_repeated_cancel_answers_execution_not_active_with_the_cancel_reconciliation_slots(ff_engine):
    c = claimed(ff_engine)
    ff_engine.cancel(c.eid, "stop")
    error = expect_error(ff_engine, cancel_request(ff_engine, c.eid, source="worker"), "execution_not_active")
    assert error.details == ["cancelled", "1", "terminal", c.fence.attempt_id]


def test_cancel_of_a_completed_execution_answers_execution_not_active(ff_engine):
    c = claimed(ff_engine)
    ff_engine.call(holder("complete", c))
    error = expect_error(
        ff_engine, cancel_request(ff_engine, c.eid, source="operator_override"), "execution_not_active"
    )
    assert error.details == ["success", "1", "terminal", c.fence.attempt_id]


def test_cancel_of_a_missing_execution_answers_execution_not_found(ff_engine):
    model = fn.CancelExecution(execution_id=ExecutionId.mint(PARTITION), reason="stop", lane_id=LANE)
    expect_error(ff_engine, model, "execution_not_found", [])


# -- ff_delay_execution (§5.11, row 10) --------------------------------------------------------------


def test_delay_parks_the_attempt_and_answers_the_delay_until(ff_engine, ff_redis):
    c = claimed(ff_engine, attempt_timeout_ms=60_000, deadline_at=FAR_MS)
    delay_until = ff_engine.server_time_ms() + 60_000
    reply = raw(ff_redis, holder("delay", c, delay_until=delay_until))
    assert reply == [1, "OK", str(delay_until)]
    state = core(ff_engine, c.eid)
    now = state["last_transition_at"]
    assert seven(state) == SELF_DELAYED
    assert state["blocking_detail"] == f"delayed until {delay_until}"
    assert state["delay_until"] == str(delay_until)
    assert state["current_attempt_id"] == c.fence.attempt_id
    assert state["current_attempt_index"] == "0"
    assert state["current_lease_epoch"] == "1"
    for name in (*LEASE_OWNER, *LEASE_TIMING):
        assert state[name] == "", name
    attempt = hash_of(ff_redis, c.keys.attempt(0))
    assert (attempt["attempt_state"], attempt["suspended_at"], attempt["suspension_id"]) == (
        "suspended",
        now,
        "worker_delay",
    )
    assert ff_redis.exists(c.keys.lease_current) == 0
    for key in (IDX.lease_expiry, IDX.active(LANE), IDX.attempt_timeout):
        assert score(ff_redis, key, c.eid) is None, key
    assert not ff_redis.sismember(IDX.worker_leases(WIID), c.eid)
    assert score(ff_redis, IDX.delayed(LANE), c.eid) == delay_until
    assert score(ff_redis, IDX.execution_deadline, c.eid) == FAR_MS


def test_delay_writes_a_released_event_that_includes_the_attempt_id(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ff_engine.call(holder("delay", c))
    event = history(ff_redis, c.eid)[-1]
    assert list(event) == ["event", "lease_id", "lease_epoch", "attempt_index", "attempt_id", "reason", "ts"]
    assert event == {
        "event": "released",
        "lease_id": c.fence.lease_id,
        "lease_epoch": "1",
        "attempt_index": "0",
        "attempt_id": c.fence.attempt_id,
        "reason": "worker_delay",
        "ts": core(ff_engine, c.eid)["last_transition_at"],
    }


def test_delay_does_not_touch_the_lease_marker_fields(ff_engine):
    c = replayed_with_old_lease_markers(ff_engine)
    markers = {name: core(ff_engine, c.eid)[name] for name in UNTOUCHED_BY_RELEASE}
    ff_engine.call(holder("delay", c))
    state = core(ff_engine, c.eid)
    assert seven(state) == SELF_DELAYED
    assert {name: state[name] for name in UNTOUCHED_BY_RELEASE} == markers


def test_delay_accepts_a_delay_until_in_the_past(ff_engine, ff_redis):
    c = claimed(ff_engine)
    assert raw(ff_redis, holder("delay", c, delay_until=1000)) == [1, "OK", "1000"]
    assert score(ff_redis, IDX.delayed(LANE), c.eid) == 1000


def test_delay_with_a_non_numeric_delay_until_answers_invalid_input_before_reading_the_core(ff_engine, ff_redis):
    # intentional deviation: FlowFabric raises a Lua error here
    c = claimed(ff_engine)
    model = holder("delay", c)
    argv = model.argv()
    argv[4] = "soon"
    assert raw(ff_redis, model, argv) == [0, "invalid_input", "delay_until must be a number, got: soon"]
    assert seven(core(ff_engine, c.eid)) == ACTIVE_LEASED
    missing = holder("delay", Claimed(ExecutionId.mint(PARTITION), c.fence, 0, 0))
    argv = missing.argv()
    argv[4] = "soon"
    assert raw(ff_redis, missing, argv)[:2] == [0, "invalid_input"]


def test_delayed_execution_must_be_claimed_resumed_and_keeps_its_attempt(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ff_engine.call(holder("delay", c, delay_until=ff_engine.server_time_ms() + 60_000))
    promote(ff_engine, c.eid)
    grant(ff_engine, c.eid)
    fresh = fn.ClaimExecution(
        execution_id=c.eid,
        worker_id=WORKER,
        worker_instance_id=WIID,
        lane_id=LANE,
        lease_id=new_uuid(),
        lease_ttl_ms=30_000,
        attempt_id=new_uuid(),
        next_attempt_index=1,
    )
    expect_error(ff_engine, fresh, "use_claim_resumed_execution")
    assert ff_redis.exists(c.keys.claim_grant) == 1
    lease = ff_engine.call(
        fn.ClaimResumedExecution(
            execution_id=c.eid,
            worker_id=WORKER,
            worker_instance_id=WIID,
            lane_id=LANE,
            lease_id=new_uuid(),
            lease_ttl_ms=30_000,
            attempt_index=0,
        )
    )
    assert (lease.attempt_id, lease.attempt_index, lease.lease_epoch, lease.attempt_type) == (
        c.fence.attempt_id,
        0,
        2,
        "resumed",
    )
    state = core(ff_engine, c.eid)
    assert seven(state) == ACTIVE_LEASED
    assert state["total_attempt_count"] == "1"
    attempt = hash_of(ff_redis, c.keys.attempt(0))
    assert (attempt["attempt_state"], attempt["attempt_type"], attempt["suspension_id"]) == ("started", "initial", "")


def test_resumed_lease_can_be_completed_with_the_new_epoch_only(ff_engine):
    c = claimed(ff_engine)
    ff_engine.call(holder("delay", c, delay_until=ff_engine.server_time_ms() + 60_000))
    resumed = resume(ff_engine, c.eid)
    expect_error(ff_engine, holder("complete", c), "stale_lease")
    ff_engine.call(holder("complete", resumed))
    assert core(ff_engine, c.eid)["terminal_outcome"] == "success"


# -- ff_move_to_waiting_children (§5.11, row 11) -----------------------------------------------------


def test_move_to_waiting_children_parks_the_attempt_in_blocked_dependencies(ff_engine, ff_redis):
    c = claimed(ff_engine, attempt_timeout_ms=60_000)
    assert raw(ff_redis, holder("wait_children", c)) == [1, "OK"]
    state = core(ff_engine, c.eid)
    now = state["last_transition_at"]
    assert seven(state) == WAITING_CHILDREN
    assert state["current_attempt_id"] == c.fence.attempt_id
    assert state["current_lease_epoch"] == "1"
    assert state["delay_until"] == ""
    for name in (*LEASE_OWNER, *LEASE_TIMING):
        assert state[name] == "", name
    attempt = hash_of(ff_redis, c.keys.attempt(0))
    assert (attempt["attempt_state"], attempt["suspended_at"], attempt["suspension_id"]) == (
        "suspended",
        now,
        "waiting_children",
    )
    assert ff_redis.exists(c.keys.lease_current) == 0
    for key in (IDX.lease_expiry, IDX.active(LANE), IDX.attempt_timeout, IDX.delayed(LANE)):
        assert score(ff_redis, key, c.eid) is None, key
    assert not ff_redis.sismember(IDX.worker_leases(WIID), c.eid)
    assert score(ff_redis, IDX.blocked(LANE, "dependencies"), c.eid) == int(state["created_at"])
    event = history(ff_redis, c.eid)[-1]
    assert list(event) == ["event", "lease_id", "lease_epoch", "attempt_index", "attempt_id", "reason", "ts"]
    assert (event["attempt_id"], event["reason"], event["ts"]) == (c.fence.attempt_id, "waiting_children", now)


# -- ff_mark_lease_expired_if_due (§5.13, row 13) ----------------------------------------------------


def test_mark_expired_before_the_expiry_answers_not_yet_expired(ff_engine, ff_redis):
    c = claimed(ff_engine)
    assert raw(ff_redis, fn.MarkLeaseExpiredIfDue(execution_id=c.eid)) == [1, "ALREADY_SATISFIED", "not_yet_expired"]
    assert seven(core(ff_engine, c.eid)) == ACTIVE_LEASED
    assert score(ff_redis, IDX.lease_expiry, c.eid) == c.expires_at


def test_mark_expired_after_the_expiry_marks_the_lease_expired(ff_engine, ff_redis):
    c = expired(ff_engine)
    assert raw(ff_redis, fn.MarkLeaseExpiredIfDue(execution_id=c.eid)) == [1, "OK", "marked_expired"]
    state = core(ff_engine, c.eid)
    now = state["lease_expired_at"]
    assert seven(state) == LEASE_EXPIRED
    assert state["blocking_detail"] == "lease expired, awaiting reclaim"
    assert state["last_mutation_at"] == now != ""
    assert state["current_lease_id"] == c.fence.lease_id
    assert state["current_worker_id"] == WORKER
    assert state["current_worker_instance_id"] == WIID
    assert state["current_attempt_id"] == c.fence.attempt_id


def test_mark_expired_keeps_the_lease_expiry_entry_and_the_other_indexes(ff_engine, ff_redis):
    c = expired(ff_engine)
    mark_expired(ff_engine, c.eid)
    assert score(ff_redis, IDX.lease_expiry, c.eid) == c.expires_at
    assert score(ff_redis, IDX.active(LANE), c.eid) == c.expires_at
    assert ff_redis.sismember(IDX.worker_leases(WIID), c.eid)


def test_mark_expired_writes_an_expired_event(ff_engine, ff_redis):
    c = expired(ff_engine)
    mark_expired(ff_engine, c.eid)
    event = history(ff_redis, c.eid)[-1]
    assert list(event) == [
        "event",
        "lease_id",
        "lease_epoch",
        "attempt_index",
        "attempt_id",
        "worker_id",
        "worker_instance_id",
        "ts",
    ]
    assert event == {
        "event": "expired",
        "lease_id": c.fence.lease_id,
        "lease_epoch": "1",
        "attempt_index": "0",
        "attempt_id": c.fence.attempt_id,
        "worker_id": WORKER,
        "worker_instance_id": WIID,
        "ts": core(ff_engine, c.eid)["lease_expired_at"],
    }


def test_mark_expired_closes_an_open_stream_meta_with_lease_expired(ff_engine, ff_redis):
    c = expired(ff_engine)
    meta = with_stream_meta(ff_redis, c)
    mark_expired(ff_engine, c.eid)
    fields = hash_of(ff_redis, meta)
    assert fields["closed_reason"] == "lease_expired"
    assert fields["closed_at"] == core(ff_engine, c.eid)["lease_expired_at"]


def test_mark_expired_leaves_an_already_closed_stream_meta_alone(ff_engine, ff_redis):
    c = expired(ff_engine)
    meta = with_stream_meta(ff_redis, c, closed_at="123", closed_reason="earlier")
    mark_expired(ff_engine, c.eid)
    fields = hash_of(ff_redis, meta)
    assert (fields["closed_at"], fields["closed_reason"]) == ("123", "earlier")


def test_mark_expired_does_not_create_a_missing_stream_meta(ff_engine, ff_redis):
    c = expired(ff_engine)
    mark_expired(ff_engine, c.eid)
    assert ff_redis.exists(c.keys.stream_meta(0)) == 0


def test_mark_expired_a_second_time_answers_already_expired_and_keeps_the_entry(ff_engine, ff_redis):
    c = expired(ff_engine)
    mark_expired(ff_engine, c.eid)
    assert raw(ff_redis, fn.MarkLeaseExpiredIfDue(execution_id=c.eid)) == [1, "ALREADY_SATISFIED", "already_expired"]
    assert score(ff_redis, IDX.lease_expiry, c.eid) == c.expires_at
    assert [e["event"] for e in history(ff_redis, c.eid)] == ["acquired", "expired"]


def test_mark_expired_of_a_revoked_lease_answers_already_revoked_and_keeps_the_entry(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ff_engine.revoke_lease(c.eid)
    ff_redis.zadd(IDX.lease_expiry, {c.eid: 1})
    assert raw(ff_redis, fn.MarkLeaseExpiredIfDue(execution_id=c.eid)) == [1, "ALREADY_SATISFIED", "already_revoked"]
    assert score(ff_redis, IDX.lease_expiry, c.eid) == 1
    assert core(ff_engine, c.eid)["ownership_state"] == "lease_revoked"


def test_mark_expired_of_a_missing_execution_removes_the_stale_entry(ff_engine, ff_redis):
    eid = ExecutionId.mint(PARTITION)
    ff_redis.zadd(IDX.lease_expiry, {eid: 1})
    assert raw(ff_redis, fn.MarkLeaseExpiredIfDue(execution_id=eid)) == [1, "ALREADY_SATISFIED", "execution_not_found"]
    assert score(ff_redis, IDX.lease_expiry, eid) is None


def test_mark_expired_of_a_terminal_execution_answers_not_active_and_removes_the_entry(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ff_engine.call(holder("complete", c))
    ff_redis.zadd(IDX.lease_expiry, {c.eid: 1})
    assert raw(ff_redis, fn.MarkLeaseExpiredIfDue(execution_id=c.eid)) == [1, "ALREADY_SATISFIED", "not_active"]
    assert score(ff_redis, IDX.lease_expiry, c.eid) is None


def test_mark_expired_of_an_unowned_active_execution_answers_unowned_and_removes_the_entry(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ff_redis.hset(c.keys.core, "ownership_state", "unowned")
    assert raw(ff_redis, fn.MarkLeaseExpiredIfDue(execution_id=c.eid)) == [1, "ALREADY_SATISFIED", "unowned"]
    assert score(ff_redis, IDX.lease_expiry, c.eid) is None


# -- ff_revoke_lease (§5.14, row 14) --------------------------------------------------------------


def test_revoke_answers_ok_revoked_with_the_lease_id_and_epoch(ff_engine, ff_redis):
    c = claimed(ff_engine)
    model = fn.RevokeLease(execution_id=c.eid, reason="maintenance", worker_instance_id=WIID)
    assert raw(ff_redis, model) == [1, "OK", "revoked", c.fence.lease_id, "1"]
    state = core(ff_engine, c.eid)
    now = state["lease_revoked_at"]
    assert seven(state) == LEASE_REVOKED
    assert state["blocking_detail"] == "lease revoked: maintenance"
    assert state["lease_revoke_reason"] == "maintenance"
    assert state["last_mutation_at"] == now != ""
    assert state["current_lease_id"] == c.fence.lease_id
    assert state["current_worker_id"] == WORKER
    assert state["current_worker_instance_id"] == WIID
    assert state["current_attempt_id"] == c.fence.attempt_id
    assert state["lease_expires_at"] == str(c.expires_at)


def test_revoke_deletes_the_lease_and_its_expiry_and_worker_entries_but_keeps_active(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ff_engine.revoke_lease(c.eid)
    assert ff_redis.exists(c.keys.lease_current) == 0
    assert score(ff_redis, IDX.lease_expiry, c.eid) is None
    assert not ff_redis.sismember(IDX.worker_leases(WIID), c.eid)
    assert score(ff_redis, IDX.active(LANE), c.eid) == c.expires_at


def test_revoke_writes_a_revoked_event(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ff_engine.revoke_lease(c.eid, reason="maintenance")
    event = history(ff_redis, c.eid)[-1]
    assert list(event) == [
        "event",
        "lease_id",
        "lease_epoch",
        "attempt_index",
        "attempt_id",
        "worker_id",
        "worker_instance_id",
        "reason",
        "ts",
    ]
    assert event == {
        "event": "revoked",
        "lease_id": c.fence.lease_id,
        "lease_epoch": "1",
        "attempt_index": "0",
        "attempt_id": c.fence.attempt_id,
        "worker_id": WORKER,
        "worker_instance_id": WIID,
        "reason": "maintenance",
        "ts": core(ff_engine, c.eid)["lease_revoked_at"],
    }


def test_revoke_without_a_reason_argument_uses_operator(ff_engine, ff_redis):
    c = claimed(ff_engine)
    model = fn.RevokeLease(execution_id=c.eid, worker_instance_id=WIID)
    assert raw(ff_redis, model, [c.eid, ""])[:3] == [1, "OK", "revoked"]
    state = core(ff_engine, c.eid)
    assert (state["lease_revoke_reason"], state["blocking_detail"]) == ("operator", "lease revoked: operator")


def test_revoke_with_an_empty_reason_keeps_it_empty(ff_engine, ff_redis):
    c = claimed(ff_engine)
    model = fn.RevokeLease(execution_id=c.eid, reason="", worker_instance_id=WIID)
    assert raw(ff_redis, model)[:3] == [1, "OK", "revoked"]
    state = core(ff_engine, c.eid)
    assert (state["lease_revoke_reason"], state["blocking_detail"]) == ("", "lease revoked: ")


def test_revoke_with_the_matching_expected_lease_id_revokes(ff_engine):
    c = claimed(ff_engine)
    settled = ff_engine.revoke_lease(c.eid, expected_lease_id=c.fence.lease_id)
    assert (settled.status, settled.reason) == ("OK", "revoked")


def test_revoke_with_a_different_expected_lease_id_answers_stale_lease_with_detail(ff_engine):
    c = claimed(ff_engine)
    other = new_uuid()
    model = fn.RevokeLease(execution_id=c.eid, expected_lease_id=other, worker_instance_id=WIID)
    expect_error(ff_engine, model, "stale_lease", [f"expected {other} but current is {c.fence.lease_id}"])
    assert seven(core(ff_engine, c.eid)) == ACTIVE_LEASED


def test_revoke_of_a_revoked_lease_answers_already_revoked_before_checking_the_expected_lease(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ff_engine.revoke_lease(c.eid)
    model = fn.RevokeLease(execution_id=c.eid, expected_lease_id=new_uuid(), worker_instance_id=WIID)
    assert raw(ff_redis, model) == [1, "ALREADY_SATISFIED", "already_revoked"]
    assert [e["event"] for e in history(ff_redis, c.eid)] == ["acquired", "revoked"]


def test_revoke_of_an_expired_lease_answers_already_expired(ff_engine, ff_redis):
    c = expired(ff_engine)
    mark_expired(ff_engine, c.eid)
    model = fn.RevokeLease(execution_id=c.eid, worker_instance_id=WIID)
    assert raw(ff_redis, model) == [1, "ALREADY_SATISFIED", "already_expired"]
    assert core(ff_engine, c.eid)["ownership_state"] == "lease_expired_reclaimable"


def test_revoke_of_an_unowned_active_execution_answers_no_active_lease(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ff_redis.hset(c.keys.core, "ownership_state", "unowned")
    expect_error(ff_engine, fn.RevokeLease(execution_id=c.eid, worker_instance_id=WIID), "no_active_lease", [])


def test_revoke_of_a_runnable_execution_answers_execution_not_active(ff_engine):
    eid = create(ff_engine)
    error = expect_error(ff_engine, fn.RevokeLease(execution_id=eid, worker_instance_id=""), "execution_not_active")
    assert error.details == ["none", "0", "runnable", ""]


def test_revoke_of_a_missing_execution_answers_execution_not_found(ff_engine):
    model = fn.RevokeLease(execution_id=ExecutionId.mint(PARTITION), worker_instance_id="")
    expect_error(ff_engine, model, "execution_not_found", [])


# -- ff_issue_reclaim_grant (§5.15) ---------------------------------------------------------------


def test_issue_reclaim_grant_on_a_revoked_lease_writes_an_expiring_grant(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ff_engine.revoke_lease(c.eid)
    model = fn.IssueReclaimGrant(
        execution_id=c.eid,
        worker_id=OTHER_WORKER,
        worker_instance_id=OTHER_WIID,
        lane_id=LANE,
        capability_hash="caps-hash",
        grant_ttl_ms=4000,
        route_snapshot_json='{"r":1}',
        admission_summary="admitted",
    )
    reply = raw(ff_redis, model)
    assert reply[:3] == [1, "OK", c.eid]
    expires_at = int(reply[3])
    granted = hash_of(ff_redis, c.keys.claim_grant)
    assert granted == {
        "worker_id": OTHER_WORKER,
        "worker_instance_id": OTHER_WIID,
        "lane_id": LANE,
        "capability_hash": "caps-hash",
        "route_snapshot_json": '{"r":1}',
        "admission_summary": "admitted",
        "created_at": str(expires_at - 4000),
        "grant_expires_at": str(expires_at),
    }
    assert pexpiretime(ff_redis, c.keys.claim_grant) == expires_at
    assert seven(core(ff_engine, c.eid)) == LEASE_REVOKED


def test_issue_reclaim_grant_on_an_expired_lease_succeeds(ff_engine):
    c = expired(ff_engine)
    mark_expired(ff_engine, c.eid)
    assert reclaim_grant(ff_engine, c.eid) > c.expires_at


def test_issue_reclaim_grant_on_a_live_lease_answers_execution_not_reclaimable(ff_engine, ff_redis):
    c = claimed(ff_engine)
    model = fn.IssueReclaimGrant(
        execution_id=c.eid, worker_id=OTHER_WORKER, worker_instance_id=OTHER_WIID, lane_id=LANE
    )
    expect_error(ff_engine, model, "execution_not_reclaimable", [])
    assert ff_redis.exists(c.keys.claim_grant) == 0


def test_issue_reclaim_grant_on_an_unmarked_past_due_lease_answers_execution_not_reclaimable(ff_engine):
    c = expired(ff_engine)
    model = fn.IssueReclaimGrant(
        execution_id=c.eid, worker_id=OTHER_WORKER, worker_instance_id=OTHER_WIID, lane_id=LANE
    )
    expect_error(ff_engine, model, "execution_not_reclaimable")


def test_issue_reclaim_grant_on_a_runnable_execution_answers_execution_not_reclaimable(ff_engine):
    eid = create(ff_engine)
    model = fn.IssueReclaimGrant(execution_id=eid, worker_id=OTHER_WORKER, worker_instance_id=OTHER_WIID, lane_id=LANE)
    expect_error(ff_engine, model, "execution_not_reclaimable")


def test_issue_reclaim_grant_twice_answers_grant_already_exists(ff_engine):
    c = claimed(ff_engine)
    ff_engine.revoke_lease(c.eid)
    reclaim_grant(ff_engine, c.eid)
    model = fn.IssueReclaimGrant(
        execution_id=c.eid, worker_id=OTHER_WORKER, worker_instance_id=OTHER_WIID, lane_id=LANE
    )
    expect_error(ff_engine, model, "grant_already_exists", [])


def test_issue_reclaim_grant_for_a_missing_execution_answers_execution_not_found(ff_engine):
    model = fn.IssueReclaimGrant(
        execution_id=ExecutionId.mint(PARTITION), worker_id=OTHER_WORKER, worker_instance_id=OTHER_WIID, lane_id=LANE
    )
    expect_error(ff_engine, model, "execution_not_found", [])


def test_issue_reclaim_grant_with_a_non_numeric_ttl_answers_invalid_input(ff_engine, ff_redis):
    model = fn.IssueReclaimGrant(
        execution_id=ExecutionId.mint(PARTITION), worker_id=OTHER_WORKER, worker_instance_id=OTHER_WIID, lane_id=LANE
    )
    argv = model.argv()
    argv[5] = "long"
    assert raw(ff_redis, model, argv) == [0, "invalid_input", "grant_ttl_ms must be a number, got: long"]


def test_issue_reclaim_grant_to_a_worker_missing_capabilities_answers_capability_mismatch(ff_engine, ff_redis):
    policy = '{"routing_requirements":{"required_capabilities":["gpu","cuda","avx"]}}'
    eid = create(ff_engine, policy_json=policy)
    ff_engine.call(
        fn.IssueClaimGrant(
            execution_id=eid,
            worker_id=WORKER,
            worker_instance_id=WIID,
            lane_id=LANE,
            worker_capabilities=("avx", "cuda", "gpu"),
        )
    )
    ff_engine.call(
        fn.ClaimExecution(
            execution_id=eid,
            worker_id=WORKER,
            worker_instance_id=WIID,
            lane_id=LANE,
            lease_id=new_uuid(),
            lease_ttl_ms=30_000,
            attempt_id=new_uuid(),
        )
    )
    ff_engine.revoke_lease(eid)
    model = fn.IssueReclaimGrant(
        execution_id=eid,
        worker_id=OTHER_WORKER,
        worker_instance_id=OTHER_WIID,
        lane_id=LANE,
        worker_capabilities=("gpu",),
    )
    expect_error(ff_engine, model, "capability_mismatch", ["avx,cuda"])
    assert core(ff_engine, eid)["last_capability_mismatch_at"] != ""
    assert ff_redis.exists(ExecKeys(eid).claim_grant) == 0


# -- ff_reclaim_execution (§5.16, rows 15-16) -------------------------------------------------------


def test_reclaim_after_revoke_starts_a_reclaim_attempt_under_a_new_lease(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ff_engine.revoke_lease(c.eid, reason="ops")
    reclaim_grant(ff_engine, c.eid)
    model = reclaim_request(ff_engine, c.eid, ttl_ms=30_000)
    reply = raw(ff_redis, model)
    state = core(ff_engine, c.eid)
    now = int(state["lease_acquired_at"])
    assert reply == [1, "OK", model.lease_id, "2", str(now + 30_000), model.attempt_id, "1", "reclaim"]
    assert seven(state) == ACTIVE_LEASED
    assert state["blocking_detail"] == ""
    assert state["current_attempt_index"] == "1"
    assert state["total_attempt_count"] == "2"
    assert state["current_attempt_id"] == model.attempt_id
    assert state["current_lease_id"] == model.lease_id
    assert state["current_lease_epoch"] == "2"
    assert state["current_worker_id"] == OTHER_WORKER
    assert state["current_worker_instance_id"] == OTHER_WIID
    assert state["lease_reclaim_count"] == "1"
    assert state["lease_expires_at"] == str(now + 30_000)
    assert state["lease_renewal_deadline"] == str(now + 20_000)
    for name in LEASE_MARKERS:
        assert state[name] == "", name
    assert ff_redis.exists(c.keys.claim_grant) == 0


def test_reclaim_ends_the_old_attempt_and_records_the_reclaim_lineage(ff_engine, ff_redis):
    c = claimed(ff_engine)
    meta = with_stream_meta(ff_redis, c)
    ff_engine.revoke_lease(c.eid)
    reclaim_grant(ff_engine, c.eid)
    model = reclaim_request(ff_engine, c.eid)
    ff_engine.call(model)
    now = core(ff_engine, c.eid)["lease_acquired_at"]
    old = hash_of(ff_redis, c.keys.attempt(0))
    assert (old["attempt_state"], old["ended_at"], old["failure_reason"]) == (
        "interrupted_reclaimed",
        now,
        "lease_lease_revoked",
    )
    assert hash_of(ff_redis, meta)["closed_reason"] == "reclaimed"
    new = hash_of(ff_redis, c.keys.attempt(1))
    assert {k: new[k] for k in ("attempt_id", "execution_id", "attempt_index", "attempt_type", "attempt_state")} == {
        "attempt_id": model.attempt_id,
        "execution_id": c.eid,
        "attempt_index": "1",
        "attempt_type": "reclaim",
        "attempt_state": "started",
    }
    assert (new["reclaim_reason"], new["previous_attempt_index"]) == ("lease_lease_revoked", "0")
    assert (new["lease_id"], new["lease_epoch"], new["worker_id"], new["worker_instance_id"]) == (
        model.lease_id,
        "2",
        OTHER_WORKER,
        OTHER_WIID,
    )
    assert [m.decode() for m in ff_redis.zrange(c.keys.attempts, 0, -1)] == ["0", "1"]
    assert hash_of(ff_redis, c.keys.attempt_usage(1)) == {"last_usage_report_seq": "0"}


def test_reclaim_after_mark_expired_records_the_expired_reclaim_reason(ff_engine, ff_redis):
    c = expired(ff_engine)
    mark_expired(ff_engine, c.eid)
    reclaim_grant(ff_engine, c.eid)
    ff_engine.call(reclaim_request(ff_engine, c.eid))
    assert hash_of(ff_redis, c.keys.attempt(1))["reclaim_reason"] == "lease_lease_expired_reclaimable"
    assert hash_of(ff_redis, c.keys.attempt(0))["failure_reason"] == "lease_lease_expired_reclaimable"
    assert core(ff_engine, c.eid)["lease_expired_at"] == ""


def test_reclaim_writes_a_new_lease_record_and_indexes_it(ff_engine, ff_redis):
    c = expired(ff_engine)
    mark_expired(ff_engine, c.eid)
    assert ff_redis.sismember(IDX.worker_leases(WIID), c.eid)
    reclaim_grant(ff_engine, c.eid)
    model = reclaim_request(ff_engine, c.eid, ttl_ms=9000)
    lease = ff_engine.call(model)
    now = int(core(ff_engine, c.eid)["lease_acquired_at"])
    assert hash_of(ff_redis, c.keys.lease_current) == {
        "lease_id": model.lease_id,
        "lease_epoch": "2",
        "execution_id": c.eid,
        "attempt_id": model.attempt_id,
        "worker_id": OTHER_WORKER,
        "worker_instance_id": OTHER_WIID,
        "acquired_at": str(now),
        "expires_at": str(now + 9000),
        "last_renewed_at": str(now),
        "renewal_deadline": str(now + 6000),
    }
    assert lease.expires_at == now + 9000
    assert score(ff_redis, IDX.lease_expiry, c.eid) == now + 9000
    assert score(ff_redis, IDX.active(LANE), c.eid) == now + 9000
    assert not ff_redis.sismember(IDX.worker_leases(WIID), c.eid)
    assert ff_redis.sismember(IDX.worker_leases(OTHER_WIID), c.eid)
    assert score(ff_redis, IDX.attempt_timeout, c.eid) is None  # reclaim sets no attempt timeout (§6.3)


def test_reclaim_by_the_same_worker_keeps_its_worker_leases_entry(ff_engine, ff_redis):
    c = expired(ff_engine)
    mark_expired(ff_engine, c.eid)
    reclaim_grant(ff_engine, c.eid, worker_id=WORKER, wiid=WIID)
    ff_engine.call(reclaim_request(ff_engine, c.eid, worker_id=WORKER, wiid=WIID))
    assert ff_redis.sismember(IDX.worker_leases(WIID), c.eid)


def test_reclaim_writes_a_reclaimed_event(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ff_engine.revoke_lease(c.eid)
    reclaim_grant(ff_engine, c.eid)
    model = reclaim_request(ff_engine, c.eid)
    ff_engine.call(model)
    event = history(ff_redis, c.eid)[-1]
    assert list(event) == [
        "event",
        "old_lease_epoch",
        "new_lease_id",
        "new_lease_epoch",
        "new_attempt_id",
        "new_attempt_index",
        "worker_id",
        "ts",
    ]
    assert event == {
        "event": "reclaimed",
        "old_lease_epoch": "1",
        "new_lease_id": model.lease_id,
        "new_lease_epoch": "2",
        "new_attempt_id": model.attempt_id,
        "new_attempt_index": "1",
        "worker_id": OTHER_WORKER,
        "ts": core(ff_engine, c.eid)["lease_acquired_at"],
    }


def test_reclaimed_lease_can_be_completed_by_its_new_holder(ff_engine):
    c = claimed(ff_engine)
    ff_engine.revoke_lease(c.eid)
    reclaim_grant(ff_engine, c.eid)
    lease = ff_engine.call(reclaim_request(ff_engine, c.eid))
    fence = fn.Fence(lease_id=lease.lease_id, lease_epoch=lease.lease_epoch, attempt_id=lease.attempt_id)
    new_holder = Claimed(c.eid, fence, 1, lease.expires_at or 0, OTHER_WORKER, OTHER_WIID)
    ff_engine.call(holder("complete", new_holder))
    assert seven(core(ff_engine, c.eid)) == COMPLETED


def test_reclaim_does_not_check_the_grant_expiry(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ff_engine.revoke_lease(c.eid)
    ff_redis.hset(c.keys.claim_grant, mapping={"worker_id": OTHER_WORKER, "grant_expires_at": "1"})
    assert ff_engine.call(reclaim_request(ff_engine, c.eid)).attempt_type == "reclaim"
    assert ff_redis.exists(c.keys.claim_grant) == 0


def test_reclaim_without_a_grant_answers_invalid_claim_grant(ff_engine):
    c = claimed(ff_engine)
    ff_engine.revoke_lease(c.eid)
    expect_error(ff_engine, reclaim_request(ff_engine, c.eid), "invalid_claim_grant", [])
    assert seven(core(ff_engine, c.eid)) == LEASE_REVOKED


def test_reclaim_with_another_workers_grant_answers_invalid_claim_grant_and_keeps_the_grant(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ff_engine.revoke_lease(c.eid)
    reclaim_grant(ff_engine, c.eid, worker_id="worker-c", wiid="worker-c-1")
    expect_error(ff_engine, reclaim_request(ff_engine, c.eid), "invalid_claim_grant")
    assert ff_redis.exists(c.keys.claim_grant) == 1


def test_reclaim_of_a_live_lease_answers_execution_not_reclaimable(ff_engine):
    c = claimed(ff_engine)
    expect_error(ff_engine, reclaim_request(ff_engine, c.eid), "execution_not_reclaimable", [])


def test_reclaim_of_a_terminal_execution_answers_execution_not_reclaimable(ff_engine):
    c = claimed(ff_engine)
    ff_engine.call(holder("complete", c))
    expect_error(ff_engine, reclaim_request(ff_engine, c.eid), "execution_not_reclaimable")


def test_reclaim_of_a_missing_execution_answers_execution_not_found(ff_engine):
    model = fn.ReclaimExecution(
        execution_id=ExecutionId.mint(PARTITION),
        worker_id=OTHER_WORKER,
        worker_instance_id=OTHER_WIID,
        lane_id=LANE,
        lease_id=new_uuid(),
        lease_ttl_ms=30_000,
        attempt_id=new_uuid(),
        current_attempt_index=0,
    )
    expect_error(ff_engine, model, "execution_not_found", [])


@pytest.mark.parametrize(("position", "name"), [(5, "lease_ttl_ms"), (8, "default_max_reclaim_count")])
def test_reclaim_with_a_non_numeric_argument_answers_invalid_input_before_reading_the_core(
    ff_engine, ff_redis, position, name
):
    # ARGV 9 is an intentional deviation: FlowFabric raises a Lua error there
    c = claimed(ff_engine)
    ff_engine.revoke_lease(c.eid)
    reclaim_grant(ff_engine, c.eid)
    model = reclaim_request(ff_engine, c.eid)
    argv = model.argv()
    argv[position] = "lots"
    assert raw(ff_redis, model, argv) == [0, "invalid_input", f"{name} must be a number, got: lots"]
    assert seven(core(ff_engine, c.eid)) == LEASE_REVOKED
    missing = model.model_copy(update={"execution_id": ExecutionId.mint(PARTITION)})
    argv = missing.argv()
    argv[position] = "lots"
    assert raw(ff_redis, missing, argv)[:2] == [0, "invalid_input"]


def test_reclaim_defaults_the_cap_to_100_when_argv_9_is_missing(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ff_engine.revoke_lease(c.eid)
    reclaim_grant(ff_engine, c.eid)
    ff_redis.hset(c.keys.core, "lease_reclaim_count", "100")
    model = reclaim_request(ff_engine, c.eid)
    assert raw(ff_redis, model, model.argv()[:8]) == [0, "max_retries_exhausted", "100"]


def test_reclaim_at_the_argv_cap_fails_the_execution(ff_engine):
    c = claimed(ff_engine)
    ff_engine.revoke_lease(c.eid)
    reclaim_grant(ff_engine, c.eid)
    expect_error(ff_engine, reclaim_request(ff_engine, c.eid, default_cap=0), "max_retries_exhausted", ["0"])
    assert seven(core(ff_engine, c.eid)) == FAILED


def test_reclaim_cap_from_the_stored_policy_wins_over_argv(ff_engine):
    c = claimed(ff_engine, policy_json='{"max_reclaim_count":5}')
    ff_engine.revoke_lease(c.eid)
    reclaim_grant(ff_engine, c.eid)
    lease = ff_engine.call(reclaim_request(ff_engine, c.eid, default_cap=0))
    assert lease.attempt_type == "reclaim"


def test_reclaim_past_the_stored_policy_cap_fails_the_execution_with_max_reclaims_exceeded(ff_engine, ff_redis):
    c = claimed(ff_engine, policy_json='{"max_reclaim_count":1}', attempt_timeout_ms=60_000, deadline_at=FAR_MS)
    ff_engine.revoke_lease(c.eid)
    reclaim_grant(ff_engine, c.eid)
    ff_engine.call(reclaim_request(ff_engine, c.eid))  # first reclaim: count 0 < 1
    ff_redis.zadd(IDX.attempt_timeout, {c.eid: 1})
    ff_engine.revoke_lease(c.eid, reason="again")
    revoked = core(ff_engine, c.eid)
    assert ff_redis.sismember(IDX.worker_leases(OTHER_WIID), c.eid) == 0
    ff_redis.sadd(IDX.worker_leases(OTHER_WIID), c.eid)
    ff_redis.sadd(IDX.worker_leases("worker-c-1"), c.eid)
    ff_redis.zadd(IDX.lease_expiry, {c.eid: 1})
    reclaim_grant(ff_engine, c.eid, worker_id="worker-c", wiid="worker-c-1")
    events = history(ff_redis, c.eid)
    model = reclaim_request(ff_engine, c.eid, worker_id="worker-c", wiid="worker-c-1")
    assert raw(ff_redis, model) == [0, "max_retries_exhausted", "1"]
    state = core(ff_engine, c.eid)
    now = state["completed_at"]
    assert seven(state) == FAILED
    assert state["failure_reason"] == "max_reclaims_exceeded"
    assert state["last_transition_at"] == now != ""
    assert state["lease_reclaim_count"] == "1"
    for name in LEASE_OWNER:
        assert state[name] == "", name
    # the cap path clears only the lease id and the worker ids (Errata E2)
    for name in (*LEASE_TIMING, "lease_revoked_at", "lease_revoke_reason", "lease_acquired_at"):
        assert state[name] == revoked[name] != "", name
    assert state["current_attempt_id"] == revoked["current_attempt_id"] != ""
    assert ff_redis.exists(c.keys.lease_current) == 0
    for key in (IDX.lease_expiry, IDX.active(LANE), IDX.attempt_timeout, IDX.execution_deadline):
        assert score(ff_redis, key, c.eid) is None, key
    assert not ff_redis.sismember(IDX.worker_leases(OTHER_WIID), c.eid)
    assert not ff_redis.sismember(IDX.worker_leases("worker-c-1"), c.eid)
    assert score(ff_redis, IDX.terminal(LANE), c.eid) == int(now)
    assert history(ff_redis, c.eid) == events
    assert ff_redis.exists(c.keys.claim_grant) == 1
    assert hash_of(ff_redis, c.keys.attempt(2)) == {}


def test_reclaim_cap_is_checked_before_the_grant(ff_engine):
    c = claimed(ff_engine, policy_json='{"max_reclaim_count":0}')
    ff_engine.revoke_lease(c.eid)
    expect_error(ff_engine, reclaim_request(ff_engine, c.eid), "max_retries_exhausted", ["0"])
    assert core(ff_engine, c.eid)["failure_reason"] == "max_reclaims_exceeded"


def test_reclaim_with_a_non_numeric_stored_max_reclaim_count_answers_invalid_policy_json(ff_engine):
    # intentional deviation: FlowFabric raises a Lua error here
    c = claimed(ff_engine, policy_json='{"max_reclaim_count":"many"}')
    ff_engine.revoke_lease(c.eid)
    reclaim_grant(ff_engine, c.eid)
    expect_error(
        ff_engine, reclaim_request(ff_engine, c.eid), "invalid_policy_json", ["max_reclaim_count:not_a_number"]
    )
    assert seven(core(ff_engine, c.eid)) == LEASE_REVOKED


# -- ff_expire_execution (§5.17, row 18) ------------------------------------------------------------


EXPIRED_TERMINAL = ("terminal", "unowned", "not_applicable", "none", "expired", "attempt_terminal", "expired")


def test_expire_of_an_active_execution_ends_the_attempt_and_releases_the_lease(ff_engine, ff_redis):
    c = claimed(ff_engine, attempt_timeout_ms=60_000, deadline_at=FAR_MS)
    meta = with_stream_meta(ff_redis, c)
    model = fn.ExpireExecution(execution_id=c.eid, expire_reason="attempt_timeout", lane_id=LANE, attempt_index=0)
    assert raw(ff_redis, model) == [1, "OK", "expired", "active"]
    state = core(ff_engine, c.eid)
    now = state["completed_at"]
    assert seven(state) == EXPIRED_TERMINAL
    assert state["failure_reason"] == "attempt_timeout"
    assert state["last_transition_at"] == now != ""
    assert state["current_attempt_id"] == c.fence.attempt_id
    attempt = hash_of(ff_redis, c.keys.attempt(0))
    assert (attempt["attempt_state"], attempt["ended_at"], attempt["failure_reason"]) == (
        "ended_failure",
        now,
        "attempt_timeout",
    )
    assert hash_of(ff_redis, meta)["closed_reason"] == "expired"
    assert ff_redis.exists(c.keys.lease_current) == 0
    for key in (IDX.lease_expiry, IDX.active(LANE), IDX.attempt_timeout, IDX.execution_deadline):
        assert score(ff_redis, key, c.eid) is None, key
    assert not ff_redis.sismember(IDX.worker_leases(WIID), c.eid)
    assert score(ff_redis, IDX.terminal(LANE), c.eid) == int(now)
    event = history(ff_redis, c.eid)[-1]
    assert list(event) == ["event", "lease_id", "lease_epoch", "attempt_index", "reason", "ts"]
    assert (event["event"], event["lease_id"], event["reason"], event["ts"]) == (
        "released",
        c.fence.lease_id,
        "expired:attempt_timeout",
        now,
    )


def test_expire_clears_only_the_lease_id_worker_ids_and_lease_expires_at(ff_engine):
    c = claimed(ff_engine)
    before = core(ff_engine, c.eid)
    ff_engine.expire(c.eid, "execution_deadline")
    state = core(ff_engine, c.eid)
    for name in (*LEASE_OWNER, "lease_expires_at"):
        assert state[name] == "", name
    for name in ("lease_last_renewed_at", "lease_renewal_deadline", "lease_acquired_at"):
        assert state[name] == before[name] != "", name
    assert state["failure_reason"] == "execution_deadline"


def test_expire_removes_the_real_holders_worker_entry_although_the_scanner_passes_an_empty_one(ff_engine, ff_redis):
    c = claimed(ff_engine)
    model = fn.ExpireExecution(execution_id=c.eid, lane_id=LANE, attempt_index=0)
    assert model.keys()[6] == IDX.worker_leases("")
    ff_engine.call(model)
    assert not ff_redis.sismember(IDX.worker_leases(WIID), c.eid)


def test_expire_of_an_eligible_execution_removes_it_from_eligible(ff_engine, ff_redis):
    eid = create(ff_engine, execution_deadline_at=FAR_MS)
    model = fn.ExpireExecution(execution_id=eid, expire_reason="execution_deadline", lane_id=LANE)
    assert raw(ff_redis, model) == [1, "OK", "expired", "runnable"]
    state = core(ff_engine, eid)
    assert seven(state) == (
        "terminal",
        "unowned",
        "not_applicable",
        "none",
        "expired",
        "pending_first_attempt",
        "expired",
    )
    assert score(ff_redis, IDX.eligible(LANE), eid) is None
    assert score(ff_redis, IDX.execution_deadline, eid) is None
    assert score(ff_redis, IDX.terminal(LANE), eid) == int(state["completed_at"])
    assert history(ff_redis, eid) == []


def test_expire_of_a_delayed_execution_removes_it_from_delayed(ff_engine, ff_redis):
    eid = create(ff_engine, delay_until=FAR_MS)
    assert ff_engine.expire(eid, "execution_deadline").reason == "runnable"
    assert score(ff_redis, IDX.delayed(LANE), eid) is None
    assert core(ff_engine, eid)["terminal_outcome"] == "expired"


def test_expire_of_a_waiting_children_execution_removes_it_from_blocked_dependencies(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ff_engine.call(holder("wait_children", c))
    assert ff_engine.expire(c.eid, "execution_deadline").reason == "runnable"
    state = core(ff_engine, c.eid)
    assert seven(state) == EXPIRED_TERMINAL
    assert score(ff_redis, IDX.blocked(LANE, "dependencies"), c.eid) is None
    assert score(ff_redis, IDX.terminal(LANE), c.eid) == int(state["completed_at"])
    assert hash_of(ff_redis, c.keys.attempt(0))["attempt_state"] == "suspended"


def test_expire_of_a_terminal_execution_answers_already_terminal_and_cleans_timeouts(ff_engine, ff_redis):
    c = claimed(ff_engine)
    ff_engine.call(holder("complete", c))
    ff_redis.zadd(IDX.attempt_timeout, {c.eid: 1})
    ff_redis.zadd(IDX.execution_deadline, {c.eid: 1})
    model = fn.ExpireExecution(execution_id=c.eid, lane_id=LANE, attempt_index=0)
    assert raw(ff_redis, model) == [1, "OK", "already_terminal"]
    assert score(ff_redis, IDX.attempt_timeout, c.eid) is None
    assert score(ff_redis, IDX.execution_deadline, c.eid) is None
    assert core(ff_engine, c.eid)["terminal_outcome"] == "success"


def test_expire_of_a_missing_execution_answers_not_found_cleaned_and_cleans_timeouts(ff_engine, ff_redis):
    eid = ExecutionId.mint(PARTITION)
    ff_redis.zadd(IDX.attempt_timeout, {eid: 1})
    ff_redis.zadd(IDX.execution_deadline, {eid: 1})
    assert raw(ff_redis, fn.ExpireExecution(execution_id=eid, lane_id=LANE)) == [1, "OK", "not_found_cleaned"]
    assert score(ff_redis, IDX.attempt_timeout, eid) is None
    assert score(ff_redis, IDX.execution_deadline, eid) is None


def test_expire_without_a_reason_argument_uses_attempt_timeout(ff_engine, ff_redis):
    c = claimed(ff_engine)
    model = fn.ExpireExecution(execution_id=c.eid, lane_id=LANE, attempt_index=0)
    assert raw(ff_redis, model, [c.eid]) == [1, "OK", "expired", "active"]
    assert core(ff_engine, c.eid)["failure_reason"] == "attempt_timeout"
    assert history(ff_redis, c.eid)[-1]["reason"] == "expired:attempt_timeout"


# -- ff_update_progress (§5.20) -------------------------------------------------------------------


def progress(c: Claimed, pct: float | None = 50, message: str = "halfway") -> fn.UpdateProgress:
    return fn.UpdateProgress(
        execution_id=c.eid,
        lease_id=c.fence.lease_id,
        lease_epoch=c.fence.lease_epoch,
        progress_pct=pct,
        progress_message=message,
    )


def test_update_progress_writes_pct_message_and_timestamps(ff_engine, ff_redis):
    c = claimed(ff_engine)
    assert raw(ff_redis, progress(c, 42.5, "working")) == [1, "OK"]
    state = core(ff_engine, c.eid)
    assert (state["progress_pct"], state["progress_message"]) == ("42.5", "working")
    assert state["progress_updated_at"] == state["last_mutation_at"] != ""
    assert seven(state) == ACTIVE_LEASED


def test_update_progress_leaves_pct_and_message_alone_when_empty(ff_engine):
    c = claimed(ff_engine)
    ff_engine.call(progress(c, 10, "first"))
    first = core(ff_engine, c.eid)["progress_updated_at"]
    time.sleep(0.005)
    ff_engine.call(progress(c, None, ""))
    state = core(ff_engine, c.eid)
    assert (state["progress_pct"], state["progress_message"]) == ("10", "first")
    assert int(state["progress_updated_at"]) > int(first)
    ff_engine.call(progress(c, 20, ""))
    assert (core(ff_engine, c.eid)["progress_pct"], core(ff_engine, c.eid)["progress_message"]) == ("20", "first")
    ff_engine.call(progress(c, None, "second"))
    assert (core(ff_engine, c.eid)["progress_pct"], core(ff_engine, c.eid)["progress_message"]) == ("20", "second")


def test_update_progress_does_not_check_the_attempt_id(ff_engine):
    c = claimed(ff_engine)
    other = Claimed(c.eid, stale(c, "attempt_id"), 0, 0)
    ff_engine.call(progress(other))
    assert core(ff_engine, c.eid)["progress_message"] == "halfway"


def test_update_progress_of_a_missing_execution_answers_execution_not_found(ff_engine):
    c = Claimed(ExecutionId.mint(PARTITION), fn.Fence(lease_id=new_uuid(), lease_epoch=1, attempt_id=new_uuid()), 0, 0)
    expect_error(ff_engine, progress(c), "execution_not_found", [])


def test_update_progress_after_complete_answers_execution_not_active(ff_engine):
    c = claimed(ff_engine)
    ff_engine.call(holder("complete", c))
    error = expect_error(ff_engine, progress(c), "execution_not_active")
    assert error.details == ["success", "1", "terminal", c.fence.attempt_id]


def test_update_progress_of_a_revoked_lease_answers_lease_revoked(ff_engine):
    c = claimed(ff_engine)
    ff_engine.revoke_lease(c.eid)
    expect_error(ff_engine, progress(c), "lease_revoked", [])


def test_update_progress_of_an_expired_lease_answers_lease_expired_without_marking_it(ff_engine, ff_redis):
    c = expired(ff_engine)
    expect_error(ff_engine, progress(c), "lease_expired", [])
    state = core(ff_engine, c.eid)
    assert seven(state) == ACTIVE_LEASED
    assert state["lease_expired_at"] == ""
    assert state["progress_message"] == ""
    assert [e["event"] for e in history(ff_redis, c.eid)] == ["acquired"]


def test_update_progress_of_a_revoked_lease_past_its_expiry_answers_lease_revoked(ff_engine):
    c = claimed(ff_engine, ttl_ms=SHORT_TTL_MS)
    ff_engine.revoke_lease(c.eid)
    time.sleep(EXPIRY_WAIT_S)
    expect_error(ff_engine, progress(c), "lease_revoked")


def test_update_progress_with_a_stale_lease_on_an_expired_lease_answers_lease_expired(ff_engine):
    c = expired(ff_engine)
    expect_error(ff_engine, progress(Claimed(c.eid, stale(c, "lease_id"), 0, 0)), "lease_expired")


@pytest.mark.parametrize("part", ["lease_id", "lease_epoch"])
def test_update_progress_with_a_stale_lease_component_answers_stale_lease(ff_engine, part):
    c = claimed(ff_engine)
    expect_error(ff_engine, progress(Claimed(c.eid, stale(c, part), 0, 0)), "stale_lease", [])
    assert core(ff_engine, c.eid)["progress_message"] == ""


def test_update_progress_with_an_empty_lease_answers_stale_lease(ff_engine, ff_redis):
    c = claimed(ff_engine)
    model = progress(c)
    assert raw(ff_redis, model, [c.eid, "", "", "50", "x"]) == [0, "stale_lease"]
