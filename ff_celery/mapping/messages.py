"""Kombu messages <-> FlowFabric executions.

Publishing: a raw kombu message (Celery task or not) becomes one execution on the lane named
after its queue; the whole message is the payload so it can be delivered verbatim. Celery's
priority, ``eta`` (from ``countdown``/``eta``) and ``expires`` become FlowFabric priority, a
delayed execution and a deadline; the task's retry options arrive in the ``ff_policy``
header (set by :class:`ff_celery.integration.task.Task`).

Delivering: the claimed execution's fence goes into the ``ff`` header (the task sees it as
``self.request.ff``), ``retries`` is the engine's retry count, ``eta`` is cleared (the engine
already held the execution until it was due), and the delivery tag names the lease.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

from celery.utils.time import maybe_iso8601, maybe_make_aware
from kombu.serialization import loads
from kombu.utils import json

from ff_celery.engine import (
    KEEP_FOREVER_MS,
    ClaimedTask,
    ExecutionPolicy,
    ExecutionSpec,
    ValidationError,
    canonical_uuid,
)
from ff_celery.mapping.numbers import (
    DELAY_S,
    EXPIRATION_MS,
    EXPIRATION_S,
    NESTING,
    PRIORITY,
    RETRIES,
    OutOfRange,
    optional_time_limits,
)

#: FlowFabric namespace of the executions that carry kombu messages (task ids are aliased in it).
NAMESPACE = "celery"
#: Header carrying the execution policy JSON from the publisher.
POLICY_HEADER = "ff_policy"
#: Header carrying the fence and attempt to the worker.
FENCE_HEADER = "ff"
#: Headers putting the execution under budgets (a list of ids or names) and a quota.
BUDGETS_HEADER = "ff_budgets"
QUOTA_HEADER = "ff_quota"
#: Header (or ``apply_async`` option) with the task's retention in seconds; None: forever.
RETENTION_HEADER = "ff_retention"
#: Header making the task a member of a flow (:class:`FlowStep`, set by ff_celery.mapping.canvas).
FLOW_HEADER = "ff_flow"
#: Tag marking executions that are Celery tasks (their name is the value).
TASK_TAG = "celery.task"
TASK_ID_TAG = "celery.id"
MAX_LANE_BYTES = 64


class PublishError(ValidationError):
    """A message the transport refuses to publish; nothing was created."""

    def __init__(self, reason: str) -> None:
        super().__init__("invalid_input", [reason], message="message refused")


@dataclass(frozen=True)
class FlowStep:
    """A task's place in a flow, as its :data:`FLOW_HEADER` carries it: the flow, the task
    ids it runs after, how it receives their results (``one``: the first argument, ``list``:
    a list of them as the first argument, empty: not at all), its own ``countdown`` (seconds)
    or ``eta`` counted from when it may run, and the chord body whose errbacks its failure
    calls (a signature dict)."""

    flow_id: str
    after: list[str] = field(default_factory=list)
    passes: str = ""
    countdown: float | None = None
    eta: str | None = None
    chord_body: dict[str, Any] | None = None

    def header(self) -> dict[str, Any]:
        header = {"flow": self.flow_id, "after": self.after, "passes": self.passes}
        extras = {"countdown": self.countdown, "eta": self.eta, "chord_body": self.chord_body}
        return header | {name: value for name, value in extras.items() if value is not None}

    @classmethod
    def from_header(cls, value: Any) -> FlowStep | None:
        """The step a header carries (None for no header); PublishError if malformed."""
        if value is None:
            return None
        try:
            after = value["after"]
            if not isinstance(after, list) or not all(isinstance(t, str) and t for t in after):
                raise ValueError("after must be a list of task ids")
            countdown = value.get("countdown")
            if countdown is not None:
                countdown = DELAY_S.check(countdown, "countdown (seconds)")
            chord_body = value.get("chord_body")
            if chord_body is not None and not isinstance(chord_body, dict):
                raise ValueError("chord_body must be a signature")
            step = cls(
                canonical_uuid(value["flow"], "flow id"),
                after,
                value["passes"],
                countdown,
                value.get("eta"),
                chord_body,
            )
        except (TypeError, KeyError, ValueError, AttributeError, ValidationError) as exc:
            raise PublishError(f"{FLOW_HEADER} header is malformed ({exc}): {value!r}") from None
        if step.passes not in ("", "one", "list"):
            raise PublishError(f"{FLOW_HEADER} passes must be '', 'one' or 'list', got {step.passes!r}")
        _epoch_ms(step.eta, f"{FLOW_HEADER} eta")
        return step

    def runnable_from(self, now_ms: int) -> int | None:
        """When a member that may run at ``now_ms`` should start, if later (its own delay)."""
        due = max(now_ms + int((self.countdown or 0) * 1000), _epoch_ms(self.eta, "eta") or 0)
        return due if due > now_ms else None


@dataclass(frozen=True)
class Submission:
    """What a published message becomes: the execution to create and, for a canvas member,
    its place in its flow."""

    spec: ExecutionSpec
    flow: FlowStep | None = None


def _epoch_ms(value: Any, what: str) -> int | None:
    """An ISO-8601 timestamp (or datetime) as epoch ms; naive times are UTC."""
    if value in (None, ""):
        return None
    try:
        moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    except ValueError:
        raise PublishError(f"{what} is not an ISO-8601 timestamp: {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True)
class MessageNumbers:
    """The numbers a message carries, each checked against its range (:mod:`ff_celery.mapping.numbers`)."""

    priority: int
    expiration_ms: int | None
    nesting: int

    @classmethod
    def of(cls, headers: dict[str, Any], properties: dict[str, Any]) -> MessageNumbers:
        """The message's numbers; :class:`OutOfRange` naming the first one out of range
        (the ``ff_flow`` header's are checked by :meth:`FlowStep.from_header`)."""
        priority, expiration = properties.get("priority"), properties.get("expiration")
        if headers.get("retries") is not None:
            RETRIES.check(headers["retries"], "retries")
        optional_time_limits(headers.get("timelimit"), "timelimit")
        return cls(
            priority=0 if priority is None else int(PRIORITY.check(priority, "priority")),
            expiration_ms=None if expiration in (None, "") else int(EXPIRATION_MS.check(expiration, "expiration")),
            nesting=int(NESTING.check(headers.get("replaced_task_nesting") or 0, "replaced_task_nesting")),
        )


def check_publish_options(options: dict[str, Any]) -> None:
    """``apply_async``'s numeric options that Celery or kombu convert before the transport sees
    them (``countdown`` and ``expires`` become timestamps, ``expiration`` milliseconds),
    checked first: PublishError naming the field, like every other number of the message."""
    checks = {"countdown": DELAY_S, "expires": DELAY_S, "expiration": EXPIRATION_S}
    for name, bound in checks.items():
        value = options.get(name)
        if value is None or (name == "expires" and isinstance(value, str | datetime)):
            continue  # an ISO expiry is read by the transport
        try:
            bound.check(value, f"{name} (seconds)")
        except OutOfRange as exc:
            raise PublishError(str(exc)) from None


def check_lane(queue: str) -> None:
    raw = queue.encode("utf-8", errors="replace")
    if not 1 <= len(raw) <= MAX_LANE_BYTES or any(b < 0x20 or b > 0x7E for b in raw):
        raise PublishError(f"queue name {queue!r} is not a FlowFabric lane: 1-64 printable ASCII bytes")


def submission_for(queue: str, message: dict[str, Any], *, now_ms: int, max_size: int) -> Submission:
    """Map a raw kombu message published to ``queue`` onto an execution."""
    check_lane(queue)
    payload = json.dumps(message).encode("utf-8")
    if len(payload) > max_size:
        raise PublishError(f"message of {len(payload)} bytes exceeds the {max_size}-byte limit")
    headers = message.get("headers") or {}
    properties = message.get("properties") or {}
    try:
        numbers = MessageNumbers.of(headers, properties)
    except OutOfRange as exc:
        raise PublishError(str(exc)) from None
    # Celery publishers carry them in the headers (ff_celery.integration.app); a kombu publisher may
    # set them as message properties
    given_as_options = {name: properties[name] for name in (BUDGETS_HEADER, QUOTA_HEADER) if name in properties}
    budget_ids, quota_policy_id = _admission_headers({**given_as_options, **headers})
    spec = ExecutionSpec(
        lane_id=queue,
        input_payload=payload,
        execution_kind="kombu.message",
        priority=numbers.priority,
        execution_deadline_at=None if numbers.expiration_ms is None else now_ms + numbers.expiration_ms,
        creator_identity=str(headers.get("origin") or ""),
        budget_ids=budget_ids,
        quota_policy_id=quota_policy_id,
    )
    flow = None
    task_name, task_id = headers.get("task"), headers.get("id")
    if task_name and task_id:
        spec = replace(
            spec,
            execution_kind=str(task_name),
            delay_until=_epoch_ms(headers.get("eta"), "eta"),
            execution_deadline_at=_epoch_ms(headers.get("expires"), "expires") or spec.execution_deadline_at,
            # A task replacing itself (Task.replace) reuses its id with a higher nesting level.
            idempotency_key=f"{task_id}:{numbers.nesting}",
            alias=str(task_id),
            alias_replaces=numbers.nesting > 0,
            tags=_task_tags(queue, str(task_name), str(task_id), headers),
        )
        if headers.get(POLICY_HEADER):
            spec = replace(spec, policy=_policy_from_header(headers[POLICY_HEADER]))
        flow = FlowStep.from_header(headers.get(FLOW_HEADER))
    for given in (headers, properties):  # an apply_async option wins over the task's own
        if RETENTION_HEADER in given:
            spec = replace(spec, policy=spec.policy.with_retention(_retention_ms(given[RETENTION_HEADER])))
    return Submission(spec, flow)


def _task_tags(queue: str, task_name: str, task_id: str, headers: dict[str, Any]) -> dict[str, str]:
    """The tags naming a Celery task's execution: its task, id, queue, root and group."""
    tags = {TASK_TAG: task_name, TASK_ID_TAG: task_id, "celery.queue": queue}
    if headers.get("root_id"):
        tags["celery.root_id"] = str(headers["root_id"])
    if headers.get("group"):
        tags["celery.group"] = str(headers["group"])
    return tags


def _retention_ms(seconds: Any) -> int:
    if seconds is None:
        return KEEP_FOREVER_MS
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds < KEEP_FOREVER_MS / 1000:
        raise PublishError(f"{RETENTION_HEADER} must be seconds (a number >= 0) or None, got {seconds!r}")
    return int(seconds * 1000)


def _admission_headers(headers: dict[str, Any]) -> tuple[tuple[str, ...], str | None]:
    budgets, quota = headers.get(BUDGETS_HEADER) or (), headers.get(QUOTA_HEADER) or None
    if isinstance(budgets, str):
        budgets = (budgets,)
    if not isinstance(budgets, list | tuple) or not all(isinstance(b, str) and b for b in budgets):
        raise PublishError(f"{BUDGETS_HEADER} must be a list of budget names or ids, got {budgets!r}")
    if quota is not None and not isinstance(quota, str):
        raise PublishError(f"{QUOTA_HEADER} must be a quota name or id, got {quota!r}")
    return tuple(budgets), quota


@lru_cache(maxsize=256)
def _policy_from_header(text: str) -> ExecutionPolicy:
    try:
        return ExecutionPolicy.model_validate_json(text)
    except ValueError as exc:
        raise PublishError(f"{POLICY_HEADER} header is not an execution policy: {exc}") from None


def fence_header(task: ClaimedTask) -> dict[str, Any]:
    return {
        "execution_id": str(task.execution_id),
        "lane": task.lane_id,
        "lease_id": task.lease.lease_id,
        "lease_epoch": task.lease_epoch,
        "attempt_id": task.attempt_id,
        "attempt_index": task.attempt_index,
        "attempt_type": task.attempt_type,
        "worker_instance_id": task.worker_instance_id,
        "runnable_since": round(task.runnable_since, 4),
    }


def delivery_tag(task: ClaimedTask) -> str:
    """Unique per lease: a re-claimed execution is a new delivery."""
    return f"{task.execution_id}#{task.lease_epoch}"


def _envelope(payload: bytes) -> dict[str, Any]:
    """The payload as a kombu envelope; ValueError naming what is wrong with it otherwise."""
    try:
        message = json.loads(payload)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"payload is not JSON ({exc})") from None
    if not isinstance(message, dict):
        raise ValueError(f"payload is a JSON {type(message).__name__}, not a kombu message object")
    for part in ("headers", "properties"):
        if not isinstance(message.get(part) or {}, dict):
            raise ValueError(f"message {part} is a {type(message[part]).__name__}, not an object")
    if not isinstance((message.get("properties") or {}).get("delivery_info") or {}, dict):
        raise ValueError("message properties.delivery_info is not an object")
    if not isinstance(message.get("body", ""), str):
        raise ValueError(f"message body is a {type(message['body']).__name__}, not a string")
    return message


