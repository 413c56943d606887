"""The FCALL executor: runs the typed calls against Valkey/Redis, in one round trip or many.

It maps transport failures to :class:`TransportError`, reloads the function library once
when the server lost it (restart, failover) and retries the call; it keeps the engine clock
(server time) and the deployment's settings (partitions, lane registry).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import redis

from ff_celery.engine import functions as fn
from ff_celery.engine.core.connection import clone_client, connect
from ff_celery.engine.core.errors import EngineError, TransportError, UnavailableError
from ff_celery.engine.core.ids import new_uuid
from ff_celery.engine.core.keys import LANE_REGISTRY_KEY, PARTITION_CONFIG_KEY
from ff_celery.engine.core.library import LibraryState, ensure_library, hot_path_loaded, is_missing_function
from ff_celery.engine.core.notices import publish_command
from ff_celery.engine.core.partitions import PartitionConfig

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11

log = logging.getLogger(__name__)

R = TypeVar("R")

_CLOCK_REFRESH_S = 60.0

#: Redis errors that a later try may not meet (a restart still loading, a failover, a drop;
#: on a cluster, a slot being migrated or no primary for it yet).
RETRYABLE_REDIS_ERRORS = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)


def transport_error(exc: Exception, function: str | None = None) -> TransportError:
    return TransportError(
        f"{type(exc).__name__}: {exc}", retryable=isinstance(exc, RETRYABLE_REDIS_ERRORS), function=function
    )


class Executor:
    """Runs the typed FCALLs on one Valkey/Redis deployment, with its clock and settings.

    Thread-safe (redis-py pools connections). Create one per process; after ``fork`` make
    a new one (:meth:`fork`).
    """

    def __init__(self, client: redis.Redis, *, namespace: str = "default") -> None:
        self.redis = client
        self.namespace = namespace
        #: Talking to a Valkey/Redis Cluster through a cluster client.
        self.clustered = isinstance(client, redis.RedisCluster)
        self._partitions: PartitionConfig | None = None
        self._clock_offset_ms = 0
        self._clock_read_at = 0.0
        self._library_lock = threading.Lock()
        self._known_lanes: set[str] = set()
        #: Whether the ``ffcelery`` hot-path library answers (None: not yet known).
        self._hot_path: bool | None = None

    @classmethod
    def from_url(cls, url: str, *, namespace: str = "default", **options: Any) -> Self:
        return cls(connect(url, **options), namespace=namespace)

    def fork(self) -> Self:
        """A new engine on its own connection pool (for a background thread or a child process)."""
        engine = type(self)(clone_client(self.redis), namespace=self.namespace)
        engine._partitions = self._partitions
        engine._hot_path = self._hot_path
        return engine

    def close(self) -> None:
        self.redis.close()

    # -- setup ------------------------------------------------------------------------------

    def bootstrap(self) -> LibraryState:
        """Load (or attach to) the function library and settle the partition config.

        Like FlowFabric's server on first boot, writes the default partition counts when
        ``ff:config:partitions`` is empty, so a FlowFabric server started later agrees.
        """
        state = self._guard(lambda: ensure_library(self.redis))
        self._hot_path = state.hot_path
        stored = self._guard(lambda: self.redis.hgetall(PARTITION_CONFIG_KEY))
        defaults = PartitionConfig().as_hash()
        missing = {name: value for name, value in defaults.items() if name.encode() not in stored}
        if missing:
            self._guard(lambda: self.redis.hset(PARTITION_CONFIG_KEY, mapping=missing))
        self._partitions = None
        return state

    @property
    def hot_path(self) -> bool:
        """Whether the hot path's combined calls (``ffcelery``, beside ff_celery's own
        ``flowfabric``) may be used; otherwise the contract calls are sent one by one."""
        if self._hot_path is None:
            self._hot_path = self._guard(lambda: hot_path_loaded(self.redis))
        return self._hot_path

    @hot_path.setter
    def hot_path(self, enabled: bool) -> None:
        """False keeps this engine on the contract calls (True only where the library answers)."""
        self._hot_path = enabled and hot_path_loaded(self.redis)

    @property
    def partitions(self) -> PartitionConfig:
        if self._partitions is None:
            self._partitions = PartitionConfig.from_hash(self._guard(lambda: self.redis.hgetall(PARTITION_CONFIG_KEY)))
        return self._partitions

    def register_lane(self, lane: str) -> None:
        """Add ``lane`` to FlowFabric's lane registry (``ff:idx:lanes``), once per process."""
        if lane not in self._known_lanes:
            self._guard(lambda: self.redis.sadd(LANE_REGISTRY_KEY, lane))
            self._known_lanes.add(lane)

    def lanes(self) -> set[str]:
        return {lane.decode() for lane in self._guard(lambda: self.redis.smembers(LANE_REGISTRY_KEY))}

    # -- time -------------------------------------------------------------------------------

    def server_time_ms(self) -> int:
        seconds, micros = self._guard(self.redis.time)
        return int(seconds) * 1000 + int(micros) // 1000

    def now_ms(self) -> int:
        """Engine (server) time, estimated from the local clock and a periodic TIME read."""
        local = time.time()
        if local - self._clock_read_at > _CLOCK_REFRESH_S:
            self._clock_offset_ms = self.server_time_ms() - int(time.time() * 1000)
            self._clock_read_at = local
        return int(local * 1000) + self._clock_offset_ms

    # -- executing FCALLs ---------------------------------------------------------------------

    def call(self, request: fn.Fcall[R]) -> R:
        """Execute one FCALL; error replies raise the typed :class:`EngineError`."""
        keys = request.keys()
        raw = self._guard(
            lambda: self.redis.fcall(request.function, len(keys), *keys, *request.argv()), request.function
        )
        return request.interpret(raw)

    def call_many(self, requests: Sequence[fn.Fcall[Any]]) -> list[Any]:
        """Execute FCALLs in one round trip. Each result is the outcome or the EngineError."""
        batch = self.batch()
        for request in requests:
            batch.fcall(request)
        return batch.execute()

    def batch(self) -> Batch:
        return Batch(self)

    def transaction(self, watched: Sequence[str], build: Callable[[redis.client.Pipeline], Batch]) -> list[Any] | None:
        """WATCH the keys ``watched`` (of one hash slot), then run the batch ``build`` makes as
        one transaction (MULTI / EXEC). ``build`` reads what it decides on after the WATCH
        (through the pipe, one command at a time, or through any other connection), so a
        change to a watched key since makes the transaction a no-op. Answers the batch's
        outcomes (as :meth:`Batch.execute`), or None when a watched key changed meanwhile."""

        def run() -> list[Any] | None:
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(*watched)
                    batch = build(pipe)
                    pipe.multi()
                    batch.queue_on(pipe)
                    return [batch, pipe.execute(raise_on_error=False)]
                except redis.WatchError:
                    return None

        ran = self._guard(run)
        if ran is None:
            return None
        batch, raws = ran
        if any(is_missing_function(raw) for raw in raws):  # nothing ran: the library is back next time
            self._reload_library()
            return None
        return batch.interpret(raws)

    def _guard(self, operation: Any, function: str | None = None) -> Any:
        """Run a Redis operation, reloading the library once if it disappeared."""
        try:
            return operation()
        except redis.ResponseError as exc:
            if not is_missing_function(exc):
                raise transport_error(exc, function) from exc
        except redis.RedisError as exc:
            raise transport_error(exc, function) from exc
        self._reload_library()
        try:
            return operation()
        except redis.RedisError as exc:
            raise transport_error(exc, function) from exc

    def _reload_library(self) -> None:
        with self._library_lock:
            log.warning("FlowFabric function library missing on the server; reloading it")
            try:
                self._hot_path = ensure_library(self.redis).hot_path
            except redis.RedisError as exc:
                raise UnavailableError(f"cannot reload the function library: {exc}") from exc

    @staticmethod
    def new_id() -> str:
        return new_uuid()


