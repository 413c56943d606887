"""Setting up a Celery app for FlowFabric. Every app whose broker or backend is
``flowfabric://`` is integrated by itself when it is finalized (see :mod:`ff_celery.autoload`);
``install(app)`` also makes ff_celery's task class the app's base, and is harmless to repeat."""

from __future__ import annotations

import logging
from typing import Any

import celery
from celery import signals

from ff_celery import canvas, outcomes, tracing
from ff_celery.budgets import inherited_budgets
from ff_celery.context import restore_eta
from ff_celery.messages import RETENTION_HEADER

log = logging.getLogger(__name__)

TASK_CLS = "ff_celery.task:Task"
STEP = "ff_celery.worker:FlowFabricStep"
CONTROL_CLS = "ff_celery.control:Control"

#: Defaults that a user's own configuration still overrides.
DEFAULTS = {
    # every claimed (prefetched) task holds a renewed lease: take only what can run
    "worker_prefetch_multiplier": 1,
    # result reads and outcome writes ride out a restart or failover (the backend says which
    # errors are transient: FlowFabricBackend.exception_safe_to_retry)
    "result_backend_always_retry": True,
}


def _task_retention(sender: Any = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
    """``before_task_publish``: a task's own ``ff_retention`` option (seconds, None: forever)
    rides in its messages; a per-call ``apply_async(ff_retention=...)`` still wins."""
    task = celery.current_app.tasks.get(sender) if isinstance(sender, str) else None
    if headers is not None and task is not None and hasattr(task, RETENTION_HEADER):
        headers.setdefault(RETENTION_HEADER, getattr(task, RETENTION_HEADER))


def uses_flowfabric(app: celery.Celery) -> bool:
    """Whether the app's broker or result backend is ``flowfabric://`` / ``flowfabrics://``."""
    urls = (app.conf.broker_url, app.conf.result_backend)
    return any(isinstance(url, str) and url.startswith("flowfabric") for url in urls)


def integrate_if_used(app: celery.Celery) -> None:
    """Integrate ``app`` if it uses FlowFabric (called for every app when it is finalized)."""
    if uses_flowfabric(app):
        integrate(app)


def integrate(app: celery.Celery) -> celery.Celery:
    """The worker bootstep, durable revoke, signal handlers and defaults: everything but the
    task base class, so it can be done at any time, whatever tasks exist already."""
    if getattr(app, "_ff_integrated", False):
        return app
    app._ff_integrated = True
    app.steps["consumer"].add(STEP)
    for signal, handler in (
        (signals.task_postrun, outcomes.on_task_postrun),
        (signals.task_success, outcomes.on_task_success),
        (signals.task_failure, outcomes.on_task_failure),
        (signals.task_retry, outcomes.on_task_retry),
    ):
        signal.connect(handler, weak=False, dispatch_uid=f"ff_celery.outcomes.{handler.__name__}")
    signals.task_prerun.connect(restore_eta, weak=False, dispatch_uid="ff_celery.context.restore_eta")
    signals.before_task_publish.connect(inherited_budgets, weak=False, dispatch_uid="ff_celery.budgets")
    signals.before_task_publish.connect(_task_retention, weak=False, dispatch_uid="ff_celery.retention")
    if tracing.available():  # flowfabric_tracing, read at each publish
        signals.before_task_publish.connect(tracing.on_before_publish, weak=False, dispatch_uid="ff_celery.tracing")
        signals.after_task_publish.connect(tracing.on_after_publish, weak=False, dispatch_uid="ff_celery.tracing")
    canvas.install()
    app.control_cls = CONTROL_CLS
    app.__dict__.pop("control", None)
    app.add_defaults(DEFAULTS)
    return app


def install(app: celery.Celery) -> celery.Celery:
    """:func:`integrate`, and ff_celery's task base class for the tasks defined afterwards
    (call it right after creating the app). Optional: tasks on Celery's own class behave the
    same; the base adds the retry policy to each message and ``retry()`` without a re-publish."""
    if app.task_cls != TASK_CLS:
        if "Task" in app.__dict__:
            log.debug("ff_celery.install(%s) after its Task class was created: earlier tasks keep theirs", app.main)
            del app.__dict__["Task"]
        app.task_cls = TASK_CLS
    return integrate(app)
