"""Per-task Prometheus metrics of a Celery worker, from Celery's task signals.

- ``ff_celery_tasks_total{task, state}``: attempts ended by Celery state (``SUCCESS``,
  ``FAILURE``, ``RETRY``, ``IGNORED``, ``REJECTED``, ``SUSPENDED``, …) and tasks revoked
  (``REVOKED``: discarded before running, expired, or terminated);
- ``ff_celery_task_runtime_seconds{task}``: how long each attempt ran;
- ``ff_celery_task_start_latency_seconds{task}``: from when the execution became runnable
  (published, due, requeued after a crash) to the attempt starting in the pool, for tasks
  delivered by ``flowfabric://``.

Attempts run in the pool: a prefork worker exports them in prometheus_client's
multiprocess mode (see :mod:`ff_celery.engine.duties.exporter`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from celery import signals

from ff_celery.engine import metric
from ff_celery.features.signals import Suspended
from ff_celery.integration.context import fence_of
from ff_celery.mapping.states import SUSPENDED

if TYPE_CHECKING:
    from celery import Task


TASKS = metric("Counter", "ff_celery_tasks_total", "Celery task attempts ended, by state", ["task", "state"])
RUNTIME = metric("Histogram", "ff_celery_task_runtime_seconds", "How long each task attempt ran", ["task"])
START_LATENCY = metric(
    "Histogram",
    "ff_celery_task_start_latency_seconds",
    "From when the execution became runnable to its attempt starting",
    ["task"],
)

#: Start time of each attempt running in this process, by task id.
_started: dict[str, float] = {}


def _on_prerun(task_id: str, task: Task, **_: Any) -> None:
    now = time.time()
    _started[task_id] = now
    since = (fence_of(task.request) or {}).get("runnable_since")
    if isinstance(since, (int, float)):
        START_LATENCY.labels(task.name).observe(max(0.0, now - since))


def _on_postrun(task_id: str, task: Task, retval: Any = None, state: str | None = None, **_: Any) -> None:
    started = _started.pop(task_id, None)
    if started is not None:
        RUNTIME.labels(task.name).observe(time.time() - started)
    TASKS.labels(task.name, SUSPENDED if isinstance(retval, Suspended) else state or "UNKNOWN").inc()


def _on_revoked(sender: Task, **_: Any) -> None:
    TASKS.labels(sender.name, "REVOKED").inc()


def measure_tasks() -> None:
    """Count and time every task this worker runs (its pool processes included). Idempotent."""
    signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid="ff_celery.observability.task_metrics.prerun")
    signals.task_postrun.connect(_on_postrun, weak=False, dispatch_uid="ff_celery.observability.task_metrics.postrun")
    signals.task_revoked.connect(_on_revoked, weak=False, dispatch_uid="ff_celery.observability.task_metrics.revoked")
