"""Celery canvases as FlowFabric flows: chains, groups, chords and their nesting.

A canvas applied through an app whose broker and result backend are ``flowfabric://`` is
published at once, in one transaction (wholly or not at all):
every task in it becomes a member of one flow, with a dependency edge for each "runs after"
(a chain step after the step before it, a chord body after every header task, a step after a
group after each of the group's tasks). The engine makes a member eligible when its
upstream members succeeded and skips it when one failed or was cancelled; nothing in Celery
counts chord parts or publishes the next step, so a worker that dies at any point loses no
part of the workflow. Revoking any member cancels the whole flow.

At delivery a member receives what Celery would have passed it (:func:`with_upstream_results`):
a chain step its upstream's return value as the first argument, a chord body (or a step
after a group) the list of the upstream results, an immutable signature nothing. (It is
published with ``None`` standing in for that argument, so Celery's argument check passes.)

A flow member that replaces itself (``Task.replace``) puts its replacement in the same flow:
what waited for it waits for the replacement's last tasks too.

Canvases applied eagerly, with options this module does not carry (``link`` on the
canvas itself, ``chord`` / ``chain`` from Celery's own machinery, ...), or containing a
group directly inside a group or a signature subclass with its own ``apply_async``
(``chunks``, ``xmap``), run on Celery's own mechanism.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import celery
from celery.backends.base import DisabledBackend
from celery.canvas import Signature, _chain, _chord, group
from celery.exceptions import ChordError, Ignore
from celery.result import AsyncResult, GroupResult
from celery.utils import uuid
from kombu.serialization import dumps, loads, prepare_accept_content, registry

from ff_celery.engine import ExecutionId, FlowRef
from ff_celery.integration.context import engine_for_app, fence_of
from ff_celery.mapping.flow_publication import FlowPublication
from ff_celery.mapping.messages import FLOW_HEADER, FlowStep

log = logging.getLogger(__name__)

#: Options of ``apply_async`` on a canvas that a flow carries to its entry tasks (the ones
#: that wait for nothing): what Celery applies to the first task of a chain, to each task of
#: a group and to a chord's header.
ENTRY_OPTIONS = frozenset(
    {"queue", "routing_key", "exchange", "priority", "countdown", "eta", "expires", "ff_budgets", "ff_quota"}
)
Passes = Literal["", "one", "list"]


def runs_flows(app: celery.Celery) -> bool:
    """Whether the app's canvases become flows: its broker and its result backend are
    ``flowfabric://`` (the backend gives skipped tasks their cause's outcome and runs chord
    errbacks; another backend would leave them pending)."""
    urls = (app.conf.broker_url, app.conf.result_backend)
    return all(isinstance(url, str) and url.startswith("flowfabric") for url in urls)


def expressible(sig: Signature, inside_group: bool = False) -> bool:
    """Whether :class:`CanvasFlow` can publish ``sig`` as flow members."""
    if not isinstance(sig, Signature):
        return False
    if isinstance(sig, _chord):
        return all(expressible(task, inside_group=True) for task in sig.tasks) and expressible(sig.body)
    if isinstance(sig, _chain):
        return bool(sig.tasks) and all(expressible(task) for task in sig.tasks)
    if isinstance(sig, group):
        return not inside_group and bool(sig.tasks) and all(expressible(task, inside_group=True) for task in sig.tasks)
    return type(sig).apply_async is Signature.apply_async and isinstance(sig.task, str)


@dataclass
class Placed:
    """A published part of a canvas: the task ids its successors wait for, the Celery result
    of the part, and how its successors receive those tasks' results."""

    exits: list[str]
    result: AsyncResult | GroupResult
    passes: Passes


