"""Typed calls of the execution core (``lua/execution.lua``, ``lease.lua``, ``scheduling.lua``,
``signal.lua``'s resumed claim, ``flow.lua``'s replay): create, grant, claim, renew, complete,
fail, cancel, delay, promote, expire, revoke, reclaim, priority, tags, progress, replay, and
the worker registry.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, Field

from ff_celery.engine.functions.base import (
    DEFAULT_DEDUP_TTL_MS,
    ExecutionFcall,
    Fcall,
    Fence,
    Reply,
    ResultT,
    Settled,
    fence_argv,
    number,
    optional_number,
    text,
)
from ff_celery.engine.ids import ExecutionId
from ff_celery.engine.keys import worker_alive_key, worker_caps_key, worker_index_key

# -- results --------------------------------------------------------------------------------


class Created(BaseModel):
    execution_id: ExecutionId
    public_state: str | None  # "waiting" / "delayed"; None for a duplicate
    duplicate: bool = False


class Lease(BaseModel):
    """A lease just acquired by a claim, resumed claim or reclaim."""

    lease_id: str
    lease_epoch: int
    expires_at: int | None  # None where the function does not report it (grant-and-claim)
    attempt_id: str | None
    attempt_index: int
    attempt_type: str | None


class FailOutcome(BaseModel):
    retry_scheduled: bool
    delay_until: float | None = None  # engine-time ms of the retry; may be fractional


# -- execution lifecycle ----------------------------------------------------------------------


class Version(Fcall[str]):
    """``ff_version``: a bare string, not an envelope."""

    function = "ff_version"

    def keys(self) -> list[str]:
        return []

    def argv(self) -> list[str | bytes]:
        return []

    def interpret(self, raw: Any) -> str:
        return text(raw)


class CreateExecution(ExecutionFcall[Created]):
    """``ff_create_execution``. ``delay_until`` must be clearly in the future (spec §5.2)."""

    function = "ff_create_execution"
    namespace: str
    lane_id: str
    execution_kind: str
    priority: float = 0
    creator_identity: str = ""
    policy_json: str = "{}"
    input_payload: bytes = b""
    delay_until: int | None = None
    idempotency_key: str | None = None
    dedup_ttl_ms: int = DEFAULT_DEDUP_TTL_MS
    tags: dict[str, str] = Field(default_factory=dict)
    execution_deadline_at: int | None = None

    def keys(self) -> list[str]:
        x, idx = self.exec_keys, self.index
        schedule = idx.delayed(self.lane_id) if self.delay_until is not None else idx.eligible(self.lane_id)
        idem = idx.idempotency(self.namespace, self.idempotency_key) if self.idempotency_key else idx.noop
        return [
            x.core,
            x.payload,
            x.policy,
            x.tags,
            schedule,
            idem,
            idx.execution_deadline,
            idx.all_executions,
        ]

    def argv(self) -> list[str | bytes]:
        return [
            self.execution_id,
            self.namespace,
            self.lane_id,
            self.execution_kind,
            number(self.priority),
            self.creator_identity,
            self.policy_json,
            self.input_payload,
            optional_number(self.delay_until),
            str(self.dedup_ttl_ms) if self.idempotency_key else "",
            json.dumps(self.tags, sort_keys=True),
            optional_number(self.execution_deadline_at),
            str(self.execution_id.partition),
        ]

    def parse(self, reply: Reply) -> Created:
        if reply.status == "DUPLICATE":
            return Created(execution_id=ExecutionId(reply.fields[0]), public_state=None, duplicate=True)
        return Created(execution_id=ExecutionId(reply.fields[0]), public_state=reply.fields[1])


class GrantRequest(ExecutionFcall[ResultT]):
    """Shared arguments of the claim and reclaim grant functions."""

    worker_id: str
    worker_instance_id: str
    lane_id: str
    capability_hash: str = ""
    grant_ttl_ms: int = 5000
    route_snapshot_json: str = ""
    admission_summary: str = ""
    worker_capabilities: tuple[str, ...] = ()

    def argv(self) -> list[str | bytes]:
        return [
            self.execution_id,
            self.worker_id,
            self.worker_instance_id,
            self.lane_id,
            self.capability_hash,
            str(self.grant_ttl_ms),
            self.route_snapshot_json,
            self.admission_summary,
            ",".join(sorted(self.worker_capabilities)),
        ]


class IssueClaimGrant(GrantRequest[None]):
    function = "ff_issue_claim_grant"

    def keys(self) -> list[str]:
        return [self.exec_keys.core, self.exec_keys.claim_grant, self.index.eligible(self.lane_id)]

    def parse(self, reply: Reply) -> None:
        return None


class IssueReclaimGrant(GrantRequest[int]):
    """``ff_issue_reclaim_grant``; answers the grant's expiry (ms)."""

    function = "ff_issue_reclaim_grant"

    def keys(self) -> list[str]:
        return [self.exec_keys.core, self.exec_keys.claim_grant, self.index.lease_expiry]

    def parse(self, reply: Reply) -> int:
        return int(reply.fields[1])


