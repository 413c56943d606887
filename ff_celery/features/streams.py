"""Streaming output and progress from task code, and reading it from anywhere.

In a task, :func:`append_frame` adds a frame (type, payload, correlation id) to the
attempt's output stream and :func:`progress` records percent + message on the execution,
appends a ``progress`` frame, and mirrors it into Celery's ``PROGRESS`` state
(``update_state``), so existing UIs keep working.

Readers (any process, by Celery task id) use :func:`read_frames` for a range and
:func:`follow` to tail the stream live: it follows the task across attempts (a retry or a
crash recovery starts a new stream) and stops when the execution has ended.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import celery

from ff_celery.engine import (
    Appended,
    CoreField,
    Engine,
    ExecutionId,
    Frame,
    StreamMode,
    StreamRead,
    error_for_code,
    follow_execution,
    read_frames as engine_read_frames,
)
from ff_celery.integration import context

#: Celery state that :func:`progress` records.
PROGRESS = "PROGRESS"


def _payload(payload: Any) -> bytes | str:
    return payload if isinstance(payload, bytes | str) else json.dumps(payload)


def append_frame(
    frame_type: str, payload: Any = "", *, correlation_id: str = "", mode: StreamMode = "durable"
) -> Appended:
    """Append a frame to the running task's output stream (non-string payloads as JSON;
    at most 64 KiB)."""
    _, claim = context.current_claim()
    return claim.append_frame(frame_type, _payload(payload), correlation_id=correlation_id, mode=mode)


def progress(percent: float | None, message: str = "") -> None:
    """Record the running task's progress: on the execution, as a ``progress`` frame, and as
    Celery's ``PROGRESS`` state with meta ``{"percent": ..., "message": ...}``."""
    task, claim = context.current_claim()
    claim.update_progress(percent, message)
    task.update_state(state=PROGRESS, meta={"percent": percent, "message": message})
    claim.append_frame("progress", json.dumps({"percent": percent, "message": message}))  # readers see the state


def _execution(engine: Engine, task_id: str) -> ExecutionId:
    execution_id = engine.resolve(task_id)
    if execution_id is None:
        raise error_for_code("execution_not_found", [f"no execution for task {task_id}"])
    return execution_id


def read_frames(
    app_or_url: celery.Celery | str, task_id: str, *, attempt: int | None = None, after: str = "-", count: int = 100
) -> StreamRead:
    """Up to ``count`` frames of a task's stream (its current attempt unless ``attempt``)."""
    engine = context.engine_for(app_or_url)
    execution_id = _execution(engine, task_id)
    if attempt is None:
        attempt = int(engine.read_field(execution_id, CoreField.CURRENT_ATTEMPT_INDEX) or 0)
    return engine_read_frames(engine, execution_id, attempt, after=after, count=count)


def follow(app_or_url: celery.Celery | str, task_id: str, *, block_s: float = 5.0) -> Iterator[tuple[int, Frame]]:
    """Yield (attempt index, frame) as the task writes them, from its current attempt on,
    until its execution ends."""
    engine = context.engine_for(app_or_url)
    yield from follow_execution(engine, _execution(engine, task_id), block_ms=int(block_s * 1000))