@dataclass
class CanvasFlow:
    """Publishes one canvas as the members of one flow."""

    app: celery.Celery
    flow: FlowRef
    producer: Any
    entry_options: dict[str, Any] = field(default_factory=dict)
    root_id: str | None = None
    #: The body of the chord whose header is being placed (its errbacks run on a failure).
    chord_body: Signature | None = None

    def place(
        self,
        sig: Signature,
        after: Sequence[str] = (),
        passes: Passes = "",
        partial: tuple[tuple[Any, ...], dict[str, Any]] | None = None,
        membership: dict[str, Any] | None = None,
    ) -> Placed:
        """Publish ``sig`` to run after the tasks ``after`` (receiving their results as
        ``passes`` says), with ``partial`` arguments added to its entry tasks."""
        if isinstance(sig, _chord):
            return self._place_chord(sig, after, passes, partial, membership)
        if isinstance(sig, _chain):
            return self._place_chain(sig, after, passes, partial, membership)
        if isinstance(sig, group):
            return self._place_group(sig, after, passes, partial)
        return self._place_task(sig, after, passes, partial, membership or {})

    def _place_task(
        self,
        sig: Signature,
        after: Sequence[str],
        passes: Passes,
        partial: tuple[tuple[Any, ...], dict[str, Any]] | None,
        membership: dict[str, Any],
    ) -> Placed:
        passes = "" if sig.immutable else passes
        args, kwargs = partial or ((), {})
        if passes:  # a stand-in first argument, replaced at delivery (and what Celery checks)
            args = (None, *args)
        sig = sig.clone(args, kwargs)
        task_id = sig.options.get("task_id") or uuid()
        self.root_id = self.root_id or task_id
        # a task that waits counts its own countdown / eta from when it may run
        delay = {key: sig.options.pop(key) for key in ("countdown", "eta") if after and key in sig.options}
        eta = delay.get("eta")
        step = FlowStep(
            flow_id=self.flow.flow_id,
            after=list(after),
            passes=passes,
            countdown=delay.get("countdown"),
            eta=eta.isoformat() if hasattr(eta, "isoformat") else eta,
            chord_body=dict(self.chord_body) if self.chord_body is not None else None,
        )
        headers = {**(sig.options.get("headers") or {}), FLOW_HEADER: step.header()}
        options: dict[str, Any] = {"task_id": task_id, "root_id": self.root_id, "headers": headers, **membership}
        if after:
            options["parent_id"] = after[-1]
        else:
            options.update(self.entry_options)
        result = sig.apply_async(producer=self.producer, **options)
        return Placed([task_id], result, "one")

    def _place_chain(
        self,
        sig: _chain,
        after: Sequence[str],
        passes: Passes,
        partial: tuple[tuple[Any, ...], dict[str, Any]] | None,
        membership: dict[str, Any] | None,
    ) -> Placed:
        placed: Placed | None = None
        last = len(sig.tasks) - 1
        for position, step in enumerate(sig.tasks):
            # a chain inside a chord header or group: its last task is the member counted there
            step_membership = membership if position == last else None
            if placed is None:
                placed = self.place(step, after, passes, partial, step_membership)
            else:
                previous = placed.result
                placed = self.place(step, placed.exits, placed.passes, None, step_membership)
                placed.result.parent = previous
        assert placed is not None
        return placed

    def _place_group(
        self,
        sig: group,
        after: Sequence[str],
        passes: Passes,
        partial: tuple[tuple[Any, ...], dict[str, Any]] | None,
        group_id: str | None = None,
    ) -> Placed:
        group_id = group_id or sig.options.get("task_id") or uuid()
        exits: list[str] = []
        results = []
        for index, task in enumerate(sig.tasks):
            membership = {"group_id": group_id, "group_index": index}
            placed = self.place(task, after, passes, partial, membership)
            exits += placed.exits
            results.append(placed.result)
        return Placed(exits, GroupResult(group_id, results, app=self.app), "list")

    def _place_chord(
        self,
        sig: _chord,
        after: Sequence[str],
        passes: Passes,
        partial: tuple[tuple[Any, ...], dict[str, Any]] | None,
        membership: dict[str, Any] | None,
    ) -> Placed:
        header_args = partial or ((), {})
        header_partial = (tuple(header_args[0]), {**sig.kwargs.get("kwargs", {}), **header_args[1]})
        header = group(sig.tasks, app=self.app)
        body_sig = sig.body.clone()
        enclosing, self.chord_body = self.chord_body, None
        if type(body_sig) is Signature:  # a task: a header failure calls its errbacks, as Celery does
            body_sig.options.setdefault("task_id", uuid())
            self.chord_body = body_sig
        given = sig.kwargs.get("header")
        group_id = given.options.get("task_id") if isinstance(given, group) else None
        try:
            placed_header = self._place_group(header, after, passes, header_partial, group_id)
        finally:
            self.chord_body = enclosing
        header_result = placed_header.result
        if isinstance(header_result, GroupResult) and not isinstance(self.app.backend, DisabledBackend):
            header_result.save(backend=self.app.backend)  # GroupResult.restore, as Celery's chords
        body = self.place(body_sig, placed_header.exits, "list", None, membership)
        body.result.parent = header_result
        return body