def _lease_from_six(reply: Reply) -> Lease:
    lease_id, epoch, expires_at, attempt_id, attempt_index, attempt_type = reply.fields[:6]
    return Lease(
        lease_id=lease_id,
        lease_epoch=int(epoch),
        expires_at=int(float(expires_at)),
        attempt_id=attempt_id,
        attempt_index=int(attempt_index),
        attempt_type=attempt_type,
    )


class ClaimRequest(ExecutionFcall[Lease]):
    """Shared arguments of the claim functions."""

    worker_id: str
    worker_instance_id: str
    lane_id: str
    lease_id: str
    lease_ttl_ms: int
    capability_hash: str = ""

    def lease_index_keys(self) -> tuple[str, str]:
        return self.index.lease_expiry, self.index.worker_leases(self.worker_instance_id)


class ClaimExecution(ClaimRequest):
    """``ff_claim_execution``: a fresh attempt under a grant issued to this worker."""

    function = "ff_claim_execution"
    attempt_id: str
    next_attempt_index: int = 0  # KEYS 6-8 are placeholders; Lua derives the real index
    renew_before_ms: int | None = None
    attempt_policy_json: str = "{}"
    attempt_timeout_ms: int | None = None
    execution_deadline_at: int | None = None

    def keys(self) -> list[str]:
        x, idx = self.exec_keys, self.index
        return [
            x.core,
            x.claim_grant,
            idx.eligible(self.lane_id),
            *self.lease_index_keys(),
            x.attempt(self.next_attempt_index),
            x.attempt_usage(self.next_attempt_index),
            x.attempt_policy(self.next_attempt_index),
            x.attempts,
            x.lease_current,
            x.lease_history,
            idx.active(self.lane_id),
            idx.attempt_timeout,
            idx.execution_deadline,
        ]

    def argv(self) -> list[str | bytes]:
        renew_before = self.renew_before_ms if self.renew_before_ms is not None else self.lease_ttl_ms * 2 // 3
        return [
            self.execution_id,
            self.worker_id,
            self.worker_instance_id,
            self.lane_id,
            self.capability_hash,
            self.lease_id,
            str(self.lease_ttl_ms),
            str(renew_before),
            self.attempt_id,
            self.attempt_policy_json,
            optional_number(self.attempt_timeout_ms),
            optional_number(self.execution_deadline_at),
        ]

    def parse(self, reply: Reply) -> Lease:
        return _lease_from_six(reply)


class ClaimResumedExecution(ClaimRequest):
    """``ff_claim_resumed_execution``: continue the interrupted attempt ``attempt_index``."""

    function = "ff_claim_resumed_execution"
    attempt_index: int
    remaining_attempt_timeout_ms: int | None = None

    def keys(self) -> list[str]:
        x, idx = self.exec_keys, self.index
        return [
            x.core,
            x.claim_grant,
            idx.eligible(self.lane_id),
            *self.lease_index_keys(),
            x.attempt(self.attempt_index),
            x.lease_current,
            x.lease_history,
            idx.active(self.lane_id),
            idx.attempt_timeout,
            idx.execution_deadline,
        ]

    def argv(self) -> list[str | bytes]:
        return [
            self.execution_id,
            self.worker_id,
            self.worker_instance_id,
            self.lane_id,
            self.capability_hash,
            self.lease_id,
            str(self.lease_ttl_ms),
            optional_number(self.remaining_attempt_timeout_ms),
        ]

    def parse(self, reply: Reply) -> Lease:
        return _lease_from_six(reply)