def delivery_message(task: ClaimedTask, queue: str | None = None) -> dict[str, Any]:
    """The raw kombu message to deliver for a claimed execution of ``queue`` (by default its
    lane; a queue spread over several lanes names itself); ValueError if its payload is not
    a kombu message."""
    message = _envelope(task.payload)
    headers = message.get("headers") or {}
    message["headers"] = headers
    MessageNumbers.of(headers, message.get("properties") or {})  # a stored message is checked again
    fence = fence_header(task)
    if "task" in headers:
        fence["eta"] = headers.get("eta")
        headers["eta"] = None  # the engine held it until due; do not park it in worker memory
        headers["retries"] = task.retry_count
    headers[FENCE_HEADER] = fence
    properties = message["properties"] = message.get("properties") or {}
    properties["delivery_tag"] = delivery_tag(task)
    info = properties["delivery_info"] = properties.get("delivery_info") or {}
    info.update(routing_key=queue or task.lane_id, redelivered=task.attempt_index > 0 or task.attempt_type == "resumed")
    return message


def is_celery_task(task: ClaimedTask) -> bool:
    return TASK_TAG in task.tags


def celery_task_of(tags: dict[str, str]) -> tuple[str, str] | None:
    """The Celery task id and name an execution's tags record, or None (not a Celery task)."""
    if TASK_ID_TAG in tags and TASK_TAG in tags:
        return tags[TASK_ID_TAG], tags[TASK_TAG]
    return None


