"""Connecting from URLs: redis://, flowfabric://, unix://, ACL users and passwords, databases."""

import os
import signal

import kombu
import pytest

import ff_celery  # noqa: F401  (registers flowfabric://)
from ff_celery.devtools.devserver import DevServer
from ff_celery.engine.core.connection import CONNECT_TIMEOUT_S, SOCKET_TIMEOUT_S, connect, redis_url
from ff_celery.engine.core.engine import Engine
from ff_celery.engine.core.errors import TransportError


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("flowfabric://h:6379/0", "redis://h:6379/0"),
        ("flowfabrics://u:p@h:6380/1", "rediss://u:p@h:6380/1"),
        ("redis://h/2", "redis://h/2"),
        ("unix:///tmp/s.sock?db=3", "unix:///tmp/s.sock?db=3"),
    ],
)
def test_flowfabric_schemes_map_to_redis_and_others_pass_through(url, expected):
    assert redis_url(url) == expected


def test_an_unsupported_scheme_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="unsupported URL scheme"):
        redis_url("amqp://guest@localhost//")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redsi://:hunter2@127.0.0.1:6379/0", "redsi://:***@127.0.0.1:6379/0"),
        ("amqp://bob:hunter2@h//", "amqp://bob:***@h//"),
        ("redis:/:pa/hunter2@h:1/0", "***@h:1/0"),  # no "://": all before the "@" is hidden
        ("valkey://h?password=hunter2&db=1", "valkey://h?password=***&db=1"),
    ],
)
def test_a_refused_url_is_named_without_its_credentials(url, shown):
    with pytest.raises(ValueError, match="unsupported URL scheme") as refused:
        Engine.from_url(url)
    assert shown in str(refused.value)
    assert "hunter2" not in str(refused.value)


def roundtrip(url: str) -> str:
    engine = Engine.from_url(url)
    try:
        engine.bootstrap()
        created = engine.submit("default", b"x")
        return engine.snapshot(created.execution_id).public_state
    finally:
        engine.close()


@pytest.mark.single_node
def test_connects_over_the_servers_unix_socket(ff_server, ff_redis):
    assert roundtrip(f"unix://{ff_server.unix_socket}?db=0") == "waiting"


@pytest.mark.single_node
def test_connects_with_an_acl_user_and_password(ff_server, ff_redis):
    ff_redis.acl_setuser("ffc", enabled=True, passwords=["+s3cret"], keys=["*"], channels=["*"], commands=["+@all"])
    try:
        assert roundtrip(f"flowfabric://ffc:s3cret@127.0.0.1:{ff_server.port}/0") == "waiting"
    finally:
        ff_redis.acl_deluser("ffc")


@pytest.mark.standalone  # a cluster has database 0 only
def test_uses_the_database_named_in_the_url(ff_server, ff_redis):
    roundtrip(f"redis://127.0.0.1:{ff_server.port}/5")
    ff_redis.execute_command("SELECT", 5)
    assert ff_redis.dbsize() > 0
    ff_redis.execute_command("SELECT", 0)
    assert ff_redis.dbsize() == 0


def test_a_frozen_server_is_a_timeout_not_a_hang():
    with DevServer() as server:
        engine = Engine.from_url(server.url, socket_timeout=0.5)  # the URL's or caller's value wins
        defaults = connect(server.url).connection_pool.connection_kwargs
        assert defaults["socket_timeout"] == SOCKET_TIMEOUT_S and defaults["socket_keepalive"] is True
        assert defaults["socket_connect_timeout"] == CONNECT_TIMEOUT_S
        os.kill(server.pid, signal.SIGSTOP)
        try:
            with pytest.raises(TransportError):
                engine.resolve("anything")
        finally:
            os.kill(server.pid, signal.SIGCONT)
        assert engine.resolve("anything") is None  # and it works again once the server does


@pytest.mark.single_node
def test_the_transport_times_out_sockets_at_a_third_of_the_lease(ff_server):
    with kombu.Connection(
        f"flowfabric://127.0.0.1:{ff_server.port}/0", transport_options={"lease_ttl_ms": 30_000}
    ) as connection:
        params = connection.default_channel._connparams()
    assert params["socket_timeout"] == 10.0 and params["socket_keepalive"] is True
    assert params["socket_connect_timeout"] == CONNECT_TIMEOUT_S
