"""Typed calls of quota policies (``lua/quota.lua``): create a policy, check and record an
admission, release an admission.

Quota calls run on the policy's ``{q:K}`` partition: pass ``partition`` from
``PartitionConfig.quota_partition(quota_policy_id)``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from ff_celery.engine.core.decoding import text
from ff_celery.engine.core.errors import TransportError
from ff_celery.engine.core.ids import ExecutionId
from ff_celery.engine.core.keys import QuotaKeys
from ff_celery.engine.functions.base import Fcall, Reply, ResultT, Settled, decode_reply

__all__ = [
    "Admission",
    "AdmissionStatus",
    "CheckAdmissionAndRecord",
    "CreateQuotaPolicy",
    "QuotaFcall",
    "ReleaseAdmission",
]

AdmissionStatus = Literal["ADMITTED", "ALREADY_ADMITTED", "RATE_EXCEEDED", "CONCURRENCY_EXCEEDED"]
_ADMISSION_STATUSES = ("ADMITTED", "ALREADY_ADMITTED", "RATE_EXCEEDED", "CONCURRENCY_EXCEEDED")


class Admission(BaseModel):
    """Outcome of an admission check; ``retry_after_ms`` (jitter included) only when rate-limited."""

    status: AdmissionStatus
    retry_after_ms: int | None = None

    @property
    def admitted(self) -> bool:
        """True when the execution holds an admission (this call's or an earlier one's)."""
        return self.status in ("ADMITTED", "ALREADY_ADMITTED")


class QuotaFcall(Fcall[ResultT]):
    """An FCALL on one quota policy's ``{q:K}`` partition."""

    quota_policy_id: str
    partition: int

    @property
    def quota_keys(self) -> QuotaKeys:
        return QuotaKeys(self.quota_policy_id, self.partition)


class CreateQuotaPolicy(QuotaFcall[Settled]):
    """``ff_create_quota_policy``; ``Settled.reason`` is the policy id, ``ALREADY_SATISFIED``
    when it existed. 0 disables the rate limit or the concurrency cap."""

    function = "ff_create_quota_policy"
    window_seconds: int
    max_requests_per_window: int
    max_concurrent: int
    now_ms: int

    def keys(self) -> list[str]:
        q = self.quota_keys
        # FlowFabric passes the requests_per_window window here; the function never touches it
        return [q.definition, q.window("requests_per_window"), q.concurrency, q.admitted_set, q.policies]

    def argv(self) -> list[str | bytes]:
        return [
            self.quota_policy_id,
            str(self.window_seconds),
            str(self.max_requests_per_window),
            str(self.max_concurrent),
            str(self.now_ms),
        ]

    def parse(self, reply: Reply) -> Settled:
        return Settled(status=reply.status, reason=reply.fields[0])


class CheckAdmissionAndRecord(QuotaFcall[Admission]):
    """``ff_check_admission_and_record``: admit ``execution_id`` unless ``rate_limit`` admissions
    already fall in the sliding window or ``concurrency_cap`` slots are taken (0 = no limit).
    An admission holds a guard for the window, so re-checking within it is ``ALREADY_ADMITTED``.
    The reply is a bare array (no 1/0 status); invalid input still comes back as an error."""

    function = "ff_check_admission_and_record"
    execution_id: ExecutionId
    now_ms: int
    window_seconds: int
    rate_limit: int
    concurrency_cap: int
    jitter_ms: int = 0
    dimension: str = "default"

    def keys(self) -> list[str]:
        q = self.quota_keys
        return [
            q.window(self.dimension),
            q.concurrency,
            q.definition,
            q.admitted(self.execution_id),
            q.admitted_set,
        ]

    def argv(self) -> list[str | bytes]:
        return [
            str(self.now_ms),
            str(self.window_seconds),
            str(self.rate_limit),
            str(self.concurrency_cap),
            self.execution_id,
            str(self.jitter_ms),
        ]

    def interpret(self, raw: Any) -> Admission:
        if isinstance(raw, list) and raw and isinstance(raw[0], int):
            decode_reply(raw, self.function, self.subject)  # raises the typed error of {0, code, ...}
        elif isinstance(raw, list) and raw and text(raw[0]) in _ADMISSION_STATUSES:
            status = text(raw[0])
            retry_after = int(float(text(raw[1]))) if status == "RATE_EXCEEDED" and len(raw) > 1 else None
            return Admission(status=status, retry_after_ms=retry_after)  # type: ignore[arg-type]
        raise TransportError(f"unexpected reply {raw!r}", retryable=False, function=self.function)


class ReleaseAdmission(QuotaFcall[None]):
    """``ff_release_admission``: drop ``execution_id``'s guard and give back its concurrency
    slot (its window entry stays)."""

    function = "ff_release_admission"
    execution_id: ExecutionId

    def keys(self) -> list[str]:
        q = self.quota_keys
        return [q.admitted(self.execution_id), q.admitted_set, q.concurrency]

    def argv(self) -> list[str | bytes]:
        return [self.execution_id]

    def parse(self, reply: Reply) -> None:
        return None
