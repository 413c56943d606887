"""The worker's bootsteps, one per concern, added to Celery's consumer by ``ff_celery.install``:

- :class:`Deliveries`: what the ``flowfabric://`` channel asks of the worker consuming from it.
  A request whose lease was lost before it started is dropped instead of run; one that is
  running is killed (prefork) by the :class:`LeaseWatchdog`, also when no renewal reached the
  server for most of the TTL, so a worker does not knowingly run a task another worker may
  have (its late writes are fenced out by the engine either way). A closing channel (warm
  shutdown, reconnect) hands back only the deliveries that are not running. Blocked tasks
  become ``task-blocked`` events; a flow member gets its upstream results.
- :class:`BadMessages`: messages Celery cannot run (undecodable, unknown task, invalid) fail
  their execution with a readable reason instead of looping.
- :class:`Scanners`: the engine scanners, leader-elected, unless ``flowfabric_scanners =
  False`` (set that when FlowFabric's own server runs them); ``inspect scheduled`` also lists
  the tasks the engine holds for their ETA.
- :class:`Metrics` and :class:`Tracing`: ``flowfabric_metrics_port`` and ``flowfabric_tracing``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections import deque
from typing import TYPE_CHECKING, Any, ClassVar

from celery import bootsteps, states
from celery.exceptions import ImproperlyConfigured, NotRegistered
from celery.worker import control, state
from celery.worker.control import inspect_command
from kombu.serialization import prepare_accept_content

from ff_celery.engine import (
    DEFAULT_STATE_INTERVAL_S,
    MULTIPROCESS_DIR_VARIABLE,
    ClaimedTask,
    EngineScanners,
    EngineStateCollector,
    NotFoundError,
    ScannerSettings,
    held_executions,
    multiprocess_mode,
    serve_exporter,
)
from ff_celery.integration.backend import FlowFabricBackend
from ff_celery.integration.transport import Channel
from ff_celery.mapping.canvas import with_upstream_results
from ff_celery.mapping.messages import celery_task_of, held_task_entry
from ff_celery.mapping.retention import queue_retention_of, retention_of
from ff_celery.observability import tracing
from ff_celery.observability.task_metrics import measure_tasks

if TYPE_CHECKING:
    from celery.worker.consumer import Consumer
    from celery.worker.request import Request
    from kombu.message import Message

    from ff_celery.engine import BlockExecutionForAdmission, Engine


log = logging.getLogger(__name__)

LOST_CHECK_INTERVAL_S = 0.25
#: How long a warm shutdown waits for a running scanner: the event loop (which acknowledges
#: finished tasks) is stopped meanwhile, and an unfinished scanner is repeated by the next leader.
SCANNERS_STOP_WAIT_S = 2.0
#: Celery's own ``scheduled`` inspect command (replaced below, and called by its replacement).
CELERY_SCHEDULED = control.Panel.data["scheduled"]


TASKS_STEP = "celery.worker.consumer.tasks:Tasks"


def flowfabric_channel(c: Consumer) -> Channel | None:
    """The consumer's channel when it consumes from ``flowfabric://``."""
    channel = getattr(c.task_consumer, "channel", None)
    return channel if isinstance(channel, Channel) else None


