"""pytest fixtures for code that runs on ff_celery: an embedded Valkey/Redis server and an
engine bound to it. Enable with ``pytest_plugins = ["ff_celery.pytest_plugin"]``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from ff_celery.devserver import DevServer
from ff_celery.engine.client import Engine


@pytest.fixture(scope="session")
def ff_server() -> Iterator[DevServer]:
    """A Valkey/Redis server on a free loopback port for the whole session."""
    with DevServer() as server:
        yield server


@pytest.fixture(scope="session")
def ff_url(ff_server: DevServer) -> str:
    return ff_server.url


@pytest.fixture
def ff_redis(ff_url: str) -> Iterator[redis.Redis]:
    """A client on the embedded server, emptied before the test."""
    client = redis.Redis.from_url(ff_url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def ff_engine(ff_url: str, ff_redis: redis.Redis) -> Iterator[Engine]:
    """An engine on an empty server with the function library loaded."""
    engine = Engine.from_url(ff_url)
    engine.bootstrap()
    yield engine
    engine.close()
