"""One engine and one lease renewer per process and server.

Every part of ff_celery in a process (the transport's channels, the result backend, task
code, the CLI, the signal server) asks here, so a process keeps one connection pool per
server however many parts use it; leases outlive the channel that claimed them. The first
part to ask supplies the client. A forked child builds its own on first use.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable

import redis

from ff_celery.engine.core.connection import server_identity
from ff_celery.engine.core.engine import Engine
from ff_celery.engine.work.renewal import LeaseRenewer

_lock = threading.Lock()
#: By (pid, server identity) and by (pid, the way a caller reaches it).
_engines: dict[tuple[int, Hashable], Engine] = {}
_renewers: dict[tuple[int, int], LeaseRenewer] = {}


def shared_engine(
    way: Hashable,
    client: Callable[[], redis.Redis],
    namespace: str,
) -> Engine:
    """This process's engine for the server ``client()`` reaches: bootstrapped on first use
    (library loaded or attached), then shared; the client made to ask is closed if unused.
    ``way`` is how the caller reaches the server (a URL, connection settings): asking again
    the same way is a lookup, with no client made."""
    known = _engines.get((os.getpid(), way))
    if known is not None:
        return known
    candidate = client()
    key = (os.getpid(), (*server_identity(candidate), namespace))
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = Engine(candidate, namespace=namespace)
            engine.bootstrap()
            _engines[key] = engine
            candidate = None
        _engines[(os.getpid(), way)] = engine
    if candidate is not None:
        candidate.close()
    return engine


def shared_renewer(engine: Engine) -> LeaseRenewer:
    """The thread renewing the leases held through ``engine`` in this process."""
    key = (os.getpid(), id(engine))
    with _lock:
        if key not in _renewers:
            _renewers[key] = LeaseRenewer(engine.fork())
        return _renewers[key]
