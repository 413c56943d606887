"""Partition math matches FlowFabric's test vectors (spec §1.3, §1.4)."""

import pytest

from ff_celery.engine.core.partitions import PartitionConfig, crc16, fnv1a64


def test_crc16_is_xmodem_with_its_check_value():
    assert crc16(b"123456789") == 0x31C3


@pytest.mark.parametrize(("lane", "partition"), [("default", 86), ("hot", 205), ("lane-2", 206), ("workers-a", 193)])
def test_solo_executions_land_on_the_lanes_partition(lane, partition):
    assert PartitionConfig().lane_partition(lane) == partition


@pytest.mark.parametrize(
    ("flow_id", "partition"),
    [("550e8400-e29b-41d4-a716-446655440000", 24), ("00000000-0000-4000-8000-000000000000", 155)],
)
def test_flow_partition_hashes_the_raw_uuid_bytes(flow_id, partition):
    assert PartitionConfig().flow_partition(flow_id) == partition


def test_hashing_the_flow_id_text_would_give_a_different_partition():
    assert crc16(b"550e8400-e29b-41d4-a716-446655440000") % 256 == 6


@pytest.mark.parametrize(("worker", "start"), [("worker-a", 253), ("w1", 5)])
def test_scan_start_is_fnv1a64_of_the_worker_instance(worker, start):
    assert PartitionConfig().scan_start(worker) == start


def test_fnv1a64_capability_digest_vector():
    value = fnv1a64(b"gpu,cuda")
    assert f"{(value & 0xFFFFFFFF) ^ (value >> 32):08x}" == "b21a6dfa"


def test_partition_config_defaults_when_the_hash_is_empty():
    assert PartitionConfig.from_hash({}) == PartitionConfig(
        num_flow_partitions=256, num_budget_partitions=32, num_quota_partitions=32
    )


def test_missing_non_numeric_or_zero_fields_fall_back_to_defaults():
    config = PartitionConfig.from_hash(
        {b"num_flow_partitions": b"64", b"num_budget_partitions": b"x", b"num_quota_partitions": b"0"}
    )
    assert (config.num_flow_partitions, config.num_budget_partitions, config.num_quota_partitions) == (64, 32, 32)


def test_engine_reads_the_partition_config_from_valkey(ff_engine, ff_redis):
    ff_redis.hset("ff:config:partitions", mapping={"num_flow_partitions": "16"})
    ff_engine._partitions = None
    assert ff_engine.partitions.num_flow_partitions == 16
    assert ff_engine.partitions.lane_partition("default") == PartitionConfig(num_flow_partitions=16).lane_partition(
        "default"
    )


def test_bootstrap_writes_default_partition_counts_like_flowfabrics_first_boot(ff_engine, ff_redis):
    ff_redis.delete("ff:config:partitions")
    ff_engine.bootstrap()
    assert ff_redis.hgetall("ff:config:partitions") == {
        b"num_flow_partitions": b"256",
        b"num_budget_partitions": b"32",
        b"num_quota_partitions": b"32",
    }
