"""Kombu transport ``flowfabric://`` (``flowfabrics://`` for TLS).

Queues are FlowFabric *lanes*: publishing creates an execution, consuming claims one under a
lease that a background thread renews, acknowledging releases it (or completes it, for
messages whose outcome nobody else records), rejecting fails it or hands it back. Nothing is
ever re-put: a requeue, a reconnect or a shutdown hands the execution back to the engine, so
executions are never duplicated and a lost worker's executions are requeued by the engine.

Everything that is not a task queue - the ``*.pidbox`` remote-control and reply queues and
the ``celeryev*`` event queues - keeps kombu's Redis behaviour (lists, Pub/Sub fanout), so
``celery inspect``/``control``, events and Flower work unchanged. On a Valkey/Redis Cluster
(found out from the server) the engine uses a cluster client and kombu's own keys share one
hash tag. A queue may be spread over several lanes (``queue_shards``).

Consuming is event-driven: with Celery's event loop the lanes' wake-up channel is one more
readable socket and claims happen when there is capacity and a reason to look (a wake-up, a
freed slot, a full batch, or the ``poll_interval`` fallback).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar, Protocol

import redis
from kombu.exceptions import OperationalError
from kombu.transport import redis as kombu_redis, virtual

from ff_celery.engine import (
    CONNECT_TIMEOUT_S,
    BlockExecutionForAdmission,
    ClaimedTask,
    Claimer,
    Created,
    Engine,
    EngineError,
    ExecutionId,
    ExecutionSpec,
    FlowRef,
    LeaseRenewer,
    TransportError,
    cluster_aware,
    packed_by_hiredis,
    refresh_slot_map,
    retry_transport_for,
    shard_lanes,
    shared_engine,
    shared_renewer,
)
from ff_celery.integration.context import plan_republished_retry, publisher_repeats
from ff_celery.integration.delivery_leases import DeliveryLeases
from ff_celery.mapping.flow_publication import FlowPublication
from ff_celery.mapping.messages import (
    FLOW_HEADER,
    NAMESPACE,
    FlowStep,
    PublishError,
    delivery_message,
    is_celery_task,
    submission_for,
)
from ff_celery.observability import tracing

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_SIZE = 32 * 1024 * 1024
#: Floor of the derived socket timeout: above kombu's 1 s BRPOP on remote-control queues.
MIN_SOCKET_TIMEOUT_S = 2.0


def is_lane(queue: str) -> bool:
    """Task queues are lanes; remote-control, reply and event queues are not."""
    return not (queue.endswith(".pidbox") or queue.startswith("celeryev"))


#: On a Valkey/Redis Cluster, kombu's own keys (bindings, remote-control and event queues,
#: unacked messages) share this hash tag, so its multi-key commands and scripts stay in one
#: slot; its channel talks to that slot's primary.
KOMBU_HASH_TAG = "{ffc:kombu}"


class QoS(virtual.QoS):
    """Prefetch accounting; requeue and restore hand executions back instead of re-putting."""

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if self.channel.ff_leases.held(delivery_tag) is not None:
            self.channel.ff_reject(delivery_tag, requeue)
            self._quick_ack(delivery_tag)
        else:
            super().reject(delivery_tag, requeue)

    def restore_unacked(self) -> list[Any]:
        self._flush()
        unowned = []
        for tag, message in list(self._delivered.items()):
            if self.channel.ff_leases.held(tag) is not None:
                self.channel.ff_restore(tag)
            else:
                unowned.append(message)
        self._delivered.clear()
        errors = []
        for message in unowned:
            try:
                self.channel._restore(message)
            except Exception as exc:
                errors.append((exc, message))
        return errors


class ConsumingWorker(Protocol):
    """What the channel asks of the Celery worker consuming from it (its bootstep)."""

    def is_running(self, delivery_tag: str) -> bool:
        """Whether the delivery's task is running (running ones are not handed back)."""
        ...

    def on_lease_lost(self, delivery_tag: str, task: ClaimedTask) -> None:
        """The delivery's lease was lost (called from the renewal or watchdog thread)."""
        ...

    def on_blocked(self, blocked: list[BlockExecutionForAdmission], engine: Engine) -> None:
        """Admission held executions back (``waiting_for_budget``, ``waiting_for_quota``)."""
        ...

    def with_upstream_results(self, message: dict[str, Any]) -> dict[str, Any]:
        """A flow member's message with what its upstream tasks returned added to its
        arguments; ValueError when that cannot be done."""
        ...


