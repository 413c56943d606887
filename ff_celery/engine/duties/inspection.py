"""What an operator reads: one execution in full (state, attempts, lease, waitpoints and the
signals they received, budgets and quota, stream, progress, tags), the executions of a lane
by state, the executions held until a time, and every lane's counts by state. Executions are
found by execution id or by an alias (a Celery task id)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from ff_celery.engine.core.decoding import text
from ff_celery.engine.core.errors import error_for_code
from ff_celery.engine.core.exec_core import CoreField
from ff_celery.engine.core.flows import FlowRef
from ff_celery.engine.core.ids import ExecutionId, valid_execution_ids
from ff_celery.engine.core.keys import BLOCKED_SUFFIXES, LANE_STATES, ExecKeys, PartitionKeys
from ff_celery.engine.core.snapshot import ExecutionSnapshot
from ff_celery.engine.work import budgets, signals
from ff_celery.engine.work.budgets import BudgetStatus, QuotaPolicy
from ff_celery.engine.work.signals import ReceivedSignal

if TYPE_CHECKING:
    from ff_celery.engine.core.engine import Engine

#: ``list`` states -> the lane index holding them (terminal ones filtered by public state).
STATE_INDEXES = {
    "waiting": ("eligible",),
    "delayed": ("delayed",),
    "active": ("active",),
    "suspended": ("suspended",),
    "rate_limited": ("blocked:budget", "blocked:quota", "blocked:route", "blocked:operator"),
    "waiting_children": ("blocked:dependencies",),
    "completed": ("terminal",),
    "failed": ("terminal",),
    "cancelled": ("terminal",),
    "expired": ("terminal",),
    "skipped": ("terminal",),
}
SUMMARY_FIELDS = (
    CoreField.PUBLIC_STATE,
    CoreField.CREATED_AT,
    CoreField.COMPLETED_AT,
    CoreField.CURRENT_ATTEMPT_INDEX,
    CoreField.BLOCKING_REASON,
)


def resolve_target(engine: Engine, target: str) -> ExecutionId:
    """An execution id as given, or the execution behind an alias (a Celery task id)."""
    if target.startswith("{fp:"):
        return ExecutionId(target)
    execution_id = engine.resolve(target)
    if execution_id is None:
        raise error_for_code("execution_not_found", [f"no execution or task id {target!r}"])
    return execution_id


class WaitpointView(BaseModel):
    waitpoint_id: str
    waitpoint_key: str
    state: str
    close_reason: str
    expires_at: int | None
    signals: list[ReceivedSignal]


class ExecutionReport(BaseModel):
    """Everything an operator sees of one execution."""

    execution_id: str
    snapshot: ExecutionSnapshot
    waitpoints: list[WaitpointView] = Field(default_factory=list)
    budgets: list[BudgetStatus] = Field(default_factory=list)
    quota: QuotaPolicy | None = None
    stream_frames: int = 0
    stream_closed_reason: str = ""


def resolve_flow(engine: Engine, target: str) -> FlowRef:
    """A flow id as given, or the flow of a task or execution."""
    if len(target) == 36 and not target.startswith("{"):
        flow = FlowRef(target, engine.partitions.flow_partition(target))
        if engine.flows.exists(flow):
            return flow
    flow = engine.flows.flow_of(resolve_target(engine, target))
    if flow is None:
        raise error_for_code("flow_not_found", [f"{target} is not a flow nor a member of one"])
    return flow


def describe_execution(engine: Engine, execution_id: ExecutionId) -> ExecutionReport:
    snapshot = engine.snapshot(execution_id)
    if snapshot is None:
        raise error_for_code("execution_not_found", [], execution_id=execution_id)
    core, keys = snapshot.core, ExecKeys(execution_id)
    attempt = core.get(CoreField.CURRENT_ATTEMPT_INDEX) or "0"
    batch = engine.batch()
    batch.command("smembers", keys.waitpoints)
    batch.command("hmget", keys.stream_meta(attempt), ("frame_count", "closed_reason"))
    members, (frame_count, closed_reason) = batch.execute()
    waitpoint_ids = sorted(
        {m.decode() for m in members or ()} | {core.get(CoreField.CURRENT_WAITPOINT_ID) or ""} - {""}
    )
    views = []
    for waitpoint_id in waitpoint_ids:
        record = signals.read_waitpoint(engine, execution_id, waitpoint_id)
        if record is not None:
            views.append(
                WaitpointView(
                    waitpoint_id=waitpoint_id,
                    waitpoint_key=record.waitpoint_key,
                    state=record.state,
                    close_reason=record.close_reason,
                    expires_at=record.expires_at,
                    signals=signals.read_signals(engine, execution_id, record.matched_signal_ids),
                )
            )
    budget_ids = [b for b in core.get(CoreField.BUDGET_IDS, "").split(",") if b]
    quota_id = core.get(CoreField.QUOTA_POLICY_ID) or ""
    return ExecutionReport(
        execution_id=str(execution_id),
        snapshot=snapshot,
        waitpoints=views,
        budgets=[s for s in budgets.budget_statuses(engine, budget_ids).values() if s is not None],
        quota=budgets.quota_policies(engine, [quota_id])[quota_id] if quota_id else None,
        stream_frames=int(frame_count or 0),
        stream_closed_reason=(closed_reason or b"").decode(),
    )


class ExecutionSummary(BaseModel):
    execution_id: str
    lane: str
    public_state: str
    task_name: str = ""
    task_id: str = ""
    attempt: str = ""
    created_at: int = 0
    completed_at: int = 0
    blocking_reason: str = ""


def list_executions(
    engine: Engine, lane: str, states: list[str], *, limit: int = 50, all_partitions: bool = False
) -> list[ExecutionSummary]:
    """Executions of ``lane`` in ``states`` (see :data:`STATE_INDEXES`), newest first: from
    the lane's own partition (where solo executions live), or every partition."""
    unknown = [state for state in states if state not in STATE_INDEXES]
    if unknown:
        raise error_for_code("invalid_input", [f"unknown state(s) {unknown}; known: {sorted(STATE_INDEXES)}"])
    config = engine.partitions
    partitions = range(config.num_flow_partitions) if all_partitions else [config.lane_partition(lane)]
    suffixes = sorted({suffix for state in states for suffix in STATE_INDEXES[state]})
    batch = engine.batch()
    for partition in partitions:
        for suffix in suffixes:
            batch.command("zrevrange", PartitionKeys(partition).lane(lane, suffix), 0, limit - 1)
    ids = list(dict.fromkeys(m.decode() for members in batch.execute() if isinstance(members, list) for m in members))
    reads = engine.batch()
    for eid in ids:
        keys = ExecKeys(ExecutionId(eid))
        reads.command("hmget", keys.core, SUMMARY_FIELDS)
        reads.command("hmget", keys.tags, ("celery.task", "celery.id"))
    replies = reads.execute()
    summaries = []
    for position, eid in enumerate(ids):
        core = dict(zip(SUMMARY_FIELDS, (text(v) for v in replies[2 * position])))
        task_name, task_id = (text(v) for v in replies[2 * position + 1])
        if core[CoreField.PUBLIC_STATE] not in states:
            continue
        summaries.append(
            ExecutionSummary(
                execution_id=eid,
                lane=lane,
                public_state=core[CoreField.PUBLIC_STATE],
                task_name=task_name,
                task_id=task_id,
                attempt=core[CoreField.CURRENT_ATTEMPT_INDEX],
                created_at=int(core[CoreField.CREATED_AT] or 0),
                completed_at=int(core[CoreField.COMPLETED_AT] or 0),
                blocking_reason=core[CoreField.BLOCKING_REASON],
            )
        )
    summaries.sort(key=lambda summary: summary.created_at, reverse=True)
    return summaries[:limit]


