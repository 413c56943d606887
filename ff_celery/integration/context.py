"""The FlowFabric side of the Celery task running now: the engine of this process and the
claimed execution, rebuilt from the fence the worker put in the request (``request.ff``).

Task code reaches suspension, budgets and streams through these; the result backend records
outcomes with the same handle.
"""

from __future__ import annotations

from typing import Any

import celery
from celery import current_task

from ff_celery.engine import ClaimedTask, Engine, ExecutionId, Lease, connect, done_channel, shared_engine
from ff_celery.mapping.messages import FENCE_HEADER, NAMESPACE

#: Attempts that run a task's code again from the top, as the attempt before them did.
REPEATING_ATTEMPTS = frozenset({"reclaim", "resumed"})


class NotAFlowFabricTask(RuntimeError):
    """Raised when FlowFabric features are used outside a task delivered by ``flowfabric://``."""


def engine_for_url(url: str) -> Engine:
    """This process's engine for the server at ``url`` (:mod:`ff_celery.engine.work.registry`)."""
    return shared_engine(url, lambda: connect(url), NAMESPACE)


def engine_for_app(app: celery.Celery) -> Engine:
    """The engine of the app's ``flowfabric://`` broker (where its executions live)."""
    url = app.conf.broker_url or ""
    if not url.startswith("flowfabric"):
        raise NotAFlowFabricTask(f"the app's broker is not flowfabric:// ({url.split('://')[0] or 'unset'})")
    return engine_for_url(url)


def engine_for(app_or_url: celery.Celery | str) -> Engine:
    """The engine of an app's broker, or of a Valkey/Redis URL."""
    return engine_for_url(app_or_url) if isinstance(app_or_url, str) else engine_for_app(app_or_url)


def fence_of(request: Any) -> dict[str, Any] | None:
    """The fence a flowfabric:// delivery carries, or None."""
    return (getattr(request, FENCE_HEADER, None) if request is not None else None) or None


def restore_eta(task: celery.Task | None = None, **_: Any) -> None:
    """``task_prerun``: the task sees the ``eta`` it was published with as ``request.eta``, as
    on Celery's brokers (the delivery clears it: the engine held the task until it was due)."""
    fence = fence_of(task.request) if task is not None else None
    if fence is not None and task.request.eta is None:
        task.request.eta = fence.get("eta")


def publisher_repeats() -> bool:
    """Whether the task running here (if any) repeats work whose messages may have gone out
    already: an attempt reclaimed after its worker was lost, or resumed after a wait."""
    fence = fence_of(current_task.request) if current_task else None
    return fence is not None and fence.get("attempt_type") in REPEATING_ATTEMPTS


def claimed_task(engine: Engine, request: Any) -> ClaimedTask | None:
    """The lease holder's handle for ``request`` (no renewal: the worker's main process
    renews). Its terminal operations announce the outcome to result waiters."""
    fence = fence_of(request)
    if fence is None:
        return None
    handle = ClaimedTask(
        engine,
        execution_id=ExecutionId(fence["execution_id"]),
        lane_id=fence["lane"],
        worker_id="celery",
        worker_instance_id=fence["worker_instance_id"],
        lease=Lease(
            lease_id=fence["lease_id"],
            lease_epoch=fence["lease_epoch"],
            expires_at=None,
            attempt_id=fence["attempt_id"],
            attempt_index=fence["attempt_index"],
            attempt_type=fence.get("attempt_type"),
        ),
        lease_ttl_ms=0,
    )
    handle.notify_channel = done_channel(NAMESPACE, request.id)
    # outcomes are recorded elsewhere or not at all: dropping this handle is not a leak
    handle.release()
    return handle


def plan_republished_retry(task_id: str, delay_ms: int) -> None:
    """Celery's own ``Task.retry`` re-published the running task ``task_id``: plan its next
    attempt on the request, as ff_celery's ``Task.retry`` does (the result backend reads
    ``request.ff_retry`` when it fails the attempt with a retry)."""
    request = current_task.request if current_task else None
    if request is not None and request.id == task_id and not getattr(request, "ff_retry", None):
        request.ff_retry = {"delay_ms": delay_ms}


def current_claim(task: celery.Task | None = None) -> tuple[celery.Task, ClaimedTask]:
    """The running task and its claimed execution."""
    task = task or (current_task if current_task else None)
    if task is None or task.request.called_directly:
        raise NotAFlowFabricTask("not inside a running Celery task")
    handle = claimed_task(engine_for_app(task.app), task.request)
    if handle is None:
        raise NotAFlowFabricTask(f"task {task.name} was not delivered by flowfabric:// (no execution)")
    return task, handle
