"""The Valkey function library: its source, its version, and loading it.

ff_celery ships its own implementation of FlowFabric's ``flowfabric`` library (``lua/``).
The loader installs it when no library is present or an older ff_celery revision is, and
attaches without touching anything when FlowFabric's own library (version ``34``) is loaded,
so a Valkey managed by FlowFabric's server works unchanged.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import redis

from ff_celery.engine.errors import UnavailableError

log = logging.getLogger(__name__)

LIBRARY_NAME = "flowfabric"
FLOWFABRIC_VERSION = "34"
#: Concatenation order; helpers first, every later module may use what precedes it.
MODULES = (
    "helpers",
    "version",
    "lease",
    "execution",
    "scheduling",
    "waitpoint_token",
    "resume_condition",
    "suspension",
    "signal",
    "stream",
    "budget",
    "quota",
    "flow",
)

_OUR_VERSION = re.compile(r"^ff_celery-(\d+)$")


def lua_dir() -> Path:
    """Directory holding the Lua modules: inside the wheel, or ``lua/`` of a source checkout."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "lua", package.parent / "lua"):
        if (candidate / "helpers.lua").is_file():
            return candidate
    raise UnavailableError(f"Lua sources not found next to {package}")


@cache
def library_source() -> str:
    """The complete library text, exactly as FUNCTION LOAD receives it."""
    parts = [f"#!lua name={LIBRARY_NAME}\n"]
    for module in MODULES:
        parts.append(f"\n-- module: {module}.lua\n")
        parts.append((lua_dir() / f"{module}.lua").read_text(encoding="utf-8"))
    return "".join(parts)


@cache
def library_version() -> str:
    """The version string this checkout's ``ff_version`` returns."""
    text = (lua_dir() / "version.lua").read_text(encoding="utf-8")
    found = re.findall(r"return '([^']*)'", text)
    if len(found) != 1:
        raise UnavailableError("lua/version.lua must contain exactly one return '<version>' literal")
    return found[0]


def _revision(version: str) -> int | None:
    match = _OUR_VERSION.match(version)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class LibraryState:
    """What ``ensure_library`` found and did."""

    version: str  # the version now loaded
    action: str  # "loaded", "upgraded", "current", "attached_flowfabric", "attached_newer"

    @property
    def is_flowfabric(self) -> bool:
        return self.version.isdigit()


def loaded_version(client: redis.Redis) -> str | None:
    """``ff_version`` of the loaded library, or None when no library answers (on a cluster:
    when any primary has none, the oldest revision otherwise)."""
    if isinstance(client, redis.RedisCluster):
        versions = [loaded_version(client.get_redis_connection(node)) for node in client.get_primaries()]
        if None in versions:
            return None
        return min((v for v in versions if v is not None), key=lambda v: (_revision(v) or 0, v))
    try:
        value = client.fcall("ff_version", 0)
    except redis.ResponseError as exc:
        if is_missing_function(exc):
            return None
        raise
    return value.decode() if isinstance(value, bytes) else str(value)


def is_missing_function(exc: Exception) -> bool:
    return isinstance(exc, redis.ResponseError) and "function not found" in str(exc).lower()


def load_library(client: redis.Redis) -> None:
    """FUNCTION LOAD REPLACE this checkout's library (a cluster client loads it on every
    primary; replicas copy it)."""
    try:
        client.function_load(library_source(), replace=True)
    except redis.ResponseError as exc:
        raise UnavailableError(f"FUNCTION LOAD of the {LIBRARY_NAME} library failed: {exc}") from exc


def ensure_library(client: redis.Redis, *, force: bool = False) -> LibraryState:
    """Make sure a compatible library is loaded, and say what was done.

    - none loaded: load ours;
    - FlowFabric's own (a numeric version such as ``34``): attach, never replace;
    - an older ff_celery revision: replace it; the same or a newer one: attach;
    - anything else: refuse unless ``force``.
    """
    ours = library_version()
    current = loaded_version(client)
    if current is None or force:
        load_library(client)
        return LibraryState(ours, "loaded")
    if current.isdigit():
        if current != FLOWFABRIC_VERSION:
            log.warning("FlowFabric library version %s loaded; ff_celery targets %s", current, FLOWFABRIC_VERSION)
        return LibraryState(current, "attached_flowfabric")
    loaded_revision, our_revision = _revision(current), _revision(ours)
    if loaded_revision is None or our_revision is None:
        raise UnavailableError(
            f"an unknown {LIBRARY_NAME} library (version {current!r}) is loaded; "
            "refusing to replace it (use `ff-celery library load --force`)"
        )
    if loaded_revision < our_revision:
        load_library(client)
        return LibraryState(ours, "upgraded")
    return LibraryState(current, "current" if loaded_revision == our_revision else "attached_newer")