class HeldExecution(BaseModel):
    """An execution the engine holds until a time (delayed: a countdown, an ETA or a retry's
    backoff): when it becomes runnable (engine ms) and its payload."""

    execution_id: str
    runnable_at: int
    payload: bytes


def held_executions(engine: Engine, lane: str, *, limit: int = 1000) -> list[HeldExecution]:
    """The delayed executions of ``lane`` (on its own partition), soonest first."""
    index = PartitionKeys(engine.partitions.lane_partition(lane)).delayed(lane)
    due = {
        member.decode("utf-8", "replace"): score
        for member, score in engine.redis.zrange(index, 0, limit - 1, withscores=True)
    }
    ids = list(valid_execution_ids(due, f"the delayed set of lane {lane}"))
    reads = engine.batch()
    for eid in ids:
        reads.command("get", ExecKeys(eid).payload)
    payloads = reads.execute() if ids else []
    return [
        HeldExecution(execution_id=eid, runnable_at=int(due[eid]), payload=payload)
        for eid, payload in zip(ids, payloads)
        if isinstance(payload, bytes)  # ended and trimmed meanwhile
    ]


#: The lane index sets counted by :func:`lane_states`, by the name they are reported under
#: (besides ``blocked_<reason>`` for each blocked index).


@dataclass(frozen=True)
class LaneState:
    """A lane now: executions per state, and how long its next execution has waited."""

    executions: dict[str, int]
    head_wait_s: float


