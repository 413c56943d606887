"""Typed calls of attempt output streams (``lua/stream.lua``): append a frame, read a range of
frames, read the rolling summary document.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel

from ff_celery.engine.core.decoding import text
from ff_celery.engine.functions.base import ExecutionFcall, Fence, Reply, decode_reply, optional_number

__all__ = [
    "AppendFrame",
    "Appended",
    "Frame",
    "ReadAttemptStream",
    "ReadSummary",
    "StreamMode",
    "StreamRead",
    "Summary",
    "Visibility",
]

StreamMode = Literal["durable", "summary", "best_effort"]
Visibility = Literal["all", "exclude_best_effort"]

# -- results --------------------------------------------------------------------------------


class Appended(BaseModel):
    entry_id: str
    frame_count: int  # lifetime appends to this attempt's stream, not the retained length
    summary_version: int | None  # summary frames only


class Frame(BaseModel):
    """One stream entry: its id and its fields in stored order."""

    id: str
    fields: dict[str, str]

    @property
    def frame_type(self) -> str:
        return self.fields.get("frame_type", "")

    @property
    def payload(self) -> str:
        return self.fields.get("payload", "")

    @property
    def mode(self) -> str:
        """``durable`` / ``summary`` / ``best_effort``; frames without one count as durable."""
        return self.fields.get("mode", "durable")


class StreamRead(BaseModel):
    frames: list[Frame]
    closed_at: int | None
    closed_reason: str | None

    @property
    def closed(self) -> bool:
        return self.closed_at is not None


class Summary(BaseModel):
    """The rolling summary document of an attempt (version 0 when none was written)."""

    document: Any  # the decoded JSON document; None when there is none
    version: int
    patch_kind: str
    last_updated_ms: int
    first_applied_ms: int


# -- calls ----------------------------------------------------------------------------------


class AppendFrame(ExecutionFcall[Appended]):
    """``ff_append_frame``: the lease holder appends one frame to its attempt's stream.

    ``ts=None`` stamps the frame with engine time. ``summary`` frames carry a JSON merge
    patch (RFC 7396; the string ``"__ff_null__"`` sets a value to null) applied to the
    attempt's summary document. ``best_effort`` frames are trimmed by an append-rate
    estimate and expire after ``2 * ttl_ms`` unless a durable frame was written.
    ``retention_maxlen`` trims durable frames exactly (0: about 10 000).
    """

    function = "ff_append_frame"
    attempt_index: int
    fence: Fence
    frame_type: str
    payload: bytes | str = b""
    ts: int | None = None
    encoding: str = "utf8"
    correlation_id: str = ""
    source: str = "worker"
    retention_maxlen: int = 10_000
    max_payload_bytes: int = 65_536
    mode: StreamMode = "durable"
    patch_kind: str = ""  # "" or "json-merge-patch"
    ttl_ms: int = 0
    maxlen_floor: int = 0  # 0: 64
    maxlen_ceiling: int = 0  # 0: 16384
    ema_alpha: float = 0  # outside (0, 1]: 0.2

    def keys(self) -> list[str]:
        x = self.exec_keys
        i = self.attempt_index
        return [x.core, x.stream(i), x.stream_meta(i), x.stream_summary(i)]

    def argv(self) -> list[str | bytes]:
        return [
            self.execution_id,
            str(self.attempt_index),
            self.fence.lease_id,
            str(self.fence.lease_epoch),
            self.frame_type,
            optional_number(self.ts),
            self.payload,
            self.encoding,
            self.correlation_id,
            self.source,
            str(self.retention_maxlen),
            self.fence.attempt_id,
            str(self.max_payload_bytes),
            self.mode,
            self.patch_kind,
            str(self.ttl_ms),
            str(self.maxlen_floor),
            str(self.maxlen_ceiling),
            f"{self.ema_alpha:.6f}",
        ]

    def parse(self, reply: Reply) -> Appended:
        entry_id, frame_count, version = reply.fields[:3]
        return Appended(
            entry_id=entry_id, frame_count=int(frame_count), summary_version=int(version) if version else None
        )


class ReadAttemptStream(ExecutionFcall[StreamRead]):
    """``ff_read_attempt_stream``: up to ``count_limit`` frames (1..10 000) between two ids
    (``-`` / ``+`` / a concrete id, inclusive), plus whether the stream is closed."""

    function = "ff_read_attempt_stream"
    attempt_index: int
    from_id: str = "-"
    to_id: str = "+"
    count_limit: int = 100
    visibility: Visibility = "all"

    def keys(self) -> list[str]:
        return [self.exec_keys.stream(self.attempt_index), self.exec_keys.stream_meta(self.attempt_index)]

    def argv(self) -> list[str | bytes]:
        return [self.from_id, self.to_id, str(self.count_limit), self.visibility]

    def interpret(self, raw: Any) -> StreamRead:
        # the frames are a nested array, which the flat decoding would stringify
        reply = decode_reply(raw, self.function, self.subject)
        closed_at, closed_reason = reply.fields[1:3]
        return StreamRead(
            frames=[_frame(entry) for entry in raw[2]],
            closed_at=int(closed_at) if closed_at else None,
            closed_reason=closed_reason or None,
        )


def _frame(entry: list[Any]) -> Frame:
    entry_id, flat = entry
    return Frame(id=text(entry_id), fields={text(flat[i]): text(flat[i + 1]) for i in range(0, len(flat) - 1, 2)})


class ReadSummary(ExecutionFcall[Summary]):
    """``ff_read_summary``: the attempt's summary document."""

    function = "ff_read_summary"
    attempt_index: int

    def keys(self) -> list[str]:
        return [self.exec_keys.stream_summary(self.attempt_index)]

    def argv(self) -> list[str | bytes]:
        return []

    def parse(self, reply: Reply) -> Summary:
        document, version, patch_kind, last_updated_ms, first_applied_ms = reply.fields[:5]
        return Summary(
            document=json.loads(document) if document else None,
            version=int(version or 0),
            patch_kind=patch_kind,
            last_updated_ms=int(last_updated_ms or 0),
            first_applied_ms=int(first_applied_ms or 0),
        )
