"""Waiting for signals from task code, and sending them from anywhere.

A task waits with :func:`wait_for_signal` (or :func:`waitpoint` first, to hand out its token
before waiting). The first run suspends the execution: the task returns without an outcome,
its worker slot is free, and the result shows ``SUSPENDED`` with the waitpoint's address and
token in ``AsyncResult.info``. When a valid signal arrives the execution becomes runnable, a
worker claims it, and the task runs again from the top; this time the same wait returns the
signals instead of suspending. A wait is identified by its name within the execution, so
code before it runs again on resume (keep it idempotent) and a satisfied wait stays
satisfied for later attempts (retries, crash recovery).

Signals are delivered with :func:`send_signal` (no Celery app needed), the ``ff-celery
signal`` command, or the HTTP endpoint of :mod:`ff_celery.web.signals`; each is
authenticated by the waitpoint's HMAC token.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from typing import Any, Literal
from urllib.parse import quote

import celery
import celery.result
from celery.exceptions import Ignore
from pydantic import BaseModel

from ff_celery.engine import (
    ClaimedTask,
    CloseWaitpoint,
    ExecutionId,
    ReceivedSignal,
    ResumeCondition,
    SignalOutcome,
    TimeoutBehavior,
    WaitpointRecord,
    WaitpointTicket,
    deliver_signal,
    read_signals,
    read_waitpoint,
)
from ff_celery.integration import context
from ff_celery.mapping.states import SUSPENDED, suspended_info

#: How long a waitpoint created ahead of the wait stays open by default (7 days).
DEFAULT_PENDING_EXPIRY_S = 7 * 86_400
_WAITPOINT_NAMESPACE = uuid.UUID("5b0c1f52-8a1e-4d8e-9f0c-ff0ce1e7a001")

OnTimeout = Literal["fail", "cancel", "expire", "auto_resume", "escalate"]


class Suspended(Ignore):
    """Raised by a wait that suspended the execution: the task ends without an outcome and
    runs again when the signals arrive."""

    def __init__(self, waitpoint: Waitpoint) -> None:
        super().__init__(waitpoint)  # the only argument, so it pickles back from a pool child
        self.waitpoint = waitpoint

    def __str__(self) -> str:
        return f"suspended on waitpoint {self.waitpoint.name!r} ({self.waitpoint.waitpoint_id})"


class Signal(BaseModel):
    """A signal that satisfied a wait. ``payload`` is decoded JSON when it was sent as JSON."""

    name: str
    payload: Any = None
    source_type: str = ""
    source_identity: str = ""
    correlation_id: str = ""
    signal_id: str
    accepted_at: int = 0


class Signals(list[Signal]):
    """The signals a wait returned; ``timed_out`` after an ``auto_resume`` timeout (then empty)."""

    def __init__(self, signals: list[Signal] = (), *, timed_out: bool = False) -> None:  # type: ignore[assignment]
        super().__init__(signals)
        self.timed_out = timed_out

    def named(self, name: str) -> Signal | None:
        return next((signal for signal in self if signal.name == name), None)


def _decoded(signal: ReceivedSignal) -> Signal:
    payload: Any = signal.payload
    if payload is not None and signal.payload_encoding == "json":
        with contextlib.suppress(ValueError):
            payload = json.loads(payload)
    return Signal(
        name=signal.name,
        payload=payload,
        source_type=signal.source_type,
        source_identity=signal.source_identity,
        correlation_id=signal.correlation_id,
        signal_id=signal.signal_id,
        accepted_at=signal.accepted_at,
    )


def waitpoint_id_for(execution_id: str, name: str) -> str:
    """The waitpoint id of the wait ``name`` of an execution (stable across its runs)."""
    return str(uuid.uuid5(_WAITPOINT_NAMESPACE, f"{execution_id}/{name}"))


class Waitpoint(BaseModel):
    """Where a signal for a waiting task goes, and the token that authenticates it."""

    name: str
    execution_id: str
    waitpoint_id: str
    token: str
    task_id: str = ""

    @property
    def address(self) -> str:
        """``<execution id>/<waitpoint id>``, as the HTTP endpoint's path takes it."""
        return f"{self.execution_id}/{self.waitpoint_id}"

    def callback_url(self, base_url: str, signal_name: str) -> str:
        """A URL that delivers ``signal_name`` through :mod:`ff_celery.web.signals` (the
        token travels in the query string, for webhook callers that cannot set headers)."""
        return (
            f"{base_url.rstrip('/')}/v1/signals/{quote(self.execution_id, safe='')}/{self.waitpoint_id}/"
            f"{quote(signal_name, safe='')}?token={quote(self.token, safe='')}"
        )

    def wait(
        self,
        *signal_names: str,
        match: Literal["any", "all"] = "any",
        timeout: float | None = None,
        on_timeout: OnTimeout = "fail",
    ) -> Signals:
        """Wait on this waitpoint; see :func:`wait_for_signal`."""
        return wait_for_signal(*signal_names, name=self.name, match=match, timeout=timeout, on_timeout=on_timeout)


def _record(claim: ClaimedTask, name: str) -> WaitpointRecord | None:
    return read_waitpoint(claim.engine, claim.execution_id, waitpoint_id_for(claim.execution_id, name))


def _received(claim: ClaimedTask, record: WaitpointRecord) -> Signals:
    signals = read_signals(claim.engine, claim.execution_id, record.matched_signal_ids)
    return Signals([_decoded(signal) for signal in signals])


def _waitpoint(task: celery.Task, claim: ClaimedTask, name: str, ticket: WaitpointTicket) -> Waitpoint:
    return Waitpoint(
        name=name,
        execution_id=str(claim.execution_id),
        waitpoint_id=ticket.waitpoint_id,
        token=ticket.token,
        task_id=task.request.id or "",
    )


