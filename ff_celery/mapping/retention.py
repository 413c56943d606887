"""Each app's retention, carried by its task messages: how long a task's execution (its
result, its task id) is kept once it ended is decided when it is published, by the app that
publishes it, and travels in the ``ff_retention`` header into the execution's own policy. So
apps sharing a database each keep their own tasks as long as they say, whichever worker
leads the scanners."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery

from ff_celery.mapping.messages import RETENTION_HEADER

#: How a number of seconds (or a timedelta) may be configured.
Duration = float | timedelta | None


def seconds(value: Duration) -> float | None:
    return value.total_seconds() if isinstance(value, timedelta) else value


def retention_of(app: Celery) -> float | None:
    """How long terminal executions are kept: Celery's ``result_expires`` (None or 0: forever)."""
    expires = app.conf.result_expires
    return float(seconds(expires)) if expires else None


def queue_retention_of(app: Celery) -> dict[str, float | None]:
    """Queues with a retention of their own: ``flowfabric_queue_retention`` (seconds, or a
    timedelta; None: forever)."""
    configured = app.conf.get("flowfabric_queue_retention") or {}
    return {queue: seconds(expires) for queue, expires in configured.items()}


def task_retention(app: Celery, task_name: str, queue: str | None) -> float | None:
    """A task's retention as its app says: the task's own ``ff_retention`` option, else its
    queue's, else the app's ``result_expires``."""
    task = app.tasks.get(task_name)
    if task is not None and hasattr(task, RETENTION_HEADER):
        return getattr(task, RETENTION_HEADER)
    by_queue = queue_retention_of(app)
    return by_queue[queue] if queue in by_queue else retention_of(app)


def carry_retention(app: Celery) -> None:
    """Make every task message ``app`` sends carry its :func:`task_retention` (an
    ``apply_async(ff_retention=...)`` still wins: the transport reads that option last).
    Celery's own sender is made at the first send, as Celery does (it reads the settings)."""
    amqp = app.amqp
    senders = [amqp.__dict__["send_task_message"]] if "send_task_message" in amqp.__dict__ else []

    def send_task_message(producer: Any, name: str, message: Any, *args: Any, **options: Any) -> Any:
        headers = message[0]  # Celery's task message: headers, properties, body, sent event
        if RETENTION_HEADER not in headers and RETENTION_HEADER not in (options.get("headers") or {}):
            queue = options.get("queue")
            queue = getattr(queue, "name", queue) or options.get("routing_key") or app.conf.task_default_queue
            headers[RETENTION_HEADER] = task_retention(app, name, queue)
        if not senders:
            senders.append(amqp._create_task_sender())
        return senders[0](producer, name, message, *args, **options)

    amqp.send_task_message = send_task_message