class Deliveries(bootsteps.StartStopStep):
    """The worker side of the ``flowfabric://`` channel (its ``ConsumingWorker``): requests
    tied to their leases, lost ones stopped, blocked tasks announced, flow members given their
    upstream results."""

    requires = (TASKS_STEP,)

    def __init__(self, c: Consumer, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.lost: deque[tuple[str, ClaimedTask]] = deque()
        self.timer_ref: Any = None
        self.watchdog: LeaseWatchdog | None = None
        self.consumer = c
        self._guard_requests(c)  # before the Tasks step captures the consumer's hook
        if kwargs.get("task_events"):  # -E: pool processes announce suspensions too (ff_celery.features.signals)
            c.app.conf.worker_send_task_events = True

    def _guard_requests(self, c: Consumer) -> None:
        run_request = c.on_task_request

        def on_task_request(request: Request) -> None:
            channel, tag = _channel_of(request.message), request.message.delivery_tag
            task = channel.ff_leases.held(tag) if channel else None
            if task is not None and task.lease_lost is not None:
                log.error("not running %s[%s]: its lease was lost (%s)", request.name, request.id, task.lease_lost.code)
                request.acknowledge()
                return
            run_request(request)

        c.on_task_request = on_task_request

    def start(self, c: Consumer) -> None:
        channel = flowfabric_channel(c)
        if channel is not None:
            channel.attach_worker(self)
        self.timer_ref = c.timer.call_repeatedly(LOST_CHECK_INTERVAL_S, self.stop_lost, (c,), priority=1)
        self.watchdog = LeaseWatchdog(c.pool)
        self.watchdog.start()

    def stop(self, c: Consumer) -> None:
        if self.timer_ref is not None:
            self.timer_ref.cancel()
            self.timer_ref = None
        if self.watchdog is not None:
            self.watchdog.stop()
            self.watchdog = None

    # -- admission -------------------------------------------------------------------------

    def on_blocked(self, blocked: list[BlockExecutionForAdmission], engine: Engine) -> None:
        """``task-blocked`` events (sent with ``-E``): monitors show the tasks as BLOCKED."""
        dispatcher = self.consumer.event_dispatcher
        if dispatcher is None or not dispatcher.enabled or (dispatcher.groups and "task" not in dispatcher.groups):
            return  # no task events (-E): no need to read which tasks they are
        for block, tags in zip(blocked, engine.read_tags([block.execution_id for block in blocked])):
            task = celery_task_of(tags)
            if task is not None:
                task_id, task_name = task
                dispatcher.send(
                    "task-blocked",
                    uuid=task_id,
                    name=task_name,
                    reason=block.blocking_reason,
                    detail=block.blocking_detail,
                )

    # -- flows ----------------------------------------------------------------------------

    def with_upstream_results(self, message: dict[str, Any]) -> dict[str, Any]:
        return with_upstream_results(self.consumer.app, message)

    # -- lost leases ----------------------------------------------------------------------

    def is_running(self, delivery_tag: str) -> bool:
        return any(getattr(r.message, "delivery_tag", None) == delivery_tag for r in list(state.active_requests))

    def on_lease_lost(self, delivery_tag: str, task: ClaimedTask) -> None:
        """Called from the renewal or watchdog thread: the event loop stops the task."""
        if isinstance(task.lease_lost, NotFoundError):
            log.error("execution %s vanished from the server while its task ran; letting it finish", task.execution_id)
        if must_stop(task):
            self.lost.append((delivery_tag, task))

    def stop_lost(self, c: Consumer) -> None:
        """Cancel and acknowledge requests whose lease was lost (runs on the worker's timer;
        the :class:`LeaseWatchdog` has already killed the processes running them)."""
        while self.lost:
            tag, task = self.lost.popleft()
            for request in list(state.active_requests):
                if getattr(request.message, "delivery_tag", None) != tag:
                    continue
                log.error(
                    "lease of %s[%s] lost (%s): terminating it; another worker may run it",
                    request.name,
                    request.id,
                    task.lease_lost.code if task.lease_lost else "unknown",
                )
                try:
                    # cancel, not terminate: nothing is recorded for the attempt (its lease may
                    # still look valid to the server, and the execution is another worker's now)
                    request.cancel(c.pool, signal="SIGKILL", emit_retry=False)
                    request.acknowledge()
                except (NotImplementedError, AttributeError) as exc:
                    log.warning("cannot stop %s in this pool (%r); its writes are fenced out", request.id, exc)


class BadMessages(bootsteps.Step):
    """A message Celery cannot run fails its execution once, with a readable reason (and its
    Celery result, so a waiter woken by the failure reads the exception); then Celery's own
    handling runs."""

    requires = (Deliveries,)

    def __init__(self, c: Consumer, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self._fail_before(c, "on_decode_error", lambda message, exc: (f"undecodable message: {exc!r}", exc))
        self._fail_before(c, "on_unknown_message", lambda body, message: ("not a Celery task message", None))
        self._fail_before(
            c,
            "on_unknown_task",
            lambda body, message, exc: (f"unknown task: {exc!r}", NotRegistered(message.headers.get("task"))),
        )
        self._fail_before(c, "on_invalid_task", lambda body, message, exc: (f"invalid task message: {exc!r}", exc))

    @staticmethod
    def _fail_before(c: Consumer, hook: str, explain: Any) -> None:
        original = getattr(c, hook)

        def failing(*args: Any) -> Any:
            message = next(arg for arg in args if hasattr(arg, "delivery_tag"))
            channel = _channel_of(message)
            if channel is not None:
                reason, exception = explain(*args)
                task_id = (message.headers or {}).get("id")
                if task_id and exception is not None and isinstance(c.app.backend, FlowFabricBackend):
                    c.app.backend.store_result(task_id, exception, states.FAILURE)
                channel.ff_fail(message.delivery_tag, reason)
            return original(*args)

        setattr(c, hook, failing)


class Scanners(bootsteps.StartStopStep):
    """The engine scanners of the lanes this worker consumes (leader-elected across workers),
    unless ``flowfabric_scanners = False``; the tasks they hold for their ETA in ``inspect
    scheduled``."""

    requires = (Deliveries,)

    def __init__(self, c: Consumer, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.consumer = c
        self.scanners: EngineScanners | None = None

    def start(self, c: Consumer) -> None:
        channel = flowfabric_channel(c)
        if channel is None or not c.app.conf.get("flowfabric_scanners", True) or self.scanners is not None:
            return
        configured = c.app.conf.get("flowfabric_scanner_settings") or {}
        lane_retention = {  # a queue spread over several lanes keeps its retention on each
            lane: seconds for queue, seconds in queue_retention_of(c.app).items() for lane in channel.ff_lanes_of(queue)
        }
        retention = {"retention_s": retention_of(c.app), "lane_retention_s": lane_retention}
        settings = ScannerSettings(**{**retention, **configured})
        lanes = [lane for queue in c.task_consumer.queues for lane in channel.ff_lanes_of(queue.name)]
        self.scanners = EngineScanners(channel.ff_engine.fork(), settings=settings, lanes=lanes).start()

    def shutdown(self, c: Consumer) -> None:
        if self.scanners is not None:
            self.scanners.stop(SCANNERS_STOP_WAIT_S)
            self.scanners = None

    def held_tasks(self, hostname: str) -> list[dict[str, Any]]:
        """The tasks the engine holds for their ETA, as ``inspect scheduled`` entries: listed
        by the worker whose scanners lead (they promote them when due), so each appears once."""
        if self.scanners is None or not self.scanners.is_leader:
            return []
        app = self.consumer.app
        accept = prepare_accept_content(app.conf.accept_content)
        entries = []
        for lane in sorted(self.scanners.lanes()):
            for held in held_executions(self.scanners.engine, lane):
                entry = held_task_entry(
                    held.payload, held.runnable_at, hostname, accept=accept, timezone_name=app.conf.timezone
                )
                if entry is not None:
                    entries.append(entry)
        return sorted(entries, key=lambda entry: entry["eta"])


class Metrics(bootsteps.StartStopStep):
    """``flowfabric_metrics_port``: this worker's counters and the engine state (read every
    ``flowfabric_metrics_interval`` seconds) on ``/metrics``, from its main process, once per
    process (a consumer restart starts the step again)."""

    requires = (TASKS_STEP,)
    served: ClassVar[bool] = False

    def __init__(self, c: Consumer, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        if c.app.conf.get("flowfabric_metrics_port"):
            measure_tasks()  # before the pool forks, so its processes count their tasks too

    def start(self, c: Consumer) -> None:
        port, channel = c.app.conf.get("flowfabric_metrics_port"), flowfabric_channel(c)
        if not port or channel is None or Metrics.served:
            return
        engine, queues = channel.ff_engine.fork(), {queue.name for queue in c.task_consumer.queues}
        address = c.app.conf.get("flowfabric_metrics_address") or "127.0.0.1"
        interval = c.app.conf.get("flowfabric_metrics_interval") or DEFAULT_STATE_INTERVAL_S
        try:
            state = EngineStateCollector(engine, lambda: queues | engine.lanes(), float(interval))
        except ValueError as exc:
            raise ImproperlyConfigured(f"flowfabric_metrics_interval={interval!r}: {exc}") from exc
        serve_exporter(int(port), state, address)
        Metrics.served = True
        if not multiprocess_mode() and "prefork" in type(c.pool).__module__:
            log.warning(
                "metrics: tasks run in prefork pool processes, whose counters are exported only in "
                "prometheus_client's multiprocess mode: start the worker with %s set to an empty directory",
                MULTIPROCESS_DIR_VARIABLE,
            )


class Tracing(bootsteps.Step):
    """``flowfabric_tracing``: the worker's spans (see :mod:`ff_celery.observability.tracing`)."""

    def __init__(self, c: Consumer, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        if c.app.conf.get("flowfabric_tracing"):
            tracing.trace_worker()


class LeaseWatchdog(threading.Thread):
    """Kills (SIGKILL) the pool process running a task whose lease was lost, or may have
    expired for lack of renewals, so that no other worker runs it at the same time.

    A thread of its own that never talks to the server: the worker's event loop, which then
    cancels and acknowledges the request, can be blocked for seconds on a frozen server,
    longer than is left of the lease."""

    def __init__(self, pool: Any) -> None:
        super().__init__(name="ff-lease-watchdog", daemon=True)
        self.pool = pool
        self._stopped = threading.Event()
        self._killed: set[tuple[str, int]] = set()

    def run(self) -> None:
        while not self._stopped.wait(LOST_CHECK_INTERVAL_S):
            try:
                self.check()
            except Exception:  # never dies: the next look tries again
                log.exception("lease watchdog check failed")

    def stop(self) -> None:
        self._stopped.set()

    def check(self) -> None:
        """One look at every running request's lease."""
        try:
            requests = list(state.active_requests)
        except RuntimeError:  # changed by the event loop meanwhile: look again next time
            return
        self._killed &= {(request.id, request.worker_pid) for request in requests}
        for request in requests:
            channel = _channel_of(request.message)
            task = channel.ff_leases.of(request.message.delivery_tag) if channel else None
            if task is None:
                continue
            task.give_up_if_lapsed()  # reported through the channel's lost-lease hook
            pid = request.worker_pid
            if pid and task.lease_lost is not None and must_stop(task) and (request.id, pid) not in self._killed:
                log.error("lease of %s[%s] lost: killing process %s", request.name, request.id, pid)
                self._killed.add((request.id, pid))
                with contextlib.suppress(NotImplementedError, AttributeError):  # no processes: the event loop warns
                    self.pool.terminate_job(pid, signal.SIGKILL)


def must_stop(task: ClaimedTask) -> bool:
    """Whether a task whose lease is gone must be stopped. Not when the execution vanished
    (a server restarted without persistence): nobody else can run it, so it finishes, its
    outcome has nowhere to go. (A lease ended by the attempt's own outcome is not lost:
    :meth:`ClaimedTask.ended_by_own_outcome`.)"""
    return not isinstance(task.lease_lost, NotFoundError)


@inspect_command(alias="dump_schedule")
def scheduled(panel: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """Celery's ``inspect scheduled`` (the ETA tasks in this worker's memory), plus the tasks
    the engine holds for theirs (see :meth:`Scanners.held_tasks`)."""
    consumer = panel.consumer
    step = next((step for step in consumer.steps if isinstance(step, Scanners)), None)
    return CELERY_SCHEDULED(panel, **kwargs) + (step.held_tasks(consumer.hostname) if step else [])


def _channel_of(message: Message) -> Channel | None:
    channel = getattr(message, "channel", None)
    return channel if isinstance(channel, Channel) else None
