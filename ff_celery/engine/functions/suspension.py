"""Typed calls of ``lua/suspension.lua``: suspending an attempt on waitpoints, pending
waitpoints, resume, suspension timeouts, closing waitpoints.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, Field

from ff_celery.engine.functions.base import ExecutionFcall, Fence, Reply, optional_number

#: How long a suspend's idempotency record lives without a timeout (7 days, as Rust sends).
SUSPEND_DEDUP_MAX_MS = 604_800_000

TimeoutBehavior = Literal["fail", "cancel", "expire", "auto_resume", "auto_resume_with_timeout_signal", "escalate"]
SuspendReason = Literal[
    "waiting_for_signal",
    "waiting_for_approval",
    "waiting_for_callback",
    "waiting_for_tool_result",
    "waiting_for_operator_review",
    "paused_by_policy",
    "paused_by_budget",
    "step_boundary",
    "manual_pause",
]


class ResumeCondition(BaseModel):
    """A matcher-list resume condition: ``signal_names`` (none = any signal), all of them or
    any ``minimum`` of them."""

    signal_names: tuple[str, ...] = ()
    match: Literal["any", "all"] = "any"
    minimum: int = 1
    timeout_behavior: TimeoutBehavior = "fail"

    def to_json(self) -> str:
        """The ``resume_condition_json`` FlowFabric's Rust client sends for this condition."""
        return json.dumps(
            {
                "condition_type": "signal_set",
                "required_signal_names": list(self.signal_names),
                "signal_match_mode": self.match,
                "minimum_signal_count": self.minimum,
                "timeout_behavior": self.timeout_behavior,
                "allow_operator_override": True,
            },
            separators=(",", ":"),
        )


def default_resume_policy_json(resume_delay_ms: int | None = None) -> str:
    """The ``resume_policy_json`` FlowFabric's Rust client sends (stored, not evaluated)."""
    policy: dict[str, object] = {
        "resume_target": "runnable",
        "close_waitpoint_on_resume": True,
        "consume_matched_signals": True,
        "retain_signal_buffer_until_closed": False,
    }
    if resume_delay_ms is not None:
        policy["resume_delay_ms"] = resume_delay_ms
    return json.dumps(policy, separators=(",", ":"))


# -- results ----------------------------------------------------------------------------------


class WaitpointTicket(BaseModel):
    """A waitpoint and the HMAC token a signal sender must present for it."""

    waitpoint_id: str
    waitpoint_key: str
    token: str


class Suspension(BaseModel):
    """Outcome of ``ff_suspend_execution``. ``already_satisfied``: buffered signals met the
    condition at once; the attempt keeps its lease and nothing was suspended."""

    suspension_id: str
    waitpoint: WaitpointTicket
    extra_waitpoints: list[WaitpointTicket] = Field(default_factory=list)
    already_satisfied: bool = False


def _ticket(fields: list[str]) -> WaitpointTicket:
    waitpoint_id, waitpoint_key, token = fields
    return WaitpointTicket(waitpoint_id=waitpoint_id, waitpoint_key=waitpoint_key, token=token)


# -- calls ------------------------------------------------------------------------------------


class SuspendExecution(ExecutionFcall[Suspension]):
    """``ff_suspend_execution``: the lease holder parks its attempt on a waitpoint (fresh, or
    the pending one with ``use_pending_waitpoint``) plus any extra waitpoints, releasing the
    lease. ``lane_id`` and ``worker_instance_id`` pick the index keys."""

    function = "ff_suspend_execution"
    fence: Fence
    attempt_index: int
    lane_id: str
    worker_instance_id: str
    suspension_id: str
    waitpoint_id: str
    waitpoint_key: str = ""
    reason_code: SuspendReason = "waiting_for_signal"
    requested_by: str = "worker"
    timeout_at: int | None = None
    resume_condition_json: str
    resume_policy_json: str = Field(default_factory=default_resume_policy_json)
    continuation_metadata_pointer: str = ""
    use_pending_waitpoint: bool = False
    timeout_behavior: TimeoutBehavior = "fail"
    lease_history_maxlen: int = 1000
    idempotency_key: str = ""
    now_ms: int = 0  # the caller's clock, for the dedup record's TTL
    extra_waitpoints: tuple[tuple[str, str], ...] = ()  # (waitpoint_id, waitpoint_key)

    def keys(self) -> list[str]:
        x, idx, lane = self.exec_keys, self.index, self.lane_id
        keys = [
            x.core,
            x.attempt(self.attempt_index),
            x.lease_current,
            x.lease_history,
            idx.lease_expiry,
            idx.worker_leases(self.worker_instance_id),
            x.suspension_current,
            x.waitpoint(self.waitpoint_id),
            x.waitpoint_signals(self.waitpoint_id),
            idx.suspension_timeout,
            idx.pending_waitpoint_expiry,
            idx.active(lane),
            idx.suspended(lane),
            x.waitpoints,
            x.waitpoint_condition(self.waitpoint_id),
            idx.attempt_timeout,
            idx.waitpoint_hmac,
            x.suspend_dedup(self.idempotency_key) if self.idempotency_key else idx.noop,
        ]
        for waitpoint_id, _ in self.extra_waitpoints:
            keys += [x.waitpoint(waitpoint_id), x.waitpoint_signals(waitpoint_id), x.waitpoint_condition(waitpoint_id)]
        return keys

    def dedup_ttl_ms(self) -> int:
        """As FlowFabric's Rust client computes it: the timeout plus a minute, at most 7 days."""
        if not self.idempotency_key:
            return 0
        if self.timeout_at is None:
            return SUSPEND_DEDUP_MAX_MS
        return min(max(self.timeout_at - self.now_ms, 0) + 60_000, SUSPEND_DEDUP_MAX_MS)

    def argv(self) -> list[str | bytes]:
        argv: list[str | bytes] = [
            self.execution_id,
            str(self.attempt_index),
            self.fence.attempt_id,
            self.fence.lease_id,
            str(self.fence.lease_epoch),
            self.suspension_id,
            self.waitpoint_id,
            self.waitpoint_key,
            self.reason_code,
            self.requested_by,
            optional_number(self.timeout_at),
            self.resume_condition_json,
            self.resume_policy_json,
            self.continuation_metadata_pointer,
            "1" if self.use_pending_waitpoint else "",
            self.timeout_behavior,
            str(self.lease_history_maxlen),
            self.idempotency_key,
            str(self.dedup_ttl_ms()),
            str(len(self.extra_waitpoints)),
        ]
        for waitpoint_id, waitpoint_key in self.extra_waitpoints:
            argv += [waitpoint_id, waitpoint_key]
        return argv

    def parse(self, reply: Reply) -> Suspension:
        suspension_id, *primary = reply.fields[:4]
        extras = reply.fields[5:]
        return Suspension(
            suspension_id=suspension_id,
            waitpoint=_ticket(primary),
            extra_waitpoints=[_ticket(extras[i : i + 3]) for i in range(0, len(extras), 3)],
            already_satisfied=reply.status == "ALREADY_SATISFIED",
        )