class IssueGrantAndClaim(ClaimRequest):
    """``ff_issue_grant_and_claim``: grant plus claim in one call (operator path, no
    capability check). The reply carries no expiry or attempt id."""

    function = "ff_issue_grant_and_claim"
    attempt_id: str
    attempt_policy_json: str = "{}"
    attempt_timeout_ms: int | None = None
    execution_deadline_at: int | None = None

    def keys(self) -> list[str]:
        x, idx = self.exec_keys, self.index
        return [
            x.core,
            x.claim_grant,
            idx.eligible(self.lane_id),
            *self.lease_index_keys(),
            x.attempts,
            x.lease_current,
            x.lease_history,
            idx.active(self.lane_id),
            idx.attempt_timeout,
            idx.execution_deadline,
        ]

    def argv(self) -> list[str | bytes]:
        return [
            self.execution_id,
            self.worker_id,
            self.worker_instance_id,
            self.lane_id,
            self.capability_hash,
            self.lease_id,
            str(self.lease_ttl_ms),
            self.attempt_id,
            self.attempt_policy_json,
            optional_number(self.attempt_timeout_ms),
            optional_number(self.execution_deadline_at),
        ]

    def parse(self, reply: Reply) -> Lease:
        lease_id, epoch, attempt_index = reply.fields[:3]
        return Lease(
            lease_id=lease_id,
            lease_epoch=int(epoch),
            expires_at=None,
            attempt_id=None,
            attempt_index=int(attempt_index),
            attempt_type=None,
        )


class ReclaimExecution(ClaimRequest):
    """``ff_reclaim_execution``: take over an expired or revoked lease in a new attempt."""

    function = "ff_reclaim_execution"
    attempt_id: str
    current_attempt_index: int
    next_attempt_index: int = 0  # placeholder key slot; Lua derives the real index
    attempt_policy_json: str = "{}"
    default_max_reclaim_count: int = 100

    def keys(self) -> list[str]:
        x, idx = self.exec_keys, self.index
        return [
            x.core,
            x.claim_grant,
            x.attempt(self.current_attempt_index),
            x.stream_meta(self.current_attempt_index),
            x.attempt(self.next_attempt_index),
            x.attempt_usage(self.next_attempt_index),
            x.attempts,
            x.lease_current,
            x.lease_history,
            *self.lease_index_keys(),
            idx.active(self.lane_id),
            idx.attempt_timeout,
            idx.execution_deadline,
        ]

    def argv(self) -> list[str | bytes]:
        return [
            self.execution_id,
            self.worker_id,
            self.worker_instance_id,
            self.lane_id,
            self.lease_id,
            str(self.lease_ttl_ms),
            self.attempt_id,
            self.attempt_policy_json,
            str(self.default_max_reclaim_count),
        ]

    def parse(self, reply: Reply) -> Lease:
        return _lease_from_six(reply)


class HolderRequest(ExecutionFcall[ResultT]):
    """A lease holder's call: the fence plus what is needed to build its keys.

    ``fence=None`` sends the empty triple, allowed only with ``source="operator_override"``.
    """

    fence: Fence | None
    lane_id: str
    worker_instance_id: str
    attempt_index: int
    source: str = ""


class RenewLease(ExecutionFcall[int]):
    """``ff_renew_lease``; answers the new expiry (ms). Note its ARGV order."""

    function = "ff_renew_lease"
    attempt_index: int
    fence: Fence
    lease_ttl_ms: int
    lease_history_grace_ms: int = 5000

    def keys(self) -> list[str]:
        x = self.exec_keys
        return [x.core, x.lease_current, x.lease_history, self.index.lease_expiry]

    def argv(self) -> list[str | bytes]:
        return [
            self.execution_id,
            str(self.attempt_index),
            self.fence.attempt_id,
            self.fence.lease_id,
            str(self.fence.lease_epoch),
            str(self.lease_ttl_ms),
            str(self.lease_history_grace_ms),
        ]

    def parse(self, reply: Reply) -> int:
        return int(float(reply.fields[0]))


