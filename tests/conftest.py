import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import redis

from ff_celery.devtools.devserver import CLUSTER_VARIABLE
from ff_celery.engine.core.engine import Engine

pytest_plugins = ["ff_celery.devtools.pytest_plugin"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a cluster-mode server, what FlowFabric's contract makes cross-slot (spec §1.5) and
    databases other than 0 do not exist; on a multi-node cluster, neither does one server's
    port or socket: those tests are skipped, naming why."""
    mode = os.environ.get(CLUSTER_VARIABLE)
    if mode not in ("1", "3"):
        return
    cross_slot = pytest.mark.skip(
        reason="cross-slot by FlowFabric's contract (spec §1.5) or database > 0: standalone only"
    )
    one_server = pytest.mark.skip(reason="about one server's own port, socket or users: not a multi-node cluster")
    for item in items:
        if item.get_closest_marker("standalone"):
            item.add_marker(cross_slot)
        elif mode == "3" and item.get_closest_marker("single_node"):
            item.add_marker(one_server)


def each_node(client: redis.Redis) -> list[redis.Redis]:
    """A client per node: the node itself, or every node of a cluster."""
    if isinstance(client, redis.RedisCluster):
        return [client.get_redis_connection(node) for node in client.get_nodes()]
    return [client]


def subscribers(client: redis.Redis, channel: str) -> int:
    """Subscribers of ``channel``, classic or sharded (on a cluster: on any node)."""
    return sum(node.pubsub_numsub(channel)[0][1] + node.pubsub_shardnumsub(channel)[0][1] for node in each_node(client))


def command_calls(client: redis.Redis, command: str) -> int:
    """How many times the server (on a cluster: every node) ran ``command``."""
    stats = (node.info("commandstats").get(f"cmdstat_{command}", {}) for node in each_node(client))
    return sum(entry.get("calls", 0) for entry in stats)


def wait_for(predicate: Callable[[], object], timeout: float = 15.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is truthy; False once ``timeout`` seconds passed first.

    For what a background thread, scanner or server does: a fixed sleep before the assertion
    fails whenever a loaded machine is slower than the sleep, a generous timeout only costs
    time when the test fails anyway."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


@contextmanager
def engine_time(engine: Engine, now_ms: float) -> Iterator[None]:
    """Within the block ``engine.server_time_ms()`` answers ``now_ms``, so scanner passes (which
    take their "now" from it) run as of that moment: "not yet due" checks hold however late a
    loaded machine gets to them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "server_time_ms", lambda: int(now_ms))
        yield
