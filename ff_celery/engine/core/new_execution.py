"""A new execution, one typed model from whoever asks for it to the FCALL that creates it.

:class:`ExecutionSpec` is what to create (a published Celery message becomes one in
:mod:`ff_celery.mapping.messages`); :meth:`Engine.new_execution` renders it, with an id, as a
:class:`NewExecution`: the ``ff_create_execution`` request and the fields created with it.
A field added to a new execution is added here and rendered there. Field names follow
``ff_create_execution``'s where it has them (spec §5.2).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ff_celery.engine import functions as fn
from ff_celery.engine.core.ids import ExecutionId
from ff_celery.engine.core.policy import ExecutionPolicy


@dataclass(frozen=True)
class ExecutionSpec:
    """An execution to create on ``lane_id``.

    ``delay_until`` / ``execution_deadline_at`` are epoch ms (engine time). ``alias`` (e.g. a
    Celery task id) is indexed for as long as the execution exists; ``alias_replaces``
    repoints an existing alias (a task that replaced itself). ``budget_ids`` and
    ``quota_policy_id`` (ids or names) put the execution under budgets and a quota, checked
    when it is claimed.
    """

    lane_id: str
    input_payload: bytes = b""
    execution_kind: str = "task"
    priority: float = 0
    policy: ExecutionPolicy = field(default_factory=ExecutionPolicy)
    delay_until: int | None = None
    execution_deadline_at: int | None = None
    idempotency_key: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    creator_identity: str = ""
    alias: str | None = None
    alias_replaces: bool = False
    budget_ids: tuple[str, ...] = ()
    quota_policy_id: str | None = None


@dataclass(frozen=True)
class NewExecution:
    """An :class:`ExecutionSpec` with its id, as creating it sends: its
    ``ff_create_execution``, the budget and quota fields it carries from the start, its alias,
    and (as a flow member) the members it waits for, all to succeed, before it becomes
    eligible."""

    request: fn.CreateExecution
    attachment: dict[str, str]
    alias: str | None = None
    alias_replaces: bool = False
    upstream: tuple[ExecutionId, ...] = ()