def frozen_task_ids(sig: Signature) -> list[str]:
    """The task ids already given to tasks of a canvas (by ``freeze`` or ``task_id=``)."""
    if isinstance(sig, _chord):
        return [*(i for task in sig.tasks for i in frozen_task_ids(task)), *frozen_task_ids(sig.body)]
    if isinstance(sig, _chain | group):
        return [i for task in sig.tasks for i in frozen_task_ids(task)]
    return [sig.options["task_id"]] if sig.options.get("task_id") else []


def apply_as_flow(
    app: celery.Celery, sig: Signature, args: Any, kwargs: Any, options: dict[str, Any]
) -> AsyncResult | GroupResult | None:
    """Publish the canvas ``sig`` as one flow; answers its result as Celery's would, or None
    when a task of it was published before (a frozen signature used again: its task id
    names an execution already, which cannot join this flow)."""
    engine = engine_for_app(app)
    frozen = frozen_task_ids(sig)
    if frozen and any(engine.resolve_many(frozen)):
        return None
    entry = first_task(sig)
    route = app.amqp.router.route(dict(entry.options, **options), entry.task, entry.args, entry.kwargs)
    queue = route.get("queue")
    lane = getattr(queue, "name", None) or str(queue or app.conf.task_default_queue)
    partition = engine.partitions.lane_partition(lane)
    flow = FlowRef(engine.partitions.new_flow_id(partition), partition)
    partial = (tuple(args or ()), dict(kwargs or {})) if (args or kwargs) else None
    with app.producer_or_acquire() as producer, FlowPublication(flow.flow_id):
        canvas = CanvasFlow(app, flow, producer, entry_options=dict(options))
        return canvas.place(sig, partial=partial).result


def first_task(sig: Signature) -> Signature:
    """The task a canvas starts with (whose queue places the flow)."""
    while isinstance(sig, _chord | _chain | group):
        sig = sig.tasks[0] if sig.tasks else sig.body
    return sig


# -- applying -----------------------------------------------------------------------------------

_ORIGINALS: dict[type, Callable[..., Any]] = {}


