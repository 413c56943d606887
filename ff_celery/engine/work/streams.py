"""Reading attempt output streams: a range of frames, or following a stream live until it
closes (``XREAD BLOCK`` outside Lua, as FlowFabric's SDK tails). Writing is the lease
holder's ``ff_append_frame`` (:meth:`ClaimedTask.append_frame`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ff_celery.engine import functions as fn
from ff_celery.engine.core.decoding import optional_integer
from ff_celery.engine.core.errors import error_for_code
from ff_celery.engine.core.exec_core import CoreField
from ff_celery.engine.core.ids import ExecutionId
from ff_celery.engine.core.keys import ExecKeys

if TYPE_CHECKING:
    from ff_celery.engine.core.engine import Engine

#: FlowFabric's ceilings: frames per read, and how long one tail call may block.
MAX_READ_COUNT = 10_000
MAX_TAIL_BLOCK_MS = 30_000


def read_frames(
    engine: Engine,
    execution_id: ExecutionId,
    attempt_index: int,
    *,
    after: str = "-",
    count: int = 100,
    visibility: fn.Visibility = "all",
) -> fn.StreamRead:
    """Up to ``count`` frames from ``after`` (inclusive; ``-`` = the beginning), and whether
    the stream is closed."""
    request = fn.ReadAttemptStream(
        execution_id=execution_id, attempt_index=attempt_index, from_id=after, count_limit=count, visibility=visibility
    )
    return engine.call(request)


def follow_frames(
    engine: Engine,
    execution_id: ExecutionId,
    attempt_index: int,
    *,
    after: str = "0-0",
    block_ms: int = 5_000,
    count: int = 100,
) -> Iterator[fn.Frame]:
    """Frames after ``after`` as they are appended, until the attempt's stream closes (each
    wait blocks at most ``block_ms``, which FlowFabric caps at 30 s)."""
    if not 0 < block_ms <= MAX_TAIL_BLOCK_MS:
        raise error_for_code("invalid_input", [f"block_ms must be 1..{MAX_TAIL_BLOCK_MS}, got {block_ms}"])
    if not 0 < count <= MAX_READ_COUNT:
        raise error_for_code("invalid_input", [f"count must be 1..{MAX_READ_COUNT}, got {count}"])
    keys = ExecKeys(execution_id)
    stream, meta = keys.stream(attempt_index), keys.stream_meta(attempt_index)
    last_id, closed = after, False
    while True:
        batch = engine.batch()
        batch.command("xread", {stream: last_id}, count=count, block=None if closed else block_ms)
        batch.command("hget", meta, "closed_at")
        entries, closed_at = batch.execute()
        for _, items in entries or []:
            for entry_id, fields in items:
                last_id = entry_id.decode()
                yield fn.Frame(id=last_id, fields={k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()})
        if closed and not entries:
            return
        closed = closed or bool(closed_at)  # once closed, drain what is left without blocking


def follow_execution(
    engine: Engine, execution_id: ExecutionId, *, block_ms: int = 5_000
) -> Iterator[tuple[int, fn.Frame]]:
    """(attempt index, frame) as the execution writes them, from its current attempt on and
    across later attempts (a retry or a recovery opens a new stream), until it has ended."""
    attempt = None
    while True:
        core = engine.read_core(execution_id, CoreField.CURRENT_ATTEMPT_INDEX, CoreField.LIFECYCLE_PHASE)
        current = optional_integer(core.get(CoreField.CURRENT_ATTEMPT_INDEX))
        if current is not None and current != attempt:
            attempt = current
            for frame in follow_frames(engine, execution_id, attempt, block_ms=block_ms):
                yield attempt, frame
            continue  # closed: the execution ended, or another attempt follows
        if core.get(CoreField.LIFECYCLE_PHASE) in ("terminal", None):
            return
        time.sleep(0.2)  # not started yet, or between attempts
