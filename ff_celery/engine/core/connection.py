"""Connections: a redis-py client from a URL.

Accepts ``redis://``, ``rediss://`` (TLS), ``unix://`` and ff_celery's own
``flowfabric://`` / ``flowfabrics://`` (aliases of the first two), with password or ACL
user and password in the URL and the database number as the path or ``?db=``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import hiredis
import redis
from redis._parsers.encoders import Encoder
from redis.connection import PythonRespSerializer

#: Defaults for every connection: a dead or frozen server surfaces as a timeout, never a hang.
CONNECT_TIMEOUT_S = 5.0
#: Above the longest blocking read the engine issues (stream tails block up to 30 s).
SOCKET_TIMEOUT_S = 35.0

SCHEME_ALIASES = {"flowfabric": "redis", "flowfabrics": "rediss"}
SUPPORTED_SCHEMES = ("redis", "rediss", "unix", *SCHEME_ALIASES)


#: Query parameters whose values are never printed.
SECRET_PARAMETERS = ("password", "ssl_password")


def redis_url(url: str) -> str:
    """``url`` with a ``flowfabric(s)://`` scheme rewritten to ``redis(s)://``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SUPPORTED_SCHEMES:
        raise ValueError(f"unsupported URL scheme in {redacted(url)!r}; expected one of {', '.join(SUPPORTED_SCHEMES)}")
    return f"{SCHEME_ALIASES.get(scheme, scheme)}://{rest}"


def redacted(url: str) -> str:
    """``url`` safe to print in an error or a log: everything before its last ``@`` (the
    credentials, however mistyped) and secret query parameters become ``***``; a user name
    before ``:password`` is kept."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    credentials, at, address = rest.rpartition("@")
    shown = ""
    if at:
        user, colon, _ = credentials.partition(":")
        shown = f"{user}:***@" if colon and not any(c in user for c in "/?#") else "***@"
    path, question, query = address.partition("?")
    if question:
        pairs = [pair.partition("=") for pair in query.split("&")]
        query = "&".join(
            f"{name}{eq}{'***' if name.lower() in SECRET_PARAMETERS and value else value}" for name, eq, value in pairs
        )
    return f"{scheme}{sep}{shown}{path}{question}{query}"


def cluster_url(url: str) -> tuple[str, bool | None]:
    """``url`` without its ``cluster`` parameter, and what that said (None: nothing)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    flags = [value for name, value in query if name == "cluster"]
    if not flags:
        return url, None
    wanted = flags[-1].lower() in ("1", "true", "yes", "on")
    rest = urlencode([(name, value) for name, value in query if name != "cluster"])
    return urlunsplit(parts._replace(query=rest)), wanted


def connect(url: str, **options: Any) -> redis.Redis:
    """A client for ``url`` (connect and socket timeouts, TCP keepalive; ``options`` and the
    URL's own parameters override them). Replies stay bytes: payloads are opaque.

    A Valkey/Redis Cluster gets a :class:`redis.RedisCluster` (database 0 only), which follows
    the slot map, MOVED and ASK: with ``?cluster=true`` the URL names a seed node; without the
    parameter the server is asked (``INFO cluster``, one round trip; an unreachable server
    gets a plain client, whose first command reports it); ``?cluster=false`` never asks."""
    options.setdefault("socket_connect_timeout", CONNECT_TIMEOUT_S)
    options.setdefault("socket_timeout", SOCKET_TIMEOUT_S)
    address, clustered = cluster_url(redis_url(url))
    if address.startswith("unix://"):
        clustered = False  # a cluster is reached over TCP
    else:
        options.setdefault("socket_keepalive", True)  # TCP only
    if clustered:
        return redis.RedisCluster.from_url(address, decode_responses=False, **options)
    client = redis.Redis.from_url(address, decode_responses=False, **{"health_check_interval": 30, **options})
    packed_by_hiredis(client)
    return client if clustered is False else cluster_aware(client)


#: redis-py's buffer cutoff (``Connection._buffer_cutoff``), for the fallback serializer.
BUFFER_CUTOFF = 6000


