"""The hot path's shortcuts send exactly what the general path sends: hiredis packing of
plain arguments, calls built without validation, replies parsed without validation."""

from enum import Enum
from http import HTTPStatus

import pytest
import redis
from redis.connection import Connection

from ff_celery.engine import functions as fn
from ff_celery.engine.connection import HiredisPacker, connect
from ff_celery.engine.functions.lease import lease_from_reply
from ff_celery.engine.ids import ExecutionId, new_uuid

EID = ExecutionId.mint(7)


class Color(str, Enum):
    RED = "red"


FENCE = fn.Fence(lease_id=new_uuid(), lease_epoch=3, attempt_id=new_uuid())


@pytest.mark.parametrize(
    "command",
    [
        ("FCALL", "ff_complete_execution", 2, f"ff:exec:{EID}:core", EID, b"\x00\xff payload", "é", ""),
        ("ZRANGEBYSCORE", "k", "-inf", "+inf", "LIMIT", 0, 16, "WITHSCORES"),
        ("SET", "k", 1.5, "PX", 10**20, -3),
        ("SET", "k", memoryview(b"viewed"), bytearray(b"array")),
        ("SET", "k", HTTPStatus.OK, Color.RED),
        ("SET", "k", 2**70, float("inf"), -0.0),
        ("CLIENT SETNAME", "name"),
        (b"CLIENT SETNAME", "name"),
    ],
)
def test_the_hiredis_packer_packs_every_command_as_redis_py_does(command):
    assert b"".join(HiredisPacker().pack(*command)) == b"".join(Connection().pack_command(*command))


@pytest.mark.parametrize("bad", [True, None, {"a": 1}])
def test_the_hiredis_packer_refuses_what_redis_py_refuses(bad):
    with pytest.raises(redis.DataError):
        Connection().pack_command("SET", "k", bad)
    with pytest.raises(redis.DataError):
        HiredisPacker().pack("SET", "k", bad)


def test_engine_connections_pack_with_hiredis_and_their_clones_too(ff_server):
    client = connect(ff_server.url)
    clone = redis.Redis(
        connection_pool=redis.ConnectionPool(
            connection_class=client.connection_pool.connection_class, **client.connection_pool.connection_kwargs
        )
    )
    try:
        for each in (client, clone):
            assert isinstance(each.connection_pool.connection_kwargs["command_packer"], HiredisPacker)
            assert each.set("hot-path", "é") and each.get("hot-path") == "é".encode()
    finally:
        client.close()
        clone.close()


IDENTITY = {"execution_id": EID, "worker_id": "w", "worker_instance_id": "host:1:abc", "lane_id": "lane"}
HOLDER = {**IDENTITY, "fence": FENCE, "attempt_index": 2, "source": ""}
del HOLDER["worker_id"]


@pytest.mark.parametrize(
    ("call", "fields"),
    [
        (fn.IssueClaimGrant, {**IDENTITY, "grant_ttl_ms": 5000, "worker_capabilities": ("gpu", "cpu")}),
        (
            fn.ClaimExecution,
            {
                **IDENTITY,
                "lease_id": new_uuid(),
                "lease_ttl_ms": 30_000,
                "attempt_id": new_uuid(),
                "attempt_timeout_ms": None,
            },
        ),
        (
            fn.ClaimExecution,
            {
                **IDENTITY,
                "lease_id": new_uuid(),
                "lease_ttl_ms": 9000,
                "attempt_id": new_uuid(),
                "attempt_timeout_ms": 1500,
            },
        ),
        (fn.ClaimResumedExecution, {**IDENTITY, "lease_id": new_uuid(), "lease_ttl_ms": 30_000, "attempt_index": 4}),
        (fn.CompleteExecution, {**HOLDER, "result_payload": b'{"status": "SUCCESS"}'}),
        (
            fn.RenewLease,
            {
                "execution_id": EID,
                "attempt_index": 2,
                "fence": FENCE,
                "lease_ttl_ms": 30_000,
                "lease_history_grace_ms": 5000,
            },
        ),
    ],
)
def test_a_trusted_call_sends_the_keys_and_arguments_of_a_validated_one(call, fields):
    trusted, validated = call.trusted(**fields), call(**fields)
    assert (trusted.function, trusted.keys(), trusted.argv()) == (
        validated.function,
        validated.keys(),
        validated.argv(),
    )


def test_replies_parsed_without_validation_equal_validated_models():
    lease_id, attempt_id = new_uuid(), new_uuid()
    reply = fn.Reply("OK", [lease_id, "3", "1700000000000", attempt_id, "2", "initial"])
    assert lease_from_reply(reply) == fn.Lease(
        lease_id=lease_id, lease_epoch=3, expires_at=1700000000000, attempt_id=attempt_id, attempt_index=2,
        attempt_type="initial",
    )  # fmt: skip
    create = fn.CreateExecution(execution_id=EID, namespace="default", lane_id="lane", execution_kind="task")
    assert create.parse(fn.Reply("OK", [EID, "waiting"])) == fn.Created(execution_id=EID, public_state="waiting")
    assert create.parse(fn.Reply("DUPLICATE", [EID])) == fn.Created(execution_id=EID, public_state=None, duplicate=True)