def _flow_apply_async(original: Callable[..., Any]) -> Callable[..., Any]:
    def apply_async(self: Signature, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        canvas, flow_kwargs = self, kwargs
        if isinstance(self, _chord) and kwargs and "body" in kwargs:  # chord(header)(body)
            flow_kwargs = dict(kwargs)
            canvas = self.clone()
            canvas.kwargs["body"] = flow_kwargs.pop("body")
        app = canvas._get_app() if isinstance(canvas, _chord) else canvas.app
        merged = {**canvas.options, **options}
        if runs_flows(app) and not app.conf.task_always_eager and set(merged) <= ENTRY_OPTIONS and expressible(canvas):
            result = apply_as_flow(app, canvas, args, flow_kwargs, merged)
            if result is not None:
                return result
        return original(self, args, kwargs, **options)  # Celery's own, with the body as given

    apply_async.__doc__ = original.__doc__
    apply_async.__wrapped__ = original  # type: ignore[attr-defined]
    return apply_async


def replace_in_flow(app: celery.Celery, request: Any, step: FlowStep, sig: Signature) -> None:
    """``Task.replace(sig)`` of a flow member: ``sig`` joins the member's flow, and what waited
    for the member waits for ``sig``'s last tasks too (which inherit the member's task id, so
    they also receive ``sig``'s result)."""
    engine = engine_for_app(app)
    flow = FlowRef(step.flow_id, engine.partitions.flow_partition(step.flow_id))
    replaced = ExecutionId(fence_of(request)["execution_id"])  # type: ignore[index]
    children = engine.flows.children(flow, replaced)
    membership = {"group_id": request.group, "group_index": request.group_index} if request.group else None
    with app.producer_or_acquire() as producer, FlowPublication(flow.flow_id):
        placed = CanvasFlow(app, flow, producer, root_id=request.root_id).place(sig, membership=membership)
    exits = [eid for eid in engine.resolve_many(placed.exits) if eid is not None]
    for child in children:
        engine.flows.add_dependencies(flow, child, exits)


def _flow_on_replace(original: Callable[..., Any]) -> Callable[..., Any]:
    def on_replace(self: celery.Task, sig: Signature) -> Any:
        request = self.request
        step = None if request.is_eager else FlowStep.from_header(getattr(request, FLOW_HEADER, None))
        if step is None or fence_of(request) is None or not runs_flows(self.app) or not expressible(sig):
            return original(self, sig)
        replace_in_flow(self.app, request, step, sig)
        raise Ignore("Replaced by new task")

    on_replace.__doc__ = original.__doc__
    on_replace.__wrapped__ = original  # type: ignore[attr-defined]
    return on_replace


def install() -> None:
    """Route ``apply_async`` of chains, groups and chords through :func:`apply_as_flow` (for
    apps whose broker and result backend are ``flowfabric://``; every other app keeps
    Celery's), and ``Task.replace`` of a flow member through :func:`replace_in_flow`.
    Idempotent."""
    for cls in (_chain, group, _chord):
        if cls not in _ORIGINALS:
            _ORIGINALS[cls] = cls.__dict__["apply_async"]
            cls.apply_async = _flow_apply_async(_ORIGINALS[cls])  # type: ignore[method-assign]
    if celery.Task not in _ORIGINALS:
        _ORIGINALS[celery.Task] = celery.Task.__dict__["on_replace"]
        celery.Task.on_replace = _flow_on_replace(_ORIGINALS[celery.Task])  # type: ignore[method-assign]


# -- failing ------------------------------------------------------------------------------------


def fail_chord_body(backend: Any, request: Any, task_id: str, exc: BaseException) -> None:
    """A chord header task failed for good: the chord's body fails with a ChordError and its
    errbacks run, once per chord (the engine skips the body itself), as Celery's chords do."""
    step = FlowStep.from_header(getattr(request, FLOW_HEADER, None))
    if step is None or step.chord_body is None:
        return
    body = Signature.from_dict(step.chord_body, app=backend.app)
    if backend.claim_chord_failure(body.id, task_id):
        backend.chord_error_from_stack(body, ChordError(f"Dependency {task_id} raised {exc!r}"))


# -- delivering ---------------------------------------------------------------------------------


def with_upstream_results(app: celery.Celery, message: dict[str, Any]) -> dict[str, Any]:
    """The kombu message of a flow member with its upstream results added to its arguments
    as Celery passes them; ValueError if an upstream result cannot be read or the body is
    not a Celery task body this worker can decode and encode again."""
    headers = message.get("headers") or {}
    step = FlowStep.from_header(headers.get(FLOW_HEADER))
    if step is None or not step.passes:
        return message
    values = app.backend.upstream_values(step.after)  # the flowfabric:// backend's (runs_flows)
    properties = message.get("properties") or {}
    content_type = message.get("content-type") or "application/json"
    encoding = message.get("content-encoding") or "utf-8"
    based = properties.get("body_encoding") == "base64"
    serializer = registry.type_to_name.get(content_type)
    try:
        if serializer is None:
            raise ValueError("no serializer registered for it")
        raw = message.get("body", "")
        accept = prepare_accept_content(app.conf.accept_content)
        args, kwargs, embed = loads(base64.b64decode(raw) if based else raw, content_type, encoding, accept=accept)
        given = values[0] if step.passes == "one" else values
        body = ([given, *args[1:]], kwargs, embed)  # in place of the stand-in published
        _, _, data = dumps(body, serializer=serializer)
    except Exception as exc:  # whatever the serializer raises: this message cannot run
        raise ValueError(f"flow member body ({content_type}) cannot take its upstream results: {exc!r}") from exc
    data = data if isinstance(data, bytes) else data.encode(encoding)
    message["body"] = base64.b64encode(data).decode() if based else data.decode(encoding)
    return message
