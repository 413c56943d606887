"""pytest fixtures for code that runs on ff_celery: an embedded Valkey/Redis server and an
engine bound to it. Enable with ``pytest_plugins = ["ff_celery.devtools.pytest_plugin"]``."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from ff_celery.devtools.devserver import CLUSTER_VARIABLE, DevCluster, DevServer
from ff_celery.engine import Engine, connect


def pytest_report_header() -> str:
    try:
        return f"ff_celery embedded server: {DevServer().version}"
    except RuntimeError as exc:
        return f"ff_celery embedded server: none ({exc})"


#: URLs of the servers these fixtures started: the only ones they ever empty.
_started_here: set[str] = set()


@pytest.fixture(scope="session")
def ff_server() -> Iterator[DevServer | DevCluster]:
    """A Valkey/Redis server on a free loopback port for the whole session: with
    ``$FF_CELERY_TEST_CLUSTER`` 1, one cluster-mode node owning every slot; with 3, a cluster
    of three primaries with a replica each (its URL says ``?cluster=true``)."""
    mode = os.environ.get(CLUSTER_VARIABLE)
    with DevCluster(primaries=3, replicas=1) if mode == "3" else DevServer(cluster=mode == "1") as server:
        _started_here.add(server.url)
        yield server
        _started_here.discard(server.url)


@pytest.fixture(scope="session")
def ff_url(ff_server: DevServer) -> str:
    return ff_server.url


@pytest.fixture
def ff_redis(ff_url: str) -> Iterator[redis.Redis]:
    """A client on the embedded server, emptied before the test (a server given by overriding
    ``ff_url`` is never emptied: these fixtures flush only servers they started)."""
    client = connect(ff_url)
    if ff_url in _started_here:
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


# -- Celery on the embedded server ----------------------------------------------------------
# With Celery's own fixtures enabled (celery.contrib.pytest, which pytest-celery re-exports),
# these make celery_app / celery_session_app and their in-process workers run on ff_celery.


@pytest.fixture(scope="session")
def ff_celery_url(ff_server: DevServer) -> str:
    """The embedded server as a ``flowfabric://`` URL."""
    return ff_server.url.replace("redis://", "flowfabric://", 1)


@pytest.fixture(scope="session")
def ff_celery_config(ff_celery_url: str) -> dict[str, object]:
    """Broker and result backend on the embedded server; merge it into your own
    ``celery_config`` fixture if you define one."""
    return {
        "broker_url": ff_celery_url,
        "result_backend": ff_celery_url,
        "broker_transport_options": {"poll_interval": 0.2},
    }


@pytest.fixture(scope="session")
def celery_config(ff_celery_config: dict[str, object]) -> dict[str, object]:
    return ff_celery_config


@pytest.fixture(scope="session")
def celery_parameters() -> dict[str, object]:
    """Test apps get ff_celery's task base class, which installs the rest on first use."""
    return {"task_cls": "ff_celery.integration.task:Task"}
