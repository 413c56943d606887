"""Typed calls of ``lua/signal.lua``: delivering and buffering signals, and claiming a
resumed attempt.
"""

from __future__ import annotations

from pydantic import BaseModel

from ff_celery.engine.functions.base import (
    ExecutionFcall,
    Reply,
    optional_number,
)
from ff_celery.engine.functions.lease import ClaimRequest, Lease, lease_from_reply

__all__ = ["BufferSignal", "ClaimResumedExecution", "DeliverSignal", "SignalOutcome", "SignalRequest"]


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
        return lease_from_reply(reply)


class SignalOutcome(BaseModel):
    """``effect`` is FlowFabric's (``resume_condition_satisfied``, ``appended_to_waitpoint``,
    ``no_op``, ``buffered_for_pending_waitpoint``, ...); a duplicate carries the first id."""

    signal_id: str
    effect: str | None
    duplicate: bool = False

    @property
    def resumed(self) -> bool:
        return self.effect == "resume_condition_satisfied"


class SignalRequest(ExecutionFcall[SignalOutcome]):
    """The 18 arguments shared by delivering and buffering a signal."""

    signal_id: str
    waitpoint_id: str
    signal_name: str
    signal_category: str = "signal"
    source_type: str = "external"
    source_identity: str = ""
    payload: bytes = b""
    payload_encoding: str = "json"
    idempotency_key: str = ""
    correlation_id: str = ""
    target_scope: str = "waitpoint"
    created_at: int | None = None
    dedup_ttl_ms: int = 86_400_000
    resume_delay_ms: int = 0
    signal_maxlen: int = 1000
    max_signals_per_execution: int = 10_000
    waitpoint_token: str

    def signal_keys(self) -> list[str]:
        """KEYS 1-8 of deliver (buffer's 1-8 are the same)."""
        x = self.exec_keys
        return [
            x.core,
            x.waitpoint_condition(self.waitpoint_id),
            x.waitpoint_signals(self.waitpoint_id),
            x.signals,
            x.signal(self.signal_id),
            x.signal_payload(self.signal_id),
            x.signal_dedup(self.waitpoint_id, self.idempotency_key) if self.idempotency_key else self.index.noop,
            x.waitpoint(self.waitpoint_id),
        ]

    def argv(self) -> list[str | bytes]:
        return [
            self.signal_id,
            self.execution_id,
            self.waitpoint_id,
            self.signal_name,
            self.signal_category,
            self.source_type,
            self.source_identity,
            self.payload,
            self.payload_encoding,
            self.idempotency_key,
            self.correlation_id,
            self.target_scope,
            optional_number(self.created_at),
            str(self.dedup_ttl_ms),
            str(self.resume_delay_ms),
            str(self.signal_maxlen),
            str(self.max_signals_per_execution),
            self.waitpoint_token,
        ]

    def parse(self, reply: Reply) -> SignalOutcome:
        if reply.status == "DUPLICATE":
            return SignalOutcome(signal_id=reply.fields[0], effect=None, duplicate=True)
        return SignalOutcome(signal_id=reply.fields[0], effect=reply.fields[1])


class DeliverSignal(SignalRequest):
    """``ff_deliver_signal``: authenticated by the waitpoint's HMAC token; may resume the
    execution. ``lane_id`` is the execution's lane (pre-read)."""

    function = "ff_deliver_signal"
    lane_id: str

    def keys(self) -> list[str]:
        x, idx, lane = self.exec_keys, self.index, self.lane_id
        return [
            *self.signal_keys(),
            x.suspension_current,
            idx.eligible(lane),
            idx.suspended(lane),
            idx.delayed(lane),
            idx.suspension_timeout,
            idx.waitpoint_hmac,
            idx.signal_delivery,
        ]


class BufferSignal(SignalRequest):
    """``ff_buffer_signal_for_pending_waitpoint``: record a signal for a pending waitpoint;
    it counts when the attempt suspends on that waitpoint."""

    function = "ff_buffer_signal_for_pending_waitpoint"

    def keys(self) -> list[str]:
        return [*self.signal_keys(), self.index.waitpoint_hmac]
