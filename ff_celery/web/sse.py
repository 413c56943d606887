"""Live updates as server-sent events: an execution's state and its streamed frames (across
attempts), and a flow's member states. Each stream reads the engine every ``POLL_S`` in a
worker thread and sends only what changed; it ends when the execution or flow has ended, or
when the browser goes away."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ff_celery.engine import CoreField, Engine, EngineError, ExecutionId, optional_integer, read_frames, resolve_target
from ff_celery.web import reads

#: Seconds between two reads of a live stream.
POLL_S = 0.5
#: Frames sent per read at most.
FRAMES_PER_READ = 100
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # nginx: do not buffer the stream
ENDED = ("completed", "failed", "cancelled", "expired", "skipped")


def event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


class ExecutionFollower:
    """Reads an execution's state and the frames of its current attempt written since the last read."""

    def __init__(self, engine: Engine, execution_id: ExecutionId) -> None:
        self.engine, self.execution_id = engine, execution_id
        self.attempt: int | None = None
        self.last_frame = ""

    def read(self) -> tuple[dict[str, str], list[dict[str, str]]]:
        core = self.engine.read_core(
            self.execution_id,
            CoreField.PUBLIC_STATE,
            CoreField.CURRENT_ATTEMPT_INDEX,
            CoreField.PROGRESS_PCT,
            CoreField.PROGRESS_MESSAGE,
        )
        attempt = optional_integer(core.get(CoreField.CURRENT_ATTEMPT_INDEX))
        if attempt != self.attempt:
            self.attempt, self.last_frame = attempt, ""
        if attempt is None:
            return core, []
        read = read_frames(self.engine, self.execution_id, attempt, after=self.last_frame or "-", count=FRAMES_PER_READ)
        new = [frame for frame in read.frames if frame.id != self.last_frame]  # ``after`` is inclusive
        if new:
            self.last_frame = new[-1].id
        return core, [{"attempt": str(attempt), "id": frame.id, **frame.fields} for frame in new]


async def _execution_events(request: Request, follower: ExecutionFollower) -> AsyncIterator[str]:
    shown: dict[str, str] | None = None
    while not await request.is_disconnected():
        core, new_frames = await run_in_threadpool(follower.read)
        for frame in new_frames:
            yield event("frame", frame)
        if core != shown:
            shown = core
            yield event("state", core)
        if core.get(CoreField.PUBLIC_STATE, "") in ENDED and not new_frames:
            yield event("end", {})
            return
        await asyncio.sleep(POLL_S)


def execution_events(request: Request) -> Response:
    console = request.app.state.console
    try:
        execution_id = resolve_target(console.engine, request.query_params.get("id", ""))
    except EngineError as exc:
        return Response(str(exc), status_code=404)
    follower = ExecutionFollower(console.engine, execution_id)
    return StreamingResponse(_execution_events(request, follower), media_type="text/event-stream", headers=HEADERS)


async def _flow_events(request: Request, engine: Engine, flow_id: str) -> AsyncIterator[str]:
    shown: dict[str, str] | None = None
    while not await request.is_disconnected():
        states = await run_in_threadpool(reads.member_states, engine, flow_id)
        if states != shown:
            shown = states
            yield event("states", states)
        if all(state in ENDED for state in states.values()):
            yield event("end", {})
            return
        await asyncio.sleep(POLL_S)


def flow_events(request: Request) -> Response:
    console = request.app.state.console
    flow_id = request.query_params.get("id", "")
    try:
        reads.member_states(console.engine, flow_id)
    except EngineError as exc:
        return Response(str(exc), status_code=404)
    return StreamingResponse(_flow_events(request, console.engine, flow_id), media_type="text/event-stream",
                             headers=HEADERS)  # fmt: skip


ROUTES = [Route("/events/execution", execution_events), Route("/events/flow", flow_events)]