def lane_states(engine: Engine, lanes: Iterable[str]) -> dict[str, LaneState]:
    """Each lane's :class:`LaneState`, from the lane indexes of every partition (two round
    trips whatever the number of lanes)."""
    ordered = sorted(lanes)
    partitions = [PartitionKeys(p) for p in range(engine.partitions.num_flow_partitions)]
    names = [*LANE_STATES, *(f"blocked_{reason}" for reason in BLOCKED_SUFFIXES)]
    reads = engine.batch()
    for lane in ordered:
        for index in partitions:
            for state in LANE_STATES:
                reads.command("zcard", index.lane(lane, state))
            for reason in BLOCKED_SUFFIXES:
                reads.command("zcard", index.blocked(lane, reason))
            reads.command("zrange", index.eligible(lane), 0, 0)
    replies = iter(reads.execute() if ordered else [])
    totals: dict[str, dict[str, int]] = {}
    heads: list[tuple[str, str]] = []  # (lane, next execution) per partition
    for lane in ordered:
        totals[lane] = dict.fromkeys(names, 0)
        for _ in partitions:
            for name in names:
                reply = next(replies)
                totals[lane][name] += reply if isinstance(reply, int) else 0
            head = next(replies)
            heads += [(lane, eid) for eid in valid_execution_ids(head or [], f"the eligible set of lane {lane}")]
    waited = _head_waits(engine, ordered, heads)
    return {lane: LaneState(executions=totals[lane], head_wait_s=waited[lane]) for lane in ordered}


def _head_waits(engine: Engine, lanes: list[str], heads: list[tuple[str, str]]) -> dict[str, float]:
    """Per lane: the longest a next-in-line execution (one per partition) has waited."""
    reads = engine.batch()
    for _, eid in heads:
        reads.command("hget", ExecKeys(ExecutionId(eid)).core, CoreField.CREATED_AT)
    now = engine.server_time_ms()
    longest = dict.fromkeys(lanes, 0.0)
    for (lane, _), created_at in zip(heads, reads.execute() if heads else []):
        if isinstance(created_at, bytes) and created_at.isdigit():
            longest[lane] = max(longest[lane], (now - int(created_at)) / 1000)
    return longest


def lease_history(engine: Engine, execution_id: ExecutionId, count: int = 50) -> list[dict[str, str]]:
    """The execution's last ``count`` lease events (acquired, renewed, released, expired,
    revoked), newest first, each with its stream entry id as ``id``."""
    batch = engine.batch()
    batch.command("xrevrange", ExecKeys(execution_id).lease_history, count=count)
    (entries,) = batch.execute()
    return [{"id": text(entry_id), **{text(k): text(v) for k, v in fields.items()}} for entry_id, fields in entries]


def current_waitpoints(engine: Engine, execution_ids: list[ExecutionId]) -> list[str | None]:
    """The waitpoint each execution is suspended on (None when none), in one round trip."""
    batch = engine.batch()
    for execution_id in execution_ids:
        batch.command("hget", ExecKeys(execution_id).core, CoreField.CURRENT_WAITPOINT_ID)
    return [text(value) or None for value in batch.execute()] if execution_ids else []
