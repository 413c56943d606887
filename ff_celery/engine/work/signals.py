"""Waitpoints and signals from Python: the HMAC keystore (seed, rotate, list), delivering a
signal (falling back to buffering when the waitpoint is still pending), operator resume,
and reading what a waitpoint received.

The keystore is seeded the way FlowFabric's server does it at boot: ``current_kid = k1`` and
its hex secret on every flow partition that has none. The secret comes from the argument,
else ``FF_WAITPOINT_HMAC_SECRET``, else the secret already seeded on another partition, else
a new random one (kept in Valkey, so every process agrees on it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from ff_celery.engine import functions as fn
from ff_celery.engine.core import metrics
from ff_celery.engine.core.decoding import decode_hash, optional_integer, text
from ff_celery.engine.core.errors import EngineError, error_for_code
from ff_celery.engine.core.exec_core import CoreField
from ff_celery.engine.core.ids import ExecutionId, new_uuid
from ff_celery.engine.core.keys import ExecKeys, PartitionKeys

if TYPE_CHECKING:
    from ff_celery.engine.core.engine import Engine

try:
    from opentelemetry import trace as otel_trace
except ImportError:  # tracing is optional (ff-celery[tracing])
    otel_trace = None

log = logging.getLogger(__name__)

R = TypeVar("R")

SECRET_ENV = "FF_WAITPOINT_HMAC_SECRET"
DEFAULT_KID = "k1"
#: FlowFabric's grace for tokens of a rotated-out key (FF_WAITPOINT_HMAC_GRACE_MS default).
DEFAULT_GRACE_MS = 86_400_000
#: FlowFabric's HTTP limit on a signal request body; ff_celery applies it to payloads.
MAX_SIGNAL_PAYLOAD_BYTES = 256 * 1024


class ReceivedSignal(BaseModel):
    """A signal as recorded on the execution."""

    signal_id: str
    name: str
    category: str = ""
    source_type: str = ""
    source_identity: str = ""
    correlation_id: str = ""
    accepted_at: int = 0
    payload: bytes | None = None
    payload_encoding: str = ""


class WaitpointRecord(BaseModel):
    """A waitpoint hash plus the ids of the signals that satisfied its matchers."""

    waitpoint_id: str
    waitpoint_key: str
    execution_id: str
    attempt_index: int | None
    state: str
    token: str
    created_at: int
    expires_at: int | None
    close_reason: str
    matched_signal_ids: list[str]
    #: The signal names its matchers wait for (empty: any signal).
    signal_names: list[str] = []

    @property
    def resumed(self) -> bool:
        return self.state == "closed" and self.close_reason == "resumed"

    def ticket(self) -> fn.WaitpointTicket:
        return fn.WaitpointTicket(waitpoint_id=self.waitpoint_id, waitpoint_key=self.waitpoint_key, token=self.token)


# -- the keystore -----------------------------------------------------------------------------


def seed_waitpoint_secret(engine: Engine, secret_hex: str | None = None, kid: str = DEFAULT_KID) -> str:
    """Give every flow partition a waitpoint HMAC key where it has none; answers the secret
    in use. A partition whose stored secret differs from ``secret_hex`` keeps its own."""
    partitions = range(engine.partitions.num_flow_partitions)
    batch = engine.batch()
    for partition in partitions:
        batch.command("hgetall", PartitionKeys(partition).waitpoint_hmac)
    stores = [decode_hash(raw) for raw in batch.execute()]
    secret_hex = secret_hex or os.environ.get(SECRET_ENV) or _seeded_secret(stores)
    if secret_hex is None:
        secret_hex = secrets.token_hex(32)
        log.warning("no waitpoint HMAC secret configured (%s); generated one and stored it in Valkey", SECRET_ENV)
    if not secret_hex or len(secret_hex) % 2 or any(c not in "0123456789abcdefABCDEF" for c in secret_hex):
        raise error_for_code("invalid_secret_hex", ["the waitpoint HMAC secret must be even-length hex"])

    writes = engine.batch()
    for partition, store in zip(partitions, stores):
        key = PartitionKeys(partition).waitpoint_hmac
        current = store.get("current_kid")
        if current is None:
            writes.command("hsetnx", key, "current_kid", kid)
            writes.command("hsetnx", key, f"secret:{kid}", secret_hex)
        elif f"secret:{current}" not in store:
            writes.command("hsetnx", key, f"secret:{current}", secret_hex)  # repair a torn write
        elif store[f"secret:{current}"] != secret_hex:
            log.warning(
                "partition %d keeps its own waitpoint secret (kid %s), not the configured one", partition, current
            )
    writes.execute()
    return secret_hex


def _seeded_secret(stores: list[dict[str, str]]) -> str | None:
    for store in stores:
        kid = store.get("current_kid")
        if kid and f"secret:{kid}" in store:
            return store[f"secret:{kid}"]
    return None


def rotate_waitpoint_secret(
    engine: Engine, new_kid: str, new_secret_hex: str, grace_ms: int = DEFAULT_GRACE_MS
) -> list[fn.Rotation]:
    """Install a new signing key on every flow partition; tokens of the previous key keep
    validating for ``grace_ms``. Raises the first partition's error (e.g. rotation_conflict)."""
    outcomes = engine.call_many(
        [
            fn.RotateWaitpointSecret(partition=p, new_kid=new_kid, new_secret_hex=new_secret_hex, grace_ms=grace_ms)
            for p in range(engine.partitions.num_flow_partitions)
        ]
    )
    for outcome in outcomes:
        if isinstance(outcome, EngineError):
            raise outcome
    return outcomes


