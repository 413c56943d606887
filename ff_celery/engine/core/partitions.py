"""Partition math: which ``{fp:N}`` / ``{b:N}`` / ``{q:N}`` hash tag a record lives under.

FlowFabric places a solo execution on ``crc16(lane) % num_flow_partitions`` and a flow (with
its members) on ``crc16(flow_uuid_bytes) % num_flow_partitions``; budgets and quotas hash their
UUID bytes over their own partition counts. The counts live in ``ff:config:partitions``.
"""

from __future__ import annotations

import binascii
import uuid

from pydantic import BaseModel, ConfigDict

PARTITION_CONFIG_KEY = "ff:config:partitions"

FNV_OFFSET_BASIS = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM (poly 0x1021, init 0): the CRC Valkey Cluster uses for key slots."""
    return binascii.crc_hqx(data, 0)


def fnv1a64(data: bytes) -> int:
    """FNV-1a 64-bit; FlowFabric uses it only for scan jitter, never for keys."""
    value = FNV_OFFSET_BASIS
    for byte in data:
        value = ((value ^ byte) * FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return value


class PartitionConfig(BaseModel):
    """Partition counts, as stored in ``ff:config:partitions``."""

    model_config = ConfigDict(frozen=True)

    num_flow_partitions: int = 256
    num_budget_partitions: int = 32
    num_quota_partitions: int = 32

    @classmethod
    def from_hash(cls, fields: dict[bytes | str, bytes | str]) -> PartitionConfig:
        """Parse the stored hash; a missing, non-numeric or zero field keeps its default."""
        values: dict[str, int] = {}
        for name in cls.model_fields:
            raw = fields.get(name) or fields.get(name.encode())
            try:
                number = int(raw.decode() if isinstance(raw, bytes) else raw)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                continue
            if number > 0:
                values[name] = number
        return cls(**values)

    def as_hash(self) -> dict[str, str]:
        return {name: str(value) for name, value in self.model_dump().items()}

    def lane_partition(self, lane: str) -> int:
        """Partition of every solo execution submitted on ``lane``."""
        return crc16(lane.encode("utf-8")) % self.num_flow_partitions

    def flow_partition(self, flow_id: str) -> int:
        """Partition of a flow and its members: CRC over the 16 raw UUID bytes."""
        return crc16(uuid.UUID(flow_id).bytes) % self.num_flow_partitions

    def new_flow_id(self, partition: int) -> str:
        """A fresh random flow id (UUID v4) whose flow lives on ``partition``: the last two
        (random) bytes are searched, continuing the CRC of the first fourteen."""
        if not 0 <= partition < self.num_flow_partitions:
            raise ValueError(f"partition {partition} is outside 0..{self.num_flow_partitions - 1}")
        head = uuid.uuid4().bytes[:14]
        prefix = crc16(head)
        for tail in range(65536):
            last = tail.to_bytes(2, "big")
            if binascii.crc_hqx(last, prefix) % self.num_flow_partitions == partition:
                return str(uuid.UUID(bytes=head + last))
        raise AssertionError("every partition is reachable through two bytes")

    def budget_partition(self, budget_id: str) -> int:
        return crc16(uuid.UUID(budget_id).bytes) % self.num_budget_partitions

    def quota_partition(self, quota_policy_id: str) -> int:
        return crc16(uuid.UUID(quota_policy_id).bytes) % self.num_quota_partitions

    def scan_start(self, worker_instance_id: str) -> int:
        """Where a worker starts rotating through partitions (FlowFabric's SDK seed)."""
        return fnv1a64(worker_instance_id.encode("utf-8")) % self.num_flow_partitions


def flow_tag(partition: int) -> str:
    return f"{{fp:{partition}}}"


def budget_tag(partition: int) -> str:
    return f"{{b:{partition}}}"


def quota_tag(partition: int) -> str:
    return f"{{q:{partition}}}"