class HiredisPacker:
    """Packs commands as redis-py's serializers do, byte for byte, but hands the arguments
    to hiredis as they are (``str``, ``bytes``, ``int``, ``float``: every engine command),
    where redis-py first encodes each in Python, at ten times hiredis's own cost. What
    hiredis refuses (a ``bool``, a ``bytearray``, an ``int`` subclass) and a two-word command
    name take redis-py's pure-Python serializer, which packs or refuses them as always."""

    def __init__(self) -> None:
        encode = Encoder(encoding="utf-8", encoding_errors="strict", decode_responses=False).encode
        self._standard = PythonRespSerializer(BUFFER_CUTOFF, encode)

    def pack(self, *args: Any) -> list[bytes]:
        name = args[0]
        if type(name) is str and " " not in name:
            try:
                return [hiredis.pack_command(args)]
            except TypeError:
                pass
        return self._standard.pack(*args)


def packed_by_hiredis(client: redis.Redis) -> redis.Redis:
    """``client``, whose new connections pack commands with :class:`HiredisPacker` (if it
    encodes as UTF-8, redis-py's default; call it before the client's first command). A
    cluster client keeps redis-py's packing (it passes no packer to its nodes)."""
    settings = client.connection_pool.connection_kwargs
    if (settings.get("encoding", "utf-8"), settings.get("encoding_errors", "strict")) == ("utf-8", "strict"):
        settings["command_packer"] = HiredisPacker()
    return client


def cluster_aware(client: redis.Redis) -> redis.Redis:
    """``client``, or, if its server is a cluster node, a cluster client seeded from its
    settings (host, port, credentials, timeouts; TLS if it uses it), ``client`` closed. An
    unreachable server keeps the plain client, whose first command reports it."""
    try:
        if not client.info("cluster").get("cluster_enabled"):
            return client
    except redis.RedisError:
        return client
    pool = client.connection_pool
    dropped = ("db", "connection_class", "max_connections", "path", "health_check_interval", "command_packer")
    settings = {name: value for name, value in pool.connection_kwargs.items() if name not in dropped}
    settings["decode_responses"] = False
    if issubclass(pool.connection_class, redis.SSLConnection):
        settings["ssl"] = True
    client.close()
    return redis.RedisCluster(**settings)


def clone_client(client: redis.Redis) -> redis.Redis:
    """A new client for the same server (or cluster) with the same settings, on connections
    of its own (for a background thread or a forked child)."""
    if isinstance(client, redis.RedisCluster):
        nodes = client.nodes_manager
        settings = {name: value for name, value in nodes.connection_kwargs.items() if name != "db"}  # always 0
        return redis.RedisCluster(startup_nodes=list(nodes.startup_nodes.values()), **settings)
    pool = client.connection_pool
    return redis.Redis(
        connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **pool.connection_kwargs)
    )


def refresh_slot_map(client: redis.Redis) -> None:
    """On a cluster, read the slot map again now (after a failover its cached one still names
    the dead primary, which only a failed command through ``client`` itself would refresh;
    a Pub/Sub subscription does not). A refresh that fails keeps the cached map."""
    if isinstance(client, redis.RedisCluster):
        with contextlib.suppress(redis.RedisError, redis.exceptions.RedisClusterException):
            client.nodes_manager.initialize()


def server_identity(client: redis.Redis) -> tuple[object, ...]:
    """Which server (a cluster: its seed nodes), database and credentials ``client`` talks
    to; not how (timeouts differ)."""
    if isinstance(client, redis.RedisCluster):
        nodes = client.nodes_manager
        settings, where = nodes.connection_kwargs, tuple(sorted(nodes.startup_nodes))
        return (where, settings.get("username"), settings.get("password"), "ssl" in settings)
    pool = client.connection_pool
    settings = pool.connection_kwargs
    where = tuple(settings.get(name) for name in ("host", "port", "path", "db", "username", "password"))
    return (*where, issubclass(pool.connection_class, redis.SSLConnection))


def compare_and_set(
    client: redis.Redis, key: str, expected: bytes, write: Callable[[redis.client.Pipeline], object]
) -> bool:
    """Queue ``write``'s commands and run them atomically only if ``key`` still holds
    ``expected`` (WATCH / MULTI). False if it did not, or changed meanwhile."""
    with client.pipeline(transaction=True) as pipe:  # a cluster's, too: one slot
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
