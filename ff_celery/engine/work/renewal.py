"""Background lease renewal: one thread on its own connection renews every lease a process
holds, each every ``ttl / 3``. When one falls due, every lease past half its interval is
renewed with it, in the same round trip: the leases a process holds fall into step, one round
trip per interval however many there are.

A renewal that fails with a terminal error (stale, expired or revoked lease, execution no
longer active, execution gone) stops renewing that lease and reports it lost; any other
failure, whatever it is, is counted and retried at the next interval: the thread never dies.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING, Protocol

from ff_celery.engine import functions as fn
from ff_celery.engine.core import metrics
from ff_celery.engine.core.errors import (
    LEASE_LOST_CODES,
    EngineError,
    ExecutionNotActiveError,
    NotFoundError,
    StateError,
    TransportError,
)
from ff_celery.engine.core.ids import ExecutionId

if TYPE_CHECKING:
    from ff_celery.engine.core.engine import Engine

log = logging.getLogger(__name__)

#: The renewal thread looks for new leases at least this often.
MAX_SLEEP_S = 1.0


def is_terminal_renewal_error(error: EngineError) -> bool:
    """True when renewing can never succeed again for this lease."""
    if isinstance(error, ExecutionNotActiveError | NotFoundError):
        return True
    return isinstance(error, StateError) and error.code in LEASE_LOST_CODES


class HeldLease(Protocol):
    """What the renewer needs of a lease it renews (``ClaimedTask`` is one)."""

    execution_id: ExecutionId
    attempt_index: int
    lease_ttl_ms: int

    @property
    def fence(self) -> fn.Fence: ...

    @property
    def renew_interval_s(self) -> float: ...

    def on_renewed(self, expires_at: int, *, requested_at: float) -> None: ...

    def on_renewal_failed(self, error: EngineError, *, terminal: bool) -> None: ...


class LeaseRenewer:
    """Renews the leases of registered :class:`HeldLease` handles until told to stop."""

    def __init__(self, engine: Engine, *, history_grace_ms: int = 5000) -> None:
        self.engine = engine
        self.history_grace_ms = history_grace_ms
        # weak: a handle its owner dropped stops being renewed, so its lease expires
        self._due: weakref.WeakKeyDictionary[HeldLease, float] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def track(self, task: HeldLease) -> None:
        with self._lock:
            self._due[task] = time.monotonic() + task.renew_interval_s
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="ff-lease-renewer", daemon=True)
                self._thread.start()
        if task.renew_interval_s < MAX_SLEEP_S:
            self._wakeup.set()  # due before the thread's next look

    def untrack(self, task: HeldLease) -> None:
        with self._lock:
            self._due.pop(task, None)

    @property
    def tracked(self) -> int:
        with self._lock:
            return len(self._due)

    def stop(self) -> None:
        self._stopped.set()
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.engine.close()

    def _run(self) -> None:
        while not self._stopped.is_set():
            now = time.monotonic()
            with self._lock:  # no handle is kept while the thread waits (its owner may drop it)
                upcoming = min(list(self._due.values()), default=now + 1.0)
                # with the first due, all past half their interval (a renewal early only extends)
                due = (
                    [t for t, at in list(self._due.items()) if at - t.renew_interval_s / 2 <= now]
                    if upcoming <= now
                    else []
                )
            if due:
                self.renew(due)
                continue
            self._wakeup.wait(timeout=max(0.0, min(upcoming - now, MAX_SLEEP_S)))
            self._wakeup.clear()

    def renew(self, tasks: list[HeldLease]) -> None:
        """Renew ``tasks`` now, in one round trip."""
        requests = [
            fn.RenewLease(
                execution_id=task.execution_id,
                attempt_index=task.attempt_index,
                fence=task.fence,
                lease_ttl_ms=task.lease_ttl_ms,
                lease_history_grace_ms=self.history_grace_ms,
            )
            for task in tasks
        ]
        requested_at = time.monotonic()
        try:
            outcomes = self.engine.call_many(requests)
        except TransportError as exc:
            outcomes = [exc] * len(tasks)
        except Exception as exc:  # anything else (a read-only replica, a bug): counted, retried, never fatal
            log.exception("lease renewal failed unexpectedly; retrying at the next interval")
            outcomes = [TransportError(f"renewal failed: {exc!r}", retryable=True, function="ff_renew_lease")]
            outcomes *= len(tasks)
        now = time.monotonic()
        for task, outcome in zip(tasks, outcomes):
            with self._lock:
                if task not in self._due:
                    continue  # finished meanwhile
                self._due[task] = now + task.renew_interval_s
            if isinstance(outcome, EngineError):
                terminal = is_terminal_renewal_error(outcome)
                metrics.LEASE_RENEWALS.labels("err").inc()
                if terminal:
                    metrics.LEASES_LOST.labels(outcome.code).inc()
                    self.untrack(task)
                task.on_renewal_failed(outcome, terminal=terminal)
            else:
                metrics.LEASE_RENEWALS.labels("ok").inc()
                task.on_renewed(outcome, requested_at=requested_at)
