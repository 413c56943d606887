"""Plain kombu messages (not Celery tasks) through ``flowfabric://``: each one is an execution
that a consumer claims; ack completes it, reject fails it or hands it back, and a consumer
that goes away without acking hands it back, so it is delivered again, never copied."""

import time

import kombu
import pytest

from ff_celery.devtools.devserver import DevServer
from ff_celery.engine.core.connection import connect
from ff_celery.engine.core.ids import ExecutionId
from ff_celery.engine.core.keys import PartitionKeys
from ff_celery.integration.transport import KOMBU_HASH_TAG
from ff_celery.mapping.messages import NAMESPACE


@pytest.fixture
def url(ff_url, ff_redis):
    return ff_url.replace("redis://", "flowfabric://", 1)


def executions(url, lane):
    """Public states of the lane's executions."""
    with kombu.Connection(url) as connection:
        engine = connection.default_channel.ff_engine
        index = PartitionKeys(engine.partitions.lane_partition(lane)).all_executions
        members = [ExecutionId(member.decode()) for member in engine.redis.smembers(index)]
        return sorted(engine.snapshot(member).public_state for member in members)


def test_a_message_round_trips_with_its_body_headers_and_properties(url):
    with kombu.Connection(url) as connection:
        queue = connection.SimpleQueue("plain")
        queue.put({"order": 42}, headers={"source": "shop"}, priority=3)
        message = queue.get(timeout=5)
        assert message.payload == {"order": 42}
        assert message.headers["source"] == "shop"
        assert message.properties["priority"] == 3
        message.ack()
        queue.close()
    assert executions(url, "plain") == ["completed"]


def test_messages_are_consumed_by_a_callback_consumer_in_priority_order(url):
    with kombu.Connection(url) as connection:
        producer = connection.Producer()
        for body, priority in (("low", 0), ("high", 9), ("mid", 5)):
            producer.publish(body, routing_key="callbacks", priority=priority)
        received = []

        def on_message(body, message):
            received.append(body)
            message.ack()

        with connection.Consumer(kombu.Queue("callbacks"), callbacks=[on_message], prefetch_count=1):
            deadline = time.monotonic() + 10
            while len(received) < 3 and time.monotonic() < deadline:
                connection.drain_events(timeout=1)
    assert received == ["high", "mid", "low"]
    assert executions(url, "callbacks") == ["completed"] * 3


def test_a_requeued_message_is_delivered_again_as_the_same_execution(url):
    with kombu.Connection(url) as connection:
        queue = connection.SimpleQueue("requeue")
        queue.put("again")
        first = queue.get(timeout=5)
        first.requeue()
        second = queue.get(timeout=5)
        assert second.payload == "again"
        assert second.delivery_info["redelivered"] is True
        second.ack()
        queue.close()
    assert executions(url, "requeue") == ["completed"]


def test_a_rejected_message_fails_its_execution(url):
    with kombu.Connection(url) as connection:
        queue = connection.SimpleQueue("rejects")
        queue.put("unwanted")
        queue.get(timeout=5).reject()
        with pytest.raises(queue.Empty):
            queue.get(timeout=0.5)
        queue.close()
    assert executions(url, "rejects") == ["failed"]


def test_an_unacked_message_of_a_closed_connection_goes_to_the_next_consumer(url):
    with kombu.Connection(url) as connection:
        queue = connection.SimpleQueue("unacked")
        queue.put("hand me back")
        assert queue.get(timeout=5).payload == "hand me back"  # never acked
        queue.close()
    with kombu.Connection(url) as connection:
        queue = connection.SimpleQueue("unacked")
        message = queue.get(timeout=5)
        assert message.payload == "hand me back"
        message.ack()
        queue.close()
    assert executions(url, "unacked") == ["completed"]


def test_message_executions_live_in_the_celery_namespace(url):
    with kombu.Connection(url) as connection:
        connection.SimpleQueue("ns").put("x")
        engine = connection.default_channel.ff_engine
        index = PartitionKeys(engine.partitions.lane_partition("ns")).all_executions
        (member,) = engine.redis.smembers(index)
        assert engine.snapshot(ExecutionId(member.decode())).core["namespace"] == NAMESPACE


def test_on_a_cluster_node_lanes_hold_executions_and_kombus_own_keys_share_one_slot():
    with DevServer(cluster=True) as server:
        url = server.url.replace("redis://", "flowfabric://", 1)
        with kombu.Connection(url) as connection:
            assert connection.default_channel.ff_engine.clustered  # found out from the server
            lane, events = connection.SimpleQueue("celery"), connection.SimpleQueue("celeryev.cluster-test")
            lane.put({"task": 1})
            events.put({"event": 1})
            assert events.get(timeout=10).payload == {"event": 1}
            message = lane.get(timeout=10)
            assert message.payload == {"task": 1}
            message.ack()
            lane.close()
            events.close()
        keys = connect(server.url).keys("*")
        kombu_keys = [key for key in keys if not key.startswith((b"ff:", b"ffc:"))]
        assert kombu_keys and all(key.startswith(KOMBU_HASH_TAG.encode()) for key in kombu_keys)


def test_a_queue_spread_over_three_lanes_is_published_round_robin_and_consumed_in_priority_order(url):
    options = {"transport_options": {"queue_shards": {"hot": 3}}}
    with kombu.Connection(url, **options) as connection:
        channel = connection.default_channel
        lanes = channel.ff_lanes_of("hot")
        producer = connection.Producer()
        for number in range(6):
            producer.publish({"n": number}, routing_key="hot", priority=9 if number == 4 else 0)
        engine = channel.ff_engine
        assert [engine.lane_counts(lane)["eligible"] for lane in lanes] == [2, 2, 2]
        if engine.clustered:  # one lane per primary (of three or more)
            nodes = {engine.redis.get_node_from_key(ExecutionId.mint(engine.partitions.lane_partition(lane))).name
                     for lane in lanes}  # fmt: skip
            assert len(nodes) == min(3, len(engine.redis.get_primaries()))
        assert channel._size("hot") == 6
        received = []

        def on_message(body, message):
            received.append(body["n"])
            assert message.delivery_info["routing_key"] == "hot"
            message.ack()

        with connection.Consumer(kombu.Queue("hot"), callbacks=[on_message], prefetch_count=1):
            deadline = time.monotonic() + 20
            while len(received) < 6 and time.monotonic() < deadline:
                connection.drain_events(timeout=1)
    assert received[0] == 4 and sorted(received) == list(range(6))  # the priority-9 head first, across lanes
    assert [executions(url, lane) for lane in lanes] == [["completed"] * 2] * 3


def test_purging_a_spread_queue_empties_every_lane(url):
    with kombu.Connection(url, transport_options={"queue_shards": {"hot": 3}}) as connection:
        queue = connection.SimpleQueue("hot")
        for number in range(6):
            queue.put({"n": number})
        assert queue.clear() == 6
        assert queue.qsize() == 0
        queue.close()
