"""The hot path's packing sends exactly what redis-py's own would: hiredis packs plain
arguments directly, everything else takes redis-py's path."""

from enum import Enum
from http import HTTPStatus

import pytest
import redis
from redis.connection import Connection

from ff_celery.engine.core.connection import HiredisPacker, connect
from ff_celery.engine.core.ids import ExecutionId

EID = ExecutionId.mint(7)


class Color(str, Enum):
    RED = "red"


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
    if isinstance(client, redis.RedisCluster):  # a cluster client keeps redis-py's packing
        assert client.set("hot-path", "é") and client.get("hot-path") == "é".encode()
        client.close()
        return
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
