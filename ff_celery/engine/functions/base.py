"""The FCALL layer's foundation: reply decoding, the typed-call base classes, the fence.

Every FlowFabric function is one :class:`Fcall` subclass (in the modules of this package,
which mirror the Lua library's modules); nothing above this package builds keys or argument
lists for an FCALL. ``Engine.call`` executes any of them; error replies become the typed
exceptions of ``errors``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict

from ff_celery.engine.core.decoding import text
from ff_celery.engine.core.errors import TransportError, error_for_code
from ff_celery.engine.core.ids import ExecutionId
from ff_celery.engine.core.keys import ExecKeys, PartitionKeys

ResultT = TypeVar("ResultT")

__all__ = [
    "DEFAULT_DEDUP_TTL_MS",
    "OPERATOR_OVERRIDE",
    "ExecutionFcall",
    "Fcall",
    "Fence",
    "Reply",
    "ResultT",
    "Settled",
    "decode_reply",
    "fence_argv",
    "number",
    "optional_number",
]

#: FlowFabric's dedup window for idempotency keys (Rust always sends 24 h).
DEFAULT_DEDUP_TTL_MS = 86_400_000
OPERATOR_OVERRIDE = "operator_override"


class Reply(NamedTuple):
    """A successful reply: ``{1, status, fields...}``."""

    status: str
    fields: list[str]


def decode_reply(raw: Any, function: str, execution_id: str | None = None) -> Reply:
    """Check a ``{1|0, status|code, ...}`` array; raise the typed error for ``{0, ...}``."""
    if not isinstance(raw, list) or len(raw) < 2 or not isinstance(raw[0], int):
        raise TransportError(f"unexpected reply {raw!r}", retryable=False, function=function)
    fields = [text(item) for item in raw[2:]]
    if raw[0] != 1:
        raise error_for_code(text(raw[1]), fields, function=function, execution_id=execution_id)
    return Reply(text(raw[1]), fields)


def optional_number(value: int | float | None) -> str:
    """Optional number as ARGV: empty when absent."""
    return "" if value is None else number(value)


def number(value: int | float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Fcall(BaseModel, Generic[ResultT]):
    """Arguments of one FCALL. Subclasses define the name, KEYS, ARGV and reply parsing."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    function: ClassVar[str]

    def keys(self) -> list[str]:
        raise NotImplementedError

    def argv(self) -> list[str | bytes]:
        raise NotImplementedError

    def parse(self, reply: Reply) -> ResultT:
        raise NotImplementedError

    def interpret(self, raw: Any) -> ResultT:
        """The outcome of a raw FCALL reply (raises the typed error of an error reply)."""
        return self.parse(decode_reply(raw, self.function, self.subject))

    @property
    def subject(self) -> str | None:
        """The execution id errors are reported against."""
        return getattr(self, "execution_id", None)

    @property
    def publishes_done_notice(self) -> bool:
        """Whether the server publishes the attempt's completion notice itself in this call
        (else a caller that owes one sends it in the same round trip)."""
        return False


class ExecutionFcall(Fcall[ResultT]):
    """An FCALL on one execution's partition."""

    execution_id: ExecutionId

    @property
    def exec_keys(self) -> ExecKeys:
        return ExecKeys(self.execution_id)

    @property
    def index(self) -> PartitionKeys:
        return PartitionKeys(self.execution_id.partition)


class Fence(BaseModel):
    """The lease fence: what a lease holder proves on every lease-bound call."""

    model_config = ConfigDict(frozen=True)

    lease_id: str
    lease_epoch: int
    attempt_id: str

    def argv(self) -> list[str]:
        return [self.lease_id, str(self.lease_epoch), self.attempt_id]


def fence_argv(fence: Fence | None) -> list[str | bytes]:
    """Fence as ARGV; no fence is the empty triple (operator override)."""
    return list(fence.argv()) if fence else ["", "", ""]


class Settled(BaseModel):
    """A scanner-style reply: ``OK`` or ``ALREADY_SATISFIED`` plus a reason."""

    status: str
    reason: str

    @property
    def changed(self) -> bool:
        return self.status == "OK"
