"""Recording a Celery task's outcome on its execution, in the worker, fenced by the lease of
the attempt that ran it.

The ``flowfabric://`` result backend records outcomes as it stores results. With any other
result backend, Celery's task signals record them here (``task_success``, ``task_failure``,
``task_retry``, and ``task_postrun`` for a task that raised ``Ignore``), so the engine
completes, fails or retries the execution as the task did whatever stores the results.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import states
from celery.exceptions import TimeLimitExceeded, WorkerLostError

from ff_celery.engine import (
    LEASE_GONE_CODES,
    UNLIMITED_RETRIES,
    ClaimedTask,
    Engine,
    EngineError,
    FailOutcome,
    FixedBackoff,
    RetryPolicy,
    StateError,
)
from ff_celery.features.signals import Suspended
from ff_celery.integration.context import claimed_task, engine_for_app, fence_of
from ff_celery.mapping.messages import FLOW_HEADER

log = logging.getLogger(__name__)

#: Codes that mean the attempt's lease is no longer ours: the outcome is discarded.
OUTCOME_DISCARDED_CODES = LEASE_GONE_CODES | {"execution_not_found"}


def failure_category(exc: Any) -> str:
    """FlowFabric failure category of an exception (raw or encoded by Celery)."""
    name = exc.get("exc_type") if isinstance(exc, dict) else type(exc).__name__
    categories = {
        TimeLimitExceeded.__name__: "timeout",
        WorkerLostError.__name__: "infra_crash",
        "BudgetExceeded": "budget_exceeded",
    }
    return categories.get(name, "transient")


def describe(exc: Any) -> str:
    """``Type: message`` of an exception, raw or as Celery encodes it for the backend."""
    if isinstance(exc, dict) and "exc_type" in exc:
        message = exc.get("exc_message")
        if isinstance(message, list | tuple):
            message = ", ".join(map(str, message)) if len(message) != 1 else str(message[0])
        text = f"{exc['exc_type']}: {message}"
    elif isinstance(exc, BaseException):
        text = f"{type(exc).__name__}: {exc}"
    else:
        text = str(exc)
    return text[:1000]


def retry_policy(request: Any) -> RetryPolicy:
    """The retry the task asked for (``request.ff_retry``, set by ``Task.retry``)."""
    planned = getattr(request, "ff_retry", None) or {}
    return RetryPolicy(
        max_retries=planned.get("max_retries", UNLIMITED_RETRIES),
        backoff=FixedBackoff(delay_ms=planned.get("delay_ms", 180_000)),
    )


def end_attempt(engine: Engine, task_id: str, request: Any, operation: Callable[[ClaimedTask], Any]) -> Any:
    """Run a terminal operation through the lease holder's handle. A lost lease discards the
    outcome (another worker owns the execution now); None without a fence."""
    handle = claimed_task(engine, request)
    if handle is None:
        return None
    try:
        outcome = operation(handle)
    except (StateError, EngineError) as exc:
        if exc.code in OUTCOME_DISCARDED_CODES:
            log.warning("outcome of task %s discarded: its lease is no longer held (%s)", task_id, exc.code)
            return None
        raise
    _cascade(engine, handle, request)
    return outcome


def _cascade(engine: Engine, handle: ClaimedTask, request: Any) -> None:
    """A flow member that ended releases (or skips) what waits for it right away, without
    waiting for the scanners' completion listener (which also does, harmlessly)."""
    step = getattr(request, FLOW_HEADER, None)
    if handle.edges_resolved or not isinstance(step, dict) or not isinstance(step.get("flow"), str):
        return
    try:
        engine.flows.cascade(handle.execution_id, step["flow"])
    except EngineError as exc:
        log.info("cascade after %s left to the scanners: %s", handle.execution_id, exc)


def record_failure(engine: Engine, task_id: str, request: Any, exc: Any) -> None:
    end_attempt(engine, task_id, request, lambda h: h.fail(describe(exc), failure_category(exc), retry_policy=None))


def record_retry(engine: Engine, task_id: str, request: Any, exc: Any) -> FailOutcome | None:
    """Fail the attempt with the retry the task asked for; the engine schedules the next one
    (or refuses: ``retry_scheduled`` is False). A hard budget breach fails it for good."""
    if failure_category(exc) == "budget_exceeded":
        record_failure(engine, task_id, request, exc)
        return FailOutcome(retry_scheduled=False)
    policy = retry_policy(request)
    return end_attempt(
        engine, task_id, request, lambda h: h.fail(describe(exc), failure_category(exc), retry_policy=policy)
    )


# -- with another result backend: Celery's task signals -----------------------------------------


def _foreign(task: Any, request: Any) -> Engine | None:
    """The engine to record on, when the task's backend does not record outcomes itself."""
    if getattr(task.backend, "records_outcomes", False) or fence_of(request) is None:
        return None
    return engine_for_app(task.app)


def on_task_success(sender: Any = None, **_: Any) -> None:
    engine = _foreign(sender, sender.request)
    if engine is not None:
        end_attempt(engine, sender.request.id, sender.request, lambda h: h.complete(b""))


def on_task_failure(sender: Any = None, task_id: str = "", exception: Any = None, **_: Any) -> None:
    engine = _foreign(sender, sender.request)
    if engine is not None:
        record_failure(engine, task_id, sender.request, exception)


def on_task_retry(sender: Any = None, request: Any = None, reason: Any = None, **_: Any) -> None:
    engine = _foreign(sender, request)
    if engine is not None:
        record_retry(engine, request.id, request, reason)


def on_task_postrun(
    task: Any = None, task_id: str = "", state: str | None = None, retval: Any = None, **_: Any
) -> None:
    """A task that raised ``Ignore`` recorded no outcome: end its execution (unless it
    suspended: it runs again when its signals arrive)."""
    if state != states.IGNORED or isinstance(retval, Suspended):
        return
    if getattr(task.backend, "records_outcomes", False):
        task.backend.mark_as_ignored(task_id, task.request)
    elif (engine := _foreign(task, task.request)) is not None:
        end_attempt(engine, task_id, task.request, lambda h: h.complete(b""))
