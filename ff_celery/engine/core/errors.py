"""Engine errors: every FlowFabric error code in one table, raised as typed exceptions.

Each code carries FlowFabric's retry class (what a caller should do) and the kind of
:class:`EngineError` it surfaces as (not found, validation, contention, conflict, state, bug).
The Lua detail payload is kept on the exception as ``details``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from enum import Enum
from typing import NamedTuple, TypeVar

R = TypeVar("R")


class ErrorClass(str, Enum):
    """What a caller should do with an error (FlowFabric's ``ScriptError::class``)."""

    TERMINAL = "terminal"  # stop; retrying cannot help
    RETRYABLE = "retryable"  # back off and retry, or pick other work
    INFORMATIONAL = "informational"  # a no-op; log and continue
    BUG = "bug"  # an engine invariant was violated
    COOPERATIVE = "cooperative"  # take the prescribed action, then stop
    EXPECTED = "expected"  # a normal empty result
    SOFT_ERROR = "soft_error"  # warn and continue


class Kind(str, Enum):
    """The :class:`EngineError` subclass a code is raised as."""

    NOT_FOUND = "not_found"
    VALIDATION = "validation"
    CONTENTION = "contention"
    CONFLICT = "conflict"
    STATE = "state"
    BUG = "bug"


class CodeInfo(NamedTuple):
    error_class: ErrorClass
    kind: Kind
    meaning: str


#: The holder's lease was superseded, lapsed or revoked: no call under it can succeed again.
LEASE_LOST_CODES = frozenset({"stale_lease", "lease_expired", "lease_revoked"})

_T, _R, _I = ErrorClass.TERMINAL, ErrorClass.RETRYABLE, ErrorClass.INFORMATIONAL
_NF, _VAL, _CONT = Kind.NOT_FOUND, Kind.VALIDATION, Kind.CONTENTION
_CONF, _ST = Kind.CONFLICT, Kind.STATE

#: Every error code FlowFabric's Valkey functions return (ScriptError, RFC-010 §10.7).
CODES: dict[str, CodeInfo] = {
    # leases and fencing
    "stale_lease": CodeInfo(_T, _ST, "lease superseded; stop"),
    "lease_expired": CodeInfo(_T, _ST, "lease TTL elapsed; stop"),
    "lease_revoked": CodeInfo(_T, _ST, "lease revoked by an operator; stop"),
    "execution_not_active": CodeInfo(_T, _CONT, "execution is not active (see the four detail slots)"),
    "no_active_lease": CodeInfo(_I, _CONT, "revoke target holds no lease"),
    "fence_required": CodeInfo(_T, _VAL, "lease-bound call without a fence triple"),
    "partial_fence_triple": CodeInfo(_T, _VAL, "only part of (lease_id, lease_epoch, attempt_id) given"),
    # claiming
    "active_attempt_exists": CodeInfo(ErrorClass.BUG, _CONF, "an attempt is already running"),
    "use_claim_resumed_execution": CodeInfo(_R, _CONT, "interrupted attempt; claim it resumed"),
    "not_a_resumed_execution": CodeInfo(_R, _CONT, "not interrupted; claim it fresh"),
    "execution_not_leaseable": CodeInfo(_R, _CONT, "state changed since the grant"),
    "lease_conflict": CodeInfo(_R, _CONT, "another worker holds the lease"),
    "invalid_claim_grant": CodeInfo(_R, _CONT, "grant missing or issued to another worker"),
    "claim_grant_expired": CodeInfo(_R, _CONT, "grant TTL elapsed"),
    "no_eligible_execution": CodeInfo(_R, _CONT, "nothing to claim; back off"),
    "execution_not_eligible": CodeInfo(_I, _CONT, "not runnable and eligible now"),
    "execution_not_in_eligible_set": CodeInfo(_I, _CONT, "not in the lane's eligible set"),
    "grant_already_exists": CodeInfo(_I, _ST, "a grant is outstanding"),
    "execution_not_reclaimable": CodeInfo(_I, _CONT, "lease is neither expired nor revoked"),
    "capability_mismatch": CodeInfo(_R, _VAL, "worker lacks required capabilities (detail: missing)"),
    "invalid_capabilities": CodeInfo(_T, _VAL, "malformed or oversized capability list"),
    "invalid_policy_json": CodeInfo(_T, _VAL, "policy JSON malformed or structurally wrong"),
    "invalid_input": CodeInfo(_T, _VAL, "malformed argument (detail names it)"),
    "invalid_tag_key": CodeInfo(_T, _VAL, "tag key outside the <caller>. namespace"),
    "max_retries_exhausted": CodeInfo(_T, _ST, "reclaim cap reached; execution failed"),
    "execution_not_terminal": CodeInfo(_T, _ST, "replay needs a terminal execution"),
    "max_replays_exhausted": CodeInfo(_T, _ST, "replay limit reached"),
    "invalid_blocking_reason": CodeInfo(_T, _VAL, "unknown admission block reason"),
    "execution_not_found": CodeInfo(_T, _NF, "execution does not exist"),
    "attempt_not_found": CodeInfo(_T, _NF, "attempt does not exist"),
    "attempt_not_in_created_state": CodeInfo(ErrorClass.BUG, Kind.BUG, "attempt sequencing error"),
    "attempt_not_started": CodeInfo(_T, _ST, "attempt not running"),
    "attempt_already_terminal": CodeInfo(_I, _ST, "attempt already ended"),
    "execution_not_eligible_for_attempt": CodeInfo(_T, _ST, "wrong state for a new attempt"),
    "replay_not_allowed": CodeInfo(_T, _ST, "not terminal or replay limit reached"),
    "not_runnable": CodeInfo(_T, _ST, "execution not runnable"),
    "terminal": CodeInfo(_T, _ST, "execution is terminal"),
    # suspension, waitpoints, signals
    "execution_not_suspended": CodeInfo(_I, _ST, "already resumed or cancelled"),
    "already_suspended": CodeInfo(_I, _ST, "an open suspension exists"),
    "waitpoint_closed": CodeInfo(_I, _ST, "signal arrived too late"),
    "waitpoint_not_found": CodeInfo(_R, _CONT, "waitpoint may not exist yet"),
    "target_not_signalable": CodeInfo(_T, _ST, "not suspended and no pending waitpoint"),
    "waitpoint_pending_use_buffer_script": CodeInfo(_R, _CONT, "pending waitpoint; buffer the signal"),
    "duplicate_signal": CodeInfo(_I, _ST, "idempotency key already delivered"),
    "payload_too_large": CodeInfo(_T, _VAL, "payload over the limit"),
    "signal_limit_exceeded": CodeInfo(_T, _VAL, "maximum signals reached"),
    "invalid_waitpoint_key": CodeInfo(_T, _VAL, "waitpoint key does not match its binding"),
    "invalid_token": CodeInfo(_T, _VAL, "waitpoint HMAC token rejected"),
    "invalid_lease_for_suspend": CodeInfo(_T, _VAL, "lease does not allow suspending"),
    "resume_condition_not_met": CodeInfo(_T, _ST, "resume condition not satisfied"),
    "waitpoint_not_pending": CodeInfo(_I, _ST, "waitpoint not pending"),
    "pending_waitpoint_expired": CodeInfo(_I, _ST, "pending waitpoint expired before suspension"),
    "invalid_waitpoint_for_execution": CodeInfo(_T, _VAL, "waitpoint bound to another execution"),
    "waitpoint_already_exists": CodeInfo(_I, _CONF, "waitpoint already exists"),
    "waitpoint_not_open": CodeInfo(_I, _ST, "waitpoint not open"),
    "waitpoint_not_token_bound": CodeInfo(_T, _VAL, "pending waitpoint has no HMAC token"),
    "invalid_kid": CodeInfo(_T, _VAL, "HMAC key id empty or contains ':'"),
    "invalid_secret_hex": CodeInfo(_T, _VAL, "HMAC secret is not even-length hex"),
    "invalid_grace_ms": CodeInfo(_T, _VAL, "grace is not a non-negative integer"),
    "rotation_conflict": CodeInfo(_T, _CONF, "key id already installed with another secret"),
    # returned by the Lua with no Rust mapping: treated as terminal
    "additional_waitpoint_binding_malformed": CodeInfo(_T, _VAL, "an extra waitpoint has no id or key"),
    "use_pending_with_extras_unsupported": CodeInfo(_T, _VAL, "a pending waitpoint cannot take extras"),
    "invalid_keys_missing_hmac": CodeInfo(_T, _VAL, "the HMAC keystore key was not passed"),
    "hmac_secret_not_initialized": CodeInfo(_T, _ST, "no waitpoint HMAC secret on this partition"),
    "invalid_secret": CodeInfo(_T, _ST, "the stored HMAC secret is not hex"),
    "missing_token": CodeInfo(_T, _VAL, "no waitpoint token given"),
    "token_expired": CodeInfo(_T, _VAL, "the token's key id is past its grace period"),
    # streams
    "stream_closed": CodeInfo(_T, _ST, "attempt ended; no more frames"),
    "stale_owner_cannot_append": CodeInfo(_T, _ST, "lease mismatch on append"),
    "retention_limit_exceeded": CodeInfo(_T, _VAL, "frame over the size limit"),
    "stream_not_found": CodeInfo(ErrorClass.EXPECTED, _NF, "no frames appended yet"),
    "stream_already_closed": CodeInfo(_I, _ST, "stream already closed"),
    "invalid_frame_type": CodeInfo(ErrorClass.SOFT_ERROR, _VAL, "unrecognised frame type"),
    "invalid_offset": CodeInfo(_R, _VAL, "invalid stream id"),
    "corruption": CodeInfo(ErrorClass.BUG, Kind.BUG, "stored summary document not decodable"),
    # flows and dependencies
    "invalid_dependency": CodeInfo(_T, _VAL, "edge does not exist"),
    "stale_graph_revision": CodeInfo(_R, _CONT, "re-read the graph and retry"),
    "execution_already_in_flow": CodeInfo(_T, _CONF, "already a member of another flow"),
    "cycle_detected": CodeInfo(_T, _CONF, "edge would create a cycle"),
    "flow_not_found": CodeInfo(_T, _NF, "flow does not exist"),
    "execution_not_in_flow": CodeInfo(_T, _ST, "not a member of this flow"),
    "dependency_already_exists": CodeInfo(_T, _CONF, "dependency edge already exists"),
    "self_referencing_edge": CodeInfo(_T, _CONF, "upstream equals downstream"),
    "flow_already_terminal": CodeInfo(_T, _ST, "flow already ended"),
    "deps_not_satisfied": CodeInfo(_I, _ST, "dependencies not yet satisfied"),
    "not_blocked_by_deps": CodeInfo(_I, _ST, "not blocked by dependencies"),
    "already_member_of_different_flow": CodeInfo(_T, _CONF, "member of another flow (detail: its id)"),
    "invariant_violation": CodeInfo(ErrorClass.BUG, Kind.BUG, "edge-group counters exceed its edges"),
    "invalid_args": CodeInfo(_T, _VAL, "flow id and downstream execution id required"),
    # budgets, quotas, admission
    "budget_exceeded": CodeInfo(ErrorClass.COOPERATIVE, _ST, "hard budget limit hit; stop now"),
    "budget_soft_exceeded": CodeInfo(_I, _ST, "soft budget limit passed; warn"),
    "ok_already_applied": CodeInfo(_I, _ST, "usage report already applied"),
    "unauthorized": CodeInfo(_T, _VAL, "authentication failed"),
    "budget_not_found": CodeInfo(_T, _NF, "budget does not exist"),
    "invalid_budget_scope": CodeInfo(_T, _VAL, "malformed budget scope"),
    "budget_attach_conflict": CodeInfo(_T, _CONF, "budget already attached"),
    "budget_override_not_allowed": CodeInfo(_T, _VAL, "operator privileges required"),
    "quota_policy_not_found": CodeInfo(_T, _NF, "quota policy does not exist"),
    "rate_limit_exceeded": CodeInfo(_R, _CONT, "rate window full; retry later"),
    "concurrency_limit_exceeded": CodeInfo(_R, _CONT, "concurrency cap reached"),
    "quota_attach_conflict": CodeInfo(_T, _CONF, "quota already attached"),
    "invalid_quota_spec": CodeInfo(_T, _VAL, "malformed quota definition"),
}

#: Not-found codes name the entity that was missing.
NOT_FOUND_ENTITY = {
    "execution_not_found": "execution",
    "attempt_not_found": "attempt",
    "flow_not_found": "flow",
    "budget_not_found": "budget",
    "quota_policy_not_found": "quota_policy",
    "stream_not_found": "stream",
}


class EngineError(Exception):
    """Base of every error the engine raises.

    ``code`` is FlowFabric's wire code (or an ff_celery code for errors outside Lua),
    ``details`` the Lua detail strings, ``function`` the FCALL involved.
    """

    def __init__(
        self,
        code: str,
        details: list[str] | None = None,
        *,
        function: str | None = None,
        execution_id: str | None = None,
        message: str | None = None,
    ) -> None:
        self.code = code
        self.details = list(details or [])
        self.function = function
        self.execution_id = execution_id
        where = f"{function}: " if function else ""
        subject = f" [{execution_id}]" if execution_id else ""
        text = message or (CODES[code].meaning if code in CODES else code)
        detail = f" ({'; '.join(d for d in self.details if d)})" if any(self.details) else ""
        super().__init__(f"{where}{code}{subject}: {text}{detail}")

    @property
    def error_class(self) -> ErrorClass:
        info = CODES.get(self.code)
        return info.error_class if info else ErrorClass.TERMINAL

    @property
    def is_retryable(self) -> bool:
        return self.error_class is ErrorClass.RETRYABLE


class NotFoundError(EngineError):
    @property
    def entity(self) -> str:
        return NOT_FOUND_ENTITY.get(self.code, "resource")


class ValidationError(EngineError):
    """The caller supplied malformed, out-of-range or rejected input."""


class ContentionError(EngineError):
    """A transient conflict with another worker or with the execution's current state."""


class ExecutionNotActiveError(ContentionError):
    """``execution_not_active`` with its four reconciliation slots (spec §7.2)."""

    @property
    def terminal_outcome(self) -> str:
        return self._slot(0)

    @property
    def lease_epoch(self) -> str:
        return self._slot(1)

    @property
    def lifecycle_phase(self) -> str:
        return self._slot(2)

    @property
    def attempt_id(self) -> str:
        return self._slot(3)

    def _slot(self, index: int) -> str:
        return self.details[index] if index < len(self.details) else ""


class ConflictError(EngineError):
    """A permanent conflict with an existing record; do not blindly retry."""


class StateError(EngineError):
    """A legal but surprising state: lease lost, already suspended, budget exceeded, ..."""


class BugError(EngineError):
    """An engine invariant was violated."""


class TransportError(EngineError):
    """The server could not be reached, or answered something that is not the contract."""

    def __init__(self, message: str, *, retryable: bool, function: str | None = None, **kw: str) -> None:
        self.retryable = retryable
        super().__init__("transport", function=function, message=message, **kw)

    @property
    def error_class(self) -> ErrorClass:
        return ErrorClass.RETRYABLE if self.retryable else ErrorClass.TERMINAL


def retry_transport(operation: Callable[[], R], backoff_s: Sequence[float]) -> R:
    """``operation()``, retried after each pause of ``backoff_s`` while it fails with a
    retryable :class:`TransportError`; the last failure is raised."""
    for pause in (*backoff_s, None):
        try:
            return operation()
        except TransportError as exc:
            if not exc.retryable or pause is None:
                raise
            time.sleep(pause)
    raise AssertionError("unreachable")


def retry_transport_for(operation: Callable[[], R], seconds: float, *, max_pause_s: float = 1.0) -> R:
    """``operation()``, retried with pauses growing to ``max_pause_s`` while it fails with a
    retryable :class:`TransportError`, for up to ``seconds``; the last failure is raised."""
    deadline, pause = time.monotonic() + seconds, 0.05
    while True:
        try:
            return operation()
        except TransportError as exc:
            if not exc.retryable or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(2 * pause, max_pause_s)


class UnavailableError(EngineError):
    """The engine cannot serve the call (library missing, server too old, ...)."""

    def __init__(self, message: str, **kw: str) -> None:
        super().__init__("unavailable", message=message, **kw)


class ResourceExhaustedError(EngineError):
    """A bounded pool or limit was reached; ``retry_after_ms`` is advisory."""

    def __init__(self, message: str, *, retry_after_ms: int | None = None, **kw: str) -> None:
        self.retry_after_ms = retry_after_ms
        super().__init__("resource_exhausted", message=message, **kw)


class EngineTimeoutError(EngineError):
    """An operation ran past its deadline."""

    def __init__(self, message: str, **kw: str) -> None:
        super().__init__("timeout", message=message, **kw)


_KIND_CLASSES: dict[Kind, type[EngineError]] = {
    Kind.NOT_FOUND: NotFoundError,
    Kind.VALIDATION: ValidationError,
    Kind.CONTENTION: ContentionError,
    Kind.CONFLICT: ConflictError,
    Kind.STATE: StateError,
    Kind.BUG: BugError,
}


def error_for_code(
    code: str, details: list[str], *, function: str | None = None, execution_id: str | None = None
) -> EngineError:
    """The typed exception for a ``{0, code, details...}`` reply."""
    code, _, embedded = code.partition(":")  # already_member_of_different_flow:<flow id>
    if embedded:
        details = [embedded, *details]
    if code == "execution_not_active":
        cls: type[EngineError] = ExecutionNotActiveError
    elif code in CODES:
        cls = _KIND_CLASSES[CODES[code].kind]
    else:
        return TransportError(
            f"unknown error code {code!r} (details: {details})",
            retryable=False,
            function=function,
            execution_id=execution_id or "",
        )
    return cls(code, details, function=function, execution_id=execution_id)