class CompleteExecution(HolderRequest[None]):
    function = "ff_complete_execution"
    result_payload: bytes = b""

    def keys(self) -> list[str]:
        x, idx = self.exec_keys, self.index
        return [
            x.core,
            x.attempt(self.attempt_index),
            idx.lease_expiry,
            idx.worker_leases(self.worker_instance_id),
            idx.terminal(self.lane_id),
            x.lease_current,
            x.lease_history,
            idx.active(self.lane_id),
            x.stream_meta(self.attempt_index),
            x.result,
            idx.attempt_timeout,
            idx.execution_deadline,
        ]

    def argv(self) -> list[str | bytes]:
        return [self.execution_id, *fence_argv(self.fence), self.result_payload, self.source]

    def parse(self, reply: Reply) -> None:
        return None


class FailExecution(HolderRequest[FailOutcome]):
    """``ff_fail_execution``: the engine retries per ``retry_policy_json`` (the policy's
    ``retry_policy`` object) or fails terminally; an empty policy never retries."""

    function = "ff_fail_execution"
    failure_reason: str
    failure_category: str = "transient"
    retry_policy_json: str = ""

    def keys(self) -> list[str]:
        x, idx = self.exec_keys, self.index
        return [
            x.core,
            x.attempt(self.attempt_index),
            idx.lease_expiry,
            idx.worker_leases(self.worker_instance_id),
            idx.terminal(self.lane_id),
            idx.delayed(self.lane_id),
            x.lease_current,
            x.lease_history,
            idx.active(self.lane_id),
            x.stream_meta(self.attempt_index),
            idx.attempt_timeout,
            idx.execution_deadline,
        ]

    def argv(self) -> list[str | bytes]:
        return [
            self.execution_id,
            *fence_argv(self.fence),
            self.failure_reason,
            self.failure_category,
            self.retry_policy_json,
            self.source,
        ]

    def parse(self, reply: Reply) -> FailOutcome:
        if reply.fields[0] == "retry_scheduled":
            return FailOutcome(retry_scheduled=True, delay_until=float(reply.fields[1]))
        return FailOutcome(retry_scheduled=False)


class DelayExecution(HolderRequest[int]):
    """``ff_delay_execution``: release the lease and park the attempt until ``delay_until``."""

    function = "ff_delay_execution"
    delay_until: int

    def keys(self) -> list[str]:
        x, idx = self.exec_keys, self.index
        return [
            x.core,
            x.attempt(self.attempt_index),
            x.lease_current,
            x.lease_history,
            idx.lease_expiry,
            idx.worker_leases(self.worker_instance_id),
            idx.active(self.lane_id),
            idx.delayed(self.lane_id),
            idx.attempt_timeout,
        ]

    def argv(self) -> list[str | bytes]:
        return [self.execution_id, *fence_argv(self.fence), str(self.delay_until), self.source]

    def parse(self, reply: Reply) -> int:
        return int(reply.fields[0])


class MoveToWaitingChildren(HolderRequest[None]):
    function = "ff_move_to_waiting_children"

    def keys(self) -> list[str]:
        x, idx = self.exec_keys, self.index
        return [
            x.core,
            x.attempt(self.attempt_index),
            x.lease_current,
            x.lease_history,
            idx.lease_expiry,
            idx.worker_leases(self.worker_instance_id),
            idx.active(self.lane_id),
            idx.blocked(self.lane_id, "dependencies"),
            idx.attempt_timeout,
        ]

    def argv(self) -> list[str | bytes]:
        return [self.execution_id, *fence_argv(self.fence), self.source]

    def parse(self, reply: Reply) -> None:
        return None


