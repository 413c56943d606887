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
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ff_celery.engine import functions as fn
from ff_celery.engine.core import metrics
from ff_celery.engine.core.errors import (
    LEASE_LOST_CODES,
    EngineError,
    ExecutionNotActiveError,
    TransportError,
    error_for_code,
    retry_transport,
)
from ff_celery.engine.core.exec_core import CoreField
from ff_celery.engine.core.ids import ExecutionId
from ff_celery.engine.core.keys import DONE_NOTICE, wake_channel
from ff_celery.engine.core.notices import is_sharded
from ff_celery.engine.core.policy import ExecutionPolicy, RetryPolicy
from ff_celery.engine.work import budgets, signals

if TYPE_CHECKING:
    from ff_celery.engine.core.engine import Engine
    from ff_celery.engine.work.renewal import LeaseRenewer

log = logging.getLogger(__name__)

R = TypeVar("R")

#: Renewal failures in a row after which the lease is considered unhealthy.
UNHEALTHY_AFTER_FAILURES = 3
#: Without a successful renewal for this fraction of its TTL, a lease may expire on the server.
LAPSE_FRACTION = 0.8
#: Backoff (seconds) before each retry of a terminal operation after a transport error.
TERMINAL_RETRY_BACKOFF = (0.1, 0.4, 1.0)

_USE_STORED_POLICY: Any = object()
#: Errors after which this handle no longer holds a lease.
LEASE_GONE_CODES = LEASE_LOST_CODES | {"execution_not_active"}


#: Leases this process gave up on (lost, or lapsed for lack of renewals), as (execution id,
#: lease epoch); bounded: cleared when it reaches GIVEN_UP_MAX.
_given_up: set[tuple[str, int]] = set()
GIVEN_UP_MAX = 10_000


