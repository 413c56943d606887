"""What the console's pages show, read through the engine's own read functions
(:mod:`ff_celery.engine`'s inspection, flows and signals) and Celery's result backend: the lanes, executions found
by state, task id or task name, one execution in full, a flow and the waiting tasks."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import celery
from celery import states as celery_states

from ff_celery.engine import (
    CoreField,
    Engine,
    EngineError,
    ExecutionId,
    ExecutionReport,
    ExecutionSummary,
    FlowView,
    WaitpointRecord,
    current_waitpoints,
    lane_states,
    list_executions,
    read_waitpoint,
    resolve_flow,
    resolve_target,
)

#: How much of an argument list, result or traceback a page shows.
MAX_SHOWN_CHARS = 2000
#: States the executions page lists unless asked for others (every one that has not ended).
OPEN_STATES = ("waiting", "delayed", "active", "suspended", "rate_limited", "waiting_children")
#: Lease history entries an execution page shows (newest first).
LEASE_HISTORY_SHOWN = 50


def truncated(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit} more characters)"


@dataclass
class LaneRow:
    lane: str
    counts: dict[str, int]
    blocked: int
    ended_per_s: float | None
    head_wait_s: float


@dataclass
class LaneRates:
    """Completions per second of each lane between two readings (shared by every viewer)."""

    previous: dict[str, tuple[int, float]] = field(default_factory=dict)  # lane -> (ended, monotonic time)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def rate(self, lane: str, ended: int) -> float | None:
        now = time.monotonic()
        with self.lock:
            before = self.previous.get(lane)
            self.previous[lane] = (ended, now)
        if before is None or ended < before[0] or now - before[1] < 0.2:  # trimmed, or too soon to tell
            return None
        return (ended - before[0]) / (now - before[1])


def lanes_overview(engine: Engine, rates: LaneRates) -> list[LaneRow]:
    """Every lane's executions by state, completions per second and the head's wait (what
    ``ff-celery top`` shows)."""
    rows = []
    for lane, state in lane_states(engine, engine.lanes()).items():
        counts = state.executions
        blocked = sum(total for name, total in counts.items() if name.startswith("blocked_"))
        rows.append(LaneRow(lane, counts, blocked, rates.rate(lane, counts["terminal"]), state.head_wait_s))
    return rows


def find_executions(
    engine: Engine, lanes: list[str], states: list[str], query: str, limit: int
) -> list[ExecutionSummary]:
    """Executions of ``lanes`` in ``states`` (on every partition: flow members too), newest
    first, whose task name contains ``query`` (any if empty)."""
    found: list[ExecutionSummary] = []
    for lane in lanes:
        found += list_executions(engine, lane, states, limit=limit, all_partitions=True)
    wanted = query.strip().lower()
    matching = [summary for summary in found if wanted in summary.task_name.lower()]
    matching.sort(key=lambda summary: summary.created_at, reverse=True)
    return matching[:limit]


def resolve(engine: Engine, target: str) -> ExecutionId | None:
    """The execution of a Celery task id or execution id, or None."""
    try:
        return resolve_target(engine, target.strip())
    except EngineError:
        return None


@dataclass
class CeleryTask:
    """An execution as Celery sees it: task, arguments (Celery's own repr) and outcome."""

    task_id: str
    name: str
    args: str
    kwargs: str
    state: str
    result: str
    traceback: str


def celery_task(engine: Engine, app: celery.Celery, report: ExecutionReport) -> CeleryTask | None:
    """The Celery side of an execution (None if it is no Celery task)."""
    tags = report.snapshot.tags
    task_id, name = tags.get("celery.id"), tags.get("celery.task")
    if not task_id or not name:
        return None
    headers: dict[str, Any] = {}
    payload = engine.payload(ExecutionId(report.execution_id))
    try:
        message = json.loads(payload or b"{}")
        headers = message.get("headers") or {} if isinstance(message, dict) else {}
    except ValueError:
        pass
    meta = app.AsyncResult(task_id)
    state, outcome = meta.state, meta.result
    return CeleryTask(
        task_id=task_id,
        name=name,
        args=truncated(str(headers.get("argsrepr", ""))),
        kwargs=truncated(str(headers.get("kwargsrepr", ""))),
        state=state,
        # only an outcome: a waiting task's info holds its waitpoint token, which is not for viewers
        result=truncated(repr(outcome)) if state in celery_states.READY_STATES else "",
        traceback=truncated(meta.traceback or "", 4 * MAX_SHOWN_CHARS),
    )


@dataclass
class FlowMember:
    execution_id: str
    task_id: str
    task: str
    state: str
    depth: int
    row: int
    waits_for: list[str]
    detail: str


@dataclass
class FlowPage:
    view: FlowView
    members: list[FlowMember]


def flow_page(engine: Engine, target: str) -> FlowPage:
    """A flow (given by flow id, or a member's task or execution id): its members by depth,
    their states and what each waits for."""
    view = engine.flows.describe(resolve_flow(engine, target))
    ids = sorted(view.members)
    tags = dict(zip(ids, engine.read_tags(ids)))
    depth = view.levels()
    ordered = sorted(ids, key=lambda m: (depth[m], tags[m].get("celery.id", m)))
    rows: dict[int, int] = {}
    members = []
    for member in ordered:
        row = rows[depth[member]] = rows.get(depth[member], -1) + 1
        fields = view.members[member]
        members.append(
            FlowMember(
                execution_id=member,
                task_id=tags[member].get("celery.id", ""),
                task=tags[member].get("celery.task", ""),
                state=fields.get(CoreField.PUBLIC_STATE, ""),
                depth=depth[member],
                row=row,
                waits_for=[str(up) for up in view.upstream_of(member)],
                detail=fields.get(CoreField.BLOCKING_DETAIL, ""),
            )
        )
    return FlowPage(view=view, members=members)


def member_states(engine: Engine, flow_id: str) -> dict[str, str]:
    """Each member's public state now (what the flow page updates live)."""
    view = engine.flows.describe(resolve_flow(engine, flow_id))
    return {str(member): fields.get(CoreField.PUBLIC_STATE, "") for member, fields in view.members.items()}


@dataclass
class WaitingTask:
    summary: ExecutionSummary
    waitpoint: WaitpointRecord | None


def waiting_tasks(engine: Engine, limit: int = 200) -> list[WaitingTask]:
    """The suspended executions of every lane (flow members too), with the waitpoint each
    waits on: its name, the signal names it waits for and when it times out."""
    waiting = find_executions(engine, sorted(engine.lanes()), ["suspended"], "", limit)
    waitpoint_ids = current_waitpoints(engine, [ExecutionId(summary.execution_id) for summary in waiting])
    tasks = []
    for summary, waitpoint_id in zip(waiting, waitpoint_ids):
        record = read_waitpoint(engine, ExecutionId(summary.execution_id), waitpoint_id) if waitpoint_id else None
        tasks.append(WaitingTask(summary=summary, waitpoint=record))
    return tasks
