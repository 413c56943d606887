"""``install(app)``: the one-line setup that puts a Celery app on FlowFabric."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import celery
from celery import signals, states

from ff_celery.budgets import inherited_budgets

log = logging.getLogger(__name__)

TASK_CLS = "ff_celery.task:Task"
STEP = "ff_celery.worker:FlowFabricStep"
CONTROL_CLS = "ff_celery.control:Control"

#: Defaults that a user's own configuration still overrides.
DEFAULTS = {
    # every claimed (prefetched) task holds a renewed lease: take only what can run
    "worker_prefetch_multiplier": 1,
}


def _end_ignored_execution(
    task: Any = None, task_id: str = "", state: str | None = None, retval: Any = None, **_: Any
) -> None:
    """``task_postrun``: a task that raised ``Ignore`` recorded no outcome; end its execution
    (unless it suspended: it runs again when its signals arrive)."""
    from ff_celery.backend import FlowFabricBackend
    from ff_celery.waitpoints import Suspended

    if state == states.IGNORED and not isinstance(retval, Suspended) and isinstance(task.backend, FlowFabricBackend):
        task.backend.mark_as_ignored(task_id, task.request)


def install(app: celery.Celery) -> celery.Celery:
    """Use ff_celery's task base class, worker bootstep, durable revoke and defaults.

    Call it right after creating the app (before tasks are used)::

        app = Celery("proj", broker="flowfabric://localhost:6379/0", backend="flowfabric://localhost:6379/0")
        ff_celery.install(app)
    """
    if getattr(app, "_ff_installed", False):
        return app
    app._ff_installed = True
    if app.task_cls != TASK_CLS:
        if "Task" in app.__dict__:
            from ff_celery.task import Task

            if not issubclass(app.Task, Task):
                warnings.warn(
                    "ff_celery.install(app) came after app.Task was created; tasks already defined keep "
                    "Celery's base class and their retries will be re-published messages",
                    stacklevel=2,
                )
            del app.__dict__["Task"]
        app.task_cls = TASK_CLS
    app.steps["consumer"].add(STEP)
    signals.task_postrun.connect(_end_ignored_execution, weak=False, dispatch_uid="ff_celery.ignored")
    signals.before_task_publish.connect(inherited_budgets, weak=False, dispatch_uid="ff_celery.budgets")
    app.control_cls = CONTROL_CLS
    app.__dict__.pop("control", None)
    app.add_defaults(DEFAULTS)
    return app
