"""Celery result backend ``flowfabric://``: outcomes are FlowFabric terminal operations, and
states are read from the execution.

In the worker, a task's outcome ends its attempt with the fence from ``request.ff``: success
completes the execution (the encoded result meta is its result), a failure fails it
terminally, a retry fails it with a retry policy so the engine schedules the next attempt,
a revoke cancels it. Every call is fenced, so a worker that lost its lease cannot overwrite
the outcome. Exceptions, tracebacks and interim states (STARTED, RETRY, custom states) are
kept as Celery meta in ``ffc:celery-task-meta-<id>``; groups and chords use the same store
(chords count parts with INCR, no ``chord_unlock`` polling).

Reading (``AsyncResult``) resolves the task id to its execution, from any process, without
knowing the queue: completed -> SUCCESS, failed -> FAILURE, cancelled or expired -> REVOKED,
waiting for a retry -> RETRY, suspended on a waitpoint -> SUSPENDED, held back by a budget
or quota -> BLOCKED, running -> STARTED (with ``task_track_started``) or PENDING.
``get()`` waits on the task's completion channel through one Pub/Sub connection per thread,
subscribed for the duration of the wait; while it cannot subscribe (a failover: the slot map
is read again and the subscription retried), it reads the state at every interval.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Any

import redis
from celery import states
from celery.backends.base import BaseKeyValueStoreBackend, SyncBackendMixin
from celery.exceptions import TaskRevokedError, TimeoutError
from kombu.utils.encoding import bytes_to_str

from ff_celery.engine import (
    DONE_NOTICE,
    RETRYABLE_REDIS_ERRORS,
    CoreField,
    Engine,
    EngineError,
    ExecutionId,
    FailOutcome,
    Listener,
    TransportError,
    chord_failure_key,
    done_channel,
    lease_given_up,
    read_waitpoint,
    refresh_slot_map,
)
from ff_celery.features.signals import Waitpoint
from ff_celery.integration.app import integrate
from ff_celery.integration.context import engine_for_url, fence_of
from ff_celery.mapping.canvas import fail_chord_body
from ff_celery.mapping.messages import NAMESPACE, celery_task_of
from ff_celery.mapping.outcomes import describe, end_attempt, failure_category, record_failure, record_retry
from ff_celery.mapping.states import BLOCKED, SUSPENDED, celery_state, suspended_info

log = logging.getLogger(__name__)

#: How long a chord's "a header task failed" marker lives when results never expire.
CHORD_FAILURE_TTL_S = 86_400

#: The exec_core fields a result read needs.
CORE_FIELDS = (
    CoreField.PUBLIC_STATE,
    CoreField.LIFECYCLE_PHASE,
    CoreField.ATTEMPT_STATE,
    CoreField.COMPLETED_AT,
    CoreField.FAILURE_REASON,
    CoreField.CANCELLATION_REASON,
    CoreField.BLOCKING_REASON,
    CoreField.BLOCKING_DETAIL,
    CoreField.CURRENT_WAITPOINT_ID,
)


class ExecutionFailed(Exception):
    """The execution failed without a Celery exception recorded (e.g. it crashed too often)."""


class FlowFabricBackend(BaseKeyValueStoreBackend, SyncBackendMixin):
    """Result backend for ``result_backend = "flowfabric://host:port/db"``."""

    task_keyprefix = "ffc:celery-task-meta-"
    group_keyprefix = "ffc:celery-taskset-meta-"
    chord_keyprefix = "ffc:chord-unlock-"
    implements_incr = True
    #: Outcomes are recorded on executions here, not by ff_celery.mapping.outcomes' signal handlers.
    records_outcomes = True
    supports_native_join = True
    supports_autoexpire = True
    persistent = True

    def __init__(self, app: Any, url: str | None = None, **kwargs: Any) -> None:
        integrate(app)  # its defaults (e.g. result_backend_always_retry) before Celery reads them
        super().__init__(app, url=url, **kwargs)
        self.url = url or app.conf.result_backend
        self._local = threading.local()

    @property
    def engine(self) -> Engine:
        """Where the app's executions live: the ``flowfabric://`` broker's server and database
        (wherever this backend is), else this backend's own."""
        return self._engines()[0]

    @property
    def store(self) -> redis.Redis:
        """Where Celery's own records (meta, groups, chord counters) are kept: this backend's URL."""
        return self._engines()[1].redis

    def _engines(self) -> tuple[Engine, Engine]:
        """The executions' engine and the store's, looked up once per process (every result
        read and write asks; the app's configuration is slow to read)."""
        cached = self.__dict__.get("_engines_cache")
        if cached is None or cached[0] != os.getpid():
            broker_url = self.app.conf.broker_url
            store = engine_for_url(self.url)
            executions = engine_for_url(broker_url) if str(broker_url or "").startswith("flowfabric") else store
            cached = self.__dict__["_engines_cache"] = (os.getpid(), (executions, store))
        return cached[1]

    def exception_safe_to_retry(self, exc: BaseException) -> bool:
        """Transient server trouble (a restart still loading its data, a failover, a dropped
        connection): Celery retries the read or write with backoff (``result_backend_always_retry``)."""
        if isinstance(exc, TransportError):
            return exc.retryable
        return isinstance(exc, RETRYABLE_REDIS_ERRORS)

    # -- key/value store (Celery meta, groups, chord counters) ----------------------------

    def get(self, key: bytes) -> bytes | None:
        return self.store.get(key)

    def mget(self, keys: list[bytes]) -> list[bytes | None]:
        """One GET per key in one round trip (an MGET of keys in different slots would be
        refused by a cluster)."""
        if not keys:
            return []
        pipe = self.store.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        return pipe.execute()

    def set(self, key: bytes, value: bytes) -> None:
        self.store.set(key, value, ex=int(self.expires) or None)

    def delete(self, key: bytes) -> None:
        self.store.delete(key)

    def incr(self, key: bytes) -> int:
        return self.store.incr(key)

    def expire(self, key: bytes, value: int) -> None:
        if value:
            self.store.expire(key, int(value))

    # -- recording outcomes (worker side) -------------------------------------------------

    def mark_as_done(
        self, task_id: str, result: Any, request: Any = None, store_result: bool = True, state: str = states.SUCCESS
    ) -> None:
        if not store_result or (request is not None and request.ignore_result):
            end_attempt(self.engine, task_id, request, lambda handle: handle.complete(b""))  # no result kept
        super().mark_as_done(task_id, result, request=request, store_result=store_result, state=state)

    def mark_as_failure(
        self,
        task_id: str,
        exc: BaseException,
        traceback: Any = None,
        request: Any = None,
        store_result: bool = True,
        call_errbacks: bool = True,
        state: str = states.FAILURE,
    ) -> None:
        if request is not None and state == states.FAILURE:
            # before the execution fails: then the engine skips the body, already marked failed
            fail_chord_body(self, request, task_id, exc)
        super().mark_as_failure(task_id, exc, traceback, request, store_result, call_errbacks, state)

    def claim_chord_failure(self, body_id: str, task_id: str) -> bool:
        """True for the first header task of the chord whose body is ``body_id`` to fail."""
        key = chord_failure_key(NAMESPACE, body_id)
        return bool(self.store.set(key, task_id, nx=True, ex=int(self.expires or CHORD_FAILURE_TTL_S)))

    def mark_as_ignored(self, task_id: str, request: Any) -> None:
        """End the execution of a task that raised ``Ignore`` (e.g. ``Task.replace``): its
        attempt is over, and readers keep seeing the state Celery last recorded."""
        meta = self._stored(task_id) or {"status": states.PENDING, "result": None, "task_id": task_id}
        end_attempt(self.engine, task_id, request, lambda handle: handle.complete(self.encode(meta)))

    def _store_result(
        self, task_id: str, result: Any, state: str, traceback: Any = None, request: Any = None, **kwargs: Any
    ) -> Any:
        """Record an outcome. ``result`` arrives encoded (exceptions as dicts)."""
        if state == states.RETRY and failure_category(result) == "budget_exceeded":
            state = states.FAILURE  # a hard budget breach ends the execution, retry or not
        meta = self._get_result_meta(result=result, state=state, traceback=traceback, request=request)
        meta["task_id"] = bytes_to_str(task_id)
        encoded = self.encode(meta)
        fence = fence_of(request)
        fenced = fence is not None
        if state == states.SUCCESS and fenced:
            end_attempt(self.engine, task_id, request, lambda handle: handle.complete(encoded))
            return result
        if state == states.REVOKED and fenced:
            # A task stopped because this worker gave up its lease records nothing (another
            # worker runs it); one an operator cancelled already neither. Cancel first.
            if lease_given_up(fence["execution_id"], fence["lease_epoch"]):
                return result
            if end_attempt(self.engine, task_id, request, lambda handle: handle.cancel(describe(result))) is None:
                return result
            self.set(self.get_key_for_task(task_id), encoded)
            return result
        # Celery meta first: once the execution shows the outcome, its details are readable.
        self.set(self.get_key_for_task(task_id), encoded)
        if state == states.RETRY:
            outcome = record_retry(self.engine, task_id, request, result)
            if isinstance(outcome, FailOutcome) and not outcome.retry_scheduled:
                meta["status"] = states.FAILURE  # the engine refused another attempt
                self.set(self.get_key_for_task(task_id), self.encode(meta))
        elif state == states.FAILURE:
            record_failure(self.engine, task_id, request, result)
        if state not in states.READY_STATES:  # for get(on_message=...): the meta itself
            self.engine.notify(done_channel(NAMESPACE, task_id), encoded)
        elif not fenced:
            self.engine.notify(done_channel(NAMESPACE, task_id), DONE_NOTICE)
        return result

    def revoke(self, task_id: str, reason: str = "revoked") -> str | None:
        """Cancel the task's execution durably (any phase); answers the phase it left. A task
        of a canvas (a flow member) cancels its whole flow: nothing after it runs."""
        eid = self.engine.resolve(task_id)
        phase = None
        if eid is not None:
            try:
                flow = self.engine.flows.flow_of(eid)
                if flow is None:
                    phase = self.engine.cancel(eid, reason)
                else:
                    self.engine.flows.cancel(flow, reason)
            except EngineError as exc:
                log.info("revoke of %s: %s", task_id, exc)
        else:
            stored = self._stored(task_id)
            if stored and stored["status"] not in (states.PENDING, states.RECEIVED, states.RETRY, states.REJECTED):
                return None  # no execution here: ended, or started by another worker, as Celery leaves it
        self.store_result(task_id, TaskRevokedError(reason), states.REVOKED)
        return phase

    def upstream_values(self, task_ids: list[str]) -> list[Any]:
        """What each task returned (tasks a flow member runs after, all completed), in two
        round trips; ValueError naming a task that did not complete."""
        values = []
        for task_id, (state, result) in zip(task_ids, self.engine.read_results(task_ids)):
            if state != "completed":
                raise ValueError(f"upstream task {task_id} of this flow member is {state or 'unknown'}, not completed")
            values.append(self.decode_result(result)["result"] if result else None)
        return values

    # -- reading states -------------------------------------------------------------------

    def _stored(self, task_id: str) -> dict[str, Any] | None:
        raw = self.get(self.get_key_for_task(task_id))
        return self.decode_result(raw) if raw else None

    def _get_task_meta_for(self, task_id: str) -> dict[str, Any]:
        engine, meta_key = self.engine, self.get_key_for_task(task_id)
        same_store = self.store is engine.redis  # then the Celery meta comes in the same round trip
        read = engine.read_aliased(task_id, CORE_FIELDS, also_get=[meta_key] if same_store else [])
        eid, core, result = read.execution_id, read.core, read.result
        if core.get(CoreField.PUBLIC_STATE) == "completed":
            # completed without a result: ignore_result, so PENDING as Celery answers
            meta = self.decode_result(result) if result else {"status": states.PENDING, "result": None}
        else:
            raw = read.extras[0] if same_store else self.get(meta_key)
            stored = self.decode_result(raw) if raw else None
            if not core:
                return stored or {"status": states.PENDING, "result": None}
            meta = self._meta_from_execution(eid, core, stored, task_id)
        meta["task_id"] = task_id
        if core.get(CoreField.COMPLETED_AT):
            meta.setdefault("date_done", datetime.fromtimestamp(int(core[CoreField.COMPLETED_AT]) / 1000, timezone.utc))
        return meta

    def _meta_from_execution(
        self, eid: ExecutionId, core: dict[str, str], stored: dict[str, Any] | None, task_id: str
    ) -> dict[str, Any]:
        """Celery meta of an execution that has not completed (its state: :func:`celery_state`)."""
        if core.get(CoreField.PUBLIC_STATE) == "skipped":
            return stored if stored and stored["status"] in states.READY_STATES else self._skipped_meta(eid)
        state = celery_state(core, stored["status"] if stored else None)
        if stored and stored["status"] == state and state not in (SUSPENDED, BLOCKED):
            return stored  # with what the worker recorded: the exception, a custom state's meta
        if state in (states.FAILURE, states.REVOKED):
            if state == states.FAILURE:
                exc: BaseException = ExecutionFailed(core.get(CoreField.FAILURE_REASON) or "execution failed")
            else:
                exc = TaskRevokedError(core.get(CoreField.CANCELLATION_REASON) or core[CoreField.PUBLIC_STATE])
            return self.meta_from_decoded(
                {"status": state, "result": self.prepare_exception(exc), "traceback": None, "children": []}
            )
        if state == BLOCKED:
            return {"status": BLOCKED, "result": {"reason": core.get(CoreField.BLOCKING_REASON, ""),
                                                  "detail": core.get(CoreField.BLOCKING_DETAIL, "")}}  # fmt: skip
        if state == SUSPENDED:
            return self._suspended_meta(eid, core.get(CoreField.CURRENT_WAITPOINT_ID, ""), task_id)
        return {"status": state, "result": None}

    def _skipped_meta(self, eid: ExecutionId) -> dict[str, Any]:
        """A flow member the engine skipped ends as the task that made it impossible did
        (FAILURE with its exception, or REVOKED), as Celery marks the rest of a chain."""
        cause = self.engine.flows.skip_cause(eid)
        task = celery_task_of(self.engine.read_tags([cause])[0]) if cause is not None else None
        if task is not None:
            meta = self._get_task_meta_for(task[0])
            if meta["status"] in states.PROPAGATE_STATES:
                return {key: meta.get(key) for key in ("status", "result", "traceback")} | {"children": []}
        exc = ExecutionFailed("skipped: a task it runs after did not succeed")
        return self.meta_from_decoded(
            {"status": states.FAILURE, "result": self.prepare_exception(exc), "traceback": None, "children": []}
        )

    def _suspended_meta(self, eid: ExecutionId, waitpoint_id: str, task_id: str) -> dict[str, Any]:
        """SUSPENDED with the waitpoint read from the engine (so it is there as soon as the
        execution is suspended, before the worker has recorded anything)."""
        record = read_waitpoint(self.engine, eid, waitpoint_id) if waitpoint_id else None
        if record is None:
            return {"status": SUSPENDED, "result": None}
        waitpoint = Waitpoint(
            name=record.waitpoint_key,
            execution_id=str(eid),
            waitpoint_id=record.waitpoint_id,
            token=record.token,
            task_id=task_id,
        )
        info = suspended_info(waitpoint.model_dump(), record.signal_names, record.expires_at)
        return {"status": SUSPENDED, "result": info}

    def wait_for_pending(
        self,
        result: Any,
        timeout: float | None = None,
        interval: float = 0.5,
        no_ack: bool = True,
        on_message: Any = None,
        on_interval: Any = None,
        callback: Any = None,
        propagate: bool = True,
    ) -> Any:
        """``AsyncResult.get()``: as Celery's, with ``on_message`` (see :meth:`get_many`)."""
        for _, meta in self.get_many(
            [result.id], timeout=timeout, interval=interval, on_message=on_message, on_interval=on_interval
        ):
            result._maybe_set_cache(meta)
            return result.maybe_throw(propagate=propagate, callback=callback)
        return None

    def wait_for(
        self,
        task_id: str,
        timeout: float | None = None,
        interval: float = 0.5,
        no_ack: bool = True,
        on_interval: Any = None,
    ) -> dict[str, Any]:
        """Wait until the task is ready (see :meth:`get_many`)."""
        for _, meta in self.get_many([task_id], timeout=timeout, interval=interval, on_interval=on_interval):
            return meta
        raise TimeoutError("The operation timed out.")  # max_iterations only: not reached

    def get_many(
        self,
        task_ids: Iterable[str | bytes],
        timeout: float | None = None,
        interval: float | None = 0.5,
        no_ack: bool = True,
        on_message: Any = None,
        on_interval: Any = None,
        max_iterations: int | None = None,
        READY_STATES: frozenset[str] = states.READY_STATES,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Each task's meta as soon as it is ready, in the order they become ready (Celery's
        native join: a group's ``get()`` raises at its first failure or revoke, as on Redis).
        Woken by the tasks' completion notices (only the notified tasks are re-read), and
        re-reading all every ``interval`` for outcomes recorded without one (scanners,
        operators). ``on_message`` hears every state announced while waiting (STARTED,
        custom states), then the ready one, as from Celery's Redis backend."""
        self._ensure_not_eager()
        interval = 0.5 if interval is None else interval
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = {bytes_to_str(task_id): done_channel(NAMESPACE, bytes_to_str(task_id)) for task_id in task_ids}
        channels = list(pending.values())
        listener = self._subscribe(channels)  # before the first read: no notice slips between
        to_read, last_full_read, iterations = set(pending), time.monotonic(), 0
        notified: set[str] = set()
        try:
            while pending:
                for task_id in [task_id for task_id in pending if task_id in to_read]:
                    meta = self.get_task_meta(task_id)
                    if meta["status"] in READY_STATES:
                        if on_message is not None:
                            if listener is not None:  # the states announced before it was ready first
                                notified |= self._hear(listener, pending, 0, on_message) or set()
                            on_message(meta)
                        del pending[task_id]
                        yield task_id, meta
                if not pending:
                    return
                if on_interval:
                    on_interval()
                iterations += 1
                if max_iterations and iterations >= max_iterations:
                    return
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError("The operation timed out.")
                heard: set[str] | None = None
                wait = 0 if notified else interval if remaining is None else min(interval, remaining)
                if listener is None:  # not subscribed: read everything again after the interval
                    time.sleep(wait)
                    listener = self._subscribe(list(pending.values()))
                else:
                    try:
                        heard = self._hear(listener, pending, wait, on_message)
                    except RETRYABLE_REDIS_ERRORS:  # dropped by the server (restart, failover, CLIENT KILL)
                        self._drop_listener(listener)
                        listener = self._subscribe(list(pending.values()))
                if heard is None or time.monotonic() - last_full_read >= interval:
                    to_read, last_full_read = set(pending), time.monotonic()
                else:
                    to_read = notified | heard
                notified = set()
        except (TimeoutError, GeneratorExit):
            raise
        except BaseException:
            if listener is not None:
                self._drop_listener(listener)  # its connection may be mid-reply: never reuse it
            raise
        finally:
            if listener is not None and getattr(self._local, "listener", None) is listener:
                try:
                    listener.unsubscribe(*channels)
                except RETRYABLE_REDIS_ERRORS:
                    self._drop_listener(listener)

    def _subscribe(self, channels: list[str]) -> Listener | None:
        """This thread's Pub/Sub connection for completion notices (kept between waits),
        subscribed to ``channels``; None if the server failed it twice, the second time with
        the cluster's slot map read again (a node died: the caller reads the state instead)."""
        for attempt in range(2):
            if getattr(self._local, "pid", None) != os.getpid() or self._local.listener is None:
                self._local.pid, self._local.listener = os.getpid(), Listener(self.engine.redis)
            try:
                self._local.listener.subscribe(*channels)
                return self._local.listener
            except RETRYABLE_REDIS_ERRORS as exc:
                self._drop_listener(self._local.listener)
                log.debug("completion notices: subscribing failed (%s)", exc)
                if attempt == 0:
                    refresh_slot_map(self.engine.redis)
        return None

    def _drop_listener(self, listener: Listener) -> None:
        if getattr(self._local, "listener", None) is listener:
            self._local.listener = None
        listener.close()

    def _hear(self, listener: Listener, pending: dict[str, str], timeout: float, on_message: Any) -> set[str] | None:
        """The pending tasks whose channel got a completion notice (None: nothing arrived):
        blocks until something arrives or ``timeout`` passes, then takes whatever else has.
        Interim states announced go to ``on_message`` (if any) in order; confirmations of
        (un)subscribing and notices left from earlier waits are skipped."""
        tasks_by_channel = {channel: task_id for task_id, channel in pending.items()}
        notified: set[str] = set()
        heard = False
        until = time.monotonic() + timeout
        while True:
            left = until - time.monotonic()
            notice = listener.get(0 if heard else max(left, 0))
            if notice is None:
                if heard:
                    return notified
                if left <= 0:
                    return None
                continue
            task_id = tasks_by_channel.get(notice.channel)
            if task_id is None:
                continue
            heard = True
            if notice.data == DONE_NOTICE:
                notified.add(task_id)
            elif on_message is not None:
                on_message(self.decode_result(notice.data))

    def _forget(self, task_id: str) -> None:
        super()._forget(task_id)
        self.engine.forget_alias(task_id)
