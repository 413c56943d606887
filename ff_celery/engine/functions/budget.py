"""Typed calls of budgets (``lua/budget.lua``): create, report usage, record attributed spend,
release an execution's spend, reset; and the admission block / unblock of an execution.

Budget calls run on the budget's ``{b:M}`` partition: pass ``partition`` from
``PartitionConfig.budget_partition(budget_id)``. Dimensions are sent sorted by name, as
FlowFabric's Rust client does; the first breached dimension in that order is reported.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from ff_celery.engine.core.decoding import lua_integer
from ff_celery.engine.core.errors import ValidationError
from ff_celery.engine.core.ids import ExecutionId
from ff_celery.engine.core.keys import BudgetKeys
from ff_celery.engine.functions.base import ExecutionFcall, Fcall, Reply, ResultT, Settled

__all__ = [
    "BLOCKED_INDEX",
    "MAX_BUDGET_DIMENSIONS",
    "AdmissionBlockReason",
    "BlockExecutionForAdmission",
    "BlockedIndex",
    "BudgetFcall",
    "CreateBudget",
    "RecordSpend",
    "ReleaseBudget",
    "ReportUsageAndCheck",
    "ResetBudget",
    "UnblockExecution",
    "UsageReport",
    "UsageStatus",
]

#: FlowFabric's Rust client refuses budgets with more dimensions.
MAX_BUDGET_DIMENSIONS = 64

AdmissionBlockReason = Literal[
    "waiting_for_budget",
    "waiting_for_quota",
    "waiting_for_capable_worker",
    "paused_by_operator",
    "paused_by_policy",
]
#: Suffix of a lane's ``blocked:<suffix>`` index.
BlockedIndex = Literal["budget", "quota", "route", "operator"]
#: Index each block reason parks the execution in. FlowFabric has no lane-state index, so a
#: policy pause goes to the operator one (``ff_unblock_execution`` never releases it anyway).
BLOCKED_INDEX: dict[str, BlockedIndex] = {
    "waiting_for_budget": "budget",
    "waiting_for_quota": "quota",
    "waiting_for_capable_worker": "route",
    "paused_by_operator": "operator",
    "paused_by_policy": "operator",
}

UsageStatus = Literal["OK", "ALREADY_APPLIED", "SOFT_BREACH", "HARD_BREACH"]

# -- results --------------------------------------------------------------------------------


class UsageReport(BaseModel):
    """Outcome of a usage report or spend. ``HARD_BREACH`` applied nothing; ``SOFT_BREACH``
    applied everything. For a breach, ``dimension`` is the first breached one, ``current``
    its usage (before the refused increment for a hard breach) and ``limit`` the limit."""

    status: UsageStatus
    dimension: str | None = None
    current: int | None = None
    limit: int | None = None

    @property
    def applied(self) -> bool:
        """True when this call incremented usage (not a replay, not refused)."""
        return self.status in ("OK", "SOFT_BREACH")


def _usage_report(reply: Reply) -> UsageReport:
    if reply.status in ("SOFT_BREACH", "HARD_BREACH"):
        dimension, current, limit = reply.fields[:3]
        return UsageReport(
            status=reply.status, dimension=dimension, current=lua_integer(current), limit=lua_integer(limit)
        )
    return UsageReport(status=reply.status)  # type: ignore[arg-type]


# -- budget calls ---------------------------------------------------------------------------


class BudgetFcall(Fcall[ResultT]):
    """An FCALL on one budget's ``{b:M}`` partition."""

    budget_id: str
    partition: int

    @property
    def budget_keys(self) -> BudgetKeys:
        return BudgetKeys(self.budget_id, self.partition)


