"""Setting up a Celery app for FlowFabric. Every app whose broker or backend is
``flowfabric://`` is integrated by itself when it is finalized (see :mod:`ff_celery.integration.autoload`);
``install(app)`` also makes ff_celery's task class the app's base, and is harmless to repeat."""

from __future__ import annotations

import logging
from typing import Any

import celery
from celery import signals
from celery._state import _get_active_apps

from ff_celery.features.budgets import inherit_budgets
from ff_celery.integration.context import restore_eta
from ff_celery.mapping import canvas, outcomes, retention
from ff_celery.mapping.messages import BUDGETS_HEADER, QUOTA_HEADER, RETENTION_HEADER, check_publish_options
from ff_celery.observability import tracing

log = logging.getLogger(__name__)

TASK_CLS = "ff_celery.integration.task:Task"
#: The worker bootsteps (:mod:`ff_celery.integration.worker`), by name: only workers import it.
STEPS = tuple(
    f"ff_celery.integration.worker:{step}" for step in ("Deliveries", "BadMessages", "Scanners", "Metrics", "Tracing")
)
CONTROL_CLS = "ff_celery.integration.control:Control"

#: Defaults that a user's own configuration still overrides.
DEFAULTS = {
    # every claimed (prefetched) task holds a renewed lease: take only what can run
    "worker_prefetch_multiplier": 1,
    # result reads and outcome writes ride out a restart or failover (the backend says which
    # errors are transient: FlowFabricBackend.exception_safe_to_retry)
    "result_backend_always_retry": True,
}


#: ff_* options of a task (``@app.task(ff_budgets=[...])``) or of a call
#: (``apply_async(ff_quota=...)``), carried in its messages' headers whatever its class.
TASK_OPTIONS = (BUDGETS_HEADER, QUOTA_HEADER, RETENTION_HEADER)


def _task_named(name: Any) -> celery.Task | None:
    """The task a message of ``name`` comes from: the current app's, else another live app's
    (the signal does not say which app publishes)."""
    if not isinstance(name, str):
        return None
    apps = [celery.current_app, *_get_active_apps()]
    return next((app._tasks[name] for app in apps if name in app._tasks), None)


def _check_options_before_celery(app: celery.Celery) -> None:
    """The app's ``send_task`` (behind every ``apply_async``) checks the numeric options Celery
    and kombu convert themselves before they do, so a bad one is a PublishError rather than
    their ``OverflowError`` or ``ValueError``."""
    send = app.send_task
    if getattr(send, "ff_checked", False):
        return

    def send_checked(*arguments: Any, **options: Any) -> Any:
        check_publish_options(options)
        return send(*arguments, **options)

    send_checked.ff_checked = True  # type: ignore[attr-defined]
    app.send_task = send_checked  # type: ignore[method-assign]


def _task_options(
    sender: Any = None, headers: dict[str, Any] | None = None, properties: dict[str, Any] | None = None, **_: Any
) -> None:
    """``before_task_publish``: each ff_* option goes into the message headers, the call's
    (Celery leaves it among the message properties) over the task's own; a message with no
    budgets then inherits them (:func:`ff_celery.features.budgets.inherit_budgets`). A task's own
    retention is already there (:func:`ff_celery.mapping.retention.carry_retention`)."""
    if headers is None:
        return
    task = _task_named(sender)
    for name in TASK_OPTIONS:
        if properties is not None and name in properties:
            headers[name] = properties.pop(name)
        elif name != RETENTION_HEADER and name not in headers and task is not None and hasattr(task, name):
            headers[name] = getattr(task, name)
    if isinstance(headers.get(BUDGETS_HEADER), str):  # ff_budgets="one-budget"
        headers[BUDGETS_HEADER] = [headers[BUDGETS_HEADER]]
    inherit_budgets(headers)


def integrate(app: celery.Celery) -> celery.Celery:
    """The worker bootstep, durable revoke, signal handlers and defaults: everything but the
    task base class, so it can be done at any time, whatever tasks exist already."""
    if getattr(app, "_ff_integrated", False):
        return app
    app._ff_integrated = True
    app.steps["consumer"].update(STEPS)
    for signal, handler in (
        (signals.task_postrun, outcomes.on_task_postrun),
        (signals.task_success, outcomes.on_task_success),
        (signals.task_failure, outcomes.on_task_failure),
        (signals.task_retry, outcomes.on_task_retry),
    ):
        signal.connect(handler, weak=False, dispatch_uid=f"ff_celery.mapping.outcomes.{handler.__name__}")
    signals.task_prerun.connect(restore_eta, weak=False, dispatch_uid="ff_celery.integration.context.restore_eta")
    signals.before_task_publish.connect(_task_options, weak=False, dispatch_uid="ff_celery.task_options")
    if tracing.available():  # flowfabric_tracing, read at each publish
        signals.before_task_publish.connect(
            tracing.on_before_publish, weak=False, dispatch_uid="ff_celery.observability.tracing"
        )
        signals.after_task_publish.connect(
            tracing.on_after_publish, weak=False, dispatch_uid="ff_celery.observability.tracing"
        )
    canvas.install()
    _check_options_before_celery(app)
    retention.carry_retention(app)
    app.control_cls = CONTROL_CLS
    app.__dict__.pop("control", None)
    app.add_defaults(DEFAULTS)
    return app


def install(app: celery.Celery) -> celery.Celery:
    """:func:`integrate`, and ff_celery's task base class for the tasks defined afterwards
    (call it right after creating the app). Optional: tasks on Celery's own class behave the
    same, ff_* options included; the base adds the retry policy to each message and
    ``retry()`` without a re-publish."""
    if app.task_cls != TASK_CLS:
        if "Task" in app.__dict__:
            log.debug("ff_celery.install(%s) after its Task class was created: earlier tasks keep theirs", app.main)
            del app.__dict__["Task"]
        app.task_cls = TASK_CLS
    return integrate(app)