class CreatePendingWaitpoint(ExecutionFcall[WaitpointTicket]):
    """``ff_create_pending_waitpoint``: while holding the lease, mint a waitpoint (and token)
    that signals can target before the attempt suspends; it lapses at ``expires_at``."""

    function = "ff_create_pending_waitpoint"
    attempt_index: int
    waitpoint_id: str
    waitpoint_key: str
    expires_at: int

    def keys(self) -> list[str]:
        x, idx = self.exec_keys, self.index
        return [x.core, x.waitpoint(self.waitpoint_id), idx.pending_waitpoint_expiry, idx.waitpoint_hmac]

    def argv(self) -> list[str | bytes]:
        return [self.execution_id, str(self.attempt_index), self.waitpoint_id, self.waitpoint_key, str(self.expires_at)]

    def parse(self, reply: Reply) -> WaitpointTicket:
        return _ticket(reply.fields[:3])


class ResumeExecution(ExecutionFcall[str]):
    """``ff_resume_execution`` (operator resume); answers ``waiting`` or ``delayed``."""

    function = "ff_resume_execution"
    lane_id: str
    waitpoint_id: str
    trigger_type: Literal["signal", "operator", "auto_resume"] = "operator"
    resume_delay_ms: int = 0

    def keys(self) -> list[str]:
        x, idx, lane = self.exec_keys, self.index, self.lane_id
        return [
            x.core,
            x.suspension_current,
            x.waitpoint(self.waitpoint_id),
            x.waitpoint_signals(self.waitpoint_id),
            idx.suspension_timeout,
            idx.eligible(lane),
            idx.delayed(lane),
            idx.suspended(lane),
        ]

    def argv(self) -> list[str | bytes]:
        return [self.execution_id, self.trigger_type, str(self.resume_delay_ms)]

    def parse(self, reply: Reply) -> str:
        return reply.fields[0]


class ExpireSuspension(ExecutionFcall[tuple[str, str | None]]):
    """``ff_expire_suspension`` (suspension-timeout scanner). Answers (outcome, public state):
    ``not_yet_due`` / ``*_cleaned`` with None, or the timeout behaviour applied."""

    function = "ff_expire_suspension"
    lane_id: str
    waitpoint_id: str
    attempt_index: int = 0

    def keys(self) -> list[str]:
        x, idx, lane = self.exec_keys, self.index, self.lane_id
        return [
            x.core,
            x.suspension_current,
            x.waitpoint(self.waitpoint_id),
            x.waitpoint_condition(self.waitpoint_id),
            x.attempt(self.attempt_index),
            x.stream_meta(self.attempt_index),
            idx.suspension_timeout,
            idx.suspended(lane),
            idx.terminal(lane),
            idx.eligible(lane),
            idx.delayed(lane),
            x.lease_history,
        ]

    def argv(self) -> list[str | bytes]:
        return [self.execution_id]

    def parse(self, reply: Reply) -> tuple[str, str | None]:
        return reply.fields[0], reply.fields[1] if len(reply.fields) > 1 else None


class CloseWaitpoint(ExecutionFcall[bool]):
    """``ff_close_waitpoint``; True when it closed it, False when it already was closed."""

    function = "ff_close_waitpoint"
    waitpoint_id: str
    reason: str = "proactive_close"

    def keys(self) -> list[str]:
        x = self.exec_keys
        return [x.core, x.waitpoint(self.waitpoint_id), self.index.pending_waitpoint_expiry]

    def argv(self) -> list[str | bytes]:
        return [self.waitpoint_id, self.reason]

    def parse(self, reply: Reply) -> bool:
        return not reply.fields


__all__ = [
    "CloseWaitpoint",
    "CreatePendingWaitpoint",
    "ExpireSuspension",
    "ResumeCondition",
    "ResumeExecution",
    "SuspendExecution",
    "SuspendReason",
    "Suspension",
    "TimeoutBehavior",
    "WaitpointTicket",
    "default_resume_policy_json",
]