class CreateBudget(BudgetFcall[Settled]):
    """``ff_create_budget``; ``Settled.reason`` is the budget id, ``ALREADY_SATISFIED`` when it
    existed. A limit of 0 (or a dimension missing from one of the maps) means no limit.
    ``scope_type``/``scope_id`` and the three policy strings are stored, never interpreted."""

    function = "ff_create_budget"
    scope_type: str
    scope_id: str
    enforcement_mode: str = "strict"
    on_hard_limit: str = "fail"
    on_soft_limit: str = "warn"
    reset_interval_ms: int = 0
    now_ms: int
    hard_limits: dict[str, int] = Field(default_factory=dict)
    soft_limits: dict[str, int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _bounded(self) -> CreateBudget:
        if len(self.dimensions) > MAX_BUDGET_DIMENSIONS:
            raise ValidationError(
                "invalid_input", [f"at most {MAX_BUDGET_DIMENSIONS} budget dimensions, got {len(self.dimensions)}"]
            )
        return self

    @property
    def dimensions(self) -> list[str]:
        return sorted(set(self.hard_limits) | set(self.soft_limits))

    def keys(self) -> list[str]:
        b = self.budget_keys
        return [b.definition, b.limits, b.usage, b.resets, b.policies]

    def argv(self) -> list[str | bytes]:
        dims = self.dimensions
        return [
            self.budget_id,
            self.scope_type,
            self.scope_id,
            self.enforcement_mode,
            self.on_hard_limit,
            self.on_soft_limit,
            str(self.reset_interval_ms),
            str(self.now_ms),
            str(len(dims)),
            *dims,
            *(str(self.hard_limits.get(dim, 0)) for dim in dims),
            *(str(self.soft_limits.get(dim, 0)) for dim in dims),
        ]

    def parse(self, reply: Reply) -> Settled:
        return Settled(status=reply.status, reason=reply.fields[0])


class ReportUsageAndCheck(BudgetFcall[UsageReport]):
    """``ff_report_usage_and_check``: add ``usage`` (dimension → delta) unless a hard limit
    would be exceeded (``current + delta > hard``). ``dedup_id`` makes a retry a no-op for 24 h."""

    function = "ff_report_usage_and_check"
    usage: dict[str, int]
    now_ms: int
    dedup_id: str | None = None

    def keys(self) -> list[str]:
        b = self.budget_keys
        return [b.usage, b.limits, b.definition]

    def argv(self) -> list[str | bytes]:
        dims = sorted(self.usage)
        dedup = self.budget_keys.usage_dedup(self.dedup_id) if self.dedup_id else ""
        return [str(len(dims)), *dims, *(str(self.usage[dim]) for dim in dims), str(self.now_ms), dedup]

    def parse(self, reply: Reply) -> UsageReport:
        return _usage_report(reply)


class RecordSpend(BudgetFcall[UsageReport]):
    """``ff_record_spend``: like a usage report, and with ``execution_id`` also recorded in that
    execution's ledger so ``ReleaseBudget`` can give it back."""

    function = "ff_record_spend"
    deltas: dict[str, int]
    now_ms: int
    idempotency_key: str | None = None
    execution_id: ExecutionId | None = None

    def keys(self) -> list[str]:
        b = self.budget_keys
        return [b.usage, b.limits, b.definition, b.by_execution(self.execution_id or ""), b.by_execution_index]

    def argv(self) -> list[str | bytes]:
        dims = sorted(self.deltas)
        dedup = self.budget_keys.usage_dedup(self.idempotency_key) if self.idempotency_key else ""
        pairs = [item for dim in dims for item in (dim, str(self.deltas[dim]))]
        return [str(len(dims)), *pairs, str(self.now_ms), dedup, self.execution_id or ""]

    def parse(self, reply: Reply) -> UsageReport:
        return _usage_report(reply)


class ReleaseBudget(BudgetFcall[str]):
    """``ff_release_budget``: subtract an execution's recorded spend from usage (never below
    zero) and drop its ledger; answers ``released`` or ``noop`` (no ledger)."""

    function = "ff_release_budget"
    execution_id: ExecutionId

    def keys(self) -> list[str]:
        b = self.budget_keys
        return [b.usage, b.by_execution(self.execution_id), b.by_execution_index]

    def argv(self) -> list[str | bytes]:
        return [self.budget_id, self.execution_id]

    def parse(self, reply: Reply) -> str:
        return reply.fields[0]


class ResetBudget(BudgetFcall[int | None]):
    """``ff_reset_budget``: zero every usage field; answers the next reset time (None when the
    budget has no reset interval)."""

    function = "ff_reset_budget"
    now_ms: int

    def keys(self) -> list[str]:
        b = self.budget_keys
        return [b.definition, b.usage, b.resets]

    def argv(self) -> list[str | bytes]:
        return [self.budget_id, str(self.now_ms)]

    def parse(self, reply: Reply) -> int | None:
        next_reset_at = lua_integer(reply.fields[0])
        return next_reset_at or None


# -- admission block / unblock (on the execution's partition) -----------------------------------


class BlockExecutionForAdmission(ExecutionFcall[None]):
    """``ff_block_execution_for_admission``: move a runnable execution from the lane's eligible
    set to the ``blocked:*`` index of ``blocking_reason`` (public state ``rate_limited``)."""

    function = "ff_block_execution_for_admission"
    lane_id: str
    blocking_reason: AdmissionBlockReason
    blocking_detail: str = ""
    now_ms: int

    def keys(self) -> list[str]:
        idx = self.index
        return [
            self.exec_keys.core,
            idx.eligible(self.lane_id),
            idx.blocked(self.lane_id, BLOCKED_INDEX[self.blocking_reason]),
        ]

    def argv(self) -> list[str | bytes]:
        return [self.execution_id, self.blocking_reason, self.blocking_detail, str(self.now_ms)]

    def parse(self, reply: Reply) -> None:
        return None


class UnblockExecution(ExecutionFcall[None]):
    """``ff_unblock_execution``: move a budget/quota/route/operator-blocked execution back to
    the eligible set (at its priority and creation time). A non-empty
    ``expected_blocking_reason`` must match the stored one."""

    function = "ff_unblock_execution"
    lane_id: str
    blocked_index: BlockedIndex
    expected_blocking_reason: str = ""
    now_ms: int

    def keys(self) -> list[str]:
        idx = self.index
        return [self.exec_keys.core, idx.blocked(self.lane_id, self.blocked_index), idx.eligible(self.lane_id)]

    def argv(self) -> list[str | bytes]:
        return [self.execution_id, str(self.now_ms), self.expected_blocking_reason]

    def parse(self, reply: Reply) -> None:
        return None
