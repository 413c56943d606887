"""Typed calls of ``lua/execution.lua``: create, claim, complete, fail (retry policy),
cancel, delay, wait for children, reclaim, expire, tags.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, Field

from ff_celery.engine.core.ids import ExecutionId
from ff_celery.engine.functions.base import (
    DEFAULT_DEDUP_TTL_MS,
    ExecutionFcall,
    Fence,
    Reply,
    ResultT,
    Settled,
    fence_argv,
    number,
    optional_number,
)
from ff_celery.engine.functions.lease import ClaimRequest, Lease, lease_from_reply

__all__ = [
    "CancelExecution",
    "ClaimExecution",
    "CompleteExecution",
    "CreateExecution",
    "Created",
    "DelayExecution",
    "ExpireExecution",
    "ExpireReason",
    "FailExecution",
    "FailOutcome",
    "HolderRequest",
    "MoveToWaitingChildren",
    "ReclaimExecution",
    "SetExecutionTags",
]


class Created(BaseModel):
    execution_id: ExecutionId
    public_state: str | None  # "waiting" / "delayed"; None for a duplicate
    duplicate: bool = False


class FailOutcome(BaseModel):
    retry_scheduled: bool
    delay_until: float | None = None  # engine-time ms of the retry; may be fractional


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
        return lease_from_reply(reply)


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
        return lease_from_reply(reply)


class HolderRequest(ExecutionFcall[ResultT]):
    """A lease holder's call: the fence plus what is needed to build its keys.

    ``fence=None`` sends the empty triple, allowed only with ``source="operator_override"``.
    """

    fence: Fence | None
    lane_id: str
    worker_instance_id: str
    attempt_index: int
    source: str = ""


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
