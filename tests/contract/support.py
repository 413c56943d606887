"""Helpers the contract and bad-input tests share: creating and claiming executions, raw FCALL
replies, typed-error checks, hash and stream reads, and whole-keyspace snapshots for "nothing
was written" checks."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from ff_celery.engine import functions as fn
from ff_celery.engine.core.engine import Engine
from ff_celery.engine.core.errors import EngineError
from ff_celery.engine.core.ids import ExecutionId, new_uuid
from ff_celery.engine.core.keys import ExecKeys

#: Where the contract tests create executions: the lane ``default`` and its partition.
LANE = "default"
PARTITION = 86  # crc16("default") % 256

#: The seven state dimensions of exec_core, in the spec's order.
SEVEN = (
    "lifecycle_phase",
    "ownership_state",
    "eligibility_state",
    "blocking_reason",
    "terminal_outcome",
    "attempt_state",
    "public_state",
)


def create_request(execution_id: ExecutionId | None = None, **fields: Any) -> fn.CreateExecution:
    """An ``ff_create_execution`` of a task on :data:`LANE` in namespace ``ns``, under a fresh id
    on :data:`PARTITION` unless one is given; ``fields`` override the rest."""
    identity = {"namespace": "ns", "lane_id": LANE, "execution_kind": "task"}
    return fn.CreateExecution(execution_id=execution_id or ExecutionId.mint(PARTITION), **{**identity, **fields})


def create(engine: Engine, execution_id: ExecutionId | None = None, **fields: Any) -> ExecutionId:
    """Create the execution :func:`create_request` describes: its id."""
    request = create_request(execution_id, **fields)
    engine.call(request)
    return request.execution_id


def grant_and_claim(
    engine: Engine,
    eid: ExecutionId,
    *,
    lane: str = "default",
    worker: tuple[str, str] = ("worker-a", "worker-a-1"),
    ttl_ms: int = 30_000,
    attempt_timeout_ms: int | None = None,
) -> tuple[fn.Lease, fn.Fence]:
    """Grant ``eid`` to ``worker`` (worker id, instance id) and claim it fresh: the lease and
    its fence."""
    identity = {"execution_id": eid, "worker_id": worker[0], "worker_instance_id": worker[1], "lane_id": lane}
    engine.call(fn.IssueClaimGrant(**identity))
    lease = engine.call(
        fn.ClaimExecution(
            **identity,
            lease_id=new_uuid(),
            lease_ttl_ms=ttl_ms,
            attempt_id=new_uuid(),
            attempt_timeout_ms=attempt_timeout_ms,
        )
    )
    return lease, fence_of(lease)


def fence_of(lease: fn.Lease) -> fn.Fence:
    assert lease.attempt_id is not None
    return fn.Fence(lease_id=lease.lease_id, lease_epoch=lease.lease_epoch, attempt_id=lease.attempt_id)


def decode(value: Any) -> Any:
    """A raw reply with bytes decoded (nested lists too)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [decode(item) for item in value]
    return value


def raw(r: redis.Redis, model: fn.Fcall[Any], argv: list[Any] | None = None, keys: list[str] | None = None) -> Any:
    """The decoded reply of ``model`` (optionally with replaced ARGV or KEYS)."""
    keys = model.keys() if keys is None else keys
    args = model.argv() if argv is None else argv
    return decode(r.fcall(model.function, len(keys), *keys, *args))


def expect_error(engine: Engine, model: fn.Fcall[Any], code: str, details: list[str] | None = None) -> EngineError:
    """``model`` raises the typed error ``code`` (with exactly ``details`` when given)."""
    with pytest.raises(EngineError) as info:
        engine.call(model)
    assert info.value.code == code
    if details is not None:
        assert info.value.details == details
    return info.value


def hash_of(r: redis.Redis, key: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in r.hgetall(key).items()}


def seven(fields: dict[str, str]) -> tuple[str, ...]:
    return tuple(fields[name] for name in SEVEN)


def history(r: redis.Redis, eid: ExecutionId) -> list[dict[str, str]]:
    """Lease-history events in stream order; each dict keeps the field order as written."""
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in r.xrange(ExecKeys(eid).lease_history)]


def server_ms(r: redis.Redis) -> int:
    seconds, micros = r.time()
    return int(seconds) * 1000 + int(micros) // 1000


def keyspace(r: redis.Redis) -> dict[bytes, tuple[str, Any, bool]]:
    """Every key with its type, full value and whether it carries a TTL."""
    snapshot: dict[bytes, tuple[str, Any, bool]] = {}
    every_shard = {"target_nodes": redis.RedisCluster.PRIMARIES} if isinstance(r, redis.RedisCluster) else {}
    for key in sorted(r.keys("*", **every_shard)):
        kind = r.type(key).decode()
        value: Any
        if kind == "string":
            value = r.get(key)
        elif kind == "hash":
            value = r.hgetall(key)
        elif kind == "zset":
            value = r.zrange(key, 0, -1, withscores=True)
        elif kind == "set":
            value = sorted(r.smembers(key))
        elif kind == "list":
            value = r.lrange(key, 0, -1)
        elif kind == "stream":
            value = r.xrange(key)
        else:
            raise AssertionError(f"unexpected key type {kind} for {key!r}")
        snapshot[key] = (kind, value, r.pttl(key) >= 0)
    return snapshot