class CancelExecution(ExecutionFcall[str]):
    """``ff_cancel_execution``; answers the phase it was cancelled from.

    The key-building fields (lane, attempt index, waitpoint, holder) come from a pre-read of
    exec_core; ``Engine.cancel`` does that read.
    """

    function = "ff_cancel_execution"
    reason: str
    source: str = ""
    lease_id: str = ""
    lease_epoch: int | None = None
    lane_id: str
    attempt_index: int | None = None
    waitpoint_id: str | None = None
    worker_instance_id: str = ""

    def keys(self) -> list[str]:
        x, idx, lane = self.exec_keys, self.index, self.lane_id
        attempt_index = self.attempt_index if self.attempt_index is not None else 0
        waitpoint = self.waitpoint_id or "00000000-0000-0000-0000-000000000000"
        return [
            x.core,
            x.attempt(attempt_index),
            x.stream_meta(attempt_index),
            x.lease_current,
            x.lease_history,
            idx.lease_expiry,
            idx.worker_leases(self.worker_instance_id),
            x.suspension_current,
            x.waitpoint(waitpoint),
            x.waitpoint_condition(waitpoint),
            idx.suspension_timeout,
            idx.terminal(lane),
            idx.attempt_timeout,
            idx.execution_deadline,
            idx.eligible(lane),
            idx.delayed(lane),
            *(idx.blocked(lane, reason) for reason in ("dependencies", "budget", "quota", "route", "operator")),
        ]

    def argv(self) -> list[str | bytes]:
        return [self.execution_id, self.reason, self.source, self.lease_id, optional_number(self.lease_epoch)]

    def parse(self, reply: Reply) -> str:
        return reply.fields[1]


class PromoteDelayed(ExecutionFcall[str]):
    """``ff_promote_delayed``; answers promoted / not_yet_due / *_cleaned."""

    function = "ff_promote_delayed"
    lane_id: str
    now_ms: int

    def keys(self) -> list[str]:
        return [self.exec_keys.core, self.index.delayed(self.lane_id), self.index.eligible(self.lane_id)]

    def argv(self) -> list[str | bytes]:
        return [self.execution_id, str(self.now_ms)]

    def parse(self, reply: Reply) -> str:
        return reply.fields[0]


class MarkLeaseExpiredIfDue(ExecutionFcall[Settled]):
    function = "ff_mark_lease_expired_if_due"

    def keys(self) -> list[str]:
        x = self.exec_keys
        return [x.core, x.lease_current, self.index.lease_expiry, x.lease_history]

    def argv(self) -> list[str | bytes]:
        return [self.execution_id]

    def parse(self, reply: Reply) -> Settled:
        return Settled(status=reply.status, reason=reply.fields[0])


class RevokeLease(ExecutionFcall[Settled]):
    """``ff_revoke_lease``. ``worker_instance_id`` is the current holder (pre-read)."""

    function = "ff_revoke_lease"
    expected_lease_id: str = ""
    reason: str = "operator"
    worker_instance_id: str

    def keys(self) -> list[str]:
        x, idx = self.exec_keys, self.index
        return [
            x.core,
            x.lease_current,
            x.lease_history,
            idx.lease_expiry,
            idx.worker_leases(self.worker_instance_id),
        ]

    def argv(self) -> list[str | bytes]:
        return [self.execution_id, self.expected_lease_id, self.reason]

    def parse(self, reply: Reply) -> Settled:
        return Settled(status=reply.status, reason=reply.fields[0])


ExpireReason = Literal["attempt_timeout", "execution_deadline"]


class ExpireExecution(ExecutionFcall[Settled]):
    """``ff_expire_execution`` (timeout scanners). ``reason`` of the reply is the previous phase,
    or ``already_terminal`` / ``not_found_cleaned``."""

    function = "ff_expire_execution"
    expire_reason: ExpireReason = "attempt_timeout"
    lane_id: str
    attempt_index: int | None = None

    def keys(self) -> list[str]:
        x, idx, lane = self.exec_keys, self.index, self.lane_id
        attempt_index = self.attempt_index if self.attempt_index is not None else 0
        return [
            x.core,
            x.attempt(attempt_index),
            x.stream_meta(attempt_index),
            x.lease_current,
            x.lease_history,
            idx.lease_expiry,
            idx.worker_leases(""),
            idx.active(lane),
            idx.terminal(lane),
            idx.attempt_timeout,
            idx.execution_deadline,
            idx.suspended(lane),
            idx.suspension_timeout,
            x.suspension_current,
        ]

    def argv(self) -> list[str | bytes]:
        return [self.execution_id, self.expire_reason]

    def parse(self, reply: Reply) -> Settled:
        reason = reply.fields[1] if reply.fields[0] == "expired" else reply.fields[0]
        return Settled(status=reply.status, reason=reason)


