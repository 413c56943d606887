"""Identifiers: execution ids (``{fp:N}:<uuid>``), budget and quota ids (a name maps to a
stable UUID) and bare UUIDs for everything else."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from ff_celery.engine.core.errors import ValidationError
from ff_celery.engine.core.exec_core import CoreField
from ff_celery.engine.core.partitions import flow_tag

log = logging.getLogger(__name__)

MAX_PARTITION_INDEX = 0xFFFF
#: Malformed index members already reported (each is logged once per process).
_reported: set[tuple[str, str]] = set()


def new_uuid() -> str:
    """A fresh lowercase, hyphenated v4 UUID string."""
    return str(uuid.uuid4())


#: A canonical UUID (what ``str(uuid.UUID(...))`` writes) and a canonical execution id.
_CANONICAL_UUID = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_CANONICAL_UUID_RE = re.compile(_CANONICAL_UUID)
_EXECUTION_ID_RE = re.compile(r"\{fp:(0|[1-9][0-9]{0,4})\}:" + _CANONICAL_UUID)


def canonical_uuid(text: str, what: str = "uuid") -> str:
    """``text`` if it is a canonical lowercase hyphenated UUID, else ValidationError."""
    if isinstance(text, str) and _CANONICAL_UUID_RE.fullmatch(text):
        return text
    try:
        parsed = uuid.UUID(text)
    except (TypeError, ValueError, AttributeError):
        raise ValidationError("invalid_input", [f"{what} is not a UUID: {text!r}"]) from None
    if str(parsed) != text:
        raise ValidationError("invalid_input", [f"{what} is not canonical: {text!r}"])
    return text


def _execution_id_problem(text: object) -> str | None:
    """Why ``text`` is not a canonical ``{fp:N}:<uuid>`` execution id, or None."""
    if isinstance(text, str) and (match := _EXECUTION_ID_RE.fullmatch(text)):
        return None if int(match[1]) <= MAX_PARTITION_INDEX else "partition index must be a canonical decimal 0..65535"
    if not isinstance(text, str) or not text.startswith("{fp:"):
        return "must start with '{fp:'"
    close = text.find("}:", 4)
    index = text[4:close] if close > 0 else ""
    if not index.isdigit() or int(index) > MAX_PARTITION_INDEX or str(int(index)) != index:
        return "partition index must be a canonical decimal 0..65535"
    try:
        canonical_uuid(text[close + 2 :])
    except ValidationError:
        return "the part after the tag must be a lowercase hyphenated UUID"
    return None


class ExecutionId(str):
    """An execution id: ``{fp:N}:<uuid>``. The partition is read from the tag, never recomputed."""

    partition: int

    def __new__(cls, text: str) -> ExecutionId:
        if isinstance(text, ExecutionId):
            return text
        problem = _execution_id_problem(text)
        if problem:
            raise ValidationError("invalid_input", [f"invalid execution id {text!r}: {problem}"])
        instance = super().__new__(cls, text)
        instance.partition = int(text[4 : text.find("}:")])
        return instance

    @classmethod
    def mint(cls, partition: int, uuid_text: str | None = None) -> ExecutionId:
        return cls(f"{flow_tag(partition)}:{uuid_text or new_uuid()}")

    @property
    def tag(self) -> str:
        return flow_tag(self.partition)

    @property
    def uuid(self) -> str:
        return self[self.index("}:") + 2 :]

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> Any:
        return core_schema.no_info_after_validator_function(
            cls, core_schema.str_schema(), serialization=core_schema.to_string_ser_schema()
        )


def valid_execution_ids(members: Iterable[bytes | str], where: str) -> Iterator[ExecutionId]:
    """The members of an index that are execution ids. Anything else (written by hand, by a
    bug, by another program) is skipped and reported once, so one bad member never stalls
    the lane or the scanner cycle that reads it."""
    for member in members:
        text = member.decode("utf-8", errors="replace") if isinstance(member, bytes) else member
        problem = _execution_id_problem(text)
        if problem is None:
            yield ExecutionId(text)
        elif (where, text) not in _reported and len(_reported) < 10_000:
            _reported.add((where, text))
            log.error("skipping %r in %s: not an execution id (%s)", text, where, problem)


_NAME_NAMESPACE = uuid.UUID("0f7b7c1e-33b5-4a53-9d59-1f3c4e5a6b7c")


def budget_id_for(name_or_id: str) -> str:
    """A budget or quota id: the UUID itself, or the stable UUID of a name."""
    try:
        return str(uuid.UUID(name_or_id))
    except ValueError:
        return str(uuid.uuid5(_NAME_NAMESPACE, name_or_id))


quota_id_for = budget_id_for


def attachment_fields(budget_ids: Sequence[str], quota_policy_id: str | None) -> dict[str, str]:
    """The exec_core fields that put an execution under budgets and a quota."""
    fields = {}
    if budget_ids:
        fields[CoreField.BUDGET_IDS] = ",".join(budget_id_for(b) for b in budget_ids)
    if quota_policy_id:
        fields[CoreField.QUOTA_POLICY_ID] = quota_id_for(quota_policy_id)
    return fields
