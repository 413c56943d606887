"""The claimed-execution handle: what a worker holds while it runs an execution.

It carries the fence (lease id, lease epoch, attempt id), keeps the lease renewed in the
background, and ends the attempt with complete / fail / cancel / delay. Those terminal
operations are safe to repeat after a lost reply: an ``execution_not_active`` answer that
shows the same epoch, attempt and outcome is the earlier call having committed (spec §7.2).
A handle dropped without a terminal operation logs a warning; its lease simply expires.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from ff_celery.engine import functions as fn
from ff_celery.engine.errors import EngineError, ExecutionNotActiveError, TransportError
from ff_celery.engine.ids import ExecutionId
from ff_celery.engine.policy import ExecutionPolicy, RetryPolicy

if TYPE_CHECKING:
    from ff_celery.engine.client import Engine
    from ff_celery.engine.renewal import LeaseRenewer

log = logging.getLogger(__name__)

R = TypeVar("R")

#: Renewal failures in a row after which the lease is considered unhealthy.
UNHEALTHY_AFTER_FAILURES = 3
#: Backoff (seconds) before each retry of a terminal operation after a transport error.
TERMINAL_RETRY_BACKOFF = (0.1, 0.4, 1.0)

_USE_STORED_POLICY: Any = object()


class ClaimedTask:
    """An execution claimed under a lease. Finish it with exactly one terminal operation."""

    def __init__(
        self,
        engine: Engine,
        *,
        execution_id: ExecutionId,
        lane_id: str,
        worker_id: str,
        worker_instance_id: str,
        lease: fn.Lease,
        lease_ttl_ms: int,
        payload: bytes = b"",
        tags: dict[str, str] | None = None,
        policy_json: bytes | str | None = None,
        core: dict[str, str] | None = None,
        renewer: LeaseRenewer | None = None,
    ) -> None:
        if lease.attempt_id is None:
            raise ValueError("a claimed task needs the lease's attempt id")
        self.engine = engine
        self.execution_id = execution_id
        self.lane_id = lane_id
        self.worker_id = worker_id
        self.worker_instance_id = worker_instance_id
        self.lease = lease
        self.lease_ttl_ms = lease_ttl_ms
        self.payload = payload
        self.tags = tags or {}
        self._policy_json = policy_json
        self.core = core or {}
        #: Published after a terminal operation, in the same round trip (e.g. a result waiter).
        self.notify_channel: str | None = None
        self.lease_expires_at = lease.expires_at
        self.lease_lost: EngineError | None = None
        self.on_lease_lost: Callable[[ClaimedTask, EngineError], None] | None = None
        self._renewal_failures = 0
        self._renewer = renewer
        self._finished = False
        self._lock = threading.Lock()
        if renewer is not None:
            renewer.track(self)

    # -- identity ---------------------------------------------------------------------------

    @property
    def fence(self) -> fn.Fence:
        return fn.Fence(lease_id=self.lease.lease_id, lease_epoch=self.lease_epoch, attempt_id=self.attempt_id)

    @property
    def attempt_index(self) -> int:
        return self.lease.attempt_index

    @property
    def attempt_id(self) -> str:
        return self.lease.attempt_id or ""

    @property
    def lease_epoch(self) -> int:
        return self.lease.lease_epoch

    @property
    def attempt_type(self) -> str:
        return self.lease.attempt_type or ""

    @cached_property
    def policy(self) -> ExecutionPolicy:
        """The execution's stored policy (defaults if absent or unreadable)."""
        try:
            return ExecutionPolicy.from_json(self._policy_json)
        except ValueError as exc:
            log.warning("execution %s has an unreadable policy (%s); using defaults", self.execution_id, exc)
            return ExecutionPolicy()

    @property
    def retry_count(self) -> int:
        return int(self.core.get("retry_count") or 0)

    @property
    def renew_interval_s(self) -> float:
        return max(self.lease_ttl_ms / 3, 1) / 1000

    @property
    def finished(self) -> bool:
        return self._finished

    def __repr__(self) -> str:
        return f"<ClaimedTask {self.execution_id} attempt={self.attempt_index} epoch={self.lease_epoch}>"

    # -- lease health ------------------------------------------------------------------------

    def is_lease_healthy(self) -> bool:
        """False once renewal failed three times in a row or the lease was lost."""
        return self.lease_lost is None and self._renewal_failures < UNHEALTHY_AFTER_FAILURES

    @property
    def consecutive_renewal_failures(self) -> int:
        return self._renewal_failures

    def renew_lease(self) -> int:
        """Renew now (the renewer also does this every ttl/3); answers the new expiry."""
        expires_at = self.engine.call(
            fn.RenewLease(
                execution_id=self.execution_id,
                attempt_index=self.attempt_index,
                fence=self.fence,
                lease_ttl_ms=self.lease_ttl_ms,
            )
        )
        self._renewed(expires_at)
        return expires_at

    def _renewed(self, expires_at: int) -> None:
        self._renewal_failures = 0
        self.lease_expires_at = expires_at

    def _renewal_failed(self, error: EngineError, *, terminal: bool) -> None:
        self._renewal_failures += 1
        if not terminal:
            log.warning(
                "lease renewal of %s failed (%d in a row): %s", self.execution_id, self._renewal_failures, error
            )
            return
        self.lease_lost = error
        if self._finished:
            return
        log.warning("lease of %s lost: %s", self.execution_id, error)
        if self.on_lease_lost is not None:
            self.on_lease_lost(self, error)

    def release(self) -> None:
        """Stop renewing without ending the attempt (its outcome is recorded elsewhere, or
        the lease is left to expire so another worker reclaims it)."""
        self._finish()

    def _finish(self) -> None:
        with self._lock:
            self._finished = True
        if self._renewer is not None:
            self._renewer.untrack(self)

    # -- terminal operations -----------------------------------------------------------------

    def _holder(self, source: str = "") -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "fence": self.fence,
            "lane_id": self.lane_id,
            "worker_instance_id": self.worker_instance_id,
            "attempt_index": self.attempt_index,
            "source": source,
        }

    def _terminal(self, request: fn.Fcall[R], replayed: Callable[[ExecutionNotActiveError], R | None]) -> R:
        """Run a terminal FCALL, retrying transport failures; reconcile a committed replay."""
        for backoff in (*TERMINAL_RETRY_BACKOFF, None):
            try:
                result = self._call(request)
            except TransportError as exc:
                if not exc.retryable or backoff is None:
                    raise  # the call may not have landed: keep renewing, the caller may retry
                time.sleep(backoff)
                continue
            except ExecutionNotActiveError as exc:
                outcome = replayed(exc)
                self._finish()
                if outcome is None:
                    raise
                return outcome
            except EngineError:
                self._finish()
                raise
            self._finish()
            return result
        raise AssertionError("unreachable")

    def _call(self, request: fn.Fcall[R]) -> R:
        if self.notify_channel is None:
            return self.engine.call(request)
        batch = self.engine.batch()
        batch.fcall(request)
        batch.command("publish", self.notify_channel, b"1")
        outcome = batch.execute()[0]
        if isinstance(outcome, EngineError):
            raise outcome
        return outcome

    def _committed(
        self,
        error: ExecutionNotActiveError,
        *,
        outcome: str | None = None,
        phase: str | None = None,
        same_attempt: bool = True,
    ) -> bool:
        """Whether ``execution_not_active`` shows this lease's own call already committed."""
        return (
            error.lease_epoch == str(self.lease_epoch)
            and (not same_attempt or error.attempt_id == self.attempt_id)
            and (outcome is None or error.terminal_outcome == outcome)
            and (phase is None or error.lifecycle_phase == phase)
        )

    def complete(self, result: bytes = b"") -> None:
        """End the attempt successfully; the execution becomes ``completed``."""

        self._terminal(
            fn.CompleteExecution(**self._holder(), result_payload=result),
            lambda error: True if self._committed(error, outcome="success") else None,
        )

    def fail(
        self,
        reason: str,
        category: str = "transient",
        *,
        retry_policy: RetryPolicy | None = _USE_STORED_POLICY,
    ) -> fn.FailOutcome:
        """End the attempt as failed. The engine schedules a retry per the execution's stored
        retry policy (or ``retry_policy``; ``None`` fails terminally)."""
        policy = self.policy.retry_policy if retry_policy is _USE_STORED_POLICY else retry_policy
        request = fn.FailExecution(
            **self._holder(),
            failure_reason=reason,
            failure_category=category,
            retry_policy_json=policy.model_dump_json(exclude_none=True) if policy else "",
        )

        def replayed(error: ExecutionNotActiveError) -> fn.FailOutcome | None:
            # a scheduled retry clears current_attempt_id, so only the epoch can match
            if self._committed(error, phase="runnable", same_attempt=False):
                return fn.FailOutcome(retry_scheduled=True, delay_until=None)
            if self._committed(error, phase="terminal", outcome="failed"):
                return fn.FailOutcome(retry_scheduled=False)
            return None

        return self._terminal(request, replayed)

    def cancel(self, reason: str) -> None:
        """Cancel the execution from inside its attempt (fenced by this lease)."""
        request = fn.CancelExecution(
            execution_id=self.execution_id,
            reason=reason,
            source="worker",
            lease_id=self.lease.lease_id,
            lease_epoch=self.lease_epoch,
            lane_id=self.lane_id,
            attempt_index=self.attempt_index,
            waitpoint_id=None,
            worker_instance_id=self.worker_instance_id,
        )

        self._terminal(request, lambda error: "active" if self._committed(error, outcome="cancelled") else None)

    def delay(self, delay_until_ms: int) -> None:
        """Release the lease and park this attempt until ``delay_until_ms`` (engine time); the
        same attempt continues through a resumed claim."""

        self._terminal(
            fn.DelayExecution(**self._holder(), delay_until=delay_until_ms),
            lambda error: delay_until_ms if self._committed(error, phase="runnable") else None,
        )

    def hand_back(self) -> None:
        """Release the lease and make the execution claimable again at once. The attempt is
        interrupted, not ended: whoever claims it next continues it (a resumed claim)."""
        now = self.engine.now_ms()
        self.delay(now)
        self.engine.call(fn.PromoteDelayed(execution_id=self.execution_id, lane_id=self.lane_id, now_ms=now))
        self.engine.wake(self.lane_id)

    # -- non-terminal ------------------------------------------------------------------------

    def update_progress(self, percent: float | None = None, message: str = "") -> None:
        self.engine.call(
            fn.UpdateProgress(
                execution_id=self.execution_id,
                lease_id=self.lease.lease_id,
                lease_epoch=self.lease_epoch,
                progress_pct=percent,
                progress_message=message,
            )
        )

    def __del__(self) -> None:
        if not getattr(self, "_finished", True):
            log.warning("ClaimedTask %s dropped without a terminal operation; lease will expire", self.execution_id)
