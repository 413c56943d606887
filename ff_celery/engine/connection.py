"""Connections: a redis-py client from a URL.

Accepts ``redis://``, ``rediss://`` (TLS), ``unix://`` and ff_celery's own
``flowfabric://`` / ``flowfabrics://`` (aliases of the first two), with password or ACL
user and password in the URL and the database number as the path or ``?db=``.
"""

from __future__ import annotations

from typing import Any

import redis

SCHEME_ALIASES = {"flowfabric": "redis", "flowfabrics": "rediss"}
SUPPORTED_SCHEMES = ("redis", "rediss", "unix", *SCHEME_ALIASES)


def redis_url(url: str) -> str:
    """``url`` with a ``flowfabric(s)://`` scheme rewritten to ``redis(s)://``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SUPPORTED_SCHEMES:
        raise ValueError(f"unsupported URL scheme in {url!r}; expected one of {', '.join(SUPPORTED_SCHEMES)}")
    return f"{SCHEME_ALIASES.get(scheme, scheme)}://{rest}"


def connect(url: str, **options: Any) -> redis.Redis:
    """A client for ``url``. Replies stay bytes: payloads are opaque."""
    options.setdefault("health_check_interval", 30)
    return redis.Redis.from_url(redis_url(url), decode_responses=False, **options)