def waitpoint_kids(engine: Engine, partition: int = 0) -> fn.Keystore:
    return engine.call(fn.ListWaitpointKids(partition=partition))


def call_with_keystore(engine: Engine, request: fn.Fcall[R]) -> R:
    """Run a call that mints a token, seeding the keystore first if it was never seeded."""
    try:
        return engine.call(request)
    except EngineError as exc:
        if exc.code != "hmac_secret_not_initialized":
            raise
    seed_waitpoint_secret(engine)
    return engine.call(request)


# -- signals ----------------------------------------------------------------------------------


def text_encoding(payload: bytes) -> str:
    """The encoding a payload typed by a person is recorded with: ``json`` when it parses as
    JSON (empty counts as null), else ``text``."""
    try:
        json.loads(payload or b"null")
    except ValueError:
        return "text"
    return "json"


def deliver_signal(
    engine: Engine,
    execution_id: ExecutionId,
    waitpoint_id: str,
    token: str,
    name: str,
    payload: bytes = b"",
    *,
    source_type: str = "external",
    source_identity: str = "",
    category: str = "signal",
    idempotency_key: str = "",
    correlation_id: str = "",
    payload_encoding: str = "json",
) -> fn.SignalOutcome:
    """Deliver a signal to a waitpoint, authenticated by its token. A pending waitpoint (the
    task has not suspended yet) buffers it; it counts when the task suspends. Wakes claimers
    when the signal resumed the execution. Counted in ``ff_signals_total`` by outcome."""
    options = {
        "signal_category": category,
        "source_type": source_type,
        "source_identity": source_identity,
        "payload_encoding": payload_encoding,
        "idempotency_key": idempotency_key,
        "correlation_id": correlation_id,
    }
    try:
        with _signal_span(name, execution_id, waitpoint_id):
            outcome = _deliver(engine, execution_id, waitpoint_id, token, name, payload, options)
    except EngineError as exc:
        metrics.SIGNALS.labels(exc.code).inc()
        raise
    metrics.SIGNALS.labels(_signal_outcome(outcome)).inc()
    return outcome


def _signal_span(name: str, execution_id: str, waitpoint_id: str) -> contextlib.AbstractContextManager[Any]:
    """An OpenTelemetry ``signal <name>`` span in the caller's trace (none without the API)."""
    if otel_trace is None:
        return contextlib.nullcontext()
    attributes = {"ff.execution_id": execution_id, "ff.waitpoint_id": waitpoint_id, "ff.signal_name": name}
    return otel_trace.get_tracer("ff_celery").start_as_current_span(f"signal {name}", attributes=attributes)


def _signal_outcome(outcome: fn.SignalOutcome) -> str:
    if outcome.duplicate:
        return "duplicate"
    return "buffered" if outcome.effect == "buffered_for_pending_waitpoint" else "delivered"


def _deliver(
    engine: Engine,
    execution_id: ExecutionId,
    waitpoint_id: str,
    token: str,
    name: str,
    payload: bytes,
    options: dict[str, str],
) -> fn.SignalOutcome:
    if len(payload) > MAX_SIGNAL_PAYLOAD_BYTES:
        raise error_for_code(
            "payload_too_large", [f"signal payload of {len(payload)} bytes exceeds {MAX_SIGNAL_PAYLOAD_BYTES}"]
        )
    lane = engine.read_field(execution_id, CoreField.LANE_ID) or "default"
    fields = {
        "execution_id": execution_id,
        "signal_id": new_uuid(),
        "waitpoint_id": waitpoint_id,
        "signal_name": name,
        "payload": payload,
        "waitpoint_token": token,
        **options,
    }
    try:
        outcome = engine.call(fn.DeliverSignal(**fields, lane_id=lane))
    except EngineError as exc:
        if exc.code != "waitpoint_pending_use_buffer_script":
            raise
        return engine.call(fn.BufferSignal(**fields))
    if outcome.resumed:
        engine.wake(lane)
    return outcome