class Batch:
    """FCALLs and plain commands sent in one round trip (not a transaction).

    ``execute`` answers, in order, each FCALL's outcome or its :class:`EngineError`, and each
    plain command's raw reply (or the redis error).
    """

    def __init__(self, engine: Executor) -> None:
        self.engine = engine
        self._queued: list[tuple[str, tuple[Any, ...], fn.Fcall[Any] | None]] = []

    def __len__(self) -> int:
        return len(self._queued)

    def fcall(self, request: fn.Fcall[Any]) -> None:
        keys = request.keys()
        self._queued.append(("fcall", (request.function, len(keys), *keys, *request.argv()), request))

    def command(self, name: str, *args: Any, **kwargs: Any) -> None:
        """Queue a redis-py pipeline method call, e.g. ``command("hmget", key, fields)``."""
        self._queued.append((name, (*args, kwargs), None))

    def notify(self, channel: str, data: str | bytes) -> None:
        """Queue a notice on ``channel`` (see :mod:`ff_celery.engine.core.notices`)."""
        self.command(publish_command(self.engine.redis), channel, data)

    def queue_on(self, pipe: redis.client.Pipeline) -> None:
        """Queue every command on ``pipe`` (no notices: a transaction keeps to one slot)."""
        for name, args, request in self._queued:
            if request is not None:
                pipe.fcall(*args)
            else:
                getattr(pipe, name)(*args[:-1], **args[-1])

    def _run(self) -> list[Any]:
        pipe = self.engine.redis.pipeline(transaction=False)
        self.queue_on(pipe)
        return pipe.execute(raise_on_error=False)

    def execute(self) -> list[Any]:
        if not self._queued:
            return []
        raws = self.engine._guard(self._run)
        if any(is_missing_function(raw) for raw in raws):
            self.engine._reload_library()
            raws = self.engine._guard(self._run)
        return self.interpret(raws)

    def interpret(self, raws: list[Any]) -> list[Any]:
        """Each FCALL's outcome or EngineError, and each plain command's raw reply."""
        results: list[Any] = []
        for (_, _, request), raw in zip(self._queued, raws):
            if request is None:
                results.append(raw)
                continue
            try:
                if isinstance(raw, Exception):
                    raise transport_error(raw, request.function)
                results.append(request.interpret(raw))
            except EngineError as exc:
                results.append(exc)
        return results