#: The priority of the timer entry Celery's worker makes for a task waiting for its ETA
#: (``celery.worker.strategy``): what its ``inspect scheduled`` answers as ``priority``.
ETA_TIMER_PRIORITY = 6


def held_task_entry(
    payload: bytes, runnable_at_ms: int, hostname: str, *, accept: set[str], timezone_name: Any = None
) -> dict[str, Any] | None:
    """A task the engine holds until ``runnable_at_ms``, as Celery's ``inspect scheduled``
    answers for a task waiting for its ETA (``eta``, ``priority``, ``request`` as
    ``Request.info()`` gives it); None if the payload is not a Celery task message. The body
    is decoded only if its content type is in ``accept`` (the app's ``accept_content``)."""
    try:
        message = _envelope(payload)
    except ValueError:
        return None
    headers, properties = message.get("headers") or {}, message.get("properties") or {}
    if "task" not in headers:
        return None
    try:
        body = loads(
            base64.b64decode(message.get("body", ""))
            if properties.get("body_encoding") == "base64"
            else message["body"],
            message.get("content-type") or "application/json",
            message.get("content-encoding") or "utf-8",
            accept=accept,
        )
        args, kwargs = body[0], body[1]
    except Exception:  # a body that may not (accept_content) or cannot be decoded: what the publisher showed
        args, kwargs = headers.get("argsrepr"), headers.get("kwargsrepr")
    info = properties.get("delivery_info") or {}
    return {
        "eta": _held_until(headers.get("eta"), runnable_at_ms, timezone_name).isoformat(),
        "priority": ETA_TIMER_PRIORITY,
        "request": {
            "id": headers.get("id"),
            "name": headers.get("shadow") or headers["task"],
            "args": args,
            "kwargs": kwargs,
            "type": headers["task"],
            "hostname": hostname,
            "time_start": None,
            "acknowledged": False,
            "delivery_info": {
                "exchange": info.get("exchange"),
                "routing_key": info.get("routing_key"),
                "priority": properties.get("priority"),
                "redelivered": info.get("redelivered", False),
            },
            "worker_pid": None,
        },
    }


def _held_until(eta: Any, runnable_at_ms: int, timezone_name: Any) -> datetime:
    """When a held task is due, as Celery's worker shows it: the message's own ``eta`` read
    as Celery reads it (to the microsecond) if that is what the engine holds it for, else
    the engine's due time (a flow member's countdown, a retry's backoff)."""
    try:
        moment = maybe_make_aware(maybe_iso8601(eta), timezone_name) if eta else None
    except (ValueError, TypeError, OverflowError):
        moment = None
    if moment is not None and int(moment.timestamp() * 1000) == runnable_at_ms:
        return moment
    return datetime.fromtimestamp(runnable_at_ms / 1000, timezone.utc)
