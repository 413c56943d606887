"""OpenTelemetry traces of Celery tasks on FlowFabric (``pip install ff-celery[tracing]``).

With ``app.conf.flowfabric_tracing = True`` (in the publishers' and the workers'
configuration) a trace follows each task from its publish to every attempt of its
execution. The publisher's context rides in the message headers (W3C ``traceparent``),
which the execution keeps, so a retry, a reclaim after a crash and a resume after a signal
continue the same trace. Spans:

- ``publish <task>`` (producer), in the publishing process;
- ``claim <task>``, in the worker: from when the execution became runnable to its claim
  (the queue wait), with the lease it was claimed under;
- ``run <task>`` (consumer), around each attempt in the pool, with its Celery state;
- ``signal <name>``, wherever a signal is delivered (``send_signal``, the signal server,
  ``ff-celery signal``), whatever the setting (the engine's ``deliver_signal``).

Spans go to the tracer provider the process configured (OpenTelemetry's SDK and exporter of
your choice); without one, or without ``opentelemetry-api``, nothing is recorded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import celery
from celery import signals, states

from ff_celery.engine import ClaimedTask
from ff_celery.integration.context import fence_of

if TYPE_CHECKING:
    from celery import Task


try:
    from opentelemetry import context as otel_context, propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # the optional extra is not installed
    trace = None

TRACER_NAME = "ff_celery"
#: Message headers that carry the trace context (W3C Trace Context).
TRACE_HEADERS = ("traceparent", "tracestate")

#: Fence fields recorded on ``run`` spans.
FENCE_ATTRIBUTES = ("execution_id", "lease_epoch", "attempt_index", "attempt_type")

#: Publish spans kept open at most (the oldest is ended beyond that).
MAX_OPEN_PUBLISHES = 1000

#: Whether this worker process traces the tasks it claims and runs (:func:`trace_worker`).
_tracing = False
#: Spans open in this process, by task id: publishes until sent, attempts until they end.
_publishing: dict[str, Any] = {}
_running: dict[str, tuple[Any, object]] = {}


def available() -> bool:
    return trace is not None


def _tracer() -> Any:
    return trace.get_tracer(TRACER_NAME)


def _parent(carrier: dict[str, Any]) -> Any:
    return propagate.extract({key: str(carrier[key]) for key in TRACE_HEADERS if carrier.get(key)})


def on_before_publish(sender: str | None = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
    """``before_task_publish`` (connected for every app that uses FlowFabric): open the
    ``publish`` span and put its context in the message headers."""
    if trace is None or headers is None or not headers.get("id"):
        return
    if not celery.current_app.conf.get("flowfabric_tracing"):
        return
    span = _tracer().start_span(
        f"publish {sender}",
        kind=SpanKind.PRODUCER,
        attributes={"celery.task_id": headers["id"], "celery.task_name": str(sender)},
    )
    propagate.inject(headers, context=trace.set_span_in_context(span))
    _publishing[headers["id"]] = span
    if len(_publishing) > MAX_OPEN_PUBLISHES:  # publishes that failed never reach after_task_publish
        _publishing.pop(next(iter(_publishing))).end()


def on_after_publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """``after_task_publish``: the message is sent, its ``publish`` span ends."""
    span = _publishing.pop((headers or {}).get("id"), None)
    if span is not None:
        span.end()


def _on_prerun(task_id: str, task: Task, **_: Any) -> None:
    request = task.request
    fence = fence_of(request) or {}
    carrier = {key: getattr(request, key, None) for key in TRACE_HEADERS}
    span = _tracer().start_span(
        f"run {task.name}",
        context=_parent(carrier),
        kind=SpanKind.CONSUMER,
        attributes={
            "celery.task_id": task_id,
            "celery.task_name": task.name,
            "celery.retries": request.retries or 0,
            **{
                f"ff.{field}": fence[field]
                for field in ("execution_id", "attempt_index", "attempt_type")
                if field in fence
            },
        },
    )
    _running[task_id] = (span, otel_context.attach(trace.set_span_in_context(span)))


def _on_postrun(task_id: str, retval: Any = None, state: str | None = None, **_: Any) -> None:
    span, token = _running.pop(task_id, (None, None))
    if span is None:
        return
    otel_context.detach(token)
    span.set_attribute("celery.state", state or "")
    if state == states.FAILURE:
        span.set_status(Status(StatusCode.ERROR, repr(retval)))
        if isinstance(retval, BaseException):
            span.record_exception(retval)
    span.end()


def trace_worker() -> None:
    """Trace every task this worker claims and runs (its pool processes too: call it before
    they fork). Idempotent; a no-op without ``opentelemetry-api``."""
    global _tracing
    if trace is None or _tracing:
        return
    _tracing = True
    signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid="ff_celery.observability.tracing.prerun")
    signals.task_postrun.connect(_on_postrun, weak=False, dispatch_uid="ff_celery.observability.tracing.postrun")


def record_claim(headers: dict[str, Any], task: ClaimedTask) -> None:
    """The ``claim`` span of a delivery: from when its execution became runnable to now."""
    if not _tracing or not any(headers.get(key) for key in TRACE_HEADERS):
        return
    span = _tracer().start_span(
        f"claim {headers.get('task')}",
        context=_parent(headers),
        start_time=int(task.runnable_since * 1e9),
        attributes={
            "ff.execution_id": str(task.execution_id),
            "ff.lane": task.lane_id,
            "ff.lease_epoch": task.lease_epoch,
            "ff.attempt_index": task.attempt_index,
            "ff.attempt_type": task.attempt_type,
        },
    )
    span.end()