def resume_execution(engine: Engine, execution_id: ExecutionId, resume_delay_ms: int = 0) -> str:
    """Operator resume of a suspended execution (no signal); answers waiting / delayed."""
    core = engine.read_core(execution_id, CoreField.LANE_ID, CoreField.CURRENT_WAITPOINT_ID)
    if not core.get(CoreField.CURRENT_WAITPOINT_ID):
        raise error_for_code("execution_not_suspended", [], execution_id=execution_id)
    lane = core.get(CoreField.LANE_ID) or "default"
    public = engine.call(
        fn.ResumeExecution(
            execution_id=execution_id,
            lane_id=lane,
            waitpoint_id=core[CoreField.CURRENT_WAITPOINT_ID],
            resume_delay_ms=resume_delay_ms,
        )
    )
    engine.wake(lane)
    return public


def read_waitpoint(engine: Engine, execution_id: ExecutionId, waitpoint_id: str) -> WaitpointRecord | None:
    """A waitpoint of the execution, or None if it does not exist."""
    keys = ExecKeys(execution_id)
    batch = engine.batch()
    batch.command("hgetall", keys.waitpoint(waitpoint_id))
    batch.command("hgetall", keys.waitpoint_condition(waitpoint_id))
    raw, condition = batch.execute()
    if not raw:
        return None
    total = optional_integer(condition.get(b"total_matchers")) or 0
    names = [text(condition.get(f"matcher:{i}:name".encode())) for i in range(total)]
    matched = [
        text(condition.get(f"matcher:{i}:signal_id".encode()))
        for i in range(total)
        if condition.get(f"matcher:{i}:satisfied".encode()) == b"1"
    ]
    return WaitpointRecord(
        waitpoint_id=waitpoint_id,
        waitpoint_key=text(raw.get(b"waitpoint_key")),
        execution_id=text(raw.get(b"execution_id")),
        attempt_index=optional_integer(raw.get(b"attempt_index")),
        state=text(raw.get(b"state")),
        token=text(raw.get(b"waitpoint_token")),
        created_at=optional_integer(raw.get(b"created_at")) or 0,
        expires_at=optional_integer(raw.get(b"expires_at")),
        close_reason=text(raw.get(b"close_reason")),
        matched_signal_ids=matched,
        signal_names=[name for name in names if name],
    )


def read_signals(engine: Engine, execution_id: ExecutionId, signal_ids: list[str]) -> list[ReceivedSignal]:
    """The recorded signals (with payloads), in the given order; missing ones are skipped."""
    keys = ExecKeys(execution_id)
    batch = engine.batch()
    for signal_id in signal_ids:
        batch.command("hgetall", keys.signal(signal_id))
        batch.command("get", keys.signal_payload(signal_id))
    replies = batch.execute()
    signals = []
    for raw, payload in zip(replies[::2], replies[1::2]):
        if raw:
            signals.append(
                ReceivedSignal(
                    signal_id=text(raw.get(b"signal_id")),
                    name=text(raw.get(b"signal_name")),
                    category=text(raw.get(b"signal_category")),
                    source_type=text(raw.get(b"source_type")),
                    source_identity=text(raw.get(b"source_identity")),
                    correlation_id=text(raw.get(b"correlation_id")),
                    accepted_at=optional_integer(raw.get(b"accepted_at")) or 0,
                    payload=payload,
                    payload_encoding=text(raw.get(b"payload_encoding")),
                )
            )
    return signals


def resume_signals(engine: Engine, execution_id: ExecutionId, attempt_index: int) -> list[ReceivedSignal]:
    """The signals that resumed this attempt (empty after a timeout or operator resume)."""
    batch = engine.batch()
    batch.command("hgetall", ExecKeys(execution_id).suspension_current)
    (raw,) = batch.execute()
    if (
        not raw
        or optional_integer(raw.get(b"attempt_index")) != attempt_index
        or raw.get(b"close_reason") != b"resumed"
        or not raw.get(b"waitpoint_id")
    ):
        return []
    satisfiers = text(raw.get(b"all_satisfier_signals"))
    if satisfiers:
        decoded = json.loads(satisfiers)
        ids = [str(signal_id) for signal_id in decoded] if isinstance(decoded, list) else []
    else:
        record = read_waitpoint(engine, execution_id, text(raw.get(b"waitpoint_id")))
        ids = record.matched_signal_ids if record else []
    return read_signals(engine, execution_id, ids)
