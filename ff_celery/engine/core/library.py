"""The Valkey function library: its source, its version, and loading it.

ff_celery ships its own implementation of FlowFabric's ``flowfabric`` library (``lua/``).
The loader installs it when no library is present or an older ff_celery revision is, and
attaches without touching anything when FlowFabric's own library (version ``34``) is loaded,
so a Valkey managed by FlowFabric's server works unchanged.

Beside ours it loads ``ffcelery`` (``lua/hot_path.lua``): functions that run, in one call, a
sequence of contract functions the hot path would otherwise send one by one. It carries its
own copy of the contract modules (their functions captured, not registered), so it never
depends on which ``flowfabric`` is loaded; it is loaded only beside ours, and the engine falls
back to the contract calls where it is absent.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import redis

from ff_celery.engine.core.errors import UnavailableError

log = logging.getLogger(__name__)

LIBRARY_NAME = "flowfabric"
HOT_PATH_LIBRARY = "ffcelery"
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
HOT_PATH_REVISION = re.compile(r"^ffcelery-(\d+)$")


def lua_dir() -> Path:
    """Directory holding the Lua modules: inside the wheel, or ``lua/`` of a source checkout."""
    package = Path(__file__).resolve().parents[2]  # ff_celery/
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


def relabelled_library(version: str) -> str:
    """This library's text answering ``version`` from ``ff_version``: a stand-in for another
    build (FlowFabric's own, an older or newer one of ours) in tests and benchmarks."""
    return library_source().replace(f"return '{library_version()}'", f"return '{version}'")


@cache
def hot_path_source() -> str:
    """The ``ffcelery`` library text: the contract modules with each function captured in the
    table ``contract`` instead of registered, then ``hot_path.lua``, which calls them."""
    parts = [
        f"#!lua name={HOT_PATH_LIBRARY}\n",
        "local contract = {}\n",
        "local function capture(name, callback)\n  contract[name] = callback\nend\n",
    ]
    for module in MODULES:
        parts.append(f"\n-- module: {module}.lua (captured)\n")
        text = (lua_dir() / f"{module}.lua").read_text(encoding="utf-8")
        parts.append(text.replace("redis.register_function(", "capture("))
    parts.append("\n-- module: hot_path.lua\n")
    parts.append((lua_dir() / "hot_path.lua").read_text(encoding="utf-8"))
    return "".join(parts)


def _single_version(module: str) -> str:
    text = (lua_dir() / f"{module}.lua").read_text(encoding="utf-8")
    found = re.findall(r"return '([^']*)'", text)
    if len(found) != 1:
        raise UnavailableError(f"lua/{module}.lua must contain exactly one return '<version>' literal")
    return found[0]


@cache
def library_version() -> str:
    """The version string this checkout's ``ff_version`` returns."""
    return _single_version("version")


@cache
def hot_path_version() -> str:
    """The version string this checkout's ``ffc_version`` returns."""
    return _single_version("hot_path")


def _revision(version: str, pattern: re.Pattern[str] = _OUR_VERSION) -> int | None:
    match = pattern.match(version)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class LibraryState:
    """What ``ensure_library`` found and did."""

    version: str  # the version now loaded
    action: str  # "loaded", "upgraded", "current", "attached_flowfabric", "attached_newer"
    #: ``ffcelery`` is loaded (beside ours; never beside FlowFabric's own library).
    hot_path: bool = False

    @property
    def is_flowfabric(self) -> bool:
        return self.version.isdigit()


def loaded_version(client: redis.Redis, function: str = "ff_version") -> str | None:
    """``ff_version`` (or another version ``function``) of the loaded library, or None when
    no library answers (on a cluster: when any primary has none, the oldest revision
    otherwise)."""
    if isinstance(client, redis.RedisCluster):
        versions = [loaded_version(client.get_redis_connection(node), function) for node in client.get_primaries()]
        if None in versions:
            return None
        revision = (lambda v: _revision(v, HOT_PATH_REVISION)) if function == "ffc_version" else _revision
        return min((v for v in versions if v is not None), key=lambda v: (revision(v) or 0, v))
    try:
        value = client.fcall(function, 0)
    except redis.ResponseError as exc:
        if is_missing_function(exc):
            return None
        raise
    return value.decode() if isinstance(value, bytes) else str(value)


def hot_path_loaded(client: redis.Redis) -> bool:
    """Whether this checkout's ``ffcelery`` library answers (on every primary)."""
    return loaded_version(client, "ffc_version") == hot_path_version()


def is_missing_function(exc: Exception) -> bool:
    return isinstance(exc, redis.ResponseError) and "function not found" in str(exc).lower()


def load_library(client: redis.Redis) -> None:
    """FUNCTION LOAD REPLACE this checkout's library (a cluster client loads it on every
    primary; replicas copy it)."""
    try:
        client.function_load(library_source(), replace=True)
    except redis.ResponseError as exc:
        raise UnavailableError(f"FUNCTION LOAD of the {LIBRARY_NAME} library failed: {exc}") from exc


def ensure_hot_path(client: redis.Redis) -> bool:
    """Load the ``ffcelery`` library when none or an older revision is loaded; True when this
    checkout's revision answers (a newer one, loaded by a newer ff_celery, is left alone and
    not used). A server that refuses it leaves the engine on the contract calls."""
    loaded = loaded_version(client, "ffc_version")
    if loaded == hot_path_version():
        return True
    ours = _revision(hot_path_version(), HOT_PATH_REVISION) or 0
    if loaded is not None and (_revision(loaded, HOT_PATH_REVISION) or 0) > ours:
        return False
    try:
        client.function_load(hot_path_source(), replace=True)
    except redis.ResponseError as exc:
        log.warning("the %s library could not be loaded (%s); using the contract calls", HOT_PATH_LIBRARY, exc)
        return False
    return True


def ensure_library(client: redis.Redis, *, force: bool = False) -> LibraryState:
    """Make sure a compatible library is loaded, and say what was done.

    - none loaded: load ours;
    - FlowFabric's own (a numeric version such as ``34``): attach, never replace;
    - an older ff_celery revision: replace it; the same or a newer one: attach;
    - anything else: refuse unless ``force``.
    """
    state = _ensure_contract_library(client, force)
    if state.is_flowfabric:
        return state
    return replace(state, hot_path=ensure_hot_path(client))


def _ensure_contract_library(client: redis.Redis, force: bool) -> LibraryState:
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
