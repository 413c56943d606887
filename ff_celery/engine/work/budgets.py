"""Budgets and quotas from Python: creating and reading them, attaching them to executions,
reporting usage, resets, and admission when executions are claimed.

As in FlowFabric, an execution is under the budgets listed in its exec_core ``budget_ids``
and the quota ``quota_policy_id`` (plain fields its submitter writes). Before granting a
claim, the claimer asks :class:`Admission`: an execution whose budget has a hard limit
reached (usage >= limit), or refused a report since its last reset, is blocked
``waiting_for_budget``; one whose quota is out of rate or concurrency is blocked
``waiting_for_quota``. The unblock scanner releases them when the budget is reset or raised
and when the quota has room again. ff_celery frees a quota's concurrency slot when the
attempt ends (FlowFabric only lets it lapse with the admission window), so a concurrency cap
limits running executions, and then unblocks at once the next executions of that lane
waiting for the quota (with FlowFabric's functions, from here), without waiting for the scanner.

Budgets and quotas are identified by UUIDs; any other name maps to a stable UUID
(:func:`budget_id_for`), so ``"llm-tokens"`` names the same budget everywhere.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic import BaseModel, Field

from ff_celery.engine import functions as fn
from ff_celery.engine.core import metrics
from ff_celery.engine.core.decoding import decode_hash, optional_integer
from ff_celery.engine.core.errors import EngineError
from ff_celery.engine.core.exec_core import CoreField
from ff_celery.engine.core.ids import (  # noqa: F401 (attachment_fields: part of this module's API)
    ExecutionId,
    attachment_fields,
    budget_id_for,
    quota_id_for,
    valid_execution_ids,
)
from ff_celery.engine.core.keys import ADMISSION_LANES_KEY, BudgetKeys, ExecKeys, PartitionKeys, QuotaKeys
from ff_celery.engine.core.work_index import ScanPlan, present

if TYPE_CHECKING:
    from ff_celery.engine.core.engine import Engine

log = logging.getLogger(__name__)

#: Blocked executions looked at per lane and partition in one unblock pass.
UNBLOCK_BATCH = 100


class BudgetStatus(BaseModel):
    """A budget's definition, limits and usage (read directly, as FlowFabric's server does)."""

    budget_id: str
    scope_type: str = ""
    scope_id: str = ""
    enforcement_mode: str = ""
    reset_interval_ms: int = 0
    next_reset_at: int = 0
    usage: dict[str, int] = Field(default_factory=dict)
    hard_limits: dict[str, int] = Field(default_factory=dict)
    soft_limits: dict[str, int] = Field(default_factory=dict)
    breach_count: int = 0
    soft_breach_count: int = 0
    last_breach_at: int = 0
    last_breach_dim: str = ""

    def exhausted(self) -> tuple[str, int, int] | None:
        """Why executions under this budget are not admitted, as (dimension, usage, limit):
        a hard limit reached (usage >= limit > 0, FlowFabric's rule), or a hard breach since
        the last reset or raise (a report the limit refused)."""
        for dimension, limit in sorted(self.hard_limits.items()):
            if limit > 0 and self.usage.get(dimension, 0) >= limit:
                return dimension, self.usage.get(dimension, 0), limit
        if self.last_breach_dim:
            dimension = self.last_breach_dim
            return dimension, self.usage.get(dimension, 0), self.hard_limits.get(dimension, 0)
        return None


class QuotaPolicy(BaseModel):
    quota_policy_id: str
    window_seconds: int = 60
    max_requests_per_window: int = 0
    max_concurrent: int = 0
    jitter_ms: int = 0
    admitted_in_window: int = 0
    running: int = 0

    @property
    def enforced(self) -> bool:
        return self.max_requests_per_window > 0 or self.max_concurrent > 0


# -- budgets ----------------------------------------------------------------------------------


def create_budget(
    engine: Engine,
    name_or_id: str,
    *,
    hard: dict[str, int],
    soft: dict[str, int] | None = None,
    reset_interval_s: float = 0,
    scope_type: str = "celery",
    scope_id: str = "",
    on_hard_limit: str = "fail",
    on_soft_limit: str = "warn",
) -> str:
    """Create a budget (kept as it is if it exists); answers its id. A limit of 0 means none."""
    budget_id = budget_id_for(name_or_id)
    engine.call(
        fn.CreateBudget(
            budget_id=budget_id,
            partition=engine.partitions.budget_partition(budget_id),
            scope_type=scope_type,
            scope_id=scope_id or name_or_id,
            on_hard_limit=on_hard_limit,
            on_soft_limit=on_soft_limit,
            reset_interval_ms=int(reset_interval_s * 1000),
            now_ms=engine.now_ms(),
            hard_limits=hard,
            soft_limits=soft or {},
        )
    )
    return budget_id


def budget_statuses(engine: Engine, budget_ids: Iterable[str]) -> dict[str, BudgetStatus | None]:
    """Budgets by id, read in one round trip; None for budgets that do not exist."""
    ids = list(dict.fromkeys(budget_ids))
    batch = engine.batch()
    for budget_id in ids:
        keys = BudgetKeys(budget_id, engine.partitions.budget_partition(budget_id))
        batch.command("hgetall", keys.definition)
        batch.command("hgetall", keys.usage)
        batch.command("hgetall", keys.limits)
    replies = [decode_hash(raw) for raw in batch.execute()]
    statuses: dict[str, BudgetStatus | None] = {}
    for position, budget_id in enumerate(ids):
        definition, usage, limits = replies[3 * position : 3 * position + 3]
        if not definition:
            statuses[budget_id] = None
            continue
        statuses[budget_id] = BudgetStatus(
            budget_id=budget_id,
            scope_type=definition.get("scope_type", ""),
            scope_id=definition.get("scope_id", ""),
            enforcement_mode=definition.get("enforcement_mode", ""),
            reset_interval_ms=optional_integer(definition.get("reset_interval_ms")) or 0,
            next_reset_at=optional_integer(definition.get("next_reset_at")) or 0,
            usage={dim: optional_integer(v) or 0 for dim, v in usage.items() if dim != "breached_at"},
            hard_limits={k[5:]: optional_integer(v) or 0 for k, v in limits.items() if k.startswith("hard:")},
            soft_limits={k[5:]: optional_integer(v) or 0 for k, v in limits.items() if k.startswith("soft:")},
            breach_count=optional_integer(definition.get("breach_count")) or 0,
            soft_breach_count=optional_integer(definition.get("soft_breach_count")) or 0,
            last_breach_at=optional_integer(definition.get("last_breach_at")) or 0,
            last_breach_dim=definition.get("last_breach_dim", ""),
        )
    return statuses


def budget_status(engine: Engine, name_or_id: str) -> BudgetStatus | None:
    budget_id = budget_id_for(name_or_id)
    return budget_statuses(engine, [budget_id])[budget_id]


def set_budget_limits(
    engine: Engine, name_or_id: str, *, hard: dict[str, int] | None = None, soft: dict[str, int] | None = None
) -> None:
    """Change limits of an existing budget (FlowFabric has no function for it; like its
    server, write the limits hash) and clear its last-breach marker, as a reset does. Raising
    a hard limit lets blocked executions run."""
    budget_id = budget_id_for(name_or_id)
    keys = BudgetKeys(budget_id, engine.partitions.budget_partition(budget_id))
    mapping = {f"hard:{dim}": limit for dim, limit in (hard or {}).items()}
    mapping.update({f"soft:{dim}": limit for dim, limit in (soft or {}).items()})
    if mapping:
        batch = engine.batch()
        batch.command("hset", keys.limits, mapping=mapping)
        batch.command("hset", keys.definition, mapping={"last_breach_at": "", "last_breach_dim": ""})
        batch.execute()


def reset_budget(engine: Engine, name_or_id: str) -> int | None:
    """Zero the budget's usage now; answers its next scheduled reset (None if unscheduled)."""
    budget_id = budget_id_for(name_or_id)
    return engine.call(
        fn.ResetBudget(
            budget_id=budget_id, partition=engine.partitions.budget_partition(budget_id), now_ms=engine.now_ms()
        )
    )


def report_usage(
    engine: Engine, budget_ids: Sequence[str], usage: dict[str, int], *, dedup_id: str | None = None
) -> dict[str, fn.UsageReport]:
    """Add ``usage`` to each budget in one round trip (``dedup_id`` makes a repeat a no-op).
    A budget whose hard limit the increment would exceed refuses it (``HARD_BREACH``)."""
    now = engine.now_ms()
    requests = [
        fn.ReportUsageAndCheck(
            budget_id=budget_id,
            partition=engine.partitions.budget_partition(budget_id),
            usage=usage,
            now_ms=now,
            dedup_id=dedup_id,
        )
        for budget_id in budget_ids
    ]
    reports = {}
    for budget_id, outcome in zip(budget_ids, engine.call_many(requests)):
        if isinstance(outcome, EngineError):
            raise outcome
        if outcome.status == "HARD_BREACH":
            metrics.BUDGET_HITS.labels(outcome.dimension or "").inc()
        elif outcome.status == "SOFT_BREACH":
            metrics.BUDGET_SOFT_BREACHES.labels(outcome.dimension or "").inc()
        reports[budget_id] = outcome
    return reports


# -- quotas -----------------------------------------------------------------------------------


def create_quota(
    engine: Engine,
    name_or_id: str,
    *,
    max_requests_per_window: int = 0,
    window_seconds: int = 60,
    max_concurrent: int = 0,
) -> str:
    """Create a quota policy (kept as it is if it exists); answers its id. 0 disables a limit."""
    quota_policy_id = quota_id_for(name_or_id)
    engine.call(
        fn.CreateQuotaPolicy(
            quota_policy_id=quota_policy_id,
            partition=engine.partitions.quota_partition(quota_policy_id),
            window_seconds=window_seconds,
            max_requests_per_window=max_requests_per_window,
            max_concurrent=max_concurrent,
            now_ms=engine.now_ms(),
        )
    )
    return quota_policy_id


def quota_policies(engine: Engine, quota_policy_ids: Iterable[str]) -> dict[str, QuotaPolicy | None]:
    """Quota policies by id, with their admissions in the current window and running count."""
    ids = list(dict.fromkeys(quota_policy_ids))
    keys = {q: QuotaKeys(q, engine.partitions.quota_partition(q)) for q in ids}
    batch = engine.batch()
    for quota_policy_id in ids:
        batch.command("hgetall", keys[quota_policy_id].definition)
        batch.command("get", keys[quota_policy_id].concurrency)
    replies = batch.execute()
    policies: dict[str, QuotaPolicy | None] = {}
    for position, quota_policy_id in enumerate(ids):
        definition = decode_hash(replies[2 * position])
        running = replies[2 * position + 1]
        policies[quota_policy_id] = (
            None
            if not definition
            else QuotaPolicy(
                quota_policy_id=quota_policy_id,
                window_seconds=optional_integer(definition.get("requests_per_window_seconds")) or 60,
                max_requests_per_window=optional_integer(definition.get("max_requests_per_window")) or 0,
                max_concurrent=optional_integer(definition.get("active_concurrency_cap")) or 0,
                jitter_ms=optional_integer(definition.get("jitter_ms")) or 0,
                running=optional_integer(running) or 0,
            )
        )
    live = [policy for policy in policies.values() if policy is not None]
    if live:
        now = engine.now_ms()
        counts = engine.batch()
        for policy in live:  # admissions still inside each policy's window
            window = keys[policy.quota_policy_id].window()
            counts.command("zcount", window, f"({now - policy.window_seconds * 1000}", "+inf")
        for policy, count in zip(live, counts.execute()):
            policy.admitted_in_window = count if isinstance(count, int) else 0
    return policies


def release_admission(engine: Engine, quota_policy_id: str, execution_id: ExecutionId, lane_id: str) -> None:
    """Give back an execution's quota admission (its concurrency slot), then admit at once
    the executions of its lane that wait for the quota (:meth:`Admission.admit_waiting`)."""
    engine.call(
        fn.ReleaseAdmission(
            quota_policy_id=quota_policy_id,
            partition=engine.partitions.quota_partition(quota_policy_id),
            execution_id=execution_id,
        )
    )
    Admission(engine).admit_waiting(lane_id, {execution_id.partition, engine.partitions.lane_partition(lane_id)})


# -- admission ---------------------------------------------------------------------------------


class Admitted(NamedTuple):
    """What admission let through: the admitted candidates, the quota id of those admitted
    under a quota (to release if the claim then fails), and the executions it blocked."""

    candidates: list[tuple[ExecutionId, str]]
    quota_of: dict[str, str]
    blocked: list[fn.BlockExecutionForAdmission]


class Admission:
    """Claim-time admission for a claimer: which candidates may be granted now.

    Only lanes with attached budgets or quotas (ff_celery's ``ffc:admission:lanes``, which a
    submitter adds to in the same round trip that creates the execution) pay for the extra
    reads. The claimer refreshes that set with every probe (:meth:`note_controlled_lanes`).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lanes: set[str] | None = None

    def note_controlled_lanes(self, members: Any) -> None:
        """The raw ``SMEMBERS`` reply of the admission lanes, read with a probe."""
        self._lanes = {m.decode() for m in members} if isinstance(members, set) else set()

    def controlled_lanes(self) -> set[str]:
        if self._lanes is None:
            batch = self.engine.batch()
            batch.command("smembers", ADMISSION_LANES_KEY)
            self.note_controlled_lanes(batch.execute()[0])
        return self._lanes or set()

    def admit(self, candidates: list[tuple[ExecutionId, str]]) -> Admitted:
        """Split ``candidates`` into the admitted ones and block the rest."""
        lanes = self.controlled_lanes()
        checked = [(eid, lane) for eid, lane in candidates if lane in lanes]
        if not checked:
            return Admitted(candidates, {}, [])
        reads = self.engine.batch()
        for eid, _ in checked:
            reads.command("hmget", ExecKeys(eid).core, (CoreField.BUDGET_IDS, CoreField.QUOTA_POLICY_ID))
        attached = {eid: (_ids(b), (q or b"").decode()) for (eid, _), (b, q) in zip(checked, reads.execute())}
        budgets = budget_statuses(self.engine, {b for ids, _ in attached.values() for b in ids})
        quotas = quota_policies(self.engine, {q for _, q in attached.values() if q})

        now = self.engine.now_ms()
        blocks: list[fn.BlockExecutionForAdmission] = []
        checks: list[tuple[ExecutionId, str, fn.CheckAdmissionAndRecord]] = []
        admitted: list[tuple[ExecutionId, str]] = []
        for eid, lane in candidates:
            if eid not in attached:
                admitted.append((eid, lane))
                continue
            budget_ids, quota_policy_id = attached[eid]
            breach = next(
                ((b, budgets[b].exhausted()) for b in budget_ids if budgets.get(b) and budgets[b].exhausted()), None
            )
            if breach is not None:
                budget_id, (dimension, used, limit) = breach
                metrics.BUDGET_HITS.labels(dimension).inc()
                detail = f"budget ff:budget:{budget_id}:usage: {dimension} {used}/{limit}"
                blocks.append(_block(eid, lane, "waiting_for_budget", detail, now))
                continue
            policy = quotas.get(quota_policy_id) if quota_policy_id else None
            if policy is None or not policy.enforced:
                admitted.append((eid, lane))
                continue
            checks.append(
                (
                    eid,
                    lane,
                    fn.CheckAdmissionAndRecord(
                        quota_policy_id=quota_policy_id,
                        partition=self.engine.partitions.quota_partition(quota_policy_id),
                        execution_id=eid,
                        now_ms=now,
                        window_seconds=policy.window_seconds,
                        rate_limit=policy.max_requests_per_window,
                        concurrency_cap=policy.max_concurrent,
                        jitter_ms=policy.jitter_ms,
                    ),
                )
            )
        quota_of: dict[str, str] = {}
        for (eid, lane, check), outcome in zip(checks, self.engine.call_many([c for _, _, c in checks])):
            if isinstance(outcome, fn.Admission) and outcome.admitted:
                admitted.append((eid, lane))
                quota_of[eid] = check.quota_policy_id
            elif isinstance(outcome, fn.Admission):
                rate_limited = outcome.status == "RATE_EXCEEDED"
                metrics.QUOTA_HITS.labels("rate" if rate_limited else "concurrency").inc()
                cap = f"concurrency cap {check.concurrency_cap}"
                detail = f"quota {check.quota_policy_id}: {'rate limit' if rate_limited else cap}"
                blocks.append(_block(eid, lane, "waiting_for_quota", detail, now))
            else:
                log.warning("admission check of %s failed: %s", eid, outcome)
        outcomes = self.engine.call_many(blocks) if blocks else []
        order = {eid: position for position, (eid, _) in enumerate(candidates)}
        admitted.sort(key=lambda candidate: order[candidate[0]])
        blocked = [block for block, outcome in zip(blocks, outcomes) if not isinstance(outcome, EngineError)]
        waiting: dict[str, set[int]] = {}
        for block in blocked:
            if block.blocking_reason == "waiting_for_quota":
                waiting.setdefault(block.lane_id, set()).add(block.execution_id.partition)
        for lane, partitions in waiting.items():  # a slot given back while they were blocked
            self.admit_waiting(lane, partitions)
        return Admitted(admitted, quota_of, blocked)

    def unblock_cleared(self, plan: ScanPlan) -> int:
        """Unblock budget- and quota-blocked executions of the plan's lanes, on its
        partitions, whose budgets have room again (reset or raised) and whose quota has room;
        wakes their lanes. Answers how many."""
        wanted = [
            (partition, PartitionKeys(partition).blocked(lane, kind), (lane, kind))
            for partition, lane in plan.lane_slots
            for kind in ("budget", "quota")
        ]
        return self._unblock(present(self.engine, wanted))

    def admit_waiting(self, lane: str, partitions: Iterable[int]) -> int:
        """Unblock at once, oldest first, the executions of ``lane`` on ``partitions`` that
        wait for a quota with room now (as many as it has room for): called when a slot is
        given back, and after admission blocked executions for lack of one, in case a slot
        was given back meanwhile (one of the two then sees the other). Answers how many."""
        keys = [PartitionKeys(partition).blocked(lane, "quota") for partition in sorted(set(partitions))]
        return self._unblock([(key, (lane, "quota")) for key in keys])

    def _unblock(self, blocked_sets: list[tuple[str, tuple[str, str]]]) -> int:
        """Unblock the cleared executions of these blocked sets ((key, (lane, kind))); a quota
        lets through no more than it has room for. Wakes their lanes."""
        batch = self.engine.batch()
        for key, _ in blocked_sets:
            batch.command("zrange", key, 0, UNBLOCK_BATCH - 1)
        blocked = [
            (eid, lane, kind)
            for (_, (lane, kind)), members in zip(blocked_sets, batch.execute())
            if isinstance(members, list)
            for eid in valid_execution_ids(members, f"the {kind}-blocked set of lane {lane}")
        ]
        if not blocked:
            return 0
        reads = self.engine.batch()
        for eid, _, _ in blocked:
            reads.command("hmget", ExecKeys(eid).core, (CoreField.BUDGET_IDS, CoreField.QUOTA_POLICY_ID))
        attached = [(_ids(b), (q or b"").decode()) for b, q in reads.execute()]
        budgets = budget_statuses(self.engine, {b for ids, _ in attached for b in ids})
        quotas = quota_policies(self.engine, {q for _, q in attached if q})
        room = {quota_policy_id: _room(policy) for quota_policy_id, policy in quotas.items() if policy is not None}
        now = self.engine.now_ms()
        requests = []
        for (eid, lane, kind), (budget_ids, quota_policy_id) in zip(blocked, attached):
            if kind == "budget":
                cleared = not any(budgets.get(b) is not None and budgets[b].exhausted() for b in budget_ids)
            elif quota_policy_id in room:
                cleared = room[quota_policy_id] > 0
                room[quota_policy_id] -= 1
            else:
                cleared = True  # its quota is gone
            if cleared:
                requests.append(fn.UnblockExecution(execution_id=eid, lane_id=lane, blocked_index=kind, now_ms=now))
        outcomes = self.engine.call_many(requests) if requests else []
        for lane in {r.lane_id for r, o in zip(requests, outcomes) if not isinstance(o, EngineError)}:
            self.engine.wake(lane)
        return sum(1 for outcome in outcomes if not isinstance(outcome, EngineError))


def _ids(raw: bytes | None) -> list[str]:
    return [part for part in (raw or b"").decode().split(",") if part]


def _room(policy: QuotaPolicy) -> float:
    """How many more executions the quota admits now (inf: it sets no limit)."""
    room = math.inf
    if policy.max_requests_per_window > 0:
        room = min(room, policy.max_requests_per_window - policy.admitted_in_window)
    if policy.max_concurrent > 0:
        room = min(room, policy.max_concurrent - policy.running)
    return room


def _block(eid: ExecutionId, lane: str, reason: str, detail: str, now: int) -> fn.BlockExecutionForAdmission:
    return fn.BlockExecutionForAdmission(
        execution_id=eid, lane_id=lane, blocking_reason=reason, blocking_detail=detail, now_ms=now
    )
