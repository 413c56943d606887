"""Connections: a redis-py client from a URL.

Accepts ``redis://``, ``rediss://`` (TLS), ``unix://`` and ff_celery's own
``flowfabric://`` / ``flowfabrics://`` (aliases of the first two), with password or ACL
user and password in the URL and the database number as the path or ``?db=``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

#: Defaults for every connection: a dead or frozen server surfaces as a timeout, never a hang.
CONNECT_TIMEOUT_S = 5.0
#: Above the longest blocking read the engine issues (stream tails block up to 30 s).
SOCKET_TIMEOUT_S = 35.0

SCHEME_ALIASES = {"flowfabric": "redis", "flowfabrics": "rediss"}
SUPPORTED_SCHEMES = ("redis", "rediss", "unix", *SCHEME_ALIASES)


def redis_url(url: str) -> str:
    """``url`` with a ``flowfabric(s)://`` scheme rewritten to ``redis(s)://``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SUPPORTED_SCHEMES:
        raise ValueError(f"unsupported URL scheme in {url!r}; expected one of {', '.join(SUPPORTED_SCHEMES)}")
    return f"{SCHEME_ALIASES.get(scheme, scheme)}://{rest}"


def connect(url: str, **options: Any) -> redis.Redis:
    """A client for ``url`` (connect and socket timeouts, TCP keepalive; ``options`` and the
    URL's own parameters override them). Replies stay bytes: payloads are opaque."""
    options.setdefault("health_check_interval", 30)
    options.setdefault("socket_connect_timeout", CONNECT_TIMEOUT_S)
    options.setdefault("socket_timeout", SOCKET_TIMEOUT_S)
    address = redis_url(url)
    if not address.startswith("unix://"):
        options.setdefault("socket_keepalive", True)  # TCP only
    return redis.Redis.from_url(address, decode_responses=False, **options)


def compare_and_set(
    client: redis.Redis, key: str, expected: bytes, write: Callable[[redis.client.Pipeline], object]
) -> bool:
    """Queue ``write``'s commands and run them atomically only if ``key`` still holds
    ``expected`` (WATCH / MULTI). False if it did not, or changed meanwhile."""
    with client.pipeline() as pipe:
        try:
            pipe.watch(key)
            if pipe.get(key) != expected:
                return False
            pipe.multi()
            write(pipe)
            pipe.execute()
        except redis.WatchError:
            return False
    return True
