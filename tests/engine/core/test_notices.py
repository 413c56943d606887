"""Notices (wake-ups, completion notices): classic Pub/Sub on one server, sharded Pub/Sub on a
cluster, the same to their publishers and listeners either way."""

from __future__ import annotations

import time

import pytest
from conftest import each_node, subscribers, wait_for

from ff_celery.engine.core.notices import Listener, Notice

CHANNELS = [f"ffc:wake:notices-{n}" for n in range(12)]  # slots spread over every shard


@pytest.fixture
def listener(ff_engine):
    listening = Listener(ff_engine.redis)
    listening.subscribe(*CHANNELS)
    assert wait_for(lambda: all(subscribers(ff_engine.redis, channel) == 1 for channel in CHANNELS))
    yield listening
    listening.close()


def heard(listener: Listener, count: int, timeout_s: float = 15.0) -> list[Notice]:
    """The first ``count`` notices the listener hears (fewer if ``timeout_s`` passes first)."""
    notices: list[Notice] = []
    deadline = time.monotonic() + timeout_s
    while len(notices) < count and time.monotonic() < deadline:
        notice = listener.get(0.1)
        if notice is not None:
            notices.append(notice)
    return notices


def test_a_listener_hears_what_the_engine_and_its_batches_publish(ff_engine, listener):
    ff_engine.notify(CHANNELS[0], "direct")
    batch = ff_engine.batch()
    batch.command("set", "notices:unrelated", "1")
    for channel in CHANNELS[1:]:
        batch.notify(channel, b"batched")
    batch.execute()
    notices = heard(listener, len(CHANNELS))
    assert sorted((notice.channel, notice.data) for notice in notices) == sorted(
        [(CHANNELS[0], b"direct"), *((channel, b"batched") for channel in CHANNELS[1:])]
    )


def test_an_unsubscribed_channel_is_no_longer_heard(ff_engine, listener):
    listener.unsubscribe(CHANNELS[0])
    assert wait_for(lambda: subscribers(ff_engine.redis, CHANNELS[0]) == 0)
    assert ff_engine.notify(CHANNELS[0], "gone") == 0  # no listener took it
    assert ff_engine.notify(CHANNELS[1], "kept") == 1
    assert [(notice.channel, notice.data) for notice in heard(listener, 1)] == [(CHANNELS[1], b"kept")]


def test_notices_are_sharded_on_a_cluster_and_classic_on_one_server(ff_engine, listener):
    nodes = each_node(ff_engine.redis)
    classic = sum(node.pubsub_numsub(*CHANNELS)[n][1] for node in nodes for n in range(len(CHANNELS)))
    sharded = sum(node.pubsub_shardnumsub(*CHANNELS)[n][1] for node in nodes for n in range(len(CHANNELS)))
    if ff_engine.clustered:
        # each channel on the shard that owns its slot only; a connection per shard listened on
        owners = {ff_engine.redis.get_node_from_key(channel).name for channel in CHANNELS}
        assert (listener.sharded, classic, sharded) == (True, 0, len(CHANNELS))
        assert len(listener.connections()) == len(owners)
    else:
        assert (listener.sharded, classic, sharded) == (False, len(CHANNELS), 0)
        assert len(listener.connections()) == 1
