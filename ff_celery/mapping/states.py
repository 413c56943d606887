"""Celery states of FlowFabric executions: the states Celery lacks, and how an execution's
state maps to a Celery one (the result backend reads through this table)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import states

from ff_celery.engine import CoreField

#: Celery state of a task waiting on a waitpoint (see ff_celery.features.signals).
SUSPENDED = "SUSPENDED"
#: Celery state of a task held back by its budget or quota; ``info`` says which and why.
BLOCKED = "BLOCKED"

#: Execution public state -> Celery state, for executions that ended without completing.
TERMINAL_STATES = {
    "failed": states.FAILURE,
    "cancelled": states.REVOKED,
    "expired": states.REVOKED,
}


def suspended_info(waitpoint: dict[str, Any], signal_names: list[str], timeout_at: int | None) -> dict[str, Any]:
    """``AsyncResult.info`` of a SUSPENDED task: the waitpoint (address and token), the
    signal names it waits for and when the wait times out (ms, or None)."""
    return {"waitpoint": waitpoint, "signal_names": list(signal_names), "timeout_at": timeout_at}


def celery_state(core: Mapping[str, str], recorded: str | None) -> str:
    """The Celery state of an execution that has not completed, from its ``exec_core``
    fields and the state its worker last recorded (``recorded``; None if nothing).

    Ended without completing -> FAILURE / REVOKED; waiting for its next attempt -> RETRY;
    held back by a budget or quota -> BLOCKED; suspended -> SUSPENDED; running -> the state
    its worker announced (STARTED, a custom state such as PROGRESS), else PENDING.
    """
    ended = TERMINAL_STATES.get(core.get(CoreField.PUBLIC_STATE, ""))
    if ended is not None:
        return ended
    if core.get(CoreField.ATTEMPT_STATE) == "pending_retry_attempt":
        return states.RETRY
    if core.get(CoreField.PUBLIC_STATE) == "rate_limited":
        return BLOCKED
    if core.get(CoreField.LIFECYCLE_PHASE) == "suspended":
        return SUSPENDED
    if recorded == SUSPENDED:
        recorded = None  # it resumed since
    if core.get(CoreField.LIFECYCLE_PHASE) == "active" and recorded and recorded not in states.READY_STATES:
        return recorded
    return states.RETRY if recorded == states.RETRY else states.PENDING
