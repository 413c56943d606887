"""The task base class: retries are attempts of the same execution, not new messages.

``apply_async`` attaches the task's retry options as the execution's retry policy
(``max_retries`` -> ``max_retries``; ``retry_backoff``/``retry_backoff_max`` -> exponential
backoff, else ``default_retry_delay`` -> fixed backoff). ``retry()`` keeps Celery's checks
(``max_retries``, ``MaxRetriesExceededError``, ``countdown``/``eta``) but publishes nothing:
the result backend fails the attempt with that delay and FlowFabric schedules the next
attempt, which ``self.request.retries`` then counts.
"""

from __future__ import annotations

from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

import celery
from celery.exceptions import Retry
from celery.utils.serialization import raise_with_context

from ff_celery.engine import UNLIMITED_RETRIES, ExecutionPolicy, ExponentialBackoff, FixedBackoff, RetryPolicy
from ff_celery.mapping.messages import FENCE_HEADER, POLICY_HEADER

#: Celery's "retry forever" (max_retries=None) as a FlowFabric count.


@lru_cache(maxsize=1024)
def policy_json_for(max_retries: int | None, retry_backoff: Any, retry_backoff_max: int, delay_s: float) -> str:
    """The execution policy JSON published for a task with these retry options."""
    retry_policy = retry_policy_for(
        max_retries, retry_backoff=retry_backoff, retry_backoff_max=retry_backoff_max, delay_s=delay_s
    )
    return ExecutionPolicy(retry_policy=retry_policy).to_json()


def retry_policy_for(
    max_retries: int | None, *, retry_backoff: Any, retry_backoff_max: int, delay_s: float
) -> RetryPolicy:
    """The FlowFabric retry policy equivalent to a task's retry options."""
    if retry_backoff:
        factor = 1 if retry_backoff is True else int(retry_backoff)
        backoff: FixedBackoff | ExponentialBackoff = ExponentialBackoff(
            initial_delay_ms=factor * 1000, max_delay_ms=int(retry_backoff_max) * 1000, multiplier=2.0
        )
    else:
        backoff = FixedBackoff(delay_ms=int(delay_s * 1000))
    return RetryPolicy(max_retries=UNLIMITED_RETRIES if max_retries is None else max_retries, backoff=backoff)


class Task(celery.Task):
    """Base class for tasks on ff_celery (``install(app)`` makes it the app's default; tasks on
    Celery's own class work too)."""

    # The attempt's outcome is recorded by the result backend; the ack only ends the lease.
    acks_late = True
    acks_on_failure_or_timeout = True
    acks_on_failure = True
    acks_on_timeout = True
    # Lost or crashed workers are FlowFabric's business (lease expiry and requeue).
    reject_on_worker_lost = False
    retry_on_worker_lost = False

    @classmethod
    def on_bound(cls, app: celery.Celery) -> None:
        super().on_bound(app)
        from ff_celery.integration.app import integrate

        integrate(app)

    def ff_policy_json(self) -> str:
        """The execution policy published with this task's messages."""
        return policy_json_for(
            self.max_retries,
            getattr(self, "retry_backoff", False),
            getattr(self, "retry_backoff_max", 600),
            self.default_retry_delay,
        )

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        """Celery's, plus the execution policy in the headers (ff_* options, the task's and
        the call's, are carried as for any task class: :mod:`ff_celery.integration.app`)."""
        headers = dict(options.pop("headers", None) or {})
        headers.setdefault(POLICY_HEADER, self.ff_policy_json())
        return super().apply_async(args, kwargs, headers=headers, **options)

    def retry(
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: datetime | None = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        request = self.request
        replanned = args is not None or kwargs is not None or options
        if replanned or request.called_directly or request.is_eager or not getattr(request, FENCE_HEADER, None):
            # Celery's re-publish: on flowfabric:// a duplicate that carries the next attempt
            return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)
        retries = request.retries + 1
        if max_retries is not None:
            self.override_max_retries = max_retries
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and retries > limit:
            if exc:
                raise_with_context(exc)
            raise self.MaxRetriesExceededError(
                f"Can't retry {self.name}[{request.id}] args:{request.args} kwargs:{request.kwargs}",
                task_args=request.args,
                task_kwargs=request.kwargs,
            )
        if eta is not None:
            moment = eta if eta.tzinfo else eta.replace(tzinfo=timezone.utc)
            countdown = max(0.0, (moment - datetime.now(timezone.utc)).total_seconds())
        elif countdown is None:
            countdown = self.default_retry_delay
        # Read by the result backend when it records the retry (mark_as_retry).
        request.ff_retry = {
            "delay_ms": int(countdown * 1000),
            "max_retries": UNLIMITED_RETRIES if limit is None else limit,
        }
        ret = Retry(exc=exc, when=eta or countdown)
        if throw:
            raise ret
        return ret
