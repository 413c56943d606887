"""Where work may be: the partitions that scanners and claimers read.

FlowFabric puts every solo execution of a lane on the lane's own partition (``crc16(lane) %
partitions``), so the lane registry already tells where solo work may be. Anything else (a
flow and its members, on the flow's partition; an execution minted elsewhere) is on a
partition ff_celery records in ``ffc:idx:partitions`` (a zset: partition -> when it last put
work there) in the round trip before it creates the work; :func:`forget_unused_partitions`
takes a partition out again once it holds no execution and no flow. What other FlowFabric
clients write on partitions nobody recorded is found by the scanners' slow full sweep and the
claimers' slow rotation through every partition.

:func:`occupied` tells which of many partitions hold any of the keys asked about, at the cost
of one ``EXISTS`` when none does (one per partition on a cluster, whose multi-key commands
stay within one slot): a scanner that finds nothing costs one command.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis

from ff_celery.engine.core.executor import Batch, Executor, transport_error
from ff_celery.engine.core.keys import LANE_REGISTRY_KEY, PARTITIONS_IN_USE_KEY, PartitionKeys

log = logging.getLogger(__name__)

Group = TypeVar("Group")
Item = TypeVar("Item")

#: A partition recorded less than this long ago stays recorded even if it looks unused: its
#: writer may not have created the work yet.
UNUSED_GRACE_MS = 60_000
#: A partition number is a u16 (FlowFabric's execution ids).
MAX_PARTITION = 65_535


@dataclass(frozen=True)
class ScanPlan:
    """What a scan reads: each lane's home partition (its solo executions) and the
    ``others``, where anything else may be (every partition on a full sweep)."""

    homes: dict[str, int] = field(default_factory=dict)
    others: tuple[int, ...] = ()

    @property
    def lanes(self) -> list[str]:
        return sorted(self.homes)

    @property
    def partitions(self) -> list[int]:
        """Every partition the plan covers."""
        return sorted(set(self.homes.values()) | set(self.others))

    @property
    def lane_slots(self) -> list[tuple[int, str]]:
        """(partition, lane) of every per-lane index the plan covers: each lane on its home,
        every lane on the others."""
        slots = {(home, lane) for lane, home in self.homes.items()}
        return sorted(slots | {(partition, lane) for partition in self.others for lane in self.homes})


def read_plan(engine: Executor, lanes: Iterable[str], *, full: bool = False) -> ScanPlan:
    """The plan for ``lanes`` and every lane in FlowFabric's lane registry, with the recorded
    partitions (or, when ``full``, every partition) as the others: one round trip."""
    batch = engine.batch()
    batch.command("smembers", LANE_REGISTRY_KEY)
    batch.command("zrange", PARTITIONS_IN_USE_KEY, 0, -1)
    registered, recorded = _replies(batch)
    config = engine.partitions
    every_lane = set(lanes) | {lane.decode() for lane in registered}
    others = range(config.num_flow_partitions) if full else partition_numbers(recorded)
    return ScanPlan({lane: config.lane_partition(lane) for lane in every_lane}, tuple(others))


def recorded_partitions(engine: Executor) -> list[int]:
    """The partitions recorded in ``ffc:idx:partitions``."""
    batch = engine.batch()
    batch.command("zrange", PARTITIONS_IN_USE_KEY, 0, -1)
    return partition_numbers(_replies(batch)[0])


def partitions_of(engine: Executor, lanes: Iterable[str]) -> list[int]:
    """The partitions that may hold executions of ``lanes`` that ff_celery created (in any
    state): the lanes' own and those recorded. Other clients' executions elsewhere are for a
    full sweep over every partition."""
    config = engine.partitions
    return sorted({config.lane_partition(lane) for lane in lanes} | set(recorded_partitions(engine)))


def partition_numbers(members: Iterable[bytes]) -> list[int]:
    """The partitions a recorded list names, in order; a member that names none is logged
    and skipped."""
    numbers = []
    for member in members:
        try:
            number = int(member)
        except ValueError:
            number = -1
        if 0 <= number <= MAX_PARTITION:
            numbers.append(number)
        else:
            log.warning("skipping %r in %s: not a partition number", member, PARTITIONS_IN_USE_KEY)
    return sorted(set(numbers))


def record_partition(batch: Batch, partition: int, now_ms: int) -> None:
    """Queue recording ``partition`` as in use: before the write that puts work there."""
    batch.command("zadd", PARTITIONS_IN_USE_KEY, {str(partition): now_ms})


def occupied(engine: Executor, keys: Mapping[Group, Sequence[str]]) -> list[Group]:
    """The groups (each the keys of one partition) with any of their keys present. When
    none is, this costs one command: one ``EXISTS`` over every key on a single server; on a
    cluster one per group, in one round trip."""
    groups = [(group, list(group_keys)) for group, group_keys in keys.items() if group_keys]
    if not groups:
        return []
    if not engine.clustered:
        batch = engine.batch()
        batch.command("exists", *(key for _, group_keys in groups for key in group_keys))
        if not _replies(batch)[0]:
            return []
        if len(groups) == 1:
            return [groups[0][0]]
    batch = engine.batch()
    for _, group_keys in groups:
        batch.command("exists", *group_keys)
    return [group for (group, _), found in zip(groups, _replies(batch)) if found]


def present(engine: Executor, wanted: Iterable[tuple[int, str, Item]]) -> list[tuple[str, Item]]:
    """Those of ``wanted`` (partition, key, what the key stands for) on partitions where any
    of the keys exists (:func:`occupied`), as (key, what it stands for)."""
    wanted = list(wanted)
    by_partition: dict[int, list[str]] = defaultdict(list)
    for partition, key, _ in wanted:
        by_partition[partition].append(key)
    found = set(occupied(engine, by_partition))
    return [(key, item) for partition, key, item in wanted if partition in found]


def forget_unused_partitions(engine: Executor, grace_ms: int = UNUSED_GRACE_MS) -> int:
    """Take out of ``ffc:idx:partitions`` the partitions that hold no execution and no flow
    and were not recorded in the last ``grace_ms``. A partition recorded again meanwhile
    stays (the removal is a transaction watching the index). Answers how many left."""
    cutoff = engine.server_time_ms() - grace_ms
    batch = engine.batch()
    batch.command("zrangebyscore", PARTITIONS_IN_USE_KEY, "-inf", cutoff)
    candidates = partition_numbers(_replies(batch)[0])
    if not candidates:
        return 0
    checks = engine.batch()
    for partition in candidates:
        index = PartitionKeys(partition)
        checks.command("exists", index.all_executions, index.flow_index, index.cancel_backlog,
                       index.pending_cancel_groups)  # fmt: skip
    unused = [partition for partition, found in zip(candidates, _replies(checks)) if not found]
    if not unused:
        return 0
    with engine.redis.pipeline(transaction=True) as pipe:  # one key: one slot on a cluster too
        try:
            pipe.watch(PARTITIONS_IN_USE_KEY)
            scores = pipe.zmscore(PARTITIONS_IN_USE_KEY, [str(partition) for partition in unused])
            stale = [str(p) for p, score in zip(unused, scores) if score is not None and score <= cutoff]
            if not stale:
                return 0
            pipe.multi()
            pipe.zrem(PARTITIONS_IN_USE_KEY, *stale)
            pipe.execute()
        except redis.WatchError:  # recorded again meanwhile: looked at next time
            return 0
    return len(stale)


def _replies(batch: Batch) -> list[Any]:
    """A batch of plain commands' replies; a failed one raises its TransportError."""
    replies = batch.execute()
    for reply in replies:
        if isinstance(reply, Exception):
            raise transport_error(reply)
    return replies