class ChangePriority(ExecutionFcall[tuple[float, float]]):
    """``ff_change_priority``; answers (old, new) after clamping to 0..9000."""

    function = "ff_change_priority"
    lane_id: str
    new_priority: float

    def keys(self) -> list[str]:
        return [self.exec_keys.core, self.index.eligible(self.lane_id)]

    def argv(self) -> list[str | bytes]:
        return [self.execution_id, number(self.new_priority)]

    def parse(self, reply: Reply) -> tuple[float, float]:
        return float(reply.fields[0]), float(reply.fields[1])


class SetExecutionTags(ExecutionFcall[int]):
    """``ff_set_execution_tags``. Keys must match ``^[a-z][a-z0-9_]*\\.`` (e.g. ``celery.task``)."""

    function = "ff_set_execution_tags"
    tags: dict[str, str]

    def keys(self) -> list[str]:
        return [self.exec_keys.core, self.exec_keys.tags]

    def argv(self) -> list[str | bytes]:
        return [item for key in sorted(self.tags) for item in (key, self.tags[key])]

    def parse(self, reply: Reply) -> int:
        return int(float(reply.fields[0]))


class UpdateProgress(ExecutionFcall[None]):
    function = "ff_update_progress"
    lease_id: str
    lease_epoch: int
    progress_pct: float | None = None
    progress_message: str = ""

    def keys(self) -> list[str]:
        return [self.exec_keys.core]

    def argv(self) -> list[str | bytes]:
        return [
            self.execution_id,
            self.lease_id,
            str(self.lease_epoch),
            optional_number(self.progress_pct),
            self.progress_message,
        ]

    def parse(self, reply: Reply) -> None:
        return None


class ReplayExecution(ExecutionFcall[int]):
    """``ff_replay_execution``; answers the unsatisfied-edge count (0 on the normal path).
    ``edge_ids`` are the inbound edges, used only for a skipped flow member."""

    function = "ff_replay_execution"
    lane_id: str
    edge_ids: tuple[str, ...] = ()

    def keys(self) -> list[str]:
        x, idx = self.exec_keys, self.index
        keys = [x.core, idx.terminal(self.lane_id), idx.eligible(self.lane_id), x.lease_history]
        if self.edge_ids:
            keys += [
                idx.blocked(self.lane_id, "dependencies"),
                x.deps_meta,
                x.deps_unresolved,
                *(x.dep(edge) for edge in self.edge_ids),
            ]
        return keys

    def argv(self) -> list[str | bytes]:
        return [self.execution_id, "0", *self.edge_ids]

    def parse(self, reply: Reply) -> int:
        return int(reply.fields[0])


# -- worker registry (untagged keys; standalone deployments) ---------------------------------


class RegisterWorker(Fcall[str]):
    """``ff_register_worker``; answers registered / refreshed."""

    function = "ff_register_worker"
    namespace: str
    worker_instance_id: str
    worker_id: str
    lanes: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    ttl_ms: int
    now_ms: int

    def keys(self) -> list[str]:
        return [
            worker_alive_key(self.namespace, self.worker_instance_id),
            worker_caps_key(self.namespace, self.worker_instance_id),
            worker_index_key(self.namespace),
        ]

    def argv(self) -> list[str | bytes]:
        return [
            self.worker_instance_id,
            self.worker_id,
            ",".join(sorted(self.lanes)),
            ",".join(sorted(self.capabilities)),
            str(self.ttl_ms),
            str(self.now_ms),
        ]

    def parse(self, reply: Reply) -> str:
        return reply.fields[0]


class HeartbeatWorker(Fcall[str]):
    """``ff_heartbeat_worker``; answers refreshed / not_registered."""

    function = "ff_heartbeat_worker"
    namespace: str
    worker_instance_id: str
    now_ms: int

    def keys(self) -> list[str]:
        return [
            worker_alive_key(self.namespace, self.worker_instance_id),
            worker_caps_key(self.namespace, self.worker_instance_id),
        ]

    def argv(self) -> list[str | bytes]:
        return [str(self.now_ms)]

    def parse(self, reply: Reply) -> str:
        return reply.fields[0]
