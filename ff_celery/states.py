"""Celery states of FlowFabric executions: the states Celery lacks, and how an execution's
state maps to a Celery one (the result backend reads through this table)."""

from __future__ import annotations

from typing import Any

from celery import states

#: Celery state of a task waiting on a waitpoint (see ff_celery.waitpoints).
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
