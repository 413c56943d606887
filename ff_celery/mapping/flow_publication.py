"""The tasks of one canvas published together: the transport collects them while a
publication is open and creates them as one flow in one transaction when it closes (see
:mod:`ff_celery.mapping.canvas`). Kept apart from the transport so that applying a canvas needs no
import of it before the first publish."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

from ff_celery.engine import Engine, FlowRef, NewExecution
from ff_celery.mapping.messages import PublishError


class FlowPublication:
    """The members of one flow published together (a canvas): while open (``with``), the
    channels collect them instead of creating them; closing without an error creates them
    all in one transaction, so a canvas is either wholly published or not at all. A member
    published outside one is created at once."""

    _open = threading.local()

    def __init__(self, flow_id: str) -> None:
        self.flow_id = flow_id
        self.engine: Engine | None = None
        self.flow: FlowRef | None = None
        self.members: list[tuple[NewExecution, list[str]]] = []

    @classmethod
    def current(cls, flow_id: str) -> FlowPublication | None:
        """The open publication of ``flow_id`` in this thread, if any."""
        publication = getattr(cls._open, "publication", None)
        return publication if publication is not None and publication.flow_id == flow_id else None

    def __enter__(self) -> FlowPublication:
        self._open.publication = self
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self._open.publication = None
        if kind is None and self.members:
            self.commit()

    def add(self, engine: Engine, flow: FlowRef, member: NewExecution, after: list[str]) -> None:
        """A member that runs after the tasks ``after`` (published before it). A task put
        again (kombu retrying a publish) is kept once."""
        self.engine, self.flow = engine, flow
        if member.alias is None or all(collected.alias != member.alias for collected, _ in self.members):
            self.members.append((member, after))

    def commit(self) -> list[Any]:
        """Create the members collected: each waits for the executions of its ``after``
        tasks, whether published with it or before."""
        assert self.engine is not None and self.flow is not None
        engine, flow = self.engine, self.flow
        ours = {member.alias: member.request.execution_id for member, _ in self.members if member.alias}
        outside = sorted({t for _, after in self.members for t in after if t not in ours})
        found = dict(zip(outside, engine.resolve_many(outside)))
        missing = [task_id for task_id in outside if found[task_id] is None]
        if missing:
            raise PublishError(f"flow member runs after tasks that were never published: {missing}")
        known = {**ours, **found}
        members = [replace(member, upstream=tuple(known[t] for t in after)) for member, after in self.members]
        if any(eid.partition != flow.partition for member in members for eid in member.upstream):
            raise PublishError(f"flow member runs after tasks outside flow {flow.flow_id}")
        self.members = []
        return engine.submit_flow(flow, members)
