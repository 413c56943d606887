"""Notices over Pub/Sub: wake-ups for idle claimers and completion notices for waiting results.

On one server they are classic Pub/Sub. On a cluster they are sharded Pub/Sub (``SPUBLISH`` /
``SSUBSCRIBE``, Valkey and Redis 7+): a notice reaches only the shard that owns its channel's
slot instead of being relayed to every node, and a listener holds one connection per shard it
listens on (redis-py moves its subscriptions when a slot moves or a replica takes over).
FlowFabric's ``ff:dag:completions``, which its library PUBLISHes, stays classic Pub/Sub.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
import redis.client


def is_sharded(client: redis.Redis) -> bool:
    """Whether notices through ``client`` use sharded Pub/Sub (it talks to a cluster)."""
    return isinstance(client, redis.RedisCluster)


def publish_command(client: redis.Redis) -> str:
    """The redis-py method (on ``client`` or its pipelines) that publishes a notice."""
    return "spublish" if is_sharded(client) else "publish"


@dataclass(frozen=True)
class Notice:
    """One notice heard: its channel and what it carried."""

    channel: str
    data: bytes


class Listener:
    """Subscriptions to notice channels on one server or a cluster, read without blocking
    longer than asked. Not thread-safe: one per thread."""

    def __init__(self, client: redis.Redis) -> None:
        self.sharded = is_sharded(client)
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)

    def subscribe(self, *channels: str) -> None:
        if channels:
            (self._pubsub.ssubscribe if self.sharded else self._pubsub.subscribe)(*channels)

    def unsubscribe(self, *channels: str) -> None:
        if channels:
            (self._pubsub.sunsubscribe if self.sharded else self._pubsub.unsubscribe)(*channels)

    def get(self, timeout_s: float = 0.0) -> Notice | None:
        """The next notice, waiting up to ``timeout_s``; None when none came (or only a
        confirmation of a (un)subscription did)."""
        if self.sharded:
            message = self._pubsub.get_sharded_message(timeout=timeout_s)
        else:
            message = self._pubsub.get_message(timeout=timeout_s)
        if message is None or message["type"] not in ("message", "smessage"):
            return None
        channel = message["channel"]
        return Notice(channel.decode() if isinstance(channel, bytes) else channel, message["data"])

    def connections(self) -> list[redis.client.PubSub]:
        """The Pub/Sub connections an event loop watches for notices (on a cluster, one per
        shard subscribed to; they change when subscriptions move)."""
        candidates = list(self._pubsub.node_pubsub_mapping.values()) if self.sharded else [self._pubsub]
        return [pubsub for pubsub in candidates if pubsub.connection is not None]

    def close(self) -> None:
        self._pubsub.close()
