"""Budgets and quotas for Celery tasks.

Attaching (names or UUIDs; a name always maps to the same budget):

- per task: ``@app.task(ff_budgets=["llm-tokens"], ff_quota="openai")``;
- per call: ``task.apply_async(args, ff_budgets=[...], ff_quota="tenant-42")``;
- per canvas: everything published inside ``with budget_scope("llm-tokens"):``, and every task
  published by a task that runs under budgets (chain steps, chord parts, subtasks), inherits
  them;
- per lane: ``broker_transport_options = {"lane_quotas": {"llm": "openai"}}``.

Task code reports what it spends with :func:`report_usage`. A soft limit passed logs a
warning, sends a ``task-budget-soft-breach`` event and the :data:`budget_soft_breach`
signal; a hard limit stops the task at once with :class:`BudgetExceeded` and fails its
execution (``budget_exceeded``, no retry). Executions under an exhausted budget are not
claimed (they wait, ``rate_limited``, blocked ``waiting_for_budget``) until the budget is reset
or raised; quotas admit executions at claim time by rate and by concurrency.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator
from typing import Any

import celery
from celery import current_task
from celery.utils.dispatch import Signal

from ff_celery.engine import (
    Admission,
    BudgetStatus,
    QuotaPolicy,
    budget_status as engine_budget_status,
    create_budget as engine_create_budget,
    create_quota as engine_create_quota,
    quota_id_for,
    quota_policies,
    read_plan,
    reset_budget as engine_reset_budget,
    set_budget_limits,
)
from ff_celery.integration import context
from ff_celery.mapping.messages import BUDGETS_HEADER

log = logging.getLogger(__name__)

#: Sent (in the worker) when a report passes a soft limit: sender=the task, plus budget_id,
#: dimension, current and limit.
budget_soft_breach = Signal(name="budget_soft_breach")

_scope: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("ff_budget_scope", default=())


class BudgetExceeded(Exception):
    """A hard budget limit stopped the task: ``budget_id``, ``dimension``, ``current`` usage
    and the ``limit`` (the refused increment was not applied)."""

    def __init__(self, budget_id: str, dimension: str, current: int, limit: int, name: str = "") -> None:
        super().__init__(budget_id, dimension, current, limit, name)
        self.budget_id, self.dimension, self.current, self.limit = budget_id, dimension, current, limit
        self.name = name or budget_id

    def __str__(self) -> str:
        return f"budget {self.name} exhausted: {self.dimension} {self.current}/{self.limit}"


class NoBudgetAttached(RuntimeError):
    """:func:`report_usage` in a task that runs under no budget: nothing was recorded."""


# -- attaching ---------------------------------------------------------------------------------


@contextlib.contextmanager
def budget_scope(*names: str) -> Iterator[None]:
    """Put every task published inside (e.g. a whole chain or chord) under these budgets."""
    token = _scope.set(tuple(dict.fromkeys((*_scope.get(), *names))))
    try:
        yield
    finally:
        _scope.reset(token)


def inherit_budgets(headers: dict[str, Any]) -> None:
    """Put a message (its headers, at publish) without budgets under those of the enclosing
    :func:`budget_scope`, else under those of the task publishing it."""
    if headers.get(BUDGETS_HEADER):
        return
    names = _scope.get()
    if not names and current_task and not current_task.request.called_directly:
        names = tuple(getattr(current_task.request, BUDGETS_HEADER, None) or ())
    if names:
        headers[BUDGETS_HEADER] = list(names)


# -- reporting from task code ------------------------------------------------------------------


def _as_dimensions(usage: dict[str, float]) -> dict[str, int]:
    dimensions = {}
    for name, value in usage.items():
        if name == "cost_usd":  # money as integer micro-dollars, FlowFabric's cost_micros
            name, value = "cost_micros", round(value * 1_000_000)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"usage {name}={value!r} must be a non-negative integer")
        dimensions[name] = dimensions.get(name, 0) + value
    return dimensions


def report_usage(*, dedup_key: str | None = None, **usage: float) -> dict[str, Any]:
    """Report what the running task spent (``tokens=1200, cost_usd=0.004, ...``) to each of
    its budgets; ``cost_usd`` is recorded as ``cost_micros``. ``dedup_key`` makes a repeated
    report (e.g. the same LLM call after a retry) count once. Raises :class:`BudgetExceeded`
    when a hard limit would be passed, :class:`NoBudgetAttached` when the task runs under no
    budget. Answers each budget's report."""
    task, claim = context.current_claim()
    reports = claim.report_usage(_as_dimensions(usage), dedup_key=dedup_key)
    if not reports:
        raise NoBudgetAttached(
            f"task {task.name}[{task.request.id}] runs under no budget, so {usage} was not recorded: attach one "
            "with @app.task(ff_budgets=[...]), apply_async(..., ff_budgets=[...]) or budget_scope(...)"
        )
    for budget_id, report in reports.items():
        if report.status == "HARD_BREACH":
            status = engine_budget_status(claim.engine, budget_id)  # for its name (the scope id)
            name = status.scope_id if status else ""
            raise BudgetExceeded(budget_id, report.dimension or "", report.current or 0, report.limit or 0, name)
        if report.status == "SOFT_BREACH":
            log.warning(
                "task %s[%s] passed the soft limit of budget %s: %s %s/%s",
                task.name, task.request.id, budget_id, report.dimension, report.current, report.limit,
            )  # fmt: skip
            fields = {"budget_id": budget_id, "dimension": report.dimension, "current": report.current,
                      "limit": report.limit}  # fmt: skip
            budget_soft_breach.send(sender=task, **fields)
            with contextlib.suppress(Exception):  # events are best effort
                task.send_event("task-budget-soft-breach", **fields)
    return reports


