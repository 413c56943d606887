"""Spreading a lane over lanes in separate slices of the cluster slot space."""

from ff_celery.engine.core.partitions import PartitionConfig
from ff_celery.engine.work.lane_shards import SLOTS, partition_slot, shard_lanes

PARTITIONS = PartitionConfig()


def test_one_shard_is_the_lane_itself():
    assert shard_lanes("celery", 1, PARTITIONS) == ["celery"]


def test_each_shard_lane_falls_in_its_own_slice_of_the_slots_and_the_first_is_the_lane():
    for shards in (2, 3, 4, 8):
        lanes = shard_lanes("celery", shards, PARTITIONS)
        slices = {partition_slot(PARTITIONS.lane_partition(lane)) * shards // SLOTS for lane in lanes}
        assert lanes[0] == "celery" and len(lanes) == len(slices) == shards


def test_every_process_computes_the_same_lanes():
    assert shard_lanes("orders", 3, PARTITIONS) == shard_lanes("orders", 3, PartitionConfig())


def test_a_partition_slot_is_the_cluster_slot_of_its_hash_tag():
    from redis.crc import key_slot

    assert all(partition_slot(p) == key_slot(f"{{fp:{p}}}:anything".encode()) for p in (0, 86, 141, 255))