class Channel(kombu_redis.Channel):
    QoS = QoS

    #: Lease TTL of claimed executions (renewed every third of it).
    lease_ttl_ms = 30_000
    #: Fallback probe interval when no wake-up arrives (work promoted by other processes).
    poll_interval = 1.0
    #: Largest message (bytes) accepted for a lane.
    max_message_size = DEFAULT_MAX_MESSAGE_SIZE
    #: Claim batch when the consumer sets no prefetch limit.
    unlimited_batch = 16
    #: Lane -> quota (name or id) for executions published without one.
    lane_quotas: dict[str, str] = {}
    #: Queue -> how many lanes it is spread over, round-robin by each publisher; consumers
    #: claim the best head across them (:mod:`ff_celery.engine.work.lane_shards`).
    queue_shards: dict[str, int] = {}
    #: Channels closed (a reconnect) while early-acknowledged tasks of theirs ran: kept, and
    #: those tasks' leases renewed, until they end (any channel of the process releases them).
    _ff_closed_running: ClassVar[set[Channel]] = set()
    #: How long a publish to a lane is retried while the server cannot take it (a failover,
    #: a restart), in seconds; then it raises ``OperationalError``.
    publish_retry_timeout = 30.0
    #: Socket settings (kombu's transport options): a frozen or black-holed server surfaces
    #: as a timeout; ``socket_timeout`` None means a third of the lease TTL (at least 2 s).
    socket_connect_timeout = CONNECT_TIMEOUT_S
    socket_keepalive = True

    from_transport_options = (
        *kombu_redis.Channel.from_transport_options,
        "lease_ttl_ms",
        "poll_interval",
        "max_message_size",
        "lane_quotas",
        "queue_shards",
        "publish_retry_timeout",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ff_leases = DeliveryLeases()
        #: The lane queues consumed, and which queue each of their lanes belongs to.
        self._ff_queues: list[str] = []
        self._ff_queue_of_lane: dict[str, str] = {}
        self._ff_publish_turns: dict[str, itertools.count[int]] = {}
        self._ff_lanes_by_queue: dict[str, list[str]] = {}
        self._ff_claimer: Claimer | None = None
        self._ff_want_claim = False
        self._ff_last_probe = 0.0
        #: The Celery worker consuming from this channel (see :meth:`attach_worker`).
        self._ff_worker: ConsumingWorker | None = None

    # -- engine ---------------------------------------------------------------------------

    @property
    def ff_engine(self) -> Engine:
        return self._ff_shared[0]

    @property
    def _ff_shared(self) -> tuple[Engine, LeaseRenewer]:
        """This process's engine for the server (:mod:`ff_celery.engine.work.registry`) and its
        lease renewer: leases outlive channels, a task running when its channel closes keeps
        its lease until acknowledged."""
        cached = self.__dict__.get("_ff_shared_cache")
        if cached is None or cached[0] != os.getpid():
            # kombu caps each channel's pool (``max_connections``); the engine's pool serves the
            # whole process (results, task code, claims, publishes), so it is not capped
            params = {k: v for k, v in self._ff_connparams().items() if k != "max_connections"}
            way = repr(sorted((k, repr(v)) for k, v in params.items() if k != "connection_class"))

            def client() -> redis.Redis:
                return cluster_aware(packed_by_hiredis(redis.Redis(connection_pool=redis.ConnectionPool(**params))))

            engine = shared_engine(way, client, NAMESPACE)
            cached = self.__dict__["_ff_shared_cache"] = (os.getpid(), (engine, shared_renewer(engine)))
        return cached[1]

    def _ff_connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        """kombu's connection settings for the URL, TLS by default for ``flowfabrics://``, and
        a socket timeout below the lease TTL."""
        conninfo = self.connection.client
        if conninfo.transport_cls == "flowfabrics" and not conninfo.ssl:
            conninfo.ssl = {"ssl_cert_reqs": "required"}  # TLS by default, verified
        params = super()._connparams(asynchronous=asynchronous)
        if params.get("socket_timeout") is None:
            params["socket_timeout"] = max(MIN_SOCKET_TIMEOUT_S, self.lease_ttl_ms / 3000)
        return params

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        """kombu's own connections: on a cluster, to the primary of its hash tag's slot."""
        params = self._ff_connparams(asynchronous)
        engine = self.ff_engine
        if engine.clustered:
            refresh_slot_map(engine.redis)  # a reconnect after a failover: the promoted replica
            owner = engine.redis.get_node_from_key(KOMBU_HASH_TAG)
            params.update(host=owner.host, port=owner.port, db=0)
        return params

    def _get_client(self) -> Any:
        """kombu's client class; on a cluster, its keys carry :data:`KOMBU_HASH_TAG`."""
        if self.ff_engine.clustered and KOMBU_HASH_TAG not in self.global_keyprefix:
            self.global_keyprefix = KOMBU_HASH_TAG + self.global_keyprefix
        return super()._get_client()

    # -- publishing -----------------------------------------------------------------------

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        if not is_lane(queue):
            return super()._put(queue, message, **kwargs)
        lanes = self.ff_lanes_of(queue)
        lane = lanes[next(self._ff_publish_turns.setdefault(queue, itertools.count())) % len(lanes)]
        try:
            retry_transport_for(lambda: self._ff_publish(lane, queue, message), self.publish_retry_timeout)
        except TransportError as exc:
            if not exc.retryable:
                raise
            # not one of kombu's connection errors: its publish retry policy would start over
            raise OperationalError(f"publish to {queue} failed for {self.publish_retry_timeout:g} s: {exc}") from exc
        return None

    def _ff_publish(self, lane: str, queue: str, message: dict[str, Any]) -> None:
        """Create the execution of a message published to ``lane`` (safe to repeat: a repeat
        finds the execution made before)."""
        engine = self.ff_engine
        now_ms = engine.now_ms()
        submission = submission_for(lane, message, now_ms=now_ms, max_size=self.max_message_size)
        spec = submission.spec
        if spec.quota_policy_id is None and queue in self.lane_quotas:
            spec = replace(spec, quota_policy_id=self.lane_quotas[queue])
        if submission.flow is not None:
            step = submission.flow
            flow = FlowRef(step.flow_id, engine.partitions.flow_partition(step.flow_id))
            member = engine.new_execution(spec, ExecutionId.mint(flow.partition))
            publication = FlowPublication.current(step.flow_id)
            if publication is not None:
                publication.add(engine, flow, member, step.after)
                return  # created with the rest of its canvas
            publication = FlowPublication(step.flow_id)
            publication.add(engine, flow, member, step.after)
            created = publication.commit()[0]
        else:
            created = self._ff_submit(spec)
        headers = message.get("headers") or {}
        if created.duplicate and headers.get("retries"):
            # Celery's Task.retry of a running task: its delay and its arguments are the next attempt's
            plan_republished_retry(str(headers.get("id")), max(0, (spec.delay_until or now_ms) - now_ms))
            engine.set_next_attempt_payload(created.execution_id, spec.input_payload)

    def _ff_submit(self, spec: ExecutionSpec) -> Created:
        """Submit a message that is not a flow member. A task id published again while its
        execution lives is that execution; published after it ended, it is a new run of the
        task (Celery's brokers run every message: a frozen canvas applied again runs again),
        unless the publisher repeats work whose messages went out already
        (:func:`~ff_celery.integration.context.publisher_repeats`): a step re-sent after a crash runs once;
        or the task was revoked: a revoked task id stays revoked, as Celery's workers keep it."""
        engine, key = self.ff_engine, spec.idempotency_key
        created = engine.create(spec)
        while (
            created.duplicate
            and spec.alias
            and not publisher_repeats()
            and engine.ended(created.execution_id) not in (None, "cancelled")
        ):
            # each run's key names the run before it: publishers racing to start the next run
            # start one
            spec = replace(spec, idempotency_key=f"{key}:after:{created.execution_id}", alias_replaces=True)
            created = engine.create(spec)
        return created

    def ff_lanes_of(self, queue: str) -> list[str]:
        """The lanes a queue's executions live on: the queue's own, and more if it is
        spread (``queue_shards``)."""
        lanes = self._ff_lanes_by_queue.get(queue)
        if lanes is None:
            shards = self.queue_shards.get(queue, 1)
            lanes = self._ff_lanes_by_queue[queue] = shard_lanes(queue, shards, self.ff_engine.partitions)
        return lanes

    def _purge(self, queue: str) -> int:
        """Cancel every waiting or delayed execution of the queue; answers how many."""
        if not is_lane(queue):
            return super()._purge(queue)
        return sum(self.ff_engine.purge_lane(lane) for lane in self.ff_lanes_of(queue))

    def _size(self, queue: str) -> int:
        if not is_lane(queue):
            return super()._size(queue)
        counts = [self.ff_engine.lane_counts(lane) for lane in self.ff_lanes_of(queue)]
        return sum(count["eligible"] + count["delayed"] for count in counts)

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        if not is_lane(queue):
            return super()._delete(queue, *args, **kwargs)
        self._purge(queue)
        return None

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return True if is_lane(queue) else super()._has_queue(queue, **kwargs)

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        if is_lane(queue):
            for lane in self.ff_lanes_of(queue):
                self.ff_engine.register_lane(lane)
            return None
        return super()._new_queue(queue, **kwargs)

    # -- consuming ------------------------------------------------------------------------

    @property
    def active_queues(self) -> list[str]:
        """Queues read with BRPOP: everything but the lanes."""
        return [queue for queue in super().active_queues if not is_lane(queue)]

    def basic_consume(self, queue: str, *args: Any, **kwargs: Any) -> str:
        tag = super().basic_consume(queue, *args, **kwargs)
        if is_lane(queue) and queue not in self._ff_queues:
            self._ff_queues.append(queue)
            self._ff_reset_claimer()
        return tag

    def _basic_cancel(self, consumer_tag: str) -> Any:
        queue = self._tag_to_queue.get(consumer_tag)
        result = super()._basic_cancel(consumer_tag)
        if queue in self._ff_queues:
            self._ff_queues.remove(queue)
            self._ff_reset_claimer()
        return result

    def _ff_reset_claimer(self) -> None:
        if self._ff_claimer is not None:
            self._ff_claimer.close()
            self._ff_claimer = None
        self._ff_queue_of_lane = {lane: queue for queue in self._ff_queues for lane in self.ff_lanes_of(queue)}
        if self._ff_queue_of_lane:
            engine, renewer = self._ff_shared
            self._ff_claimer = Claimer(
                engine,
                list(self._ff_queue_of_lane),
                worker_id=f"celery@{os.uname().nodename}",
                lease_ttl_ms=self.lease_ttl_ms,
                renewer=renewer,
                poll_interval_s=self.poll_interval,
                on_blocked=self._ff_blocked,
            )
            self._ff_claimer.listen()
            self._ff_want_claim = True

    @property
    def ff_consuming(self) -> bool:
        return self._ff_claimer is not None

    @property
    def ff_wake_connections(self) -> list[redis.client.PubSub]:
        return self._ff_claimer.wake_connections if self._ff_claimer is not None else []

    def ff_on_wake(self) -> None:
        """A wake-up socket is readable: drain the wake-ups and claim if there is room."""
        if self._ff_claimer is not None:
            try:
                self._ff_claimer.drain_wakes()
            except (redis.RedisError, OSError) as exc:
                log.warning("wake-up channel failed: %s; re-subscribing", exc)
                self._ff_reset_claimer()
        self._ff_want_claim = True
        self.ff_maybe_claim()  # an event: deliveries are picked up by this loop iteration

    def ff_poll_due(self) -> None:
        """Fallback: look for work even without a wake-up (timer tick)."""
        self._ff_want_claim = True
        self._ff_release_finished()

    def ff_claim_wanted(self) -> bool:
        """There is room and a reason to look (a wake-up, a freed slot, a full last batch,
        or the fallback interval passed)."""
        return (
            self._ff_claimer is not None
            and self.qos.can_consume()
            and (self._ff_want_claim or time.monotonic() - self._ff_last_probe >= self.poll_interval)
        )

    def ff_maybe_claim(self) -> int:
        """Claim and deliver as many executions as the prefetch limit allows, if wanted.
        Answers how many were delivered."""
        if not self.ff_claim_wanted():
            return 0
        want = self.qos.can_consume_max_estimate() or self.unlimited_batch
        self._ff_last_probe = time.monotonic()
        try:
            tasks = self._ff_claimer.try_claim(want)
        except EngineError as exc:
            log.warning("claiming from %s failed: %s", self._ff_queues, exc)
            return 0
        self._ff_want_claim = len(tasks) == want  # a full batch: there may be more
        for task in tasks:
            self._ff_deliver(task)
        return len(tasks)

    def _ff_deliver(self, task: ClaimedTask) -> None:
        try:
            if task.attempt_index > 0:  # a retry may run other arguments than the first attempt
                task.payload = self.ff_engine.next_attempt_payload(task.execution_id) or task.payload
            message = delivery_message(task, self._ff_queue_of_lane.get(task.lane_id, task.lane_id))
            step = FlowStep.from_header(message["headers"].get(FLOW_HEADER))
            if step is not None:
                # a flow member's own countdown starts now that it may run (its first claim)
                due = step.runnable_from(self.ff_engine.now_ms()) if task.lease_epoch == 1 else None
                if due is not None:
                    self._ff_end(task, lambda: task.delay(due))
                    return
                if self._ff_worker is not None:
                    message = self._ff_worker.with_upstream_results(message)
        except (ValueError, PublishError) as exc:
            self._ff_fail_undeliverable(task, f"undecodable message: {exc}")
            return
        tracing.record_claim(message["headers"], task)
        tag = message["properties"]["delivery_tag"]
        task.on_lease_lost = lambda handle, error: self._ff_lease_lost(tag, handle)
        self._ff_leases.hold(tag, task)
        try:
            self.connection._deliver(message, message["properties"]["delivery_info"]["routing_key"])
        except Exception as exc:  # the consumer choked on it: fail this one, keep the worker
            self.qos.ack(tag)
            if self._ff_take(tag) is not None:
                self._ff_fail_undeliverable(task, f"message the consumer could not take: {exc!r}")

    def _ff_fail_undeliverable(self, task: ClaimedTask, reason: str) -> None:
        """Fail, once and visibly, an execution that cannot become a delivery."""
        reason = reason[:1000]
        log.error("execution %s: %s; failing it", task.execution_id, reason)
        self._ff_end(task, lambda: task.fail(reason, "permanent", retry_policy=None))

    def attach_worker(self, worker: ConsumingWorker) -> None:
        """A Celery worker consumes from this channel: Celery tasks' outcomes are recorded in
        the worker (by the FlowFabric result backend or ff_celery.mapping.outcomes), so an ack only
        releases the lease; running deliveries are not handed back when the channel closes."""
        self._ff_worker = worker

    def _ff_blocked(self, blocked: list[BlockExecutionForAdmission]) -> None:
        if self._ff_worker is not None:
            self._ff_worker.on_blocked(blocked, self.ff_engine)

    def _ff_lease_lost(self, tag: str, task: ClaimedTask) -> None:
        if self._ff_worker is not None and self._ff_leases.of(tag) is not None:
            self._ff_worker.on_lease_lost(tag, task)

    # -- acknowledgement ------------------------------------------------------------------

    @property
    def ff_leases(self) -> DeliveryLeases:
        return self._ff_leases

    def _ff_take(self, delivery_tag: str) -> ClaimedTask | None:
        task = self._ff_leases.take(delivery_tag)
        self._ff_want_claim = True  # a slot is free again
        return task

    @staticmethod
    def _ff_end(task: ClaimedTask, operation: Callable[[], Any]) -> None:
        """Run a terminal operation; an already-recorded outcome is not an error."""
        if task.lease_lost is not None:
            task.release()
            return
        try:
            operation()
        except EngineError as exc:
            log.info("execution %s: outcome already settled (%s)", task.execution_id, exc.code)
            task.release()

    def basic_ack(self, delivery_tag: str, multiple: bool = False) -> None:
        task = self._ff_take(delivery_tag)
        if task is not None:
            if not (self._ff_worker is not None and is_celery_task(task)):
                self._ff_end(task, task.complete)
            elif self._ff_running(delivery_tag):
                self._ff_leases.keep_running(delivery_tag, task)  # early ack: the task has only started
            else:
                task.release()  # the result backend recorded the outcome in the worker process
        self._ff_release_finished()
        super().basic_ack(delivery_tag, multiple)

    def _ff_running(self, delivery_tag: str) -> bool:
        return self._ff_worker is not None and self._ff_worker.is_running(delivery_tag)

    def _ff_release_finished(self) -> None:
        """Stop renewing the leases of early-acknowledged tasks that are over: this channel's,
        and those of channels closed while such tasks ran (a reconnect)."""
        for channel in (self, *Channel._ff_closed_running):
            channel._ff_leases.release_finished(channel._ff_running)
            if not channel._ff_leases.any_running:
                Channel._ff_closed_running.discard(channel)

    def ff_reject(self, delivery_tag: str, requeue: bool) -> None:
        task = self._ff_take(delivery_tag)
        if task is None:
            return
        if requeue:
            self._ff_end(task, task.hand_back)
        else:
            self._ff_end(task, lambda: task.fail("message rejected by the consumer", "permanent", retry_policy=None))

    def ff_fail(self, delivery_tag: str, reason: str) -> None:
        """Fail a held delivery terminally with ``reason`` (it stays delivered until acked)."""
        task = self._ff_leases.held(delivery_tag)
        if task is not None:
            self._ff_end(task, lambda: task.fail(reason, "permanent", retry_policy=None))

    def ff_restore(self, delivery_tag: str) -> None:
        """Channel closing with the delivery unacked: hand it back unless it is running."""
        if self._ff_running(delivery_tag):
            return  # still running in the pool; its ack will end it
        task = self._ff_take(delivery_tag)
        if task is not None:
            log.info("handing %s back to the engine (not started)", task.execution_id)
            self._ff_end(task, task.hand_back)

    def _restore(self, message: Any, leftmost: bool = False) -> Any:
        if self._ff_leases.held(message.delivery_tag) is not None:
            return self.ff_restore(message.delivery_tag)
        return super()._restore(message, leftmost)

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        """``basic_get`` on a lane: claim one execution now."""
        if not is_lane(queue):
            return super()._get(queue)
        engine, renewer = self._ff_shared
        claimer = Claimer(engine, self.ff_lanes_of(queue), worker_id=f"kombu@{os.uname().nodename}", renewer=renewer)
        try:
            task = claimer.claim_one()
        finally:
            claimer.close()
        if task is None:
            raise virtual.base.Empty()
        try:
            message = delivery_message(task, queue)
        except ValueError as exc:
            self._ff_fail_undeliverable(task, f"undecodable message: {exc}")
            raise virtual.base.Empty() from None
        self._ff_leases.hold(message["properties"]["delivery_tag"], task)
        return message

    def close(self) -> None:
        claimer, self._ff_claimer = self._ff_claimer, None
        super().close()
        if claimer is not None:
            claimer.close()
        self._ff_release_finished()
        if self._ff_leases.any_running:  # still running: their leases are renewed until they end
            Channel._ff_closed_running.add(self)


class Poller(kombu_redis.MultiChannelPoller):
    """kombu's Redis poller plus each consuming channel's wake-up socket (type ``WAKE``).

    With Celery's event loop, claims must deliver during event handling, not in a tick
    callback: the prefork pool registers its job writers in its own tick callback, so jobs
    delivered after it ran would wait for the next timer. A tick therefore only *requests*
    a claim by writing to a self-pipe that the loop reads as an event.
    """

    _trigger: tuple[int, int] | None = None
    _triggered = False

    def on_poll_start(self) -> None:
        super().on_poll_start()
        for channel in self._channels:
            if channel.ff_consuming:
                self._register_wake(channel)
                if self._trigger is None:
                    channel.ff_maybe_claim()
                elif channel.ff_claim_wanted() and not self._triggered:
                    self._triggered = True
                    os.write(self._trigger[1], b"x")

    def attach_trigger(self, loop: Any) -> None:
        """Use a self-pipe read by ``loop`` to run claims as events."""
        if self._trigger is None:
            self._trigger = os.pipe()
            for fd in self._trigger:
                os.set_blocking(fd, False)
        loop.add_reader(self._trigger[0], self.on_trigger)

    def on_trigger(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._trigger[0], 4096)
        self._triggered = False
        for channel in list(self._channels):
            if channel.ff_consuming:
                channel.ff_maybe_claim()

    def close(self) -> None:
        super().close()
        if self._trigger is not None:
            for fd in self._trigger:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._trigger = None

    def _register_wake(self, channel: Channel) -> None:
        """Watch the sockets the channel's wake-ups arrive on (on a cluster, one per shard):
        the claimer, its subscriptions or a connection may have changed since last time."""
        watched = {id(pubsub): pubsub for pubsub in channel.ff_wake_connections}
        for ident in [i for i in self._chan_to_sock if i[0] is channel and i[2] == "WAKE"]:
            pubsub = watched.get(id(ident[1]))
            if pubsub is not None and pubsub.connection._sock is self._chan_to_sock[ident]:
                continue
            sock = self._chan_to_sock.pop(ident)  # gone or reconnected: forget its old socket
            self._fd_to_chan.pop(sock.fileno(), None)
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(sock)
        for pubsub in watched.values():
            if (channel, pubsub, "WAKE") not in self._chan_to_sock:
                self._register(channel, pubsub, "WAKE")

    def on_readable(self, fileno: int) -> Any:
        chan_type = self._fd_to_chan.get(fileno)
        if chan_type is not None and chan_type[1] == "WAKE":
            return chan_type[0].ff_on_wake()
        return super().on_readable(fileno)

    def handle_event(self, fileno: int, event: int) -> Any:
        chan_type = self._fd_to_chan.get(fileno)
        if chan_type is not None and chan_type[1] == "WAKE":
            chan_type[0].ff_on_wake()
            return None, self
        return super().handle_event(fileno, event)

    def ff_poll_due(self) -> None:
        for channel in self._channels:
            if channel.ff_consuming:
                channel.ff_poll_due()

    def get(self, callback: Callable[..., Any], timeout: float | None = None) -> None:
        """Without an event loop: claim first, then wait on the sockets (the wake-up one
        included), never longer than the fallback poll interval."""
        for channel in list(self._channels):
            if channel.ff_consuming and channel.ff_maybe_claim():
                return
        lanes_consumed = [c for c in self._channels if c.ff_consuming]
        if lanes_consumed:
            interval = min(c.poll_interval for c in lanes_consumed)
            timeout = interval if timeout is None else min(timeout, interval)
        super().get(callback, timeout=timeout)


class Transport(kombu_redis.Transport):
    Channel = Channel

    driver_type = "redis"  # keeps Celery's Redis-only features: mingle, gossip, event fanout
    driver_name = "flowfabric"
    # The engine's transport failures are connection errors to kombu: publishing retries per
    # the publish retry policy, then raises OperationalError; consumers reconnect.
    connection_errors = (*kombu_redis.Transport.connection_errors, TransportError)
    implements = kombu_redis.Transport.implements.extend(batch_publish=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cycle = Poller()

    @property
    def supports_batch_publish(self) -> bool:
        return False

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)
        interval = min((c.poll_interval for c in self.channels), default=Channel.poll_interval)
        old = getattr(self.cycle, "_ff_poll_tref", None)
        if old is not None:
            old.cancel()
        self.cycle._ff_poll_tref = loop.call_repeatedly(interval, self.cycle.ff_poll_due)
        self.cycle.attach_trigger(loop)