def lease_given_up(execution_id: str, lease_epoch: int) -> bool:
    """Whether this process gave up on that lease: whatever the attempt does afterwards (a
    task stopped for it) is not its outcome; another worker runs the execution."""
    return (str(execution_id), int(lease_epoch)) in _given_up


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
        core: dict[str, str] | None = None,
        renewer: LeaseRenewer | None = None,
        runnable_wait_s: float | None = None,
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
        self.core = core or {}
        #: When the execution became runnable (published, due, requeued), on this host's clock.
        self.runnable_since = time.time() - (runnable_wait_s or 0.0)
        #: Published after a terminal operation, in the same round trip (e.g. a result waiter).
        self.notify_channel: str | None = None
        #: A successful completion also resolved the flow edges out of it (``ffc_complete``).
        self.edges_resolved = False
        self.lease_expires_at = lease.expires_at
        self.lease_lost: EngineError | None = None
        self.on_lease_lost: Callable[[ClaimedTask, EngineError], None] | None = None
        self._renewal_failures = 0
        self._last_renewed_at = time.monotonic()  # the claim counts as the first renewal
        self._renewer = renewer
        self._finished = False
        self._lock = threading.Lock()
        if renewer is not None:
            renewer.track(self)

    # -- identity ---------------------------------------------------------------------------

    @cached_property
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
        """The execution's stored policy (defaults if absent or unreadable), read from the
        server on first use: only a failure without an explicit retry policy needs it."""
        policy_json = self.engine.stored_policy(self.execution_id)
        try:
            return ExecutionPolicy.from_json(policy_json)
        except ValueError as exc:
            log.warning("execution %s has an unreadable policy (%s); using defaults", self.execution_id, exc)
            return ExecutionPolicy()

    @property
    def retry_count(self) -> int:
        return int(self.core.get(CoreField.RETRY_COUNT) or 0)

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
        """False once the lease was lost, renewal failed three times in a row, or (for a lease
        that is renewed) no renewal succeeded for two renewal intervals (2/3 of the TTL: one
        was missed), whatever the renewal thread is doing (stuck, dead, starved)."""
        if self.lease_lost is not None or self._renewal_failures >= UNHEALTHY_AFTER_FAILURES:
            return False
        stale_after_s = 2 * self.renew_interval_s
        return self._renewer is None or time.monotonic() - self._last_renewed_at <= stale_after_s

    @property
    def lease_may_have_expired(self) -> bool:
        """True (for a lease that is renewed) once no renewal succeeded for
        ``LAPSE_FRACTION`` of the TTL: the server, which stamped the last renewal before its
        reply arrived here, may let the lease expire any moment and hand the execution to
        another worker, so the task must stop now (a frozen or unreachable server)."""
        lapse_after_s = LAPSE_FRACTION * self.lease_ttl_ms / 1000
        return self._renewer is not None and time.monotonic() - self._last_renewed_at >= lapse_after_s

    @property
    def consecutive_renewal_failures(self) -> int:
        return self._renewal_failures

    def renew_lease(self) -> int:
        """Renew now (the renewer also does this every ttl/3); answers the new expiry."""
        requested_at = time.monotonic()
        expires_at = self.engine.call(
            fn.RenewLease(
                execution_id=self.execution_id,
                attempt_index=self.attempt_index,
                fence=self.fence,
                lease_ttl_ms=self.lease_ttl_ms,
            )
        )
        self.on_renewed(expires_at, requested_at=requested_at)
        return expires_at

    def on_renewed(self, expires_at: int, *, requested_at: float) -> None:
        """The renewer (or :meth:`renew_lease`) extended the lease to ``expires_at`` with a
        call sent at ``requested_at`` (monotonic): the server stamped the renewal after that,
        so counting from it never overestimates the time left."""
        self._renewal_failures = 0
        self._last_renewed_at = requested_at
        self.lease_expires_at = expires_at

    def on_renewal_failed(self, error: EngineError, *, terminal: bool) -> None:
        """A renewal failed; ``terminal``: the lease is lost for good, or was ended by this
        attempt's own outcome (recorded by the process that ran it, or by a call whose reply
        was lost in a failover): then the handle is finished, nothing is lost."""
        self._renewal_failures += 1
        if not terminal:
            log.warning(
                "lease renewal of %s failed (%d in a row): %s", self.execution_id, self._renewal_failures, error
            )
            return
        if self.ended_by_own_outcome(error):
            log.debug("lease of %s ended by its attempt's own outcome", self.execution_id)
            self._finish()
            return
        self.lease_lost = error
        if len(_given_up) >= GIVEN_UP_MAX:
            _given_up.clear()
        _given_up.add((str(self.execution_id), self.lease_epoch))
        if self._finished:
            return
        log.warning("lease of %s lost: %s", self.execution_id, error)
        if self.on_lease_lost is not None:
            self.on_lease_lost(self, error)

    def ended_by_own_outcome(self, error: EngineError) -> bool:
        """Whether ``error`` shows the execution left this lease's attempt by the attempt's
        own doing: suspended, completed or failed, or waiting for its retry, under this
        lease's epoch (another worker's claim or a reclaim would have moved the epoch on)."""
        if not isinstance(error, ExecutionNotActiveError):
            return False
        own_epoch = error.lease_epoch in (str(self.lease_epoch), "")
        if error.lifecycle_phase == "terminal":
            return own_epoch and error.terminal_outcome in ("success", "failed")
        return own_epoch and error.lifecycle_phase in ("suspended", "runnable")

    def give_up_if_lapsed(self) -> bool:
        """If :attr:`lease_may_have_expired`, stop renewing and report the lease lost (code
        ``lease_expired``) as a failed renewal would, so its holder stops the task before
        another worker can run it. Answers whether it did."""
        if self.lease_lost is not None or self._finished or not self.lease_may_have_expired:
            return False
        if self._renewer is not None:
            self._renewer.untrack(self)
        ttl_s = self.lease_ttl_ms / 1000
        reason = f"no renewal reached the server for {LAPSE_FRACTION:.0%} of the {ttl_s:g} s lease"
        self.on_renewal_failed(error_for_code("lease_expired", [reason]), terminal=True)
        return True

    def release(self) -> None:
        """Stop renewing without ending the attempt (its outcome is recorded elsewhere, or
        the lease is left to expire so another worker reclaims it)."""
        self._finish()

    def _finish(self) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
        if self._renewer is not None:
            self._renewer.untrack(self)
        quota_policy_id = self.core.get(CoreField.QUOTA_POLICY_ID)
        if quota_policy_id:  # the attempt no longer runs: free its slot for the next one waiting
            try:
                budgets.release_admission(self.engine, quota_policy_id, self.execution_id, self.lane_id)
            except EngineError as exc:
                log.warning("quota admission of %s not released: %s", self.execution_id, exc)

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
        try:
            result = retry_transport(lambda: self._call(request), TERMINAL_RETRY_BACKOFF)
        except TransportError:
            raise  # the call may not have landed: keep renewing, the caller may retry
        except ExecutionNotActiveError as exc:
            outcome = replayed(exc)
            self._finish()
            if outcome is None:
                _count_fenced(exc.function or request.function, exc)
                raise
            return outcome
        except EngineError as exc:
            self._finish()
            _count_fenced(exc.function or request.function, exc)
            raise
        self._finish()
        return result

    def _call(self, request: fn.Fcall[R]) -> R:
        if self.notify_channel is None or request.publishes_done_notice:
            return self.engine.call(request)
        batch = self.engine.batch()
        batch.fcall(request)
        batch.notify(self.notify_channel, DONE_NOTICE)
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
        """End the attempt successfully; the execution becomes ``completed``. Where the
        hot-path library answers, the same call resolves a flow member's outgoing edges."""
        request = fn.CompleteExecution(**self._holder(), result_payload=result)

        def replayed(error: ExecutionNotActiveError) -> Literal[True] | None:
            return True if self._committed(error, outcome="success") else None

        if not self.engine.hot_path:
            self._terminal(request, replayed)
            return
        publish = not is_sharded(self.engine.redis)
        combined = fn.CompleteAndResolve(
            complete=request, notice_channel=self.notify_channel or "", notice=DONE_NOTICE, publish=publish
        )
        unsent = self._terminal(combined, replayed)
        self.edges_resolved = True  # by this call, or by the one that landed before (a replay)
        for lane, data in unsent if isinstance(unsent, list) else []:
            self.engine.notify(wake_channel(lane), data)

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

    def cancel(self, reason: str) -> str:
        """Cancel the execution from inside its attempt (fenced by this lease); answers the
        phase it was cancelled from."""
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

        return self._terminal(request, lambda error: "active" if self._committed(error, outcome="cancelled") else None)

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

    # -- suspension --------------------------------------------------------------------------

    def suspend(
        self,
        waitpoint_id: str,
        condition: fn.ResumeCondition,
        *,
        waitpoint_key: str = "",
        timeout_at: int | None = None,
        reason: fn.SuspendReason = "waiting_for_signal",
        use_pending: bool = False,
        suspension_id: str | None = None,
    ) -> fn.Suspension:
        """Park this attempt until ``condition`` is met on the waitpoint (fresh, or the pending
        one created with :meth:`create_pending_waitpoint`), releasing the lease; the execution
        resumes on the same attempt through a resumed claim. If signals buffered on the pending
        waitpoint already meet the condition, nothing is suspended and the lease is kept
        (``already_satisfied``). Safe to repeat after a lost reply (idempotent on the
        suspension id)."""
        suspension_id = suspension_id or self.engine.new_id()
        request = fn.SuspendExecution(
            **{k: v for k, v in self._holder().items() if k != "source"},
            suspension_id=suspension_id,
            waitpoint_id=waitpoint_id,
            waitpoint_key=waitpoint_key or ("" if use_pending else f"wpk:{waitpoint_id}"),
            reason_code=reason,
            timeout_at=timeout_at,
            resume_condition_json=condition.to_json(),
            use_pending_waitpoint=use_pending,
            timeout_behavior=condition.timeout_behavior,
            idempotency_key=suspension_id,
            now_ms=self.engine.now_ms(),
        )
        try:
            suspension = retry_transport(
                lambda: signals.call_with_keystore(self.engine, request), TERMINAL_RETRY_BACKOFF
            )
        except TransportError:
            raise
        except EngineError as exc:
            if exc.code in LEASE_GONE_CODES:
                self._finish()
            _count_fenced(exc.function or request.function, exc)
            raise
        if not suspension.already_satisfied:
            self._finish()
        return suspension

    def create_pending_waitpoint(self, waitpoint_id: str, waitpoint_key: str, expires_at: int) -> fn.WaitpointTicket:
        """A waitpoint (and its token) that signals can target before this attempt suspends
        on it; it lapses at ``expires_at`` (engine ms) unless the attempt suspends on it."""
        request = fn.CreatePendingWaitpoint(
            execution_id=self.execution_id,
            attempt_index=self.attempt_index,
            waitpoint_id=waitpoint_id,
            waitpoint_key=waitpoint_key,
            expires_at=expires_at,
        )
        return signals.call_with_keystore(self.engine, request)

    def resume_signals(self) -> list[signals.ReceivedSignal]:
        """The signals that resumed this attempt (empty after a timeout or operator resume)."""
        return signals.resume_signals(self.engine, self.execution_id, self.attempt_index)

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

    def append_frame(
        self,
        frame_type: str,
        payload: bytes | str = b"",
        *,
        correlation_id: str = "",
        mode: fn.StreamMode = "durable",
        max_payload_bytes: int = 65_536,
    ) -> fn.Appended:
        """Append a frame to this attempt's output stream (``retention_limit_exceeded`` over
        ``max_payload_bytes``; ``stale_owner_cannot_append`` once the lease is gone)."""
        return self.engine.call(
            fn.AppendFrame(
                execution_id=self.execution_id,
                attempt_index=self.attempt_index,
                fence=self.fence,
                frame_type=frame_type,
                payload=payload,
                ts=self.engine.now_ms(),
                correlation_id=correlation_id,
                mode=mode,
                max_payload_bytes=max_payload_bytes,
                patch_kind="json-merge-patch" if mode == "summary" else "",
            )
        )

    def budget_ids(self) -> list[str]:
        """The budgets this execution runs under (exec_core ``budget_ids``)."""
        raw = self.engine.read_field(self.execution_id, CoreField.BUDGET_IDS, "")
        return [budget_id for budget_id in raw.split(",") if budget_id]

    def report_usage(self, usage: dict[str, int], dedup_key: str | None = None) -> dict[str, fn.UsageReport]:
        """Report usage to every budget of the execution. ``dedup_key`` makes a repeated report
        (a retried call) count once. A ``HARD_BREACH`` report applied nothing: FlowFabric
        expects the attempt to stop and fail with ``budget_exceeded``."""
        budget_ids = self.budget_ids()
        if not budget_ids:
            return {}
        dedup_id = f"{self.execution_id}:{dedup_key}" if dedup_key else None
        return budgets.report_usage(self.engine, budget_ids, usage, dedup_id=dedup_id)

    def __del__(self) -> None:
        if not getattr(self, "_finished", True):
            log.warning("ClaimedTask %s dropped without a terminal operation; lease will expire", self.execution_id)


def _count_fenced(function: str, error: EngineError) -> None:
    """``ff_fenced_writes_total``: a write of this attempt refused because its lease is gone."""
    if error.code in LEASE_GONE_CODES:
        metrics.FENCED_WRITES.labels(function, error.code).inc()