# -- managing ----------------------------------------------------------------------------------


def create_budget(
    app_or_url: celery.Celery | str,
    name: str,
    *,
    hard: dict[str, int],
    soft: dict[str, int] | None = None,
    reset_every: float = 0,
) -> str:
    """Create a budget (kept as is if it exists): hard/soft limits per dimension, optionally
    reset every ``reset_every`` seconds. Answers its id."""
    return engine_create_budget(
        context.engine_for(app_or_url), name, hard=hard, soft=soft, reset_interval_s=reset_every
    )


def budget_status(app_or_url: celery.Celery | str, name: str) -> BudgetStatus | None:
    return engine_budget_status(context.engine_for(app_or_url), name)


def reset_budget(app_or_url: celery.Celery | str, name: str) -> int:
    """Zero the budget's usage; executions waiting on it are unblocked at once (answers how
    many were)."""
    engine = context.engine_for(app_or_url)
    engine_reset_budget(engine, name)
    return Admission(engine).unblock_cleared(read_plan(engine, ()))


def raise_budget(
    app_or_url: celery.Celery | str,
    name: str,
    *,
    hard: dict[str, int] | None = None,
    soft: dict[str, int] | None = None,
) -> int:
    """Change the budget's limits; executions it no longer blocks are unblocked at once
    (answers how many were)."""
    engine = context.engine_for(app_or_url)
    set_budget_limits(engine, name, hard=hard, soft=soft)
    return Admission(engine).unblock_cleared(read_plan(engine, ()))


def create_quota(
    app_or_url: celery.Celery | str,
    name: str,
    *,
    max_requests_per_window: int = 0,
    window_seconds: int = 60,
    max_concurrent: int = 0,
) -> str:
    """Create a quota (kept as is if it exists): at most ``max_requests_per_window`` claims per
    ``window_seconds`` and ``max_concurrent`` running at once (0 = no limit). Answers its id."""
    return engine_create_quota(
        context.engine_for(app_or_url),
        name,
        max_requests_per_window=max_requests_per_window,
        window_seconds=window_seconds,
        max_concurrent=max_concurrent,
    )


def quota_status(app_or_url: celery.Celery | str, name: str) -> QuotaPolicy | None:
    quota_policy_id = quota_id_for(name)
    return quota_policies(context.engine_for(app_or_url), [quota_policy_id])[quota_policy_id]