def _usable_pending(record: WaitpointRecord | None, claim: ClaimedTask, now_ms: int) -> bool:
    return (
        record is not None
        and record.state == "pending"
        and record.attempt_index == claim.attempt_index
        and (record.expires_at is None or record.expires_at > now_ms)
    )


def _retire(claim: ClaimedTask, record: WaitpointRecord | None) -> None:
    """Close an open waitpoint of an earlier attempt so this attempt can use its id."""
    if record is not None and record.state in ("pending", "active"):
        claim.engine.call(
            CloseWaitpoint(execution_id=claim.execution_id, waitpoint_id=record.waitpoint_id, reason="superseded")
        )


def waitpoint(name: str = "default", *, expires_in: float = DEFAULT_PENDING_EXPIRY_S) -> Waitpoint:
    """This task's waitpoint ``name``, created now (before waiting on it) so its address and
    token can be handed out; signals sent before the task waits are kept and count then."""
    task, claim = context.current_claim()
    engine = claim.engine
    record = _record(claim, name)
    if record is not None and (record.resumed or _usable_pending(record, claim, engine.now_ms())):
        return _waitpoint(task, claim, name, record.ticket())
    _retire(claim, record)
    ticket = claim.create_pending_waitpoint(
        waitpoint_id_for(claim.execution_id, name), name, engine.now_ms() + int(expires_in * 1000)
    )
    return _waitpoint(task, claim, name, ticket)


def wait_for_signal(
    *signal_names: str,
    name: str | None = None,
    match: Literal["any", "all"] = "any",
    timeout: float | None = None,
    on_timeout: OnTimeout = "fail",
) -> Signals:
    """Suspend the running task until a signal named one of ``signal_names`` (``match="any"``)
    or each of them (``"all"``) arrives; no names accepts any signal.

    Returns the signals when the task runs again after them. ``timeout`` (seconds) applies
    ``on_timeout``: ``fail`` (the task fails), ``cancel`` / ``expire`` (revoked),
    ``auto_resume`` (the task runs again and the wait returns no signals, ``timed_out``), or
    ``escalate`` (it stays suspended for an operator, without timeout).
    """
    task, claim = context.current_claim()
    engine = claim.engine
    name = name or "+".join(signal_names) or "any"
    record = _record(claim, name)
    if record is not None and record.resumed:
        return _received(claim, record)
    if record is not None and record.state == "closed" and record.close_reason == "timed_out_auto_resume":
        return Signals([], timed_out=True)
    use_pending = _usable_pending(record, claim, engine.now_ms())
    if not use_pending:
        _retire(claim, record)
    behavior: TimeoutBehavior = "auto_resume_with_timeout_signal" if on_timeout == "auto_resume" else on_timeout
    condition = ResumeCondition(signal_names=signal_names, match=match, timeout_behavior=behavior)
    timeout_at = engine.now_ms() + int(timeout * 1000) if timeout is not None else None
    suspension = claim.suspend(
        waitpoint_id_for(claim.execution_id, name),
        condition,
        waitpoint_key="" if use_pending else name,
        timeout_at=timeout_at,
        use_pending=use_pending,
    )
    if suspension.already_satisfied:  # signals sent ahead of the wait met it: go on
        record = _record(claim, name)
        return _received(claim, record) if record is not None else Signals()
    waiting = _waitpoint(task, claim, name, suspension.waitpoint)
    info = suspended_info(waiting.model_dump(), list(signal_names), timeout_at)
    task.backend.store_result(task.request.id, info, SUSPENDED, request=task.request)
    if task.app.conf.worker_send_task_events:  # monitors (Flower, celery events) show it SUSPENDED
        task.send_event("task-suspended", waitpoint_id=waiting.waitpoint_id, signal_names=list(signal_names))
    raise Suspended(waiting)


def suspended_waitpoint(result: celery.result.AsyncResult) -> Waitpoint | None:
    """The waitpoint a ``SUSPENDED`` task waits on (from its result info), else None."""
    meta = result.backend.get_task_meta(result.id)  # state and info from one read
    info = meta.get("result")
    if meta["status"] != SUSPENDED or not isinstance(info, dict) or not info.get("waitpoint"):
        return None
    return Waitpoint.model_validate(info["waitpoint"])


def send_signal(
    url: str,
    execution_id: str,
    waitpoint_id: str,
    token: str,
    name: str,
    payload: Any = None,
    *,
    idempotency_key: str = "",
    source_identity: str = "",
    source_type: str = "external",
    correlation_id: str = "",
) -> SignalOutcome:
    """Deliver a signal to a waitpoint from any process (``url``: the Valkey/Redis, as
    ``redis://`` or ``flowfabric://``). ``payload`` is sent as JSON unless it is bytes. A
    wrong, forged, expired or rotated-out token raises the engine's ``ValidationError``."""
    raw = payload if isinstance(payload, bytes) else b"" if payload is None else json.dumps(payload).encode()
    return deliver_signal(
        context.engine_for_url(url),
        ExecutionId(execution_id),
        waitpoint_id,
        token,
        name,
        raw,
        source_type=source_type,
        source_identity=source_identity,
        idempotency_key=idempotency_key,
        correlation_id=correlation_id,
        payload_encoding="binary" if isinstance(payload, bytes) else "json",
    )


__all__ = [
    "SUSPENDED",
    "Signal",
    "Signals",
    "Suspended",
    "Waitpoint",
    "send_signal",
    "suspended_waitpoint",
    "wait_for_signal",
    "waitpoint",
    "waitpoint_id_for",
]
