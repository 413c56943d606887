"""``ffcelery``'s functions (``lua/hot_path.lua``): contract calls that the hot path sends
together, run in one FCALL. Each wraps the typed contract calls it runs, so their KEYS,
ARGV and replies stay those of the contract; the engine uses them only where the library
answers (``Executor.hot_path``), the contract calls one by one elsewhere."""

from __future__ import annotations

from typing import Any, NamedTuple

from ff_celery.engine.core.decoding import text
from ff_celery.engine.core.errors import EngineError
from ff_celery.engine.core.keys import WAKE_ANY, ExecKeys, wake_channel
from ff_celery.engine.functions.base import Fcall, decode_reply
from ff_celery.engine.functions.execution import ClaimExecution, CompleteExecution
from ff_celery.engine.functions.lease import Lease
from ff_celery.engine.functions.scheduling import IssueClaimGrant

__all__ = ["ClaimReads", "ClaimWithReads", "CompleteAndResolve"]


def _outcome(request: Fcall[Any], raw: Any) -> Any:
    """A contract call's outcome from its raw reply, or its EngineError (as a batch gives)."""
    try:
        return request.interpret(raw)
    except EngineError as exc:
        return exc


def _combined(raw: Any, parts: int) -> bool:
    """A combined reply (its parts, the first a list), not an error reply of its own."""
    return isinstance(raw, list) and len(raw) == parts and isinstance(raw[0], list)


class ClaimReads(NamedTuple):
    """What one candidate's claim round trip answers."""

    core_values: list[Any]  # the exec_core fields asked for, as the claim found them
    grant: EngineError | None
    lease: Lease | EngineError
    payload: bytes | None
    tags: dict[bytes, bytes]


class ClaimWithReads(Fcall[ClaimReads]):
    """``ffc_claim``: HMGET of ``core_fields``, ``grant``, ``claim`` (whatever the grant
    answered), GET of the payload and HGETALL of the tags, in one call."""

    function = "ffc_claim"
    grant: IssueClaimGrant
    claim: ClaimExecution
    core_fields: tuple[str, ...]

    def keys(self) -> list[str]:
        x = ExecKeys(self.claim.execution_id)
        return [*self.grant.keys(), *self.claim.keys(), x.payload, x.tags]

    def argv(self) -> list[str | bytes]:
        grant_argv, claim_argv = self.grant.argv(), self.claim.argv()
        sizes = (len(self.grant.keys()), len(self.claim.keys()), len(grant_argv), len(claim_argv))
        return [*map(str, sizes), *grant_argv, *claim_argv, *self.core_fields]

    def interpret(self, raw: Any) -> ClaimReads:
        if not _combined(raw, 5):
            decode_reply(raw, self.function, self.subject)  # an error reply of its own: raises
        before, grant, claim, payload, tags = raw
        flat = tags or []
        return ClaimReads(
            list(before),
            _outcome(self.grant, grant),
            _outcome(self.claim, claim),
            payload,
            dict(zip(flat[::2], flat[1::2])),
        )

    @property
    def subject(self) -> str | None:
        return self.claim.execution_id


class CompleteAndResolve(Fcall[list[tuple[str, str]]]):
    """``ffc_complete``: ``complete``; the completion notice on ``notice_channel`` (if any);
    once it succeeded, a flow member's outgoing edges resolved as ``Flows.cascade`` does,
    waking the lanes of children made eligible. Notices are published by the server only
    when ``publish`` (a standalone server); otherwise the caller sends them: the call answers
    the wake-ups it did not publish, as (lane, data)."""

    function = "ffc_complete"
    complete: CompleteExecution
    notice_channel: str = ""
    notice: str | bytes = b""
    publish: bool = True

    def keys(self) -> list[str]:
        return self.complete.keys()

    def argv(self) -> list[str | bytes]:
        argv = self.complete.argv()
        tail = [self.notice_channel, self.notice, wake_channel(""), WAKE_ANY, "1" if self.publish else "0"]
        return [str(len(argv)), *argv, *tail]

    def interpret(self, raw: Any) -> list[tuple[str, str]]:
        if not _combined(raw, 2):
            decode_reply(raw, self.function, self.subject)  # an error reply of its own: raises
        completed, wakes = raw
        self.complete.interpret(completed)  # raises the completion's typed error
        return [(text(lane), text(data)) for lane, data in wakes or []]

    @property
    def subject(self) -> str | None:
        return self.complete.execution_id

    @property
    def publishes_done_notice(self) -> bool:
        return self.publish
