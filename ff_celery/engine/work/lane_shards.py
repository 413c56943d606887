"""A hot lane spread over several lanes, one per slice of the slot space.

FlowFabric puts every solo execution of a lane on the lane's partition, so one busy lane
loads one cluster shard. Sharding a lane ``L`` over ``n`` lanes keeps ``L`` itself and adds
``L~k`` lanes, each ``k`` the smallest whose partition's slot falls in another of ``n``
equal slices of the 16384 slots, so a cluster whose primaries own equal slices (what
``--cluster create`` and ``DevCluster`` do) gets one lane per primary. Every process
computes the same names; FlowFabric's own workers see ordinary lanes.
"""

from __future__ import annotations

from ff_celery.engine.core.partitions import PartitionConfig, crc16, flow_tag

SEPARATOR = "~"
SLOTS = 16384
#: Candidate suffixes tried per slice before giving up on finding one (never reached in practice).
SEARCH_LIMIT = 10_000


def partition_slot(partition: int) -> int:
    """The cluster slot of a partition's hash tag (``{fp:N}``)."""
    return crc16(flow_tag(partition)[1:-1].encode()) % SLOTS


def shard_lanes(lane: str, shards: int, partitions: PartitionConfig) -> list[str]:
    """``lane`` first, then one lane per other slice of the slot space (``shards`` in all;
    fewer if the partitions cannot cover that many slices)."""
    if shards <= 1:
        return [lane]

    def slice_of(name: str) -> int:
        return partition_slot(partitions.lane_partition(name)) * shards // SLOTS

    lanes, taken = [lane], {slice_of(lane)}
    for suffix in range(1, SEARCH_LIMIT):
        if len(lanes) == shards:
            break
        candidate = f"{lane}{SEPARATOR}{suffix}"
        where = slice_of(candidate)
        if where not in taken:
            lanes.append(candidate)
            taken.add(where)
    return lanes
